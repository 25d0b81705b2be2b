"""The output ledger: an append-only JSONL file, one event per line, written with orjson.

Line 1 is a ``job`` header (job name, input fingerprint, grouping, version). Every later line is
an event with an ``event`` field: ``run`` (a run started), ``attempt`` (a request is about to
leave: written *and fsync'd* before it does), ``sent``, ``failed``, ``in_doubt``, ``rejected``,
and ``status`` (a recipient's delivery status, from ``track`` or ``webhooks``: see
:mod:`bulk_mms.delivery`).

Durability. Events are written with one ``os.write`` each (``O_APPEND``) and made durable with
``fsync``. fsync is *group-committed*: a single flusher task writes every event queued since the
last flush and fsyncs once in a worker thread, and every writer awaiting durability is released by
the fsync that covers its line. Many groups in flight therefore share one fsync.

Crashes. A crash mid-write can leave a torn last line (a prefix, or NUL bytes on some file
systems). On open, everything after the last newline is cut off before anything is appended, so a
torn line never ends up in the middle. A complete line that does not parse, anywhere, is
:class:`LedgerCorrupt` naming the line: that is damage, not a crash.

Replay (:func:`replay`) reads each line once with orjson and keeps only the group ids whose
outcome is final, plus the rejected line numbers, so resuming a 125,000-group ledger takes a
fraction of a second and a few megabytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bulk_mms.errors import LedgerCorrupt, LedgerError, LedgerLocked, LedgerMismatch

#: Ledger format version, in the header. Bumped when the meaning of a field changes.
#: 2: the header carries ``campaign``, which every Idempotency-Key includes. A format-1 ledger
#: (no campaign) still resumes, under the keys it was started with.
FORMAT = 2
Event = dict[str, Any]


def now_iso() -> str:
    """UTC now, ISO 8601 with milliseconds: the ``time`` of every event."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(iso: str) -> float:
    """Seconds since the epoch of an event's ``time`` (what :func:`now_iso` writes).

    Raises:
        ValueError: not an ISO 8601 time.
    """
    when = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if when.tzinfo is None:  # a stamp without an offset is UTC, never this machine's zone
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """``sha256:<hex>`` of the file's bytes, as stored (compressed files are hashed compressed)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


# --------------------------------------------------------------------------------------------
# Reading


#: How a ``status`` line starts (the writer puts ``event`` first): replay skips them unparsed.
STATUS_PREFIX = b'{"event":"status"'


def iter_events(path: Path, *, skip_status: bool = False) -> Iterator[tuple[int, Event]]:
    """Yield ``(line number, event)`` for every complete line; ignore a torn last line.

    ``skip_status`` passes over delivery ``status`` lines without parsing them: resuming a
    run needs none of them, and a tracked ledger has up to eight per group.

    Raises:
        LedgerCorrupt: a complete line is not a JSON object with an ``event`` field.
    """
    return Tail(path).read(skip_status=skip_status)


class Tail:
    """Reads a ledger's complete lines, each call from where the last one stopped.

    ``webhooks`` keeps one open on a ledger that a run is still appending to.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lineno = 0

    def read(self, *, skip_status: bool = False) -> Iterator[tuple[int, Event]]:
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            raise LedgerError(self.path, "no such ledger") from None
        except OSError as exc:
            raise LedgerError(self.path, exc.strerror or str(exc)) from None
        # Locals in the loop, written back as it goes: a tracked ledger has millions of lines.
        offset, lineno = self.offset, self.lineno
        with f:
            f.seek(offset)
            try:
                for raw in f:
                    if raw[-1:] != b"\n":
                        return  # torn or still being written: read again next time
                    offset += len(raw)
                    lineno += 1
                    if skip_status and raw.startswith(STATUS_PREFIX):
                        continue
                    try:
                        event = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        raise LedgerCorrupt(self.path, "not a JSON line", line=lineno) from None
                    if not isinstance(event, dict) or "event" not in event:
                        raise LedgerCorrupt(self.path, "not a ledger event", line=lineno)
                    yield lineno, event
            finally:
                self.offset, self.lineno = offset, lineno


@dataclass(slots=True)
class LedgerState:
    """What a ledger says has been done, as needed to resume. Private to the runner."""

    header: Event | None = None
    #: Groups the API accepted.
    sent: set[str] = field(default_factory=set)
    #: Groups the API refused for good. (A group whose retries ran out on a transient error,
    #: ``"retryable": true``, is not here: the next run sends it again.)
    failed: set[str] = field(default_factory=set)
    #: Groups that may have been accepted (an attempt with no outcome, or an ``in_doubt``
    #: event): held unless the operator asks to resend them.
    in_doubt: set[str] = field(default_factory=set)
    #: Input lines already recorded as rejected, so a rerun does not record them twice.
    rejected_lines: set[int] = field(default_factory=set)
    runs: int = 0
    #: The sender each attempted group used: a group keeps it across retries and resumes.
    sender_of: dict[str, str] = field(default_factory=dict)
    #: Wall-clock time of each attempted group's first attempt: its Idempotency-Key's age.
    first_attempt: dict[str, float] = field(default_factory=dict)
    #: Groups with an ``in_doubt`` event of their own (an attempt cut off by a crash has none
    #: until a later run holds it and records one).
    doubt_recorded: set[str] = field(default_factory=set)

    @property
    def campaign(self) -> str | None:
        """The ledger's identity, part of every Idempotency-Key; None for a format-1 ledger."""
        value = self.header.get("campaign") if self.header is not None else None
        return value if isinstance(value, str) and value else None

    def is_done(self, group: str) -> bool:
        """True when the group has a final outcome and must never be sent again."""
        return group in self.sent or group in self.failed

    def outcome(self, kind: str, group: str, *, retryable: bool = False) -> None:
        """Apply a ``sent``, ``failed`` or ``in_doubt`` event: on replay, and as a run writes.

        A transient failure (``retryable``) settles nothing: a group in doubt stays in doubt,
        since its first request may still have been delivered.
        """
        if kind == "sent":
            self.sent.add(group)
            self.in_doubt.discard(group)
        elif kind == "failed":
            if not retryable:
                self.failed.add(group)
                self.in_doubt.discard(group)
        elif kind == "in_doubt" and not self.is_done(group):
            self.in_doubt.add(group)
            self.doubt_recorded.add(group)


def replay(path: Path) -> LedgerState:
    """Read a ledger into a :class:`LedgerState`. An empty or missing file is a fresh state."""
    state = LedgerState()
    if not path.exists() or path.stat().st_size == 0:
        return state
    # groups whose latest event is an attempt: a request may have left before a crash
    open_: set[str] = set()
    for lineno, event in iter_events(path, skip_status=True):
        kind = event["event"]
        try:
            if kind == "attempt":
                gid = event["group"]
                open_.add(gid)
                if "from" in event:
                    state.sender_of[gid] = event["from"]
                if "t0" in event and gid not in state.first_attempt:
                    state.first_attempt[gid] = event["t0"]
            elif kind in ("sent", "failed", "in_doubt"):
                gid = event["group"]
                open_.discard(gid)
                state.outcome(kind, gid, retryable=bool(event.get("retryable")))
            elif kind == "rejected":
                state.rejected_lines.add(event["line"])
            elif kind == "run":
                state.runs += 1
            elif kind == "job":
                if lineno != 1:
                    raise LedgerCorrupt(path, "a second job header", line=lineno)
                state.header = event
        except KeyError as exc:
            raise LedgerCorrupt(path, f"{kind} event without {exc}", line=lineno) from None
    # An attempt with no outcome is a request that may have left before a crash. A later run
    # may have sent (or resent) the group; only what is still open stays in doubt.
    state.in_doubt |= open_ - state.sent - state.failed
    if state.header is None and (
        state.sent or state.failed or state.rejected_lines or state.in_doubt
    ):
        raise LedgerCorrupt(path, "the first line is not a job header", line=1)
    return state


def check_header(path: Path, header: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Refuse to resume a ledger that was written for another job, input or grouping."""
    if header.get("format", FORMAT) > FORMAT:
        raise LedgerMismatch(path, f"written by a newer bulk-mms (format {header['format']})")
    labels = {
        "job": "job name",
        "fingerprint": "input file contents",
        "group_size": "group_size",
        "group_by": "group_by",
        "phone_column": "phone_column",
    }
    for key, label in labels.items():
        if header.get(key) != expected.get(key):
            hint = (
                " (the input file changed since this ledger was started; use a new --ledger)"
                if key == "fingerprint"
                else " (regrouping would resend people already sent; use a new --ledger)"
                if key in ("group_size", "group_by")
                else ""
            )
            raise LedgerMismatch(
                path,
                f"belongs to a different run: {label} was {header.get(key)!r}, "
                f"now {expected.get(key)!r}{hint}",
            )


# --------------------------------------------------------------------------------------------
# Writing


class Ledger:
    """An open ledger: exclusive to this run, appended to with group-committed fsync.

    Use :meth:`open` (not the constructor), then ``await write(event)`` for events that must be
    durable before the caller goes on, :meth:`write_nowait` for those that need not wait, and
    ``await close()`` at the end.
    """

    def __init__(self, path: Path, fd: int, lock_fd: int) -> None:
        self.path = path
        self._fd = fd
        self._lock_fd = lock_fd
        # encoded lines waiting for the flusher, and the futures released by their fsync
        self._pending: list[bytes] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Set once a write or fsync fails: nothing more may be sent.
        self.failed: LedgerError | None = None
        #: Events written and fsyncs done, for the benchmark and the summary.
        self.events_written = 0
        self.fsyncs = 0

    @classmethod
    def open(cls, path: Path) -> Ledger:
        """Lock the ledger for this run, create it if missing, and cut any torn tail.

        Raises:
            LedgerLocked: another run holds it.
            LedgerError: it cannot be created, locked or written.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LedgerError(path, f"cannot create: {exc.strerror or exc}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(lock_fd, 32, 0).decode(errors="replace").strip()
            os.close(lock_fd)
            raise LedgerLocked(path, holder) from None
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                _cut_torn_tail(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:
            os.close(lock_fd)
            raise LedgerError(path, f"cannot open for writing: {exc.strerror or exc}") from None
        return cls(path, fd, lock_fd)

    @staticmethod
    def holder(path: Path) -> str | None:
        """The PID of the run that holds ``path`` now, or None (a dry run's check: it takes
        the lock for an instant and gives it back, as a run would take it)."""
        try:
            lock_fd = os.open(f"{path}.lock", os.O_RDWR)
        except OSError:
            return None  # no lock file: no run has ever held it
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(lock_fd, 32, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(lock_fd)  # closing releases the lock if it was taken
        return None

    @classmethod
    def open_for_status(cls, path: Path) -> Ledger:
        """Open an existing ledger to append ``status`` events, beside a run that may be sending.

        No run lock is taken (``track`` and ``webhooks`` work while a run sends); every write
        still takes the append lock, so lines from different processes never mix.

        Raises:
            LedgerError: the ledger does not exist, is empty, or cannot be written.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            raise LedgerError(path, "no such ledger") from None
        except OSError as exc:
            raise LedgerError(path, f"cannot open for writing: {exc.strerror or exc}") from None
        if os.fstat(fd).st_size == 0:
            os.close(fd)
            raise LedgerError(path, "is empty: nothing has been sent with it")
        return cls(path, fd, -1)

    @property
    def is_empty(self) -> bool:
        return os.fstat(self._fd).st_size == 0

    def write_sync(self, event: Event) -> None:
        """Write and fsync one event now, blocking. For the header and for shutdown paths."""
        self._write_lines([orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)])
        self._fsync()

    def write_nowait(self, event: Event) -> None:
        """Queue an event; it becomes durable with the next group commit."""
        if self.failed is not None:
            raise self.failed
        self._pending.append(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
        self._kick()

    async def write(self, event: Event) -> None:
        """Queue an event and return once an fsync covers it.

        Raises:
            LedgerError: the write or fsync failed (disk full, I/O error). The ledger is then
                closed to further writes; the caller must stop sending.
        """
        if self.failed is not None:
            raise self.failed
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
        self._waiters.append(fut)
        self._kick()
        await fut

    def _kick(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        # One flusher at a time keeps lines in order. While fsync runs in a thread, new events
        # queue up in _pending and go out together in the next round: that is the group commit.
        while self._pending:
            lines, self._pending = self._pending, []
            waiters, self._waiters = self._waiters, []
            try:
                self._write_lines(lines)
                await asyncio.to_thread(self._fsync)
            except LedgerError as exc:
                self.failed = exc
                for fut in waiters + self._waiters:
                    if not fut.done():
                        fut.set_exception(exc)
                self._waiters, self._pending = [], []
                return
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _write_lines(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        view = memoryview(data)
        try:
            # The append lock: `track` and `webhooks` append status events to a ledger that a run
            # may be writing. Each batch goes in whole, after a check that the file ends with a
            # newline (a writer killed mid-line leaves a tail that must go first).
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                _cut_torn_tail(self._fd)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError as exc:
            reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise LedgerError(self.path, f"cannot write: {reason}") from None
        self.events_written += len(lines)

    def _fsync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise LedgerError(self.path, f"cannot sync to disk: {exc.strerror or exc}") from None
        self.fsyncs += 1

    async def drain(self) -> None:
        """Wait until every queued event is durable."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        if self.failed is not None:
            raise self.failed

    async def close(self) -> None:
        """Make everything durable, release the lock and close."""
        try:
            await self.drain()
        finally:
            self.close_sync()

    def close_sync(self) -> None:
        """Release the lock and close without waiting (queued events may be lost)."""
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock_fd = -1


def _cut_torn_tail(fd: int) -> None:
    """Truncate the file after its last newline: what follows is a torn write."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    pos = size
    step = 4096
    while pos > 0:
        start = max(0, pos - step)
        block = os.pread(fd, pos - start, start)
        nl = block.rfind(b"\n")
        if nl >= 0:
            end = start + nl + 1
            if end != size:
                os.ftruncate(fd, end)
            return
        pos = start
    os.ftruncate(fd, 0)  # no newline at all: a torn header
