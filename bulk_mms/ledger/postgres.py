"""The PostgreSQL ledger store: the same events as the JSONL file, in a database every host reaches.

A location is a libpq URL with the ledger's name in its query::

    postgresql://USER@HOST:PORT/DB?ledger=NAME

(``ledger`` defaults to ``default``; the job file fills it with the job's name). Passwords come
from the URL, ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads them) and are never shown: the
store's :attr:`name` is the URL without one, and connection errors are scrubbed of it.

Driver: psycopg 3. Its async connection carries the send path (the write-ahead ``attempt`` and
every outcome, group-committed: one transaction per batch of events queued while the last
commit ran, as the JSONL store shares one fsync), and its sync connection streams reads through
a server-side cursor, so a fold stays a plain iterator; both are the same libpq, with its own
``~/.pgpass``, ``PG*`` variables and TLS handling, and the binary build needs no compiler.

Schema (:func:`migrate`, versioned in ``bulk_mms_schema``; run by ``bulk-mms db migrate`` and on
first use): ``bulk_mms_ledgers`` (one row per ledger) and ``bulk_mms_events`` (one row per event,
its JSON in ``body``, ordered by ``seq``). A webhook event recorded twice (two receivers behind
one load balancer, a redelivery), and an input row rejected by two processes reading the same
input, are refused by unique indexes, not by a read-then-write.

Several processes, on one host or many, may run the same ledger at once (:attr:`shared`): each
claims a group (:meth:`PostgresStore.claim`, in ``bulk_mms_claims``) before it sends it, and
keeps its claims alive with a heartbeat; a process whose heartbeat stops for ``lease_s`` loses
its claims to the others, which finish its groups under the same Idempotency-Keys and the same
in-doubt rules as a resume.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import orjson
import psycopg
import yarl

from bulk_mms.clock import Clock
from bulk_mms.errors import LedgerCorrupt, LedgerError
from bulk_mms.ledger.commit import GroupCommitted
from bulk_mms.ledger.events import Event, Malformed, Status, decode, to_json
from bulk_mms.ledger.fold import LedgerView
from bulk_mms.ledger.pgbudget import PostgresBudget
from bulk_mms.suppression import Suppressed

#: The schema version this bulk-mms writes; :func:`migrate` brings a database up to it.
SCHEMA_VERSION: Final = 5
_MIGRATIONS: Final = {
    1: """
        CREATE TABLE IF NOT EXISTS bulk_mms_ledgers (
            id bigserial PRIMARY KEY,
            name text NOT NULL UNIQUE,
            created timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS bulk_mms_events (
            ledger bigint NOT NULL REFERENCES bulk_mms_ledgers (id) ON DELETE CASCADE,
            seq bigserial NOT NULL,
            kind text NOT NULL,
            grp text,
            webhook_id text,
            recipient text,
            body jsonb NOT NULL,
            PRIMARY KEY (ledger, seq)
        );
        CREATE UNIQUE INDEX IF NOT EXISTS bulk_mms_events_webhook
            ON bulk_mms_events (ledger, webhook_id, recipient) WHERE webhook_id IS NOT NULL;
    """,
    2: """
        CREATE INDEX IF NOT EXISTS bulk_mms_events_group ON bulk_mms_events (ledger, grp);
        CREATE TABLE IF NOT EXISTS bulk_mms_claims (
            ledger bigint NOT NULL REFERENCES bulk_mms_ledgers (id) ON DELETE CASCADE,
            grp text NOT NULL,
            owner text NOT NULL,
            heartbeat timestamptz NOT NULL,
            PRIMARY KEY (ledger, grp)
        );
    """,
    3: """
        CREATE TABLE IF NOT EXISTS bulk_mms_budgets (
            account text PRIMARY KEY,
            tat double precision NOT NULL DEFAULT 0,
            paused_until double precision NOT NULL DEFAULT 0
        );
        CREATE TABLE IF NOT EXISTS bulk_mms_sender_pauses (
            account text NOT NULL,
            sender text NOT NULL,
            until double precision NOT NULL,
            PRIMARY KEY (account, sender)
        );
    """,
    4: """
        CREATE UNIQUE INDEX IF NOT EXISTS bulk_mms_events_rejected
            ON bulk_mms_events (ledger, (body->>'line')) WHERE kind = 'rejected';
    """,
    5: """
        CREATE TABLE IF NOT EXISTS bulk_mms_suppressions (
            number text PRIMARY KEY,
            reason text NOT NULL DEFAULT '',
            added timestamptz NOT NULL DEFAULT now()
        );
    """,
}
#: Claim a group: a new claim, a renewal of our own, or the claim of an owner whose heartbeat
#: stopped more than the lease ago (it died). No row back: a live process holds it.
_CLAIM: Final = """
    INSERT INTO bulk_mms_claims (ledger, grp, owner, heartbeat) VALUES (%s, %s, %s, now())
    ON CONFLICT (ledger, grp) DO UPDATE SET owner = EXCLUDED.owner, heartbeat = now()
    WHERE bulk_mms_claims.owner = EXCLUDED.owner
       OR bulk_mms_claims.heartbeat < now() - make_interval(secs => %s)
    RETURNING owner
"""
_HEARTBEAT: Final = "UPDATE bulk_mms_claims SET heartbeat = now() WHERE ledger = %s AND owner = %s"
_GROUP_EVENTS: Final = (
    "SELECT seq, body::text FROM bulk_mms_events WHERE ledger = %s AND grp = %s "
    "AND kind <> 'status' ORDER BY seq"
)
_INSERT: Final = (
    "INSERT INTO bulk_mms_events (ledger, kind, grp, webhook_id, recipient, body) "
    "VALUES (%s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING"
)
_READ: Final = (
    "SELECT seq, body::text FROM bulk_mms_events WHERE ledger = %s AND seq > %s ORDER BY seq"
)
_READ_SKIPPING_STATUS: Final = (
    "SELECT seq, body::text FROM bulk_mms_events "
    "WHERE ledger = %s AND seq > %s AND kind <> 'status' ORDER BY seq"
)
_COPY: Final = "COPY bulk_mms_events (ledger, kind, grp, webhook_id, recipient, body) FROM STDIN"
#: Events a unique index may refuse (recorded by another process already): never COPY'd.
_UNIQUE_KINDS: Final = frozenset({"status", "rejected"})
_SENT_SINCE: Final = """
    SELECT sum(jsonb_array_length(body->'to')) FROM bulk_mms_events
    WHERE kind = 'sent'
      AND extract(epoch FROM (body->>'time')::timestamptz) >= %s
"""
#: The advisory-lock namespace of migrations (any constant: it only has to be the same).
_MIGRATE_LOCK: Final = 0x62756C6B


def split(location: str) -> tuple[str, str, str]:
    """``(conninfo for libpq, ledger name, the URL to show)`` of a location.

    Raises:
        LedgerError: not a usable URL.
    """
    try:
        url = yarl.URL(location)
    except (TypeError, ValueError):
        raise LedgerError("ledger URL", "is not a postgresql:// URL") from None
    name = url.query.get("ledger") or "default"
    conninfo = url.without_query_params("ledger")
    shown = str(conninfo.with_password(None).with_query(ledger=name))
    return str(conninfo), name, shown


def _scrub(exc: Exception, conninfo: str) -> str:
    """A driver error in one line, without the password whatever the driver put in it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    password = yarl.URL(conninfo).password
    return text.replace(password, "***") if password else text


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION` (idempotent, safe from many processes at
    once); the version it was at before."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS bulk_mms_schema (version int NOT NULL)")
        row = conn.execute("SELECT max(version) FROM bulk_mms_schema").fetchone()
        before = int(row[0]) if row and row[0] is not None else 0
        if before > SCHEMA_VERSION:
            raise LedgerError("database", f"schema version {before} is from a newer bulk-mms")
        for version in range(before + 1, SCHEMA_VERSION + 1):
            conn.execute(_MIGRATIONS[version])
            conn.execute("INSERT INTO bulk_mms_schema (version) VALUES (%s)", (version,))
    return before


def migrate_url(location: str) -> tuple[int, int]:
    """:func:`migrate` the database at ``location``: (version before, after)."""
    conninfo, _, shown = split(location)
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            return migrate(conn), SCHEMA_VERSION
    except psycopg.Error as exc:
        raise LedgerError(shown, _scrub(exc, conninfo)) from None


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


class PostgresStore(GroupCommitted[tuple[Any, ...]]):
    """A ledger in PostgreSQL; open it with :meth:`open` (see the module doc)."""

    def __init__(self, conninfo: str, name: str, shown: str, conn: psycopg.Connection[Any]) -> None:
        super().__init__()
        self._conninfo = conninfo
        self.ledger_name = name
        self.name = shown
        self._conn = conn
        migrate(conn)
        self._ledger = self._ledger_id(create=False)
        self._seen = 0  # the last seq new_events() gave
        self._writer: psycopg.AsyncConnection[Any] | None = None
        self._claims: psycopg.AsyncConnection[Any] | None = None
        #: Who this process is to the other processes sharing the ledger.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        #: Several processes may run this ledger at once: each group is claimed first.
        self.shared = True
        #: Seconds without a heartbeat after which a process's claims pass to the others.
        self.lease_s = 30.0

    @classmethod
    def open(cls, location: str, mode: str = "run") -> PostgresStore:
        """Connect and migrate; ``run`` creates the ledger when it is new (other runs of it
        may be going on: they share it).

        Raises:
            LedgerError: the database cannot be reached or used; (``append``, ``read``) the
                ledger does not exist.
        """
        conninfo, name, shown = split(location)
        try:
            conn = psycopg.connect(
                conninfo, autocommit=True, application_name=f"bulk-mms pid {os.getpid()}"
            )
        except psycopg.Error as exc:
            raise LedgerError(shown, f"cannot connect: {_scrub(exc, conninfo)}") from None
        try:
            return cls._prepared(cls(conninfo, name, shown, conn), mode)
        except psycopg.Error as exc:
            conn.close()
            raise LedgerError(shown, _scrub(exc, conninfo)) from None
        except LedgerError:
            conn.close()
            raise

    @staticmethod
    def _prepared(store: PostgresStore, mode: str) -> PostgresStore:
        if store._ledger is None:
            if mode != "run":
                raise LedgerError(store.name, "no such ledger")
            store._ledger = store._ledger_id(create=True)
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
        return self._read(0, skip_status=skip_status)

    def fold(self, *, skip_status: bool = False) -> LedgerView:
        return LedgerView.fold(self.events(skip_status=skip_status), statuses=not skip_status)

    def new_events(self) -> Iterator[Event]:
        return self._read(self._seen)

    def _read(self, after: int, *, skip_status: bool = False) -> Iterator[Event]:
        sql = _READ_SKIPPING_STATUS if skip_status else _READ
        with psycopg.connect(self._conninfo) as conn, conn.cursor(name="bulk_mms_read") as cur:
            cur.itersize = 5000
            cur.execute(sql, (self._id, after))
            for seq, body in cur:
                self._seen = max(self._seen, seq)
                try:
                    event = decode(orjson.loads(body))
                except (orjson.JSONDecodeError, Malformed) as exc:
                    raise LedgerCorrupt(self.name, str(exc), line=seq) from None
                if event is not None:
                    yield event

    def group_events(self, group: str) -> list[Event]:
        """A group's events as the ledger has them now (written by any process)."""
        rows = self._conn.execute(_GROUP_EVENTS, (self._id, group)).fetchall()
        out = []
        for seq, body in rows:
            try:
                event = decode(orjson.loads(body))
            except (orjson.JSONDecodeError, Malformed) as exc:
                raise LedgerCorrupt(self.name, str(exc), line=seq) from None
            if event is not None:
                out.append(event)
        return out

    # -- sharing ----------------------------------------------------------------------------

    async def _claims_conn(self) -> psycopg.AsyncConnection[Any]:
        if self._claims is None:
            self._claims = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        return self._claims

    async def claim(self, group: str) -> bool:
        """Take ``group`` for this process: True when no live process holds it.

        Raises:
            LedgerError: the database cannot be reached.
        """
        try:
            conn = await self._claims_conn()
            cur = await conn.execute(_CLAIM, (self._id, group, self.owner, self.lease_s))
            return await cur.fetchone() is not None
        except psycopg.Error as exc:
            raise LedgerError(self.name, f"cannot claim: {_scrub(exc, self._conninfo)}") from None

    async def heartbeat(self) -> None:
        """Keep this process's claims alive (call well within ``lease_s``)."""
        try:
            conn = await self._claims_conn()
            await conn.execute(_HEARTBEAT, (self._id, self.owner))
        except psycopg.Error as exc:
            raise LedgerError(self.name, f"cannot renew: {_scrub(exc, self._conninfo)}") from None

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

    # -- writing ----------------------------------------------------------------------------

    def append_now(self, event: Event) -> None:
        try:
            self._conn.execute(_INSERT, _row(self._id, event))
        except psycopg.Error as exc:
            raise LedgerError(self.name, f"cannot write: {_scrub(exc, self._conninfo)}") from None
        self.events_written += 1
        self.commits += 1

    def _encode(self, event: Event) -> tuple[Any, ...]:
        return _row(self._id, event)

    async def _commit(self, rows: list[tuple[Any, ...]]) -> None:
        try:
            if self._writer is None:
                self._writer = await psycopg.AsyncConnection.connect(self._conninfo)
            async with self._writer.transaction(), self._writer.cursor() as cur:
                if any(row[1] in _UNIQUE_KINDS for row in rows):
                    await cur.executemany(_INSERT, rows)  # may repeat: ON CONFLICT DO NOTHING
                else:
                    async with cur.copy(_COPY) as copy:  # the fast path: one stream
                        await copy.write(b"".join(map(_copy_line, rows)))
        except psycopg.Error as exc:
            raise LedgerError(self.name, f"cannot write: {_scrub(exc, self._conninfo)}") from None
        self.events_written += len(rows)
        self.commits += 1

    async def close(self) -> None:
        try:
            await self.drain()
        finally:
            for conn in (self._writer, self._claims):
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
            self._writer = self._claims = None
            self.close_sync()

    def close_sync(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.close()  # ends the session: its advisory lock goes with it


def sent_since(location: str, since: float) -> int:
    """Recipients every ledger of the database records as sent since ``since`` (epoch)."""
    conninfo, _, shown = split(location)
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            migrate(conn)
            row = conn.execute(_SENT_SINCE, (since,)).fetchone()
    except psycopg.Error as exc:
        raise LedgerError(shown, _scrub(exc, conninfo)) from None
    return int(row[0]) if row and row[0] is not None else 0


class PostgresSuppressed(Suppressed):
    """The account's suppression list as a table of the ledger's database: every host and job
    on it shares one list. Read whole at the start (membership tests must be fast); additions
    and removals go straight to the table."""

    def __init__(self, location: str) -> None:
        super().__init__(None)
        self._conninfo, _, shown = split(location)
        self.path = shown
        rows = self._run("SELECT number FROM bulk_mms_suppressions", ())
        self._numbers = {int(str(r[0])[1:]) for r in rows if str(r[0])[1:].isdigit()}

    def _run(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                migrate(conn)
                cur = conn.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise LedgerError(str(self.path), _scrub(exc, self._conninfo)) from None

    def add(self, phones: Iterable[str], reason: str) -> list[str]:
        new = [p for p in dict.fromkeys(phones) if p not in self]
        for phone in new:
            self._run(_SUPPRESS, (phone, reason))
        self._numbers.update(int(p[1:]) for p in new)
        return new

    def reason(self, phone: str) -> str | None:
        if phone not in self:
            return None
        rows = self._run("SELECT reason FROM bulk_mms_suppressions WHERE number = %s", (phone,))
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def remove(self, phones: Iterable[str]) -> list[str]:
        gone = [p for p in dict.fromkeys(phones) if p in self]
        for phone in gone:
            self._run("DELETE FROM bulk_mms_suppressions WHERE number = %s", (phone,))
        self._numbers -= {int(p[1:]) for p in gone}
        return sorted(gone)


_SUPPRESS: Final = (
    "INSERT INTO bulk_mms_suppressions (number, reason) VALUES (%s, %s) ON CONFLICT DO NOTHING"
)
