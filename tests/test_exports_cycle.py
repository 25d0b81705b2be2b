"""Exports as offices make them, through the whole cycle a user runs: run, track, report,
resend the failed file, rerun; every row sent or named, nobody texted twice."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from msgspec.structs import replace

from bulk_mms import settle
from bulk_mms.cli import main
from bulk_mms.clock import SystemClock
from bulk_mms.config import JobConfig, load_job
from bulk_mms.config.folders import sandbox_ledger
from bulk_mms.errors import Exit, LimitReached
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.fake_api.faults import Fault
from bulk_mms.grouping import group_id
from bulk_mms.ledger import LedgerView, Location, display, events, headers_beside, load
from bulk_mms.ledger.jsonl import JsonlStore
from bulk_mms.prepare import header_for, sent_numbers
from bulk_mms.reader import fingerprint
from bulk_mms.report import summarize
from bulk_mms.reruns import rerun_name
from bulk_mms.runner import run_job
from bulk_mms.suppression import Suppressed
from bulk_mms.testing import write_ledger
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory
from tests.test_exports_people import capped_then_rerun, refused_then_resent, stopped_after_one
from tests.threaded import fake_api_thread


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    monkeypatch.setenv("TELNYX_API_KEY", "KEY-exports-cycle")
    monkeypatch.delenv("BULK_MMS_LEDGER_URL", raising=False)


#: A job's ledger, as the commands of a cycle name it.
LedgerOf = Callable[[JobConfig], str]


@pytest.fixture(params=["jsonl", "postgresql"])
def ledger_of(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> LedgerOf:
    """Where every ledger of the cycle is: JSONL files beside the job's, or (skipped when
    there is no PostgreSQL) one database of the test's own that ``BULK_MMS_LEDGER_URL``
    names, each run's ledger named after its job, a resend's after its input."""
    if request.param == "jsonl":
        return lambda job: str(job.ledger)
    database: str = request.getfixturevalue("database")
    monkeypatch.setenv("BULK_MMS_LEDGER_URL", database)
    return lambda job: f"{database}?ledger={job.name}"


def test_the_failed_file_of_a_windows_1252_job_is_sent_again_with_its_accents(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A job reading Excel's Windows-1252 CSV (encoding = "cp1252") whose refused recipients
    have accented names: `run JOB --input failed.csv` sends them again, their names as the
    first send had them, not stopped as "UTF-8 text, not cp1252"."""
    path = jobs.root / "people.csv"
    path.write_bytes("phone,first\r\n+12125550101,José\r\n+12125550102,Zoë\r\n".encode("cp1252"))
    job = jobs.job(extra='group_size = 1\nencoding = "cp1252"', message='text = "Hi {first}"')
    fake = refused_then_resent(job, tmp_path / "failed.csv", refused=2)
    assert sorted(m.body["text"] for m in fake.accepted) == ["Hi José", "Hi Zoë"]


@pytest.mark.parametrize("name", ["people.csv", "people.jsonl"])
def test_a_file_cut_off_inside_an_accented_letter_is_named_cut_off(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A UTF-8 export cut off in the middle of its last line's "é" (a copy that stopped):
    nothing is sent, exit 2, and the line says the file looks cut off, not that it "looks
    like cp1252" (which would send the user to change the job's encoding)."""
    if name.endswith(".csv"):
        text = "phone,first\n+12125550101,Ann\n+12125550102,José\n"
    else:
        text = '{"phone":"+12125550101","first":"Ann"}\n{"phone":"+12125550102","first":"José"}\n'
    data = text.encode("utf-8")
    (jobs.root / name).write_bytes(data[: data.rindex("é".encode()) + 1])
    job = jobs.job(name, extra="group_size = 1")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert f"{name}:{text.count(chr(10))}: " in err  # the last line
    assert "cut off" in err
    assert "cp1252" not in err
    assert fake.requests == []


def test_a_member_waiting_for_a_carriers_reset_is_named_and_so_is_when(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A member whose delivery met T-Mobile's daily cap (40016) waits for the reset: the
    report names them (--recipients-csv: not_attempted, 40016) and says a rerun from the reset
    sends them, not that a plain rerun does now; the JSON counts them and gives the time."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    jobs.csv([{"phone": p, "first": f"P{i}"} for i, p in enumerate(people)])
    job = jobs.job(extra="group_size = 4")
    recipients = tmp_path / "recipients.csv"
    fake = capped_then_rerun(job, people[2])
    capsys.readouterr()
    assert main(["report", str(job.ledger), "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "a plain rerun sends them" not in table
    line = next(x for x in table.splitlines() if "T-Mobile daily message limit" in x)
    assert "1 recipient" in line
    assert "a rerun from" in line
    assert main(["report", str(job.ledger), "--json"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["recipients"]["not_attempted"] == summary["waiting_recipients"] == 1
    assert summary["waiting_not_before"] > summary["last_event"]
    assert main(["-q", "report", str(job.ledger), "--recipients-csv", str(recipients)]) == 0
    with recipients.open(encoding="utf-8-sig") as f:
        rows = {r["phone"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(people)
    assert (rows[people[2]]["state"], rows[people[2]]["error_code"]) == ("not_attempted", "40016")
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


def test_a_file_whose_lines_end_in_a_carriage_return_alone_is_refused_saying_so(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Excel for Mac's "CSV (Macintosh)" ends lines with a carriage return alone: nothing is
    sent, exit 2, one line that names the line ends and how to save the file, not the csv
    module's "universal-newline mode"."""
    jobs.csv("phone,first\r+12125550101,Ann\r+12125550102,Bob\r")
    job = jobs.job(extra="group_size = 1")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert "people.csv:1: " in err
    assert "carriage return" in err
    assert "universal-newline" not in err
    assert fake.requests == []


def test_a_row_holding_a_carriage_return_alone_is_rejected_in_words(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """One line of a file holds two rows joined by a carriage return alone (an old Mac line
    end pasted in): that line is rejected naming its line and what holds it, the others are
    sent, and the reason is in words, not the csv module's."""
    jobs.csv(
        "phone,first\n"
        + "".join(f"+1212555{i:04d},P{i}\n" for i in range(101, 121))
        + "+12125550121,Ann\r+12125550122,Bob\n"
    )
    job = jobs.job(extra="group_size = 1")
    rejected = tmp_path / "rejected.csv"
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        argv = ["-q", "run", str(job.path), "--base-url", url, "--rejected-csv", str(rejected)]
        assert main(argv) == 0
    assert len(fake.recipient_counts()) == 20
    with rejected.open(encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    assert [r["line"] for r in rows] == ["22"]
    assert "carriage return" in rows[0]["reason"]
    assert "+12125550121" in rows[0]["value"]
    assert "universal-newline" not in rows[0]["reason"]


def test_a_nul_byte_deep_in_a_file_stops_it_naming_its_line(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A NUL byte past the first few KiB (a damaged export: zeros where a write was lost) stops
    the file like one at its top, naming its line: it never goes into a message's text."""
    rows = [f"+1212555{i:04d},Name{i}" for i in range(1000, 2000)]
    rows[700] = rows[700].replace("Name", "Na\x00me")
    jobs.csv("phone,first\r\n" + "\r\n".join(rows) + "\r\n")
    job = jobs.job(extra="group_size = 1")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert "people.csv:702: " in err
    assert "NUL" in err
    assert fake.requests == []


def test_a_jsonl_number_is_texted_as_written(jobs: JobFactory) -> None:
    """JSONL values read as written, as a CSV cell's would be: an amount of 25.50 is texted
    "25.50" (not Python's 25.5), 1e3 as "1e3", and a number written as an integer as it is."""
    (jobs.root / "people.jsonl").write_text(
        '{"phone": "+12125550101", "amount": 25.50, "n": 1e3}\n'
        '{"phone": "+12125550102", "amount": 7, "n": -0.0}\n',
        encoding="utf-8",
    )
    job = jobs.job("people.jsonl", extra="group_size = 1", message='text = "{amount} {n}"')
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    assert sorted(m.body["text"] for m in fake.accepted) == ["25.50 1e3", "7 -0.0"]


def test_rows_rejected_past_where_a_run_stopped_are_counted_by_the_report(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that stops before the end of its input (here --limit 1; a crash, Ctrl-C) has
    checked every row but recorded the rejected ones only as far as it read: the report
    still counts the file's six rows and its two rejected, saying a rerun lists the ones
    not recorded yet, instead of "4 rows: 4 valid, 0 rejected"."""
    job = stopped_after_one(jobs)
    capsys.readouterr()
    assert main(["report", str(job.ledger), "--json"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert (summary["input_rows"], summary["rejected_rows"]) == (6, 2)
    assert summary["recipients"]["valid"] == 4
    assert main(["report", str(job.ledger), "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "input        6 rows: 4 valid, 2 rejected" in table
    assert "2 rows  not recorded yet" in table


async def test_rows_past_where_a_run_stopped_add_up_with_a_suppressed_row_before_it(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """The same early stop when the first row's number is on the suppression list (recorded
    before the stop): the report still counts six rows, two of them rejected, one
    suppressed: the early count and the final one count rows alike."""
    jobs.csv(
        "phone,first\n+12125550701,A\n+12125550702,B\n+12125550703,C\nbad1,D\n"
        "+12125550704,E\nbad2,F\n"
    )
    job = jobs.job(extra="group_size = 1\nmax_rejected_share = 0.5")
    Suppressed(tmp_path / "list.txt").add(["+12125550701"], "test")
    settings = replace(FAST, suppression_file=tmp_path / "list.txt")
    await run_job(job, settings, FakeClient(), clock=FakeClock(), limit=1)
    rows = summarize(job.ledger).rows
    assert (rows.rows, rows.lost, rows.suppressed, rows.valid) == (6, 2, 1, 3)


@pytest.mark.parametrize(
    ("sep", "setting"), [(";", 'set delimiter = ";" in the job'), ("\t", 'delimiter = "\\t"')]
)
def test_an_export_separated_by_semicolons_or_tabs_is_refused_saying_so(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], sep: str, setting: str
) -> None:
    """Excel in a locale with decimal commas writes its CSV with semicolons (and "Text" with
    tabs): under a job that does not set ``delimiter``, nothing is sent, exit 2, and the line
    names the separator and the job setting that reads it, not only "no 'phone' column
    (columns: phone;first)"."""
    jobs.csv(f"phone{sep}first\r\n+12125550101{sep}Ann\r\n")
    job = jobs.job(extra="group_size = 1")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert "separated by" in err
    assert "not commas" in err
    assert setting in err
    assert fake.requests == []


def test_a_failed_file_written_again_later_leaves_out_who_a_resend_already_texted(
    jobs: JobFactory, ledger_of: LedgerOf, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The morning's --failed-csv is resent; later, tracking finds one more delivery failed and
    the report writes the file again: the second file holds only the new failure (the first
    was texted again already, by the first resend), so each is texted twice in all, never
    three times; the report says who it left out and why. Alike for JSONL ledgers and for
    ledgers in one PostgreSQL database."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    jobs.csv([{"phone": p, "first": f"P{i}"} for i, p in enumerate(people)])
    job = jobs.job(extra="group_size = 1")
    ledger = ledger_of(job)
    late = {people[1]: "sent"}  # not final at the first track
    fake = FakeTelnyx(report={people[0]: "40008", people[1]: "40008"})
    fake.delivery_status = lambda phone, age: late.get(phone, "delivered")
    first, second = tmp_path / "failed1.csv", tmp_path / "failed2.csv"
    with fake_api_thread(fake) as url:
        args = ["--base-url", url]
        run = ["-q", "run", str(job.path), *args]
        assert main(run) == 0
        assert main(["-q", "track", ledger, *args]) == 0
        assert main(["-q", "report", ledger, "--json", "--failed-csv", str(first)]) == 0
        assert main([*run, "--input", str(first)]) == 0
        late.clear()  # its delivery fails now
        assert main(["-q", "track", ledger, *args]) == 0
        capsys.readouterr()
        assert main(["-q", "report", ledger, "--json", "--failed-csv", str(second)]) == 0
        assert "1 taken by an earlier resend" in capsys.readouterr().err
        with second.open(encoding="utf-8-sig") as f:
            assert [r["phone"] for r in csv.DictReader(f)] == [people[1]]
        assert main([*run, "--input", str(second)]) == 0
    assert fake.recipient_counts() == {people[0]: 2, people[1]: 2, people[2]: 1, people[3]: 1}


def test_a_failed_file_written_while_its_resend_is_unfinished_leaves_out_who_it_holds(
    jobs: JobFactory, ledger_of: LedgerOf, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A resend of the failed file stopped before it tried everyone (here --limit 1; a daily
    cap, SIGTERM, a crash) still holds the rest: its rerun sends them. The failed file written
    again meanwhile leaves them out too (and the report's table says so), so finishing that
    resend and sending the second file texts each of them once more, never twice. Alike for
    JSONL ledgers and for ledgers in one PostgreSQL database."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    jobs.csv([{"phone": p, "first": f"P{i}"} for i, p in enumerate(people)])
    job = jobs.job(extra="group_size = 1")
    ledger = ledger_of(job)
    fake = FakeTelnyx(report=dict.fromkeys(people[:3], "40008"))
    first, second = tmp_path / "failed1.csv", tmp_path / "failed2.csv"
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url]
        assert main(run) == 0
        assert main(["-q", "track", ledger, "--base-url", url]) == 0
        assert main(["-q", "report", ledger, "--json", "--failed-csv", str(first)]) == 0
        assert main([*run, "--input", str(first), "--limit", "1"]) == 0
        capsys.readouterr()
        assert main(["-q", "report", ledger, "--json", "--failed-csv", str(second)]) == 0
        assert "3 taken by an earlier resend" in capsys.readouterr().err
        with second.open(encoding="utf-8-sig") as f:
            assert list(csv.DictReader(f)) == []
        assert main(["report", ledger, "--format", "table"]) == 0
        assert "not the 3 an earlier resend took" in capsys.readouterr().out
        assert main([*run, "--input", str(first)]) == 0
        assert main([*run, "--input", str(second)]) == 0
    assert fake.recipient_counts() == {people[0]: 2, people[1]: 2, people[2]: 2, people[3]: 1}


def test_the_failed_file_a_resend_was_sent_from_is_never_written_over(
    jobs: JobFactory, ledger_of: LedgerOf, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """report --failed-csv naming the file an unfinished resend was sent from is refused (exit
    2, one line naming the option, the file and the resend's ledger; the file unchanged): that
    resend's rerun then sends the rest of it, as it would not if the file had changed. Alike
    for JSONL ledgers and for ledgers in one PostgreSQL database."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": f"P{i}"} for i, p in enumerate(people)])
    job = jobs.job(extra="group_size = 1")
    ledger = ledger_of(job)
    fake = FakeTelnyx(report=dict.fromkeys(people, "40008"))
    failed = tmp_path / "failed.csv"
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url]
        assert main(run) == 0
        assert main(["-q", "track", ledger, "--base-url", url]) == 0
        assert main(["-q", "report", ledger, "--json", "--failed-csv", str(failed)]) == 0
        before = failed.read_bytes()
        assert main([*run, "--input", str(failed), "--limit", "1"]) == 0
        capsys.readouterr()
        assert main(["-q", "report", ledger, "--json", "--failed-csv", str(failed)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bulk-mms: error: --failed-csv: ")
        assert "test-job-failed-" in err
        assert err.count("\n") == 1
        assert failed.read_bytes() == before
        assert main([*run, "--input", str(failed)]) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 2)


def test_a_fixed_input_sent_with_exclude_sent_leaves_out_who_a_resend_texted(
    jobs: JobFactory, ledger_of: LedgerOf, tmp_path: Path
) -> None:
    """The API refuses one group for good; its failed file is resent; then the input is fixed
    and sent as the ledger's refusal says (a new --name, --exclude-sent OLD-LEDGER): the new
    campaign leaves out whom the old one's resend texted as well as whom the old one did,
    and sends only the rows fixed. Alike for JSONL ledgers and for ledgers in one PostgreSQL
    database."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": f"P{i}"} for i, p in enumerate(people)] + [{"phone": "x"}])
    job = jobs.job(extra="group_size = 1\nmax_rejected_share = 0.5")
    ledger = ledger_of(job)
    fake = FakeTelnyx()
    fake.faults.append(Fault("status", 422, code="10015"))
    failed = tmp_path / "failed.csv"
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url]
        assert main(run) == 1
        assert main(["-q", "report", ledger, "--json", "--failed-csv", str(failed)]) == 0
        assert main([*run, "--input", str(failed)]) == 0
        fixed = "+12125550199"
        jobs.csv([{"phone": p, "first": f"P{i}"} for i, p in enumerate([*people, fixed])])
        assert main(run) == 2  # the ledger refuses the changed input
        assert main([*run, "--name", "fixed", "--exclude-sent", ledger]) == 0
    assert fake.recipient_counts() == {**dict.fromkeys(people, 1), fixed: 1}


async def test_a_failed_file_leaves_out_who_the_deadline_left_unsent(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Recipients whose group the job's deadline left unsent did not get it, and the report
    counts them, but they are not in --failed-csv: sent again with --input, a resend is a
    campaign of its own (max_age_s starts anew), and it texted them past the deadline the job
    set; the report says how many it left out and why (injected clock)."""
    jobs.people(40)
    job = jobs.job(extra='group_size = 4\ndeadline = "2026-11-24T12:00:03.5+00:00"')
    clock = FakeClock(wall=dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC).timestamp())
    s = await run_job(job, replace(FAST, rate=1.0, concurrency=4), FakeClient(), clock=clock)
    assert 0 < s.sent_groups < 10
    expired = 40 - s.sent_recipients
    failed = tmp_path / "failed.csv"
    capsys.readouterr()
    assert main(["-q", "report", str(job.ledger), "--json", "--failed-csv", str(failed)]) == 0
    out = capsys.readouterr()
    assert orjson.loads(out.out)["undelivered_recipients"] == expired
    assert f"{expired} past the job's deadline" in out.err
    with failed.open(encoding="utf-8-sig") as f:
        assert list(csv.DictReader(f)) == []
    assert main(["report", str(job.ledger), "--format", "table"]) == 0
    assert f"not the {expired} past the job's deadline" in capsys.readouterr().out


def test_exclude_sent_leaves_in_whom_a_resend_was_refused_for_good(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A number the API refused at the send, and again in the resend of the failed file, was
    never sent: a new campaign with --exclude-sent naming the first ledger sends it, not
    counts it already sent and exits 0 with nobody texted."""
    jobs.csv([{"phone": "+12125550101", "first": "Ann"}])
    job = jobs.job(extra="group_size = 1")
    fake = refused_then_resent(job, tmp_path / "failed.csv", refused=1, again=1)
    capsys.readouterr()
    with fake_api_thread(fake) as url:
        fresh = ["run", str(job.path), "--base-url", url, "--name", "fresh"]
        assert main([*fresh, "--exclude-sent", str(job.ledger)]) == 0
    assert "already sent" not in capsys.readouterr().out
    assert fake.recipient_counts() == {"+12125550101": 1}


def test_exclude_sent_leaves_out_whom_a_resend_of_a_resend_texted(
    jobs: JobFactory, ledger_of: LedgerOf, tmp_path: Path
) -> None:
    """A number refused for good at the send and again in the resend of the failed file, then
    texted by the resend of that resend's failed file (a second round): a new campaign with
    --exclude-sent naming the first ledger leaves it out, not texts it a second time. Alike
    for JSONL ledgers and for ledgers in one PostgreSQL database."""
    jobs.csv([{"phone": "+12125550101", "first": "Ann"}])
    job = jobs.job(extra="group_size = 1")
    ledger = ledger_of(job)
    first, second = tmp_path / "failed.csv", tmp_path / "failed2.csv"
    fake = FakeTelnyx()
    fake.faults.extend(Fault("status", 400, code="40001") for _ in range(2))
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url]
        assert main(run) == 1
        assert main(["-q", "report", ledger, "--failed-csv", str(first)]) == 0
        assert main([*run, "--input", str(first)]) == 1
        (resend,) = (str(w) for w, h in headers_beside(ledger) if h.input == str(first))
        assert main(["-q", "report", resend, "--failed-csv", str(second)]) == 0
        assert main([*run, "--input", str(second)]) == 0
        assert fake.recipient_counts() == {"+12125550101": 1}
        assert main([*run, "--name", "fresh", "--exclude-sent", ledger]) == 0
    assert fake.recipient_counts() == {"+12125550101": 1}


def test_a_resend_run_again_with_exclude_sent_naming_its_campaign_sends_the_rest(
    jobs: JobFactory, ledger_of: LedgerOf, tmp_path: Path
) -> None:
    """A failed file sent with --exclude-sent naming the campaign it came from, stopped by
    --limit, then run again with the same command: the rerun sends the rest of the file, not
    takes the resend's own rows for a resend's that texted them (nobody sent, exit 0).
    Alike for JSONL ledgers and for ledgers in one PostgreSQL database."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": f"P{i}"} for i, p in enumerate(people)])
    job = jobs.job(extra="group_size = 1")
    fake = FakeTelnyx()
    fake.faults.extend(Fault("status", 400, code="40001") for _ in people)
    failed = tmp_path / "failed.csv"
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main(run) == 1
        assert main(["-q", "report", ledger_of(job), "--failed-csv", str(failed)]) == 0
        resend = [*run, "--input", str(failed), "--exclude-sent", ledger_of(job)]
        assert main([*resend, "--limit", "1"]) == 0
        assert main(resend) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


def resent_with_its_answer_lost(
    jobs: JobFactory,
    ledger: LedgerOf,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    lost: Callable[[JobConfig], object] = lambda job: None,
    *,
    lag: float = 0,
) -> tuple[FakeTelnyx, int, JobConfig]:
    """Send a job of two, track it (the first's delivery fails for good), write its failed
    file (``failed.csv`` in ``tmp_path``) and send that again at once, from the same sender,
    its answer lost before the API took it (the records complete as the run ends, or ``lag``
    seconds after; ``lost`` runs before the resend): the fake API, the resend's exit code,
    and the job."""
    monkeypatch.setattr(settle, "SETTLED_SLACK_S", 0.0)  # no real wait for the records
    jobs.csv([{"phone": p, "first": f"P{i}"} for i, p in enumerate(PAIR)])
    job = jobs.job(extra="group_size = 1")
    settings = jobs.root / "config.toml"
    settings.write_text(f"[api]\nrecords_lag_s = {lag:g}\nrequest_timeout = 0.1\n")
    fake = FakeTelnyx(report={PAIR[0]: "40008"})
    failed = tmp_path / "failed.csv"
    with fake_api_thread(fake) as url:
        args = ["--base-url", url, "--config", str(settings)]
        run = ["-q", "run", str(job.path), *args]
        assert main(run) == 0
        assert main(["-q", "track", ledger(job), *args]) == 0
        assert main(["-q", "report", ledger(job), "--failed-csv", str(failed)]) == 0
        fake.faults.append(Fault("drop_before"))
        lost(job)
        return fake, main([*run, "--input", str(failed)]), job


#: The two people of :func:`resent_with_its_answer_lost`.
PAIR = ("+12125550101", "+12125550102")


def test_a_resend_whose_answer_was_lost_is_not_settled_by_the_first_sends_record(
    jobs: JobFactory, ledger_of: LedgerOf, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A failed file is resent minutes after the first send, from the same sender, and the
    resend's answer is lost before the API took it: the first send's record is not the
    resend's, so the resend is sent again (exit 0, texted twice in all), not recorded sent
    with nobody texted. Alike for JSONL ledgers and for ledgers in one PostgreSQL database."""
    fake, code, _ = resent_with_its_answer_lost(jobs, ledger_of, monkeypatch, tmp_path)
    assert code == 0
    assert fake.recipient_counts() == {PAIR[0]: 2, PAIR[1]: 1}


def gone_while_in_doubt(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[FakeTelnyx, int, JobConfig, Path]:
    """The lost answer of :func:`resent_with_its_answer_lost` while the records may still
    lag (the resend held in doubt), then the original campaign's ledger moved away from
    beside the resend's and the resend run again once the records are complete: the fake
    API, that rerun's exit code, the job, and where the ledger went."""
    away = tmp_path / "away.jsonl"
    settings = jobs.root / "config.toml"
    fake, code, job = resent_with_its_answer_lost(
        jobs, lambda job: str(job.ledger), monkeypatch, tmp_path, lag=3600
    )
    assert code == 1
    job.ledger.rename(away)
    settings.write_text("[api]\nrecords_lag_s = 0\nrequest_timeout = 0.1\n")
    with fake_api_thread(fake) as url:
        args = ["--base-url", url, "--config", str(settings)]
        failed = str(tmp_path / "failed.csv")
        code = main(["-q", "run", str(job.path), *args, "--input", failed])
    return fake, code, job, away


def test_a_resend_whose_original_ledger_is_gone_is_left_in_doubt(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same lost answer with the original campaign's ledger gone from beside the resend's
    once the resend began: the record found cannot be told from the first send's, so the
    resend stays in doubt (exit 1, nobody texted again), never recorded sent; with that
    ledger back, `track` on the resend's settles it never accepted, and a rerun of the resend
    sends it."""
    fake, code, job, away = gone_while_in_doubt(jobs, monkeypatch, tmp_path)
    assert code == 1
    assert fake.recipient_counts() == dict.fromkeys(PAIR, 1)
    away.rename(job.ledger)
    (resend,) = set(job.ledger.parent.glob("*.jsonl")) - {job.ledger}
    with fake_api_thread(fake) as url:
        args = ["--base-url", url, "--config", str(jobs.root / "config.toml")]
        assert main(["-q", "track", str(resend), *args]) == 0
        assert load(resend).recipients().retry_pending == 1
        failed = str(tmp_path / "failed.csv")
        assert main(["-q", "run", str(job.path), *args, "--input", failed]) == 0
    assert fake.recipient_counts() == {PAIR[0]: 2, PAIR[1]: 1}


def test_a_new_resend_whose_original_ledger_is_not_beside_is_refused(
    jobs: JobFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A failed file resent where its campaign's ledger is not (moved away; alike another
    job file, whose ledgers are elsewhere) is refused before anything is sent (exit 2, one
    line naming the campaign and the folder), not sent where the next failed file of that
    campaign would not see whom it texted."""
    away = tmp_path / "away.jsonl"
    fake, code, job = resent_with_its_answer_lost(
        jobs, lambda job: str(job.ledger), monkeypatch, tmp_path, lambda j: j.ledger.rename(away)
    )
    assert code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("bulk-mms: error: --input: ")
    assert f"lists recipients campaign {load(away).campaign} missed" in err
    assert f"in the folder ({job.ledger.parent})" in err
    assert fake.recipient_counts() == dict.fromkeys(PAIR, 1)
    assert list(job.ledger.parent.glob("*.jsonl")) == []


def test_another_input_sent_without_exclude_sent_is_refused_naming_who_was_sent(
    jobs: JobFactory, ledger_of: LedgerOf, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run JOB --input OTHER` (not a failed file) whose rows the job already sent, as the
    job's own input or another --input file, is refused (exit 2, one line naming how many,
    the ledgers and --exclude-sent, nothing sent); with --exclude-sent each is texted once.
    Alike for JSONL ledgers and for ledgers in one PostgreSQL database."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra="group_size = 1")
    ledger = ledger_of(job)
    other = jobs.csv([{"phone": p, "first": "B"} for p in [*people[2:], "+12125550199"]], "b.csv")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url]
        assert main(run) == 0
        capsys.readouterr()
        for again, n in ((other, 2), (job.input, 4)):
            assert main([*run, "--input", str(again)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1
            assert f"{n} recipients of {again} already sent by this job ({ledger})" in err
            assert f"--exclude-sent {ledger} to leave them out" in err
        assert fake.recipient_counts() == dict.fromkeys(people, 1)
        assert main([*run, "--input", str(other), "--exclude-sent", ledger]) == 0
        third = jobs.csv([{"phone": "+12125550199", "first": "C"}], "c.csv")
        assert main([*run, "--input", str(third)]) == 2
        assert "b-" in capsys.readouterr().err  # the other --input run's ledger is named
    assert fake.recipient_counts() == {**dict.fromkeys(people, 1), "+12125550199": 1}


def test_a_resend_whose_original_ledger_is_gone_says_which_and_what_to_do(
    jobs: JobFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The resend held in doubt because the first send's ledger is gone from beside it says
    so once, in one line: the campaign whose ledger is missing, where it was looked for, and
    to put it back and run `bulk-mms track` on the resend's ledger."""
    _, code, job, away = gone_while_in_doubt(jobs, monkeypatch, tmp_path)
    assert code == 1
    lines = [
        orjson.loads(line)
        for line in capsys.readouterr().err.splitlines()
        if "settle.original_missing" in line
    ]
    (resend,) = set(job.ledger.parent.glob("*.jsonl")) - {job.ledger}
    campaign = load(away).campaign
    assert len(lines) == 1
    said = lines[0]["message"]
    assert f"the ledger of campaign {campaign}" in said
    assert f"not found in the same folder ({job.ledger.parent})" in said
    assert f"put that ledger back there, then run `bulk-mms track {resend}`" in said


def test_a_campaign_begun_with_exclude_sent_is_not_resumed_without_it(
    jobs: JobFactory, ledger_of: LedgerOf, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fixed input sent under a new --name with --exclude-sent, stopped by --limit, then
    run again without --exclude-sent (as "a run without --limit sends the rest" reads): the
    rerun is refused (exit 2, one line naming --exclude-sent, nothing sent), not texting the
    old ledger's recipients again; with it, the rest go, each once. Alike for JSONL ledgers
    and for ledgers in one PostgreSQL database."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra="group_size = 1")
    ledger = ledger_of(job)
    fixed = ["+12125550198", "+12125550199"]
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url]
        assert main(run) == 0
        jobs.csv([{"phone": p, "first": "A"} for p in [*people, *fixed]])
        fresh = [*run, "--name", "fixed"]
        assert main([*fresh, "--exclude-sent", ledger, "--limit", "1"]) == 0
        capsys.readouterr()
        assert main(fresh) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "sent leaving out 4 rows already sent (--exclude-sent)" in err
        assert "give the same --exclude-sent" in err
        assert sum(fake.recipient_counts().values()) == 5
        assert main([*fresh, "--exclude-sent", ledger]) == 0
    assert fake.recipient_counts() == dict.fromkeys([*people, *fixed], 1)


def test_a_failed_file_resent_with_another_job_file_is_refused(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A failed file sent with a copy of the job file in another folder (its ledgers there):
    refused (exit 2, nothing sent), since the campaign's next failed file would list again
    whom that resend texted; with the job that sent it, each is texted once more."""
    jobs.csv([{"phone": p, "first": "A"} for p in PAIR])
    job = jobs.job(extra="group_size = 1")
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "job.toml").write_text(
        job.path.read_text().replace('input = "people.csv"', 'input = "../people.csv"')
    )
    fake = FakeTelnyx()
    fake.faults.append(Fault("status", 400, code="40001"))
    failed = tmp_path / "failed.csv"
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]) == 1
        assert main(["-q", "report", str(job.ledger), "--failed-csv", str(failed)]) == 0
        capsys.readouterr()
        elsewhere = ["-q", "run", str(copy / "job.toml"), "--base-url", url]
        assert main([*elsewhere, "--input", str(failed)]) == 2
        assert f"in the folder ({copy / 'ledgers'})" in capsys.readouterr().err
        assert main(["-q", "run", str(job.path), "--base-url", url, "--input", str(failed)]) == 0
    assert fake.recipient_counts() == dict.fromkeys(PAIR, 1)


def test_a_daily_ledger_jobs_input_of_another_day_is_no_earlier_round(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A job with a ledger a day ({date}) run from cron with --input today's export: the
    day before's --input run is another day's campaign (every day sends anew), so today's
    export, the same people, is sent, not refused as texting them again."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": "A"} for p in people], "monday.csv")
    jobs.csv([{"phone": p, "first": "B"} for p in people], "tuesday.csv")
    job = jobs.job(extra='group_size = 1\nledger = "ledgers/{name}-{date}.jsonl"')
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--input"]
        assert main([*run, str(jobs.root / "monday.csv")]) == 0
        (monday,) = (jobs.root / "ledgers").glob("*.jsonl")
        monday.rename(monday.with_name("test-job-monday-00000000-2026-11-30.jsonl"))
        assert main([*run, str(jobs.root / "tuesday.csv")]) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 2)


def test_a_job_file_naming_no_input_runs_with_input_and_still_refuses_sending_again(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job file that names no input (always run with --input, as a nightly cron line does)
    sends its first --input file, and a second file holding the same people is refused as
    texting them again: the job's other --input ledgers are found without the file's input."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    first = jobs.csv([{"phone": p, "first": "A"} for p in people], "monday.csv")
    second = jobs.csv([{"phone": p, "first": "B"} for p in people], "tuesday.csv")
    job = jobs.job(extra="group_size = 1")
    job.path.write_text(
        job.path.read_text(encoding="utf-8").replace('input = "people.csv"\n', ""),
        encoding="utf-8",
    )
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--input"]
        assert main([*run, str(first)]) == 0
        capsys.readouterr()
        assert main([*run, str(second)]) == 2
        assert "3 recipients of" in capsys.readouterr().err
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


def test_another_jobs_input_run_whose_name_begins_with_this_jobs_is_not_this_jobs(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two job files in one folder, `test-job` and `test-job-weekly`: the --input runs of
    `test-job-weekly` (their ledgers named `test-job-weekly-<stem>-<hash>`) are not earlier
    rounds of `test-job`, so its --input of the same people is sent, not refused as texting
    them again; its own --input run still is counted."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": "+12125550199", "first": "A"}])
    first = jobs.csv([{"phone": p, "first": "B"} for p in people], "monday.csv")
    second = jobs.csv([{"phone": p, "first": "C"} for p in people], "tuesday.csv")
    job = jobs.job(extra="group_size = 1")
    weekly = job.path.with_name("weekly.toml")
    weekly.write_text(
        job.path.read_text(encoding="utf-8").replace('"test-job"', '"test-job-weekly"'),
        encoding="utf-8",
    )
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", "--base-url", url, "--input"]
        assert main([*run, str(first), str(weekly)]) == 0
        assert main([*run, str(second), str(job.path)]) == 0
        third = jobs.csv([{"phone": p, "first": "D"} for p in people], "wednesday.csv")
        capsys.readouterr()
        assert main([*run, str(third), str(job.path)]) == 2
        err = capsys.readouterr().err
        assert "test-job-tuesday-" in err
        assert "weekly" not in err
    assert fake.recipient_counts() == dict.fromkeys(people, 2)


def pilot_beside(ledger: str) -> str:
    """The ledger of the one ``--input`` run beside the job's ``ledger``, as named to a
    person."""
    (pilot,) = (display(w) for w, _ in headers_beside(ledger))
    return pilot


def test_the_whole_list_after_a_pilot_input_run_is_refused_naming_who_was_sent(
    jobs: JobFactory, ledger_of: LedgerOf, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pilot (`run JOB --input pilot.csv`, two of the list) then the whole list (`run
    JOB`, its ledger new): refused (exit 2, one line naming how many, the pilot's ledger and
    --exclude-sent, nothing sent), not the pilot's people texted again; with --exclude-sent
    only the rest are texted, each once. Alike for JSONL ledgers and for ledgers in one
    PostgreSQL database."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra="group_size = 1")
    pilot = jobs.csv([{"phone": p, "first": "A"} for p in people[:2]], "pilot.csv")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url]
        assert main([*run, "--input", str(pilot)]) == 0
        capsys.readouterr()
        assert main(run) == 2
        err = capsys.readouterr().err
        ledger = pilot_beside(ledger_of(job))
        assert err.count("\n") == 1
        assert f"input: 2 recipients of {job.input} already sent by this job ({ledger})" in err
        assert f"--exclude-sent {ledger} to leave them out" in err
        assert fake.recipient_counts() == dict.fromkeys(people[:2], 1)
        assert main([*run, "--exclude-sent", ledger]) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


@pytest.mark.parametrize("stopped", [False, True], ids=["finished", "stopped"])
def test_the_whole_list_run_again_after_its_failed_file_was_resent_is_not_refused(
    jobs: JobFactory, ledger_of: LedgerOf, stopped: bool
) -> None:
    """The job's own ledger resumed (`run JOB` again) after its failed file was resent with
    --input, the whole list finished or stopped partway (`--limit`: the resend goes before
    the rest, which the job's resume will text, not whom it refused): the resend is sent,
    and the resend's ledger beside holds people of the list, but a resume is no new campaign
    (its ledger says whom it sent), so it runs, nobody texted twice. Alike for JSONL ledgers
    and for ledgers in one PostgreSQL database."""
    people = [*PAIR, *(["+12125550103"] if stopped else [])]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra="group_size = 1")
    failed = jobs.root / "failed.csv"
    fake = FakeTelnyx()
    fake.faults.append(Fault("status", 400, code="40001"))
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main([*run, *(["--limit", "2"] if stopped else [])]) == 1
        assert main(["-q", "report", ledger_of(job), "--failed-csv", str(failed)]) == 0
        assert main([*run, "--input", str(failed)]) == 0
        assert len(fake.recipient_counts()) == 2  # a stopped list's last is not sent yet
        assert main(run) == 1  # the first send's refused group stays failed: not resent
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


def test_the_whole_list_after_a_sandbox_pilot_is_refused_in_the_sandbox_alone(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pilot in the sandbox then the whole list in the sandbox: refused (exit 2, naming
    the sandbox pilot's ledger); with --exclude-sent the sandbox texts the rest. The real
    run of the whole list is sent to everyone (the sandbox texted nobody)."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra="group_size = 1")
    pilot = jobs.csv([{"phone": people[0], "first": "A"}], "pilot.csv")
    sandbox = ["-q", "run", str(job.path), "--sandbox"]
    assert main([*sandbox, "--input", str(pilot)]) == 0
    capsys.readouterr()
    assert main(sandbox) == 2
    ledger = pilot_beside(str(sandbox_ledger(job.ledger)))
    assert f"1 recipient of {job.input} already sent by this job ({ledger})" in (
        capsys.readouterr().err
    )
    assert not sandbox_ledger(job.ledger).exists()
    assert main([*sandbox, "--exclude-sent", ledger]) == 0
    assert load(sandbox_ledger(job.ledger)).recipients().sent == 2
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


def test_a_daily_ledger_jobs_whole_list_after_another_days_input_run_is_sent(
    jobs: JobFactory,
) -> None:
    """A job with a ledger a day ({date}) run from cron, once with --input the day before:
    that day's --input run is another day's campaign, so today's whole list is sent (exit
    0), not refused every night as texting them again."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    monday = jobs.csv([{"phone": p, "first": "B"} for p in people], "monday.csv")
    job = jobs.job(extra='group_size = 1\nledger = "ledgers/{name}-{date}.jsonl"')
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url]
        assert main([*run, "--input", str(monday)]) == 0
        (ledger,) = (jobs.root / "ledgers").glob("*.jsonl")
        ledger.rename(ledger.with_name("test-job-monday-00000000-2026-11-30.jsonl"))
        assert main(run) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 2)


def test_the_whole_list_beside_another_jobs_input_run_loads_no_ledger(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run JOB` beginning its ledger beside another job's --input run (`test-job-weekly`,
    whose name begins with this job's) only: sent to everyone (exit 0), and no ledger is
    loaded for whom it sent (the common case costs a look at the headers alone)."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    pilot = jobs.csv([{"phone": people[0], "first": "B"}], "pilot.csv")
    job = jobs.job(extra="group_size = 1")
    weekly = job.path.with_name("weekly.toml")
    weekly.write_text(
        job.path.read_text(encoding="utf-8").replace('"test-job"', '"test-job-weekly"'),
        encoding="utf-8",
    )
    asked: list[Location] = []

    def counted(ledgers: list[Location], **kw: Any) -> frozenset[int]:
        asked.extend(ledgers)
        return sent_numbers(ledgers, **kw)

    monkeypatch.setattr("bulk_mms.reruns.sent_numbers", counted)
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(weekly), "--base-url", url, "--input", str(pilot)]) == 0
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    assert asked == []
    assert fake.recipient_counts() == {people[0]: 2, **dict.fromkeys(people[1:], 1)}


def test_a_pilot_while_the_whole_list_is_unfinished_is_refused_not_texted_twice(
    jobs: JobFactory, ledger_of: LedgerOf, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole list stopped partway (`run JOB --limit 1`), then a pilot of people it has
    not sent yet (`run JOB --input pilot.csv`, with or without --exclude-sent): refused
    (exit 2, one line naming the job's unfinished run and its ledger, nothing sent), as its
    resume would text them again; once the job's run is finished the pilot is refused as
    already sent, and with --exclude-sent sends nobody twice. Alike for JSONL ledgers and for
    ledgers in one PostgreSQL database."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra="group_size = 1")
    ledger = ledger_of(job)
    pilot = jobs.csv([{"phone": p, "first": "B"} for p in people[2:]], "pilot.csv")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main([*run, "--limit", "1"]) == 0
        capsys.readouterr()
        for extra in ([], ["--exclude-sent", ledger]):
            assert main([*run, "--input", str(pilot), *extra]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1
            assert (
                f"2 recipients of {pilot} already sent by this job or left to send by its " in err
            )
            assert f"unfinished run ({ledger}) would be texted again" in err
            assert "finish that run first (run it without --input)" in err
        assert fake.recipient_counts() == {people[0]: 1}
        assert main(run) == 0
        assert main([*run, "--input", str(pilot)]) == 2
        assert f"2 recipients of {pilot} already sent by this job ({ledger})" in (
            capsys.readouterr().err
        )
        assert main([*run, "--input", str(pilot), "--exclude-sent", ledger]) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


def test_a_pilot_while_the_whole_list_is_unfinished_counts_only_whom_it_would_text(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pilot of someone the stopped whole-list run already texted is refused as already
    sent, as before; one of someone not in the job's input at all is sent (exit 0): only
    whom the job's run would still text is counted."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra="group_size = 1")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main([*run, "--limit", "1"]) == 0
        sent = jobs.csv([{"phone": people[0], "first": "B"}], "sent.csv")
        capsys.readouterr()
        assert main([*run, "--input", str(sent)]) == 2
        assert "1 recipient of" in (err := capsys.readouterr().err)
        assert "already sent by this job" in err
        other = jobs.csv([{"phone": "+12125550199", "first": "B"}], "other.csv")
        assert main([*run, "--input", str(other)]) == 0
    assert fake.recipient_counts() == {people[0]: 1, "+12125550199": 1}


def test_a_second_pilot_beside_a_first_one_stopped_partway_is_refused_not_texted_twice(
    jobs: JobFactory, ledger_of: LedgerOf, capsys: pytest.CaptureFixture[str]
) -> None:
    """A first pilot stopped partway (`run JOB --input a.csv --limit 1`), then a second pilot
    (`run JOB --input b.csv`, with or without --exclude-sent) holding someone the first has
    not sent yet: refused (exit 2, one line naming the first pilot's ledger and how to finish
    it, nothing sent), as resuming the first would text them again; once the first is
    finished the second is refused as already sent, and with --exclude-sent sends nobody
    twice. Alike for JSONL ledgers and for ledgers in one PostgreSQL database."""
    people = [f"+1212555{i:04d}" for i in range(101, 106)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra="group_size = 1")
    first = jobs.csv([{"phone": p, "first": "B"} for p in people[1:4]], "a.csv")
    second = jobs.csv([{"phone": p, "first": "C"} for p in [people[2], "+12125550199"]], "b.csv")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main([*run, "--input", str(first), "--limit", "1"]) == 0
        (pilot,) = [display(w) for w, _ in headers_beside(ledger_of(job))]
        capsys.readouterr()
        for extra in ([], ["--exclude-sent", pilot]):
            assert main([*run, "--input", str(second), *extra]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1
            assert f"1 recipient of {second} already sent by this job or left to send" in err
            assert f"unfinished run ({pilot}) would be texted again" in err
            assert f"finish that run first (run it with --input {first.resolve()})" in err
        assert fake.recipient_counts() == {people[1]: 1}
        assert main([*run, "--input", str(first)]) == 0
        assert main([*run, "--input", str(second)]) == 2
        assert f"1 recipient of {second} already sent by this job ({pilot})" in (
            capsys.readouterr().err
        )
        assert main([*run, "--input", str(second), "--exclude-sent", pilot]) == 0
    assert fake.recipient_counts() == {**dict.fromkeys(people[1:4], 1), "+12125550199": 1}


def test_a_pilot_resumed_beside_a_second_one_that_excluded_it_is_not_refused(
    jobs: JobFactory, ledger_of: LedgerOf, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pilot A sent, pilot B of an overlapping list sent one with --exclude-sent A's ledger
    and --limit 1, then a carrier's cap moved A's P (also in B) to go again: resuming A is
    not refused (B's resume leaves out whom A's ledger counts sent), while resuming B first
    stays refused (exit 2, finish A first); nobody is texted twice. JSONL and PostgreSQL."""
    people = [f"+1212555{i:04d}" for i in range(101, 106)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra="group_size = 1")
    first = jobs.csv([{"phone": p, "first": "B"} for p in people[:3]], "a.csv")
    overlap = [people[0], people[3], people[4], people[1]]
    second = jobs.csv([{"phone": p, "first": "C"} for p in overlap], "b.csv")
    fake = FakeTelnyx(report={people[1]: "40016"})
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main([*run, "--input", str(first)]) == 0
        (pilot,) = [display(w) for w, _ in headers_beside(ledger_of(job))]
        resume_b = [*run, "--input", str(second), "--exclude-sent", pilot]
        assert main([*resume_b, "--limit", "1"]) == 0
        assert main(["-q", "track", pilot, "--base-url", url]) == 0
        capsys.readouterr()
        assert main(resume_b) == 2
        err = capsys.readouterr().err
        assert f"1 recipient of {second} already sent by this job or left to send" in err
        assert f"finish that run first (run it with --input {first.resolve()})" in err
        assert (
            main([*run, "--input", str(first)]) == LimitReached.exit_code
        )  # P waits for the reset
        assert "would be texted again" not in capsys.readouterr().err
    assert fake.recipient_counts() == dict.fromkeys(people[:4], 1)


def test_a_pilot_beside_one_stopped_partway_counts_not_whom_that_one_excluded(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another job sent X; pilot B (X, W and more) sent one with --exclude-sent that job's
    ledger and --limit 1. A pilot of X is not refused as left to send by B (B's resume
    leaves X out: exit 0, X texted by this job once), unless that ledger cannot be read (exit
    2, saying so); a pilot of W, whom B's resume texts, stays refused (finish B first)."""
    x, w = "+12125550198", "+12125550199"
    jobs.csv([{"phone": x, "first": "A"}])
    job = jobs.job(extra="group_size = 1")
    other = job.path.with_name("other.toml")
    other.write_text(
        job.path.read_text(encoding="utf-8").replace('"test-job"', '"other-job"'),
        encoding="utf-8",
    )
    second = jobs.csv([{"phone": p, "first": "C"} for p in ["+12125550101", x, w]], "b.csv")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        flags = ["--base-url", url, "--concurrency", "1"]
        assert main(["-q", "run", str(other), *flags]) == 0
        old = str(load_job(other).ledger)
        run = ["-q", "run", str(job.path), *flags]
        assert main([*run, "--input", str(second), "--exclude-sent", old, "--limit", "1"]) == 0
        capsys.readouterr()
        left = jobs.csv([{"phone": w, "first": "D"}], "w.csv")
        assert main([*run, "--input", str(left)]) == 2
        err = capsys.readouterr().err
        assert f"1 recipient of {left} already sent by this job or left to send" in err
        assert f"finish that run first (run it with --input {second.resolve()})" in err
        pilot = [*run, "--input", str(jobs.csv([{"phone": x, "first": "E"}], "x.csv"))]
        moved = Path(old).rename(f"{old}.away")
        assert main(pilot) == 2
        assert f"(whom {old} counted sent when that run left them out is counted in: it " in (
            capsys.readouterr().err
        )
        moved.rename(old)
        assert main(pilot) == 0
    assert fake.recipient_counts() == {x: 2, "+12125550101": 1}


def test_a_pilot_beside_two_others_folds_each_of_their_ledgers_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pilot A sent; pilot B stopped partway, run with --exclude-sent A's ledger (named by its
    real path); a third pilot, its job reached through a link to the folder, asks whom they
    would text again: A's and B's ledgers are each folded once, though B's resume names A
    in another form than the folder's listing gives it."""
    jobs = JobFactory(tmp_path / "real")
    jobs.root.mkdir()
    jobs.csv([{"phone": "+12125550101", "first": "A"}])
    jobs.job(extra="group_size = 1")
    link = tmp_path / "link"
    link.symlink_to(jobs.root)
    x, w = "+12125550198", "+12125550199"
    first = jobs.csv([{"phone": x, "first": "B"}], "a.csv")
    second = jobs.csv([{"phone": p, "first": "C"} for p in ["+12125550102", w]], "b.csv")
    third = jobs.csv([{"phone": "+12125550103", "first": "D"}], "c.csv")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(link / "job.toml"), "--base-url", url, "--concurrency", "1"]
        assert main([*run, "--input", str(first)]) == 0
        (a_ledger,) = [w for w, _ in headers_beside(load_job(link / "job.toml").where)]
        excluded = ["--exclude-sent", str(Path(a_ledger).resolve())]
        assert main([*run, "--input", str(second), *excluded, "--limit", "1"]) == 0
        folded: list[Path] = []
        fold = JsonlStore.fold

        def counted(self: JsonlStore, **kw: bool) -> LedgerView:
            folded.append(self.path.resolve())
            return fold(self, **kw)

        monkeypatch.setattr(JsonlStore, "fold", counted)
        assert main([*run, "--input", str(third)]) == 0
    siblings = {p for p in folded if p.name != Path(a_ledger).name} - {jobs.root / "job.jsonl"}
    assert folded.count(Path(a_ledger).resolve()) == 1
    assert all(folded.count(p) == 1 for p in siblings)
    assert fake.recipient_counts() == dict.fromkeys([x, "+12125550102", "+12125550103"], 1)


def test_a_resumed_pilot_is_not_refused_for_its_own_group_in_doubt(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pilot that died mid-send (a group in doubt in its own ledger) beside the job's
    whole-list run stopped by --limit: resuming the pilot is not refused (neither as texting
    the whole list's people again nor for the doubt in its own ledger, which is its own to
    settle); it sends the rest of its input and holds the group in doubt."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra="group_size = 1")
    doubt, rest = "+12125550198", "+12125550199"
    pilot = jobs.csv([{"phone": p, "first": "B"} for p in (doubt, rest)], "pilot.csv")
    crashed = load_job(job.path, name=rerun_name(job.name, pilot), input_file=pilot)
    gid = group_id(crashed.name, (doubt,))
    write_ledger(
        crashed.ledger,
        [
            header_for(crashed, fingerprint(pilot), SystemClock()),
            events.RunStarted(pid=1),
            events.Attempt(gid, (doubt,)),
            events.InDoubt(gid, (doubt,), reason="the process died"),
        ],
    )
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main([*run, "--limit", "1"]) == 0
        capsys.readouterr()
        code = main([*run, "--input", str(pilot)])
    err = capsys.readouterr().err
    assert "would be texted again" not in err
    assert "in doubt (--exclude-sent)" not in err
    assert code == Exit.INCOMPLETE
    assert fake.recipient_counts() == {people[0]: 1, rest: 1}
    assert load(crashed.ledger, statuses=False).recipients().in_doubt == 1


def test_a_pilot_beside_yesterdays_unfinished_whole_list_folds_it_once_and_continues_nothing(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job with a ledger a day whose whole list was cut short yesterday, and a pilot cut
    short yesterday too: today's `run JOB --input pilot.csv` finishes the pilot's ledger of
    yesterday (`ledger.continued` logged once, for it), reads the whole list's ledger of
    yesterday once to count whom it would still text, and sends the pilot's rest."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra='group_size = 1\nledger = "ledgers/{name}-{date}.jsonl"')
    others = ["+12125550198", "+12125550199"]
    pilot = jobs.csv([{"phone": p, "first": "B"} for p in others], "pilot.csv")
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    whole = load_job(job.path, now=yesterday)
    cut = load_job(job.path, name=rerun_name(job.name, pilot), input_file=pilot, now=yesterday)
    for earlier in (whole, cut):
        asyncio.run(run_job(earlier, FAST, FakeClient(), limit=1))
    folded: list[Path] = []
    fold = JsonlStore.fold

    def counted(self: JsonlStore, **kw: bool) -> LedgerView:
        folded.append(self.path)
        return fold(self, **kw)

    monkeypatch.setattr(JsonlStore, "fold", counted)
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        argv = ["--log-json", "run", str(job.path), "--base-url", url, "--input", str(pilot)]
        assert main(argv) == 0
    logged = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    continued = [e["ledger"] for e in logged if e["event"] == "ledger.continued"]
    assert continued == [str(cut.ledger)]
    assert folded.count(whole.ledger) == 1
    assert fake.recipient_counts() == {others[1]: 1}


def test_the_whole_list_beside_a_pilot_stopped_partway_is_refused_not_texted_twice(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pilot stopped partway (`run JOB --input pilot.csv --limit 1`), then the whole list
    with --exclude-sent naming the pilot's ledger: refused (exit 2, naming the pilot's
    unfinished run and how to finish it, nothing sent), as resuming the pilot would text its
    rest again; once the pilot is finished the whole list sends everyone once."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra="group_size = 1")
    pilot = jobs.csv([{"phone": p, "first": "B"} for p in people[:2]], "pilot.csv")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main([*run, "--input", str(pilot), "--limit", "1"]) == 0
        (ledger,) = [display(w) for w, _ in headers_beside(job.ledger)]
        capsys.readouterr()
        assert main([*run, "--exclude-sent", ledger]) == 2
        err = capsys.readouterr().err
        assert f"1 recipient of {job.input} already sent by this job or left to send" in err
        assert f"finish that run first (run it with --input {pilot.resolve()})" in err
        assert fake.recipient_counts() == {people[0]: 1}
        assert main([*run, "--input", str(pilot)]) == 0
        assert main([*run, "--exclude-sent", ledger]) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


def test_a_campaign_begun_with_exclude_sent_resumes_when_those_ledgers_count_fewer_sent(
    jobs: JobFactory, ledger_of: LedgerOf, capsys: pytest.CaptureFixture[str]
) -> None:
    """A campaign begun with --exclude-sent OLD and stopped by --limit, after which OLD counts
    one fewer sent (a delivery report moved them out of their sent group: the carrier's cap):
    resumed with the same --exclude-sent it is not refused (exit 0), and texts that one, whom
    OLD no longer counts sent, and the rest, each once more at most; resumed without it, or
    with another ledger in its place, it is still refused (exit 2, nothing sent). Alike for
    JSONL ledgers and for ledgers in one PostgreSQL database."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra="group_size = 1")
    ledger = ledger_of(job)
    fixed = ["+12125550198", "+12125550199"]
    fake = FakeTelnyx(report={people[1]: "40016"})
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main(run) == 0
        jobs.csv([{"phone": p, "first": "A"} for p in [*people, *fixed]])
        fresh = [*run, "--name", "fixed"]
        assert main([*fresh, "--exclude-sent", ledger, "--limit", "1"]) == 0
        assert main(["-q", "track", ledger, "--base-url", url]) == 0
        assert sent_numbers([ledger]) == {int(p[1:]) for p in people if p != people[1]}
        other = job.path.with_name("other.toml")
        other.write_text(
            job.path.read_text(encoding="utf-8").replace('"test-job"', '"other-job"'),
            encoding="utf-8",
        )
        assert main(["-q", "run", str(other), "--base-url", url, "--limit", "1"]) == 0
        capsys.readouterr()
        for wrong in ([], ["--exclude-sent", ledger_of(load_job(other))]):
            assert main([*fresh, *wrong]) == 2
            err = capsys.readouterr().err
            assert "sent leaving out 4 rows already sent" in err
            assert "give the same --exclude-sent as the runs that sent (--exclude-sent " in err
        assert main([*fresh, "--exclude-sent", ledger]) == 0
    assert fake.recipient_counts() == {
        **dict.fromkeys(people, 1),
        people[0]: 2,  # the other job's
        people[1]: 2,  # the first send never reached them (the carrier's cap)
        **dict.fromkeys(fixed, 1),
    }


def test_a_campaign_begun_with_exclude_sent_is_refused_when_that_ledger_was_replaced(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A campaign begun with --exclude-sent OLD and stopped by --limit, after which OLD was
    moved away and a new ledger begun at its path (another campaign, counting none of them
    sent): resumed with the same --exclude-sent it is refused (exit 2, naming that ledger),
    not texting everyone OLD sent a second time."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    jobs.csv([{"phone": p, "first": "A"} for p in people], name="old.csv")
    jobs.csv([{"phone": p, "first": "A"} for p in [*people, "+12125550198", "+12125550199"]])
    job = jobs.job(extra="group_size = 1")
    old = job.path.with_name("old.toml")
    old.write_text(
        job.path.read_text(encoding="utf-8")
        .replace('"test-job"', '"old-job"')
        .replace('"people.csv"', '"old.csv"'),
        encoding="utf-8",
    )
    ledger = load_job(old).ledger
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        flags = ["--base-url", url, "--concurrency", "1"]
        assert main(["-q", "run", str(old), *flags]) == 0
        fresh = [
            "-q",
            "run",
            str(job.path),
            *flags,
            "--name",
            "fixed",
            "--exclude-sent",
            str(ledger),
        ]
        assert main([*fresh, "--limit", "1"]) == 0
        ledger.rename(ledger.with_name("old-archived.jsonl"))
        jobs.csv([{"phone": "+12125550150", "first": "B"}], name="old.csv")
        assert main(["-q", "run", str(old), *flags]) == 0
        capsys.readouterr()
        assert main(fresh) == 2
    err = capsys.readouterr().err
    assert "sent leaving out 4 rows already sent" in err
    assert f"the ledger at {ledger} is no longer the one they named" in err
    assert max(fake.recipient_counts().values()) == 1


def _saved_by_excel(failed: Path) -> None:
    """Open the failed file in Excel where the decimal mark is a comma and save it: its cells
    separated by semicolons, CRLF line ends, the numbers without their ``+``."""
    with failed.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    rows[1:] = [[r[0].lstrip("+"), *r[1:]] for r in rows[1:]]
    with failed.open("w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f, delimiter=";", lineterminator="\r\n").writerows(rows)


def test_a_failed_file_saved_again_after_its_resend_does_not_text_them_twice(
    jobs: JobFactory, ledger_of: LedgerOf, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A failed file resent, then opened and saved by a spreadsheet (another hash, so another
    resend's ledger) and run again: refused (exit 2, naming the resend's ledger), nobody
    texted twice; with --exclude-sent that ledger, nobody is sent (exit 0). Alike for JSONL
    ledgers and for ledgers in one PostgreSQL database."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": f"P{i}"} for i, p in enumerate(people)])
    job = jobs.job(extra="group_size = 1")
    failed = tmp_path / "failed.csv"
    fake = FakeTelnyx()
    fake.faults.extend(Fault("status", 400, code="40001") for _ in range(2))
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main(run) == 1
        assert main(["-q", "report", ledger_of(job), "--failed-csv", str(failed)]) == 0
        run.extend(["--input", str(failed)])
        assert main(run) == 0
        assert fake.recipient_counts() == dict.fromkeys(people, 1)
        (resend,) = (
            display(w) for w, h in headers_beside(ledger_of(job)) if h.input == str(failed)
        )
        _saved_by_excel(failed)
        capsys.readouterr()
        assert main(run) == 2
        err = capsys.readouterr().err
        assert "2 recipients" in err
        assert resend in err
        assert f"--exclude-sent {resend}" in err
        assert fake.recipient_counts() == dict.fromkeys(people, 1)
        assert main([*run, "--exclude-sent", resend]) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


def test_failed_files_of_two_rounds_joined_resend_whom_the_later_round_missed(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A number whose delivery failed at the send and again in the resend of its failed file:
    both rounds' failed files joined into one (the first's rows first) and sent is not refused
    as texting it again (the second round lists it to resend), and it is texted once more."""
    jobs.csv([{"phone": "+12125550101", "first": "Ann"}])
    job = jobs.job(extra="group_size = 1")
    first, second, both = (tmp_path / f"{n}.csv" for n in ("failed", "failed2", "both"))
    fake = FakeTelnyx(report={"+12125550101": "30007"})
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url]
        assert main(run) == 0
        assert main(["-q", "track", str(job.ledger), "--base-url", url]) == 0
        assert main(["-q", "report", str(job.ledger), "--failed-csv", str(first)]) == 0
        assert main([*run, "--input", str(first)]) == 0
        (resend,) = (w for w, h in headers_beside(str(job.ledger)) if h.input == str(first))
        assert main(["-q", "track", display(resend), "--base-url", url]) == 0
        assert main(["-q", "report", display(resend), "--failed-csv", str(second)]) == 0
        lines = first.read_text(encoding="utf-8-sig").splitlines()
        later = second.read_text(encoding="utf-8-sig").splitlines()[1:]
        both.write_text("\n".join([*lines, *later]) + "\n", encoding="utf-8-sig")
        capsys.readouterr()
        assert main([*run, "--input", str(both)]) == 0
    assert "would be texted again" not in capsys.readouterr().err
    assert fake.recipient_counts() == {"+12125550101": 3}


def test_a_row_added_by_hand_to_a_failed_file_is_checked_against_whom_the_job_sent(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A row typed into a failed file with an empty bulk_mms_campaign cell, of someone the
    job already sent, is refused as any other input's row is (exit 2, naming the ledger and
    saying to take the row out, nothing sent); without it the failed one is resent, nobody
    twice."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    job = jobs.job(extra="group_size = 1")
    fake = FakeTelnyx()
    fake.faults.append(Fault("status", 400, code="40001"))  # one group refused for good
    failed = tmp_path / "failed.csv"
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url]
        assert main(run) == 1
        assert main(["-q", "report", str(job.ledger), "--failed-csv", str(failed)]) == 0
        with failed.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["phone", "first", "bulk_mms_reason", "bulk_mms_campaign"]
        sent = next(p for p in people if p != rows[1][0])
        with failed.open("a", encoding="utf-8", newline="") as f:
            csv.writer(f).writerow([sent, "A", "", ""])  # added by hand: no campaign
        capsys.readouterr()
        assert main([*run, "--input", str(failed)]) == 2
        err = capsys.readouterr().err
        assert f"1 recipient of {failed} whose rows name no campaign" in err
        assert f"already sent by this job ({job.ledger})" in err
        assert "take those rows out of the file" in err
        assert fake.recipient_counts() == dict.fromkeys(set(people) - {rows[1][0]}, 1)
        with failed.open("w", encoding="utf-8-sig", newline="") as f:
            csv.writer(f).writerows(rows)  # the row taken out again
        assert main([*run, "--input", str(failed)]) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


def test_a_row_added_by_hand_to_a_failed_file_is_checked_though_exclude_sent_names_another(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A row typed into a failed file, of someone the job already sent, is refused though the
    resend names another job's ledger with --exclude-sent (which leaves out whom that ledger
    sent, not whom this job did): exit 2, nothing sent, nobody texted twice."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    jobs.csv([{"phone": p, "first": "A"} for p in people])
    jobs.csv([{"phone": "+12125550190", "first": "B"}], name="other.csv")
    fake = FakeTelnyx()
    failed = tmp_path / "failed.csv"
    with fake_api_thread(fake) as url:
        other = jobs.job("other.csv", name="other-job")  # its job file written over next
        assert main(["-q", "run", str(other.path), "--base-url", url]) == 0
        job = jobs.job(extra="group_size = 1")
        fake.faults.append(Fault("status", 400, code="40001"))  # one group refused for good
        run = ["-q", "run", str(job.path), "--base-url", url]
        assert main(run) == 1
        assert main(["-q", "report", str(job.ledger), "--failed-csv", str(failed)]) == 0
        with failed.open(encoding="utf-8-sig", newline="") as f:
            missed = next(iter(list(csv.reader(f))[1:]))[0]
        sent = next(p for p in people if p != missed)
        with failed.open("a", encoding="utf-8", newline="") as f:
            csv.writer(f).writerow([sent, "A", "", ""])  # added by hand: no campaign
        capsys.readouterr()
        exclude = ["--exclude-sent", str(other.ledger)]
        assert main([*run, "--input", str(failed), *exclude]) == 2
    assert f"already sent by this job ({job.ledger})" in capsys.readouterr().err
    assert fake.recipient_counts()[sent] == 1
