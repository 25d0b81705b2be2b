"""A shared PostgreSQL ledger when the world is unkind: fenced claims (a process that lost a
claim cannot write its attempt, so never sends), one job header however processes race,
database faults as ordinary failures (a lost connection, a locked table, a signal meanwhile),
and the waits a stop must be able to cut short."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from msgspec.structs import replace
from structlog.testing import capture_logs

from bulk_mms import ending
from bulk_mms.clock import SystemClock
from bulk_mms.coordination import Coordinator, Fence, LocalCoordinator, coordinator_for
from bulk_mms.ending import _bounded
from bulk_mms.errors import ClaimLost, LedgerError, LedgerUnavailable, ServerError
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.fake_api.faults import Fault
from bulk_mms.ledger import (
    LedgerView,
    copy_ledger,
    events,
    load,
    open_store,
    pgconnect,
    pgread,
    postgres,
    read_events,
)
from bulk_mms.ledger.pgbudget import PostgresBudget, PostgresTally
from bulk_mms.ledger.pgschema import migrate_url
from bulk_mms.ledger.postgres import (
    _RUN_LOCK,
    PostgresCoordinator,
    PostgresStore,
    _ledger_key,
)
from bulk_mms.ledger.store import LedgerStore, Mode
from bulk_mms.models import Group, MessageBody, RecipientStatus
from bulk_mms.policy import MAX_RESENDS
from bulk_mms.recorder import Recorder
from bulk_mms.sharing import Sharing
from bulk_mms.signals import Stop, StopReason
from bulk_mms.summary import JobSummary
from tests.conftest import FakeClock, JobFactory, numbers, query, wait_for, waits_on_a_lock
from tests.test_clock import stop_process
from tests.test_postgres import KEY, age_claims
from tests.threaded import fake_api_thread

HEADER = events.Header("job", "f" * 8, campaign="c1")
#: The server lists every database's locks, and each database numbers its ledgers from 1: a
#: test's look at a ledger's run lock keeps to its own database, or it ends (or counts) the
#: sessions of the other tests and runs on the server.
_THIS_DATABASE = "database = (SELECT oid FROM pg_database WHERE datname = current_database())"


async def _group_events(store: LedgerStore, group: str) -> list[events.Event]:
    """One group's events as ``store``'s ledger has them now (a batched read of one)."""
    return (await store.events_of([group]))[group]


def _attempt(group: str) -> events.Attempt:
    return events.Attempt(group, ("+12125550000",), 0, "+18445550001", 1, "k", 0.0, "t")


@contextlib.asynccontextmanager
async def two_hosts(
    where: str, mode: Mode = "run", lease_s: tuple[float, float] = (30.0, 30.0)
) -> AsyncIterator[tuple[LedgerStore, LedgerStore, Coordinator, Coordinator]]:
    """Two processes' stores on the ledger ``where`` and their coordinators, with leases
    ``lease_s``: (first, second, one, two), all closed afterwards."""
    first, second = open_store(where, mode), open_store(where, mode)
    one, two = coordinator_for(first, lease_s[0]), coordinator_for(second, lease_s[1])
    try:
        yield first, second, one, two
    finally:
        for c in (one, two):
            await c.close()
        await first.close()
        await second.close()


async def test_a_process_that_lost_its_claim_cannot_write_the_attempt(database: str) -> None:
    """A takeover grows the fence token: the old holder's attempt is refused (ClaimLost) and
    not in the ledger; the new holder's is written; a renewal by the old one takes nothing
    back."""
    where = f"{database}?ledger=fenced"
    async with two_hosts(where) as (first, second, one, two):
        assert await one.claim("g1")
        old = one.fence("g1")
        age_claims(database, 31)  # first's lease has run out (paused past it)
        assert await two.claim("g1")
        new = two.fence("g1")
        assert old is not None
        assert new is not None
        assert new.token == old.token + 1
        await one.heartbeat()  # woken: renews what it still holds, which is nothing of g1
        with pytest.raises(ClaimLost):
            await first.append(_attempt("g1"), fence=old)
        await second.append(_attempt("g1"), fence=new)
        attempts = [e for e in await _group_events(first, "g1") if isinstance(e, events.Attempt)]
        assert len(attempts) == 1
        assert first.failed is None  # a lost claim is not a broken store
        assert not await one.claim("g1")


async def test_a_forced_stops_failure_queued_after_a_takeover_is_left_out(database: str) -> None:
    """A forced stop's failure of a group (queued, nobody waiting for its commit) whose claim
    passed to another process, whose attempt is open, is left out of the ledger: the group
    reads in doubt while the taker's request is out, not pending a rerun."""
    where = f"{database}?ledger=cut_off"
    async with two_hosts(where) as (first, second, one, two):
        recorder = Recorder(
            first, LedgerView(header=HEADER), JobSummary("j"), FakeClock(), coordinator=one
        )
        group = Group("g1", 0, tuple(numbers(2)), (0, 1), MessageBody("+18445550001", "hi"))
        assert await one.claim(group.id)
        await recorder.attempt(group, 1, "k", 0.0)
        age_claims(database, 31)  # first's lease has run out (paused past it)
        assert await two.claim(group.id)
        await second.append(_attempt(group.id), fence=two.fence(group.id))
        recorder.cut_off(group, ServerError("busy", status=503))
        await first.drain()
        kinds = [e.kind for e in await _group_events(first, group.id)]
        assert kinds == ["attempt", "attempt"]
        assert load(where, statuses=False).groups[group.id].state == "in_doubt"
        assert first.failed is None


async def test_claims_given_back_pass_on_under_the_next_token_and_refuse_the_old_fence(
    database: str,
) -> None:
    """Claims a process gives back (its run ended) run out at once: no run is live, another
    process takes one under the next token, the giver's old fence writes no attempt, a late
    renewal by the giver takes nothing back, and a group it claims again is a takeover too."""
    where = f"{database}?ledger=given"
    open_store(where, "run").close_sync()  # the ledger, no run of it open (its run lock)
    async with two_hosts(where, "append") as (first, _second, one, two):
        assert await one.claim("g1")
        assert await one.claim("g2")
        old = one.fence("g1")
        assert old is not None
        assert await first.live_run(30.0) == old.owner
        await one.release()
        assert await first.live_run(30.0) is None
        await one.heartbeat()  # a renewal that comes late takes nothing back
        assert await first.live_run(30.0) is None
        assert await two.claim("g1")
        assert two.fence("g1").token == old.token + 1  # type: ignore[union-attr]
        with pytest.raises(ClaimLost):
            await first.append(_attempt("g1"), fence=old)
        assert not await one.claim("g1")
        assert await one.claim("g2")
        assert one.fence("g2").token == 2  # type: ignore[union-attr]
        assert [e for e in await _group_events(first, "g1") if isinstance(e, events.Attempt)] == []


async def test_a_ledgers_locks_are_the_ones_earlier_versions_take(database: str) -> None:
    """A ledger whose id is past int4's range: a session holding its run lock as 0.3.0 took
    it (the key computed in SQL) is a live run to this version, and this version's run lock
    is under that same key."""
    with psycopg.connect(database, autocommit=True) as conn:
        migrate_url(database)
        ledger = 2**31 + 6
        conn.execute("INSERT INTO bulk_mms_ledgers (id, name) VALUES (%s, 'big')", (ledger,))
        old_key = conn.execute("SELECT (%s::bigint %% 2147483647)::int", (ledger,)).fetchone()
        assert old_key is not None
        assert _ledger_key(ledger) == old_key[0] == 7
        where = f"{database}?ledger=big"
        looker = open_store(where, "append")
        try:
            assert await looker.live_run(30.0) is None
            conn.execute(
                "SELECT pg_advisory_lock_shared(%s, (%s %% 2147483647)::int)", (_RUN_LOCK, ledger)
            )  # a 0.3.0 run's
            assert await looker.live_run(30.0) == f"database session {conn.info.backend_pid}"
            conn.execute(
                "SELECT pg_advisory_unlock_shared(%s, (%s %% 2147483647)::int)", (_RUN_LOCK, ledger)
            )
            assert await looker.live_run(30.0) is None
            run = open_store(where, "run")
            held = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid "
                "AND objid = ((%s::bigint %% 2147483647)::int)::oid AND objsubid = 2 "
                f"AND {_THIS_DATABASE}",
                (_RUN_LOCK, ledger),
            ).fetchone()
            run.close_sync()
            assert held == (1,)
        finally:
            await looker.close()


async def test_a_holder_stalled_inside_its_commit_keeps_no_other_process_waiting(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process paused (or cut off) between its fenced attempt and its COMMIT holds the
    claim row locked: the server ends that transaction (idle_in_transaction_session_timeout),
    so another process takes the group over once the lease is out instead of waiting on the
    lock until its own call fails (LedgerUnavailable, exit 7: every other host stopped); the
    holder, woken, writes its attempt again on a new connection, and the fence refuses it."""
    monkeypatch.setattr(pgconnect, "IDLE_IN_TRANSACTION_S", 0.5)
    where = f"{database}?ledger=stalled"
    first = open_store(where, "run")
    one = coordinator_for(first, 1.0)
    assert isinstance(first, PostgresStore)
    first._writer.timeout_s = 3600.0  # a paused process's own timeout never comes
    locked, paused = asyncio.Event(), asyncio.Event()
    fetchall = psycopg.AsyncCursor.fetchall

    async def stalled(cur: psycopg.AsyncCursor[Any]) -> list[Any]:
        rows = await fetchall(cur)  # the fenced attempt's: its claim row locked, not committed
        if not locked.is_set():
            locked.set()
            await paused.wait()
        return rows

    def take_over() -> bool:  # another process, on the real clock
        async def claim() -> bool:
            store = open_store(where, "run")
            other = coordinator_for(store, 1.0)
            assert isinstance(other, PostgresCoordinator)
            other._link.timeout_s = 10.0
            try:
                return await other.claim("g1")
            finally:
                await other.close()
                await store.close()

        return asyncio.run(claim())

    try:
        assert await one.claim("g1")
        age_claims(database, 2)  # the holder's lease is out
        monkeypatch.setattr(psycopg.AsyncCursor, "fetchall", stalled)
        holder = asyncio.create_task(first.append(_attempt("g1"), fence=one.fence("g1")))
        await locked.wait()
        assert await asyncio.to_thread(take_over)
        assert _max_token(database) == 2
        paused.set()  # woken: its transaction is gone, and its fence no longer holds
        with pytest.raises(ClaimLost):
            await holder
        assert await _group_events(first, "g1") == []
        assert first.failed is None
    finally:
        await one.close()
        await first.close()


async def test_a_claim_holds_for_its_holders_lease_whatever_the_takers(database: str) -> None:
    """A holder with a 30 s lease keeps its claim from a process whose own lease is 1 s once
    its heartbeat is 5 s old (the holder's lease decides, not the taker's); it passes once the
    holder's lease has run out, under a new fence token."""
    where = f"{database}?ledger=leases"
    async with two_hosts(where, lease_s=(30.0, 1.0)) as (_first, _second, one, two):
        assert await one.claim("g1")
        age_claims(database, 5)
        assert not await two.claim("g1")
        age_claims(database, 30)
        assert await two.claim("g1")
        assert _max_token(database) == 2


async def test_a_heartbeat_renews_a_claim_for_its_holders_lease(database: str) -> None:
    """A renewal by a holder with a 30 s lease keeps its claims from a 1 s taker for 30 s
    more on the database's clock."""
    where = f"{database}?ledger=renewed"
    async with two_hosts(where, lease_s=(30.0, 1.0)) as (_first, _second, one, two):
        assert await one.claim("g1")
        age_claims(database, 29)
        await one.heartbeat()
        age_claims(database, 5)
        assert not await two.claim("g1")


async def test_a_heartbeat_renews_only_the_claims_of_groups_still_open(database: str) -> None:
    """Claims on groups this process's view has decided are let go: the heartbeat renews the
    open group's claim and not the decided one's, which runs out by its lease (another
    process may then claim it), and this process's fence on it is forgotten."""
    where = f"{database}?ledger=open-only"
    async with two_hosts(where, lease_s=(30.0, 30.0)) as (first, _second, one, two):
        assert await one.claim("decided")
        assert await one.claim("open")
        age_claims(database, 29)
        one.let_go(lambda group: group == "decided")
        await one.heartbeat()
        age_claims(database, 5)
        assert await two.claim("decided")
        assert not await two.claim("open")
        assert one.fence("decided") == Fence(first.owner, 0)  # type: ignore[attr-defined]
        assert (one.held_for("open") or 0.0) > 20


async def test_an_attempt_for_a_group_never_claimed_is_refused(database: str) -> None:
    """A fence this process never got (token 0) writes nothing."""
    store = open_store(f"{database}?ledger=unclaimed", "run")
    coord = coordinator_for(store, 30.0)
    try:
        with pytest.raises(ClaimLost):
            await store.append(_attempt("g9"), fence=coord.fence("g9"))
        assert await _group_events(store, "g9") == []
    finally:
        await coord.close()
        await store.close()


async def test_processes_racing_to_write_the_header_end_with_one(database: str) -> None:
    """Eight stores writing a header to a new ledger at once: one row, and each gets back
    the header that won."""
    where = f"{database}?ledger=race"
    stores = [open_store(where, "run") for _ in range(8)]
    try:
        mine = [replace(HEADER, campaign=f"c{i}") for i in range(8)]
        got = await asyncio.gather(
            *(asyncio.to_thread(s.put_header, h) for s, h in zip(stores, mine, strict=True))
        )
        assert len({h.campaign for h in got}) == 1
        headers = [e for e in read_events(where) if isinstance(e, events.Header)]
        assert [h.campaign for h in headers] == [got[0].campaign]
    finally:
        for s in stores:
            await s.close()


def _moved(group: str, *members: str) -> events.Moved:
    return events.Moved(group, members, "", "40016", "t", 0.0)


def _moved_out_of(where: str) -> dict[str, set[str]]:
    """Each number's groups it was moved out of, as the ledger has them."""
    out: dict[str, set[str]] = {}
    for ev in read_events(where):
        if isinstance(ev, events.Moved):
            for phone in ev.members:
                out.setdefault(phone, set()).add(ev.group)
    return out


async def test_two_processes_moving_one_number_at_once_keep_max_resends(database: str) -> None:
    """Two processes write moves of one number out of five groups at once, each judging by
    its own view: the ledger keeps policy.MAX_RESENDS of them, the same group's move written
    again still counts once, and a move naming a spent number and another keeps the other."""
    where = f"{database}?ledger=resends"
    a, b = open_store(where, "run"), open_store(where, "run")
    spent, fresh = "+12125550100", "+12125550101"
    try:
        a.append_now(HEADER)
        writers = [a, b, a, b, a]
        await asyncio.gather(*(w.append(_moved(f"g{i}", spent)) for i, w in enumerate(writers)))
        assert len(_moved_out_of(where)[spent]) == MAX_RESENDS
        again = min(_moved_out_of(where)[spent])
        await b.append(_moved(again, spent))  # the other process saw the same report
        await b.append(_moved("g9", spent, fresh))
        assert _moved_out_of(where) == {spent: _moved_out_of(where)[spent], fresh: {"g9"}}
        assert len(_moved_out_of(where)[spent]) == MAX_RESENDS
        assert a.failed is None
        assert b.failed is None
    finally:
        await a.close()
        await b.close()


async def test_a_move_the_ledger_keeps_back_leaves_the_process_view(database: str) -> None:
    """A process whose view lacks another's moves moves a spent number and a fresh one: the
    ledger keeps the spent one back (policy.MAX_RESENDS), and the process's view drops that
    move as a fold of the ledger has it, so it does not count the number as going again."""
    where = f"{database}?ledger=kept-back"
    a, b = open_store(where, "run"), open_store(where, "run")
    spent, fresh = "+12125550100", "+12125550101"
    try:
        a.append_now(HEADER)
        for i in range(MAX_RESENDS):
            await a.append(_moved(f"g{i}", spent))
        view = LedgerView()  # b's, taken before a's moves
        b.on_kept_back(view.kept_back)
        move = _moved("g9", spent, fresh)
        view.apply(move)
        b.append_nowait(move)
        await b.drain()
        assert view.groups["g9"].moved == (fresh,)
        assert (view.moves(spent), view.moves(fresh)) == (0, 1)
        assert b.fold().groups["g9"].moved == view.groups["g9"].moved
    finally:
        await a.close()
        await b.close()


async def test_a_ledger_copied_into_the_database_keeps_every_move(
    database: str, tmp_path: Path
) -> None:
    """ledger copy writes a ledger's events as they are: a file ledger that moved a number
    more often than policy.MAX_RESENDS (two writers raced) keeps every move in the copy."""
    source = tmp_path / "raced.jsonl"
    store = open_store(source, "run")
    spent = "+12125550100"
    try:
        store.append_now(HEADER)
        for i in range(MAX_RESENDS + 1):
            await store.append(_moved(f"g{i}", spent))
    finally:
        await store.close()
    where = f"{database}?ledger=copied"
    assert await copy_ledger(source, where) == MAX_RESENDS + 2
    assert len(_moved_out_of(where)[spent]) == MAX_RESENDS + 1


async def test_a_lost_connection_is_made_again_once(database: str) -> None:
    """pg_terminate_backend of the store's connections: the next read and write reconnect
    and succeed."""
    where = f"{database}?ledger=lost"
    store = open_store(where, "run")
    try:
        store.append_now(HEADER)
        await store.append(events.RunStarted(1, "t"))
        assert await _group_events(store, "g") == []
        _terminate(database, os.getpid())
        await store.append(events.RunStarted(2, "t"))  # reconnects
        assert await _group_events(store, "g") == []
        assert sum(isinstance(e, events.RunStarted) for e in read_events(where)) == 2
    finally:
        await store.close()


def _counted_connects(monkeypatch: pytest.MonkeyPatch) -> list[psycopg.Connection[Any]]:
    """Every synchronous connection the PostgreSQL store makes from now on, as it is made."""
    made: list[psycopg.Connection[Any]] = []

    def counted(conninfo: str, **options: Any) -> psycopg.Connection[Any]:
        made.append(conn := pgconnect.sync_connect(conninfo, **options))
        return conn

    monkeypatch.setattr(postgres, "sync_connect", counted)  # its opening's
    monkeypatch.setattr(pgread, "sync_connect", counted)  # its reads'
    return made


def _ran(n: int) -> list[events.Event]:
    return [events.RunStarted(i, "t") for i in range(n)]


def test_new_events_read_on_one_connection_closed_with_the_store(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Successive reads of what was appended since (a webhook receiver's, one per id it does
    not know) share one connection, one server session, which the store's closing closes."""
    where = f"{database}?ledger=follow"
    writer, reader = open_store(where, "run"), open_store(where, "append")
    made = _counted_connects(monkeypatch)
    before = _sessions(database)
    try:
        for ev in _ran(20):
            writer.append_now(ev)
            assert list(reader.new_events()) == [ev]
            assert list(reader.new_events()) == []
        assert len(made) == 1
        assert len(_sessions(database) - before) == 1  # the same backend for all 40 reads
    finally:
        reader.close_sync()
        writer.close_sync()
    assert made[0].closed
    with pytest.raises(LedgerUnavailable, match="cannot read: the store is closed"):
        list(reader.new_events())
    assert len(made) == 1  # none made after the close


def test_new_events_after_their_session_was_ended_read_on_a_new_connection(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_terminate_backend of the reading session between two reads: the next read makes
    its connection again, once, and gives what was appended meanwhile, nothing twice; lost
    again at once, the read fails in one line (LedgerUnavailable)."""
    where = f"{database}?ledger=follow"
    first, *later = _ran(3)
    writer, reader = open_store(where, "run"), open_store(where, "append")
    made = _counted_connects(monkeypatch)
    try:
        writer.append_now(first)
        assert list(reader.new_events())[-1] == first  # after the header
        _terminate(database, os.getpid())  # every session of this process: the writer's too
        writer.close_sync()
        writer = open_store(where, "run")
        for ev in later:
            writer.append_now(ev)
        made.clear()  # the writer's
        with capture_logs() as logs:
            assert list(reader.new_events()) == later
        assert len(made) == 1
        assert [e["event"] for e in logs] == ["ledger.reconnecting"]
        monkeypatch.setattr(pgread, "sync_connect", _closed_at_once)
        _terminate(database, os.getpid())
        with pytest.raises(LedgerUnavailable, match=r"^\S+ cannot read: [^\n]*$"):
            list(reader.new_events())
    finally:
        reader.close_sync()
        writer.close_sync()


def _closed_at_once(conninfo: str, **options: Any) -> psycopg.Connection[Any]:
    """A connection lost as soon as it is made."""
    conn = pgconnect.sync_connect(conninfo, **options)
    conn.close()
    return conn


@pytest.mark.parametrize("appended", [8, 9])  # with the header: pages of 3, the last short or full
def test_new_events_read_a_backlog_larger_than_a_page_whole_and_in_order(
    database: str, monkeypatch: pytest.MonkeyPatch, appended: int
) -> None:
    """A backlog of several pages (:data:`~bulk_mms.ledger.pgread.READ_PAGE`) comes back
    whole and in order, in one read, and the next read finds nothing."""
    monkeypatch.setattr(pgread, "READ_PAGE", 3)
    where = f"{database}?ledger=follow"
    writer, reader = open_store(where, "run"), open_store(where, "append")
    try:
        writer.append_now(HEADER)
        for ev in (ran := _ran(appended)):
            writer.append_now(ev)
        assert list(reader.new_events()) == [HEADER, *ran]
        assert list(reader.new_events()) == []
    finally:
        reader.close_sync()
        writer.close_sync()


def test_new_events_read_a_row_committed_after_a_later_seq_was_read(database: str) -> None:
    """A transaction that drew its seq before another's and commits after that one was read
    (a run's slow commit, the receiver's own report meanwhile): its rows are read next."""
    where = f"{database}?ledger=follow"
    slow_ev, fast_ev = _ran(2)
    writer, reader = open_store(where, "run"), open_store(where, "append")
    try:
        writer.append_now(HEADER)
        assert list(reader.new_events()) == [HEADER]
        with psycopg.connect(database) as slow:  # one transaction, committed as it closes
            slow.execute(
                "INSERT INTO bulk_mms_events (ledger, kind, body) "
                "SELECT id, 'run', %s::jsonb FROM bulk_mms_ledgers WHERE name = 'follow'",
                (orjson.dumps(events.to_json(slow_ev)).decode(),),
            )
            writer.append_now(fast_ev)  # a later seq, committed first
            assert list(reader.new_events()) == [fast_ev]
        assert list(reader.new_events()) == [slow_ev]
    finally:
        reader.close_sync()
        writer.close_sync()


_INSERT_RUN = (
    "INSERT INTO bulk_mms_events (ledger, kind, body) "
    "SELECT id, 'run', %s::jsonb FROM bulk_mms_ledgers WHERE name = 'follow' RETURNING seq"
)


def _insert_run(conn: psycopg.Connection[Any], pid: int) -> int:
    """Insert a ``run`` event of ``pid`` into the ledger ``follow`` in ``conn``'s transaction;
    its seq."""
    body = orjson.dumps(events.to_json(events.RunStarted(pid, "t"))).decode()
    row = conn.execute(_INSERT_RUN, (body,)).fetchone()
    assert row is not None
    return int(row[0])


def _position(store: LedgerStore) -> pgread._Position:
    assert isinstance(store, postgres.PostgresStore)
    return store._reads._position


def test_a_rolled_back_insert_leaves_no_hole_in_the_read_position(database: str) -> None:
    """A transaction that drew a seq and rolled back after a later seq was read: the read
    after the one that finds it ended settles the read position past it, and the seqs read
    above it are forgotten."""
    where = f"{database}?ledger=follow"
    writer, reader = open_store(where, "run"), open_store(where, "append")
    try:
        writer.append_now(HEADER)
        assert list(reader.new_events()) == [HEADER]
        with psycopg.connect(database) as slow:
            _insert_run(slow, 1)
            writer.append_now(events.RunStarted(2, "t"))
            assert list(reader.new_events()) == [events.RunStarted(2, "t")]
            assert _position(reader).given  # above a seq not settled yet
            slow.rollback()
        assert list(reader.new_events()) == []  # finds it ended: settled by the next
        assert list(reader.new_events()) == []
        with psycopg.connect(database) as conn:
            top = conn.execute("SELECT max(seq) FROM bulk_mms_events").fetchone()
        assert (_position(reader).settled, _position(reader).given) == (top and top[0], set())
    finally:
        reader.close_sync()
        writer.close_sync()


def test_rows_committed_in_any_order_are_each_read_exactly_once(database: str) -> None:
    """Three writers committing their transactions (one to three rows each, one in five
    rolled back) after random delays, for three seconds, while a reader reads what is new
    in a loop: every row committed is read once, none twice, none rolled back."""
    where = f"{database}?ledger=follow"
    setup, reader = open_store(where, "run"), open_store(where, "append")
    stop = threading.Event()
    failed: list[BaseException] = []

    def write(first: int) -> None:
        rng = random.Random(first)
        pid = first
        try:
            with psycopg.connect(database) as conn:
                while not stop.is_set():
                    for _ in range(rng.randint(1, 3)):
                        pid += 1
                        _insert_run(conn, pid)
                    time.sleep(rng.uniform(0, 0.01))
                    (conn.rollback if rng.random() < 0.2 else conn.commit)()
        except BaseException as exc:
            failed.append(exc)

    read: list[events.Event] = []
    try:
        setup.append_now(HEADER)
        writers = [threading.Thread(target=write, args=(n * 10**6,)) for n in (1, 2, 3)]
        for thread in writers:
            thread.start()
        until = time.monotonic() + 3
        while time.monotonic() < until:
            read.extend(reader.new_events())
        stop.set()
        for thread in writers:
            thread.join()
        read.extend(reader.new_events())
        assert list(reader.new_events()) == list(reader.new_events()) == []
        with psycopg.connect(database) as conn:
            rows = conn.execute(
                "SELECT (body->>'pid')::bigint FROM bulk_mms_events WHERE kind = 'run'"
            ).fetchall()
    finally:
        stop.set()
        reader.close_sync()
        setup.close_sync()
    assert not failed
    pids = [ev.pid for ev in read if isinstance(ev, events.RunStarted)]
    assert len(pids) > 100  # the writers wrote, the reader read meanwhile
    assert sorted(pids) == sorted(int(r[0]) for r in rows)
    assert _position(reader).given == set()


def test_a_fold_then_new_events_miss_no_row_committed_late(database: str) -> None:
    """A full read begun while a transaction that drew a seq is open waits for it to end, so
    a row it commits below a later one is in the fold, and what is new after is read once."""
    where = f"{database}?ledger=follow"
    writer, reader = open_store(where, "run"), open_store(where, "append")
    folded: list[events.Event] = []
    try:
        writer.append_now(HEADER)
        with psycopg.connect(database) as slow:
            _insert_run(slow, 1)
            writer.append_now(events.RunStarted(2, "t"))
            folding = threading.Thread(target=lambda: folded.extend(reader.events()))
            folding.start()
            wait_for("the fold waiting for this transaction", lambda: _pausing(database))
            assert folding.is_alive()
        folding.join()
        assert folded == [HEADER, events.RunStarted(1, "t"), events.RunStarted(2, "t")]
        assert list(reader.new_events()) == []
        writer.append_now(events.RunStarted(3, "t"))
        assert list(reader.new_events()) == [events.RunStarted(3, "t")]
    finally:
        reader.close_sync()
        writer.close_sync()


def test_a_prepared_writer_keeps_every_mark_unsettled_until_it_ends() -> None:
    """A look finding a prepared transaction writing (one recovered as the server restarted
    is named anew, so it may be any writer an earlier look named) settles no mark; the read
    after the first look finding it gone settles them all."""
    position = pgread._Position()
    looks = [
        pgread._Look(5, frozenset({"6/14"}), prepared=False),  # 6/14 drew a seq below 5
        pgread._Look(7, frozenset({"-1/744"}), prepared=True),  # 6/14, recovered prepared
        pgread._Look(7, frozenset({"-1/744"}), prepared=True),
        pgread._Look(9, frozenset(), prepared=False),  # committed: every mark ends
    ]
    settled = []
    for look in looks:
        position.mark(look)
        position.settle(look)
        settled.append(position.settled)
    assert settled == [0, 0, 0, 0]
    position.mark(looks[-1])
    position.settle(looks[-1])
    assert (position.settled, position.marks) == (9, [])


def test_a_fold_waiting_on_a_transaction_left_open_fails_in_one_line(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full read that a transaction writing the events table keeps waiting past the bound
    fails with LedgerUnavailable, one line naming the lock to look for."""
    monkeypatch.setattr(pgread, "DB_TIMEOUT_S", 0.3)
    where = f"{database}?ledger=follow"
    writer, reader = open_store(where, "run"), open_store(where, "append")
    try:
        writer.append_now(HEADER)
        with psycopg.connect(database) as open_:
            _insert_run(open_, 1)
            with pytest.raises(LedgerUnavailable) as raised:
                list(reader.events())
        assert "is still open after 0.3 s (virtualtransaction " in str(raised.value)
        assert "\n" not in str(raised.value)
    finally:
        reader.close_sync()
        writer.close_sync()


@pytest.mark.parametrize(
    ("table", "opening"),
    [
        ("bulk_mms_ledgers", lambda where: open_store(where, "run")),
        ("bulk_mms_schema", lambda where: open_store(where, "read")),
        ("bulk_mms_schema", migrate_url),
    ],
    ids=["run", "report", "migrate"],
)
def test_a_ledger_opened_while_another_session_locks_its_tables_is_unavailable(
    database: str, monkeypatch: pytest.MonkeyPatch, table: str, opening: Any
) -> None:
    """A ledger opened (a run's, a report's, a migration's) while another session holds a
    lock on its tables past the lock timeout fails as LedgerUnavailable (exit 7, resumable,
    not a setting to fix), in one line naming the lock, without the statement's text."""
    monkeypatch.setattr(pgconnect, "LOCK_TIMEOUT_MS", 200)
    where = f"{database}?ledger=locked"
    open_store(where, "run").close_sync()  # the tables, and the ledger, are made
    with _locked(database, table), pytest.raises(LedgerUnavailable) as raised:
        opening(where)
    said = str(raised.value)
    assert raised.value.exit_code == 7
    assert "lock timeout (another session held a lock on its tables past 0.2 s" in said
    assert ("\n" in said, "LINE" in said) == (False, False)


def test_a_runs_start_written_after_its_session_was_ended_is_unavailable(database: str) -> None:
    """A run's start written on its store's session after the server ended it (an operator's
    pg_terminate_backend during a long fold) fails as LedgerUnavailable (exit 7, a rerun
    resumes), not as a setting to fix."""
    store = open_store(f"{database}?ledger=ended", "run")
    try:
        _terminate(database, os.getpid())
        with pytest.raises(LedgerUnavailable, match="cannot write: ") as raised:
            store.append_now(events.RunStarted(1, "t"))
        assert raised.value.exit_code == 7
    finally:
        store.close_sync()


def test_a_fold_that_is_not_followed_waits_for_no_writer(database: str) -> None:
    """A full read of a store that does not follow (a run's resume, a report) reads at once
    while a transaction writing the events table is open (only webhooks and track wait), and
    remembers none of the rows it read."""
    where = f"{database}?ledger=follow"
    writer = open_store(where, "run")
    try:
        writer.append_now(HEADER)
        writer.append_now(events.RunStarted(2, "t"))
        reader = open_store(where, "read")
        try:
            with psycopg.connect(database) as open_:
                _insert_run(open_, 1)
                # a wait would last its whole bound, then fail: this read does neither
                assert list(reader.events()) == [HEADER, events.RunStarted(2, "t")]
            assert isinstance(reader, postgres.PostgresStore)
            assert reader._reads._position.given == set()
        finally:
            reader.close_sync()
    finally:
        writer.close_sync()


@pytest.mark.looptime(True)  # a call left unanswered for its whole 30 s bound
async def test_a_call_answered_while_the_process_was_stopped_past_the_bound_succeeds(
    database: str,
) -> None:
    """A process stopped (SIGSTOP, a VM paused) for twice the database's bound while a call
    of its was under way: woken, it reads the answer that came meanwhile, no
    LedgerUnavailable; a call that gets no answer in running time still ends in one."""
    link = pgconnect.Link(database, "db", timeout_s=30)
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    async def work(conn: psycopg.AsyncConnection[Any]) -> str:
        await conn.execute("SELECT 1")
        loop.call_later(0.1, stopped_then_answered)
        return await answer

    def stopped_then_answered() -> None:
        stop_process(60)
        loop.call_at(loop.time() + 0.01, answer.set_result, "answered")

    try:
        assert await link.run(work, "read") == "answered"
        never: asyncio.Future[str] = loop.create_future()
        with pytest.raises(LedgerUnavailable, match="no answer within 30 s"):
            await link.run(lambda conn: never, "read")
    finally:
        await link.close()


async def test_a_connection_given_up_under_a_statement_fails_it_at_once(database: str) -> None:
    """A connection given up (closed) while another task's statement runs on it, its socket's
    number then taken by the next connection: that statement fails at once and is made again
    on a new connection, never left waiting on the new one's socket until its timeout (nor
    reading the freed connection's memory); every closed connection is closed once."""
    link = pgconnect.Link(database, "db", timeout_s=600.0)  # a hang fails, a slow server not

    async def slow(conn: psycopg.AsyncConnection[Any]) -> str:
        running.set()  # on the connection: the statement is sent as this task next waits
        await conn.execute("SELECT pg_sleep(0.3)")
        return "slow"

    async def quick(conn: psycopg.AsyncConnection[Any]) -> str:
        for _ in range(20):
            await conn.execute("SELECT 1")
        return "quick"

    try:
        for _ in range(5):
            running = asyncio.Event()
            first = asyncio.create_task(link.run(slow, "slow"))
            await running.wait()
            await link._drop(link._conn)  # as a statement of another task that timed out does
            second = asyncio.create_task(link.run(quick, "quick"))
            assert list(await asyncio.gather(first, second)) == ["slow", "quick"]
        assert link._users == {}
    finally:
        await link.close()


async def test_a_closed_link_fails_its_statements_and_connects_no_more(database: str) -> None:
    """A link closed while a task's statement runs on it fails that statement, and every
    later call, as unavailable, without making a connection again (what its session held,
    an advisory lock, is never taken again behind its owner's back)."""
    held: list[int] = []

    async def hold(conn: psycopg.AsyncConnection[Any]) -> None:
        held.append(id(conn))

    link = pgconnect.Link(database, "db", timeout_s=600.0, hold=hold)
    running = asyncio.Event()

    async def slow(conn: psycopg.AsyncConnection[Any]) -> str:
        running.set()  # on the connection: the statement is sent as this task next waits
        await conn.execute("SELECT pg_sleep(0.3)")
        return "slow"

    first = asyncio.create_task(link.run(slow, "slow"))
    await running.wait()
    await link.close()
    with pytest.raises(LedgerUnavailable, match="slow: its connection was closed"):
        await first
    with pytest.raises(LedgerUnavailable, match="later: its connection was closed"):
        await link.run(slow, "later")
    assert len(held) == 1
    assert link._conn is None


def _commit_answer_lost(monkeypatch: pytest.MonkeyPatch, *, landed: bool) -> None:
    """The next transaction's COMMIT is sent (landing or not, as ``landed`` says) and its
    connection lost before the answer comes back, as when the session is terminated then."""
    real = psycopg.AsyncConnection.transaction
    armed = [True]

    @contextlib.asynccontextmanager
    async def transaction(self: psycopg.AsyncConnection[Any]) -> Any:
        if not armed:
            async with real(self) as tx:
                yield tx
            return
        armed.clear()
        async with real(self, force_rollback=not landed) as tx:
            yield tx
        await self.close()
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(psycopg.AsyncConnection, "transaction", transaction)


@pytest.mark.parametrize("landed", [True, False])
async def test_a_commit_whose_answer_was_lost_is_written_once(
    database: str, monkeypatch: pytest.MonkeyPatch, landed: bool
) -> None:
    """A connection lost after a commit's COMMIT was sent: the store asks the server on a
    new connection what became of it, so the events and a fenced attempt end in the ledger
    once each, whether that commit landed or was rolled back, and the store goes on."""
    where = f"{database}?ledger=unanswered"
    store = open_store(where, "run")
    assert isinstance(store, PostgresStore)
    coordinator = coordinator_for(store, 30.0)
    try:
        store.append_now(HEADER)
        assert await coordinator.claim("g")
        _commit_answer_lost(monkeypatch, landed=landed)
        await asyncio.gather(
            store.append(events.RunStarted(1, "t")),
            store.append(_attempt("g"), fence=coordinator.fence("g")),
        )
        await store.append(events.RunStarted(2, "t"))
        kinds = [type(e).__name__ for e in read_events(where)]
        assert kinds.count("RunStarted") == 2
        assert kinds.count("Attempt") == 1
    finally:
        await coordinator.close()
        await store.close()


async def test_a_connection_an_operational_error_left_open_is_made_again(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OperationalError on a connection psycopg has not yet seen break (a session ended
    in the middle of a pipelined statement: "cannot exit pipeline mode while busy") is a lost
    connection: the write is made again on a new one, once."""
    where = f"{database}?ledger=pipeline"
    store = open_store(where, "run")
    real = psycopg.AsyncCursor.executemany
    armed = [True]

    async def executemany(self: psycopg.AsyncCursor[Any], *args: Any, **kwargs: Any) -> None:
        if armed:
            armed.clear()
            raise psycopg.OperationalError("cannot exit pipeline mode while busy")
        await real(self, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "executemany", executemany)
    status = events.status_event(
        "g1", RecipientStatus("+12125550100", "delivered"), source="track", time="t"
    )
    try:
        store.append_now(HEADER)
        await store.append(status)
        assert not armed
        assert sum(isinstance(e, events.Status) for e in read_events(where)) == 1
    finally:
        await store.close()


async def test_a_locked_table_ends_a_write_in_ledger_unavailable(database: str) -> None:
    """A commit that waits on a lock past the store's timeout fails as LedgerUnavailable
    (exit 7), naming the ledger without a password, and closes the store to writes."""
    where = f"{database}?ledger=locked"
    store = open_store(where, "run")
    assert isinstance(store, PostgresStore)
    store._writer.timeout_s = 0.5
    try:
        with (
            _locked(database, "bulk_mms_events"),
            pytest.raises(LedgerUnavailable, match=r"no answer within 0\.5 s") as caught,
        ):
            await store.append(events.RunStarted(1, "t"))
        assert caught.value.exit_code == 7
        assert isinstance(store.failed, LedgerUnavailable)
    finally:
        store.close_sync()


def _budget(database: str) -> PostgresBudget:
    """An account budget on a migrated ledger, at a rate that never makes a test wait."""
    where = f"{database}?ledger=budget"
    migrate_url(where)
    return PostgresBudget(database, where, "acme", 1e6, SystemClock())


def _sessions(database: str) -> set[int]:
    """The server's pids of this process's sessions on ``database``."""
    with psycopg.connect(database, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s",
            (f"bulk-mms pid {os.getpid()}",),
        ).fetchall()
    return {int(r[0]) for r in rows}


async def test_an_account_budget_whose_connection_is_terminated_reconnects(database: str) -> None:
    """pg_terminate_backend of the budget's (named) connection: the next admission
    reconnects, on a new session, and is admitted (it used to stop the run with exit 2)."""
    budget = _budget(database)
    try:
        await budget.acquire(1.0)
        before = _sessions(database)
        assert len(before) == 1  # named like the ledger's: an operator can see and end it
        _terminate(database, os.getpid())
        await budget.acquire(1.0)
        after = _sessions(database)
        assert len(after) == 1
        assert after.isdisjoint(before)
    finally:
        await budget.close()


async def test_a_locked_budget_table_ends_an_admission_in_ledger_unavailable(
    database: str,
) -> None:
    """An admission that waits on a lock past the timeout fails as LedgerUnavailable (exit
    7), never a plain LedgerError (exit 2); once the lock is gone the budget admits again."""
    budget = _budget(database)
    try:
        await budget.acquire(1.0)  # connected first: the loop's clock is virtual (looptime)
        budget._link.timeout_s = 0.5
        with (
            _locked(database, "bulk_mms_budgets"),
            pytest.raises(
                LedgerUnavailable, match=r"account budget: no answer within 0\.5 s"
            ) as caught,
        ):
            await budget.acquire(1.0)
        assert caught.value.exit_code == 7
        budget._link.timeout_s = 30.0
        await budget.acquire(1.0)
    finally:
        await budget.close()


async def test_closing_a_budget_gives_up_a_pause_write_the_locked_table_holds(
    database: str,
) -> None:
    """A pause being written when the run stops, its table locked: close() drops it within
    a few seconds instead of waiting out the 30 s bound."""
    budget = _budget(database)
    await budget.acquire(1.0)  # learns the database's clock: pauses are written through
    with _locked(database, "bulk_mms_budgets"):
        budget.pause(budget.clock.monotonic() + 60.0)
        start = time.monotonic()
        await budget.close()
        took = time.monotonic() - start
    assert took < 5, took


async def test_a_tally_whose_connection_is_terminated_reconnects_and_counts_once(
    database: str,
) -> None:
    """pg_terminate_backend before a reservation and before a release: each reconnects and
    counts exactly once (a cap of 10: 2 + 3 taken, 2 given back, so 8 more do not fit)."""
    where = f"{database}?ledger=tally"
    migrate_url(where)
    tally = PostgresTally(where)
    try:
        assert await tally.take("daily", Decimal(2), Decimal(10), Decimal(0), ("j", "g1")) is None
        with capture_logs() as logs:
            _terminate(database, os.getpid())
            three = ("j", "g2")
            assert await tally.take("daily", Decimal(3), Decimal(10), Decimal(0), three) is None
            _terminate(database, os.getpid())
            await tally.release("daily", ("j", "g1"))
        assert [e["event"] for e in logs] == ["ledger.reconnecting"] * 2
        eight = ("j", "g3")
        assert await tally.take("daily", Decimal(8), Decimal(10), Decimal(0), eight) == 3
    finally:
        await tally.close()


async def test_a_locked_limits_table_ends_a_count_in_ledger_unavailable(database: str) -> None:
    """A count that waits on a lock past the timeout fails as LedgerUnavailable (exit 7)."""
    where = f"{database}?ledger=tally"
    migrate_url(where)
    tally = PostgresTally(where)
    tally._link.timeout_s = 0.5
    try:
        with (
            _locked(database, "bulk_mms_limits"),
            pytest.raises(LedgerUnavailable, match=r"no answer within 0\.5 s") as caught,
        ):
            await tally.take("daily", Decimal(1), Decimal(10), Decimal(0), ("j", "g1"))
        assert caught.value.exit_code == 7
    finally:
        await tally.close()


async def test_a_heartbeat_that_crashes_stops_the_run() -> None:
    """An error in the heartbeat that is not a LedgerError still reaches ``failed``: the
    claims task never dies unseen."""

    class Broken(LocalCoordinator):
        lease_s = 0.003

        async def heartbeat(self) -> None:
            raise RuntimeError("boom")

    told: list[LedgerError] = []
    sharing = Sharing(None, Broken(), LedgerView(), SystemClock())  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        await sharing.keep_claims(told.append)
    assert [str(e) for e in told] == ["claims: the heartbeat failed: RuntimeError"]


async def test_a_cancel_during_a_stoppable_sleep_is_never_swallowed() -> None:
    """SystemClock.sleep with a stop: cancelling it raises CancelledError at once, even when
    the stop comes in the same moment."""
    stopping = asyncio.Event()
    clock = SystemClock(stopping)
    task = asyncio.create_task(clock.sleep(60))
    await asyncio.sleep(0)
    stopping.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


# -- real `bulk-mms run` processes -----------------------------------------------------------


def test_processes_started_at_once_on_a_new_ledger_share_one_header(
    jobs: JobFactory, database: str, tmp_path: Path
) -> None:
    """Three runs started in one instant on a fresh database: one header, one campaign,
    everyone texted once; then a run of another input under the same ledger is refused
    (exit 2) with nothing sent."""
    fake = FakeTelnyx(api_key=KEY)
    jobs.people(30)
    job = jobs.job(extra="group_size = 3")
    config = _config(jobs.root, "rate = 30\nconcurrency = 2\nlease_s = 3")
    where = f"{database}?ledger=instant"
    with fake_api_thread(fake) as url:
        procs = [_run(job.path, url, config, where) for _ in range(3)]
        outs = [p.communicate(timeout=90) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-300:] for o in outs]
        headers = [e for e in read_events(where) if isinstance(e, events.Header)]
        assert len(headers) == 1
        assert max(fake.recipient_counts().values()) == 1
        assert sorted(fake.recipient_counts()) == numbers(30)
        jobs.people(31)  # another input, the same job and ledger
        other = _run(job.path, url, config, where)
        _, err = other.communicate(timeout=60)
    assert other.returncode == 2, err[-300:]
    assert b"input file contents" in err
    assert b"Traceback" not in err
    assert sum(fake.recipient_counts().values()) == 30


def test_a_process_paused_past_its_lease_texts_nobody_twice(
    jobs: JobFactory, database: str
) -> None:
    """Two runs; one is SIGSTOPped until the other has taken its claims over, then woken:
    with a fake that replays no keys, nobody is texted twice, every recipient is sent or held
    in doubt (never lost), and a rerun (the records complete: records_lag_s = 0) leaves
    everyone accepted exactly once."""
    fake = FakeTelnyx(api_key=KEY)
    jobs.people(80)
    job = jobs.job(extra="group_size = 2")
    config = _config(jobs.root, "rate = 10\nconcurrency = 2\nlease_s = 1", api="records_lag_s = 0")
    where = f"{database}?ledger=paused"
    with fake_api_thread(fake) as url:
        first = _run_until_attempts(database, 6, job.path, url, config, where)
        second = _run(job.path, url, config, where)
        with _stopped(first):
            wait_for(
                "a claim taken over", lambda: _max_token(database) >= 2
            )  # the second took a claim over
        outs = [p.communicate(timeout=120) for p in (first, second)]
    for _, err in outs:
        assert b"Traceback" not in err
    counts = fake.recipient_counts()
    assert max(counts.values()) == 1
    view = load(where)
    settled = {p for g in view.groups.values() if g.state in ("sent", "in_doubt") for p in g.to}
    assert settled == set(numbers(80))
    with fake_api_thread(fake) as url:
        rerun = _run(job.path, url, config, where)
        _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err[-400:]
    assert fake.recipient_counts() == dict.fromkeys(numbers(80), 1)


@pytest.mark.slow
def test_a_run_stopped_past_its_request_timeout_reads_the_answers_that_came(
    jobs: JobFactory, database: str
) -> None:
    """A run SIGSTOPped for twice its request_timeout while requests of its are in flight (the
    fake answers each a second after accepting it) reads their answers once woken: no group
    in doubt, exit 0, everyone accepted once."""
    fake = FakeTelnyx(api_key=KEY)
    fake.faults.extend(Fault("slow", delay=1.0) for _ in range(40))
    jobs.people(40)
    job = jobs.job(extra="group_size = 2")
    config = _config(jobs.root, "rate = 10\nconcurrency = 4", api="request_timeout = 2")
    where = f"{database}?ledger=stopped"
    with fake_api_thread(fake) as url:
        proc = _run_until_attempts(database, 3, job.path, url, config, where)
        with _stopped(proc):
            time.sleep(4)  # its requests' answers come meanwhile
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-400:]
    assert b"Traceback" not in err
    assert _count(database, "in_doubt") == 0
    assert fake.recipient_counts() == dict.fromkeys(numbers(40), 1)


@pytest.mark.slow
def test_hosts_with_different_leases_never_take_each_others_live_claims(
    jobs: JobFactory, database: str
) -> None:
    """Two live runs, one with lease_s = 30 (it renews every 10 s), one with lease_s = 2
    (short enough that the run outlasts it several times over; long enough that a loaded
    machine's stall does not let its own claims run out): neither takes a claim of the
    other (no fence token past 1), everyone is texted once, and both exit 0."""
    fake = FakeTelnyx(api_key=KEY)
    jobs.people(80)
    job = jobs.job(extra="group_size = 2")
    slow = _config(jobs.root, "rate = 6\nconcurrency = 2\nlease_s = 30", api="records_lag_s = 0")
    quick = jobs.root / "quick.toml"
    quick.write_text(slow.read_text().replace("lease_s = 30", "lease_s = 2"))
    where = f"{database}?ledger=leases"
    with fake_api_thread(fake) as url:
        first = _run_until_attempts(database, 2, job.path, url, slow, where)
        second = _run(job.path, url, quick, where)
        outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [o[1][-400:] for o in outs]
    assert _max_token(database) == 1
    assert fake.recipient_counts() == dict.fromkeys(numbers(80), 1)


def test_a_terminated_connection_is_survived_or_stops_cleanly(
    jobs: JobFactory, database: str
) -> None:
    """pg_terminate_backend of every connection of a run: it reconnects and finishes, or
    stops within seconds with exit 7 and no traceback; a rerun then completes, everyone
    texted once."""
    fake = FakeTelnyx(api_key=KEY)
    jobs.people(40)
    job = jobs.job(extra="group_size = 2")
    config = _config(jobs.root, "rate = 8\nconcurrency = 2")
    where = f"{database}?ledger=terminated"
    with fake_api_thread(fake) as url:
        proc = _run(job.path, url, config, where)
        wait_for("sending", lambda: _count(database, "sent") >= 4)
        _terminate(database, proc.pid)
        cut = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, 7), err[-400:]
        assert b"Traceback" not in err
        if proc.returncode == 7:
            assert time.monotonic() - cut < 10
            again = _run(job.path, url, config, where)
            _, err = again.communicate(timeout=60)
            assert again.returncode == 0, err[-400:]
    assert max(fake.recipient_counts().values()) == 1
    assert sorted(fake.recipient_counts()) == numbers(40)


@pytest.mark.slow
@pytest.mark.parametrize("table", ["bulk_mms_events", "bulk_mms_budgets", "bulk_mms_limits"])
def test_sigterm_with_a_ledger_table_locked_ends_the_run_within_20_s(
    jobs: JobFactory, database: str, table: str
) -> None:
    """A run (sharing a rate and a max_cost through the database) whose ledger, rate or
    limits table another session locks, then SIGTERM: with the default request_timeout
    (30 s) it exits within 20 s (a stop ends the wait for the database, and closing is
    bounded), without a traceback, with the code of a stop (143) or of the database fault
    (7)."""
    fake = FakeTelnyx(api_key=KEY)
    jobs.people(60)
    job = jobs.job(extra='group_size = 2\nmax_cost = "100"')
    config = _config(jobs.root, "rate = 5\nconcurrency = 2", pricing='per_recipient = "0.01"')
    where = f"{database}?ledger=lockedrun"
    with fake_api_thread(fake) as url:
        proc = _run(job.path, url, config, where)
        wait_for("sending", lambda: _count(database, "sent") >= 2)
        with _locked(database, table):
            wait_for("the run blocked on the lock", lambda: waits_on_a_lock(database, proc.pid))
            proc.send_signal(signal.SIGTERM)
            start = time.monotonic()
            _, err = proc.communicate(timeout=60)
            took = time.monotonic() - start
    assert took < 20, took
    assert proc.returncode in (143, 7), err[-400:]
    assert b"Traceback" not in err


# -- helpers ----------------------------------------------------------------------------------


def _config(root: Path, limits: str, *, api: str = "", pricing: str = "") -> Path:
    path = root / "config.toml"
    path.write_text(
        f"[limits]\n{limits}\n"
        + (f"[api]\n{api}\n" if api else "")
        + (f"[pricing]\n{pricing}\n" if pricing else "")
    )
    return path


def _run(job: Path, url: str, config: Path, ledger: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TELNYX_API_KEY": KEY}
    env.pop("TELNYX_BASE_URL", None)
    cmd = [sys.executable, "-m", "bulk_mms", "-q", "run", str(job), "--base-url", url]
    cmd += ["--config", str(config), "--ledger", ledger, "--yes"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _count(database: str, kind: str) -> int:
    try:
        n = query(database, f"SELECT count(*) FROM bulk_mms_events WHERE kind = '{kind}'")
    except psycopg.errors.UndefinedTable:
        return 0
    return int(str(n))


def _pausing(database: str) -> bool:
    """Whether a full read of this process waits for writers: its session's last statement
    is the pause between two looks (pgread's ``_PAUSE``)."""
    return bool(
        query(
            database,
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' "
            f"AND application_name = 'bulk-mms pid {os.getpid()}'",
        )
    )


def _max_token(database: str) -> int:
    try:
        return int(str(query(database, "SELECT coalesce(max(token), 0) FROM bulk_mms_claims")))
    except psycopg.errors.UndefinedTable:
        return 0


def _terminate(database: str, pid: int) -> None:
    """End every session of the process ``pid`` (its application_name) from the server, and
    wait (up to 5 s) until each is gone."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (f"bulk-mms pid {pid}",),
        )


@contextlib.contextmanager
def _stopped(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """``proc`` stopped (SIGSTOP) for the block, and woken (SIGCONT) as it ends, however."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


class _locked:
    """Hold ``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` from another session meanwhile."""

    def __init__(self, database: str, table: str) -> None:
        self.conn = psycopg.connect(database)
        self.table = table

    def __enter__(self) -> None:
        self.conn.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE")

    def __exit__(self, *exc: object) -> None:
        self.conn.rollback()
        self.conn.close()


def _run_until_attempts(
    database: str, attempts: int, job: Path, url: str, config: Path, ledger: str
) -> subprocess.Popen[bytes]:
    """A run (:func:`_run`) once the database holds ``attempts`` of its attempts: sending."""
    proc = _run(job, url, config, ledger)
    wait_for(f"{attempts} attempts", lambda: _count(database, "attempt") >= attempts)
    return proc


async def _no_live_run(looker: LedgerStore, seconds: float = 5.0) -> str | None:
    """``looker``'s live run, asked until there is none (at most ``seconds``): a session's
    advisory lock goes with its server process, a moment after the client closed it."""
    for _ in range(round(seconds / 0.05)):
        if await looker.live_run(30.0) is None:
            return None
        await asyncio.sleep(0.05)  # the server's state, not ours: nothing to wait on but time
    return await looker.live_run(30.0)


async def test_the_last_drain_is_cut_short_by_a_stop_and_cancels_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A drain that never ends is given up (TimeoutError) soon after a stop comes, not after
    the full bound; cancelling the wait raises CancelledError, never swallowed."""
    monkeypatch.setattr(ending, "DRAIN_LIMIT_STOPPING_S", 0.01)
    stop = Stop()
    never = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(_bounded(never, stop))
    await asyncio.sleep(0)
    stop.request(StopReason.SIGTERM)
    start = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await waiting
    took = asyncio.get_running_loop().time() - start
    assert took < 1.0  # not DRAIN_LIMIT_S (30 s)
    assert never.cancelled()
    cancelled = asyncio.create_task(_bounded(asyncio.sleep(60), Stop()))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled


async def test_a_run_whose_sessions_the_server_ended_is_live_again_by_its_next_heartbeat(
    database: str, another_database: str
) -> None:
    """A run whose database sessions were all ended (an operator's pg_terminate_backend, a
    failover) holds its run lock again once its next heartbeat has reconnected: `track
    --follow` sees it live while it holds no claim, and not once it has ended. A run of the
    same ledger number in another database keeps its sessions."""
    where = f"{database}?ledger=ended"
    run = open_store(where, "run")
    looker = open_store(where, "append")
    coordinator = coordinator_for(run, 30.0)
    elsewhere = open_store(f"{another_database}?ledger=ended", "run")  # its ledger 1 too
    try:
        await coordinator.heartbeat()  # its claims' connection, and the run lock with it
        with psycopg.connect(database, autocommit=True) as conn:
            ended = conn.execute(
                # waits (up to 10 s) until each session has ended, its locks released with it
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks "
                "WHERE locktype = 'advisory' "
                f"AND classid = %s::oid AND objid = %s::oid AND {_THIS_DATABASE}",
                (_RUN_LOCK, _ledger_key(run._id)),  # type: ignore[attr-defined]
            ).fetchall()
        assert ended == [(True,), (True,)]  # the store's session and the claims' connection
        assert await looker.live_run(30.0) is None
        await coordinator.heartbeat()
        assert await looker.live_run(30.0) == f"bulk-mms pid {os.getpid()}"
        await coordinator.close()
        run.close_sync()
        assert await _no_live_run(looker) is None
        assert await elsewhere.live_run(30.0) == f"bulk-mms pid {os.getpid()}"  # untouched
    finally:
        await coordinator.close()
        await looker.close()
        await elsewhere.close()
        run.close_sync()


async def test_a_link_closed_while_its_connection_is_being_held_fails_as_unavailable(
    database: str,
) -> None:
    """A link closed while a new connection's ``hold`` (its session's lock) runs fails the
    call as unavailable, its connection closed, rather than with a traceback."""
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold(conn: psycopg.AsyncConnection[Any]) -> None:
        holding.set()
        await release.wait()

    link = pgconnect.Link(database, "db", timeout_s=600.0, hold=hold)

    async def quick(conn: psycopg.AsyncConnection[Any]) -> str:
        return "quick"

    call = asyncio.create_task(link.run(quick, "quick"))
    await holding.wait()
    await link.close()
    release.set()
    with pytest.raises(LedgerUnavailable, match="quick: its connection was closed"):
        await call
    assert link._conn is None


async def test_a_move_a_reached_event_takes_back_leaves_the_number_a_resend(
    database: str,
) -> None:
    """A number moved policy.MAX_RESENDS times, one of whose messages a report then said
    reached it (a ``reached`` event): the ledger counts that move no more, as the fold does,
    and writes the number's next move."""
    where = f"{database}?ledger=reached"
    store = open_store(where, "run")
    spent = "+12125550100"
    try:
        store.append_now(HEADER)
        for i in range(MAX_RESENDS):
            await store.append(_moved(f"g{i}", spent))
        await store.append(events.Reached("g0", (spent,), "t"))
        assert store.fold().moves(spent) == MAX_RESENDS - 1
        await store.append(_moved("g9", spent))
        assert len(_moved_out_of(where)[spent]) == MAX_RESENDS + 1
        assert store.fold().moves(spent) == MAX_RESENDS
    finally:
        await store.close()
