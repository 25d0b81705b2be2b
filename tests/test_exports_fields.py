"""Exports as offices make them, at the edges of what a reader holds: a note pasted whole into
a cell, a quote left open over thousands of rows, a line over MAX_LINE_BYTES in a quoted
field, JSONL exports joined with their byte order marks or parted by a carriage return alone,
and the report of a run that stopped before the end. Every row is sent or named; none is read
from the middle of a field."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest

from bulk_mms.cli import main
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.reader import MAX_LINE_BYTES
from tests.conftest import JobFactory, numbers
from tests.test_exports_people import refused_then_resent, stopped_after_one
from tests.threaded import fake_api_thread

_BOM = b"\xef\xbb\xbf"
_TOO_LONG = f"line is longer than {MAX_LINE_BYTES} bytes"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    monkeypatch.setenv("TELNYX_API_KEY", "KEY-exports-fields")


def _people(jobs: JobFactory, rows: list[str]) -> Path:
    return jobs.csv("phone,first,note\r\n" + "".join(f"{r}\r\n" for r in rows))


def _run(jobs: JobFactory, input_name: str = "people.csv", *, exits: int) -> FakeTelnyx:
    """``bulk-mms run`` of a job on ``input_name`` against a fake API, which it returns,
    asserting the run's exit code."""
    job = jobs.job(input_name)
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url, "--rate", "1000"]) == exits
    return fake


def test_a_quote_left_open_over_thousands_of_rows_sends_nothing(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stray quote whose field grows past the csv module's field limit (more than a line
    may hold, MAX_LINE_BYTES) before any quote closes it stops the file at the line it opened
    (exit 2), instead of rejecting one row and reading on from the middle of the field, the
    thousands of rows it swallowed gone without a word."""
    note = "x" * 150  # 9,000 rows of these: more than a line may hold, MAX_LINE_BYTES
    rows = [f"{p},P{i},{note}" for i, p in enumerate(numbers(9000))]
    rows[100] = rows[100].replace(",x", ',"x', 1)
    _people(jobs, rows)
    fake = _run(jobs, exits=2)
    err = capsys.readouterr().err
    assert "people.csv:102: " in err
    assert "unclosed quote" in err
    assert fake.requests == []


def test_a_long_note_on_one_line_is_one_row_and_a_row_pasted_after_it_is_not_texted(
    jobs: JobFactory,
) -> None:
    """A quoted note whose first line is nearly as long as a line may be (MAX_LINE_BYTES, the
    csv module's field limit) is read as the field it is: the row holding it is sent, and a
    row pasted into the note's next line stays in the note, never texted."""
    people = numbers(30)
    rows = [f"{p},P{i},x" for i, p in enumerate(people)]
    rows[10] = (
        f'{people[10]},P10,"{"z" * (MAX_LINE_BYTES - 100)}\r\n+13125559001,Pasted,x\r\nend of note"'
    )
    _people(jobs, rows)
    fake = _run(jobs, exits=0)
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


@pytest.mark.parametrize("at", [3, 500], ids=["read-ahead", "streamed"])
def test_a_note_opened_on_a_line_too_long_stops_the_file_not_texting_a_row_in_it(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], at: int
) -> None:
    """A line over MAX_LINE_BYTES that opens a quoted note does not lose the note's quote with
    its text: the row pasted into the note's next line is never read as a recipient; as
    which of the lines after it are the note's cannot be told, the file stops (exit 2),
    naming the over-long line, near the top or deep in the file."""
    people = numbers(600)
    rows = [f"{p},P{i},x" for i, p in enumerate(people)]
    rows[at] = f'{people[at]},P,"{"z" * (MAX_LINE_BYTES + 10)}\r\n+13125559001,P,x\r\nend of note"'
    _people(jobs, rows)
    fake = _run(jobs, exits=2)
    err = capsys.readouterr().err
    assert f"people.csv:{at + 2}: line {at + 2} is longer than {MAX_LINE_BYTES} bytes" in err
    assert fake.requests == []


def test_a_line_too_long_inside_a_note_rejects_its_row_and_sends_the_rest(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line over MAX_LINE_BYTES in the middle of a quoted note, no quote in it, rejects the
    note's row alone: the rows after the note are read from where the note closes."""
    people = numbers(600)
    rows = [f"{p},P{i},x" for i, p in enumerate(people)]
    rows[500] = f'{people[500]},P,"a note\r\n{"z" * (MAX_LINE_BYTES + 10)}\r\nend of note"'
    _people(jobs, rows)
    fake = _run(jobs, exits=0)
    assert fake.recipient_counts() == {p: 1 for p in people if p != people[500]}
    assert f"1 of 600 rows rejected (0.2%: line is longer than {MAX_LINE_BYTES} bytes" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_the_report_lists_a_row_too_long_by_its_first_characters(
    jobs: JobFactory, kind: str
) -> None:
    """``report --rejected-csv`` lists a row rejected for a line over MAX_LINE_BYTES with its
    line, its first 200 characters marked cut (``…``) and why: the row can be found and
    fixed; the rows around it are sent."""
    people = numbers(300)
    long = "z" * (MAX_LINE_BYTES + 10)
    if kind == "csv":
        lines = ["phone,first,note", *(f"{p},P{i},x" for i, p in enumerate(people))]
        lines[201] = f"{people[200]},Long,{long}"
    else:
        lines = [
            orjson.dumps({"phone": p, "first": f"P{i}"}).decode() for i, p in enumerate(people)
        ]
        lines[200] = orjson.dumps({"phone": people[200], "first": "Long", "note": long}).decode()
    (jobs.root / f"people.{kind}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sent = _run(jobs, f"people.{kind}", exits=0).recipient_counts()
    assert sent == {p: 1 for p in people if p != people[200]}
    out = jobs.root / "rejected.csv"
    assert main(["report", str(jobs.job(f"people.{kind}").ledger), "--rejected-csv", str(out)]) == 0
    with out.open(encoding="utf-8-sig", newline="") as f:
        listed = list(csv.reader(f))
    at = 202 if kind == "csv" else 201
    shown = lines[at - 1][:200] + "…"
    # a value that starts like a formula (+) is written after a quote: never run as one
    assert listed[1:] == [[str(at), shown if kind == "jsonl" else "'" + shown, _TOO_LONG]]


def test_jsonl_exports_joined_with_their_marks_send_every_record(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two JSONL exports, each starting with a UTF-8 byte order mark, joined into one file
    (``cat a.jsonl b.jsonl``): the second's first record is read as the record it is, not
    rejected as malformed JSON."""
    people = numbers(40)
    lines = [orjson.dumps({"phone": p, "first": f"P{i}"}) + b"\n" for i, p in enumerate(people)]
    (jobs.root / "people.jsonl").write_bytes(
        _BOM + b"".join(lines[:20]) + _BOM + b"".join(lines[20:])
    )
    fake = _run(jobs, "people.jsonl", exits=0)
    assert fake.recipient_counts() == dict.fromkeys(people, 1)
    assert "0 of 40 rows rejected" in capsys.readouterr().out


def test_the_report_s_rejected_file_says_which_rows_a_stopped_run_did_not_record(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a run that stopped before the end of its input (here --limit 1), the report's
    rejected file holds the rows recorded so far, and its line says how many more the report
    counts rejected and how to list them, never "wrote 0 rejected rows" and nothing else."""
    job = stopped_after_one(jobs)
    capsys.readouterr()
    out = jobs.root / "rejected.csv"
    assert main(["report", str(job.ledger), "--json", "--rejected-csv", str(out)]) == 0
    assert out.read_text(encoding="utf-8-sig").splitlines() == ["line,value,reason"]
    err = capsys.readouterr().err
    assert "wrote 0 rejected rows" in err
    assert "2 more rejected rows not recorded yet" in err
    assert "run --rejected-csv" in err


def test_jsonl_records_parted_by_a_carriage_return_alone_are_named_so(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two JSONL records on one line, parted by a carriage return alone (an old Mac line
    end), reject that line saying so, its text the value; a file whose every line ends so
    stops saying so, not that it looks cut off."""
    people = numbers(40)
    lines = [orjson.dumps({"phone": p, "first": f"P{i}"}) for i, p in enumerate(people)]
    path = jobs.root / "people.jsonl"
    path.write_bytes(
        b"\n".join(lines[:20])
        + b"\n"
        + b"\r".join(lines[20:22])
        + b"\n"
        + b"\n".join(lines[22:])
        + b"\n"
    )
    job = jobs.job("people.jsonl")
    rejected = jobs.root / "rejected.csv"
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        args = ["-q", "run", str(job.path), "--base-url", url, "--rate", "1000"]
        assert main([*args, "--rejected-csv", str(rejected)]) == 0
        [row] = list(csv.DictReader(rejected.read_text(encoding="utf-8-sig").splitlines()))
        assert row["line"] == "21"
        assert "carriage return alone" in row["reason"]
        assert row["value"].count("\\r") == 1
        assert row["value"].split("\\r") == [lines[20].decode(), lines[21].decode()]
        path.write_bytes(b"\r".join(lines) + b"\r")
        capsys.readouterr()
        assert main([*args, "--name", "mac"]) == 2
    err = capsys.readouterr().err
    assert "people.jsonl:1: " in err
    assert "carriage return alone" in err
    assert "cut off" not in err


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_large_export_whose_lines_end_the_old_mac_way_is_named_so(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """An export longer than a line may be (MAX_LINE_BYTES) whose lines end in a carriage
    return alone (Excel for Mac's "CSV (Macintosh)") reads as one over-long line; it stops
    saying how its lines end and how to save it, sending nothing, not that its header or
    every row is too long."""
    people = numbers(MAX_LINE_BYTES // 20 + 1000)
    if kind == "csv":
        _people(jobs, [])
        body = "phone,first,note\r" + "".join(f"{p},P{i},x\r" for i, p in enumerate(people))
        (jobs.root / "people.csv").write_text(body, encoding="utf-8")
        said = 'save the file as "CSV UTF-8 (Comma delimited)"'
    else:
        records = [orjson.dumps({"phone": p, "first": f"P{i}"}) for i, p in enumerate(people)]
        (jobs.root / "people.jsonl").write_bytes(b"\r".join(records) + b"\r")
        said = "save it with line feeds"
    assert (jobs.root / f"people.{kind}").stat().st_size > MAX_LINE_BYTES
    fake = _run(jobs, f"people.{kind}", exits=2)
    err = capsys.readouterr().err
    assert f"people.{kind}:1: " in err
    assert "carriage return alone" in err
    assert said in err
    assert fake.requests == []


def test_the_failed_file_keeps_each_unnamed_column_s_own_value(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """An export whose header leaves two columns unnamed: the failed file writes each of
    them with its own value under a blank name, as the input had them, not one value in
    both."""
    jobs.csv("phone,,first,\r\n+12125550101,a,Ann,b\r\n+12125550102,c,Bo,d\r\n")
    job = jobs.job(extra="group_size = 1", message='text = "Hi {first}"')
    failed = tmp_path / "failed.csv"
    fake = refused_then_resent(job, failed, refused=2)
    assert sorted(m.body["text"] for m in fake.accepted) == ["Hi Ann", "Hi Bo"]
    with failed.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == ["phone", "", "first", ""]
    assert sorted(r[:4] for r in rows[1:]) == [
        ["+12125550101", "a", "Ann", "b"],
        ["+12125550102", "c", "Bo", "d"],
    ]
