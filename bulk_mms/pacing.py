"""Pacing: send at the rate Telnyx's queue drains, without being told that rate.

Telnyx queues traffic above its limits instead of refusing it, and reports in each response's
``wait_seconds`` how long that message waited. The pacer turns those reports into a send rate.

Four gates stand before every request, in this order:

1. **Per sender** (:class:`SenderPace`): a GCRA token bucket whose rate the controller moves
   between a floor and the sender's ceiling (its configured limit, or the account rate), plus a
   pause (after a 429, or to let a long queue drain). Pure logic with an explicit ``now``, so the
   controller is tested without any clock.
2. **Per number, fixed**: a sender with a configured limit (``sender_limits`` or
   ``type_limits``) also passes a :class:`~bulk_mms.rate.FixedRate` at that limit, so
   nothing the controller does (its banked catch-up credit included) takes it above.
3. **Account-wide** (an :class:`~bulk_mms.rate.AccountBudget`, by default the in-process
   :class:`~bulk_mms.rate.LocalBudget`): the account pause, admission spaced at the
   configured ``rate``, and, right before the request leaves (:meth:`Pacer.send_slot`), the
   window guard that makes "no one-second window above ``rate``" hold exactly, even when a
   wake-up comes late. An admission stale by then (older than
   :func:`~bulk_mms.rate.permit_max_age`: a commit stalled) is taken again first.
4. The number in flight, bounded by the runner's workers.

Where aiolimiter is used, and where not (the details are in :mod:`bulk_mms.rate`):
aiolimiter's leaky bucket holds the *fixed* limits, gates 2 and 3's spacing (and ``track``'s GET
rate), through its public API and on the event loop's clock, at whose pace every
:class:`~bulk_mms.clock.Clock` runs. The
adaptive per-sender rate (gate 1) is our own GCRA, since aiolimiter's rate is fixed when it is
built while the controller moves this one every few seconds, and a pause must forfeit banked
credit. The window guard is our own too: a leaky bucket deep enough to absorb late wake-ups
lets a window at a bucket's refill boundary hold ``rate`` plus its depth.

The controller (per sender)::

    wait reported w ──► queue forming?  no (w≈0) ─► rate * 1.25 per second, up to the ceiling
                                        yes ─────► drain rate D from consecutive departures:
                                                   D = Δsequence / Δ(send time + w)
                                                   rate = D * (1 + (w_goal - w) / tau)
                                                   w > max_queue_wait: pause (w - w_goal)
    429 ──────────────────────────────► pause for the hint (or backoff), rate / 2
    429 code 40318 (queue full) ──────► pause, rate / 4

Because a FIFO queue releases messages exactly ``1/D`` apart, two responses that both waited
tell the drain rate directly; the controller then aims the queue at ``w_goal`` (a quarter of
``max_queue_wait_s``): long enough that the queue never runs dry (so the drain is used fully),
short enough to stay far from the cap. A queue-full 429 shows the cap is nearer than that: the
goal drops to half the wait last seen before it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

import msgspec
import structlog

from bulk_mms.clock import Clock, SystemClock, mono_at
from bulk_mms.rate import (
    CATCH_UP_S,
    AccountBudget,
    FairLock,
    FixedRate,
    LocalBudget,
    PaceAborted,
    WindowGuard,
    permit_max_age,
    wait_until,
)

# Re-exported: the runner, the CLI and the tests import these from here.
__all__ = [
    "CATCH_UP_S",
    "WAIT_CEILING_S",
    "DrainFit",
    "PaceAborted",
    "Pacer",
    "PacingConfig",
    "SenderPace",
    "Ticket",
    "WindowGuard",
    "sender_type",
]

log = structlog.get_logger(__name__)

#: Rate never drops below this fraction of the ceiling (and never below 0.01/s), so a sender
#: keeps probing even after a burst of bad news.
FLOOR_FRACTION = 0.01
#: How fast (seconds) the controller closes the gap between the reported and the goal wait.
TAU_S = 10.0
#: Waits at or under this many seconds count as "no queue".
NO_QUEUE_S = 0.05
#: Multiplicative increase per second of empty-queue reports.
INCREASE = 1.25
#: The drain rate is fitted over responses from this many recent seconds.
DRAIN_WINDOW_S = 10.0
#: Backoff after a 429 without a hint, in seconds.
DEFAULT_429_PAUSE_S = 1.0
#: The longest queue wait (``wait_seconds``) taken at its word: Telnyx expires a message that
#: waits about four hours, so a longer report is not a queue but a broken answer. It is
#: clamped to this (and logged once); the pause it causes is then bounded by
#: ``max_group_age_s`` and ``max_job_duration_s``, and ended by a stop at once.
WAIT_CEILING_S = 4 * 3600.0


class Ticket(msgspec.Struct, frozen=True):
    """An admission: which sender, when, and the sender's cumulative cost including this one."""

    sender: str
    time: float
    seq: float
    cost: float


class DrainFit:
    """Least-squares drain rate over a sliding time window. Private to :class:`SenderPace`.

    Messages leave a FIFO queue ``1/D`` apart, so departure time plotted against queue position
    is a line of slope ``1/D``. Fitting all recent points, rather than taking two, shrugs off a
    server that rounds ``wait_seconds``. Running sums keep each report O(1); they are rebuilt
    from the window now and then, relative to its first point, so rounding never piles up.
    """

    __slots__ = ("_origin", "_points", "_since_rebuild", "_sums", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._points: deque[tuple[float, float]] = deque()
        self._origin = (0.0, 0.0)
        self._sums = [0.0] * 5  # n, sum s, sum t, sum s*s, sum s*t (relative to _origin)
        self._since_rebuild = 0

    def clear(self) -> None:
        self._points.clear()
        self._sums = [0.0] * 5

    def __len__(self) -> int:
        return len(self._points)

    def _acc(self, t: float, s: float, sign: float) -> None:
        t -= self._origin[0]
        s -= self._origin[1]
        sums = self._sums
        sums[0] += sign
        sums[1] += sign * s
        sums[2] += sign * t
        sums[3] += sign * s * s
        sums[4] += sign * s * t

    def add(self, t: float, s: float, now: float) -> float | None:
        """Add a departure; drop those older than the window; return the fitted rate, if any."""
        self._points.append((t, s))
        self._acc(t, s, 1.0)
        while self._points[0][0] < now - self.window and len(self._points) > 1:
            old_t, old_s = self._points.popleft()
            self._acc(old_t, old_s, -1.0)
        self._since_rebuild += 1
        if self._since_rebuild >= 1024:
            self._since_rebuild = 0
            self._origin = self._points[0]
            self._sums = [0.0] * 5
            for pt, ps in self._points:
                self._acc(pt, ps, 1.0)
        n, ss, st, sss, sst = self._sums
        span = self._points[-1][0] - self._points[0][0]
        if n < 3 or span < 0.5:
            return None
        sxx = sss - ss * ss / n
        sxy = sst - ss * st / n
        if sxx <= 0 or sxy <= 0:
            return None
        return sxx / sxy  # queue positions per second: the inverse of the fitted slope


class SenderPace(msgspec.Struct):
    """One sender's adaptive bucket. Private to the pacer; all methods take ``now``."""

    sender: str
    #: The most this sender may ever send, in cost units per second.
    ceiling: float
    #: Goal for the reported queue wait, seconds.
    goal_wait: float
    #: Above this reported wait the sender pauses to let the queue drain.
    max_wait: float
    rate: float = 0.0
    #: GCRA theoretical arrival time; None until the first admission (no credit at start).
    tat: float | None = None
    paused_until: float = 0.0
    #: Cumulative cost admitted: the position in the sender's queue.
    seq: float = 0.0
    #: Recent (departure time = send + wait, seq) of responses that waited: the drain fit.
    departures: DrainFit = msgspec.field(default_factory=lambda: DrainFit(DRAIN_WINDOW_S))
    drain: float | None = None
    #: The latest wait reported: where the queue stood when it last answered.
    last_wait: float = 0.0
    #: When its latest message answered leaves Telnyx's queue for the carrier, at the latest
    #: (monotonic: the answer's time plus the wait it reported): a message sent now leaves
    #: no earlier (:meth:`Pacer.queue_ahead`).
    departs: float = -math.inf
    #: A 429 said its queue is full (40318) since its latest wait was reported: the queue is
    #: longer than :attr:`departs` says, by how much no answer has said yet.
    full: bool = False
    last_increase: float = -math.inf
    #: When a report last showed a queue; "empty" means none for a whole second.
    last_queued: float = -math.inf
    last_used: float = -math.inf

    def __post_init__(self) -> None:
        if self.rate <= 0:
            self.rate = self.ceiling

    @property
    def floor(self) -> float:
        return max(0.01, self.ceiling * FLOOR_FRACTION)

    def earliest(self) -> float:
        """The earliest time this sender may send next."""
        if self.tat is None:
            return self.paused_until
        return max(self.tat - max(1.0 / self.rate, CATCH_UP_S), self.paused_until)

    def admit(self, now: float, cost: float) -> Ticket:
        # Banked credit (CATCH_UP_S) absorbs late wake-ups and stalls, so the long-run rate is
        # the one set rather than a bit less; a pause resets it.
        tolerance = max(cost / self.rate, CATCH_UP_S)
        tat = now + tolerance if self.tat is None else self.tat  # empty bucket at first
        if self.paused_until > now - tolerance:
            # a pause forfeits the credit it would otherwise have banked
            tat = max(tat, self.paused_until + tolerance)
        self.tat = max(tat, now - tolerance) + cost / self.rate
        self.seq += cost
        self.last_used = now
        return Ticket(self.sender, now, self.seq, cost)

    def _set(self, rate: float, reason: str) -> tuple[float, float, str] | None:
        new = min(self.ceiling, max(self.floor, rate))
        old = self.rate
        if abs(new - old) < 1e-9:
            return None
        self.rate = new
        return old, new, reason

    def observe(self, now: float, ticket: Ticket, wait: float) -> tuple[float, float, str] | None:
        """Take in the ``wait_seconds`` reported for ``ticket``; return a rate change, if any."""
        self.last_wait = wait
        self.departs = max(self.departs, now + wait)
        self.full = False
        if wait <= NO_QUEUE_S:
            # One short wait may be a rounded-down small one; a second of them is no queue.
            if now - self.last_queued < 1.0:
                return None
            self.departures.clear()
            self.drain = None
            if now - self.last_increase >= 1.0 and self.rate < self.ceiling:
                self.last_increase = now
                return self._set(self.rate * INCREASE + self.floor, "queue empty")
            return None
        self.last_queued = now
        drain = self.departures.add(ticket.time + wait, ticket.seq, now)
        if drain is not None:
            self.drain = drain
        base = self.drain if self.drain is not None else self.rate
        if wait > self.max_wait:
            # Stop until the queue is back to the goal; messages drain at base meanwhile.
            self.paused_until = max(self.paused_until, now + (wait - self.goal_wait))
            return self._set(base, f"wait {wait:.1f}s over {self.max_wait:g}s: pause")
        target = base * (1 + (self.goal_wait - wait) / TAU_S)
        change = self._set(target, f"wait {wait:.1f}s, drain {base:.2f}/s")
        if change is not None and abs(change[1] - change[0]) < 0.02 * change[0]:
            return None  # too small to log; the rate is set all the same
        return change

    def rate_limited(
        self, now: float, retry_after: float | None, queue_full: bool
    ) -> tuple[float, float, str] | None:
        """A 429 for this sender: pause for the hint (or a backoff) and cut the rate."""
        pause = retry_after if retry_after is not None else DEFAULT_429_PAUSE_S
        self.paused_until = max(self.paused_until, now + pause)
        self.full = self.full or queue_full
        if queue_full and self.last_wait > NO_QUEUE_S:
            # The queue's cap is shorter than our goal: aim well under the wait it filled at.
            self.goal_wait = max(0.5, min(self.goal_wait, self.last_wait / 2))
        factor = 0.25 if queue_full else 0.5
        reason = "429 queue full (40318)" if queue_full else "429"
        return self._set(self.rate * factor, reason)


class PacingConfig(msgspec.Struct, frozen=True):
    """What the pacer needs from the settings."""

    #: Account-wide ceiling, cost units per second.
    rate: float
    #: ``"request"`` (a group costs 1) or ``"recipient"`` (a group costs its size).
    cost: str = "request"
    max_queue_wait_s: float = 30.0
    #: Per-sender ceilings by number, cost units per second.
    sender_limits: dict[str, float] = msgspec.field(default_factory=dict)
    #: Per-sender ceilings by type (``long_code``, ``toll_free``, ``short_code``,
    #: ``alphanumeric``), used when a number has no limit of its own.
    type_limits: dict[str, float] = msgspec.field(default_factory=dict)
    #: The longest pause a 429's hint (``Retry-After``...) may cause: ``max_retry_after``.
    max_pause_s: float = 300.0


def sender_type(sender: str) -> str:
    """``short_code``, ``toll_free``, ``long_code`` or ``alphanumeric``."""
    if sender.isdigit():
        return "short_code"
    if not sender.startswith("+"):
        return "alphanumeric"
    if sender[:5] in ("+1800", "+1833", "+1844", "+1855", "+1866", "+1877", "+1888"):
        return "toll_free"
    return "long_code"


def max_cost(config: PacingConfig) -> float:
    """The largest cost of one request: a group of 8 under ``cost = "recipient"``, else 1."""
    return 8.0 if config.cost == "recipient" else 1.0


class Pacer:
    """Admits requests under the per-sender and account-wide limits; learns from responses.

    Args:
        config: rates and the queue-wait target.
        senders: the pool of ``from`` values.
        clock: the job's clock (:class:`~bulk_mms.clock.SystemClock` by default); tests pass a
            :class:`~bulk_mms.testing.FakeClock`. It runs at the event loop's pace (the fixed
            limits keep the loop's time), and its sleep should return early when the job is
            asked to stop.
        stopped: whether the job is stopping; every wait checks it after each sleep and gives
            up (:class:`PaceAborted`) instead of waiting on.
        budget: what the account's senders share (admission at ``rate``, pauses, the window
            guard); by default a :class:`~bulk_mms.rate.LocalBudget` on ``clock``. One passed
            in must run on the same clock.
    """

    def __init__(
        self,
        config: PacingConfig,
        senders: Sequence[str],
        *,
        clock: Clock | None = None,
        stopped: Callable[[], bool] = lambda: False,
        budget: AccountBudget | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._stopped = stopped
        # A group of 8 under cost="recipient" must fit in one second's window even when the rate
        # is lower than 8, or it could never be sent: the window holds at least the largest cost.
        self.max_cost = max_cost(config)
        self.budget: AccountBudget = budget or LocalBudget(
            config.rate, self.clock, max_cost=self.max_cost, stopped=stopped
        )
        #: Hints already logged as absurd (each is logged once per run).
        self._absurd: set[str] = set()
        goal = config.max_queue_wait_s / 4
        self.senders: dict[str, SenderPace] = {}
        #: The fixed per-number ceilings, for senders with a configured limit.
        self._ceilings: dict[str, FixedRate] = {}
        for s in dict.fromkeys(senders):
            limit = config.sender_limits.get(s, config.type_limits.get(sender_type(s)))
            ceiling = config.rate if limit is None else min(limit, config.rate)
            self.senders[s] = SenderPace(
                s, ceiling, goal_wait=goal, max_wait=config.max_queue_wait_s
            )
            if limit is not None:
                self._ceilings[s] = FixedRate(
                    ceiling,
                    self.clock,
                    depth=max(self.max_cost, ceiling * CATCH_UP_S),
                    credit=self.max_cost,
                    stopped=stopped,
                )
        self._sender_locks = {s: FairLock() for s in self.senders}
        #: Told ``(sender, was, rate, reason)`` when a sender's pace is set: at its first
        #: admission (``was`` 0, ``"start"``) and at each change that is logged.
        self.on_change: Callable[[str, float, float, str], None] | None = None
        #: Senders the API refused (40003, 40315): out of the pool for the rest of the job.
        self.retired: set[str] = set()
        self._recent_429: dict[str, float] = {}
        #: Counters for the summary.
        self.rate_limited = 0
        self.queue_full = 0
        self.admitted = 0
        self.first_admit: float | None = None
        self.last_admit: float | None = None
        #: Admissions taken again because they were stale when their request was to leave.
        self.retaken = 0
        self._permit_age = permit_max_age(config.rate)

    @property
    def paused_until(self) -> float:
        """Until when the whole account is paused (every sender showed a 429 lately)."""
        return self.budget.paused_until()

    def cost_of(self, size: int) -> float:
        return float(size) if self.config.cost == "recipient" else 1.0

    def _sender_earliest(self, pace: SenderPace, cost: float) -> float:
        """When ``pace`` may send ``cost``: its own bucket and pause (a shared budget may know
        of a longer pause), and its fixed ceiling."""
        pace.paused_until = max(pace.paused_until, self.budget.paused_until(pace.sender))
        ceiling = self._ceilings.get(pace.sender)
        earliest = pace.earliest()
        return earliest if ceiling is None else max(earliest, ceiling.ready_at(cost))

    def resumes(self) -> float:
        """When the first sender not retired may send a group again (monotonic): the end of
        the pauses (429s, a queue to drain, the account's) that hold every one of them."""
        return min(
            (
                self._sender_earliest(pace, self.max_cost)
                for pace in self.senders.values()
                if pace.sender not in self.retired
            ),
            default=math.inf,
        )

    def others_first(self, sender: str, until: float) -> bool:
        """Whether a group waiting on ``sender`` waits for that sender alone: ``sender`` may
        not send before ``until`` (monotonic: its pause after a 429 or a long queue, its
        ceiling), and another sender of the pool, not retired, may. (The account's rate holds
        every sender alike: a wait for it is no sender's own.)"""
        pace = self.senders.get(sender)
        if pace is None or self._sender_earliest(pace, self.max_cost) < until:
            return False
        return any(
            self._sender_earliest(other, self.max_cost) < until
            for other in self.senders.values()
            if other.sender not in self.retired and other.sender != sender
        )

    def queue_ahead(self, sender: str) -> float:
        """Seconds a message of ``sender`` accepted now waits in Telnyx's queue before it
        leaves for the carrier, at least: until the latest message it has answered for
        leaves (the wait its answer reported, counted from the answer; an earlier run's, as
        :meth:`queued_until` gave it); 0 with no queue."""
        pace = self.senders.get(sender)
        return 0.0 if pace is None else max(0.0, pace.departs - self.clock.monotonic())

    def queue_known(self, sender: str) -> bool:
        """Whether :meth:`queue_ahead` knows ``sender``'s queue at Telnyx: an answer of this
        run reported its wait (:meth:`observe`), or the ledger's latest answer for it did
        (:meth:`queued_until`), and no 429 since said the queue is full (40318: other
        traffic of the number filled it, to hours of messages). Until then a message of it
        may wait up to :data:`WAIT_CEILING_S` for all this process knows. A sender not in
        the pool has no queue to learn."""
        pace = self.senders.get(sender)
        return pace is None or (pace.departs > -math.inf and not pace.full)

    def queued_until(self, sender: str, leaves: float) -> None:
        """A message of ``sender`` accepted before this run (the ledger's latest answer for
        it, :attr:`~bulk_mms.ledger.LedgerView.queued_until`) leaves Telnyx's queue at
        ``leaves`` (seconds since the epoch): none sent now leaves before it
        (:meth:`queue_ahead`)."""
        pace = self.senders.get(sender)
        if pace is not None:
            pace.departs = max(pace.departs, mono_at(leaves, self.clock))

    def usable(self, sender: str | None) -> bool:
        """Whether ``sender`` is in the pool and not retired."""
        return sender in self.senders and sender not in self.retired

    def retire(self, sender: str) -> int:
        """Take ``sender`` out of the pool for the rest of the job (the API refused it); its
        waiting groups give up (:class:`PaceAborted` ``"retired"``) and go to another. Returns
        how many senders are left."""
        if sender in self.senders and sender not in self.retired:
            self.retired.add(sender)
            log.warning("sender.retired", sender=sender, left=len(self.senders) - len(self.retired))
        return len(self.senders) - len(self.retired)

    def choose(self) -> str:
        """The sender that can send soonest (least recently used on a tie).

        Raises:
            PaceAborted: every sender is retired (``"retired"``).
        """
        if len(self.senders) == 1 and not self.retired:
            return next(iter(self.senders))  # a pool of one: nothing to choose
        left = [p for p in self.senders.values() if p.sender not in self.retired]
        if not left:
            raise PaceAborted("retired", math.inf)
        best = min(left, key=lambda p: (self._sender_earliest(p, self.max_cost), p.last_used))
        return best.sender

    async def acquire(self, sender: str, size: int, deadline: float | None = None) -> Ticket:
        """Wait until ``sender`` may send a group of ``size``; return the admission ticket.

        Raises:
            PaceAborted: the job is stopping, or the sender cannot send by ``deadline`` (on
                this pacer's clock): no point waiting for a pause that outlasts it.
        """
        pace = self.senders[sender]
        cost = self.cost_of(size)
        if sender in self.retired:
            raise PaceAborted("retired", math.inf)
        lock = self._sender_locks[sender]
        now = self.clock.monotonic()
        if (
            not lock.busy
            and (deadline is None or now <= deadline)
            and self._sender_earliest(pace, cost) - now <= 1e-6
        ):
            # The common case, without the lock and the waits: nobody waits for this sender,
            # it may send now, and so may the account (nothing here suspends in between). Past
            # the deadline the waiting path below says so (PaceAborted), room or not.
            admitted = await self.budget.admit_now(cost)
            if admitted is not None:
                return await self._admitted(sender, pace, cost, admitted)
        async with lock:
            while True:
                now = await self._account_admits(sender, pace, cost, deadline)
                # A shared budget learns on each admission of the pauses the account's other
                # processes wrote: one of this sender that began meanwhile is waited out
                # (that admission unused), so no request leaves from a sender paused anywhere.
                if self.budget.paused_until(sender) - now <= 1e-6:
                    break
            # Charged only once the account admitted it: an abort above costs the sender
            # nothing. Its lock is held, so the room seen before the account's wait is still
            # there (a bucket's room only grows with time).
            return await self._admitted(sender, pace, cost, now)

    async def _account_admits(
        self, sender: str, pace: SenderPace, cost: float, deadline: float | None
    ) -> float:
        """Wait until ``sender`` may send ``cost``, then for the account's admission (its
        time); the sender's lock is held.

        Raises:
            PaceAborted: as :meth:`acquire`.
        """
        # re-read on every wake-up: a 429 or a report may have moved the pause or the rate
        try:
            await wait_until(
                self.clock,
                lambda: self._sender_earliest(pace, cost),
                stopped=lambda: self._stopped() or sender in self.retired,
                deadline=deadline,
            )
        except PaceAborted:
            if sender in self.retired:
                raise PaceAborted("retired", math.inf) from None
            raise
        if sender in self.retired:  # retired while this one held the lock
            raise PaceAborted("retired", math.inf)
        return await self.budget.acquire(cost, deadline)

    async def _admitted(self, sender: str, pace: SenderPace, cost: float, now: float) -> Ticket:
        """Charge an admission of ``cost`` at ``now`` to the sender; its ticket."""
        ceiling = self._ceilings.get(sender)
        if ceiling is not None:
            await ceiling.acquire(cost)  # the room is there (it was waited for): no wait
        first = pace.tat is None  # its first send of the run
        ticket = pace.admit(now, cost)
        self.admitted += 1
        self.first_admit = now if self.first_admit is None else self.first_admit
        self.last_admit = now
        if first and self.on_change is not None:
            self.on_change(sender, 0.0, pace.rate, "start")
        return ticket

    async def send_slot(self, ticket: Ticket, deadline: float | None = None) -> None:
        """Wait until sending ``ticket`` keeps every one-second window within the rate.

        Called right before the request leaves, *after* the write-ahead ledger entry: the fsync
        between :meth:`acquire` and here releases several workers at once, and only a check at
        the moment of sending keeps the windows the server sees within the cap. An admission
        older than :func:`~bulk_mms.rate.permit_max_age` by now (the commit stalled, the
        process was paused) is taken again from the account budget first, so admissions that
        piled up during a stall leave spaced at ``rate``, not together, however many processes
        share the budget. (The sender's own pace and ceiling are not taken again: they bound
        one sender's queue at Telnyx, which a late request does not overfill.)

        Raises:
            PaceAborted: the job is stopping, or the admission taken again would come after
                ``deadline``.
        """
        if self.clock.monotonic() - ticket.time > self._permit_age:
            self.retaken += 1
            await self.budget.acquire(ticket.cost, deadline)
        await self.budget.send_slot(ticket.cost)

    def bounded(self, what: str, value: float, ceiling: float) -> float:
        """``value`` (a server's hint, in seconds) clamped to ``ceiling``; the first absurd
        value of each kind is logged as such."""
        if value <= ceiling:
            return value
        if what not in self._absurd:
            self._absurd.add(what)
            log.warning("pace.absurd_hint", hint=what, value=value, used=ceiling)
        return ceiling

    def observe(self, ticket: Ticket, wait: float | None) -> float | None:
        """A response for ``ticket`` reported ``wait`` seconds in the queue.

        Returns:
            The wait as the pacer took it: clamped to :data:`WAIT_CEILING_S`.
        """
        if wait is None:
            return None
        wait = self.bounded("wait_seconds", wait, WAIT_CEILING_S)
        pace = self.senders[ticket.sender]
        before = pace.paused_until
        self._log_change(pace, pace.observe(self.clock.monotonic(), ticket, wait))
        if pace.paused_until > before:  # a queue to let drain: the budget shares the pause
            self.budget.pause(pace.paused_until, pace.sender)
        return wait

    def on_rate_limited(self, sender: str, retry_after: float | None, code: str) -> None:
        """A 429 for ``sender``. When every sender has had one lately, pause the account too.

        ``retry_after`` is clamped to ``max_pause_s`` (``max_retry_after``) first.
        """
        if retry_after is not None:
            retry_after = self.bounded("retry_after", retry_after, self.config.max_pause_s)
        now = self.clock.monotonic()
        queue_full = code == "40318"
        self.rate_limited += 1
        self.queue_full += queue_full
        pace = self.senders[sender]
        self._log_change(pace, pace.rate_limited(now, retry_after, queue_full))
        self.budget.pause(pace.paused_until, sender)
        self._recent_429[sender] = now
        window = max(5.0, retry_after or 0.0)
        if all(
            now - self._recent_429.get(s, -math.inf) <= window
            for s in self.senders
            if s not in self.retired
        ):
            self.budget.pause(pace.paused_until)

    def _log_change(self, pace: SenderPace, change: tuple[float, float, str] | None) -> None:
        if change is not None:
            old, new, reason = change
            if self.on_change is not None:
                self.on_change(pace.sender, old, new, reason)
            log.info(
                "pace.changed",
                sender=pace.sender,
                old=round(old, 3),
                new=round(new, 3),
                reason=reason,
            )

    def achieved_rate(self) -> float | None:
        """Admissions per second between the first and the last."""
        if self.first_admit is None or self.last_admit is None or self.admitted < 2:
            return None
        span = self.last_admit - self.first_admit
        return (self.admitted - 1) / span if span > 0 else None
