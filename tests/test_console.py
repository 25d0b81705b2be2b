"""What a run says at its end: counts with their units, and the rate it really achieved."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from msgspec.structs import replace

from bulk_mms.console import run_outcome
from bulk_mms.errors import Exit, SendError, ServerError
from bulk_mms.ledger import RecipientCounts
from bulk_mms.models import Group, SendReceipt
from bulk_mms.runner import run_job
from bulk_mms.scan import InputScan
from bulk_mms.sending import RequestTimes
from bulk_mms.summary import JobSummary
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, ok_receipt

#: One request at a time: FakeClock's sleeps add up, so concurrent sleepers would move its
#: time on by the sum of their waits rather than the longest.
PACED_10 = replace(FAST, rate=10.0, concurrency=1)


def test_request_times_count_gaps_not_requests() -> None:
    """Three requests 0.1 s apart are 10 requests/s, not 3 over 0.2 s (15/s)."""
    times = RequestTimes()
    for t in (5.0, 5.1, 5.2):
        times.left(t)
    assert times.rate() == pytest.approx(10.0)


def test_request_times_need_two_instants() -> None:
    """No rate from one request, or from requests that all left at one instant."""
    times = RequestTimes()
    assert times.rate() is None
    times.left(1.0)
    assert times.rate() is None
    times.left(1.0)
    assert times.rate() is None


@pytest.mark.usefixtures("off_loop_work_on_the_loop")
async def test_a_short_run_paced_at_10_says_10(jobs: JobFactory) -> None:
    """A run of eleven groups paced at 10/s reports about 10 requests/s, not 11 (the disk's
    work takes none of the virtual clock: however slow, the requests leave at the pace)."""
    jobs.people(44)
    job = jobs.job(extra="group_size = 4")
    s = await run_job(job, PACED_10, FakeClient(), clock=FakeClock())
    assert s.sent_groups == 11
    assert s.achieved_rate == pytest.approx(10.0, rel=0.05)


@pytest.mark.usefixtures("off_loop_work_on_the_loop")
async def test_retries_are_requests_too(jobs: JobFactory) -> None:
    """Every try is a request the pace admitted: a group tried twice counts twice."""
    jobs.people(24)
    job = jobs.job(extra="group_size = 4")
    tried: set[str] = set()

    def first_try_fails(group: Group, n: int) -> SendReceipt | SendError:
        if group.id in tried:
            return ok_receipt(group, n)
        tried.add(group.id)
        return ServerError("503", status=503)

    client = FakeClient(first_try_fails)
    s = await run_job(job, PACED_10, client, clock=FakeClock())
    assert (s.sent_groups, len(client.calls)) == (6, 12)
    assert s.achieved_rate == pytest.approx(10.0, rel=0.05)


def test_quiet_hours_line_names_its_unit(capsys: pytest.CaptureFixture[str]) -> None:
    """The quiet-hours stop says how many recipients wait, and where."""
    s = JobSummary(
        "j",
        sent_groups=4,
        stopped="quiet_hours",
        quiet={"America/Chicago": 59},
        next_opening=dt.datetime(2025, 1, 2, 14, 0, tzinfo=dt.UTC),
    )
    assert run_outcome(s) == Exit.WINDOW
    err = capsys.readouterr().err
    assert "4 groups sent this run" in err
    assert "59 recipients held for their quiet hours (59 in America/Chicago)" in err
    assert "2025-01-02 14:00 UTC" in err


@pytest.mark.parametrize(
    ("stopped", "code", "left"),
    [
        ("window", Exit.WINDOW, "12 recipients not sent (2 of them in doubt)"),
        ("deadline", Exit.INCOMPLETE, "12 recipients not sent (2 of them in doubt)"),
    ],
)
def test_a_stop_mid_run_says_last_who_it_left(
    capsys: pytest.CaptureFixture[str], stopped: str, code: Exit, left: str
) -> None:
    """The last line of a run the send_window or max_job_duration_s stopped says why, and
    how many recipients it left for a later run (never attempted, pending, in doubt)."""
    s = JobSummary("j", sent_groups=4, stopped=stopped)
    s.recipients = RecipientCounts(32, 16, 4, 2, 2, 8, input_read=True)
    assert run_outcome(s) == code
    last = capsys.readouterr().err.splitlines()[-1]
    assert f"4 groups sent this run; {left}; " in last


@pytest.mark.parametrize(
    ("stopped", "quiet"), [("quiet_hours", {"America/Chicago": 8}), ("window", {})]
)
def test_a_run_stopped_by_a_window_still_says_what_failed(
    capsys: pytest.CaptureFixture[str], stopped: str, quiet: dict[str, int]
) -> None:
    """A run that left recipients for a window (theirs, or the job's that closed mid-run)
    exits 4 and still gives the summary: the groups that failed, which no run in the window
    sends, are said, not hidden behind "a run then sends them"."""
    s = JobSummary("j", sent_groups=4, failed_groups=2, stopped=stopped, quiet=quiet)
    s.recipients = RecipientCounts(32, 16, 8, 0, 0, 8, input_read=True)
    assert run_outcome(s) == Exit.WINDOW
    out = capsys.readouterr().out
    assert "sent 4 groups (0 recipients); 2 groups failed" in out
    assert "8 failed" in out


def test_a_run_with_groups_expired_and_members_waiting_for_a_reset_says_both(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run that recorded groups expired unsent and leaves members waiting for a daily cap's
    reset exits 5 and says both on its last lines, the expired groups, then the members
    waiting (the cause of the 5) last."""
    s = JobSummary("j", sent_groups=4, expired_groups=2, waiting_recipients=3)
    s.waiting_until = dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC).timestamp()
    s.recipients = RecipientCounts(32, 16, 8, 3, 0, 5, input_read=True)
    assert run_outcome(s) == 5
    *_, expired, waiting = capsys.readouterr().err.splitlines()
    assert "2 groups expired unsent, which no run sends" in expired
    assert waiting == (
        "bulk-mms: 3 recipients held by a carrier's daily limit: a rerun from "
        "2026-11-26T08:00Z sends them"
    )


@pytest.mark.parametrize(
    ("failed", "again", "said"),
    [
        (2, 0, "2 groups failed, 0 in doubt"),
        (1, 1, "1 group failed (1 pending a rerun), 0 in doubt"),
        (3, 1, "3 groups failed (1 pending a rerun), 0 in doubt"),
    ],
)
def test_the_summary_says_which_failed_groups_are_pending_a_rerun(
    capsys: pytest.CaptureFixture[str], failed: int, again: int, said: str
) -> None:
    """Failed groups whose retries ran out on a transient error (a 5xx, the last 429 before
    a window closed) are said to be pending a rerun, as their recipients are, not left
    reading as failed for good."""
    s = JobSummary("j", sent_groups=1, failed_groups=failed, retry_later_groups=again)
    run_outcome(s)
    assert said in capsys.readouterr().out


def test_summary_lines_name_their_units(capsys: pytest.CaptureFixture[str]) -> None:
    """Each count in the summary says what it counts, and the rate says requests/s."""
    s = JobSummary(
        "j",
        sent_groups=1,
        sent_recipients=3,
        failed_groups=2,
        rejected_rows=1,
        skipped_groups=5,
        achieved_rate=9.94,
        wait_seconds_p50=0.5,
        rate_limited=1,
    )
    assert run_outcome(s) == Exit.OK
    out = capsys.readouterr().out
    assert "sent 1 group (3 recipients); 2 groups failed" in out
    assert "5 groups already done" in out
    assert "; 1 row rejected" in out
    assert "9.94 requests/s while sending" in out
    assert "median 0.5 s" in out
    assert "1 rate-limit answer (429)" in out


def test_the_summary_says_how_many_groups_the_deadline_left_unsent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Groups recorded expired_unsent are said as such in the summary (not hidden among 0
    failed), and the run exits 1."""
    s = JobSummary("j", expired_groups=2, open_failed=2)
    assert run_outcome(s) == Exit.INCOMPLETE
    out = capsys.readouterr().out
    assert "0 groups failed, 2 expired unsent (past the job's deadline), 0 in doubt" in out


def test_a_run_that_left_recipients_unattempted_does_not_exit_0() -> None:
    """Valid recipients the ledger never attempted (another process held them, then stopped)
    make the exit 1; under ``--limit`` they are the rest the limit left, and it is 0."""
    counts = RecipientCounts(
        valid=10, sent=6, failed=0, retry_pending=0, in_doubt=0, not_attempted=4, input_read=True
    )
    assert run_outcome(JobSummary("j", sent_groups=3, recipients=counts)) == Exit.INCOMPLETE
    limited = JobSummary("j", sent_groups=3, recipients=counts, stopped="limit")
    assert run_outcome(limited) == Exit.OK
    done = replace(counts, sent=10, not_attempted=0)
    assert run_outcome(JobSummary("j", sent_groups=5, recipients=done)) == Exit.OK


def test_a_suppressed_row_is_not_called_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    """A run whose one row not sent was on the suppression list says none of its 12 rows was
    rejected, and names the suppressed one as such."""
    scan = InputScan("sha256:x", rows=12, recipients=12, lost=Counter(), duplicates=0, excluded=0)
    s = JobSummary(
        "j", sent_groups=4, sent_recipients=11, suppressed_rows=1, input=scan, read_whole_input=True
    )
    assert run_outcome(s) == Exit.OK
    out = capsys.readouterr().out
    assert "; 0 of 12 rows rejected; 1 suppressed (on the suppression list)\n" in out
