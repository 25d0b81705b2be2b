"""The account budget seam: LocalBudget's guarantees, FixedRate on the fake clock, the ceilings.

Nothing here sleeps for real: every clock is a :class:`FakeClock` (some wake late on purpose).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
import time

import pytest

from bulk_mms.ledger.pgbudget import JITTER_S, spacing
from bulk_mms.pacing import Pacer, PacingConfig
from bulk_mms.rate import (
    AccountBudget,
    FairLock,
    FixedRate,
    LocalBudget,
    PaceAborted,
    permit_max_age,
)
from bulk_mms.testing import FakeClock


class LateClock(FakeClock):
    """A fake clock whose every sleep overshoots by up to ``late`` seconds (a busy loop)."""

    def __init__(self, late: float, seed: int = 7) -> None:
        super().__init__()
        self.late = late
        self._random = random.Random(seed)

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds + self._random.uniform(0.0, self.late))


def most_in_a_window(sends: list[tuple[float, float]], window: float = 1.0) -> float:
    """The largest total cost in any ``window``-second span [t, t + window) of ``sends``."""
    sends = sorted(sends)
    times = [t for t, _ in sends]
    return max(
        sum(c for _, c in sends[i : bisect.bisect_left(times, t + window)])
        for i, t in enumerate(times)
    )


@pytest.mark.parametrize(("rate", "costs"), [(10.0, [1.0]), (20.0, [1.0, 3.0, 8.0])])
async def test_no_window_holds_more_than_the_rate_under_concurrency(
    rate: float, costs: list[float]
) -> None:
    """Twelve workers with late wake-ups and a random stall between acquire and send_slot:
    no one-second window of sends holds more than ``rate``."""
    clock = LateClock(late=0.03)
    budget = LocalBudget(rate, clock, max_cost=max(costs))
    stalls = random.Random(3)
    sends: list[tuple[float, float]] = []

    async def worker(n: int) -> None:
        for i in range(25):
            cost = costs[(n + i) % len(costs)]
            await budget.acquire(cost)
            await clock.sleep(stalls.uniform(0.0, 0.2))  # the write-ahead fsync, say
            sends.append((await budget.send_slot(cost), cost))

    await asyncio.gather(*(worker(n) for n in range(12)))
    assert len(sends) == 300
    assert most_in_a_window(sends) <= rate + 1e-9


async def test_acquire_spaces_admissions_at_the_rate() -> None:
    """Back-to-back acquires are admitted 1/rate apart, the first at once (no start burst)."""
    clock = FakeClock()
    budget = LocalBudget(10.0, clock)
    start = clock.monotonic()
    times = [await budget.acquire(1.0) for _ in range(50)]
    assert times[0] == start
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([0.1] * 49)


async def test_a_pause_holds_every_acquirer_until_it_ends() -> None:
    """Ten acquirers waiting on a paused account are all admitted at or after its end."""
    clock = FakeClock()
    budget = LocalBudget(50.0, clock)
    until = clock.monotonic() + 12.0
    budget.pause(until)
    times = await asyncio.gather(*(budget.acquire(1.0) for _ in range(10)))
    assert min(times) >= until
    assert budget.paused_until() == until


async def test_a_pause_arriving_mid_queue_holds_the_rest() -> None:
    """A pause set while others queue is seen by every later admission (re-read on waking)."""
    clock = FakeClock()
    budget = LocalBudget(10.0, clock)
    times: list[float] = []

    async def one() -> None:
        times.append(await budget.acquire(1.0))
        if len(times) == 3:
            budget.pause(times[-1] + 10.0)

    await asyncio.gather(*(one() for _ in range(8)))
    assert min(times[3:]) >= times[2] + 10.0


async def test_a_deadline_shorter_than_the_pause_aborts_at_once() -> None:
    """acquire(deadline) before the pause ends raises PaceAborted("deadline"), sleeping not
    at all; the sender pause is the budget's own and leaves the account free."""
    clock = FakeClock()
    budget = LocalBudget(10.0, clock)
    budget.pause(clock.monotonic() + 120.0)
    with pytest.raises(PaceAborted) as info:
        await budget.acquire(1.0, deadline=clock.monotonic() + 60.0)
    assert (info.value.reason, info.value.earliest) == ("deadline", clock.monotonic() + 120.0)
    assert clock.calls == []
    budget.pause(clock.monotonic() + 500.0, "ACME")
    assert budget.paused_until("ACME") == clock.monotonic() + 500.0
    assert budget.paused_until() == clock.monotonic() + 120.0


async def test_acquire_with_room_admits_at_once_but_never_past_its_deadline() -> None:
    """With room in the bucket, acquire admits at once, charged as any admission (the next
    waits its interval); with its deadline already past, it refuses (PaceAborted
    "deadline") and charges nothing, room or not."""
    clock = FakeClock()
    budget = LocalBudget(10.0, clock)
    with pytest.raises(PaceAborted) as info:
        await budget.acquire(1.0, deadline=clock.monotonic() - 1.0)
    assert info.value.reason == "deadline"
    start = clock.monotonic()
    assert await budget.acquire(1.0, deadline=start) == start
    assert await budget.acquire(1.0) == pytest.approx(start + 0.1)
    assert clock.calls == [pytest.approx(0.1)]  # only the second one waited


async def test_a_stop_ends_a_budget_wait() -> None:
    """A stopping job's acquire and send_slot give up with PaceAborted("stopping")."""
    clock = FakeClock()
    stopping = False
    budget = LocalBudget(1.0, clock, stopped=lambda: stopping)
    budget.pause(clock.monotonic() + 3600.0)
    stopping = True
    with pytest.raises(PaceAborted) as info:
        await budget.acquire(1.0)
    assert info.value.reason == "stopping"
    await budget.send_slot(1.0)  # the first send fits at once
    with pytest.raises(PaceAborted):
        await budget.send_slot(1.0)
    assert clock.calls == []


async def test_fixed_rate_admits_at_its_rate_on_the_fake_clock() -> None:
    """aiolimiter's bucket, waited for on a fake clock far from the loop's own time: 40
    concurrent acquires at 8/s come 1/8 s apart, 4.875 s of the clock, without really waiting."""
    clock = FakeClock(start=1e7)
    limiter = FixedRate(8.0, clock)
    started = time.perf_counter()
    times = sorted(await asyncio.gather(*(limiter.acquire() for _ in range(40))))
    assert times[0] == 1e7
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([0.125] * 39)
    assert clock.monotonic() == pytest.approx(1e7 + 4.875)
    assert time.perf_counter() - started < 4.0  # not the 4.875 s of real waiting, even loaded


async def test_fixed_rate_banks_credit_up_to_its_depth() -> None:
    """A full bucket of depth 5 admits 5 at once, then the rate; asking more raises."""
    clock = FakeClock()
    limiter = FixedRate(2.0, clock, depth=5.0)
    times = [await limiter.acquire() for _ in range(7)]
    assert times[:5] == [clock.time - 1.0] * 5
    assert times[5:] == pytest.approx([times[0] + 0.5, times[0] + 1.0])
    with pytest.raises(ValueError):
        await limiter.acquire(6.0)


async def test_fixed_rate_keeps_its_rate_despite_late_wake_ups() -> None:
    """Wake-ups up to 40 ms late cost no throughput: the bucket's depth banks the lateness."""
    clock = LateClock(late=0.04)
    limiter = FixedRate(10.0, clock, depth=5.0, credit=1.0)
    times = [await limiter.acquire() for _ in range(200)]
    assert (len(times) - 1) / (times[-1] - times[0]) == pytest.approx(10.0, rel=0.01)


async def test_fixed_rate_stop_and_deadline() -> None:
    """A FixedRate wait gives up on a stop, and at once when the deadline comes first."""
    clock = FakeClock()
    stopping = False
    limiter = FixedRate(1.0, clock, stopped=lambda: stopping)
    await limiter.acquire()
    with pytest.raises(PaceAborted) as info:
        await limiter.acquire(deadline=clock.monotonic() + 0.5)
    assert info.value.reason == "deadline"
    stopping = True
    with pytest.raises(PaceAborted) as info:
        await limiter.acquire()
    assert info.value.reason == "stopping"
    assert clock.calls == []


@pytest.mark.parametrize(("limits", "expected"), [({"+13125551234": 5.0}, 5.0), ({}, 100.0)])
async def test_a_per_number_ceiling_caps_the_sender_above_the_controller(
    limits: dict[str, float], expected: float
) -> None:
    """A controller pushed to 100/s still sends at the number's fixed ceiling of 5/s, and no
    window holds more than 5; without a configured limit the same sender goes at 100/s."""
    clock = FakeClock()
    sender = "+13125551234"
    pacer = Pacer(PacingConfig(rate=100.0, sender_limits=limits), [sender], clock=clock)
    pace = pacer.senders[sender]
    pace.ceiling = pace.rate = 100.0  # as if the controller had climbed past the limit
    times: list[tuple[float, float]] = []
    for _ in range(60):
        times.append(((await pacer.acquire(sender, 1)).time, 1.0))
    assert pacer.achieved_rate() == pytest.approx(expected, rel=0.02)
    assert most_in_a_window(times) <= expected


class RecordingBudget(LocalBudget):
    """A budget that notes every call: the pacer goes through the seam for all of them."""

    def __init__(self, rate: float, clock: FakeClock) -> None:
        super().__init__(rate, clock)
        self.seen: list[str] = []

    async def admit_now(self, cost: float) -> float | None:
        self.seen.append("admit_now")
        return await super().admit_now(cost)

    async def acquire(self, cost: float, deadline: float | None = None) -> float:
        self.seen.append("acquire")
        return await super().acquire(cost, deadline)

    async def send_slot(self, cost: float) -> float:
        self.seen.append("send_slot")
        return await super().send_slot(cost)

    def pause(self, until: float, sender: str | None = None) -> None:
        self.seen.append(f"pause {sender}")
        super().pause(until, sender)


async def test_the_pacer_goes_through_an_injected_budget() -> None:
    """A budget passed in takes every admission, send slot and pause the pacer makes."""
    clock = FakeClock()
    budget = RecordingBudget(10.0, clock)
    seam: AccountBudget = budget
    pacer = Pacer(PacingConfig(rate=10.0), ["ACME"], clock=clock, budget=seam)
    ticket = await pacer.acquire("ACME", 1)
    await pacer.send_slot(ticket)
    pacer.on_rate_limited("ACME", 2.0, "")
    # room at once: admitted without a wait, through the same seam
    assert budget.seen == ["admit_now", "send_slot", "pause ACME", "pause None"]
    assert pacer.paused_until == clock.monotonic() + 2.0


async def test_admit_now_takes_only_what_needs_no_wait_and_charges_like_acquire() -> None:
    """``admit_now`` admits while there is room (charging the bucket as ``acquire`` does),
    refuses once the next admission would have to wait, and refuses while the account is
    paused: the pacer then takes the waiting path, in order behind any waiter."""
    clock = FakeClock()
    fast, slow = LocalBudget(10.0, clock), LocalBudget(10.0, clock)
    assert await fast.admit_now(1.0) == clock.monotonic()
    await slow.acquire(1.0)
    assert await fast.admit_now(1.0) is None  # the bucket's one unit of credit is spent
    assert fast._bucket.ready_at(1.0) == slow._bucket.ready_at(1.0)
    await clock.sleep(0.1)
    assert await fast.admit_now(1.0) is not None
    fast.pause(clock.monotonic() + 5.0)
    await clock.sleep(0.1)
    assert await fast.admit_now(1.0) is None


async def test_the_pacer_admits_nothing_past_a_deadline_even_with_room() -> None:
    """With room to send at once but the group's (or the job's) deadline already past, the
    pacer refuses (PaceAborted "deadline") instead of taking the no-wait path."""
    clock = FakeClock()
    pacer = Pacer(PacingConfig(rate=10.0), ["ACME"], clock=clock)
    with pytest.raises(PaceAborted) as info:
        await pacer.acquire("ACME", 1, deadline=clock.monotonic() - 1.0)
    assert info.value.reason == "deadline"
    assert pacer.admitted == 0
    ticket = await pacer.acquire("ACME", 1, deadline=clock.monotonic() + 1.0)
    assert ticket.time == clock.monotonic()


async def test_a_stale_admission_is_taken_again_before_its_request_leaves() -> None:
    """An admission older than one interval when its request is to leave (a commit stalled
    3 s) is taken again from the budget; a fresh one goes as it is."""
    clock = FakeClock()
    budget = RecordingBudget(10.0, clock)
    pacer = Pacer(PacingConfig(rate=10.0), ["ACME"], clock=clock, budget=budget)
    fresh = await pacer.acquire("ACME", 1)
    clock.advance(0.05)  # half an interval: the write-ahead commit as it should be
    await pacer.send_slot(fresh)
    stale = await pacer.acquire("ACME", 1)
    clock.advance(3.0)  # the commit stalled
    await pacer.send_slot(stale)
    assert pacer.retaken == 1
    assert budget.seen.count("acquire") + budget.seen.count("admit_now") == 3


class SharedSpacing(LocalBudget):
    """One process's part of a budget shared as the database shares it: admissions spaced by
    one bucket for all (no burst, the database's spacing), the window guard its own."""

    def __init__(self, shared: FixedRate, rate: float, clock: FakeClock) -> None:
        super().__init__(rate, clock)
        self.shared = shared

    async def admit_now(self, cost: float) -> float | None:
        return None  # the database's admission is always a round trip

    async def acquire(self, cost: float, deadline: float | None = None) -> float:
        return await self.shared.acquire(cost, deadline)


async def stalled_processes(*, retake: bool) -> list[tuple[float, float]]:
    """Three processes of four workers share one budget at rate 10; every commit between
    admission and sending stalls from t+2 s to t+5 s. When each request left."""
    clock = FakeClock()  # its sleeps overlap on the virtual loop clock, as real ones do
    shared = FixedRate(1.0 / spacing(1.0, 10.0), clock, depth=1.0, credit=1.0)
    stall_from, stall_to = clock.monotonic() + 2.0, clock.monotonic() + 5.0
    sends: list[tuple[float, float]] = []

    async def process() -> None:
        budget = SharedSpacing(shared, 10.0, clock)
        pacer = Pacer(PacingConfig(rate=10.0), ["+15550001111"], clock=clock, budget=budget)
        if not retake:
            pacer._permit_age = math.inf

        async def worker() -> None:
            for _ in range(12):
                ticket = await pacer.acquire("+15550001111", 1)
                if stall_from <= (now := clock.monotonic()) < stall_to:
                    await clock.sleep(stall_to - now)  # the write-ahead commit stalls
                await pacer.send_slot(ticket)
                sends.append((clock.monotonic(), 1.0))

        await asyncio.gather(*(worker() for _ in range(4)))

    await asyncio.gather(*(process() for _ in range(3)))
    return sends


async def slow_first_commit(gap: float) -> list[tuple[float, float]]:
    """Two processes of two workers share one budget at rate 12, admissions ``gap`` apart;
    the first request's commit takes just under the stale bound, so it leaves late but is not
    admitted again; the others leave at once. When each request left."""
    clock = FakeClock()
    shared = FixedRate(1.0 / gap, clock, depth=1.0, credit=1.0)
    late = 0.95 * permit_max_age(12.0)
    sends: list[tuple[float, float]] = []
    admitted: list[float] = []

    async def process() -> None:
        budget = SharedSpacing(shared, 12.0, clock)
        pacer = Pacer(PacingConfig(rate=12.0), ["+15550001111"], clock=clock, budget=budget)

        async def worker() -> None:
            for _ in range(6):
                ticket = await pacer.acquire("+15550001111", 1)
                admitted.append(ticket.time)
                if len(admitted) == 1:
                    await clock.sleep(late)  # the first write-ahead commit is slow
                await pacer.send_slot(ticket)
                sends.append((clock.monotonic(), 1.0))

        await asyncio.gather(worker(), worker())

    await asyncio.gather(process(), process())
    return sends


async def test_a_request_leaving_late_never_puts_rate_plus_one_into_a_second() -> None:
    """Processes sharing the account rate (12) through the database's spacing: a request
    whose commit took just under the stale bound leaves with the next second's admissions,
    and still no one-second window holds more than 12 (spaced 1.05/rate apart, 13 did)."""
    sends = await slow_first_commit(spacing(1.0, 12.0))
    assert len(sends) == 24
    assert most_in_a_window(sends) <= 12
    assert most_in_a_window(await slow_first_commit(1.05 / 12.0)) == 13


async def test_a_commit_stall_never_turns_into_a_burst_across_processes() -> None:
    """Three processes sharing the account rate (10) through the database's spacing alone, a
    3 s commit stall: with stale admissions taken again no one-second window holds more than
    the rate; without, the admissions held back by the stall leave together (it can fail)."""
    sends = await stalled_processes(retake=True)
    assert len(sends) == 144
    assert most_in_a_window(sends) <= 10
    assert most_in_a_window(await stalled_processes(retake=False)) > 10


@pytest.mark.parametrize(
    ("rate", "bound"), [(0.5, 0.1), (1.0, 0.1), (10.0, 0.1), (40.0, 0.025), (1000.0, 0.025)]
)
def test_the_stale_bound_is_one_interval_from_25_to_100_ms(rate: float, bound: float) -> None:
    """An admission may be one interval of the rate old when its request leaves, but never
    less than 25 ms (an ordinary commit) nor more than 100 ms (the shared spacing covers it)."""
    assert permit_max_age(rate) == pytest.approx(bound)


@pytest.mark.parametrize("rate", [0.5, 1.0, 2.5, 10.0, 12.0, 12.5, 15.0, 40.0, 1000.0])
def test_shared_admissions_never_put_more_than_rate_into_a_second(rate: float) -> None:
    """Admissions spaced as the PostgreSQL budget spaces them, each reaching the API anywhere
    from at once to the stale bound plus the jitter allowed after it: in the worst case no
    one-second window at the API holds more than rate requests (one, below a rate of 1)."""
    gap = spacing(1.0, rate)
    late = permit_max_age(rate) + JITTER_S
    # worst case: the first arrives as late as it may, the rest at once; those arriving
    # within one second of it were admitted within 1 + late seconds: n with (n - 1) gap < that
    most = math.ceil((1.0 + late) / gap - 1e-9)
    assert most <= max(1, math.floor(rate))
    assert rate < 1 or 1.0 / gap >= 0.85 * math.floor(rate)  # and not needlessly slow


def most_units_in_a_second(costs: list[int], rate: float, max_cost: float) -> int:
    """The most cost units the API can see in one second from admissions spaced as the
    PostgreSQL budget spaces them, each arriving anywhere from at once to the stale bound
    plus the jitter after its admission: the window opening as one arrives as late as it
    may, every later admission within ``1 + late`` seconds of it arriving in it."""
    span = 1.0 + permit_max_age(rate) + JITTER_S - 1e-9  # a window is half-open
    times = list(itertools.accumulate((spacing(c, rate, max_cost) for c in costs), initial=0.0))
    return max(
        sum(c for t, c in zip(times[i:], costs[i:], strict=False) if t - times[i] < span)
        for i in range(len(costs))
    )


@pytest.mark.parametrize("rate", [0.5, 3.0, 8.0, 10.0, 15.0, 40.0, 100.0])
@pytest.mark.parametrize(
    "costs", [[8] * 40, [1, 8] * 20, [1] * 30 + [8] * 10, [3, 5, 8, 2, 7, 1, 8, 8] * 5]
)
def test_shared_admissions_by_recipient_never_put_more_than_rate_into_a_second(
    rate: float, costs: list[int]
) -> None:
    """Under cost = "recipient" (a group costs its size, up to 8) the shared spacing puts no
    more recipients into a second than the rate (or one group of 8, as a process's own window
    guard allows); spaced as requests of cost 1 are, a second held two groups of 8 at 15/s."""
    assert most_units_in_a_second(costs, rate, 8.0) <= max(math.floor(rate), 8)
    assert most_units_in_a_second([8] * 40, 15.0, 1.0) == 16


def test_shared_admissions_by_recipient_keep_the_rate_over_time() -> None:
    """The recipient spacing slows a run only as far as the one-second bound needs: groups
    of 8 at 100 recipients a second still come more than 10 a second."""
    assert 1.0 / spacing(8.0, 100.0, 8.0) > 10.0


async def test_a_queue_stays_busy_until_the_waiter_its_holder_woke_has_run() -> None:
    """A FairLock is busy while anyone holds or waits for it, and stays busy after its holder
    lets go until the waiter that release woke has run and let go too (an asyncio.Lock
    reads unlocked in between, where a newcomer's no-wait path would go ahead of it); a
    waiter cancelled while it waits leaves it as it found it."""
    queue, order = FairLock(), []
    assert not queue.busy

    async def waiter(name: str) -> None:
        async with queue:
            order.append(name)

    async with queue:
        first = asyncio.create_task(waiter("first"))
        gone = asyncio.create_task(waiter("cancelled"))
        await asyncio.sleep(0)  # both queued behind the holder
        gone.cancel()
        await asyncio.sleep(0)
        assert queue.busy
    assert queue.busy  # let go; the woken waiter has not run yet
    assert not queue._lock.locked()  # where an asyncio.Lock alone would say nobody waits
    await first
    assert order == ["first"]
    assert gone.cancelled()
    assert not queue.busy
