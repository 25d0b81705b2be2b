"""Group commit, for every store: many writers, one commit for all that queued meanwhile.

A store hands :class:`GroupCommit` its ``commit`` (write and make durable a batch: the file's
write and fsync, the database's transaction). Writers :meth:`~GroupCommit.add` an item and,
with ``wait``, are released by the commit that covers it. One flusher runs at a time, so items
are committed in the order they came; while a commit runs, new items queue up and go together
in the next. Many groups in flight therefore share one commit.

Once a commit fails, the store takes nothing more: every waiter gets the error, and so does
every later add.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from bulk_mms.coordination import Fence
from bulk_mms.errors import LedgerError
from bulk_mms.ledger.events import Event

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Batches items for ``commit``; see the module doc.

    Args:
        commit: writes a batch and makes it durable.
        where: the store's name, for the error when a commit ends otherwise than it should.
    """

    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[None]],
        *,
        where: Callable[[], str] = lambda: "the ledger",
    ) -> None:
        self._commit = commit
        self._where = where
        self._pending: list[T] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: The error that closed the store to writes, once one did.
        self.failed: LedgerError | None = None
        #: Told that error when it happens.
        self.on_failure: Callable[[LedgerError], None] | None = None

    def add(self, item: T) -> None:
        """Queue ``item`` for the next commit.

        Raises:
            LedgerError: an earlier commit failed.
        """
        if self.failed is not None:
            raise self.failed
        self._pending.append(item)
        if self._flusher is None or self._flusher.done():
            self._flush_soon()

    async def add_and_wait(self, item: T) -> None:
        """Queue ``item`` and return once a commit covers it.

        Raises:
            LedgerError: the commit failed; the store takes nothing more.
        """
        if self.failed is not None:
            raise self.failed
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.add(item)
        await fut

    def _flush_soon(self) -> None:
        """Start the flusher (none is running)."""
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while self._pending:
            items, self._pending = self._pending, []
            waiters, self._waiters = self._waiters, []
            try:
                await self._commit(items)
            except BaseException as exc:
                # A store's commit fails with a LedgerError; cancelled, or failing otherwise (a
                # bug), it leaves its items' durability just as unknown: they are never
                # reported durable, and the store takes nothing more.
                self._fail(exc, waiters)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _fail(self, exc: BaseException, waiters: list[asyncio.Future[None]]) -> None:
        """Close the store to writes: every writer waiting, and every later one, gets the
        error (a LedgerError naming the store, for a commit that ended otherwise)."""
        if isinstance(exc, LedgerError):
            failure = exc
        else:
            reason = "was cancelled" if isinstance(exc, asyncio.CancelledError) else "failed"
            failure = LedgerError(self._where(), f"a commit {reason} ({type(exc).__name__})")
            failure.__cause__ = exc
        self.failed = failure
        for fut in waiters + self._waiters:
            if not fut.done():
                fut.set_exception(failure)
        self._waiters, self._pending = [], []
        if self.on_failure is not None:
            self.on_failure(failure)

    async def drain(self) -> None:
        """Wait until everything queued is committed; what a cancelled flusher left is
        committed anew.

        Raises:
            LedgerError: a commit failed.
        """
        while self.failed is None:
            if self._flusher is not None and not self._flusher.done():
                try:
                    await asyncio.shield(self._flusher)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # this drain was cancelled, not only the flusher
            elif self._pending:
                self._flush_soon()
            else:
                return
        raise self.failed


class GroupCommitted(Generic[T]):
    """What every store shares: events encoded to its items (``_encode``), group-committed by
    its ``_commit``, and counted. A base for the stores, not a store itself."""

    #: Its name for a person (a path, or a URL without its password).
    name: str

    def __init__(self) -> None:
        self._commits: GroupCommit[T] = GroupCommit(self._commit, where=lambda: self.name)
        #: Events written and commits made, for the benchmark and the summary.
        self.events_written = 0
        self.commits = 0
        self._kept_back: Callable[[str, tuple[str, ...]], None] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} events_written={self.events_written}>"

    def _encode(self, event: Event) -> T:
        raise NotImplementedError

    async def _commit(self, items: list[T]) -> None:
        raise NotImplementedError

    @property
    def failed(self) -> LedgerError | None:
        """Set once a commit failed: nothing more may be sent."""
        return self._commits.failed

    def append_nowait(self, event: Event, *, fence: Fence | None = None) -> None:
        """Queue an event; it becomes durable with the next group commit. A store that is not
        shared has nothing to fence: ``fence`` is for a shared store (which overrides this)."""
        self._commits.add(self._encode(event))

    def on_failure(self, callback: Callable[[LedgerError], None]) -> None:
        """Have ``callback`` told at once when a commit fails (see :class:`GroupCommit`)."""
        self._commits.on_failure = callback

    def on_kept_back(self, callback: Callable[[str, tuple[str, ...]], None]) -> None:
        """Have ``callback(group, members)`` told of the members a commit left out of a
        ``moved`` event of that group (only a shared store does: see the protocol)."""
        self._kept_back = callback

    async def append(self, event: Event, *, fence: Fence | None = None) -> None:
        """Queue an event and return once a commit covers it. A store that is not shared has
        no claims, so nothing to fence: ``fence`` is for a shared store (which overrides this).

        Raises:
            LedgerError: the commit failed (disk full, I/O error, the database gone). The
                store then takes nothing more; the caller must stop sending.
        """
        await self._commits.add_and_wait(self._encode(event))

    async def drain(self) -> None:
        """Wait until every queued event is durable."""
        await self._commits.drain()
