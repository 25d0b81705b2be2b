"""Watching many groups other processes hold on a PostgreSQL ledger: their events read, and
their claims tried, many to a statement (:meth:`PostgresStore.events_of
<bulk_mms.ledger.postgres.PostgresStore.events_of>`, :meth:`PostgresCoordinator.claim_many
<bulk_mms.ledger.postgres.PostgresCoordinator.claim_many>`), each as one group's would be."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from bulk_mms.clock import SystemClock
from bulk_mms.coordination import Fence, coordinator_for
from bulk_mms.errors import ClaimLost, LedgerUnavailable
from bulk_mms.ledger import LedgerView, events, open_store, postgres
from bulk_mms.ledger.postgres import PostgresCoordinator, PostgresStore
from bulk_mms.sharing import Sharing
from tests.conftest import waits_on_a_lock
from tests.test_pg_faults import (
    HEADER,
    _attempt,
    _group_events,
    _terminate,
    two_hosts,
)
from tests.test_postgres import age_claims

MEMBERS = ("+12125550000",)


def _counted(
    monkeypatch: pytest.MonkeyPatch,
    sql: str,
    before: Callable[[int], Awaitable[None]] | None = None,
) -> list[int]:
    """Count the statements ``sql`` sent (one item per statement, its number of groups),
    calling ``before(n)`` ahead of the n-th (from 1)."""
    sent: list[int] = []
    execute = psycopg.AsyncConnection.execute

    async def counting(
        self: psycopg.AsyncConnection[Any], query: Any, *args: Any, **kw: Any
    ) -> Any:
        if query is sql:
            params = args[0]
            sent.append(len(params["grps"] if isinstance(params, dict) else params[1]))
            if before is not None:
                await before(len(sent))
        return await execute(self, query, *args, **kw)

    monkeypatch.setattr(psycopg.AsyncConnection, "execute", counting)
    return sent


async def _write_history(store: PostgresStore, coordinator: PostgresCoordinator) -> None:
    """Groups g0..g5 in every state a watcher meets: sent (with a delivery status, which a
    look leaves out), in doubt, attempted, failed; g4 and g5 nothing at all."""
    store.append_now(HEADER)
    for gid in ("g0", "g1", "g2", "g3"):
        assert await coordinator.claim(gid)
        await store.append(_attempt(gid), fence=coordinator.fence(gid))
    await store.append(events.Sent("g0", MEMBERS, 0, message_id="m0"))
    await store.append(events.Status("g0", MEMBERS[0], "delivered", "m0", webhook_id="w0"))
    await store.append(events.InDoubt("g1", MEMBERS, 0, reason="in doubt"))
    await store.append(events.Failed("g3", MEMBERS, 0, code="40300"))


async def test_a_batch_look_reads_what_one_groups_look_reads(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six groups read two to a statement (three statements) give each group the events its
    own read gives, in order and without delivery statuses, and a view refreshed from them
    holds the same records as one refreshed a group at a time."""
    async with two_hosts(f"{database}?ledger=looked") as (first, second, one, _two):
        assert isinstance(first, PostgresStore)
        assert isinstance(one, PostgresCoordinator)
        await _write_history(first, one)
        gids = [f"g{i}" for i in range(6)]
        single = {gid: await _group_events(second, gid) for gid in gids}
        monkeypatch.setattr(postgres, "BATCH", 2)
        sent = _counted(monkeypatch, postgres._GROUPS_EVENTS)
        assert await second.events_of(gids) == single
        assert sent == [2, 2, 2]
        assert [type(e).__name__ for e in single["g0"]] == ["Attempt", "Sent"]
        assert single["g4"] == single["g5"] == []
        one_at_a_time, batched = LedgerView(), LedgerView()
        for gid in gids:
            one_at_a_time.refresh_group(gid, single[gid])
        watcher = Sharing(second, one, batched, SystemClock())
        looked = await watcher._look(gids)
        assert batched.groups == one_at_a_time.groups
        assert [None if r is None else r.state for r in looked.values()] == [
            "sent",
            "in_doubt",
            "in_doubt",
            "failed",
            None,
            None,
        ]


async def test_a_batch_claim_wins_what_one_claims_win_under_the_same_fences(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claimed many to a statement, groups go as one at a time: a live holder's is not won;
    one whose holder's lease ran out is taken over under a token one greater, once (asked
    again, the taker renews it, the token stays), and the old holder's fence writes nothing;
    a group never claimed is won under token 1; chunked at the bound."""
    async with two_hosts(f"{database}?ledger=claimed") as (first, _second, one, two):
        assert isinstance(two, PostgresCoordinator)
        for gid in ("live", "dead1", "dead2"):
            assert await one.claim(gid)
        old = one.fence("dead1")
        age_claims(database, 31)
        one.let_go(lambda gid: gid != "live")  # its holder renews only "live"
        await one.heartbeat()
        monkeypatch.setattr(postgres, "BATCH", 2)
        sent = _counted(monkeypatch, postgres._CLAIM_MANY)
        asked = ["live", "dead1", "dead2", "new", "dead1"]
        assert await two.claim_many(asked) == {"dead1", "dead2", "new"}
        assert sent == [2, 2]  # four groups (one asked twice), two to a statement
        tokens = {gid: two.fence(gid) for gid in ("dead1", "dead2", "new")}
        assert {gid: f.token for gid, f in tokens.items() if f} == {
            "dead1": 2,
            "dead2": 2,
            "new": 1,
        }
        assert two.fence("live") == Fence(two.owner, 0)
        assert all((two.held_for(gid) or 0.0) > 25 for gid in tokens)
        assert await two.claim_many(["dead1", "dead2", "new"]) == {"dead1", "dead2", "new"}
        assert {gid: two.fence(gid) for gid in tokens} == tokens  # renewed: no token grew
        assert await one.claim_many(["live", "dead1", "new"]) == {"live"}
        assert one.fence("dead1") == Fence(one.owner, 0)  # type: ignore[attr-defined]
        with pytest.raises(ClaimLost):
            await first.append(_attempt("dead1"), fence=old)
        assert await _group_events(first, "dead1") == []


async def test_a_batch_claim_skips_a_claim_another_transaction_has_locked(database: str) -> None:
    """A run-out claim another transaction holds locked (its old holder committing an
    attempt under it) is not waited for, nor won this time; once the lock goes, it is
    taken over: the attempt committed first is in the ledger, for the taker to settle."""
    async with two_hosts(f"{database}?ledger=locked") as (_first, _second, one, two):
        assert await one.claim("g1")
        age_claims(database, 31)
        async with await psycopg.AsyncConnection.connect(database) as conn:
            await conn.execute("SELECT 1 FROM bulk_mms_claims WHERE grp = 'g1' FOR SHARE")
            async with asyncio.timeout(5):
                assert await two.claim_many(["g1"]) == set()
        assert await two.claim_many(["g1"]) == {"g1"}
        assert two.fence("g1").token == 2  # type: ignore[union-attr]


async def test_a_batch_claim_renews_this_processs_own_claim_waiting_for_its_lock(
    database: str,
) -> None:
    """A claim this process holds, locked by a transaction of its own (its writer's fenced
    attempt), is renewed as one claim is, once the lock goes: never lost to the lock."""
    async with two_hosts(f"{database}?ledger=own") as (_first, _second, one, _two):
        assert await one.claim("g1")
        token = one.fence("g1")
        async with await psycopg.AsyncConnection.connect(database) as conn:
            await conn.execute("SELECT 1 FROM bulk_mms_claims WHERE grp = 'g1' FOR SHARE")
            renewing = asyncio.ensure_future(one.claim_many(["g1", "g2"]))
            while not await asyncio.to_thread(waits_on_a_lock, database):
                assert not renewing.done()
            assert not renewing.done()  # waiting for the lock, as a claim does
        assert await renewing == {"g1", "g2"}
        assert one.fence("g1") == token


@pytest.mark.parametrize("cuts", [1, 2])
async def test_a_connection_lost_mid_batch_is_made_again_once_else_unavailable(
    database: str, monkeypatch: pytest.MonkeyPatch, cuts: int
) -> None:
    """The connection lost as the second chunk's look and claim go out: made again once, the
    batch ends as if nothing happened; lost again, the call fails as LedgerUnavailable (as
    one group's does), the first chunk's claims held and none of the second's."""
    where = f"{database}?ledger=cut"
    store = open_store(where, "run")
    coordinator = coordinator_for(store, 30.0)
    assert isinstance(store, PostgresStore)
    assert isinstance(coordinator, PostgresCoordinator)
    gids = ["g0", "g1", "g2", "g3"]
    monkeypatch.setattr(postgres, "BATCH", 2)

    async def cut(n: int) -> None:
        if 2 <= n < 2 + cuts:
            await asyncio.to_thread(_terminate, database, os.getpid())

    try:
        store.append_now(HEADER)
        await store.append(events.RunStarted(1, "t"))
        reads = _counted(monkeypatch, postgres._GROUPS_EVENTS, cut)
        claims = _counted(monkeypatch, postgres._CLAIM_MANY, cut)
        if cuts == 1:
            assert await store.events_of(gids) == {gid: [] for gid in gids}
            assert await coordinator.claim_many(gids) == set(gids)
            assert (len(reads), len(claims)) == (3, 3)  # the second chunk's twice
            return
        with pytest.raises(LedgerUnavailable, match="cannot read"):
            await store.events_of(gids)
        with pytest.raises(LedgerUnavailable, match="cannot claim"):
            await coordinator.claim_many(gids)
        assert [gid for gid in gids if coordinator.fence(gid).token] == ["g0", "g1"]  # type: ignore[union-attr]
    finally:
        await coordinator.close()
        await store.close()
