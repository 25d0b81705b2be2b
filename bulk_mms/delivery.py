"""Delivery statuses after the send: what ``track``, ``webhooks`` and ``report`` share.

A sent group's recipients move ``queued`` → ``sending`` → ``sent`` → a final status
(:data:`FINAL`). Every status of the API (:data:`STATUSES`) is one of three kinds once final:
received (``delivered``), not received (:data:`NOT_RECEIVED`: ``expired``, ``sending_failed``,
``delivery_failed``) and unconfirmed (:data:`UNCONFIRMED`: ``delivery_unconfirmed``, and
``unknown``, which group messages report for recipients not on Telnyx's network: handset
delivery status is not available for them). Unconfirmed is final: nothing more will come, so
``track --follow`` stops asking, and reports count them apart, neither failed nor pending.

Reports arrive twice over (polling and webhooks), late, repeated and out of order, so one rule
(:func:`supersedes`) decides whether a report is news:

* a final status is never replaced by a non-final one (a late ``message.sent`` after
  ``message.finalized`` is ignored);
* a final status is replaced by another final one only when the report is stamped later
  (a carrier correcting ``delivery_unconfirmed`` to ``delivered``), or is stamped where the
  one known was not (a ``delivery_failed`` without ``completed_at`` or ``sent_at`` cannot be
  shown later than anything, so it does not hold off a stamped correction), and ``delivered``
  never is: the handset had the message, and a later failure report taken for news would send it
  again (a second text) where it can at most be a carrier's mistake. Polling and webhooks
  arrive in no order of the carrier's, so by the same token ``delivered`` replaces any other
  final status known before it, stamped or not, later or not: the fold says delivered
  whichever was recorded first, and nobody who got it is sent it again nor listed failed;
* a non-final status only moves forward.

Stamps are compared as instants (``10:00:00.500+00:00`` is after ``10:00:00Z``; ``-05:00`` is
five hours behind UTC), never as strings. Every piece of news becomes one
:class:`~bulk_mms.ledger.events.Status` event, folded by :class:`~bulk_mms.ledger.LedgerView`.
A recipient is keyed by phone number alone: input rows are deduplicated before grouping, so a
number is in two groups only when a delivery report moved it out of the first (its sender
blocked, a carrier's refusal for now) and a later run sent it again; its state is then its
latest send's, and reports of the earlier send are no longer news
(:meth:`~bulk_mms.ledger.LedgerView.apply_status`).
"""

from __future__ import annotations

from typing import NamedTuple

from bulk_mms.clock import instant

#: Every recipient status the API documents (``to[].status`` of the spec, and ``unknown``,
#: which group messages add), in the order a message moves through them.
STATUSES = (
    "queued",
    "sending",
    "sent",
    "expired",
    "sending_failed",
    "delivery_unconfirmed",
    "delivered",
    "delivery_failed",
    "unknown",
)
#: Statuses a recipient never leaves.
FINAL = frozenset(
    {"delivered", "delivery_failed", "sending_failed", "expired", "delivery_unconfirmed", "unknown"}
)
#: The final status that says the message reached the recipient.
DELIVERED = "delivered"
#: Final statuses that mean the recipient did not get the message.
NOT_RECEIVED = frozenset({"delivery_failed", "sending_failed", "expired"})
#: Final statuses that say neither way: the carrier did not confirm (``delivery_unconfirmed``),
#: or the recipient is not on Telnyx's network and no handset report exists (``unknown``).
UNCONFIRMED = frozenset({"delivery_unconfirmed", "unknown"})
_RANK = {"": 0, "queued": 1, "sending": 2, "sent": 3}


class Known(NamedTuple):
    """The latest status of one recipient, as the ledger has it. (A named tuple: a tracked
    ledger holds one per recipient, and a million of them are built in a fraction of the time
    a frozen record takes.)"""

    status: str
    #: When the API says it was reached (ISO 8601), if it said.
    at: str | None = None
    #: The recipient's own message id, once the API has named it.
    message_id: str | None = None
    #: The Telnyx error code the report carried, if any (why it failed).
    code: str | None = None
    #: What the error policy that recorded the report did about its code (``retry``,
    #: ``suppress``, ...; the ``status`` event's ``action``), if it had an action for it.
    action: str | None = None


def supersedes(new: str, new_at: str | None, old: Known | None) -> bool:
    """Whether a report of ``new`` (stamped ``new_at``) is news over what is ``old``."""
    if not new:
        return False
    if old is None:
        return True
    if old.status in FINAL:
        if new not in FINAL or old.status in (new, DELIVERED):
            return False
        if new == DELIVERED:  # never replaced, so it replaces any other: in either order
            return True
        new_t, old_t = instant(new_at), instant(old.at)
        # an unstamped final report is not known to be the later one: a stamped one wins
        return new_t is not None and (old_t is None or new_t > old_t)
    return new in FINAL or _RANK.get(new, 0) > _RANK.get(old.status, 0)
