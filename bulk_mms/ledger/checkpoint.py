"""Checkpoints of the fold beside a JSONL ledger, like a database's: the view at a byte offset,
so a reader folds only the tail after it.

The ledger stays the one truth, append-only; a checkpoint is a cache of its fold. A fold that
replayed at least :data:`EVERY` lines leaves one (atomically: a temporary file renamed), and the
next fold starts from it. Two kinds, because a resume needs no delivery statuses and a report
needs all of them: ``.LEDGER.resume.fold`` (statuses skipped) and ``.LEDGER.report.fold``.

A checkpoint holds the SHA-256 of every byte of the ledger it summarises (the prefix up to its
offset), and is used only when the ledger's prefix, hashed anew as it is loaded, has that same
hash: a ledger edited anywhere before the offset, even to the same length, is replayed from its
first line. The checkpoint's first line is the SHA-256 of the rest of it, so a damaged
checkpoint is told from a sound one. Anything else that is off (another format, a file that
cannot be read or does not parse, a view that does not load) and the checkpoint is ignored, as
if there were none: the fold replays. Writing one is best effort: a read-only folder only means
the next fold replays too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Final, NamedTuple

import orjson
import structlog

from bulk_mms.ledger.fold import LedgerView

log = structlog.get_logger(__name__)

#: A fold that replayed at least this many lines leaves a checkpoint.
EVERY: Final = 20_000
#: The checkpoint's own format; another is ignored.
VERSION: Final = 13
_CHUNK: Final = 1 << 20


class Saved(NamedTuple):
    """A checkpoint that still describes its ledger."""

    #: The fold of the ledger's first ``offset`` bytes, mid-stream (its run not closed).
    view: LedgerView
    #: Where the lines after it start, and how many lines it covers.
    offset: int
    lineno: int
    #: SHA-256 of those bytes, ready to take the lines after them (:func:`write`'s ``prefix``).
    prefix: hashlib._Hash


def path_for(ledger: Path, statuses: bool) -> Path:
    kind = "report" if statuses else "resume"
    return ledger.with_name(f".{ledger.name}.{kind}.fold")


def _hash_prefix(ledger: Path, offset: int) -> hashlib._Hash | None:
    """SHA-256 of the ledger's first ``offset`` bytes; None if it has fewer or cannot be read."""
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    left = offset
    try:
        with ledger.open("rb", buffering=0) as f:
            while left > 0:
                n = f.readinto(view[: min(left, _CHUNK)])
                if not n:
                    return None  # shorter than the checkpoint: truncated or replaced
                digest.update(view[:n])
                left -= n
    except OSError:
        return None
    return digest


def _sealed(path: Path) -> memoryview | None:
    """The checkpoint's body, if it has one and its first line is the body's SHA-256."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    end = raw.find(b"\n")
    body = memoryview(raw)[end + 1 :]  # not a copy: a million recipients' is tens of MB
    if end < 0 or raw[:end] != hashlib.sha256(body).hexdigest().encode():
        if raw:
            log.info("checkpoint.damaged", checkpoint=str(path))
        return None
    return body


def read(ledger: Path, *, statuses: bool) -> Saved | None:
    """The checkpoint beside ``ledger``, if it is sound and its hash is the ledger prefix's."""
    path = path_for(ledger, statuses)
    body = _sealed(path)
    if body is None:
        return None
    try:
        try:
            data = orjson.loads(body)
        finally:
            body.release()  # the file's bytes go before the view is made of what they say
            del body
        if data["version"] != VERSION:
            return None
        offset, lineno, expected = int(data["offset"]), int(data["lineno"]), data["sha256"]
        prefix = _hash_prefix(ledger, offset)
        if prefix is None or prefix.hexdigest() != expected:
            log.info("checkpoint.stale", checkpoint=str(path))
            return None
        return Saved(LedgerView.from_state(data["view"]), offset, lineno, prefix)
    except Exception as exc:  # a cache that does not load, however it fails: replay
        log.info("checkpoint.unreadable", checkpoint=str(path), error=repr(exc))
        return None


def write(
    ledger: Path,
    view: LedgerView,
    offset: int,
    lineno: int,
    prefix: hashlib._Hash,
    *,
    statuses: bool,
) -> None:
    """Save ``view`` (mid-stream, before its run is closed) as the fold of the ledger's first
    ``offset`` bytes, whose SHA-256 ``prefix`` holds."""
    path = path_for(ledger, statuses)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    body = orjson.dumps(
        {
            "version": VERSION,
            "offset": offset,
            "lineno": lineno,
            "sha256": prefix.hexdigest(),
            "view": view.to_state(),
        }
    )
    try:
        with tmp.open("wb") as f:
            f.write(hashlib.sha256(body).hexdigest().encode() + b"\n")
            f.write(body)
        tmp.replace(path)
    except OSError as exc:
        log.debug("checkpoint.unwritable", checkpoint=str(path), error=exc.strerror)
        with contextlib.suppress(OSError):
            tmp.unlink()
