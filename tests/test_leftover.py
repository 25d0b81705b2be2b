"""The room in the shared limits that no run settled (bulk_mms.leftover): the give-back before
a cap stops the job is one pass however many groups the cap refuses meanwhile."""

from __future__ import annotations

import asyncio

from bulk_mms.caps import Decide, FenceOf, unfenced
from bulk_mms.leftover import Leftover


class HeldPass:
    """A limit whose reconcile (one pass over the shared counts) is counted, and lasts until
    :attr:`ends` is set."""

    def __init__(self) -> None:
        self.passes = 0
        self.ends = asyncio.Event()

    async def reconcile(self, decide: Decide, fence_of: FenceOf = unfenced) -> None:
        self.passes += 1
        await self.ends.wait()


async def test_groups_refused_while_a_give_back_goes_share_that_pass() -> None:
    """Three groups a cap refuses while one give-back pass goes wait for that pass, not one
    each; a refusal after it has ended makes a pass of its own."""
    limit = HeldPass()
    leftover = Leftover([limit], None)  # type: ignore[list-item, arg-type]
    refused = [asyncio.create_task(leftover.give_back_ended()) for _ in range(3)]
    await asyncio.sleep(0)
    limit.ends.set()
    await asyncio.gather(*refused)
    assert limit.passes == 1
    await leftover.give_back_ended()
    assert limit.passes == 2


async def test_a_group_cancelled_while_it_waits_for_the_pass_leaves_it_to_the_others() -> None:
    """A group whose wait for the shared pass is cancelled (its worker stopped) ends the pass
    for nobody else: its maker and the other waiter see it end."""
    limit = HeldPass()
    leftover = Leftover([limit], None)  # type: ignore[list-item, arg-type]
    maker, cancelled, other = (asyncio.create_task(leftover.give_back_ended()) for _ in range(3))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    limit.ends.set()
    await asyncio.gather(maker, other)
    assert (cancelled.cancelled(), maker.done(), other.done(), limit.passes) == (
        True,
        True,
        True,
        1,
    )
