"""Every CSV file bulk_mms writes for people: written whole or not at all, and safe to open in a
spreadsheet.

A cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is one a
spreadsheet may run as a formula (CSV injection); such a cell is written with a leading ``'``,
which spreadsheets show as text. An E.164 number (``+14155550100``) is left as it is: it cannot
run as anything, and a file of failed recipients must read back as a job's input.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_E164: Final = re.compile(r"\+[1-9][0-9]{1,14}")


def safe_cell(value: object) -> str:
    """``value`` as a cell a spreadsheet shows as text, never runs as a formula."""
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START) and _E164.fullmatch(text) is None:
        return "'" + text
    return text


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> int:
    """Write ``header`` and ``rows`` to ``path`` (UTF-8), every cell through :func:`safe_cell`.

    The file is written beside ``path`` and renamed into place, so it is never half written.

    Returns:
        The number of rows written (the header not counted).

    Raises:
        OSError: the file cannot be written; ``path`` is then as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow([safe_cell(h) for h in header])
            for row in rows:
                w.writerow([safe_cell(c) for c in row])
                n += 1
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n
