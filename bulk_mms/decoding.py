"""A recipient file's bytes as text in the job's encoding, or the one-line reason they are not.

:class:`LineDecoder` is handed a file's lines (or whole blocks of them) in order by the reader
(:mod:`bulk_mms.reader`), and gives each back as text, or the :class:`InputError` that stops
the file at it: a NUL byte (a binary or damaged file), bytes that are not text in the job's
encoding (with the encoding they look like, or, in a UTF-8 file, as a character cut
short), C1 control characters (latin-1's reading of
cp1252's curly quotes), and UTF-8 read under another encoding, which that encoding would
garble ("JosÃ©"): a file that is UTF-8 from its first line that is not ASCII
(:data:`UTF8_LINES` such lines decide it), or a file of the job's encoding with a UTF-8 one
appended. A file that starts with a UTF-8 byte order mark is UTF-8, whatever the job says
(:meth:`LineDecoder.marked_utf8`).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from bulk_mms.csvfile import DELIMITERS
from bulk_mms.errors import InputError
from bulk_mms.spans import CUT_OFF

#: Lines that are not ASCII, every one valid UTF-8, that show a file read under another
#: encoding is UTF-8 (:meth:`LineDecoder._utf8`).
UTF8_LINES: Final = 3
_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")
#: The encodings :func:`likely_encoding` and :func:`whole_encoding` try, in order (Latin-1
#: after them takes any bytes).
_LIKELY: Final = ("utf-8", "cp1252")
#: The C1 control characters: never text. Latin-1 and the other ISO 8859 encodings read bytes
#: 0x80-0x9F as them, where cp1252 (Excel's CSV on Windows) has its curly quotes, dashes and
#: euro sign.
_C1: Final = re.compile("[\x80-\x9f]")
#: A character of more than one byte in UTF-8: a block of a file in another encoding that
#: holds none holds no UTF-8 line (:meth:`LineDecoder._late_utf8`).
_UTF8_CHAR: Final = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}"
)
#: What may follow a field cut to a number of bytes: a separator (:data:`~bulk_mms.csvfile.
#: DELIMITERS`), a closing quote, a line end.
_FIELD_ENDS: Final = frozenset("".join(DELIMITERS).encode("ascii") + b'"\r\n')


class LineDecoder:
    """The lines of one file, in order, as text in :attr:`encoding`.

    Each line is given with its number; a line that is not text comes back as the
    :class:`InputError` naming it (the reader raises it when its rows reach that line, so the
    rows before it come first). Keeps what earlier lines showed: whether the file, read under
    an encoding other than UTF-8, is UTF-8 after all.
    """

    __slots__ = (
        "_bom",
        "_c1",
        "_multibyte",
        "_sniff",
        "_utf8_first",
        "_utf8_lines",
        "_watch",
        "encoding",
        "path",
        "table",
    )

    def __init__(self, path: Path, encoding: str, *, table: bool = True) -> None:
        """``table``: the file is a CSV file, which a spreadsheet may have saved (the errors'
        advice names the spreadsheet's choices); else a JSONL file, which a program wrote."""
        self.path = path
        self.table = table
        #: The file's text encoding (an ASCII-compatible codec's name): ``utf-8`` once
        #: :meth:`marked_utf8`, whatever was asked.
        self.encoding = encoding
        self._bom = False  # the file starts with a UTF-8 byte order mark
        # the encoding reads bytes as C1 control characters (latin-1's 0x80-0x9F, where
        # cp1252 has its curly quotes and euro sign): a line holding one is not text
        self._c1 = _decodes_c1(encoding)
        # under another encoding, until the first line that is not ASCII decides it: is the
        # file UTF-8 after all (which that encoding would garble)?
        self._sniff = not codecs.lookup(encoding).name.startswith("utf-8")
        self._utf8_first: InputError | None = None  # the first line that is (see _utf8)
        self._utf8_lines = 0
        # once a line has shown the encoding is right, whether a later line may still be
        # UTF-8 (a file of that encoding and a UTF-8 one joined into one: _late_utf8)
        self._watch = False
        # read as UTF-8, a line so far held a character of more than one byte: the file is
        # UTF-8, and a line that is not is cut inside one (not_text)
        self._multibyte = False

    def marked_utf8(self) -> None:
        """The file starts with a UTF-8 byte order mark (Excel's "CSV UTF-8" writes it): it is
        UTF-8, whatever the job says. Read as cp1252 it would garble every accent, and no
        cp1252 file starts with "ï»¿"."""
        self._bom, self.encoding, self._sniff = True, "utf-8", False

    # -- lines and blocks ------------------------------------------------------------------

    def line(self, lineno: int, line: bytes, *, last: bool = False) -> str | InputError:
        """One line (not empty) as text, or the error that stops the file at it. ``last``: it
        is the file's last line, with no line end (one cut inside a character is a file cut
        off)."""
        if (self._sniff or self._watch) and (utf8 := self._utf8_in(lineno, line)):
            return utf8
        if b"\x00" in line:  # past the first KiB looked at on opening: a damaged file
            return self.binary(lineno)
        try:
            text = line.decode(self.encoding)
        except UnicodeDecodeError:
            return self.not_text(lineno, line, last=last)
        if self._c1 and _C1.search(text):
            return self.not_text(lineno, line, last=last)
        self._multibyte = self._multibyte or not line.isascii()
        return text

    def block(self, data: bytes) -> str | None:
        """Whole lines as text in one call, when nothing in them needs a look a line at a time
        (a NUL byte, bytes that are not text, a C1 character, a line that may be UTF-8 under
        another encoding); else None, and each line goes to :meth:`line`."""
        if self._may_be_utf8(data) or b"\x00" in data:
            return None
        try:
            text = data.decode(self.encoding)
        except UnicodeDecodeError:
            return None
        if self._c1 and _C1.search(text):
            return None
        self._multibyte = self._multibyte or not data.isascii()
        return text

    def json_text(self, lineno: int, raw: bytes, *, last: bool = False) -> str | bytes:
        """A JSONL line as text for the JSON parser (UTF-8 as its bytes, which the parser
        checks itself). Raises the :class:`InputError` that stops the file at it (``last``:
        as for :meth:`line`)."""
        if (self._sniff or self._watch) and (utf8 := self._utf8_in(lineno, raw)):
            raise utf8
        if self.encoding == "utf-8":
            return raw
        try:
            text = raw.decode(self.encoding)
        except UnicodeDecodeError:
            raise self.not_text(lineno, raw, last=last) from None
        if self._c1 and _C1.search(text):
            raise self.not_text(lineno, raw, last=last)
        return text

    def at_end(self) -> InputError | None:
        """At the file's end: the error for a file read under another encoding whose every line
        that is not ASCII (fewer than :data:`UTF8_LINES`, at least one) was valid UTF-8."""
        return self._utf8_first if self._sniff else None

    # -- why not ---------------------------------------------------------------------------

    def not_text(self, lineno: int, line: bytes, *, last: bool = False) -> InputError:
        """The error for a line that is not text in :attr:`encoding`: the whole file stops
        (one wrongly saved file must not become a row-by-row rejection of everyone). The
        file's ``last`` line, with no line end, that is text but for a character cut short at
        its end is a file cut off there (a copy that stopped), whatever it looks like. A line
        of a UTF-8 file that is UTF-8 text but for a character cut short inside it (a field cut
        to a number of bytes, a damaged copy) is named so, not as another encoding's, when the
        file shows it is UTF-8 (that line, or one before it, holds a character of more than
        one byte): read as that encoding, every accent of the file would go out garbled
        (:func:`_cut_inside` tells such a line from one of another encoding). A line of
        another encoding after UTF-8 ones that hold such characters is named as two files
        joined: the job's encoding is right for the rest."""
        if last and _cut_short(line, self.encoding):
            return InputError(
                self.path,
                f"its last line ends inside a {self.encoding} character, with no line end: "
                + CUT_OFF,
                line=lineno,
            )
        utf8 = codecs.lookup(self.encoding).name == "utf-8"
        whole = _UTF8_CHAR.search(line) is not None
        if utf8 and (self._multibyte or whole) and (before := _cut_inside(line, whole)) is not None:
            return InputError(
                self.path,
                f"holds a utf-8 character cut short, after {before[-20:]!r}: the file is "
                "utf-8 (its other accents are), and this line was cut inside a character "
                "(an export that cuts fields to a number of bytes, or a damaged copy): "
                "fix that line, and run again",
                line=lineno,
            )
        return InputError(
            self.path, f"is not valid {self.encoding} text; {self._hint(line)}", line=lineno
        )

    def _hint(self, line: bytes) -> str:
        """What to do about ``line``, which is not text in :attr:`encoding`: the encoding it
        looks like (:func:`likely_encoding`) to set, or to save the file as UTF-8. Never to
        set latin-1: it reads the bytes that neither UTF-8 nor cp1252 reads as C1 control
        characters, and stops at the same line."""
        utf8 = codecs.lookup(self.encoding).name == "utf-8"
        looks = likely_encoding(line)
        if looks == "latin-1":
            byte = line.decode("cp1252", "replace").index("\ufffd")
            hint = (
                f"it holds the byte 0x{line[byte]:02x}, text in neither utf-8 nor cp1252 (a "
                "file in another encoding, such as Mac Roman or Shift JIS, or a damaged one): "
                "save the file as UTF-8"
            )
        elif codecs.lookup(looks).name == codecs.lookup(self.encoding).name:
            hint = "the file is damaged"
        elif self._bom:  # the encoding setting does not apply: the mark makes it UTF-8
            hint = (
                f"it looks like {looks}, but the file starts with a UTF-8 byte order mark, "
                "which makes it utf-8 whatever the job says: save the whole file as UTF-8"
            )
        elif utf8 and self._multibyte:  # its accents before were UTF-8: it is a UTF-8 file
            hint = (
                f"the lines before are utf-8, and this one looks like {looks}: were files "
                "saved in two encodings joined into one? Save the whole file as UTF-8"
            )
        else:
            hint = (
                f'it looks like {looks}: set encoding = "{looks}" in the job, or save the file '
                f"as {self.encoding}"
            )
        return hint

    def not_a_text_file(self, sample: bytes) -> InputError | None:
        """The error for a file whose first bytes (``sample``) hold a NUL or a UTF-16 byte
        order mark, else None: UTF-16 (with its mark, or with a NUL every other byte) is named
        as such, since Excel saves it as "Unicode Text"; anything else is binary, its first
        NUL's line named."""
        if b"\x00" not in sample and not sample.startswith(_UTF16_BOMS):
            return None
        odd, even = sample[1::2].count(0), sample[::2].count(0)
        # ASCII in UTF-16: a NUL in (nearly) every byte of one parity, (nearly) none in the other
        utf16 = max(odd, even) * 4 >= len(sample) > min(odd, even) * 16
        if sample.startswith(_UTF16_BOMS) or utf16:
            how = (
                ' (Excel\'s "Unicode Text"), not {}: save it from Excel as "CSV UTF-8 (Comma '
                'delimited)"'
                if self.table
                else ", not {}: write it as UTF-8 (Windows PowerShell's > writes UTF-16; "
                "Out-File -Encoding utf8 does not)"
            )
            return InputError(self.path, f"is UTF-16 text{how.format(self.encoding)} and run again")
        return self.binary(sample.count(b"\n", 0, sample.index(b"\x00")) + 1)

    def binary(self, lineno: int) -> InputError:
        """The error for a file holding a NUL byte, first at ``lineno``."""
        advice = (
            'if it is a spreadsheet, save it as "CSV UTF-8 (Comma delimited)"; if not, it is '
            "damaged"
            if self.table
            else "the program that wrote it wrote something other than text, or it is damaged"
        )
        return InputError(
            self.path,
            f"is a binary file, not {self.encoding} text (it holds a NUL byte): {advice}",
            line=lineno,
        )

    # -- UTF-8 under another encoding ------------------------------------------------------

    def _utf8_in(self, lineno: int, line: bytes) -> InputError | None:
        """The error to stop a file read under another encoding at ``line`` for, when the line
        shows the file, or its rest, to be UTF-8 (:meth:`_utf8` until a line that is not ASCII
        decides the encoding, :meth:`_late_utf8` after); else None."""
        if line.isascii():
            return None
        return self._utf8(lineno, line) if self._sniff else self._late_utf8(lineno, line)

    def _utf8(self, lineno: int, line: bytes) -> InputError | None:
        """Look at a line that is not ASCII in a file read under another encoding: is the file
        UTF-8 after all (a UTF-8 line read as cp1252 is valid, and garbled: "JosÃ©")? A line
        that is not UTF-8 settles it: the job's encoding is right, and no line is looked at
        again. :data:`UTF8_LINES` lines that are settle it the other way: the error to stop
        the file with, at this line (naming the first of them). Until then None: the line is
        read in the job's encoding, and a file that ends first is stopped at its end
        (:meth:`at_end`). One line may be the job's encoding's by chance (in cp1252, an
        accented capital then a curly quote can be valid UTF-8); several in a row are not."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._sniff, self._utf8_first, self._watch = False, None, True
            return None
        if self._utf8_first is None:
            self._utf8_first = InputError(
                self.path,
                f"looks like utf-8 text, not {self.encoding} ({self._garbled(text)}): "
                f'set encoding = "utf-8" in the job, or save the file as {self.encoding}',
                line=lineno,
            )
        self._utf8_lines += 1
        if self._utf8_lines < UTF8_LINES:
            return None
        self._sniff = False
        return self._utf8_first

    def _garbled(self, text: str) -> str:
        """How the first character of ``text`` (UTF-8) that is not ASCII reads in
        :attr:`encoding`: ``'é' would read as 'Ã©'``."""
        char = next(c for c in text if not c.isascii())
        return f"{char!r} would read as {char.encode('utf-8').decode(self.encoding, 'replace')!r}"

    def _late_utf8(self, lineno: int, line: bytes) -> InputError | None:
        """Look at a line that is not ASCII in a file a line before showed to be in the job's
        encoding (:meth:`_utf8`): the error to stop at it when it is UTF-8 (a file of that
        encoding and a UTF-8 one joined into one, whose later names would go out garbled:
        "JosÃ©"), else None. It is UTF-8 when its bytes are, and what they say in UTF-8 could
        have been written in the job's encoding ("José", not "JOSɠ": cp1252's "JOSÉ" and a
        no-break space): a line of the job's encoding that reads so would be garbled already.
        A search of a block for UTF-8's bytes (:data:`_UTF8_CHAR`) comes first
        (:meth:`block`): most blocks of such a file have none, and are not read a line at a
        time for this."""
        if _UTF8_CHAR.search(line) is None:
            return None
        try:
            text = line.decode("utf-8")
            text.encode(self.encoding)
        except UnicodeError:
            return None
        return InputError(
            self.path,
            f"is {self.encoding} text up to here, then utf-8 ({self._garbled(text)}): were "
            f"files saved in two encodings joined into one? Save the whole file as "
            f'{self.encoding}, or as UTF-8 and set encoding = "utf-8" in the job',
            line=lineno,
        )

    def _may_be_utf8(self, data: bytes) -> bool:
        """Whether a block may hold a line :meth:`_utf8_in` stops at, so it is read a line at a
        time: one that is not ASCII while the encoding is undecided (:meth:`_utf8`), one with
        UTF-8's bytes in it once decided (:meth:`_late_utf8`)."""
        if not (self._sniff or self._watch) or data.isascii():
            return False
        return self._sniff or _UTF8_CHAR.search(data) is not None


def _cut_short(line: bytes, encoding: str) -> bool:
    """Whether ``line`` is text in ``encoding`` up to a character whose first bytes end it (a
    multi-byte character cut off)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        decoder.decode(line, final=False)
    except UnicodeDecodeError:
        return False
    return bool(decoder.getstate()[0])


def _cut_inside(line: bytes, whole: bool) -> str | None:
    """The text of ``line`` up to its first character cut short, when ``line`` is UTF-8 text
    but for characters cut short inside it (each the first bytes of one, then a byte that does
    not go on with it); else None. Unless the line holds a ``whole`` character of more than
    one byte too, each cut ends a field (:data:`_FIELD_ENDS` or the line's end follows it):
    the byte of a cp1252 accent inside a word ("José García" written in cp1252) is the first
    byte of a UTF-8 character too, and such a line is another encoding's, not one cut short."""
    first: str | None = None
    rest = line
    while True:
        try:
            rest.decode("utf-8")
        except UnicodeDecodeError as exc:
            end = exc.start + 1
            while end < len(rest) and 0x80 <= rest[end] <= 0xBF:
                end += 1
            if not _cut_short(rest[exc.start : end], "utf-8"):
                return None
            if not whole and end < len(rest) and rest[end] not in _FIELD_ENDS:
                return None
            if first is None:
                first = rest[: exc.start].decode("utf-8")
            rest = rest[end:]
        else:
            return first


def _decodes_c1(encoding: str) -> bool:
    """Whether ``encoding`` reads some byte as a C1 control character (latin-1 does; cp1252
    and UTF-8 do not)."""
    if codecs.lookup(encoding).name.startswith("utf-8"):
        return False  # a C1 character is written in UTF-8 on purpose, never by chance
    return _C1.search(bytes(range(0x80, 0xA0)).decode(encoding, "replace")) is not None


def likely_encoding(data: bytes) -> str:
    """The first of UTF-8 and Windows-1252 that ``data`` is valid text in, else Latin-1."""
    for encoding in _LIKELY:
        try:
            data.decode(encoding)
        except UnicodeDecodeError:
            continue
        return encoding
    return "latin-1"


def whole_encoding(blocks: Iterable[bytes]) -> str:
    """The first of UTF-8 and Windows-1252 that all of ``blocks`` (a file's bytes in order)
    are text in, else Latin-1: :func:`likely_encoding` of the whole, a block at a time."""
    decoders = {e: codecs.getincrementaldecoder(e)() for e in _LIKELY}
    for block in blocks:
        decoders = {e: d for e, d in decoders.items() if _decodes(d, block)}
        if not decoders:
            break
    return next((e for e, d in decoders.items() if _decodes(d, b"", final=True)), "latin-1")


def _decodes(decoder: codecs.IncrementalDecoder, block: bytes, *, final: bool = False) -> bool:
    """Whether ``decoder`` takes ``block`` (the next bytes of what it was given before)."""
    try:
        decoder.decode(block, final)
    except UnicodeDecodeError:
        return False
    return True
