"""A job's ``delimiter``: Excel's semicolon CSV and tab-separated "Text" read as the job says,
sent end to end, kept in the ledger's header, and the failed file written and read back with
it; a wrong value, a changed one and a file separated otherwise are each refused in a line."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bulk_mms.cli import main
from bulk_mms.csvfile import DELIMITERS
from bulk_mms.errors import ConfigError, InputError, LedgerMismatch, Rejected
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.models import Group, RejectedRow, SendReceipt
from bulk_mms.reader import Row, RowReader
from bulk_mms.recipient_lists import write_failed_csv
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers, ok_receipt
from tests.test_exports_people import refused_then_resent
from tests.threaded import fake_api_thread


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    monkeypatch.setenv("TELNYX_API_KEY", "KEY-delimiter-test")
    monkeypatch.delenv("BULK_MMS_LEDGER_URL", raising=False)


#: Excel's "CSV" where the decimal mark is a comma: Windows-1252, CR LF, semicolons, and
#: quoted fields holding semicolons, commas, a quote and a line break.
SEMICOLON_EXPORT = (
    "phone;first;note\r\n"
    '+12125550101;José;"Dinner; 7pm, bring wine"\r\n'
    '+12125550102;"Zoë; Ann";"Line one\r\nline two; 5,50 €"\r\n'
    '+12125550103;Ann;"Say ""hi""; ok"\r\n'
    ";;\r\n"
)


def test_a_semicolon_cp1252_export_is_sent_end_to_end_with_its_quoted_fields_whole(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Windows-1252 semicolon export under ``delimiter = ";"`` sends every row (exit 0)
    through the real client, each quoted field whole with its semicolons, commas, quotes and
    line break, the row of empty cells skipped, nobody rejected; the header keeps ``;``."""
    (jobs.root / "people.csv").write_bytes(SEMICOLON_EXPORT.encode("cp1252"))
    job = jobs.job(
        extra='group_size = 1\nencoding = "cp1252"\ndelimiter = ";"',
        message='text = "Hi {first}: {note}"',
    )
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    assert sorted(m.body["text"] for m in fake.accepted) == [
        'Hi Ann: Say "hi"; ok',
        "Hi José: Dinner; 7pm, bring wine",
        "Hi Zoë; Ann: Line one\nline two; 5,50 €",
    ]
    assert "0 of 3 rows rejected" in capsys.readouterr().out
    assert ledger_events(job.ledger)[0]["delimiter"] == ";"


def test_a_tab_file_reads_its_quoted_tabs_padding_and_wide_rows_by_tabs(tmp_path: Path) -> None:
    """A tab-separated file padded as a spreadsheet pads its range: a quoted field keeps its
    tab and comma, the padding is no field, a row of empty cells is skipped, and a row with a
    value past the header is rejected, shown as written (tabs between its fields)."""
    p = tmp_path / "a.csv"
    p.write_text(
        "phone\tname\n"
        '+12125550100\t"Smith,\tJo"\t\t\n'
        "+12125550101\tAl\t\t\n"
        "\t\t\t\n"
        "+12125550102\tBo\textra\t\n"
    )
    with RowReader(p, "phone", ("name",), delimiter="\t") as reader:
        rows = list(reader)
    assert rows == [
        Row(2, {"phone": "+12125550100", "name": "Smith,\tJo"}),
        Row(3, {"phone": "+12125550101", "name": "Al"}),
        RejectedRow(5, "+12125550102\tBo\textra\t", "row has 4 fields, header has 2"),
    ]


def test_a_tab_job_sends_its_tab_separated_text_export(jobs: JobFactory) -> None:
    """``delimiter = "tab"`` reads Excel's tab-separated "Text" and sends every row."""
    jobs.csv("phone\tfirst\r\n+12125550101\tAnn\r\n+12125550102\tBo, Jr\r\n")
    job = jobs.job(extra='group_size = 1\ndelimiter = "tab"')
    assert job.delimiter == "\t"
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    assert sorted(m.body["text"] for m in fake.accepted) == ["Hello Ann", "Hello Bo, Jr"]


def test_the_failed_file_of_a_semicolon_job_is_written_with_semicolons_and_sent_again(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """run, report --failed-csv, run --input failed.csv under ``delimiter = ";"``: the file is
    separated by semicolons (as the spreadsheet that wrote the input opens it), and the
    resend texts exactly the refused, their fields as the first send had them."""
    (jobs.root / "people.csv").write_bytes(SEMICOLON_EXPORT.encode("cp1252"))
    job = jobs.job(
        extra='group_size = 1\nencoding = "cp1252"\ndelimiter = ";"',
        message='text = "Hi {first}: {note}"',
    )
    failed = tmp_path / "failed.csv"
    fake = refused_then_resent(job, failed, refused=2)
    header = failed.read_bytes().splitlines()[0]
    assert header == b"\xef\xbb\xbfphone;first;note;bulk_mms_reason;bulk_mms_campaign"
    texts = [m.body["text"] for m in fake.accepted]
    assert len(texts) == 3
    assert sorted(texts) == [
        'Hi Ann: Say "hi"; ok',
        "Hi José: Dinner; 7pm, bring wine",
        "Hi Zoë; Ann: Line one\nline two; 5,50 €",
    ]


def test_a_failed_file_is_read_by_its_own_separator_whatever_the_job_says(
    tmp_path: Path,
) -> None:
    """A file of failed recipients written with semicolons reads as such under a comma job
    (as its byte order mark makes it UTF-8 under any encoding): the file says what it is."""
    p = tmp_path / "failed.csv"
    p.write_bytes(
        b"\xef\xbb\xbfphone;first;bulk_mms_reason;bulk_mms_campaign\r\n"
        b"+12125550101;Ann, Jr;failed: 40001;c1\r\n"
    )
    with RowReader(p, "phone", ("first",)) as reader:
        assert reader.delimiter == ";"
        assert list(reader) == [Row(2, {"phone": "+12125550101", "first": "Ann, Jr"})]


async def test_failed_csv_of_a_ledger_without_rows_reads_a_semicolon_input_with_semicolons(
    jobs: JobFactory,
) -> None:
    """A ledger that records no rows sends the failed file back to its semicolon input: it is
    read with the header's ``;``, each recipient's row whole, and written with ``;``."""
    people = numbers(8)
    jobs.csv("phone;first\n" + "".join(f'{p};"P{i}, Jr"\n' for i, p in enumerate(people)))
    job = jobs.job(extra='group_size = 4\ndelimiter = ";"')

    def handler(group: Group, n: int) -> Rejected | SendReceipt:
        return Rejected("bad", status=400) if group.seq == 1 else ok_receipt(group, n)

    await run_job(job, FAST, FakeClient(handler), clock=FakeClock())
    lines = job.ledger.read_bytes().splitlines()
    job.ledger.write_bytes(
        b"".join(
            orjson.dumps({k: v for k, v in orjson.loads(x).items() if k not in ("rows", "columns")})
            + b"\n"
            for x in lines
        )
    )
    out = jobs.root / "failed.csv"
    assert write_failed_csv(summarize(job.ledger), out) == (4, True)
    with RowReader(out, "phone", ("first",), delimiter=";") as reader:
        got = {r.fields["phone"]: r.fields["first"] for r in reader if isinstance(r, Row)}
    assert got == {p: f"P{i}, Jr" for i, p in enumerate(people) if i >= 4}


async def test_a_resume_under_another_delimiter_is_refused_and_an_old_ledger_reads_as_comma(
    jobs: JobFactory,
) -> None:
    """A ledger begun with ``delimiter = ";"`` refuses a run that says ``,`` (nothing more
    sent), naming both; one begun before the header kept it resumes under the comma."""
    jobs.csv("phone\n" + "".join(f"{p}\n" for p in numbers(4)))
    client = FakeClient()
    semi = jobs.job(extra='group_size = 1\ndelimiter = ";"', message='text = "Hello"')
    await run_job(semi, FAST, client, clock=FakeClock(), limit=1)
    sent = list(client.sent_numbers())
    comma = jobs.job(extra="group_size = 1", message='text = "Hello"')
    with pytest.raises(LedgerMismatch, match="delimiter was ';', now ','"):
        await run_job(comma, FAST, client, clock=FakeClock())
    assert list(client.sent_numbers()) == sent
    lines = comma.ledger.read_bytes().splitlines(keepends=True)
    header = {k: v for k, v in orjson.loads(lines[0]).items() if k != "delimiter"}
    comma.ledger.write_bytes(orjson.dumps(header) + b"\n" + b"".join(lines[1:]))
    s = await run_job(comma, FAST, client, clock=FakeClock())
    assert s.recipients is not None
    assert s.recipients.sent == 4


@pytest.mark.parametrize("value", ["::", "", ".", "\\n", "semicolon"])
def test_a_delimiter_bulk_mms_does_not_read_is_refused_naming_the_setting(
    jobs: JobFactory, value: str
) -> None:
    """A ``delimiter`` other than ``,``, ``;``, a tab or ``|`` is a one-line error naming the
    setting and the values it takes."""
    jobs.people(1)
    with pytest.raises(ConfigError) as info:
        jobs.job(extra=f'delimiter = "{value}"')
    err = str(info.value)
    assert "delimiter" in err
    assert 'use one of ",", ";", "\\t", "|"' in err
    assert "\n" not in err


def test_a_comma_file_under_a_semicolon_job_names_the_comma(tmp_path: Path) -> None:
    """A comma-separated file read under ``delimiter = ";"`` is refused naming commas and
    ``delimiter = ","``, not as lacking the phone column."""
    p = tmp_path / "a.csv"
    p.write_text("phone,first\n+12125550101,Ann\n")
    with pytest.raises(InputError) as err, RowReader(p, "phone", delimiter=";"):
        pass
    assert err.value.message.startswith("its columns are separated by commas, not semicolons")
    assert 'set delimiter = "," in the job' in err.value.message


async def test_a_jsonl_input_takes_no_notice_of_the_delimiter(jobs: JobFactory) -> None:
    """A JSONL input under ``delimiter = ";"`` (a job whose usual input is a semicolon CSV,
    run on a JSONL file) is sent as it is, its header keeping the comma: it has no columns
    to separate, and a rerun under another delimiter resumes it."""
    people = numbers(2)
    (jobs.root / "people.jsonl").write_text(
        "".join(orjson.dumps({"phone": p, "first": "A;B"}).decode() + "\n" for p in people)
    )
    job = jobs.job("people.jsonl", extra='group_size = 1\ndelimiter = ";"')
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=FakeClock())
    assert s.recipients is not None
    assert s.recipients.sent == 2
    assert ledger_events(job.ledger)[0]["delimiter"] == ","
    comma = jobs.job("people.jsonl", extra="group_size = 1")
    again = await run_job(comma, FAST, client, clock=FakeClock())
    assert again.skipped_groups == 2
    assert len(client.calls) == 2


#: Files written with commas whose reading the quoted-field checks, the padding, the cut-off
#: checks and the rejected rows decide: each reads the same with any other separator put in
#: every comma's place (a record over lines, a quote left open over rows, a note closing where
#: a row opens, a quote open at the end, a row shifted by a comma not quoted, quotes escaped
#: with a backslash, a padded export with a row of empty cells, a note over too many lines).
COMMA_FILES = [
    'phone,name\n+12125550100,"Ann\nand Bo, Cy"\n+12125550101,Cy\n',
    'phone,name\n+12125550100,"Ann\n'
    + "".join(f"+1212555{i:04d},name {i}\n" for i in range(10, 20)),
    'note,phone\n"hello\n ",+12125550100\n',
    'note,phone\n"Call back,\nask for Bo,",+12125550100\n',
    'phone,name\n+12125550100,Ann\n+12125550101,"cut\n',
    "name,home,mobile,note\nAnn,+12125550100,+12125550101,\n"
    "Smith, Bo,+12125550102,+12125550103,\nCy,+12125550104,+12125550105,\n",
    'phone,name\n+12125550100,"A \\"x\\" y"\n+12125550101,Bo\n',
    "phone,name,,\n+12125550100,Ann,,\n,,,\n+12125550101,Bo,x,\n",
    'phone,name\n+12125550100,"hi\n' + "".join(f"line {i}\n" for i in range(25)) + 'end"\n',
]


#: Where a reason or an error names the file's separator.
_NAMED = ("a {} in a field", "or a {}, take it off")


def _outcome(path: Path, phone: str, sep: str) -> list[tuple[int, object, str]] | str:
    """What reading ``path`` under ``delimiter = sep`` gives, said as for commas (every
    ``sep`` in a value a comma, the separator's name "comma"): each row's line and fields, or
    each rejected row's line, value and reason; or the error's line and message."""

    def back(text: str) -> str:
        for phrase in _NAMED:
            text = text.replace(phrase.format(DELIMITERS[sep]), phrase.format("comma"))
        return text

    try:
        with RowReader(path, phone, keep_all=True, delimiter=sep) as reader:
            return [
                (
                    r.line,
                    {k.replace(sep, ","): v.replace(sep, ",") for k, v in r.fields.items()},
                    "",
                )
                if isinstance(r, Row)
                else (r.line, r.value.replace(sep, ","), back(r.reason))
                for r in reader
            ]
    except InputError as exc:
        return f"{exc.line}: {back(exc.message)}"


@pytest.mark.parametrize("sep", [";", "\t", "|"])
@pytest.mark.parametrize("text", COMMA_FILES)
def test_every_check_of_a_comma_file_goes_by_the_jobs_separator(
    tmp_path: Path, text: str, sep: str
) -> None:
    """A file read with its commas made another separator under that ``delimiter`` reads as
    the comma file does: the same rows, values (each comma that separator), rejections and
    errors (each "comma" named as that separator)."""
    comma, other = tmp_path / "comma.csv", tmp_path / "other.csv"
    comma.write_text(text)
    other.write_text(text.replace(",", sep))
    header = text.partition("\n")[0].split(",")
    phone = next(name for name in ("phone", "mobile") if name in header)
    assert _outcome(other, phone, sep) == _outcome(comma, phone, ",")


def test_the_rejected_rows_of_a_semicolon_job_are_written_with_semicolons(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """``run --rejected-csv`` and ``report --rejected-csv`` of a ``delimiter = ";"`` job write
    the rows to fix separated by semicolons, as the input is; a JSONL input's by commas."""
    jobs.csv("phone;first\r\n+12125550101;Ann\r\n555;Bo\r\n+12125550103;Cy\r\n")
    job = jobs.job(extra='group_size = 1\ndelimiter = ";"\nmax_rejected_share = 0.5')
    ran, reported = tmp_path / "ran.csv", tmp_path / "reported.csv"
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        code = main(["-q", "run", str(job.path), "--base-url", url, "--rejected-csv", str(ran)])
    assert code == 0
    assert main(["-q", "report", str(job.ledger), "--rejected-csv", str(reported)]) == 0
    for path in (ran, reported):
        head, row = path.read_text(encoding="utf-8-sig").splitlines()[:2]
        assert head == "line;value;reason"
        assert row.startswith("3;555;")
    (jobs.root / "people.jsonl").write_text('{"phone": "555", "first": "Al"}\n')
    listed = tmp_path / "listed.csv"
    job = jobs.job("people.jsonl", extra='delimiter = ";"\nmax_rejected_share = 1', name="j")
    assert main(["-q", "run", str(job.path), "--dry-run", "--rejected-csv", str(listed)]) == 0
    assert listed.read_text(encoding="utf-8-sig").splitlines()[0] == "line,value,reason"
