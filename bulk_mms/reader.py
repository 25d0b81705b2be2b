"""Stream recipient rows from CSV or JSONL (optionally gzip'd) without loading the file.

The file is read as bytes, a block or a line at a time (:mod:`bulk_mms.lines`), decoded
(:mod:`bulk_mms.decoding`), then read as rows here. An enormous line spoils only its own row:
it becomes a :class:`RejectedRow`, its value the line's first characters. Problems with the
file as a whole raise :class:`InputError` naming the line: missing, unreadable, binary or
UTF-16 (named as such, with how to save it as UTF-8), empty, no phone column, a column the
header names twice, a JSONL file that is one JSON document (an array, objects pretty-printed),
bytes that are not text in the job's encoding or that are UTF-8 under another encoding (with
the encoding they look like: :mod:`bulk_mms.decoding`), lines that end
in a carriage return alone, a quoted field over lines that may be a quote left open, which
would swallow the rows after it (each record over lines is judged by :mod:`bulk_mms.spans`),
a file cut short (a compressed file that ends early, a quote still open at the end, a last
line with no line end that has the wrong number of fields, is not JSON or ends inside a
character; a whole last line needs no line end). A run reads the whole file once before it
sends (:mod:`bulk_mms.scan`), so these stop it with nothing sent.

A file that starts with a UTF-8 byte order mark is read as UTF-8, whatever encoding was asked.
A CSV file's columns are separated by the job's ``delimiter`` (a comma unless it says another):
its quoting, its rows' widths and the checks of its quoted fields all go by it; a file of failed
recipients bulk-mms wrote is read with the separator its header shows, whatever was asked
(:func:`~bulk_mms.csvfile.own_delimiter`).

The CSV rows are read here; a JSONL file, once open, is handed to :mod:`bulk_mms.jsonl_rows`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import gzip
import hashlib
import io
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from itertools import chain, count
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import IO, Self, cast

import msgspec

from bulk_mms.csvfile import (
    CAMPAIGN_COLUMN,
    DELIMITERS,
    own_delimiter,
    read_cell,
    toml_string,
    unnamed,
)
from bulk_mms.decoding import LineDecoder, whole_encoding
from bulk_mms.errors import InputError
from bulk_mms.jsonl_rows import JsonlRows
from bulk_mms.lines import (
    BLANK,
    BLOCK_BYTES,
    BOM,
    CSV_LONE_CR,
    CSV_LONE_CR_WHY,
    MAC_CSV,
    MAX_LINE_BYTES,
    TOO_LONG,
    Lines,
    LongLine,
    line_start,
    old_mac_ends,
    other_case,
    unmarked,
)
from bulk_mms.models import SHOWN_CHARS, RejectedRow, Row
from bulk_mms.spans import CUT_OFF, MAX_RECORD_LINES, SpanCheck, cut_off, unpadded

# BLOCK_BYTES and MAX_LINE_BYTES are bulk_mms.lines' sizes, MAX_RECORD_LINES bulk_mms.spans'
# bound, re-exported: callers read them from here, and a reader reads its file with the sizes
# found here when it opens it.
__all__ = [
    "BLOCK_BYTES",
    "MAX_LINE_BYTES",
    "MAX_RECORD_LINES",
    "FileStamp",
    "Row",
    "RowReader",
    "detect_format",
    "file_encoding",
    "fingerprint",
    "open_input",
]

#: The lines after a CSV header read ahead to learn how wide its writer pads rows
#: (:meth:`RowReader._padding`).
PAD_LINES = 50
#: Fed to the csv module after the file's last line: a blank line, unless a quote is still
#: open, which then runs into it (the record's last line is past the file's).
_END = ("\n",)
_CsvReader = type(csv.reader([]))
#: What a cell may hold and still be empty: blanks (a spreadsheet's no-break space among them),
#: and the DOS end-of-file mark (Ctrl-Z) that old Windows tools leave after the last line.
_NOTHING = " \t\r\n\x1a\xa0"
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
#: What the csv module says of a field larger than its limit (``csv.field_size_limit``).
_FIELD_LIMIT_SAID = "field larger than field limit"


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def open_input(path: Path) -> IO[bytes]:
    """Open a job's input for reading bytes: the only way bulk_mms opens one.

    A run reads its input several times (hash, count, check, send), so only a regular file
    will do: a FIFO gives its rows to one pass only, and opening it waits for a writer.

    Raises:
        InputError: the path is missing, unreadable, a directory, or not a regular file
            (a FIFO, a device, a socket); checked with ``stat`` before anything opens it.
    """
    try:
        _check_regular(path, os.stat(path).st_mode)
        # Non-blocking, so a path swapped for a FIFO since the stat cannot hang the open;
        # the descriptor's own mode is checked again below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise InputError(
                path, f"cannot be opened: {exc.strerror}: raise ulimit -n or lower --concurrency"
            ) from None
        raise InputError(path, exc.strerror or str(exc)) from None
    try:
        _check_regular(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_regular(path: Path, mode: int) -> None:
    """Raise the one-line :class:`InputError` for a ``st_mode`` that is not a regular file."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise InputError(path, "is a directory")
    kind = next((name for test, name in _KINDS if test(mode)), "not a file")
    raise InputError(
        path,
        f"is not a regular file ({kind}): give bulk-mms a file; it reads the input more than once",
    )


class FileStamp(msgspec.Struct, frozen=True):
    """Which version of an input a pass read: what a run compares to be sure it sends from
    the bytes its scan checked. Any write to the file changes its modification time (and
    mostly its size), and so does another file put in its place, written at another moment.
    (Not the inode: some network filesystems do not keep it from one open to the next.)"""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_size, st.st_mtime_ns)


def detect_format(path: Path) -> tuple[str, bool]:
    """Return ``(format, gzipped)`` from the file name: ``.csv``, ``.jsonl``, each maybe ``.gz``."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    if gz:
        suffixes = suffixes[:-1]
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise InputError(path, "unknown input format: name it .csv or .jsonl (optionally .gz)")
    return fmt, gz


def separator(path: Path, delimiter: str) -> str:
    """What separates the columns of the input at ``path`` under a job's ``delimiter``: it,
    for a CSV file; a comma for JSONL, which has none (the ledger's header records it so)."""
    return delimiter if detect_format(path)[0] == "csv" else ","


class RowReader:
    """Iterate the rows of one recipient file, keeping only the columns the job needs.

    Use as a context manager; :meth:`open` checks the file and reads its header, so every
    whole-file problem surfaces before the first row is returned.
    """

    __slots__ = (
        "_bad",
        "_columns",
        "_complete",
        "_csv",
        "_expect",
        "_file",
        "_first",
        "_jsonl",
        "_ours",
        "_pad",
        "_raw",
        "_recent",
        "_src",
        "_streaming",
        "delimiter",
        "format",
        "gzipped",
        "keep",
        "keep_all",
        "path",
        "phone",
        "stamp",
        "text",
    )

    def __init__(
        self,
        path: str | Path,
        phone_column: str,
        keep: Sequence[str] = (),
        *,
        keep_all: bool = False,
        encoding: str = "utf-8",
        delimiter: str = ",",
        expect: FileStamp | None = None,
        columns: Sequence[str] = (),
    ) -> None:
        self.path = Path(path)
        #: The file as it was when another pass checked it (:class:`FileStamp`): this pass
        #: refuses to read it as anything else (:meth:`_check_unchanged`).
        self._expect = expect
        #: The file as it was opened (set by :meth:`open`).
        self.stamp: FileStamp | None = None
        #: The phone column's name.
        self.phone = phone_column
        #: Other columns to keep on each row (templates, group_by): a row without one is
        #: rejected.
        self.keep = tuple(c for c in dict.fromkeys(keep) if c != phone_column)
        #: Keep every other column too, where the row has it (for the ledger's record of the
        #: input rows); a row without one is not rejected for it.
        self.keep_all = keep_all
        # a device or FIFO is named as such, whatever its name says about the format
        with contextlib.suppress(OSError):
            _check_regular(self.path, os.stat(self.path).st_mode)
        self.format, self.gzipped = detect_format(self.path)
        #: The file's lines as text in the job's encoding (:attr:`encoding`).
        self.text = LineDecoder(self.path, encoding, table=self.format == "csv")
        #: What separates a CSV file's columns (:data:`~bulk_mms.csvfile.DELIMITERS`): the
        #: one asked for (a comma for JSONL); once the file is open, a file of failed
        #: recipients' own. The files written of its rows (``--rejected-csv``, the failed
        #: file) take it too.
        self.delimiter = separator(self.path, delimiter)
        # a CSV file's header (set by open), and whether it is read or ``columns`` given
        self._columns: tuple[str, ...] = ()
        self._complete = bool(columns)
        self._file: IO[bytes] | None = None
        self._raw: IO[bytes] | None = None  # the file under a GzipFile, closed with it
        # line number -> why its row is rejected (CSV only): an over-long line (its record is
        # rejected for it), or the error that stops the file (the decoder's, or an over-long
        # line's that holds a quote: _over_long)
        self._bad: dict[int, LongLine | InputError] = {}
        # the file's lines (set by open): how many are read so far (a read that fails, fails
        # on the next one), and which one ends the file with no line end
        self._src: Lines | None = None
        # lines read ahead while checking the file, handed out again before any new line
        self._first: deque[tuple[int, bytes | LongLine]] = deque()
        # a JSONL file's records, and its columns (None for CSV)
        self._jsonl: JsonlRows | None = None
        if self.format == "jsonl":
            self._jsonl = JsonlRows(
                self.path,
                self.text,
                self._first,
                phone_column,
                self.keep,
                keep_all=keep_all,
                columns=columns,
            )
        # the batches of decoded lines the csv module reads from, each with how many lines
        # came before it: the one it reads and those before it that hold the last
        # MAX_RECORD_LINES lines, the text of a line it refuses (_said) or of a record over
        # several lines (SpanCheck.line)
        self._recent: deque[tuple[int, Sequence[str]]] = deque()
        # set once the file is open: from then on, CSV lines are read a block at a time
        self._streaming = False
        self._csv: Iterator[list[str]] | None = None
        # the fields a CSV row may have, empty ones padding it past the header (set once the
        # header is read: :meth:`_padding`)
        self._pad = 0
        # a file of failed recipients bulk-mms wrote (report --failed-csv): its cells are
        # read as the values they were written from (csvfile.read_cell)
        self._ours = False

    @property
    def _lines(self) -> Lines:
        """The file's lines, once it is open."""
        assert self._src is not None
        return self._src

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names: the CSV header; for JSONL, the keys of the records read so far in the
        order first met (after ``columns``, those a scan found), every record's once a pass has
        read the file to its end (:attr:`complete`)."""
        return self._columns if self._jsonl is None else self._jsonl.columns

    @property
    def complete(self) -> bool:
        """Whether :attr:`columns` are all the file's: a CSV file's once it is open; a JSONL
        file's once a pass has read it to its end, or at once when given ``columns``."""
        return self._complete if self._jsonl is None else self._jsonl.complete

    @property
    def encoding(self) -> str:
        """The file's text encoding (an ASCII-compatible codec's name): once the file is open,
        ``utf-8`` for one that starts with a UTF-8 byte order mark, whatever was asked."""
        return self.text.encoding

    # -- opening -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        if self._file is None:
            self.open()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        """Open the file and check it as a whole. Raises :class:`InputError`, also when the
        file is not the one ``expect`` stamps (it was written or replaced since)."""
        raw = open_input(self.path)
        self._raw = raw
        self._file = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")) if self.gzipped else raw
        check = self._check_unchanged if self._expect is not None else None
        self._src = Lines(self._file, check, limit=MAX_LINE_BYTES, block=BLOCK_BYTES)
        try:
            self.stamp = FileStamp.of(os.fstat(raw.fileno()))
            self._check_unchanged()
            self._check_and_read_header()
        except (EOFError, OSError, gzip.BadGzipFile) as exc:
            # past the first line: the lines the checks read ahead (_peek_content, _padding)
            self.close()
            raise self._read_failed(exc) from None
        except BaseException:
            self.close()
            raise

    def _check_and_read_header(self) -> None:
        assert self._file is not None
        try:
            head = self._file.peek(4096) if hasattr(self._file, "peek") else b""
            first = self._lines.readline()
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError(self.path, f"cannot be read: {exc}") from None
        if first is None:
            raise InputError(self.path, "is empty")
        if (refused := self.text.not_a_text_file(head or line_start(first[1]))) is not None:
            raise refused
        line = first[1]
        if type(line) is LongLine and (mac := old_mac_ends(self.path, head, self.format)):
            raise mac
        if line_start(line).startswith(BOM):
            self.text.marked_utf8()
        if self.format == "csv" and type(line) is bytes:
            self.delimiter = own_delimiter(line) or self.delimiter
        self._first.append(first)
        if self._jsonl is None:
            self._open_csv()
        else:
            self._jsonl.open(self._lines)

    def _check_unchanged(self) -> None:
        """Only when this pass ``expect`` s a version of the file (the one a scan checked):
        raise :class:`InputError` when the file opened is not that version, or when, once
        lines are read, its size or modification time changes (it is written while it is
        read). The lines a pass gives are the ones that were checked, or it stops."""
        if self._expect is None or self._raw is None:
            return
        now = FileStamp.of(os.fstat(self._raw.fileno()))
        lineno = self._lines.lineno
        if not lineno and now != self._expect:
            what = "since it was checked before the run: nothing was sent"
        elif now != self.stamp:
            what = f"while it was sent from, after line {lineno}: nothing more is sent"
        else:
            return
        raise InputError(
            self.path,
            f"was written or replaced {what} (its size or time changed). Send a file "
            "that nothing writes meanwhile: write the export to another name, then rename it "
            "into place",
        )

    def close(self) -> None:
        for f in (self._file, self._raw):
            if f is not None:
                f.close()
        self._file = self._raw = None

    def _peek_content(self) -> bool:
        """Read ahead to the next line with content, keeping what was read; False at end of
        file. A line of blanks, separators (a spreadsheet's row of empty cells) or a DOS
        end-of-file mark has none; an over-long line has."""
        blank = BLANK + self.delimiter.encode()
        if any(_has_content(raw, blank) for _, raw in self._first):
            return True
        while (item := self._lines.readline()) is not None:
            self._first.append(item)
            if _has_content(item[1], blank):
                return True
        return False

    # -- CSV -----------------------------------------------------------------------------

    def _text_lines(self) -> Iterator[Sequence[str]]:
        """Decoded lines for the csv module, in batches; an undecodable or over-long line
        becomes a blank one, its reason kept in ``_bad`` under its number. :data:`_END` follows
        the last line.

        While the file is being opened, lines come one at a time (the header checks read
        ahead, so the file must be where they left it), the lines read ahead first. Once it is
        open, a block at a time (:meth:`_blocks`): the hot path of a large file.
        """
        first = self._first
        while first or not self._streaming:  # ``first`` can grow while this waits
            item = first.popleft() if first else self._lines.readline()
            if item is None:
                break
            yield [self._decoded(*item)]
        else:
            yield from self._blocks()
        yield _END

    def _decoded(self, lineno: int, line: bytes | LongLine) -> str:
        """One line as text, or a blank line with its reason in ``_bad``."""
        if type(line) is LongLine:
            return self._over_long(line)
        if lineno == 1:
            line = unmarked(line)
        text = self.text.line(lineno, line, last=lineno == self._lines.unended)
        if isinstance(text, InputError):
            # raised when the rows reach this line, so the rows before it come first
            self._bad[lineno] = text
            return "\n"
        if '\\"' in text and _escaped_quotes(text, self.delimiter):
            self._bad[lineno] = InputError(self.path, _ESCAPED_QUOTES, line=lineno)
            return "\n"
        return text

    def _over_long(self, line: LongLine) -> str:
        """What the csv module reads for an over-long line: a blank line, its reason kept in
        ``_bad``. A line without a quote opens or closes no quoted field, so its row alone is
        rejected (inside a quoted note, the blank keeps the note open, as the line did). One
        holding a quote stops the file when the rows reach it: whether that quote opens a
        field, closes one or is text cannot be told without the line's text, which is not
        kept, and a wrong guess reads a note's lines as rows (a row pasted into it, texted) or
        swallows the rows after it."""
        lineno = line.lineno
        self._bad[lineno] = (
            InputError(
                self.path,
                f"line {lineno} is longer than {self._lines.limit} bytes and holds a quote: "
                "which of the lines after it are rows cannot be told; shorten that line, and run "
                "again",
                line=lineno,
            )
            if line.quoted
            else line
        )
        return "\n"

    def _blocks(self) -> Iterator[list[str]]:
        """The rest of the file's lines as text, a block of them at a time (:meth:`Lines.blocks
        <bulk_mms.lines.Lines.blocks>`): an over-long line as :meth:`_over_long`'s blank."""
        for lineno, lines in self._lines.blocks():
            if type(lines) is LongLine:
                yield [self._over_long(lines)]
            else:
                yield self._lines_of(lineno, lines)

    def _lines_of(self, lineno: int, data: bytes) -> list[str]:
        """``data``'s lines (whole lines, each with its line feed but maybe the file's last,
        the first numbered ``lineno``), decoded: in one call when the block decodes as a whole
        (:meth:`LineDecoder.block <bulk_mms.decoding.LineDecoder.block>`) and holds no quote
        after a backslash (:func:`_escaped_quotes`), else one line at a time
        (:meth:`_decoded`)."""
        if (text := self.text.block(data)) is not None and '\\"' not in text:
            return io.StringIO(text, newline="\n").readlines()
        return [self._decoded(n, line) for n, line in enumerate(io.BytesIO(data), lineno)]

    def _open_csv(self) -> None:
        lines = chain.from_iterable(self._kept(self._text_lines()))
        self._csv = csv.reader(lines, strict=False, delimiter=self.delimiter)
        try:
            header = next(self._csv, None)
        except csv.Error as exc:
            if CSV_LONE_CR in str(exc):
                raise InputError(self.path, MAC_CSV, line=1) from None
            raise InputError(self.path, f"bad CSV header: {exc}", line=1) from None
        if self._bad and self._refused(1, self._csv.line_num) is not None:
            raise InputError(self.path, f"bad header: {TOO_LONG}", line=1)
        if self._csv.line_num > self._lines.lineno:  # a quote open to the end (ran into _END)
            raise cut_off(self.path, 1)
        if not header or not any(h.strip() for h in header):
            raise InputError(self.path, "has no header row", line=1)
        self._columns = tuple(h.strip() for h in header)
        if CAMPAIGN_COLUMN in self._columns:
            self._ours = True
            self._columns = tuple(read_cell(h) for h in self._columns)
        blank = count()  # each column without a name apart: one value in each
        self._columns = tuple(h or unnamed(next(blank)) for h in self._columns)
        self._refuse_repeats()
        self._complete = True
        if self.phone not in self.columns:
            raise InputError(self.path, self._no_phone_column(), line=1)
        if not self._peek_content():
            raise InputError(self.path, "has a header but no data rows")
        self._pad = self._padding()
        self._streaming = True

    def _padding(self) -> int:
        """How many fields a row may have, the empty ones past the header padding: the fewest
        that a row of the first :data:`PAD_LINES` lines (read ahead, kept) has, at least the
        header's. A writer pads every row alike (a spreadsheet its range, another tool a comma
        at the end of each line); a comma not quoted in a field makes one row wider than the
        others, whose empty last cell is no padding. (A comma here: the file's separator,
        :attr:`delimiter`.)"""
        while len(self._first) < PAD_LINES and (item := self._lines.readline()) is not None:
            self._first.append(item)
        whole = len(self._first) < PAD_LINES  # read to the file's end: no record cut short
        # an over-long line is read as the csv module reads it in the rows: a blank one
        lines = [
            raw.decode(self.encoding, "replace") if type(raw) is bytes else ""
            for _, raw in self._first
        ]
        reader = csv.reader(lines, strict=False, delimiter=self.delimiter)
        widths: list[int] = []
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error:
                continue  # a lone carriage return: the row is judged when it is read
            if any(cell.strip(_NOTHING) for cell in rec):
                widths.append(len(rec))
        if not whole:
            widths = widths[:-1]  # the last may be a record over lines cut by the sample
        width = len(self.columns)
        return min((n for n in widths if n >= width), default=width)

    def _no_phone_column(self) -> str:
        """Why a CSV header without the phone column is refused: a header that holds it
        between other separators than the job's (:data:`~bulk_mms.csvfile.DELIMITERS`) is a
        file separated by those (Excel's CSV where the decimal mark is a comma, its
        tab-separated "Text"), and is named so, with the setting that reads it."""
        ours = self.delimiter
        hint = ours.join(self.columns)
        if hint[:4].lower() == "sep=" and len(hint) <= 6:
            sep = hint[4:5]
            also = (
                f", and set {_setting(sep)} in the job" if sep in DELIMITERS and sep != ours else ""
            )
            return (
                f"its first line is {hint!r}, a hint for Excel of the separator, not "
                f"the header: delete that line (the header must be the first){also} and run again"
            )
        for sep, name in DELIMITERS.items():
            # a header name may hold the job's separator, which then parts it in two columns
            if sep != ours and any(
                self.phone in (c.strip() for c in col.split(sep)) for col in self.columns
            ):
                return (
                    f"its columns are separated by {name}s, not {DELIMITERS[ours]}s: set "
                    f"{_setting(sep)} in the job and run again"
                )
        case = other_case(self.phone, self.columns, "column")
        return (
            f"no {self.phone!r} column{case} (columns: {', '.join(self.columns)}); "
            "set phone_column in the job"
        )

    def _refuse_repeats(self) -> None:
        """Refuse a header that names a column twice (columns with no name aside): which of
        the two cells a row is sent with would be a guess."""
        seen: dict[str, int] = {}
        for n, name in enumerate(self.columns, 1):
            if name in seen and name:
                raise InputError(
                    self.path,
                    f"the header names the column {name!r} twice (columns {seen[name]} and {n}): "
                    "rename or remove one",
                    line=1,
                )
            seen[name] = n

    def _csv_rows(self) -> Iterator[Row | RejectedRow]:
        """:meth:`__iter__` of a CSV file."""
        reader = self._csv
        assert isinstance(reader, _CsvReader)
        index = {c: i for i, c in enumerate(self.columns)}
        wanted = [(c, index.get(c)) for c in (self.phone, *self.keep)]
        width, names, keep_all = len(self.columns), self.columns, self.keep_all
        # every wanted column is in the header, so a full row has them all
        found = [(c, i) for c, i in wanted if i is not None]
        whole = len(found) == len(wanted)
        pick = _picker([(c, i) for i, c in enumerate(names)] if keep_all else found)
        last, bad, ours = reader.line_num, self._bad, self._ours
        spans = SpanCheck(self.path, width, names.index(self.phone), self._line, self.delimiter)
        with self._reading():
            while True:
                try:
                    for rec in reader:
                        if ours:
                            rec = [read_cell(cell) for cell in rec]  # noqa: PLW2901 - as written
                        start, last = last + 1, reader.line_num
                        if last != start:  # a quoted field with line breaks: a real one?
                            self._check_span(spans, rec, start, last)
                        if bad and (long := self._refused(start, last)) is not None:
                            yield RejectedRow(start, long.shown(self.encoding), TOO_LONG)
                            continue
                        size = len(rec)
                        if size == width and whole and rec[0].strip():
                            # the usual row: every column there, the first holding something (a
                            # row of empty cells is a blank line)
                            yield Row(start, pick(rec))
                            continue
                        if (item := self._unusual(rec, (start, last), wanted, index)) is not None:
                            yield item
                except csv.Error as exc:
                    start, last = last + 1, reader.line_num
                    yield self._malformed(exc, start, last)
                else:
                    break
        self._ended()

    def _check_span(self, spans: SpanCheck, rec: list[str], start: int, last: int) -> None:
        """Judge a record over lines ``start`` to ``last`` (:meth:`SpanCheck.check
        <bulk_mms.spans.SpanCheck.check>`); one it refuses that holds an over-long line is
        refused for that line, whose text is not there to tell its field's lines from rows.

        Raises:
            InputError: at line ``start``.
        """
        read = self._lines
        try:
            spans.check(rec, start, last, read.lineno)
        except InputError:
            long = self._refused(start, last)  # a line in it that stops the file does
            if long is None:
                raise
            raise InputError(
                self.path,
                f"line {long.lineno} is longer than {read.limit} bytes, in a quoted field that "
                f"runs to line {min(last, read.lineno)}: which of its lines are the field's and "
                "which are rows cannot be told; shorten that line, and run again",
                line=start,
            ) from None

    def _refused(self, start: int, last: int) -> LongLine | None:
        """The first over-long line of the record of lines ``start`` to ``last``, which it is
        rejected for (``_bad``), None when it holds none; each of its lines' reasons is
        dropped, read. A line among them whose reason stops the file stops it, wherever it is
        among them (an over-long line holding a quote after one without:
        :meth:`_over_long`).

        Raises:
            InputError: that line's.
        """
        reasons = [self._bad.pop(n) for n in range(start, last + 1) if n in self._bad]
        for reason in reasons:
            if isinstance(reason, InputError):
                raise reason
        return cast(LongLine, reasons[0]) if reasons else None

    def _malformed(self, exc: csv.Error, start: int, last: int) -> RejectedRow:
        """The row of lines ``start`` to ``last`` the csv module refused, rejected.

        Raises:
            InputError: a field grew past the csv module's field limit (only one over lines
                can, :data:`~bulk_mms.lines.MAX_LINE_BYTES`: a quote left open over thousands
                of rows): the csv module would read on from the next line as if the field had
                closed.
        """
        self._refused(start, last)  # a line in it that stops the file does; the rest go
        if _FIELD_LIMIT_SAID in str(exc):
            raise InputError(
                self.path,
                f"a quoted field opened here runs to line {last} and past "
                f"{csv.field_size_limit()} characters: an unclosed quote? Remove or close the "
                "stray quote, and run again",
                line=start,
            )
        return RejectedRow(start, self._said(last), _malformed(exc))

    def _kept(self, batches: Iterator[Sequence[str]]) -> Iterator[Sequence[str]]:
        """``batches`` as they are, each kept while the csv module reads it, and after that
        while it holds one of the last :data:`MAX_RECORD_LINES` lines (:meth:`_line`)."""
        before, recent = 0, self._recent
        for batch in batches:
            recent.append((before, batch))
            while len(recent) > 1 and recent[1][0] + MAX_RECORD_LINES <= before:
                recent.popleft()
            yield batch
            before += len(batch)

    def _line(self, line: int) -> str:
        """The text of the csv module's ``line`` (its count) as decoded, with its line end;
        ``""`` for one no longer kept (:meth:`_kept`)."""
        for before, batch in reversed(self._recent):
            if line > before:
                at = line - before - 1
                return batch[at] if at < len(batch) else ""
        return ""

    def _said(self, line: int) -> str:
        """The text of the csv module's ``line`` (its count), as a rejected row's value: a
        carriage return in it written ``\\r``, shown, never sent to a terminal."""
        return self._line(line).rstrip("\r\n").replace("\r", "\\r")[:SHOWN_CHARS]

    def _unusual(
        self,
        rec: list[str],
        lines: tuple[int, int],
        wanted: list[tuple[str, int | None]],
        index: dict[str, int],
    ) -> Row | RejectedRow | None:
        """A CSV record that is not a full row: a blank line or a row of empty cells (None), a
        row with more fields than the header or without a column the job needs (rejected), or
        a short row that still has them. Empty fields past the header's last column are
        dropped first (a spreadsheet pads rows with them).

        ``lines``: the record's first and last line. When the last is the file's last line and
        has no line end, a wrong number of fields is not a bad row but a file cut off in it:
        :class:`InputError`."""
        if not any(cell.strip(_NOTHING) for cell in rec):
            return None  # a blank line, a spreadsheet's row of empty cells, a DOS EOF mark
        width = len(self._columns)
        start, last = lines
        if len(rec) > self._pad and len(unpadded(rec, width)) == width:
            # padded wider than the rows near the top: not padding but a separator not quoted
            # in a field, every cell after it shifted one column on, the empty last one past
            # the header (``Smith, Bo,+1 home,+1 mobile,``: the home number under the mobile's)
            return RejectedRow(
                start,
                self.delimiter.join(rec)[:SHOWN_CHARS],
                f"row has {len(rec)} fields, header has {width} (rows near the top have "
                f"{self._pad}, its extra ones are empty): a {DELIMITERS[self.delimiter]} in a "
                "field not in quotes? "
                "(or a cell typed to the right of the table, which some spreadsheets pad "
                "the rows near it for: clear that column and save again)",
            )
        rec = unpadded(rec, width)
        size = len(rec)
        if size != width and last == self._lines.unended:
            raise InputError(
                self.path,
                f"its last line has {size} field{'s' if size != 1 else ''} where the header "
                f"has {width}, and no line end: {CUT_OFF}",
                line=start,
            )
        if size > width:
            return RejectedRow(
                start,
                self.delimiter.join(rec)[:SHOWN_CHARS],
                f"row has {size} fields, header has {width}",
            )
        return self._short_row(rec, start, wanted, index)

    def _short_row(
        self,
        rec: list[str],
        start: int,
        wanted: list[tuple[str, int | None]],
        index: dict[str, int],
    ) -> Row | RejectedRow:
        """A record of at most the header's fields: a row if it has every column the job needs
        (with :attr:`keep_all`, a column it is too short for is empty), else rejected."""
        size = len(rec)
        fields: dict[str, str] = {}
        for name, i in wanted:
            if i is None or i >= size:
                shown = self.delimiter.join(rec)[:SHOWN_CHARS]
                return RejectedRow(start, shown, f"missing column {name!r}")
            fields[name] = rec[i]
        if self.keep_all:
            for name, i in index.items():
                if name not in fields:
                    fields[name] = rec[i] if i < size else ""
        return Row(start, fields)

    # -- iteration -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Row | RejectedRow]:
        """The file's rows, in input order: each a :class:`Row` or a :class:`RejectedRow`; an
        :class:`InputError` where the file stops being read (the rows before it first)."""
        if self._file is None:
            raise RuntimeError("RowReader used before open()")
        return self._csv_rows() if self._jsonl is None else self._jsonl_rows()

    def _jsonl_rows(self) -> Iterator[Row | RejectedRow]:
        """:meth:`__iter__` of a JSONL file (:meth:`JsonlRows.rows
        <bulk_mms.jsonl_rows.JsonlRows.rows>`)."""
        assert self._jsonl is not None
        with self._reading():
            yield from self._jsonl.rows()
        self._ended()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """A read that fails inside, as :meth:`_read_failed`'s :class:`InputError`."""
        try:
            yield
        except (EOFError, OSError, gzip.BadGzipFile) as exc:
            raise self._read_failed(exc) from None

    def _ended(self) -> None:
        """At the file's end, once every row is given: raise what the decoder found of the
        file as a whole (:meth:`~bulk_mms.decoding.LineDecoder.at_end`), if anything."""
        if (utf8 := self.text.at_end()) is not None:
            raise utf8

    def _read_failed(self, exc: EOFError | OSError) -> InputError:
        """The error for a read that failed after the lines read: a compressed file that ends
        early (``EOFError``) is cut off there; anything else, a read failure."""
        at = self._lines.lineno + 1
        if isinstance(exc, EOFError):
            return InputError(self.path, f"ends early: {exc}: {CUT_OFF}", line=at)
        return InputError(self.path, f"read failed: {exc}", line=at)


def _picker(columns: Sequence[tuple[str, int]]) -> Callable[[list[str]], dict[str, str]]:
    """A function from a full CSV record to its fields: ``(name, index)`` for each column kept.

    A dict display with the names and indexes bound in a closure, for up to four columns (the
    usual file: about a quarter of ``dict(zip(...))``'s time a row, the reader's largest cost);
    ``dict(zip(...))`` past that.
    """
    if len(columns) == 1:
        ((k0, i0),) = columns
        return lambda rec: {k0: rec[i0]}
    if len(columns) == 2:
        (k0, i0), (k1, i1) = columns
        return lambda rec: {k0: rec[i0], k1: rec[i1]}
    if len(columns) == 3:
        (k0, i0), (k1, i1), (k2, i2) = columns
        return lambda rec: {k0: rec[i0], k1: rec[i1], k2: rec[i2]}
    if len(columns) == 4:
        (k0, i0), (k1, i1), (k2, i2), (k3, i3) = columns
        return lambda rec: {k0: rec[i0], k1: rec[i1], k2: rec[i2], k3: rec[i3]}
    names, cells = [k for k, _ in columns], itemgetter(*(i for _, i in columns))
    return lambda rec: dict(zip(names, cells(rec), strict=True))


def _malformed(exc: csv.Error) -> str:
    """Why the csv module refused a row, in words where its own are Python's."""
    why = str(exc)
    return f"malformed CSV: {CSV_LONE_CR_WHY if CSV_LONE_CR in why else why}"


def _has_content(raw: bytes | LongLine, blank: bytes) -> bool:
    """Whether a raw line holds a value: more than the bytes of ``blank``
    (:data:`~bulk_mms.lines.BLANK` and the file's separator), or an over-long line."""
    return type(raw) is LongLine or bool(raw.strip(blank))


#: Why a CSV file whose quotes are escaped with a backslash is refused (:func:`_escaped_quotes`).
_ESCAPED_QUOTES = (
    "writes a quote inside a quoted field as \\\" (escaped with a backslash, as PHP's fputcsv "
    'and MySQL\'s SELECT ... INTO OUTFILE do), where CSV doubles it (""): read as CSV, its '
    "fields would go out garbled. Export it with quotes doubled (MySQL: ESCAPED BY '\"'; "
    "PHP: fputcsv with an empty escape), or save it from a spreadsheet, and run again"
)


def _escaped_quotes(line: str, delimiter: str) -> bool:
    """Whether a CSV line (one holding a backslash then a quote) writes its quotes escaped with
    a backslash (``"A \\"x\\" y"``), not doubled (``"A ""x"" y"``): read as CSV, a quoted field
    of it closes on a quote after a backslash with text after it (or a quote after a
    backslash ends the value, ``"6'2\\""``, and the field runs on past the line), where read
    with backslash escapes each one closes where it should (or runs on to the next line: a
    field over lines). A line that reads as CSV (``"C:\\dir\\",x``: a field ending in a
    backslash) is CSV. ``delimiter``: the file's separator."""

    def error(escapechar: str | None) -> str | None:
        try:
            for _ in csv.reader((line,), strict=True, escapechar=escapechar, delimiter=delimiter):
                pass
        except csv.Error as exc:
            return str(exc)
        return None

    if (rfc := error(None)) is None:
        return False
    escaped = error("\\")
    if "expected after" in rfc:
        return escaped is None or "unexpected end of data" in escaped
    return escaped is None


def _setting(delimiter: str) -> str:
    """The job setting that reads a file separated by ``delimiter``: ``delimiter = ";"``."""
    return f"delimiter = {toml_string(delimiter)}"


def file_encoding(path: Path, chunk: int = 1 << 20) -> str:
    """The first of UTF-8 and Windows-1252 that the whole of a file (uncompressed, if its name
    says gzip) is text in, else Latin-1 (:func:`~bulk_mms.decoding.whole_encoding`): the
    encoding a job that ran on it read it in, when nothing recorded it (a ledger begun before
    its header kept it). A run refuses a file that is not text in its encoding, and one that
    is UTF-8 under another (:class:`~bulk_mms.decoding.LineDecoder`); Latin-1 takes no byte
    cp1252 reads otherwise.

    Raises:
        InputError: the file cannot be opened, or is not a regular file (:func:`open_input`).
    """
    with open_input(path) as raw:
        f = cast(IO[bytes], gzip.GzipFile(fileobj=raw)) if detect_format(path)[1] else raw

        def blocks() -> Iterator[bytes]:
            try:
                while block := f.read(chunk):
                    yield block
            except (EOFError, OSError, gzip.BadGzipFile):
                return  # a run refused the file there: what was read decides

        return whole_encoding(blocks())


def fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """``sha256:<hex>`` of the file's bytes, as stored (compressed files are hashed compressed).

    Raises:
        InputError: the file cannot be opened, or is not a regular file (:func:`open_input`).
    """
    h = hashlib.sha256()
    with open_input(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def short_digest(fingerprint: str) -> str:
    """The first 8 hex digits of a file's :func:`fingerprint`: what names the ledger of a
    ``run --input`` of that file (:func:`~bulk_mms.reruns.rerun_name`)."""
    return fingerprint.removeprefix("sha256:")[:8]
