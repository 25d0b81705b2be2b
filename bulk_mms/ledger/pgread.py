"""The reads of a PostgreSQL ledger on synchronous connections: :class:`PostgresReads`, the
read side of :class:`~bulk_mms.ledger.postgres.PostgresStore`.

A full read (:meth:`PostgresReads.events`: a fold's, as ``track``, ``webhooks``, a run's
resume and a report start) streams every event through a server-side cursor, in one snapshot,
on a connection of its own, so a fold stays a plain iterator. What was appended since
(:meth:`PostgresReads.new_events`: ``track --follow``'s, and a webhook receiver's read for each
id it does not know) comes in pages on one connection the reads keep, each row once, whatever
order the writers commit in: each read begins with a look at the transactions that may still
commit a row (:data:`_WRITERS`, :class:`_Look`), and the read position (:class:`_Position`)
settles only what every such transaction has ended below.

Every round trip is bounded by :data:`~bulk_mms.ledger.pgconnect.DB_TIMEOUT_S` (as every
synchronous connection's is: :func:`~bulk_mms.ledger.pgconnect.sync_connect`): a read of what
is new is made again once on a new connection when its connection was lost or gave no answer,
and a full read is not resumed: past the bound it fails with
:class:`~bulk_mms.errors.LedgerUnavailable` (exit 7), as does a connection not made. Every
driver error becomes a :class:`~bulk_mms.errors.LedgerError`, named by the URL without its
password.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypeVar

import orjson
import psycopg
import structlog

from bulk_mms.clock import since_boot
from bulk_mms.errors import LedgerCorrupt, LedgerError, LedgerUnavailable
from bulk_mms.ledger.events import Event, Malformed, decode
from bulk_mms.ledger.pgconnect import (
    DB_TIMEOUT_S,
    NoAnswer,
    failure,
    is_lost,
    scrub,
    sync_connect,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Every event of the ledger, in seq order: a full read's cursor (:meth:`PostgresReads.events`).
_READ: Final = "SELECT seq, body::text FROM bulk_mms_events WHERE ledger = %s ORDER BY seq"
#: One page of what was appended after a seq but the seqs given already
#: (:meth:`PostgresReads.new_events`): the primary key's range, at most :data:`READ_PAGE`
#: rows.
_READ_PAGE: Final = (
    "SELECT seq, body::text FROM bulk_mms_events "
    "WHERE ledger = %s AND seq > %s AND seq <> ALL(%s::bigint[]) ORDER BY seq LIMIT %s"
)
#: The ledger's highest committed seq, and the transactions that may still commit a row of
#: the events table: those holding the lock every insert and COPY takes on it
#: (``RowExclusiveLock``) from before it draws a seq until it ends (its rows are visible
#: before the lock goes), each named by its virtual transaction id (which it has from its
#: start; an xid only from its first row on). The seq is read in the statement's snapshot,
#: taken before the locks are: every seq up to it was drawn by a transaction that had ended
#: by then or is named (the sequence hands its values out in order, one at a time: its
#: ``CACHE`` is 1, a ``bigserial``'s). And whether one is a prepared transaction (two-phase
#: commit: no backend holds its locks, ``pid`` null): one recovered as the server restarted
#: is named anew, so no name an earlier look found can be told from it. Last, the writers'
#: backends' pids, in the writers' order. A :class:`_Look`.
_WRITERS: Final = """
    SELECT (SELECT max(seq) FROM bulk_mms_events WHERE ledger = %(ledger)s) AS last,
        coalesce(array_agg(l.virtualtransaction ORDER BY l.virtualtransaction), '{}') AS writers,
        coalesce(bool_or(l.pid IS NULL), false) AS prepared,
        coalesce(array_agg(l.pid ORDER BY l.virtualtransaction), '{}') AS pids
    FROM pg_locks l
    WHERE l.locktype = 'relation' AND l.mode = 'RowExclusiveLock' AND l.granted
        AND l.relation = 'bulk_mms_events'::regclass
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
#: :data:`_WRITERS` and the first page of :data:`_READ_PAGE`, in one statement (one round
#: trip a read): a row (last, writers, prepared, pids, seq, body) each, or one with no seq
#: when nothing is new.
_READ_NEW: Final = f"""
    SELECT w.last, w.writers, w.prepared, w.pids, r.seq, r.body FROM ({_WRITERS}) AS w
    LEFT JOIN LATERAL (
        SELECT seq, body::text AS body FROM bulk_mms_events
        WHERE ledger = %(ledger)s AND seq > %(after)s AND seq <> ALL(%(given)s::bigint[])
        ORDER BY seq LIMIT %(page)s) AS r ON true
"""  # noqa: S608 - built of this module's constants only: every value is a parameter
#: Seconds between two looks at the transactions a full read waits for (:data:`_WRITERS`),
#: waited on the server (:data:`_PAUSE`): under libfaketime (a host's clock set off, as the
#: clock tests run one) Python's own sleep fails.
_WRITERS_POLL_S: Final = 0.01
_PAUSE: Final = "SELECT pg_sleep(%s)"
#: Seconds one transaction may hold up what :meth:`PostgresReads.new_events` settles (named
#: by every look since) before it is logged (``ledger.follow_held_up``, once).
HELD_UP_S: Final = 60.0
#: Events one page of :meth:`PostgresReads.new_events` fetches at most: what a read holds of
#: a large backlog at once.
READ_PAGE = 5000
#: :data:`_READ` without delivery statuses (a run's resume folds none).
_READ_SKIPPING_STATUS: Final = (
    "SELECT seq, body::text FROM bulk_mms_events "
    "WHERE ledger = %s AND kind <> 'status' ORDER BY seq"
)


#: The most marks a :class:`_Position` keeps pending: past it, its two oldest become one.
_MARKS: Final = 32


@dataclass(frozen=True, slots=True)
class _Look:
    """What one look at who is writing (:data:`_WRITERS`) found: the ledger's highest
    committed seq, the transactions that may still commit a row of the events table, and
    whether one of them is prepared. Private."""

    last: int
    writers: frozenset[str]
    prepared: bool
    #: Each writer's backend's pid (none for a prepared one).
    pids: Mapping[str, int | None] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> _Look:
        """The look of a row (last, writers, prepared, pids, ...) of :data:`_WRITERS`."""
        pids = dict(zip(map(str, row[1]), row[3], strict=True))
        return cls(int(row[0] or 0), frozenset(pids), bool(row[2]), pids)

    def ended(self, marked: frozenset[str]) -> bool:
        """Whether the transactions ``marked`` (an earlier look's writers) had all ended by
        this look: none is among its writers, and no prepared one is (which may be any of
        them, named anew since: :data:`_WRITERS`)."""
        return not (self.prepared or marked & self.writers)


#: A look that found nobody writing.
_NOBODY: Final = _Look(0, frozenset(), prepared=False)


class _Position:
    """Where the reads of a ledger since its last full read are (rows are numbered by a
    sequence drawn as each is inserted, but transactions commit in any order: a seq below one
    given may still come). Every row up to :attr:`settled` that will ever be committed has
    been given; above it, :attr:`given` holds the seqs given.

    Each read begins with a look (:data:`_WRITERS`, in its first statement), noted as a mark:
    every row up to its seq is committed, or written by one of its transactions. A later look
    that finds none of them is after they all ended, so every such row is visible to each
    statement made after it: the mark is settled once the next read is done (not the read of
    that look: its snapshot was taken before the look). Private."""

    __slots__ = ("given", "marks", "ready", "settled")

    def __init__(self, settled: int = 0) -> None:
        self.settled = settled
        self.given: set[int] = set()
        #: Marks not settled yet: (seq, the transactions that may still commit below it).
        self.marks: list[tuple[int, frozenset[str]]] = []
        #: What the next read done settles: the seq of the marks the last look found ended.
        self.ready = 0

    def give(self, seq: int) -> None:
        if seq > self.settled:
            self.given.add(seq)

    def mark(self, look: _Look) -> None:
        """Note a look made at the start of a read."""
        self.marks.append((look.last, look.writers))
        if len(self.marks) > _MARKS:  # ready no sooner than both would have been
            (a, wa), (b, wb) = self.marks[:2]
            self.marks[:2] = [(max(a, b), wa | wb)]

    def settle(self, look: _Look) -> None:
        """Once a read is done that began with ``look``: settle what the look before it made
        ready, and make ready every mark all of whose transactions it found ended."""
        self.settled = max(self.settled, self.ready)
        ended = [last for last, marked in self.marks if look.ended(marked)]
        self.ready = max([self.settled, *ended])
        self.marks = [(last, marked) for last, marked in self.marks if last > self.ready]
        self.given = {seq for seq in self.given if seq > self.settled}


class PostgresReads:
    """The reads of one ledger on synchronous connections (see the module doc), made by its
    store, which sets :attr:`ledger` before the first read.

    Args:
        conninfo: the database's conninfo for libpq.
        shown: the ledger's URL without its password (:attr:`name`, every error's).
    """

    def __init__(self, conninfo: str, shown: str) -> None:
        self._conninfo = conninfo
        self.name = shown
        #: The ledger's id (in ``bulk_mms_ledgers``).
        self.ledger = 0
        #: What :meth:`new_events` has given since the last full read (:meth:`events`).
        self._position = _Position()
        #: What :meth:`new_events` reads on: made by its first read, kept until the store
        #: closes (made again once when found lost: :meth:`_fetch`).
        self._follow: psycopg.Connection[Any] | None = None
        #: Held while that connection is used, made or closed (reads run in worker threads).
        self._following = threading.Lock()
        #: Each transaction the looks of :meth:`new_events` found writing, and since when
        #: (:func:`~bulk_mms.clock.since_boot`); those logged as holding them up.
        self._writing: dict[str, float] = {}
        self._held_up: set[str] = set()
        self._closed = False
        #: Whether :meth:`new_events` follows its full reads (``append``: ``webhooks``,
        #: ``track``): only then does a full read wait for the writers (:meth:`_quiet`).
        self.follows = False

    def events(self, *, skip_status: bool = False) -> Iterator[Event]:
        """Every event, streamed through a server-side cursor in one transaction (one
        snapshot of the ledger) on a connection of its own, closed as the read ends or is
        given up (a fold's: rare, and long); :meth:`new_events` goes on after it. The
        snapshot is taken once every transaction that may still commit a row below the
        ledger's highest seq has ended (:meth:`_quiet`), so every row up to that seq is in
        it; a store that does not follow (:attr:`follows`: a run's, a report's) waits for
        none (a transaction left open elsewhere holds up no run or report). Each round trip
        (a look, the cursor's opening, each page of :data:`READ_PAGE` rows) is bounded as
        the kept connection's are (:meth:`_step`); a read left without an answer so long
        is not resumed: it fails.

        Raises:
            LedgerError: the database failed (LedgerUnavailable: not reached, lost, no answer
                within :data:`~bulk_mms.ledger.pgconnect.DB_TIMEOUT_S`, or the store closed).
        """
        sql = _READ_SKIPPING_STATUS if skip_status else _READ
        try:
            conn = sync_connect(self._conninfo)
            cur = conn.cursor(name="bulk_mms_read")
            try:
                last = self._quiet(conn, wait=self.follows)
                self._position = position = _Position()
                conn.autocommit = False  # the cursor's transaction: begun by its opening
                self._step(conn, lambda: cur.execute(sql, (self.ledger,)))
                yield from self._events_of(self._pages(conn, cur), position, final=last)
                position.settle(_NOBODY)
            finally:
                conn.close()  # its transaction with it (nothing to commit): no answer awaited
                cur.close()  # with its connection: nothing sent
        except psycopg.Error as exc:
            # a connection lost, a statement cancelled or timed out: the database, not the
            # ledger (as new_events judges it); a rerun reads again
            raise failure(self.name, exc, self._conninfo, "cannot read") from None

    def new_events(self) -> Iterator[Event]:
        """The events committed since the last read, in seq order: each row once, a row
        whose seq is below one given already (drawn before it, committed after) included,
        whatever order the writers commit in (:class:`_Position`). In pages of
        :data:`READ_PAGE`, one statement each, the first with the look at who is writing
        (:data:`_READ_NEW`), on the connection kept (:meth:`_fetch`). One read of
        a store at a time (the caller's to see to): the read position is the store's.

        Raises:
            LedgerError: the database failed (LedgerUnavailable: lost twice, or not reached);
                the events given before it are past the read position.
        """
        position = self._position
        given = sorted(position.given)
        params = {"ledger": self.ledger, "after": position.settled, "given": given}
        first = self._fetch(_READ_NEW, {**params, "page": READ_PAGE})
        position.mark(look := _Look.of(first[0]))
        self._note_writers(look)
        rows = [row[4:] for row in first if row[4] is not None]
        while True:
            yield from self._events_of(rows, position)
            if len(rows) < READ_PAGE:
                break
            rows = self._fetch(_READ_PAGE, (self.ledger, rows[-1][0], given, READ_PAGE))
        position.settle(look)

    def _note_writers(self, look: _Look) -> None:
        """Log, once, each transaction that every look for over :data:`HELD_UP_S` found
        writing (``look`` the latest): it holds up what the reads settle (one left open by an
        operator's ``psql``, say), and the seqs given above that are remembered until it
        ends."""
        now = since_boot()
        self._writing = {w: self._writing.get(w, now) for w in look.writers}
        self._held_up &= self._writing.keys()
        for writer, since in self._writing.items():
            if now - since > HELD_UP_S and writer not in self._held_up:
                self._held_up.add(writer)
                log.warning(
                    "ledger.follow_held_up",
                    ledger=self.name,
                    pid=look.pids.get(writer),
                    virtualtransaction=writer,
                    held_s=round(now - since),
                )

    def _fetch(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """The rows of one statement on the connection kept (made now if there is
        none, within :data:`~bulk_mms.ledger.pgconnect.CONNECT_TIMEOUT_S`), bounded as a
        full read's round trips are (:meth:`_step`); once more on a new connection if it
        was found lost (a read is safe to repeat), or gave no answer within the bound (a
        server stalled, a network gone silent: the connection is then given up as lost).

        Raises:
            LedgerError: the database failed, or the store is closed (LedgerUnavailable: the
                connection was lost twice, or could not be made: :func:`sync_connect`).
        """
        with self._following:
            for last in (False, True):
                if self._closed:
                    raise LedgerUnavailable(self.name, "cannot read: the store is closed")
                if self._follow is None:
                    self._follow = sync_connect(self._conninfo)
                conn = self._follow
                try:  # the whole answer comes with the statement: fetchall makes no trip
                    return self._step(conn, partial(conn.execute, sql, params)).fetchall()
                except LedgerUnavailable as exc:  # no answer within the bound
                    text = exc.message
                except psycopg.Error as exc:
                    text = f"cannot read: {scrub(exc, self._conninfo)}"
                    if not (is_lost(conn) or isinstance(exc, psycopg.OperationalError)):
                        raise LedgerError(self.name, text) from None
                self._follow = None
                conn.close()
                if last:
                    raise LedgerUnavailable(self.name, text) from None
                log.warning("ledger.reconnecting", ledger=self.name, error=text)
        raise AssertionError("unreachable")  # pragma: no cover

    def _pages(
        self, conn: psycopg.Connection[Any], cur: psycopg.ServerCursor[Any]
    ) -> Iterator[tuple[Any, ...]]:
        """The rows of ``cur``, a server-side cursor open on ``conn``, fetched
        :data:`READ_PAGE` at a time, each fetch bounded (:meth:`_step`)."""
        while rows := self._step(conn, lambda: cur.fetchmany(READ_PAGE)):
            yield from rows

    def _step(self, conn: psycopg.Connection[Any], step: Callable[[], T]) -> T:
        """``step()``, one round trip on ``conn`` (bounded by
        :data:`~bulk_mms.ledger.pgconnect.DB_TIMEOUT_S`, as every synchronous connection's
        round trips are: past it ``conn`` is closed).

        Raises:
            LedgerUnavailable: no answer within the bound, or the store is closed.
            psycopg.Error: what ``step`` raised otherwise.
        """
        if self._closed:
            raise LedgerUnavailable(self.name, "cannot read: the store is closed")
        try:
            return step()
        except NoAnswer as exc:
            raise LedgerUnavailable(self.name, f"cannot read: {exc}") from None

    def _quiet(self, conn: psycopg.Connection[Any], *, wait: bool) -> int:
        """The ledger's highest committed seq, with ``wait`` once every transaction that may
        still commit a row below it (:data:`_WRITERS`) has ended: a run's commit takes
        milliseconds (and the server ends one left idle), so the wait is as short, bounded by
        :data:`~bulk_mms.ledger.pgconnect.DB_TIMEOUT_S`, as is each of its statements
        (:meth:`_step`). Without, a read after it may lack such a row: only the rows
        above the seq (committed since) are remembered as given.

        Raises:
            LedgerUnavailable: one of them is still open after that bound, or a statement
                had no answer within it.
        """

        def look() -> _Look:
            row = self._step(
                conn, lambda: conn.execute(_WRITERS, {"ledger": self.ledger}).fetchone()
            )
            assert row is not None
            return _Look.of(row)

        first = look()
        writers = first.writers if wait else frozenset()
        until = since_boot() + DB_TIMEOUT_S
        while writers:
            if since_boot() > until:
                raise LedgerUnavailable(
                    self.name,
                    f"cannot read: a transaction writing to bulk_mms_events is still open "
                    f"after {DB_TIMEOUT_S:g} s (virtualtransaction {min(writers)} in pg_locks)",
                )
            self._step(conn, lambda: conn.execute(_PAUSE, (_WRITERS_POLL_S,)))
            now = look()
            writers = frozenset(w for w in writers if not now.ended(frozenset({w})))
        return first.last

    def _events_of(
        self, rows: Iterable[tuple[Any, ...]], position: _Position, *, final: int = 0
    ) -> Iterator[Event]:
        """The events of rows (seq, body) read in seq order, each noted as given in
        ``position`` as it is given; those up to ``final`` are settled with it (the read's
        snapshot has every row up to ``final`` that will ever be committed)."""
        for seq, body in rows:
            if seq <= final:
                position.settled = seq
            position.give(seq)
            if (event := self.decode(seq, body)) is not None:
                yield event
        position.settled = max(position.settled, final)

    def decode(self, seq: int, body: str) -> Event | None:
        """The event of row ``seq``'s ``body`` (None: a kind this version does not know).

        Raises:
            LedgerCorrupt: the body is not a ledger event.
        """
        try:
            return decode(orjson.loads(body))
        except (orjson.JSONDecodeError, Malformed) as exc:
            raise LedgerCorrupt(self.name, str(exc), line=seq) from None

    def close(self) -> None:
        """Close the connection kept (once a statement under way on it is done); every read
        after fails (LedgerUnavailable)."""
        with self._following:  # after a read under way: its handle is not freed under it
            self._closed = True
            follow, self._follow = self._follow, None
        if follow is not None:
            with contextlib.suppress(psycopg.Error):
                follow.close()
