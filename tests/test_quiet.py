"""Quiet hours in the recipient's time zone: groups never mix zones, only open zones are sent,
and a run with only closed zones left exits 4 saying when the next opens."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from msgspec.structs import replace

from bulk_mms.config import SendWindow
from bulk_mms.console import print_dry_run, run_outcome
from bulk_mms.errors import LedgerMismatch
from bulk_mms.models import Group, SendReceipt
from bulk_mms.prepare import dry_run
from bulk_mms.quiet import (
    closes_in,
    hours_problem,
    never_open,
    next_opening,
    open_for,
    opens_before,
    zones_for,
)
from bulk_mms.runner import run_job
from bulk_mms.signals import StopReason
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, ok_receipt

NEW_YORK = [f"+1212555{i:04d}" for i in range(6)]
LOS_ANGELES = [f"+1310555{i:04d}" for i in range(6)]
WINDOW = SendWindow(dt.time(8), dt.time(21))
ONE_TO_HALF_PAST = SendWindow(dt.time(1), dt.time(1, 30))
NY = ("America/New_York",)


def test_a_numbers_zone_comes_from_its_prefix_or_the_column() -> None:
    """212 is New York, 310 Los Angeles; a timezone_column value overrides; 907 spans two."""
    assert zones_for("+12125550100", {}, None) == ("America/New_York",)
    assert zones_for("+13105550100", {"tz": "America/Chicago"}, "tz") == ("America/Chicago",)
    assert zones_for("+13105550100", {"tz": "not a zone"}, "tz") == ("America/Los_Angeles",)
    assert len(zones_for("+19075550100", {}, None)) == 2


def test_windows_open_per_zone_and_the_next_opening_is_found() -> None:
    """At 12:30 UTC it is 7:30 in New York (closed) and 4:30 in Los Angeles (closed); New York
    opens at 13:00 UTC."""
    now = dt.datetime(2026, 11, 25, 12, 30, tzinfo=dt.UTC)
    assert not open_for(WINDOW, ("America/New_York",), now)
    assert next_opening(WINDOW, ("America/New_York",), now) == dt.datetime(
        2026, 11, 25, 13, 0, tzinfo=dt.UTC
    )


@pytest.mark.parametrize(
    ("deadline", "before"), [((15, 58), False), ((16, 0), False), ((16, 1), True)]
)
def test_the_next_opening_is_to_the_minute_and_the_deadline_is_judged_by_it(
    deadline: tuple[int, int], before: bool
) -> None:
    """At 14:31:30 UTC Los Angeles (08:00-21:00) opens at 16:00 UTC, not 16:01 (five-minute
    steps from now): the time a held recipient's run should be scheduled for. A deadline at
    15:58 or 16:00 is not before that opening (no run sends them: exit 1), one at 16:01 is."""
    now = dt.datetime(2026, 11, 3, 14, 31, 30, tzinfo=dt.UTC)
    la = ("America/Los_Angeles",)
    assert next_opening(WINDOW, la, now) == dt.datetime(2026, 11, 3, 16, 0, tzinfo=dt.UTC)
    at = dt.datetime(2026, 11, 3, *deadline, tzinfo=dt.UTC)
    assert opens_before(WINDOW, la, now, at) is before


@pytest.mark.parametrize(("days", "before"), [(1, False), (3, True)])
def test_windows_that_never_meet_open_after_a_deadline_within_the_horizon(
    days: int, before: bool
) -> None:
    """A recipient's window (09:00-12:00 in Honolulu) that never meets the job's send_window
    (09:00-12:00 in New York) has no opening within two days: before a deadline a day away
    it surely does not open (no run sends them: exit 1, not 4); three days away, it cannot
    tell, and says it may."""
    now = dt.datetime(2026, 11, 3, 14, 0, tzinfo=dt.UTC)
    morning = SendWindow(dt.time(9), dt.time(12))
    also = ((morning, NY),)
    honolulu = ("Pacific/Honolulu",)
    assert next_opening(morning, honolulu, now, also) is None
    deadline = now + dt.timedelta(days=days)
    assert opens_before(morning, honolulu, now, deadline, also) is before


@pytest.mark.parametrize(
    ("window", "local", "zones", "minutes"),
    [
        (WINDOW, dt.datetime(2026, 12, 5, 20, 30), NY, 30),
        (WINDOW, dt.datetime(2026, 12, 5, 20, 30), (*NY, "America/Chicago"), 30),
        (SendWindow(dt.time(22), dt.time(6)), dt.datetime(2026, 12, 5, 23), ("UTC",), 420),
        # 01:30 on the night New York's clocks skip 02:00-03:00: shut at the jump, 30 min on
        (SendWindow(dt.time(1), dt.time(2, 30)), dt.datetime(2026, 3, 8, 1, 30), NY, 30),
        # the hour that comes twice: the window ends in the same pass of it as now
        (ONE_TO_HALF_PAST, dt.datetime(2026, 11, 1, 1, 10), NY, 20),
        (ONE_TO_HALF_PAST, dt.datetime(2026, 11, 1, 1, 10, fold=1), NY, 20),
    ],
)
def test_a_window_closes_when_its_end_comes_first_in_any_zone(
    window: SendWindow, local: dt.datetime, zones: tuple[str, ...], minutes: int
) -> None:
    """The time until a window closes is to its end in the first zone to reach it, through a
    midnight and through either daylight-saving change."""
    now = local.replace(tzinfo=ZoneInfo(zones[0])).astimezone(dt.UTC)
    assert closes_in(window, zones, now) == minutes * 60


@pytest.mark.parametrize(
    ("window", "local", "seconds"),
    [
        # "24:00": open to the last instant of the day, closed at midnight
        (SendWindow(dt.time(8), dt.time.max), dt.datetime(2026, 12, 5, 23, 59, 30), 30),
        (SendWindow(dt.time(8), dt.time.max), dt.datetime(2026, 12, 5, 12), 12 * 3600),
        # 01:45 in the first pass of the hour New York repeats: at 02:00 the clocks go back
        # to 01:00, before the window's start, 15 minutes on
        (SendWindow(dt.time(1, 30), dt.time(21)), dt.datetime(2026, 11, 1, 1, 45), 15 * 60),
        # a window the clocks go back inside of stays open through the repeated hour
        (SendWindow(dt.time(0), dt.time(3)), dt.datetime(2026, 11, 1, 1, 50), 130 * 60),
        # closed now: no time at all
        (WINDOW, dt.datetime(2026, 12, 5, 21, 0, 1), 0),
        (WINDOW, dt.datetime(2026, 12, 5, 7, 59), 0),
    ],
)
def test_a_window_closes_at_midnight_when_it_ends_at_24_and_as_the_clocks_go_back(
    window: SendWindow, local: dt.datetime, seconds: int
) -> None:
    """A window ending at 24:00 closes at midnight (not a day later), one whose zone's clocks
    go back to before its start closes as they do, and a window closed now has no time left:
    the time a request is given to leave in never outlasts the window."""
    now = local.replace(tzinfo=ZoneInfo(NY[0])).astimezone(dt.UTC)
    assert closes_in(window, NY, now) == seconds


@pytest.mark.parametrize(
    "local",
    [
        dt.datetime(2026, 12, 5, 23, 59, 30),  # a day's last minute
        dt.datetime(2026, 3, 8, 1, 30),  # before the clocks skip an hour
        dt.datetime(2026, 11, 1, 1, 10),  # in the hour the clocks repeat
    ],
)
def test_a_window_open_all_day_never_closes(local: dt.datetime) -> None:
    """A window from 00:00 to 24:00 opens the next day as it ends this one: it never closes,
    at midnight or as the clocks change (no wait is ever held for it)."""
    now = local.replace(tzinfo=ZoneInfo(NY[0])).astimezone(dt.UTC)
    assert closes_in(SendWindow(dt.time(0), dt.time.max), NY, now) == float("inf")


async def test_recipients_whose_window_opens_after_the_deadline_make_the_run_exit_1(
    jobs: JobFactory,
) -> None:
    """At 14:00 UTC New York is open and Los Angeles is not, and the job's deadline (15:30)
    comes before Los Angeles opens (16:00): New York is sent, and the run exits 1, not 4,
    since no later run can send Los Angeles in time."""
    pairs = zip(NEW_YORK, LOS_ANGELES, strict=True)
    jobs.csv([{"phone": p, "first": "x"} for pair in pairs for p in pair])
    job = jobs.job(
        extra='group_size = 4\nrecipient_window = "08:00-21:00"\n'
        'deadline = "2026-11-25T15:30+00:00"'
    )
    morning = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=FakeClock(wall=morning.timestamp()))
    assert sorted(client.sent_numbers()) == NEW_YORK
    assert (s.stopped, run_outcome(s)) == (StopReason.AFTER_DEADLINE, 1)


@pytest.mark.parametrize(
    ("deadline", "stopped", "code"),
    [
        ("", "quiet_hours", 4),
        ('\ndeadline = "2026-11-25T20:00+00:00"', StopReason.AFTER_DEADLINE, 1),
    ],
)
async def test_held_recipients_wait_for_the_send_window_to_be_open_too(
    jobs: JobFactory, deadline: str, stopped: str, code: int
) -> None:
    """At 14:00 UTC Los Angeles is held for its quiet hours; its window opens at 16:00, when
    the job's send_window (closed 15:30-22:00 UTC) is shut: the run names 22:00, when both
    are open, and with a deadline before then it exits 1, not 4 (no later run sends them)."""
    pairs = zip(NEW_YORK, LOS_ANGELES, strict=True)
    jobs.csv([{"phone": p, "first": "x"} for pair in pairs for p in pair])
    job = jobs.job(
        extra='group_size = 4\nrecipient_window = "08:00-21:00"\nsend_window = "22:00-15:30"'
        + deadline
    )
    morning = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=FakeClock(wall=morning.timestamp()))
    assert sorted(client.sent_numbers()) == NEW_YORK
    assert s.next_opening == dt.datetime(2026, 11, 25, 22, 0, tzinfo=dt.UTC)
    assert (s.stopped, run_outcome(s)) == (stopped, code)


@pytest.mark.parametrize(
    ("new_york", "deadline", "stopped", "code"),
    [
        (4, "", "window", 4),
        (4, '\ndeadline = "2026-11-25T16:30+00:00"', "window", 4),
        (4, '\ndeadline = "2026-11-25T15:30+00:00"', StopReason.AFTER_DEADLINE, 1),
        (12, '\ndeadline = "2026-11-25T15:30+00:00"', "window", 4),
    ],
    ids=["no-deadline", "held-in-time", "held-too-late", "others-in-time"],
)
async def test_a_send_window_closing_mid_run_judges_held_recipients_by_both_windows(
    jobs: JobFactory,
    capsys: pytest.CaptureFixture[str],
    new_york: int,
    deadline: str,
    stopped: str,
    code: int,
) -> None:
    """The send_window (shut 15:00-15:10 UTC) closes mid-run while Los Angeles is held for its
    quiet hours (open from 16:00 UTC): with a deadline at 15:30 the send_window alone opens in
    time, but Los Angeles cannot be sent before it, so the run exits 1, not 4; a New York group
    the close left unsent (sendable at 15:10) keeps it 4; the summary names the held either way."""
    rows = [{"phone": p, "first": "x"} for p in NEW_YORK[:4] + LOS_ANGELES[:4]]
    rows += [{"phone": f"+1212556{i:04d}", "first": "x"} for i in range(new_york - 4)]
    jobs.csv(rows)
    job = jobs.job(
        extra='group_size = 4\nrecipient_window = "08:00-21:00"\nsend_window = "15:10-15:00"'
        + deadline
    )
    start = dt.datetime(2026, 11, 25, 14, 59, 50, tzinfo=dt.UTC)

    async def slow(g: Group, n: int) -> SendReceipt:
        await asyncio.sleep(20)  # the answer comes after 15:00: the window closes meanwhile
        return ok_receipt(g, n)

    settings = replace(FAST, concurrency=2)
    s = await run_job(job, settings, FakeClient(slow), clock=FakeClock(wall=start.timestamp()))
    assert s.sent_recipients == 4  # the rest waited for its answer (its sender's queue)
    assert s.quiet == {"America/Los_Angeles": 4}
    assert s.next_opening == dt.datetime(2026, 11, 25, 16, 0, tzinfo=dt.UTC)
    assert (s.stopped, run_outcome(s)) == (stopped, code)
    assert (
        "4 recipients held for their quiet hours (4 in America/Los_Angeles), the first "
        "sendable at 2026-11-25 16:00 UTC" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("zone", "code"), [("America/New_York", 4), ("Europe/London", 1)], ids=["ny", "london"]
)
async def test_a_group_the_send_window_left_queued_is_judged_by_its_own_window_too(
    jobs: JobFactory, zone: str, code: int
) -> None:
    """The send_window (shut 15:00-15:10 UTC) closes while a second group waits for the one
    worker: with a deadline at 15:30, a New York group (open till 20:05 UTC) can be sent at
    15:10 (exit 4), a London one (closed from 15:05 till 08:00) by no run in time (exit 1)."""
    first = [{"phone": p, "first": "x", "tz": ""} for p in NEW_YORK[:4]]
    second = [{"phone": f"+1718555{i:04d}", "first": "x", "tz": zone} for i in range(4)]
    jobs.csv(first + second)
    job = jobs.job(
        extra='group_size = 4\nrecipient_window = "08:00-15:05"\nsend_window = "15:10-15:00"\n'
        'timezone_column = "tz"\ndeadline = "2026-11-25T15:30+00:00"'
    )
    start = dt.datetime(2026, 11, 25, 14, 59, 50, tzinfo=dt.UTC)

    async def slow(g: Group, n: int) -> SendReceipt:
        await asyncio.sleep(20)  # the answer comes after 15:00: the window closes meanwhile
        return ok_receipt(g, n)

    settings = replace(FAST, concurrency=1)
    client = FakeClient(slow)
    s = await run_job(job, settings, client, clock=FakeClock(wall=start.timestamp()))
    assert sorted(client.sent_numbers()) == NEW_YORK[:4]
    assert (s.quiet, run_outcome(s)) == ({}, code)


async def test_only_the_open_zone_is_sent_and_the_run_exits_4(jobs: JobFactory) -> None:
    """At 14:00 UTC New York (9:00) is open and Los Angeles (6:00) is not: only New York's
    recipients are sent, in groups of their own zone; the run exits 4 naming the next opening;
    a run after it opens sends the rest."""
    pairs = zip(NEW_YORK, LOS_ANGELES, strict=True)
    rows = [{"phone": p, "first": "x"} for pair in pairs for p in pair]
    jobs.csv(rows)
    job = jobs.job(extra='group_size = 4\nrecipient_window = "08:00-21:00"')
    morning = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=FakeClock(wall=morning.timestamp()))
    assert sorted(client.sent_numbers()) == NEW_YORK
    assert all(len({p[:5] for p in g.to}) == 1 for g in client.calls)  # zones never mix
    assert s.stopped == "quiet_hours"
    assert s.next_opening == dt.datetime(2026, 11, 25, 16, 0, tzinfo=dt.UTC)
    assert run_outcome(s) == 4
    later = morning + dt.timedelta(hours=3)
    s2 = await run_job(job, FAST, client, clock=FakeClock(wall=later.timestamp()))
    assert s2.stopped is None
    assert sorted(client.sent_numbers()) == sorted(NEW_YORK + LOS_ANGELES)


async def test_the_dry_run_shows_recipients_per_zone(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dry run with quiet hours lists each zone's recipients and whether it is open."""
    jobs.csv([{"phone": p, "first": "x"} for p in NEW_YORK + LOS_ANGELES])
    job = jobs.job(extra='group_size = 4\nrecipient_window = "08:00-21:00"')
    plan = await dry_run(job, FAST, clock=FakeClock())
    assert plan.zones == {"America/New_York": 6, "America/Los_Angeles": 6}
    print_dry_run(plan, job, FAST)
    out = capsys.readouterr().out
    assert "6 recipients in America/New_York" in out
    assert "6 recipients in America/Los_Angeles" in out


#: The send_window closed 15:30-22:00 UTC, beside the recipients' own window.
_SHUT = 'send_window = "22:00-15:30"'
#: A deadline at 15:30 UTC.
_DEADLINE = 'deadline = "2026-11-25T15:30+00:00"'


@pytest.mark.parametrize(
    ("extra", "hour", "said"),
    [
        (_SHUT, 14, "6 recipients in America/Los_Angeles: opens 2026-11-25 22:00 UTC"),
        (_SHUT, 16, "6 recipients in America/New_York: opens 2026-11-25 22:00 UTC"),
        (
            _DEADLINE,
            14,
            "6 recipients in America/Los_Angeles: opens 2026-11-25 16:00 UTC, after the job's",
        ),
        (_DEADLINE, 14, "deadline     2026-11-25 15:30 UTC: nothing is sent after it"),
        (
            _DEADLINE,
            16,
            "deadline     2026-11-25 15:30 UTC, passed: a run now sends nothing, records",
        ),
        (_DEADLINE, 14, "would send   4 groups, 12 recipients\n"),
        (_DEADLINE, 16, "would send   nothing: the deadline has passed (4 groups, 12 recipients"),
    ],
)
async def test_the_dry_run_says_when_each_zone_can_be_sent_in_time(
    jobs: JobFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: str,
    hour: int,
    said: str,
) -> None:
    """The dry run gives each zone's opening as the first moment both windows are open (with
    the send_window shut 15:30-22:00 UTC: at 14:00 Los Angeles's at 22:00, not 16:00 when only
    its own opens; at 16:00 New York's at 22:00, not "open now" on its own window); with a
    deadline at 15:30 UTC, it says at 14:00 that Los Angeles opens (16:00) only after it, where
    a run exits 1 for it, and names the deadline; at 16:00 that the deadline has passed (a run
    records the rest expired, and it would send nothing), not that a zone is open now."""
    jobs.csv([{"phone": p, "first": "x"} for p in NEW_YORK + LOS_ANGELES])
    job = jobs.job(extra=f'group_size = 4\nrecipient_window = "08:00-21:00"\n{extra}')
    now = dt.datetime(2026, 11, 25, hour, 0, tzinfo=dt.UTC).timestamp()
    monkeypatch.setattr("bulk_mms.console.SystemClock", lambda: FakeClock(wall=now))
    plan = await dry_run(job, FAST, clock=FakeClock(wall=now))
    print_dry_run(plan, job, FAST)
    assert said in capsys.readouterr().out


@pytest.mark.parametrize("zone", ["Pacific Standard Time", "America"])
async def test_a_timezone_value_that_is_not_a_zone_rejects_the_row_not_the_window(
    jobs: JobFactory, zone: str
) -> None:
    """A timezone_column value that names no IANA zone (a Windows name, a folder of zones)
    rejects its row, naming the value: the recipient is never texted by the number's zone
    instead (8:30 in New York is 5:30 where the row says they are)."""
    rows = [
        {"phone": NEW_YORK[0], "first": "x", "tz": zone},
        {"phone": NEW_YORK[1], "first": "x", "tz": "America/New_York"},
        {"phone": NEW_YORK[2], "first": "x", "tz": ""},
    ]
    jobs.csv(rows)
    job = jobs.job(
        extra='group_size = 1\nrecipient_window = "08:00-21:00"\ntimezone_column = "tz"\n'
        "max_rejected_share = 0.5"
    )
    morning = dt.datetime(2026, 11, 25, 8, 30, tzinfo=ZoneInfo("America/New_York"))
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=FakeClock(wall=morning.timestamp()))
    assert sorted(client.sent_numbers()) == NEW_YORK[1:3]
    assert s.rejected_rows == 1
    rejected = [e for e in ledger_events(job.ledger) if e["event"] == "rejected"]
    assert [(e["line"], e["reason"].split(":")[0]) for e in rejected] == [(2, "unknown time zone")]
    assert repr(zone) in rejected[0]["reason"]


def test_zones_that_share_no_hour_of_the_window_are_never_open() -> None:
    """A toll-free number's 42 zones (Guam to Pago Pago) share no hour of 09:00-18:00 in any
    season, but do of 08:00-21:00; a one-zone number or a column's zone is never refused."""
    toll_free = zones_for("+18005550100", {}, None)
    assert len(toll_free) > 40
    assert never_open(SendWindow(dt.time(9), dt.time(18)), toll_free)
    assert not never_open(WINDOW, toll_free)
    narrow = SendWindow(dt.time(9), dt.time(18))
    reason = hours_problem(narrow, "+18005550100", {}, None)
    assert reason is not None
    assert reason.startswith("no common hours: its 42 time zones (America/Adak to Pacific/Saipan)")
    assert "in winter or in summer" in reason
    assert hours_problem(narrow, "+18005550100", {"tz": "America/Chicago"}, "tz") is None
    assert hours_problem(narrow, NEW_YORK[0], {}, None) is None


def test_est_in_a_row_is_kept_by_new_yorks_clock_too() -> None:
    """A row whose zone is "EST" (a fixed -05:00 that people write for New York) is open only
    when both clocks are: at 21:30 New York daylight time (20:30 EST) it is closed, where EST
    alone would text the recipient after 21:00."""
    zones = zones_for(NEW_YORK[0], {"tz": "EST"}, "tz")
    assert zones == ("America/New_York", "EST")
    late = dt.datetime(2026, 7, 1, 21, 30, tzinfo=ZoneInfo("America/New_York"))
    assert open_for(WINDOW, ("EST",), late)
    assert not open_for(WINDOW, zones, late)
    assert zones_for(NEW_YORK[0], {"tz": "MST"}, "tz") == ("America/Denver", "MST")


async def test_a_number_whose_zones_never_share_the_window_is_rejected_not_held(
    jobs: JobFactory,
) -> None:
    """A toll-free recipient under a 09:00-18:00 recipient_window is rejected as its row is
    read, naming why: the run sends the rest and exits as done, where before every run held it
    and exited 4 ("no overlap within two days")."""
    rows = [{"phone": p, "first": "x"} for p in [*NEW_YORK[:2], "+18005550100"]]
    jobs.csv(rows)
    job = jobs.job(
        extra='group_size = 1\nrecipient_window = "09:00-18:00"\nmax_rejected_share = 0.5'
    )
    noon = dt.datetime(2026, 11, 25, 12, 0, tzinfo=ZoneInfo("America/New_York"))
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=FakeClock(wall=noon.timestamp()))
    assert sorted(client.sent_numbers()) == NEW_YORK[:2]
    assert (s.rejected_rows, s.held_groups, s.stopped) == (1, 0, None)
    rejected = [e for e in ledger_events(job.ledger) if e["event"] == "rejected"]
    assert [(e["line"], e["reason"].split(":")[0]) for e in rejected] == [(4, "no common hours")]


async def test_a_timezone_column_added_mid_campaign_is_refused_not_regrouped(
    jobs: JobFactory,
) -> None:
    """With quiet hours, the timezone_column decides each recipient's zone and so the groups:
    a ledger begun without it refuses a run with it (exit 2, nothing sent), instead of
    regrouping and texting people already sent a second time."""
    rows = [
        {"phone": p, "first": "x", "tz": "America/Chicago" if i % 2 else ""}
        for i, p in enumerate(NEW_YORK)
    ]
    jobs.csv(rows)
    noon = FakeClock(wall=dt.datetime(2026, 11, 25, 17, 0, tzinfo=dt.UTC).timestamp())
    client = FakeClient()
    window = 'group_size = 2\nrecipient_window = "08:00-21:00"'
    await run_job(jobs.job(extra=window), FAST, client, clock=noon, limit=2)
    sent = list(client.sent_numbers())
    with pytest.raises(LedgerMismatch, match="zones came from the number, now from column 'tz'"):
        await run_job(jobs.job(extra=f'{window}\ntimezone_column = "tz"'), FAST, client, clock=noon)
    assert client.sent_numbers() == sent


def _as_begun_before_zones_were_kept(ledger: Path) -> None:
    """Rewrite the ledger's header as a bulk-mms that did not keep where zones come from
    wrote it."""
    first, *rest = ledger.read_text(encoding="utf-8").splitlines(keepends=True)
    header = orjson.loads(first)
    del header["zones"]
    ledger.write_text(orjson.dumps(header).decode() + "\n" + "".join(rest), encoding="utf-8")


async def test_a_ledger_from_before_zones_were_kept_is_refused_when_rows_would_regroup(
    jobs: JobFactory,
) -> None:
    """A ledger whose header does not say where zones came from (begun by an earlier
    bulk-mms, which grouped a row whose timezone_column names no zone by its number) is not
    resumed when the input has such rows: their rejection would regroup the rest."""
    rows = [
        {"phone": p, "first": "x", "tz": "Eastern Standard Time" if i == 0 else ""}
        for i, p in enumerate(NEW_YORK)
    ]
    jobs.csv(rows)
    noon = FakeClock(wall=dt.datetime(2026, 11, 25, 17, 0, tzinfo=dt.UTC).timestamp())
    job = jobs.job(
        extra='group_size = 2\nrecipient_window = "08:00-21:00"\ntimezone_column = "tz"\n'
        "max_rejected_share = 0.5"
    )
    client = FakeClient()
    await run_job(job, FAST, client, clock=noon, limit=1)
    _as_begun_before_zones_were_kept(job.ledger)
    with pytest.raises(LedgerMismatch, match="finish this ledger with the bulk-mms that began"):
        await run_job(job, FAST, client, clock=noon)
    assert len(client.calls) == 1


async def test_a_ledger_from_before_never_open_rows_were_rejected_is_refused_with_group_by(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger begun by a bulk-mms that grouped a never-open number (a toll-free one) with
    its group_by key's other rows is not resumed: rejecting it now would shift the key's later
    chunks, and a member already sent in one of them would be texted again."""
    phones = [*NEW_YORK[:3], "+18005550100", *NEW_YORK[3:]]
    jobs.csv([{"phone": p, "first": "x", "fam": "f"} for p in phones])
    noon = FakeClock(wall=dt.datetime(2026, 11, 25, 17, 0, tzinfo=dt.UTC).timestamp())
    job = jobs.job(
        extra='group_size = 3\ngroup_by = "fam"\nrecipient_window = "09:00-18:00"\n'
        "max_rejected_share = 0.5"
    )
    client = FakeClient()
    with monkeypatch.context() as old:  # the bulk-mms that kept such rows, held forever
        old.setattr("bulk_mms.grouping.hours_problem", lambda *a: None)
        await run_job(job, FAST, client, clock=noon)
    assert sorted(client.sent_numbers()) == sorted([*NEW_YORK[:3], NEW_YORK[5]])
    _as_begun_before_zones_were_kept(job.ledger)
    with pytest.raises(LedgerMismatch, match="finish this ledger with the bulk-mms that began"):
        await run_job(job, FAST, client, clock=noon)
    assert sorted(client.sent_numbers()) == sorted([*NEW_YORK[:3], NEW_YORK[5]])
