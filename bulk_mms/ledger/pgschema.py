"""The PostgreSQL ledger's schema: its versions, the migration to each, and which bulk-mms
may use a database at a version it does not know (a rolling upgrade).

:func:`migrate` runs on a store's first use and from ``bulk-mms db migrate``; it is safe from
many processes at once (they take turns under an advisory lock). Each version is recorded in
``bulk_mms_schema`` with the oldest version of the code that can use it (``usable_from``), so
that a bulk-mms released before a version can judge a database migrated past it.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from bulk_mms.errors import LedgerError
from bulk_mms.ledger.pgconnect import failure, split, sync_connect

#: The schema version this bulk-mms writes; :func:`migrate` brings a database up to it.
SCHEMA_VERSION: Final = 12
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
    # A ledger written before the header's unique index may hold more than one job header
    # (processes raced): its first stays the header; each later one is kept, re-kinded in its
    # column and its body's "event" (which every read decodes: an unknown kind is skipped),
    # so the index can be made. The lock keeps an older process from adding one meanwhile.
    6: """
        ALTER TABLE bulk_mms_claims ADD COLUMN IF NOT EXISTS token bigint NOT NULL DEFAULT 1;
        LOCK TABLE bulk_mms_events IN SHARE ROW EXCLUSIVE MODE;
        UPDATE bulk_mms_events AS later
        SET kind = 'job_duplicate', body = jsonb_set(later.body, '{event}', '"job_duplicate"')
        WHERE later.kind = 'job' AND EXISTS (
            SELECT 1 FROM bulk_mms_events AS earlier
            WHERE earlier.ledger = later.ledger AND earlier.kind = 'job'
              AND earlier.seq < later.seq);
        CREATE UNIQUE INDEX IF NOT EXISTS bulk_mms_events_header
            ON bulk_mms_events (ledger) WHERE kind = 'job';
    """,
    7: """
        CREATE TABLE IF NOT EXISTS bulk_mms_limits (
            name text PRIMARY KEY,
            used numeric NOT NULL DEFAULT 0
        );
    """,
    # Each claim records when it runs out, by its holder's lease on the database's clock
    # (hosts may be configured with different leases). A row without one (written before,
    # or by an older bulk-mms still running) runs out by the taker's lease, as it did.
    # Moved events are counted per number before one is written (MAX_RESENDS): indexed.
    8: """
        ALTER TABLE bulk_mms_claims ADD COLUMN IF NOT EXISTS expires timestamptz;
        CREATE INDEX IF NOT EXISTS bulk_mms_events_moved
            ON bulk_mms_events (ledger) WHERE kind = 'moved';
    """,
    # When each number last texted STOP or START (epoch seconds, the event's occurred_at), as
    # the webhook receivers took it in: a START leaves no suppression row to say it.
    9: """
        CREATE TABLE IF NOT EXISTS bulk_mms_keywords (
            number text PRIMARY KEY,
            texted_at double precision NOT NULL
        );
    """,
    # Every run on every host reads the numbers added to the list since its last look, every
    # few seconds (pgsuppression's _ADDED_SINCE): indexed, not a scan of the whole list each
    # time. Built in this transaction, as schema 8's index is, not CONCURRENTLY (which no
    # transaction may hold): the version is recorded with it or not at all, and a concurrent
    # build that failed would leave an invalid index that IF NOT EXISTS takes as made. Writes
    # to the list (a STOP taken, `suppress`), and every process's migrate (this lock), wait
    # meanwhile: a btree on one timestamp builds about 2 million rows a second, so a list of
    # millions is done within the lock timeout of each (pgconnect.LOCK_TIMEOUT_MS).
    10: """
        CREATE INDEX IF NOT EXISTS bulk_mms_suppressions_added
            ON bulk_mms_suppressions (added);
    """,
    # What each group holds of each shared count (bulk_mms_limits), so a reservation is the
    # group's, not its process's: a repeat or a takeover adds nothing, a release gives back
    # what the group holds, once, and a run settles the room of groups a killed process held
    # (pgbudget.PostgresTally). A count's room held before this (by a process of an older
    # bulk-mms) has no row here: it stays counted, as it did.
    11: """
        CREATE TABLE IF NOT EXISTS bulk_mms_reservations (
            name text NOT NULL,
            ledger text NOT NULL,
            grp text NOT NULL,
            amount numeric NOT NULL,
            PRIMARY KEY (name, ledger, grp)
        );
        CREATE INDEX IF NOT EXISTS bulk_mms_reservations_ledger
            ON bulk_mms_reservations (ledger);
    """,
    # When each number was last taken off the list (epoch seconds, the database's clock), so
    # that a run puts back only an opt-out its ledger records refused after that (a list
    # write that failed then), never one removed by hand since. And a number's moves are
    # counted (MAX_RESENDS) but for those a ``reached`` event takes back: those events are
    # read then too, indexed as schema 8's moves are. An older bulk-mms ignores both (usable
    # from 11): its removals go unrecorded, and a run may put such a number back, as that
    # bulk-mms's own runs would.
    12: """
        CREATE TABLE IF NOT EXISTS bulk_mms_removals (
            number text PRIMARY KEY,
            removed_at double precision NOT NULL
        );
        CREATE INDEX IF NOT EXISTS bulk_mms_events_reached
            ON bulk_mms_events (ledger) WHERE kind = 'reached';
    """,
}
#: For a schema version whose migration older code may ignore (an index, or a table it never
#: needs: it reads and writes as before), the oldest version a bulk-mms may know and still
#: use a database at it; a version not named needs a bulk-mms that knows it. Recorded beside
#: each version as :func:`migrate` makes it, so that a bulk-mms released before a version can
#: judge it.
_USABLE_FROM: Final = {10: 9, 12: 11}
#: The advisory-lock namespace of migrations (any constant: it only has to be the same).
_MIGRATE_LOCK: Final = 0x62756C6B


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION` (idempotent, safe from many processes at
    once); the version it was at before. A database a newer bulk-mms migrated is left as it
    is, and used, when every version past this one is usable from it (:data:`_USABLE_FROM`,
    recorded beside each version as it is made).

    Raises:
        LedgerError: the database is at a version this bulk-mms cannot use.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS bulk_mms_schema (version int NOT NULL)")
        row = conn.execute("SELECT max(version) FROM bulk_mms_schema").fetchone()
        before = int(row[0]) if row and row[0] is not None else 0
        if before > SCHEMA_VERSION:
            _check_usable(conn, before)
            return before
        if before < SCHEMA_VERSION:
            conn.execute("ALTER TABLE bulk_mms_schema ADD COLUMN IF NOT EXISTS usable_from int")
        for version in range(before + 1, SCHEMA_VERSION + 1):
            conn.execute(_MIGRATIONS[version])
            conn.execute(
                "INSERT INTO bulk_mms_schema (version, usable_from) VALUES (%s, %s)",
                (version, _USABLE_FROM.get(version, version)),
            )
    return before


def _check_usable(conn: psycopg.Connection[Any], version: int) -> None:
    """Raise unless every version the database has past :data:`SCHEMA_VERSION` is usable from
    it (a version recorded without ``usable_from``, or before the column was, needs itself)."""
    row = conn.execute(
        "SELECT max(coalesce((to_jsonb(s) ->> 'usable_from')::int, s.version)) "
        "FROM bulk_mms_schema s WHERE s.version > %s",
        (SCHEMA_VERSION,),
    ).fetchone()
    needs = int(row[0]) if row and row[0] is not None else version
    if needs > SCHEMA_VERSION:
        raise LedgerError(
            "database",
            f"schema version {version} is from a newer bulk-mms (it needs schema {needs}; "
            f"this one knows {SCHEMA_VERSION})",
        )


def migrate_url(location: str) -> tuple[int, int]:
    """:func:`migrate` the database at ``location``: (version before, after)."""
    conninfo, _, shown = split(location)
    try:
        with sync_connect(conninfo) as conn:
            before = migrate(conn)
            return before, max(before, SCHEMA_VERSION)
    except psycopg.Error as exc:
        raise failure(shown, exc, conninfo) from None
