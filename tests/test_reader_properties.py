"""Properties of the CSV reader's quoted fields over lines: a file Python's csv module writes
reads back as that module reads it (or is refused for a reason docs/input.md gives), a stray
or missing quote never silently swallows a person, and a file cut short never yields a cut
value but where the docs say it cannot be told."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bulk_mms import reader as reader_module
from bulk_mms import spans
from bulk_mms.errors import InputError
from bulk_mms.models import RejectedRow
from bulk_mms.reader import MAX_RECORD_LINES, Row, RowReader
from bulk_mms.validate import recipient_rows

#: Every property runs the same examples on every machine (CI included), in a few seconds.
FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: What the text columns' values are made of: commas, quotes, both line ends, blanks, an
#: accent, and digits (a line of which may look like a row: see ``pasted``).
_PIECES = ("a", "Bo", " ", ",", '"', '""', "\n", "\r\n", "é", "x,y", "12", "-", "5550100")
_VALUE = st.lists(st.sampled_from(_PIECES), max_size=6).map("".join)
_BREAK = re.compile(r"\r\n|\n")


@dataclass(frozen=True)
class Table:
    """A table as csv.writer writes it, and what the csv module reads back from it."""

    header: list[str]
    text: str
    #: each data record: its first and last lines and its cells, as csv.reader reads ``text``
    records: list[tuple[int, int, list[str]]]

    @property
    def others(self) -> list[str]:
        return [c for c in self.header if c != "phone"]

    @property
    def phones(self) -> list[str]:
        return [rec[self.header.index("phone")] for _, _, rec in self.records]


def _records(text: str) -> list[tuple[int, int, list[str]]]:
    """The data records of ``text`` as the csv module reads them, each with its first and
    last lines."""
    reader = csv.reader(io.StringIO(text, newline=""))
    out, last = [], 0
    for rec in reader:
        out.append((last + 1, reader.line_num, rec))
        last = reader.line_num
    return out[1:]


def _probe(header: list[str]) -> spans.SpanCheck:
    """The span check of a file with ``header``: its ``_row_like`` is the one definition of a
    line inside a field that looks like a row."""
    return spans.SpanCheck(Path("probe.csv"), len(header), header.index("phone"), lambda _: "")


def _inner_lines(value: str) -> list[str]:
    """The lines of a value past its first: those that sit at the start of a physical line."""
    return _BREAK.split(value)[1:]


@st.composite
def tables(draw: st.DrawFn, *, pasted: bool = False, most: int = 4) -> Table:
    """A phone column among one to three text columns, one to ``most`` rows, written by
    csv.writer (QUOTE_MINIMAL) with ``\\n`` or ``\\r\\n`` line ends, the last maybe left
    without one. Each record spans at most MAX_RECORD_LINES lines (the bound). ``pasted``: a
    value may hold a pasted line shaped like a row (another number where the phone column
    is); else no line inside a value looks like a row (``SpanCheck._row_like``)."""
    others = [f"c{i}" for i in range(draw(st.integers(1, 3)))]
    at = draw(st.integers(0, len(others)))
    header = [*others[:at], "phone", *others[at:]]
    probe = _probe(header)
    row_line = ",".join("+13135550199" if c == "phone" else "Al" for c in header)
    value = _VALUE
    if pasted:
        value = st.lists(
            st.sampled_from([*_PIECES, f"\n{row_line}", f"\r\n{row_line}\n"]), max_size=6
        ).map("".join)
    rows = []
    for n in range(draw(st.integers(1, most))):
        cells = [draw(value) for _ in others]
        lines = [part for cell in cells for part in _inner_lines(cell)]
        # a record's first line plus one per line break: at most MAX_RECORD_LINES in all
        if not pasted:
            cells = [
                cell if not any(probe._row_like(p) for p in _inner_lines(cell)) else "a"
                for cell in cells
            ]
        if len(lines) + 1 > MAX_RECORD_LINES:
            cells = [_BREAK.sub(" ", cell) for cell in cells]
        rows.append([*cells[:at], f"+1212555{n:04d}", *cells[at:]])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(header)
    writer.writerows(rows)
    text = out.getvalue()
    if draw(st.booleans()):
        text = text.removesuffix("\n").removesuffix("\r")  # a whole last line needs no end
    return Table(header, text, _records(text))


@contextmanager
def _blocks(size: int) -> Iterator[None]:
    """Read the file ``size`` bytes at a time (a record's lines fall in several blocks)."""
    with mock.patch.object(reader_module, "BLOCK_BYTES", size):
        yield


def _read(path: Path, table: Table, data: bytes) -> list[Row | RejectedRow] | InputError:
    """The rows read from ``data`` as the table's file, or the error that refuses it (its kind
    an event: ``pytest --hypothesis-show-statistics`` shows how often each comes)."""
    path.write_bytes(data)
    try:
        with RowReader(path, "phone", table.others) as reader:
            got = list(reader)
    except InputError as err:
        event(_why(err))
        return err
    event("read")
    return got


def _closing_line(table: Table, line: int) -> str:
    """The physical line ``line`` of the table's text (1-based), with its line end."""
    return io.StringIO(table.text, newline="").readlines()[line - 1]


def _documented_refusal(table: Table, err: InputError) -> bool:
    """Whether docs/input.md says the record at ``err.line`` is refused: its quoted field over
    lines may be a quote left open (a spreadsheet's field can't be told from one)."""
    starts = {start: (last, rec) for start, last, rec in table.records}
    if err.line not in starts or "an unclosed quote?" not in err.message:
        return False
    last_line, rec = starts[err.line]
    over = [cell for cell in rec if _BREAK.search(cell)]
    probe = _probe(table.header)
    # "it ends with a comma or a line break": its last line, blanks and quotes aside, is
    # empty or ends so; the quote that closes it then stands where a row's field opens
    opens = any(
        not (last := _BREAK.split(cell)[-1].rstrip(' \t"')) or last.endswith(",") for cell in over
    )
    parts = [part for cell in over for part in _inner_lines(cell)]
    # "lines shaped like rows ... two or more lines count with fewer (rows written short)"
    short = sum(probe._holds_row(part, short=True) for part in parts) >= spans._SHORT_ROWS
    rows = short or any(probe._holds_row(part) for part in parts)
    # "a line between two fields over lines that reads as a row"
    between = [_closing_line(table, n) for n in range(err.line + 1, last_line)]
    rows = rows or (len(over) > 1 and any(map(probe._row_like, between)))
    closing = _closing_line(table, last_line)
    if not rows:
        # "closes on the quote that opens a field of a row"
        return spans._OPENS in err.message and opens
    # "its last line reads as a row (a number where the phone column is, or the header's number
    # of fields), or it ends with a comma or a line break, or another field runs over lines"
    width = len(table.header)
    fields = spans.unpadded(next(csv.reader([closing]), []), width)
    reads_as_row = probe._row_like(closing, short=short) or len(fields) == width
    return spans._ROWS in err.message and (opens or reads_as_row or len(over) > 1)


def _why(err: InputError) -> str:
    """The kind of refusal, for the statistics (``pytest --hypothesis-show-statistics``)."""
    kinds = (
        spans._OPENS,
        spans._ROWS,
        spans._LONG,
        "with text after its closing quote",
        "cut off",
    )
    return "refused " + next((k for k in kinds if k in err.message), err.message)


def _reads_back(tmp_path: Path, table: Table, block: int) -> None:
    """``table`` read ``block`` bytes at a time is the rows csv.reader reads, at their first
    lines, or refused as docs/input.md says (:func:`_documented_refusal`)."""
    with _blocks(block):
        got = _read(tmp_path / "a.csv", table, table.text.encode())
    if isinstance(got, InputError):
        assert _documented_refusal(table, got), (got.message, table.text)
        return
    want = [
        Row(start, {c: rec[table.header.index(c)] for c in ["phone", *table.others]})
        for start, _, rec in table.records
    ]
    assert got == want, table.text


@FAST
@given(table=tables(), block=st.sampled_from([7, 64, 1 << 18]))
def test_a_file_csv_writer_writes_reads_back_as_the_csv_module_reads_it(
    tmp_path: Path, table: Table, block: int
) -> None:
    """A table csv.writer writes (values with commas, quotes and line breaks, none a row's
    line) reads back as csv.reader reads it, row for row and line for line, or is refused only
    as docs/input.md says: a field ending with a line break or comma, closing where a row's
    field opens."""
    _reads_back(tmp_path, table, block)


@FAST
@given(table=tables(pasted=True), block=st.sampled_from([7, 64, 1 << 18]))
def test_a_note_holding_pasted_rows_reads_back_or_is_refused_as_documented(
    tmp_path: Path, table: Table, block: int
) -> None:
    """A table csv.writer writes whose notes may hold pasted lines shaped like rows reads back
    as csv.reader reads it, or is refused only as docs/input.md says a note that cannot be
    told from a quote left open is."""
    _reads_back(tmp_path, table, block)


def _lost(table: Table, got: list[Row | RejectedRow]) -> list[str]:
    """The table's numbers that nothing read says anything of, once validation has had the
    rows (:func:`recipient_rows`, which rejects a row whose number is not one): sent to no
    recipient, rejected at none of their record's lines, in no rejected value (a quote put in
    a number aside)."""
    read = list(recipient_rows(got, "phone"))
    sent = {r.phone for r in read if not isinstance(r, RejectedRow)}
    rejected = {r.line for r in read if isinstance(r, RejectedRow)}
    said = " ".join(r.value for r in read if isinstance(r, RejectedRow)).replace('"', "")
    return [
        phone
        for (start, last, _), phone in zip(table.records, table.phones, strict=True)
        if phone not in sent and rejected.isdisjoint(range(start, last + 1)) and phone not in said
    ]


@FAST
@given(table=tables(most=12) | tables(pasted=True, most=12), data=st.data())
def test_a_stray_or_missing_quote_never_silently_loses_a_person(
    tmp_path: Path, table: Table, data: st.DataObject
) -> None:
    """A quote put anywhere in a file csv.writer writes, or one of its quotes taken out, never
    makes a person vanish: each number is read in a row, rejected, or the file refused."""
    quotes = [i for i, c in enumerate(table.text) if c == '"']
    delete: bool = data.draw(st.booleans(), label="delete") if quotes else False
    if delete:
        at = data.draw(st.sampled_from(quotes), label="quote deleted")
        text = table.text[:at] + table.text[at + 1 :]
    else:
        at = data.draw(st.integers(table.text.index("\n") + 1, len(table.text)), label="at")
        text = table.text[:at] + '"' + table.text[at:]
    got = _read(tmp_path / "a.csv", table, text.encode())
    assert isinstance(got, InputError) or not _lost(table, got), text


@FAST
@given(table=tables() | tables(pasted=True), data=st.data())
def test_a_file_cut_at_any_byte_never_yields_a_cut_value(
    tmp_path: Path, table: Table, data: st.DataObject
) -> None:
    """A file csv.writer writes, cut at any byte past its header, yields every row before the
    cut as written and never a cut one (it is rejected or the file refused), but for the cut
    docs/input.md says cannot be told: inside a last field not quoted, or between the two
    quotes of one written twice in a quoted last field."""
    data_bytes = table.text.encode()
    cut = data.draw(st.integers(table.text.index("\n") + 1, len(data_bytes)), label="cut")
    got = _read(tmp_path / "a.csv", table, data_bytes[:cut])
    if isinstance(got, InputError):
        return
    kept = data_bytes[:cut].decode()
    ended = kept.count("\n")  # the lines the cut left whole, line end and all
    assert {r.line for r in got} >= {start for start, last, _ in table.records if last <= ended}
    for row in got:
        assert isinstance(row, Row), (row, kept)
        rec = next(rec for start, _, rec in table.records if start == row.line)
        whole = {c: rec[table.header.index(c)] for c in ["phone", *table.others]}
        if row.fields == whole:
            continue
        # the cuts that cannot be told: the file's last line, cut inside its last field, with
        # the header's number of fields (a whole last line needs no line end)
        last, value = table.header[-1], row.fields[table.header[-1]]
        assert row is got[-1], kept
        assert row.fields == {**whole, last: value}, kept
        assert whole[last].startswith(value), kept
        # a field not quoted, or a quoted one cut between the two quotes of one written
        # twice: what is left reads as a whole field
        unquoted = '"' not in value and kept.endswith("," + value)
        assert unquoted or (kept.endswith('"') and data_bytes[cut : cut + 1] == b'"'), kept
