"""Connections to a PostgreSQL ledger's database: made, bounded, named, and their errors said.

Every module that reaches the database (the store and its coordinator in
:mod:`~bulk_mms.ledger.postgres`, the store's reads in :mod:`~bulk_mms.ledger.pgread`, the
shared budget and limits in :mod:`~bulk_mms.ledger.pgbudget`, the suppression list in
:mod:`~bulk_mms.ledger.pgsuppression`) connects through here:

* :func:`split` reads a ledger location (a libpq URL with ``?ledger=NAME``);
* :func:`sync_connect` makes a synchronous connection (a run's start, reports, migrations),
  its connect, its lock waits and each of its round trips bounded;
* :class:`Link` is a run's asynchronous connection: every call bounded by
  :data:`DB_TIMEOUT_S`, made again once when found lost, never closed under another task's
  statement;
* :func:`scrub` says a driver error in one line without the password.

A connection that cannot be made is :class:`~bulk_mms.errors.LedgerUnavailable` (exit 7) when
the server did not answer or takes no connections now, else
:class:`~bulk_mms.errors.LedgerError` naming what in the URL to fix (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Final, TypeVar

import psycopg
import psycopg.conninfo
import psycopg.errors
import structlog
import yarl

from bulk_mms.clock import STOPPED_AFTER_S, running_timeout
from bulk_mms.errors import LedgerError, LedgerUnavailable
from bulk_mms.ledger.store import database_url, display, secrets
from bulk_mms.words import one_line

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: No database call of a run waits longer than this (a commit, a claim, a heartbeat, a read of
#: one group), in time the process ran (:func:`~bulk_mms.clock.running_timeout`: an answer
#: that came while it was stopped is read): past it the run stops with LedgerUnavailable,
#: resumable.
DB_TIMEOUT_S: Final = 30.0
#: Seconds to connect before a connection attempt counts as failed.
CONNECT_TIMEOUT_S: Final = 5
#: The longest a synchronous statement (the fold at a run's start, a report) waits for a lock.
LOCK_TIMEOUT_MS: Final = 10_000
#: Seconds the server keeps a run's transaction open while its client sends nothing (the
#: server's ``idle_in_transaction_session_timeout``, then it ends the session): a process
#: paused (SIGSTOP, a suspended VM) or cut off between a statement and its ``COMMIT`` holds
#: row locks (its claim's, the limits' count, the moves' lock) that every other process's
#: claim or count waits on; ended well within :data:`DB_TIMEOUT_S`, those go on, and the
#: holder, woken, finds its transaction gone (its commit refused or repeated under its fence).
IDLE_IN_TRANSACTION_S: float = 10.0


def split(location: str) -> tuple[str, str, str]:
    """``(conninfo for libpq, ledger name, the URL to show)`` of a location.

    Raises:
        LedgerError: not a usable URL.
    """
    url = database_url(location)
    name = url.query.get("ledger") or "default"
    conninfo = url.without_query_params("ledger")
    shown = str(conninfo.with_password(None).with_query(ledger=name))
    # yarl writes a space in the query as "+" (and a "+" as %2B); libpq reads "+" as itself,
    # so a space goes to it as %20 (options=-c search_path=...)
    base, _, query = str(conninfo).partition("?")
    return f"{base}?{query.replace('+', '%20')}" if query else base, name, shown


def scrub(exc: Exception, conninfo: str) -> str:
    """A driver error in one line, without the password whatever the driver put in it, nor
    the statement's text the server quotes after it (``LINE 1: SELECT ...``), nor a control
    character left raw (:func:`~bulk_mms.words.one_line`)."""
    said, _, _ = str(exc).partition("\nLINE ")
    for secret in secrets(yarl.URL(conninfo)):
        said = said.replace(secret, "***")
    return one_line(said) or type(exc).__name__


def failure(shown: str, exc: psycopg.Error, conninfo: str, what: str = "") -> LedgerError:
    """The error for a statement on a synchronous connection (:func:`sync_connect`) that
    failed, in one line (``what`` went wrong first, if given): :class:`LedgerUnavailable`
    (exit 7, a rerun resumes) when the database, not the ledger or its settings, is why (an
    ``OperationalError``: a connection lost or ended, a statement cancelled, a lock another
    session held past :data:`LOCK_TIMEOUT_MS`, said as such); else :class:`LedgerError`."""
    text = f"{what}: {scrub(exc, conninfo)}" if what else scrub(exc, conninfo)
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        held = f"{LOCK_TIMEOUT_MS / 1000:g} s"
        text += f" (another session held a lock on its tables past {held}; a rerun resumes)"
    if isinstance(exc, psycopg.OperationalError):
        return LedgerUnavailable(shown, text)
    return LedgerError(shown, text)


def _not_connected(shown: str, exc: psycopg.Error, conninfo: str) -> LedgerError:
    """The error for a connection that could not be made. A server not reached (refused, no
    answer, no such host), or one that answered it is not taking connections now (starting
    up, shutting down, in recovery, full), is :class:`LedgerUnavailable`, exit 7: a rerun
    resumes once it answers. One that refused the login (no such database or role, a bad
    password), or a URL whose connection parameter libpq cannot take (a value it does not
    know, a word where a number goes, a parameter it has not: :data:`_BAD_PARAMETER`, named),
    is the settings' to fix, exit 2. (libpq gives no SQLSTATE before a session: its message
    says which: a server's refusal is a ``FATAL:`` line.)"""
    text = f"cannot connect: {scrub(exc, conninfo)}"
    if (bad := _BAD_PARAMETER.search(text)) is not None:
        name = next(g for g in bad.groups() if g)
        return LedgerError(shown, f"{text}: fix the URL's parameter {name!r}")
    if any(why in text for why in _BAD_URL):
        return LedgerError(shown, f"{text}: fix the URL")
    if "FATAL:" not in text or any(why in text for why in _NOT_NOW):
        return LedgerUnavailable(shown, f"{text} (a rerun resumes once it answers)")
    return LedgerError(shown, text)


#: What libpq (or psycopg) says, before it tries a server, of a connection parameter it
#: cannot take; the first group that matched is the parameter's name.
_BAD_PARAMETER: Final = re.compile(
    r'invalid URI query parameter: "([^"]+)"'
    r'|key/value separator "=" in URI query parameter: "([^"]+)"'
    r'|invalid connection option "([^"]+)"'
    r'|invalid integer value "[^"]*" for connection option "([^"]+)"'
    r"|invalid (port) number"
    r"|invalid (\w+) value"
    r"|bad value for (\w+)"
)


#: What libpq says, before it tries a server, of a URL it cannot read (a ``%00``, a ``%``
#: not followed by two hex digits, a space, a character out of place).
_BAD_URL: Final = ("percent-encoded", " in URI", "in URI:")


#: What a server says that takes no connections now, but will (PostgreSQL's own words).
_NOT_NOW: Final = (
    "starting up",
    "shutting down",
    "in recovery mode",
    "not yet accepting connections",
    "too many clients",
    "remaining connection slots",
)


#: What every connection asks of its TCP socket unless its URL says otherwise, so a network
#: gone silent (packets dropped, no reset) is found at the network level too, on a connection
#: idle or waiting: keepalive probes after 10 s idle, every 5 s, 3 unanswered ending it (25 s),
#: and data sent but unacknowledged for :data:`DB_TIMEOUT_S` ending it (``tcp_user_timeout``,
#: ms; libpq 12 and later). A slow but live server's host acknowledges both at once, however
#: long its statements take, so neither cuts a slow database short.
KEEPALIVES: Final = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
_TCP_USER_TIMEOUT_FROM: Final = 120000  # the first libpq that knows the parameter


def _connect_args(conninfo: str) -> dict[str, Any]:
    """What every connection of this process gives libpq: a bounded connect
    (:data:`CONNECT_TIMEOUT_S`), TCP keepalives and a bound on data left unacknowledged
    (:data:`KEEPALIVES`), each unless ``conninfo`` sets it itself (the user's choice is
    kept), and its name (so an operator sees, and may end, bulk-mms's sessions)."""
    ours: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, **KEEPALIVES}
    if psycopg.pq.version() >= _TCP_USER_TIMEOUT_FROM:
        ours["tcp_user_timeout"] = round(DB_TIMEOUT_S * 1000)
    own = psycopg.conninfo.conninfo_to_dict(conninfo)
    return {
        **{key: value for key, value in ours.items() if own.get(key) in (None, "")},
        "application_name": f"bulk-mms pid {os.getpid()}",
    }


def _options(conninfo: str, setting: str) -> str:
    """libpq's ``options`` for a connection to ``conninfo``: the URL's own (a ``search_path``
    that puts the ledger's tables in a schema, say), then ``setting`` of ours (``-c
    name=value``), which would otherwise replace them."""
    own = psycopg.conninfo.conninfo_to_dict(conninfo).get("options")
    return f"{own} {setting}" if own else setting


def sync_connect(conninfo: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A synchronous connection (a run's start, reports) whose lock waits are bounded, and
    each of its round trips (:class:`_Bounded`).

    Raises:
        LedgerError: it could not be made (:func:`_not_connected`: exit 7 when the server
            did not answer).
    """
    try:
        # a connect_timeout the URL gives that is not a number is its mistake, said as such
        # (_not_connected)
        psycopg.conninfo.timeout_from_conninfo(psycopg.conninfo.conninfo_to_dict(conninfo))
        return _Bounded.connect(
            conninfo,
            autocommit=autocommit,
            options=_options(conninfo, f"-c lock_timeout={LOCK_TIMEOUT_MS}"),
            **_connect_args(conninfo),
        )
    except psycopg.Error as exc:
        raise _not_connected(display(conninfo), exc, conninfo) from None


class NoAnswer(psycopg.OperationalError):
    """A round trip on a synchronous connection (:func:`sync_connect`) that got no answer
    within :data:`DB_TIMEOUT_S`; its connection is closed."""


class _Bounded(psycopg.Connection[Any]):
    """A synchronous connection each of whose round trips (a statement, a page of a cursor, a
    commit) ends within :data:`DB_TIMEOUT_S` of time the process ran (as
    :func:`~bulk_mms.clock.running_timeout` counts it: a stretch in which it did not run counts
    as one look's worth, so an answer that came meanwhile is read): past it, with nothing to
    read, the connection is closed and the round trip raises :class:`NoAnswer` (an
    ``OperationalError``, which :func:`failure` says as exit 7). The server may be slow (a
    lock timeout bounds its waits); this bounds one that does not answer at all (a network
    gone silent, a server stalled). Private: made by :func:`sync_connect`; one thread uses
    it at a time (psycopg's lock), so the round trip that closes it is its only user."""

    #: The clock its round trips are timed by (a test's may leap, as a stopped process's).
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        if timeout is not None:  # psycopg's own bounded waits (a cancel, notifies)
            return super().wait(gen, interval, timeout)
        return super().wait(self._within(gen, DB_TIMEOUT_S, interval), interval)

    def _within(
        self, gen: Generator[Any, Any, Any], seconds: float, interval: float
    ) -> Generator[Any, Any, Any]:
        """``gen`` (psycopg's: it yields what it waits for, is sent what is ready, and is sent
        "nothing" every ``interval`` of a wait with nothing ready), given up once ``seconds``
        of running time passed with nothing ready."""
        left, last = seconds, self.clock()
        try:
            waiting = next(gen)
        except StopIteration as done:
            return done.value
        while True:
            ready = yield waiting
            now = self.clock()
            gap, last = now - last, now
            left -= interval if gap - interval >= STOPPED_AFTER_S else gap
            if left <= 0 and not ready:
                self.close()  # its state mid-statement unknown: nothing more is sent on it
                raise NoAnswer(f"no answer within {seconds:g} s")
            try:
                waiting = gen.send(ready)
            except StopIteration as done:
                return done.value


class _Closed(Exception):
    """A :class:`Link` used after its :meth:`~Link.close`."""


def is_lost(conn: psycopg.BaseConnection[Any] | None) -> bool:
    """Whether ``conn`` is none, closed, or found broken: a new one must be made."""
    return conn is None or conn.closed or conn.broken


def shut_down(conn: psycopg.BaseConnection[Any]) -> None:
    """Shut ``conn``'s socket down (never raises): a statement waiting on it, in any task or
    thread, fails at once and finds the connection lost. Its handle stays its owner's to
    close, after the statement has left it."""
    with contextlib.suppress(OSError, psycopg.Error):
        fd = conn.fileno()
        with socket.socket(fileno=os.dup(fd)) as shut:  # a copy: the handle keeps its own
            shut.shutdown(socket.SHUT_RDWR)


class Link:
    """One asynchronous connection of a run, bounded and made again once when found lost:
    how the store, the coordinator, the shared budget and the shared limits reach the
    database during a run.

    Tasks share the connection (psycopg runs their statements one at a time). One is never
    closed while a task is in a statement on it: psycopg's statement keeps using the
    connection's libpq handle as it waits, and a handle freed under it (its socket number
    then taken by the next connection) leaves that task waiting until its timeout, or
    reading freed memory. A connection given up while others use it (a statement that found
    it lost, or ran out of time; :meth:`close`) is made unusable at once, its socket shut
    down, so their statements fail now, and is closed by the last of them to leave it.

    Args:
        conninfo: for libpq (may hold a password: never shown).
        name: the URL to show.
        timeout_s: no call waits longer, in time this process ran (LedgerUnavailable).
        hold: run on each connection as it is made, before any other work: what the
            process holds by its session while the link lives (a session's advisory lock),
            taken again on the connection that replaces a lost one.
    """

    def __init__(
        self,
        conninfo: str,
        name: str,
        timeout_s: float = DB_TIMEOUT_S,
        *,
        hold: Callable[[psycopg.AsyncConnection[Any]], Awaitable[object]] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._name = name
        self.timeout_s = timeout_s
        self._hold = hold
        self._conn: psycopg.AsyncConnection[Any] | None = None
        #: one connection made at a time (tasks that find none wait for it, not make more)
        self._connecting = asyncio.Lock()
        #: how many tasks are in a statement on each connection (by its id)
        self._users: dict[int, int] = {}
        #: closed for good (:meth:`close`): no connection is made again
        self._closed = False

    async def _connected(self) -> psycopg.AsyncConnection[Any]:
        async with self._connecting:
            if self._closed:
                raise _Closed
            if is_lost(self._conn):
                await self._drop(self._conn)
                idle = max(1, round(IDLE_IN_TRANSACTION_S * 1000))
                # the new connection is closed by its local name: a close() meanwhile (while
                # it is held) has given up self._conn already
                self._conn = conn = await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    options=_options(
                        self._conninfo, f"-c idle_in_transaction_session_timeout={idle}"
                    ),
                    **_connect_args(self._conninfo),
                )
                if self._hold is not None:
                    try:
                        await self._hold(conn)
                    except BaseException:
                        self._conn = None
                        await self._close_now(conn)
                        raise
                if self._closed:  # closed while this connection was being made or held
                    self._conn = None
                    await self._close_now(conn)
            if self._conn is None:
                raise _Closed
            return self._conn

    async def _on(
        self,
        conn: psycopg.AsyncConnection[Any],
        work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
    ) -> T:
        """``work`` on ``conn``, counted as a user of it while it runs; closed after it when
        it was given up meanwhile and this was its last user."""
        key = id(conn)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            return await work(conn)
        finally:
            left = self._users.pop(key) - 1
            if left:
                self._users[key] = left
            elif conn is not self._conn:  # given up while this task used it
                await self._close_now(conn)

    async def run(
        self,
        work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
        what: str,
        *,
        repeatable: Callable[[], bool] = lambda: True,
    ) -> T:
        """``work`` on the connection, within :attr:`timeout_s`; once more on a new
        connection if this one was lost and ``repeatable()`` says nothing of the first try
        can have been committed.

        Raises:
            LedgerUnavailable: the database was lost (twice, or past a commit), or did not
                answer in time.
            LedgerError: any other driver error.
        """
        for last in (False, True):
            conn: psycopg.AsyncConnection[Any] | None = None  # this try's, once it has one
            try:
                async with running_timeout(self.timeout_s):
                    conn = await self._connected()
                    return await self._on(conn, work)
            except _Closed:
                raise LedgerUnavailable(self._name, f"{what}: its connection was closed") from None
            except TimeoutError:
                await self._drop(conn)
                raise LedgerUnavailable(
                    self._name, f"{what}: no answer within {self.timeout_s:g} s"
                ) from None
            except psycopg.Error as exc:
                # a session the server ended (its FATAL may carry any SQLSTATE: an
                # idle-in-transaction timeout's is 25P03) leaves the connection broken: lost;
                # so does any OperationalError, which psycopg may raise before it has seen
                # the connection break (ended in the middle of a pipelined executemany: "cannot
                # exit pipeline mode while busy"), and after which the connection is dropped
                lost = is_lost(conn) or isinstance(exc, psycopg.OperationalError)
                if not lost:
                    raise LedgerError(self._name, f"{what}: {self._text(exc)}") from None
                await self._drop(conn)
                # ended for idling in its transaction, the server rolled that back: even a
                # COMMIT sent meanwhile committed nothing, so the work may be done again
                undone = isinstance(exc, psycopg.errors.IdleInTransactionSessionTimeout)
                if lost and not last and (undone or repeatable()):
                    log.warning("ledger.reconnecting", ledger=self._name, error=self._text(exc))
                    continue
                raise LedgerUnavailable(self._name, f"{what}: {self._text(exc)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _text(self, exc: Exception) -> str:
        return scrub(exc, self._conninfo)

    async def _drop(self, conn: psycopg.AsyncConnection[Any] | None) -> None:
        """Give ``conn`` up: the next statement makes a new connection. Closed now when no
        task is in a statement on it, else its socket is shut down (their statements fail
        at once) and the last to leave closes it."""
        if conn is None:
            return
        if conn is self._conn:
            self._conn = None
        if not self._users.get(id(conn)):
            await self._close_now(conn)
            return
        shut_down(conn)

    @staticmethod
    async def _close_now(conn: psycopg.AsyncConnection[Any]) -> None:
        with contextlib.suppress(psycopg.Error, TimeoutError, OSError):
            async with asyncio.timeout(1.0):
                await conn.close()

    async def close(self) -> None:
        """Close the connection for good (never raises); one a task is still in a statement
        on is closed as that statement fails, and a call after this raises
        :class:`LedgerUnavailable` rather than connecting again (what the link held by its
        session, such as an advisory lock, is not taken again behind its owner's back)."""
        self._closed = True
        await self._drop(self._conn)
