"""report: outcome and delivery counts, formats, the failed-recipients file as a new job, the
rejected-rows and recipients files, and errors in words."""

from __future__ import annotations

import csv
import html
import io
import tracemalloc
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from msgspec.structs import replace

from bulk_mms import report as report_module
from bulk_mms.cli import main
from bulk_mms.config import folders, load_job
from bulk_mms.csvfile import CAMPAIGN_COLUMN, REASON_COLUMN
from bulk_mms.errors import ApiError, NetworkError, Rejected, SendError, ServerError
from bulk_mms.ledger import Header, InputRows, LedgerView, Planned, open_store, read_events
from bulk_mms.ledger import Rejected as RejectedEvent
from bulk_mms.ledger import Sent as SentEvent
from bulk_mms.ledger.events import encode, status_event
from bulk_mms.ledger.fold import UNRECORDED
from bulk_mms.models import Group, RecipientStatus, SendReceipt
from bulk_mms.reader import RowReader
from bulk_mms.recipient_lists import missed_by, write_failed_csv
from bulk_mms.recorder import never_left
from bulk_mms.report import NO_HEADER, LedgerSummary, format_csv, format_text, summarize
from bulk_mms.runner import run_job
from bulk_mms.summary import JobSummary
from bulk_mms.testing import groups_in
from bulk_mms.words import error_words
from tests.conftest import (
    FAST,
    FakeClient,
    FakeClock,
    JobFactory,
    crash_mid_send,
    left_out_job,
    numbers,
    ok_receipt,
)


async def mixed_ledger(jobs: JobFactory) -> tuple[Path, list[Group]]:
    """24 people in groups of 4: group 1 refused (400), the rest sent; then delivery statuses:
    in group 0 one delivery_failed and one expired, one duplicate report, one out of order."""
    jobs.people(24)
    job = jobs.job(extra="group_size = 4")

    def handler(group: Group, n: int) -> Rejected | SendReceipt:
        return Rejected("bad", status=400) if group.seq == 1 else ok_receipt(group, n)

    client = FakeClient(handler)
    await run_job(job, FAST, client, clock=FakeClock())
    sent = [g for g in client.calls if g.seq != 1]
    ledger = open_store(job.ledger, "append")
    g0 = sent[0]
    reports = [
        (g0.to[0], "delivery_failed", "2026-01-01T00:00:02Z"),
        (g0.to[1], "expired", "2026-01-01T00:00:02Z"),
        (g0.to[2], "delivered", "2026-01-01T00:00:02Z"),
        (g0.to[2], "delivered", "2026-01-01T00:00:02Z"),  # a duplicate
        (g0.to[2], "sent", "2026-01-01T00:00:01Z"),  # late and out of order
    ]
    for phone, status, at in reports:
        ledger.append_now(
            status_event(g0.id, RecipientStatus(phone, status, at=at), source="t", time="")
        )
    for g in sent[1:]:
        for phone in g.to:
            ledger.append_now(
                status_event(g.id, RecipientStatus(phone, "delivered"), source="t", time="")
            )
    ledger.close_sync()
    return job.ledger, client.calls


async def test_counts_by_outcome_and_delivery(jobs: JobFactory) -> None:
    """Outcomes count groups and recipients; delivery counts the latest status of each."""
    path, _ = await mixed_ledger(jobs)
    s = summarize(path)
    assert (s.sent_groups, s.sent_recipients, s.failed_groups, s.failed_recipients) == (5, 20, 1, 4)
    # the duplicate and the late "sent" change nothing: 17 delivered + 1 each failed/expired,
    # and g0.to[3] was never reported so it stays queued
    assert s.delivery == {"delivered": 17, "delivery_failed": 1, "expired": 1, "queued": 1}
    assert s.cost == {"USD": Decimal("0.0051") * 20}
    assert s.error_codes == {"400": 1}
    d = s.as_dict()
    assert (d["recipients"]["valid"], d["undelivered_recipients"], d["delivery_pending"]) == (
        24,
        6,
        1,
    )


async def test_failed_csv_is_a_job_input_with_the_original_rows(jobs: JobFactory) -> None:
    """The file holds exactly the recipients who did not get it, with every input column."""
    path, calls = await mixed_ledger(jobs)
    out = jobs.root / "out" / "failed.csv"
    n, full = write_failed_csv(summarize(path), out)
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    refused = next(g for g in calls if g.seq == 1)
    g0 = next(g for g in calls if g.seq == 0)
    assert full
    assert n == 6
    assert {r["phone"] for r in rows} == {*refused.to, g0.to[0], g0.to[1]}
    assert all(r["first"].startswith("P") for r in rows)
    reasons = {r["phone"]: r[REASON_COLUMN] for r in rows}
    assert reasons[g0.to[0]] == "delivery_failed"
    assert reasons[refused.to[0]].startswith("failed: 400")


async def test_failed_csv_carries_the_rows_the_ledger_recorded(jobs: JobFactory) -> None:
    """If the input changed (or went) since, the file still has every input column of every
    recipient, as the ledger recorded them when their groups were sent or refused."""
    path, _ = await mixed_ledger(jobs)
    (jobs.root / "people.csv").write_text("phone,first\n+12125550000,X\n")
    out = jobs.root / "failed.csv"
    n, full = write_failed_csv(summarize(path), out)
    assert (n, full) == (6, True)
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert list(rows[0]) == ["phone", "first", REASON_COLUMN, CAMPAIGN_COLUMN]
    assert {r["phone"]: r["first"] for r in rows}[numbers(24)[4]] == "P4"


async def test_failed_csv_of_a_ledger_without_rows_keeps_the_numbers(jobs: JobFactory) -> None:
    """A ledger that records no rows (an older bulk-mms) and a changed input: the file still
    lists every number, in the phone column."""
    path, _ = await mixed_ledger(jobs)
    lines = path.read_bytes().splitlines(keepends=True)
    stripped = [
        orjson.dumps({k: v for k, v in orjson.loads(x).items() if k not in ("rows", "columns")})
        + b"\n"
        for x in lines
    ]
    path.write_bytes(b"".join(stripped))
    (jobs.root / "people.csv").write_text("phone,first\n+12125550000,X\n")
    out = jobs.root / "failed.csv"
    n, full = write_failed_csv(summarize(path), out)
    assert (n, full) == (6, False)
    assert next(csv.reader(io.StringIO(out.read_text(encoding="utf-8-sig")))) == [
        "phone",
        REASON_COLUMN,
        CAMPAIGN_COLUMN,
    ]


@pytest.mark.parametrize("kept", ["encoding", "none"])
async def test_failed_csv_of_a_ledger_without_rows_reads_the_input_as_the_job_did(
    jobs: JobFactory, kept: str
) -> None:
    """A ledger that records no rows, over a cp1252 input its job read as cp1252: the failed
    file has each recipient's row with the names as written, read in the encoding the
    ledger's header keeps (or, a ledger begun before it kept one, the one the file is text
    in), never as UTF-8 (which refused the file) or garbled."""
    people = numbers(8)
    text = "phone,first\r\n" + "".join(f"{p},Zoë{i}\r\n" for i, p in enumerate(people))
    (jobs.root / "people.csv").write_bytes(text.encode("cp1252"))
    job = jobs.job(extra='group_size = 4\nencoding = "cp1252"')

    def handler(group: Group, n: int) -> Rejected | SendReceipt:
        return Rejected("bad", status=400) if group.seq == 1 else ok_receipt(group, n)

    await run_job(job, FAST, FakeClient(handler), clock=FakeClock())
    dropped = {"rows", "columns"} | ({"encoding"} if kept == "none" else set())
    lines = job.ledger.read_bytes().splitlines()
    assert orjson.loads(lines[0])["encoding"] == "cp1252"
    job.ledger.write_bytes(
        b"".join(
            orjson.dumps({k: v for k, v in orjson.loads(x).items() if k not in dropped}) + b"\n"
            for x in lines
        )
    )
    out = jobs.root / "failed.csv"
    assert write_failed_csv(summarize(job.ledger), out) == (4, True)
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert {r["phone"]: r["first"] for r in rows} == {
        p: f"Zoë{i}" for i, p in enumerate(people) if i >= 4
    }


async def test_failed_csv_fed_back_sends_exactly_the_failures(jobs: JobFactory) -> None:
    """run --input on the failed file sends each failed recipient once, and nobody else."""
    path, calls = await mixed_ledger(jobs)
    out = jobs.root / "failed.csv"
    write_failed_csv(summarize(path), out)
    job = load_job(jobs.root / "job.toml", name="test-job-failed", input_file=out)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=FakeClock())
    refused = next(g for g in calls if g.seq == 1)
    g0 = next(g for g in calls if g.seq == 0)
    assert sorted(client.sent_numbers()) == sorted([*refused.to, g0.to[0], g0.to[1]])
    assert s.rejected_rows == 0
    assert {g.id for g in client.calls}.isdisjoint({g.id for g in calls})


async def test_report_formats(jobs: JobFactory, capsys: pytest.CaptureFixture[str]) -> None:
    """--format json parses, csv has metric rows, and the table names each section."""
    path, _ = await mixed_ledger(jobs)
    capsys.readouterr()
    assert main(["report", str(path), "--format", "json"]) == 0
    d = orjson.loads(capsys.readouterr().out)
    assert d["delivery"]["delivery_failed"] == 1
    assert main(["report", str(path), "--format", "csv"]) == 0
    rows = dict(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows["delivery.expired"] == "1"
    assert rows["cost_by_currency.USD"] == "0.1020"
    assert main(["report", str(path), "--format", "table"]) == 0
    table = capsys.readouterr().out
    for word in ("sent", "failed", "in doubt", "delivery_failed", "did not get", "cost"):
        assert word in table


async def test_report_cli_writes_failed_csv(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """report --failed-csv writes the file and says how many rows on stderr."""
    path, _ = await mixed_ledger(jobs)
    out = jobs.root / "f.csv"
    assert main(["report", str(path), "--format", "json", "--failed-csv", str(out)]) == 0
    assert "wrote 6 recipients" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 7


async def test_report_failed_csv_of_one_says_one_recipient(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """report --failed-csv of one recipient says "1 recipient", as its other counts do."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 1")
    client = FakeClient(
        lambda g, n: Rejected("bad", status=400) if g.seq == 1 else ok_receipt(g, n)
    )
    await run_job(job, FAST, client, clock=FakeClock())
    out = jobs.root / "f.csv"
    assert main(["report", str(job.ledger), "--format", "json", "--failed-csv", str(out)]) == 0
    assert f"wrote 1 recipient to {out} " in capsys.readouterr().err


async def test_report_agrees_with_resume_on_what_is_in_doubt(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt cut off by a crash (no outcome) and a group in doubt whose resend then failed
    transiently are both in doubt, in the report as in a resume: every recipient counted."""
    jobs.people(12)
    job = jobs.job(extra="group_size = 4")
    await crash_mid_send(job, monkeypatch, hanging=2, hang=lambda g: g.seq < 2)
    # the resend of group 1 (its key still holds) fails on 503s: it stays in doubt
    flaky = FakeClient(lambda g, n: ServerError("down", status=503))
    await run_job(job, FAST, flaky, clock=FakeClock(), resend_in_doubt=True)
    s = summarize(job.ledger)
    assert (s.sent_groups, s.in_doubt_groups, s.failed_groups) == (1, 2, 0)
    assert s.in_doubt_recipients == 8
    assert len(groups_in(job.ledger, "in_doubt")) == s.in_doubt_groups
    assert s.sent_recipients + s.in_doubt_recipients == 12


# -- words for people, every reason, the rejected and recipients files -----------------------


async def troubled_ledger(jobs: JobFactory) -> Path:
    """40 people in groups of 4, one at a time: group 0 refused (400), 1 unreachable, 2 on
    503s, 4 stopped before its request left (what a Ctrl-C records), the rest sent."""
    jobs.people(40)
    job = jobs.job(extra="group_size = 4")
    troubles: dict[int, SendError] = {
        0: Rejected("bad", status=400),
        1: NetworkError("cannot connect: refused"),
        2: ServerError("the server failed", status=503),
        4: never_left(),
    }

    def handler(group: Group, n: int) -> SendError | SendReceipt:
        return troubles.get(group.seq) or ok_receipt(group, n)

    await run_job(job, replace(FAST, concurrency=1), FakeClient(handler), clock=FakeClock())
    return job.ledger


async def test_table_says_what_happened_in_words(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table says each error and why each group is not sent in words, with units, and
    names no error class."""
    path = await troubled_ledger(jobs)
    capsys.readouterr()
    assert main(["report", str(path), "--format", "table"]) == 0
    table = capsys.readouterr().out
    for said in (
        "failed        1 group, 4 recipients: refused by the API (HTTP 400)",
        "retry pending 1 group, 4 recipients: API unreachable: no connection could be made",
        "retry pending 1 group, 4 recipients: server error 503: retries used up",
        "retry pending 1 group, 4 recipients: not sent yet: the run was stopped (Ctrl-C",
        "1 group  API unreachable",
        "did not get  4 recipients",
    ):
        assert said in table
    for name in ("RetryableSendError", "NetworkError", "ServerError", " x1"):
        assert name not in table


async def test_in_doubt_after_a_crash_is_said_in_words(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group whose request was out when the run died reads as "may have been sent", with
    what a rerun does about it, in the table and in the HTML page."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    await crash_mid_send(job, monkeypatch, hanging=1, hang=lambda g: g.seq == 0)
    capsys.readouterr()
    page = jobs.root / "report.html"
    assert main(["report", str(job.ledger), "--format", "table", "--html", str(page)]) == 0
    said = "1 group, 4 recipients: may have been sent: its request was out when the ledger"
    assert said in capsys.readouterr().out
    assert "may have been sent: its request was out" in page.read_text()


async def test_html_says_errors_in_words(jobs: JobFactory) -> None:
    """The page's tables say what happened, not the error's class, and count in units."""
    path = await troubled_ledger(jobs)
    page = jobs.root / "report.html"
    assert main(["-q", "report", str(path), "--html", str(page)]) == 0
    text = page.read_text()
    assert "API unreachable: no connection could be made" in text
    assert "server error 503: retries used up" in text
    assert "not sent yet: the run was stopped" in text
    assert "<td>retry pending</td><td>1</td><td>4</td>" in text
    for name in ("RetryableSendError", "NetworkError", "ServerError"):
        assert name not in text


#: Seven kinds of bad number, one row each (more than any top-5 would show).
BAD_NUMBERS = (
    "",
    "abc",
    "+442071838750",
    "+33142685300",
    "+15555550100",
    "+18765550100",
    "=1+2",
)


def rejecting_job(jobs: JobFactory) -> Path:
    """A job of 200 good numbers, one duplicate and :data:`BAD_NUMBERS`, run in the sandbox;
    its ledger."""
    people = [*numbers(200), numbers(1)[0], *BAD_NUMBERS]
    jobs.csv([{"phone": p, "first": "x"} for p in people])
    job = jobs.job()
    assert main(["-q", "run", str(job.path), "--sandbox", "--rate", "1000"]) == 0
    return folders.sandbox_ledger(job.ledger)


def test_every_rejection_reason_in_every_format(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """All seven rejection reasons are in the table, JSON, CSV and HTML, each counted in rows."""
    ledger = rejecting_job(jobs)
    capsys.readouterr()
    assert main(["report", str(ledger), "--format", "json"]) == 0
    by_reason = orjson.loads(capsys.readouterr().out)["rejected_rows_by_reason"]
    assert len(by_reason) == 7
    assert set(by_reason.values()) == {1}
    assert main(["report", str(ledger), "--format", "csv"]) == 0
    metrics = dict(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert {k for k in metrics if k.startswith("rejected_rows_by_reason.")} == {
        f"rejected_rows_by_reason.{reason}" for reason in by_reason
    }
    page = jobs.root / "r.html"
    assert main(["report", str(ledger), "--format", "table", "--html", str(page)]) == 0
    table = capsys.readouterr().out
    html_text = page.read_text()
    assert "input        208 rows: 200 valid, 7 rejected, 1 left out on purpose" in table
    assert "rejected     7 rows that cannot be sent (losses" in table
    assert "  duplicate           1 row   whose number is in the job already" in table
    for reason in by_reason:
        assert f"       1 row  {reason}" in table
        assert f"<td>{html.escape(reason)}</td><td>1</td>" in html_text


def test_rejected_csv_lists_every_rejected_row(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """report --rejected-csv writes each rejected row's line, value and reason (a formula
    neutralised), not the duplicate, and says on one line how many rows, and how many it left
    out on purpose."""
    ledger = rejecting_job(jobs)
    out = jobs.root / "out" / "rejected.csv"
    capsys.readouterr()
    assert main(["report", str(ledger), "--format", "json", "--rejected-csv", str(out)]) == 0
    err = capsys.readouterr().err
    assert err == (
        f"bulk-mms: wrote 7 rejected rows to {out}; not in it, left out on purpose: 1 "
        "duplicate row (their numbers are in the job already), 0 suppressed, 0 already sent "
        "(--exclude-sent)\n"
    )
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert rows[0] == ["line", "value", "reason"]
    assert [int(line) for line, _, _ in rows[1:]] == list(range(203, 210))  # header is line 1
    values = [value for _, value, _ in rows[1:]]
    assert values == ["", "abc", "+442071838750", "+33142685300", "+15555550100",
                      "+18765550100", "'=1+2"]  # fmt: skip
    assert rows[-1][2].startswith("a spreadsheet formula (=1+2), not a phone number")


def test_rejected_csv_streams_the_ledger(jobs: JobFactory) -> None:
    """A ledger of 60,000 rejected rows is written out without holding them: the memory the
    report takes stays far below what the rows would need held at once."""
    ledger = rejecting_job(jobs)
    with ledger.open("ab") as f:
        for line in range(1000, 61000):
            f.write(encode(RejectedEvent(line, f"bad-{line:08d}", "phone number contains letters")))
    out = jobs.root / "rejected.csv"
    tracemalloc.start()
    try:
        argv = ["-q", "report", str(ledger), "--format", "json", "--rejected-csv", str(out)]
        assert main(argv) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1 + 7 + 60_000
    assert peak < 3_000_000  # the 60,000 rows held as tuples of str take about 10 MB


def test_the_campaigns_of_an_input_are_read_without_holding_its_rows(jobs: JobFactory) -> None:
    """Which campaigns a --input file's rows name (every `run --input` asks) is read streaming:
    an export of 60,000 rows without the campaign column is read in memory far below what
    its rows would need held at once, and a failed file's rows are found by campaign."""
    path = jobs.csv("phone,first\n" + "".join(f"+1212{i:07d},A\n" for i in range(60_000)))
    header = Header("test-job", "sha256:x", columns=("first",))
    tracemalloc.start()
    try:
        assert missed_by(path, header) == {}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3_000_000  # the 60,000 rows held as tuples of str take about 8 MB
    failed = jobs.csv(f"phone,{CAMPAIGN_COLUMN}\n+12125550101,c1\n+12125550102,\n", "f.csv")
    assert missed_by(failed, header) == {"c1": {"+12125550101"}, "": {"+12125550102"}}


def test_an_export_without_the_campaign_column_is_not_read_for_campaigns(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV whose header has no campaign column names no campaign: not one of its rows is
    read to find that out (every `run --input` asks); a JSONL file's rows still are."""
    path = jobs.csv("phone,first\n+12125550101,A\n")
    header = Header("test-job", "sha256:x", columns=("first",))
    failed = jobs.root / "failed.jsonl"
    failed.write_text(f'{{"phone": "+12125550101", "{CAMPAIGN_COLUMN}": "c1"}}\n')
    read: list[object] = []
    rows = RowReader.__iter__

    def counted(self: RowReader) -> Iterator[object]:
        read.append(self)
        return rows(self)

    monkeypatch.setattr(RowReader, "__iter__", counted)
    assert missed_by(path, header) == {}
    assert read == []
    assert missed_by(failed, header) == {"c1": {"+12125550101"}}
    assert len(read) == 1


def test_a_file_that_cannot_be_written_is_one_line(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """--rejected-csv or --recipients-csv into a path that cannot be a file: exit 2, one line
    naming the file, no traceback, nothing left behind."""
    ledger = rejecting_job(jobs)
    blocker = jobs.root / "not-a-folder"
    blocker.write_text("x")
    for flag in ("--rejected-csv", "--recipients-csv"):
        out = blocker / "out.csv"
        capsys.readouterr()
        assert main(["report", str(ledger), "--format", "json", flag, str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"bulk-mms: error: {out}: cannot write")
        assert err.count("\n") == 1
        assert "Traceback" not in err


async def test_recipients_csv_has_a_row_per_recipient(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """report --recipients-csv: one row per recipient the ledger names, with its state, its
    delivery status and error in words (Telnyx's title for a delivery code), and its share of
    the group's cost."""
    path = await troubled_ledger(jobs)
    g5 = next(
        ev
        for ev in read_events(path)
        if isinstance(ev, SentEvent) and ev.seq == 5  # a sent group: one delivery fails
    )
    store = open_store(path, "append")
    late = RecipientStatus(
        g5.to[0], "delivery_failed", errors=(ApiError("40016", "T-Mobile cap", ""),)
    )
    store.append_now(status_event(g5.group, late, source="t", time=""))
    unsent = RecipientStatus(g5.to[2], "delivery_failed", errors=(ApiError("40013", "", ""),))
    store.append_now(status_event(g5.group, unsent, source="t", time=""))
    store.close_sync()
    out = jobs.root / "everyone.csv"
    capsys.readouterr()
    assert main(["report", str(path), "--format", "json", "--recipients-csv", str(out)]) == 0
    err = capsys.readouterr().err
    assert err == (
        f"bulk-mms: wrote 40 recipients to {out}; not in it: 0 recipients not attempted "
        "(the ledger counts them, it does not name them)\n"
    )
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert list(rows[0]) == [
        "phone", "group", "state", "delivery_status", "error_code", "error_title", "cost",
        "currency",
    ]  # fmt: skip
    by_phone = {r["phone"]: r for r in rows}
    assert set(by_phone) == set(numbers(40))
    assert sum(r["state"] == "sent" for r in rows) == 24
    refused = by_phone[numbers(40)[0]]
    assert (refused["state"], refused["error_code"], refused["error_title"]) == (
        "failed",
        "400",
        "refused by the API (HTTP 400)",
    )
    assert refused["cost"] == refused["delivery_status"] == ""
    stopped = by_phone[numbers(40)[16]]
    assert stopped["state"] == "retry_pending"
    assert stopped["error_title"].startswith("not sent yet: the run was stopped")
    capped = by_phone[g5.to[0]]
    assert (capped["delivery_status"], capped["error_code"]) == ("delivery_failed", "40016")
    assert capped["error_title"] == "T-Mobile daily message limit reached"
    assert (capped["cost"], capped["currency"]) == ("0.0051", "USD")
    ok = by_phone[g5.to[1]]
    assert (ok["delivery_status"], ok["error_code"], ok["cost"]) == ("queued", "", "0.0051")
    # a delivery code of Telnyx's reference is named by its title there
    assert by_phone[g5.to[2]]["error_title"] == "Invalid source number"


async def test_failed_csv_neutralises_formulas_and_keeps_numbers(jobs: JobFactory) -> None:
    """--failed-csv writes a cell a spreadsheet would run as a formula with a leading quote,
    and the E.164 numbers as they are: the file still reads back as a job's input."""
    jobs.csv([{"phone": p, "first": "=HYPERLINK(1)"} for p in numbers(4)])
    job = jobs.job(extra="group_size = 4")
    client = FakeClient(lambda g, n: Rejected("bad", status=400))
    await run_job(job, FAST, client, clock=FakeClock())
    out = jobs.root / "failed.csv"
    argv = ["-q", "report", str(job.ledger), "--format", "json", "--failed-csv", str(out)]
    assert main(argv) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert [r["phone"] for r in rows] == numbers(4)
    assert {r["first"] for r in rows} == {"'=HYPERLINK(1)"}
    again = load_job(jobs.root / "job.toml", name="again", input_file=out)
    resend = FakeClient()
    await run_job(again, FAST, resend, clock=FakeClock())
    assert sorted(resend.sent_numbers()) == numbers(4)


def test_report_csv_neutralises_formulas() -> None:
    """--format csv writes no cell that starts a formula (a job name here), numbers kept."""
    counts = InputRows(5, {"not a valid number": 3}, 0, 0, 0, input_read=True)
    s = LedgerSummary(job="=cmd|' /C calc'!A0", rows=counts)
    rows = dict(csv.reader(io.StringIO(format_csv(s))))
    assert rows["job"] == "'=cmd|' /C calc'!A0"
    assert rows["rejected_rows"] == "3"


@pytest.mark.parametrize("command", ["report", "status"])
def test_an_empty_ledger_is_said_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """An empty ledger file is no job to report on: exit 2 (a ledger that cannot be used), one
    line saying it is empty, and no report of nothing on stdout."""
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert main([command, str(empty), "--format", "table"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"bulk-mms: error: {empty}: {NO_HEADER}\n"


async def left_out_ledger(jobs: JobFactory) -> tuple[Path, JobSummary]:
    """12 rows: 8 sent, and one each of a bad number, a duplicate, a number on the suppression
    list and a number an --exclude-sent ledger records sent."""
    job, settings, excluded = left_out_job(jobs, 10)
    s = await run_job(job, settings, FakeClient(), clock=FakeClock(), excluded=excluded)
    return job.ledger, s


async def test_the_run_summary_tells_losses_from_rows_left_out(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """The run's summary calls only the bad row rejected (of all 12), and names the
    duplicate, the suppressed and the excluded row each as what it is."""
    _, s = await left_out_ledger(jobs)
    assert (s.rejected_rows, s.duplicate_rows, s.suppressed_rows, s.excluded_rows) == (1, 1, 1, 1)
    assert s.rows_text() == (
        "1 of 12 rows rejected (8.3%: phone number contains letters: 1 row); "
        "1 duplicate number; 1 suppressed (on the suppression list); "
        "1 already sent (--exclude-sent)"
    )


async def test_a_run_stopped_early_tells_the_whole_inputs_rows_left_out(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A run stopped by ``--limit`` before the repeat, the suppressed and the excluded row
    still tells all 12 rows as the input's check found them, as it tells the rejected row:
    its counts add up to the input, not to the part this run read."""
    _, settings, excluded = left_out_job(jobs, 10)
    job = jobs.job(extra="max_rejected_share = 0.5\ngroup_size = 1")
    s = await run_job(job, settings, FakeClient(), clock=FakeClock(), excluded=excluded, limit=1)
    assert s.sent_groups == 1
    assert s.rows_text() == (
        "1 of 12 rows rejected (8.3%: phone number contains letters: 1 row); "
        "1 duplicate number; 1 suppressed (on the suppression list); "
        "1 already sent (--exclude-sent)"
    )


async def test_a_rerun_tells_the_rows_left_out_as_the_report_does(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A rerun of a finished job (the suppressed member's group made anew by the first run,
    followed by the rerun to the group sent without them) tells the same rows left out as
    the first run and the report: each kind counted once, from the one fold."""
    job, settings, excluded = left_out_job(jobs, 10)
    first = await run_job(job, settings, FakeClient(), clock=FakeClock(), excluded=excluded)
    again = await run_job(job, settings, FakeClient(), clock=FakeClock(), excluded=excluded)
    assert again.sent_groups == 0
    assert again.rows_text() == first.rows_text()
    rows = summarize(job.ledger).rows
    assert (again.duplicate_rows, again.suppressed_rows, again.excluded_rows) == (
        rows.duplicates,
        rows.suppressed,
        rows.excluded,
    )
    assert (rows.duplicates, rows.suppressed, rows.excluded) == (1, 1, 1)


async def test_a_report_of_a_run_stopped_early_tells_the_rows_it_did_not_reach_apart(
    jobs: JobFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run stopped by ``--limit`` before the bad, the suppressed and the excluded row (no
    line records any of them): the report counts the suppressed and the excluded row left
    out on purpose, as the run's summary does, and only the bad row as a loss; each of the
    12 rows counted once, in the table and the JSON alike."""
    _, settings, excluded = left_out_job(jobs, 10)
    job = jobs.job(extra="max_rejected_share = 0.5\ngroup_size = 1")
    s = await run_job(job, settings, FakeClient(), clock=FakeClock(), excluded=excluded, limit=1)
    assert s.input is not None
    assert (s.input.suppressed, s.input.excluded) == (1, 1)
    assert not [e for e in read_events(job.ledger) if isinstance(e, RejectedEvent)]
    report = summarize(job.ledger)
    rows = report.rows
    assert (rows.lost, rows.duplicates, rows.suppressed, rows.excluded) == (1, 1, 1, 1)
    assert rows.rejected == {UNRECORDED: 1}
    assert (rows.valid, rows.rows) == (8, 12)
    assert report.recipient_states.as_dict() == {
        "valid": 8,
        "sent": 1,
        "failed": 0,
        "retry_pending": 0,
        "in_doubt": 0,
        "not_attempted": 7,
    }
    d = report.as_dict()
    kinds = ("input_rows", "rejected_rows", "duplicate_rows", "suppressed_rows", "excluded_rows")
    assert [d[k] for k in kinds] == [12, 1, 1, 1, 1]
    capsys.readouterr()
    assert main(["report", str(job.ledger), "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "input        12 rows: 8 valid, 1 rejected, 3 left out on purpose" in table
    assert "  suppressed          1 row   whose number is on the suppression list" in table
    assert "  already sent        1 row   by a ledger given to --exclude-sent" in table


@pytest.mark.parametrize(
    "relisted", [[0, 2], []], ids=["a-sent-number-listed-since", "a-left-out-number-unlisted"]
)
async def test_a_rerun_stopped_early_counts_who_its_plan_leaves_out_not_todays_list(
    jobs: JobFactory, tmp_path: Path, relisted: list[int]
) -> None:
    """Two runs stopped by ``--limit``, the first leaving the third person out (suppressed:
    their group made anew without them); between them the list changes: the first person,
    whom the first run sent, is put on it, or the third is taken off. The rerun's summary
    and the report count whom its plan leaves out, not whom the list names: the first sent,
    the third suppressed, and the two nobody has tried yet not attempted."""
    people = numbers(8)
    jobs.csv([{"phone": p, "first": "x"} for p in people])
    job = jobs.job(extra="group_size = 2")
    listed = tmp_path / "list.txt"
    listed.write_text(people[2] + "\n")
    settings = replace(FAST, suppression_file=listed)
    clock = FakeClock()
    await run_job(job, settings, FakeClient(), clock=clock, limit=2)  # people 0-1, 3
    listed.write_text("".join(people[i] + "\n" for i in relisted))
    s = await run_job(job, settings, FakeClient(), clock=clock, limit=1)  # people 4-5
    assert s.input is not None
    assert s.input.suppressed == 1
    assert s.rows_text() == "0 of 8 rows rejected; 1 suppressed (on the suppression list)"
    report = summarize(job.ledger)
    states = report.recipient_states
    assert (states.valid, states.sent, states.not_attempted) == (7, 5, 2)
    assert states.failed == states.retry_pending == states.in_doubt == 0
    assert (report.rows.suppressed, report.rows.rows) == (1, 8)


def _without_kinds(ledger: Path, out: Path) -> Path:
    """``ledger`` as a bulk-mms that did not tell the kinds of row apart wrote it: its
    ``planned`` lines without ``suppressed`` and ``excluded``."""
    lines = []
    for line in ledger.read_bytes().splitlines():
        obj = orjson.loads(line)
        if obj["event"] == "planned":
            del obj["suppressed"], obj["excluded"]
        lines.append(orjson.dumps(obj) + b"\n")
    out.write_bytes(b"".join(lines))
    return out


async def test_a_finished_runs_report_is_the_same_with_kinds_told_apart_or_not(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A finished run's ``planned`` events count the suppressed and the excluded row apart (the
    scan's and the plan's alike), and its report is what the same ledger without those
    counts reports: every row is recorded, so nothing is counted from them."""
    ledger, _ = await left_out_ledger(jobs)
    planned = [e for e in read_events(ledger) if isinstance(e, Planned)]
    assert [(e.groups > 0, e.rejected, e.suppressed, e.excluded) for e in planned] == [
        (False, 3, 1, 1),
        (True, 3, 1, 1),
    ]
    old = summarize(_without_kinds(ledger, tmp_path / "old.jsonl"))
    new = summarize(ledger)
    assert new.rows == old.rows == InputRows(8, {"phone number contains letters": 1}, 1, 1, 1, True)
    assert {**new.as_dict(), "ledger": ""} == {**old.as_dict(), "ledger": ""}


async def test_a_ledger_that_does_not_tell_kinds_apart_reads_as_before(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """The same stopped run's ledger as a bulk-mms that lumped the rows not sent wrote it (no
    ``suppressed`` nor ``excluded`` in ``planned``): the rows no line records are all counted
    rejected, not recorded yet, as that bulk-mms counted them; the rows still add up."""
    _, settings, excluded = left_out_job(jobs, 10)
    job = jobs.job(extra="max_rejected_share = 0.5\ngroup_size = 1")
    await run_job(job, settings, FakeClient(), clock=FakeClock(), excluded=excluded, limit=1)
    rows = summarize(_without_kinds(job.ledger, tmp_path / "old.jsonl")).rows
    assert rows == InputRows(8, {UNRECORDED: 3}, 1, 0, 0, input_read=True)
    assert rows.rows == 12


def test_rows_not_reached_are_counted_by_kind_never_fewer_than_recorded() -> None:
    """The fold counts the rows a stopped run's ``planned`` counts and no line records as
    their kinds (suppressed, excluded, the rest not recorded yet); kinds recorded more than
    counted (a rerun's list changed) keep their lines, and the total stays the event's."""
    header = Header("j", "sha256:x")
    bad = RejectedEvent(2, "abc", "phone number contains letters")
    suppressed = RejectedEvent(3, "+12125550100", "suppressed: +12125550100 is on the list")
    planned = Planned(recipients=4, groups=0, rejected=6, suppressed=2, excluded=2)
    rows = LedgerView.fold([header, planned, bad, suppressed]).input_rows()
    assert (rows.rejected, rows.suppressed, rows.excluded) == (
        {"phone number contains letters": 1, UNRECORDED: 1},
        2,
        2,
    )
    assert rows.rows == 4 + 6
    fewer = replace(planned, rejected=4, suppressed=0, excluded=2)  # the list has lost a number
    rows = LedgerView.fold([header, fewer, bad, suppressed]).input_rows()
    assert (rows.lost, rows.suppressed, rows.excluded, rows.rows) == (1, 1, 2, 8)


async def test_the_report_counts_each_kind_of_row_not_sent_apart(
    jobs: JobFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report counts the one loss apart from the rows left out on purpose, kind by kind,
    adding up to the input's 12 rows, in the table and the JSON alike."""
    ledger, _ = await left_out_ledger(jobs)
    report = summarize(ledger)
    reason = "phone number contains letters"
    assert report.rows == InputRows(8, {reason: 1}, 1, 1, 1, input_read=True)
    assert report.rows.rows == 12
    assert report.rejected_reasons == {reason: 1}
    d = report.as_dict()
    kinds = ("input_rows", "rejected_rows", "duplicate_rows", "suppressed_rows", "excluded_rows")
    assert [d[k] for k in kinds] == [12, 1, 1, 1, 1]
    assert d["rejected_rows_by_reason"] == {reason: 1}
    capsys.readouterr()
    assert main(["report", str(ledger), "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "input        12 rows: 8 valid, 1 rejected, 3 left out on purpose" in table
    assert "rejected     1 row that cannot be sent (losses" in table
    for line in (
        "  duplicate           1 row   whose number is in the job already",
        "  suppressed          1 row   whose number is on the suppression list",
        "  already sent        1 row   by a ledger given to --exclude-sent",
    ):
        assert line in table


async def test_rejected_csv_lists_only_the_losses(
    jobs: JobFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """report --rejected-csv lists the bad row alone: not the suppressed nor the excluded
    number (a fixed file sent again would text them), nor the duplicate."""
    ledger, _ = await left_out_ledger(jobs)
    out = tmp_path / "rejected.csv"
    assert main(["-q", "report", str(ledger), "--format", "json", "--rejected-csv", str(out)]) == 0
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert rows == [
        ["line", "value", "reason"],
        ["5", "bad", "phone number contains letters"],
    ]


def test_input_rows_tell_kinds_by_their_reasons() -> None:
    """The fold counts each rejected line by its reason's kind: losses by reason, suppressed
    and excluded apart, duplicates from the latest planned count; all add up."""
    view = LedgerView.fold(
        [
            Header("j", "sha256:x"),
            Planned(recipients=4, groups=1, rejected=3, duplicates=2),
            RejectedEvent(2, "abc", "phone number contains letters"),
            RejectedEvent(3, "+12125550100", "suppressed: +12125550100 is on the suppression list"),
            RejectedEvent(4, "+12125550101", "excluded: already sent by a ledger given to x"),
            RejectedEvent(5, "+12125550102", "excluded: already sent by a ledger given to x"),
            RejectedEvent(6, "", "malformed CSV: unexpected end of data"),
        ]
    )
    rows = view.input_rows()
    assert rows == InputRows(
        4, {"phone number contains letters": 1, "malformed CSV": 1}, 2, 1, 2, input_read=True
    )
    assert (rows.lost, rows.left_out, rows.rows) == (2, 5, 11)


@pytest.mark.parametrize(
    ("amount", "shown"),
    [("0.04420000", "0.0442"), ("3427.37695000", "3427.37695"), ("100", "100.00"), ("0", "0.00")],
)
def test_costs_are_shown_without_the_trailing_zeros_of_sums(amount: str, shown: str) -> None:
    """An amount reads as its digits: no trailing zeros from adding the API's amounts, at least
    to the cent, never in exponent form."""
    assert report_module._amount(Decimal(amount)) == shown


async def test_the_text_report_names_carriers_codes_with_control_characters_escaped(
    jobs: JobFactory,
) -> None:
    """The table lists the carriers' codes in the delivery reports of those who did not get
    it, a recipient each; a code the server made of control characters (an escape sequence
    that would rewrite the operator's terminal) is written escaped."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 2")
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    (g,) = client.calls
    hostile = "\x1b]0;owned\x07\x1b[2J"
    store = open_store(job.ledger, "append")
    for phone, code in zip(g.to, ("40001", hostile), strict=True):
        report = RecipientStatus(phone, "delivery_failed", errors=(ApiError(code, "t", ""),))
        store.append_now(status_event(g.id, report, source="track", time=""))
    store.close_sync()
    text = format_text(summarize(job.ledger), job.ledger)
    assert "\x1b" not in text
    assert "\x07" not in text
    lines = text.splitlines()
    at = lines.index("carriers' codes in the delivery reports of those who did not get it")
    assert sorted(lines[at + 1 : at + 3]) == sorted(
        [
            f"  {'1 recipient':>12}  {error_words('40001')}",
            f"  {'1 recipient':>12}  \\x1b]0;owned\\x07\\x1b[2J",
        ]
    )
