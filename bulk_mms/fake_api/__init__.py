"""A fake of the Telnyx messaging endpoints bulk_mms uses, as the spec says they behave.

The reference is Telnyx's public OpenAPI spec (the excerpt in ``tests/data/``) and developer
docs (``FACTS.md`` in the team's notes); where the two differ from what would be convenient,
the fake follows them by default:

* ``POST /v2/messages/group_mms`` validates the body as documented (``from``; ``to`` of 1 to 8
  numbers in +E.164; ``text`` non-empty when given; text or media required), keeps the message
  and answers an ``OutboundMessagePayload`` (every ``to[].status`` ``queued``, or with
  ``live_answers`` each as the timeline has it, as the spec's enum allows; ``cost`` an
  estimate with a string amount, ``wait_seconds``). ``Idempotency-Key`` is ignored (not
  declared for this endpoint): a repeat is a new message. Its only refusals are the
  synchronous codes of :data:`REFUSALS` (409 40300, 429 40318/40333/10011, 402 20100, 401
  10009); carrier codes (40002, 40003, 40011, 40014, 40016, 40018...) come after acceptance.
* ``GET /v2/messages/group/{message_id}`` lists one message per recipient and
  ``GET /v2/messages/{id}`` returns one (a group's or a recipient's), statuses as they stand on
  the delivery timeline (:attr:`FakeTelnyx.delivery_status`, :func:`carrier_timeline`): every
  status of the spec, and ``unknown`` for group recipients off Telnyx's network; a recipient's
  own message lists the group's other participants in ``cc``. A failed
  recipient's ``errors[]`` carry the carrier's code; money is ``{"amount": "...",
  "currency": "USD"}`` or null, the final cost once final; ``wait_seconds`` is there too.
* Both GETs answer 404 / 10005 for a message older than :attr:`FakeTelnyx.keeps_s` (the
  spec: "no older than 10 days") or, as Telnyx's records may lag the send, younger than
  :attr:`FakeTelnyx.lookup_lag_s`. ``media_urls`` must be http(s) URLs of at most 2000
  characters (400 / 10003); with :attr:`FakeTelnyx.numbers`, ``from`` must be one of them
  (400 / 40305).
* ``GET /v2/reports/mdrs`` lists one detail record per recipient of each accepted message,
  filtered and paged, and not before :attr:`FakeTelnyx.records_lag_s` has passed.
* ``GET /v2/messaging_optouts`` lists opt-out blocks (from→to pairs), filtered, paged and
  redacted as documented.
* With a ``signing_key``, ``message.sent`` and ``message.finalized`` webhooks (one per
  recipient) are posted, Ed25519-signed, as the timeline reaches them
  (:meth:`FakeTelnyx.pump_webhooks`), ``occurred_at`` with a ``+00:00`` offset as Telnyx's
  examples write it; with ``webhooks_before_answer``, before the send's answer goes back (they
  race it at Telnyx). With ``webhook_repeats``, an event answered 2xx comes again (the same
  id, at its next attempts: an answer lost or slow); with ``webhooks_out_of_order``, latest
  first (a ``message.finalized`` before its ``message.sent``); with ``webhooks_without_from``,
  their payload has no ``from``.

Times are written as the spec's example for each field does; ``varied_stamps`` writes them
in turn in every form Telnyx may use (``Z`` or an offset, 0 to 9 fraction digits).

Variants the spec allows are switches too: ``statuses_in_cc`` lists a group's members past
the first under ``cc``, with their statuses, in the group's own message; ``sender_in_cc``
lists the sending number in every message's ``cc``, as Telnyx's group messaging guide says a
group's messages list every participant; ``group_message_ids``
names the group message (``group_message_id``, the send's id, which the spec does not declare)
in every message object, webhook payload and detail record, as Telnyx's support article
8255134 says its group messages do; ``member_id_answers`` answers a send with its first
recipient's own message id, naming the group message only in ``group_message_id``;
``group_message_listed`` lists the group's own message in its GET beside each recipient's.

The kinder behaviours older tests rely on are switches, off by default: ``replay_keys``
(replay a repeated key's first success), ``sync_carrier_codes`` (answer carrier codes with a
400), ``name_refused_members`` (a 40300 names each opted-out member), ``redaction_default``.

Faults are scripted per request with :class:`Fault` objects queued on :attr:`FakeTelnyx.faults`
(a status with headers, 5xx, a dropped connection before or after the message was accepted, a
slow answer, a 200 with no id or a body that is not JSON...), and ``wait_seconds`` comes from a
callable or a queue model, so a test can make it grow. Time is :attr:`FakeTelnyx.clock`: a test
injects a fake one, and every timestamp the fake writes moves with it; the date it writes is
:attr:`FakeTelnyx.wall_clock`'s (a test's ``FakeClock.wall``), else the real one.

Run it alone with ``python -m bulk_mms.fake_api --port 8080``.

The package's parts: :mod:`~bulk_mms.fake_api.faults` (the scripted faults),
:mod:`~bulk_mms.fake_api.rules` (the account's codes, statuses, timeline and money),
:mod:`~bulk_mms.fake_api.records` (what it keeps), :mod:`~bulk_mms.fake_api.wire` (answers,
errors, times, paging), :mod:`~bulk_mms.fake_api.state` (its settings and memory),
:mod:`~bulk_mms.fake_api.messages` (the message object and its lookups),
:mod:`~bulk_mms.fake_api.webhooks` (the webhooks it posts), :mod:`~bulk_mms.fake_api.sending`
(the send), :mod:`~bulk_mms.fake_api.lists` (opt-outs and detail records),
:mod:`~bulk_mms.fake_api.app` (:class:`FakeTelnyx` and :func:`serve`) and ``__main__`` (the
command line).
"""

from __future__ import annotations

from bulk_mms.fake_api.app import FakeTelnyx, serve
from bulk_mms.fake_api.faults import FAULT_PRESETS, Fault, FaultKind, parse_faults
from bulk_mms.fake_api.records import (
    Accepted,
    OptOut,
    SeenRequest,
    SenderQueue,
    WebhookPost,
    accept_log_writer,
)
from bulk_mms.fake_api.rules import (
    CARRIER_FEE_ESTIMATE,
    CARRIER_FEE_FINAL,
    CC_STATUSES,
    COST_PER_RECIPIENT,
    FINAL_STATUSES,
    MDR_STATUS,
    NEVER_SENT,
    ORGANIZATION_ID,
    PROFILE_ID,
    PROFILE_NAME,
    RATE,
    REFUSALS,
    REPORT_STATUS,
    SANDBOX_FROM,
    SANDBOX_REFUSE,
    SANDBOX_REPORT,
    STATUSES,
    ZERO,
    carrier_timeline,
    rule,
    will_fail,
)
from bulk_mms.fake_api.wire import MAX_PAGE_SIZE

__all__ = [
    "CARRIER_FEE_ESTIMATE",
    "CARRIER_FEE_FINAL",
    "CC_STATUSES",
    "COST_PER_RECIPIENT",
    "FAULT_PRESETS",
    "FINAL_STATUSES",
    "MAX_PAGE_SIZE",
    "MDR_STATUS",
    "NEVER_SENT",
    "ORGANIZATION_ID",
    "PROFILE_ID",
    "PROFILE_NAME",
    "RATE",
    "REFUSALS",
    "REPORT_STATUS",
    "SANDBOX_FROM",
    "SANDBOX_REFUSE",
    "SANDBOX_REPORT",
    "STATUSES",
    "ZERO",
    "Accepted",
    "FakeTelnyx",
    "Fault",
    "FaultKind",
    "OptOut",
    "SeenRequest",
    "SenderQueue",
    "WebhookPost",
    "accept_log_writer",
    "carrier_timeline",
    "parse_faults",
    "rule",
    "serve",
    "will_fail",
]
