"""A group's claim as the sender keeps to it (a shared ledger): held under one fence.

Before a request leaves, and before an outcome that closes a group's attempt is written, this
process must still hold the group's claim under the fence its tries began with (or its
latest attempt was written under): a claim that may have run out (the process paused, its
renewals late) is claimed again first; one another process took over meanwhile makes the
group that one's (:attr:`Claims.lost`), never sent nor decided here. A ledger nobody shares
makes every claim hold, at no cost (:meth:`~bulk_mms.coordination.Coordinator.held_for` is
None). The runner takes claims and watches others' groups (:mod:`bulk_mms.sharing`); the
sender keeps to them, through :class:`Claims`.

Also here, :func:`before_stop`: a round trip to the shared database that a stop cuts short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bulk_mms.coordination import Fence
from bulk_mms.errors import AmbiguousSendError, ClaimLost, LedgerError, SendError
from bulk_mms.models import Group
from bulk_mms.recorder import Recorder
from bulk_mms.retry import StopRetrying
from bulk_mms.signals import Stop
from bulk_mms.stopping import JobStops

T = TypeVar("T")

#: The least time a request keeps, before the claim on its group may pass to another process,
#: to leave in after its connection is ready (a quarter of the lease, when that is less).
HOLD_MARGIN_S = 1.0


def _quiet(task: asyncio.Future[Any]) -> None:
    """Take an abandoned write's outcome, so that its failure is not reported unhandled."""
    if not task.cancelled():
        task.exception()


async def before_stop(stop: Stop, work: Awaitable[T]) -> T:
    """What ``work`` (a database call) comes to, unless ``stop`` (the job's) is set first:
    then :class:`StopRetrying`, and ``work`` is never started, or, begun, goes on unwatched (a
    locked table must not hold a SIGTERM)."""
    if stop.is_set():
        if asyncio.iscoroutine(work):
            work.close()  # never started: nothing to write or take
        raise StopRetrying
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():  # stopped, or this wait cancelled: its outcome taken quietly
            task.add_done_callback(_quiet)
    if not task.done():
        raise StopRetrying
    return task.result()


class Claims:
    """Whether this process still holds the claims on the groups it sends, and the groups it
    lost to another process. Private to the sender (:class:`~bulk_mms.sending.GroupSender`
    owns one; the runner asks it too, as it settles groups in doubt).

    Args:
        recorder: the run's recorder: its coordinator (the claims, their fences) and store.
        stop: the job's stop: a claim taken again is given up on when the job stops first.
        stops: when what the groups meet stops the job (a ledger that fails in a check).
    """

    def __init__(self, recorder: Recorder, stop: Stop, stops: JobStops) -> None:
        self.recorder = recorder
        self.stop = stop
        self.stops = stops
        #: Groups another process took over before their request left here: theirs to decide,
        #: watched before the run ends (a shared ledger).
        self.lost: dict[str, Group] = {}

    def lose(self, group: Group) -> None:
        """``group`` is another process's now (it took the claim over): watched, not decided
        here (:attr:`lost`)."""
        self.lost[group.id] = group

    def surely_held(self, group: Group) -> bool:
        """Whether no other process can have taken ``group`` over: nothing is shared, or this
        process's claim on it surely still holds (:meth:`~bulk_mms.coordination.Coordinator.
        held_for`). Else the group may be another's, its request in flight: nothing of it is
        decided here (no outcome written, no room given back)."""
        held = self.recorder.coordinator.held_for(group.id)
        return held is None or held > 0

    async def still_held(self, gid: str, fence: Fence | None, error: SendError | None) -> bool:
        """Whether group ``gid``'s failure (``error``; None: a gate stopped it) may be recorded
        here: this process still holds its claim under ``fence``, the one its tries began
        with, or its latest attempt was written under (:meth:`holds`, which claims it again
        if it may have run out), or the failure leaves the group in doubt. A failure closes
        whatever attempt is open on the group: one written once another process took the
        group over, and sent it again, would make its open attempt read pending a rerun (so
        too for a group with no attempt of its own here, given up before its first try). A
        ledger that fails here stops the run (False). Asked before the failure is made (its
        opt-outs looked up, its room settled); its write is fenced too
        (:meth:`~bulk_mms.sending.GroupSender.conclude`), for a claim that passes on
        meanwhile."""
        if isinstance(error, AmbiguousSendError):
            return True
        return await self.holds(gid, fence)

    async def holds(self, gid: str, fence: Fence | None) -> bool:
        """Whether this process still holds group ``gid``'s claim under ``fence`` (the one
        it decided under: :meth:`hold`, which claims it again if it may have run out), so
        that an outcome of the group may be written here. A ledger that fails here stops
        the run (False)."""
        try:
            await self.hold(gid, fence)
        except ClaimLost:
            return False
        except StopRetrying:
            return True  # stopped while its claim surely holds
        except LedgerError as exc:
            self.stops.ledger_failed(exc)
            return False
        return True

    async def record_held(
        self, gid: str, fence: Fence | None, write: Callable[[Fence | None], Awaitable[None]]
    ) -> bool:
        """Whether ``write`` recorded an outcome of group ``gid`` that does not leave it in
        doubt (a failure: it closes whatever attempt is open on the group) while this process
        holds its claim under ``fence``: checked first (:meth:`holds`, which claims it again
        if it may have run out), then written under that fence, which a shared store keeps
        to (another process that took the group over meanwhile, this one's commit stalled
        past its lease, has it refused). False: nothing was written; the group is another's,
        or the ledger failed in the check (the run stops).

        Raises:
            LedgerError: the write could not be made durable.
        """
        if not await self.holds(gid, fence):
            return False
        try:
            await write(fence)
        except ClaimLost:
            return False
        return True

    async def hold(self, gid: str, fence: Fence | None) -> float | None:
        """Seconds the request has to leave in before this process's claim on group ``gid``
        may pass to another (a shared ledger; None: nothing is shared). A claim that may have
        run out (this process was paused, its renewals late) is claimed again first. A claim
        no longer under ``fence`` (the one the group's tries began under, or its attempt was
        written with: another process took it meanwhile) raises :class:`ClaimLost`, and the
        request never leaves here (the other settles the attempt on record by the API's
        records). So does a stop that comes before a claim already run out is taken again:
        the group may be another's, with an attempt of its own open that an outcome written
        here would close."""
        coordinator = self.recorder.coordinator
        held = coordinator.held_for(gid)
        if held is None:
            return None
        margin = min(HOLD_MARGIN_S, coordinator.lease_s / 4)
        if held <= margin:
            try:
                still = await before_stop(self.stop, coordinator.claim(gid))
            except StopRetrying:
                if held > 0:
                    raise  # still its own: recorded as never having left
                raise ClaimLost(self.recorder.store.name, gid) from None
            if not still:
                raise ClaimLost(self.recorder.store.name, gid)
            held = coordinator.held_for(gid) or 0.0
        if coordinator.fence(gid) != fence:
            raise ClaimLost(self.recorder.store.name, gid)
        return held - margin
