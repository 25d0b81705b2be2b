"""``--metrics-file``: the Prometheus textfile a cron run leaves for node_exporter."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bulk_mms.cli import main
from bulk_mms.fake_api import FakeTelnyx
from tests.conftest import JobFactory, numbers
from tests.threaded import fake_api_thread


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    monkeypatch.delenv("TELNYX_API_KEY", raising=False)


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a textfile, as Prometheus's own parser reads it."""
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            extra = tuple(
                sorted((k, v) for k, v in s.labels.items() if k not in ("command", "name"))
            )
            out[(s.name, extra)] = s.value
    return out


def test_a_run_writes_its_exit_code_times_and_recipients(jobs: JobFactory, tmp_path: Path) -> None:
    """A sandbox run's metrics file parses as Prometheus text: exit code 0, start before end,
    a last success, recipients by state, groups sent and cost; no temporary file is left."""
    jobs.csv([{"phone": p, "first": "x"} for p in [*numbers(10), "oops"]])
    jobs.job(extra="group_size = 5\nmax_rejected_share = 0.5")
    prom = tmp_path / "textfile" / "bulk_mms.prom"
    code = main(["-q", "run", str(jobs.root / "job.toml"), "--sandbox", "--rate", "1000",
                 "--metrics-file", str(prom)])  # fmt: skip
    assert code == 0
    m = samples(prom)
    assert m[("bulk_mms_last_exit_code", ())] == 0
    start = m[("bulk_mms_last_start_timestamp_seconds", ())]
    assert start <= m[("bulk_mms_last_end_timestamp_seconds", ())]
    assert m[("bulk_mms_last_success_timestamp_seconds", ())] >= start
    assert m[("bulk_mms_recipients", (("state", "sent"),))] == 10
    assert m[("bulk_mms_recipients", (("state", "valid"),))] == 10
    assert m[("bulk_mms_groups_sent", ())] == 2
    assert m[("bulk_mms_rows_rejected", ())] == 1
    assert m[("bulk_mms_cost", (("currency", "USD"),))] > 0
    assert [p.name for p in prom.parent.iterdir()] == ["bulk_mms.prom"]


def test_a_failed_run_keeps_the_last_success_and_says_its_exit_code(
    jobs: JobFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that fails (no API key: exit 2) still writes the file, with its exit code, and
    carries over the last success from the file it replaces: what the 26 h alert reads."""
    jobs.people(4)
    jobs.job()
    prom = tmp_path / "bulk_mms.prom"
    job_file = str(jobs.root / "job.toml")
    monkeypatch.setenv("TELNYX_API_KEY", "KEY-metrics")
    with fake_api_thread(FakeTelnyx()) as url:
        args = ["-q", "run", job_file, "--base-url", url, "--metrics-file", str(prom)]
        assert main(args) == 0
    success = samples(prom)[("bulk_mms_last_success_timestamp_seconds", ())]
    monkeypatch.delenv("TELNYX_API_KEY")
    assert main(["-q", "run", job_file, "--metrics-file", str(prom)]) == 2
    m = samples(prom)
    assert m[("bulk_mms_last_exit_code", ())] == 2
    assert m[("bulk_mms_last_success_timestamp_seconds", ())] == success
    assert m[("bulk_mms_last_end_timestamp_seconds", ())] >= success


def names_of(prom: Path) -> set[str]:
    """The ``name`` labels of every sample in a textfile."""
    return {
        s.labels["name"]
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
    }


def test_a_track_refused_before_it_reads_the_ledger_names_the_ledger(tmp_path: Path) -> None:
    """A track that fails before it reads the ledger (no API key: exit 2) still labels its
    samples with the ledger, not an empty name no alert selects."""
    prom = tmp_path / "track.prom"
    ledger = tmp_path / "nightly.jsonl"
    assert main(["-q", "track", str(ledger), "--metrics-file", str(prom)]) == 2
    assert names_of(prom) == {str(ledger)}
    assert samples(prom)[("bulk_mms_last_exit_code", ())] == 2


def test_a_run_refused_before_it_reads_the_job_names_the_job_file(tmp_path: Path) -> None:
    """A run whose job file cannot be read (exit 2) labels its samples with that file, not an
    empty name that tells no job's failure from another's."""
    prom = tmp_path / "run.prom"
    job = tmp_path / "nightly.toml"
    job.write_text('name = "nightly"\ninput = \n', encoding="utf-8")  # a TOML syntax error
    assert main(["-q", "run", str(job), "--metrics-file", str(prom)]) == 2
    assert names_of(prom) == {str(job)}
    assert samples(prom)[("bulk_mms_last_exit_code", ())] == 2


def test_an_unwritable_metrics_file_is_one_line_naming_the_flag(
    jobs: JobFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A metrics file that cannot be written is said in one line naming --metrics-file, and a
    run that otherwise succeeded does not exit 0 (monitoring would not hear of it)."""
    jobs.people(2)
    jobs.job()
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["-q", "run", str(jobs.root / "job.toml"), "--sandbox",
                 "--metrics-file", str(blocker / "x.prom")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert "--metrics-file" in err[0]


def test_a_run_stopped_early_counts_the_whole_input_s_rejected_rows(
    jobs: JobFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that stops before the end of its input (--limit 1) has checked every row: its
    metrics file and its job.summary log line count the rejected rows its summary line
    says (2 of 6), not only those it read before it stopped."""
    jobs.csv(
        "phone,first\n+12125550701,A\n+12125550702,B\n+12125550703,C\nbad1,D\n"
        "+12125550704,E\nbad2,F\n"
    )
    jobs.job(extra="group_size = 1\nmax_rejected_share = 0.5")
    prom = tmp_path / "bulk_mms.prom"
    code = main(["--log-json", "run", str(jobs.root / "job.toml"), "--sandbox", "--limit", "1",
                 "--metrics-file", str(prom)])  # fmt: skip
    assert code == 0
    said = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    (summary,) = [note for note in said if note.get("event") == "job.summary"]
    assert "2 of 6 rows rejected" in summary["message"]
    assert summary["rejected_rows"] == 2
    assert samples(prom)[("bulk_mms_rows_rejected", ())] == 2


def test_a_run_s_metrics_count_who_opted_out_apart(jobs: JobFactory, tmp_path: Path) -> None:
    """A sandbox run whose only miss is a number that opted out (the sandbox's 40300) exits 0,
    and its metrics say so: of the ledger's failed recipients, that one opted out, and no
    group of the run failed."""
    jobs.csv([{"phone": p, "first": "x"} for p in [*numbers(3), "+12125550300"]])
    jobs.job(extra="group_size = 4")
    prom = tmp_path / "bulk_mms.prom"
    code = main(["-q", "run", str(jobs.root / "job.toml"), "--sandbox", "--rate", "1000",
                 "--metrics-file", str(prom)])  # fmt: skip
    assert code == 0
    m = samples(prom)
    assert m[("bulk_mms_last_exit_code", ())] == 0
    assert m[("bulk_mms_recipients", (("state", "sent"),))] == 3
    assert m[("bulk_mms_recipients", (("state", "failed"),))] == 1
    assert m[("bulk_mms_recipients_opted_out", ())] == 1
    assert m[("bulk_mms_groups_failed", ())] == 0
