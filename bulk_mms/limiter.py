"""Account-wide pacing: at most ``rate`` groups per second.

The bucket is an :class:`aiolimiter.AsyncLimiter` with a capacity of one request, refilled every
``1/rate`` seconds: requests are spaced evenly, so no one-second window ever holds more than
``rate`` of them (a bucket as deep as the rate would allow a burst of twice the rate across a
window boundary). It is created inside the running loop, as aiolimiter requires. The number in
flight is bounded separately, by the runner's worker count.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter


class Pacer:
    """Spaces requests evenly at ``rate`` per second, account-wide."""

    __slots__ = ("_bucket", "rate")

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        #: Requests per second.
        self.rate = rate
        self._bucket = AsyncLimiter(1, 1 / rate)

    async def acquire(self) -> None:
        """Wait for the next request's turn under the rate."""
        await self._bucket.acquire()
