"""Every gate is checked as each request is about to leave, on every try: the job's deadline
(and max_age_s), its send_window and the recipients' recipient_window close on groups that
wait in the queue, the pacer or a backoff, and none of them goes out (injected clock)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestServer
from msgspec.structs import replace

from bulk_mms.caps import DailyCap
from bulk_mms.client import SEND_PATH, AiohttpMmsClient
from bulk_mms.console import run_outcome
from bulk_mms.errors import RateLimited
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.models import Group, SendReceipt
from bulk_mms.pacing import Pacer
from bulk_mms.recorder import Recorder
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.signals import Stop, StopReason
from bulk_mms.suppression import Suppressed
from bulk_mms.testing import groups_in, ledger_events
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers, ok_receipt

NOON = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
ONE_MINUTE = dt.timedelta(minutes=1)
SECOND = dt.timedelta(seconds=1)


def clock_at(when: dt.datetime) -> FakeClock:
    return FakeClock(wall=when.timestamp())


async def test_no_request_leaves_after_the_deadline_from_the_queue_or_the_pacer(
    jobs: JobFactory,
) -> None:
    """Paced at one group a second with the deadline 3.5 s away, the groups still queued or
    waiting in the pacer when it passes are recorded expired_unsent, and no request leaves
    after it."""
    jobs.people(40)
    job = jobs.job(extra='group_size = 4\ndeadline = "2026-11-24T12:00:03.5+00:00"')
    clock = clock_at(NOON)
    left: list[float] = []

    def answer(g: Group, n: int) -> SendReceipt:
        left.append(clock.wall())
        return ok_receipt(g, n)

    settings = replace(FAST, rate=1.0, concurrency=4)
    s = await run_job(job, settings, FakeClient(answer), clock=clock)
    deadline = NOON.timestamp() + 3.5
    assert left
    assert max(left) <= deadline
    assert s.sent_groups == len(left)
    assert s.sent_groups + s.expired_groups == 10
    expired = [e for e in ledger_events(job.ledger) if e.get("code") == "expired_unsent"]
    assert len(expired) == 10 - len(left)


@pytest.mark.usefixtures("off_loop_work_on_the_loop")
async def test_a_retry_after_the_deadline_never_leaves(jobs: JobFactory) -> None:
    """A group whose first try gets a 503 and whose backoff would end past the deadline is not
    tried again: it is recorded expired_unsent at once, and the next run sends nothing."""
    jobs.people(4)
    job = jobs.job(extra='group_size = 4\ndeadline = "2026-11-24T12:00:05+00:00"')
    clock = clock_at(NOON)
    tries: list[float] = []

    def answer(g: Group, n: int) -> SendReceipt:
        tries.append(clock.wall())
        raise RateLimited("busy", retry_after=10.0, status=503)

    settings = replace(FAST, retry=replace(FAST.retry, max_retry_after=60))
    s = await run_job(job, settings, FakeClient(answer), clock=clock)
    assert tries == pytest.approx([NOON.timestamp()], abs=0.1)  # one try, at noon
    assert (s.sent_groups, s.expired_groups) == (0, 1)
    again = await run_job(job, settings, FakeClient(answer), clock=clock_at(NOON + ONE_MINUTE))
    assert tries == pytest.approx([NOON.timestamp()], abs=0.1)
    assert (again.expired_groups, again.skipped_groups) == (0, 1)
    codes = [e.get("code") for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert codes == ["expired_unsent"]


async def test_a_429_pause_past_the_deadline_expires_the_group(jobs: JobFactory) -> None:
    """A Retry-After that would carry the group past the deadline ends its wait at once: it
    expires instead of going out 553 s late."""
    jobs.people(8)
    job = jobs.job(extra='group_size = 4\ndeadline = "2026-11-24T12:00:30+00:00"')
    clock = clock_at(NOON)
    sent_at: list[float] = []

    def answer(g: Group, n: int) -> SendReceipt:
        if n == 0:
            raise RateLimited("slow", retry_after=600.0)
        sent_at.append(clock.wall())
        return ok_receipt(g, n)

    settings = replace(FAST, concurrency=1, retry=replace(FAST.retry, max_retry_after=900))
    s = await run_job(job, settings, FakeClient(answer), clock=clock)
    assert all(t <= NOON.timestamp() + 30 for t in sent_at)
    assert clock.wall() - NOON.timestamp() < 60  # the pause was not waited out
    assert s.sent_groups == len(sent_at)
    assert s.expired_groups >= 1


@pytest.mark.usefixtures("off_loop_work_on_the_loop")
async def test_a_run_the_deadline_cut_short_says_so_last(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose deadline passes mid-run ends (exit 1) on a line naming the deadline, what
    it sent and the groups expired unsent, not on its throughput line."""
    jobs.people(40)
    job = jobs.job(extra='group_size = 4\ndeadline = "2026-11-24T12:02:00+00:00"')
    settings = replace(FAST, concurrency=1, rate=0.02)  # a group every 50 s: 3 before noon+2
    s = await run_job(job, settings, FakeClient(), clock=clock_at(NOON))
    capsys.readouterr()
    assert run_outcome(s) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == (
        "bulk-mms: past the job's deadline (2026-11-24T12:02Z): 3 groups sent this run; "
        "7 groups expired unsent, which no run sends"
    )


@pytest.mark.usefixtures("off_loop_work_on_the_loop")
async def test_quiet_hours_are_checked_on_every_try(jobs: JobFactory) -> None:
    """A retry whose backoff ends after the recipients' window closed is not sent: the group
    waits for the window (exit 4's quiet hours), it is not texted at 21:00:19."""
    jobs.people(4, tz="America/Chicago")
    job = jobs.job(extra='group_size = 4\nrecipient_window = "08:00-21:00"\ntimezone_column = "tz"')
    almost = dt.datetime(2026, 11, 24, 20, 59, 55, tzinfo=ZoneInfo("America/Chicago"))
    clock = clock_at(almost)
    tries: list[float] = []

    def answer(g: Group, n: int) -> SendReceipt:
        tries.append(clock.wall())
        raise RateLimited("busy", retry_after=20.0, status=503)

    settings = replace(FAST, retry=replace(FAST.retry, max_retry_after=60))
    s = await run_job(job, settings, FakeClient(answer), clock=clock)
    assert tries == pytest.approx([almost.timestamp()], abs=0.1)  # one try, before 21:00
    assert s.stopped == "quiet_hours"
    assert groups_in(job.ledger, "retry_pending")


@pytest.mark.parametrize(
    ("extra", "closes"),
    [
        ('deadline = "2026-11-24T12:00:40+00:00"', 40.0),
        ('send_window = "09:00-12:01"', 60.0),
        ('recipient_window = "06:00-07:02"\ntimezone_column = "tz"', 120.0),
    ],
)
async def test_each_request_must_leave_before_the_first_gate_closes(
    jobs: JobFactory, extra: str, closes: float
) -> None:
    """Each request is handed the seconds left before the first gate closes (the deadline,
    the send_window's end, the recipients' window's end in their zone): the client never
    sends one whose connection is ready only after that."""
    jobs.people(12, tz="America/New_York")  # 07:00 there at noon UTC
    job = jobs.job(extra=f"group_size = 4\n{extra}")
    clock = clock_at(NOON)
    sent_at: list[float] = []

    def answer(g: Group, n: int) -> SendReceipt:
        sent_at.append(clock.wall())
        return ok_receipt(g, n)

    client = FakeClient(answer)
    s = await run_job(job, replace(FAST, rate=1.0), client, clock=clock)
    assert s.sent_groups == 3
    ends = [t + w for t, w in zip(sent_at, client.leave_within, strict=True) if w is not None]
    assert ends == pytest.approx([NOON.timestamp() + closes] * 3, abs=1e-6)


async def test_a_group_remade_and_held_for_quiet_hours_is_remade_once(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """Alone on a JSONL ledger, a group made without a suppressed member and held for quiet
    hours records its remaking: the next run, still in quiet hours, follows it and does not
    record the suppressed row again."""
    jobs.people(4, tz="America/Chicago")
    job = jobs.job(extra='group_size = 4\nrecipient_window = "08:00-21:00"\ntimezone_column = "tz"')
    Suppressed(tmp_path / "suppressed.txt").add([numbers(4)[1]], "test")
    settings = replace(FAST, suppression_file=tmp_path / "suppressed.txt")
    late = dt.datetime(2026, 11, 24, 23, 0, tzinfo=ZoneInfo("America/Chicago"))
    client = FakeClient()
    for _ in range(2):
        s = await run_job(job, settings, client, clock=clock_at(late))
        assert s.stopped == "quiet_hours"
    kinds = [e["event"] for e in ledger_events(job.ledger)]
    assert (kinds.count("remade"), kinds.count("rejected"), client.calls) == (1, 1, [])


async def test_past_the_deadline_a_group_in_quiet_hours_expires_instead_of_waiting(
    jobs: JobFactory,
) -> None:
    """A group whose recipients' window is closed when the job's deadline has passed is
    recorded expired_unsent: the run does not exit 4 promising that a later run sends it."""
    jobs.people(4, tz="America/Chicago")
    job = jobs.job(
        extra='group_size = 4\nrecipient_window = "08:00-21:00"\ntimezone_column = "tz"\n'
        'deadline = "2026-11-24T22:00-06:00"'
    )
    late = dt.datetime(2026, 11, 24, 23, 0, tzinfo=ZoneInfo("America/Chicago"))
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=clock_at(late))
    assert (s.stopped, s.quiet, s.expired_groups, client.calls) == (None, {}, 1, [])
    assert run_outcome(s) == 1
    codes = [e.get("code") for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert codes == ["expired_unsent"]


async def test_a_wall_clock_stepped_back_does_not_expire_a_group_before_the_deadline(
    jobs: JobFactory,
) -> None:
    """The wall clock is stepped back two minutes (NTP) as the first request is out, and its
    429 pauses the sender 90 s: the next group waits that out, since by the wall clock the
    deadline is three minutes on, and is sent before it, not recorded expired_unsent early."""
    jobs.people(8)
    job = jobs.job(extra='group_size = 4\ndeadline = "2026-11-24T12:01:00+00:00"')
    clock = clock_at(NOON)
    sent_at: list[float] = []

    def answer(g: Group, n: int) -> SendReceipt:
        if n == 0:
            clock.step_wall(-120.0)
            raise RateLimited("slow", retry_after=90.0)
        sent_at.append(clock.wall())
        return ok_receipt(g, n)

    settings = replace(FAST, concurrency=1, retry=replace(FAST.retry, max_retry_after=900))
    s = await run_job(job, settings, FakeClient(answer), clock=clock)
    assert s.expired_groups == 0
    assert len(sent_at) == 1  # the group after the paused one (which stays pending)
    assert sent_at[0] < NOON.timestamp() + 60


@pytest.mark.parametrize(
    ("deadline", "stopped", "code"),
    [("", "window", 4), ('\ndeadline = "2026-11-24T18:00+00:00"', StopReason.AFTER_DEADLINE, 1)],
    ids=["resumable", "too-late"],
)
async def test_a_run_stops_as_its_send_window_closes_not_after_its_waits(
    jobs: JobFactory, deadline: str, stopped: str, code: int
) -> None:
    """A run whose only worker waits out a 300 s Retry-After stops as the send_window closes
    30 s later, not 270 s after it: exit 4's window stop, or exit 1 when the job's deadline
    comes before the window opens again (no later run can send the rest)."""
    jobs.people(8)
    job = jobs.job(extra='group_size = 4\nsend_window = "09:00-12:01"' + deadline)
    stop = Stop()
    clock = FakeClock(wall=(NOON + dt.timedelta(seconds=30)).timestamp(), stopping=stop)

    def answer(g: Group, n: int) -> SendReceipt:
        raise RateLimited("slow", retry_after=300.0)

    settings = replace(FAST, concurrency=1, retry=replace(FAST.retry, max_retry_after=900))
    client = FakeClient(answer)
    s = await run_job(job, settings, client, clock=clock, stop=stop)
    assert (s.stopped, run_outcome(s)) == (stopped, code)
    assert len(client.calls) == 1
    assert clock.wall() - (NOON + ONE_MINUTE).timestamp() < 5


async def test_a_try_past_both_the_deadline_and_the_send_window_expires_the_group(
    jobs: JobFactory,
) -> None:
    """The wall clock jumps an hour (a machine resumed from suspend) while a group's first
    try is out: its next try finds both the send_window closed and the deadline passed, and
    records the group expired_unsent (exit 1), not a window stop (exit 4) that promises a
    later run would send it."""
    jobs.people(4)
    job = jobs.job(
        extra='group_size = 4\nsend_window = "09:00-12:30"\ndeadline = "2026-11-24T12:10:00+00:00"'
    )
    clock = clock_at(NOON)

    def answer(g: Group, n: int) -> SendReceipt:
        clock.step_wall(3600.0)
        raise RateLimited("busy", retry_after=1.0, status=503)

    s = await run_job(job, FAST, FakeClient(answer), clock=clock)
    assert (s.stopped, s.expired_groups) == (None, 1)
    assert run_outcome(s) == 1
    codes = [e.get("code") for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert codes[-1] == "expired_unsent"


#: The waits between a group's gate checks and its request leaving, by name: the pacer's
#: admission, a daily cap's reservation, the attempt's write ahead, the send slot.
WAITS: dict[str, tuple[type[Any], str]] = {
    "pacer": (Pacer, "acquire"),
    "daily cap": (DailyCap, "reserve"),
    "ledger commit": (Recorder, "attempt"),
    "send slot": (Pacer, "send_slot"),
}


def stall(monkeypatch: pytest.MonkeyPatch, wait: str, seconds: float, *, every: bool) -> None:
    """Make ``wait`` (:data:`WAITS`) take ``seconds`` more: its first call, or ``every`` one
    (a stalled disk or database, a process paused there)."""
    owner, name = WAITS[wait]
    original = getattr(owner, name)
    calls: list[object] = []

    async def stalled(self: object, *args: Any, **kwargs: Any) -> Any:
        if every or not calls:
            calls.append(self)
            await asyncio.sleep(seconds)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, stalled)


@pytest.mark.parametrize("wait", list(WAITS))
@pytest.mark.parametrize(
    ("gate", "code", "why"),
    [
        ('deadline = "2026-11-24T12:00:30+00:00"', 1, "not sent before the job's deadline"),
        (
            'recipient_window = "06:00-07:01"\ntimezone_column = "tz"',
            4,
            "its window (the send_window, or its recipients' quiet hours) closed",
        ),
    ],
    ids=["deadline", "recipient_window"],
)
async def test_a_wait_that_stalls_past_a_gate_sends_nothing_and_says_why(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, wait: str, gate: str, code: int, why: str
) -> None:
    """Each wait before a request leaves (the pacer, a daily cap, the ledger's commit of the
    attempt, the send slot) stalled two minutes, past the deadline or the recipients' window
    30 s away: nothing is sent, and the group is recorded as the gate says (expired, exit 1;
    held for its window, exit 4, not attempted when held before its attempt was written),
    the report naming that gate, not a stop or the API."""
    jobs.people(4, tz="America/New_York")  # 07:00 there at noon UTC
    job = jobs.job(extra=f"group_size = 4\n{gate}")
    stall(monkeypatch, wait, 120.0, every=False)
    settings = replace(FAST, daily_recipients=1000)
    client = FakeClient()
    s = await run_job(job, settings, client, clock=clock_at(NOON))
    assert (client.calls, run_outcome(s)) == ([], code)
    ledger = summarize(job.ledger)
    if wait == "pacer" and code == 4:  # held before its attempt: nothing on record
        assert (ledger.unsent, ledger.recipient_states.not_attempted) == ({}, 4)
    else:
        assert [n for (_, said), n in ledger.unsent.items() if why in said] == [(1, 4)]


async def test_groups_their_window_holds_after_their_attempt_do_not_stop_the_run_as_api_down(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every attempt's commit stalls past the recipients' window: the four groups it holds
    (their attempts on record) asked the API nothing, so they do not count as groups the API
    left unanswered: the run ends for quiet hours (exit 4), not as the API down (exit 1)."""
    jobs.people(20, tz="America/New_York")
    job = jobs.job(extra='group_size = 4\nrecipient_window = "06:00-07:01"\ntimezone_column = "tz"')
    client = FakeClient()
    # a run before: its answer is the sender's queue, so the four go at once (none waits for it)
    await run_job(job, FAST, client, clock=clock_at(NOON - 30 * SECOND), limit=1)
    stall(monkeypatch, "ledger commit", 120.0, every=True)
    s = await run_job(job, FAST, client, clock=clock_at(NOON))
    assert (len(client.calls), s.error, s.stopped, run_outcome(s)) == (1, None, "quiet_hours", 4)
    assert summarize(job.ledger).recipient_states.retry_pending == 16


@pytest.mark.parametrize(
    ("gate", "stopped"),
    [
        ('send_window = "09:00-12:01"', "window"),
        ('recipient_window = "06:00-07:01"\ntimezone_column = "tz"', "quiet_hours"),
    ],
    ids=["send_window", "recipient_window"],
)
async def test_a_group_whose_connection_is_ready_only_after_its_window_closed_is_held_for_it(
    jobs: JobFactory, gate: str, stopped: str
) -> None:
    """The real client's one connection is held by a slow answer past the window's close: the
    group waiting for it never reaches the API and is recorded as its window having closed
    before its request left (exit 4), not as the API unreachable."""
    jobs.people(12, tz="America/New_York")  # 07:00 there at noon UTC
    job = jobs.job(extra=f"group_size = 4\n{gate}")
    fake = FakeTelnyx()
    # the first answer (at once) is the sender's queue; the two groups after it go together
    fake.faults.extend([Fault("patch"), Fault("slow", delay=45.0)])
    async with (
        TestServer(fake.app(), host="127.0.0.1", port=0) as server,
        AiohttpMmsClient(
            str(server.make_url("/v2")), "any-key", max_connections=1, request_timeout=60
        ) as client,
    ):
        s = await run_job(
            job, replace(FAST, concurrency=2), client, clock=clock_at(NOON + 30 * SECOND)
        )
    assert (s.stopped, run_outcome(s), s.sent_groups) == (stopped, 4, 2)
    # the sends alone: the run's delivery watch asks after its groups on the machine's date,
    # so whether it does within the 72 h of [track] max_age depends on the day the test runs
    assert [r.path for r in fake.http_log if r.method == "POST"] == [f"/v2{SEND_PATH}"] * 2
    codes = [e.get("code") for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert codes == ["WindowClosed"]
