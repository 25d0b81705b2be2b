"""Stops are prompt in every phase: a real ``bulk-mms run`` subprocess given SIGTERM while it
scans a large input cuts the scan short, with nothing sent and no ledger made."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from bulk_mms.cli import main
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.scan import write_rejected
from tests.conftest import JobFactory
from tests.threaded import fake_api_thread

pytestmark = pytest.mark.slow

KEY = "stops-test-key"


def test_sigterm_during_the_scan_of_a_large_input_stops_at_once(jobs: JobFactory) -> None:
    """SIGTERM while the input is scanned: the scan ends early, exit 143, no request, no
    ledger."""
    rows = "".join(f"+1212{i:07d},x\n" for i in range(2_000_000, 2_600_000))
    (jobs.root / "people.csv").write_text("phone,first\n" + rows, encoding="utf-8")
    job = jobs.job()
    fake = FakeTelnyx(api_key=KEY)
    env = {**os.environ, "TELNYX_API_KEY": KEY}
    env.pop("TELNYX_BASE_URL", None)
    with fake_api_thread(fake) as url:
        cmd = [sys.executable, "-m", "bulk_mms", "--log-json", "run", str(job.path)]
        proc = subprocess.Popen(
            [*cmd, "--base-url", url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stderr is not None
        for line in proc.stderr:  # wait for the scan to begin (no sleep to guess it)
            if b"input.scan_started" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert b"job.stopped_while_scanning" in err  # the scan was cut short, not waited out
    assert b"job.started" not in err
    assert fake.requests == []
    assert not job.ledger.exists()


def test_ctrl_c_stops_a_dry_run_while_it_reads_the_input(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while a dry run reads its input ends it there (exit 130), not once the whole
    input is read."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    read: list[int] = []

    def interrupted(*args: Any, **kwargs: Any) -> None:
        signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, as the scan begins
        write_rejected(*args, **kwargs)
        read.append(1)

    monkeypatch.setattr("bulk_mms.prepare.write_rejected", interrupted)
    assert main(["run", str(job.path), "--dry-run", "--sandbox"]) == 130
    assert read == []
    assert "interrupted" in capsys.readouterr().err
