"""The PostgreSQL ledger store: the same events as the JSONL file, in a database every host reaches.

A location is a libpq URL with the ledger's name in its query::

    postgresql://USER@HOST:PORT/DB?ledger=NAME

(``ledger`` defaults to ``default``; the job file fills it with the job's name). Passwords come
from the URL, ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads them) and are never shown: the
store's :attr:`name` is the URL without one, and connection errors are scrubbed of it.

Driver: psycopg 3. Its async connection carries the send path (the write-ahead ``attempt`` and
every outcome, group-committed: one transaction per batch of events queued while the last
commit ran, as the JSONL store shares one fsync), and its sync connections carry the reads of
a whole ledger and of what was appended since (:class:`~bulk_mms.ledger.pgread.PostgresReads`,
in a module of their own, :mod:`~bulk_mms.ledger.pgread`); both are the same libpq, with its
own ``~/.pgpass``, ``PG*`` variables and TLS handling, and the binary build needs no compiler.

Schema (:mod:`~bulk_mms.ledger.pgschema`, run by ``bulk-mms db migrate`` and on first use):
``bulk_mms_ledgers`` (one row per ledger) and ``bulk_mms_events`` (one row per event, its JSON
in ``body``, ordered by ``seq``). A webhook event recorded twice (two receivers behind
one load balancer, a redelivery), and an input row rejected by two processes reading the same
input, are refused by unique indexes, not by a read-then-write.

Several processes, on one host or many, may run the same ledger at once (:attr:`shared`): each
claims a group (:class:`PostgresCoordinator`, in ``bulk_mms_claims``) before it sends it, and
keeps its claims alive with a heartbeat; a process whose heartbeat stops for its ``lease_s``
loses its claims to the others, which finish its groups under the same in-doubt rules as a
resume, and a process that ends gives its claims back at once
(:meth:`PostgresCoordinator.release`). Each claim records when it runs out (``expires``: its
holder's lease, on the database's clock), so a host configured with a shorter lease never takes
a live claim of one with a longer. Each claim carries a fence token that grows on every
takeover, and a write-ahead ``attempt`` is inserted only while its writer still holds the claim
with that token (one statement, which also locks the claim row until the attempt is committed):
a process that lost a claim can never send the group. A failure that does not leave its group
in doubt is inserted so too: it would close whatever attempt is open on the group, the taker's
as well, so one whose commit stalled past its writer's lease is refused. One job header per
ledger, by a unique index: processes that start at once on a new ledger end with the same
header and campaign.

Every driver error becomes a :class:`~bulk_mms.errors.LedgerError` at this module's boundary,
named by the URL without its password. During a run, every database call is asynchronous and
bounded (:class:`~bulk_mms.ledger.pgconnect.Link`); a connection found lost is made again once
(a statement that never reached its commit is safe to repeat; a commit whose answer the lost
connection took is looked up by its transaction id, and written again only if it was rolled
back), else the run stops with :class:`~bulk_mms.errors.LedgerUnavailable` (exit 7,
resumable). The server ends a run's transaction left idle past
:data:`~bulk_mms.ledger.pgconnect.IDLE_IN_TRANSACTION_S` (its process paused or cut off), so
the locks it holds keep no other process waiting. Every round trip on a sync connection (the
store's own, and the reads', :mod:`~bulk_mms.ledger.pgread`) is bounded by the same
:data:`~bulk_mms.ledger.pgconnect.DB_TIMEOUT_S`
(:func:`~bulk_mms.ledger.pgconnect.sync_connect`).
A hot standby is refused as a store opens: it takes no writes, and its ``pg_locks`` shows
none of the primary's writers, which a read of what is new waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Callable, Collection, Iterator
from typing import Any, Final, TypeVar

import orjson
import psycopg
import psycopg.conninfo
import psycopg.errors
import structlog

from bulk_mms.clock import Clock, since_boot
from bulk_mms.coordination import Fence
from bulk_mms.errors import ClaimLost, LedgerCorrupt, LedgerError, LedgerUnavailable
from bulk_mms.ledger.commit import GroupCommitted
from bulk_mms.ledger.events import Event, Header, Malformed, Status, decode, to_json
from bulk_mms.ledger.fold import LedgerView
from bulk_mms.ledger.pgbudget import PostgresBudget
from bulk_mms.ledger.pgconnect import Link, failure, split, sync_connect
from bulk_mms.ledger.pgread import PostgresReads
from bulk_mms.ledger.pgschema import migrate
from bulk_mms.policy import MAX_RESENDS

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: When a claim ``c`` runs out: at the ``expires`` its holder set (its own lease, on the
#: database's clock); one whose ``expires`` is missing or older than its last heartbeat
#: (written before schema 8, or renewed since by an older bulk-mms) by the asker's lease
#: (``%(lease)s``) after that heartbeat. Until then its holder is live.
_RUNS_OUT: Final = """
    CASE WHEN c.expires >= c.heartbeat THEN c.expires
         ELSE c.heartbeat + make_interval(secs => %(lease)s) END
"""
#: Whether claim ``c`` may be taken by ``%(owner)s``: it is its own (a renewal), or its
#: owner's lease ran out (:data:`_RUNS_OUT`: it died, or is paused; a takeover).
_MAY_TAKE: Final = f"(c.owner = %(owner)s OR {_RUNS_OUT} < now())"
#: What claim ``c`` becomes when taken: ``%(owner)s``'s, for its lease from now on the
#: database's clock; a takeover grows its fence token.
_TAKEN: Final = """owner = %(owner)s, heartbeat = now(),
    expires = now() + make_interval(secs => %(lease)s),
    token = c.token + (c.owner <> %(owner)s)::int"""
#: Claim a group: a new claim, or one :data:`_MAY_TAKE` (waiting for a lock another
#: transaction holds on it). No row back: a live process holds it. The claim's token comes
#: back.
_CLAIM: Final = f"""
    INSERT INTO bulk_mms_claims AS c (ledger, grp, owner, heartbeat, token, expires)
    VALUES (%(ledger)s, %(grp)s, %(owner)s, now(), 1, now() + make_interval(secs => %(lease)s))
    ON CONFLICT (ledger, grp) DO UPDATE SET {_TAKEN}
    WHERE {_MAY_TAKE}
    RETURNING token
"""  # noqa: S608 - built of this module's constants only: every value is a parameter
#: Claim many groups at once (:meth:`PostgresCoordinator.claim_many`), each as :data:`_CLAIM`
#: does, the ones won coming back with their tokens. It never waits for a row lock, so it
#: holds no lock while waiting for another (a heartbeat, or a commit's fenced attempts, locks
#: several claims in no set order: waiting, the two could deadlock): a claim another
#: transaction has locked is skipped, not won this time (its holder is at work on it, or
#: another process is taking it). The only wait is for a new claim another transaction is
#: inserting, in the groups' order, as every batch inserts them, while holding the locks of
#: the claims it took: a heartbeat renewing one of those (its owner's, run out) as it updates
#: the row waited on could deadlock with it, and PostgreSQL would end one of the two. Its
#: callers ask only for groups that have a claim row (watched because a claim was refused, or
#: taken over), so it inserts none in practice.
_CLAIM_MANY: Final = f"""
    WITH asked AS (SELECT DISTINCT a.grp FROM unnest(%(grps)s::text[]) AS a(grp)),
    free AS (
        SELECT c.grp FROM bulk_mms_claims c
        WHERE c.ledger = %(ledger)s AND c.grp = ANY(%(grps)s::text[]) AND {_MAY_TAKE}
        FOR UPDATE SKIP LOCKED),
    taken AS (
        UPDATE bulk_mms_claims AS c SET {_TAKEN}
        FROM free f WHERE c.ledger = %(ledger)s AND c.grp = f.grp
        RETURNING c.grp, c.token),
    made AS (
        INSERT INTO bulk_mms_claims (ledger, grp, owner, heartbeat, token, expires)
        SELECT %(ledger)s, a.grp, %(owner)s, now(), 1, now() + make_interval(secs => %(lease)s)
        FROM asked a
        WHERE NOT EXISTS (
            SELECT 1 FROM bulk_mms_claims c WHERE c.ledger = %(ledger)s AND c.grp = a.grp)
        ORDER BY a.grp
        ON CONFLICT DO NOTHING
        RETURNING grp, token)
    SELECT grp, token FROM taken UNION ALL SELECT grp, token FROM made
"""  # noqa: S608 - built of this module's constants only: every value is a parameter
#: The most groups one statement reads (:meth:`PostgresStore.events_of`) or claims
#: (:meth:`PostgresCoordinator.claim_many`): each such statement stays well within the
#: :class:`~bulk_mms.ledger.pgconnect.Link`'s bound, however many groups are watched.
BATCH: int = 1000
#: The advisory-lock namespace in which each run holds its ledger (shared: runs never wait on
#: one another) from its store's opening to its end, with the ledger's key
#: (:func:`_ledger_key`) as the second key: by the store's own session, and by its claims'
#: connection from the first claim or heartbeat on (taken again on a connection made after
#: one was lost, so a run whose sessions the server ended is live again by its next
#: heartbeat).
_RUN_LOCK: Final = 0x72756E73
_HOLD_RUN: Final = "SELECT pg_advisory_lock_shared(%s, %s::int)"
#: Given back as the store closes: a closed connection's session may end a moment later.
_FREE_RUN: Final = "SELECT pg_advisory_unlock_shared(%s, %s::int)"
#: A process running the ledger now: a session holding the run lock (:data:`_RUN_LOCK`, named
#: by its ``application_name``: ``bulk-mms pid N``; in this database: the server lists every
#: database's locks, and each numbers its ledgers from 1), or the owner of a claim that has
#: not run out (:data:`_RUNS_OUT`: a run's heartbeat renews its claims until it ends, and it
#: gives them back as it ends, :data:`_RELEASE`; a run of an older bulk-mms takes no run
#: lock, and one killed gives nothing back: its claims run out by their lease).
_LIVE_RUN: Final = f"""
    (SELECT coalesce(nullif(a.application_name, ''), 'database session ' || l.pid)
     FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.classid::bigint = %(lock)s AND l.objid::bigint = %(key)s
     LIMIT 1)
    UNION ALL
    (SELECT c.owner FROM bulk_mms_claims c
     WHERE c.ledger = %(ledger)s AND {_RUNS_OUT} >= now()
     ORDER BY c.heartbeat DESC LIMIT 1)
    LIMIT 1
"""  # noqa: S608 - built of this module's constants only: every value is a parameter
#: Fenced events (write-ahead attempts, failures that close them), each only while its writer
#: holds the group's claim with its token. The claim row stays locked (FOR SHARE) until the
#: event commits, so a takeover either comes first (the event is refused) or waits for it (and
#: then sees it: an attempt leaves the group in doubt, a failure leaves it unsent).
_FENCED_INSERT: Final = """
    INSERT INTO bulk_mms_events (ledger, kind, grp, body)
    SELECT %(ledger)s, a.kind, a.grp, a.body::jsonb
    FROM unnest(%(kinds)s::text[], %(grps)s::text[], %(bodies)s::text[], %(tokens)s::bigint[])
        WITH ORDINALITY AS a(kind, grp, body, token, n)
    WHERE EXISTS (
        SELECT 1 FROM bulk_mms_claims c
        WHERE c.ledger = %(ledger)s AND c.grp = a.grp AND c.owner = %(owner)s
          AND c.token = a.token
        FOR SHARE)
    ORDER BY a.n
    RETURNING grp
"""
#: The ledger's one job header: this one if it has none yet (the unique index decides a race).
_PUT_HEADER: Final = (
    "INSERT INTO bulk_mms_events (ledger, kind, grp, webhook_id, recipient, body) "
    "VALUES (%s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING RETURNING seq"
)
_HEADER: Final = (
    "SELECT seq, body::text FROM bulk_mms_events WHERE ledger = %s AND kind = 'job' "
    "ORDER BY seq LIMIT 1"
)
_HEARTBEAT: Final = """
    UPDATE bulk_mms_claims SET heartbeat = now(), expires = now() + make_interval(secs => %s)
    WHERE ledger = %s AND owner = %s AND grp = ANY(%s)
"""
#: Give back an owner's claims (:meth:`PostgresCoordinator.release`): each runs out at once
#: (``-infinity``, its expiry and its heartbeat alike, so a taker judging by either, an older
#: bulk-mms's included, takes it now) and is no longer the owner's (a renewal of the owner's
#: still under way when it ends takes nothing back). The row stays, with its fence token: the
#: next claim of the group, whoever makes it, is a takeover under the next token (a row
#: deleted would give it token 1 again, which an old fence could match).
_RELEASE: Final = """
    UPDATE bulk_mms_claims SET owner = '', heartbeat = '-infinity', expires = '-infinity'
    WHERE ledger = %s AND owner = %s
"""
_GROUPS_EVENTS: Final = (
    "SELECT grp, seq, body::text FROM bulk_mms_events WHERE ledger = %s AND grp = ANY(%s::text[]) "
    "AND kind <> 'status' ORDER BY seq"
)
_INSERT: Final = (
    "INSERT INTO bulk_mms_events (ledger, kind, grp, webhook_id, recipient, body) "
    "VALUES (%s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING"
)
#: Whether the server is a hot standby: read-only, and its ``pg_locks`` shows none of the
#: primary's writers.
_IN_RECOVERY: Final = "SELECT pg_is_in_recovery()"
_COPY: Final = "COPY bulk_mms_events (ledger, kind, grp, webhook_id, recipient, body) FROM STDIN"
#: Events a unique index may refuse (recorded by another process already): never COPY'd.
_UNIQUE_KINDS: Final = frozenset({"status", "rejected"})
#: The advisory-lock namespace in which one ledger's moves are written one transaction at a
#: time (with the ledger's key, :func:`_ledger_key`, as the second key).
_MOVES_LOCK: Final = 0x6D6F7665
_LOCK_MOVES: Final = "SELECT pg_advisory_xact_lock(%s, %s::int)"
#: The groups each of some numbers was moved out of in a ledger, but for those whose message
#: a ``reached`` event says reached it after all, as the fold counts them (LedgerView.moves;
#: partial indexes: schemas 8 and 12).
_MOVED_OUT_OF: Final = """
    SELECT m.phone, e.grp FROM bulk_mms_events e
    CROSS JOIN LATERAL jsonb_array_elements_text(e.body->'members') AS m(phone)
    WHERE e.ledger = %(ledger)s AND e.kind = 'moved' AND m.phone = ANY(%(phones)s)
    EXCEPT
    SELECT m.phone, e.grp FROM bulk_mms_events e
    CROSS JOIN LATERAL jsonb_array_elements_text(e.body->'members') AS m(phone)
    WHERE e.ledger = %(ledger)s AND e.kind = 'reached' AND m.phone = ANY(%(phones)s)
"""
_SENT_SINCE: Final = """
    SELECT sum(jsonb_array_length(body->'to')) FROM bulk_mms_events
    WHERE kind = 'sent'
      AND extract(epoch FROM (body->>'time')::timestamptz) >= %s
"""
#: The job header of every ledger but one (``%s``: its name), by the header's unique index.
_HEADERS_BESIDE: Final = """
    SELECT l.name, e.body::text FROM bulk_mms_ledgers l
    JOIN bulk_mms_events e ON e.ledger = l.id AND e.kind = 'job'
    WHERE l.name <> %s ORDER BY l.name
"""
_DATABASE_TIME: Final = "SELECT extract(epoch FROM clock_timestamp())::float8"
#: The id of the transaction a commit is about to end (txid_current: PostgreSQL 10 and
#: later alike), and what became of one: 'committed', 'aborted', 'in progress' (its
#: session not ended yet), or NULL (too old to say).
_XACT_ID: Final = "SELECT txid_current()"
_XACT_STATUS: Final = "SELECT txid_status(%s)"
#: Seconds between two looks at a lost commit's transaction still in progress.
_XACT_POLL_S: Final = 0.05


def _ledger_key(ledger: int) -> int:
    """The second key of a ledger's advisory locks (its run lock, :data:`_RUN_LOCK`, and its
    moves', :data:`_MOVES_LOCK`; the first is their namespace): its id (a bigserial, from 1)
    as an ``int4``, the key earlier versions computed in SQL (``(id % 2147483647)::int``), so
    runs of either on one ledger take and see the same locks. Computed here alone."""
    return ledger % 2147483647


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    """``items`` in order, ``size`` at a time."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def follow_database_clock(location: str, follow: Callable[[Callable[[], float]], T]) -> T:
    """``follow`` (:meth:`SystemClock.follow <bulk_mms.clock.SystemClock.follow>`) handed a
    reading of the database's clock at ``location``, on a connection made before (its making
    is no part of the reading's time) and closed after: what a run follows before anything
    else, its send window's first check included.

    Raises:
        LedgerError: the database cannot be reached (exit 7 when it did not answer) or failed.
    """
    conninfo, _, shown = split(location)
    conn = sync_connect(conninfo)

    def now() -> float:
        try:
            row = conn.execute(_DATABASE_TIME).fetchone()
        except psycopg.Error as exc:
            raise failure(shown, exc, conninfo, "cannot read the time") from None
        assert row is not None
        return float(row[0])

    try:
        return follow(now)
    finally:
        conn.close()


class _Fenced:
    """An event waiting for its commit under a fence (:data:`_FENCED_INSERT`). Private."""

    __slots__ = ("body", "fence", "group", "kind", "written")

    def __init__(self, event: Event, fence: Fence) -> None:
        self.kind = event.kind
        self.group: str = getattr(event, "group", "")
        self.body = orjson.dumps(to_json(event)).decode()
        self.fence = fence
        #: Set by the commit: whether the claim still held (the event is in the ledger).
        self.written = False


_Item = tuple[Any, ...] | _Fenced


def _row(ledger: int, ev: Event) -> tuple[Any, ...]:
    body = orjson.dumps(to_json(ev)).decode()
    if isinstance(ev, Status):
        return (ledger, ev.kind, ev.group, ev.webhook_id, ev.recipient, body)
    return (ledger, ev.kind, getattr(ev, "group", None), None, None, body)


def _copy_field(value: object) -> bytes:
    if value is None:
        return b"\\N"
    # COPY's text format: a backslash is doubled; orjson writes no raw tab or newline
    return str(value).encode().replace(b"\\", b"\\\\")


def _copy_line(row: tuple[Any, ...]) -> bytes:
    """One row in COPY's text format."""
    return b"\t".join(map(_copy_field, row)) + b"\n"


class PostgresStore(GroupCommitted[_Item]):
    """A ledger in PostgreSQL; open it with :meth:`open` (see the module doc)."""

    def __init__(self, conninfo: str, name: str, shown: str, conn: psycopg.Connection[Any]) -> None:
        super().__init__()
        self._conninfo = conninfo
        self.ledger_name = name
        self.name = shown
        self._conn = conn
        if (row := conn.execute(_IN_RECOVERY).fetchone()) is not None and row[0]:
            raise LedgerError(
                shown,
                "a read-only standby (pg_is_in_recovery): point BULK_MMS_LEDGER_URL (or "
                "--ledger, or the job's ledger) at the primary",
            )
        migrate(conn)
        self._ledger = self._ledger_id(create=False)
        #: Its full reads and what was appended since, on synchronous connections.
        self._reads = PostgresReads(conninfo, shown)
        self._writer = Link(conninfo, shown)
        #: A run's reads: groups' events (:meth:`events_of`) and a live run (:meth:`live_run`).
        self._reader = Link(conninfo, shown)
        #: Who this process is to the other processes sharing the ledger.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        #: Several processes may run this ledger at once: each group is claimed first.
        self.shared = True
        #: Events written as they are (``ledger copy``), no move held to the resends' limit.
        self.verbatim = False
        #: Whether its session holds the run lock (:data:`_RUN_LOCK`): a run's store does.
        self._holds_run = False

    @classmethod
    def open(cls, location: str, mode: str = "run") -> PostgresStore:
        """Connect and migrate; ``run`` and ``copy`` create the ledger when it is new (other
        runs of it may be going on: they share it).

        Raises:
            LedgerError: the database cannot be reached or used, or is a standby (its
                ``pg_locks`` shows none of the primary's writers); (``append``, ``read``) the
                ledger does not exist.
        """
        conninfo, name, shown = split(location)
        conn = sync_connect(conninfo)
        try:
            return cls._prepared(cls(conninfo, name, shown, conn), mode)
        except psycopg.Error as exc:
            conn.close()
            raise failure(shown, exc, conninfo) from None
        except LedgerError:
            conn.close()
            raise

    @staticmethod
    def _prepared(store: PostgresStore, mode: str) -> PostgresStore:
        if store._ledger is None:
            if mode not in ("run", "copy"):
                raise LedgerError(store.name, "no such ledger")
            store._ledger = store._ledger_id(create=True)
        store.verbatim = mode == "copy"
        store._reads.ledger = store._id
        store._reads.follows = mode == "append"
        if mode == "run":  # held by its session until close_sync (live_run)
            store._conn.execute(_HOLD_RUN, (_RUN_LOCK, _ledger_key(store._id)))
            store._holds_run = True
        return store

    def _ledger_id(self, *, create: bool) -> int | None:
        if create:
            self._conn.execute(
                "INSERT INTO bulk_mms_ledgers (name) VALUES (%s) ON CONFLICT DO NOTHING",
                (self.ledger_name,),
            )
        row = self._conn.execute(
            "SELECT id FROM bulk_mms_ledgers WHERE name = %s", (self.ledger_name,)
        ).fetchone()
        return int(row[0]) if row else None

    @property
    def _id(self) -> int:
        assert self._ledger is not None
        return self._ledger

    # -- reading ----------------------------------------------------------------------------

    def events(self, *, skip_status: bool = False) -> Iterator[Event]:
        return self._reads.events(skip_status=skip_status)

    def fold(self, *, skip_status: bool = False) -> LedgerView:
        return LedgerView.fold(self.events(skip_status=skip_status), statuses=not skip_status)

    def new_events(self) -> Iterator[Event]:
        """The events committed since the last read (:meth:`PostgresReads.new_events
        <bulk_mms.ledger.pgread.PostgresReads.new_events>`).

        Raises:
            LedgerError: the database failed (LedgerUnavailable: lost twice, or not reached);
                the events given before it are past the read position.
        """
        return self._reads.new_events()

    def may_have_new(self) -> bool:
        """Always True: only a query can tell, and no query is cheaper than the read itself
        (one probe of the primary key, on the connection the store keeps), which the event
        loop cannot wait for."""
        return True

    async def events_of(self, groups: Collection[str]) -> dict[str, list[Event]]:
        """Each group's events as the ledger has them now (written by any process), without
        delivery statuses, in one statement for up to :data:`BATCH` groups, each bounded and
        made again on a lost connection (:class:`~bulk_mms.ledger.pgconnect.Link`).

        Raises:
            LedgerError: the database failed (LedgerUnavailable: lost, or no answer in time).
        """
        found: dict[str, list[Event]] = {group: [] for group in groups}
        for chunk in _chunks(list(found), BATCH):

            async def read(
                conn: psycopg.AsyncConnection[Any], chunk: list[str] = chunk
            ) -> list[tuple[Any, ...]]:
                cur = await conn.execute(_GROUPS_EVENTS, (self._id, chunk))
                return await cur.fetchall()

            for grp, seq, body in await self._reader.run(read, "cannot read"):
                if (ev := self._reads.decode(seq, body)) is not None and grp in found:
                    found[grp].append(ev)
        return found

    async def live_run(self, lease_s: float) -> str | None:
        """The process running this ledger now (``bulk-mms pid N``, or a claim's owner:
        ``host:pid:tag``), or None: a run is live from the opening of its store to its end
        (its run lock, :data:`_RUN_LOCK`), and while it holds a claim: a run that ends gives
        its claims back (:meth:`PostgresCoordinator.release`); one killed holds them until
        their lease runs out.

        Raises:
            LedgerError: the database failed (LedgerUnavailable: lost, or no answer in time).
        """

        async def live(conn: psycopg.AsyncConnection[Any]) -> tuple[Any, ...] | None:
            params = {
                "ledger": self._id,
                "lease": lease_s,
                "lock": _RUN_LOCK,
                "key": _ledger_key(self._id),
            }
            cur = await conn.execute(_LIVE_RUN, params)
            return await cur.fetchone()

        row = await self._reader.run(live, "cannot read claims")
        return str(row[0]) if row is not None else None

    def put_header(self, header: Header) -> Header:
        """The ledger's header: ``header`` when it had none, else the one another process
        wrote first (a unique index decides a race).

        Raises:
            LedgerError: the database failed, or the header there cannot be read.
        """
        try:
            if self._conn.execute(_PUT_HEADER, _row(self._id, header)).fetchone() is not None:
                self.events_written += 1
                self.commits += 1
                return header
            row = self._conn.execute(_HEADER, (self._id,)).fetchone()
        except psycopg.Error as exc:
            raise failure(self.name, exc, self._conninfo, "cannot write") from None
        there = self._reads.decode(row[0], row[1]) if row is not None else None
        if not isinstance(there, Header):
            raise LedgerCorrupt(self.name, "its job header cannot be read")
        return there

    # -- writing ----------------------------------------------------------------------------

    def append_now(self, event: Event) -> None:
        try:
            self._conn.execute(_INSERT, _row(self._id, event))
        except psycopg.Error as exc:
            raise failure(self.name, exc, self._conninfo, "cannot write") from None
        self.events_written += 1
        self.commits += 1

    def _encode(self, event: Event) -> _Item:
        return _row(self._id, event)

    def append_nowait(self, event: Event, *, fence: Fence | None = None) -> None:
        """Queue an event, durable with the next commit; under a ``fence``, written only
        while this process still holds the group's claim with it (else left out, and said:
        ``group.claim_lost``)."""
        self._commits.add(self._encode(event) if fence is None else _Fenced(event, fence))

    async def append(self, event: Event, *, fence: Fence | None = None) -> None:
        """Append and return once it is durable; under a ``fence`` (a write-ahead attempt, or
        a failure that closes one), only while this process still holds the group's claim
        with it.

        Raises:
            ClaimLost: another process took the group over: nothing was written; the group
                must not be sent, nor decided, here.
            LedgerError: it could not be made durable; the store takes no more events.
        """
        if fence is None:
            await super().append(event)
            return
        item = _Fenced(event, fence)
        await self._commits.add_and_wait(item)
        if not item.written:
            raise ClaimLost(self.name, item.group)

    async def _commit(self, items: list[_Item]) -> None:
        rows = [i for i in items if isinstance(i, tuple)]
        fenced = [i for i in items if isinstance(i, _Fenced)]
        kept = len(rows)
        held: list[tuple[str, tuple[str, ...]]] = []  # (group, members) left out of moves
        xact: int | None = None  # the transaction whose COMMIT was sent
        written: set[str] = set()

        async def write(conn: psycopg.AsyncConnection[Any]) -> set[str]:
            nonlocal kept, xact, written
            if xact is not None:  # the connection was lost with the COMMIT sent
                if await self._landed(conn, xact):
                    return written  # as that transaction wrote it
                xact = None  # rolled back: nothing of it was written
            written = set()
            held.clear()  # a repeated transaction decides anew
            async with conn.transaction(), conn.cursor() as cur:
                todo = await self._within_resends(cur, rows, held)
                kept = len(todo)
                if any(row[1] in _UNIQUE_KINDS for row in todo):
                    await cur.executemany(_INSERT, todo)  # may repeat: ON CONFLICT DO NOTHING
                elif todo:
                    async with cur.copy(_COPY) as copy:  # the fast path: one stream
                        await copy.write(b"".join(map(_copy_line, todo)))
                if fenced:
                    await cur.execute(_FENCED_INSERT, self._fenced_params(fenced))
                    written = {str(r[0]) for r in await cur.fetchall()}
                await cur.execute(_XACT_ID)
                xact = int((await cur.fetchone() or (0,))[0])
            return written

        # safe to repeat on a new connection: a COMMIT whose answer the lost one took is
        # looked up there first (_landed), and written again only if it was rolled back
        written = await self._writer.run(write, "cannot write")
        for item in fenced:
            item.written = item.group in written
            if not item.written:
                log.warning("group.claim_lost", group=item.group, token=item.fence.token)
        self.events_written += kept + len(written)
        self.commits += 1
        if self._kept_back is not None:
            for group, members in held:
                self._kept_back(group, members)

    async def _landed(self, conn: psycopg.AsyncConnection[Any], xact: int) -> bool:
        """Whether transaction ``xact``, whose COMMIT was sent on a connection lost before
        its answer came, committed (False: it was rolled back), as the server tells on
        ``conn``; a transaction still in progress (its session not ended yet) is asked about
        again until it ends, within the link's bound.

        Raises:
            LedgerUnavailable: the server no longer knows what became of it.
        """
        while True:
            cur = await conn.execute(_XACT_STATUS, (xact,))
            row = await cur.fetchone()
            status = str(row[0]) if row and row[0] is not None else None
            if status in ("committed", "aborted"):
                log.warning("ledger.commit_answer_lost", ledger=self.name, committed=status)
                return status == "committed"
            if status is None:
                raise LedgerUnavailable(self.name, "cannot write: the commit's outcome is unknown")
            await asyncio.sleep(_XACT_POLL_S)

    async def _within_resends(
        self,
        cur: psycopg.AsyncCursor[Any],
        rows: list[tuple[Any, ...]],
        held: list[tuple[str, tuple[str, ...]]],
    ) -> list[tuple[Any, ...]]:
        """``rows`` with each ``moved`` event kept to the numbers it may still move: a number
        moved out of :data:`~bulk_mms.policy.MAX_RESENDS` other groups already (by any
        process: each decides by its own view, which may not have the others' moves) stays
        where it is (added to ``held`` with its group), and a move left with nobody is not
        written. The ledger's moves are
        written one transaction at a time (an advisory lock held to its commit), so two
        processes never both take a number's last resend."""
        moved = [i for i, row in enumerate(rows) if row[1] == "moved"]
        if not moved or self.verbatim:
            return rows
        bodies = {i: orjson.loads(rows[i][5]) for i in moved}
        phones = sorted({str(p) for body in bodies.values() for p in body.get("members", ())})
        await cur.execute(_LOCK_MOVES, (_MOVES_LOCK, _ledger_key(self._id)))
        await cur.execute(_MOVED_OUT_OF, {"ledger": self._id, "phones": phones})
        out_of: dict[str, set[str]] = {}
        for phone, grp in await cur.fetchall():
            out_of.setdefault(str(phone), set()).add(str(grp))
        kept = list(rows)
        for i, body in bodies.items():
            group, members = str(rows[i][2]), [str(p) for p in body.get("members", ())]
            may = [p for p in members if len(out_of.setdefault(p, set()) - {group}) < MAX_RESENDS]
            for phone in may:
                out_of[phone].add(group)
            if may == members:
                continue
            log.warning("delivery.resends_spent", group=group, recipients=len(members) - len(may))
            held.append((group, tuple(p for p in members if p not in may)))
            kept[i] = (*rows[i][:5], orjson.dumps({**body, "members": may}).decode()) if may else ()
        return [row for row in kept if row]

    def _fenced_params(self, fenced: list[_Fenced]) -> dict[str, Any]:
        owners = {i.fence.owner for i in fenced}
        assert len(owners) == 1, "one process writes under its own fences only"
        return {
            "ledger": self._id,
            "owner": owners.pop(),
            "kinds": [i.kind for i in fenced],
            "grps": [i.group for i in fenced],
            "bodies": [i.body for i in fenced],
            "tokens": [i.fence.token for i in fenced],
        }

    async def close(self) -> None:
        try:
            await self.drain()
        finally:
            await self._writer.close()
            await self._reader.close()
            self.close_sync()

    def close_sync(self) -> None:
        self._reads.close()
        with contextlib.suppress(psycopg.Error):
            if self._holds_run and not self._conn.closed:
                self._holds_run = False
                self._conn.execute(_FREE_RUN, (_RUN_LOCK, _ledger_key(self._id)))
            self._conn.close()  # ends the session: its run lock would go with it


class PostgresCoordinator:
    """Claims, their fences and their heartbeat in the ledger's database: the
    :class:`~bulk_mms.coordination.Coordinator` of a run on a :class:`PostgresStore`.

    Args:
        store: the run's store (its ledger, and who this process is: ``store.owner``).
        lease_s: seconds without a heartbeat after which a claim passes to another process.
    """

    shared = True

    def __init__(self, store: PostgresStore, lease_s: float) -> None:
        self.lease_s = lease_s
        self.name = store.name
        self.owner = store.owner
        self._ledger = store._id
        key = _ledger_key(store._id)

        async def hold_run(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(_HOLD_RUN, (_RUN_LOCK, key))

        # a run's claims' connection holds its run lock too: taken again on the connection
        # that replaces a lost one (the store's own may be lost for good: live_run)
        self._link = Link(store._conninfo, store.name, hold=hold_run if store._holds_run else None)
        self._conninfo = store._conninfo
        #: This process's claims: each group's fence token when it last claimed it.
        self._tokens: dict[str, int] = {}
        #: Until when each claim surely holds, on :func:`~bulk_mms.clock.since_boot` (a lease
        #: runs on the server's real time, a suspend included; see :meth:`held_for`).
        self._until: dict[str, float] = {}
        #: Whether it ever asked for a claim (one that failed may still have landed).
        self._asked = False

    async def claim(self, group: str) -> bool:
        async def claim(conn: psycopg.AsyncConnection[Any]) -> tuple[Any, ...] | None:
            cur = await conn.execute(_CLAIM, {**self._params(), "grp": group})
            return await cur.fetchone()

        asked = since_boot()
        self._asked = True
        row = await self._link.run(claim, "cannot claim")
        self._answered(asked, [group], {group: int(row[0])} if row is not None else {})
        return row is not None

    async def claim_many(self, groups: Collection[str]) -> set[str]:
        """Claim each of ``groups`` as :meth:`claim` does, in one statement for up to
        :data:`BATCH` of them (:data:`_CLAIM_MANY`); the ones won. A group another
        transaction has locked at that moment is not won this time, so a claim this process
        holds is renewed by :meth:`claim` (waiting for the lock), never lost to a lock.

        Raises:
            LedgerError: the database failed (LedgerUnavailable: lost, or no answer in time);
                the chunks claimed before it are held.
        """
        asked_for = list(dict.fromkeys(groups))
        held = [group for group in asked_for if group in self._tokens]
        rest = [group for group in asked_for if group not in self._tokens]
        won = {group for group in held if await self.claim(group)}
        for chunk in _chunks(rest, BATCH):

            async def claim(
                conn: psycopg.AsyncConnection[Any], chunk: list[str] = chunk
            ) -> list[tuple[Any, ...]]:
                cur = await conn.execute(_CLAIM_MANY, {**self._params(), "grps": chunk})
                return await cur.fetchall()

            asked = since_boot()
            self._asked = True
            rows = await self._link.run(claim, "cannot claim")
            tokens = {str(grp): int(token) for grp, token in rows}
            self._answered(asked, chunk, tokens)
            won.update(tokens)
        return won

    def _params(self) -> dict[str, Any]:
        """A claim's parameters but its groups'."""
        return {"ledger": self._ledger, "owner": self.owner, "lease": self.lease_s}

    def _answered(self, asked: float, groups: list[str], tokens: dict[str, int]) -> None:
        """Note the claims on ``groups`` asked for at ``asked`` (on
        :func:`~bulk_mms.clock.since_boot`): those in ``tokens`` won with their fence tokens,
        held for the lease from when they were asked for (the server stamped them after);
        the others held by another process, none of this one's."""
        for group in groups:
            if (token := tokens.get(group)) is None:
                self._tokens.pop(group, None)
                self._until.pop(group, None)
            else:
                self._tokens[group] = token
                self._until[group] = asked + self.lease_s

    def fence(self, group: str) -> Fence | None:
        """This process's fence on ``group``; a group it never claimed gets a token no claim
        has (0), so its attempt is refused rather than written unfenced."""
        return Fence(self.owner, self._tokens.get(group, 0))

    def held_for(self, group: str) -> float | None:
        return self._until.get(group, 0.0) - since_boot()

    def let_go(self, decided: Callable[[str], bool]) -> None:
        for group in [g for g in self._until if decided(g)]:
            del self._until[group]
            self._tokens.pop(group, None)

    async def heartbeat(self) -> None:
        groups = list(self._until)  # not let go (:meth:`let_go`)

        async def renew(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(_HEARTBEAT, (self.lease_s, self._ledger, self.owner, groups))

        asked = since_boot()
        await self._link.run(renew, "cannot renew claims")
        answered, until = since_boot(), asked + self.lease_s
        for group in groups:
            held = self._until.get(group)
            if held is not None and held > answered:  # it held until the renewal: renewed
                self._until[group] = max(held, until)

    async def release(self) -> None:
        """Give back every claim this process holds (:data:`_RELEASE`), each group's whatever
        its state, so the others (and ``track --follow``, :meth:`PostgresStore.live_run`) need
        not wait out its lease. Called once the run has ended: no request of this process is
        in flight or leaves after it, no renewal follows, and its events were made durable
        (or failed to be).

        That gives back the groups this run left in doubt too, and that is safe: a claim
        guards who *decides* about a group, not what is decided. Whoever takes a group, now
        or once a lease ran out (a killed run's), decides by the group's events as the ledger
        has them then (:meth:`Sharing.take <bulk_mms.sharing.Sharing.take>`), and a group
        whose write-ahead ``attempt`` is on record with no outcome after it is in doubt
        there: held and settled by the API's records, which say "never accepted" only once
        they are complete (``records_lag_s`` after its last try could have ended, by the
        attempt's own times, not by any claim's), so it is never sent again blindly. Every
        request of this process was preceded by its attempt, made durable under the claim's
        fence before the request left; an attempt still unwritten can no longer be
        (:data:`_RELEASE` takes the owner off the claim, and a takeover grows its token), so
        its request never leaves. A group given back is therefore in no other state than the
        one a takeover after the lease would find it in, only sooner.

        Raises:
            LedgerError: the database failed (LedgerUnavailable: lost, or no answer in time);
                the claims then run out by their lease.
        """
        if not self._asked:
            return  # nothing claimed: no round trip (the database may be why the run ended)

        async def release(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(_RELEASE, (self._ledger, self.owner))

        self._tokens.clear()
        self._until.clear()
        await self._link.run(release, "cannot give claims back")
        self._asked = False

    def account_budget(
        self,
        account: str,
        rate: float,
        clock: Clock,
        *,
        max_cost: float,
        stopped: Callable[[], bool],
    ) -> PostgresBudget:
        """The budget every process naming ``account`` shares, in this database."""
        return PostgresBudget(
            self._conninfo, self.name, account, rate, clock, max_cost=max_cost, stopped=stopped
        )

    async def close(self) -> None:
        await self._link.close()


def sent_since(location: str, since: float) -> int:
    """Recipients every ledger of the database records as sent since ``since`` (epoch)."""
    rows = _asked_once(location, _SENT_SINCE, (since,))
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def headers_beside(location: str) -> list[tuple[str, Header]]:
    """(name, job header) of every other ledger of the database that has a header; one whose
    header is not one this bulk-mms reads is passed over (as a file beside a JSONL ledger
    that is not one is).

    Raises:
        LedgerError: the database cannot be reached or read.
    """
    out: list[tuple[str, Header]] = []
    for other, body in _asked_once(location, _HEADERS_BESIDE, (split(location)[1],)):
        try:
            header = decode(orjson.loads(body))
        except (orjson.JSONDecodeError, Malformed):
            continue
        if isinstance(header, Header):
            out.append((str(other), header))
    return out


def _asked_once(location: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The rows ``sql`` answers, on a connection of its own to the database at ``location``
    (its schema brought up to date first): a command's one question to it.

    Raises:
        LedgerError: the database cannot be reached or read (named without a password).
    """
    conninfo, _, shown = split(location)
    try:
        with sync_connect(conninfo) as conn:
            migrate(conn)
            return conn.execute(sql, params).fetchall()
    except psycopg.Error as exc:
        raise failure(shown, exc, conninfo) from None
