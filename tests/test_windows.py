"""Never past the deadline nor outside a window, on any try, and never held for a window that
cannot open: a run outside its send_window past the deadline settles what is left as expired
(exit 1, not 4), and a group_by group whose members share no hour of the recipient_window is
rejected as the input is scanned (injected clock)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from msgspec.structs import replace

from bulk_mms.console import run_outcome
from bulk_mms.errors import AmbiguousSendError
from bulk_mms.ledger import Location
from bulk_mms.models import Group, SendReceipt
from bulk_mms.prepare import dry_run
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.scan import scan_input
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory

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


async def test_a_ledger_that_held_a_household_sharing_no_hour_resumes_and_rejects_it(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger of a bulk-mms that held such a household (every run exiting 4) resumes: the
    household's rows are recorded rejected, nobody sent is texted again, and the run exits 0."""
    jobs.csv(household_rows(("a", NY), ("b", NY), ("a", GUAM), ("b", NY)))
    job = jobs.job(extra=HOUSEHOLDS + "max_rejected_share = 0.5")
    client = FakeClient()
    clock = clock_at(NOON_NY)
    with monkeypatch.context() as old:  # the bulk-mms that held it
        old.setattr("bulk_mms.grouping.never_open", lambda *a: False)
        held = await run_job(job, FAST, client, clock=clock)
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
        old.setattr("bulk_mms.sending.open_for", lambda *a: True)
        old.setattr("bulk_mms.sending.closes_in", lambda *a: 3600.0)
        first = await run_job(job, FAST, client, clock=clock)
    assert first.sent_groups == 2
    s = await run_job(job, FAST, client, clock=clock)
    assert (s.rejected_rows, s.skipped_groups, len(client.calls)) == (0, 2, 2)
    assert not [e for e in ledger_events(job.ledger) if e["event"] == "rejected"]
    assert run_outcome(s) == 0
