"""The JSONL ledger store: an append-only file, one event per line, written with orjson.

Line 1 is the ``job`` header; every later line is one event (:mod:`bulk_mms.ledger.events`).
This module is the only code that knows the ledger is a file: its path, its bytes, its locks.

Durability. Events are written with one ``os.write`` each (``O_APPEND``) and made durable with
``fsync``. fsync is *group-committed*: a single flusher task writes every event queued since the
last flush and fsyncs once, and every writer awaiting durability is released by the fsync that
covers its line. Many groups in flight therefore share one fsync.

The fsync runs on a worker thread, never on the event loop's: a slow disk (a network file
system, a busy disk) holds up only the writers waiting for that commit, while the loop's timers,
pacing and requests go on and new events queue for the next commit. The thread is the store's
own (:class:`_Syncer`): it starts with the first group commit and ends when the store closes;
a process forked meanwhile starts one of its own for its next commit.

Locks. A run holds ``LEDGER.lock`` (``flock``, with its PID in it) for as long as it runs: a
second run of the same ledger is :class:`~bulk_mms.errors.LedgerLocked`. Whether a run holds it
is asked by taking it for an instant (:meth:`JsonlStore.holder`: a dry run, ``track --follow``
between passes); a run that finds it taken asks again for up to :data:`LOCK_TRIES` times
:data:`LOCK_RETRY_S` before it counts as held, so such a look never locks a run out. ``track`` and
``webhooks`` append ``status`` events beside a run without that lock; every batch of lines takes
the file's own append lock, so lines from different processes never mix.

Crashes. A crash mid-write can leave a torn last line (a prefix, or NUL bytes on some file
systems). On open, everything after the last newline is cut off before anything is appended, so a
torn line never ends up in the middle. A complete line that does not parse, anywhere, is
:class:`~bulk_mms.errors.LedgerCorrupt` naming the line: that is damage, not a crash.

Reading. ``status`` lines start with ``{"event":"status"`` (the encoder writes the kind first), so
a resume, which needs none of them, passes over them without parsing: a tracked ledger has up to
eight per group.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import queue
import stat
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Final

import orjson

from bulk_mms.errors import LedgerCorrupt, LedgerError, LedgerLocked, LedgerUnavailable
from bulk_mms.ledger import checkpoint
from bulk_mms.ledger.commit import GroupCommitted
from bulk_mms.ledger.events import Event, Header, Malformed, decode, encode
from bulk_mms.ledger.fold import LedgerView

#: How a ``status`` line starts: a resume skips them unparsed.
_STATUS_PREFIX = b'{"event":"status"'
#: What a write the disk refused says of the run: it stopped, and nothing is lost.
_RESUMES = "stopped; nothing is lost: rerun once the disk takes writes"
#: Tries a run makes for ``LEDGER.lock``, :data:`LOCK_RETRY_S` apart, before another run holds
#: it (:class:`~bulk_mms.errors.LedgerLocked`): a look at who holds it (:meth:`JsonlStore.holder`)
#: takes it for an instant, and a run starting at that instant waits that instant out. At most
#: a tenth of a second in all, and only when the lock is taken.
LOCK_TRIES: Final = 20
LOCK_RETRY_S: Final = 0.005

#: Why a ledger path that names a folder, a device or a pipe is refused.
NOT_A_FILE: Final = "is not a file (a folder, a device or a pipe): name a file"


class _Tail:
    """Reads a ledger's complete lines, each call from where the last one stopped."""

    def __init__(self, path: Path, digest: hashlib._Hash | None = None) -> None:
        self.path = path
        self.offset = 0
        self.lineno = 0
        #: Takes every complete line read, when given: a checkpoint's hash of its prefix.
        self.digest = digest

    def read(self, *, skip_status: bool = False) -> Iterator[Event]:
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            raise LedgerError(self.path, "no such ledger") from None
        except OSError as exc:
            raise LedgerError(self.path, exc.strerror or str(exc)) from None
        # Locals in the loop, written back as it goes: a tracked ledger has millions of lines.
        offset, lineno = self.offset, self.lineno
        hashed = self.digest.update if self.digest is not None else None
        with f:
            f.seek(offset)
            try:
                for raw in f:
                    if raw[-1:] != b"\n":
                        return  # torn or still being written: read again next time
                    offset += len(raw)
                    lineno += 1
                    if hashed is not None:
                        hashed(raw)
                    if skip_status and raw.startswith(_STATUS_PREFIX):
                        continue
                    try:
                        event = decode(orjson.loads(raw))
                    except orjson.JSONDecodeError:
                        raise LedgerCorrupt(self.path, "not a JSON line", line=lineno) from None
                    except Malformed as exc:
                        raise LedgerCorrupt(self.path, str(exc), line=lineno) from None
                    if event is not None:
                        if lineno == 1 and event.kind != "job":
                            raise LedgerCorrupt(
                                self.path, "the first line is not a job header", line=1
                            )
                        if lineno > 1 and event.kind == "job":
                            raise LedgerCorrupt(self.path, "a second job header", line=lineno)
                        yield event
            finally:
                self.offset, self.lineno = offset, lineno


#: One fsync a :class:`_Syncer`'s thread is asked for: the store's fsync, and the future it
#: settles on the asker's loop.
_Job = tuple[Callable[[], None], asyncio.Future[None]]


class _Syncer:
    """A store's fsync thread: runs each fsync asked by :meth:`sync`, one at a time in the
    order asked, never on the event loop's thread.

    The thread starts with the first :meth:`sync` and ends once :meth:`stop` is asked, after
    the fsyncs asked before it (one running is never interrupted). It holds no reference to
    its store between fsyncs: a store dropped unclosed stops it when collected. It is a
    daemon, so a store left open never holds the process at its exit: an fsync cut short
    there was awaited by nobody (a writer is released only by the fsync that covers its line,
    and a closed store has drained every one).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop: weakref.finalize[..., object] | None = None
        _SYNCERS.add(self)

    def _forked(self) -> None:
        """In a child just forked: the parent's thread is not there, so the next :meth:`sync`
        starts one of the child's own, on a queue of its own (the parent's fsyncs asked
        before the fork are the parent's to run)."""
        if self._stop is not None:
            self._stop.detach()
        self._jobs = queue.SimpleQueue()
        self._thread = self._stop = None

    def sync(self, owner: object, fsync: Callable[[], None]) -> asyncio.Future[None]:
        """A future of the running loop that ``fsync()``, run on the thread, settles: done
        when it returns, or with what it raised. ``owner`` is the store: the thread stops when
        it is dropped unclosed."""
        fut = asyncio.get_running_loop().create_future()
        if self._thread is None:
            thread = threading.Thread(
                target=_serve, args=(self._jobs,), name=self._name, daemon=True
            )
            thread.start()
            self._thread = thread
            self._stop = weakref.finalize(owner, self._jobs.put, None)
        self._jobs.put((fsync, fut))
        return fut

    def stop(self) -> None:
        """Have the thread end once the fsyncs asked so far are done; without waiting."""
        if self._stop is not None:
            self._stop()  # once: a finalizer called is dead
        self._thread = self._stop = None

    @property
    def thread(self) -> threading.Thread | None:
        """The thread, while one is started and not asked to stop."""
        return self._thread


#: Every :class:`_Syncer` alive, for a fork's child to forget their threads
#: (:meth:`_Syncer._forked`).
_SYNCERS: weakref.WeakSet[_Syncer] = weakref.WeakSet()


def _after_fork() -> None:
    """In a child just forked: every syncer forgets its parent's thread."""
    for syncer in list(_SYNCERS):
        syncer._forked()


os.register_at_fork(after_in_child=_after_fork)


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    """A :class:`_Syncer`'s thread: runs each job until it is told to stop (None)."""
    while (job := jobs.get()) is not None:
        fsync, fut = job
        del job  # nothing of a store is held while the thread waits
        try:
            fsync()
        except BaseException as exc:  # a LedgerError, as the store raises it; else a bug
            outcome: BaseException | None = exc
        else:
            outcome = None
        del fsync
        try:  # noqa: SIM105 - a try costs nothing per fsync; suppress() is two calls
            fut.get_loop().call_soon_threadsafe(_settle, fut, outcome)
        except RuntimeError:
            pass  # the loop is closed: nobody awaits this fsync any more
        del fut, outcome


def _settle(fut: asyncio.Future[None], outcome: BaseException | None) -> None:
    """On the asker's loop: settle ``fut`` as its fsync ended, unless it was cancelled."""
    if fut.done():
        return
    if outcome is None:
        fut.set_result(None)
    else:
        fut.set_exception(outcome)


class JsonlStore(GroupCommitted[bytes]):
    """A ledger file, opened by :meth:`open` in one of three modes (see
    :class:`~bulk_mms.ledger.store.LedgerStore`): ``run`` (exclusive, created if missing),
    ``append`` (``status`` events beside a run; the ledger must exist) or ``read``.
    """

    def __init__(self, path: Path, fd: int = -1, lock_fd: int = -1) -> None:
        self.path = path
        super().__init__()
        self.name = str(path)
        self._fd = fd
        self._lock_fd = lock_fd
        self._tail = _Tail(path)
        self._syncer = _Syncer(f"bulk_mms fsync {path.name}")

    @classmethod
    def open(
        cls, path: Path, mode: str = "run", *, pause: Callable[[float], None] = time.sleep
    ) -> JsonlStore:
        """Open ``path`` as ``mode`` says; ``run`` waits between its tries for a lock taken
        (:data:`LOCK_TRIES`) with ``pause``.

        Raises:
            LedgerLocked: ``run``, and another run holds it.
            LedgerError: it is not a file (a folder, a device, a pipe: never read, which
                could wait forever, nor written); its path cannot be looked up (a folder on
                the way not searchable, a name too long); it cannot be created, locked or
                written; or
                (``append``, ``read``) it does not exist or (``append``) is empty.
        """
        try:
            kind: int | None = path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            kind = None  # not there (yet)
        except OSError as exc:  # a folder on the way not searchable, a name too long, a loop
            raise LedgerError(path, f"cannot open: {exc.strerror or exc}") from None
        if kind is not None and not stat.S_ISREG(kind):
            raise LedgerError(path, NOT_A_FILE)
        if mode == "read":
            if kind is None:
                raise LedgerError(path, "no such ledger")
            return cls(path)
        if mode == "append":
            return cls._open_append(path)
        return cls._open_run(path, pause)

    @classmethod
    def _open_run(cls, path: Path, pause: Callable[[float], None]) -> JsonlStore:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except FileExistsError:  # mkdir: the folder's name is a file's
            raise LedgerError(
                path, f"cannot create: {path.parent} is a file, not a folder"
            ) from None
        except OSError as exc:
            raise LedgerError(path, f"cannot create: {exc.strerror or exc}") from None
        if not _lock(lock_fd, pause):
            holder = os.pread(lock_fd, 32, 0).decode(errors="replace").strip()
            os.close(lock_fd)
            raise LedgerLocked(path, holder)
        try:
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                cut_torn_tail(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:
            os.close(lock_fd)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise LedgerUnavailable(path, f"cannot write: disk full; {_RESUMES}") from None
            raise LedgerError(path, f"cannot open for writing: {exc.strerror or exc}") from None
        return cls(path, fd, lock_fd)

    @classmethod
    def _open_append(cls, path: Path) -> JsonlStore:
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

    @staticmethod
    def holder(path: Path) -> str | None:
        """The PID of the run that holds ``path`` now, or None: what "a run is live" means
        for a file. It takes the lock for an instant and gives it back, as a run would take
        it (a run starting meanwhile tries again: :data:`LOCK_TRIES`)."""
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

    async def live_run(self, lease_s: float) -> str | None:
        """The PID of the run that holds this ledger now (:meth:`holder`), or None."""
        return self.holder(self.path)

    def events(self, *, skip_status: bool = False) -> Iterator[Event]:
        """Every event from the first line on (an empty or missing file has none).

        Raises:
            LedgerCorrupt: a complete line is not a ledger event.
        """
        if not self.path.exists():
            return iter(())
        return _Tail(self.path).read(skip_status=skip_status)

    def fold(self, *, skip_status: bool = False) -> LedgerView:
        """The ledger folded: from its checkpoint, if it has a usable one, plus the lines
        after it; a fold that replayed many lines leaves a new checkpoint
        (:mod:`bulk_mms.ledger.checkpoint`). :meth:`new_events` goes on from where it ended.

        Raises:
            LedgerCorrupt: a complete line is not a ledger event.
        """
        if not self.path.exists():
            return LedgerView()
        statuses = not skip_status
        saved = checkpoint.read(self.path, statuses=statuses)
        if saved is None:
            view, tail = LedgerView(statuses=statuses), _Tail(self.path, hashlib.sha256())
        else:
            view, tail = saved.view, _Tail(self.path, saved.prefix)
            tail.offset, tail.lineno = saved.offset, saved.lineno
        start = tail.lineno
        for ev in tail.read(skip_status=skip_status):
            view.apply(ev)
        if tail.lineno - start >= checkpoint.EVERY:
            assert tail.digest is not None
            checkpoint.write(
                self.path, view, tail.offset, tail.lineno, tail.digest, statuses=statuses
            )
        self._tail.offset, self._tail.lineno = tail.offset, tail.lineno  # new_events: after it
        view.close_run()
        return view

    #: A file is exclusive to one run (its lock): there is nothing to claim.
    shared = False

    async def events_of(self, groups: Collection[str]) -> dict[str, list[Event]]:
        return {group: [] for group in groups}  # exclusive: this run's own view holds them all

    def put_header(self, header: Header) -> Header:
        """Append ``header`` now: the file is exclusive to this run (its lock), so no other
        process can have written one since the fold found none."""
        self.append_now(header)
        return header

    def new_events(self) -> Iterator[Event]:
        """The events written since the last call (by this process or another)."""
        return self._tail.read()

    def may_have_new(self) -> bool:
        """False when the file ends where the last read stopped (one stat)."""
        try:
            return self.path.stat().st_size != self._tail.offset
        except OSError:
            return True  # the read says why

    def append_now(self, event: Event) -> None:
        """Write and fsync one event now, blocking. For the header and the run's start."""
        self._write_lines([encode(event)])
        self._fsync()

    def _encode(self, event: Event) -> bytes:
        return encode(event)

    async def _commit(self, lines: list[bytes]) -> None:
        self._write_lines(lines)
        await self._syncer.sync(self, self._fsync)  # meanwhile the loop goes on; events queue

    def _write_lines(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        view = memoryview(data)
        try:
            # The append lock: `track` and `webhooks` append status events to a ledger that a run
            # may be writing. Each batch goes in whole, after a check that the file ends with a
            # newline (a writer killed mid-line leaves a tail that must go first).
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                cut_torn_tail(self._fd)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError as exc:
            reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise LedgerUnavailable(self.path, f"cannot write: {reason}; {_RESUMES}") from None
        self.events_written += len(lines)

    def _fsync(self) -> None:
        """fsync the file.

        Raises:
            LedgerError: the disk refused it.
        """
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise LedgerUnavailable(
                self.path, f"cannot sync to disk: {exc.strerror or exc}; {_RESUMES}"
            ) from None
        self.commits += 1

    async def close(self) -> None:
        """Make everything durable, release the lock and close."""
        try:
            await self.drain()
        finally:
            self.close_sync()

    def close_sync(self) -> None:
        """Release the lock and close without waiting (queued events may be lost); the fsync
        thread ends once the fsync it may be running returns."""
        self._syncer.stop()
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock_fd = -1


def _lock(fd: int, pause: Callable[[float], None]) -> bool:
    """Take a run's lock on ``fd``: whether it was taken within :data:`LOCK_TRIES` tries,
    ``pause(LOCK_RETRY_S)`` between them (another process may hold it for an instant)."""
    for n in range(LOCK_TRIES):
        if n:
            pause(LOCK_RETRY_S)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        return True
    return False


def cut_torn_tail(fd: int) -> None:
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
