"""Several processes on one ledger (:mod:`bulk_mms.sharing`), without a database: which
groups another process holds are watched, and until when."""

from __future__ import annotations

from collections.abc import Sequence

from bulk_mms.coordination import LocalCoordinator
from bulk_mms.ledger import LedgerView, events
from bulk_mms.models import Group, MessageBody
from bulk_mms.sharing import Sharing
from tests.conftest import FakeClock

MEMBERS = ("+12025550101", "+12025550102")


class Ledger:
    """A shared ledger's events for one group, as its holder writes them over time."""

    def __init__(self, *history: Sequence[events.Event]) -> None:
        self.history = list(history)
        self.reads = 0

    async def group_events(self, gid: str) -> list[events.Event]:
        self.reads += 1
        return list(self.history[min(self.reads, len(self.history)) - 1])


class HeldElsewhere(LocalCoordinator):
    """A shared coordinator whose every group a live process holds."""

    shared = True
    lease_s = 2.0

    async def claim(self, group: str) -> bool:
        return False


async def test_a_group_its_holder_has_in_doubt_is_watched_until_it_is_sent() -> None:
    """A group another live process recorded in doubt is not settled: that process may still
    settle it by the API's records and send it; the watch ends only when it is sent, and the
    watcher's view then says sent."""
    attempt = events.Attempt("g1", MEMBERS, 1, "+15550001", 1, "k1", 1.0)
    doubt = events.InDoubt("g1", MEMBERS, 1, reason="in doubt: attempted before a crash")
    sent = events.Sent("g1", MEMBERS, 1, message_id="m1")
    ledger = Ledger([attempt], [attempt, doubt], [attempt, doubt], [attempt, doubt, sent])
    view = LedgerView()
    sharing = Sharing(ledger, HeldElsewhere(), view, FakeClock())  # type: ignore[arg-type]
    body = MessageBody(from_="+15550001", text="hello")
    sharing.others["g1"] = Group(id="g1", seq=1, to=MEMBERS, lines=(2, 3), message=body)
    dispatched: list[Group] = []

    async def dispatch(group: Group) -> bool:
        dispatched.append(group)
        return True

    await sharing.settle_others(dispatch, lambda: False)
    assert (ledger.reads, dispatched, sharing.others) == (4, [], {})
    assert view.state("g1") == "sent"
