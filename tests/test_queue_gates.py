"""A message accepted by the API waits in its sender's queue at Telnyx (``wait_seconds``)
before it leaves for the carrier: a group is not sent when that queue would carry its
message past the job's deadline or its send_window's close, so no text reaches a phone
outside them once the run has seen the queue."""

from __future__ import annotations

import datetime as dt

from msgspec.structs import replace

from bulk_mms.config import JobConfig
from bulk_mms.console import run_outcome
from bulk_mms.errors import Exit
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.runner import run_job
from bulk_mms.summary import JobSummary
from tests.conftest import FAST, FakeClock, JobFactory, real_client
from tests.test_quiet import NEW_YORK

#: Ten seconds before 10:30 UTC, where the windows and deadlines below end.
NOW = dt.datetime(2026, 11, 24, 10, 29, 50, tzinfo=dt.UTC)
ONE = replace(FAST, concurrency=1)


async def run_queued(job: JobConfig, at: float) -> tuple[JobSummary, FakeTelnyx]:
    """The job run at ``at`` (wall clock) against a fake API whose every accepted message
    waits 20 s in its sender's queue: its summary, and the API."""
    fake = FakeTelnyx(wait_seconds=lambda _n: 20.0)
    async with real_client(fake) as client:
        return await run_job(job, ONE, client, clock=FakeClock(wall=at)), fake


async def test_a_queue_that_outlasts_the_send_window_holds_the_rest_for_the_next_window(
    jobs: JobFactory,
) -> None:
    """Ten seconds before the send_window closes, the first group's answer says its message
    waits 20 s at Telnyx: no other group is sent (each would reach its recipients after the
    close), and the run says the window closed (exit 4)."""
    jobs.people(16)
    job = jobs.job(extra='timezone = "UTC"\ngroup_size = 4\nsend_window = "09:00-10:30"')
    s, fake = await run_queued(job, NOW.timestamp())
    assert len(fake.requests) == 1
    assert (s.sent_groups, s.stopped, run_outcome(s)) == (1, "window", Exit.WINDOW)


async def test_a_queue_that_outlasts_the_deadline_expires_the_rest(jobs: JobFactory) -> None:
    """The same queue ten seconds before the job's deadline: the groups after the first
    are recorded expired, never sent, and the run exits 1."""
    jobs.people(16)
    job = jobs.job(extra='group_size = 4\ndeadline = "2026-11-24T10:30+00:00"')
    s, fake = await run_queued(job, NOW.timestamp())
    assert len(fake.requests) == 1
    assert (s.sent_groups, s.expired_groups, run_outcome(s)) == (1, 3, Exit.INCOMPLETE)


async def test_a_queue_that_ends_before_the_window_closes_holds_nothing(
    jobs: JobFactory,
) -> None:
    """A queue of 20 s a minute before the close keeps nothing back: every group is sent."""
    jobs.people(16)
    job = jobs.job(extra='timezone = "UTC"\ngroup_size = 4\nsend_window = "09:00-10:30"')
    s, _ = await run_queued(job, NOW.timestamp() - 50)
    assert (s.sent_groups, s.stopped, run_outcome(s)) == (4, None, Exit.OK)


async def test_a_queue_that_outlasts_the_recipients_quiet_hours_holds_them(
    jobs: JobFactory,
) -> None:
    """Ten seconds before New York's recipient_window closes (21:00 there), a queue of 20 s
    holds every group after the first for its recipients' window: none is sent, the run
    exits 4 (a run in their window sends them)."""
    jobs.csv([{"phone": p, "first": "x"} for p in NEW_YORK])
    job = jobs.job(extra='group_size = 1\nrecipient_window = "08:00-21:00"')
    closing = dt.datetime(2026, 11, 25, 1, 59, 50, tzinfo=dt.UTC)  # 20:59:50 in New York
    s, fake = await run_queued(job, closing.timestamp())
    assert len(fake.requests) == 1
    assert (s.sent_groups, s.stopped, run_outcome(s)) == (1, "quiet_hours", Exit.WINDOW)


async def test_a_resumed_run_starts_behind_the_queue_an_earlier_run_left(
    jobs: JobFactory,
) -> None:
    """A run stopped ten minutes before the send_window closes, its one group answered as
    waiting 20 minutes at Telnyx, then run again ten seconds later: the ledger's queue
    holds every group back (each would reach its recipients after the close), none is sent,
    and the run says the window closed (exit 4)."""
    jobs.people(16)
    job = jobs.job(extra='timezone = "UTC"\ngroup_size = 4\nsend_window = "09:00-10:30"')
    fake = FakeTelnyx(wait_seconds=lambda _n: 1200.0)
    clock = FakeClock(wall=NOW.timestamp() - 590)
    async with real_client(fake) as client:
        await run_job(job, ONE, client, clock=clock, limit=1)
        later = FakeClock(wall=clock.wall() + 10)
        s = await run_job(job, replace(FAST, concurrency=4), client, clock=later)
    assert len(fake.requests) == 1
    assert (s.sent_groups, s.stopped, run_outcome(s)) == (0, "window", Exit.WINDOW)
