"""A try (a retry after a 503's or a 429's Retry-After or a failed connection, or a try
whose turn comes late) that would leave only after ``max_job_duration_s`` or the job's
deadline stops as that limit's own stop does: the run stops at max_job_duration_s (exit 1,
naming it; the group left for a rerun), or the group is recorded expired (its deadline passed
for it: no run can send it), never a plain pending group with no word on why. The real
client against the fake API, or a fake client, on the fake clock."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

import pytest
from msgspec.structs import replace

from bulk_mms import runner
from bulk_mms.console import run_outcome
from bulk_mms.errors import Exit, NetworkError
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.models import Group, RejectedRow
from bulk_mms.prepare import plan
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.summary import JobSummary
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, ok_receipt, real_client

NOW = dt.datetime(2026, 11, 24, 10, 28, tzinfo=dt.UTC)
ONE = replace(FAST, concurrency=1)
#: A busy answer asking for ten minutes (the wait: max_retry_after, five minutes).
BUSY = {
    "503": Fault("status", 503, headers={"Retry-After": "600"}),
    "429": Fault("status", 429, headers={"Retry-After": "600"}),
}


def assert_stopped_at_max_job_duration(s: JobSummary, capsys: pytest.CaptureFixture[str]) -> None:
    """The run stopped as max_job_duration_s stops it: exit 1, its one line naming it."""
    capsys.readouterr()
    assert (s.error, s.stopped, run_outcome(s)) == (None, "deadline", Exit.INCOMPLETE)
    assert "stopped at max_job_duration_s" in capsys.readouterr().err


@pytest.mark.parametrize("status", sorted(BUSY))
async def test_a_retry_past_max_job_duration_stops_the_run_there(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], status: str
) -> None:
    """A retry past max_job_duration_s stops the run there (exit 1, named); a rerun sends all."""
    jobs.people(8)
    job = jobs.job(extra='timezone = "UTC"\ngroup_size = 4')
    settings = replace(ONE, max_job_duration_s=120.0)
    fake = FakeTelnyx()
    fake.faults.append(BUSY[status])
    async with real_client(fake) as client:
        s = await run_job(job, settings, client, clock=FakeClock(wall=NOW.timestamp()))
    assert_stopped_at_max_job_duration(s, capsys)
    assert (s.sent_groups, s.retry_later_groups) == (0, 1)
    async with real_client(FakeTelnyx()) as client:
        again = await run_job(job, settings, client, clock=FakeClock(wall=NOW.timestamp()))
    assert (again.sent_groups, run_outcome(again)) == (2, Exit.OK)


@pytest.mark.parametrize(("status", "expired"), [("503", 1), ("429", 2)])
async def test_a_retry_past_the_job_deadline_expires_the_group(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], status: str, expired: int
) -> None:
    """A retry past the job's deadline records its group expired_unsent at once (exit 1)."""
    jobs.people(8)
    job = jobs.job(extra='timezone = "UTC"\ngroup_size = 4\ndeadline = "2026-11-24T10:30+00:00"')
    fake = FakeTelnyx()
    fake.faults.append(BUSY[status])
    async with real_client(fake) as client:
        s = await run_job(job, ONE, client, clock=FakeClock(wall=NOW.timestamp()))
    capsys.readouterr()
    assert (s.error, run_outcome(s)) == (None, Exit.INCOMPLETE)
    assert f"{expired} expired unsent (past the job's deadline)" in capsys.readouterr().out
    assert (s.sent_groups, s.expired_groups, s.retry_later_groups) == (2 - expired, expired, 0)
    failed = [e["code"] for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert failed == ["expired_unsent"] * expired


@pytest.mark.parametrize("limit", ["max_job_duration_s", "deadline"])
async def test_a_backoff_after_a_connection_error_past_a_limit_ends_as_the_limit_does(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    """A backoff past max_job_duration_s stops the run; past the deadline, the group expires."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # tenacity's jitter
    jobs.people(4)
    deadline = '\ndeadline = "2026-11-24T10:30+00:00"' if limit == "deadline" else ""
    job = jobs.job(extra=f'timezone = "UTC"\ngroup_size = 4{deadline}')
    retry = replace(FAST.retry, backoff_initial=600.0, backoff_max=600.0)
    settings = replace(
        ONE, retry=retry, max_job_duration_s=120.0 if limit == "max_job_duration_s" else None
    )
    client = FakeClient(
        lambda g, n: NetworkError("connection refused") if n == 0 else ok_receipt(g, n)
    )
    s = await run_job(job, settings, client, clock=FakeClock(wall=NOW.timestamp()))
    assert (s.error, run_outcome(s)) == (None, Exit.INCOMPLETE)
    assert len(client.calls) == 1
    if limit == "deadline":
        assert (s.stopped, s.expired_groups, s.retry_later_groups) == (None, 1, 0)
    else:
        assert (s.stopped, s.expired_groups, s.retry_later_groups) == ("deadline", 0, 1)


@pytest.mark.usefixtures("off_loop_work_on_the_loop")
async def test_a_try_whose_slot_comes_at_max_job_duration_stops_the_run(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A try whose turn comes at max_job_duration_s never leaves and stops the run (named)."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient()
    settings = replace(ONE, rate=1.0, max_job_duration_s=1.0)  # the 2nd turn: at the limit
    s = await run_job(job, settings, client, clock=FakeClock())
    assert_stopped_at_max_job_duration(s, capsys)
    assert (len(client.calls), s.sent_groups) == (1, 1)


async def test_a_last_try_that_ran_out_of_time_at_max_job_duration_stops_the_run(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A last try failed as max_job_duration_s ran out stops the run there (exit 1, named)."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    clock = FakeClock()

    def late(g: Group, n: int) -> NetworkError:
        clock.advance(30.0)  # the connection was waited for until the time was up
        return NetworkError("no time was left for the request to leave in; not sent")

    settings = replace(ONE, retry=replace(FAST.retry, attempts=1), max_job_duration_s=10.0)
    s = await run_job(job, settings, FakeClient(late), clock=clock)
    assert_stopped_at_max_job_duration(s, capsys)
    assert s.retry_later_groups == 1


@pytest.mark.parametrize(("sent_before", "code"), [(None, Exit.OK), (9, Exit.INCOMPLETE)])
async def test_max_job_duration_while_reading_done_rows_exits_by_what_is_left(
    jobs: JobFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sent_before: int | None,
    code: Exit,
) -> None:
    """A rerun that max_job_duration_s stops while it reads rows an earlier run sent exits 0
    when everyone is sent, and 1 (naming the limit) when a group is left; report agrees."""
    jobs.people(40)
    job = jobs.job(extra="group_size = 4")
    first = await run_job(job, ONE, FakeClient(), clock=FakeClock(), limit=sent_before)
    assert first.sent_groups == (sent_before or 10)
    clock = FakeClock()

    def slow_plan(*args: Any, **kwargs: Any) -> Iterator[Group | RejectedRow]:
        for n, item in enumerate(plan(*args, **kwargs)):
            if n == 5:
                clock.advance(600.0)  # the reader took all the run's time to get here
            yield item

    monkeypatch.setattr(runner, "plan", slow_plan)
    client = FakeClient()
    s = await run_job(job, replace(ONE, max_job_duration_s=60.0), client, clock=clock)
    assert (client.calls, s.stopped, s.read_whole_input) == ([], "deadline", False)
    capsys.readouterr()
    assert run_outcome(s) == code
    out, err = capsys.readouterr()
    left = 0 if sent_before is None else 4
    assert f"valid recipients: {40 - left} sent, " in out
    assert f"{left} not attempted" in out
    assert ("stopped at max_job_duration_s" in err) == bool(left)
    assert s.recipients == summarize(job.ledger).recipient_states
