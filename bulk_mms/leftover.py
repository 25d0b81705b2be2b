"""The room in the shared limits (:mod:`bulk_mms.caps`) that a ledger's groups hold and no run
settled: settled as a run begins (:meth:`Leftover.reconcile`), and the room of groups failed
for good given back before a limit stops the job (:meth:`Leftover.give_back_ended`).

A run killed, or cut off, between reserving a group's room and settling it leaves the room
counted (never a send too many): the next run decides each such group by the ledger, under its
own claim on it. A group the ledger shows failed for good (:data:`~bulk_mms.caps.ENDED`) is
given back whoever holds its claim: no host sends it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bulk_mms.caps import ENDED, SPENT, UNDECIDED, UNSENT, Limit
from bulk_mms.ledger.fold import FAILED, IN_DOUBT, SENT, GroupRecord
from bulk_mms.sharing import Sharing


def ended(rec: GroupRecord | None) -> str:
    """What becomes of the room of a group as the ledger has it (``rec``), whoever holds its
    claim: given back (:data:`~bulk_mms.caps.ENDED`) when it failed for good, which no host
    sends again; else undecided."""
    return ENDED if rec is not None and rec.state == FAILED else UNDECIDED


class Leftover:
    """The room ``limits`` (the sender's) hold for a ledger's groups that no run settled,
    decided by the ledger as ``sharing`` (the run's) reads it, under this process's claims."""

    def __init__(self, limits: Sequence[Limit], sharing: Sharing) -> None:
        self.limits = limits
        self.sharing = sharing
        #: Done as the pass of :meth:`give_back_ended` going now ends; None: none goes.
        self._passing: asyncio.Future[None] | None = None

    async def reconcile(self) -> None:
        """Settle the room groups of this ledger hold in the shared counts from runs that
        ended without settling it (killed, or cut off: :meth:`~bulk_mms.caps.Limit.reconcile`),
        each decided by the ledger as it is once this process holds the group's claim, and
        given back only while it still does (its fence)."""
        fence = self.sharing.coordinator.fence
        for limit in self.limits:
            await limit.reconcile(self._reservation_of, fence)

    async def give_back_ended(self) -> None:
        """Before a limit stops the job: give back the room this ledger's groups hold that
        the ledger shows failed for good now (:data:`~bulk_mms.caps.ENDED`). A process killed
        since this run began, between writing such a failure and giving the room back, left
        it held, its claim live for a lease. Nothing else is decided here, and no claim
        taken: this process's own groups in flight hold room it settles itself.

        One pass at a time: a caller that comes while a pass goes (another group the cap
        refused meanwhile) waits for that pass to end instead of making its own; one
        cancelled as it waits leaves the pass to its maker."""
        if self._passing is not None:
            await asyncio.shield(self._passing)
            return
        self._passing = passing = asyncio.get_running_loop().create_future()
        try:
            for limit in self.limits:
                await limit.reconcile(self._ended_now)
        finally:
            self._passing = None
            passing.set_result(None)  # the waiters go on as the maker does, whatever it met

    async def _ended_now(self, gid: str) -> str:
        """:func:`ended` of group ``gid`` as the ledger has it now (this process's view left
        as it is)."""
        return ended(await self.sharing.looked(gid))

    async def _reservation_of(self, gid: str) -> str:
        """What becomes of the room group ``gid`` holds: spent (sent), given back (ended
        unsent, or never attempted, under this process's claim now: a request of the
        process that held it can no longer leave; or failed for good, whoever holds its
        claim: :data:`~bulk_mms.caps.ENDED`), or kept (in doubt, or a live process holds its
        claim and may send it under that room)."""
        held, rec = await self.sharing.claimed(gid)
        if ended(rec) == ENDED:
            return ENDED  # failed for good, whoever holds its claim
        if not held:
            return UNDECIDED  # a live process holds its claim and may send it
        if rec is None:
            return UNSENT
        if rec.state == SENT:
            return SPENT
        if rec.state == IN_DOUBT:  # an attempt still open is too
            return UNDECIDED
        return UNSENT
