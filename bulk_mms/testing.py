"""Helpers for testing code that uses bulk_mms, without a network or a real clock.

:class:`FakeClient` stands behind the :class:`~bulk_mms.client.MmsClient` seam (like httpx's
``MockTransport``): its answers come from a handler you write. :class:`FakeClock` is a clock
on the event loop's time, usable as the runner's ``clock`` and as a retry ``sleep``; under a
virtual loop clock (``looptime``: ``pytest --looptime``) its sleeps take no real time::

    from bulk_mms import load_job, run_job
    from bulk_mms.testing import FakeClient, FakeClock

    client = FakeClient()
    summary = await run_job(load_job("jobs/demo.toml"), settings, client, clock=FakeClock())
    assert summary.sent_groups == len(client.calls)

For the HTTP level, :mod:`bulk_mms.fake_api` is a Telnyx-compatible server with scripted faults.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from bulk_mms.clock import sleep_unless
from bulk_mms.errors import NotFound, SendError
from bulk_mms.ledger import Location, load, open_store, read_events
from bulk_mms.ledger.events import Event, encode
from bulk_mms.models import Group, MessageRecord, Money, RecipientStatus, SendReceipt

__all__ = [
    "FakeClient",
    "FakeClock",
    "Handler",
    "groups_in",
    "ledger_events",
    "ok_receipt",
    "write_ledger",
]

#: What a :class:`FakeClient` handler returns for ``(group, call number)``: a receipt, an
#: error to raise, or an awaitable of either.
Handler = Callable[[Group, int], Awaitable[SendReceipt] | SendReceipt | SendError]


def ok_receipt(group: Group, n: int = 0, *, wait: float = 0.0) -> SendReceipt:
    """What a successful send of ``group`` returns."""
    return SendReceipt(
        message_id=f"msg-{group.id}-{n}",
        statuses=tuple(RecipientStatus(p, "queued") for p in group.to),
        wait_seconds=wait,
        cost=Money(Decimal("0.0051") * len(group.to), "USD"),
    )


@dataclass
class FakeClient:
    """An MmsClient whose answers come from ``handler(group, call_number)``.

    The handler returns a receipt or an error to raise; by default every send succeeds.
    """

    handler: Handler | None = None
    calls: list[Group] = field(default_factory=list)
    #: The Idempotency-Key of each call, same order as ``calls``.
    keys: list[str] = field(default_factory=list)
    #: The seconds each call's request had to leave in (``leave_within``), same order.
    leave_within: list[float | None] = field(default_factory=list)
    #: What the GETs answer, by message id: statuses, or an error to raise; unknown ids 404.
    delivery: dict[str, tuple[RecipientStatus, ...] | SendError] = field(default_factory=dict)
    fetches: list[str] = field(default_factory=list)
    #: The message detail records it serves (``fetch_records``): one per recipient of every
    #: send it answered with a receipt, stamped by ``wall``; a test adds its own (a send the
    #: "server" took before the answer was lost).
    records: list[MessageRecord] = field(default_factory=list)
    #: The wall clock its records are stamped by (a test passes its FakeClock's ``wall``).
    wall: Callable[[], float] = time.time
    _counter: Iterator[int] = field(default_factory=itertools.count)

    async def send(
        self, group: Group, key: str, *, leave_within: float | None = None
    ) -> SendReceipt:
        n = next(self._counter)
        self.calls.append(group)
        self.keys.append(key)
        self.leave_within.append(leave_within)
        if self.handler is None:
            return self.took(group, ok_receipt(group, n))
        result = self.handler(group, n)
        if isinstance(result, SendError):
            raise result
        if isinstance(result, SendReceipt):
            return self.took(group, result)
        out = await result
        if isinstance(out, SendError):
            raise out
        return self.took(group, out)

    def took(self, group: Group, receipt: SendReceipt) -> SendReceipt:
        """Keep the records of an accepted send (one per recipient), as the API does."""
        now = self.wall()
        self.records += [
            MessageRecord(f"{receipt.message_id}/{p}", group.message.from_, p, now, "DELIVERED")
            for p in group.to
        ]
        return receipt

    async def fetch_records(
        self, cli: str, cld: str, start: float, end: float
    ) -> list[MessageRecord]:
        """The records from ``cli`` to ``cld`` created from ``start`` to ``end``."""
        self.fetches.append(f"records {cli} {cld}")
        return [
            r
            for r in self.records
            if r.cli == cli and r.cld == cld and start <= r.created_at <= end
        ]

    async def fetch_group(self, message_id: str) -> tuple[RecipientStatus, ...]:
        return self._fetch(message_id)

    async def fetch_message(self, message_id: str) -> tuple[RecipientStatus, ...]:
        return self._fetch(message_id)

    def _fetch(self, message_id: str) -> tuple[RecipientStatus, ...]:
        self.fetches.append(message_id)
        answer = self.delivery.get(message_id)
        if answer is None:
            raise NotFound("unknown", status=404)
        if isinstance(answer, SendError):
            raise answer
        return answer

    def sent_numbers(self) -> list[str]:
        return [p for g in self.calls for p in g.to]


class FakeClock:
    """A :class:`~bulk_mms.clock.Clock` for tests, on the event loop's time.

    Its monotonic time is the running loop's ``time()`` (shifted to start at ``start``) and
    its wall clock moves with it, as :class:`~bulk_mms.clock.SystemClock`'s do. Under a
    virtual loop clock (``looptime``: ``pytest --looptime``) every sleep, timer and
    :class:`aiolimiter.AsyncLimiter` wait is fast-forwarded, so a test of hours of pacing
    takes milliseconds; timers fire in order, as they would for real.

    Usable as the runner's ``clock`` and, called, as a plain ``sleep``.
    """

    def __init__(
        self,
        start: float = 1000.0,
        wall: float | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        #: Every sleep asked for, in order.
        self.calls: list[float] = []
        #: Once set, it ends every sleep at once, as the job's clock does (the job's stop).
        self._stopping = stopping
        self._start = start
        #: Added to the loop's time: the start, and every :meth:`advance`.
        self._shift: float | None = None
        #: The wall clock starts at ``wall`` (by default the real time now) and moves with
        #: the monotonic one.
        self._wall_offset = (time.time() if wall is None else wall) - start

    def _loop_time(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # read outside a loop (a sync test, a fixture): time stands
            return 0.0

    @property
    def time(self) -> float:
        """The monotonic time now."""
        return self.monotonic()

    def monotonic(self) -> float:
        now = self._loop_time()
        if self._shift is None:
            self._shift = self._start - now
        return now + self._shift

    def wall(self) -> float:
        return self.monotonic() + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move this clock on without sleeping (as if the machine had been busy). The loop's
        own timers, and a rate limiter's, do not see it: use a sleep for those."""
        self.monotonic()
        assert self._shift is not None
        self._shift += seconds

    def step_wall(self, seconds: float) -> None:
        """Move the wall clock alone (an NTP step, a VM resumed): monotonic time goes on."""
        self._wall_offset += seconds

    async def sleep(self, seconds: float) -> None:
        self.calls.append(seconds)
        await sleep_unless(self._stopping, max(0.0, seconds))

    async def __call__(self, seconds: float) -> None:
        await self.sleep(seconds)


def write_ledger(location: Location, events: Iterable[Event]) -> Location:
    """Write ``events`` (a :class:`~bulk_mms.ledger.events.Header` first), each durable in
    turn, to the ledger at ``location`` (a JSONL path or a PostgreSQL URL); returns
    ``location``: a ledger in a given state, for a report or a rerun to read."""
    store = open_store(location)
    try:
        for ev in events:
            store.append_now(ev)
    finally:
        store.close_sync()
    return location


def ledger_events(location: Location) -> list[dict[str, Any]]:
    """Every event of a ledger, in order, as the JSON objects the store keeps (``event`` is
    the kind): for asserting on what a run recorded."""
    return [orjson.loads(encode(ev)) for ev in read_events(location)]


def groups_in(location: Location, state: str) -> set[str]:
    """The ids of a ledger's groups in ``state`` (``sent``, ``failed``, ``retry_pending``,
    ``in_doubt``), as every reader of the ledger folds it."""
    view = load(location, statuses=False)
    return {gid for gid, rec in view.groups.items() if rec.state == state}
