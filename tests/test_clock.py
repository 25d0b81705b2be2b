"""The system clock: its monotonic time is the time of the event loop it runs under."""

from __future__ import annotations

import asyncio
import functools
import time

import pytest

import bulk_mms.clock
from bulk_mms.clock import SystemClock


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
