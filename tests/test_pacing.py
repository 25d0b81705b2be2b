"""Pacing: the controller against a simulated Telnyx queue, the window guard, and the pacer.

The controller tests drive :class:`SenderPace` through a discrete-event simulation of the
sandbox's own queue model: no clock, no sleeping, a two-minute run in milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable

import pytest

from bulk_mms.fake_api import SenderQueue
from bulk_mms.pacing import Pacer, PacingConfig, SenderPace, Ticket, WindowGuard, sender_type
from bulk_mms.testing import FakeClock

Change = Callable[[float, SenderQueue], None]


class Sim:
    """The result of :func:`simulate`: admission times, reported waits, queue-full refusals."""

    def __init__(self) -> None:
        self.admits: list[float] = []
        self.waits: list[tuple[float, float]] = []
        self.fulls: list[float] = []

    def rate(self, lo: float, hi: float) -> float:
        return sum(1 for a in self.admits if lo <= a < hi) / (hi - lo)

    def p95(self, after: float) -> float:
        ws = sorted(w for t, w in self.waits if t >= after)
        return ws[int(0.95 * len(ws)) - 1]


def simulate(
    pace: SenderPace,
    queue: SenderQueue,
    until: float,
    *,
    latency: float = 0.05,
    change: Change | None = None,
    rounding: bool = False,
) -> Sim:
    """Send as fast as ``pace`` allows into ``queue``; answers arrive ``latency`` later."""
    sim = Sim()
    t = 0.0
    pending: deque[tuple[float, Ticket, float | None]] = deque()
    while True:
        nxt = max(t, pace.earliest())
        if pending and pending[0][0] <= nxt:
            at, ticket, wait = pending.popleft()
            t = max(t, at)
            if wait is None:
                pace.rate_limited(at, None, queue_full=True)
                sim.fulls.append(at)
            else:
                pace.observe(at, ticket, float(round(wait)) if rounding else wait)
                sim.waits.append((at, wait))
            continue
        if nxt >= until:
            return sim
        t = nxt
        if change is not None:
            change(t, queue)
        ticket = pace.admit(t, 1.0)
        sim.admits.append(t)
        pending.append((t + latency, ticket, queue.offer(t, 1.0)))


def pace_for(ceiling: float) -> SenderPace:
    return SenderPace("+13125551234", ceiling, goal_wait=7.5, max_wait=30.0)


@pytest.mark.parametrize("drain", [1.0, 4.0, 10.0, 40.0])
@pytest.mark.parametrize("rounding", [False, True])
def test_finds_the_drain_rate_with_a_ceiling_five_times_higher(
    drain: float, rounding: bool
) -> None:
    """Ceiling 5xD: the rate settles at D (>= 0.95 D), p95 wait stays under the 30 s target,
    and no queue-full 429 comes after the first 10 s, also when the server rounds waits."""
    sim = simulate(pace_for(5 * drain), SenderQueue(drain, cap=300 * drain), 180, rounding=rounding)
    assert 0.95 * drain <= sim.rate(20, 180) <= 1.05 * drain
    assert sim.p95(10) <= 30.0
    assert [f for f in sim.fulls if f > 10] == []


def test_recovers_when_the_drain_rate_halves() -> None:
    """Drain halves mid-run: waits are back within the target in under 30 s; rate follows D."""

    def halve(t: float, q: SenderQueue) -> None:
        if t >= 100 and q.drain == 10.0:
            q.set_drain(t, 5.0)

    sim = simulate(pace_for(50.0), SenderQueue(10.0, cap=3000), 250, change=halve)
    assert [t for t, w in sim.waits if t >= 130 and w > 30.0] == []
    assert 4.75 <= sim.rate(160, 250) <= 5.25


@pytest.mark.parametrize("cap", [20.0, 50.0])
def test_a_short_queue_cap_lowers_the_goal(cap: float) -> None:
    """A cap shorter than the goal wait costs one queue-full 429, then the goal drops below it."""
    sim = simulate(pace_for(50.0), SenderQueue(10.0, cap=cap), 120)
    assert len(sim.fulls) <= 2
    assert [f for f in sim.fulls if f > 10] == []
    assert sim.rate(20, 120) >= 9.5


def test_empty_queue_climbs_back_to_the_ceiling() -> None:
    """With no queue at all, a low rate climbs to the ceiling within seconds."""
    pace = pace_for(20.0)
    pace.rate = 1.0
    sim = simulate(pace, SenderQueue(1000.0, cap=1e9), 30)
    assert pace.rate == 20.0
    assert sim.rate(20, 30) >= 0.98 * 20


def test_429_pauses_for_the_hint_and_cuts_the_rate() -> None:
    """A 429 pauses the sender for Retry-After and halves its rate; queue full quarters it."""
    pace = pace_for(20.0)
    change = pace.rate_limited(100.0, 3.0, queue_full=False)
    assert pace.earliest() >= 103.0
    assert change is not None
    assert (change[0], change[1]) == (20.0, 10.0)
    pace.rate_limited(104.0, None, queue_full=True)
    assert pace.rate == 2.5
    assert pace.earliest() >= 105.0


def test_long_wait_pauses_until_the_queue_is_back_to_goal() -> None:
    """A reported wait above the target pauses the sender for the excess over the goal."""
    pace = pace_for(20.0)
    ticket = pace.admit(10.0, 1.0)
    pace.observe(10.1, ticket, 40.0)
    assert pace.paused_until == pytest.approx(10.1 + 40.0 - 7.5)


def test_window_guard_never_lets_a_window_exceed_the_limit() -> None:
    """Admitting as early as the guard allows, with jittery late wake-ups, keeps every 1 s
    window at or under the limit."""
    guard = WindowGuard(10.0, margin=0.0)
    times: list[float] = []
    t = 0.0
    for i in range(500):
        t = guard.earliest(t, 1.0) + (0.003 if i % 7 == 0 else 0.0)
        guard.record(t, 1.0)
        times.append(t)
    for i, start in enumerate(times):
        assert sum(1 for x in times[i:] if x < start + 1.0) <= 10
    assert (len(times) - 1) / (times[-1] - times[0]) >= 9.8


def test_sender_types() -> None:
    """Short codes, toll-free numbers, long codes and alphanumeric ids are told apart."""
    assert [sender_type(s) for s in ("12345", "+18445550001", "+13125551234", "ACME")] == [
        "short_code",
        "toll_free",
        "long_code",
        "alphanumeric",
    ]


async def test_fixed_cap_is_met_without_exceeding_any_window() -> None:
    """With no queue, the pacer admits at the configured rate and no 1 s window holds more."""
    clock = FakeClock()
    pacer = Pacer(PacingConfig(rate=20.0), ["+18445550001"], clock=clock)
    times = []
    for _ in range(400):
        ticket = await pacer.acquire("+18445550001", 1)
        await pacer.send_slot(ticket)
        times.append(clock.monotonic())
    for i, start in enumerate(times):
        assert sum(1 for x in times[i:] if x < start + 1.0) <= 20
    assert pacer.achieved_rate() == pytest.approx(20.0, rel=0.02)


async def test_per_sender_limits_and_recipient_cost() -> None:
    """cost = "recipient" charges a group its size; a per-number limit caps that sender."""
    clock = FakeClock()
    config = PacingConfig(rate=100.0, cost="recipient", sender_limits={"+13125551234": 16.0})
    pacer = Pacer(config, ["+13125551234"], clock=clock)
    start = clock.monotonic()
    for _ in range(20):
        await pacer.acquire("+13125551234", 8)
    assert clock.monotonic() - start == pytest.approx(19 * 8 / 16.0, rel=0.05)


async def test_a_paused_sender_holds_back_only_its_own_groups() -> None:
    """After a 429 on one sender, choose() picks the other and it sends without waiting."""
    clock = FakeClock()
    pool = ["+13125550001", "+13125550002"]
    pacer = Pacer(PacingConfig(rate=50.0), pool, clock=clock)
    pacer.on_rate_limited(pool[0], 60.0, "")
    assert pacer.choose() == pool[1]
    start = clock.monotonic()
    await pacer.acquire(pool[1], 1)
    assert clock.monotonic() - start < 1.0
    assert pacer.paused_until == 0.0  # one sender limited is not the account
    assert pacer.budget.paused_until(pool[0]) == start + 60.0  # the budget shares its pause


async def test_all_senders_limited_pauses_the_account() -> None:
    """When every sender has had a 429 lately, the account pauses too."""
    clock = FakeClock()
    pool = ["+13125550001", "+13125550002"]
    pacer = Pacer(PacingConfig(rate=50.0), pool, clock=clock)
    pacer.on_rate_limited(pool[0], 5.0, "40318")
    pacer.on_rate_limited(pool[1], 5.0, "")
    assert pacer.paused_until >= clock.monotonic() + 5.0
    assert (pacer.rate_limited, pacer.queue_full) == (2, 1)


async def test_concurrent_acquires_are_spaced() -> None:
    """Many tasks acquiring at once are admitted one at a time, 1/rate apart."""
    pacer = Pacer(PacingConfig(rate=10.0), ["ACME"], clock=FakeClock())
    tickets = await asyncio.gather(*(pacer.acquire("ACME", 1) for _ in range(30)))
    times = sorted(t.time for t in tickets)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps[1:]) >= 0.099


async def test_a_pause_learned_elsewhere_holds_the_sender() -> None:
    """A sender pause the budget knows of (a shared budget learns them from other processes)
    holds that sender's next admission until it ends."""
    clock = FakeClock()
    pacer = Pacer(PacingConfig(rate=10.0), ["ACME"], clock=clock)
    until = clock.monotonic() + 30.0
    pacer.budget.pause(until, "ACME")
    ticket = await pacer.acquire("ACME", 1)
    assert ticket.time >= until
    assert pacer.senders["ACME"].paused_until == until


async def test_a_long_queue_pause_is_shared_with_the_budget() -> None:
    """A reported wait over the target pauses the sender in the budget too."""
    clock = FakeClock()
    pacer = Pacer(PacingConfig(rate=10.0, max_queue_wait_s=30.0), ["ACME"], clock=clock)
    ticket = await pacer.acquire("ACME", 1)
    pacer.observe(ticket, 40.0)
    assert pacer.budget.paused_until("ACME") == pytest.approx(clock.monotonic() + 40.0 - 7.5)
