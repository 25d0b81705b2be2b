"""Group commit, for every store: many writers, one commit for all that queued meanwhile.

A store hands :class:`GroupCommit` its ``commit`` (write and make durable a batch: the file's
write and fsync, the database's transaction). Writers :meth:`~GroupCommit.add` an item and,
with ``wait``, are released by the commit that covers it. One flusher runs at a time, so items
are committed in the order they came; while a commit runs, new items queue up and go together
in the next. Many groups in flight therefore share one commit.

A store may also space its commits (``interval``; PostgreSQL's ``commit_delay`` and
``commit_siblings``): after a commit that released several writers, the next one due sooner
than ``interval`` after it ended waits for company, that is until the rest of the interval has
passed or as many writers wait as the last commit released, whichever comes first, and then
takes everything that queued meanwhile. A lone writer never waits, and writers that all wait
at once (nobody else can come) go at once. Every writer is still released only by the commit
that covers its item.

Once a commit fails, the store takes nothing more: every waiter gets the error, and so does
every later add.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import ClassVar, Generic, Protocol, TypeVar

from bulk_mms.coordination import Fence
from bulk_mms.errors import LedgerError
from bulk_mms.ledger.events import Event

T = TypeVar("T")


class _Timer(Protocol):
    def cancel(self) -> None: ...


#: ``loop.call_later``'s shape: run a callback with one argument after a delay (a fake in tests).
CallLater = Callable[[float, Callable[[asyncio.Future[None]], None], asyncio.Future[None]], _Timer]


def _end_wait(company: asyncio.Future[None]) -> None:
    if not company.done():
        company.set_result(None)


class GroupCommit(Generic[T]):
    """Batches items for ``commit``; see the module doc.

    Args:
        commit: writes a batch and makes it durable.
        interval: the least time, in seconds, from the end of a commit that released several
            writers to the start of the next, unless company comes sooner (0: none).
        now: the loop's monotonic time by default (a fake in tests).
        call_later: ``loop.call_later`` by default (a fake in tests).
        where: the store's name, for the error when a commit ends otherwise than it should.
    """

    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[None]],
        interval: float = 0.0,
        *,
        now: Callable[[], float] | None = None,
        call_later: CallLater | None = None,
        where: Callable[[], str] = lambda: "the ledger",
    ) -> None:
        self._commit = commit
        self._where = where
        self.interval = interval
        self._now = now
        self._call_later = call_later
        self._last_end = -math.inf
        #: How many writers the last commit released.
        self._last_waiters = 0
        #: Set while the flusher waits for company: ended early by enough writers.
        self._company: asyncio.Future[None] | None = None
        #: How many drain() calls are waiting: while any is, no commit waits for company.
        self._draining = 0
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
        if (company := self._company) is not None and len(self._waiters) >= self._last_waiters:
            _end_wait(company)
        await fut

    def _flush_soon(self) -> None:
        """Start the flusher (none is running)."""
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        now = self._now or loop.time
        while self._pending:
            if (
                self._last_waiters > 1
                and not self._draining
                and len(self._waiters) < self._last_waiters
                and (rest := self._last_end + self.interval - now()) > 0
            ):
                await self._wait_for_company(loop, rest)
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
            self._last_end, self._last_waiters = now(), len(waiters)
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

    async def _wait_for_company(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """Wait ``seconds``, or less if as many writers come as the last commit released."""
        company = self._company = loop.create_future()
        timer = (self._call_later or loop.call_later)(seconds, _end_wait, company)
        try:
            await company
        finally:
            timer.cancel()
            self._company = None

    async def drain(self) -> None:
        """Wait until everything queued is committed: meanwhile no commit waits for company
        (nobody else is coming), and what a cancelled flusher left is committed anew.

        Raises:
            LedgerError: a commit failed.
        """
        self._draining += 1
        try:
            while self.failed is None:
                if self._company is not None:
                    _end_wait(self._company)
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
        finally:
            self._draining -= 1
        raise self.failed


class GroupCommitted(Generic[T]):
    """What every store shares: events encoded to its items (``_encode``), group-committed by
    its ``_commit``, and counted. A base for the stores, not a store itself."""

    #: Its name for a person (a path, or a URL without its password).
    name: str
    #: The :class:`GroupCommit`'s ``interval``: none unless the store sets one.
    commit_interval: ClassVar[float] = 0.0

    def __init__(self) -> None:
        self._commits: GroupCommit[T] = GroupCommit(
            self._commit, self.commit_interval, where=lambda: self.name
        )
        #: Events written and commits made, for the benchmark and the summary.
        self.events_written = 0
        self.commits = 0

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

    def append_nowait(self, event: Event) -> None:
        """Queue an event; it becomes durable with the next group commit."""
        self._commits.add(self._encode(event))

    def on_failure(self, callback: Callable[[LedgerError], None]) -> None:
        """Have ``callback`` told at once when a commit fails (see :class:`GroupCommit`)."""
        self._commits.on_failure = callback

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
