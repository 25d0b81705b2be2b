"""The seam between processes that share a job: claims, their fences and their heartbeat.

A run asks its :class:`Coordinator` before it decides about a group (:meth:`~Coordinator.claim`),
keeps its claims alive while it works (:meth:`~Coordinator.heartbeat`), and writes each
write-ahead ``attempt`` under the claim's :class:`Fence` (:meth:`~Coordinator.fence`): a store
that is shared writes the attempt only while the claim is still held with that fence, so a
process that lost a claim (paused past the lease, cut off) can never send the group. A failure
that does not leave its group in doubt is written under the fence too: it would close whatever
attempt is open on the group, another process's as well. The account budget the processes
share comes from it too (:meth:`~Coordinator.account_budget`). The ledger store keeps to
appending, reading and folding events.

A run on a ledger nobody else may run at once (the JSONL file, under its lock) uses
:class:`LocalCoordinator`: everything is its own, nothing is fenced. A PostgreSQL ledger uses
:class:`~bulk_mms.ledger.postgres.PostgresCoordinator`. :func:`coordinator_for` picks one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bulk_mms.clock import Clock
    from bulk_mms.ledger.store import LedgerStore
    from bulk_mms.rate import AccountBudget


@dataclass(frozen=True, slots=True)
class Fence:
    """Who holds a group's claim, and since which takeover: ``token`` grows each time another
    process takes the group over, so an older holder's write is recognised and refused."""

    owner: str
    token: int


class Coordinator(Protocol):
    """One process's part in a job other processes may be running too."""

    #: Whether other processes may run the same ledger at once (then each group is claimed
    #: before this process decides about it).
    shared: bool
    #: Seconds without a heartbeat after which a process's claims pass to the others.
    lease_s: float

    async def claim(self, group: str) -> bool:
        """Take ``group`` for this process (or renew its claim): False while another live
        process holds it. A takeover grows the claim's fence token.

        Raises:
            LedgerError: the coordination store failed (LedgerUnavailable: lost, or no
                answer in time).
        """
        ...

    async def claim_many(self, groups: Collection[str]) -> set[str]:
        """Claim each of ``groups`` as :meth:`claim` does, in as few round trips as the store
        allows (what watching many groups others hold asks for, every poll): the ones won.
        One not won may only be won later (its claim was busy in another transaction), never
        one this process holds lost to that.

        Raises:
            LedgerError: the coordination store failed (LedgerUnavailable: lost, or no
                answer in time); claims won before it are held.
        """
        ...

    def fence(self, group: str) -> Fence | None:
        """The fence of this process's claim on ``group`` (None: not shared, nothing to
        fence); the store writes the group's attempt only while it still holds."""
        ...

    def held_for(self, group: str) -> float | None:
        """Seconds this process surely still holds its claim on ``group``, by its own clock:
        the lease from when it last asked to claim it, or to renew it in a renewal answered
        while the claim still held. None: nothing is shared, no lease runs out. At or under
        0, the claim may have passed to another process (this one was paused, or its
        renewals late): no request for the group may leave before it is claimed again."""
        ...

    def let_go(self, decided: Callable[[str], bool]) -> None:
        """Stop renewing the claims on groups ``decided`` says are decided (sent, or failed
        for good, in this process's view), and forget their fences: each runs out by its
        lease, and whoever claims one then finds it decided in the ledger. Safe because every
        send is fenced by its own group's claim, and this process never sends a decided group
        again; it keeps a run's renewals to the groups still open, not every group it ever
        claimed."""
        ...

    async def heartbeat(self) -> None:
        """Renew every claim this process holds and has not let go (call well within
        :attr:`lease_s`).

        Raises:
            LedgerError: they could not be renewed; the caller stops and treats the groups
                in flight as in doubt.
        """
        ...

    async def release(self) -> None:
        """Give back every claim this process holds, once its run has ended (nothing of it is
        sent any more, nothing renewed): the others take its groups at once, as they would
        once its lease ran out, and decide each by the ledger as a takeover does (a group in
        doubt is held and settled, never sent again blindly).

        Raises:
            LedgerError: the coordination store failed; the claims then run out by their
                lease, as a killed process's do.
        """
        ...

    def account_budget(
        self,
        account: str,
        rate: float,
        clock: Clock,
        *,
        max_cost: float,
        stopped: Callable[[], bool],
    ) -> AccountBudget | None:
        """The account budget the processes sharing this job share (None: this process paces
        alone, with the pacer's in-process budget)."""
        ...

    async def close(self) -> None:
        """Release what the coordinator holds (connections); never raises."""
        ...


class LocalCoordinator:
    """The coordinator of a run nobody else shares: every group is its own, nothing fenced."""

    shared = False
    lease_s = 0.0

    async def claim(self, group: str) -> bool:
        return True

    async def claim_many(self, groups: Collection[str]) -> set[str]:
        return {group for group in groups if await self.claim(group)}

    def fence(self, group: str) -> Fence | None:
        return None

    def held_for(self, group: str) -> float | None:
        return None

    def let_go(self, decided: Callable[[str], bool]) -> None:
        return None

    async def heartbeat(self) -> None:
        return None

    async def release(self) -> None:
        return None

    def account_budget(
        self,
        account: str,
        rate: float,
        clock: Clock,
        *,
        max_cost: float,
        stopped: Callable[[], bool],
    ) -> AccountBudget | None:
        return None  # one process: the pacer's own in-process budget

    async def close(self) -> None:
        return None


def coordinator_for(store: LedgerStore, lease_s: float) -> Coordinator:
    """The coordinator of a run on ``store``: the database's when it is shared, else local."""
    if not store.shared:
        return LocalCoordinator()
    from bulk_mms.ledger.postgres import PostgresCoordinator, PostgresStore  # noqa: PLC0415

    assert isinstance(store, PostgresStore)  # the one shared store
    return PostgresCoordinator(store, lease_s)
