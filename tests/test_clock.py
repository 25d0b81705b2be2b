"""The system clock: its monotonic time is the time of the event loop it runs under."""

from __future__ import annotations

import asyncio
import functools
import time

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
