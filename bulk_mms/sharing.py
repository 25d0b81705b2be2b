"""Several processes on one shared (PostgreSQL) ledger: claims, their heartbeat, and waiting
for the groups others hold.

Every process reads the whole input. Before it decides about a group it claims it through the
run's :class:`~bulk_mms.coordination.Coordinator`; a live process's claim sends the group to
:attr:`Sharing.others`, to be watched until it settles. One its holder leaves undecided (in
doubt, pending a retry), makes anew, or sends on without some members is watched after the run
(:attr:`Sharing.later`), for a bounded time, through the claim its maker holds: no two
processes wait on each other for ever, and no watcher takes a group from under a live maker.
A claim that stops being renewed for
``lease_s`` (its process died, or was paused) passes to whoever asks next, under a new fence
token: the old holder can no longer write the group's attempt, so never sends it. Who takes
over a group with an open attempt finds it in doubt (held, settled by the API's records),
never sent again blindly. A coordinator that is not shared (a JSONL file) makes all of this a
no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from bulk_mms.clock import Clock
from bulk_mms.coordination import Coordinator
from bulk_mms.errors import LedgerError
from bulk_mms.ledger import LedgerStore, LedgerView
from bulk_mms.ledger.fold import FAILED, IN_DOUBT, RETRY_PENDING, SENT, GroupRecord
from bulk_mms.models import Group

log = structlog.get_logger(__name__)

#: The states a group's holder never changes in the same run: sent, or failed for good.
DECIDED = frozenset((SENT, FAILED))
#: The states a holder may still change before it ends: in doubt (it settles the group by the
#: API's records, and may send it again) and pending a retry (the records showed it never
#: accepted, and it is sent again).
UNDECIDED = frozenset((IN_DOUBT, RETRY_PENDING))


def handed_on(rec: GroupRecord | None) -> bool:
    """Whether a group's holder is done with it for this run: sent or failed for good, or
    made anew without members (refused by name, or suppressed) and closed, the new group
    going out in its place (:attr:`Sharing.successor`). None (the ledger has nothing of the
    group yet): not."""
    if rec is None:
        return False
    if rec.state in DECIDED:
        return True
    return rec.outcome is None and not rec.open and bool(rec.refused)


class Sharing:
    """One process's part in a shared ledger."""

    def __init__(
        self,
        store: LedgerStore,
        coordinator: Coordinator,
        view: LedgerView,
        clock: Clock,
        successor: Callable[[Group], Group | None] = lambda group: None,
    ) -> None:
        self.store = store
        self.coordinator = coordinator
        self.view = view
        self.clock = clock
        #: The group that goes out in place of a settled one, as the ledger has it now
        #: (members refused by name, or moved): watched in turn.
        self.successor = successor
        #: Groups a live process claimed first, watched until they settle.
        self.others: dict[str, Group] = {}
        #: Of those, the ones their holder left undecided (:data:`UNDECIDED`): looked at again
        #: once this process has settled its own (:meth:`settle_later`).
        self.later: dict[str, Group] = {}
        #: The claim through which a group in :attr:`later` passes to this process (see
        #: :meth:`watch_later`); its own when not here.
        self._through: dict[str, str] = {}

    @property
    def shared(self) -> bool:
        """Whether other processes may be running the job too."""
        return self.coordinator.shared

    async def take(self, group: Group) -> bool:
        """Whether this process decides about ``group``: it holds the claim (and has the
        group as the ledger has it now), or the store is not shared. A group a live process
        holds (it claimed it first, or took it over while this one was paused past its lease)
        is watched instead, until it settles."""
        if not self.shared or self.view.is_done(group.id):
            return True
        if not await self.coordinator.claim(group.id):
            self.others[group.id] = group  # a live process has it: see it settle
            return False
        await self._refresh(group.id)  # another process may have sent it since this run started
        return True

    async def claimed(self, gid: str) -> tuple[bool, GroupRecord | None]:
        """Whether this process holds group ``gid``'s claim now (on a store not shared,
        always), and the group's record as the ledger has it then, held or not (None:
        nothing of it).

        Raises:
            LedgerError: the claim or the ledger's read failed.
        """
        if not self.shared:
            return True, self.view.groups.get(gid)
        held = await self.coordinator.claim(gid)
        return held, await self._refresh(gid)

    async def looked(self, gid: str) -> GroupRecord | None:
        """Group ``gid`` as the ledger has it now (None: nothing of it), this process's view
        left as it is: its own groups in flight may be ahead of the ledger there (outcomes
        not yet committed). On a store not shared, as the view has it.

        Raises:
            LedgerError: the ledger's read failed.
        """
        if not self.shared:
            return self.view.groups.get(gid)
        fresh = LedgerView(statuses=False)
        for ev in (await self.store.events_of([gid]))[gid]:
            fresh.apply(ev)
        return fresh.groups.get(gid)

    async def remakes(self, group: Group) -> bool:
        """Whether this process makes ``group`` in place of ``group.origin`` (without its
        suppressed members): always on a store that is not shared; else once it holds the
        origin's claim and the ledger has nothing of the origin but this same remaking (its
        maker died before sending it). While a live process holds the origin, ``group`` is
        what that process sends (the same plan, the same id): it is watched, once this
        process has settled its own (:meth:`settle_later`), and only through its origin's
        claim, which its maker holds."""
        if not self.shared:
            return True
        if not await self.coordinator.claim(group.origin):
            self.watch_later(group, group.origin)  # a live process decides it
            return False
        rec = await self._refresh(group.origin)
        return rec is None or (
            rec.outcome is None and not rec.open and rec.refused == group.suppressed
        )

    async def settle_others(
        self, dispatch: Callable[[Group], Awaitable[bool]], stopped: Callable[[], bool]
    ) -> None:
        """Wait until the groups others claimed are settled; take over those whose process
        died and ``dispatch`` them. So every process ends when the job does, with the same view
        of it, and a process that dies loses none of its groups.

        A group its live holder left undecided (in doubt, or pending a retry) is set aside for
        :meth:`settle_later`: its holder decides it only once its own input is done, and it
        may be waiting here for a group of this process's in turn."""
        while self.others and not stopped():
            watched = list(self.others.items())
            looked = await self._look([gid for gid, _ in watched])
            won = await self.coordinator.claim_many(
                [gid for gid, _ in watched if not handed_on(looked[gid])]
            )
            for gid, group in watched:
                rec = looked[gid]
                if handed_on(rec):
                    del self.others[gid]  # settled by its owner
                    self._follow(group)
                elif gid in won:
                    del self.others[gid]
                    log.info("group.taken_over", group=gid)
                    if not await dispatch(group):
                        return
                elif rec is not None and not rec.open and rec.state in UNDECIDED:
                    del self.others[gid]
                    self.watch_later(group)
            if self.others:
                await self.clock.sleep(self._poll_s)

    async def settle_later(
        self,
        take_over: Callable[[Group], Awaitable[None]],
        stopped: Callable[[], bool],
        within: float,
    ) -> None:
        """Once this process has settled its own groups, wait for those :meth:`settle_others`
        set aside (and any :meth:`take` found held since) until their holder decides them
        (sent, or failed for good), or ``take_over`` the ones whose holder died. A holder
        alive but still undecided ``within`` seconds (its records may lag for longer; it may
        be waiting on another) is left to them: the group stays undecided here, for
        ``track``, ``report`` or the next run. Bounded, so no two processes wait on each
        other for ever."""
        give_up = self.clock.monotonic() + within
        self._adopt_others()
        while self.later and not stopped():
            watched = list(self.later.items())
            looked = await self._look([gid for gid, _ in watched])
            whole = await self._went_whole(
                [g for gid, g in watched if g.suppressed and not handed_on(looked[gid])]
            )
            through = {
                gid: self._through.get(gid, gid)
                for gid, group in watched
                if not handed_on(looked[gid]) and not (group.suppressed and group.origin in whole)
            }
            won = await self.coordinator.claim_many(list(dict.fromkeys(through.values())))
            for gid, group in watched:
                if handed_on(looked[gid]):
                    del self.later[gid]
                    self._follow(group)
                elif gid not in through:
                    del self.later[gid]  # its origin went out as it was: nothing in its place
                elif through[gid] in won:
                    del self.later[gid]
                    log.info("group.taken_over", group=gid)
                    await take_over(group)
            self._adopt_others()
            if not self.later:
                return
            if self.clock.monotonic() >= give_up:
                log.warning("groups.left_undecided", groups=len(self.later), within_s=within)
                return
            await self.clock.sleep(self._poll_s)

    def _adopt_others(self) -> None:
        """Watch after the run what :meth:`take` found held since the feed's watch ended."""
        while self.others:
            self.watch_later(self.others.pop(next(iter(self.others))))

    async def _refresh(self, gid: str) -> GroupRecord | None:
        """Group ``gid`` in this process's view as the ledger has it now."""
        return (await self._look([gid]))[gid]

    async def _look(self, gids: list[str]) -> dict[str, GroupRecord | None]:
        """Each of groups ``gids`` in this process's view as the ledger has it now, as
        :meth:`_refresh` makes it, in order; read together (:meth:`LedgerStore.events_of
        <bulk_mms.ledger.store.LedgerStore.events_of>`)."""
        if not gids:
            return {}
        found = await self.store.events_of(gids)
        return {gid: self.view.refresh_group(gid, found[gid]) for gid in gids}

    @property
    def _poll_s(self) -> float:
        """How often a watched group is read again: well within a lease."""
        return min(1.0, self.coordinator.lease_s / 4)

    async def _went_whole(self, groups: list[Group]) -> set[str]:
        """The origins of remade ``groups`` that were sent, or failed, as they were (another
        process, whose suppression list differed, decided them): then nobody sends a group
        made in their place."""
        looked = await self._look(list(dict.fromkeys(g.origin for g in groups)))
        return {
            gid for gid, origin in looked.items() if origin is not None and origin.state in DECIDED
        }

    def watch_later(self, group: Group, through: str | None = None) -> None:
        """Watch ``group`` once this process has settled its own (:meth:`settle_later`). It
        passes to this process only when the claim ``through`` can be taken: its own by
        default; the claim of whatever its maker holds while it makes it (a remade group's
        origin, the group a successor goes out in place of), so a watcher never takes a
        group from under a live maker."""
        self.later[group.id] = group
        self._through[group.id] = through or group.id

    def _follow(self, group: Group) -> None:
        """Watch what goes out in place of ``group``, settled by another process: the members
        it did not refuse by name (or moved), in a group of their own."""
        after = self.successor(group)
        if after is not None and after.id != group.id and after.id not in self.later:
            self.watch_later(after, group.id)

    async def keep_claims(self, failed: Callable[[LedgerError], None]) -> None:
        """Renew this process's claims well within the lease, until cancelled. A renewal
        that fails (any error: none ends this task unseen) is handed to ``failed``, which
        stops the run; its requests in flight then end in doubt unless their outcome is
        recorded, and no new attempt can be written once another process takes a claim."""
        while True:
            await asyncio.sleep(self.coordinator.lease_s / 3)  # real time: the server's lease
            try:
                self.coordinator.let_go(self.view.is_done)  # renew only what is still open
                await self.coordinator.heartbeat()
            except LedgerError as exc:
                failed(exc)
                return
            except Exception as exc:
                log.exception("claims.heartbeat_crashed")
                failed(LedgerError("claims", f"the heartbeat failed: {type(exc).__name__}"))
                return
