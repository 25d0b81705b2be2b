"""Exports as offices make them, through the CLI: every valid row is sent or named, whatever
an earlier row of the same person held, however a spreadsheet wrote the number, and whatever
happens to the file while the run sends from it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulk_mms import reader, scan, startup
from bulk_mms.cli import main
from bulk_mms.config import JobConfig
from bulk_mms.fake_api import Accepted, FakeTelnyx, Fault
from bulk_mms.ledger.fold import RecipientCounts
from bulk_mms.scan import InputScan
from tests.conftest import JobFactory, numbers
from tests.threaded import fake_api_thread


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    monkeypatch.setenv("TELNYX_API_KEY", "KEY-exports-people")


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def _sent_with_rejected_csv(job: JobConfig, tmp_path: Path) -> tuple[FakeTelnyx, Path]:
    """Run ``job`` against a fake API, writing ``--rejected-csv``; it must exit 0."""
    rejected = tmp_path / "rejected.csv"
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        args = ["run", str(job.path), "--base-url", url, "--rejected-csv", str(rejected)]
        assert main(args) == 0
    return fake, rejected


def test_a_person_whose_first_row_is_rejected_is_sent_from_their_valid_row(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A row rejected for an empty group_by value or an empty text does not make the same
    person's later, valid row (written another way) a duplicate: that row is sent, and only
    the broken rows are listed."""
    jobs.csv(
        "phone,household,first\r\n"
        "+12125550101,,Ann\r\n"  # no household: rejected
        "212-555-0101,H1,Ann\r\n"  # the same person, whole: sent
        "+12125550102,H2,Bob\r\n"
        "+12125550103,H3,\r\n"  # no name, and the text is the name alone: rejected
        "(212) 555-0103,H3,Cy\r\n"  # sent
    )
    job = jobs.job(
        extra='group_by = "household"\nmax_rejected_share = 0.5', message='text = "{first}"'
    )
    fake, rejected = _sent_with_rejected_csv(job, tmp_path)
    assert fake.recipient_counts() == dict.fromkeys(
        ["+12125550101", "+12125550102", "+12125550103"], 1
    )
    assert sorted(m.body["text"] for m in fake.accepted) == ["Ann", "Bob", "Cy"]
    assert [r[0] for r in read_csv(rejected)[1:]] == ["2", "5"]
    out = capsys.readouterr().out
    assert "2 of 5 rows rejected" in out
    assert "duplicate" not in out


def test_rejected_files_write_a_foreign_number_s_reason_as_said(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A UK number and a Jamaican one (+1, outside the US and Canada): both rejected files
    (run's and report's) give their reasons as the run says them, with no quote in front
    of a reason taken for a formula."""
    jobs.csv(
        "phone,first\r\n+12125550101,Ann\r\n+44 20 7946 0958,Bo\r\n"
        "+1 876 555 0101,Cy\r\n+12125550102,Di\r\n"
    )
    job = jobs.job(extra="max_rejected_share = 0.5")
    _, rejected = _sent_with_rejected_csv(job, tmp_path)
    again = tmp_path / "again.csv"
    assert main(["-q", "report", str(job.ledger), "--rejected-csv", str(again)]) == 0
    for path in (rejected, again):
        reasons = [r[2] for r in read_csv(path)[1:]]
        assert [r[:1] for r in reasons] == ["a", "a"]
        assert reasons[0].startswith("a +44 number, not a US or Canadian one")
        assert reasons[1].startswith("a +1 number outside the US and Canada (JM)")


def test_a_crm_export_with_quoted_addresses_over_lines_sends_everyone(jobs: JobFactory) -> None:
    """Quoted addresses over several lines, commas in each (a CRM's export, CRLF), are one
    row each: everyone is sent, not the file refused as an unclosed quote."""
    rows = [
        f'{p},P{i},"{i} Main St, Apt 4\r\nSpringfield, IL, 62701"\r\n'
        for i, p in enumerate(["+12125550101", "+12125550102", "+12125550103"])
    ]
    jobs.csv("phone,first,address\r\n" + "".join(rows))
    job = jobs.job()
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    assert fake.recipient_counts() == dict.fromkeys(
        ["+12125550101", "+12125550102", "+12125550103"], 1
    )


def refused_then_resent(
    job: JobConfig, failed: Path, *, refused: int, again: int = 0
) -> FakeTelnyx:
    """Run ``job`` with its first ``refused`` groups refused for good (40001), write its
    ``--failed-csv`` to ``failed`` and send that file again with ``--input`` (its first
    ``again`` groups refused for good too): the fake API, which saw it all."""
    fake = FakeTelnyx()
    fake.faults.extend(Fault("status", 400, code="40001") for _ in range(refused + again))
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main(run) == 1
        assert main(["-q", "report", str(job.ledger), "--failed-csv", str(failed)]) == 0
        assert main([*run, "--input", str(failed)]) == (1 if again else 0)
    return fake


def capped_then_rerun(job: JobConfig, capped: str) -> FakeTelnyx:
    """Send ``job``, track it (the delivery report of ``capped`` says T-Mobile's daily cap,
    40016) and run it again before the carrier's reset, which does not exit 0: the fake API,
    which saw it all."""
    fake = FakeTelnyx(report={capped: "40016"})
    with fake_api_thread(fake) as url:
        args = ["--base-url", url]
        assert main(["-q", "run", str(job.path), *args]) == 0
        assert main(["-q", "track", str(job.ledger), *args]) == 0
        assert main(["-q", "run", str(job.path), *args]) != 0
    return fake


def stopped_after_one(jobs: JobFactory) -> JobConfig:
    """A job of six rows, the fourth and sixth not numbers, run through the CLI with
    ``--limit 1``: it stops, exit 0, after sending its first group of one."""
    jobs.csv(
        "phone,first\n+12125550701,A\n+12125550702,B\n+12125550703,C\nbad1,D\n"
        "+12125550704,E\nbad2,F\n"
    )
    job = jobs.job(extra="group_size = 1\nmax_rejected_share = 0.5")
    with fake_api_thread(FakeTelnyx()) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url, "--limit", "1"]) == 0
    return job


def test_a_failed_file_sent_again_texts_every_value_as_the_first_send_did(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A failed recipient whose row holds values a spreadsheet would run (-25.00, @bo, +3)
    gets them in the resend as in the first send, not with the quote the failed file guards
    them with; every other file reads its quotes as written."""
    jobs.csv("phone,first,balance\n+12125550101,Ann,-25.00\n+12125550102,@bo,+3\n")
    job = jobs.job(extra="group_size = 1", message='text = "Hi {first}: {balance}"')
    failed = tmp_path / "failed.csv"
    fake = refused_then_resent(job, failed, refused=2)
    assert "'-25.00" in failed.read_text(encoding="utf-8")  # guarded in the file
    texts = [m.body["text"] for m in fake.accepted]
    assert sorted(texts) == ["Hi @bo: +3", "Hi Ann: -25.00"]


def test_spreadsheet_shapes_of_a_number_are_sent_or_named_for_what_they_are(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Exports joined into one file (their headers repeated), a float column (12125550100.0),
    scientific notation, the same person written three ways, a last line without an end:
    each person is sent once; a repeated header and a number in scientific notation are
    rejected saying so."""
    part = "phone,first\r\n+1 (212) 555-0101,Ann\r\n12125550102.0,Bob\r\n"
    jobs.csv(
        part
        + part.replace("Ann", "Ann2").replace("Bob", "Bob2")  # the same two again, joined
        + "1.21255E+10,Cy\n212-555-0101,Ann3\n\u00a0212\u00a0555\u00a00104\u00a0,Di"
    )
    job = jobs.job(extra="group_size = 1\nmax_rejected_share = 0.5")
    fake, rejected = _sent_with_rejected_csv(job, tmp_path)
    assert fake.recipient_counts() == dict.fromkeys(
        ["+12125550101", "+12125550102", "+12125550104"], 1
    )
    table = read_csv(rejected)[1:]
    reasons = {int(r[0]): r[2].split(":")[0].split(" (")[0] for r in table}
    assert reasons == {
        4: "the header row again",
        5: "duplicate",
        6: "duplicate",
        7: "phone number in scientific notation",
        8: "duplicate",
    }
    out = capsys.readouterr().out
    assert "2 of 8 rows rejected" in out
    assert "3 duplicate numbers" in out


class _Reexport(FakeTelnyx):
    """A fake API during whose third accepted send the export is written again in place
    (another day's people, fewer of them): a cron export that overwrites the file the run
    is still sending from."""

    path: Path | None = None

    def _accept(self, body: dict[str, Any], key: str | None, wait: float | None) -> Accepted:
        if len(self.accepted) == 2 and self.path is not None:
            with self.path.open("r+", encoding="utf-8") as f:  # in place: same inode
                f.truncate(0)
                f.write("phone,first\n" + "".join(f"{p},New\n" for p in numbers(40, 5000)))
        return super()._accept(body, key, wait)


def _stopped_by_a_reexport(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, people: list[str]
) -> tuple[JobConfig, _Reexport, list[str]]:
    """Send a job of ``people`` one a group while its export is written again in place
    (:class:`_Reexport`), which stops the run (exit 2): the job, the fake API and the run's
    command line."""
    monkeypatch.setattr(reader, "BLOCK_BYTES", 256)  # a few rows a block: many blocks
    path = jobs.csv([{"phone": p, "first": "Old"} for p in people])
    job = jobs.job(extra="group_size = 1")
    fake = _Reexport()
    fake.path = path
    with fake_api_thread(fake) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main(run) == 2
    return job, fake, run


def test_an_export_written_again_while_the_run_sends_from_it_stops_the_run(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file the scan checked is written again in place while the run reads it: the run
    stops saying so (exit 2) and sends nobody from the new contents; the report counts
    everyone the first file held who was not sent."""
    first = numbers(200)
    job, fake, _ = _stopped_by_a_reexport(jobs, monkeypatch, first)
    assert "people.csv: was written or replaced while it was sent from" in capsys.readouterr().err
    assert {m.body["text"] for m in fake.accepted} == {"Hello Old"}
    assert set(fake.recipient_counts()) <= set(first)
    assert main(["report", str(job.ledger), "--json"]) == 0
    recipients = orjson.loads(capsys.readouterr().out)["recipients"]
    assert recipients["valid"] == 200
    assert recipients["sent"] + recipients["in_doubt"] == len(fake.accepted) < 200


def test_the_report_after_an_export_written_again_mid_run_says_a_rerun_is_refused(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a run the export's rewrite stopped, the report promises no plain rerun for
    those not sent (one is refused as another input) but says the input changed and how to
    go on, as the refused rerun does."""
    job, _, run = _stopped_by_a_reexport(jobs, monkeypatch, numbers(200))
    capsys.readouterr()
    assert main(["report", str(job.ledger), "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert main(["report", str(job.ledger), "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["input_changed"] is True
    assert main(run) == 2  # refused before anything is sent: no API needed
    refused = capsys.readouterr().err
    changed = "the input file changed since this ledger was started"
    assert changed in refused
    assert "plain rerun" not in table
    assert f"not sent yet: a rerun is refused: {changed}; to send the new one, run under" in table
    assert f"--exclude-sent {job.ledger}" in table


def test_the_report_of_an_input_run_whose_file_changed_says_a_rerun_goes_to_a_new_ledger(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pilot (`run JOB --input a.csv --limit 1`) whose file changed since: the report does
    not say a rerun is refused (`run JOB --input a.csv` now begins a ledger of its own, as
    it does), but that no rerun resumes this ledger, naming the file it compared, and how
    to send the new one leaving out whom this one sent."""
    jobs.csv([{"phone": p, "first": "A"} for p in numbers(3)])
    job = jobs.job(extra="group_size = 1")
    pilot = jobs.csv([{"phone": p, "first": "B"} for p in numbers(3, start=10)], "a.csv")
    with fake_api_thread(FakeTelnyx()) as url:
        run = ["-q", "run", str(job.path), "--base-url", url, "--concurrency", "1"]
        assert main([*run, "--input", str(pilot), "--limit", "1"]) == 0
        (ledger,) = (job.ledger.parent).glob("test-job-a-*.jsonl")
        pilot.write_text(pilot.read_text(encoding="utf-8") + "+12125550199,C\n", "utf-8")
        capsys.readouterr()
        assert main(["report", str(ledger), "--format", "table"]) == 0
        table = " ".join(capsys.readouterr().out.split())
        assert main([*run, "--input", str(pilot)]) == 2  # a new ledger, refused as a text twice
    assert "a rerun is refused" not in table
    assert f"no rerun resumes this ledger: its input file ({pilot.resolve()}) changed" in table
    assert f"--exclude-sent {ledger}" in table
    assert "already sent by this job" in capsys.readouterr().err


def test_the_report_asks_about_the_input_only_when_the_one_rule_says_a_rerun_sends() -> None:
    """Whom a rerun would send is one rule (:attr:`RecipientCounts.rerun_sends`): the input
    not all read, someone not attempted or pending a rerun; a later run "sends more"
    (:attr:`RecipientCounts.sends_more`) by that rule or by settling those in doubt."""
    doubt = RecipientCounts(4, 3, 0, 0, 1, 0, input_read=True)
    pending = RecipientCounts(4, 3, 0, 1, 0, 0, input_read=True)
    unread = RecipientCounts(4, 4, 0, 0, 0, 0, input_read=False)
    assert [c.rerun_sends for c in (doubt, pending, unread)] == [False, True, True]
    assert [c.sends_more for c in (doubt, pending, unread)] == [True, True, True]


def test_an_export_replaced_between_the_check_and_the_send_sends_nothing(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is replaced by one of people nobody checked after the scan and before the
    send opens it: nothing is sent, exit 2, one line saying so."""
    path = jobs.csv([{"phone": p, "first": "Old"} for p in numbers(10)])
    job = jobs.job(extra="group_size = 1")
    real = scan.scan_input

    def scan_then_replace(*args: Any, **kwargs: Any) -> InputScan:
        checked = real(*args, **kwargs)
        path.write_text("phone,first\n" + "".join(f"bad{i},New\n" for i in range(10)))
        return checked

    monkeypatch.setattr(startup, "scan_input", scan_then_replace)
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert "since it was checked before the run: nothing was sent" in err
    assert fake.requests == []


def test_a_member_a_carrier_refused_for_today_is_counted_until_sent(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A member of a group of four whose delivery met T-Mobile's daily cap (40016) waits for
    the reset in a group of their own: the rerun before it neither exits 0 nor drops them or
    the three who stayed sent from the count; the report says one not attempted of ten."""
    people = numbers(10)
    jobs.csv([{"phone": p, "first": f"P{i}"} for i, p in enumerate(people)])
    job = jobs.job(extra="group_size = 4")
    fake = capped_then_rerun(job, people[5])
    capsys.readouterr()
    assert main(["report", str(job.ledger), "--json"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["recipients"] == {
        "valid": 10, "sent": 9, "failed": 0, "retry_pending": 0, "in_doubt": 0,
        "not_attempted": 1,
    }  # fmt: skip
    assert summary["input_rows"] == 10
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


def test_a_suppressed_person_alone_in_a_group_is_counted_once_over_reruns(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A number on the suppression list with no one to share a message with is left out by
    every run; the report still counts the file's rows: one suppressed, nine sent, ten rows."""
    people = numbers(10)
    jobs.csv([{"phone": p, "first": "x"} for p in people])
    job = jobs.job(extra="group_size = 1")
    assert main(["-q", "suppress", "add", people[3]]) == 0
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        for _ in range(3):
            assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    capsys.readouterr()
    assert main(["report", str(job.ledger), "--json"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert (summary["input_rows"], summary["suppressed_rows"]) == (10, 1)
    assert summary["recipients"]["valid"] == summary["recipients"]["sent"] == 9
