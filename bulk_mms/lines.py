"""A recipient file's bytes as numbered lines: where each ends, and the longest one held.

:class:`Lines` is the first step of reading a recipient file: it splits the bytes (after gzip)
into lines at line feeds, a line at a time while the file is checked and its header read,
then a block of whole lines at a time (:meth:`Lines.blocks`); the decoder
(:mod:`bulk_mms.decoding`) makes them text, the reader (:mod:`bulk_mms.reader`) rows. A line
longer than :data:`MAX_LINE_BYTES` is never held whole: it comes as a :class:`LongLine`, its
first bytes and whether it holds a quote, its rest read and dropped.

It also says what the line ends of a file tell: a file whose lines end in a carriage return
alone (an old Mac export) reads as one over-long line (:func:`old_mac_ends`), and a carriage
return alone inside a line is named as such in a rejected row's reason. The reasons both readers
give alike are here too (:func:`other_case`).
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, cast, final

import orjson

from bulk_mms.errors import InputError
from bulk_mms.models import SHOWN_CHARS

#: A line longer than this is rejected instead of being read into memory whole. It is the csv
#: module's default field limit (characters), left as it is (an interpreter-wide setting): a
#: field on one line never reaches it, so a field that does runs over lines, and that stops
#: the file (the reader's ``_malformed``).
MAX_LINE_BYTES: Final = 1 << 17
#: Once a file is open, it is read this much at a time (:meth:`Lines.blocks`): half
#: :data:`MAX_LINE_BYTES`, so that a block with the start of a line carried over from the one
#: before is at most that, mostly, and is given whole, without a look at each of its lines'
#: lengths.
BLOCK_BYTES: Final = MAX_LINE_BYTES // 2
#: The UTF-8 byte order mark.
BOM: Final = b"\xef\xbb\xbf"
#: What a raw line may hold and still have no value (besides a CSV file's separator): blanks,
#: line ends and the DOS end-of-file mark (Ctrl-Z) old Windows tools leave after the last line.
BLANK: Final = b" \t\r\n\x1a"
#: The first bytes of an over-long line kept (:attr:`LongLine.head`): :data:`SHOWN_CHARS`
#: characters of any encoding a job may name (UTF-8 writes one in up to four).
HEAD_BYTES: Final = 4 * SHOWN_CHARS
#: Why an over-long line's row is rejected.
TOO_LONG: Final = f"line is longer than {MAX_LINE_BYTES} bytes"
#: What the csv module says of a carriage return alone in a field not quoted.
CSV_LONE_CR: Final = "new-line character seen in unquoted field"
#: Why a CSV row holding a carriage return alone (not quoted) is rejected.
CSV_LONE_CR_WHY: Final = (
    "a carriage return alone inside the row (two rows on one line? an old Mac line end)"
)
#: Why a JSONL line that is no JSON and holds a carriage return not at its end is rejected.
JSONL_LONE_CR_WHY: Final = (
    "a carriage return alone inside the line (two records on one line? an old Mac line end)"
)
#: Why a JSONL file whose one line holds carriage returns alone is refused.
MAC_JSONL: Final = (
    "its lines end in a carriage return alone (an old Mac line end), not a line feed: save it "
    "with line feeds (LF or CR LF) and run again"
)
#: Why a CSV file whose header ends in a carriage return alone is refused.
MAC_CSV: Final = (
    "the header ends in a carriage return alone (the line end of Excel for Mac's \"CSV "
    '(Macintosh)"): save the file as "CSV UTF-8 (Comma delimited)" and run again'
)


def unmarked(line: bytes) -> bytes:
    """``line`` without every UTF-8 byte order mark in front of it, however many there are (an
    export written with one in front of a file that already had its own has two): a mark is
    never text a line begins with."""
    while line.startswith(BOM):
        line = line[len(BOM) :]
    return line


def other_case(name: str, names: Iterable[str], kind: str) -> str:
    """What to add to the reason a column or field ``name`` (the phone's) is not found, when
    ``names`` (a CSV header's columns, a JSONL record's or file's keys; ``kind``: "column" or
    "field") has it in another case: `` (column names are matched exactly: 'Phone'?)``;
    nothing when none has."""
    folded = name.casefold()
    named = next((n for n in names if n.casefold() == folded), None)
    return f" ({kind} names are matched exactly: {named!r}?)" if named is not None else ""


@final  # told apart from bytes by ``type(line) is``
@dataclass(frozen=True, slots=True)
class LongLine:
    """A line longer than :data:`MAX_LINE_BYTES`, never held whole."""

    #: Its number.
    lineno: int
    #: Its first :data:`HEAD_BYTES` bytes.
    head: bytes
    #: Whether it holds a quote anywhere.
    quoted: bool

    def shown(self, encoding: str) -> str:
        """Its first :data:`SHOWN_CHARS` characters in ``encoding`` (any that are not text
        replaced), a carriage return written ``\\r``, then ``…``: a rejected row's value, by
        which the line can be found and fixed."""
        decoder = codecs.getincrementaldecoder(encoding)("replace")
        text = decoder.decode(unmarked(self.head))  # a character cut at the end: left out
        return text[:SHOWN_CHARS].replace("\r", "\\r") + "…"


def line_start(raw: bytes | LongLine) -> bytes:
    """A line's bytes, or an over-long one's first bytes."""
    return raw.head if type(raw) is LongLine else raw


class Lines:
    """A file's lines (bytes), in order and numbered from 1.

    :meth:`readline` gives one line at a time, :meth:`blocks` the rest a block of whole lines
    at a time; each as ``(number, bytes)`` (a block: its first line's number), or
    ``(number, LongLine)`` for a line over :attr:`limit`. ``check`` runs after each read,
    before its lines count (the reader's check that the file is not being written).
    """

    __slots__ = ("_block", "_check", "_file", "limit", "lineno", "unended")

    def __init__(
        self, file: IO[bytes], check: Callable[[], None] | None, *, limit: int, block: int
    ) -> None:
        self._file = file
        self._check = check
        self._block = block
        #: The longest line held (bytes, its line feed aside).
        self.limit = limit
        #: The lines given so far.
        self.lineno = 0
        #: The number of the file's last line when it has no line end (0 until one is read).
        self.unended = 0

    def readline(self) -> tuple[int, bytes | LongLine] | None:
        """The next line with its number, None at the end of the file."""
        line = self._file.readline(self.limit + 1)
        if not line:
            return None
        item: bytes | LongLine = self._drop_rest(line) if self._too_long(line) else line
        if self._check is not None:
            self._check()
        self.lineno += 1
        if not line.endswith(b"\n") and type(item) is bytes:
            self.unended = self.lineno
        return self.lineno, item

    def _drop_rest(self, line: bytes) -> LongLine:
        """The next line, over-long, of which ``line`` is the start: its rest read and
        dropped."""
        head, quoted = line[:HEAD_BYTES], False
        while line and not line.endswith(b"\n"):
            quoted = quoted or b'"' in line
            line = self._file.readline(self.limit)
        return LongLine(self.lineno + 1, head, quoted or b'"' in line)

    def _too_long(self, line: bytes) -> bool:
        """Whether a line (with its line feed, if it has one) holds more than :attr:`limit`."""
        return len(line) - line.endswith(b"\n") > self.limit

    def blocks(self) -> Iterator[tuple[int, bytes | LongLine]]:
        """The rest of the file's lines, read a block at a time: each item whole lines (a line
        that spans blocks is carried over whole, and the file's last may have no line end), or
        one over-long line, which is never held: once it is known to be too long, its rest is
        read and dropped.

        A block is at most ``block`` bytes, as one read gives it (``read1``): a compressed
        file that ends early gives every line before the cut, then the error, so the error
        names the line the data stops in."""
        # a buffered file (open_input) or a GzipFile: both have read1
        read, size = cast(io.BufferedIOBase, self._file).read1, self._block
        carry, start, dropping, quoted = b"", b"", False, False
        while block := read(size):
            if self._check is not None:
                self._check()
            end = block.rfind(b"\n") + 1
            if dropping:  # the rest of an over-long line
                head = block.find(b"\n") + 1
                quoted = quoted or b'"' in block[: head or len(block)]
                if not head:
                    continue
                yield self._long(start, quoted)
                block, end, dropping = block[head:], end - head, False
            if not end:
                carry += block
                if self._too_long(carry):
                    start, carry, dropping, quoted = carry[:HEAD_BYTES], b"", True, b'"' in carry
                continue
            data, carry = carry + block[:end], block[end:]
            if data:
                yield from self._whole_lines(data)
        if dropping:  # an over-long last line, with no line end
            yield self._long(start, quoted)
        if carry:  # the last line, with no line end
            self.unended = self.lineno + 1
            yield from self._whole_lines(carry)

    def _whole_lines(self, data: bytes) -> Iterator[tuple[int, bytes | LongLine]]:
        """``data`` (whole lines, but maybe the file's last) numbered on: as one item when it
        can hold no over-long line, else each over-long line alone and the lines between
        together."""
        if len(data) <= self.limit:
            yield self._numbered(data)
            return
        run: list[bytes] = []
        for line in io.BytesIO(data).readlines():
            if not self._too_long(line):
                run.append(line)
                continue
            if run:
                yield self._numbered(b"".join(run))
                run = []
            yield self._long(line[:HEAD_BYTES], b'"' in line)
        if run:
            yield self._numbered(b"".join(run))

    def _numbered(self, data: bytes) -> tuple[int, bytes]:
        """The next lines, ``data`` (whole lines, but maybe the file's last), with the first's
        number."""
        first = self.lineno + 1
        self.lineno += data.count(b"\n") + (not data.endswith(b"\n"))
        return first, data

    def _long(self, head: bytes, quoted: bool) -> tuple[int, LongLine]:
        """The next line, over-long, of which ``head`` is the start, numbered."""
        self.lineno += 1
        return self.lineno, LongLine(self.lineno, head, quoted)


def old_mac_ends(path: Path, head: bytes, fmt: str) -> InputError | None:
    """For a file whose first line is over-long, with ``head`` its first bytes: the error that
    refuses it when they hold carriage returns alone, a file of many lines each ended the
    old Mac way, not one line too long (JSONL: one whose first record ends at a carriage
    return, as JSON may hold one between its values); else None."""
    if b"\r" not in head or b"\n" in head:
        return None
    if fmt == "csv":
        return InputError(path, MAC_CSV, line=1)
    if _json_object(head.split(b"\r")):
        return InputError(path, MAC_JSONL, line=1)
    return None


def _json_object(parts: list[bytes]) -> bool:
    """Whether the first of ``parts`` (a JSONL file's start, split at its carriage returns)
    that holds more than blanks is a JSON object: a record ended there. Bytes that are not
    UTF-8 (text in strings, in another encoding) are read as any character."""
    first = next((part for part in parts if part.strip()), b"")
    try:
        return isinstance(orjson.loads(unmarked(first).decode("utf-8", "replace")), dict)
    except orjson.JSONDecodeError:
        return False
