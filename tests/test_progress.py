"""Progress: row count, log heartbeat, the bar beside log lines, the runner's snapshots."""

from __future__ import annotations

import io

from structlog.testing import capture_logs

from bulk_mms.errors import NetworkError
from bulk_mms.log import BarSafeStream
from bulk_mms.progress import BarProgress, LogProgress, Snapshot
from bulk_mms.runner import run_job
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory


def snap(done: int, total: int | None = 100, sent: int = 0, free: int = 0) -> Snapshot:
    return Snapshot(done, free, total, sent, 0, 0, 2, 1.5, 10.0)


def test_log_progress_is_a_heartbeat() -> None:
    """job.progress is logged once per interval, with percent and an ETA from the row rate."""
    t = [0.0]
    progress = LogProgress(30, now=lambda: t[0])
    with capture_logs() as logs:
        for step in range(1, 13):  # 12 updates, 10 s apart, 5 rows each
            t[0] = step * 10.0
            progress.update(snap(step * 5))
    events = [e for e in logs if e["event"] == "job.progress"]
    assert [e["rows_done"] for e in events] == [15, 30, 45, 60]
    assert events[-1]["percent"] == 60.0
    assert events[-1]["eta_s"] == 80  # 40 rows left at 0.5 rows/s


def test_bar_and_log_lines_do_not_garble() -> None:
    """Log lines written through the bar-safe stream come out whole, each on its own line."""
    out = io.StringIO()
    bar = BarProgress(out)
    logs = BarSafeStream(out)
    for i in range(5):
        bar.update(snap(i * 20, sent=i))
        logs.write(f"log line number {i} with some words\n")
    bar.close()
    lines = out.getvalue().replace("\r", "\n").splitlines()
    for i in range(5):
        assert f"log line number {i} with some words" in lines
    assert any("100/100" in line or "80/100" in line for line in lines)


async def test_runner_reports_every_row(jobs: JobFactory) -> None:
    """The last snapshot of a run counts every data row: sent, rejected and duplicate."""
    rows = "phone,first\n+12125550001,a\nnot-a-number,b\n+12125550002,c\n+12125550001,d\n"
    jobs.csv(rows)
    job = jobs.job(extra="max_rejected_share = 0.5")
    seen: list[Snapshot] = []

    class Recorder:
        def update(self, s: Snapshot) -> None:
            seen.append(s)

        def close(self) -> None:
            seen.append(seen[-1])

    await run_job(job, FAST, FakeClient(), clock=FakeClock(), progress=Recorder())
    last = seen[-1]
    assert (last.rows_done, last.rows_total, last.groups_sent) == (4, 4, 1)


def test_eta_after_a_resume_counts_only_what_is_left_to_send() -> None:
    """Rows done by an earlier run go by in an instant; the ETA's rate leaves them out."""
    t = [0.0]
    progress = LogProgress(30, now=lambda: t[0])
    with capture_logs() as logs:
        # a resume skips 60 rows done before in two seconds, then sends 5 rows per 10 s
        for t[0], done, free in [
            (1, 30, 30),
            (2, 60, 60),
            (12, 65, 60),
            (22, 70, 60),
            (32, 75, 60),
        ]:
            progress.update(snap(done, free=free))
    (event,) = [e for e in logs if e["event"] == "job.progress"]
    assert event["rows_done"] == 75
    assert event["eta_s"] == 50  # 25 rows left at 0.5 rows/s, not at the skipping's speed


async def test_nothing_sent_is_no_rate(jobs: JobFactory) -> None:
    """A run that sent nothing reports no achieved rate, not the rate of its failed tries."""
    jobs.people(12)
    job = jobs.job(extra="group_size = 4")
    s = await run_job(
        job, FAST, FakeClient(lambda g, n: NetworkError("refused")), clock=FakeClock()
    )
    assert s.sent_groups == 0
    assert s.achieved_rate is None


async def test_retries_for_one_cause_are_one_line_not_one_each(jobs: JobFactory) -> None:
    """An unreachable API: the first retry of the cause is logged, the rest are summed into
    send.retries lines, not a warning per retry."""
    jobs.people(12)
    job = jobs.job(extra="group_size = 4")
    with capture_logs() as logs:
        await run_job(
            job, FAST, FakeClient(lambda g, n: NetworkError("refused")), clock=FakeClock()
        )
    scheduled = [e for e in logs if e["event"] == "send.retry_scheduled"]
    summed = [e for e in logs if e["event"] == "send.retries"]
    assert len(scheduled) == 1
    assert scheduled[0]["cause"] == "NetworkError"
    assert sum(e["retries"] for e in summed) == 3 * (FAST.retry.attempts - 1) - 1
    assert len([e for e in logs if e["log_level"] == "warning"]) <= 6
