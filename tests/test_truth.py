"""One ledger, one truth: every valid recipient in exactly one state, the same for the run, its
resume, the report and the failed file; a rerun plus the failed file never texts anyone twice."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import orjson
import pytest
from msgspec.structs import replace

from bulk_mms.cli import main
from bulk_mms.errors import AmbiguousSendError, Rejected, SendError, ServerError
from bulk_mms.models import Group, SendReceipt
from bulk_mms.recorder import Recorder
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.signals import Stop, StopReason
from bulk_mms.testing import groups_in
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers, ok_receipt


def states(valid: int, *counts: int) -> dict[str, int]:
    """The report's ``recipients``: valid, then sent, failed, retry_pending, in_doubt and
    not_attempted, which must add up to valid."""
    assert sum(counts) == valid
    names = ("sent", "failed", "retry_pending", "in_doubt", "not_attempted")
    return {"valid": valid, **dict(zip(names, counts, strict=True))}


def failed_file(tmp_path: Path, ledger: Path) -> list[str]:
    """The numbers ``report --failed-csv`` writes."""
    out = tmp_path / "failed.csv"
    assert main(["-q", "report", str(ledger), "--failed-csv", str(out), "--format", "json"]) == 0
    with out.open(encoding="utf-8-sig") as f:  # it begins with a byte order mark
        return [row["phone"] for row in csv.DictReader(f)]


def report_json(ledger: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert main(["-q", "report", str(ledger), "--format", "json"]) == 0
    return orjson.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


async def test_retries_run_out_on_5xx_is_pending_a_rerun_not_failed(
    jobs: JobFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A group whose retries ran out on 503s is retry_pending: not in the failed file, and the
    plain rerun sends it: each person is texted once in all."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4")

    def flaky(g: Group, n: int) -> SendReceipt | ServerError:
        return ServerError("down", status=503) if g.seq == 2 else ok_receipt(g, n)

    client = FakeClient(flaky)
    await run_job(job, FAST, client, clock=FakeClock())
    report = report_json(job.ledger, capsys)
    assert report["recipients"] == states(16, 12, 0, 4, 0, 0)
    assert failed_file(tmp_path, job.ledger) == []
    rerun = FakeClient()
    await run_job(job, FAST, rerun, clock=FakeClock())
    accepted = [p for g in client.calls if g.seq != 2 for p in g.to] + rerun.sent_numbers()
    assert sorted(accepted) == numbers(16)


async def test_accepted_then_lost_then_500s_stays_in_doubt(
    jobs: JobFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A group whose first answer was lost after acceptance, then 500s until retries ran out,
    is in doubt: never failed, never in the failed file, held by a plain rerun."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")

    def lost(g: Group, n: int) -> SendReceipt | SendError:
        if g.seq == 0:
            first = n == 0
            return (
                AmbiguousSendError("reset after sending") if first else ServerError("x", status=500)
            )
        return ok_receipt(g, n)

    client = FakeClient(lost)
    await run_job(job, FAST, client, clock=FakeClock())
    r = report_json(job.ledger, capsys)["recipients"]
    assert r == states(8, 4, 0, 0, 4, 0)
    assert failed_file(tmp_path, job.ledger) == []
    assert len(groups_in(job.ledger, "in_doubt")) == 1


async def test_a_crash_between_attempt_and_outcome_is_counted_in_doubt(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A process that dies with a request out leaves an attempt and no outcome: the report
    counts those recipients in doubt (not nowhere), a resume settles them by the API's records,
    and once a run has read the whole input the five states add up to every valid recipient."""
    jobs.people(12)
    job = jobs.job(extra="group_size = 4")
    stop = Stop()
    out = asyncio.Event()

    async def hang(g: Group, n: int) -> SendReceipt:
        if n == 0:
            return ok_receipt(g, n)
        out.set()
        await asyncio.Event().wait()  # the answer never comes: the process dies first
        raise AssertionError

    # dying, the process records nothing more (a SIGKILL): no cut-off outcome is written
    with monkeypatch.context() as dying:  # the autouse fixtures' patches stay
        dying.setattr(Recorder, "cut_off", lambda self, group, last: None)
        task = asyncio.create_task(
            run_job(
                job, replace(FAST, concurrency=1), FakeClient(hang), clock=FakeClock(), stop=stop
            )
        )
        await out.wait()
        stop.force(StopReason.FORCED)
        await task
    r = report_json(job.ledger, capsys)
    assert r["recipients"] == states(12, 4, 0, 0, 4, 4)
    rerun = FakeClient()
    s = await run_job(job, FAST, rerun, clock=FakeClock(wall=FakeClock().wall() + 86_400 * 2))
    # its key has expired, and the API's records (complete, two days on) show nothing of it:
    # never accepted, so sent again, under a new key
    assert s.held_groups == 0
    assert len(rerun.sent_numbers()) == 8
    r = report_json(job.ledger, capsys)
    assert r["recipients"] == states(12, 12, 0, 0, 0, 0)


async def test_states_add_up_and_the_failed_file_holds_only_final_failures(
    jobs: JobFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused, pending, in doubt and sent groups: the report's five states add up to the valid
    recipients, the failed file holds exactly the refused ones, and status --json agrees."""
    jobs.people(20)
    job = jobs.job(extra="group_size = 4")

    def mixed(g: Group, n: int) -> SendReceipt | SendError:
        if g.seq == 0:
            return Rejected("invalid", status=400)
        if g.seq == 1:
            return ServerError("down", status=503)
        if g.seq == 2:
            return AmbiguousSendError("timed out after sending")
        return ok_receipt(g, n)

    client = FakeClient(mixed)
    await run_job(job, FAST, client, clock=FakeClock())
    r = report_json(job.ledger, capsys)["recipients"]
    assert isinstance(r, dict)
    assert r == states(20, 8, 4, 4, 4, 0)
    refused = next(g for g in client.calls if g.seq == 0)
    assert sorted(failed_file(tmp_path, job.ledger)) == sorted(refused.to)
    s = summarize(job.ledger)
    assert (s.failed_groups, s.retry_pending_groups, s.in_doubt_groups) == (1, 1, 1)
    capsys.readouterr()
    assert main(["-q", "status", str(job.ledger), "--json"]) == 0
    status = orjson.loads(capsys.readouterr().out)
    assert status["sent_groups"] == 2
    assert status["recipients"]["valid"] == 20
