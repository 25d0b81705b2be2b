"""The command line, in-process: exit codes, one-line errors, status, and no leaked key."""

from __future__ import annotations

import argparse
import errno
import gc
import io
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yarl

import bulk_mms.cli as cli
from bulk_mms import commands, log
from bulk_mms.cli import main
from bulk_mms.clock import instant
from bulk_mms.config.folders import sandbox_ledger
from bulk_mms.errors import BulkMmsError, Exit
from bulk_mms.fake_api import FakeTelnyx, Fault, carrier_timeline, will_fail
from bulk_mms.ledger import jsonl, open_store
from bulk_mms.testing import ledger_events
from tests.conftest import JobFactory, numbers
from tests.threaded import fake_api_thread

SECRET = "KEYsecret-0123456789abcdef"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    monkeypatch.setenv("TELNYX_API_KEY", SECRET)


def status_json(ledger: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert main(["status", str(ledger), "--json"]) == 0
    data: dict[str, object] = orjson.loads(capsys.readouterr().out)
    return data


def test_sandbox_run_then_status_and_rerun(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sandbox run exits 0; status --json agrees; a rerun sends nothing and still exits 0."""
    jobs.csv([{"phone": p, "first": "x"} for p in [*numbers(19), "oops", numbers(1)[0]]])
    job = jobs.job()
    job_file = str(jobs.root / "job.toml")
    assert main(["run", job_file, "--sandbox", "--rate", "1000"]) == 0
    out = capsys.readouterr().out
    assert "sent 3 groups (19 recipients)" in out
    status = status_json(sandbox_ledger(job.ledger), capsys)
    assert status["sent_groups"] == 3
    assert status["sent_recipients"] == 19
    assert (status["rejected_rows"], status["duplicate_rows"]) == (1, 1)
    assert status["failed_groups"] == 0
    assert status["in_doubt_groups"] == 0
    assert status["cost"] == "0.0969"
    assert main(["run", job_file, "--sandbox"]) == 0
    assert "sent 0 groups" in capsys.readouterr().out
    assert status_json(sandbox_ledger(job.ledger), capsys)["sent_recipients"] == 19


def test_a_sandbox_run_given_a_database_ledger_is_refused_in_one_line(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """--sandbox with --ledger postgresql://... is refused (exit 2, the password unshown),
    not run into the job's sandbox file with the flag silently dropped."""
    jobs.people(3)
    job = jobs.job()
    url = "postgresql://u:s3cr3t@127.0.0.1:1/db"
    assert main(["run", str(jobs.root / "job.toml"), "--sandbox", "--ledger", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--ledger: a --sandbox run's ledger is never a database" in err
    assert "s3cr3t" not in err
    assert not sandbox_ledger(job.ledger).exists()


def test_run_against_api_with_key_never_leaks_it(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every recipient reaches the server once; the key is in no output and not in the ledger."""
    fake = FakeTelnyx(api_key=SECRET)
    jobs.people(30)
    job = jobs.job()
    with fake_api_thread(fake) as url:
        code = main(["-v", "run", str(job.path), "--base-url", url, "--rate", "500"])
    assert code == 0
    assert fake.recipient_counts() == dict.fromkeys(numbers(30), 1)
    assert all(len(m.to) <= 8 for m in fake.accepted)
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert SECRET.encode() not in job.ledger.read_bytes()


def test_refused_key_exits_3(jobs: JobFactory, capsys: pytest.CaptureFixture[str]) -> None:
    """A key the API refuses stops the run with exit code 3 and one line naming the problem."""
    fake = FakeTelnyx(api_key="the-right-key")
    jobs.people(30)
    job = jobs.job(extra="group_size = 1")
    with fake_api_thread(fake) as url:
        code = main(["run", str(job.path), "--base-url", url, "--rate", "500"])
    assert code == 3
    err = capsys.readouterr().err
    assert "API key was refused" in err
    assert SECRET not in err
    assert len(fake.requests) == 0  # refused before the body was even read
    assert "Traceback" not in err


def test_failed_groups_exit_1(jobs: JobFactory, capsys: pytest.CaptureFixture[str]) -> None:
    """A run that finishes with a failed group exits 1, and status counts it."""
    fake = FakeTelnyx()
    fake.faults.append(Fault("status", 400, code="40001"))
    jobs.people(16)
    job = jobs.job()
    with fake_api_thread(fake) as url:
        code = main(["run", str(job.path), "--base-url", url, "--concurrency", "1"])
    assert code == 1
    assert status_json(job.ledger, capsys)["failed_groups"] == 1


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("bad_toml", [], "syntax"),
        ("group_size_9", [], "group_size: must be from 1 to 8"),
        ("ok", ["--rate", "-1"], "error: --rate: must be from 0.001 to 10000, not -1"),
        ("ok", ["--concurrency", "0"], "error: --concurrency: must be from 1 to 1000, not 0"),
        ("ok", ["--base-url", "ftp://x.test"], "error: --base-url: 'ftp://x.test' is not"),
        ("ok", ["--base-url", ""], "error: --base-url: '' is not an http(s) URL"),
        ("ok", ["--config", "missing.toml"], "missing.toml: file: not found"),
        ("missing_column", [], "'nickname' is not a column"),
        ("no_input", [], "no such file"),
        ("empty_input", [], "is empty"),
    ],
)
def test_bad_usage_is_one_line_exit_2(
    jobs: JobFactory,
    capsys: pytest.CaptureFixture[str],
    setup: str,
    args: list[str],
    message: str,
) -> None:
    """Config and input mistakes exit 2 with a single 'bulk-mms: error:' line and no traceback."""
    jobs.people(3)
    if setup == "bad_toml":
        (jobs.root / "job.toml").write_text("name = \n")
    elif setup == "group_size_9":
        (jobs.root / "job.toml").write_text(
            'name = "n"\ninput = "people.csv"\ngroup_size = 9\n[message]\nfrom = "+18445550001"\n'
            'text = "x"\n'
        )
    elif setup == "missing_column":
        jobs.job(message='text = "Hi {nickname}"')
    elif setup == "no_input":
        jobs.job("absent.csv")
    elif setup == "empty_input":
        (jobs.root / "empty.csv").write_text("")
        jobs.job("empty.csv")
    else:
        jobs.job()
    capsys.readouterr()
    code = main(["run", str(jobs.root / "job.toml"), "--sandbox", *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("bulk-mms:")]
    assert code == 2
    assert len(lines) == 1
    assert message in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["run", "job.toml", "--limit", "0"], "argument --limit: must be 1 or more, not 0"),
        (["run", "job.toml", "--rate", "x"], "argument --rate: invalid float value: 'x'"),
        *(
            (["run", "job.toml", "--progress-every", v], f"argument --progress-every: {said}")
            for v, said in [
                ("-1", "must be from 1 to 86400, not -1"),
                ("0", "must be from 1 to 86400, not 0"),
                ("nan", "must be from 1 to 86400, not nan"),
                ("1e309", "must be from 1 to 86400, not inf"),
                ("soon", "'soon' is not a number"),
            ]
        ),
        (["report"], "the following arguments are required: ledger"),
        (["nosuch"], "argument COMMAND: invalid choice: 'nosuch'"),
    ],
)
def test_a_bad_argument_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    """A bad command-line value is one stderr line naming the argument (no usage block), exit 2."""
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert named in line
    assert line.startswith("bulk-mms")
    assert line.endswith("--help)")


def test_help_still_shows_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints argparse's usage and options, exit 0."""
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bulk-mms run")
    assert "--limit N" in out


def test_missing_key_is_exit_2_naming_the_variable(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without TELNYX_API_KEY (and without --sandbox) nothing is sent and the variable is named."""
    monkeypatch.delenv("TELNYX_API_KEY")
    jobs.people(3)
    job = jobs.job()
    assert main(["run", str(job.path)]) == 2
    assert "TELNYX_API_KEY: is not set" in capsys.readouterr().err
    assert not job.ledger.exists()


@pytest.mark.parametrize("key", ["KEY\x01abc", "KEY\x7fabc", "KEY\u20acabc"])
@pytest.mark.parametrize("command", ["run", "optouts"])
def test_a_key_with_a_character_no_header_carries_is_named(
    jobs: JobFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    command: str,
) -> None:
    """A TELNYX_API_KEY holding a control or non-ASCII character exits 2 before any request,
    in one line naming the variable (not the base URL), and never shows the key."""
    monkeypatch.setenv("TELNYX_API_KEY", key)
    jobs.people(3)
    job = jobs.job()
    argv = ["run", str(job.path)] if command == "run" else ["optouts", "sync"]
    assert main([*argv, "--base-url", "http://127.0.0.1:9/v2"]) == 2  # never the live API
    captured = capsys.readouterr()
    assert captured.err == (
        "bulk-mms: error: TELNYX_API_KEY: holds a character that is not printable ASCII; "
        "check how it was exported\n"
    )
    assert "abc" not in captured.out
    assert not job.ledger.exists()


def test_an_error_naming_a_file_with_a_line_break_stays_one_line(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file's name holding a newline or an escape sequence is said escaped: the error is one
    line on stderr, and no control character reaches the terminal."""
    jobs.people(3)
    job = jobs.job(input_name="new\\nline\\u001b[2J.csv")
    assert main(["-q", "run", str(job.path), "--sandbox", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == f"bulk-mms: error: {jobs.root}/new\\nline\\x1b[2J.csv: no such file\n"


def test_locked_ledger_exits_75(jobs: JobFactory, capsys: pytest.CaptureFixture[str]) -> None:
    """A second run on a ledger in use exits 75 naming the holder's PID."""
    jobs.people(3)
    job = jobs.job()
    holder = open_store(sandbox_ledger(job.ledger), "run")
    try:
        assert main(["run", str(job.path), "--sandbox"]) == 75
    finally:
        holder.close_sync()
    assert f"PID {os.getpid()}" in capsys.readouterr().err


def test_dry_run_prints_counts_and_sends_nothing(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--dry-run needs no key, prints what it would send, and writes no ledger."""
    monkeypatch.delenv("TELNYX_API_KEY")
    jobs.people(10)
    job = jobs.job()
    assert main(["run", str(job.path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would send   2 groups, 10 recipients" in out
    assert "Hello P0" in out
    assert not job.ledger.exists()


def test_status_of_missing_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """status on a missing ledger is a one-line error, exit 2."""
    assert main(["status", str(tmp_path / "none.jsonl")]) == 2
    assert "no such ledger" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli() -> None:
    """`python -m bulk_mms --version` prints the version."""
    out = subprocess.run(
        [sys.executable, "-m", "bulk_mms", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("bulk-mms ")


def test_unreachable_api_is_one_line_and_resumable(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listening at the base URL: exit 1, one line saying so, and no group lost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (jobs.root / "config.toml").write_text("[retry]\nattempts = 1\n")
    jobs.people(40)
    job = jobs.job(extra="group_size = 2")
    code = main(
        [
            "-q",
            "run",
            str(job.path),
            "--config",
            str(jobs.root / "config.toml"),
            "--base-url",
            f"http://127.0.0.1:{port}/v2",
            "--concurrency",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("bulk-mms:")]
    assert len(lines) == 1
    assert "the API keeps failing" in lines[0]
    assert "cannot connect" in lines[0]
    assert "Traceback" not in err
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    assert fake.recipient_counts() == dict.fromkeys(numbers(40), 1)


def test_campaign_end_to_end_through_the_cli(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """run, track --follow, report --failed-csv, run --input: the resend reaches exactly the
    recipients the server failed, and report agrees with the server recipient by recipient."""
    fake = FakeTelnyx(
        delivery_status=carrier_timeline(fail_every=4, sent_after=0.05, final_after=0.2)
    )
    jobs.people(30)
    job = jobs.job(extra="group_size = 5")
    cfg = jobs.root / "config.toml"
    cfg.write_text("[track]\ninterval = 1\n")
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url, "--rate", "1000"]) == 0
        capsys.readouterr()
        assert (
            main(
                [
                    "-q",
                    "track",
                    str(job.ledger),
                    "--base-url",
                    url,
                    "--follow",
                    "--config",
                    str(cfg),
                ]
            )
            == 0
        )
        assert "delivery_failed" in capsys.readouterr().out
        failed = jobs.root / "failed.csv"
        assert (
            main(["report", str(job.ledger), "--format", "json", "--failed-csv", str(failed)]) == 0
        )
        report = orjson.loads(capsys.readouterr().out)
        expected = [p for p in numbers(30) if will_fail(p, 4)]
        assert report["delivery"] == {
            "delivered": 30 - len(expected),
            "delivery_failed": len(expected),
        }
        before = len(fake.accepted)
        assert main(["-q", "run", str(job.path), "--base-url", url, "--input", str(failed)]) == 0
        resent = sorted(p for m in fake.accepted[before:] for p in m.to)
        assert resent == sorted(expected)
        (round1,) = (jobs.root / "ledgers").glob("test-job-failed-*.jsonl")
        # the same people fail again; the second round is a campaign of its own, and sends
        # (its file is a new one: round 1's input is never written over)
        track = ["-q", "track", str(round1), "--base-url", url, "--follow", "--config", str(cfg)]
        assert main(track) == 0
        again = jobs.root / "failed2.csv"
        assert main(["report", str(round1), "--format", "json", "--failed-csv", str(again)]) == 0
        before = len(fake.accepted)
        assert main(["-q", "run", str(job.path), "--base-url", url, "--input", str(again)]) == 0
        assert sorted(p for m in fake.accepted[before:] for p in m.to) == sorted(expected)
    assert len(list((jobs.root / "ledgers").glob("test-job-failed*-*.jsonl"))) == 2


def test_a_resend_of_a_failed_file_that_lists_nobody_is_exit_0_and_sends_nothing(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a night where everyone got it, `report --failed-csv` writes its header alone, and
    `run --input` of that file (a cron script's resend step) sends nothing, opens no ledger
    and exits 0, saying so; an input of another kind with no rows is still refused (exit 2)."""
    fake = FakeTelnyx()
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    failed = jobs.root / "failed.csv"
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
        assert main(["report", str(job.ledger), "--failed-csv", str(failed)]) == 0
        capsys.readouterr()
        before = len(fake.accepted)
        assert main(["run", str(job.path), "--base-url", url, "--input", str(failed)]) == 0
        assert "lists nobody" in capsys.readouterr().err
        assert len(fake.accepted) == before
        assert list((jobs.root / "ledgers").glob("test-job-failed-*")) == []
        bare = jobs.root / "bare.csv"
        bare.write_text("phone,first_name\n")
        assert main(["run", str(job.path), "--base-url", url, "--input", str(bare)]) == 2
    assert "no data rows" in capsys.readouterr().err


def test_a_failed_file_listing_nobody_whose_rows_a_spreadsheet_cleared_is_exit_0(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed file whose rows were cleared in a spreadsheet and saved (the header, then
    rows of empty cells, CRLF) lists nobody: `run --input` sends nothing and exits 0, as for
    the header alone, not refused as "a header but no data rows"."""
    fake = FakeTelnyx()
    fake.faults.append(Fault("status", 400, code="40001"))
    jobs.people(2)
    job = jobs.job(extra="group_size = 1")
    failed = jobs.root / "failed.csv"
    with fake_api_thread(fake) as url:
        run = ["run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main(["-q", *run]) == 1
        assert main(["-q", "report", str(job.ledger), "--failed-csv", str(failed)]) == 0
        header, *rows = failed.read_text(encoding="utf-8-sig").splitlines()
        assert len(rows) == 1
        empty = "," * header.count(",")
        failed.write_text(f"{header}\r\n{empty}\r\n{empty}\r\n", encoding="utf-8-sig")
        capsys.readouterr()
        before = len(fake.accepted)
        assert main([*run, "--input", str(failed)]) == 0
        assert len(fake.accepted) == before
    assert "lists nobody" in capsys.readouterr().err


def test_a_base_url_with_credentials_is_exit_2_before_anything(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """https://user:pass@host: one line naming --base-url, exit 2, no password echoed, and not
    even a ledger header written (the check comes before the first request)."""
    jobs.people(3)
    job = jobs.job()
    code = main(["run", str(job.path), "--base-url", "https://ops:hunter2@api.example.com/v2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--base-url: must not carry credentials" in err
    assert "hunter2" not in err
    assert "Traceback" not in err
    assert not job.ledger.exists()


def test_a_redirecting_base_url_is_exit_2_naming_it(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that redirects the send stops the run with exit 2 and a line that names the
    base URL as the likely cause; the redirect is not followed."""
    fake = FakeTelnyx()
    fake.faults.append(Fault("redirect", 301, location="https://elsewhere.example.com/v2"))
    jobs.people(3)
    job = jobs.job()
    with fake_api_thread(fake) as url:
        code = main(["-q", "run", str(job.path), "--base-url", url])
    err = capsys.readouterr().err
    assert code == 2
    assert f"check the base URL ({url}" in err
    assert "(to https://elsewhere.example.com)" in err
    assert fake.accepted == []
    assert len(fake.requests) == 1


def test_plain_http_off_this_machine_warns(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain-http base URL to another host warns that the key would cross in clear text."""
    jobs.people(3)
    job = jobs.job()
    port = _free_port()
    code = main(
        [
            "--log-json",
            "run",
            str(job.path),
            "--base-url",
            f"http://10.255.255.1:{port}/v2",
            "--config",
            str(_fast_fail_config(jobs)),
        ]
    )
    err = capsys.readouterr().err
    assert code != 0  # nothing there (exit 1), or something that is not the API (exit 2)
    assert "config.cleartext_base_url" in err
    assert SECRET not in err
    url = f"http://10.255.255.1:{port}/v2"
    assert main(["--log-json", "run", str(job.path), "--base-url", url, "--dry-run"]) == 0
    assert "config.cleartext_base_url" in capsys.readouterr().err  # the dry run warns too


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fast_fail_config(jobs: JobFactory) -> Path:
    cfg = jobs.root / "fastfail.toml"
    cfg.write_text("[api]\nconnect_timeout = 0.1\n[retry]\nattempts = 1\nbackoff_initial = 0\n")
    return cfg


def test_a_job_without_a_grouping_choice_sends_nothing(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """No group_by and no mix_unrelated: exit 2 before anything is sent, one line naming both
    choices; the dry run of a mixing job states what mixing means."""
    jobs.people(10)
    (jobs.root / "job.toml").write_text(
        'name = "n"\ninput = "people.csv"\n[message]\nfrom = "+18445550001"\ntext = "x"\n'
    )
    code = main(["run", str(jobs.root / "job.toml"), "--sandbox"])
    err = capsys.readouterr().err
    assert code == 2
    assert "group_by" in err
    assert "mix_unrelated = true" in err
    assert not (jobs.root / "ledgers").exists()
    job = jobs.job()
    assert main(["run", str(job.path), "--dry-run"]) == 0
    assert "sees the others' numbers" in capsys.readouterr().out


def test_limit_sends_the_first_groups_and_a_plain_rerun_the_rest(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """run --limit 2 sends two groups into the campaign's ledger; a plain run sends the rest;
    every recipient gets exactly one message."""
    fake = FakeTelnyx()
    jobs.people(40)
    job = jobs.job(extra="group_size = 4")
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url, "--limit", "2"]) == 0
        assert len(fake.accepted) == 2
        assert "--limit reached: 2 groups" in capsys.readouterr().err
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    assert len(fake.accepted) == 10
    assert fake.recipient_counts() == dict.fromkeys(numbers(40), 1)


def test_a_seed_send_reaches_only_the_seeds_in_a_ledger_of_its_own(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """run --to sends the job's message, rendered from the first rows, to the seed numbers
    only, in its own ledger; the campaign then sends to everyone as if nothing happened."""
    fake = FakeTelnyx()
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    with fake_api_thread(fake) as url:
        seeds = ["+13125550100", "(312) 555-0101"]
        code = main(
            ["-q", "run", str(job.path), "--base-url", url, "--to", seeds[0], "--to", seeds[1]]
        )
        assert code == 0
        (seed,) = fake.accepted
        assert seed.to == ("+13125550100", "+13125550101")
        assert seed.body["text"] == "Hello P0"
        assert not job.ledger.exists()
        assert len(list((jobs.root / "ledgers").glob("test-job-seed-*.jsonl"))) == 1
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    assert fake.recipient_counts() == {
        **dict.fromkeys(numbers(8), 1),
        **dict.fromkeys(["+13125550100", "+13125550101"], 1),
    }
    assert main(["run", str(job.path), "--to", "12", "--sandbox"]) == 2
    assert "--to" in capsys.readouterr().err


def test_a_seed_number_that_is_the_jobs_sender_is_refused_in_one_line(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """run --to naming the job's own sender (as people write it) exits 2 in one line naming
    --to and the number, before anything is written or sent: a number never texts itself."""
    jobs.people(4)
    job = jobs.job(sender='"+13125550100"')
    assert main(["-q", "run", str(job.path), "--sandbox", "--to", "(312) 555-0100"]) == 2
    assert capsys.readouterr().err == (
        "bulk-mms: error: --to: '(312) 555-0100' is the job's own sender (+13125550100 is in "
        "message.from): a number never texts itself\n"
    )
    assert not (jobs.root / "sandbox").exists()


def test_a_seed_send_of_a_cp1252_job_texts_its_accented_names_as_written(jobs: JobFactory) -> None:
    """run --to on a cp1252 job whose first rows have accented names writes its seed file so
    that the job, read under its encoding, takes it: the seeds get the name as written."""
    fake = FakeTelnyx()
    (jobs.root / "people.csv").write_bytes("phone,first\r\n+12125550100,Zoë\r\n".encode("cp1252"))
    job = jobs.job(extra='encoding = "cp1252"')
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url, "--to", "+13125550100"]) == 0
    (seed,) = fake.accepted
    assert seed.to == ("+13125550100",)
    assert seed.body["text"] == "Hello Zoë"


def test_a_seed_send_refuses_a_template_field_no_record_of_a_jsonl_file_has(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """run --to on a JSONL input whose records (none of them) have the field the message
    names refuses the job naming the setting, as a full run does, instead of texting the
    seeds "Hello " (a JSONL file's columns are known only once it is read through)."""
    (jobs.root / "people.jsonl").write_text('{"phone": "+12125550100", "name": "Al"}\n')
    job = jobs.job("people.jsonl")
    assert main(["-q", "run", str(job.path), "--sandbox", "--to", "+13125550100"]) == 2
    err = capsys.readouterr().err
    assert "message.text" in err
    assert "'first' is not a column" in err


@pytest.mark.parametrize(("answer", "code", "sent"), [("y\n", 0, 2), ("n\n", 1, 0), ("", 1, 0)])
def test_a_terminal_is_asked_before_spending(
    jobs: JobFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    code: int,
    sent: int,
) -> None:
    """On a terminal, run shows groups, recipients, cost and time and asks; only a yes sends.
    --yes skips the question (and off a terminal it is never asked)."""
    fake = FakeTelnyx()
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    monkeypatch.setattr(commands.run, "interactive", lambda: True)
    monkeypatch.setattr("sys.stdin", io.StringIO(answer))
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == code
        err = capsys.readouterr().err
        assert "about to send 2 groups (8 recipients)" in err
        assert "Send now? [y/N]" in err
        assert len(fake.accepted) == sent
        if not sent:
            assert main(["-q", "run", str(job.path), "--base-url", url, "--yes"]) == 0
            assert "Send now?" not in capsys.readouterr().err
            assert len(fake.accepted) == 2


def test_one_way_to_ask(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Global flags work after the subcommand; --format is taken by report, status and track
    (--json is its alias); webhooks takes the ledger as its positional argument."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    assert main(["run", str(job.path), "--sandbox", "-q", "--no-color"]) == 0
    capsys.readouterr()
    for cmd in (
        ["status", str(sandbox_ledger(job.ledger))],
        ["report", str(sandbox_ledger(job.ledger))],
    ):
        assert main([*cmd, "--format", "json", "-q"]) == 0
        assert orjson.loads(capsys.readouterr().out)["sent_groups"] == 2
        assert main([*cmd, "--json"]) == 0
        assert orjson.loads(capsys.readouterr().out)["sent_groups"] == 2
        assert main([*cmd, "--format", "csv"]) == 0
        assert capsys.readouterr().out.startswith("metric,value")
    args = cli.build_parser().parse_args(
        ["webhooks", str(sandbox_ledger(job.ledger)), "--listen", ":0", "-v"]
    )
    assert (args.ledger, args.verbose) == (sandbox_ledger(job.ledger), True)
    monkeypatch.delenv("TELNYX_PUBLIC_KEY", raising=False)
    assert main(["webhooks", "--listen", ":0"]) == 2
    assert "webhooks LEDGER" in capsys.readouterr().err


def test_track_works_against_the_sandbox(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's next step works: track --sandbox knows the sandbox run's messages and
    follows them to final statuses, which the report then shows; the sandbox writes times
    in the forms Telnyx does (not only with a Z), and each is recorded as it came."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4")
    assert main(["-q", "run", str(job.path), "--sandbox"]) == 0
    capsys.readouterr()
    code = main(
        [
            "-q",
            "track",
            str(sandbox_ledger(job.ledger)),
            "--sandbox",
            "--follow",
            "--format",
            "json",
        ]
    )
    out = orjson.loads(capsys.readouterr().out)
    assert code == 0
    assert out["pending"] == 0
    assert out["not_found"] == []
    assert main(["report", str(sandbox_ledger(job.ledger)), "--format", "json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert sum(report["delivery"].values()) == 16
    assert set(report["delivery"]) <= {"delivered", "delivery_failed"}
    stamps = [e["at"] for e in ledger_events(sandbox_ledger(job.ledger)) if e.get("at")]
    assert len(stamps) >= 16
    assert any(not s.endswith("Z") for s in stamps)
    assert all(instant(s) is not None for s in stamps)


def test_config_is_found_on_the_search_path(
    jobs: JobFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """--config, else $BULK_MMS_CONFIG, else ./config.toml, else the user's config directory;
    a misspelt key names the nearest known one."""
    home = tmp_path / "xdg"
    (home / "bulk-mms").mkdir(parents=True)
    (home / "bulk-mms" / "config.toml").write_text("[limits]\nrate = 3\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert cli.find_config(None) == home / "bulk-mms" / "config.toml"
    (tmp_path / "config.toml").write_text("[limits]\nrate = 4\n")
    assert cli.find_config(None) == Path("config.toml")
    monkeypatch.setenv("BULK_MMS_CONFIG", str(tmp_path / "env.toml"))
    assert cli.find_config(None) == tmp_path / "env.toml"
    assert cli.find_config(Path("given.toml")) == Path("given.toml")
    (tmp_path / "env.toml").write_text("[limits]\nconcurency = 4\n")
    jobs.people(3)
    assert main(["run", str(jobs.job().path), "--sandbox"]) == 2
    assert "did you mean 'limits.concurrency'?" in capsys.readouterr().err


def test_a_missing_config_on_the_search_path_is_not_said_found(
    jobs: JobFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """$BULK_MMS_CONFIG naming no file stops the command in one line (exit 2) and logs no
    "config.found" for it first; one that is read is logged as found."""
    monkeypatch.setenv("BULK_MMS_CONFIG", str(tmp_path / "gone.toml"))
    jobs.people(3)
    assert main(["run", str(jobs.job().path), "--sandbox", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "gone.toml" in err
    assert "config.found" not in err
    (tmp_path / "gone.toml").write_text("[limits]\nrate = 4\n")
    assert main(["run", str(jobs.job().path), "--sandbox", "--dry-run"]) == 0
    assert "config.found" in capsys.readouterr().err


def test_no_color_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """NO_COLOR or --no-color turn colors off even on a terminal."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert log.use_color(Tty())
    assert not log.use_color(Tty(), no_color=True)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not log.use_color(Tty())


def test_the_dry_run_makes_the_runs_checks(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dry run refuses a ledger of another input as the run would (exit 2), names a run
    that holds the ledger, and says what it could not check."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    assert main(["-q", "run", str(job.path), "--sandbox", "--limit", "1"]) == 0
    capsys.readouterr()
    lock = open_store(sandbox_ledger(job.ledger), "run")
    try:
        assert main(["run", str(job.path), "--dry-run", "--sandbox"]) == 0
        out = capsys.readouterr().out
        assert f"held by a run now (PID {os.getpid()})" in out
        assert "not checked  the API key" in out
    finally:
        lock.close_sync()
    jobs.people(9)
    assert main(["run", str(job.path), "--dry-run", "--sandbox"]) == 2
    assert "input file contents" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly(jobs: JobFactory) -> None:
    """report into a pipe whose reader has gone (`| head`): exit 0, nothing on stderr."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    assert main(["-q", "run", str(job.path), "--sandbox"]) == 0
    cmd = [
        sys.executable,
        "-m",
        "bulk_mms",
        "report",
        str(sandbox_ledger(job.ledger)),
        "--format",
        "json",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 0
    assert err == b""


README = Path(__file__).parent.parent / "README.md"
COMMANDS_PAGE = Path(__file__).parent.parent / "docs" / "commands.md"


def _readme_section(name: str) -> str:
    """The README's text between its ``--8<-- [start:NAME]`` and ``[end:NAME]`` markers, which
    docs/commands.md includes (pymdownx.snippets): the site shows the README's own text."""
    readme = README.read_text(encoding="utf-8")
    assert f'--8<-- "README.md:{name}"' in COMMANDS_PAGE.read_text(encoding="utf-8")
    return readme.split(f"--8<-- [start:{name}]", 1)[1].split(f"--8<-- [end:{name}]", 1)[0]


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string ``parser`` takes, its subcommands' included (``db migrate``)."""
    found = {o for action in parser._actions for o in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
    return found


def test_the_command_reference_and_the_parser_name_the_same_options() -> None:
    """Every long option of every command's --help is in the command reference (the README's,
    shown in docs/commands.md), and every option the reference gives a command is one it takes."""
    reference = _readme_section("commands").split("```", 2)[1]
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert f"bulk-mms {name} " in reference
        for action in command._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in reference, f"{name} {option}"
    entries: dict[str, str] = {}
    for line in reference.strip().splitlines():
        if line.startswith("bulk-mms "):
            key = line.split()[1]
            entries[key] = entries.get(key, "") + line.split("  ")[0]
        elif line.startswith("global"):
            key = "global"
            entries[key] = line
        else:  # a continuation of the entry above
            entries[key] += line
    for key, text in entries.items():
        takes = _options(parser if key in ("global", "--version") else sub.choices[key])
        for option in re.findall(r"(?<![\w-])--?[a-z][a-z-]*", text):
            assert option in takes, f"{key}: {option}"


def test_the_readme_s_exit_codes_are_the_table_s() -> None:
    """The README's exit codes (shown in docs/commands.md) are the ones the code can give (Exit
    and every error class's own exit_code), no more and no fewer: neither can gain or lose a
    code alone."""
    table = [row for row in _readme_section("exit-codes").splitlines() if row.startswith("|")]
    listed = {int(code) for row in table[2:] for code in row.split("|")[1].split("/")}

    def classes(cls: type[BulkMmsError]) -> list[type[BulkMmsError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in classes(sub))]

    given = {int(code) for code in Exit} | {c.exit_code for c in classes(BulkMmsError)}
    assert listed == given


def test_the_program_tunes_the_collector_and_main_leaves_it_alone(tmp_path: Path) -> None:
    """``bulk-mms`` (the entry point) freezes what its imports made and collects the youngest
    generation less often; ``main``, which tests and embedders call, changes neither."""
    before = gc.get_threshold()
    main(["-q", "report", str(tmp_path / "missing.jsonl")])
    assert gc.get_threshold() == before
    probe = (
        "import gc, bulk_mms.cli as cli\n"
        "before = gc.get_threshold()[0]\n"
        "cli.main = lambda argv=None: print(before, gc.get_threshold()[0], "
        "gc.get_freeze_count() > 0) or 0\n"
        "raise SystemExit(cli.entry())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["700", "10000", "True"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://postgres:PW@127.0.0.1:99999/x", "its port is not a number"),
        ("postgres://postgres:PW@[::1/x", "URL"),
    ],
)
def test_a_ledger_url_that_cannot_be_used_is_one_line_exit_2(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], url: str, why: str
) -> None:
    """A database URL with a port out of range or a broken address is refused by run and
    status in one line, exit 2, without its password: never a traceback."""
    jobs.people(1)
    job = jobs.job()
    assert main(["run", str(job.path), "--ledger", url, "--yes", "--sandbox"]) == 2
    assert main(["status", url]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert all(line.startswith("bulk-mms: error: ledger URL: is not a usable") for line in err)
    assert all(why in line and "PW" not in line for line in err)


@pytest.mark.parametrize("url", ["postgresql://", "postgresql:///", "postgres:///bulk"])
def test_a_ledger_url_without_a_host_is_one_line_exit_2_never_a_file(
    jobs: JobFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    url: str,
) -> None:
    """A database URL naming no host is refused by run, status, db migrate and suppress in
    one line, exit 2: never a traceback, and never a JSONL file made of the URL in its place
    (each host would keep a ledger of its own and text the job's people again)."""
    monkeypatch.chdir(jobs.root)
    jobs.people(1)
    job = jobs.job()
    assert (
        main(
            ["run", str(job.path), "--ledger", url, "--yes", "--base-url", "http://127.0.0.1:9/v2"]
        )
        == 2
    )
    assert main(["status", url]) == 2
    assert main(["db", "migrate", url]) == 2
    assert main(["suppress", "list", "--ledger", url]) == 2
    err = capsys.readouterr().err.splitlines()
    assert (
        err
        == ["bulk-mms: error: ledger URL: is not a usable postgresql:// URL: it names no host"] * 4
    )
    assert sorted(p.name for p in jobs.root.iterdir()) == ["job.toml", "people.csv"]


_CONNINFO_WHY = (
    "is a libpq key=value connection string, not a file's path: give the database as a"
    " postgresql:// URL (its password in ~/.pgpass or PGPASSWORD)"
)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (url, f"{url!r} is not a postgresql:// URL, nor a file's path")
        for url in ("postgresq://db.example/bulk", "mysql://127.0.0.1/x")
    ]
    + [("host=127.0.0.1 dbname=bulk password=s3cr3t-pw", _CONNINFO_WHY)],
)
def test_a_ledger_url_of_another_scheme_is_refused_never_a_file(
    jobs: JobFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    why: str,
) -> None:
    """A ledger given as a URL that is not postgresql:// (a typo in the scheme), or in libpq's
    key=value form (host=... password=..., not quoted), is refused in one line, exit 2, from
    --ledger, BULK_MMS_LEDGER_URL, a command's LEDGER and the job's ledger setting: never a
    JSONL file at a path made of it, a ledger of this host's own beside the shared one (its
    password in every line naming it)."""
    monkeypatch.chdir(jobs.root)
    jobs.people(1)
    plain = jobs.job().path.rename(jobs.root / "plain.toml")
    job = jobs.root / "job.toml"
    job.write_text(f'ledger = "{url}"\n' + plain.read_text(encoding="utf-8"), encoding="utf-8")
    no_api = ["--yes", "--base-url", "http://127.0.0.1:9/v2"]
    for usage in (["run", str(plain), "--ledger", url, *no_api], ["ledger", "copy", url, "c"]):
        with pytest.raises(SystemExit) as stopped:
            main(usage)
        assert stopped.value.code == 2
    assert main(["run", str(job), *no_api]) == 2
    monkeypatch.setenv("BULK_MMS_LEDGER_URL", url)
    assert main(["run", str(plain), *no_api]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [
        f"bulk-mms run: error: argument --ledger: {why} (see bulk-mms run --help)",
        f"bulk-mms ledger copy: error: argument source: {why} (see bulk-mms ledger copy --help)",
    ]
    assert err[2:] == [
        f"bulk-mms: error: {job}: ledger: {why}",
        f"bulk-mms: error: BULK_MMS_LEDGER_URL: {why}",
    ]
    assert sorted(p.name for p in jobs.root.iterdir()) == ["job.toml", "people.csv", "plain.toml"]


def test_a_ledger_urls_password_shows_in_no_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A ledger URL's password, as user:password@ or a ?password= or ?sslpassword= parameter,
    is in no error: a scheme refused, a non-database URL to migrate, a database not reached."""
    with pytest.raises(SystemExit):
        main(["report", "postgresq://bob:s3cr3t-pw@127.0.0.1:1/db"])
    assert main(["db", "migrate", "mysql://bob:s3cr3t-pw@127.0.0.1:1/db"]) == 2
    assert main(["db", "migrate", "postgresql://bob@127.0.0.1:1/db?password=s3cr3t-pw"]) == 7
    assert main(["report", "postgresql://bob@127.0.0.1:1/db?sslpassword=s3cr3t-pw"]) == 7
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4
    assert all("127.0.0.1:1/db" in line and "s3cr3t-pw" not in line for line in err)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://bob:s3cr3t-pw%00x@127.0.0.1:1/db",
        "postgresql://bob@127.0.0.1:1/db?password=s3cr3t-pw%00x",
        "postgresql://bob@127.0.0.1:1/db?sslpassword=s3cr3t-pw%00x&sslmode=require",
    ],
)
def test_a_password_libpq_cannot_decode_is_named_as_the_urls_mistake_unquoted(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """A password holding %00, which libpq refuses quoting the value as written, is shown
    in no form: one line, exit 2 (the URL to fix; a rerun would fail the same way)."""
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    assert main(["db", "migrate", url]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("bulk-mms: error: postgresql://bob@127.0.0.1:1/db")
    assert line.endswith('forbidden value %00 in percent-encoded value: "***": fix the URL')
    assert "s3cr3t" not in line


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://bob:s3cr3t-%E9x@127.0.0.1:1/db",  # a Latin-1 é, percent-encoded
        "postgresql://b%FFb:s3cr3t-pw@127.0.0.1:1/db",
        "postgresql://bob:s3cr3t-pw@127.0.0.1:1/d%C3",  # half a UTF-8 character
        "postgresql://bob@127.0.0.1:1/db?password=s3cr3t-%E9x",
    ],
)
def test_a_ledger_url_whose_escapes_spell_no_utf8_is_one_line_exit_2(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """A ledger URL with a %-escape that spells no UTF-8 (a password encoded from Latin-1)
    is refused by run, status, db migrate, suppress and ledger copy in one line, exit 2,
    without its password: never a traceback, nor a password libpq was given changed."""
    jobs.people(1)
    job = jobs.job()
    no_api = ["--yes", "--base-url", "http://127.0.0.1:9/v2"]
    assert main(["run", str(job.path), "--ledger", url, *no_api]) == 2
    assert main(["status", url]) == 2
    assert main(["db", "migrate", url]) == 2
    assert main(["suppress", "list", "--ledger", url]) == 2
    assert main(["ledger", "copy", str(jobs.root / "none.jsonl"), url]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5
    assert all(line.startswith("bulk-mms: error: ledger URL: is not a usable") for line in err)
    assert all("UTF-8" in line and "s3cr3t" not in line for line in err)


def test_a_ledger_url_query_libpq_cannot_parse_is_exit_2_naming_the_parameter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A query parameter without "=" (?sslmode) is the URL's mistake, exit 2, naming it:
    not a database that did not answer (exit 7, "a rerun resumes")."""
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    assert main(["db", "migrate", "postgresql://bob@127.0.0.1:1/db?sslmode"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith("fix the URL's parameter 'sslmode'")
    assert "rerun" not in line


def test_a_disk_that_fills_mid_run_stops_it_resumably(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger's disk refuses a write mid-run (ENOSPC): exit 7, one line naming the ledger
    and saying a rerun resumes; the rerun, with room again, sends everyone exactly once."""
    jobs.people(40)
    job = jobs.job(extra="group_size = 2")
    cut = jsonl.cut_torn_tail
    writes = iter(range(1_000_000))

    def full(fd: int) -> None:
        if next(writes) >= 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        cut(fd)

    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        monkeypatch.setattr(jsonl, "cut_torn_tail", full)
        assert main(["-q", "run", str(job.path), "--base-url", url, "--yes"]) == 7
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1
        assert str(job.ledger) in err[0]
        assert "disk full" in err[0]
        assert "rerun" in err[0]
        monkeypatch.setattr(jsonl, "cut_torn_tail", cut)
        assert main(["-q", "run", str(job.path), "--base-url", url, "--yes"]) in (0, 1)
        main(["-q", "run", str(job.path), "--base-url", url, "--yes", "--resend-in-doubt"])
    assert fake.recipient_counts() == dict.fromkeys(numbers(40), 1)


def test_a_database_that_does_not_answer_at_the_start_is_exit_7(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ledger database that refuses connections (nothing listening) is exit 7 (a rerun
    resumes once it answers), not exit 2 (the job's own fault), in one line."""
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    jobs.people(2)
    job = jobs.job()
    url = f"postgresql://postgres@127.0.0.1:{port}/none?ledger=t"
    fake = FakeTelnyx()
    with fake_api_thread(fake) as api:
        assert main(["run", str(job.path), "--ledger", url, "--yes", "--base-url", api]) == 7
    assert fake.requests == []
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1
    assert "cannot connect" in err[0]
    assert "rerun resumes" in err[0]


@pytest.mark.parametrize("wrong", ["no_such_database", "role"])
def test_a_database_that_refuses_the_login_is_exit_2(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], database: str, wrong: str
) -> None:
    """A server that answers but refuses the login (no such database, no such role) is the
    settings' to fix: exit 2, not 7 (a rerun would fail the same way), in one line."""
    server = yarl.URL(database.rsplit("/", 1)[0])
    if wrong == "role":
        server = server.with_user("bulk_mms_no_such_role")
    url = f"{server}/{'postgres' if wrong == 'role' else 'bulk_mms_no_such_database'}?ledger=t"
    jobs.people(2)
    job = jobs.job()
    fake = FakeTelnyx()
    with fake_api_thread(fake) as api:
        assert main(["run", str(job.path), "--ledger", url, "--yes", "--base-url", api]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1
    assert "does not exist" in err[0]
    assert fake.requests == []


def test_a_run_whose_output_nobody_reads_still_exits_with_its_code(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stdout a pipe whose reader has gone, a run with failed groups still exits 1."""
    jobs.people(10)
    job = jobs.job()
    read, write = os.pipe()
    os.close(read)
    gone = open(write, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        with monkeypatch.context() as piped:
            piped.setattr(sys, "stdout", gone)
            piped.setenv("BULK_MMS_SANDBOX_FAULTS", "refused-422*3")
            code = main(["run", str(job.path), "--sandbox", "--rate", "1000", "--yes"])
    finally:
        gone.close()
    assert code == Exit.INCOMPLETE


def test_a_ledger_given_as_a_folder_with_its_slash_is_refused_and_no_file_made(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger named as a folder with its trailing slash, one that does not exist yet, is
    refused in one line, exit 2, from --ledger, BULK_MMS_LEDGER_URL and the job's ledger
    setting (naming the job file): no file takes the folder's name."""
    jobs.people(2)
    job = jobs.job()
    given = f"{jobs.root / 'ledgers-new'}/"
    why = f"{given!r} names a folder, not a file: name the ledger's file in it"
    with pytest.raises(SystemExit) as stopped:
        main(["run", str(job.path), "--dry-run", "--ledger", given])
    assert stopped.value.code == 2
    monkeypatch.setenv("BULK_MMS_LEDGER_URL", given)
    assert main(["run", str(job.path), "--dry-run"]) == 2
    monkeypatch.delenv("BULK_MMS_LEDGER_URL")
    own = jobs.root / "own.toml"
    own.write_text(f'ledger = "{given}"\n' + job.path.read_text(encoding="utf-8"), "utf-8")
    assert main(["run", str(own), "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"bulk-mms run: error: argument --ledger: {why} (see bulk-mms run --help)",
        f"bulk-mms: error: BULK_MMS_LEDGER_URL: {why}",
        f"bulk-mms: error: {own}: ledger: {why}",
    ]
    assert not (jobs.root / "ledgers-new").exists()


@pytest.mark.parametrize("dry", [True, False])
def test_a_sandbox_ledger_given_as_a_device_or_folder_is_refused_as_given(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], dry: bool
) -> None:
    """run --sandbox --ledger naming a device or a folder is exit 2 naming --ledger, before a
    sandbox folder is made beside it (/dev/sandbox)."""
    jobs.people(2)
    job = jobs.job()
    folder = jobs.root / "kept"
    folder.mkdir()
    # the device in a dry run only: a run of a bulk-mms without the check would make /dev/sandbox
    for given in ["/dev/null", str(folder)] if dry else [str(folder)]:
        args = ["run", str(job.path), "--sandbox", "--ledger", given, *(["--dry-run"] * dry)]
        assert main(args) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert line == f"bulk-mms: error: --ledger: {given} {jsonl.NOT_A_FILE}"
    assert not (jobs.root / "sandbox").exists()
