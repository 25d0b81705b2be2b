"""File names the locale cannot carry (``LANG=C`` with ``PYTHONUTF8=0``) or that are not
UTF-8: one line naming the setting or flag, never a traceback, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bulk_mms import log
from bulk_mms.filenames import file_name_problem
from tests.conftest import JobFactory

#: A locale whose file names are ASCII, with UTF-8 mode (which Python turns on for it) off.
ASCII_LOCALE = {"PYTHONUTF8": "0", "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0"}


def _bulk_mms(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LC_ALL", "LANG", "LC_CTYPE")}
    env.update(ASCII_LOCALE, TELNYX_API_KEY="unused-in-the-sandbox-0123")
    return subprocess.run(
        [sys.executable, "-m", "bulk_mms", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
        check=False,
    )


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr
    [line] = [x for x in done.stderr.splitlines() if "error" in x]
    return line


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "toml"),
    [
        ("input", 'input = "d\u00e9mo.csv"'),
        ("ledger", 'input = "people.csv"\nledger = "l\u00e9.jsonl"'),
    ],
)
def test_a_job_path_the_locale_cannot_name_is_one_line_naming_the_setting(
    jobs: JobFactory, setting: str, toml: str
) -> None:
    """Under an ASCII locale, a job's accented input or ledger is exit 2 naming the setting."""
    jobs.people(3)
    (jobs.root / "job.toml").write_text(
        f'name = "n"\n{toml}\ngroup_size = 1\n[message]\nfrom = "+18445550001"\ntext = "x"\n',
        encoding="utf-8",
    )
    done = _bulk_mms(["run", "job.toml", "--sandbox"], jobs.root)
    line = _one_error(done)
    assert done.returncode == 2
    assert f"job.toml: {setting}: " in line
    assert "UTF-8 locale" in line
    assert not (jobs.root / "ledgers").exists()


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--ledger", "--input", "--rejected-csv"])
def test_a_command_line_path_the_locale_cannot_name_is_one_line_naming_the_flag(
    jobs: JobFactory, flag: str
) -> None:
    """Under an ASCII locale, an accented path on the command line is exit 2 naming the flag,
    not a traceback from the first log line or ledger event that holds it."""
    jobs.people(3)
    jobs.job()
    done = _bulk_mms(["run", "job.toml", "--sandbox", flag, "\u00e9.csv"], jobs.root)
    line = _one_error(done)
    assert done.returncode == 2
    assert f"argument {flag}: " in line
    assert not (jobs.root / "ledgers").exists()


def test_a_name_in_bytes_of_another_encoding_is_refused() -> None:
    """A file name that is not UTF-8 (Latin-1 bytes) is named, escaped, and refused."""
    problem = file_name_problem(os.fsdecode(b"caf\xe9.csv"))
    assert problem is not None
    assert "caf\\xe9.csv' is not a UTF-8 file name" in problem
    assert file_name_problem("caf\u00e9.csv") is None


def test_a_log_line_with_an_undecoded_name_is_written() -> None:
    """A log value holding bytes the locale left undecoded is written as the name they spell."""
    line = log.json_dumps({"path": Path("caf\udcc3\udca9"), "bad": ["\udcff"], "n": 1})
    assert orjson.loads(line) == {"path": "caf\u00e9", "bad": ["\\xff"], "n": 1}
