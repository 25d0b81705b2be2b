"""A sender's pause (a 429's Retry-After, capped by max_retry_after) that ends only after a
group's window closes, or after the job's deadline, holds the group at once, as the window's
closing or the deadline would, instead of idling until the pause ends: nothing leaves late,
and the run does not wait for nothing."""

from __future__ import annotations

import datetime as dt

import pytest
from msgspec.structs import replace

from bulk_mms.config import JobConfig
from bulk_mms.console import run_outcome
from bulk_mms.errors import Exit, RateLimited
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.models import Group, SendReceipt
from bulk_mms.runner import run_job
from bulk_mms.summary import JobSummary
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, ok_receipt, real_client

#: Two minutes before the windows below close (10:30 UTC) and the deadline.
NOW = dt.datetime(2026, 11, 24, 10, 28, tzinfo=dt.UTC)
ONE = replace(FAST, concurrency=1)
GATES = {
    "send_window": 'send_window = "09:00-10:30"',
    "recipient_window": 'recipient_window = "09:00-10:30"\ntimezone_column = "tz"',
    "deadline": 'deadline = "2026-11-24T10:30+00:00"',
}


def throttled_once(retry_after: float) -> FakeClient:
    """A client whose first answer is a 429 asking for ``retry_after`` seconds, then sends."""

    def answer(g: Group, n: int) -> SendReceipt:
        if not answered:
            answered.append(g.id)
            raise RateLimited("slow down", retry_after=retry_after, status=429)
        return ok_receipt(g, n)

    answered: list[str] = []
    return FakeClient(answer)


async def paused_run(
    jobs: JobFactory, gate: str, retry_after: float
) -> tuple[JobConfig, JobSummary, FakeClient, float]:
    """A job of two groups of four under ``gate`` (:data:`GATES`), run at :data:`NOW` on
    one worker whose first answer is a 429 asking for ``retry_after`` seconds: the job, its
    summary, its client and how long it took on the run's clock."""
    jobs.people(8, tz="UTC")
    job = jobs.job(extra=f'timezone = "UTC"\ngroup_size = 4\n{GATES[gate]}')
    clock = FakeClock(wall=NOW.timestamp())
    client = throttled_once(retry_after)
    start = clock.monotonic()
    s = await run_job(job, ONE, client, clock=clock)
    return job, s, client, clock.monotonic() - start


async def test_a_pause_past_the_recipients_window_holds_them_at_once(jobs: JobFactory) -> None:
    """A 429 asking for ten minutes (five, capped) two minutes before the recipients'
    window closes: the throttled group and the next one are held for their quiet hours at
    once, nothing is sent again, and the run ends without waiting the pause out."""
    _, s, client, took = await paused_run(jobs, "recipient_window", 600.0)
    assert took < 60
    assert (len(client.calls), s.sent_groups, s.stopped, s.quiet) == (
        1,
        0,
        "quiet_hours",
        {"UTC": 8},
    )


async def test_groups_held_for_quiet_hours_after_429s_do_not_stop_the_job_as_the_api_failing(
    jobs: JobFactory,
) -> None:
    """Each of three senders answers a 429 asking for ten minutes two minutes before the
    recipients' window closes: the three groups are held for their quiet hours (exit 4), not
    counted as groups in a row the API left unanswered (exit 1, the API failing)."""
    jobs.people(32, tz="UTC")
    job = jobs.job(
        extra=f'timezone = "UTC"\ngroup_size = 4\n{GATES["recipient_window"]}',
        sender='["+18445550001", "+18445550002", "+18445550003"]',
    )

    def answer(g: Group, n: int) -> SendReceipt:
        raise RateLimited("slow down", retry_after=600.0, status=429)

    client = FakeClient(answer)
    s = await run_job(
        job, replace(FAST, concurrency=4), client, clock=FakeClock(wall=NOW.timestamp())
    )
    assert (s.error, s.stopped, run_outcome(s), s.quiet) == (None, "quiet_hours", 4, {"UTC": 32})
    codes = [e["code"] for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert (codes[0], len(set(codes)), len(codes) >= 3) == ("429", 1, True)


async def test_a_pause_past_the_send_window_stops_the_job_at_once(jobs: JobFactory) -> None:
    """The same 429 two minutes before the job's send_window closes, its one sender paused
    past it: the job stops as the window's closing stops it (exit 4), at once."""
    _, s, client, took = await paused_run(jobs, "send_window", 600.0)
    assert took < 60
    assert (len(client.calls), s.stopped, run_outcome(s)) == (1, "window", Exit.WINDOW)


async def test_a_pause_past_the_deadline_ends_the_groups_tries_at_once(jobs: JobFactory) -> None:
    """The same 429 two minutes before the job's deadline: the throttled group, whose retry
    would come past the deadline, and the next one, its sender paused past it, are both
    recorded expired unsent, at once (no run can send them in time)."""
    job, s, client, took = await paused_run(jobs, "deadline", 600.0)
    assert took < 60
    assert (len(client.calls), s.expired_groups) == (1, 2)
    codes = [e["code"] for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert codes == ["expired_unsent", "expired_unsent"]


@pytest.mark.parametrize("gate", list(GATES))
async def test_a_pause_that_ends_before_the_gate_closes_is_waited_out(
    jobs: JobFactory, gate: str
) -> None:
    """A 429 asking for thirty seconds, two minutes before the gate closes: the pause is
    waited out and both groups go, as before."""
    _, s, client, _ = await paused_run(jobs, gate, 30.0)
    assert (len(client.calls), s.sent_groups, s.stopped) == (3, 2, None)


async def test_a_long_retry_after_from_the_api_stops_a_job_at_its_send_window_at_once(
    jobs: JobFactory,
) -> None:
    """The real client against the fake API, whose first answer is a 429 with Retry-After:
    3600, two minutes before the send_window closes: the run stops (exit 4) without waiting
    the pause out, having sent nothing, and the ledger records the throttled group pending a
    rerun (rate limited)."""
    jobs.people(8)
    job = jobs.job(extra=f'timezone = "UTC"\ngroup_size = 4\n{GATES["send_window"]}')
    clock = FakeClock(wall=NOW.timestamp())
    fake = FakeTelnyx()
    fake.faults.append(Fault("status", 429, headers={"Retry-After": "3600"}))
    start = clock.monotonic()
    async with real_client(fake) as client:
        s = await run_job(job, ONE, client, clock=clock)
    assert clock.monotonic() - start < 60
    assert (run_outcome(s), s.stopped, s.sent_groups) == (Exit.WINDOW, "window", 0)
    assert fake.recipient_counts() == {}
    failed = [e for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert [(e["code"], e["retryable"]) for e in failed] == [("429", True)]


async def test_a_pause_of_one_sender_of_the_pool_does_not_stop_the_others(
    jobs: JobFactory,
) -> None:
    """Of two senders, the one a 429 pauses past the send_window's close ends its group's
    tries at once (pending a rerun), but the job goes on: the other sender sends the next
    group before the window closes, and the run ends saying the window closed (exit 4): a
    run inside it sends the throttled group."""
    jobs.people(8)
    job = jobs.job(
        extra=f'timezone = "UTC"\ngroup_size = 4\n{GATES["send_window"]}',
        sender='["+18445550001", "+18445550002"]',
    )
    clock = FakeClock(wall=NOW.timestamp())
    client = throttled_once(600.0)
    start = clock.monotonic()
    s = await run_job(job, ONE, client, clock=clock)
    assert clock.monotonic() - start < 60
    assert (len(client.calls), s.sent_groups, s.retry_later_groups, s.stopped) == (
        2,
        1,
        1,
        "window",
    )
    assert run_outcome(s) == Exit.WINDOW
    assert len({g.message.from_ for g in client.calls}) == 2


@pytest.mark.parametrize("gate", ["send_window", "recipient_window"])
async def test_a_pause_past_midnight_in_a_window_open_all_day_is_waited_out(
    jobs: JobFactory, gate: str
) -> None:
    """A window open all day (00:00-24:00) never closes: a 429 two minutes before midnight
    is waited out and both groups go, neither held for quiet hours nor the job stopped."""
    jobs.people(8, tz="UTC")
    window = f'{gate} = "00:00-24:00"' + ('\ntimezone_column = "tz"' if gate[0] == "r" else "")
    job = jobs.job(extra=f'timezone = "UTC"\ngroup_size = 4\n{window}')
    clock = FakeClock(wall=dt.datetime(2026, 11, 24, 23, 58, tzinfo=dt.UTC).timestamp())
    client = throttled_once(600.0)
    s = await run_job(job, ONE, client, clock=clock)
    assert (len(client.calls), s.sent_groups, s.stopped, s.quiet) == (3, 2, None, {})


@pytest.mark.usefixtures("off_loop_work_on_the_loop")
async def test_groups_a_paused_sender_holds_past_the_send_window_do_not_stop_the_job(
    jobs: JobFactory,
) -> None:
    """Groups waiting on the one sender of two that a 429 pauses past the send_window's close
    are held for a run inside the window (asking the API nothing, they are no streak of
    unanswered groups), and the other sender sends on: the job is not stopped as the API down,
    and ends saying the window closed (exit 4)."""
    jobs.people(60)
    job = jobs.job(
        extra=f'timezone = "UTC"\ngroup_size = 4\n{GATES["send_window"]}',
        sender='["+18445550001", "+18445550002"]',
    )
    clock = FakeClock(wall=NOW.timestamp())
    sent: list[tuple[str, float]] = []

    def answer(g: Group, n: int) -> SendReceipt:
        if [s for s, _ in sent] == ["+18445550001", "+18445550002", "+18445550001"]:
            sent.append(("429", clock.wall()))  # the pile of groups behind it waits for it
            raise RateLimited("slow", retry_after=600.0, status=429)
        sent.append((g.message.from_, clock.wall()))
        return ok_receipt(g, n)

    settings = replace(
        FAST,
        concurrency=8,
        type_limits={"toll_free": 0.1},
        retry=replace(FAST.retry, max_retry_after=900),
    )
    s = await run_job(job, settings, FakeClient(answer), clock=clock)
    assert (s.error, s.stopped, run_outcome(s)) == (None, "window", Exit.WINDOW)
    codes = [e["code"] for e in ledger_events(job.ledger) if e["event"] == "failed"]
    held = len(codes) - 1  # behind the 429: three in a row stopped the job as the API down
    assert (codes, held >= 3) == (["429"] + ["WindowClosed"] * held, True)
    free = [w - NOW.timestamp() for f, w in sent if f == "+18445550001"]  # on to the end
    assert free == pytest.approx([10.0 * i for i in range(s.sent_groups - 1)], abs=0.1)
    assert s.sent_groups + len(codes) == 15


@pytest.mark.parametrize("limit", ["deadline", "max_job_duration_s", "max_group_age_s"])
async def test_groups_a_paused_sender_holds_past_a_deadline_another_can_meet_stay_sendable(
    jobs: JobFactory, limit: str
) -> None:
    """Groups waiting on the one sender of two that a 429 pauses past the job's deadline (or
    max_job_duration_s, or their max_group_age_s), two minutes on, while the other sender may
    still send: none is recorded expired (for good) nor is the job stopped (as the API down,
    or out of time); they give up pending a rerun, are no streak of unanswered groups, and
    the other sender sends on."""
    jobs.people(60)
    gate = GATES["deadline"] if limit == "deadline" else ""
    job = jobs.job(
        extra=f'timezone = "UTC"\ngroup_size = 4\n{gate}',
        sender='["+18445550001", "+18445550002"]',
    )
    clock = FakeClock(wall=NOW.timestamp())
    sent: list[str] = []

    def answer(g: Group, n: int) -> SendReceipt:
        if sent == ["+18445550001", "+18445550002", "+18445550001"]:
            sent.append("429")  # the pile of groups behind it waits for it
            raise RateLimited("slow", retry_after=600.0, status=429)
        sent.append(g.message.from_)
        return ok_receipt(g, n)

    settings = replace(
        FAST,
        concurrency=8,
        type_limits={"toll_free": 0.1},
        max_job_duration_s=120.0 if limit == "max_job_duration_s" else None,
        max_group_age_s=120.0 if limit == "max_group_age_s" else FAST.max_group_age_s,
        retry=replace(FAST.retry, max_retry_after=900),
    )
    s = await run_job(job, settings, FakeClient(answer), clock=clock)
    assert (s.error, s.stopped, s.expired_groups) == (None, None, 0)
    failed = [e for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert [e["code"] for e in failed] == ["429"] + ["RateLimited"] * (len(failed) - 1)
    assert all(e["retryable"] for e in failed)
    assert len(failed) >= 4
    assert (s.sent_groups + len(failed), s.retry_later_groups) == (15, len(failed))
