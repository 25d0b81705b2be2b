"""Cron campaigns: dated ledgers in the job's timezone, and the send window (exit 4, resumable)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from msgspec.structs import replace

from bulk_mms import prepare
from bulk_mms.cli import EXIT_WINDOW, main
from bulk_mms.config import JobConfig, SendWindow, load_job
from bulk_mms.errors import ConfigError
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.prepare import continues_earlier
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from tests.conftest import (
    FAKETIME,
    FAST,
    FakeClient,
    FakeClock,
    JobFactory,
    missing,
    numbers,
    zone_at,
)
from tests.threaded import fake_api_thread

UTC = dt.UTC


def test_dated_ledger_uses_the_jobs_timezone(jobs: JobFactory) -> None:
    """{date} is the local date in `timezone`: 02:00 UTC is still the day before in Chicago."""
    jobs.people(1)
    extra = 'ledger = "ledgers/{name}-{date}.jsonl"\ntimezone = "America/Chicago"'
    job = jobs.job(extra=extra, name="nightly")
    at = dt.datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    job = load_job(job.path, now=at)
    assert job.ledger == jobs.root / "ledgers" / "nightly-2026-11-23.jsonl"
    later = load_job(job.path, now=at + dt.timedelta(hours=6))
    assert later.ledger.name == "nightly-2026-11-24.jsonl"


@pytest.mark.parametrize(
    ("extra", "setting"),
    [
        ('ledger = "ledgers/{job}.jsonl"', "ledger"),
        ('timezone = "Mars/Olympus"', "timezone"),
        ('send_window = "9-17"', "send_window"),
        ('send_window = "09:00-25:00"', "send_window"),
        ('send_window = "09:00-09:00"', "send_window"),
    ],
)
def test_bad_cron_settings_name_the_setting(jobs: JobFactory, extra: str, setting: str) -> None:
    """A bad placeholder, zone or window is a ConfigError naming the setting."""
    jobs.people(1)
    with pytest.raises(ConfigError) as info:
        jobs.job(extra=extra)
    assert info.value.setting == setting


@pytest.mark.parametrize(
    ("window", "inside", "outside"),
    [
        (SendWindow(dt.time(9), dt.time(20)), [dt.time(9), dt.time(19, 59)], [dt.time(20)]),
        (SendWindow(dt.time(22), dt.time(6)), [dt.time(23), dt.time(5, 59)], [dt.time(12)]),
    ],
)
def test_send_window_contains(
    window: SendWindow, inside: list[dt.time], outside: list[dt.time]
) -> None:
    """The start is inside and the end outside; a window may run across midnight."""
    assert all(window.contains(t) for t in inside)
    assert not any(window.contains(t) for t in outside)


async def test_outside_the_window_nothing_is_sent(jobs: JobFactory) -> None:
    """Started outside its window, a run sends nothing, writes no ledger and says why."""
    jobs.people(8)
    job = jobs.job(extra='send_window = "09:00-20:00"\ntimezone = "Europe/Paris"')
    client = FakeClient()
    night = dt.datetime(2026, 11, 23, 22, 30, tzinfo=UTC)  # 23:30 in Paris
    s = await run_job(job, FAST, client, clock=FakeClock(wall=night.timestamp()))
    assert s.stopped == "window"
    assert client.calls == []
    assert not job.ledger.exists()


@pytest.mark.usefixtures("off_loop_work_on_the_loop")
async def test_window_closing_stops_and_the_next_run_resumes(jobs: JobFactory) -> None:
    """At the window's end the run stops before the next request; the next run sends the rest.
    (The disk's work takes none of the virtual clock: however slow, the same groups go.)"""
    jobs.people(40)
    job = jobs.job(extra='group_size = 2\nsend_window = "09:00-20:00"')
    settings = replace(FAST, rate=1.0, concurrency=1)
    close = dt.datetime(2026, 11, 23, 20, 0, tzinfo=UTC)
    # 5 s before the window closes; its wall clock moves with its monotonic one
    clock = FakeClock(start=0.0, wall=close.timestamp() - 5)
    client = FakeClient(wall=clock.wall)
    first = await run_job(job, settings, client, clock=clock)
    assert first.stopped == "window"
    assert 3 <= first.sent_groups <= 6
    assert max(r.created_at for r in client.records) < close.timestamp()
    morning = dt.datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    second = await run_job(job, FAST, client, clock=FakeClock(wall=morning.timestamp()))
    assert second.stopped is None
    assert first.sent_groups + second.sent_groups == 20
    assert sorted(client.sent_numbers()) == numbers(40)


def test_cli_exits_4_outside_the_window(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bulk-mms run` outside the send window exits 4 with one line saying it is resumable."""
    jobs.people(4)
    hour = (dt.datetime.now(UTC).hour + 2) % 24
    window = f"{hour:02d}:00-{(hour + 1) % 24:02d}:00"
    job = jobs.job(extra=f'send_window = "{window}"')
    assert main(["-q", "run", str(job.path), "--sandbox"]) == EXIT_WINDOW
    err = capsys.readouterr().err
    assert "send window closed" in err
    assert "Traceback" not in err


async def _cut_short(job_path: Path, when: dt.datetime) -> JobConfig:
    """Run the job as of ``when`` (its {date} ledger) and stop it after one group."""
    earlier = load_job(job_path, now=when)
    await run_job(earlier, FAST, FakeClient(), limit=1)
    return earlier


def test_a_campaign_cut_at_midnight_is_finished_not_sent_again(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A {date} job whose run yesterday was cut short (its window crossed midnight): today's
    run finishes yesterday's ledger, so nobody is texted twice; once it is finished, the next
    day's run opens a ledger of its own."""
    jobs.people(24)
    job = jobs.job(extra='group_size = 4\nledger = "ledgers/{name}-{date}.jsonl"')
    yesterday = dt.datetime.now(UTC) - dt.timedelta(days=1)
    earlier = asyncio.run(_cut_short(job.path, yesterday))
    monkeypatch.setenv("TELNYX_API_KEY", "KEY-cron")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    assert sorted(fake.recipient_counts()) == numbers(24)[4:]  # the first group went yesterday
    assert not load_job(job.path).ledger.exists()
    assert summarize(earlier.ledger).recipient_states.sent == 24


def test_yesterdays_ledger_of_another_export_is_judged_by_its_header_not_folded(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A {date} job whose export changed since yesterday's run was cut short: today's run
    does not continue yesterday's ledger, and tells so from its header, never folding it
    (a whole list's ledger, read every day for nothing)."""
    jobs.people(24)
    job = jobs.job(extra='group_size = 4\nledger = "ledgers/{name}-{date}.jsonl"')
    earlier = asyncio.run(_cut_short(job.path, dt.datetime.now(UTC) - dt.timedelta(days=1)))
    jobs.people(20)  # today's export
    folded: list[object] = []
    monkeypatch.setattr(prepare, "load", lambda *a, **k: folded.append(a))
    assert continues_earlier(load_job(job.path), earlier.ledger) is None
    assert folded == []


@pytest.mark.parametrize(
    ("local", "continues"),
    [(dt.time(0, 0, 30), True), (dt.time(5, 59), True), (dt.time(22, 30), False)],
)
async def test_a_night_window_belongs_to_the_date_it_opened(
    jobs: JobFactory, local: dt.time, continues: bool
) -> None:
    """With send_window 22:00-06:00, a run after midnight has the ledger of the night's
    first date ({date} is the date the night began), finished or not; one after 22:00 the
    ledger of its own date."""
    jobs.people(8)
    extra = (
        'group_size = 4\nledger = "ledgers/{name}-{date}.jsonl"\n'
        'send_window = "22:00-06:00"\ntimezone = "America/Chicago"'
    )
    job = jobs.job(extra=extra)
    zone = job.zone
    now = dt.datetime.combine(dt.date(2026, 11, 25), local, zone)
    night = dt.datetime.combine(dt.date(2026, 11, 24), dt.time(23), zone)
    earlier = load_job(job.path, now=night)
    await run_job(earlier, FAST, FakeClient(), clock=FakeClock(wall=night.timestamp()))
    today = load_job(job.path, now=now)
    assert (today.ledger == earlier.ledger) is continues
    assert not continues_earlier(today, earlier.ledger)


def test_a_night_whose_input_changed_after_midnight_is_refused_not_sent_again(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A night window's run after midnight whose export was written again meanwhile (the
    night's ledger holds the old one) exits 2 naming the changed input, and texts nobody:
    not a fresh campaign under the new date that texts the night's recipients twice."""
    jobs.people(8)
    extra = (
        'group_size = 4\nledger = "ledgers/{name}-{date}.jsonl"\n'
        f'send_window = "22:00-06:00"\ntimezone = "{zone_at(1)}"'
    )
    job = jobs.job(extra=extra)
    night = dt.datetime.now(job.zone).replace(hour=23) - dt.timedelta(days=1)
    earlier = load_job(job.path, now=night)
    asyncio.run(run_job(earlier, FAST, FakeClient(), clock=FakeClock(wall=night.timestamp())))
    jobs.people(8, start=4)  # the export written again at midnight: 4 of its 8 sent already
    monkeypatch.setenv("TELNYX_API_KEY", "KEY-cron")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        code = main(["-q", "run", str(job.path), "--base-url", url])
    assert fake.recipient_counts() == {}
    assert code == 2
    assert "input file contents" in capsys.readouterr().err
    noon = dt.datetime.now(job.zone).replace(hour=12)  # the calendar's date: no ledger
    assert not load_job(job.path, now=noon).ledger.exists()


NIGHTLY = (
    'group_size = 4\nledger = "ledgers/{name}-{date}.jsonl"\n'
    'send_window = "22:00-06:00"\ntimezone = "America/Chicago"'
)


def _ran(job_path: Path, when: dt.datetime, limit: int | None = None) -> Path:
    """Run the job as cron would at ``when`` (its {date} ledger, its clock): its ledger."""
    job = load_job(job_path, now=when)
    clock = FakeClock(wall=when.timestamp())
    asyncio.run(run_job(job, FAST, FakeClient(), limit=limit, clock=clock))
    return job.ledger


def _cron_run(job_path: Path, when: dt.datetime) -> tuple[int, FakeTelnyx]:
    """``bulk-mms run`` of the job in a process whose wall clock reads ``when`` (libfaketime)
    on a fake API: its exit code, and the API with what it was sent. No traceback."""
    if FAKETIME is None:
        missing("no libfaketime (Debian's faketime package) to set the run's clock")
    at = when.astimezone(UTC)
    env = {**os.environ, "TELNYX_API_KEY": "KEY-cron", "TZ": "UTC", "DONT_FAKE_MONOTONIC": "1"}
    env |= {"LD_PRELOAD": str(FAKETIME), "FAKETIME": f"@{at:%Y-%m-%d %H:%M:%S}"}
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        cmd = [sys.executable, "-m", "bulk_mms", "-q", "run", str(job_path), "--base-url", url]
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=120, check=False)
    assert b"Traceback" not in done.stderr, done.stderr.decode()[-1000:]
    return done.returncode, fake


@pytest.mark.slow
def test_a_night_after_spring_forward_goes_on_in_its_own_ledger(jobs: JobFactory) -> None:
    """A cron run at 00:30 after a 23-hour day (Chicago's spring forward) goes on in that
    night's ledger, cut short at 23:00, and sends its rest; not in the night before's, which
    is finished and would leave the rest unsent."""
    jobs.people(8)
    job = jobs.job(extra=NIGHTLY, name="nightly")
    _ran(job.path, dt.datetime(2026, 3, 7, 23, tzinfo=job.zone))  # Saturday's night: done
    sunday = _ran(job.path, dt.datetime(2026, 3, 8, 23, tzinfo=job.zone), limit=1)
    code, fake = _cron_run(job.path, dt.datetime(2026, 3, 9, 0, 30, tzinfo=job.zone))
    assert code == 0
    assert sorted(fake.recipient_counts()) == numbers(8)[4:]
    assert summarize(sunday).recipient_states.sent == 8


@pytest.mark.slow
def test_a_night_whose_runs_start_after_midnight_is_sent_every_night(jobs: JobFactory) -> None:
    """With send_window 22:00-06:00 and cron at 00:30, each night's run sends everyone in a
    ledger of its own: the ledger of the date before holds last night's, begun after its
    midnight, which this night does not go on in (it would send nobody, and exit 0)."""
    jobs.people(8)
    job = jobs.job(extra=NIGHTLY, name="nightly")
    _ran(job.path, dt.datetime(2026, 11, 24, 0, 30, tzinfo=job.zone))  # last night's
    tonight = dt.datetime(2026, 11, 25, 0, 30, tzinfo=job.zone)
    code, fake = _cron_run(job.path, tonight)
    assert code == 0
    assert sorted(fake.recipient_counts()) == numbers(8)
    assert summarize(load_job(job.path, now=tonight).ledger).recipient_states.sent == 8


@pytest.mark.slow
def test_a_night_begun_after_midnight_leaves_the_next_night_its_own_ledger(
    jobs: JobFactory,
) -> None:
    """A night whose first run came only after midnight (cron's 22:30 missed) is filed under
    the date it began: the next night's run at 22:30 sends everyone, not nobody with exit 0."""
    jobs.people(8)
    job = jobs.job(extra=NIGHTLY, name="nightly")
    late = _ran(job.path, dt.datetime(2026, 11, 24, 0, 30, tzinfo=job.zone))
    assert late.name == "nightly-2026-11-23.jsonl"
    code, fake = _cron_run(job.path, dt.datetime(2026, 11, 24, 22, 30, tzinfo=job.zone))
    assert code == 0
    assert sorted(fake.recipient_counts()) == numbers(8)
