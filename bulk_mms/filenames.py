"""Whether a file name can be used: given to the OS, and written as text in a ledger or a log.

A name from a job file is text (TOML is UTF-8); a name from the command line or the environment
is the bytes the OS gave, as the locale decoded them. Under a locale whose file names are not
UTF-8 (``LANG=C`` with ``PYTHONUTF8=0``: ASCII), a name with an accent cannot reach the OS, and
one from the command line comes in with bytes left undecoded, which no JSON line can hold. Such
a name is refused before anything is read or written, in one line saying what to change.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["file_name_problem"]

_LOCALE = (
    "cannot be a file name under this locale, whose file names are {encoding}: run bulk-mms "
    "with a UTF-8 locale (LANG=C.UTF-8) or PYTHONUTF8=1"
)


def file_name_problem(path: str | Path) -> str | None:
    """Why ``path`` (relative ones in the current folder, whose name counts too) cannot be
    used, or None when it can: its text and the bytes the OS has for it must be the same
    UTF-8 name. The reason names the path in ASCII (``\\xe9`` for é): the locale that
    cannot name the file cannot print it either."""
    text = os.path.abspath(path)
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:
        return ascii(text) + " " + _LOCALE.format(encoding=sys.getfilesystemencoding())
    try:
        text.encode()
    except UnicodeEncodeError:  # bytes the locale could not decode
        try:
            shown = raw.decode()
        except UnicodeDecodeError:
            shown = raw.decode(errors="backslashreplace")
            return f"'{shown}' is not a UTF-8 file name (bytes of another encoding): rename it"
        return ascii(shown) + " " + _LOCALE.format(encoding=sys.getfilesystemencoding())
    return None
