"""The system clock: its monotonic time is the time of the event loop it runs under."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bulk_mms.clock
from bulk_mms.clock import SystemClock, iso, running_timeout


async def _read(clock: SystemClock) -> float:
    return clock.monotonic()


def test_system_clock_reads_its_loop_and_the_next_once_the_first_is_closed() -> None:
    """SystemClock reads the time of the loop it runs under, and the next loop's once the
    first is closed; outside any loop, the system's monotonic time."""
    clock = SystemClock()
    for shown in (1234.5, 99.0):
        loop = asyncio.new_event_loop()
        loop.time = functools.partial(float, shown)  # type: ignore[method-assign]
        try:
            assert loop.run_until_complete(_read(clock)) == shown
        finally:
            loop.close()
    before = time.monotonic()
    assert before <= SystemClock().monotonic() <= time.monotonic()


class _Host:
    """The time module of a host whose wall clock is ``ahead`` seconds off, whose monotonic
    clock the test moves by hand, and which has been suspended for ``asleep`` seconds (its
    monotonic clock stood still meanwhile; its boot clock did not)."""

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead
        self.mono = 1000.0
        self.asleep = 0.0

    def time(self) -> float:
        return 1_800_000_000.0 + (self.mono - 1000.0) + self.asleep + self.ahead

    def monotonic(self) -> float:
        return self.mono

    def clock_gettime(self, which: int) -> float:
        return self.mono + self.asleep


def test_a_followed_clock_keeps_its_time_when_the_hosts_clock_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A clock that follows another (a shared ledger's database) tells the other's time from
    then on, carried by the monotonic clock: the host's wall clock set right afterwards (NTP
    steps it back two minutes) moves it nothing, and follow() says how far off the host was."""
    host = _Host(ahead=120.0)
    monkeypatch.setattr(bulk_mms.clock, "time", host)
    clock = SystemClock()
    assert clock.wall() == 1_800_000_120.0
    assert clock.follow(lambda: 1_800_000_000.0) == -120.0
    host.mono += 30.0
    host.ahead = 0.0  # set right
    assert clock.wall() == 1_800_000_030.0


def test_a_followed_clock_goes_on_while_the_machine_is_suspended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A clock that follows a shared ledger's database is as late as the database after this
    machine was suspended (its monotonic clock stood still), so no deadline or send window is
    judged by a time left behind by the suspend."""
    host = _Host(ahead=0.0)
    monkeypatch.setattr(bulk_mms.clock, "time", host)
    clock = SystemClock()
    clock.follow(lambda: 1_800_000_000.0)
    host.mono += 5.0
    host.asleep = 3600.0  # an hour suspended
    assert clock.wall() == 1_800_003_605.0


def stop_process(seconds: float) -> None:
    """The process stops for ``seconds`` now (SIGSTOP, a VM paused): its loop's clock jumps on
    while nothing of it runs. For tests: the running loop's time is shifted from here on."""
    loop = asyncio.get_running_loop()
    before = loop.time
    loop.time = lambda: before() + seconds  # type: ignore[method-assign]


async def test_a_running_timeout_fires_on_the_sliver_of_time_floats_leave_it() -> None:
    """The loop's times summed in floats can leave a running_timeout 1e-15 s to run, which a
    timer at their magnitude cannot set apart from now: it fires then, never looking again at
    once with no time passing (a spin that a virtual loop clock never got out of)."""
    loop = asyncio.get_running_loop()
    bound = running_timeout(1.0)

    async def a_sliver_left() -> None:
        async with bound:
            bound._handle.cancel()
            bound._last, bound._step, bound._left = loop.time(), 1e-15, 1e-15
            bound._look()  # no time passed since the last look
            assert bound._handle.cancelled()  # fires: no look after this one
            await asyncio.sleep(0)

    with pytest.raises(TimeoutError):
        await a_sliver_left()
    assert loop.time() == pytest.approx(bound._last)  # at once, not a look later


async def test_a_running_timeout_reads_an_answer_that_came_while_the_process_was_stopped() -> None:
    """A process stopped for 60 s under a 30 s running_timeout reads the answer waiting when
    it runs again (asyncio.timeout would time out on it first); 2 s of running time with no
    answer end in TimeoutError after those 2 s."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def stopped_then_answered() -> None:
        stop_process(60)
        loop.call_at(loop.time() + 0.01, answer.set_result, "answer")

    loop.call_later(0.2, stopped_then_answered)
    async with running_timeout(30):
        assert await answer == "answer"
    start = loop.time()
    with pytest.raises(TimeoutError):
        async with running_timeout(2):
            await asyncio.sleep(10)
    assert loop.time() - start == pytest.approx(2, abs=0.01)


@pytest.mark.parametrize("fired", [False, True])
async def test_a_running_timeout_passes_a_cancel_from_outside_on(fired: bool) -> None:
    """A task cancelled from outside under a running_timeout ends cancelled, not timed out,
    also when its bound fired in the same moment: only the bound's own cancel is a
    TimeoutError, and the task's count of cancel requests keeps the outside one."""
    entered = asyncio.Event()

    async def under_bound() -> None:
        bound = running_timeout(30)
        async with bound:
            if fired:  # its running time is up now: the bound cancels the task
                bound._handle.cancel()
                bound._left = 0.0
                bound._look()
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(under_bound())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelling() == 1  # the outside cancel, still counted


def _datetime_iso(seconds: float) -> str:
    """An event's stamp as datetime writes it: what :func:`bulk_mms.clock.iso` is held to."""
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


@given(st.floats(min_value=0, max_value=253_402_300_799.999))
def test_iso_writes_a_stamp_as_datetime_writes_it(seconds: float) -> None:
    """Any instant from 1970 to 9999 is stamped as datetime stamps it, to the character."""
    assert iso(seconds) == _datetime_iso(seconds)


@pytest.mark.parametrize(
    "seconds",
    [
        0.0,
        1_765_000_000.0,
        1_765_000_000.0005,  # half a millisecond: cut, not rounded
        1_765_000_000.9995,
        1_765_000_000.9999995,  # rounds up to the next second
        1_765_000_000.0000005,  # a tie at the microsecond, half to even
        1_765_000_000.0000015,
        1_767_225_599.9999996,  # the last instant of 2025 rounds into 2026
        253_402_300_799.999,
    ],
)
def test_iso_rounds_at_the_edges_as_datetime_does(seconds: float) -> None:
    """At the microsecond's ties and a second's, a day's and a year's last instants, the
    stamp is datetime's."""
    assert iso(seconds) == _datetime_iso(seconds)
