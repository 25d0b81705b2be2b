"""The held spool (:class:`Spool`): the delivery reports a receiver answered 200 though no
ledger knew their message yet, kept in a file until they are settled, so a receiver stopped
or killed before their group's `sent` line landed does not lose them (Telnyx never delivers
an acknowledged event again).

A report is appended, and the file fsync'd, before its 200 (:meth:`Spool.hold`); one that
cannot be (a full disk, a folder that cannot be written, the spool past :data:`MAX_BYTES`) gets
503, so Telnyx delivers it again: up to 3 times at its URL, then to the failover URL, if any;
past that the report is ``track``'s to fetch. A receiver whose spool cannot be opened and
locked at all does not start (:meth:`Spool.check`). A report leaves the spool once it is
settled (:meth:`Spool.settle`): recorded into a ledger, or looked for by a running receiver for
its whole late window in ledgers read without fault (then counted unmatched, as one that never
was spooled). What a stop, or a ledger that could not be read or written, cut short stays, and
the next receiver on the same ledger (or job) looks for it again, a whole window, from its
start (:meth:`Spool.replay`); ``track`` of a ledger records those whose message the ledger
knows (:func:`~bulk_mms.webhooks.receiver.apply_held`). One held longer ago than
:data:`HELD_MAX_AGE_S` is dropped with a ``webhook.held_expired`` warning. Settled reports are
taken out of the file by rewriting it (:meth:`Spool.compact`: a temporary file renamed over
it), after a look, once at least as many are settled as are held or a report found the file
full; never in a request's path. The file stays at most :data:`MAX_BYTES` long.

Each spool has the file to itself by ``flock``: receivers sharing one (two on a ledger) take
turns, and take out only the reports they settled. What is kept of a report is what matching
needs (:data:`UNKEPT`: not the message's text), one JSON line each: ``{"token", "id", "type",
"at", "data"}`` (the token settles that line alone: :meth:`Spool.token`)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import itertools
import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

from bulk_mms.answers import as_message_id, parse_json
from bulk_mms.config import JobConfig
from bulk_mms.config.folders import user_folder
from bulk_mms.config.settings import API_KEEPS_S
from bulk_mms.ledger import Location
from bulk_mms.ledger.jsonl import cut_torn_tail
from bulk_mms.ledger.store import display, is_database
from bulk_mms.webhooks.events import short_field

log = structlog.get_logger(__name__)

#: The suffix of a spool's file: a JSONL ledger's is ``LEDGER.jsonl.held`` beside it (as its
#: ``.lock``), never a ``*.jsonl`` the account's ledgers are looked for among.
SUFFIX: Final = ".held"
#: Largest a spool's file grows: a report past it gets 503 (about 30,000 reports of a few
#: kilobytes, three times :data:`~bulk_mms.webhooks.base.LATE_MAX`).
MAX_BYTES: Final = 64 * 1024 * 1024
#: How long a held report is kept (seconds; :meth:`Spool.replay` drops an older one). It is of
#: use until its group's `sent` line lands, and that line can land late: a run that ended in
#: doubt about a group (a crash, an answer lost) leaves it to a later run, which writes it
#: once the API's records settle the group (:mod:`bulk_mms.settle`): the next day's run, or
#: the next week's. Past the time the API serves a message
#: (:data:`~bulk_mms.config.settings.API_KEEPS_S`, 10 days, the longest ``[track] max_age``)
#: no status of it is fetched any more either; a report older than that is dropped.
HELD_MAX_AGE_S: Final = float(API_KEEPS_S)
#: Fields of a report's payload not kept: the message itself, which matching never reads.
UNKEPT: Final = frozenset({"text", "subject", "media"})


class SpoolFull(Exception):
    """The spool holds :data:`MAX_BYTES` already."""


@dataclass(frozen=True, slots=True)
class Held:
    """A report a receiver holds (:meth:`Spool.hold`), or read back (:meth:`Spool.replay`)."""

    #: Its line's own token: what settles it (:meth:`Spool.settle`), redelivered or not.
    token: str
    event_id: str
    event_type: str
    #: The event's ``data``, as kept (:data:`UNKEPT` left out).
    data: dict[str, Any]


def spool_for(target: Location | JobConfig) -> Path:
    """Where the receiver of ``target`` spools: beside a JSONL ledger (``LEDGER.jsonl.held``),
    beside a job's file for a job's receiver (``JOB.toml.held``), and for a database's ledger
    in the user's data folder, under a name of the ledger's URL (its secrets left out)."""
    if isinstance(target, JobConfig):
        return target.path.with_name(target.path.name + SUFFIX)
    if is_database(target):
        name = hashlib.sha256(display(target).encode()).hexdigest()[:32]
        return user_folder("data") / "held" / (name + SUFFIX)
    path = Path(target)
    return path.with_name(path.name + SUFFIX)


def kept(data: dict[str, Any]) -> dict[str, Any]:
    """What a spool keeps of an event's ``data``: when it happened and its payload but the
    message (:data:`UNKEPT`)."""
    payload = data.get("payload")
    if isinstance(payload, dict):
        payload = {k: v for k, v in payload.items() if k not in UNKEPT}
    return {"occurred_at": data.get("occurred_at"), "payload": payload}


def _line(record: dict[str, Any]) -> bytes:
    """One spool line: orjson's, or the standard encoder's for what orjson cannot write (an
    integer past 64 bits, which the standard parser reads: :func:`parse_json` reads it back)."""
    try:
        return orjson.dumps(record) + b"\n"
    except orjson.JSONEncodeError:
        return json.dumps(record).encode() + b"\n"


def _read(line: bytes) -> tuple[Held, float] | None:
    """A spool line's report and when it was held; None when it is not one (a line cut
    short by a crash, say)."""
    record = parse_json(line)
    if not isinstance(record, dict):
        return None
    token, event_id, event_type = (
        record.get("token"),
        as_message_id(record.get("id")),
        record.get("type"),
    )
    data, at = record.get("data"), record.get("at")
    if (
        not isinstance(token, str)
        or event_id is None
        or not isinstance(event_type, str)
        or not isinstance(data, dict)
        or not isinstance(at, int | float)
    ):
        return None
    return Held(token, event_id, event_type, data), float(at)


class Spool:
    """A receiver's held reports, in the file at ``path`` (:func:`spool_for`). Blocking, and
    safe from several threads: a receiver calls it in worker threads."""

    def __init__(self, path: Path, *, max_age_s: float, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        #: A report held longer ago than this (seconds) is dropped when replayed.
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        #: The tokens of the reports settled that are still in the file.
        self._settled: set[str] = set()
        #: Whether a report found the file full since it was last compacted.
        self._full = False
        #: Held while the file is: one thread of this process at a time.
        self._using = threading.Lock()
        #: Held while :attr:`_settled` is read or changed (never while the file is written).
        self._settling = threading.Lock()
        self._tokens = itertools.count()
        self._prefix = uuid.uuid4().hex

    def token(self) -> str:
        """A token no other line of any spool has: what a report held is settled by."""
        return f"{self._prefix}-{next(self._tokens)}"

    @contextlib.contextmanager
    def _file(self) -> Iterator[int]:
        """The spool's file, opened for appending (made if missing) and held under ``flock``:
        the file at :attr:`path` once it is held (another receiver's compaction may have
        replaced the one opened).

        Raises:
            OSError: it cannot be made, opened or locked.
        """
        with self._using:
            while True:
                if not self.path.parent.is_dir():
                    _make_folder(self.path.parent)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    if _same_file(fd, self.path):
                        yield fd
                        return
                finally:
                    os.close(fd)

    def check(self) -> None:
        """Make the file (and its folders, durably) if it is missing, and lock it once: what
        a receiver does before it starts, so a spool that can never be written stops it there.

        Raises:
            OSError: it cannot be made, opened for writing or locked.
        """
        with self._file() as fd:
            if os.fstat(fd).st_size == 0:
                _sync_folder(self.path.parent)

    def hold(self, held: Held, now: float) -> None:
        """Append a report (what :func:`kept` keeps of its ``data``) under its token, held at
        wall time ``now``, durably: fsync'd, and its folder too when the file is new. A write
        that fails leaves no part of its line; a last line a crash cut short (no line end, or
        NUL bytes: never fsync'd, so never answered) is cut off first, so the report is a
        line of its own (:func:`~bulk_mms.ledger.jsonl.cut_torn_tail`). Never rewrites the file
        (:meth:`compact` does, off a request's path).

        Raises:
            OSError: it cannot be written (the file is as it was).
            SpoolFull: the file would grow past :attr:`max_bytes` (the next compaction that
                takes a settled report out makes room: :meth:`wants_compaction`).
        """
        record = {"token": held.token, "id": held.event_id, "type": held.event_type, "at": now}
        line = _line(record | {"data": kept(held.data)})
        with self._file() as fd:
            cut_torn_tail(fd)
            size = os.fstat(fd).st_size
            if size + len(line) > self.max_bytes:
                with self._settling:
                    self._full = True
                raise SpoolFull(f"{self.path} holds {size} bytes")
            _append(fd, line, size)
            if size == 0:
                _sync_folder(self.path.parent)

    def settle(self, token: str) -> None:
        """The report held under ``token`` is settled: the next compaction takes it out."""
        with self._settling:
            self._settled.add(token)

    def wants_compaction(self, held: int) -> bool:
        """Whether any report is settled, and the settled are at least as many as the
        ``held`` ones left, or a report found the file full (:meth:`hold`)."""
        with self._settling:
            return bool(self._settled) and (self._full or len(self._settled) >= held)

    def compact(self) -> None:
        """Replace the file with one without the settled reports, nor any line that is not a
        report (each a ``webhook.held_dropped`` warning), through a temporary file renamed
        over it; nothing when none is settled. Another thread or process that waits for the
        file then finds the new one (:meth:`_file`). A folder that cannot be synced after the
        rename is logged (``webhook.held_sync_failed``): the new file stands, and a crash
        before the folder reaches the disk may bring the old one back, whose settled reports
        the next receiver looks for again.

        Raises:
            OSError: it cannot be rewritten (it is as it was).
        """
        with self._settling:
            gone = set(self._settled)
        if not gone:
            return
        with self._file() as fd:
            with os.fdopen(os.dup(fd), "rb") as f:
                f.seek(0)
                lines = [line for line in self._kept_lines(f) if line[0] not in gone]
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            try:
                with tmp.open("wb") as out:
                    out.writelines(line for _, line in lines)
                    out.flush()
                    os.fsync(out.fileno())
                tmp.replace(self.path)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            with self._settling:
                self._settled -= gone
                self._full = False
            try:
                _sync_folder(self.path.parent)
            except OSError as exc:
                log.warning("webhook.held_sync_failed", spool=str(self.path), error=exc.strerror)

    def _kept_lines(self, lines: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
        """The reports' lines of ``lines``, each with its token; one that is not a report's
        is dropped, a ``webhook.held_dropped`` warning."""
        for lineno, line in enumerate(lines, 1):
            found = _read(line)
            if found is None:
                log.warning("webhook.held_dropped", spool=str(self.path), line=lineno)
            else:
                yield found[0].token, line

    def replay(self, now: float) -> list[Held]:
        """The reports held, oldest first, for a receiver starting at wall time ``now`` to
        look for again: those held longer ago than :attr:`max_age_s` are settled instead
        (each a ``webhook.held_expired`` warning), and a line that is not a report is passed
        over (a warning) and taken out at the next compaction. A compaction's temporary file
        that a process gone left behind is removed.

        Raises:
            OSError: the file cannot be read.
        """
        if not self.path.exists():
            return []
        out: list[Held] = []
        with self._file() as fd, os.fdopen(os.dup(fd), "rb") as f:
            lines = f.readlines()
            self._remove_stale()
        for lineno, line in enumerate(lines, 1):
            found = _read(line)
            if found is None:
                log.warning("webhook.held_unreadable", spool=str(self.path), line=lineno)
                continue
            held, at = found
            if now - at > self.max_age_s:
                log.warning(
                    "webhook.held_expired",
                    id=short_field(held.event_id),
                    held_s=round(now - at),
                    max_age_s=self.max_age_s,
                )
                self.settle(held.token)
            else:
                out.append(held)
        return out

    def _remove_stale(self) -> None:
        """Remove the compactions' temporary files (``NAME.PID.tmp``) of processes gone: one
        killed mid-compaction leaves its own (the file held, so none is being written)."""
        prefix = self.path.name + "."
        for tmp in self.path.parent.glob(glob.escape(prefix) + "*.tmp"):
            pid = tmp.name.removeprefix(prefix).removesuffix(".tmp")
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    tmp.unlink()


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: it runs
        return True
    return True


def _make_folder(folder: Path) -> None:
    """Make ``folder`` and those it is in that are missing, each durably: the folder it was
    made in fsync'd.

    Raises:
        OSError: one cannot be made or synced.
    """
    missing: list[Path] = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by another meanwhile
            made.mkdir()
        _sync_folder(made.parent)


def _append(fd: int, line: bytes, size: int) -> None:
    """Append ``line`` to the file of ``fd`` (``size`` bytes long), then fsync it; a write
    that fails leaves it ``size`` bytes long again.

    Raises:
        OSError: it cannot be written.
    """
    try:
        written = os.write(fd, line)
        if written != len(line):  # a full disk takes what fits
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # noqa: TRY301 - undone below too
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is the file at ``path`` still (not one renamed over, nor removed)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so a file made or renamed in it is there after a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
