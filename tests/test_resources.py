"""Running out of file descriptors is told as what it is: the run stops with exit 2 naming
``ulimit -n`` and ``--concurrency`` (not "the API keeps failing"), a rerun resumes, and the
concurrency is capped up front to what the descriptor limit allows."""

from __future__ import annotations

import errno
import os
import resource
import socket

import pytest
from structlog.testing import capture_logs

from bulk_mms.cli import main
from bulk_mms.config import Settings, cap_concurrency
from bulk_mms.config.folders import sandbox_ledger
from bulk_mms.config.settings import RESERVED_DESCRIPTORS
from bulk_mms.ledger import Failed, Sent, read_events
from tests.conftest import JobFactory, numbers


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    monkeypatch.setenv("TELNYX_API_KEY", "KEYsecret-0123456789abcdef")


def test_a_run_out_of_descriptors_stops_with_exit_2_and_resumes(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """EMFILE on every connect stops the sandbox run at once with exit 2 and one line naming
    ulimit -n and --concurrency; no group is failed for good, and the rerun sends everyone."""
    jobs.people(12)
    job = jobs.job(extra="group_size = 4")
    job_file = str(job.path)

    async def no_socket(*args: object, **kwargs: object) -> socket.socket:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    with monkeypatch.context() as patch:
        patch.setattr("aiohttp.connector.aiohappyeyeballs.start_connection", no_socket)
        assert main(["run", job_file, "--sandbox", "--rate", "1000"]) == 2
    err = capsys.readouterr().err
    [line] = [ln for ln in err.splitlines() if ln.startswith("bulk-mms: error:")]
    assert "out of file descriptors" in line
    assert "ulimit -n" in line
    assert "--concurrency" in line
    assert "API keeps failing" not in err
    assert "Traceback" not in err

    assert main(["run", job_file, "--sandbox", "--rate", "1000"]) == 0
    events = list(read_events(sandbox_ledger(job.ledger)))
    sent = [phone for ev in events if isinstance(ev, Sent) for phone in ev.to]
    assert sorted(sent) == sorted(numbers(12))
    assert all(ev.retryable for ev in events if isinstance(ev, Failed))


@pytest.mark.parametrize(
    ("soft", "asked", "expected"),
    [
        (1024, 8, 8),
        (64, 100, 64 - RESERVED_DESCRIPTORS),
        (RESERVED_DESCRIPTORS + 8, 8, 8),
        (20, 8, 1),
        (resource.RLIM_INFINITY, 1000, 1000),
    ],
)
def test_concurrency_is_capped_to_the_descriptor_limit(
    monkeypatch: pytest.MonkeyPatch, soft: int, asked: int, expected: int
) -> None:
    """concurrency plus the reserve must fit under ulimit -n: it is lowered to what fits (at
    least 1), with a warning naming ulimit -n; a limit that fits, or none, leaves it alone."""
    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, resource.RLIM_INFINITY))
    with capture_logs() as logs:
        settings = cap_concurrency(Settings(concurrency=asked))
    assert settings.concurrency == expected
    capped = [e for e in logs if e["event"] == "config.concurrency_capped"]
    if expected == asked:
        assert capped == []
    else:
        [event] = capped
        assert event["log_level"] == "warning"
        assert (event["concurrency"], event["capped_to"]) == (asked, expected)
        assert f"ulimit -n is {soft}" in event["hint"]


def test_run_concurrency_is_capped_from_the_command_line(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """run --concurrency 500 under a soft limit of 64 warns config.concurrency_capped and still
    runs (exit 0)."""
    jobs.people(4)
    job = jobs.job()
    monkeypatch.setattr(resource, "getrlimit", lambda which: (64, resource.RLIM_INFINITY))
    code = main(["--log-json", "run", str(job.path), "--dry-run", "--concurrency", "500"])
    assert code == 0
    err = capsys.readouterr().err
    assert '"config.concurrency_capped"' in err
    assert '"capped_to":32' in err
