"""One clock for the whole job: monotonic time, wall time and sleeping, behind one seam.

Pacing, retries, deadlines, the runner, ``track`` and the webhook receiver all take a
:class:`Clock`. The real one is :class:`SystemClock` (the monotonic time the event loop reads,
the system's wall clock, and a sleep that a stop ends at once); tests pass
:class:`bulk_mms.testing.FakeClock`, whose sleep moves both of its times on without waiting.

The wall clock also stamps ledger events (:meth:`Clock.stamp`), and :func:`parse_time` reads
those stamps (and the API's) back as instants: no time is ever compared as a string.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
from typing import Protocol


class Clock(Protocol):
    """Time as the job sees it."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: pacing, backoff and deadlines."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch: event stamps, Idempotency-Key ages, send windows."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a stopping job's clock may return early)."""
        ...


class SystemClock:
    """The system's monotonic time (the event loop's clock) and its wall clock.

    Args:
        stopping: an event that, once set, ends every sleep at once (the job's stop).
    """

    def __init__(self, stopping: asyncio.Event | None = None) -> None:
        self._stopping = stopping

    def monotonic(self) -> float:
        # what asyncio's own loop reads for its time (BaseEventLoop.time), without asking
        # for the running loop on every call: the pacer reads it several times a group
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        if self._stopping is None:
            await asyncio.sleep(seconds)
            return
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that comes as
        # the wait ends, and a stopping job must never lose one
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._stopping.wait()


def utc(clock: Clock) -> dt.datetime:
    """The clock's wall time as an aware UTC datetime (for send windows and seeded jobs)."""
    return dt.datetime.fromtimestamp(clock.wall(), dt.UTC)


def iso(seconds: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC with milliseconds: the ``time`` of an event."""
    global _last_iso, _last_second, _last_instant  # noqa: PLW0603 - memos of one stamp each
    if seconds < 0:  # before 1970: datetime's own arithmetic, unmemoised
        stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")
        return stamp.replace("+00:00", "Z")
    # the millisecond datetime shows: it rounds the fraction to microseconds, then cuts
    frac, whole = math.modf(seconds)
    ms = int(whole) * 1000 + round(frac * 1e6) // 1000
    last = _last_iso  # read once: another thread may replace it meanwhile
    if ms == last[0]:
        return last[1]  # events come many to a millisecond: one stamp for them all
    second, milli = divmod(ms, 1000)
    head = _last_second
    if second != head[0]:  # a new second: datetime writes its date and time once
        text = dt.datetime.fromtimestamp(second, dt.UTC).isoformat(timespec="seconds")
        head = _last_second = (second, text.removesuffix("+00:00"))
    stamp = f"{head[1]}.{milli:03d}Z"
    _last_iso = (ms, stamp)
    # what instant() will read it back as (the fold reads every stamp it is given):
    # parse_time divides the same whole number of microseconds, so the float is the same
    _last_instant = (stamp, ms / 1000)
    return stamp


#: The last millisecond :func:`iso` stamped, and its stamp.
_last_iso: tuple[int | None, str] = (None, "")
#: The last whole second :func:`iso` stamped in, and its stamp without the fraction.
_last_second: tuple[int | None, str] = (None, "")


def parse_time(stamp: str) -> float:
    """Seconds since the epoch of an ISO 8601 stamp; a stamp without an offset is UTC.

    Raises:
        ValueError: not an ISO 8601 time.
    """
    when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if when.tzinfo is None:  # never this machine's zone
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def instant(stamp: object) -> float | None:
    """:func:`parse_time` for untrusted stamps: None when there is none or it does not parse."""
    global _last_instant  # noqa: PLW0603 - a memo of one stamp, as iso keeps
    if not isinstance(stamp, str):
        return None
    last = _last_instant  # read once: another thread may replace it meanwhile
    if stamp == last[0]:
        return last[1]  # events come many to a millisecond, read back in order
    try:
        seconds = parse_time(stamp)
    except (ValueError, OverflowError):
        return None
    _last_instant = (stamp, seconds)
    return seconds


#: The last stamp :func:`instant` read, and its instant.
_last_instant: tuple[str | None, float] = (None, 0.0)
