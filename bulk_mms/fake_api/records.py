"""What the fake keeps: the messages it accepted, its opt-out blocks, the requests it saw, the
webhooks it posted, and each sender's queue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bulk_mms.fake_api.rules import PROFILE_ID, SANDBOX_FROM


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
    #: The request's headers as posted (``telnyx-timestamp``, ``telnyx-signature-ed25519``).
    headers: dict[str, str] = field(default_factory=dict)


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
