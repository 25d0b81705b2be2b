"""``bulk-mms webhooks``: receive Telnyx messaging webhooks into a ledger as ``status`` lines.

Every request is checked before its body is even parsed: ``telnyx-signature-ed25519`` must be an
Ed25519 signature, by the account's public key (``TELNYX_PUBLIC_KEY``, base64), over
``"{telnyx-timestamp}|{raw body}"``, and the timestamp must be within :data:`TOLERANCE_S` of now
(an old, replayed request fails). A request that fails gets 401 and a ``webhook.rejected`` log
line; nothing of it is written.

A verified ``message.sent`` or ``message.finalized`` event is matched to a sent group of the
ledger by its message id alone (:attr:`LedgerView.by_message_id`): the group's own id (the
send's answer) matches the group's members it lists; a recipient's own id (learnt from a GET
by ``track``, or an earlier event) matches that recipient only, and is learnt only while the
recipient has none. A number is never enough: the same number may be texted by another job or
app from the same account. Each matched recipient
whose report is news (:meth:`LedgerView.apply_status`: a status that supersedes, or a final
cost) gets a durable ``status`` event before the 200 goes back, which takes milliseconds (group
commit). ``message.finalized`` carries the recipient's final cost, which is recorded with it;
the other events' costs are estimates and are not. A report is read by the settings' error
table as a run's and ``track``'s are (:func:`~bulk_mms.policy.delivery_action`): a member its
blocked sender or a carrier's cap failed gets a ``moved`` event too, so a rerun sends it again.
Repeats (the same event id) and stale
reports (a ``message.sent`` after ``message.finalized``) are acknowledged and not recorded; a
repeat that comes while the first delivery is still writing waits for its outcome.

An event whose message id the ledger does not know is acknowledged, looked for again for 30 s
(a webhook can beat the run's own ``sent`` line: it is then read again as the ledger stands, so
the members a group's own message lists under ``cc`` are recorded too), then counted
(:attr:`WebhookReceiver.unmatched`, ``webhook.unmatched`` in the log) and dropped, never
written against anyone: whatever arrives, the only file written is the ledger, and only with
recipients of messages it sent. One task looks for all such events, every half second, with
one read of what was appended to the ledger since; it looks for
:data:`~bulk_mms.webhooks.base.LATE_MAX` at most, and one more gets 503 (Telnyx delivers it
again, 3 times at most, then to the failover URL), never a 2xx that drops it unlooked for;
as does one that comes while the receiver stops, which no look would follow. Such an event
is spooled durably before its 2xx (:mod:`bulk_mms.webhooks.spool`: a 503 when it cannot
be), and one a stop or a crash cut short of its 30 s, or that a ledger which could not be
read or written kept from being settled, is looked for again by the next receiver, before
it listens.

Inbound ``message.received`` events keep the suppression list as Telnyx keeps its block
rules: a message that is only STOP, STOPALL, STOP ALL, UNSUBSCRIBE, CANCEL, END or QUIT (case
and surrounding spaces aside), or a keyword the settings add (``[suppression]
opt_out_words``: a messaging profile's own), adds the sender; START or UNSTOP (or
``opt_in_words``) lift a suppression that a STOP added (never one added by hand); HELP, or a
keyword among other words, changes nothing.
Keywords are taken in the order they were texted (``occurred_at``), as the suppression list
records it (so across restarts, and between receivers sharing the list's file): a late one
changes nothing. A keyword the list cannot take (or a report the ledger cannot) gets 503, so
Telnyx delivers it again.

A job whose ledger is a new one each day (``{date}``) has one receiver for all its days
(:class:`JobReceiver`, ``webhooks --job``): each of its open ledgers matches and records as
above, an event in the ledger that sent its message, and a keyword is taken once.

Nothing of a request's headers is logged, not even by aiohttp's server (:func:`server_log`).
"""

from bulk_mms.webhooks.days import DAYS_BACK, JobReceiver
from bulk_mms.webhooks.receiver import WebhookReceiver
from bulk_mms.webhooks.serve import serve_webhooks, server_log
from bulk_mms.webhooks.signature import (
    PUBLIC_KEY_ENV,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TOLERANCE_S,
    Unverified,
    load_public_key,
    verify,
)

__all__ = [
    "DAYS_BACK",
    "PUBLIC_KEY_ENV",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE_S",
    "JobReceiver",
    "Unverified",
    "WebhookReceiver",
    "load_public_key",
    "serve_webhooks",
    "server_log",
    "verify",
]
