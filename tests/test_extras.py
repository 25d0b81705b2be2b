"""The base install (no extras) sends, resumes and reports with JSONL; each optional feature
without its extra is refused in one line that names the extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bulk_mms.errors import MissingExtra
from bulk_mms.extras import EXTRAS, needs
from tests.test_log_json import cli_env, demo_copy

pytestmark = pytest.mark.slow

#: ``bulk-mms`` as a base install runs it: importing any extra's package fails, as if absent.
BASE_INSTALL = f"""
import sys

class RefuseExtras:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {sorted(m for ms in EXTRAS.values() for m in ms)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, RefuseExtras())
from bulk_mms.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def base_install(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``bulk-mms ARGV`` in a process where no extra's package can be imported."""
    return subprocess.run(
        [sys.executable, "-c", BASE_INSTALL, "-q", *argv],
        capture_output=True,
        text=True,
        env=cli_env(tmp_path),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


def test_the_base_install_sends_resumes_and_reports_with_jsonl(tmp_path: Path) -> None:
    """The sandbox demo runs, resumes and reports without psycopg, matplotlib,
    prometheus_client or cryptography."""
    job = demo_copy(tmp_path)
    ledger = job.parent / "ledgers" / "sandbox" / "demo.jsonl"
    first = base_install(tmp_path, "run", str(job), "--sandbox")
    assert first.returncode == 0, first.stderr  # the demo's one opt-out is no failure
    assert "Traceback" not in first.stderr
    again = base_install(tmp_path, "run", str(job), "--sandbox")
    assert again.returncode == 0, again.stderr
    assert "sent 0 groups" in again.stdout + again.stderr
    report = base_install(tmp_path, "report", str(ledger), "--format", "json")
    assert report.returncode == 0, report.stderr
    assert '"sent": 238' in report.stdout


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["report", "{ledger}", "--html", "page.html"], "html"),
        (["track", "{ledger}", "--metrics-file", "m.prom"], "metrics"),
        (["webhooks", "{ledger}", "--listen", "127.0.0.1:0"], "webhooks"),
        (["report", "postgresql://bulk@127.0.0.1:9/none"], "postgres"),
    ],
)
def test_a_feature_without_its_extra_says_which_to_install(
    tmp_path: Path, argv: list[str], extra: str
) -> None:
    """Without its extra a feature exits 2 with one line naming `bulk-mms[EXTRA]`."""
    ledger = tmp_path / "demo.jsonl"
    ledger.write_text("")
    done = base_install(tmp_path, *(a.format(ledger=ledger) for a in argv))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line, no traceback
    assert f"pip install 'bulk-mms[{extra}]'" in done.stderr
    assert not (tmp_path / "page.html").exists()


def test_needs_passes_other_missing_modules_through() -> None:
    """Only an extra's own package becomes MissingExtra; any other missing module is a bug."""
    with pytest.raises(MissingExtra, match=r"bulk-mms\[html\]"), needs("html", "report --html"):
        raise ModuleNotFoundError("No module named 'matplotlib.figure'", name="matplotlib.figure")
    with pytest.raises(ModuleNotFoundError), needs("html", "report --html"):
        raise ModuleNotFoundError("No module named 'nothing_here'", name="nothing_here")
