"""A message accepted by the API waits in its sender's queue at Telnyx (``wait_seconds``)
before it leaves for the carrier: a group is not sent when that queue would carry its
message past the job's deadline or its send_window's close, so no text reaches a phone
outside them once the run has seen the queue."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from msgspec.structs import replace

from bulk_mms.config import JobConfig, Settings
from bulk_mms.console import run_outcome
from bulk_mms.errors import Exit, ServerError
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.fake_api.faults import Fault
from bulk_mms.models import Group, SendReceipt
from bulk_mms.runner import run_job
from bulk_mms.summary import JobSummary
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, ok_receipt, real_client
from tests.test_quiet import NEW_YORK

#: Each test runs near a close on the virtual clock, which the disk's work then never moves.
pytestmark = pytest.mark.usefixtures("off_loop_work_on_the_loop")

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


#: A send_window ten seconds from closing at NOW.
CLOSING = 'timezone = "UTC"\ngroup_size = 4\nsend_window = "09:00-10:30"'


async def run_first_slow(
    job: JobConfig,
    at: float,
    settings: Settings = FAST,
    *,
    limit: int | None = None,
    wait: float = 1200.0,
) -> tuple[JobSummary, FakeTelnyx]:
    """The job run at ``at`` (wall clock) with ``settings`` (four groups at once) against a
    fake API (port 0, on the loop's clock) whose first answer comes 5 s late and whose every
    accepted message waits ``wait`` (20 minutes) in its sender's queue: its summary, and
    the API."""
    fake = FakeTelnyx(wait_seconds=lambda _n: wait, clock=asyncio.get_running_loop().time)
    fake.faults.append(Fault("slow", delay=5.0))
    async with real_client(fake) as client:
        s = await run_job(job, settings, client, clock=FakeClock(wall=at), limit=limit)
    return s, fake


async def test_near_the_close_an_unknown_queue_lets_one_group_out_until_it_answers(
    jobs: JobFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ten seconds before the send_window closes, four groups at once and no queue known
    yet: only the first is sent; the others wait for its answer, whose 20-minute queue
    holds them for the next window; the run ends as any window hold does (exit 4, the same
    last line as a run sending one group at a time)."""
    jobs.people(16)
    s, fake = await run_first_slow(jobs.job(extra=CLOSING), NOW.timestamp())
    assert len(fake.requests) == 1
    assert (s.sent_groups, s.stopped, run_outcome(s)) == (1, "window", Exit.WINDOW)
    last = capsys.readouterr().err.splitlines()[-1]
    one = JobFactory(tmp_path / "one")
    one.root.mkdir()
    one.people(16)
    s1, _ = await run_first_slow(one.job(extra=CLOSING), NOW.timestamp(), ONE)
    assert run_outcome(s1) == Exit.WINDOW
    assert capsys.readouterr().err.splitlines()[-1] == last


async def test_near_the_deadline_an_unknown_queue_lets_one_group_out_the_rest_expire(
    jobs: JobFactory,
) -> None:
    """The same ten seconds before the job's deadline: one group is sent, the three that
    waited for its answer are recorded expired, never sent (exit 1)."""
    jobs.people(16)
    job = jobs.job(extra='group_size = 4\ndeadline = "2026-11-24T10:30+00:00"')
    s, fake = await run_first_slow(job, NOW.timestamp())
    assert len(fake.requests) == 1
    assert (s.sent_groups, s.expired_groups, run_outcome(s)) == (1, 3, Exit.INCOMPLETE)


async def test_far_from_any_close_an_unknown_queue_holds_nothing_back(jobs: JobFactory) -> None:
    """Five hours before the send_window closes (longer than any queue Telnyx keeps), four
    groups at once and no queue known: all four are accepted at once, none waiting for the
    slow first answer."""
    jobs.people(16)
    job = jobs.job(extra='timezone = "UTC"\ngroup_size = 4\nsend_window = "05:00-15:30"')
    s, fake = await run_first_slow(job, NOW.timestamp(), wait=20.0)
    assert (s.sent_groups, s.stopped, run_outcome(s)) == (4, None, Exit.OK)
    accepted = [at for at, _, _ in fake.accept_log]
    assert max(accepted) - min(accepted) < 1  # none waited 5 s for the first answer


async def test_near_the_close_each_sender_of_a_pool_learns_its_own_queue(
    jobs: JobFactory,
) -> None:
    """Two senders, four groups at once, ten seconds before the close: each sender sends
    one group, whose answer sets its own queue; the rest are held (exit 4)."""
    jobs.people(32)
    job = jobs.job(extra=CLOSING, sender='["+18445550001", "+18445550002"]')
    s, fake = await run_first_slow(job, NOW.timestamp())
    assert sorted(r["from"] for r in fake.requests) == ["+18445550001", "+18445550002"]
    assert (s.sent_groups, s.stopped, run_outcome(s)) == (2, "window", Exit.WINDOW)


async def test_near_the_close_a_limit_still_sends_one_group_of_an_unknown_queue(
    jobs: JobFactory,
) -> None:
    """``--limit 3`` with four groups at once ten seconds before the close: the first is
    sent, the two others the limit lets in wait for its answer and are held (exit 4)."""
    jobs.people(16)
    s, fake = await run_first_slow(jobs.job(extra=CLOSING), NOW.timestamp(), limit=3)
    assert len(fake.requests) == 1
    assert (s.sent_groups, s.stopped, run_outcome(s)) == (1, "window", Exit.WINDOW)


async def test_near_the_close_a_queue_the_ledger_knows_holds_no_group_for_an_answer(
    jobs: JobFactory,
) -> None:
    """A run resumed ten seconds before the close, its ledger's answer from a minute ago
    saying the queue was empty: its queue is known, so the four groups at once are all
    accepted together, none waiting for the slow first answer."""
    jobs.people(20)
    job = jobs.job(extra=CLOSING)
    fake = FakeTelnyx(clock=asyncio.get_running_loop().time)
    async with real_client(fake) as client:
        await run_job(job, ONE, client, clock=FakeClock(wall=NOW.timestamp() - 60), limit=1)
        fake.faults.append(Fault("slow", delay=5.0))
        s = await run_job(job, FAST, client, clock=FakeClock(wall=NOW.timestamp()))
    accepted = [at for at, _, _ in fake.accept_log[1:]]
    assert (s.sent_groups, len(accepted)) == (4, 4)
    assert max(accepted) - min(accepted) < 1  # none waited 5 s for the first answer


async def test_a_wall_clock_stepped_while_a_group_waits_moves_the_close_its_queue_is_judged_by(
    jobs: JobFactory,
) -> None:
    """Ten minutes before the send_window closes, the first group's answer reports a 5-minute
    queue; the second group's first try gets a 503, and the wall clock steps 400 s forward
    (NTP, a VM resumed) before its retry: the queue would now carry it past the close, so
    it is not sent (exit 4), not judged by where the close was before the step."""
    jobs.people(8)
    job = jobs.job(extra=CLOSING)
    clock = FakeClock(wall=NOW.timestamp() - 590)
    accepted: list[float] = []

    def answer(g: Group, n: int) -> SendReceipt:
        if n == 1:
            clock.step_wall(400.0)
            raise ServerError("busy", status=503, retry_after=1.0)
        accepted.append(clock.wall())
        return ok_receipt(g, n, wait=300.0)

    settings = replace(ONE, max_queue_wait_s=600.0)  # a queue of 5 minutes pauses nothing
    s = await run_job(job, settings, FakeClient(answer), clock=clock)
    assert accepted == pytest.approx([NOW.timestamp() - 590], abs=0.1)
    assert (s.sent_groups, s.stopped, run_outcome(s)) == (1, "window", Exit.WINDOW)


async def test_after_a_queue_full_429_near_the_close_one_group_goes_until_an_answer_sets_the_queue(
    jobs: JobFactory,
) -> None:
    """A minute before the close the queue is known empty, then a 429 says it is full
    (40318: hours of messages, other traffic of the number): as the pause ends, one group
    goes, the others wait for its answer, whose hour-long queue holds them (exit 4); not
    four at once, each reaching its recipients an hour after the close."""
    jobs.people(20)
    full = {"Retry-After": "2"}
    fake = FakeTelnyx(
        wait_seconds=lambda n: 0.0 if n == 0 else 3600.0, clock=asyncio.get_running_loop().time
    )
    fake.faults.extend(
        [
            Fault("slow", delay=0.0),
            Fault("status", 429, headers=full, code="40318"),
            *(Fault("slow", delay=5.0) for _ in range(4)),
        ]
    )
    settings = replace(FAST, rate=2.0, concurrency=4)
    async with real_client(fake) as client:
        s = await run_job(
            jobs.job(extra=CLOSING), settings, client, clock=FakeClock(wall=NOW.timestamp() - 50)
        )
    assert len(fake.accept_log) == 2
    assert (s.sent_groups, s.stopped, run_outcome(s)) == (2, "window", Exit.WINDOW)
