"""The files commands write (--rejected-csv, --failed-csv, --recipients-csv, --html,
--metrics-file, a ledger to write into) never replace the job's input, its ledger, a ledger
named on the command line or any bulk-mms ledger: refused in one line, exit 2, nothing written."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bulk_mms.cli import main
from bulk_mms.config.folders import sandbox_ledger
from tests.conftest import JobFactory


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    monkeypatch.delenv("BULK_MMS_LEDGER_URL", raising=False)
    monkeypatch.setenv("TELNYX_API_KEY", "x")


def sent(jobs: JobFactory, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, Path]:
    """A sandbox job that sent 10 people: (job file, input, ledger)."""
    people = jobs.people(10)
    job = jobs.job()
    assert main(["-q", "run", str(job.path), "--sandbox", "--rate", "1000"]) == 0
    capsys.readouterr()
    return job.path, people, sandbox_ledger(job.ledger)


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], option: str, path: Path) -> str:
    """Run ``argv``; assert exit 2 and one stderr line naming ``option`` and ``path``, no
    stdout; the line."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(f"bulk-mms: error: {option}: {path} ")
    return line


def contents(*paths: Path) -> list[bytes]:
    return [p.read_bytes() for p in paths]


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("ledger", "is a bulk-mms ledger"),
        ("input", "is the job's input"),
        ("job", "is the job file"),
        ("link", "is a bulk-mms ledger"),  # a symlink to the ledger
    ],
)
def test_run_refuses_a_rejected_csv_over_a_file_it_keeps(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], target: str, says: str
) -> None:
    """run --rejected-csv naming the ledger, the input, the job file or a symlink to the
    ledger exits 2 in one line and leaves every file as it was."""
    job, people, ledger = sent(jobs, capsys)
    link = jobs.root / "link.jsonl"
    link.symlink_to(ledger)
    path = {"ledger": ledger, "input": people, "job": job, "link": link}[target]
    before = contents(job, people, ledger)
    argv = ["run", str(job), "--sandbox", "--dry-run", "--rejected-csv", str(path)]
    assert says in refused(capsys, argv, "--rejected-csv", path)
    assert contents(job, people, ledger) == before
    assert link.is_symlink()


def test_run_refuses_a_rejected_csv_over_the_ledger_before_it_exists(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --rejected-csv at the path of the job's ledger, not written yet, is refused too."""
    jobs.people(10)
    job = jobs.job()
    argv = ["run", str(job.path), "--dry-run", "--rejected-csv", str(job.ledger)]
    assert "is the job's ledger" in refused(capsys, argv, "--rejected-csv", job.ledger)
    assert not job.ledger.exists()


def test_run_refuses_the_input_the_job_file_names_with_input(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --input, the input the job file names is kept as well."""
    job, people, _ = sent(jobs, capsys)
    other = jobs.csv([{"phone": "+12125550100", "first": "A"}], "other.csv")
    before = people.read_bytes()
    argv = ["run", str(job), "--sandbox", "--dry-run", "--input", str(other)]
    line = refused(capsys, [*argv, "--rejected-csv", str(people)], "--rejected-csv", people)
    assert "is the job file's input" in line
    assert people.read_bytes() == before


@pytest.mark.parametrize(
    ("option", "target", "says"),
    [
        ("--failed-csv", "input", "is the job's input"),
        ("--failed-csv", "ledger", "is the ledger given on the command line"),
        ("--html", "ledger", "is the ledger given on the command line"),
        ("--rejected-csv", "link", "is the ledger given on the command line"),
        ("--recipients-csv", "other", "is a bulk-mms ledger"),
        ("--failed-csv", "job", "is a TOML file"),
        ("--html", "job", "is a TOML file"),
    ],
)
def test_report_refuses_an_output_over_a_file_it_keeps(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], option: str, target: str, says: str
) -> None:
    """report's outputs over the ledger's input, the ledger (by name or symlink), another
    ledger or a job file (which no ledger names) exit 2 in one line, before the report is
    printed, and change nothing."""
    job, people, ledger = sent(jobs, capsys)
    link = jobs.root / "link.jsonl"
    link.symlink_to(ledger)
    other = jobs.root / "other.jsonl"
    other.write_bytes(ledger.read_bytes())
    path = {"input": people, "ledger": ledger, "link": link, "other": other, "job": job}[target]
    before = contents(people, ledger, other, job)
    argv = ["report", str(ledger), "--format", "json", option, str(path)]
    assert says in refused(capsys, argv, option, path)
    assert contents(people, ledger, other, job) == before


def test_report_refuses_two_outputs_in_one_file(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two output options naming one file (by two spellings) are refused: one would be lost."""
    _, _, ledger = sent(jobs, capsys)
    one, same = jobs.root / "out.csv", jobs.root / "sub" / ".." / "out.csv"
    argv = ["report", str(ledger), "--rejected-csv", str(one), "--failed-csv", str(same)]
    assert "is the file --rejected-csv names" in refused(capsys, argv, "--failed-csv", same)
    assert not one.exists()


def test_report_writes_its_files_elsewhere(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outputs named apart from the kept files are written, and nothing is left beside them."""
    _, _, ledger = sent(jobs, capsys)
    out = jobs.root / "out"
    argv = ["report", str(ledger), "--format", "json"]
    files = ["--failed-csv", "failed.csv", "--recipients-csv", "everyone.csv"]
    assert main([*argv, *(f if f.startswith("--") else str(out / f) for f in files)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["everyone.csv", "failed.csv"]
    assert (out / "everyone.csv").read_text(encoding="utf-8").count("\n") == 11


def test_a_metrics_file_over_the_input_is_refused_and_not_written(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """--metrics-file naming the job's input is refused (exit 2), and no metrics replace it,
    though a run's metrics are written whatever its outcome."""
    job, people, ledger = sent(jobs, capsys)
    before = contents(people, ledger)
    argv = ["run", str(job), "--sandbox", "--dry-run", "--metrics-file", str(people)]
    assert "is the job's input" in refused(capsys, argv, "--metrics-file", people)
    argv = ["run", str(job), "--sandbox", "--dry-run", "--metrics-file", str(ledger)]
    assert "is a bulk-mms ledger" in refused(capsys, argv, "--metrics-file", ledger)
    assert contents(people, ledger) == before


def test_a_failing_command_writes_no_metrics_over_a_ledger(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command that fails before its job is read still never writes metrics over a ledger."""
    _, _, ledger = sent(jobs, capsys)
    before = ledger.read_bytes()
    missing = jobs.root / "missing.toml"
    argv = ["run", str(missing), "--metrics-file", str(ledger)]
    assert "is a bulk-mms ledger" in refused(capsys, argv, "--metrics-file", ledger)
    assert ledger.read_bytes() == before


@pytest.mark.parametrize("command", ["run", "copy"])
def test_a_ledger_is_never_opened_in_a_file_that_is_not_one(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """run --ledger and ledger copy's TARGET naming a file that is not a ledger (here the
    input, its last line unfinished) are refused: the file keeps every byte."""
    job, people, ledger = sent(jobs, capsys)
    people.write_bytes(people.read_bytes().rstrip(b"\n"))  # what opening a ledger would cut
    before = people.read_bytes()
    if command == "run":
        argv, option = ["run", str(job), "--dry-run", "--ledger", str(people)], "--ledger"
    else:
        argv, option = ["ledger", "copy", str(ledger), str(people)], "TARGET"
    assert "is not a bulk-mms ledger" in refused(capsys, argv, option, people)
    assert people.read_bytes() == before


@pytest.mark.parametrize("ledger", ["notes.txt", "/dev/null"])
def test_a_job_ledger_that_is_no_ledger_is_refused_naming_the_job_file(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], ledger: str
) -> None:
    """A job whose ledger setting names a file that is not a ledger, or a device, is refused
    in one line naming the job file and its ledger setting, as every other setting of the
    file is named; the file keeps every byte."""
    jobs.people(4)
    notes = jobs.root / "notes.txt"
    notes.write_text("keep me\n", encoding="utf-8")
    job = jobs.job(extra=f'ledger = "{ledger}"')
    where = jobs.root / ledger
    line = refused(capsys, ["run", str(job.path), "--dry-run"], f"{job.path}: ledger", where)
    assert ("is not a" in line, notes.read_text(encoding="utf-8")) == (True, "keep me\n")


def test_the_suppression_file_is_never_the_jobs_input(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose suppression list is its own input is refused before the list is written."""
    people = jobs.people(10)
    job = jobs.job()
    config = jobs.root / "config.toml"
    config.write_text('[suppression]\nfile = "people.csv"\n', encoding="utf-8")
    argv = ["run", str(job.path), "--dry-run", "--config", str(config)]
    assert "is the job's input" in refused(capsys, argv, "suppression.file", people)


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("report", "--failed-csv"),
        ("report", "--rejected-csv"),
        ("report", "--recipients-csv"),
        ("report", "--html"),
        ("run", "--rejected-csv"),
        ("run", "--metrics-file"),
    ],
)
def test_an_output_option_given_an_empty_path_is_one_line(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], command: str, option: str
) -> None:
    """An output option given "" (an unset shell variable: the current folder) exits 2 in
    one line naming it, with no traceback, and the ledger keeps every byte."""
    job, _, ledger = sent(jobs, capsys)
    before = ledger.read_bytes()
    if command == "run":
        argv = ["run", str(job), "--sandbox", "--dry-run", option, ""]
    else:
        argv = ["report", str(ledger), "--format", "json", option, ""]
    assert "names a folder, not a file" in refused(capsys, argv, option, Path())
    assert ledger.read_bytes() == before


def _as_owner_only() -> list[str]:
    """How to run a command that file modes bind: as is, or for root without the
    capabilities that read any file (setpriv); skips the test where neither works."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root without setpriv ignores file modes")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def test_an_unreadable_ledger_is_said_unreadable_not_another_file(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose ledger it may not read exits 2 in one line saying so, never that the file
    is not a ledger to be replaced by a new one (which would text everyone again)."""
    job, _, ledger = sent(jobs, capsys)
    before = ledger.read_bytes()
    ledger.chmod(0)
    argv = [*_as_owner_only(), sys.executable, "-m", "bulk_mms", "-q", "run", str(job), "--sandbox"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=os.environ)
    ledger.chmod(0o644)
    assert done.returncode == 2
    assert done.stderr == f"bulk-mms: error: {ledger}: cannot open for writing: Permission denied\n"
    assert ledger.read_bytes() == before


def _file_size_limit(limit: int) -> Callable[[], None]:
    """A child's setup: writes past ``limit`` bytes fail with EFBIG (SIGXFSZ ignored)."""

    def setup() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return setup


def test_a_ledger_copy_the_disk_cut_short_is_finished_by_its_rerun(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """ledger copy stopped by a full disk (EFBIG) exits 7 in one line naming the target, and
    the rerun it asks for appends the rest: the target ends as the source, every event once."""
    _, _, ledger = sent(jobs, capsys)
    target = jobs.root / "copy.jsonl"
    argv = [sys.executable, "-m", "bulk_mms", "-q", "ledger", "copy", str(ledger), str(target)]
    cut = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        env=os.environ,
        preexec_fn=_file_size_limit(ledger.stat().st_size // 2),
    )
    assert cut.returncode == 7
    [line] = cut.stderr.splitlines()
    assert line.startswith(f"bulk-mms: error: {target}: cannot write: File too large")
    assert 0 < target.stat().st_size < ledger.stat().st_size
    assert main(["-q", "ledger", "copy", str(ledger), str(target)]) == 0
    assert target.read_bytes() == ledger.read_bytes()
    assert main(["ledger", "copy", str(ledger), str(target)]) == 0
    assert "copied 0 events" in capsys.readouterr().err


def test_a_ledger_copied_onto_itself_is_refused_in_one_line(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ledger copy L L` (the same file, named alike or another way) is refused (exit 2, one
    line saying so), not "copied 0 events", and keeps every byte."""
    _, _, ledger = sent(jobs, capsys)
    before = ledger.read_bytes()
    monkeypatch.chdir(ledger.parent)
    for target in (str(ledger), ledger.name):
        assert main(["-q", "ledger", "copy", str(ledger), target]) == 2
        assert capsys.readouterr().err == (
            f"bulk-mms: error: {target}: is the source ledger: copy into a new ledger\n"
        )
    assert ledger.read_bytes() == before


def test_a_ledger_copied_onto_a_hard_link_of_itself_is_refused(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy's target that is another name of the source's file (a hard link) is the source
    itself: refused (exit 2, one line), not "copied 0 events"."""
    _, _, ledger = sent(jobs, capsys)
    target = jobs.root / "linked.jsonl"
    os.link(ledger, target)
    assert main(["-q", "ledger", "copy", str(ledger), str(target)]) == 2
    assert capsys.readouterr().err == (
        f"bulk-mms: error: {target}: is the source ledger: copy into a new ledger\n"
    )


def test_a_ledger_copy_into_another_ledgers_events_is_refused(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy's target holding events that are not the source's first ones is refused (exit
    2, one line) and keeps every byte: only a cut-short copy of the same source is resumed."""
    _, _, ledger = sent(jobs, capsys)
    target = jobs.root / "copy.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    target.write_bytes(b"".join([lines[0], *lines[2:4]]))  # the header, then not its next
    before = target.read_bytes()
    assert main(["-q", "ledger", "copy", str(ledger), str(target)]) == 2
    assert capsys.readouterr().err == (
        f"bulk-mms: error: {target}: already holds events: copy into a new ledger\n"
    )
    assert target.read_bytes() == before
