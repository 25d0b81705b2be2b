"""A fake of the Telnyx messaging endpoints bulk_mms uses, as the spec says they behave.

The reference is Telnyx's public OpenAPI spec (the excerpt in ``tests/data/``) and developer
docs (``FACTS.md`` in the team's notes); where the two differ from what would be convenient,
the fake follows them by default:

* ``POST /v2/messages/group_mms`` validates the body as documented (``from``; ``to`` of 1 to 8
  numbers in +E.164; ``text`` non-empty when given; text or media required), keeps the message
  and answers an ``OutboundMessagePayload`` (every ``to[].status`` ``queued``, ``cost`` an
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
* ``GET /v2/reports/mdrs`` lists one detail record per recipient of each accepted message,
  filtered and paged, and not before :attr:`FakeTelnyx.records_lag_s` has passed.
* ``GET /v2/messaging_optouts`` lists opt-out blocks (from→to pairs), filtered, paged and
  redacted as documented.
* With a ``signing_key``, ``message.sent`` and ``message.finalized`` webhooks (one per
  recipient) are posted, Ed25519-signed, as the timeline reaches them
  (:meth:`FakeTelnyx.pump_webhooks`), ``occurred_at`` with a ``+00:00`` offset as Telnyx's
  examples write it; with ``webhooks_before_answer``, before the send's answer goes back (they
  race it at Telnyx).

A variant the spec allows is a switch too: ``statuses_in_cc`` lists a group's members past
the first under ``cc``, with their statuses, in the group's own message.

The kinder behaviours older tests rely on are switches, off by default: ``replay_keys``
(replay a repeated key's first success), ``sync_carrier_codes`` (answer carrier codes with a
400), ``name_refused_members`` (a 40300 names each opted-out member), ``redaction_default``.

Faults are scripted per request with :class:`Fault` objects queued on :attr:`FakeTelnyx.faults`
(a status with headers, 5xx, a dropped connection before or after the message was accepted, a
slow answer, a 200 with no id or a body that is not JSON...), and ``wait_seconds`` comes from a
callable or a queue model, so a test can make it grow. Time is :attr:`FakeTelnyx.clock`: a test
injects a fake one, and every timestamp the fake writes moves with it.

Run it alone with ``python -m bulk_mms.fake_api --port 8080``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import functools
import gzip
import math
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

import aiohttp
import orjson
from aiohttp import web

from bulk_mms import delivery
from bulk_mms.codes import MEANINGS

if TYPE_CHECKING:  # cryptography is the webhooks extra's: the sandbox sends without it
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FaultKind = Literal[
    "status",
    "status_after",
    "drop_before",
    "drop_after",
    "slow",
    "no_id",
    "not_json",
    "truncated",
    "redirect",
    "endless",
    "bomb",
    "patch",
    "raw",
]
_E164_NANP = re.compile(r"^\+1[2-9]\d{2}[2-9]\d{6}$")
_SENDER = re.compile(r"^(\+[1-9]\d{6,14}|\d{3,8}|(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11})$")
#: The estimate the POST gives per recipient (the spec's example: rate + carrier fee).
COST_PER_RECIPIENT = "0.0051"
ZERO: Final = Decimal(0)
#: Per recipient: the rate, the estimated carrier fee, and the final one (a carrier's
#: pass-through fee, known once the message is final: the POST's cost is an estimate).
RATE: Final = Decimal("0.00205")
CARRIER_FEE_ESTIMATE: Final = Decimal("0.00305")
CARRIER_FEE_FINAL: Final = Decimal("0.00400")
#: The sandbox account's identities, as the spec's examples give them.
SANDBOX_FROM: Final = "+18445550001"
PROFILE_ID: Final = "4000eba1-a0c0-4563-9925-b25e842a7cb6"
PROFILE_NAME: Final = "sandbox"
ORGANIZATION_ID: Final = "b448f9cc-a842-4784-98e9-03c1a5872950"


@dataclass(slots=True)
class Fault:
    """One scripted misbehaviour, used by the next POST that reaches the server.

    Args:
        kind: ``status`` (answer ``status`` with ``headers`` and a Telnyx error body),
            ``status_after`` (accept, then answer ``status`` as ``status`` does: a gateway's
            5xx after the server acted),
            ``drop_before`` (close the connection without accepting, after ``delay``
            seconds), ``drop_after`` (accept, then close without answering), ``slow`` (accept
            after ``delay`` seconds),
            ``no_id`` (accept, answer 200 without an id), ``not_json`` (accept, answer 200 with
            a body that is not JSON), ``truncated`` (accept, then cut the body off midway),
            ``redirect`` (answer ``status``, a 3xx, with ``Location: location``, accepting
            nothing), ``endless`` (accept, then send a 200 body that never ends), ``bomb``
            (accept, then send a 200 gzip body of a few KiB, its Content-Length honest, that
            inflates to 8 MiB),
            ``patch`` (accept, and answer with ``patch`` merged into the response's ``data``:
            ``{"wait_seconds": 1e12}``, an overflowing cost, someone else's numbers...),
            ``raw`` (accept, and answer 200 with the bytes ``raw``, ``{id}`` replaced by the
            message id: JSON that no encoder would write, such as ``1e999``).
    """

    kind: FaultKind
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    code: str = ""
    delay: float = 0.0
    location: str = "/v2/elsewhere"
    patch: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""


#: Named misbehaviours, for the sandbox (``BULK_MMS_SANDBOX_FAULTS``) and ``--fault``.
FAULT_PRESETS: dict[str, Callable[[], Fault]] = {
    "status-500": lambda: Fault("status", 500),
    "status-503": lambda: Fault("status", 503),
    "status-502-after": lambda: Fault("status_after", 502),
    # Telnyx's documented rate limit: code 10011 and x-ratelimit-* (reset in seconds)
    "status-429": lambda: Fault(
        "status",
        429,
        headers={"x-ratelimit-limit": "20", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"},
        code="10011",
    ),
    "queue-full": lambda: Fault("status", 429, code="40318"),
    "refused-422": lambda: Fault("status", 422, code="10015"),
    "huge-retry-after": lambda: Fault("status", 429, headers={"Retry-After": "1000000000000"}),
    "huge-ratelimit-reset": lambda: Fault(
        "status", 429, headers={"x-ratelimit-reset": "99999999999999"}
    ),
    "huge-wait": lambda: Fault("patch", patch={"wait_seconds": 1e12}),
    "overflow-cost": lambda: Fault(
        "patch", patch={"cost": {"amount": "9e999999999", "currency": "USD"}}
    ),
    "negative-cost": lambda: Fault("patch", patch={"cost": {"amount": "-5", "currency": "USD"}}),
    "foreign-numbers": lambda: Fault(
        "patch", patch={"to": [{"phone_number": "+12025550000", "status": "queued"}]}
    ),
    "endless-body": lambda: Fault("endless"),
    "gzip-bomb": lambda: Fault("bomb"),
    "redirect-302": lambda: Fault("redirect", 302),
    "redirect-307": lambda: Fault("redirect", 307),
    "drop-before": lambda: Fault("drop_before"),
    "drop-after": lambda: Fault("drop_after"),
    "slow": lambda: Fault("slow", delay=5.0),
    "no-id": lambda: Fault("no_id"),
    "not-json": lambda: Fault("not_json"),
    "truncated": lambda: Fault("truncated"),
}


def accept_log_writer(path: str) -> Callable[[Accepted], None]:
    """An :attr:`FakeTelnyx.on_accept` that appends each accepted message to ``path`` as one
    JSON line (``id``, ``from``, ``to``, ``key``: its Idempotency-Key, ``received_at``),
    flushed at once: what the API took, to check a run against while it goes on or after a
    crash."""
    log = open(path, "ab")  # noqa: SIM115 - open for the server's whole life

    def write(msg: Accepted) -> None:
        line = {
            "id": msg.id,
            "from": msg.from_,
            "to": msg.to,
            "key": msg.idempotency_key,
            "received_at": msg.received_at,
        }
        log.write(orjson.dumps(line) + b"\n")
        log.flush()

    return write


def parse_faults(spec: str) -> list[Fault]:
    """``"huge-wait,redirect-302*3"``: presets in order, each ``*N`` times (once by default).

    Raises:
        ValueError: an unknown name or a bad count, naming the choices.
    """
    out: list[Fault] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition("*")
        if name not in FAULT_PRESETS or (count and not count.isdigit()):
            raise ValueError(f"unknown fault {item!r}; use one of {', '.join(FAULT_PRESETS)}")
        out.extend(FAULT_PRESETS[name]() for _ in range(int(count or 1)))
    return out


@dataclass(slots=True)
class Accepted:
    """A group message the fake accepted."""

    id: str
    from_: str
    to: tuple[str, ...]
    body: dict[str, Any]
    idempotency_key: str | None
    received_at: str
    #: Per-recipient message ids, same order as ``to``.
    recipient_ids: tuple[str, ...]
    wait_seconds: float
    #: ``clock()`` when accepted: the start of its delivery timeline.
    accepted_at: float = 0.0
    #: :meth:`FakeTelnyx.wall` when accepted (``received_at`` as a number).
    received_wall: float = 0.0


@dataclass(frozen=True, slots=True)
class OptOut:
    """One opt-out block: ``to`` texted ``keyword`` to ``from_`` (a from→to pair).

    ``created_at`` is a wall-clock time (Unix seconds) on the fake's :meth:`~FakeTelnyx.wall`.
    """

    to: str
    from_: str = SANDBOX_FROM
    created_at: float = 0.0
    keyword: str = "STOP"
    messaging_profile_id: str = PROFILE_ID


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """One HTTP request as it reached the fake, for tests to check (against the spec, say)."""

    method: str
    path: str
    #: The raw query string, undecoded (``page[number]=2&page[size]=250``).
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class WebhookPost:
    """One webhook the fake posted: the event, the URL, and the receiver's answer."""

    event_type: str
    phone: str
    status: str
    url: str
    attempt: int
    #: The receiver's HTTP status; None when the connection failed.
    answer: int | None
    body: bytes


#: The sandbox's carrier rules for ``run --sandbox`` and ``track --sandbox`` (and so
#: ``make demo``): a number ending in 0300 has opted out (40300: its group is refused with 409),
#: one ending in 0016 is reported past T-Mobile's daily cap (40016: a delivery status after
#: acceptance, resendable).
SANDBOX_REFUSE: Final = {"*0300": "40300"}
SANDBOX_REPORT: Final = {"*0016": "40016"}

#: The codes the API answers a POST with, and their HTTP status (FACTS 3): the only refusals
#: the fake gives synchronously by default. Carrier codes (40001-40018...) are not here: they
#: come after acceptance, in delivery statuses, records and webhooks.
REFUSALS: Final[Mapping[str, tuple[int, str]]] = {
    "40300": (409, MEANINGS["40300"]),
    "40318": (429, MEANINGS["40318"]),
    "40333": (429, MEANINGS["40333"]),
    "20100": (402, MEANINGS["20100"]),
    "10009": (401, "Authentication failed"),
    "10011": (429, "Too many requests"),
}
#: The kind fake's old answers for carrier codes, used only with ``sync_carrier_codes=True``.
_KIND_REFUSALS: Final = dict.fromkeys(("40016", "40018", "40002", "40011", "40003", "40315"), 400)
#: The delivery status a reported code ends in; any other reported code: ``delivery_failed``.
#: (The spec: a message not out of the queue in time "will be discarded and marked as
#: 'sending_failed'".)
REPORT_STATUS: Final[Mapping[str, str]] = {"40014": "sending_failed"}

#: Every delivery status a recipient of a group message can have (the spec's eight, and
#: ``unknown``: final and unconfirmed, for recipients not on Telnyx's network, FACTS 4).
STATUSES: Final = delivery.STATUSES
FINAL_STATUSES: Final = delivery.FINAL
#: The statuses the spec allows a ``cc[]`` entry (no ``expired``, no ``unknown``).
CC_STATUSES: Final = frozenset(STATUSES) - {"expired", "unknown"}
#: Final statuses of messages that never left Telnyx: no ``message.sent``, no charge.
NEVER_SENT: Final = frozenset({"sending_failed", "expired"})
#: The MDR status each final delivery status is recorded as (MdrDetailResponse.status).
MDR_STATUS: Final[Mapping[str, str]] = {
    "delivered": "DELIVERED",
    "delivery_failed": "FAILED",
    "sending_failed": "GW_REJECT",
    "expired": "GW_TIMEOUT",
    "delivery_unconfirmed": "DLR_UNCONFIRMED",
    "unknown": "DLR_UNCONFIRMED",
}
#: Largest ``page[size]`` of the list endpoints (the spec's maximum).
MAX_PAGE_SIZE = 250


@dataclass(slots=True)
class SenderQueue:
    """Telnyx's queue for one sender, as a fluid model: it drains at ``drain`` messages/s.

    A message arriving behind ``q`` others waits ``q / drain`` seconds; one that would make the
    queue longer than ``cap`` is refused with 429 / 40318 ("Message queue full").
    """

    drain: float
    cap: float
    q: float = 0.0
    last: float = 0.0

    def settle(self, now: float) -> None:
        self.q = max(0.0, self.q - (now - self.last) * self.drain)
        self.last = now

    def offer(self, now: float, size: float) -> float | None:
        """Queue ``size`` messages; return the wait of the first, or None if the queue is full."""
        self.settle(now)
        if self.q + size > self.cap:
            return None
        wait = self.q / self.drain
        self.q += size
        return wait

    def set_drain(self, now: float, drain: float) -> None:
        self.settle(now)
        self.drain = drain


@dataclass
class FakeTelnyx:
    """State and behaviour of the fake API. Tests inspect :attr:`accepted` and :attr:`requests`.

    By default it behaves as the spec and Telnyx's docs say, not more kindly: keys are not
    replayed, carrier codes come only as delivery statuses, a 40300 on a group names no
    member, opt-outs are listed redacted unless asked otherwise. Each kindness the older tests
    relied on is a constructor switch (``replay_keys``, ``sync_carrier_codes``,
    ``name_refused_members``, ``redaction_default``), off by default.
    """

    #: The key to require; None accepts any non-empty bearer token.
    api_key: str | None = None
    #: Replay a repeated ``Idempotency-Key``'s first success (and 422 on another body), as a
    #: server that honours keys would. Off: the header is ignored, as Telnyx documents for
    #: group MMS (FACTS 1): a repeat is a new message with a new id, charged again.
    replay_keys: bool = False
    #: Answer carrier codes in :attr:`refuse` (40016, 40003...) synchronously with a 400, as
    #: the kind fake did. Off: they are accepted and reported in delivery statuses.
    sync_carrier_codes: bool = False
    #: Name each opted-out member of a refused group (one error each, ``source.pointer``
    #: ``/to/i``). Off: one 40300 error naming nobody; the spec does not say it names any.
    name_refused_members: bool = False
    #: List a group's members past the first under ``cc``, each with its status, in the
    #: group's own message (the send's answer, ``GET /messages/{id}`` of the group's id), and
    #: answer ``GET /messages/group/{id}`` with that one message: the spec gives ``cc[]`` a
    #: status, and does not say a group's members are all under ``to``. Off: every member
    #: is under ``to``, and the group's GET lists one message per recipient.
    statuses_in_cc: bool = False
    #: What ``GET /messaging_optouts`` does when ``redaction_enabled`` is not given: True
    #: redacts ``to`` (``+447766****``), False lists the numbers.
    redaction_default: bool = True
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
    #: Refusals by rule: number (or ``*`` and its last four digits) → Telnyx error code. A
    #: send naming one with a code of :data:`REFUSALS` (40300, 20100, 40333...) is refused
    #: with that code and status: nothing is accepted. Any other code (a carrier's: 40016,
    #: 40003...) is a carrier's verdict after acceptance, reported like :attr:`report`
    #: (unless ``sync_carrier_codes``).
    refuse: dict[str, str] = field(default_factory=dict)
    #: Delivery reports by rule, the same way: such a recipient is accepted and then ends
    #: ``delivery_failed`` (or :data:`REPORT_STATUS`'s) with that code in ``errors``.
    report: dict[str, str] = field(default_factory=dict)
    #: Opt-out blocks, as ``GET /messaging_optouts`` lists them. An :class:`OptOut` blocks its
    #: from→to pair; a bare number is blocked from every sender of the profile (listed from
    #: :data:`SANDBOX_FROM`). A send to a blocked pair is refused: 409 / 40300.
    optouts: list[str | OptOut] = field(default_factory=list)
    #: Detail records younger than this many seconds are not listed yet (Telnyx: the last
    #: hours' MDRs may be missing).
    records_lag_s: float = 0.0
    #: Where delivery webhooks go when a message names no ``webhook_url`` (the profile's URL).
    webhook_url: str | None = None
    #: The account's Ed25519 key: webhooks are posted, signed, only when it is set.
    signing_key: Ed25519PrivateKey | None = None
    #: Post the webhooks due (:meth:`pump_webhooks`) once a message is accepted and before
    #: its answer goes back: Telnyx's webhooks and the send's answer race, and nothing says
    #: the answer is read first (a sender's ``sent`` line may come after its webhooks).
    webhooks_before_answer: bool = False
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
    #: The messages each number (without its ``+``) is in, oldest first: the records of one
    #: recipient without a pass over every message.
    by_member: dict[str, list[Accepted]] = field(default_factory=dict)
    _keys: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    # wall time = this + clock(): timestamps move with an injected clock
    _epoch: float = 0.0
    # (message id, recipient index) -> wall time first seen sent / final
    _sent_at: dict[tuple[str, int], float] = field(default_factory=dict)
    _final_at: dict[tuple[str, int], float] = field(default_factory=dict)
    # (message id, recipient index) -> webhook events already posted
    _posted: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    # the current request-limit window: its start (clock) and requests in it
    _window: tuple[float, int] = (float("-inf"), 0)

    def __post_init__(self) -> None:
        self._epoch = time.time() - self.clock()

    def wall(self) -> float:
        """Unix time on the fake's clock: it moves with :attr:`clock` (so with a fake one)."""
        return self._epoch + self.clock()

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
            received_at=_iso(wall),
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
            self.by_member.setdefault(phone.lstrip("+"), []).append(msg)

    def recipient_counts(self) -> dict[str, int]:
        """How many accepted messages each number is in."""
        counts: dict[str, int] = {}
        for msg in self.accepted:
            for phone in msg.to:
                counts[phone] = counts.get(phone, 0) + 1
        return counts

    # -- the app ------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application: the five endpoints, and the webhook pump when asked."""
        app = web.Application(middlewares=[self._front])
        app.router.add_post("/v2/messages/group_mms", self.send_group_mms)
        app.router.add_get("/v2/messages/group/{message_id}", self.get_group)
        app.router.add_get("/v2/messages/{id}", self.get_message)
        app.router.add_get("/v2/messaging_optouts", self.get_optouts)
        app.router.add_get("/v2/reports/mdrs", self.get_mdrs)
        if self.webhook_every_s is not None:
            app.cleanup_ctx.append(self._pumping)
        return app

    @web.middleware
    async def _front(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Log every request as it came (:attr:`http_log`), then apply the request limit."""
        raw = await request.read()  # aiohttp keeps it: the handler reads it again
        self.http_log.append(
            SeenRequest(
                request.method, request.path, request.query_string, dict(request.headers), raw
            )
        )
        if (limited := self._over_limit()) is not None:
            return limited
        return await handler(request)

    def _over_limit(self) -> web.Response | None:
        """429 / 10011 with ``x-ratelimit-*`` (reset in seconds) past :attr:`request_limit`."""
        if self.request_limit is None:
            return None
        limit, window = self.request_limit
        now = self.clock()
        start, count = self._window
        if now - start >= window:
            start, count = now, 0
        count += 1
        self._window = (start, count)
        if count <= limit:
            return None
        headers = {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": str(max(1, math.ceil(start + window - now))),
        }
        return _errors(429, "10011", REFUSALS["10011"][1], "Rate limit exceeded.", headers)

    def _auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not token or (self.api_key is not None and token != self.api_key):
            return _errors(401, "10009", "Authentication failed", "The API key is not valid.")
        return None

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

    async def send_group_mms(self, request: web.Request) -> web.StreamResponse:  # noqa: C901, PLR0911, PLR0912 - the API's own branching: each scripted fault and refusal answers here
        if (denied := self._auth(request)) is not None:
            return denied
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _errors(400, "10015", "Bad Request", "The request body is not valid JSON.")
        self.requests.append(body if isinstance(body, dict) else {"_": body})
        fault = self.faults.popleft() if self.faults else None
        if fault is not None and fault.kind == "status":
            return _errors(
                fault.status, fault.code or str(fault.status), "Scripted fault", "", fault.headers
            )
        if fault is not None and fault.kind == "drop_before":
            await asyncio.sleep(fault.delay)  # a request held, never taken in
            return _drop(request)
        if fault is not None and fault.kind == "redirect":
            return web.Response(status=fault.status, headers={"Location": fault.location})
        if (invalid := _validate(body)) is not None:
            return invalid
        key = request.headers.get("Idempotency-Key")
        if key is not None and self.replay_keys and key in self._keys:
            first_raw, first_response = self._keys[key]
            if first_raw != raw:
                return _errors(
                    422, "10015", "Idempotency key reused", "Same key, different request body."
                )
            return _json(200, first_response)  # a replay, whatever the rules say by now
        refused = [
            (i, p, code)
            for i, p in enumerate(body["to"])
            if (code := self.refusal_code(body["from"], p)) is not None
        ]
        if refused:
            return self._refusal(body["from"], refused)
        wait: float | None = None
        queue = self.queue_for(body["from"])
        if queue is not None:
            size = len(body["to"]) if self.queue_unit == "recipient" else 1
            wait = queue.offer(self.clock(), size)
            if wait is None:
                return _errors(429, "40318", "Message queue full", "Try again later.")
        msg = self._accept(body, key, wait)
        response = {"data": self._record(msg, live=False)}
        if self.webhooks_before_answer:
            await self.pump_webhooks()
        if key is not None and self.replay_keys:
            self._keys[key] = (raw, response)
        if fault is not None:
            if fault.kind == "drop_after":
                return _drop(request)
            if fault.kind == "status_after":
                return _errors(fault.status, fault.code or str(fault.status), "Scripted fault", "")
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
            elif fault.kind == "no_id":
                del response["data"]["id"]
            elif fault.kind == "not_json":
                return web.Response(status=200, body=b"<html>oops", content_type="text/html")
            elif fault.kind == "truncated":
                return await _truncated(request, orjson.dumps(response))
            elif fault.kind == "endless":
                return await _endless(request)
            elif fault.kind == "bomb":
                return web.Response(
                    status=200,
                    body=_bomb(),
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                )
            elif fault.kind == "patch":
                response = {"data": {**response["data"], **fault.patch}}
            elif fault.kind == "raw":
                body = fault.raw.replace(b"{id}", msg.id.encode())
                return web.Response(status=200, body=body, content_type="application/json")
        return _json(200, response)

    def _refusal(self, sender: str, refused: list[tuple[int, str, str]]) -> web.Response:
        """The answer to a send that names refused numbers: the first one's code. An opt-out
        is one 40300 naming nobody, or (``name_refused_members``) one error per opted-out
        member with its ``source.pointer``."""
        _, first, code = refused[0]
        status, title = REFUSALS.get(code) or (
            _KIND_REFUSALS.get(code, 400),
            MEANINGS.get(code, ""),
        )
        if code != "40300":
            return _errors(status, code, title or "Refused", f"Refused for {first}.")
        if not self.name_refused_members:
            detail = f"Messages cannot be sent from {sender} due to an existing block rule."
            return _errors(status, code, title, detail)
        errors = [
            {
                "code": code,
                "title": title,
                "detail": f"Messages cannot be sent from {sender} to {phone} due to an "
                "existing block rule.",
                "source": {"pointer": f"/to/{i}"},
            }
            for i, phone, c in refused
            if c == code
        ]
        return _json(status, {"errors": errors})

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
            received_at=_iso(wall),
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

    def _record(
        self,
        msg: Accepted,
        *,
        only: int | None = None,
        live: bool = False,
        status: str | None = None,
    ) -> dict[str, Any]:
        """The documented message object (OutboundMessagePayload), for the whole group or for
        recipient ``only``.

        ``live``: statuses as they stand now (the GETs), else ``queued`` (the send);
        ``status`` overrides it (a webhook's). Money is a string amount: the estimate until a
        recipient is final, then its final cost (null for one that never left Telnyx).
        """
        indexes = list(range(len(msg.to))) if only is None else [only]
        if status is not None:
            statuses = [status] * len(indexes)
        else:
            statuses = [self._observe(msg, i) if live else "queued" for i in indexes]
        keys = [(msg.id, i) for i in indexes]
        costs = [_cost_of(s) for s in statuses]
        rates = [c[0] for c in costs if c is not None]
        fees = [c[1] for c in costs if c is not None]
        sent = [self._sent_at[k] for k in keys if k in self._sent_at]
        final = [self._final_at[k] for k in keys if k in self._final_at]
        all_final = live and all(s in FINAL_STATUSES for s in statuses)
        errors = [
            _report_error(self.report_code(msg.to[i]))
            for i, s in zip(indexes, statuses, strict=True)
            if s in ("delivery_failed", "sending_failed")
        ]
        body = msg.body
        text = body.get("text")
        listed = [
            {
                "phone_number": msg.to[i],
                "status": s,
                "carrier": "T-MOBILE USA, INC.",
                "line_type": "Wireless",
            }
            for i, s in zip(indexes, statuses, strict=True)
        ]
        in_cc = self.statuses_in_cc and only is None
        if in_cc:  # cc's status enum has neither expired nor unknown: no status, then
            for entry in listed[1:]:
                if entry["status"] not in CC_STATUSES:
                    del entry["status"]
        record: dict[str, Any] = {
            "record_type": "message",
            "direction": "outbound",
            "id": msg.id if only is None else msg.recipient_ids[only],
            "type": "MMS",
            "messaging_profile_id": PROFILE_ID,
            "organization_id": ORGANIZATION_ID,
            "from": {"phone_number": msg.from_, "carrier": "TELNYX LLC", "line_type": "VoIP"},
            "to": listed[:1] if in_cc else listed,
            # a recipient's own message shows the group's other participants (Telnyx: group
            # webhooks "will show all participants"), with no status of theirs; the group's
            # own message, with statuses_in_cc, its members past the first, with theirs
            "cc": listed[1:]
            if in_cc
            else [
                {"phone_number": p, "carrier": "T-MOBILE USA, INC.", "line_type": "Wireless"}
                for j, p in enumerate(msg.to)
                if only is not None and j != only
            ],
            "text": text,
            "subject": body.get("subject"),
            "media": [
                {"url": u, "content_type": None, "sha256": None, "size": None}
                for u in body.get("media_urls") or []
            ],
            "webhook_url": body.get("webhook_url"),
            "webhook_failover_url": body.get("webhook_failover_url"),
            "encoding": "GSM-7",
            "parts": 1,
            "tags": [],
            "cost": _money(sum(rates, ZERO) + sum(fees, ZERO)) if rates else None,
            "cost_breakdown": (
                {"carrier_fee": _money(sum(fees, ZERO)), "rate": _money(sum(rates, ZERO))}
                if rates
                else None
            ),
            "received_at": msg.received_at,
            "sent_at": _iso(min(sent)) if sent else None,
            "completed_at": _iso(max(final)) if all_final and final else None,
            "valid_until": None,
            "errors": errors,
            "wait_seconds": msg.wait_seconds,
        }
        if text is None:
            del record["text"]  # the schema's text is a string, not nullable: absent, not null
        else:
            record["num_chars"] = len(text)
        return record

    async def get_group(self, request: web.Request) -> web.Response:
        """``GET /messages/group/{message_id}``: one message per recipient, as they stand."""
        if (denied := self._auth(request)) is not None:
            return denied
        msg = self.by_id.get(request.match_info["message_id"])
        if msg is None:
            return _errors(404, "10005", "Resource not found", "No such group message.")
        if self.statuses_in_cc:
            return _json(200, {"data": [self._record(msg, live=True)]})
        data = [self._record(msg, only=i, live=True) for i in range(len(msg.to))]
        return _json(200, {"data": data})

    async def get_message(self, request: web.Request) -> web.Response:
        """``GET /messages/{id}``: a group message (every recipient) or one recipient's."""
        if (denied := self._auth(request)) is not None:
            return denied
        mid = request.match_info["id"]
        if mid in self.by_id:
            data = self._record(self.by_id[mid], live=True)
        elif mid in self.by_recipient_id:
            msg, i = self.by_recipient_id[mid]
            data = self._record(msg, only=i, live=True)
        else:
            return _errors(404, "10005", "Resource not found", "No such message.")
        return _json(200, {"data": data})

    # -- lists: opt-outs and detail records ---------------------------------------------

    async def get_optouts(self, request: web.Request) -> web.StreamResponse:
        """``GET /messaging_optouts``: the opt-out blocks (from→to pairs), a page at a time.

        Filters ``filter[messaging_profile_id]``, ``filter[from]``, ``created_at[gte]`` and
        ``created_at[lte]``; ``to`` is redacted (``+447766****``) unless
        ``redaction_enabled=false`` (or :attr:`redaction_default` is False and it is not
        given). ``page[size]`` above 250 is a 400, as the spec bounds it.
        """
        # the spec answers this list's 400 and 401 with one bare messaging_Error, no errors[]
        if self._auth(request) is not None:
            return _json(401, _error("10009", "Authentication failed", "The API key is not valid."))
        q = request.query
        try:
            page, size = _paging(q)
            gte = _when(q.get("created_at[gte]"))
            lte = _when(q.get("created_at[lte]"))
            redact = _flag(q.get("redaction_enabled"), self.redaction_default)
        except ValueError as exc:
            return _json(400, _error("10015", "Invalid parameter", str(exc)))
        items = [
            o if isinstance(o, OptOut) else OptOut(o, created_at=self._epoch) for o in self.optouts
        ]
        profile, sender = q.get("filter[messaging_profile_id]"), q.get("filter[from]")
        chosen = [
            o
            for o in items
            if (profile is None or o.messaging_profile_id == profile)
            and (sender is None or o.from_ == sender)
            and (gte is None or o.created_at >= gte)
            and (lte is None or o.created_at <= lte)
        ]
        data = [
            {
                "from": o.from_,
                "to": _redacted(o.to) if redact else o.to,
                "keyword": o.keyword,
                "messaging_profile_id": o.messaging_profile_id,
                "created_at": _iso(o.created_at),
            }
            for o in chosen[(page - 1) * size : page * size]
        ]
        return _json(200, {"data": data, "meta": _meta(page, size, len(chosen))})

    def mdrs(self, cld: str | None = None) -> list[dict[str, Any]]:
        """Every detail record listed now: one per recipient of each accepted message older
        than :attr:`records_lag_s`, oldest first, each stamped with its message's sent time
        (the spec's ``created_at``, "Message sent time": when the queue let it go, its
        ``wait_seconds`` after the API took it). With ``cld``, only that recipient's (with or
        without its ``+``), read from :attr:`by_member`: a lookup, however many were sent."""
        cutoff = self.wall() - self.records_lag_s
        out = []
        messages = self.by_id.values() if cld is None else self.by_member.get(cld.lstrip("+"), [])
        for msg in sorted(messages, key=lambda m: m.received_wall):
            sent_on = msg.received_wall + msg.wait_seconds
            if sent_on > cutoff:
                continue
            for i, phone in enumerate(msg.to):
                if cld is not None and phone.lstrip("+") != cld.lstrip("+"):
                    continue
                status = self._observe(msg, i)
                cost = _cost_of(status) or (ZERO, ZERO)
                price = _cost_of("delivered") or (ZERO, ZERO)
                out.append(
                    {
                        "record_type": "mdr_report",
                        "id": msg.recipient_ids[i],
                        "cli": msg.from_,
                        "cld": phone,
                        "created_at": _iso(sent_on),
                        "direction": "outbound",
                        "message_type": "MMS",
                        # an MDR's status is the final one; until then, no receipt yet
                        "status": MDR_STATUS.get(status, "DLR_UNCONFIRMED"),
                        "rate": _amount(sum(price, ZERO)),
                        "parts": 1,
                        "cost": _amount(sum(cost, ZERO)),
                        "currency": "USD",
                        "profile_name": PROFILE_NAME,
                    }
                )
        return out

    async def get_mdrs(self, request: web.Request) -> web.StreamResponse:
        """``GET /reports/mdrs``: the detail records (:meth:`mdrs`), filtered and paged.

        Filters ``start_date`` and ``end_date`` (ISO 8601 date or time, both inclusive),
        ``id``, ``direction``, ``cli``, ``cld``, ``status``, ``message_type``. The spec names no
        page parameters for it but answers with ``meta``; the fake pages with ``page[number]``
        and ``page[size]`` (default 20, at most 250) like Telnyx's other lists.
        """
        if (denied := self._auth(request)) is not None:
            return denied
        q = request.query
        try:
            page, size = _paging(q)
            start, end = _when(q.get("start_date")), _when(q.get("end_date"))
        except ValueError as exc:
            return _errors(400, "10015", "Bad Request", str(exc))
        direction = q.get("direction")
        if direction is not None and direction.upper() not in ("INBOUND", "OUTBOUND"):
            return _errors(400, "10015", "Bad Request", "direction is INBOUND or OUTBOUND.")
        exact = {k: q[k] for k in ("id", "cli", "cld") if k in q}
        upper = {k: q[k].upper() for k in ("direction", "status", "message_type") if k in q}
        chosen = []
        for rec in self.mdrs(q.get("cld")):
            at = _when(rec["created_at"])
            assert at is not None
            if (start is not None and at < start) or (end is not None and at > end):
                continue
            if any(rec[k].lstrip("+") != v.lstrip("+") for k, v in exact.items()):
                continue
            if any(rec[k].upper() != v for k, v in upper.items()):
                continue
            chosen.append(rec)
        data = chosen[(page - 1) * size : page * size]
        return _json(200, {"data": data, "meta": _meta(page, size, len(chosen))})

    # -- webhooks -----------------------------------------------------------------------

    def due_events(self) -> list[tuple[Accepted, int, str, str]]:
        """The webhook events the timeline has reached and not yet posted: (message,
        recipient index, event type, status), ``message.sent`` before ``message.finalized``."""
        due = []
        for msg in list(self.by_id.values()):
            for i in range(len(msg.to)):
                status = self._observe(msg, i)
                posted = self._posted.setdefault((msg.id, i), set())
                reached = status == "sent" or status in FINAL_STATUSES
                if reached and status not in NEVER_SENT and "message.sent" not in posted:
                    due.append((msg, i, "message.sent", "sent"))
                if status in FINAL_STATUSES and "message.finalized" not in posted:
                    due.append((msg, i, "message.finalized", status))
        return due

    async def pump_webhooks(self) -> int:
        """Post, signed, every event that is due (:meth:`due_events`); how many were posted.

        Each goes to its message's ``webhook_url``, else :attr:`webhook_url`: up to three
        attempts, then once to ``webhook_failover_url`` (as Telnyx does). An event with no URL,
        or with no :attr:`signing_key`, is not sent. Every attempt is in :attr:`webhooks_sent`.
        """
        if self.signing_key is None:
            return 0
        posted = 0
        async with aiohttp.ClientSession() as session:
            for msg, i, event_type, status in self.due_events():
                self._posted[(msg.id, i)].add(event_type)
                urls = [msg.body.get("webhook_url") or self.webhook_url] * 3
                urls.append(msg.body.get("webhook_failover_url"))
                event = {
                    "event_type": event_type,
                    "id": str(uuid.uuid4()),
                    "occurred_at": _iso(self.wall(), zulu=False),
                    "payload": self._record(msg, only=i, live=True, status=status),
                    "record_type": "event",
                }
                for attempt, url in enumerate(urls, 1):
                    if url is None:
                        continue
                    if await self._post_event(session, url, attempt, event, (msg.to[i], status)):
                        posted += 1
                        break
        return posted

    async def _post_event(
        self,
        session: aiohttp.ClientSession,
        url: str,
        attempt: int,
        event: dict[str, Any],
        about: tuple[str, str],
    ) -> bool:
        """One signed POST of ``event`` (about recipient and status ``about``); whether the
        receiver answered 2xx."""
        assert self.signing_key is not None
        raw = orjson.dumps({"data": event, "meta": {"attempt": attempt, "delivered_to": url}})
        stamp = str(int(self.wall()))
        signature = base64.b64encode(self.signing_key.sign(stamp.encode() + b"|" + raw))
        headers = {
            "Content-Type": "application/json",
            "telnyx-timestamp": stamp,
            "telnyx-signature-ed25519": signature.decode(),
        }
        answer: int | None = None
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with session.post(
                url, data=raw, headers=headers, timeout=aiohttp.ClientTimeout(total=2)
            ) as resp:
                answer = resp.status
        post = WebhookPost(str(event["event_type"]), *about, url, attempt, answer, raw)
        self.webhooks_sent.append(post)
        return answer is not None and 200 <= answer < 300

    async def _pumping(self, _app: web.Application) -> AsyncIterator[None]:
        """While served: post due webhooks every :attr:`webhook_every_s` seconds."""

        async def pump() -> None:
            assert self.webhook_every_s is not None
            while True:
                await self.sleep(self.webhook_every_s)
                await self.pump_webhooks()

        task = asyncio.create_task(pump())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def carrier_timeline(
    fail_every: int = 5,
    sent_after: float = 1.0,
    final_after: float = 3.0,
    *,
    outcomes: Mapping[str, str] | None = None,
) -> Callable[[str, float], str]:
    """A delivery timeline for :attr:`FakeTelnyx.delivery_status`, like a carrier's.

    Every recipient is ``queued``, ``sending`` from half of ``sent_after``, ``sent`` after
    ``sent_after`` seconds, then final after ``final_after``. The final status is the one
    ``outcomes`` gives the number (a rule table: number, or ``*`` and its last four digits →
    any status of :data:`FINAL_STATUSES`, ``unknown`` included), else ``delivery_failed`` for
    numbers whose last four digits are a multiple of ``fail_every`` (0: none), else
    ``delivered``. A final status of a message that never left Telnyx (``sending_failed``,
    ``expired``) comes at ``sent_after``, in place of ``sent``. Deterministic, so a test can
    predict it.

    Raises:
        ValueError: ``outcomes`` names a status that is not final.
    """
    table = dict(outcomes or {})
    if bad := sorted(set(table.values()) - FINAL_STATUSES):
        raise ValueError(f"not final statuses: {', '.join(bad)}")

    def status(phone: str, age: float) -> str:
        final = rule(table, phone) or (
            "delivery_failed" if will_fail(phone, fail_every) else "delivered"
        )
        if age < sent_after / 2:
            return "queued"
        if age < sent_after:
            return "sending"
        if final in NEVER_SENT:
            return final
        return "sent" if age < final_after else final

    return status


def will_fail(phone: str, fail_every: int) -> bool:
    """Whether :func:`carrier_timeline` ends ``phone`` in ``delivery_failed``."""
    return fail_every > 0 and int(phone[-4:]) % fail_every == 0


def _validate(body: object) -> web.Response | None:  # noqa: C901, PLR0911, PLR0912 - the spec's request rules, one check and answer each
    """Refuse what the real API documents as invalid, with a Telnyx-shaped 422."""

    def bad(detail: str, pointer: str) -> web.Response:
        return _errors(422, "10015", "Invalid parameter", detail, pointer=pointer)

    if not isinstance(body, dict):
        return bad("The request body must be an object.", "/")
    sender = body.get("from")
    if not isinstance(sender, str) or not _SENDER.match(sender):
        return bad("'from' must be a +E.164 number, short code or alphanumeric id.", "/from")
    to = body.get("to")
    if not isinstance(to, list) or not to:
        return bad("'to' must be a non-empty list.", "/to")
    if len(to) > 8:
        return bad("No more than 8 destinations are allowed.", "/to")
    if len(set(to)) != len(to):
        return bad("'to' must not repeat a number.", "/to")
    for phone in to:
        if not isinstance(phone, str) or not _E164_NANP.match(phone):
            return bad(f"{phone!r} is not a +E.164 US/Canada number.", "/to")
    text = body.get("text")
    if text is not None and (not isinstance(text, str) or not text):
        return bad("'text' must be a non-empty string.", "/text")
    media = body.get("media_urls")
    if media is not None and (
        not isinstance(media, list) or not all(isinstance(u, str) and u for u in media)
    ):
        return bad("'media_urls' must be a list of URLs.", "/media_urls")
    if not text and not media:
        return bad("A message needs text or media_urls.", "/text")
    for key in ("subject", "webhook_url", "webhook_failover_url"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return bad(f"'{key}' must be a string.", f"/{key}")
    upw = body.get("use_profile_webhooks")
    if upw is not None and not isinstance(upw, bool):
        return bad("'use_profile_webhooks' must be a boolean.", "/use_profile_webhooks")
    return None


def _iso(wall: float, *, zulu: bool = True) -> str:
    """Unix seconds as the API writes times: ISO 8601, milliseconds, ``Z`` (or ``+00:00``,
    as Telnyx's webhook examples write ``occurred_at``)."""
    stamp = dt.datetime.fromtimestamp(wall, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z") if zulu else stamp


def _when(text: str | None) -> float | None:
    """An ISO 8601 date or time (UTC when it names no zone) as Unix seconds; None for None.

    Raises:
        ValueError: it does not parse.
    """
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace(" ", "+") if "T" in text else text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not an ISO 8601 date or time") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _flag(text: str | None, default: bool) -> bool:
    """A boolean query parameter (``true``/``false``).

    Raises:
        ValueError: it is neither.
    """
    if text is None:
        return default
    if text.lower() not in ("true", "false"):
        raise ValueError(f"{text[:20]!r} is not true or false")
    return text.lower() == "true"


def _paging(query: Mapping[str, str]) -> tuple[int, int]:
    """``page[number]`` (from 1) and ``page[size]`` (1 to :data:`MAX_PAGE_SIZE`, default 20).

    Raises:
        ValueError: either is not a number in its range.
    """
    number, size = query.get("page[number]", "1"), query.get("page[size]", "20")
    if not number.isdigit() or int(number) < 1:
        raise ValueError("page[number] must be a whole number from 1")
    if not size.isdigit() or not 1 <= int(size) <= MAX_PAGE_SIZE:
        raise ValueError(f"page[size] must be from 1 to {MAX_PAGE_SIZE}")
    return int(number), int(size)


def _meta(page: int, size: int, total: int) -> dict[str, int]:
    return {
        "page_number": page,
        "page_size": size,
        "total_pages": max(1, -(-total // size)),
        "total_results": total,
    }


def _redacted(phone: str) -> str:
    """A number as a redacted list shows it: the first seven characters, then ``****``."""
    return phone[:7] + "****"


def _amount(value: Decimal) -> str:
    """A decimal amount as the API writes it: a string, no trailing zeros (``"0.0102"``)."""
    text = format(value.normalize(), "f")
    return text if value else "0"


def _money(value: Decimal) -> dict[str, str]:
    return {"amount": _amount(value), "currency": "USD"}


def _cost_of(status: str) -> tuple[Decimal, Decimal] | None:
    """One recipient's (rate, carrier fee): estimated until final, final after, and None
    (no charge) for a message that never left Telnyx."""
    if status in NEVER_SENT:
        return None
    if status in FINAL_STATUSES:
        return RATE, CARRIER_FEE_FINAL
    return RATE, CARRIER_FEE_ESTIMATE


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _errors(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    *,
    pointer: str | None = None,
) -> web.Response:
    return _json(status, {"errors": [_error(code, title, detail, pointer)]}, headers)


def _error(code: str, title: str, detail: str, pointer: str | None = None) -> dict[str, Any]:
    """One messaging_Error: ``code`` (a string), ``title``, ``detail``, ``source.pointer``."""
    err: dict[str, Any] = {"code": code, "title": title, "detail": detail}
    if pointer is not None:
        err["source"] = {"pointer": pointer}
    return err


async def _truncated(request: web.Request, body: bytes) -> web.StreamResponse:
    """Promise the whole body, send half of it, and close the connection."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return resp


async def _endless(request: web.Request) -> web.StreamResponse:
    """A 200 whose JSON body never ends: it streams until the client hangs up."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(b'{"data": {"id": "')
    block = b"x" * 65536
    with contextlib.suppress(ConnectionError):
        while request.transport is not None and not request.transport.is_closing():
            await resp.write(block)
    return resp


@functools.cache
def _bomb() -> bytes:
    """A gzip body of a few KiB that inflates to an 8 MiB JSON string (made once)."""
    return gzip.compress(b'{"data": {"id": "' + b"x" * (8 << 20) + b'"}}', mtime=0)


def rule(table: dict[str, str], phone: str) -> str | None:
    """The code a rule table gives ``phone``: its own entry, or ``*`` and its last four digits."""
    return table.get(phone) or table.get(f"*{phone[-4:]}")


def _report_error(code: str | None) -> dict[str, str]:
    """The ``errors`` entry of a failed delivery: the rule's code, else a plain 40008."""
    if code is None:
        return {"code": "40008", "title": "Undeliverable", "detail": "The carrier refused it."}
    title = MEANINGS.get(code, "Refused")
    return {"code": code, "title": title, "detail": f"Reported by the carrier ({code})."}


def _drop(request: web.Request) -> web.Response:
    """Close the connection without answering (the client sees a disconnect)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


@contextlib.asynccontextmanager
async def serve(fake: FakeTelnyx | None = None, port: int = 0) -> AsyncIterator[str]:
    """Run the fake on 127.0.0.1 in this event loop; yield its base URL (``.../v2``)."""
    fake = fake or FakeTelnyx()
    # a stopping run must not wait a minute for a handler that is still slow or endless
    runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        bound = runner.addresses[0][1]  # the port the OS chose when port is 0
        yield f"http://127.0.0.1:{bound}/v2"
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - manual use
    parser = argparse.ArgumentParser(description="Run the fake Telnyx messaging API.")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--key", help="require this API key (default: accept any)")
    parser.add_argument(
        "--fail-every",
        type=int,
        default=0,
        help="end numbers whose last 4 digits are a multiple of N in delivery_failed",
    )
    parser.add_argument(
        "--final-after", type=float, default=0.0, help="seconds until a recipient is final"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[*N]",
        help=f"misbehave on the next POSTs, in order (repeatable): {', '.join(FAULT_PRESETS)}",
    )
    for flag, what in (("--refuse", "refuse sends to"), ("--report", "report delivery_failed for")):
        parser.add_argument(
            flag,
            action="append",
            default=[],
            metavar="NUMBER=CODE",
            help=f"{what} NUMBER (or *LAST4) with Telnyx error CODE (repeatable)",
        )
    parser.add_argument(
        "--log",
        metavar="PATH",
        help="append each accepted message to PATH, one JSON line (id, from, to, key)",
    )
    parser.add_argument(
        "--replay-keys",
        action="store_true",
        help="replay a repeated Idempotency-Key's first success (Telnyx does not, for group MMS)",
    )
    args = parser.parse_args(argv)
    fake = FakeTelnyx(
        api_key=args.key,
        replay_keys=args.replay_keys,
        on_accept=accept_log_writer(args.log) if args.log else None,
    )
    for table, items in ((fake.refuse, args.refuse), (fake.report, args.report)):
        for item in items:
            number, sep, code = item.partition("=")
            if not sep or not code.isdigit():
                parser.error(f"{item!r} is not NUMBER=CODE")
            table[number] = code
    try:
        fake.faults.extend(parse_faults(",".join(args.fault)))
    except ValueError as exc:
        parser.error(str(exc))
    if args.fail_every or args.final_after:
        fake.delivery_status = carrier_timeline(
            args.fail_every, args.final_after / 3, args.final_after
        )
    web.run_app(fake.app(), host="127.0.0.1", port=args.port)


if __name__ == "__main__":  # pragma: no cover
    main()
