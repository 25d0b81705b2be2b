"""A JSONL recipient file's records as rows: the JSONL half of :class:`~bulk_mms.reader.RowReader`.

The reader opens the file, checks it as a whole and reads its first line (:mod:`bulk_mms.reader`),
then hands it to :class:`JsonlRows`, which reads each line as one JSON object, its values as CSV
cells would hold them (:func:`_cell`). A line that is no JSON, not an object, gives a key twice,
has no phone field or an object or a list for a field the job needs, or is over-long, is a
:class:`~bulk_mms.models.RejectedRow`. The file as a whole is refused (:class:`InputError`) when
it is one JSON document (an array, objects pretty-printed), none of its first records has the
phone field, it has only blank lines, a line is not text in its encoding, its last line with no
line end is not JSON (cut short), or its one line holds carriage returns alone (an old Mac
export).

Its columns are the records' keys in the order first met, every record's once a pass has read
the file to its end (:attr:`JsonlRows.complete`).
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import orjson

from bulk_mms.decoding import LineDecoder, likely_encoding
from bulk_mms.errors import InputError
from bulk_mms.lines import (
    BLANK,
    JSONL_LONE_CR_WHY,
    MAC_JSONL,
    TOO_LONG,
    Lines,
    LongLine,
    line_start,
    other_case,
    unmarked,
)
from bulk_mms.models import SHOWN_CHARS, RejectedRow, Row
from bulk_mms.spans import CUT_OFF

#: The most lines read ahead, while the file is opened, for a record with the phone field.
_LOOK_AHEAD = 1000


class JsonlRows:
    """The records of one JSONL file, read for a :class:`~bulk_mms.reader.RowReader`, which
    opens the file and hands its lines over (:meth:`open`), then reads :meth:`rows`; a read
    that fails is the reader's to report."""

    __slots__ = (
        "_first",
        "_known",
        "_lines",
        "_text",
        "columns",
        "complete",
        "keep",
        "keep_all",
        "path",
        "phone",
    )

    #: The file's lines (set by :meth:`open`).
    _lines: Lines

    def __init__(
        self,
        path: Path,
        text: LineDecoder,
        first: deque[tuple[int, bytes | LongLine]],
        phone: str,
        keep: tuple[str, ...],
        *,
        keep_all: bool,
        columns: Sequence[str],
    ) -> None:
        self.path = path
        #: The reader's decoder: the file's encoding, and what a line that is not text stops.
        self._text = text
        #: The lines read ahead, given before any new line; the reader's, which holds the
        #: first line once the file is open.
        self._first = first
        #: The phone field's name, and the other fields to keep (as :class:`RowReader
        #: <bulk_mms.reader.RowReader>`'s).
        self.phone = phone
        self.keep = keep
        self.keep_all = keep_all
        #: The keys of the records read so far, in the order first met (after ``columns``,
        #: those a scan found): every record's once a pass has read the file to its end.
        self.columns = tuple(columns)
        self._known = set(self.columns)
        #: Whether :attr:`columns` are all the file's: once a pass has read it to its end, or
        #: at once when given ``columns``.
        self.complete = bool(columns)

    def open(self, lines: Lines) -> None:
        """Take the file's ``lines`` (its first read, in the lines read ahead) and check its
        start.

        Records are read ahead (at most :data:`_LOOK_AHEAD` lines, kept with the lines read
        ahead so that no line is consumed) to the first that has the phone field: an export
        that leaves out null keys may leave it out of a record or two, but a file none of whose
        first records has it names its phone another way. Their keys are the first columns.

        Raises:
            InputError: the file is one JSON document, has only blank lines, or none of its
                first records has the phone field.
        """
        self._lines = lines
        checked, first, begun = 0, 0, False
        while True:
            for lineno, raw in list(self._first)[checked:]:
                begun = begun or self._begins_records(lineno, raw)
                rec = self._parse_json(lineno, raw)
                if isinstance(rec, dict):
                    first = first or lineno
                    self._add_columns(rec)
                    if self.phone in rec:
                        return
            checked = len(self._first)
            item = self._lines.readline() if checked < _LOOK_AHEAD else None
            if item is None:
                if first:
                    which = (
                        "no record"
                        if checked < _LOOK_AHEAD
                        else f"none of its first {checked} lines"
                    )
                    case = other_case(self.phone, self.columns, "field")
                    raise InputError(
                        self.path,
                        f"{which} has a {self.phone!r} field{case} (fields: "
                        f"{', '.join(self.columns)}); set phone_column in the job",
                        line=first,
                    )
                if not any(type(raw) is LongLine or raw.strip(BLANK) for _, raw in self._first):
                    raise InputError(self.path, "has no records (only blank lines)")
                return  # nothing parses near the top: the rows are rejected one by one
            self._first.append(item)

    def _begins_records(self, lineno: int, raw: bytes | LongLine) -> bool:
        """Whether ``raw`` has content (more than blanks and a byte order mark); for the
        file's first such line, that it does not begin one JSON document instead of JSON
        Lines: open an array (``[``, ``[{"phone": ...}, ...]``) or an object alone on its line
        (pretty-printed), as no line of records does.

        Raises:
            InputError: naming that line.
        """
        head = line_start(raw).lstrip(b"\xef\xbb\xbf \t\r\n")
        if not head:
            return False
        if head.startswith(b"[") or head.rstrip() == b"{":
            raise InputError(
                self.path,
                "is one JSON document (an array, or objects over several lines), not JSON "
                'Lines: write one object a line ({"phone": "+1...", ...}), nothing '
                "around them (jq -c '.[]' does it for an array), and run again",
                line=lineno,
            )
        return True

    def _add_columns(self, rec: dict[str, object]) -> None:
        """Add the keys of ``rec`` that are not columns yet to :attr:`columns`."""
        if not self._known.issuperset(rec):
            self.columns += tuple(k for k in rec if k not in self._known)
            self._known.update(rec)

    def rows(self) -> Iterator[Row | RejectedRow]:
        """The file's rows, in input order, the lines read ahead while opening first; at the
        end, :attr:`complete` is set. Raises :class:`InputError` where the file stops being
        read; a read that fails raises as it is (``OSError``, ``EOFError``)."""
        wanted, first = (self.phone, *self.keep), self._first
        while (item := first.popleft() if first else self._lines.readline()) is not None:
            lineno, raw = item
            rec = self._parse_json(lineno, raw)
            if rec is None:
                continue
            if type(rec) is RejectedRow:
                yield rec
                continue
            if not self._known.issuperset(rec):
                self._add_columns(rec)
            row = self._json_row(lineno, rec, wanted)
            # a number that is not an integer, read as Python's float: read it as written
            if type(row) is Row and float in map(type, map(rec.get, row.fields)):
                written = _as_written(cast(bytes, raw), self._text.encoding)  # parsed: bytes
                row = row if written is None else self._json_row(lineno, written, wanted)
            yield row
        self.complete = True

    def _parse_json(
        self, lineno: int, raw: bytes | LongLine
    ) -> dict[str, object] | RejectedRow | None:
        """One JSONL line's object (None for a blank line), or the reason it is rejected. A
        UTF-8 byte order mark in front of any line is no part of it: exports joined into one
        file (``cat a.jsonl b.jsonl``) keep each one's."""
        encoding = self._text.encoding
        if type(raw) is LongLine:
            return RejectedRow(lineno, raw.shown(encoding), TOO_LONG)
        raw = unmarked(raw)
        if not raw.strip(BLANK):
            return None
        last = lineno == self._lines.unended
        text = self._text.json_text(lineno, raw, last=last)
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            obj = _python_written(text)
            if obj is None:
                return self._malformed(lineno, raw, exc, last=last)
        if not isinstance(obj, dict):
            return RejectedRow(
                lineno, raw[:SHOWN_CHARS].decode("utf-8", "replace").strip(), "not an object"
            )
        # orjson keeps the last of two values of a key: which one to send would be a guess
        if (twice := _repeated_key(raw, obj, encoding)) is not None:
            return RejectedRow(
                lineno,
                _cell(obj.get(self.phone))[:SHOWN_CHARS],
                f"the record gives the field {twice!r} twice: remove one",
            )
        return obj

    def _malformed(
        self, lineno: int, raw: bytes, exc: orjson.JSONDecodeError, *, last: bool
    ) -> RejectedRow:
        """The rejection of a line that is no JSON, or the :class:`InputError` that stops the
        file at it (not text in its encoding, an old Mac export, a last line cut off)."""
        if self._text.encoding == "utf-8" and likely_encoding(raw) != "utf-8":
            raise self._text.not_text(lineno, raw, last=last) from None
        lone_cr = b"\r" in raw.rstrip(b"\r\n")  # JSON's own whitespace: no error alone
        if lone_cr and lineno == 1 and not raw.endswith(b"\n"):
            raise InputError(self.path, MAC_JSONL, line=lineno) from None
        if not raw.endswith(b"\n"):  # only the file's last line can end without one
            raise InputError(
                self.path,
                f"its last line is not valid JSON and has no line end: {CUT_OFF}",
                line=lineno,
            ) from None
        # a carriage return shown as \r, never sent to a terminal (as a CSV row's)
        value = raw[:SHOWN_CHARS].decode("utf-8", "replace").strip().replace("\r", "\\r")
        why = JSONL_LONE_CR_WHY if lone_cr else _where(exc)
        return RejectedRow(lineno, value, f"malformed JSON: {why}")

    def _json_row(
        self, lineno: int, rec: dict[str, object], wanted: tuple[str, ...]
    ) -> Row | RejectedRow:
        """A JSONL object as a row, its values as CSV cells would hold them (:func:`_cell`):
        null, or a key the record leaves out, is an empty value, as an empty cell is (a
        column some other record has: the columns are every record's keys). Rejected when
        the phone field is absent, or a field the job needs is an object or a list (it would
        go into a message as JSON)."""
        fields: dict[str, str] = {}
        for name in wanted:
            value = rec.get(name)
            if isinstance(value, str):
                fields[name] = value
                continue
            if value is None and name not in rec and name == self.phone:
                why = f"missing field {name!r}{other_case(name, rec, 'field')}"
            elif isinstance(value, dict | list):
                why = f"field {name!r} is not a text value (an object or a list)"
            else:
                fields[name] = _cell(value)
                continue
            return RejectedRow(lineno, _cell(rec.get(self.phone))[:SHOWN_CHARS], why)
        if self.keep_all:
            for name in self.columns:
                if name not in fields:
                    fields[name] = _cell(rec.get(name))
        return Row(lineno, fields)


def _repeated_key(raw: bytes, obj: dict[str, object], encoding: str) -> str | None:
    """The first key a JSONL line (``obj``, as orjson parsed it) gives twice at its top
    level, however it is written (``"a"``, ``"\\u0061"``); None when it gives each once. A
    repeat inside a nested value is no column's, and no matter.

    Parsed again only when two cheap looks cannot tell: a line with no more colons than
    ``obj`` has keys gives none twice (each key has its colon), nor one without a backslash
    (every key written as it is) in which each key, quoted, is found once."""
    if raw.count(b":") <= len(obj):
        return None
    if b"\\" not in raw:
        with contextlib.suppress(UnicodeEncodeError):
            if all(raw.count(b'"%s"' % key.encode(encoding)) == 1 for key in obj):
                return None
    repeats: list[str | None] = []

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        seen: set[str] = set()
        twice = None
        for key, _ in items:
            if key in seen:
                twice = twice or key
            seen.add(key)
        repeats.append(twice)
        return dict(items)

    try:
        json.loads(raw.decode(encoding).lstrip("\ufeff"), object_pairs_hook=pairs)
    except RecursionError:  # nested deeper than Python's parser goes: no key is looked at
        return None
    return repeats[-1] if repeats else None  # the outer object's hook runs last


def _where(exc: orjson.JSONDecodeError) -> str:
    """What the parser met in a JSONL line, and at which column of it: the parser's own
    "line 2 column 1" counts the line's end as a line of its own, which the report, naming
    the file's line, would contradict."""
    end = len(exc.doc.rstrip("\r\n"))
    return (
        f"{exc.msg} at column {exc.pos + 1}" if exc.pos < end else f"{exc.msg} after column {end}"
    )


#: What Python's json module writes for a float that is not finite (``NaN``, ``Infinity``,
#: ``-Infinity``; no JSON has them), as a CSV cell would hold it: a data frame's missing value
#: is ``NaN`` there and an empty cell in its CSV.
_NOT_FINITE: dict[str, str | None] = {"NaN": None, "Infinity": "Infinity", "-Infinity": "-Infinity"}


def _python_written(text: str | bytes) -> dict[str, object] | None:
    """A JSONL line orjson refused, read as Python's json module reads it, when that is all
    that kept it from being read: an object holding ``NaN`` or an ``(-)Infinity``, which
    Python's json writes for a float that is not finite (:data:`_NOT_FINITE`), or a number
    past a float's range (``1e999``, which orjson calls infinity), every number that is not an
    integer as written (as :func:`_as_written` reads one). None for any other line (not JSON
    to Python either, not an object, not UTF-8, a string orjson refuses, such as half a
    surrogate pair): orjson's reason stands."""
    try:
        obj = json.loads(
            text if isinstance(text, str) else text.decode(),  # UTF-8 alone, as orjson reads
            parse_float=str,
            parse_constant=_NOT_FINITE.__getitem__,
        )
        orjson.dumps(obj)  # every string one orjson takes (no lone surrogate)
    except (ValueError, RecursionError, TypeError):
        return None
    return cast(dict[str, object], obj) if isinstance(obj, dict) else None


def _as_written(raw: bytes, encoding: str) -> dict[str, object] | None:
    """A JSONL line (one orjson parsed to an object) parsed again with each number that is not
    an integer kept as written (``25.50``, ``1e3``): what a CSV cell would hold, where orjson
    gives Python's float (``25.5``, ``1000.0``). Only for the rare line that has one. None for
    a line nested deeper than Python's parser goes (orjson's goes further): orjson's reading
    stands."""
    text = raw.decode(encoding).lstrip("\ufeff")
    try:
        return cast(dict[str, object], json.loads(text, parse_float=str))
    except RecursionError:
        return None


def _cell(value: object) -> str:
    """A JSON value as the string a CSV cell would hold: null empty, true and false as
    written, a number as Python writes it (one that is not an integer was read as written:
    :func:`_as_written`), an object or a list as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()
