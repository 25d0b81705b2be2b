"""Several processes on one shared (PostgreSQL) ledger: claims, their heartbeat, and waiting
for the groups others hold.

Every process reads the whole input. Before it decides about a group it claims it; a live
process's claim sends the group to :attr:`Sharing.others`, to be watched until it settles. A
claim that stops being renewed for ``lease_s`` (its process died) passes to whoever asks next,
who finishes the group under the same Idempotency-Key and in-doubt rules as a resume. A store
that is not shared (the JSONL file) makes all of this a no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from bulk_mms.clock import Clock
from bulk_mms.errors import LedgerError
from bulk_mms.ledger import LedgerStore, LedgerView
from bulk_mms.models import Group

log = structlog.get_logger("bulk_mms.runner")


class Sharing:
    """One process's part in a shared ledger."""

    def __init__(self, store: LedgerStore, view: LedgerView, clock: Clock) -> None:
        self.store = store
        self.view = view
        self.clock = clock
        #: Groups a live process claimed first, watched until they settle.
        self.others: dict[str, Group] = {}

    async def take(self, group: Group) -> bool:
        """Whether this process decides about ``group``: it holds the claim (and has the
        group as the ledger has it now), or the store is not shared."""
        if not self.store.shared or self.view.is_done(group.id):
            return True
        if not await self.store.claim(group.id):
            self.others[group.id] = group  # a live process has it: see it settle
            return False
        # another process may have sent it since this run started
        self.view.refresh_group(group.id, self.store.group_events(group.id))
        return True

    async def untouched(self, gid: str) -> bool:
        """Whether this process may decide about group ``gid``, which it has not seen in the
        ledger: always on a store that is not shared; else once it holds the claim and the
        ledger still has nothing of the group (another process may have acted since)."""
        if not self.store.shared:
            return True
        if not await self.store.claim(gid):
            return False  # a live process decides it; if it dies, a rerun does
        return self.view.refresh_group(gid, self.store.group_events(gid)) is None

    async def settle_others(
        self, dispatch: Callable[[Group], Awaitable[bool]], stopped: Callable[[], bool]
    ) -> None:
        """Wait until the groups others claimed are settled; take over those whose process
        died and ``dispatch`` them. So every process ends when the job does, with the same view
        of it, and a process that dies loses none of its groups."""
        while self.others and not stopped():
            for gid, group in list(self.others.items()):
                rec = self.view.refresh_group(gid, self.store.group_events(gid))
                if rec is not None and not rec.open and rec.outcome is not None:
                    del self.others[gid]  # settled by its owner
                elif await self.store.claim(gid):
                    del self.others[gid]
                    log.info("group.taken_over", group=gid)
                    if not await dispatch(group):
                        return
            if self.others:
                await self.clock.sleep(min(1.0, self.store.lease_s / 4))

    async def keep_claims(self, failed: Callable[[LedgerError], None]) -> None:
        """Renew this process's claims well within the lease, until cancelled."""
        while True:
            await asyncio.sleep(self.store.lease_s / 3)  # real time: the lease is the server's
            try:
                await self.store.heartbeat()
            except LedgerError as exc:
                failed(exc)
                return
