"""A retry whose wait (a 5xx's backoff, a 429's Retry-After) would end only after the job's
send_window closes leaves its group for a run inside the window: nothing leaves outside it,
and the run says the window closed (exit 4), not the API failing or the job incomplete
(exit 1)."""

from __future__ import annotations

import datetime as dt

import pytest
from msgspec.structs import replace

from bulk_mms.console import run_outcome
from bulk_mms.errors import Exit
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.runner import run_job
from bulk_mms.signals import StopReason
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, FakeClock, JobFactory, real_client

#: Two minutes before the send_window below closes (10:30 UTC).
NOW = dt.datetime(2026, 11, 24, 10, 28, tzinfo=dt.UTC)
CLOSES = dt.datetime(2026, 11, 24, 10, 30, tzinfo=dt.UTC).timestamp()
WINDOW = 'timezone = "UTC"\ngroup_size = 4\nsend_window = "09:00-10:30"'
ONE = replace(FAST, concurrency=1)


@pytest.mark.parametrize(("people", "busy"), [(4, 1), (8, 1), (16, 4)])
async def test_a_503_whose_backoff_outlasts_the_send_window_exits_4(
    jobs: JobFactory, people: int, busy: int
) -> None:
    """``busy`` groups of ``people`` / 4 get a 503 asking for ten minutes two minutes
    before the send_window closes: none is tried again, the rest are sent, and the run ends
    saying the window closed (exit 4), not the API down, the groups pending a rerun."""
    jobs.people(people)
    job = jobs.job(extra=WINDOW)
    clock = FakeClock(wall=NOW.timestamp())
    fake = FakeTelnyx()
    fake.faults.extend(Fault("status", 503, headers={"Retry-After": "600"}) for _ in range(busy))
    async with real_client(fake) as client:
        s = await run_job(job, ONE, client, clock=clock)
    assert clock.wall() < CLOSES
    assert (s.error, s.stopped, run_outcome(s)) == (None, "window", Exit.WINDOW)
    assert (s.sent_groups, s.retry_later_groups) == (people // 4 - busy, busy)
    failed = [e["code"] for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert failed == ["503"] * busy


async def test_a_503_past_a_send_window_that_reopens_only_after_the_deadline_exits_1(
    jobs: JobFactory,
) -> None:
    """The same 503 on the one group of a job whose deadline (noon) comes before the window
    opens again (09:00 next day): no later run can send it, so the run says so (exit 1),
    not a promise of the next window (exit 4)."""
    jobs.people(4)
    job = jobs.job(extra=f'{WINDOW}\ndeadline = "2026-11-24T12:00+00:00"')
    fake = FakeTelnyx()
    fake.faults.append(Fault("status", 503, headers={"Retry-After": "600"}))
    async with real_client(fake) as client:
        s = await run_job(job, ONE, client, clock=FakeClock(wall=NOW.timestamp()))
    assert (s.error, s.stopped, run_outcome(s)) == (
        None,
        StopReason.AFTER_DEADLINE,
        Exit.INCOMPLETE,
    )
    assert s.retry_later_groups == 1
