"""The fake's in-memory state: its settings (the constructor's switches, rules and clock),
what it accepted and saw, and where each recipient of each message stands."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bulk_mms.fake_api.faults import Fault
from bulk_mms.fake_api.records import Accepted, OptOut, SeenRequest, SenderQueue, WebhookPost
from bulk_mms.fake_api.rules import (
    FINAL_STATUSES,
    NEVER_SENT,
    REFUSALS,
    REPORT_STATUS,
    SANDBOX_FROM,
    rule,
)
from bulk_mms.fake_api.wire import MESSAGE_STAMP, STAMP_FORMS, iso

#: How long the API serves a message by id (the spec: "no older than 10 days").
API_KEEPS_S = 10 * 86_400.0

if TYPE_CHECKING:  # cryptography is the webhooks extra's: the sandbox sends without it
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass
class FakeState:
    """The fake API's settings and memory; :class:`~bulk_mms.fake_api.FakeTelnyx` adds the
    endpoints. Tests inspect :attr:`accepted` and :attr:`requests`."""

    #: The key to require; None accepts any non-empty bearer token.
    api_key: str | None = None
    #: Replay a repeated ``Idempotency-Key``'s first success (and 422 on another body), as a
    #: server that honours keys would. Off: the header is ignored, as Telnyx documents for
    #: group MMS (FACTS 1): a repeat is a new message with a new id, charged again.
    replay_keys: bool = False
    #: Answer carrier codes in :attr:`refuse` (40016, 40003...) synchronously with a 400, as
    #: the kind fake did. Off: they are accepted and reported in delivery statuses.
    sync_carrier_codes: bool = False
    #: Give each recipient of the send's answer its status as the delivery timeline has it
    #: when the answer goes back (:attr:`delivery_status`: ``sending``, ``sent``, even a
    #: final one with its errors), as the GETs would: the spec's enum for the answer's
    #: ``to[].status`` allows every status. Off: every one ``queued``, as the spec's example.
    live_answers: bool = False
    #: Name each opted-out member of a refused group (one error each, ``source.pointer``
    #: ``/to/i``). Off: one 40300 error naming nobody; the spec does not say it names any.
    name_refused_members: bool = False
    #: List a group's members past the first under ``cc``, each with its status, in the
    #: group's own message (the send's answer, ``GET /messages/{id}`` of the group's id), and
    #: answer ``GET /messages/group/{id}`` with that one message: the spec gives ``cc[]`` a
    #: status, and does not say a group's members are all under ``to``. Off: every member
    #: is under ``to``, and the group's GET lists one message per recipient.
    statuses_in_cc: bool = False
    #: List the sending number itself in every message object's ``cc`` (no status: it sent
    #: the message), as Telnyx's group messaging guide says a group's messages list every
    #: participant, "your Telnyx number" included. Off: ``cc`` names members only.
    sender_in_cc: bool = False
    #: What ``GET /messaging_optouts`` does when ``redaction_enabled`` is not given: True
    #: redacts ``to`` (``+447766****``), False lists the numbers.
    redaction_default: bool = True
    #: Redact every listed number whatever ``redaction_enabled`` says, as an account or key
    #: that may not see them would be answered: the spec says only that the parameter asks
    #: for redaction, not that ``false`` is always honoured.
    always_redacted: bool = False
    #: Faults used one per POST, oldest first.
    faults: deque[Fault] = field(default_factory=deque)
    #: ``wait_seconds`` for the n-th accepted message (0-based).
    wait_seconds: Callable[[int], float] = lambda _n: 0.0
    #: Status the GET endpoints report for each recipient: a fixed one, or a function of the
    #: number and the seconds since the message was accepted (see :func:`carrier_timeline`).
    delivery_status: str | Callable[[str, float], str] = "delivered"
    #: Queue model: drain rate (messages/s) for every sender, or per sender; None disables it
    #: and ``wait_seconds`` comes from the callable above.
    drain_rate: float | None = None
    sender_drain: dict[str, float] = field(default_factory=dict)
    #: Longest queue per sender, in messages.
    queue_cap: float = 1000.0
    #: ``"request"``: a group is one message in the queue; ``"recipient"``: one per recipient.
    queue_unit: str = "request"
    #: The account's API request limit, ``(requests, window seconds)``: a request past it in
    #: its window is answered 429 / 10011 with ``x-ratelimit-*`` headers. None: no limit.
    request_limit: tuple[int, float] | None = None
    clock: Callable[[], float] = time.monotonic
    #: Unix time now, read for every time the fake writes (a test's ``FakeClock.wall``, so
    #: that a test on a fixed date finds its stamps of that date whatever day it runs).
    #: None: the real time when the fake was made, moved on by :attr:`clock`.
    wall_clock: Callable[[], float] | None = None
    #: Refusals by rule: number (or ``*`` and its last four digits) → Telnyx error code. A
    #: send naming one with a code of :data:`REFUSALS` (40300, 20100, 40333...) is refused
    #: with that code and status: nothing is accepted. Any other code (a carrier's: 40016,
    #: 40003...) is a carrier's verdict after acceptance, reported like :attr:`report`
    #: (unless ``sync_carrier_codes``).
    refuse: dict[str, str] = field(default_factory=dict)
    #: Delivery reports by rule, the same way: such a recipient is accepted and then ends
    #: ``delivery_failed`` (or :data:`REPORT_STATUS`'s) with that code in ``errors`` (several
    #: codes, comma separated: one entry each, in that order).
    report: dict[str, str] = field(default_factory=dict)
    #: Opt-out blocks, as ``GET /messaging_optouts`` lists them. An :class:`OptOut` blocks its
    #: from→to pair; a bare number is blocked from every sender of the profile (listed from
    #: :data:`SANDBOX_FROM`). A send to a blocked pair is refused: 409 / 40300.
    optouts: list[str | OptOut] = field(default_factory=list)
    #: Detail records younger than this many seconds are not listed yet (Telnyx: the last
    #: hours' MDRs may be missing).
    records_lag_s: float = 0.0
    #: Serve the page ``page[number]`` asks for on ``GET /reports/mdrs`` (``page[size]``: 1 to
    #: 250, default 20), as Telnyx's other lists do. The spec declares no page parameter for
    #: it (only ``meta`` in the answer): off, they are ignored and the first page is served.
    records_paging: bool = True
    #: A message younger than this many seconds is not found yet by ``GET /messages/{id}`` and
    #: ``GET /messages/group/{id}`` (404 / 10005): Telnyx's records may lag the send's answer.
    lookup_lag_s: float = 0.0
    #: A message older than this many seconds is no longer served by those GETs (404 /
    #: 10005): the spec's ``GET /messages/{id}`` serves messages "no older than 10 days".
    keeps_s: float = API_KEEPS_S
    #: The account's numbers: a send ``from`` any other is refused, 400 / 40305 ("Invalid
    #: 'from' address"), nothing accepted, as Telnyx sends only from numbers on the account's
    #: messaging profiles. None: any well-formed sender is the account's.
    numbers: frozenset[str] | None = None
    #: Write the GETs' money amounts as JSON numbers (``"amount": 0.0051``), as the API
    #: reference's example for ``GET /messages/{id}`` does; the spec's schema says a string.
    numeric_amounts: bool = False
    #: Answer with no more than the spec promises: in every message object (the send's
    #: answer, both GETs, the webhooks' payload) each nullable field null, each other one
    #: absent (the spec requires none) but ``id``, ``to``'s numbers and statuses and the
    #: errors of a failed delivery; and fields the spec does not declare beside them, as a
    #: newer API may add. A webhook is then its event alone: no ``meta``, ``occurred_at`` or
    #: ``record_type``. Off: every field as the spec's examples give it.
    sparse_answers: bool = False
    #: Write every time in turn in each form Telnyx may use (:data:`STAMP_FORMS`: ``Z`` or an
    #: offset, a fraction of 0 to 9 digits, a space for the ``T``). Off: each field as the
    #: spec's example for it writes it.
    varied_stamps: bool = False
    #: Where delivery webhooks go when a message names no ``webhook_url`` (the profile's URL).
    webhook_url: str | None = None
    #: The account's Ed25519 key: webhooks are posted, signed, only when it is set.
    signing_key: Ed25519PrivateKey | None = None
    #: Post the webhooks due (:meth:`pump_webhooks`) once a message is accepted and before
    #: its answer goes back: Telnyx's webhooks and the send's answer race, and nothing says
    #: the answer is read first (a sender's ``sent`` line may come after its webhooks).
    webhooks_before_answer: bool = False
    #: Take this many 2xx answers to each webhook as lost (0 to 2), as Telnyx takes an answer
    #: that is lost or later than 2 s: the event, the same id, ``occurred_at`` and payload,
    #: is delivered again at its next attempt (the same URL while it has attempts left, of
    #: the three Telnyx makes, then the failover URL), after the other events' first
    #: deliveries. Off: an event answered 2xx is not delivered again.
    webhook_repeats: int = 0
    #: Post the due webhooks latest first, and hold a recipient's ``message.sent`` back until
    #: its ``message.finalized`` is due: it comes after it, stamped when it happened. Nothing
    #: in the docs orders Telnyx's deliveries, and a retried ``message.sent`` comes after a
    #: ``message.finalized`` that got through. Off: in the order the timeline reached them.
    webhooks_out_of_order: bool = False
    #: Post webhooks whose payload names no sender (no ``from``): the spec requires none of
    #: its fields. Off: ``from`` as the spec's example gives it.
    webhooks_without_from: bool = False
    #: Name the group message in every message object and detail record
    #: (``group_message_id``: the send's id): in the send's answer, the GETs' messages, each
    #: recipient's webhook payload and each detail record, as Telnyx's support article 8255134
    #: says ("returned via API response, webhooks and ... detailed records"); the spec
    #: declares no such field. Off: none names it.
    group_message_ids: bool = False
    #: Answer a send with its first recipient's own message (``id``: that recipient's, as
    #: ``GET /messages/{id}`` serves it; ``to``: every member) naming the group message only
    #: by ``group_message_id``, which ``GET /messages/group/{message_id}`` takes: the article
    #: says the API response returns ``group_message_id``, so its ``id`` need not be the
    #: group's. Implies :attr:`group_message_ids`. Off: the send's ``id`` is the group's.
    member_id_answers: bool = False
    #: List the group's own message (its id, every member under ``to`` with its status)
    #: first in ``GET /messages/group/{message_id}``, beside each recipient's own: the spec
    #: says it retrieves "all messages in a group MMS conversation". Off: each recipient's.
    group_message_listed: bool = False
    #: Post due webhooks every this many seconds while served (None: only on
    #: :meth:`pump_webhooks`), sleeping with :attr:`sleep`.
    webhook_every_s: float | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    #: Called with each message as it is accepted (``--log``: :func:`accept_log_writer`).
    on_accept: Callable[[Accepted], None] | None = None
    queues: dict[str, SenderQueue] = field(default_factory=dict)
    #: (time, sender, recipients) of every accepted message, in order: the server's own log.
    accept_log: list[tuple[float, str, int]] = field(default_factory=list)
    accepted: list[Accepted] = field(default_factory=list)
    #: Every POST body that arrived, faulted or not.
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: Every HTTP request that arrived, any endpoint, before any check.
    http_log: list[SeenRequest] = field(default_factory=list)
    #: Every webhook posted, in order.
    webhooks_sent: list[WebhookPost] = field(default_factory=list)
    by_id: dict[str, Accepted] = field(default_factory=dict)
    by_recipient_id: dict[str, tuple[Accepted, int]] = field(default_factory=dict)
    #: The messages each number (+E.164, as sent) is in, oldest first: the records of one
    #: recipient without a pass over every message.
    by_member: dict[str, list[Accepted]] = field(default_factory=dict)
    _keys: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    # wall time = this + clock() (no wall_clock): timestamps move with an injected clock
    _epoch: float = 0.0
    # (message id, recipient index) -> wall time first seen sent / final
    _sent_at: dict[tuple[str, int], float] = field(default_factory=dict)
    _final_at: dict[tuple[str, int], float] = field(default_factory=dict)
    # (message id, recipient index) -> webhook events already posted
    _posted: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    # the current request-limit window: its start (clock) and requests in it
    _window: tuple[float, int] = (float("-inf"), 0)
    # stamps written so far with varied_stamps: the next one's form
    _stamps: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.webhook_repeats <= 2:
            # Telnyx tries a URL three times (FACTS 7): a 2xx lost at the third is not retried
            raise ValueError(f"webhook_repeats must be 0 to 2, not {self.webhook_repeats}")
        self._epoch = (time.time() if self.wall_clock is None else self.wall_clock()) - self.clock()

    @property
    def names_group_messages(self) -> bool:
        """Whether message objects, webhook payloads and detail records name their group
        message (:attr:`group_message_ids`, or :attr:`member_id_answers`, which needs it)."""
        return self.group_message_ids or self.member_id_answers

    def stamp(self, wall: float, form: tuple[str, int, str] = MESSAGE_STAMP) -> str:
        """``wall`` as the API writes it: in ``form``, or with :attr:`varied_stamps` the next
        of :data:`STAMP_FORMS`."""
        if self.varied_stamps:
            self._stamps += 1
            form = STAMP_FORMS[self._stamps % len(STAMP_FORMS)]
        return iso(wall, form)

    def wall(self) -> float:
        """Unix time on the fake's clock: :attr:`wall_clock`'s, else one that moves with
        :attr:`clock` (so with a fake one)."""
        return self._epoch + self.clock() if self.wall_clock is None else self.wall_clock()

    # -- views for tests -----------------------------------------------------------------

    def queue_for(self, sender: str) -> SenderQueue | None:
        drain = self.sender_drain.get(sender, self.drain_rate)
        if drain is None:
            return None
        if sender not in self.queues:
            self.queues[sender] = SenderQueue(drain, self.queue_cap, last=self.clock())
        return self.queues[sender]

    def set_drain(self, sender: str, drain: float) -> None:
        """Change a sender's drain rate from now on (the queue so far drained at the old one)."""
        self.sender_drain[sender] = drain
        queue = self.queue_for(sender)
        assert queue is not None
        queue.set_drain(self.clock(), drain)

    def adopt(self, message_id: str, sender: str, to: tuple[str, ...], age: float) -> None:
        """Know a message accepted ``age`` seconds ago by another instance (``track --sandbox``:
        the demo's run had a sandbox of its own), so the GETs can answer for it."""
        wall = self.wall() - age
        msg = Accepted(
            id=message_id,
            from_=sender,
            to=to,
            body={"from": sender, "to": list(to)},
            idempotency_key=None,
            received_at=self.stamp(wall),
            recipient_ids=tuple(str(uuid.uuid4()) for _ in to),
            wait_seconds=0.0,
            accepted_at=self.clock() - age,
            received_wall=wall,
        )
        self._remember(msg)

    def opt_out(self, to: str, from_: str = SANDBOX_FROM, keyword: str = "STOP") -> OptOut:
        """``to`` texts ``keyword`` to ``from_`` now: the pair is blocked and listed."""
        entry = OptOut(to, from_, created_at=self.wall(), keyword=keyword)
        self.optouts.append(entry)
        return entry

    def _remember(self, msg: Accepted) -> None:
        """Make ``msg`` known to the GETs, by its id and by each recipient's own id."""
        self.by_id[msg.id] = msg
        for i, rid in enumerate(msg.recipient_ids):
            self.by_recipient_id[rid] = (msg, i)
        for phone in set(msg.to):
            self.by_member.setdefault(phone, []).append(msg)

    def servable(self, msg: Accepted) -> bool:
        """Whether the GETs find ``msg`` now: past :attr:`lookup_lag_s`, within :attr:`keeps_s`."""
        age = self.clock() - msg.accepted_at
        return self.lookup_lag_s <= age <= self.keeps_s

    def recipient_counts(self) -> dict[str, int]:
        """How many accepted messages each number is in."""
        counts: dict[str, int] = {}
        for msg in self.accepted:
            for phone in msg.to:
                counts[phone] = counts.get(phone, 0) + 1
        return counts

    # -- the rules, and where each recipient stands ----------------------------------------

    def refusal_code(self, sender: str, phone: str) -> str | None:
        """The code a send from ``sender`` to ``phone`` is refused with at once, if any."""
        code = rule(self.refuse, phone)
        if code == "40300" and not self._blocked(sender, phone):
            self.opt_out(phone, sender)  # a STOP by rule is a block the opt-out list shows too
        if code is not None and (code in REFUSALS or self.sync_carrier_codes):
            return code
        if self._blocked(sender, phone):
            return "40300"
        return None

    def report_code(self, phone: str) -> str | None:
        """The carrier's code for ``phone`` after acceptance, if it fails (its errors[])."""
        code = rule(self.report, phone)
        if code is None and not self.sync_carrier_codes:
            refused = rule(self.refuse, phone)
            code = refused if refused is not None and refused not in REFUSALS else None
        return code

    def _blocked(self, sender: str, phone: str) -> bool:
        return any(
            o == phone if isinstance(o, str) else (o.to == phone and o.from_ == sender)
            for o in self.optouts
        )

    def status_of(self, msg: Accepted, i: int) -> str:
        """Where recipient ``i`` of ``msg`` stands now.

        :attr:`delivery_status` says how far along it is; a reported code (:meth:`report_code`)
        decides its final status, reached when the timeline ends (a failure that never left
        Telnyx, ``sending_failed``, ends it when it would have been ``sent``).
        """
        phone = msg.to[i]
        if isinstance(self.delivery_status, str):
            base = self.delivery_status
        else:
            base = self.delivery_status(phone, self.clock() - msg.accepted_at)
        code = self.report_code(phone)
        if code is None:
            return base
        final = REPORT_STATUS.get(code, "delivery_failed")
        if base in FINAL_STATUSES or (final in NEVER_SENT and base == "sent"):
            return final
        return base

    def _observe(self, msg: Accepted, i: int) -> str:
        """:meth:`status_of`, noting when the recipient was first seen sent and final."""
        status = self.status_of(msg, i)
        key = (msg.id, i)
        if status == "sent" or (status in FINAL_STATUSES and status not in NEVER_SENT):
            self._sent_at.setdefault(key, self.wall())
        if status in FINAL_STATUSES:
            self._final_at.setdefault(key, self.wall())
        return status

    def _accept(self, body: dict[str, Any], key: str | None, wait: float | None) -> Accepted:
        n = len(self.accepted)
        self.accept_log.append((self.clock(), body["from"], len(body["to"])))
        to = tuple(body["to"])
        wall = self.wall()
        msg = Accepted(
            id=str(uuid.uuid4()),
            from_=body["from"],
            to=to,
            body=body,
            idempotency_key=key,
            received_at=self.stamp(wall),
            recipient_ids=tuple(str(uuid.uuid4()) for _ in to),
            wait_seconds=round(wait if wait is not None else float(self.wait_seconds(n)), 3),
            accepted_at=self.clock(),
            received_wall=wall,
        )
        self.accepted.append(msg)
        self._remember(msg)
        if self.on_accept is not None:
            self.on_accept(msg)
        return msg
