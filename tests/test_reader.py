"""The streaming reader: formats, encodings, and bad rows versus bad files."""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk_mms import reader as reader_module
from bulk_mms import spans, validate
from bulk_mms.errors import InputError
from bulk_mms.models import RejectedRow
from bulk_mms.reader import MAX_LINE_BYTES, MAX_RECORD_LINES, Row, RowReader
from bulk_mms.validate import normalize_phone


def read(
    path: Path,
    phone: str = "phone",
    keep: tuple[str, ...] = (),
    encoding: str = "utf-8",
    delimiter: str = ",",
) -> list[Row | RejectedRow]:
    with RowReader(path, phone, keep, encoding=encoding, delimiter=delimiter) as reader:
        return list(reader)


def test_csv_with_bom_crlf_and_quoted_fields(tmp_path: Path) -> None:
    """A UTF-8 BOM, CRLF line ends and a quoted field with a comma and a newline all parse."""
    p = tmp_path / "a.csv"
    p.write_bytes(
        b'\xef\xbb\xbfphone,name\r\n+12125550100,"Smith, Jo"\r\n+12125550101,"two\r\nlines"\r\n'
        b"+12125550102,Al\r\n"
    )
    rows = read(p, keep=("name",))
    assert rows == [
        Row(2, {"phone": "+12125550100", "name": "Smith, Jo"}),
        Row(3, {"phone": "+12125550101", "name": "two\r\nlines"}),
        Row(5, {"phone": "+12125550102", "name": "Al"}),
    ]


def test_gzip_and_jsonl(tmp_path: Path) -> None:
    """A gzip'd JSONL file streams; numbers given as JSON numbers read as text."""
    p = tmp_path / "a.jsonl.gz"
    with gzip.open(p, "wb") as f:
        f.write(b'{"phone": 2125550100, "name": "A"}\n\n{"phone": "+12125550101", "name": "B"}\n')
    assert read(p, keep=("name",)) == [
        Row(1, {"phone": "2125550100", "name": "A"}),
        Row(3, {"phone": "+12125550101", "name": "B"}),
    ]


def test_bad_jsonl_lines_are_rejected_with_line_numbers(tmp_path: Path) -> None:
    """A malformed line, a non-object and a record missing the phone are rejected; others pass."""
    p = tmp_path / "a.jsonl"
    p.write_text('{"phone": "+12125550100"}\n{"phone": \n[1,2]\n{"name": "x"}\n')
    rows = read(p)
    assert rows[0] == Row(1, {"phone": "+12125550100"})
    assert [(r.line, r.reason.split(":")[0]) for r in rows[1:] if isinstance(r, RejectedRow)] == [
        (2, "malformed JSON"),
        (3, "not an object"),
        (4, "missing field 'phone'"),
    ]


def test_jsonl_values_read_as_csv_cells_would(tmp_path: Path) -> None:
    """null is an empty value, as an empty cell is (not a missing field); a number or a
    boolean reads as written; an object or a list in a field the job needs rejects its row,
    naming the field (one it does not need is no matter)."""
    records: list[dict[str, object]] = [
        {"phone": "+12125550100", "name": None},
        {"phone": None, "name": "Dee"},
        {"phone": 2125550101, "name": True},
        {"phone": "+12125550102", "name": {"x": 1}},
        {"phone": ["+12125550103"], "name": "Lu"},
        {"phone": "+12125550104", "name": 1.5, "extra": {"y": [2]}},
    ]
    p = tmp_path / "a.jsonl"
    p.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    not_text = "is not a text value (an object or a list)"
    assert read(p, keep=("name",)) == [
        Row(1, {"phone": "+12125550100", "name": ""}),
        Row(2, {"phone": "", "name": "Dee"}),
        Row(3, {"phone": "2125550101", "name": "true"}),
        RejectedRow(4, "+12125550102", f"field 'name' {not_text}"),
        RejectedRow(5, '["+12125550103"]', f"field 'phone' {not_text}"),
        Row(6, {"phone": "+12125550104", "name": "1.5"}),
    ]
    with RowReader(p, "phone", keep_all=True) as reader:
        assert reader.columns == ("phone", "name")
        rows = list(reader)
        columns: tuple[str, ...] = reader.columns
    assert columns == ("phone", "name", "extra")  # every record's keys
    assert rows[0] == Row(1, {"phone": "+12125550100", "name": ""})
    assert rows[5] == Row(6, {"phone": "+12125550104", "name": "1.5", "extra": '{"y":[2]}'})


def test_a_jsonl_decimal_beside_a_deeply_nested_value_is_read(tmp_path: Path) -> None:
    """A record with a decimal the job needs and a value nested a thousand deep that it does
    not (orjson reads it; Python's json, which keeps a decimal as written, cannot) is read
    with the decimal as orjson gives it, not a traceback."""
    deep = "[" * 1000 + "]" * 1000
    p = tmp_path / "a.jsonl"
    p.write_text('{"phone": "+12125550100", "amount": 25.50, "x": ' + deep + "}\n")
    assert read(p, keep=("amount",)) == [Row(1, {"phone": "+12125550100", "amount": "25.5"})]


def test_short_and_long_csv_rows_are_rejected(tmp_path: Path) -> None:
    """A row missing the phone cell or with extra cells is rejected; the next row is read."""
    p = tmp_path / "a.csv"
    p.write_text("name,phone\nonly-name\nA,+12125550100,extra\nB,+12125550101\n")
    rows = read(p)
    assert isinstance(rows[0], RejectedRow)
    assert rows[0].line == 2
    assert "missing column 'phone'" in rows[0].reason
    assert isinstance(rows[1], RejectedRow)
    assert "3 fields" in rows[1].reason
    assert rows[2] == Row(4, {"phone": "+12125550101"})


def test_overlong_lines_spoil_only_their_row(tmp_path: Path) -> None:
    """A 10 MB line is rejected; the rows after it still read."""
    p = tmp_path / "a.csv"
    huge = b"+1212" + b"9" * (10 * MAX_LINE_BYTES)
    p.write_bytes(b"phone\n+12125550100\n" + huge + b"\n+12125550101\n")
    rows = read(p)
    assert rows[0] == Row(2, {"phone": "+12125550100"})
    assert isinstance(rows[1], RejectedRow)
    assert rows[1].line == 3
    assert "longer than" in rows[1].reason
    assert rows[2] == Row(4, {"phone": "+12125550101"})


@pytest.mark.parametrize("before", [1, 80], ids=["read-ahead", "streamed"])
@pytest.mark.parametrize("name", ["a.csv", "a.csv.gz", "a.jsonl"])
def test_an_overlong_line_s_rejected_row_shows_its_first_characters_marked_cut(
    tmp_path: Path, name: str, before: int
) -> None:
    """An over-long line's rejected row keeps its first 200 characters (a carriage return
    written \\r) and ``…``, the same read ahead or streamed, gzip'd or not, in CSV and
    JSONL: enough to find the row by, never the whole line."""
    if name.endswith(".jsonl"):
        good = [b'{"phone": "+1212555%04d"}' % i for i in range(before)]
        long = '{"phone": "+13125550100", "note": "Jos\u00e9\r ' + "é" * MAX_LINE_BYTES + '"}'
        data = b"\n".join([*good, long.encode(), b'{"phone": "+13125550101"}', b""])
        wanted = long[:200].replace("\r", "\\r") + "…"
    else:
        good = [b"+1212555%04d,x" % i for i in range(before)]
        long = "+13125550100,José\r" + "é" * MAX_LINE_BYTES
        data = b"\n".join([b"phone,note", *good, long.encode(), b"+13125550101,y", b""])
        wanted = long[:200].replace("\r", "\\r") + "…"
    p = tmp_path / name
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    rows = read(p)
    rejected = [r for r in rows if isinstance(r, RejectedRow)]
    assert rejected == [
        RejectedRow(before + 1 + (not name.endswith(".jsonl")), wanted, rejected[0].reason)
    ]
    assert "longer than" in rejected[0].reason
    assert len([r for r in rows if isinstance(r, Row)]) == before + 1


def test_an_overlong_csv_header_is_a_bad_header_naming_line_1(tmp_path: Path) -> None:
    """A CSV header over the longest line held stops the file: a bad header, too long."""
    p = tmp_path / "a.csv"
    p.write_bytes(b"phone," + b"n" * MAX_LINE_BYTES + b"\n+12125550100,x\n")
    with pytest.raises(InputError, match="bad header: line is longer than") as err:
        read(p)
    assert err.value.line == 1


@pytest.mark.parametrize("name", ["a.csv", "a.jsonl", "a.csv.gz"])
def test_a_cp1252_file_read_as_utf8_stops_naming_line_and_encoding(
    tmp_path: Path, name: str
) -> None:
    """Excel's Windows-1252 export read as UTF-8 stops the file at its first accented line,
    naming the line and cp1252, instead of rejecting its rows one by one."""
    if ".jsonl" in name:
        data = (
            '{"phone": "+12125550100", "name": "Ann"}\n{"phone": "+12125550101", "name": "Zoë"}\n'
        )
    else:
        data = "phone,name\r\n+12125550100,Ann\r\n+12125550101,Zoë\r\n"
    raw = data.encode("cp1252")
    p = tmp_path / name
    p.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    with pytest.raises(InputError) as err:
        read(p, keep=("name",))
    assert err.value.line == (2 if ".jsonl" in name else 3)
    assert 'encoding = "cp1252"' in err.value.message


@pytest.mark.parametrize("name", ["a.csv", "a.jsonl"])
@pytest.mark.parametrize("encoding", ["latin-1", "iso-8859-15"])
def test_cp1252_smart_quotes_under_latin1_stop_the_file_naming_cp1252(
    tmp_path: Path, name: str, encoding: str
) -> None:
    """Excel's Windows-1252 export read as latin-1 (or another ISO 8859 encoding) stops at the
    first line with a curly quote or a euro sign, naming cp1252: those bytes are control
    characters there, never sent in a message; the lines before it read."""
    if name.endswith(".jsonl"):
        data = (
            '{"phone": "+12125550100", "name": "Zoë"}\n{"phone": "+12125550101", "name": "“Al”"}\n'
        )
    else:
        data = "phone,name\r\n+12125550100,Zoë\r\n+12125550101,€uro\r\n"
    p = tmp_path / name
    p.write_bytes(data.encode("cp1252"))
    with RowReader(p, "phone", ("name",), encoding=encoding) as reader:
        rows = iter(reader)
        first = next(rows)
        assert isinstance(first, Row)
        assert first.fields["name"] == "Zoë"
        with pytest.raises(InputError) as err:
            next(rows)
    assert err.value.line == (2 if name.endswith(".jsonl") else 3)
    assert f"is not valid {encoding} text" in err.value.message
    assert 'set encoding = "cp1252"' in err.value.message


@pytest.mark.parametrize("name", ["a.csv", "a.jsonl"])
@pytest.mark.parametrize("encoding", ["utf-8", "cp1252", "latin-1"])
def test_a_byte_no_encoding_reads_as_text_names_no_encoding_to_set(
    tmp_path: Path, name: str, encoding: str
) -> None:
    """A line with a byte neither UTF-8 nor cp1252 reads as text (Mac Roman's ç, 0x8D; Shift
    JIS) stops the file saying to save it as UTF-8, naming the byte, never to set latin-1,
    which would stop at the same line."""
    if name.endswith(".jsonl"):
        data = (
            '{"phone": "+12125550100", "name": "Al"}\n'
            '{"phone": "+12125550101", "name": "François"}\n'
        )
    else:
        data = "phone,name\r\n+12125550100,Al\r\n+12125550101,François\r\n"
    p = tmp_path / name
    p.write_bytes(data.encode("mac_roman"))
    with pytest.raises(InputError) as err:
        read(p, keep=("name",), encoding=encoding)
    assert err.value.line == (2 if name.endswith(".jsonl") else 3)
    assert "set encoding" not in err.value.message
    assert "0x8d" in err.value.message
    assert "save the file as UTF-8" in err.value.message


def test_a_cp1252_file_with_its_encoding_keeps_every_name(tmp_path: Path) -> None:
    """With encoding = cp1252 every name reads as written."""
    p = tmp_path / "a.csv"
    p.write_bytes("phone,name\r\n+12125550101,Zoë Müller\r\n".encode("cp1252"))
    with RowReader(p, "phone", ("name",), encoding="cp1252") as r:
        assert list(r) == [Row(2, {"phone": "+12125550101", "name": "Zoë Müller"})]


@pytest.mark.parametrize("name", ["a.csv", "a.jsonl", "a.csv.gz"])
def test_a_utf8_byte_order_mark_makes_the_file_utf8_whatever_the_job_says(
    tmp_path: Path, name: str
) -> None:
    """A file that starts with a UTF-8 byte order mark reads as UTF-8 under encoding =
    cp1252: "José", not "JosÃ©", the mark skipped."""
    if ".jsonl" in name:
        text = '{"phone": "+12125550101", "name": "José"}\n'
    else:
        text = "phone,name\r\n+12125550101,José\r\n"
    data = b"\xef\xbb\xbf" + text.encode("utf-8")
    p = tmp_path / name
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with RowReader(p, "phone", ("name",), encoding="cp1252") as r:
        assert list(r) == [
            Row(1 if ".jsonl" in name else 2, {"phone": "+12125550101", "name": "José"})
        ]
        assert r.encoding == "utf-8"


@pytest.mark.parametrize("name", ["a.csv", "a.jsonl"])
def test_a_byte_order_mark_written_twice_is_no_part_of_the_header(
    tmp_path: Path, name: str
) -> None:
    """A file that starts with two UTF-8 byte order marks (one written in front of a file that
    had its own) reads its first line whole: its phone column is found, not '\\ufeffphone'."""
    if ".jsonl" in name:
        text = '{"phone": "+12125550101", "name": "José"}\n'
    else:
        text = "phone,name\r\n+12125550101,José\r\n"
    p = tmp_path / name
    p.write_bytes(b"\xef\xbb\xbf\xef\xbb\xbf" + text.encode("utf-8"))
    assert read(p, keep=("name",)) == [
        Row(1 if ".jsonl" in name else 2, {"phone": "+12125550101", "name": "José"})
    ]


@pytest.mark.parametrize("name", ["a.csv", "a.jsonl"])
def test_a_utf8_line_cut_inside_a_character_is_named_cut_not_cp1252(
    tmp_path: Path, name: str
) -> None:
    """A UTF-8 file with one field cut inside its "é" mid-file (an export that cuts fields to
    a number of bytes) stops at that line saying a character was cut short, never that the
    file looks like cp1252 (under which every other accent would go out garbled)."""
    cut = "Renée Jos".encode() + "é".encode()[:1]
    if name.endswith(".csv"):
        lines = [b"phone,name", "+12125550100,Zoë".encode(), b"+12125550101," + cut]
        after = b"+12125550102,Al"
    else:
        lines = [
            '{"phone": "+12125550100", "name": "Zoë"}'.encode(),
            b'{"phone": "+12125550101", "name": "' + cut + b'"}',
        ]
        after = b'{"phone": "+12125550102", "name": "Al"}'
    p = tmp_path / name
    p.write_bytes(b"\n".join([*lines, after, b""]))
    with pytest.raises(InputError) as err:
        read(p, keep=("name",))
    assert err.value.line == len(lines)
    assert "character cut short, after" in err.value.message
    assert "Renée Jos'" in err.value.message
    assert "cp1252" not in err.value.message


def test_a_cp1252_line_in_a_utf8_file_is_named_so_not_a_character_cut_short(
    tmp_path: Path,
) -> None:
    """A cp1252 line in a UTF-8 file (exports of two encodings joined into one: accents inside
    words) stops at that line saying its file's lines before are UTF-8 and it looks like
    cp1252, never that a character was cut short (no field was cut) nor to set cp1252."""
    p = tmp_path / "a.csv"
    p.write_bytes(
        "phone,name\n+12125550100,Zoë\n".encode()
        + "+12125550101,José García\n".encode("cp1252")
        + b"+12125550102,Al\n"
    )
    with pytest.raises(InputError) as err:
        read(p, keep=("name",))
    assert err.value.line == 3
    assert "cut short" not in err.value.message
    assert "the lines before are utf-8, and this one looks like cp1252" in err.value.message
    assert 'set encoding = "cp1252"' not in err.value.message


@pytest.mark.parametrize("name", ["a.csv", "a.jsonl", "a.csv.gz"])
@pytest.mark.parametrize("ascii_rows", [1, 20_000])
def test_a_utf8_file_under_cp1252_stops_at_its_first_accent_naming_utf8(
    tmp_path: Path, name: str, ascii_rows: int
) -> None:
    """A UTF-8 file without a byte order mark read under encoding = cp1252 stops at its
    first line that is not ASCII (past the first block too), saying it looks like UTF-8 and
    how "é" would read, instead of sending "JosÃ©"."""
    numbers = [f"+1212555{i % 10_000:04d}" for i in range(ascii_rows)]
    if ".jsonl" in name:
        text = "".join(f'{{"phone": "{n}", "name": "Al"}}\n' for n in numbers)
        text += '{"phone": "+12125550101", "name": "José"}\n'
    else:
        text = "phone,name\n" + "".join(f"{n},Al\n" for n in numbers) + "+12125550101,José\n"
    data = text.encode("utf-8")
    p = tmp_path / name
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(InputError) as err:
        read(p, keep=("name",), encoding="cp1252")
    assert err.value.line == ascii_rows + (1 if ".jsonl" in name else 2)
    assert err.value.message == (
        "looks like utf-8 text, not cp1252 ('é' would read as 'Ã©'): "
        'set encoding = "utf-8" in the job, or save the file as cp1252'
    )


def test_the_first_line_that_is_not_ascii_decides_whether_a_file_is_utf8(
    tmp_path: Path,
) -> None:
    """A cp1252 file whose first accented line is not UTF-8 reads as cp1252 to the end, even
    a later line whose bytes happen to form UTF-8 ("É" then a no-break space)."""
    p = tmp_path / "a.csv"
    p.write_bytes("phone,name\n+12125550100,Zoë\n+12125550101,JOSÉ\xa0\n".encode("cp1252"))
    assert read(p, keep=("name",), encoding="cp1252") == [
        Row(2, {"phone": "+12125550100", "name": "Zoë"}),
        Row(3, {"phone": "+12125550101", "name": "JOSÉ\xa0"}),
    ]


def test_a_cp1252_line_that_happens_to_be_utf8_first_does_not_make_the_file_utf8(
    tmp_path: Path,
) -> None:
    """A cp1252 file whose first accented line is valid UTF-8 by chance ("É" then a no-break
    space) reads as cp1252 when a later accented line is not UTF-8; a UTF-8 file with several
    accented lines stops at the third, naming the first."""
    p = tmp_path / "a.csv"
    p.write_bytes("phone,name\n+12125550101,JOSÉ\xa0\n+12125550100,Zoë\n".encode("cp1252"))
    assert read(p, keep=("name",), encoding="cp1252") == [
        Row(2, {"phone": "+12125550101", "name": "JOSÉ\xa0"}),
        Row(3, {"phone": "+12125550100", "name": "Zoë"}),
    ]
    names = ["José", "Zoë", "Ana", "Léa", "Noé"]
    u = tmp_path / "u.csv"
    u.write_bytes(
        ("phone,name\n" + "".join(f"+1212555010{i},{n}\n" for i, n in enumerate(names))).encode()
    )
    rows: list[Row | RejectedRow] = []
    with (
        pytest.raises(InputError) as err,
        RowReader(u, "phone", ("name",), encoding="cp1252") as reader,
    ):
        rows.extend(reader)
    assert err.value.line == 2
    assert "looks like utf-8" in err.value.message
    assert len(rows) == 3  # up to Léa's line, the third accented: a scan stops there, unsent


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252"])
def test_a_byte_order_mark_before_cp1252_text_says_to_save_it_as_utf8(
    tmp_path: Path, encoding: str
) -> None:
    """A UTF-8 byte order mark before cp1252 bytes stops the file at the accented line with
    one fix that works, whatever the job's encoding: save it as UTF-8 (setting encoding would
    not help, the mark overrides it)."""
    p = tmp_path / "a.csv"
    p.write_bytes(b"\xef\xbb\xbf" + "phone,name\r\n+12125550101,Zoë\r\n".encode("cp1252"))
    with pytest.raises(InputError) as err:
        read(p, keep=("name",), encoding=encoding)
    assert err.value.line == 2
    assert err.value.message == (
        "is not valid utf-8 text; it looks like cp1252, but the file starts with a UTF-8 byte "
        "order mark, which makes it utf-8 whatever the job says: save the whole file as UTF-8"
    )


def test_an_unclosed_quote_that_swallows_rows_stops_the_file(tmp_path: Path) -> None:
    """A quote left open swallows the rows after it: the file stops, naming the line where it
    opened, instead of losing those people; a real multi-line field still reads."""
    p = tmp_path / "a.csv"
    rows = "".join(f"+1212555{i:04d},name {i}\n" for i in range(10, 20))
    p.write_text('phone,name\n+12125550100,"Ann\n' + rows, encoding="utf-8")
    with pytest.raises(InputError) as err:
        read(p, keep=("name",))
    assert err.value.line == 2
    assert "unclosed quote" in err.value.message
    ok = tmp_path / "b.csv"
    ok.write_text('phone,name\n+12125550100,"Ann\nand Bo"\n+12125550101,Cy\n', encoding="utf-8")
    assert read(ok, keep=("name",)) == [
        Row(2, {"phone": "+12125550100", "name": "Ann\nand Bo"}),
        Row(4, {"phone": "+12125550101", "name": "Cy"}),
    ]


@pytest.mark.parametrize("phone_at", [0, 2])
def test_a_quoted_address_over_lines_with_commas_reads_as_one_row(
    tmp_path: Path, phone_at: int
) -> None:
    """A closed quoted field over lines as commaful as a row, but with no number where the
    phone column is (a CRM's address or note), is one row, not an unclosed quote."""
    p = tmp_path / "a.csv"
    names = ["name", "address"]
    names.insert(phone_at, "phone")
    address = "12 Main St, Apt 4\nSpringfield, IL, 62701\nUSA, North America, Earth"

    def line(phone: str, name: str, addr: str) -> str:
        cells = [name, addr]
        cells.insert(phone_at, phone)
        return ",".join(cells) + "\n"

    p.write_text(
        ",".join(names) + "\n"
        + line("+12125550100", "Ann", f'"{address}"')
        + line("+12125550101", "Bo", "1 Elm"),
        encoding="utf-8",
    )  # fmt: skip
    assert read(p, keep=("name", "address")) == [
        Row(2, {"phone": "+12125550100", "name": "Ann", "address": address}),
        Row(5, {"phone": "+12125550101", "name": "Bo", "address": "1 Elm"}),
    ]


@pytest.mark.parametrize(
    ("header", "record", "value"),
    [
        (
            "phone,name,note",
            '+12125550100,Ann,"Called from\n+12125550199,Bob,wants a call\nsee ticket 42"\n',
            "Called from\n+12125550199,Bob,wants a call\nsee ticket 42",
        ),
        (
            "phone,note,name",
            '+12125550100,"Called from\r\n+12125550199,Bob,x\r\nok",Ann\r\n',
            "Called from\r\n+12125550199,Bob,x\r\nok",
        ),
        (
            "phone,name,note",
            '+12125550100,Ann,"see\n+12125550199,Bob,""x""\nhe said ""call"""\n',
            'see\n+12125550199,Bob,"x"\nhe said "call"',
        ),
    ],
    ids=["last column", "middle column, CRLF", "doubled quotes"],
)
def test_a_closed_note_holding_a_row_like_line_reads_as_one_row(
    tmp_path: Path, header: str, record: str, value: str
) -> None:
    """A quoted note as a spreadsheet writes it (closing on its own text, then a comma or the
    line end) that holds a pasted line shaped like a row is one row, not an unclosed quote."""
    p = tmp_path / "a.csv"
    p.write_bytes(f"{header}\n{record}+12125550101,Cy,y\n".encode())
    rows = read(p, keep=("name", "note"))
    note_at = header.split(",").index("note")
    assert [r.line for r in rows] == [2, 2 + record.count("\n")]
    assert isinstance(rows[0], Row)
    assert (rows[0].fields["phone"], rows[0].fields["note"]) == ("+12125550100", value)
    assert rows[1] == Row(rows[1].line, {"phone": "+12125550101", "name": "Cy", "note": "y"}) or (
        note_at == 1
        and rows[1] == Row(rows[1].line, {"phone": "+12125550101", "note": "Cy", "name": "y"})
    )


@pytest.mark.parametrize(
    ("header", "lines"),
    [
        (
            "phone,name,note",
            ['+12125550100,"Ann,hi', "+12125550101,Bo,yo", '+12125550102,"Smith, Cy",x'],
        ),
        (
            "phone,name,note",
            ['+12125550100,Ann,"hi', "+12125550101,Bo,yo", '+12125550102,Cy,"', 'more"'],
        ),
        (
            "phone,name,note",
            ['+12125550100,Ann,"hi', "+12125550101,Bo,yo", '+12125550102,Cy,TV 55"'],
        ),
        ("phone,name,note", ['+12125550100,Ann,"hi', "+12125550101,Bo,yo", 'n/a,Cy,TV 55"']),
        ("phone,name,note", ['+12125550100,Ann,"hi', '+12125550101,Bo,yo"']),
        ("name,note,phone", ['Ann,"hi,+12125550100', 'Bo,"yo",+12125550101']),
        ("phone,name,note,x", ['+12125550100,"Ann,hi,x', '+12125550101,Bo,", yo",y']),
        (
            "name,alias,phone,note",
            ['Ann,,+12125550100,"hi', 'Bo,"""""",+12125550101,yo', 'Cy,"', 'x",+12125550102,z'],
        ),
        ("c0,phone,c1,c2", ['",+12125550100,,', '",a",+12125550101,,"', '"']),
    ],
    ids=[
        "lands on a later quoted field",
        "lands on a note that opens with a line break",
        "lands on a quote that ends a field (a writer that leaves it unquoted)",
        "the same in a row without a number",
        "a note whose last line is a row: the same bytes as a quote left open",
        "swallows no row, lands on the next row's quoted field",
        "swallows no row, lands on a quoted field that opens with a comma",
        "swallows a row whose field before the number holds quotes (each written twice)",
        "lands on a row's first field and a quote at its end opens another over lines",
    ],
)
def test_a_quote_left_open_that_closes_on_a_later_rows_quote_stops_the_file(
    tmp_path: Path, header: str, lines: list[str]
) -> None:
    """A quote left open that runs into later rows and closes on one of their quotes stops
    the file, naming the line where it opened, instead of reading those rows as one; so does
    a closed note that cannot be told from one."""
    p = tmp_path / "a.csv"
    p.write_text("\n".join([header, *lines, "+12125550109,Di,z"]) + "\n")
    with pytest.raises(InputError) as err:
        read(p, keep=("name",))
    assert err.value.line == 2
    assert "an unclosed quote? Remove or close the stray quote" in err.value.message


def test_a_note_over_many_small_blocks_is_read_from_every_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A note over the most lines a record may span, read a few bytes at a time (a batch of
    lines each), is checked on the text of all its lines: it reads as one row."""
    monkeypatch.setattr(reader_module, "BLOCK_BYTES", 8)
    inner = [f"line {i}" for i in range(reader_module.MAX_RECORD_LINES - 2)]
    note = "\n".join(["Called from", "+12125550199,Bob,x", *inner])
    p = tmp_path / "a.csv"
    p.write_text(f'phone,name,note\n+12125550100,Ann,x\n+12125550101,Bo,"{note}"\n')
    rows = read(p, keep=("note",))
    assert rows[1] == Row(3, {"phone": "+12125550101", "note": note})


def test_a_note_ending_where_a_row_would_open_says_how_to_fix_either_way(tmp_path: Path) -> None:
    """A note whose last line is blank, closing in a line that reads as a row, cannot be told
    from a quote left open: the file stops, saying to take the stray quote out or the line
    break or comma off the note's end. One ending in a comma, closing in a line whose phone
    cell holds that comma (no number), reads as the one row it is."""
    p = tmp_path / "a.csv"
    p.write_text('note,phone\n"Call back,\nask for Bo,",+12125550100\n')
    note = "Call back,\nask for Bo,"
    assert read(p, keep=("note",)) == [Row(2, {"phone": "+12125550100", "note": note})]
    p.write_text('note,phone\n"hello\n ",+12125550100\n')
    with pytest.raises(InputError) as err:
        read(p, keep=("note",))
    assert err.value.line == 2
    assert err.value.message == (
        "a quoted field opened here runs to line 3 and closes on the quote that opens a field "
        "of a row: an unclosed quote? Remove or close the stray quote (a quote inside a field "
        "is written twice, in a quoted field); if the field is meant to end with a line break "
        "or a comma, take it off, and run again"
    )


@pytest.mark.parametrize(
    ("inner", "last", "why"),
    [
        ([f"+1212555{i:04d},P{i},x" for i in range(200, 225)], "then he left", "look like rows"),
        ([f"line {i}" for i in range(25)], "the end", "over more than 20 lines"),
        ([f"line {i}" for i in range(MAX_RECORD_LINES - 1)], "the end", "over more than 20 lines"),
    ],
    ids=[
        "a quote left open over rows, closing on its own text",
        "a long note",
        "a note one line over the bound",
    ],
)
def test_a_quoted_field_over_max_record_lines_stops_the_file(
    tmp_path: Path, inner: list[str], last: str, why: str
) -> None:
    """A quoted field over more than MAX_RECORD_LINES lines stops the file at the line it
    opened, however it closes: a quote left open that swallowed that many rows is not read
    as one row's note."""
    p = tmp_path / "a.csv"
    lines = ["phone,name,note", '+12125550100,Ann,"hi', *inner, f'{last}"', "+12125550102,Di,z"]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as err:
        read(p, keep=("name", "note"))
    assert err.value.line == 2
    assert why in err.value.message
    assert "an unclosed quote? Remove or close the stray quote" in err.value.message


@pytest.mark.parametrize("phone_at", [0, 1])
def test_a_quote_left_open_over_short_rows_stops_the_file(tmp_path: Path, phone_at: int) -> None:
    """A quote left open over rows written without their empty last field (a hand-made or
    scripted file), closing on an inch mark at a field's end, stops the file: those rows
    have a number where the phone column is, and would be read as one row's note."""

    def row(phone: str, *rest: str) -> str:
        return ",".join([*rest[:phone_at], phone, *rest[phone_at:]])

    lines = [
        row("phone", "name", "note"),
        row("+12125550100", "Ann", '"Big Al'),
        row("+12125550101", "Bob"),
        row("+12125550102", "Cy"),
        row("+12125550103", "Di 5'2\""),
        row("+12125550104", "Ed", "ok"),
    ]
    p = tmp_path / "a.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as err:
        read(p, keep=("name",))
    assert err.value.line == 2
    assert "an unclosed quote? Remove or close the stray quote" in err.value.message


@pytest.mark.parametrize(
    "log",
    [
        ["2024-03-04 10:15, called, no answer", "2024-03-09 14:00, emailed, no reply"],
        ["2024-03-04 10:15, called", "2024-03-05 11:00, emailed"],
    ],
    ids=["rows' width", "short"],
)
def test_a_call_log_note_ending_on_an_entry_reads_as_one_row(
    tmp_path: Path, log: list[str]
) -> None:
    """A CRM note that is a call log, each entry a time then commas, and that ends on an
    entry is one row: a time (10:15) is no phone number, so no entry looks like a row."""
    note = "\n".join(["Call log:", *log])
    p = tmp_path / "a.csv"
    p.write_text(f'phone,name,note\n+12125550100,Ann,"{note}"\n+12125550101,Bo,ok\n')
    assert read(p, keep=("name", "note")) == [
        Row(2, {"phone": "+12125550100", "name": "Ann", "note": note}),
        Row(5, {"phone": "+12125550101", "name": "Bo", "note": "ok"}),
    ]


@pytest.mark.parametrize("sep", [",", ";", "\t"])
@pytest.mark.parametrize(("phone_at", "end"), [(0, "\n"), (1, "\r\n"), (3, "\n")])
def test_a_stray_quote_anywhere_in_a_spreadsheets_file_never_loses_a_row(
    tmp_path: Path, phone_at: int, end: str, sep: str
) -> None:
    """In a file as a spreadsheet writes it (notes over lines, with commas, quotes and pasted
    rows), a quote put at the start of any field either stops the file or leaves every row
    read or rejected, at its line or with its number: none is swallowed silently; whatever
    the file's separator (the job's ``delimiter``: every comma of the notes made it)."""
    notes = [
        "plain",
        "12 Main St, Apt 4\nSpringfield, IL, 62701",
        "Called from\n+12125550199,Bob,x\nsee ticket",
        ", starts with a comma",
        "\nstarts with a line break",
        'he said "hi"',
        "+12125550198,Al,y",
        "ends with a line break\n",
    ]
    notes = [note.replace(",", sep) for note in notes]
    phones = [f"+1212555{i:04d}" for i in range(100, 100 + 2 * len(notes))]
    rows = [
        ["name", "note", "city"],
        *([f"N{i}", notes[i % len(notes)], "Town"] for i in range(len(phones))),
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=end, delimiter=sep)
    for row, phone in zip(rows, ["phone", *phones], strict=True):
        writer.writerow([*row[:phone_at], phone, *row[phone_at:]])
    text = out.getvalue()
    starts = [i + 1 for i, c in enumerate(text) if c in sep + "\n" and i + 1 < len(text)]
    p = tmp_path / "a.csv"
    p.write_bytes(text.encode())
    lines = [r.line for r in read(p, keep=("name", "note", "city"), delimiter=sep)]
    assert len(lines) == len(phones)
    for at in starts[3:]:  # past the header
        p.write_bytes((text[:at] + '"' + text[at:]).encode())
        try:
            read_rows = read(p, keep=("name", "note", "city"), delimiter=sep)
        except InputError:
            continue
        seen = {r.line for r in read_rows}
        said = " ".join(r.fields["phone"] if isinstance(r, Row) else r.value for r in read_rows)
        lost = [ph for n, ph in zip(lines, phones, strict=True) if n not in seen and ph not in said]
        assert not lost, text[:at] + "|" + text[at:]


def test_a_gzip_cut_in_its_first_lines_stops_naming_the_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    """A .csv.gz cut a few lines in (the lines read ahead as the file opens) stops the file at
    the line its data stops in, saying it looks cut off, as a cut further on does."""
    text = "phone,name\n" + "".join(f"+1212555{i:04d},N{i}\n" for i in range(2000))
    whole = gzip.compress(text.encode())
    cut = next(
        whole[:n]
        for n in range(20, len(whole))
        if zlib.decompressobj(wbits=31).decompress(whole[:n]).count(b"\n") >= 5
    )
    readable = zlib.decompressobj(wbits=31).decompress(cut)
    p = tmp_path / "a.csv.gz"
    p.write_bytes(cut)
    with pytest.raises(InputError) as err:
        read(p, keep=("name",))
    assert err.value.line == readable.count(b"\n") + 1
    assert "looks cut off" in err.value.message


@pytest.mark.parametrize("body", ["", "+12125550100,Ann\n"])
def test_junk_after_a_gzip_stream_in_its_first_lines_is_a_read_failure_named(
    tmp_path: Path, body: str
) -> None:
    """Bytes that are no gzip after a .csv.gz's stream (a download with junk on its end), met
    while the file opens, stop it with one line naming the line, not a traceback."""
    p = tmp_path / "a.csv.gz"
    p.write_bytes(gzip.compress(f"phone,name\n{body}".encode()) + b"garbage!")
    with pytest.raises(InputError) as err:
        read(p, keep=("name",))
    assert err.value.line == 2 + body.count("\n")
    assert "read failed: Not a gzipped file" in err.value.message


@pytest.mark.parametrize("name", ["a.csv.gz", "a.jsonl.gz"])
def test_a_truncated_gzip_names_the_line_its_data_stops_in(tmp_path: Path, name: str) -> None:
    """A .gz cut short stops the file at the line its data stops in (one past the lines that
    decompress whole), saying it looks cut off."""
    if name.endswith(".csv.gz"):
        text = "phone,name\n" + "".join(f"+1212555{i:04d},N{i}\n" for i in range(3000))
    else:
        text = "".join(f'{{"phone": "+1212555{i:04d}", "name": "N{i}"}}\n' for i in range(3000))
    whole = gzip.compress(text.encode())
    cut = whole[: len(whole) // 2]
    p = tmp_path / name
    p.write_bytes(cut)
    readable = zlib.decompressobj(wbits=31).decompress(cut)
    with pytest.raises(InputError) as err:
        read(p, keep=("name",))
    assert err.value.line == readable.count(b"\n") + 1
    assert err.value.line > 100
    assert "the file looks cut off" in err.value.message


_ROWS = "phone,name,note\n+12125550100,Ann,a\n+12125550101,Bo,b\n"


@pytest.mark.parametrize(
    "tail",
    ['+12125550102,Cy,"partial no', '+12125550102,Cy,"partial no\n', '+12125550102,Cy,"one\ntwo'],
)
@pytest.mark.parametrize("name", ["a.csv", "a.csv.gz"])
def test_a_quote_still_open_at_the_end_refuses_the_file(
    tmp_path: Path, tail: str, name: str
) -> None:
    """A last row whose quote never closes (with or without a line end after it) stops the
    file at that row's line as cut off, instead of sending the cut value."""
    data = (_ROWS + tail).encode()
    p = tmp_path / name
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(InputError) as err:
        read(p, keep=("name", "note"))
    assert err.value.line == 4
    assert err.value.message == (
        "ends inside a quoted field that starts at line 4: the file looks cut off: copy or "
        "export it again, whole"
    )


def test_a_header_whose_quote_never_closes_is_cut_off_at_line_1(tmp_path: Path) -> None:
    """A header that opens a quote and never closes it is refused as cut off at line 1."""
    p = tmp_path / "a.csv"
    p.write_text('phone,"name\n')
    with pytest.raises(InputError) as err:
        read(p)
    assert (err.value.line, "cut off" in err.value.message) == (1, True)


@pytest.mark.parametrize(("tail", "fields"), [("+1212555", 1), ("+12125550102,Cy", 2)])
def test_a_last_line_with_too_few_fields_and_no_line_end_refuses_the_file(
    tmp_path: Path, tail: str, fields: int
) -> None:
    """A last line with no line end and too few fields is a file cut off in that line: the
    file is refused, naming it, not one row rejected (or a short row read)."""
    p = tmp_path / "a.csv"
    p.write_text(_ROWS + tail)
    with pytest.raises(InputError) as err:
        read(p, keep=("name",))
    assert err.value.line == 4
    assert err.value.message == (
        f"its last line has {fields} field{'s' if fields > 1 else ''} where the header has 3, "
        "and no line end: the file looks cut off: copy or export it again, whole"
    )


def test_short_rows_with_a_line_end_and_whole_last_lines_without_one_still_read(
    tmp_path: Path,
) -> None:
    """A short row with its line end is still one rejected row, and a whole last row with
    no line end (as many exports write it) is read."""
    p = tmp_path / "a.csv"
    p.write_text(_ROWS + "+1212555\n+12125550102,Cy,c")
    rows = read(p, keep=("name",))
    assert rows[2] == RejectedRow(4, "+1212555", "missing column 'name'")
    assert rows[3] == Row(5, {"phone": "+12125550102", "name": "Cy"})


def test_a_jsonl_last_line_cut_off_refuses_the_file(tmp_path: Path) -> None:
    """A JSONL file whose last line is not JSON and has no line end is refused as cut off; a
    malformed line elsewhere is one rejected row, and a whole last line needs no line end."""
    good = '{"phone": "+12125550100"}\n{"phone": \n{"phone": "+12125550101"}'
    p = tmp_path / "a.jsonl"
    p.write_text(good)
    rows = read(p)
    assert [r.line for r in rows] == [1, 2, 3]
    assert isinstance(rows[1], RejectedRow)
    assert rows[2] == Row(3, {"phone": "+12125550101"})
    p.write_text(good + '\n{"phone": "+1212555010')
    with pytest.raises(InputError) as err:
        read(p)
    assert err.value.line == 4
    assert err.value.message == (
        "its last line is not valid JSON and has no line end: the file looks cut off: copy or "
        "export it again, whole"
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "no such file"),
        ("empty.csv", b"", "is empty"),
        ("bin.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary file"),
        ("nophone.csv", b"name,email\nA,a@x\n", "no 'phone' column"),
        ("x.xlsx", b"phone\n", "unknown input format"),
        ("nophone.jsonl", b'{"tel": "+12125550100"}\n', "no record has a 'phone' field"),
        ("bad.csv.gz", b"not gzip at all", "cannot be read"),
    ],
)
def test_whole_file_problems_are_one_line_input_errors(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    """A file that cannot be used at all raises InputError naming the file, before any row."""
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError) as info:
        read(p)
    assert message in str(info.value)
    assert str(p) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-16-le"])
@pytest.mark.parametrize("name", ["a.csv", "a.csv.gz"])
def test_a_utf16_file_is_named_as_such_with_how_to_save_it(
    tmp_path: Path, codec: str, name: str
) -> None:
    """Excel's "Unicode Text" (UTF-16, with a byte order mark or without) is refused in one
    line saying it is UTF-16 and how to save it as CSV UTF-8, not as "a binary file"."""
    text = "phone\tname\r\n+12125550100\tZoë\r\n"
    data = text.encode(codec)
    if codec == "utf-16-be":
        data = b"\xfe\xff" + data  # with its mark; utf-16-le is left without one
    p = tmp_path / name
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(InputError) as err:
        read(p)
    assert str(err.value) == (
        f'{p}: is UTF-16 text (Excel\'s "Unicode Text"), not utf-8: save it from Excel as '
        '"CSV UTF-8 (Comma delimited)" and run again'
    )


@pytest.mark.parametrize("name", ["a.jsonl", "a.ndjson.gz"])
def test_a_utf16_or_binary_jsonl_file_gets_a_programs_advice(tmp_path: Path, name: str) -> None:
    """A JSONL file in UTF-16 (Windows PowerShell's ``>``) or holding a NUL byte is refused in
    one line with advice for the program that wrote it, not for a spreadsheet."""
    p = tmp_path / name
    wrap = gzip.compress if name.endswith(".gz") else bytes
    p.write_bytes(wrap(b"\xff\xfe" + '{"phone": "+12125550100"}\r\n'.encode("utf-16-le")))
    with pytest.raises(InputError) as err:
        read(p)
    assert str(err.value) == (
        f"{p}: is UTF-16 text, not utf-8: write it as UTF-8 (Windows PowerShell's > writes "
        "UTF-16; Out-File -Encoding utf8 does not) and run again"
    )
    p.write_bytes(wrap(b'{"phone": "+12125550100"}\n{"phone": "+1212\x00"}\n'))
    with pytest.raises(InputError) as err:
        read(p)
    assert "spreadsheet" not in str(err.value)
    assert str(err.value).endswith(
        "(it holds a NUL byte): the program that wrote it wrote something other than text, "
        "or it is damaged"
    )


def test_a_nul_byte_names_its_line_and_what_to_do(tmp_path: Path) -> None:
    """A NUL byte near the top refuses the file as binary in one line, naming the NUL's line
    and saying to save a spreadsheet as CSV UTF-8."""
    p = tmp_path / "a.csv"
    p.write_bytes(b"phone,name\n+12125550100,A\x00nn\n+12125550101,Bob\n")
    with pytest.raises(InputError) as err:
        read(p)
    assert str(err.value) == (
        f"{p}:2: is a binary file, not utf-8 text (it holds a NUL byte): if it is a "
        'spreadsheet, save it as "CSV UTF-8 (Comma delimited)"; if not, it is damaged'
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("h.csv", "phone,name\n"),
        ("h2.csv", "phone,name\r\n\r\n  \n"),
        ("pad.csv", "phone,name,,\r\n,,,\r\n , ,,\r\n\x1a"),
        ("b.jsonl", "\n \n"),
    ],
)
def test_file_with_no_data_rows_is_an_error(tmp_path: Path, name: str, content: str) -> None:
    """A header with no rows (or only blank lines, a spreadsheet's rows of empty cells, a DOS
    end-of-file mark) is an InputError, not a silent empty run."""
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(InputError, match=r"no data rows|no records"):
        read(p)


def test_blank_lines_between_rows_are_skipped(tmp_path: Path) -> None:
    """Blank lines after the header and between rows are not rows, nor is a spreadsheet's
    row of no-break spaces (a cell that looks empty), at the end or anywhere else."""
    p = tmp_path / "a.csv"
    p.write_text("phone,name\n\n+12125550100,A\n\xa0,\xa0\n+12125550101,B\n\xa0,\n")
    assert read(p) == [Row(3, {"phone": "+12125550100"}), Row(5, {"phone": "+12125550101"})]


@pytest.mark.parametrize("header", ["phone,name", "phone,name,,"])
def test_a_spreadsheets_padding_is_not_a_row_or_a_field(tmp_path: Path, header: str) -> None:
    """Rows of empty cells are skipped as blank lines and empty cells past the header's last
    column are dropped (as many as the first row has), with or without empty names padding
    the header; a value past the header's last column still rejects its row."""
    p = tmp_path / "a.csv"
    p.write_text(
        f"{header}\r\n+12125550100,A,,\r\n,,,\r\n , ,\r\n+12125550101,B, ,\r\n"
        "+12125550102,C,,,x\r\n,,\r\n"
    )
    rows = read(p, keep=("name",))
    assert rows[:2] == [
        Row(2, {"phone": "+12125550100", "name": "A"}),
        Row(5, {"phone": "+12125550101", "name": "B"}),
    ]
    assert len(rows) == 3
    assert isinstance(rows[2], RejectedRow)
    assert (rows[2].line, rows[2].reason) == (
        6,
        f"row has 5 fields, header has {len(header.split(','))}",
    )


@pytest.mark.parametrize("header", ["name,home,mobile,note", "name,home,mobile,note,"])
@pytest.mark.parametrize("at", [0, 1])
def test_a_comma_not_quoted_before_an_empty_last_cell_rejects_its_row(
    tmp_path: Path, header: str, at: int
) -> None:
    """A row one field wider than the rows near the top, its last cell empty (a name with a
    comma written without quotes, the note empty: ``Smith, Bo,+1...,+1...,``), is rejected,
    first row or not, never read with its cells shifted (the home number sent as the
    mobile); padding as wide as the other rows' still reads."""
    p = tmp_path / "a.csv"
    pad = "," * (header.count(",") - 2)
    rows = [
        f"Ann,+12125550100,+12125550101{pad}\n",
        f"Cy,+12125550104,+12125550105{pad}\n",
    ]
    shifted = f"Smith, Bo,+12125550102,+12125550103{pad}"
    rows.insert(at, shifted + "\n")
    p.write_text(header + "\n" + "".join(rows))
    read_rows = read(p, phone="mobile", keep=("name",))
    assert [r.fields for r in read_rows if isinstance(r, Row)] == [
        {"mobile": "+12125550101", "name": "Ann"},
        {"mobile": "+12125550105", "name": "Cy"},
    ]
    rejected = [r for r in read_rows if isinstance(r, RejectedRow)]
    assert [(r.line, r.value) for r in rejected] == [(at + 2, shifted)]
    assert rejected[0].reason.startswith(f"row has {shifted.count(',') + 1} fields, header has")
    assert "a comma in a field not in quotes?" in rejected[0].reason
    assert rejected[0].reason.endswith("clear that column and save again)")


@pytest.mark.parametrize("tail", [",", ",,,"])
def test_rows_a_writer_pads_alike_past_the_header_all_read(tmp_path: Path, tail: str) -> None:
    """A writer that ends every row with the same empty cells past a header without them (a
    comma at the end of each line) has every row read, past the lines read ahead too."""
    p = tmp_path / "a.csv"
    p.write_text("phone,name\n" + "".join(f"+1212555{i:04d},N{i}{tail}\n" for i in range(120)))
    read_rows = read(p, keep=("name",))
    assert all(isinstance(r, Row) for r in read_rows)
    assert len(read_rows) == 120


@pytest.mark.parametrize(("line", "sep"), [("sep=,", ","), ("sep=;", ";"), ("SEP=,", ",")])
def test_excels_separator_line_above_the_header_is_named_not_taken_for_it(
    tmp_path: Path, line: str, sep: str
) -> None:
    """A first line ``sep=,`` (the hint some exports write for Excel) is refused naming it and
    saying to delete it, not "no 'phone' column (columns: sep=, )" with "set phone_column"."""
    p = tmp_path / "a.csv"
    p.write_text(f"{line}\r\nphone{sep}name\r\n+12125550100{sep}Ann\r\n")
    with pytest.raises(InputError) as err:
        read(p, keep=("name",))
    assert err.value.line == 1
    assert f"{line!r}" in err.value.message
    assert "delete that line" in err.value.message
    assert "phone_column" not in err.value.message
    assert ('set delimiter = ";"' in err.value.message) == (sep == ";")


def test_reader_keeps_only_needed_columns(tmp_path: Path) -> None:
    """Columns the job does not use are not kept in memory."""
    p = tmp_path / "a.jsonl"
    p.write_bytes(orjson.dumps({"phone": "+12125550100", "a": "1", "b": "2"}) + b"\n")
    assert read(p, keep=("b",)) == [Row(1, {"phone": "+12125550100", "b": "2"})]


def test_full_and_short_rows_keep_the_same_fields(tmp_path: Path) -> None:
    """Every column kept: a full row and a short one read alike."""
    p = tmp_path / "a.csv"
    p.write_text("phone,name,city\n+12125550100,A,X\n+12125550101,C\n+12125550102\n")
    with RowReader(p, "phone", ("city",), keep_all=True) as reader:
        rows = list(reader)
    assert rows[0] == Row(2, {"phone": "+12125550100", "name": "A", "city": "X"})
    assert rows[1] == RejectedRow(3, "+12125550101,C", "missing column 'city'")
    assert rows[2] == RejectedRow(4, "+12125550102", "missing column 'city'")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("phone,first_name,phone", "'phone' twice (columns 1 and 3)"),
        ("phone,name, name ,city", "'name' twice (columns 2 and 3)"),
    ],
)
def test_a_header_that_names_a_column_twice_is_refused(
    tmp_path: Path, header: str, message: str
) -> None:
    """A header naming a column twice (spaces aside) is refused at line 1, naming the column,
    instead of one of the two cells being sent."""
    p = tmp_path / "a.csv"
    p.write_text(f"{header}\n+12125550100,A,+12125550199,X\n")
    with pytest.raises(InputError) as err:
        read(p)
    assert str(err.value) == (f"{p}:1: the header names the column {message}: rename or remove one")


def test_lines_read_ahead_while_opening_come_first_in_order(tmp_path: Path) -> None:
    """Blank lines after the header (read ahead by the open check) keep every row's number."""
    p = tmp_path / "a.csv"
    p.write_text("phone,name\n\n\n+12125550100,A\n+12125550101,B\n")
    assert read(p, keep=("name",)) == [
        Row(4, {"phone": "+12125550100", "name": "A"}),
        Row(5, {"phone": "+12125550101", "name": "B"}),
    ]


_PIECES = [
    b"+12125550100,Al",
    b"+12125550101,Bo\r",
    b'+12125550102,"two\nlines"',
    b'+12125550103,"Smith, Jo"',
    b"",
    b"\xff\xfe,bad",
    b"+1212555" + b"9" * 30,
    b"+12125550104",
    b"+12125550105,x,y",
    b'+12125550106,"open',
    b"caf\xc3\xa9,ok",
]


@settings(max_examples=150, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(_PIECES), max_size=14),
    last_newline=st.booleans(),
    keep_all=st.booleans(),
)
def test_rows_do_not_depend_on_where_the_blocks_fall(
    tmp_path_factory: pytest.TempPathFactory,
    pieces: list[bytes],
    last_newline: bool,
    keep_all: bool,
) -> None:
    """Rows and rejections are the same whatever the block size, over-long lines included,
    and the same for the file gzip'd."""
    data = b"phone,name\n" + b"\n".join(pieces) + (b"\n" if last_newline else b"")
    folder = tmp_path_factory.mktemp("blocks")
    (folder / "a.csv").write_bytes(data)
    (folder / "a.csv.gz").write_bytes(gzip.compress(data))
    seen: list[list[Row | RejectedRow] | str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader_module, "MAX_LINE_BYTES", 24)  # the 38-byte piece is over-long
        for name in ("a.csv", "a.csv.gz"):
            for block in (1, 2, 5, 24, 25, 1 << 20):
                mp.setattr(reader_module, "BLOCK_BYTES", block)
                try:
                    with RowReader(folder / name, "phone", ("name",), keep_all=keep_all) as r:
                        seen.append(list(r))
                except InputError as exc:
                    seen.append(f"{exc.line}: {exc.message}")  # the path differs
    assert all(rows == seen[0] for rows in seen[1:])


def test_rows_of_one_to_seven_columns_keep_every_cell(tmp_path: Path) -> None:
    """A full row keeps each column's cell, for any number of columns."""
    for width in range(1, 8):
        names = ["phone", *(f"c{i}" for i in range(1, width))]
        p = tmp_path / f"w{width}.csv"
        cells = ["+12125550100", *(f"v{i}" for i in range(1, width))]
        p.write_text(",".join(names) + "\n" + ",".join(cells) + "\n")
        with RowReader(p, "phone", keep_all=True) as reader:
            assert list(reader) == [Row(2, dict(zip(names, cells, strict=True)))]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("dos.csv", b"phone,name\r\n+12125550100,Ann\r\n+12125550101,Bo\r\n\x1a"),
        (
            "dos.jsonl",
            b'{"phone":"+12125550100","name":"Ann"}\r\n'
            b'{"phone":"+12125550101","name":"Bo"}\r\n\x1a',
        ),
    ],
)
def test_a_dos_end_of_file_mark_after_the_last_line_is_nothing(
    tmp_path: Path, name: str, data: bytes
) -> None:
    """Ctrl-Z after the last line (old Windows tools write it; DOS ``copy a+b`` does) is
    neither a row nor a sign the file was cut off, in CSV or JSONL: every row is read."""
    p = tmp_path / name
    p.write_bytes(data)
    rows = read(p, keep=("name",))
    assert [r.fields["name"] for r in rows if isinstance(r, Row)] == ["Ann", "Bo"]
    assert not [r for r in rows if isinstance(r, RejectedRow)]


@pytest.mark.parametrize("ours", [True, False])
def test_only_a_failed_file_bulk_mms_wrote_has_its_guarding_quotes_read_off(
    tmp_path: Path, ours: bool
) -> None:
    """In a file with the bulk_mms_campaign column (report --failed-csv), a cell the writer
    guarded with a quote reads as the value it was; in any other file, as written."""
    p = tmp_path / "a.csv"
    last = "bulk_mms_campaign" if ours else "other"
    p.write_text(f"phone,'-x,name,{last}\n+12125550100,'-5,'''=y,c\n", encoding="utf-8")
    with RowReader(p, "phone", keep_all=True) as reader:
        rows = list(reader)
    written = {"phone": "+12125550100", "'-x": "'-5", "name": "'''=y", last: "c"}
    values = {"phone": "+12125550100", "-x": "-5", "name": "''=y", last: "c"}
    assert rows == [Row(2, values if ours else written)]


def test_a_jsonl_file_written_while_a_pass_that_expects_its_version_reads_it_stops(
    tmp_path: Path,
) -> None:
    """A pass that expects the version another pass read stops, naming the last line it gave,
    as soon as the file is written while it reads; one that expects nothing reads what is
    there."""
    p = tmp_path / "a.jsonl"
    p.write_text("".join(f'{{"phone": "+1212555{i:04d}"}}\n' for i in range(3000)))
    with RowReader(p, "phone") as first:
        stamp = first.stamp
    rows: list[Row | RejectedRow] = []

    def read_and_write_at_the_tenth() -> None:
        with RowReader(p, "phone", expect=stamp) as reader:
            for row in reader:
                rows.append(row)
                if len(rows) == 10:
                    with p.open("a") as f:
                        f.write('{"phone": "+12125559999"}\n')

    with pytest.raises(InputError) as err:
        read_and_write_at_the_tenth()
    assert "after line 10: nothing more is sent" in err.value.message
    assert len(rows) == 10  # nothing read after the write
    with RowReader(p, "phone") as anyone:
        assert len(list(anyone)) == 3001


def test_every_character_the_validator_reads_in_a_number_is_one_the_reader_sees_in_one() -> None:
    """The reader's test of a line inside a quoted field for a row's number accepts every
    character the validator reads in a number (its punctuation, and the dashes, minus sign,
    spaces and invisible characters it reads as ASCII): a row it would send is never taken
    for a note's text."""
    read_in_number = set(validate._ALLOWED_PUNCTUATION) | {
        chr(code) for code in validate._SEPARATORS
    }
    assert read_in_number  # the validator's own sets, as it reads them
    assert [c for c in sorted(read_in_number) if not spans._in_number(c)] == []
    assert normalize_phone("+1 206\u2212571\u22123909") == "+12065713909"
    assert spans._in_number("\u2212")


@pytest.mark.parametrize(
    "cell", ['"=""+12125550101"""', "tel:+12125550101", "\uff0b1 212 555 0101"]
)
def test_a_number_the_validator_reads_past_its_marks_is_a_number_to_the_reader(cell: str) -> None:
    """A line inside a quoted field whose phone cell is a number the validator sends (in
    Excel's text formula, a tel: URI, full-width) looks like a row to the reader, as the
    plain number does."""
    probe = spans.SpanCheck(Path("probe.csv"), 3, 0, lambda _: "")
    assert normalize_phone(next(csv.reader([cell]))[0]) == "+12125550101"
    assert probe._row_like(f"{cell},Bob,x\n")
    assert not probe._row_like("tel:,Bob,x\n")


@pytest.mark.parametrize("name", ["a.csv", "a.jsonl", "a.csv.gz"])
@pytest.mark.parametrize("cp1252_rows", [2, 20_000])
def test_a_cp1252_file_joined_to_a_utf8_one_stops_at_the_first_utf8_name(
    tmp_path: Path, name: str, cp1252_rows: int
) -> None:
    """A cp1252 export with a UTF-8 one appended, read as cp1252, stops at the first UTF-8
    name (past the first block too), saying so, instead of sending "JosÃ©"; the rows
    before it are read as they are."""
    numbers = [f"+1212555{i % 10_000:04d}" for i in range(cp1252_rows)]
    if ".jsonl" in name:
        first = "".join(f'{{"phone": "{n}", "name": "Zoë"}}\n' for n in numbers)
        then = (
            '{"phone": "+12125550101", "name": "Al"}\n{"phone": "+12125550102", "name": "José"}\n'
        )
    else:
        first = "phone,name\r\n" + "".join(f"{n},Zoë\r\n" for n in numbers)
        then = "+12125550101,Al\r\n+12125550102,José\r\n"
    data = first.encode("cp1252") + then.encode("utf-8")
    p = tmp_path / name
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    rows: list[Row | RejectedRow] = []
    with (
        pytest.raises(InputError) as err,
        RowReader(p, "phone", ("name",), encoding="cp1252") as reader,
    ):
        rows.extend(reader)
    assert err.value.line == cp1252_rows + (2 if ".jsonl" in name else 3)
    assert err.value.message == (
        "is cp1252 text up to here, then utf-8 ('é' would read as 'Ã©'): were files saved in "
        "two encodings joined into one? Save the whole file as cp1252, or as UTF-8 and set "
        'encoding = "utf-8" in the job'
    )
    assert {r.fields["name"] for r in rows if isinstance(r, Row)} == {"Zoë", "Al"}


@pytest.mark.parametrize("later", ["CAFÉ\u2019S", "JOSÉ\xa0", "Zoë\u201d"])
def test_a_cp1252_line_whose_bytes_happen_to_be_utf8_after_the_first_is_read_as_cp1252(
    tmp_path: Path, later: str
) -> None:
    """In a cp1252 file, a later line whose bytes are valid UTF-8 by chance ("É" then a curly
    quote reads as "ɒ") is read as cp1252, not refused: the UTF-8 it would be is no cp1252
    text."""
    p = tmp_path / "a.csv"
    p.write_bytes(f"phone,name\n+12125550100,Zoë\n+12125550101,{later}\n".encode("cp1252"))
    assert read(p, keep=("name",), encoding="cp1252") == [
        Row(2, {"phone": "+12125550100", "name": "Zoë"}),
        Row(3, {"phone": "+12125550101", "name": later}),
    ]


@pytest.mark.parametrize(
    "field",
    [
        r'"Say \"hi\" to Al"',  # MySQL's INTO OUTFILE ... ESCAPED BY '\\'
        r'"Al \"the pal\""',  # the escaped quote ends the value
        r'"6\"2"',  # one quote only
        r'"\"Al\", of course"',  # a comma after an escaped quote
    ],
)
@pytest.mark.parametrize("before", [1, 20_000])
def test_quotes_escaped_with_a_backslash_stop_the_file_naming_the_line(
    tmp_path: Path, field: str, before: int
) -> None:
    """A CSV export that escapes a quote with a backslash (PHP, MySQL) instead of doubling it
    stops at that line (past the first block too) with a one-line fix, instead of sending the
    field garbled."""
    p = tmp_path / "a.csv"
    rows = "".join(f"+1212555{i % 10_000:04d},Al\n" for i in range(before))
    p.write_text(f"phone,name\n{rows}+12125550100,{field}\n+12125550101,Bo\n")
    with pytest.raises(InputError) as err:
        read(p, keep=("name",))
    assert err.value.line == before + 2
    assert err.value.message.startswith(
        'writes a quote inside a quoted field as \\" (escaped with a backslash'
    )
    assert "\n" not in err.value.message


def test_backslashes_in_a_csv_file_that_doubles_its_quotes_are_read_as_written(
    tmp_path: Path,
) -> None:
    """A backslash before a quote that CSV reads whole (a field that ends in a backslash, a
    backslash then a doubled quote) is text, not an escape: the file is read."""
    p = tmp_path / "a.csv"
    p.write_text(
        "phone,name\n"
        '+12125550100,"C:\\dir\\"\n'
        '+12125550101,"Al \\""the pal"""\n'
        '+12125550102,"a note\n'
        'ending \\"\n'
    )
    assert [r.fields for r in read(p, keep=("name",)) if isinstance(r, Row)] == [
        {"phone": "+12125550100", "name": "C:\\dir\\"},
        {"phone": "+12125550101", "name": 'Al \\"the pal"'},
        {"phone": "+12125550102", "name": "a note\nending \\"},
    ]


def _with_long_line(tmp_path: Path, at: int, long: str) -> Path:
    """A CSV of 600 rows whose row ``at`` is ``long`` (over MAX_LINE_BYTES, and lines after)."""
    rows = [f"+1212555{i:04d},P{i},x" for i in range(600)]
    rows[at] = long
    p = tmp_path / "people.csv"
    p.write_text("phone,first,note\r\n" + "".join(f"{r}\r\n" for r in rows), encoding="utf-8")
    return p


@pytest.mark.parametrize(
    "long",
    [
        f'+12125550000,P 6" tall,{"z" * (MAX_LINE_BYTES + 10)}',  # a quote as text: even
        f'+12125550000,P 6" tall,"{"z" * (MAX_LINE_BYTES + 10)}\r\n+13125559001,P,x\r\nend"',
        f'+12125550000,P,"a note\r\n{"z" * (MAX_LINE_BYTES + 10)} end", 6" tall',
        f'+12125550000,P,"{"z" * (MAX_LINE_BYTES + 10)}"',  # a whole quoted field
    ],
    ids=["quote-as-text", "text-then-note", "closes-a-note", "quoted-field"],
)
@pytest.mark.parametrize("at", [3, 500], ids=["read-ahead", "streamed"])
def test_an_over_long_line_holding_a_quote_stops_the_file_naming_it(
    tmp_path: Path, at: int, long: str
) -> None:
    """An over-long line that holds a quote, whatever the quote does (text in a field not
    quoted, 6" tall; a note's opening or closing; a field quoted whole), stops the file
    naming that line, every row before it read: its text is not kept, so whether the lines
    after it are rows or a note's cannot be told, and no guess may text a row pasted into
    a note or swallow the rows after it."""
    path = _with_long_line(tmp_path, at, long)
    where = at + 2 + long[: long.index("zzz")].count("\n")  # the over-long line's number
    seen: list[Row | RejectedRow] = []
    with (
        pytest.raises(
            InputError,
            match=f"line {where} is longer than {MAX_LINE_BYTES} bytes and holds a quote",
        ) as stopped,
        RowReader(path, "phone") as reader,
    ):
        seen.extend(reader)
    assert stopped.value.line == where
    assert [r.line for r in seen if isinstance(r, Row)] == list(range(2, at + 2))
    assert not [r for r in seen if isinstance(r, RejectedRow)]


def _note_over_two_long_lines(tmp_path: Path, before: int, then: str) -> tuple[Path, int]:
    """A CSV (``note,phone``) of ``before`` rows, then a note over two over-long lines, the
    first holding no quote, the second one (``...",+1...``: the note closes there), then
    ``then``: a row whose note opens, holding a row pasted into it. With the over-long
    line's number."""
    z = "z" * (MAX_LINE_BYTES + 10)
    rows = "".join(f"N{i},+1212555{i:04d}\n" for i in range(before))
    p = tmp_path / "people.csv"
    p.write_text(
        f'note,phone\n{rows}"a note\n{z}\n{z}",+13125550001\n{then}'
        '+13125559009,pasted\nend",+13125550002\n',
        encoding="utf-8",
    )
    return p, before + 4


@pytest.mark.parametrize("then", ['"\n', '"x\ry\n'], ids=["note-opens", "csv-error"])
@pytest.mark.parametrize("before", [2, 70], ids=["read-ahead", "streamed"])
def test_an_over_long_line_holding_a_quote_stops_the_file_after_one_without(
    tmp_path: Path, before: int, then: str
) -> None:
    """An over-long line holding a quote stops the file also in a record that an over-long
    line without one, before it, rejects, or the csv module refuses (a carriage return
    alone): no row pasted into the note it may open is read."""
    path, where = _note_over_two_long_lines(tmp_path, before, then)
    seen: list[Row | RejectedRow] = []
    with (
        pytest.raises(InputError, match=f"line {where} is longer than .* holds a quote") as stop,
        RowReader(path, "phone") as reader,
    ):
        seen.extend(reader)
    assert stop.value.line == where
    assert [r.line for r in seen] == list(range(2, before + 2))


def test_an_over_long_line_holding_a_quote_in_a_header_over_lines_stops_the_file(
    tmp_path: Path,
) -> None:
    """An over-long line holding a quote in a header whose quoted name runs over lines stops
    the file: where the header ends, and which lines after it are rows, cannot be told."""
    p = tmp_path / "people.csv"
    z = "z" * (MAX_LINE_BYTES + 10)
    p.write_text(
        f'phone,"note\n{z}",tag\n+13125550001,"a note\n+13125559009,pasted\nend",t\n',
        encoding="utf-8",
    )
    with pytest.raises(InputError, match=r"line 2 is longer than .* holds a quote") as stop:
        RowReader(p, "phone").open()
    assert stop.value.line == 2


def test_an_over_long_first_jsonl_record_holding_a_carriage_return_is_rejected_alone(
    tmp_path: Path,
) -> None:
    """A JSONL file whose first record is over-long and holds a carriage return between its
    values (JSON's own whitespace) is no file of old Mac line ends: that record alone is
    rejected as too long, the records after it read."""
    p = tmp_path / "people.jsonl"
    z = "z" * (MAX_LINE_BYTES + 10)
    p.write_text(
        f'{{"phone": "+13125550001",\r"note": "{z}"}}\n{{"phone": "+13125550002"}}\n',
        encoding="utf-8",
        newline="",
    )
    with RowReader(p, "phone") as reader:
        seen = list(reader)
    assert [(type(r), r.line) for r in seen] == [(RejectedRow, 1), (Row, 2)]
    assert isinstance(seen[0], RejectedRow)
    assert "longer than" in seen[0].reason


@pytest.mark.parametrize(
    "text",
    [
        '[\n{"phone": "+12125550100"},\n{"phone": "+12125550101"}\n]\n',
        '[{"phone": "+12125550100"}, {"phone": "+12125550101"}]\n',
        '\ufeff\n{\n  "phone": "+12125550100"\n}\n{\n  "phone": "+12125550101"\n}\n',
    ],
)
def test_a_json_document_named_jsonl_is_refused_as_one(tmp_path: Path, text: str) -> None:
    """A JSON array, or objects pretty-printed over lines, given as JSONL is refused at its
    first line saying it is one JSON document, not rejected line by line as malformed JSON
    (an array's last record, whole on its line, read and sent alone)."""
    p = tmp_path / "a.jsonl"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as err:
        read(p)
    assert err.value.line == (2 if text.startswith("\ufeff") else 1)
    assert "is one JSON document" in err.value.message
    assert "not JSON Lines" in err.value.message


@pytest.mark.parametrize("header", ["name;phone;note, misc", "name\tphone\tnote, misc"])
def test_a_header_not_parted_by_commas_is_named_though_a_name_holds_a_comma(
    tmp_path: Path, header: str
) -> None:
    """A semicolon- or tab-separated header one of whose names holds a comma (so it reads as
    two columns) is still refused as separated by semicolons or tabs, not as lacking the phone
    column."""
    p = tmp_path / "a.csv"
    p.write_text(header + "\nAnn;+12125550100;x\n")
    with pytest.raises(InputError) as err:
        read(p)
    assert "its columns are separated by" in err.value.message
    assert "phone_column" not in err.value.message


def test_a_phone_column_named_in_another_case_is_pointed_to(tmp_path: Path) -> None:
    """A header whose phone column differs from the job's only in case (``Phone``) is refused
    naming the column it has."""
    p = tmp_path / "a.csv"
    p.write_text("Phone,name\n+12125550100,Ann\n")
    with pytest.raises(InputError) as err:
        read(p)
    assert "(column names are matched exactly: 'Phone'?)" in err.value.message
