"""``--log-json``: every line a command writes, on stdout and stderr, is one JSON object."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bulk_mms import console
from bulk_mms.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _plain_notes() -> Iterator[None]:
    """Each test leaves notes plain, as the next test's CLI call would find them."""
    yield
    console.use_json(False)


def notes(text: str) -> list[dict[str, object]]:
    """Every line of ``text`` as a JSON object with ``event``, ``level`` and ``message``."""
    out = []
    for line in text.splitlines():
        note = orjson.loads(line)  # raises on a line that is not JSON
        assert isinstance(note, dict), line
        assert {"event", "level", "message"} <= note.keys(), line
        out.append(note)
    return out


def demo_copy(tmp_path: Path) -> Path:
    """The demo job and its input, copied where its ledger may be written."""
    shutil.copytree(REPO / "jobs" / "data", tmp_path / "jobs" / "data")
    shutil.copy(REPO / "jobs" / "demo.toml", tmp_path / "jobs" / "demo.toml")
    return tmp_path / "jobs" / "demo.toml"


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment for a subprocess: no settings, lists or ledgers but the test's own."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BULK_MMS_", "TELNYX_", "XDG_", "NO_COLOR"))
    }
    for name in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        env[name] = str(tmp_path / name.lower())
    return env


def test_sandbox_demo_run_is_all_json(tmp_path: Path) -> None:
    """`bulk-mms run jobs/demo.toml --sandbox --log-json`: every stdout and stderr line is a
    JSON note, the summary included."""
    job = demo_copy(tmp_path)
    command = ["run", str(job), "--sandbox", "--log-json", "--rate", "200"]
    done = subprocess.run(
        [sys.executable, "-m", "bulk_mms", *command],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # the sandbox refuses one opted-out number: not a failure (nobody may text them)
    assert done.returncode == 0, done.stderr
    out, err = notes(done.stdout), notes(done.stderr)
    summary = next(n for n in out if n["event"] == "job.summary")
    assert summary["sent_recipients"] == 238
    assert summary["level"] == "info"
    assert "238 recipients" in str(summary["message"])
    assert {"job.recipients", "job.rate"} <= {n["event"] for n in out}
    assert {"sandbox.started", "job.started", "job.finished"} <= {n["event"] for n in err}
    assert (tmp_path / "jobs" / "ledgers" / "sandbox" / "demo.jsonl").exists()


def test_missing_job_file_is_one_json_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job file that is not there: exit 2, and stderr is one JSON error note naming it."""
    missing = tmp_path / "nope.toml"
    assert main(["run", str(missing), "--log-json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [note] = notes(captured.err)
    assert note["event"] == "command.failed"
    assert note["level"] == "error"
    assert note["exit_code"] == 2
    assert str(missing) in str(note["message"])


def test_usage_error_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    """An argparse usage error under --log-json is one JSON note too, exit 2."""
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--log-json"])
    assert stopped.value.code == 2
    [note] = notes(capsys.readouterr().err)
    assert note["event"] == "command.usage_error"
    assert "required: job" in str(note["message"])
    assert str(note["usage"]).startswith("usage: bulk-mms run")


def test_usage_error_stays_plain_without_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --log-json a usage error is one plain line (no usage block), exit 2."""
    with pytest.raises(SystemExit) as stopped:
        main(["run"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "bulk-mms run: error: the following arguments are required: job (see bulk-mms run --help)\n"
    )


def test_dry_run_plan_is_one_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A dry run's plan under --log-json is one stdout note with its counts as fields."""
    job = demo_copy(tmp_path)
    assert main(["run", str(job), "--dry-run", "--sandbox", "--log-json"]) == 0
    captured = capsys.readouterr()
    [plan] = notes(captured.out)
    notes(captured.err)
    assert plan["event"] == "dry_run.plan"
    assert plan["recipients"] == 239
    assert "dry run of demo: nothing was sent" in str(plan["message"])


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """An API key, exported as TELNYX_API_KEY."""
    key = "KEYsecret-0123456789abcdef"
    monkeypatch.setenv("TELNYX_API_KEY", key)
    return key


def test_warnings_and_notes_scrub_the_key(secret: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Under --log-json a Python warning is a note, and no note carries the API key."""
    console.use_json(True)
    warnings.showwarning("old thing", DeprecationWarning, "x.py", 3)
    console.say("test.note", f"the key {secret} leaked", level="warning", key=secret)
    warning, note = notes(capsys.readouterr().err)
    assert warning["event"] == "python.warning"
    assert warning["category"] == "DeprecationWarning"
    assert secret not in orjson.dumps(note).decode()
    assert note["message"] == "the key [redacted] leaked"


def test_plain_lines_scrub_the_key(secret: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --log-json a line said to a person is scrubbed of the API key too."""
    console.use_json(False)
    console.say("test.note", f"bulk-mms: error: https://h/v2/{secret} is wrong", level="error")
    assert capsys.readouterr().err == "bulk-mms: error: https://h/v2/[redacted] is wrong\n"
