"""Exports as offices make them, through the CLI: exit 0 means everyone got it, else it says who
did not (unsorted group_by, cp1252, CRLF and BOM, a third invalid, a truncated gzip, an unclosed
quote, one row repeated, a fixed file rerun, a daily cap with a dated ledger, the sandbox)."""

from __future__ import annotations

import csv
import gzip
import random
from pathlib import Path

import orjson
import pytest

from bulk_mms import commands
from bulk_mms.cli import main
from bulk_mms.config.folders import sandbox_ledger, sandbox_list
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.ledger import Planned, read_events
from bulk_mms.testing import ledger_events
from tests.conftest import JobFactory, numbers
from tests.threaded import fake_api_thread


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    monkeypatch.setenv("TELNYX_API_KEY", "KEY-exports-test")


def write_families(path: Path, families: int, *, seed: int = 7) -> dict[str, set[str]]:
    """A CRLF CSV with a BOM of ``families`` families of 1..6 people, rows shuffled (as a
    spreadsheet export comes); returns each family's numbers."""
    rows: list[tuple[str, str, str]] = []
    members: dict[str, set[str]] = {}
    rng = random.Random(seed)
    n = 0
    for f in range(families):
        fid = f"F{f:03d}"
        for phone in numbers(rng.randint(1, 6), n):
            rows.append((phone, fid, f"P{n}"))
            members.setdefault(fid, set()).add(phone)
            n += 1
    rng.shuffle(rows)
    text = "phone,family,first\r\n" + "".join(f"{p},{f},{x}\r\n" for p, f, x in rows)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    return members


def test_an_unsorted_group_by_export_sends_every_family_whole(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Families whose rows are scattered through the file each go out as one message (or
    chunks of 8), everyone once, nobody rejected, exit 0."""
    families = write_families(jobs.root / "people.csv", 80)
    job = jobs.job(extra='group_by = "family"')
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url, "--rate", "1000"]) == 0
    everyone = set().union(*families.values())
    assert fake.recipient_counts() == dict.fromkeys(everyone, 1)
    sent = {frozenset(m.to) for m in fake.accepted}
    assert sent == {frozenset(v) for v in families.values()}  # all of 1..6: never split
    assert f"0 of {len(everyone)} rows rejected" in capsys.readouterr().out


def cp1252_export(path: Path) -> None:
    path.write_bytes(
        "phone,first\r\n+12125550100,Zoë\r\n+12125550101,José\r\n+12125550102,Ann\r\n".encode(
            "cp1252"
        )
    )


@pytest.mark.parametrize(("saved_as", "job_says"), [("cp1252", "utf-8"), ("utf-8", "cp1252")])
def test_an_export_in_another_encoding_is_refused_before_any_request_naming_it(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], saved_as: str, job_says: str
) -> None:
    """Excel's cp1252 export read as UTF-8, or a UTF-8 export (no byte order mark) read as
    cp1252, stops with exit 2 before any request, naming the line and the encoding it looks
    like; no ledger is made."""
    text = "phone,first\r\n+12125550100,Zoë\r\n+12125550101,José\r\n"
    (jobs.root / "people.csv").write_bytes(text.encode(saved_as))
    job = jobs.job(extra=f'encoding = "{job_says}"')
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["run", str(job.path), "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert "people.csv:2:" in err
    assert f'set encoding = "{saved_as}"' in err
    assert fake.requests == []
    assert not job.ledger.exists()


def test_a_cp1252_export_with_its_encoding_sends_every_name_right(jobs: JobFactory) -> None:
    """With encoding = "cp1252" the accented names reach the API as written."""
    cp1252_export(jobs.root / "people.csv")
    job = jobs.job(extra='encoding = "cp1252"\ngroup_size = 1')
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    texts = sorted(m.body["text"] for m in fake.accepted)
    assert texts == ["Hello Ann", "Hello José", "Hello Zoë"]


def test_a_utf8_export_with_its_mark_under_a_cp1252_job_sends_every_name_right(
    jobs: JobFactory,
) -> None:
    """Excel's "CSV UTF-8" export (it starts with a byte order mark) under a job that says
    encoding = "cp1252" sends the names as written, not "JosÃ©"."""
    text = "phone,first\r\n+12125550100,Zoë\r\n+12125550101,José\r\n"
    (jobs.root / "people.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    job = jobs.job(extra='encoding = "cp1252"\ngroup_size = 1')
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    assert sorted(m.body["text"] for m in fake.accepted) == ["Hello José", "Hello Zoë"]


def test_a_padded_spreadsheet_export_sends_everyone_and_rejects_nobody(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """An export whose rows carry empty cells past the header, padded by rows of empty cells,
    sends every person once with exit 0 and no row rejected."""
    people = numbers(6)
    rows = "".join(f"{p},P{i},,\r\n" for i, p in enumerate(people))
    jobs.csv("phone,first\r\n" + rows + ",,,\r\n" * 20)
    job = jobs.job()
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["run", str(job.path), "--base-url", url]) == 0
    assert fake.recipient_counts() == dict.fromkeys(people, 1)
    assert "0 of 6 rows rejected" in capsys.readouterr().out


def test_jsonl_nulls_take_the_defaults_and_objects_are_rejected_by_name(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """In a JSONL export a null name takes [message.defaults] as an empty cell does, a null
    phone is rejected as empty, and an object where a name belongs is rejected naming the
    field, never sent as JSON text."""
    one, two, three = numbers(3)
    records = [
        {"phone": one, "first": None},
        {"phone": None, "first": "Dee"},
        {"phone": two, "first": {"x": 1}},
        {"phone": three, "first": "Ann"},
    ]
    (jobs.root / "people.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    job = jobs.job(
        "people.jsonl",
        extra="max_rejected_share = 0.5\ngroup_size = 1",
        message='text = "Hello {first}"\n[message.defaults]\nfirst = "there"',
    )
    rejected = tmp_path / "rejected.csv"
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        args = ["-q", "run", str(job.path), "--base-url", url, "--rejected-csv", str(rejected)]
        assert main(args) == 0
    assert sorted((m.to[0], m.body["text"]) for m in fake.accepted) == sorted(
        [(one, "Hello there"), (three, "Hello Ann")]
    )
    with rejected.open(encoding="utf-8-sig", newline="") as f:
        table = list(csv.reader(f))
    assert table[1:] == [
        ["2", "", "empty phone number"],
        ["3", two, "field 'first' is not a text value (an object or a list)"],
    ]


def test_an_excel_unicode_text_export_is_refused_saying_utf16(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Excel's "Unicode Text" export (UTF-16) exits 2 before any request with one line saying
    it is UTF-16 and how to save it, no traceback."""
    text = "phone\tfirst\r\n+12125550100\tZoë\r\n"
    (jobs.root / "people.csv").write_bytes(text.encode("utf-16"))
    job = jobs.job()
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["run", str(job.path), "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [x for x in err.splitlines() if "error" in x]
    assert line.endswith(
        'people.csv: is UTF-16 text (Excel\'s "Unicode Text"), not utf-8: save '
        'it from Excel as "CSV UTF-8 (Comma delimited)" and run again'
    )
    assert fake.requests == []


def third_invalid(jobs: JobFactory) -> list[str]:
    """30 rows, every third with a broken number; returns the valid numbers."""
    good = numbers(20)
    rows = []
    for i in range(30):
        rows.append({"phone": "555-01" if i % 3 == 2 else good.pop(0), "first": f"P{i}"})
    jobs.csv(rows)
    return [r["phone"] for r in rows if r["phone"].startswith("+")]


@pytest.mark.parametrize("dry", [False, True])
def test_a_third_invalid_exits_2_before_any_request(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path, dry: bool
) -> None:
    """A file a third invalid sends nothing (run and dry run exit 2), with one line giving the
    share and the reason; --rejected-csv lists every rejected row with its line."""
    third_invalid(jobs)
    job = jobs.job()
    rejected = tmp_path / "rejected.csv"
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        args = ["run", str(job.path), "--base-url", url, "--rejected-csv", str(rejected)]
        assert main([*args, *(["--dry-run"] if dry else [])]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1
    assert "10 of its 30 rows (33.3%) cannot be sent" in err[0]
    assert "max_rejected_share (5.0%)" in err[0]
    assert fake.requests == []
    assert not job.ledger.exists()
    with rejected.open(encoding="utf-8-sig", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["line", "value", "reason"]
    assert [int(r[0]) for r in table[1:]] == list(range(4, 32, 3))
    assert all(r[1] == "555-01" for r in table[1:])


def test_a_third_invalid_sends_the_rest_when_the_job_allows_it(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """With max_rejected_share = 0.5 the valid rows are sent and the summary says how many
    rows were rejected, of how many, and why."""
    valid = third_invalid(jobs)
    job = jobs.job(extra="max_rejected_share = 0.5")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["run", str(job.path), "--base-url", url]) == 0
    assert fake.recipient_counts() == dict.fromkeys(valid, 1)
    out = capsys.readouterr()
    assert "10 of 30 rows rejected (33.3%" in out.out
    assert "input.rows_rejected" in out.out + out.err


def test_a_refused_share_names_the_setting_that_sends_the_rest(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal of a third invalid names the max_rejected_share that lets the rest go
    (0.334, not the 33.3% shown, which is less than a third), and that value sends them; it
    names the --rejected-csv file the rows went to, or says how to have them."""
    valid = third_invalid(jobs)
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["run", str(jobs.job().path), "--base-url", url, "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert "set max_rejected_share = 0.334 in the job" in err
        assert "Every such row: --rejected-csv PATH" in err
        out = jobs.root / "rejected.csv"
        assert (
            main(["run", str(jobs.job().path), "--base-url", url, "--rejected-csv", str(out)]) == 2
        )
        assert f"Every such row: in {out};" in capsys.readouterr().err
        assert out.read_text(encoding="utf-8").count("\n") > 1
        job = jobs.job(extra="max_rejected_share = 0.333")
        assert main(["run", str(job.path), "--base-url", url, "--dry-run"]) == 2
        job = jobs.job(extra="max_rejected_share = 0.334")
        assert main(["-q", "run", str(job.path), "--base-url", url, "--rate", "1000"]) == 0
    assert fake.recipient_counts() == dict.fromkeys(valid, 1)


def test_a_file_none_of_whose_rows_can_be_sent_is_not_told_to_raise_the_share(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """When every row is rejected (a column of names where the numbers should be), the
    refusal says no row can be sent, not "to send the rest anyway, set
    max_rejected_share = 1": there is no rest, and that setting would send nobody with
    exit 0."""
    (jobs.root / "people.jsonl").write_text(
        "".join(f'{{"phone": "{name}"}}\n' for name in ("Ann", "Bo", "Cy"))
    )
    job = jobs.job("people.jsonl", message='text = "Hi"')
    assert main(["run", str(job.path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "3 of its 3 rows (100.0%) cannot be sent" in err
    assert "max_rejected_share = 1" not in err
    assert "no row can be sent" in err


def test_a_truncated_gzip_sends_nothing(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A .csv.gz cut short is found before the first request: exit 2, nothing sent, and the
    rerun with the whole file is a fresh start, not "a different run"."""
    rows = "phone,first\n" + "".join(f"{p},x\n" for p in numbers(2000))
    whole = gzip.compress(rows.encode())
    (jobs.root / "people.csv.gz").write_bytes(whole[: len(whole) // 2])
    job = jobs.job("people.csv.gz")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["run", str(job.path), "--base-url", url]) == 2
        assert "people.csv.gz" in capsys.readouterr().err
        assert fake.requests == []
        (jobs.root / "people.csv.gz").write_bytes(whole)
        assert main(["-q", "run", str(job.path), "--base-url", url, "--rate", "1000"]) == 0
    assert fake.recipient_counts() == dict.fromkeys(numbers(2000), 1)


def test_an_unclosed_quote_sends_nothing_and_names_the_line(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """One unclosed quote would swallow the rows after it: exit 2, nothing sent, the line
    where it opened named."""
    rows = [f"{p},P{i}\n" for i, p in enumerate(numbers(50))]
    rows[10] = rows[10].replace(",P10", ',"P10')
    jobs.csv("phone,first\n" + "".join(rows))
    job = jobs.job()
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["run", str(job.path), "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert "people.csv:12:" in err
    assert "unclosed quote" in err
    assert fake.requests == []


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        ('+12125559999,"partial no', "ends inside a quoted field that starts at line 102"),
        ("+1212555", "its last line has 1 field where the header has 2, and no line end"),
        ('{"phone": "+1212555', "its last line is not valid JSON and has no line end"),
    ],
)
def test_a_file_cut_off_in_its_last_row_sends_nothing(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], tail: str, message: str
) -> None:
    """An export cut off in its last row (a quote left open, a row too short, a JSON line
    cut, with no line end) exits 2 before any request with one line naming that row."""
    if tail.startswith("{"):
        people = jobs.root / "people.jsonl"
        rows = "".join(f'{{"phone": "{p}", "first": "P"}}\n' for p in numbers(101))
        job = jobs.job("people.jsonl")
    else:
        people = jobs.root / "people.csv"
        rows = "phone,first\n" + "".join(f"{p},P\n" for p in numbers(100))
        job = jobs.job()
    people.write_text(rows + tail, encoding="utf-8")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["run", str(job.path), "--base-url", url]) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert line == (
        f"bulk-mms: error: {people}:102: {message}: the file looks cut off: copy or export it "
        "again, whole"
    )
    assert fake.requests == []
    assert not job.ledger.exists()


def test_one_row_repeated_makes_a_small_ledger_and_a_report(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gzip of one row repeated 20,000 times sends it once, counts the copies as
    duplicates, writes no line per copy, and report reads it."""
    text = "phone,first\n" + "+12125550100,Ann\n" * 20_000
    (jobs.root / "people.csv.gz").write_bytes(gzip.compress(text.encode()))
    job = jobs.job("people.csv.gz")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    assert fake.recipient_counts() == {"+12125550100": 1}
    events = list(read_events(job.ledger))
    assert len(events) < 10
    planned = [e for e in events if isinstance(e, Planned)]
    assert [p.duplicates for p in planned] == [19_999, 19_999]
    capsys.readouterr()
    assert main(["report", str(job.ledger), "--format", "json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert (report["rejected_rows"], report["duplicate_rows"]) == (0, 19_999)


def test_exclude_sent_skips_whoever_another_ledger_reached(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a fixed file is renamed into a new campaign, --exclude-sent LEDGER texts only
    those the first ledger did not reach, and says how many it skipped."""
    jobs.people(10)
    first = jobs.job()
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(first.path), "--base-url", url]) == 0
        jobs.people(25)
        fixed = jobs.job(name="test-job-fixed")
        capsys.readouterr()
        code = main(
            ["run", str(fixed.path), "--base-url", url, "--exclude-sent", str(first.ledger)]
        )
    assert code == 0
    assert fake.recipient_counts() == dict.fromkeys(numbers(25), 1)
    assert "10 already sent (--exclude-sent)" in capsys.readouterr().out


def test_a_changed_input_is_refused_with_advice_that_texts_nobody_twice(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A campaign cut short (a crash, --limit) whose export is then written again: the rerun
    exits 2 naming --exclude-sent with this ledger, and following that advice sends the new
    file to everyone but those the ledger reached, once (a bare new --ledger, as it used to
    say, texts them all again)."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url]
        assert main([*run, "--limit", "1"]) == 0
        jobs.people(10)  # the export, written again
        capsys.readouterr()
        assert main(run) == 2
        err = capsys.readouterr().err
        assert main([*run, "--name", "test-job-2", "--exclude-sent", str(job.ledger)]) == 0
    assert f"--exclude-sent {job.ledger}" in err
    assert "new --ledger" not in err
    assert fake.recipient_counts() == dict.fromkeys(numbers(10), 1)


def test_exclude_sent_refuses_a_ledger_with_recipients_in_doubt(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ledger a crash or a lost answer left with a group in doubt (the API may have taken
    it) is refused by --exclude-sent (exit 2, nothing sent, saying how to settle it), not read
    as "not sent", which texted that group's people a second time; once track has settled
    it by the API's records, the fixed file's campaign texts everyone else once."""
    jobs.people(8)
    first = jobs.job(extra="group_size = 4")
    fake = FakeTelnyx(records_lag_s=3600.0)  # the records cannot settle it yet
    fake.faults.append(Fault("drop_after"))  # taken, and the answer lost
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(first.path), "--base-url", url]) == 1
        jobs.people(12)
        fixed = jobs.job(extra="group_size = 4", name="test-job-fixed")
        again = ["-q", "run", str(fixed.path), "--base-url", url]
        capsys.readouterr()
        refused = main([*again, "--exclude-sent", str(first.ledger)])
        err = capsys.readouterr().err
        assert fake.recipient_counts() == dict.fromkeys(numbers(8), 1)
        fake.records_lag_s = 0.0
        assert main(["-q", "track", str(first.ledger), "--base-url", url]) == 0
        assert main([*again, "--exclude-sent", str(first.ledger)]) == 0
    assert refused == 2
    assert "4 recipients in doubt" in err
    assert "bulk-mms track" in err
    assert fake.recipient_counts() == dict.fromkeys(numbers(12), 1)


def test_exclude_sent_leaves_in_a_member_whose_delivery_the_carrier_put_off(
    jobs: JobFactory,
) -> None:
    """A member a delivery report moved out of their sent group (T-Mobile's daily cap, 40016:
    the old ledger counts them not attempted, waiting for a rerun that its changed input now
    refuses) is sent by the fixed file's campaign, not skipped as "already sent"; the
    others the old ledger reached are skipped."""
    jobs.people(4)
    first = jobs.job(extra="group_size = 2")
    capped = numbers(4)[1]
    fake = FakeTelnyx(report={capped: "40016"})
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(first.path), "--base-url", url]) == 0
        assert main(["-q", "track", str(first.ledger), "--base-url", url]) == 0
        jobs.people(6)
        fixed = jobs.job(extra="group_size = 2", name="test-job-fixed")
        run = ["-q", "run", str(fixed.path), "--base-url", url]
        fake.report.clear()  # the cap has reset
        assert main([*run, "--exclude-sent", str(first.ledger)]) == 0
    counts = fake.recipient_counts()
    assert counts == {**dict.fromkeys(numbers(6), 1), capped: 2}


def test_a_daily_cap_with_a_dated_ledger_is_refused(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A {date} ledger with a daily cap would restart the list each day: refused with exit 2,
    saying what to write instead."""
    jobs.people(5)
    job = jobs.job(extra='ledger = "ledgers/{name}-{date}.jsonl"')
    (jobs.root / "config.toml").write_text("[limits]\ndaily_recipients = 80\n", encoding="utf-8")
    code = main(["run", str(job.path), "--sandbox", "--config", str(jobs.root / "config.toml")])
    assert code == 2
    err = capsys.readouterr().err
    assert "{date}" in err
    assert "without {date}" in err


@pytest.mark.parametrize("given", ["flag", "env"])
def test_a_dated_job_refuses_a_database_ledger_without_a_name(
    jobs: JobFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    given: str,
) -> None:
    """A {date} job given a database URL with no ?ledger= (which would name one ledger for
    every day) is refused with exit 2 before the database is asked, saying what to write;
    with ?ledger=NAME the choice is the user's, and the run goes on to the database; a
    --sandbox run, whose ledger is never a database, refuses only a --ledger flag."""
    jobs.people(5)
    job = jobs.job(extra='ledger = "ledgers/{name}-{date}.jsonl"')
    closed = "postgresql://bulk@127.0.0.1:1/bulk"  # nothing listens: asking it would be exit 7
    args = ["run", str(job.path), "--dry-run"]
    if given == "flag":
        args += ["--ledger", closed]
    else:
        monkeypatch.setenv("BULK_MMS_LEDGER_URL", closed)
    assert main(args) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert ("--ledger" if given == "flag" else "BULK_MMS_LEDGER_URL") in line
    assert "?ledger={name}-{date}" in line
    if given == "flag":
        assert main([*args[:-1], closed + "?ledger=every-day"]) == 7
    # sealed: its ledger is a file; a database named by the flag is refused, not dropped
    assert main([*args, "--sandbox"]) == (2 if given == "flag" else 0)


def test_a_sandbox_run_leaves_the_configured_suppression_list_alone(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sandbox's opt-outs go to its own list, never the settings' file, and its ledger to
    a sandbox folder, never the real one."""
    jobs.csv([{"phone": p, "first": "x"} for p in ["+14155550300", *numbers(5)]])
    job = jobs.job()
    real = jobs.root / "suppressed.txt"
    real.write_text("# the account's list\n", encoding="utf-8")
    config = jobs.root / "config.toml"
    config.write_text(f'[suppression]\nfile = "{real}"\n', encoding="utf-8")
    # the sandbox refuses the opted-out number: not a failure (nobody may text them)
    assert main(["-q", "run", str(job.path), "--sandbox", "--config", str(config)]) == 0
    assert real.read_text(encoding="utf-8") == "# the account's list\n"
    assert "+14155550300" in sandbox_list().read_text(encoding="utf-8")
    assert not job.ledger.exists()
    assert sandbox_ledger(job.ledger).exists()
    capsys.readouterr()
    assert main(["track", str(job.ledger), "--sandbox"]) == 2
    assert "not a sandbox run's ledger" in capsys.readouterr().err


def test_a_sandbox_run_can_report_by_signed_webhooks(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With BULK_MMS_SANDBOX_WEBHOOKS set (make demo), the sandbox's carrier posts signed
    webhooks to a receiver for the run's ledger, which verifies and records them."""
    monkeypatch.setenv(commands.SANDBOX_WEBHOOKS_ENV, "1")
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    assert main(["-q", "run", str(job.path), "--sandbox"]) == 0
    hooks = [
        e
        for e in ledger_events(sandbox_ledger(job.ledger))
        if e["event"] == "status" and e["source"] == "webhook"
    ]
    assert {e["recipient"] for e in hooks} == set(numbers(8))
    assert {e["status"] for e in hooks} <= {"delivered", "delivery_failed", "sent", "queued"}


def test_the_sandbox_s_webhooks_are_read_by_the_settings_error_table(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox run's webhook receiver reads carriers' codes by the settings' [errors], as
    the run does: the 40016 reported for a number ending 0016 is recorded as the ``fail``
    the settings give it, not the built-in ``defer``."""
    monkeypatch.setenv(commands.SANDBOX_WEBHOOKS_ENV, "1")
    jobs.people(8, start=10)  # +12125550016 among them
    job = jobs.job(extra="group_size = 4")
    config = jobs.root / "config.toml"
    config.write_text('[errors]\n40016 = "fail"\n', encoding="utf-8")
    assert main(["-q", "run", str(job.path), "--sandbox", "--config", str(config)]) == 0
    capped = [
        e
        for e in ledger_events(sandbox_ledger(job.ledger))
        if e["event"] == "status"
        and e["source"] == "webhook"
        and any(err["code"] == "40016" for err in e["errors"])
    ]
    assert capped
    assert {e.get("action") for e in capped} == {"fail"}


def test_line_breaks_of_other_systems_go_out_as_line_breaks(jobs: JobFactory) -> None:
    """A FileMaker export's line break inside a field (a vertical tab) and a spreadsheet's
    (CR LF, or CR alone, in a quoted field) reach the API as a line feed, in the text and the
    subject alike."""
    people = numbers(3)
    (jobs.root / "people.csv").write_bytes(
        f'phone,first\r\n{people[0]},Ann\x0bLee\r\n{people[1]},"Bo\r\nKim"\r\n'
        f'{people[2]},"Cy\rNg"\r\n'.encode()
    )
    job = jobs.job(
        extra="group_size = 1", message='text = "Hello {first}"\nsubject = "For {first}"'
    )
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    sent = sorted((m.body["text"], m.body["subject"]) for m in fake.accepted)
    assert sent == [
        ("Hello Ann\nLee", "For Ann\nLee"),
        ("Hello Bo\nKim", "For Bo\nKim"),
        ("Hello Cy\nNg", "For Cy\nNg"),
    ]


@pytest.mark.parametrize("dry", [False, True])
def test_a_control_character_in_a_value_the_message_takes_rejects_its_row_by_name(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path, dry: bool
) -> None:
    """A JSONL value holding NUL, ESC or a C1 control rejects its row (exit 2 by the share,
    nothing sent), naming the field and the character in --rejected-csv; a control in a column
    the message does not take is no matter."""
    people = numbers(4)
    records = [
        {"phone": people[0], "first": "Ann\u0000", "note": "ok"},
        {"phone": people[1], "first": "Bo", "note": "\u0007"},
        {"phone": people[2], "first": "\u001b[31mCy"},
        {"phone": people[3], "first": "Di\u0085"},
    ]
    (jobs.root / "people.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    job = jobs.job("people.jsonl")
    rejected = tmp_path / "rejected.csv"
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        args = ["run", str(job.path), "--base-url", url, "--rejected-csv", str(rejected)]
        assert main([*args, *(["--dry-run"] if dry else [])]) == 2
    assert fake.requests == []
    assert "3 of its 4 rows (75.0%) cannot be sent" in capsys.readouterr().err
    with rejected.open(encoding="utf-8-sig", newline="") as f:
        table = list(csv.reader(f))
    why = "a phone shows no such character; remove it from the row"
    assert table[1:] == [
        ["1", people[0], f"control character in field 'first' (U+0000): {why}"],
        ["3", people[2], f"control character in field 'first' (U+001B): {why}"],
        ["4", people[3], f"control character in field 'first' (U+0085): {why}"],
    ]
