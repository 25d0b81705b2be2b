"""A Telnyx-compatible fake of the three messaging endpoints bulk_mms uses, for tests and demos.

``POST /v2/messages/group_mms`` validates the body as the API documents it (``from``; ``to`` of
1 to 8 numbers in +E.164; ``text`` non-empty when given; text or media required), keeps the
message, and answers with the documented shape (``cost.amount`` as a string, as the send
endpoint does). ``GET /v2/messages/group/{message_id}`` lists the per-recipient messages and
``GET /v2/messages/{id}`` returns one (``cost.amount`` as a number there, as documented).

Faults are scripted per request with :class:`Fault` objects queued on :attr:`FakeTelnyx.faults`
(``429`` with ``Retry-After``, 5xx, a dropped connection before or after the message was
accepted, a slow answer, a 200 with no id or a body that is not JSON), and ``wait_seconds`` comes
from a callable, so a test can make it grow. ``Idempotency-Key`` is honoured unless
``honour_idempotency`` is off: a repeated key replays the first success; the same key with
another body gets 422.

Run it alone with ``python -m bulk_mms.fake_api --port 8080``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import gzip
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
from aiohttp import web

from bulk_mms.codes import MEANINGS
from bulk_mms.delivery import FINAL

FaultKind = Literal[
    "status",
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
COST_PER_RECIPIENT = "0.0051"


@dataclass(slots=True)
class Fault:
    """One scripted misbehaviour, used by the next POST that reaches the server.

    Args:
        kind: ``status`` (answer ``status`` with ``headers`` and a Telnyx error body),
            ``drop_before`` (close the connection without accepting), ``drop_after`` (accept,
            then close without answering), ``slow`` (accept after ``delay`` seconds),
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
    "status-429": lambda: Fault("status", 429, headers={"Retry-After": "1"}),
    "queue-full": lambda: Fault("status", 429, headers={"Retry-After": "1"}, code="40318"),
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
    "no-id": lambda: Fault("no_id"),
    "not-json": lambda: Fault("not_json"),
    "truncated": lambda: Fault("truncated"),
}


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


#: The sandbox's carrier rules for ``run --sandbox`` and ``track --sandbox`` (and so
#: ``make demo``): a number ending in 0300 has opted out (40300: its group goes out without
#: it), one ending in 0016 is reported past T-Mobile's daily cap (40016: resendable).
SANDBOX_REFUSE: Final = {"*0300": "40300"}
SANDBOX_REPORT: Final = {"*0016": "40016"}

#: The HTTP status and title the sandbox gives each refusal code (Telnyx's, as documented).
REFUSALS: dict[str, tuple[int, str]] = {
    code: (status, MEANINGS[code])
    for code, status in (
        ("40300", 409), ("40016", 400), ("40018", 400), ("40002", 400), ("40011", 400),
        ("40003", 400), ("40315", 400), ("20100", 402), ("40333", 429), ("40014", 400),
    )
}  # fmt: skip


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
    """State and behaviour of the fake API. Tests inspect :attr:`accepted` and :attr:`requests`."""

    #: The key to require; None accepts any non-empty bearer token.
    api_key: str | None = None
    honour_idempotency: bool = True
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
    clock: Callable[[], float] = time.monotonic
    #: Carriers' refusals by rule: number (or ``*`` and its last four digits) → Telnyx error
    #: code (40300 opted out, 40016 the daily cap, 20100 no funds...). A send naming one is
    #: refused with that code, as a carrier's verdict: nothing is accepted. Opt-outs are
    #: refused as Telnyx does, one error per member, each with its ``source.pointer``.
    refuse: dict[str, str] = field(default_factory=dict)
    #: Delivery reports by rule, the same way: such a recipient is accepted and then ends
    #: ``delivery_failed`` with that code (a carrier's cap, a spam filter).
    report: dict[str, str] = field(default_factory=dict)
    #: Numbers that texted STOP to the profile: what ``GET /messaging_optouts`` lists.
    optouts: list[str] = field(default_factory=list)
    queues: dict[str, SenderQueue] = field(default_factory=dict)
    #: (time, sender, recipients) of every accepted message, in order: the server's own log.
    accept_log: list[tuple[float, str, int]] = field(default_factory=list)
    accepted: list[Accepted] = field(default_factory=list)
    #: Every POST body that arrived, faulted or not.
    requests: list[dict[str, Any]] = field(default_factory=list)
    by_id: dict[str, Accepted] = field(default_factory=dict)
    by_recipient_id: dict[str, tuple[Accepted, int]] = field(default_factory=dict)
    _keys: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)

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
        msg = Accepted(
            id=message_id,
            from_=sender,
            to=to,
            body={"from": sender, "to": list(to)},
            idempotency_key=None,
            received_at=_now(),
            recipient_ids=tuple(str(uuid.uuid4()) for _ in to),
            wait_seconds=0.0,
            accepted_at=self.clock() - age,
        )
        self._remember(msg)

    def _remember(self, msg: Accepted) -> None:
        """Make ``msg`` known to the GETs, by its id and by each recipient's own id."""
        self.by_id[msg.id] = msg
        for i, rid in enumerate(msg.recipient_ids):
            self.by_recipient_id[rid] = (msg, i)

    def recipient_counts(self) -> dict[str, int]:
        """How many accepted messages each number is in."""
        counts: dict[str, int] = {}
        for msg in self.accepted:
            for phone in msg.to:
                counts[phone] = counts.get(phone, 0) + 1
        return counts

    # -- the app ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/messages/group_mms", self.send_group_mms)
        app.router.add_get("/v2/messages/group/{message_id}", self.get_group)
        app.router.add_get("/v2/messages/{id}", self.get_message)
        app.router.add_get("/v2/messaging_optouts", self.get_optouts)
        return app

    def _auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not token or (self.api_key is not None and token != self.api_key):
            return _errors(401, "10009", "Authentication failed", "The API key is not valid.")
        return None

    async def send_group_mms(self, request: web.Request) -> web.StreamResponse:
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
            return _drop(request)
        if fault is not None and fault.kind == "redirect":
            return web.Response(status=fault.status, headers={"Location": fault.location})
        if (invalid := _validate(body)) is not None:
            return invalid
        key = request.headers.get("Idempotency-Key")
        if key is not None and self.honour_idempotency and key in self._keys:
            first_raw, first_response = self._keys[key]
            if first_raw != raw:
                return _errors(
                    422, "10015", "Idempotency key reused", "Same key, different request body."
                )
            return _json(200, first_response)  # a replay, whatever the rules say by now
        if refused := [(i, p) for i, p in enumerate(body["to"]) if rule(self.refuse, p)]:
            return self._refusal(body["from"], refused)
        wait: float | None = None
        queue = self.queue_for(body["from"])
        if queue is not None:
            size = len(body["to"]) if self.queue_unit == "recipient" else 1
            wait = queue.offer(self.clock(), size)
            if wait is None:
                return _errors(429, "40318", "Message queue full", "Try again later.")
        msg = self._accept(body, key, wait)
        response = {"data": self._record(msg, cost_as_string=True)}
        if key is not None and self.honour_idempotency:
            self._keys[key] = (raw, response)
        if fault is not None:
            if fault.kind == "drop_after":
                return _drop(request)
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

    async def get_optouts(self, request: web.Request) -> web.StreamResponse:
        """The profile's opt-outs, a page at a time (the shape the SDK's messaging_optouts
        resource documents): every number in :attr:`optouts`."""
        if (denied := self._auth(request)) is not None:
            return denied
        page = max(1, int(request.query.get("page[number]", "1") or 1))
        size = max(1, min(250, int(request.query.get("page[size]", "20") or 20)))
        chunk = self.optouts[(page - 1) * size : page * size]
        pages = max(1, -(-len(self.optouts) // size))
        data = [
            {"to": to, "from": "+18445550001", "keyword": "STOP", "created_at": _now()}
            for to in chunk
        ]
        meta = {"page_number": page, "page_size": size, "total_pages": pages,
                "total_results": len(self.optouts)}  # fmt: skip
        return _json(200, {"data": data, "meta": meta})

    def _refusal(self, sender: str, refused: list[tuple[int, str]]) -> web.Response:
        """The answer to a send that names refused numbers: the first one's code; for an
        opt-out, one error per opted-out member, as Telnyx words it."""
        code = rule(self.refuse, refused[0][1]) or ""
        status, title = REFUSALS.get(code, (400, "Refused"))
        if code != "40300":
            return _errors(status, code, title, f"Refused for {refused[0][1]}.")
        errors = [
            {
                "code": code,
                "title": title,
                "detail": f"Messages cannot be sent from {sender} to {phone} due to an "
                "existing block rule.",
                "source": {"pointer": f"/to/{i}"},
            }
            for i, phone in refused
            if rule(self.refuse, phone) == code
        ]
        return _json(status, {"errors": errors})

    def status_of(self, msg: Accepted, i: int) -> str:
        """Where recipient ``i`` of ``msg`` stands now."""
        if rule(self.report, msg.to[i]):
            return "delivery_failed"
        if isinstance(self.delivery_status, str):
            return self.delivery_status
        return self.delivery_status(msg.to[i], self.clock() - msg.accepted_at)

    def _accept(self, body: dict[str, Any], key: str | None, wait: float | None) -> Accepted:
        n = len(self.accepted)
        self.accept_log.append((self.clock(), body["from"], len(body["to"])))
        to = tuple(body["to"])
        msg = Accepted(
            id=str(uuid.uuid4()),
            from_=body["from"],
            to=to,
            body=body,
            idempotency_key=key,
            received_at=_now(),
            recipient_ids=tuple(str(uuid.uuid4()) for _ in to),
            wait_seconds=round(wait if wait is not None else float(self.wait_seconds(n)), 3),
            accepted_at=self.clock(),
        )
        self.accepted.append(msg)
        self._remember(msg)
        return msg

    def _record(
        self,
        msg: Accepted,
        *,
        cost_as_string: bool,
        only: int | None = None,
        live: bool = False,
    ) -> dict[str, Any]:
        """The documented message object, for the whole group or for recipient ``only``.

        ``live``: statuses as they stand now (the GETs); otherwise ``queued`` (the send).
        """
        n = len(msg.to) if only is None else 1
        amount = f"{float(COST_PER_RECIPIENT) * n:.4f}"
        indexes = range(len(msg.to)) if only is None else [only]
        statuses = [self.status_of(msg, i) if live else "queued" for i in indexes]
        failed = [
            msg.to[i]
            for i, s in zip(indexes, statuses, strict=True)
            if s in ("delivery_failed", "sending_failed")
        ]
        final = all(s in FINAL for s in statuses)
        body = msg.body
        return {
            "record_type": "message",
            "direction": "outbound",
            "id": msg.id if only is None else msg.recipient_ids[only],
            "type": "MMS",
            "messaging_profile_id": "4000eba1-a0c0-4563-9925-b25e842a7cb6",
            "organization_id": "b448f9cc-a842-4784-98e9-03c1a5872950",
            "from": {"phone_number": msg.from_, "carrier": "TELNYX LLC", "line_type": "VoIP"},
            "to": [
                {
                    "phone_number": msg.to[i],
                    "status": status,
                    "carrier": "T-MOBILE USA, INC.",
                    "line_type": "Wireless",
                }
                for i, status in zip(indexes, statuses, strict=True)
            ],
            "cc": [],
            "text": body.get("text"),
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
            "cost": {"amount": amount if cost_as_string else float(amount), "currency": "USD"},
            "received_at": msg.received_at,
            "sent_at": None,
            "completed_at": _now() if live and final else None,
            "valid_until": None,
            "errors": [_report_error(rule(self.report, phone)) for phone in failed[:1]],
            "wait_seconds": msg.wait_seconds,
        }

    async def get_group(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        msg = self.by_id.get(request.match_info["message_id"])
        if msg is None:
            return _errors(404, "10005", "Resource not found", "No such group message.")
        data = [
            self._record(msg, cost_as_string=False, only=i, live=True) for i in range(len(msg.to))
        ]
        return _json(200, {"data": data})

    async def get_message(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        mid = request.match_info["id"]
        if mid in self.by_id:
            data = self._record(self.by_id[mid], cost_as_string=False, live=True)
        elif mid in self.by_recipient_id:
            msg, i = self.by_recipient_id[mid]
            data = self._record(msg, cost_as_string=False, only=i, live=True)
        else:
            return _errors(404, "10005", "Resource not found", "No such message.")
        data.pop("wait_seconds", None)  # the documented GET shape has no wait_seconds
        return _json(200, {"data": data})


def carrier_timeline(
    fail_every: int = 5, sent_after: float = 1.0, final_after: float = 3.0
) -> Callable[[str, float], str]:
    """A delivery timeline for :attr:`FakeTelnyx.delivery_status`, like a carrier's.

    Every recipient is ``queued``, then ``sent`` after ``sent_after`` seconds, then final after
    ``final_after``: ``delivery_failed`` for numbers whose last four digits are a multiple of
    ``fail_every`` (0: none), ``delivered`` for the rest. Deterministic, so a test can predict it.
    """

    def status(phone: str, age: float) -> str:
        if age < sent_after:
            return "queued"
        if age < final_after:
            return "sent"
        return "delivery_failed" if will_fail(phone, fail_every) else "delivered"

    return status


def will_fail(phone: str, fail_every: int) -> bool:
    """Whether :func:`carrier_timeline` ends ``phone`` in ``delivery_failed``."""
    return fail_every > 0 and int(phone[-4:]) % fail_every == 0


def _validate(body: object) -> web.Response | None:
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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    err: dict[str, Any] = {"code": code, "title": title, "detail": detail}
    if pointer is not None:
        err["source"] = {"pointer": pointer}
    return _json(status, {"errors": [err]}, headers)


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
    title = REFUSALS.get(code, (400, "Refused"))[1]
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
    args = parser.parse_args(argv)
    fake = FakeTelnyx(api_key=args.key)
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
