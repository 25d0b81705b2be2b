"""Checkpoints of the fold beside a JSONL ledger, like a database's: the view at a byte offset,
so a reader folds only the tail after it.

The ledger stays the one truth, append-only; a checkpoint is a cache of its fold. A fold that
replayed at least :data:`EVERY` lines leaves one (atomically: a temporary file renamed), and the
next fold starts from it. Two kinds, because a resume needs no delivery statuses and a report
needs all of them: ``.LEDGER.resume.fold`` (statuses skipped) and ``.LEDGER.report.fold``.

A checkpoint is used only when it still describes the file: same format, and the same bytes
(the header line and the 4 KiB before its offset) where it says. Anything else (the ledger
replaced, truncated or edited, a checkpoint from another version, an unreadable or damaged
file) is ignored, and the fold replays from the first line, as it would without one. Writing
one is best effort: a read-only folder only means the next fold replays too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Final

import orjson
import structlog

from bulk_mms.ledger.fold import LedgerView

log = structlog.get_logger("bulk_mms.ledger")

#: A fold that replayed at least this many lines leaves a checkpoint.
EVERY: Final = 20_000
#: The checkpoint's own format; another is ignored.
VERSION: Final = 4
_WINDOW = 4096


def path_for(ledger: Path, statuses: bool) -> Path:
    kind = "report" if statuses else "resume"
    return ledger.with_name(f".{ledger.name}.{kind}.fold")


def _fingerprint(ledger: Path, offset: int) -> str | None:
    """What the ledger's bytes say at ``offset``: its header line and the window before it."""
    try:
        with ledger.open("rb") as f:
            header = f.readline()
            f.seek(max(0, offset - _WINDOW))
            window = f.read(min(offset, _WINDOW))
    except OSError:
        return None
    if len(window) != min(offset, _WINDOW):
        return None  # shorter than the checkpoint: truncated or replaced
    return hashlib.blake2b(header + b"\0" + window, digest_size=16).hexdigest()


def read(ledger: Path, *, statuses: bool) -> tuple[LedgerView, int, int] | None:
    """The checkpointed view and the offset and line number it reaches, if one is usable."""
    path = path_for(ledger, statuses)
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    try:
        if data["version"] != VERSION:
            return None
        offset, lineno = int(data["offset"]), int(data["lineno"])
        if data["fingerprint"] != _fingerprint(ledger, offset):
            log.info("checkpoint.stale", checkpoint=str(path))
            return None
        return LedgerView.from_state(data["view"]), offset, lineno
    except (KeyError, TypeError, ValueError) as exc:
        log.info("checkpoint.unreadable", checkpoint=str(path), error=str(exc))
        return None


def write(ledger: Path, view: LedgerView, offset: int, lineno: int, *, statuses: bool) -> None:
    """Save ``view`` (mid-stream, before its run is closed) as the fold up to ``offset``."""
    fingerprint = _fingerprint(ledger, offset)
    if fingerprint is None:
        return
    path = path_for(ledger, statuses)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    data = {
        "version": VERSION,
        "offset": offset,
        "lineno": lineno,
        "fingerprint": fingerprint,
        "view": view.to_state(),
    }
    try:
        tmp.write_bytes(orjson.dumps(data))
        tmp.replace(path)
    except OSError as exc:
        log.debug("checkpoint.unwritable", checkpoint=str(path), error=exc.strerror)
        with contextlib.suppress(OSError):
            tmp.unlink()
