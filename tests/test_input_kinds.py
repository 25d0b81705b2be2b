"""Only a regular file is a job's input: a FIFO, a device or a socket is refused in one line,
before anything opens it (a FIFO's open would wait for a writer, and its rows would go to one
pass only)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from bulk_mms.cli import main
from bulk_mms.errors import InputError
from bulk_mms.reader import RowReader, fingerprint, open_input
from tests.conftest import JobFactory

T = TypeVar("T")
SECRET = "KEYsecret-0123456789abcdef"
REFUSAL = "is not a regular file ({kind}): give bulk-mms a file; it reads the input more than once"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    monkeypatch.setenv("TELNYX_API_KEY", SECRET)


def finishes(call: Callable[[], T], path: Path, timeout: float = 20.0) -> T:
    """``call()``, in this thread (a run installs signal handlers, which only the main thread
    may), under a watchdog: should it still be running after ``timeout`` s, the watchdog opens
    ``path`` for writing, which ends an open blocked on a FIFO, and the test fails."""
    fired = threading.Event()

    def release() -> None:
        fired.set()
        with contextlib.suppress(OSError):  # ENXIO: nobody is blocked reading it
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    watchdog = threading.Timer(timeout, release)
    watchdog.start()
    try:
        result = call()
    finally:
        watchdog.cancel()
        assert not fired.is_set(), f"still running after {timeout} s: blocked on {path}"
    return result


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The lines of stderr that are not log events (the sandbox logs that it started)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if not line.startswith("{")]


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.csv"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("mode", ["--dry-run", "--sandbox"])
def test_a_fifo_as_the_jobs_input_is_refused_in_one_line(
    jobs: JobFactory, fifo: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """run --dry-run and run --sandbox on a job whose input is a FIFO exit 2 at once, saying
    it is a FIFO, without waiting for a writer."""
    job = jobs.job(fifo.name)
    code = finishes(lambda: main(["run", str(job.path), mode]), fifo)
    assert code == 2
    [line] = error_lines(capsys)
    assert line == f"bulk-mms: error: {fifo}: {REFUSAL.format(kind='a FIFO')}"


def test_a_fifo_given_to_run_input_is_refused_in_one_line(
    jobs: JobFactory, fifo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run --input FIFO (whose hash names the rerun's ledger) exits 2 with the same line."""
    jobs.people(3)
    job = jobs.job()
    code = finishes(lambda: main(["run", str(job.path), "--input", str(fifo), "--dry-run"]), fifo)
    assert code == 2
    [line] = error_lines(capsys)
    assert line == f"bulk-mms: error: {fifo}: {REFUSAL.format(kind='a FIFO')}"


@pytest.mark.parametrize("how", ["input", "link"])
def test_dev_null_is_refused_as_a_character_device(
    jobs: JobFactory, tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """/dev/null, named as the input or behind a people.csv link, is refused as a character
    device (exit 2, one line), not read as an empty file."""
    if how == "link":
        (tmp_path / "people.csv").symlink_to("/dev/null")
        job, shown = jobs.job(), tmp_path / "people.csv"
    else:
        job, shown = jobs.job("/dev/null"), Path("/dev/null")
    code = finishes(lambda: main(["run", str(job.path), "--dry-run"]), shown)
    assert code == 2
    [line] = error_lines(capsys)
    assert line == f"bulk-mms: error: {shown}: {REFUSAL.format(kind='a character device')}"


def test_every_reader_of_the_input_refuses_a_fifo_without_opening_it(fifo: Path) -> None:
    """open_input, fingerprint and RowReader raise the refusal, each returning at once (a
    blocking open would hang this test)."""
    for call in (
        lambda: open_input(fifo),
        lambda: fingerprint(fifo),
        lambda: RowReader(fifo, "phone").open(),
    ):
        with pytest.raises(InputError) as info:
            finishes(call, fifo)
        assert str(info.value) == f"{fifo}: {REFUSAL.format(kind='a FIFO')}"


def test_a_socket_is_refused_as_a_socket(tmp_path: Path) -> None:
    """A Unix socket where the input belongs is named as a socket."""
    path = tmp_path / "s.csv"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(InputError) as info:
            open_input(path)
    assert str(info.value) == f"{path}: {REFUSAL.format(kind='a socket')}"


def test_a_regular_file_still_opens(tmp_path: Path) -> None:
    """A regular file opens for reading, blocking as usual, and gives its bytes."""
    path = tmp_path / "people.csv"
    path.write_bytes(b"phone\n+12125550100\n")
    with open_input(path) as f:
        assert os.get_blocking(f.fileno())
        assert f.read() == b"phone\n+12125550100\n"
