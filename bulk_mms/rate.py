"""The account budget: what every sender of one account shares, behind one seam.

Telnyx counts its limits per account: whatever sends for the account (one process, or
several hosts on one shared ledger) must together stay under the account ``rate``. The
:class:`AccountBudget` protocol is the part of the pacer that is shared that way:

* :meth:`~AccountBudget.acquire`: admission at account level, spaced at ``rate``, and
  :meth:`~AccountBudget.admit_now`, the same admission when it needs no wait (None: wait);
* :meth:`~AccountBudget.pause` / :meth:`~AccountBudget.paused_until`: the account's pause
  (every sender saw a 429), and each sender's own pause (a 429, or a queue to let drain);
* :meth:`~AccountBudget.send_slot`: the one-second window guard, called right before a
  request leaves, so that no one-second window ever holds more than ``rate``.

The rate holds when requests *leave*, not when they were admitted: between the two lie the
write-ahead commit and whatever stalls it. The pacer therefore takes an admission again when it
is older than :func:`permit_max_age` as its request is about to leave
(:meth:`bulk_mms.pacing.Pacer.send_slot`); the admissions that a stalled commit held back then
go out spaced at ``rate`` instead of together. That is what keeps the windows of several
processes sharing one budget (each one's window guard sees only its own sends).

:class:`LocalBudget` is the in-process implementation;
:class:`bulk_mms.ledger.pgbudget.PostgresBudget` the shared one (one budget row per account
in PostgreSQL, updated atomically), which a shared ledger's coordinator hands the pacer. The
per-sender adaptive controller (:class:`bulk_mms.pacing.SenderPace`) stays in the pacer, on
top of the budget.

All times crossing the seam are on the injected clock's ``monotonic()`` scale. The shared
implementation converts them at its own boundary (for instance to the database's clock, by
the offset between the two read at each round trip), since each process's monotonic clock
has its own origin. ``pause`` and ``paused_until`` are synchronous (the pacer's 429 path is):
the shared implementation serves ``paused_until`` from what it read on its last round trip,
and writes a ``pause`` through on its next one (or from a task of its own).

Where aiolimiter is used, and where not
---------------------------------------

:class:`FixedRate` is :class:`aiolimiter.AsyncLimiter`, used through its public API
(``has_capacity``, ``acquire``), for the *fixed* limits, whose rate is known when they are
built: the account-wide ``rate`` (inside :class:`LocalBudget`), a sender's configured
per-number ceiling (in the pacer), and ``track``'s GET rate. The bucket is aiolimiter's own;
:class:`FixedRate` waits for room in it on the job's clock (a stop ends that wait, and a
deadline refuses to begin it) and only then charges it.

aiolimiter keeps time by the event loop's clock, so every :class:`~bulk_mms.clock.Clock`
runs at the loop's pace: :class:`~bulk_mms.clock.SystemClock` is the loop's own time, and
:class:`~bulk_mms.testing.FakeClock` reads the loop's time too (tests run the loop on a
virtual clock, ``looptime``, where every wait is fast-forwarded). Only durations cross
between the two, never instants, so a clock may start anywhere.

aiolimiter is not used, and our own code stays, for:

* **The adaptive per-sender rate** (:class:`bulk_mms.pacing.SenderPace`): the controller
  moves it every few seconds, while aiolimiter's ``max_rate / time_period`` is fixed when the
  limiter is built. A sender's pause also forfeits the credit it would have banked, which a
  leaky bucket has no notion of.
* **"No one-second window above rate"** (:class:`WindowGuard`): a leaky bucket of depth ``D``
  admits ``D`` at once from full credit and ``rate`` more within the same second, so some
  window holds ``rate + D``. Only ``D`` near zero would avoid that, and then every late
  wake-up would be throughput lost for good. The buckets here keep a little depth (about half
  a second's worth, :data:`CATCH_UP_S`) so the long-run rate is the one set; the guard, a log
  of the last second's sends, caps every window exactly.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from aiolimiter import AsyncLimiter

from bulk_mms.clock import Clock

__all__ = [
    "CATCH_UP_S",
    "PERMIT_MAX_AGE_S",
    "PERMIT_MIN_AGE_S",
    "AccountBudget",
    "FairLock",
    "FixedRate",
    "LocalBudget",
    "PaceAborted",
    "WindowGuard",
    "permit_max_age",
    "wait_until",
]

#: Credit a bucket may bank while it lags (a stalled fsync, a slow response), in seconds of its
#: rate: enough to catch up after a stall; the window guard still caps every second.
CATCH_UP_S = 0.5
#: The oldest an admission may be when its request leaves, in seconds, whatever the rate: an
#: older one (a commit stalled, the process was paused) is taken again first
#: (:func:`permit_max_age`), so a stall never turns into a burst at the server. The shared
#: budget spaces admissions wider by this much (:func:`bulk_mms.ledger.pgbudget.spacing`).
PERMIT_MAX_AGE_S = 0.1
#: ... and at least this, however high the rate: an ordinary write-ahead commit (an fsync, a
#: round trip to the database) is younger, so it never costs an admission taken twice.
PERMIT_MIN_AGE_S = 0.025


#: How finely :meth:`FixedRate.ready_at` measures the room in a bucket: to ``2**-40`` of the
#: amount asked for.
_ROOM_BITS = 40
#: The shortest wait for room, in seconds (above :func:`wait_until`'s tolerance): a bucket a
#: rounding error short of room is ready a little later, never at the same instant again (a
#: loop whose time stands still, a virtual one, would spin on that instant).
_MIN_WAIT_S = 1e-5
#: A bucket this share of an amount short of room has room for it: the rest is the rounding
#: error of its float arithmetic, not time still to wait.
_HAIR = 1e-9


def permit_max_age(rate: float) -> float:
    """How old an admission at ``rate`` may be when its request leaves: one interval of the
    rate (``1 / rate``), but not under :data:`PERMIT_MIN_AGE_S` nor over
    :data:`PERMIT_MAX_AGE_S`.

    Why: a budget shared by several processes spaces its admissions so that the requests
    admitted within ``1 + B`` seconds (and a little jitter) are no more than ``rate``
    (:func:`bulk_mms.ledger.pgbudget.spacing`); each request leaving within this bound ``B``
    of its admission, no second at the server holds more than ``rate``, though each
    process's window guard sees only its own sends. (One process's guard sees them all.)
    """
    return min(PERMIT_MAX_AGE_S, max(PERMIT_MIN_AGE_S, 1.0 / rate))


class PaceAborted(Exception):
    """A wait for admission gave up: the job is stopping, or the wait would run past the
    caller's deadline (a pause outlasts it). ``earliest`` is when it could have gone."""

    def __init__(self, reason: str, earliest: float) -> None:
        self.reason = reason
        self.earliest = earliest
        super().__init__(f"{reason} (could send at {earliest:.3f})")


def _never() -> bool:
    return False


async def wait_until(
    clock: Clock,
    when: Callable[[], float],
    *,
    stopped: Callable[[], bool] = _never,
    deadline: float | None = None,
) -> float:
    """Sleep on ``clock`` until ``when()`` has come; return the clock's time then.

    ``when`` is re-read after every sleep: a 429 may have pushed it out meanwhile.

    Raises:
        PaceAborted: ``stopped()`` is true (a stopping clock's sleep returns at once, so this
            loop must not spin on it), or ``when()`` is past ``deadline``: no point waiting.
    """
    while (delay := (at := when()) - clock.monotonic()) > 1e-6:
        if stopped():
            raise PaceAborted("stopping", at)
        if deadline is not None and at > deadline:
            raise PaceAborted("deadline", at)
        await clock.sleep(delay)
    return clock.monotonic()


class FairLock:
    """A first-come-first-served asyncio lock that says whether anyone holds it or waits for
    it (:attr:`busy`), for a no-wait path beside it: taken only when the queue is not busy, it
    never goes ahead of a waiter. An :class:`asyncio.Lock` no longer reads ``locked()`` once
    its holder lets go, while the waiter it woke has yet to run: a newcomer's no-wait path
    would go ahead of that waiter. Use as ``async with``."""

    __slots__ = ("_in", "_lock")

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._in = 0  # holding or waiting

    @property
    def busy(self) -> bool:
        """Whether anyone holds the lock or waits for it."""
        return self._in > 0

    async def __aenter__(self) -> None:
        self._in += 1
        try:
            await self._lock.acquire()
        except BaseException:
            self._in -= 1
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()
        self._in -= 1


class FixedRate:
    """A fixed rate limit: an :class:`aiolimiter.AsyncLimiter`, waited for on the job's clock.

    ``rate`` units per second, banking at most ``depth`` units of credit (the most admitted
    at once after an idle spell). It starts with ``credit`` units of room (``depth`` by
    default, as aiolimiter does), from its first use. Use it where a rate is fixed for the
    limiter's life::

        gets = FixedRate(settings.track.rate, clock, stopped=stop.is_set)
        ...
        await gets.acquire()  # before each GET
        response = await fetch(message_id)

    The rate cannot change once built (aiolimiter's cannot): to slow down for the rest of a
    run (after a 429, say), build a new one, ``FixedRate(max(0.1, gets.rate / 2), clock)``.

    The bucket is aiolimiter's, through its public API: :meth:`ready_at` learns the room in it
    from ``has_capacity`` and charges with ``acquire`` only once the room is there, so the wait
    itself is a sleep on the job's clock, which a stop ends and a deadline refuses to begin.

    Args:
        rate: units per second.
        clock: the job's clock (it runs at the event loop's pace, as aiolimiter's does).
        depth: the bucket's capacity, in units; no single acquire may ask for more.
        credit: units of room at the start, at most ``depth``.
        stopped: whether the job is stopping; a wait then raises :class:`PaceAborted`.
    """

    __slots__ = ("_limiter", "_lock", "_owed", "_stopped", "clock", "depth", "rate")

    def __init__(
        self,
        rate: float,
        clock: Clock,
        *,
        depth: float = 1.0,
        credit: float | None = None,
        stopped: Callable[[], bool] = _never,
    ) -> None:
        if rate <= 0 or depth <= 0:
            raise ValueError("rate and depth must be positive")
        #: Units per second.
        self.rate = rate
        #: The bucket's capacity: the largest burst, and the largest single acquire.
        self.depth = depth
        self.clock = clock
        self._stopped = stopped
        self._limiter = AsyncLimiter(depth, depth / rate)
        #: Charged at the first use, so that the bucket starts with ``credit`` units of room
        #: (a new AsyncLimiter has all of its ``depth``).
        self._owed = depth - min(depth, depth if credit is None else credit)
        # FIFO among waiters; one sleeper at a time, so a clock moves once per admission
        self._lock = FairLock()

    def __repr__(self) -> str:
        return f"<FixedRate {self.rate:g}/s depth={self.depth:g}>"

    def _check(self, amount: float) -> None:
        if not 0 <= amount <= self.depth:
            raise ValueError(f"amount {amount:g} is not between 0 and the depth {self.depth:g}")

    def ready_at(self, amount: float = 1.0) -> float:
        """When ``amount`` fits (now, or later), on the clock's monotonic time.

        The room now is the most that ``has_capacity`` admits, to within :data:`_ROOM_BITS`
        halvings of ``amount``; the rest leaks at ``rate``.
        """
        fits = self._limiter.has_capacity
        now = self.clock.monotonic()
        if self._fitting(amount) is not None:
            return now
        room, short = 0.0, amount  # has_capacity holds for room and fails for short
        for _ in range(_ROOM_BITS):
            mid = (room + short) / 2
            if fits(mid + self._owed):
                room = mid
            else:
                short = mid
        return now + max((amount - room) / self.rate, _MIN_WAIT_S)

    def _fitting(self, amount: float) -> float | None:
        """What to charge for ``amount`` now: itself if it fits; a hair less if only that fits
        (the bucket's float arithmetic left it a rounding error short, :data:`_HAIR`); else
        None."""
        for charge in (amount, amount * (1 - _HAIR)):
            if self._limiter.has_capacity(charge + self._owed):
                return charge
        return None

    async def take_if_room(self, amount: float = 1.0) -> bool:
        """Take ``amount`` if it fits now with nobody waiting before it; never waits.

        Raises:
            ValueError: ``amount`` exceeds ``depth`` (it could never fit).
        """
        self._check(amount)
        if self._lock.busy or (charge := self._fitting(amount)) is None:
            return False
        await self._charge(charge)
        return True

    async def _charge(self, charge: float) -> None:
        """Charge the bucket ``charge`` that fits now (and the start's debt): no wait."""
        if self._owed:
            owed, self._owed = self._owed, 0.0
            await self._limiter.acquire(owed)  # a new bucket has room for it
        await self._limiter.acquire(charge)

    async def acquire(self, amount: float = 1.0, deadline: float | None = None) -> float:
        """Wait on the clock until ``amount`` fits, take it, and return the time then.

        Raises:
            ValueError: ``amount`` exceeds ``depth`` (it could never fit).
            PaceAborted: the job is stopping, or it would not fit by ``deadline``.
        """
        self._check(amount)
        async with self._lock:
            charge: float | None = None
            while charge is None:  # (a wake-up that read the clock a hair early waits on)
                now = await wait_until(
                    self.clock,
                    lambda: self.ready_at(amount),
                    stopped=self._stopped,
                    deadline=deadline,
                )
                charge = self._fitting(amount)
            await self._charge(charge)
            return now


class WindowGuard:
    """At most ``limit`` cost units in any ``window``-second span, by a log of recent sends.

    A small ``margin`` is added to the window so that network jitter between here and the server
    cannot make two sends a full window apart here look closer there.
    """

    __slots__ = ("_log", "_sum", "limit", "margin", "window")

    def __init__(self, limit: float, window: float = 1.0, margin: float = 0.005) -> None:
        self.limit = limit
        self.window = window
        self.margin = margin
        self._log: deque[tuple[float, float]] = deque()
        self._sum = 0.0

    def earliest(self, now: float, cost: float) -> float:
        """When a send of ``cost`` would fit (now, or later)."""
        span = self.window + self.margin
        while self._log and self._log[0][0] <= now - span:
            self._sum -= self._log.popleft()[1]
        if self._sum + cost <= self.limit + 1e-9 or not self._log:
            return now
        # drop the oldest sends until the cost fits; it fits once the last of those ages out
        total = self._sum
        for t, c in self._log:
            total -= c
            if total + cost <= self.limit + 1e-9:
                return t + span
        return self._log[-1][0] + span  # pragma: no cover - the empty log returned above

    def record(self, now: float, cost: float) -> None:
        self._log.append((now, cost))
        self._sum += cost


class AccountBudget(Protocol):
    """What all senders of one account share: admission at ``rate``, pauses, the window guard.

    Times are on the pacer's clock (``Clock.monotonic()``); costs are in the pacer's units
    (a request, or a recipient). Every wait ends in :class:`PaceAborted` on a stop.
    """

    def paused_until(self, sender: str | None = None) -> float:
        """Until when the account (no ``sender``) or that sender is paused; 0.0 if never.

        A sender's pause is its own: the account's is not folded in.
        """
        ...

    def pause(self, until: float, sender: str | None = None) -> None:
        """Pause the account (no ``sender``) or one sender until ``until``; a pause only ever
        extends, never shortens."""
        ...

    async def admit_now(self, cost: float) -> float | None:
        """Admit ``cost`` at once if that needs no wait and nobody waits before it: the
        admission time; else None (and nothing is charged: :meth:`acquire` then waits).
        It never suspends."""
        ...

    async def acquire(self, cost: float, deadline: float | None = None) -> float:
        """Admit ``cost`` at account level: wait out the account pause and the spacing at
        ``rate``; return the admission time.

        Raises:
            PaceAborted: the job is stopping, or admission would come after ``deadline``.
        """
        ...

    async def send_slot(self, cost: float) -> float:
        """Wait until sending ``cost`` now keeps every one-second window within ``rate``;
        record the send and return its time. Called right before the request leaves.

        Raises:
            PaceAborted: the job is stopping.
        """
        ...

    async def close(self) -> None:
        """Let go of what the budget holds (a connection); the run is over."""
        ...


class Pauses:
    """The account's pause and each sender's, as a budget keeps them: a pause only extends."""

    def __init__(self) -> None:
        self._account = 0.0
        self._senders: dict[str, float] = {}

    def paused_until(self, sender: str | None = None) -> float:
        if sender is None:
            return self._account
        return self._senders.get(sender, 0.0)

    def pause(self, until: float, sender: str | None = None) -> None:
        if sender is None:
            self._account = max(self._account, until)
        else:
            self._senders[sender] = max(self._senders.get(sender, 0.0), until)


class LocalBudget(Pauses):
    """The in-process :class:`AccountBudget`: one process sends for the account.

    Args:
        rate: the account's ceiling, cost units per second.
        clock: the job's clock.
        max_cost: the largest single cost (8 for a group of 8 under ``cost = "recipient"``).
            Every window holds at least that much, or such a group could never go when
            ``rate`` is lower. The spacing bucket starts with that much credit, and no more,
            and banks at most that plus :data:`CATCH_UP_S` seconds of ``rate``.
        stopped: whether the job is stopping.
    """

    def __init__(
        self,
        rate: float,
        clock: Clock,
        *,
        max_cost: float = 1.0,
        stopped: Callable[[], bool] = _never,
    ) -> None:
        self.rate = rate
        self.clock = clock
        self._stopped = stopped
        # one group's worth, plus half a second of catch-up after a late wake-up or a stall
        self._bucket = FixedRate(
            rate, clock, depth=max_cost + rate * CATCH_UP_S, credit=max_cost, stopped=stopped
        )
        self._guard = WindowGuard(max(rate, max_cost))
        super().__init__()
        self._account_lock = FairLock()
        self._slot_lock = FairLock()

    def __repr__(self) -> str:
        return f"<LocalBudget {self.rate:g}/s paused_until={self.paused_until():.3f}>"

    async def admit_now(self, cost: float) -> float | None:
        now = self.clock.monotonic()
        return now if await self._take_now(cost, now) else None

    async def _take_now(self, cost: float, now: float) -> bool:
        """Take ``cost`` at ``now`` if :meth:`acquire` would not wait for it (nobody waits
        before it, no pause, room in the bucket); whether it did. Nothing here suspends, so
        nothing else runs between the checks and the charge."""
        return (
            not self._account_lock.busy
            and self.paused_until() - now <= 1e-6
            and await self._bucket.take_if_room(cost)
        )

    async def acquire(self, cost: float, deadline: float | None = None) -> float:
        now = self.clock.monotonic()
        # nobody waits, and there is room before the deadline: no lock and no wait
        if (deadline is None or now <= deadline) and await self._take_now(cost, now):
            return now
        async with self._account_lock:
            # re-read on every wake-up: a 429 may have paused the account meanwhile
            now = await wait_until(
                self.clock,
                lambda: max(self.paused_until(), self._bucket.ready_at(cost)),
                stopped=self._stopped,
                deadline=deadline,
            )
            if deadline is not None and now > deadline:  # the lock's queue took it past
                raise PaceAborted("deadline", now)
            await self._bucket.acquire(cost)  # the room is there: no wait
            return now

    async def send_slot(self, cost: float) -> float:
        if not self._slot_lock.busy:  # nobody waits: room now needs no lock and no wait
            now = self.clock.monotonic()
            if self._guard.earliest(now, cost) - now <= 1e-6:
                self._guard.record(now, cost)
                return now
        async with self._slot_lock:
            now = await wait_until(
                self.clock,
                lambda: self._guard.earliest(self.clock.monotonic(), cost),
                stopped=self._stopped,
            )
            # the time after the wake-up, however late: the log holds when sends really left
            self._guard.record(now, cost)
            return now

    async def close(self) -> None:
        return None
