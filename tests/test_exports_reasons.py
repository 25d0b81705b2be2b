"""What a run says of an export's odd rows, and what it counts them: a JSONL key in another
case than the job's, a cell with two numbers over two lines, a number past a float's range, a
row with an empty ``group_by`` value for someone sent already, and an input column named as
the failed file's own."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import orjson
import pytest

from bulk_mms.cli import main
from bulk_mms.config import JobConfig
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.reader import RowReader
from tests.conftest import JobFactory
from tests.threaded import fake_api_thread


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    monkeypatch.setenv("TELNYX_API_KEY", "KEY-exports-reasons")


def _run(job: JobConfig, fake: FakeTelnyx, *more: str, quiet: bool = True) -> int:
    """``run`` ``job`` against ``fake`` (``more``: other arguments): its exit code."""
    with fake_api_thread(fake) as url:
        return main([*(["-q"] if quiet else []), "run", str(job.path), "--base-url", url, *more])


def _reasons(path: Path) -> dict[int, str]:
    """A ``--rejected-csv`` file's reasons, by line."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        return {int(r["line"]): r["reason"] for r in csv.DictReader(f)}


# -- 1. a JSONL key in another case than the job's phone field -----------------------------


def test_a_jsonl_record_keyed_phone_in_another_case_is_pointed_to_it(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A record whose phone is under "Phone" (the job says "phone") is rejected with the same
    pointer a CSV header in another case gets: names are matched exactly, 'Phone'?"""
    jobs.jsonl(
        [{"phone": f"+1212555{i:04d}", "first": f"P{i}"} for i in range(101, 120)]
        + [{"Phone": "+12125550199", "first": "Zed"}],
    )
    job = jobs.job("people.jsonl", extra="group_size = 1\nmax_rejected_share = 0.5")
    rejected = tmp_path / "rejected.csv"
    _run(job, FakeTelnyx(), "--rejected-csv", str(rejected))
    assert _reasons(rejected) == {
        20: "missing field 'phone' (field names are matched exactly: 'Phone'?)"
    }


def test_a_jsonl_file_whose_phone_is_in_another_case_is_refused_pointing_to_it(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSONL file whose records all key the phone "PHONE" is refused with the pointer a
    CSV header gets, in the same words (one rule for both readers)."""
    jobs.jsonl([{"PHONE": "+12125550101", "first": "Al"}])
    jobs.csv("PHONE,first\n+12125550101,Al\n")
    pointer = "names are matched exactly: 'PHONE'?)"
    for name in ("people.jsonl", "people.csv"):
        job = jobs.job(name, extra="group_size = 1")
        assert main(["-q", "run", str(job.path), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert pointer in err, err


# -- 2. a reason is one line -----------------------------------------------------------------


@pytest.mark.parametrize("cell", ["2125550198\n2125550199", "+1 212 555 0198\r\n+1 212 555 0199"])
def test_two_numbers_in_a_cell_over_two_lines_are_rejected_in_a_one_line_reason(
    jobs: JobFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str], cell: str
) -> None:
    """A cell holding two numbers on two lines (a spreadsheet's Alt+Enter) is rejected for
    them, the line break written \\n: the reason is one line in the rejected file and on
    the console."""
    rows = [f"+1212555{i:04d},P{i}\n" for i in range(101, 120)]
    jobs.csv("phone,first\n" + "".join(rows) + f'"{cell}",Zed\n')
    job = jobs.job(extra="group_size = 1\nmax_rejected_share = 0.5")
    rejected = tmp_path / "rejected.csv"
    _run(job, FakeTelnyx(), "--rejected-csv", str(rejected), quiet=False)
    reason = _reasons(rejected)[21]
    shown = cell.replace("\r", "\\r").replace("\n", "\\n")
    assert reason.startswith(f"two phone numbers in one cell ({shown})")
    assert "\n" not in reason
    out = capsys.readouterr()
    assert all("0199" in x for x in (out.out + out.err).splitlines() if "0198" in x)


# -- 3. a JSONL number past a float's range ------------------------------------------------


def test_a_jsonl_number_past_a_floats_range_is_read_as_written(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A value like 1e999 (orjson: "number is infinity") is read as written, as a CSV cell
    holds it, not the record rejected as malformed JSON: everyone is sent, exit 0."""
    people = [f"+1212555{i:04d}" for i in range(101, 103)]
    (jobs.root / "people.jsonl").write_bytes(
        b'{"phone": "%s", "first": "Al", "score": 1e999}\n'
        b'{"phone": "%s", "first": "Bo", "score": -1E+999, "n": NaN}\n'
        % (people[0].encode(), people[1].encode())
    )
    job = jobs.job("people.jsonl", extra="group_size = 1", message='text = "{first}: {score}"')
    fake = FakeTelnyx()
    assert _run(job, fake) == 0
    assert sorted(m.body["text"] for m in fake.accepted) == ["Al: 1e999", "Bo: -1E+999"]


def test_the_reader_keeps_a_number_past_a_floats_range_as_written(tmp_path: Path) -> None:
    """A record orjson refuses only for a number past a float's range (2e400) is read, its
    numbers as written (1.50, not 1.5), as a record orjson reads is."""
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"phone": "+12125550101", "a": 1.50, "b": None}) + "\n")
    with p.open("ab") as f:
        f.write(b'{"phone": "+12125550102", "a": 1.50, "b": 2e400}\n')
    with RowReader(p, "phone", ("a", "b")) as reader:
        rows = list(reader)
    assert [r.fields for r in rows if hasattr(r, "fields")] == [
        {"phone": "+12125550101", "a": "1.5", "b": ""},
        {"phone": "+12125550102", "a": "1.50", "b": "2e400"},
    ]


# -- 4. an empty group_by value for someone sent already -----------------------------------


def test_an_empty_group_key_in_a_row_of_someone_sent_is_no_loss(
    jobs: JobFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row with an empty group_by value whose number an earlier row has (sent) is a
    duplicate, not a lost row (one of five would be past max_rejected_share, nothing sent,
    exit 2): exit 0, the report counts no rejected row, the rejected file says duplicate."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    rows = [{"phone": p, "first": f"P{i}", "household": f"h{i}"} for i, p in enumerate(people)]
    rows.append({"phone": people[1], "first": "again", "household": ""})
    jobs.csv(rows)
    job = jobs.job(extra='group_by = "household"')
    fake = FakeTelnyx()
    rejected = tmp_path / "rejected.csv"
    assert _run(job, fake, "--rejected-csv", str(rejected)) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 1)
    assert _reasons(rejected)[6].startswith("duplicate: ")
    capsys.readouterr()
    assert main(["report", str(job.ledger), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert (report["rejected_rows"], report["duplicate_rows"]) == (0, 1)
    assert report["rejected_rows_by_reason"] == {}


def test_an_empty_group_key_in_a_row_an_earlier_campaign_sent_is_excluded(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A row with an empty group_by value whose number an --exclude-sent ledger sent is
    counted excluded (that person was sent), not a loss (one of four would be past
    max_rejected_share, nothing sent, exit 2): exit 0."""
    people = [f"+1212555{i:04d}" for i in range(101, 105)]
    rows = [{"phone": p, "first": f"P{i}", "household": f"h{i}"} for i, p in enumerate(people)]
    jobs.csv(rows[:2], name="first.csv")
    rows[0]["household"] = ""
    jobs.csv(rows)
    fake = FakeTelnyx()
    rejected = tmp_path / "rejected.csv"
    extra = 'group_by = "household"'
    first = jobs.job("first.csv", extra=extra, name="first")
    assert _run(first, fake) == 0
    job = jobs.job(extra=extra, name="second")
    more = ("--rejected-csv", str(rejected), "--exclude-sent", str(first.ledger))
    assert _run(job, fake, *more) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 1)
    assert _reasons(rejected)[2].startswith("excluded: ")


# -- 5. an input column named as the failed file's own -------------------------------------


@pytest.mark.parametrize("name", ["people.jsonl", "people.csv"])
def test_an_input_with_its_own_bulk_mms_reason_column_is_refused(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """An input with a "bulk_mms_reason" key or column (the one the failed file adds) that
    is no failed file is refused before anything is sent, exit 2 in one line naming it,
    where its failed file lost the record's own value."""
    jobs.jsonl(
        [
            {"phone": "+12125550101", "first": "Al"},
            {"phone": "+12125550102", "first": "Bo", "bulk_mms_reason": "moved"},
        ],
    )
    jobs.csv("phone,first,bulk_mms_reason\n+12125550101,Al,\n+12125550102,Bo,moved\n")
    job = jobs.job(name, extra="group_size = 1")
    fake = FakeTelnyx()
    assert _run(job, fake) == 2
    err = capsys.readouterr().err
    assert "has a column 'bulk_mms_reason'" in err
    assert "Rename the column" in err
    assert len(err.strip().splitlines()) == 1
    assert fake.requests == []


def test_a_failed_file_sent_again_replaces_its_own_reason_column(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A failed file (its bulk_mms_campaign column marks it bulk-mms's) keeps being sent
    again as before: its bulk_mms_reason is bulk-mms's own, replaced in the next round's."""
    people = [f"+1212555{i:04d}" for i in range(101, 103)]
    jobs.csv([{"phone": p, "first": f"P{i}"} for i, p in enumerate(people)])
    job = jobs.job(extra="group_size = 1")
    fake = FakeTelnyx()
    fake.faults.extend(Fault("status", 400, code="40001") for _ in range(10))
    failed, again = tmp_path / "failed.csv", tmp_path / "failed2.csv"
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 1
        assert main(["-q", "report", str(job.ledger), "--failed-csv", str(failed)]) == 0
        resend = ["-q", "run", str(job.path), "--input", str(failed), "--base-url", url]
        assert main(resend) == 1
    ledgers = sorted(p for p in job.ledger.parent.glob("*.jsonl") if p != job.ledger)
    assert main(["-q", "report", str(ledgers[-1]), "--failed-csv", str(again)]) == 0
    with again.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["phone", "first", "bulk_mms_reason", "bulk_mms_campaign"]
        assert len(list(reader)) == 2
