"""Every file bulk_mms writes for people (the CSV exports, the HTML report): never over a file
it must keep, written whole or not at all, and every CSV safe to open in a spreadsheet.

:func:`check_output` is the one rule for where such a file may go: not over the job's input,
its ledger, a ledger named on the command line, or any bulk-mms ledger (:func:`is_ledger`).
The commands apply it to every option that names a file, before anything is read or sent;
:func:`write_whole`, which every such file is written through, refuses a ledger on its own too.

A cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is one a
spreadsheet may run as a formula (CSV injection); such a cell is written with a leading ``'``,
which spreadsheets show as text (and so is one that begins with quotes and then one of those,
so that each cell reads back as it was: :func:`read_cell`). An E.164 number
(``+14155550100``) is left as it is: it cannot run as anything, and a file of failed
recipients must read back as a job's input, every cell as the ledger recorded it (the reader
undoes the quote in a file that has :data:`CAMPAIGN_COLUMN`, which only that file has).
"""

from __future__ import annotations

import csv
import errno
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final, TextIO, TypeVar

import orjson

from bulk_mms.errors import ConfigError
from bulk_mms.ledger.events import Header

T = TypeVar("T")

_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_E164: Final = re.compile(r"\+[1-9][0-9]{1,14}")
#: The column separators a CSV input may use (a job's ``delimiter``), each with its name: the
#: comma; the semicolon, Excel's "CSV" where the decimal mark is a comma; the tab, Excel's
#: "Text"; the bar.
DELIMITERS: Final = {",": "comma", ";": "semicolon", "\t": "tab", "|": "bar"}
#: How every JSONL ledger begins: its first line is the ``job`` header, ``event`` its first key.
LEDGER_START: Final = orjson.dumps({"event": Header.kind})[:-1]


def is_ledger(path: Path) -> bool:
    """Whether ``path`` is a regular file that begins as a JSONL ledger does (its header).

    Reads a few bytes at most; a file that cannot be read is not a ledger.
    """
    try:
        if not path.is_file():  # never opens a FIFO or a terminal (/dev/stdout)
            return False
        with path.open("rb") as f:
            return f.read(len(LEDGER_START)) == LEDGER_START
    except OSError:
        return False


def check_output(
    option: str,
    path: Path,
    keep: Iterable[tuple[str, Path]] = (),
    *,
    source: str | Path | None = None,
) -> None:
    """Refuse ``path`` as the file ``option`` writes when it names a folder (``""``, ``.``,
    ``/``), is one of the files to ``keep`` (``(what it is, path)``; the same file by any
    name, a symlink included), is an existing bulk-mms ledger, or an existing TOML file (a
    job or settings file, which ``report`` is not told of: nothing bulk-mms writes is TOML).

    Raises:
        ConfigError: naming ``option``, ``path`` and what it is (exit 2); nothing is written.
    """
    if path.name in ("", ".."):  # "" (an unset variable), ".", "/": no file's name to write
        raise ConfigError(
            option, f"{path} names a folder, not a file: give a file's path", source=source
        )
    for what, kept in keep:
        if _same_file(path, kept):
            raise ConfigError(
                option,
                f"{path} is {what}: it would be written over; name another file",
                source=source,
            )
    if is_ledger(path):
        raise ConfigError(
            option,
            f"{path} is a bulk-mms ledger: it would be written over; name another file",
            source=source,
        )
    if path.suffix.lower() == ".toml" and path.is_file():  # a job or settings file
        raise ConfigError(
            option,
            f"{path} is a TOML file: it would be written over; name another file",
            source=source,
        )


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same inode when both exist, else the same
    path once symlinks and ``..`` are resolved (a file not written yet)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False


def write_whole(path: Path, write: Callable[[TextIO], T], *, newline: str | None = None) -> T:
    """Write ``path`` (UTF-8 text) by calling ``write`` with the open file; what it returns.

    The text goes to a new file beside ``path``, flushed to disk, then renamed over it: ``path``
    is the whole new file or, on any failure, as it was, with no temporary file left. A
    symlink is followed (its target is written, the link stays), and a device or a pipe
    (``/dev/null``, ``/dev/stdout``) is written through, never replaced by a file. A bulk-mms
    ledger is never written over (:func:`is_ledger`).

    Raises:
        OSError: ``path`` is a ledger (``EEXIST``) or a folder, or cannot be written; it is then
            as it was.
    """
    if is_ledger(path):
        raise FileExistsError(errno.EEXIST, "is a bulk-mms ledger: not written over", str(path))
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = stat.S_IFREG  # a new file
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
    if not stat.S_ISREG(mode):
        with path.open("w", encoding="utf-8", newline=newline) as f:
            return write(f)
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # "x" below: never written through a file left there
        with tmp.open("x", encoding="utf-8", newline=newline) as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


#: The column a file of failed recipients (``report --failed-csv``) adds: the campaign that
#: missed them. It makes each round's file differ from the last even when the same people
#: fail for the same reason, so ``run --input`` (which names the resend after the file's hash)
#: gives every round a ledger and a campaign of its own; and its header marks the file as
#: bulk-mms's own, whose cells the reader gives back as they were (:func:`read_cell`).
CAMPAIGN_COLUMN: Final = "bulk_mms_campaign"
#: The other column a file of failed recipients adds, saying why each row is in it: the one a
#: file sent again replaces. An input that is no such file may not have it (its values would
#: be lost in the failed file: :func:`~bulk_mms.scan.check_columns`).
REASON_COLUMN: Final = "bulk_mms_reason"


def toml_string(delimiter: str) -> str:
    """``delimiter`` as a job file writes it, quoted (the tab as ``"\\t"``)."""
    escaped = delimiter.replace("\t", "\\t")
    return f'"{escaped}"'


def own_delimiter(line: bytes | str) -> str | None:
    """The separator of a file of failed recipients (:func:`~bulk_mms.recipient_lists.
    write_failed_csv`), told by its header, ``line`` (its line end and a byte order mark
    no matter): that file ends its header with :data:`CAMPAIGN_COLUMN` after the
    separator it was written with. None for any other file.

    Such a file is read with its own separator whatever the job's ``delimiter`` says, as one
    that starts with a UTF-8 byte order mark is read as UTF-8 whatever ``encoding`` says: it
    says what it is, and a resend reads it as it was written."""
    text = line if isinstance(line, str) else line.decode("latin-1")
    text = text.rstrip("\r\n")
    if not text.endswith(CAMPAIGN_COLUMN):
        return None
    sep = text[-len(CAMPAIGN_COLUMN) - 1 : -len(CAMPAIGN_COLUMN)]
    return sep if sep in DELIMITERS else None


def unnamed(n: int) -> str:
    """The name a CSV input's ``n``-th column (from 0) without one goes by, so that each such
    column keeps its own value in a row: whitespace (``""``, ``" "``, ...), which no other
    header name read is (the reader strips them), and which :func:`write_csv` writes blank
    again, as the input had it."""
    return " " * n


def safe_cell(value: object) -> str:
    """``value`` as a cell a spreadsheet shows as text, never runs as a formula: one that
    starts with a formula's first character, after any quotes, gets a quote in front (the
    quotes count so that :func:`read_cell` gives every value back)."""
    text = "" if value is None else str(value)
    if text.lstrip("'").startswith(_FORMULA_START) and _E164.fullmatch(text) is None:
        return "'" + text
    return text


def read_cell(cell: str) -> str:
    """The value :func:`safe_cell` wrote as ``cell``: its quote taken off where it added one.
    For every value, ``read_cell(safe_cell(value)) == value``."""
    if cell.startswith("'") and cell[1:].lstrip("'").startswith(_FORMULA_START):
        return cell[1:]
    return cell


def write_csv(
    path: Path,
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    delimiter: str = ",",
) -> int:
    """Write ``header`` and ``rows`` to ``path`` (UTF-8), every cell through :func:`safe_cell`,
    whole or not at all (:func:`write_whole`), the columns separated by ``delimiter`` (one of
    :data:`DELIMITERS`). A header name of whitespace alone (a column the input left unnamed:
    :func:`unnamed`) is written blank.

    The file begins with a UTF-8 byte order mark, as Excel's "CSV UTF-8" does: Excel opens it
    as UTF-8 instead of garbling accents, and a file sent again as a job's input is taken as
    UTF-8 whatever ``encoding`` the job gives its own (a Windows-1252 export's accents come
    back in UTF-8).

    Returns:
        The number of rows written (the header not counted).

    Raises:
        OSError: the file cannot be written, or is a ledger; ``path`` is then as it was.
    """

    def write(f: TextIO) -> int:
        f.write("\ufeff")
        w = csv.writer(f, delimiter=delimiter)
        w.writerow([safe_cell(h) if h.strip() else "" for h in header])
        n = 0
        for row in rows:
            w.writerow([safe_cell(c) for c in row])
            n += 1
        return n

    return write_whole(path, write, newline="")
