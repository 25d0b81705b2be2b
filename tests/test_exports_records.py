"""Exports as offices make them, record by record: JSONL files whose records do not all have
the same keys, records that give a key twice; and what such a job meets next: a rerun
waiting for a carrier's cap, the bounds of the rate flags, a database URL with a bad
parameter."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import orjson
import pytest

from bulk_mms.cli import main
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.models import RejectedRow
from bulk_mms.reader import Row, RowReader
from tests.conftest import JobFactory
from tests.threaded import fake_api_thread


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    monkeypatch.setenv("TELNYX_API_KEY", "KEY-exports-records")


def _jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


# -- 1. a JSONL file's columns are every record's keys ------------------------------------


def test_jsonl_columns_are_every_records_keys_in_the_order_first_met(tmp_path: Path) -> None:
    """A JSONL file's columns are the keys of all its records, in the order first met, once
    a pass has read it to its end; a pass given them (a send after its scan) has them from
    the start. A key a record leaves out is an empty value, as an empty cell is (the phone
    aside: a record without one is rejected)."""
    p = _jsonl(
        tmp_path / "a.jsonl",
        [
            {"phone": "+12125550101"},
            {"phone": "+12125550102", "first": "Bo", "household": "h1"},
            {"first": "Cy", "phone": "+12125550103", "note": "x"},
            {"first": "Di"},
        ],
    )
    with RowReader(p, "phone", ("first",)) as reader:
        assert not reader.complete
        rows = iter(reader)
        assert next(rows) == Row(1, {"phone": "+12125550101", "first": ""})
        assert [*rows][-1] == RejectedRow(4, "", "missing field 'phone'")
        assert reader.complete
        columns = reader.columns
    assert columns == ("phone", "first", "household", "note")
    with RowReader(p, "phone", ("first",), keep_all=True, columns=columns) as reader:
        assert reader.complete
        assert reader.columns == columns
        again = list(reader)
    assert again == [
        Row(1, {"phone": "+12125550101", "first": "", "household": "", "note": ""}),
        Row(2, {"phone": "+12125550102", "first": "Bo", "household": "h1", "note": ""}),
        Row(3, {"phone": "+12125550103", "first": "Cy", "household": "", "note": "x"}),
        RejectedRow(4, "", "missing field 'phone'"),
    ]


def test_a_jsonl_file_whose_first_record_leaves_out_empty_keys_is_sent(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """An export that leaves out null keys (the first record has no "household" or
    "first"): grouped by household and texted by first name, not refused as "'household' is
    not a column"; the failed file of a later run has every key some record has."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    _jsonl(
        jobs.root / "people.jsonl",
        [
            {"phone": people[0], "household": "h0"},
            {"phone": people[1], "first": "Bo", "household": "h1"},
            {"phone": people[2], "first": "Cy", "household": "h1", "vip": "yes"},
            {"phone": people[3], "first": "Di", "household": "h3"},
        ],
    )
    job = jobs.job("people.jsonl", extra='group_by = "household"', message='text = "Hi {first}"')
    fake = FakeTelnyx()
    fake.faults.extend(Fault("status", 400, code="40001") for _ in range(10))
    failed = tmp_path / "failed.csv"
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 1
    assert main(["-q", "report", str(job.ledger), "--failed-csv", str(failed)]) == 0
    with failed.open(encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = {r["phone"]: r for r in reader}
        assert reader.fieldnames is not None
        assert reader.fieldnames[:4] == ["phone", "household", "first", "vip"]
    assert set(rows) == set(people)
    assert (rows[people[2]]["first"], rows[people[2]]["vip"]) == ("Cy", "yes")
    assert (rows[people[0]]["first"], rows[people[0]]["vip"]) == ("", "")


def test_a_template_field_no_jsonl_record_has_is_refused_after_the_scan(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A field the message names that no record of the JSONL file has is a setting to fix:
    exit 2 naming message.text and the columns, nothing sent."""
    _jsonl(
        jobs.root / "people.jsonl",
        [{"phone": "+12125550101"}, {"phone": "+12125550102", "name": "Bo"}],
    )
    job = jobs.job("people.jsonl", extra="group_size = 1", message='text = "Hi {first}"')
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert "message.text" in err
    assert "'first' is not a column" in err
    assert "phone, name" in err
    assert fake.requests == []


def test_a_timezone_column_the_input_lacks_is_refused_as_a_setting(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A timezone_column the input has no column of is the job's to fix (exit 2 naming
    timezone_column), not every row rejected as missing it."""
    jobs.csv("phone,first\n+12125550101,Ann\n")
    job = jobs.job(extra='group_size = 1\nrecipient_window = "00:00-23:59"\ntimezone_column = "tz"')
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert "timezone_column" in err
    assert "'tz' is not a column" in err
    assert fake.requests == []


def test_a_jsonl_file_with_no_phone_in_its_first_records_is_refused(tmp_path: Path) -> None:
    """No record near the top has the phone field: the file is refused naming the fields it
    has (a phone_column to set), whichever record is first."""
    p = _jsonl(tmp_path / "a.jsonl", [{"tel": "+12125550101"}, {"tel": "+1212", "x": 1}])
    with pytest.raises(Exception, match=r"no record has a 'phone' field \(fields: tel, x\)"):
        list(RowReader(p, "phone").__enter__())


def test_a_jsonl_file_whose_first_record_has_no_phone_is_read(tmp_path: Path) -> None:
    """A first record without the phone key (an export that leaves out nulls) is a row
    rejected for it, not a file refused: the records after it are read."""
    p = _jsonl(tmp_path / "a.jsonl", [{"first": "Al"}, {"phone": "+12125550102", "first": "B"}])
    with RowReader(p, "phone", ("first",)) as reader:
        rows = list(reader)
    assert rows == [
        RejectedRow(1, "", "missing field 'phone'"),
        Row(2, {"phone": "+12125550102", "first": "B"}),
    ]


# -- 2. a key given twice in one JSONL record --------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b'{"phone": "+12125550102", "first": "Bo", "first": "Al"}\n',
        b'{"phone":"+12125550102","first":"Bo","first" : "Al","t":"10:30"}\n',
        b'{"phone": "+12125550102", "first": "Bo", "fir\\u0073t": "Al"}\n',
    ],
)
def test_a_jsonl_record_that_gives_a_key_twice_is_rejected_naming_it(
    tmp_path: Path, line: bytes
) -> None:
    """A record that gives a key twice is rejected naming the key (which value it would be
    sent with is a guess, as for a CSV header that names a column twice); the others read."""
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"phone": "+12125550101", "first": "Ann", "t": "10:30"}\n' + line)
    with RowReader(p, "phone", ("first",)) as reader:
        rows = list(reader)
    assert rows[0] == Row(1, {"phone": "+12125550101", "first": "Ann"})
    assert isinstance(rows[1], RejectedRow)
    assert rows[1].line == 2
    assert "'first'" in rows[1].reason
    assert "twice" in rows[1].reason


def test_a_key_given_twice_in_a_nested_value_is_no_matter(tmp_path: Path) -> None:
    """Only a record's own keys are columns: a repeat inside a nested object does not
    reject it."""
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"phone": "+12125550101", "meta": {"a": 1, "a": 2}}\n')
    with RowReader(p, "phone") as reader:
        assert list(reader) == [Row(1, {"phone": "+12125550101"})]


def test_a_ledger_begun_with_the_first_records_keys_alone_resumes(jobs: JobFactory) -> None:
    """A ledger an older bulk-mms began, whose header has the first JSONL record's keys as
    its columns, resumes: the rest are sent, nobody twice."""
    people = [f"+1212555{i:04d}" for i in range(101, 104)]
    _jsonl(
        jobs.root / "people.jsonl",
        [
            {"phone": people[0], "first": "Al"},
            {"phone": people[1], "first": "Bo", "vip": "yes"},
            {"phone": people[2], "first": "Cy"},
        ],
    )
    job = jobs.job("people.jsonl", extra="group_size = 1")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url]
        assert main([*run, "--limit", "1"]) == 0
        lines = job.ledger.read_bytes().splitlines(keepends=True)
        header = orjson.loads(lines[0])
        assert header["columns"] == ["first", "vip"]
        header["columns"] = ["first"]
        job.ledger.write_bytes(orjson.dumps(header) + b"\n" + b"".join(lines[1:]))
        assert main(run) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


# -- 2b. what Python's json module writes, and a malformed line's reason ------------------


def test_a_jsonl_file_python_wrote_with_nan_for_missing_values_sends_everyone(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """Records Python's json.dumps wrote from a data frame (a missing value is ``NaN``, an
    overflow ``Infinity``) are sent, not rejected as malformed JSON: ``NaN`` is empty, as
    the frame's CSV cell would be (so [message.defaults] fills it), ``Infinity`` reads as
    written; exit 0, everyone once."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    records = [
        {"phone": people[0], "first": "Al", "age": float("nan")},
        {"phone": people[1], "first": float("nan"), "age": 41.0},
        {"phone": people[2], "first": "Cy", "score": float("inf")},
        {"phone": people[3], "first": "Di", "score": float("-inf"), "age": 7},
    ]
    (jobs.root / "people.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    job = jobs.job(
        "people.jsonl",
        extra="group_size = 1",
        message='text = "Hello {first}"\n[message.defaults]\nfirst = "friend"',
    )
    fake = FakeTelnyx()
    rejected = tmp_path / "rejected.csv"
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--rejected-csv", str(rejected)]
        assert main(run) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 1)
    assert sorted(m.body["text"] for m in fake.accepted) == [
        "Hello Al",
        "Hello Cy",
        "Hello Di",
        "Hello friend",
    ]
    with RowReader(jobs.root / "people.jsonl", "phone") as reader:
        assert all(isinstance(r, Row) for r in reader)
        columns = reader.columns
    with RowReader(jobs.root / "people.jsonl", "phone", keep_all=True, columns=columns) as reader:
        rows = [r for r in reader if isinstance(r, Row)]
    assert [(r.fields["age"], r.fields["score"]) for r in rows] == [
        ("", ""),
        ("41.0", ""),
        ("", "Infinity"),
        ("7", "-Infinity"),
    ]


def test_a_malformed_jsonl_lines_reason_points_into_that_line(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A line that is no JSON is rejected with its own line number and a reason that points
    at the column in that line, never at "line 2" of a line the report calls line 3."""
    (jobs.root / "people.jsonl").write_bytes(
        b'{"phone": "+12125550101", "first": "Al"}\r\n'
        b'{"phone": "+12125550102", "first": "Bo"}\r\n'
        b'{"phone": "+12125550103", "first": "Cy"\r\n'
        b'{"phone": "+12125550104", "first": "Di"} x\r\n'
    )
    job = jobs.job("people.jsonl", extra="group_size = 1\nmax_rejected_share = 0.5")
    fake = FakeTelnyx()
    rejected = tmp_path / "rejected.csv"
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--rejected-csv", str(rejected)]
        assert main(run) == 0
    with rejected.open(encoding="utf-8-sig", newline="") as f:
        reasons = {int(r["line"]): r["reason"] for r in csv.DictReader(f)}
    assert reasons == {
        3: "malformed JSON: unexpected end of data after column 39",
        4: "malformed JSON: unexpected content after document at column 42",
    }


# -- 3. a rerun while members wait for a carrier's daily cap --------------------------------


def test_a_rerun_while_members_wait_for_a_carriers_reset_exits_5_saying_when(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rerun before the reset of a carrier's daily cap (40016: a member moved out of its
    sent group to go again from the reset) has nothing it may send: exit 5 (a carrier's
    cap, in the exit-code table), and the summary line and its JSON say how many wait and
    from when a rerun sends them, not only "1 not attempted" with exit 1."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    jobs.csv([{"phone": p, "first": f"P{i}"} for i, p in enumerate(people)])
    job = jobs.job(extra="group_size = 4")
    fake = FakeTelnyx(report={people[2]: "40016"})
    with fake_api_thread(fake) as url:
        args = ["--base-url", url]
        assert main(["-q", "run", str(job.path), *args]) == 0
        assert main(["-q", "track", str(job.ledger), *args]) == 0
        capsys.readouterr()
        assert main(["-q", "run", str(job.path), *args]) == 5
        out = capsys.readouterr()
        assert main(["-q", "--log-json", "run", str(job.path), *args]) == 5
        notes = [orjson.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert main(["report", str(job.ledger), "--json"]) == 0
    when = orjson.loads(capsys.readouterr().out)["waiting_not_before"]
    assert when
    line = next(x for x in out.out.splitlines() if "carrier" in x)
    assert "1 recipient" in line
    assert f"a rerun from {when} sends" in line
    summary = next(n for n in notes if n["event"] == "job.summary")
    assert summary["waiting_recipients"] == 1
    assert summary["waiting_not_before"] == when
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


# -- 4. the bounds of the rate flags --------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "rate", "settings_file", "message"),
    [
        ("run", "20000", None, "--rate: must be from 0.001 to 10000, not 20000"),
        ("run", "0.0001", None, "--rate: must be from 0.001 to 10000, not 0.0001"),
        ("track", "2000", None, "--rate: must be from 0.01 to 1000, not 2000"),
        ("track", "0.001", None, "--rate: must be from 0.01 to 1000, not 0.001"),
        ("run", None, "[limits]\nrate = 20000\n", "limits.rate: must be from 0.001 to 10000"),
        ("track", None, "[track]\nrate = 2000\n", "track.rate: must be from 0.01 to 1000"),
    ],
)
def test_each_rate_has_one_bound_said_the_same_from_a_flag_or_the_file(
    jobs: JobFactory,
    capsys: pytest.CaptureFixture[str],
    command: str,
    rate: str | None,
    settings_file: str | None,
    message: str,
) -> None:
    """`run --rate` and `[limits] rate` share one bound, `track --rate` and `[track] rate`
    another: a value past it exits 2 with one line naming the flag (or the file's setting)
    and the bound, the same words both ways; a value inside it is taken."""
    jobs.people(2)
    job = jobs.job()
    if command == "run":
        args = ["-q", "run", str(job.path), "--dry-run"]
    else:
        with fake_api_thread(FakeTelnyx()) as url:
            assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
        args = ["-q", "track", str(job.ledger), "--base-url", "http://127.0.0.1:9/v2"]
    if settings_file is not None:
        config = jobs.root / "config.toml"
        config.write_text(settings_file, encoding="utf-8")
        args += ["--config", str(config)]
    if rate is not None:
        args += ["--rate", rate]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


# -- 5. a database URL with a bad connection parameter --------------------------------------


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("sslmode=bogus", "sslmode"),
        ("target_session_attrs=zzz", "target_session_attrs"),
        ("port=abc", "port"),
        ("bogusparam=1", "bogusparam"),
        ("connect_timeout=x", "connect_timeout"),
    ],
)
def test_a_database_url_with_a_bad_parameter_is_the_settings_to_fix(
    capsys: pytest.CaptureFixture[str], query: str, parameter: str
) -> None:
    """A connection parameter libpq cannot take (a value it does not know, a word where a
    number goes, a parameter it has not) is the URL's to fix: exit 2 naming the parameter,
    not exit 7 "a rerun resumes once it answers" as for a server that is down."""
    pytest.importorskip("psycopg")
    url = f"postgresql://postgres@127.0.0.1:5432/bulk_mms_none?{query}"
    assert main(["-q", "db", "migrate", url]) == 2
    err = capsys.readouterr().err
    assert f"parameter {parameter!r}" in err
    assert "rerun" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_database_that_does_not_answer_is_still_exit_7(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A server not reached (nothing listens on the port) stays exit 7: a rerun resumes."""
    pytest.importorskip("psycopg")
    assert main(["-q", "db", "migrate", "postgresql://postgres@127.0.0.1:9/x?sslmode=disable"]) == 7
    assert "a rerun resumes once it answers" in capsys.readouterr().err
