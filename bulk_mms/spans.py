"""Judge a CSV record over several lines: a quoted field with line breaks (an address, a
note), or a stray quote left open that swallowed the rows after it.

The reader (:mod:`bulk_mms.reader`) splits the file into records with the csv module, which
reads a quote left open as a field that runs on to the next quote not doubled, the people on
the lines between inside it. It hands each record read over more than one line (never one on
a single line) to :meth:`SpanCheck.check`, built once per file from the header's width, the
phone column's index, the file's path (for the error), a way to get the text of a line
that the reader keeps (the last :data:`MAX_RECORD_LINES` lines) and the file's separator (a
comma, the job's ``delimiter``: every comma below stands for it).

:meth:`SpanCheck.check` returns nothing for a field as a spreadsheet writes it, and raises
:class:`~bulk_mms.errors.InputError`, naming the record's first line, for a record:

- that may be a quote left open (:meth:`SpanCheck._unclosed`): it closes with text after
  its closing quote, or on the quote that opens a row's field; or its field holds lines that
  look like rows (a phone number where the phone column is, :meth:`SpanCheck._row_like`) and
  it does not close as only a field of its own does;
- over more than :data:`MAX_RECORD_LINES` lines, whatever it holds;
- still open at the end of the file over no line that looks like a row: the file was cut off
  in it (:func:`cut_off`).
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bulk_mms.csvfile import DELIMITERS
from bulk_mms.errors import InputError

#: A CSV record may span at most this many lines (a quoted field with line breaks).
MAX_RECORD_LINES = 20
#: The fewest digits of a value that makes a line inside a quoted field look like a row whose
#: number it is (a local number has seven).
_ROW_DIGITS = 7
#: Why a quoted field over lines may be a quote left open (:meth:`SpanCheck._unclosed`):
#: lines in it look like rows; it closes on the quote that opens a row's field.
_ROWS = "over what look like rows"
_OPENS = "and closes on the quote that opens a field of a row"
#: Lines inside a quoted field shaped like rows written short (:meth:`SpanCheck._row_like`)
#: that make it look like a quote left open over rows: fewer are a note's own.
_SHORT_ROWS = 2
#: The ASCII punctuation a phone number may be written with (:func:`_in_number`).
_NUMBER_MARKS = frozenset(" \t+-().'/\uff0b\uff08\uff09")  # and full-width + ( )
#: Why a quoted field over more than :data:`MAX_RECORD_LINES` lines is refused, whatever it
#: holds.
_LONG = f"over more than {MAX_RECORD_LINES} lines"


@dataclass(frozen=True, slots=True)
class SpanCheck:
    """What :meth:`check` needs of one CSV file: fixed once its header is read."""

    #: The file, as the error names it.
    path: Path
    #: The header's number of fields.
    width: int
    #: The phone column's index in the header.
    phone_at: int
    #: The text of a line (the csv module's count) as decoded, with its line end; ``""`` for
    #: one no longer kept. Each of the last :data:`MAX_RECORD_LINES` lines read is kept.
    line: Callable[[int], str]
    #: What separates the file's columns (the job's ``delimiter``).
    delimiter: str = ","

    def check(self, rec: list[str], start: int, last: int, end: int) -> None:
        """Refuse a record over lines ``start`` to ``last`` (a quoted field with line breaks)
        that may be a quote left open, which would swallow the people on the lines after it
        and stop on a quote of a later row (:meth:`_unclosed`), and one over
        more than :data:`MAX_RECORD_LINES` lines, whatever it holds. Refuse one whose quote is
        still open at the end of the file (``last`` is past ``end``, the number of lines read:
        the record ran into the blank line the reader feeds after the last), over no line that
        looks like a row: the file was cut off in the middle of it.

        Raises:
            InputError: at line ``start``, saying why and how to fix it.
        """
        spans = [cell for cell in rec if "\n" in cell or "\r" in cell]
        parts = [part for cell in spans for part in cell.splitlines()[1:]]
        # rows written short of the header's last fields are read as rows too (the reader's
        # RowReader._short_row): one line shaped so is a signature's or a log's, two or more
        # are taken for rows
        short = sum(self._holds_row(part, short=True) for part in parts) >= _SHORT_ROWS
        rows = short or any(self._holds_row(part) for part in parts)
        long = last - start >= MAX_RECORD_LINES
        if last > end and not (rows or long):
            raise cut_off(self.path, start)
        if long or last > end:  # never a field as a spreadsheet writes it: no more to tell
            why: str | None = _ROWS if rows else _LONG
        else:
            lines = [self.line(n) for n in range(start, last + 1)]
            # two fields over lines: a line between them holds one's close and the next's
            # open, and the fields between, which no field's own lines show: read it whole
            rows = rows or (len(spans) > 1 and any(map(self._row_like, lines[1:-1])))
            why = self._unclosed(rec, lines, len(spans), rows=rows, short=short)
        if why is None:
            return
        fix = (
            "; if the field is meant to hold those lines, take them out of it"
            if why in (_ROWS, _LONG)
            else " (a quote inside a field is written twice, in a quoted field)"
        )
        if why == _OPENS:
            sep = DELIMITERS[self.delimiter]
            fix += f"; if the field is meant to end with a line break or a {sep}, take it off"
        raise InputError(
            self.path,
            f"a quoted field opened here runs to line {min(last, end)} {why}: an unclosed "
            f"quote? Remove or close the stray quote{fix}, and run again",
            line=start,
        )

    def _unclosed(
        self, rec: list[str], lines: list[str], spans: int, *, rows: bool, short: bool = False
    ) -> str | None:
        """Why the record ``rec``, read from ``lines`` (at most :data:`MAX_RECORD_LINES`)
        with ``spans`` quoted fields over them, may be a quote left open that stopped on a
        later row's quote, in words; None when it is a field as a spreadsheet writes it.

        ``rows``: a field holds lines that look like rows (:meth:`_holds_row`); ``short``:
        that is so because :data:`_SHORT_ROWS` of them or more look like rows written short,
        and its closing line is then judged as one may be.

        A spreadsheet quotes every field that holds a comma, a quote or a line break, each
        quote in it doubled, so a field closes on a quote followed by a comma or the line
        end; a quote left open stops on the next quote not doubled, mostly the one that
        opens a later row's quoted field. So a record is one: whose quote closes with text
        after it; whose quote closes where a field opens (after a comma, or first on its
        line) in a line that starts as a row, or reads on its own as one; and, when its field
        holds lines that look like rows, one that does not close as only a field of its own
        does: one field over lines, the header's number of fields, its quote closing after
        text of its own, in a line that reads on its own as no row (the header's number of
        fields, or a number where the phone column is). A field that ends otherwise (a note
        whose last line is a pasted row, or that ends with a comma or a line break) cannot be
        told from a quote left open."""
        sep = self.delimiter
        if not _closes_cleanly(lines, sep):
            return "and closes with text after its closing quote"
        closing = lines[-1]  # starts inside the field: its first quote not doubled closes it
        at = 0
        while (at := closing.find('"', at)) >= 0 and closing.startswith('"', at + 1):
            at += 2
        inside = closing[:at].rstrip('" \t'.replace(sep, ""))  # never the separator: a tab
        opens = not inside or inside.endswith(sep)
        if not rows:
            starts_row = self._row_like(inside, whole=False) or self._row_like(closing)
            return _OPENS if opens and starts_row else None
        width = self.width
        if (
            opens
            or spans > 1
            or len(unpadded(rec, width)) != width
            or len(unpadded(next(csv.reader([closing], delimiter=sep), []), width)) == width
            or self._row_like(closing, short=short)
        ):
            return _ROWS
        return None

    def _holds_row(self, part: str, *, short: bool = False) -> bool:
        """Whether a line of a quoted field's value (past its first) looks like a row
        (:meth:`_row_like`, ``short`` as there): as it reads, or as it stands in the file,
        each quote in it doubled. A row a quote left open swallowed is read with its quotes
        halved: one whose field before the number holds quotes (two, written as six) then
        hides the number."""
        return self._row_like(part, short=short) or (
            '"' in part and self._row_like(part.replace('"', '""'), short=short)
        )

    def _row_like(self, line: str, *, whole: bool = True, short: bool = False) -> bool:
        """Whether a line inside a quoted field looks like a row of its own: as many commas
        as a row has, and a phone number (digits and a number's punctuation, at least
        :data:`_ROW_DIGITS` digits) where the phone column is. A multi-line address or note
        (``"12 Main St, Apt 4\nSpringfield, IL, 62701"``) has commas but no number there.
        ``whole=False``: whether it looks like the start of a row (the number alone).
        ``short``: whether it looks like a row written short of the header's last fields (a
        row :meth:`bulk_mms.reader.RowReader._short_row` reads): the number, and a field
        besides it."""
        at = self.phone_at
        commas = min(max(at, 1), self.width - 1) if short else self.width - 1
        if whole and line.count(self.delimiter) < commas:
            return False
        cells = next(csv.reader([line], delimiter=self.delimiter), [])
        # a cell holding the separator (inside quotes) is no number's, a tab's either: not
        # stripped off as a blank
        if at >= len(cells) or self.delimiter in cells[at]:
            return False
        value = number_text(cells[at].strip())
        digits = sum(c.isdigit() for c in value)
        return digits >= _ROW_DIGITS and all(_in_number(c) for c in value)


#: Excel's text formula around a value (``="+12065713909"``), which programs write for Excel to
#: show a number as text: the value in the group.
_TEXT_FORMULA: Final = re.compile(r'\s*=\s*"([^"]*)"\s*')


def number_text(value: str) -> str:
    """A phone cell's ``value`` without the marks around a number that are no part of it:
    Excel's text formula (``="+12065713909"``, the text it shows) or a ``tel:`` URI's scheme
    (``tel:+12065713909``). What :func:`bulk_mms.validate.normalize_phone` reads, and the
    reader's test of a line for a row's number."""
    if "=" in value and (formula := _TEXT_FORMULA.fullmatch(value)) is not None:
        return formula[1]
    if ":" in value and value.lstrip()[:4].lower() == "tel:":
        return value.lstrip()[4:]
    return value


def _in_number(char: str) -> bool:
    """Whether ``char`` may be in a phone number as written: a digit, the ASCII punctuation
    people write in one (``+1 (206) 571-3909``, ``415.847.5622``, a spreadsheet's leading
    ``'``), or a dash, the minus sign, a space or an invisible character a word processor
    puts between digits. Not a time's colon (``10:15``), a price's ``$``, a letter. Every
    character :func:`bulk_mms.validate.normalize_phone` reads in a number is one of these
    (so a row the validator would send is never taken for a note's text)."""
    return (
        char.isdigit()
        or char in _NUMBER_MARKS
        or (
            not char.isascii()
            and (char == "\u2212" or unicodedata.category(char) in ("Pd", "Zs", "Cf"))
        )
    )


def unpadded(rec: list[str], width: int) -> list[str]:
    """A CSV record without the empty fields past the header's ``width`` (a spreadsheet pads
    rows with them); one with a value past it, as it is."""
    if len(rec) > width and not any(cell.strip() for cell in rec[width:]):
        return rec[:width]
    return rec


def _closes_cleanly(lines: list[str], delimiter: str) -> bool:
    """Whether ``lines`` read as one CSV record to their end in which every quoted field's
    closing quote is followed by the ``delimiter`` or the line end, as a spreadsheet writes it
    (a quote inside a field doubled): what the csv module's ``strict`` mode reads."""
    reader = csv.reader(lines, strict=True, delimiter=delimiter)
    try:
        next(reader, None)
    except csv.Error:
        return False
    return reader.line_num == len(lines)


#: How every error for an input file that ends early ends: what it looks like, and the remedy.
CUT_OFF: Final = "the file looks cut off: copy or export it again, whole"


def cut_off(path: Path, start: int) -> InputError:
    """The error for a file that ends inside the quoted field of the record at ``start``."""
    return InputError(
        path,
        f"ends inside a quoted field that starts at line {start}: {CUT_OFF}",
        line=start,
    )
