"""One clock for the whole job: monotonic time, wall time and sleeping, behind one seam.

Pacing, retries, deadlines, the runner, ``track`` and the webhook receiver all take a
:class:`Clock`. The real one is :class:`SystemClock` (the monotonic time the event loop reads,
the system's wall clock, and a sleep that a stop ends at once); tests pass
:class:`bulk_mms.testing.FakeClock`, which reads the loop's time too, on a virtual loop clock
(``looptime``) that fast-forwards every wait.

Every clock's monotonic time runs at the event loop's pace (it may start elsewhere): the rate
limiters (:class:`aiolimiter.AsyncLimiter`, in :mod:`bulk_mms.rate`) keep the loop's time, and
only durations pass between the two.

The wall clock also stamps ledger events (:meth:`Clock.stamp`), and :func:`parse_time` reads
those stamps (and the API's) back as instants: no time is ever compared as a string.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, Protocol

#: How far apart this machine's clock and Telnyx's may be, in seconds: a message detail
#: record (:mod:`bulk_mms.settle`) or a webhook's event (:mod:`bulk_mms.webhooks`) stamped
#: this far before a group's first try can still be that group's.
CLOCK_SKEW_S = 120.0
#: A moment at most this far off (seconds) has come: a sleep until it may end a hair early
#: (asyncio runs a timer within its clock's resolution, and the sum of two floats rounds: a
#: wall time, some 1.8e9 s since the epoch, is a quarter microsecond from the next float), and
#: a look that follows the sleep must find it come, not sleep again or give up on it.
DUE_SLACK_S: Final = 0.01


class Clock(Protocol):
    """Time as the job sees it."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps and runs at the event loop's pace: pacing,
        backoff and deadlines."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch: event stamps, Idempotency-Key ages, send windows."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a stopping job's clock may return early)."""
        ...


class SystemClock:
    """The system's monotonic time (the event loop's clock) and its wall clock, or another
    wall clock it :meth:`follows <follow>` (a shared ledger's database: every host of a job
    then judges deadlines, windows and the day by one clock).

    Args:
        stopping: an event that, once set, ends every sleep at once (the job's stop).
    """

    def __init__(self, stopping: asyncio.Event | None = None) -> None:
        self._stopping = stopping
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The clock followed (:meth:`follow`): its time, and :func:`since_boot` then.
        self._followed: tuple[float, float] | None = None

    def monotonic(self) -> float:
        # The time of the event loop the clock first ran under, bound as aiolimiter's buckets
        # bind theirs (again once that loop is closed): asking for the running loop on every
        # read costs a getpid system call on Python 3.11. (A clock shared by loops running in
        # two threads reads the first; asyncio's own loops all read time.monotonic.) Outside
        # any loop, what asyncio's loops read (BaseEventLoop.time).
        loop = self._loop
        if loop is None or loop.is_closed():
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return time.monotonic()
        return loop.time()

    def wall(self) -> float:
        if (followed := self._followed) is None:
            return time.time()
        theirs, then = followed
        return theirs + (since_boot() - then)

    async def sleep(self, seconds: float) -> None:
        await sleep_unless(self._stopping, seconds)

    def follow(self, other: Callable[[], float]) -> float:
        """From now on tell ``other``'s wall time (seconds since the epoch, read once: the
        midpoint of the read is taken as its instant), carried on by :func:`since_boot`, so
        that the system's wall clock being set meanwhile (NTP, chrony) moves it nothing, and
        a machine suspended meanwhile finds it as late as ``other`` is. How far ``other`` was
        ahead of the system's wall clock, in seconds."""
        before, start = time.time(), since_boot()
        theirs = other()
        after, end = time.time(), since_boot()
        self._followed = (theirs, (start + end) / 2)
        return theirs - (before + after) / 2


def since_boot() -> float:
    """Seconds on a clock that goes on while the machine is suspended (Linux's
    ``CLOCK_BOOTTIME``; macOS's ``CLOCK_MONOTONIC``; else Python's monotonic clock), and is
    never set. For what runs on another machine's real time while this one may sleep: a
    claim's lease, a followed database clock, the time a request has left to leave in.
    Python's monotonic clock (and the event loop's) stands still in a suspend."""
    return time.clock_gettime(_AWAKE_OR_NOT) if _AWAKE_OR_NOT is not None else time.monotonic()


_AWAKE_OR_NOT: Final = getattr(time, "CLOCK_BOOTTIME", getattr(time, "CLOCK_MONOTONIC", None))


#: How often a :func:`running_timeout` looks at the loop's time, and how late a look may come
#: before the stretch since the last is taken for the process not running (stopped, paused).
RUNNING_LOOK_S: Final = 0.5
STOPPED_AFTER_S: Final = 1.0
#: Running time a :func:`running_timeout` has left that is none: the float sums of the loop's
#: times can leave a sliver (1e-14 s) that a timer at their magnitude cannot set apart from
#: now, so the next look would come at once, and again, with no time passing in between.
_NONE_LEFT_S: Final = 1e-6


def running_timeout(seconds: float) -> RunningTimeout:
    """:func:`asyncio.timeout` of ``seconds`` counted in time this process ran: a look at the
    loop's time (every :data:`RUNNING_LOOK_S`) that comes :data:`STOPPED_AFTER_S` late or more
    found the process not running (SIGSTOP, a VM paused, the loop held up), and that stretch
    counts as one look's worth. So an answer that came while it did not run is read when it
    runs again, not timed out on: the bound is for a peer that does not answer, and a peer
    cannot answer a process that is not there to read it. Use as ``async with``.

    Raises:
        TimeoutError: as :func:`asyncio.timeout`, once ``seconds`` of running time passed.
    """
    return RunningTimeout(seconds)


class RunningTimeout:
    """One :func:`running_timeout`: its own looks at the loop's time (one timer a look; a
    request answered within :data:`RUNNING_LOOK_S` makes one), and, once its running time is
    up, the task that entered it cancelled and that cancel raised as :class:`TimeoutError`,
    as :class:`asyncio.Timeout` does: told from any other cancel by the task's count of cancel
    requests, so a cancel from outside (a stopping job) is raised as the cancel it is."""

    __slots__ = ("_cancelling", "_fired", "_handle", "_last", "_left", "_loop", "_step", "_task")

    def __init__(self, seconds: float) -> None:
        self._left = seconds

    async def __aenter__(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("running_timeout must be used inside a task")
        self._task, self._cancelling, self._fired = task, task.cancelling(), False
        self._last = last = loop.time()
        self._step = step = min(RUNNING_LOOK_S, max(0.0, self._left))
        self._handle = loop.call_at(last + step, self._look)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._handle.cancel()
        # its own cancel taken back; TimeoutError when no other came since (asyncio.Timeout's
        # test, in its order: the cancel is taken back however the block ended)
        if (
            self._fired
            and self._task.uncancel() <= self._cancelling
            and kind is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def _look(self) -> None:
        now = self._loop.time()
        gap = now - self._last
        self._left -= self._step if gap - self._step >= STOPPED_AFTER_S else gap
        self._last = now
        if self._left <= _NONE_LEFT_S:
            self._fired = True
            self._task.cancel()  # raised in the task as TimeoutError, by __aexit__
            return
        self._step = min(RUNNING_LOOK_S, self._left)
        self._handle = self._loop.call_at(now + self._step, self._look)


async def sleep_unless(stopping: asyncio.Event | None, seconds: float) -> None:
    """Wait ``seconds``, or until ``stopping`` is set (at once if it is): a clock's sleep."""
    if stopping is None:
        await asyncio.sleep(seconds)
        return
    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that comes as
    # the wait ends, and a stopping job must never lose one
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await stopping.wait()


def mono_at(at: float, clock: Clock) -> float:
    """The moment ``at`` (seconds since the epoch) on ``clock``'s monotonic clock, as its wall
    clock reads it now: a wall clock stepped since (NTP) moves it."""
    return clock.monotonic() + (at - clock.wall())


def wall_until(at: float, clock: Clock) -> float:
    """Seconds from ``clock``'s wall time until ``at`` (seconds since the epoch): 0 once it
    has come, or is no more than :data:`DUE_SLACK_S` off, so a sleep of what this said ends
    with it come as this reads it then."""
    left = at - clock.wall()
    return left if left > DUE_SLACK_S else 0.0


def utc(clock: Clock) -> dt.datetime:
    """The clock's wall time as an aware UTC datetime (for send windows and seeded jobs)."""
    return dt.datetime.fromtimestamp(clock.wall(), dt.UTC)


def iso(seconds: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC with milliseconds: the ``time`` of an event
    (``2026-12-07T04:01:02.345Z``). The text of ``datetime.fromtimestamp(seconds, UTC)``'s
    ``isoformat(timespec="milliseconds")``, ``Z`` for ``+00:00``, for the years 1970 to 9999:
    the fraction rounded to the microsecond as datetime rounds it (half to even), then cut to
    the millisecond; the rest written by ``time.strftime`` (a quarter fewer instructions, two
    stamps a group)."""
    fraction, whole = math.modf(seconds)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1.0, micro - 1_000_000
    elif micro < 0:
        whole, micro = whole - 1.0, micro + 1_000_000
    return time.strftime(f"%Y-%m-%dT%H:%M:%S.{micro // 1000:03d}Z", time.gmtime(whole))


def parse_time(stamp: str) -> float:
    """Seconds since the epoch of an ISO 8601 stamp; a stamp without an offset is UTC. Its
    ``T`` and ``Z`` may be lower case, as RFC 3339's date-time (the API's) allows.

    Raises:
        ValueError: not an ISO 8601 time.
    """
    # a trailing Z is UTC (Python 3.11 reads it), but not a "z", nor a "t" for the T
    when = dt.datetime.fromisoformat(stamp.upper())
    if when.tzinfo is None:  # never this machine's zone
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def instant(stamp: object) -> float | None:
    """:func:`parse_time` for untrusted stamps: None when there is none or it does not parse."""
    if not isinstance(stamp, str):
        return None
    try:
        return parse_time(stamp)
    except (ValueError, OverflowError):
        return None
