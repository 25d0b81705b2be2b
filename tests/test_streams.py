"""The standard streams a command is given in the wild: closed (``>&-``), on a full disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bulk_mms.cli import main
from bulk_mms.config.folders import sandbox_ledger
from bulk_mms.fake_api import FakeTelnyx
from tests.conftest import JobFactory, numbers
from tests.threaded import fake_api_thread


def _sent(jobs: JobFactory) -> Path:
    """A sandbox run's ledger, every recipient sent."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    assert main(["-q", "run", str(job.path), "--sandbox"]) == 0
    return sandbox_ledger(job.ledger)


def _with_closed(fd: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``bulk-mms ARGS`` in a process started with ``fd`` closed, as ``>&-`` leaves it; its
    other streams the null device, stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "bulk_mms", "-q", *args],
        stdin=None if fd == 0 else subprocess.DEVNULL,
        stdout=None if fd == 1 else subprocess.DEVNULL,
        stderr=None if fd == 2 else subprocess.PIPE,
        preexec_fn=lambda: os.close(fd),
        env={**os.environ, "TELNYX_API_KEY": "KEYtest"},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("fd", [0, 1, 2])
def test_a_closed_standard_stream_is_no_traceback(jobs: JobFactory, fd: int) -> None:
    """With stdin, stdout or stderr closed, a run (off the sandbox: it would ask on a
    terminal) sends and exits 0 and report exits 0, with no traceback: what they would say
    there is dropped, and the question is not asked."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = _with_closed(fd, "run", str(job.path), "--base-url", url)
    assert run.returncode == 0, run.stderr
    assert fake.recipient_counts() == dict.fromkeys(numbers(8), 1)
    report = _with_closed(fd, "report", str(job.ledger))
    assert report.returncode == 0, report.stderr
    assert fd == 2 or report.stderr == b""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_report_into_a_full_disk_says_so_in_one_line(jobs: JobFactory) -> None:
    """report > file on a full disk: exit 2 and one line saying stdout could not be written
    (not a traceback, not exit 0 with the report lost)."""
    ledger = _sent(jobs)
    with open("/dev/full", "w", encoding="utf-8") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "bulk_mms", "report", str(ledger), "--json"],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 2
    assert (
        proc.stderr.decode() == "bulk-mms: error: stdout: cannot write: No space left on device\n"
    )


def test_a_ledger_path_that_cannot_be_looked_up_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ledger whose name is too long to look up: report exits 2 with one line naming it
    and why, not a traceback."""
    ledger = tmp_path / ("x" * 300 + ".jsonl")
    assert main(["report", str(ledger)]) == 2
    err = capsys.readouterr().err
    assert err == f"bulk-mms: error: {ledger}: cannot open: File name too long\n"
