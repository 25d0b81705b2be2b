"""Every wait is bounded and interruptible: the pacer, the backoff and the run's deadlines.

Unit tests on the fake clock (no real sleeping): a stop ends any wait at once instead of
spinning, a pause that outlasts a deadline is not waited out, and a forced stop keeps every
line and records what it cut off.
"""

from __future__ import annotations

import asyncio

import pytest
from msgspec.structs import replace
from structlog.testing import capture_logs

from bulk_mms.errors import AmbiguousSendError, RateLimited
from bulk_mms.ledger import load
from bulk_mms.models import Group, SendReceipt
from bulk_mms.pacing import WAIT_CEILING_S, PaceAborted, Pacer, PacingConfig
from bulk_mms.runner import run_job
from bulk_mms.signals import Stop, StopReason
from bulk_mms.testing import groups_in, ledger_events
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers, ok_receipt

SENDER = "+18445550001"


class CountingSleep(FakeClock):
    """A fake clock whose sleeps return at once without moving time when ``stopped``: what the
    runner's stop-aware sleep does. A loop that kept sleeping after a stop would spin here."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = False

    async def sleep(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.stopped:
            assert len(self.calls) < 1000, "spinning on a stopped sleep"
            await asyncio.sleep(0)
            return
        await super().sleep(seconds)


async def test_a_stop_ends_a_pacer_wait_at_once() -> None:
    """A sender paused for a day: a stop ends the wait with PaceAborted, no spinning."""
    clock = CountingSleep()
    pacer = Pacer(
        PacingConfig(rate=10, max_pause_s=86_400),
        [SENDER],
        clock=clock,
        stopped=lambda: clock.stopped,
    )
    pacer.on_rate_limited(SENDER, 86_000.0, "429")
    clock.stopped = True
    with pytest.raises(PaceAborted) as info:
        await pacer.acquire(SENDER, 1)
    assert info.value.reason == "stopping"
    assert len(clock.calls) <= 1


async def test_a_pause_past_the_deadline_is_not_waited_out(fake_sleep: FakeClock) -> None:
    """acquire(deadline=...) gives up at once when the sender cannot send before it."""
    pacer = Pacer(PacingConfig(rate=10), [SENDER], clock=fake_sleep)
    pacer.on_rate_limited(SENDER, 120.0, "429")
    with pytest.raises(PaceAborted) as info:
        await pacer.acquire(SENDER, 1, deadline=fake_sleep.monotonic() + 60)
    assert info.value.reason == "deadline"
    assert fake_sleep.calls == []
    ticket = await pacer.acquire(SENDER, 1, deadline=fake_sleep.monotonic() + 200)
    assert ticket.time >= 1000.0 + 120.0


async def test_hints_are_clamped_to_their_ceilings(fake_sleep: FakeClock) -> None:
    """A 429's hint pauses at most max_pause_s; a reported wait counts as at most 4 hours."""
    pacer = Pacer(
        PacingConfig(rate=10, max_pause_s=30.0),
        [SENDER],
        clock=fake_sleep,
    )
    with capture_logs() as logs:
        pacer.on_rate_limited(SENDER, float("inf"), "429")
        pacer.on_rate_limited(SENDER, 1e12, "429")
    assert pacer.senders[SENDER].paused_until <= fake_sleep.monotonic() + 30.0
    assert len([e for e in logs if e["event"] == "pace.absurd_hint"]) == 1
    ticket = await pacer.acquire(SENDER, 1)
    assert pacer.observe(ticket, 1e12) == WAIT_CEILING_S
    assert pacer.observe(ticket, 3.0) == 3.0


async def test_group_age_ends_a_pause_and_the_group_is_resendable(jobs: JobFactory) -> None:
    """A 429 asking for 10 minutes, with max_group_age_s 60: the group gives up at once with
    the 429 recorded (retryable), and a rerun sends it."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient(
        lambda g, n: RateLimited("slow down", retry_after=600.0) if n == 0 else ok_receipt(g, n)
    )
    settings = replace(
        FAST, concurrency=1, max_group_age_s=60.0, retry=replace(FAST.retry, max_retry_after=900)
    )
    clock = FakeClock()
    s = await run_job(job, settings, client, clock=clock)
    assert clock.monotonic() - 1000.0 < 60
    assert (s.sent_groups, s.retry_later_groups) == (0, 2)
    assert s.stopped is None
    failed = [e for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert [e["code"] for e in failed] == ["429", "RateLimited"]
    assert all(e["retryable"] for e in failed)
    again = await run_job(job, settings, FakeClient(), clock=FakeClock())
    assert again.sent_groups == 2


async def test_the_job_deadline_is_honoured_while_waiting(jobs: JobFactory) -> None:
    """max_job_duration_s: a pause past it stops the job at once (resumable), not after it."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient(
        lambda g, n: RateLimited("slow", retry_after=250.0) if n == 0 else ok_receipt(g, n)
    )
    settings = replace(FAST, concurrency=1, max_job_duration_s=100.0)
    clock = FakeClock()
    s = await run_job(job, settings, client, clock=clock)
    assert s.stopped == "deadline"
    assert clock.monotonic() - 1000.0 < 100
    assert s.sent_groups == 0
    assert (
        groups_in(job.ledger, "in_doubt") == set()
    )  # the 429'd group is on record as such, not in doubt


async def test_a_stop_during_backoff_records_the_last_try_not_doubt(jobs: JobFactory) -> None:
    """Stopped while waiting to retry a 503, a group is recorded with the 503 (retryable), so a
    resume does not take it for one that may have been accepted."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    stop = Stop()

    def answer(g: Group, n: int) -> SendReceipt | RateLimited:
        stop.request(StopReason.SIGTERM)
        return RateLimited("busy", retry_after=100.0, status=503)

    s = await run_job(job, FAST, FakeClient(answer), clock=FakeClock(), stop=stop)
    assert s.stopped == "SIGTERM"
    assert s.retry_later_groups == 1
    assert groups_in(job.ledger, "in_doubt") == set()


async def test_a_forced_stop_cuts_off_in_flight_and_keeps_every_line(jobs: JobFactory) -> None:
    """A second Ctrl-C cancels requests in flight: their groups are recorded in doubt, what was
    sent stays sent, job.finished is logged, and the ledger's lock is released."""
    jobs.people(32)
    job = jobs.job(extra="group_size = 4")
    stop = Stop()
    hang = asyncio.Event()

    async def answer(g: Group, n: int) -> SendReceipt:
        if n < 2:
            return ok_receipt(g, n)
        if n == 5:
            stop.request(StopReason.SIGINT)
            asyncio.get_running_loop().call_soon(stop.force, StopReason.SIGINT)
        await hang.wait()  # never answers
        raise AssertionError

    settings = replace(FAST, concurrency=4)
    with capture_logs() as logs:
        s = await asyncio.wait_for(
            run_job(job, settings, FakeClient(answer), clock=FakeClock(), stop=stop), 5
        )
    assert s.stopped == "SIGINT"
    assert s.sent_groups == 2
    assert s.in_doubt_groups == 4  # the four in flight
    assert [e for e in logs if e["event"] == "job.finished"]
    assert len(groups_in(job.ledger, "sent")) == 2
    assert len(groups_in(job.ledger, "in_doubt")) == 4
    reasons = {e["reason"] for e in ledger_events(job.ledger) if e["event"] == "in_doubt"}
    assert reasons == {"cut off in flight by a forced stop; the outcome is unknown"}
    # the lock is free: a resume runs, and with keys trusted it resends the cut-off groups
    rest = FakeClient()
    again = await run_job(job, settings, rest, clock=FakeClock())
    assert again.sent_groups == 6
    assert sorted(rest.sent_numbers()) == sorted(set(numbers(32)) - set(numbers(8)))


async def test_an_ambiguous_try_stays_in_doubt_when_the_group_gives_up(
    jobs: JobFactory,
) -> None:
    """A group whose first try dropped after sending, then waited past its age for a retry,
    ends in doubt (its first request may have landed), never failed."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    clock = FakeClock()
    pacer_pause = 5000.0

    def answer(g: Group, n: int) -> SendReceipt | AmbiguousSendError | RateLimited:
        if n == 0:
            return RateLimited("x", retry_after=1.0)
        return AmbiguousSendError("dropped after sending")

    settings = replace(
        FAST,
        concurrency=1,
        max_group_age_s=60.0,
        retry=replace(FAST.retry, attempts=5, backoff_initial=pacer_pause, backoff_max=pacer_pause),
    )
    s = await run_job(job, settings, FakeClient(answer), clock=clock)
    assert s.in_doubt_groups == 1
    assert s.failed_groups == 0
    assert groups_in(job.ledger, "in_doubt") == set(load(job.ledger).groups)


async def test_a_broken_worker_ends_the_run_instead_of_hanging(jobs: JobFactory) -> None:
    """An unexpected exception in a worker (a bug) with one worker and a full queue: the run
    stops and raises it, instead of the reader waiting for ever with the ledger locked."""
    jobs.people(64)
    job = jobs.job(extra="group_size = 1")

    def boom(g: Group, n: int) -> SendReceipt:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(
            run_job(job, replace(FAST, concurrency=1), FakeClient(boom), clock=FakeClock()), 5
        )
    again = await run_job(job, FAST, FakeClient(), clock=FakeClock())  # the lock is free
    assert again.sent_groups + again.held_groups == 64


async def test_cancelling_run_job_from_outside_cancels_its_work(jobs: JobFactory) -> None:
    """run_job cancelled by its caller (wait_for, a TaskGroup) ends promptly: reader and
    workers are cancelled with it, and the ledger is released."""
    jobs.people(64)
    job = jobs.job(extra="group_size = 1")
    hang = asyncio.Event()

    async def never(g: Group, n: int) -> SendReceipt:
        await hang.wait()
        raise AssertionError

    task = asyncio.create_task(run_job(job, FAST, FakeClient(never), clock=FakeClock()))
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=3)
    assert task in done
    again = await run_job(job, FAST, FakeClient(), clock=FakeClock())
    assert again.error is None


async def test_a_forced_stop_while_waiting_to_retry_records_the_last_try(
    jobs: JobFactory,
) -> None:
    """Forced while a group waits for its retry after a definite 503: it is recorded failed
    (retryable) with that 503, not in doubt, since no request of it was out."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    stop = Stop()

    def answer(g: Group, n: int) -> SendReceipt | RateLimited:
        asyncio.get_running_loop().call_soon(stop.force, StopReason.SIGINT)
        return RateLimited("busy", retry_after=60.0, status=503)

    s = await asyncio.wait_for(
        run_job(job, FAST, FakeClient(answer), clock=CountingSleep(), stop=stop), 5
    )
    assert s.in_doubt_groups == 0
    assert groups_in(job.ledger, "in_doubt") == set()
    (failed,) = [e for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert failed["retryable"] is True
