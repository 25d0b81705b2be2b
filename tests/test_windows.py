"""Never past the deadline nor outside a window, on any try, and never held for a window that
cannot open: a run outside its send_window past the deadline settles what is left as expired
(exit 1, not 4), and a group_by group whose members share no hour of the recipient_window is
rejected as the input is scanned; what a run's end leaves for its windows, judged alone
(injected clock)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from bulk_mms.cli import main
from bulk_mms.config import JobConfig, SendWindow
from bulk_mms.console import run_outcome
from bulk_mms.errors import (
    AmbiguousSendError,
    ApiError,
    LedgerMismatch,
    NetworkError,
    RateLimited,
    Rejected,
    SendError,
    ServerError,
)
from bulk_mms.ledger import Location, RecipientCounts, load, named
from bulk_mms.models import Group, RecipientStatus, SendReceipt
from bulk_mms.prepare import dry_run
from bulk_mms.quiet import closes_in, open_for
from bulk_mms.recipient_lists import write_failed_csv
from bulk_mms.report import format_text, summarize
from bulk_mms.runner import run_job
from bulk_mms.scan import scan_input
from bulk_mms.signals import StopReason
from bulk_mms.summary import JobSummary
from bulk_mms.suppression import Suppressed
from bulk_mms.testing import ledger_events
from bulk_mms.track import track_ledger
from bulk_mms.windows import held_for_windows
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, ok_receipt

UTC = dt.UTC
MORNING = dt.datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
EVENING = dt.datetime(2026, 11, 24, 19, 0, tzinfo=UTC)
WINDOW = 'timezone = "UTC"\nsend_window = "09:00-17:00"\ngroup_size = 4\n'


def clock_at(when: dt.datetime) -> FakeClock:
    return FakeClock(wall=when.timestamp())


def expired_codes(ledger: Location) -> list[object]:
    return [e.get("code") for e in ledger_events(ledger) if e["event"] == "failed"]


@pytest.mark.parametrize(
    "deadline", ['deadline = "2026-11-24T12:00+00:00"', "max_age_s = 3600"], ids=["at", "age"]
)
async def test_a_run_outside_the_window_past_the_deadline_records_the_rest_expired(
    jobs: JobFactory, deadline: str
) -> None:
    """Started outside its send_window after the deadline (a set time, or max_age_s after the
    campaign began), a run sends nothing, records what is left expired_unsent and exits 1 at
    once, instead of exiting 4 ("try later") for a later run that can never send it."""
    jobs.people(8)
    job = jobs.job(extra=WINDOW + deadline)
    first = await run_job(job, FAST, FakeClient(), clock=clock_at(MORNING), limit=1)
    assert first.sent_groups == 1
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=clock_at(EVENING))
    assert (client.calls, s.stopped, s.expired_groups) == ([], None, 1)
    assert run_outcome(s) == 1
    assert expired_codes(job.ledger) == ["expired_unsent"]


async def test_outside_the_window_past_max_age_on_postgres_the_rest_is_expired(
    jobs: JobFactory, database: str
) -> None:
    """On a PostgreSQL ledger too, a run outside its send_window past max_age_s after the
    campaign began records what is left expired (exit 1), reading the ledger's header."""
    jobs.people(8)
    job = jobs.job(extra=WINDOW + "max_age_s = 3600")
    job = replace(job, database=str(named(database, job.name)))
    await run_job(job, FAST, FakeClient(), clock=clock_at(MORNING), limit=1)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=clock_at(EVENING))
    assert (client.calls, s.stopped, s.expired_groups, run_outcome(s)) == ([], None, 1, 1)


async def test_the_reports_failed_row_does_not_promise_the_expired_to_failed_csv(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """The report's table says the recipients the deadline left unsent are not in
    --failed-csv (which leaves them out), rather than "(final: in --failed-csv)"."""
    jobs.people(8)
    job = jobs.job(extra=WINDOW + 'deadline = "2026-11-24T12:00+00:00"')
    await run_job(job, FAST, FakeClient(), clock=clock_at(MORNING), limit=1)
    await run_job(job, FAST, FakeClient(), clock=clock_at(EVENING))
    s = summarize(job.ledger)
    (failed,) = [x for x in format_text(s, job.ledger).splitlines() if x.startswith("failed ")]
    assert failed.endswith("4  (final: past the job's deadline, not in --failed-csv)")
    assert write_failed_csv(s, tmp_path / "failed.csv")[0] == 0
    assert s.expired_left_out == 4


@pytest.mark.looptime(True)  # a group every 2 s until a deadline 10 s away
async def test_two_processes_on_postgres_send_nothing_past_the_deadline(
    jobs: JobFactory, database: str
) -> None:
    """Two runs sharing a PostgreSQL ledger, paced at a group every 2 seconds with the
    deadline 10 seconds away (of the loop's time, which the database's real waits move on too;
    the shared rate runs on the database's clock, so how many leave first varies with the
    server's speed): no request of either leaves after it, and every group is sent once or
    recorded expired_unsent once (by the one process that holds it), never once a process."""
    jobs.people(40)
    deadline = MORNING + dt.timedelta(seconds=10)
    extra = f'group_size = 4\ntimezone = "UTC"\ndeadline = "{deadline.isoformat()}"'
    job = replace(jobs.job(extra=extra), database=f"{database}?ledger=shared")
    clock = clock_at(MORNING)
    left: list[float] = []

    def answer(g: Group, n: int) -> SendReceipt:
        left.append(clock.wall())
        return ok_receipt(g, n)

    settings = replace(FAST, rate=0.5, concurrency=2)
    runs = await asyncio.gather(
        *(run_job(job, settings, FakeClient(answer), clock=clock) for _ in range(2))
    )
    assert all(t <= deadline.timestamp() for t in left)
    states = Counter(rec.state for rec in load(job.where).groups.values())
    assert states == Counter({"sent": len(left), "failed": 10 - len(left)})
    assert sum(r.sent_groups for r in runs) == len(left)
    assert sum(r.expired_groups for r in runs) == 10 - len(left)
    expired = [e for e in ledger_events(job.where) if e.get("code") == "expired_unsent"]
    assert len(expired) == 10 - len(left)


async def test_two_processes_started_past_the_deadline_record_each_group_expired_once(
    jobs: JobFactory, database: str
) -> None:
    """Two runs started after the deadline on one PostgreSQL ledger (cron on two hosts):
    each group is recorded expired_unsent once, by the process that claims it, and the runs'
    counts add up to the groups, not to twice as many."""
    jobs.people(40)
    job = jobs.job(extra='group_size = 4\ntimezone = "UTC"\ndeadline = "2026-11-24T09:00+00:00"')
    job = replace(job, database=f"{database}?ledger=late")
    client = FakeClient()
    runs = await asyncio.gather(
        *(run_job(job, FAST, client, clock=clock_at(MORNING)) for _ in range(2))
    )
    assert client.calls == []
    expired = [e for e in ledger_events(job.where) if e.get("code") == "expired_unsent"]
    assert len(expired) == 10
    assert sum(r.expired_groups for r in runs) == 10


async def test_outside_the_window_before_the_deadline_a_run_still_waits_for_it(
    jobs: JobFactory,
) -> None:
    """Outside its send_window with the deadline still ahead, a run sends nothing, records
    nothing and exits 4: the next run inside the window sends the rest."""
    jobs.people(8)
    job = jobs.job(extra=WINDOW + 'deadline = "2026-11-25T12:00+00:00"')
    await run_job(job, FAST, FakeClient(), clock=clock_at(MORNING), limit=1)
    before = ledger_events(job.ledger)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=clock_at(EVENING))
    assert (client.calls, s.stopped, s.expired_groups) == ([], "window", 0)
    assert run_outcome(s) == 4
    assert ledger_events(job.ledger) == before


@pytest.mark.parametrize(
    "deadline", ['deadline = "2026-11-25T08:00+00:00"', "max_age_s = 43200"], ids=["at", "age"]
)
async def test_outside_a_window_that_opens_only_after_the_deadline_a_run_exits_1(
    jobs: JobFactory, deadline: str
) -> None:
    """Outside its send_window with the deadline still ahead but before the window opens again
    (a set time, or max_age_s after the campaign began), a run sends nothing and records
    nothing (a wider window or a later deadline can still send them), and exits 1, not 4: no
    run inside the window can send them in time."""
    jobs.people(8)
    job = jobs.job(extra=WINDOW + deadline)
    await run_job(job, FAST, FakeClient(), clock=clock_at(MORNING), limit=1)
    before = ledger_events(job.ledger)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=clock_at(EVENING))
    assert (client.calls, s.stopped, s.expired_groups) == ([], StopReason.AFTER_DEADLINE, 0)
    assert run_outcome(s) == 1
    assert ledger_events(job.ledger) == before


@pytest.mark.parametrize("deadline_in_min", [None, 30, -60], ids=["none", "ahead", "past"])
def test_the_dry_run_says_the_exit_a_run_outside_its_window_gives(
    jobs: JobFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    deadline_in_min: int | None,
) -> None:
    """Outside its send_window (it opens in an hour or more), --dry-run's window line names
    the exit code a run then gives: 4 without a deadline; 1 with the deadline before the
    window opens, or past (it records what is left expired), as a run at the same moment."""
    monkeypatch.delenv("TELNYX_API_KEY", raising=False)
    now = dt.datetime.now(UTC)
    opens = (now.hour + 2) % 24
    extra = f'timezone = "UTC"\nsend_window = "{opens:02d}:00-{opens:02d}:30"\ngroup_size = 4'
    if deadline_in_min is not None:
        deadline = now + dt.timedelta(minutes=deadline_in_min)
        extra += f'\ndeadline = "{deadline:%Y-%m-%dT%H:%M}+00:00"'
    jobs.people(8)
    job = jobs.job(extra=extra)
    assert main(["run", str(job.path), "--dry-run"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("  window ")]
    s = asyncio.run(run_job(job, FAST, FakeClient(), clock=clock_at(now)))
    assert line.endswith(f"exits {run_outcome(s)}")
    assert run_outcome(s) == (4 if deadline_in_min is None else 1)


async def test_outside_the_window_past_the_deadline_a_group_in_doubt_is_never_resent(
    jobs: JobFactory,
) -> None:
    """A group left in doubt, whose API records (complete two days on) show it never accepted,
    is not sent again by a run outside the window past the deadline: it is recorded
    expired_unsent and the run exits 1."""
    jobs.people(4)
    job = jobs.job(extra=WINDOW + 'deadline = "2026-11-24T12:00+00:00"')

    def dropped(g: Group, n: int) -> SendReceipt:
        raise AmbiguousSendError("dropped")

    settings = replace(FAST, retry=replace(FAST.retry, retry_ambiguous=False))
    first = await run_job(job, settings, FakeClient(dropped), clock=clock_at(MORNING))
    assert first.in_doubt_groups == 1
    later = clock_at(EVENING + dt.timedelta(days=2))
    client = FakeClient(wall=later.wall)
    s = await run_job(job, FAST, client, clock=later)
    assert (client.calls, s.stopped, s.expired_groups) == ([], None, 1)
    assert run_outcome(s) == 1
    assert expired_codes(job.ledger) == ["not_accepted", "expired_unsent"]


# -- a group_by group whose members share no hour -----------------------------------------

APART = "no common hours in its group"
NY, GUAM = "America/New_York", "Pacific/Guam"
HOUSEHOLDS = 'group_by = "fam"\nrecipient_window = "09:00-17:00"\ntimezone_column = "tz"\n'


def household_rows(*members: tuple[str, str]) -> list[dict[str, str]]:
    """One row per (household, zone), each with its own New York number."""
    return [
        {"phone": f"+1212555{i:04d}", "first": "x", "fam": fam, "tz": tz}
        for i, (fam, tz) in enumerate(members)
    ]


NOON_NY = dt.datetime(2026, 11, 25, 12, 0, tzinfo=ZoneInfo(NY))


async def test_a_household_whose_members_share_no_hour_is_rejected_not_held_forever(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A group_by household with one member in Guam and one in New York shares no hour of a
    09:00-17:00 recipient_window: its rows are rejected with a reason naming their lines and
    the remedy, counted alike by the scan, the dry run, the run and the report; the rest is
    sent and the run exits 0, where every run used to hold it and exit 4."""
    jobs.csv(household_rows(("a", NY), ("b", NY), ("a", GUAM), ("b", NY)))
    job = jobs.job(extra=HOUSEHOLDS + "max_rejected_share = 0.5")
    scan = scan_input(job, rejected_csv=tmp_path / "rejected.csv")
    assert (scan.recipients, dict(scan.lost)) == (2, {APART: 2})
    listed = (tmp_path / "rejected.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in listed] == ["2", "4"]
    clock = clock_at(NOON_NY)
    dry = await dry_run(job, FAST, clock=clock)
    assert (dry.sent_groups, dry.sent_recipients, dry.rejected_rows) == (1, 2, 2)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=clock)
    assert sorted(client.sent_numbers()) == ["+12125550001", "+12125550003"]
    assert (s.rejected_rows, s.held_groups, s.stopped, s.quiet) == (2, 0, None, {})
    assert run_outcome(s) == 0
    rejected = [e for e in ledger_events(job.ledger) if e["event"] == "rejected"]
    assert [e["line"] for e in rejected] == [2, 4]
    reason = rejected[0]["reason"]
    assert reason.startswith(APART + ":")
    for words in ("lines 2 and 4", GUAM, NY, "'fam'", "09:00-17:00"):
        assert words in reason
    report = summarize(job.ledger)
    assert report.rows.rejected == {APART: 2}
    assert report.recipient_states.valid == 2
    again = await run_job(job, FAST, client, clock=clock)
    assert (again.sent_groups, again.skipped_groups, len(client.calls)) == (0, 1, 1)
    assert sum(e["event"] == "rejected" for e in ledger_events(job.ledger)) == 2


async def test_only_the_chunk_that_shares_no_hour_is_rejected_and_the_rest_keep_their_groups(
    jobs: JobFactory,
) -> None:
    """A household of four in chunks of two: the first chunk (New York and Guam) is rejected,
    the second (two in New York) is sent as the same group it was before, and the scan's and
    the plan's counts agree."""
    jobs.csv(household_rows(("a", NY), ("a", GUAM), ("a", NY), ("a", NY)))
    job = jobs.job(extra=HOUSEHOLDS + "group_size = 2\nmax_rejected_share = 0.5")
    scan = scan_input(job)
    assert (scan.recipients, scan.lost_rows) == (2, 2)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=clock_at(NOON_NY))
    assert [g.to for g in client.calls] == [("+12125550002", "+12125550003")]
    assert [g.lines for g in client.calls] == [(4, 5)]
    assert (s.rejected_rows, s.sent_recipients) == (2, 2)
    planned = [e for e in ledger_events(job.ledger) if e["event"] == "planned"]
    assert planned[-1]["recipients"] == scan.recipients
    assert planned[-1]["rejected"] == scan.lost_rows


async def test_a_household_whose_far_member_opted_out_is_sent_to_the_rest(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A household of New York and Guam whose Guam member is on the suppression list is sent
    to its New York member (its group is made without the listed one, so its hours are New
    York's): nobody in it is rejected for sharing no hour, and the listed member is counted
    as suppressed."""
    jobs.csv(household_rows(("a", NY), ("b", NY), ("a", GUAM), ("b", NY)))
    job = jobs.job(extra=HOUSEHOLDS)
    Suppressed(tmp_path / "suppressed.txt").add(["+12125550002"], "test")
    settings = replace(FAST, suppression_file=tmp_path / "suppressed.txt")
    client = FakeClient()
    s = await run_job(job, settings, client, clock=clock_at(NOON_NY))
    assert sorted(client.sent_numbers()) == ["+12125550000", "+12125550001", "+12125550003"]
    assert (s.rejected_rows, s.suppressed_rows, s.held_groups) == (0, 1, 0)
    assert run_outcome(s) == 0


async def run_as_before(
    job: JobConfig, client: FakeClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> JobSummary:
    """A run of ``job`` by the bulk-mms that held a household sharing no hour (it never
    rejected one, waiting for an hour that never came)."""
    with monkeypatch.context() as old:
        old.setattr("bulk_mms.grouping.never_open", lambda *a: False)
        return await run_job(job, FAST, client, clock=clock)


async def test_a_ledger_that_held_a_household_sharing_no_hour_resumes_and_rejects_it(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger of a bulk-mms that held such a household (every run exiting 4) resumes: the
    household's rows are recorded rejected, nobody sent is texted again, and the run exits 0."""
    jobs.csv(household_rows(("a", NY), ("b", NY), ("a", GUAM), ("b", NY)))
    job = jobs.job(extra=HOUSEHOLDS + "max_rejected_share = 0.5")
    client = FakeClient()
    clock = clock_at(NOON_NY)
    held = await run_as_before(job, client, clock, monkeypatch)
    assert (held.stopped, run_outcome(held)) == ("quiet_hours", 4)
    s = await run_job(job, FAST, client, clock=clock)
    assert (s.rejected_rows, s.skipped_groups, s.stopped, len(client.calls)) == (2, 1, None, 1)
    assert run_outcome(s) == 0


async def test_a_household_a_ledger_already_sent_is_left_to_the_ledger_not_rejected(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A household sharing no hour in winter that an earlier bulk-mms sent (in a season it was
    open) is not recorded rejected on resume: the ledger says it is sent, and it is skipped,
    never sent again."""
    jobs.csv(household_rows(("a", NY), ("b", NY), ("a", GUAM), ("b", NY)))
    job = jobs.job(extra=HOUSEHOLDS + "max_rejected_share = 0.5")
    client = FakeClient()
    clock = clock_at(NOON_NY)
    with monkeypatch.context() as old:  # the bulk-mms that sent it, while it was open
        old.setattr("bulk_mms.grouping.never_open", lambda *a: False)
        old.setattr("bulk_mms.gates.open_for", lambda *a: True)
        old.setattr("bulk_mms.send_gates.open_for", lambda *a: True)
        old.setattr("bulk_mms.send_gates.closes_in", lambda *a: 3600.0)
        first = await run_job(job, FAST, client, clock=clock)
    assert first.sent_groups == 2
    s = await run_job(job, FAST, client, clock=clock)
    assert (s.rejected_rows, s.skipped_groups, len(client.calls)) == (0, 2, 2)
    assert not [e for e in ledger_events(job.ledger) if e["event"] == "rejected"]
    assert run_outcome(s) == 0


# -- a person in two households: sent once, with the first that can be sent -----------------

P, G1, G2, Y, M = "+12125550100", "+12125550101", "+12125550102", "+12125550103", "+12125550104"


def rows_of(*members: tuple[str, str, str]) -> list[dict[str, str]]:
    """One row per (number, household, zone)."""
    return [{"phone": p, "first": "x", "fam": fam, "tz": tz} for p, fam, tz in members]


@pytest.mark.parametrize(
    "members",
    [
        [(P, "a", NY), (G1, "a", GUAM), (Y, "b", NY), (P, "b", NY)],
        # household a is still open when P's row in b is read
        [(P, "a", NY), (Y, "b", NY), (P, "b", NY), (G1, "a", GUAM)],
    ],
    ids=["a-closed-first", "a-open"],
)
async def test_a_person_whose_first_household_shares_no_hour_is_sent_with_the_next(
    jobs: JobFactory, tmp_path: Path, members: list[tuple[str, str, str]]
) -> None:
    """A person in two households, the first rejected for sharing no hour, is sent with the
    second (not called a duplicate of a row never sent), and every pass counts alike: the
    scan, its --rejected-csv, the dry run, the run, the report, a resume."""
    jobs.csv(rows_of(*members))
    job = jobs.job(extra=HOUSEHOLDS + "max_rejected_share = 0.5")
    apart = [i + 2 for i, (_, fam, _) in enumerate(members) if fam == "a"]
    scan = scan_input(job, rejected_csv=tmp_path / "rejected.csv")
    assert (scan.recipients, scan.duplicates, dict(scan.lost)) == (2, 0, {APART: 2})
    listed = (tmp_path / "rejected.csv").read_text().splitlines()[1:]
    assert sorted(int(row.split(",")[0]) for row in listed) == apart
    clock = clock_at(NOON_NY)
    dry = await dry_run(job, FAST, clock=clock)
    counts = (dry.sent_groups, dry.sent_recipients, dry.rejected_rows, dry.duplicate_rows)
    assert counts == (1, 2, 2, 0)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=clock)
    assert [set(g.to) for g in client.calls] == [{Y, P}]
    counts = (s.sent_recipients, s.rejected_rows, s.duplicate_rows, s.held_groups)
    assert counts == (2, 2, 0, 0)
    assert run_outcome(s) == 0
    rejected = [e["line"] for e in ledger_events(job.ledger) if e["event"] == "rejected"]
    assert sorted(rejected) == apart
    report = summarize(job.ledger)
    assert report.rows.rejected == {APART: 2}
    assert report.recipient_states.valid == 2
    again = await run_job(job, FAST, client, clock=clock)
    assert (again.sent_groups, again.skipped_groups, len(client.calls)) == (0, 1, 1)
    assert (again.rejected_rows, again.duplicate_rows) == (2, 0)


async def test_a_person_is_sent_with_the_first_household_of_several_that_can_be_sent(
    jobs: JobFactory,
) -> None:
    """A person in three households, the first two sharing no hour (the second only once
    they join it), is sent once, with the third; the rows of the two are lost, none is a
    duplicate, and the scan and the run agree."""
    a, b, c = [(P, "a", NY), (G1, "a", GUAM)], [(P, "b", NY), (G2, "b", GUAM)], [(M, "c", NY)]
    jobs.csv(rows_of(*a, *b, *c, (P, "c", NY)))
    job = jobs.job(extra=HOUSEHOLDS + "max_rejected_share = 0.7")
    scan = scan_input(job)
    assert (scan.recipients, scan.duplicates, dict(scan.lost)) == (2, 0, {APART: 4})
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=clock_at(NOON_NY))
    assert [set(g.to) for g in client.calls] == [{M, P}]
    assert (s.sent_recipients, s.rejected_rows, s.duplicate_rows) == (2, 4, 0)
    dry = await dry_run(job, FAST, clock=clock_at(NOON_NY))
    assert (dry.skipped_groups, dry.rejected_rows, dry.duplicate_rows) == (1, 4, 0)


async def test_a_person_whose_first_household_is_sent_is_a_duplicate_in_the_next(
    jobs: JobFactory,
) -> None:
    """A person in two households, the first of which can be sent, goes out with the first;
    their row in the second is counted a duplicate, by the scan, the dry run and the run."""
    jobs.csv(rows_of((P, "a", NY), (G1, "a", NY), (Y, "b", NY), (P, "b", NY)))
    job = jobs.job(extra=HOUSEHOLDS)
    scan = scan_input(job)
    assert (scan.recipients, scan.duplicates, scan.lost_rows) == (3, 1, 0)
    dry = await dry_run(job, FAST, clock=clock_at(NOON_NY))
    assert (dry.sent_groups, dry.sent_recipients, dry.duplicate_rows) == (2, 3, 1)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=clock_at(NOON_NY))
    assert [set(g.to) for g in client.calls] == [{P, G1}, {Y}]
    assert (s.rejected_rows, s.duplicate_rows) == (0, 1)


async def test_a_ledger_that_took_a_persons_next_row_for_a_duplicate_is_not_resumed(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger begun by a bulk-mms that held a household sharing no hour, and sent its
    member's next household without them (their row there a duplicate), is not resumed: this
    one would send that household again with them, texting the others twice."""
    jobs.csv(rows_of((P, "a", NY), (G1, "a", GUAM), (Y, "b", NY), (P, "b", NY)))
    job = jobs.job(extra=HOUSEHOLDS + "max_rejected_share = 0.5")
    client = FakeClient()
    clock = clock_at(NOON_NY)
    held = await run_as_before(job, client, clock, monkeypatch)
    assert ([g.to for g in client.calls], held.stopped) == ([(Y,)], "quiet_hours")
    first, *rest = job.ledger.read_text(encoding="utf-8").splitlines(keepends=True)
    header = orjson.loads(first)
    assert header.pop("rejoins") is True
    job.ledger.write_text(orjson.dumps(header).decode() + "\n" + "".join(rest), encoding="utf-8")
    with pytest.raises(LedgerMismatch, match="sends them with their next group"):
        await dry_run(job, FAST, clock=clock)
    with pytest.raises(LedgerMismatch, match="finish this ledger with the bulk-mms that began"):
        await run_job(job, FAST, client, clock=clock)
    assert [g.to for g in client.calls] == [(Y,)]


# -- the time a request has to leave in never outlasts a window, DST days included ----------

_ZONES = ["America/New_York", "Europe/London", "Australia/Lord_Howe", "Pacific/Guam", "UTC"]
#: Days around every change of these zones' clocks in 2026 (and ordinary ones).
_DAYS = [
    dt.datetime(2026, 3, 8, tzinfo=UTC),
    dt.datetime(2026, 3, 29, tzinfo=UTC),
    dt.datetime(2026, 4, 5, tzinfo=UTC),
    dt.datetime(2026, 10, 4, tzinfo=UTC),
    dt.datetime(2026, 10, 25, tzinfo=UTC),
    dt.datetime(2026, 11, 1, tzinfo=UTC),
    dt.datetime(2026, 7, 15, tzinfo=UTC),
]


@settings(max_examples=300, deadline=None)
@given(
    day=st.sampled_from(_DAYS),
    offset=st.integers(-36 * 60, 36 * 60),
    start=st.integers(0, 47),
    length=st.integers(1, 47),
    zones=st.lists(st.sampled_from(_ZONES), min_size=1, max_size=2, unique=True),
)
# 01:30-01:00 in London the night its clocks skip 01:00-02:00: the half hour the window is
# shut falls in the hour that never comes, so it never shuts; closes_in gives the jump
@example(day=_DAYS[1], offset=0, start=3, length=47, zones=["America/New_York", "Europe/London"])
def test_a_window_stays_open_for_all_the_time_closes_in_gives(
    day: dt.datetime, offset: int, start: int, length: int, zones: list[str]
) -> None:
    """For any instant near a change of the clocks, any half-hour-edged window (across
    midnight too) and one or two zones: the window is open in every zone at each minute of
    the time :func:`closes_in` gives a request to leave in, so no request given that time
    leaves outside it (and a closed window gives none)."""
    begin = dt.time(start // 2, 30 * (start % 2))
    end_slot = (start + length) % 48
    end = dt.time(end_slot // 2, 30 * (end_slot % 2))
    assume(begin != end)
    window = SendWindow(begin, end)
    now = day + dt.timedelta(minutes=offset, seconds=17)
    left = closes_in(window, zones, now)
    assert (left > 0) == open_for(window, zones, now)
    t = 0.0
    while t < min(left, 2 * 86_400):
        assert open_for(window, zones, now + dt.timedelta(seconds=t))
        t += 60.0
    if 0 < left < 2 * 86_400:  # just before it closes: still open; at it: closed somewhere,
        # or a zone's clocks jump there (a window shut only in the skipped hour: never shut)
        at = now + dt.timedelta(seconds=left)
        assert open_for(window, zones, at - dt.timedelta(seconds=1))
        jumps = any(
            (at - dt.timedelta(seconds=1)).astimezone(ZoneInfo(z)).utcoffset()
            != at.astimezone(ZoneInfo(z)).utcoffset()
            for z in zones
        )
        assert jumps or not open_for(window, zones, at)


# -- every path a message can leave by, checked against the gates -----------------------------


@pytest.mark.parametrize(
    ("extra", "stopped", "expired"),
    [
        ('deadline = "2026-11-24T10:30+00:00"', None, 1),
        ('send_window = "09:00-10:30"', "window", 0),
        ('recipient_window = "09:00-10:30"\ntimezone_column = "tz"', "quiet_hours", 0),
    ],
)
@pytest.mark.parametrize(
    "error",
    [
        RateLimited("slow", retry_after=5.0),
        ServerError("busy", status=503),
        NetworkError("refused"),
    ],
    ids=["429", "503", "network"],
)
@pytest.mark.usefixtures("off_loop_work_on_the_loop")
async def test_a_wall_clock_jumping_past_a_gate_during_a_retry_wait_sends_nothing_more(
    jobs: JobFactory, extra: str, stopped: str | None, expired: int, error: SendError
) -> None:
    """The wall clock jumps an hour forward (a VM resumed, NTP) while the first try's 429, 503
    or connection error waits to be retried: the deadline, the send_window or the recipients'
    window has passed by then, and no retry leaves (the group expires, or waits for the next
    window)."""
    jobs.people(4, tz="UTC")
    job = jobs.job(extra=f'timezone = "UTC"\ngroup_size = 4\n{extra}')
    clock = clock_at(MORNING)
    tries: list[float] = []

    def answer(g: Group, n: int) -> SendReceipt:
        tries.append(clock.wall())
        clock.step_wall(3600.0)
        raise error

    s = await run_job(job, FAST, FakeClient(answer), clock=clock)
    assert tries == pytest.approx([MORNING.timestamp()], abs=0.1)
    assert (s.stopped, s.expired_groups, s.sent_groups) == (stopped, expired, 0)


async def test_a_member_a_delivery_report_sends_again_is_not_sent_past_the_deadline(
    jobs: JobFactory,
) -> None:
    """A member whose delivery failed on a carrier's per-minute cap (40018) goes again, but
    not after the job's deadline: the run after it records the member's group expired and
    sends nothing."""
    jobs.people(2)
    job = jobs.job(extra='group_size = 2\ntimezone = "UTC"\ndeadline = "2026-11-24T12:00+00:00"')
    client = FakeClient()
    await run_job(job, FAST, client, clock=clock_at(MORNING))
    (g,) = client.calls
    cap = ApiError("40018", "AT&T per-minute cap", "")
    client.delivery[f"msg-{g.id}-0"] = (
        RecipientStatus(g.to[0], "delivery_failed", errors=(cap,)),
        RecipientStatus(g.to[1], "delivered"),
    )
    await track_ledger(job.ledger, FAST, client, clock=clock_at(MORNING + dt.timedelta(minutes=5)))
    assert load(job.ledger).groups[g.id].moved == (g.to[0],)
    late = await run_job(job, FAST, client, clock=clock_at(EVENING))
    assert (len(client.calls), late.expired_groups, run_outcome(late)) == (1, 1, 1)


async def test_a_member_a_delivery_report_sends_again_waits_for_the_send_window(
    jobs: JobFactory,
) -> None:
    """The same member, before the deadline but outside the send_window, is not sent: the
    run exits 4 and the next run inside the window sends it, once."""
    jobs.people(2)
    job = jobs.job(extra=WINDOW + 'deadline = "2026-11-25T12:00+00:00"')
    client = FakeClient()
    await run_job(job, FAST, client, clock=clock_at(MORNING))
    (g,) = client.calls
    cap = ApiError("40018", "AT&T per-minute cap", "")
    client.delivery[f"msg-{g.id}-0"] = (RecipientStatus(g.to[0], "delivery_failed", errors=(cap,)),)
    await track_ledger(job.ledger, FAST, client, clock=clock_at(MORNING + dt.timedelta(minutes=5)))
    night = await run_job(job, FAST, client, clock=clock_at(EVENING))
    assert (len(client.calls), run_outcome(night)) == (1, 4)
    morning = await run_job(job, FAST, client, clock=clock_at(MORNING + dt.timedelta(days=1)))
    assert [c.to for c in client.calls[1:]] == [(g.to[0],)]
    assert morning.sent_groups == 1


@pytest.mark.parametrize(
    ("people", "extra", "code"),
    [
        (12, "", 0),
        (12, '\ndeadline = "2026-11-24T18:00+00:00"', 0),
        (16, "", 4),
        (16, '\ndeadline = "2026-11-24T18:00+00:00"', 1),
    ],
    ids=["all-sent", "all-sent-deadline", "one-left", "one-left-deadline"],
)
async def test_a_window_closing_after_everyone_was_sent_does_not_make_the_run_incomplete(
    jobs: JobFactory, people: int, extra: str, code: int
) -> None:
    """The send_window closes while the last answer is on its way: when every recipient was
    sent before it closed, the run exits 0, not 4 (a later run has nothing to send) nor 1
    (the window opens again only after the deadline, and nobody needs it); a group left
    for the window still makes it exit 4, or 1 when its window opens after the deadline."""
    jobs.people(people)
    job = jobs.job(extra=f'timezone = "UTC"\nsend_window = "09:00-12:00"\ngroup_size = 4{extra}')
    start = dt.datetime(2026, 11, 24, 11, 59, 50, tzinfo=UTC)
    clock = clock_at(start)

    async def slow(g: Group, n: int) -> SendReceipt:
        if n > 0:  # the first answer sets the queue (empty); the others come after 12:00
            await asyncio.sleep(20)
        return ok_receipt(g, n)

    settings = replace(FAST, concurrency=2)  # a fourth group waits for a worker till 12:00:10
    s = await run_job(job, settings, FakeClient(slow), clock=clock)
    assert s.recipients is not None
    assert s.recipients.sent == 12
    assert run_outcome(s) == code


# -- held_for_windows, alone: the end of a run's judgement, on an injected clock ------------

LA, LONDON = "America/Los_Angeles", "Europe/London"
#: 14:00 UTC: 09:00 in New York, 06:00 in Los Angeles (its window opens at 16:00 UTC).
AFTERNOON = dt.datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
#: Ten seconds after a send_window of "15:10-15:00" UTC closed (it opens again at 15:10).
CLOSED = dt.datetime(2026, 11, 25, 15, 0, 10, tzinfo=UTC)


def ended(stopped: str | None, *, not_attempted: int = 4, whole: bool = True) -> JobSummary:
    """The summary of a run that sent 4 of 8 valid recipients and stopped ``stopped``."""
    counts = RecipientCounts(8, 4, 0, 0, 0, not_attempted, input_read=whole)
    return JobSummary("job", stopped=stopped, recipients=counts, read_whole_input=whole)


def at(hh: int, mm: int) -> dt.datetime:
    """``hh:mm`` UTC on the day of :data:`AFTERNOON`."""
    return dt.datetime(2026, 11, 25, hh, mm, tzinfo=UTC)


@pytest.mark.parametrize(
    ("deadline", "stopped"),
    [(None, "quiet_hours"), (at(16, 30), "quiet_hours"), (at(15, 30), StopReason.AFTER_DEADLINE)],
    ids=["no-deadline", "opens-in-time", "opens-too-late"],
)
def test_held_recipients_stop_the_run_for_quiet_hours_only_if_sendable_in_time(
    jobs: JobFactory, deadline: dt.datetime | None, stopped: str
) -> None:
    """A run that ended by itself holding Los Angeles for its quiet hours (open at 16:00 UTC)
    stops quiet_hours (exit 4) when its window opens before the deadline, else after_deadline
    (exit 1); either way the summary names the held by zone and when they can first be sent."""
    job = replace(jobs.job(), recipient_window=SendWindow(dt.time(8), dt.time(21)))
    s = ended(None)
    held_for_windows(s, job, clock_at(AFTERNOON), deadline, quiet=Counter({(LA,): 4}), left={})
    assert (s.stopped, s.quiet, s.next_opening) == (stopped, {"America/Los_Angeles": 4}, at(16, 0))


@pytest.mark.parametrize("in_doubt", [False, True], ids=["left-unsent", "left-in-doubt"])
@pytest.mark.parametrize(
    ("deadline", "stopped"),
    [(None, "window"), (at(15, 30), "window"), (at(15, 5), StopReason.AFTER_DEADLINE)],
    ids=["no-deadline", "opens-in-time", "opens-too-late"],
)
def test_a_send_window_closed_mid_run_is_after_deadline_when_it_opens_too_late(
    jobs: JobFactory, deadline: dt.datetime | None, stopped: str, in_doubt: bool
) -> None:
    """Without quiet hours, the recipients a closing send_window left (unsent, or a group in
    doubt, which a later run settles or resends) are judged by that window alone: it opens
    again at 15:10, so the run stops window (exit 4) when the deadline is later (or there is
    none), after_deadline (exit 1) when it is earlier; nobody held, the summary names no zone."""
    job = replace(jobs.job(), send_window=SendWindow(dt.time(15, 10), dt.time(15)))
    s = ended("window")
    left: Counter[tuple[str, ...]] = Counter({(NY,): 4})
    if in_doubt:  # the stop left nobody unsent it counted: 4 in doubt, none untried
        s.recipients = RecipientCounts(8, 4, 0, 0, 4, 0, input_read=True)
        left = Counter()
    held_for_windows(s, job, clock_at(CLOSED), deadline, quiet={}, left=left)
    assert (s.stopped, s.quiet, s.next_opening) == (stopped, {}, None)


@pytest.mark.parametrize(
    ("left", "not_attempted", "whole", "stopped"),
    [
        ({(NY,): 4}, 4, True, "window"),
        ({(LONDON,): 4}, 4, True, StopReason.AFTER_DEADLINE),
        ({(LONDON,): 4}, 5, True, "window"),
        ({(LONDON,): 4}, 4, False, "window"),
    ],
    ids=["open-zone", "closed-zone", "one-more-unknown", "input-not-read"],
)
def test_a_send_window_closed_mid_run_judges_who_is_left_by_their_own_window_too(
    jobs: JobFactory,
    left: dict[tuple[str, ...], int],
    not_attempted: int,
    whole: bool,
    stopped: str,
) -> None:
    """With quiet hours (08:00-15:05) and a deadline at 15:30, the recipients a closing
    send_window left are sendable in time only where both windows are open before it (New
    York at 15:10, not London, shut from 15:05): London alone makes it after_deadline, but
    anyone whose zone the run does not know (more unsent than it counted, input not read to
    its end) may be sent once the send_window opens, so the run stops window."""
    job = replace(
        jobs.job(),
        send_window=SendWindow(dt.time(15, 10), dt.time(15)),
        recipient_window=SendWindow(dt.time(8), dt.time(15, 5)),
    )
    s = ended("window", not_attempted=not_attempted, whole=whole)
    held_for_windows(s, job, clock_at(CLOSED), at(15, 30), quiet={}, left=left)
    assert s.stopped == stopped


@pytest.mark.parametrize("stopped", ["SIGTERM", "limit", "deadline"])
def test_a_stop_of_another_kind_stands_whatever_the_windows_left(
    jobs: JobFactory, stopped: str
) -> None:
    """A stop that is not the send_window's (a signal, --limit, max_job_duration_s) stays as
    it is even when nobody held can be sent before the deadline; the held are still named."""
    job = replace(jobs.job(), recipient_window=SendWindow(dt.time(8), dt.time(21)))
    s = ended(stopped)
    held_for_windows(s, job, clock_at(AFTERNOON), at(15, 30), quiet=Counter({(LA,): 4}), left={})
    assert (s.stopped, s.quiet) == (stopped, {"America/Los_Angeles": 4})


#: 10:00 in Los Angeles: the daily caps reset (00:00 there) 14 hours on.
LA_MORNING = dt.datetime(2026, 11, 25, 18, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("deadline", "code"), [("2026-11-25T20:00+00:00", 1), ("2026-11-26T12:00+00:00", 5)]
)
async def test_a_daily_cap_that_resets_after_the_deadline_exits_1_not_5(
    jobs: JobFactory, deadline: str, code: int
) -> None:
    """[limits] daily_recipients reached at 10:00 in Los Angeles, its reset at midnight there:
    with the job's deadline before that reset no run can send the rest, and the run exits 1
    saying so; with it after, 5 (the next day's run resumes), as before."""
    jobs.people(8)
    job = jobs.job(extra=f'group_size = 4\ndeadline = "{deadline}"')
    settings = replace(FAST, concurrency=1, daily_recipients=4)
    client = FakeClient()
    s = await run_job(job, settings, client, clock=clock_at(LA_MORNING))
    assert (len(client.calls), run_outcome(s)) == (1, code)
    assert ("after the job's deadline" in str(s.error)) == (code == 1)


async def test_a_carriers_cap_answered_to_a_send_resetting_after_the_deadline_exits_1(
    jobs: JobFactory,
) -> None:
    """A 40016 (T-Mobile's daily cap) answering a send stops the job until the carrier's
    reset; with the deadline before it, exit 1 (no run can send the rest), not 5."""
    jobs.people(8)
    job = jobs.job(extra='group_size = 4\ndeadline = "2026-11-25T20:00+00:00"')
    cap = Rejected("cap", status=400, errors=[ApiError("40016", "T-Mobile daily cap", "")])
    client = FakeClient(lambda g, n: cap)
    s = await run_job(job, replace(FAST, concurrency=1), client, clock=clock_at(LA_MORNING))
    assert run_outcome(s) == 1
    assert "lifts only after the job's deadline (2026-11-25T20:00Z)" in str(s.error)


async def test_members_a_carrier_holds_until_after_the_deadline_are_not_promised_a_rerun(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A delivery report in the send's answer fails a member with 40016: it waits for the
    carrier's reset, which comes after the job's deadline, so the run exits 1 saying no run
    sends them, not 5 with "a rerun from 08:00 sends them"; the first run past the
    deadline records them expired and sends nothing."""
    jobs.people(4)
    job = jobs.job(extra='group_size = 4\ndeadline = "2026-11-25T20:00+00:00"')
    cap = ApiError("40016", "T-Mobile daily cap", "")

    def answer(g: Group, n: int) -> SendReceipt:
        first = RecipientStatus(g.to[0], "delivery_failed", errors=(cap,))
        receipt = ok_receipt(g, n)
        return replace(receipt, statuses=(first, *receipt.statuses[1:]))

    s = await run_job(job, FAST, FakeClient(answer), clock=clock_at(LA_MORNING))
    assert (s.waiting_recipients, s.waiting_past_deadline, run_outcome(s)) == (0, 1, 1)
    assert "1 recipient held by a carrier's daily limit until after the job's deadline" in (
        capsys.readouterr().out
    )
    client = FakeClient()
    after = await run_job(job, FAST, client, clock=clock_at(LA_MORNING + dt.timedelta(days=1)))
    assert (client.calls, after.expired_groups, run_outcome(after)) == ([], 1, 1)


@pytest.mark.parametrize("text", ["00:00-24:00", "08:00-24:00", "22:00-06:00", "09:30-20:00"])
def test_a_window_prints_as_it_was_written(text: str) -> None:
    """A window reads back as written, one to midnight ending 24:00 (not 23:59)."""
    start, end = text.split("-")
    h, m = (int(x) for x in end.split(":"))
    window = SendWindow(dt.time.fromisoformat(start), dt.time.max if h == 24 else dt.time(h, m))
    assert str(window) == text
