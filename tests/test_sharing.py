"""Several processes on one ledger (:mod:`bulk_mms.sharing`), without a database: which
groups another process holds are watched, until when, and which are taken over."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Collection, Sequence

import msgspec
import pytest

from bulk_mms import runner
from bulk_mms.claims import HOLD_MARGIN_S
from bulk_mms.coordination import LocalCoordinator
from bulk_mms.errors import AmbiguousSendError, RateLimited, ServerError
from bulk_mms.ledger import LedgerView, events, load
from bulk_mms.models import Group, MessageBody, MessageRecord
from bulk_mms.sharing import Sharing
from bulk_mms.signals import Stop, StopReason
from bulk_mms.testing import groups_in, ledger_events
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, crash_mid_send

MEMBERS = ("+12025550101", "+12025550102")
GROUP = Group("g1", 1, MEMBERS, (2, 3), MessageBody(from_="+15550001", text="hello"))
ATTEMPT = events.Attempt("g1", MEMBERS, 1, "+15550001", 1, "k1", 1.0)
DOUBT = events.InDoubt("g1", MEMBERS, 1, reason="in doubt: attempted before a crash")
SENT = events.Sent("g1", MEMBERS, 1, message_id="m1")


class Ledger:
    """A shared ledger's events for one group, as its holder writes them read after read
    (the last stays)."""

    def __init__(self, *history: Sequence[events.Event]) -> None:
        self.history = list(history)
        self.reads = 0

    async def events_of(self, gids: Collection[str]) -> dict[str, list[events.Event]]:
        return {gid: self._read() for gid in gids}  # a read per group

    def _read(self) -> list[events.Event]:
        self.reads += 1
        return list(self.history[min(self.reads, len(self.history)) - 1])


class Holder(LocalCoordinator):
    """A shared coordinator whose groups a live process holds for the first ``held`` asks."""

    shared = True
    lease_s = 2.0

    def __init__(self, held: int = 1_000_000) -> None:
        self.held = held
        #: The claims asked for, in order.
        self.asked: list[str] = []

    async def claim(self, group: str) -> bool:
        self.asked.append(group)
        self.held -= 1
        return self.held < 0


def sharing_of(ledger: Ledger, holder: Holder) -> Sharing:
    """A process's sharing, watching GROUP (another process claimed it first)."""
    sharing = Sharing(ledger, holder, LedgerView(), FakeClock())  # type: ignore[arg-type]
    sharing.others[GROUP.id] = GROUP
    return sharing


async def test_a_group_its_holder_has_in_doubt_is_set_aside_then_watched_until_sent() -> None:
    """A group another live process recorded in doubt is not decided (its holder may settle it
    by the API's records and send it), nor waited for while this process's own input is
    still open (its holder may be waiting for one of ours): it is set aside, and watched once
    ours are settled until it is sent. The watcher's view then says sent."""
    ledger = Ledger([ATTEMPT], [ATTEMPT, DOUBT], [ATTEMPT, DOUBT], [ATTEMPT, DOUBT, SENT])
    sharing = sharing_of(ledger, Holder())
    taken: list[Group] = []

    async def take(group: Group) -> bool:
        taken.append(group)
        return True

    async def take_later(group: Group) -> None:
        taken.append(group)

    await sharing.settle_others(take, lambda: False)
    assert (ledger.reads, sharing.others, list(sharing.later)) == (2, {}, ["g1"])
    await sharing.settle_later(take_later, lambda: False, within=60.0)
    assert (ledger.reads, taken, sharing.later) == (4, [], {})
    assert sharing.view.state("g1") == "sent"


async def test_an_undecided_group_is_left_to_a_live_holder_after_the_wait() -> None:
    """A group its live holder never decides is watched for ``within`` seconds, then left
    undecided here: no two processes wait on each other for ever."""
    clock = FakeClock()
    sharing = Sharing(Ledger([ATTEMPT, DOUBT]), Holder(), LedgerView(), clock)  # type: ignore[arg-type]
    sharing.later[GROUP.id] = GROUP
    start = clock.monotonic()

    async def take_later(group: Group) -> None:
        raise AssertionError("a live holder's group is never taken")

    await sharing.settle_later(take_later, lambda: False, within=10.0)
    assert list(sharing.later) == ["g1"]
    assert 10.0 <= clock.monotonic() - start <= 11.0
    assert sharing.view.state("g1") == "in_doubt"


async def test_an_undecided_group_whose_holder_died_is_taken_over() -> None:
    """Once the holder's claim passes (it died undecided), the watcher takes the group over
    and stops watching it."""
    sharing = sharing_of(Ledger([ATTEMPT, DOUBT]), Holder(held=3))
    sharing.later[GROUP.id] = sharing.others.pop(GROUP.id)
    taken: list[Group] = []

    async def take_later(group: Group) -> None:
        taken.append(group)

    await sharing.settle_later(take_later, lambda: False, within=60.0)
    assert (taken, sharing.later) == ([GROUP], {})


async def test_a_remade_group_is_watched_made_or_taken_over_by_its_origin() -> None:
    """A group made without a suppressed member goes to whoever holds its origin: while a
    live process does, it is watched (after this process's own), through the origin's claim
    and never its own (its maker may not have claimed it yet); once the origin's claim
    passes, it is taken over. A process makes it when the ledger has nothing of the origin,
    or the same remaking (its maker died before sending it), never when the origin went
    otherwise."""
    remade = msgspec.structs.replace(GROUP, id="g2", origin="g1", suppressed=("+12025550103",))
    same = events.Remade("g1", without=("+12025550103",))
    other = events.Remade("g1", without=("+12025550104",))
    holder = Holder()
    watching = Sharing(Ledger([]), holder, LedgerView(), FakeClock())  # type: ignore[arg-type]
    assert not await watching.remakes(remade)
    assert (watching.others, watching.later) == ({}, {"g2": remade})
    taken: list[Group] = []

    async def take_later(group: Group) -> None:
        taken.append(group)

    holder.held = 1  # the origin's maker lives on for one more look, then dies
    await watching.settle_later(take_later, lambda: False, within=60.0)
    assert (holder.asked, taken) == (["g1", "g1", "g1"], [remade])  # never its own claim, g2
    for history, makes in (([], True), ([same], True), ([other], False), ([ATTEMPT], False)):
        free = Sharing(Ledger(history), Holder(held=0), LedgerView(), FakeClock())  # type: ignore[arg-type]
        assert await free.remakes(remade) is makes, history
        assert (free.others, free.later) == ({}, {})


async def test_what_goes_out_in_a_settled_groups_place_is_watched_in_turn() -> None:
    """A group another process settled with members refused by name is followed to the group
    of the others: watched, once this process's own are settled, until it too settles."""
    rest = msgspec.structs.replace(GROUP, id="g2", to=MEMBERS[:1], lines=(2,))
    failed = events.Failed("g1", MEMBERS, 1, code="40300", refused=MEMBERS[1:])
    sent = events.Sent("g2", MEMBERS[:1], 1, message_id="m2")
    ledger = Ledger([ATTEMPT, failed], [sent])
    asked: list[str] = []

    def successor(group: Group) -> Group | None:
        asked.append(group.id)
        return rest if group.id == "g1" else None

    view = LedgerView()
    sharing = Sharing(ledger, Holder(), view, FakeClock(), successor)  # type: ignore[arg-type]
    sharing.others[GROUP.id] = GROUP

    async def take(group: Group) -> bool:
        raise AssertionError("a live holder's group is never taken")

    async def take_later(group: Group) -> None:
        raise AssertionError("a live holder's group is never taken")

    await sharing.settle_others(take, lambda: False)
    assert (asked, sharing.others, list(sharing.later)) == (["g1"], {}, ["g2"])
    await sharing.settle_later(take_later, lambda: False, within=60.0)
    assert (asked, sharing.later) == (["g1", "g2"], {})
    assert (view.state("g1"), view.state("g2")) == ("failed", "sent")


async def test_a_group_taken_over_while_this_process_waited_is_watched_not_settled() -> None:
    """Before it settles a group of its own in doubt, a process renews the group's claim and
    reads the group again; one another process took over meanwhile (this one was paused
    past its lease) is watched instead, never settled from a stale view."""
    lost = Sharing(Ledger([ATTEMPT, DOUBT]), Holder(), LedgerView(), FakeClock())  # type: ignore[arg-type]
    assert not await lost.take(GROUP)

    async def take_later(group: Group) -> None:
        raise AssertionError("a live holder's group is never taken")

    await lost.settle_later(take_later, lambda: False, within=0.0)  # one look after the run
    assert (lost.others, list(lost.later)) == ({}, ["g1"])
    kept = Sharing(Ledger([ATTEMPT, DOUBT]), Holder(held=0), LedgerView(), FakeClock())  # type: ignore[arg-type]
    assert await kept.take(GROUP)
    assert (kept.later, kept.view.state("g1")) == ({}, "in_doubt")


async def test_a_group_its_holder_remade_is_handed_on_to_the_new_group() -> None:
    """A watched group whose holder left members out of it (suppressed since this process
    planned it) is never waited on: its holder will not settle it. The group made in its
    place is watched instead, through the claim on the first (its maker's); and anything
    still watched when the feed's watch ended is watched after the run."""
    remade = events.Remade("g1", without=MEMBERS[1:])
    rest = msgspec.structs.replace(GROUP, id="g2", to=MEMBERS[:1], lines=(2,))
    holder = Holder()
    ledger = Ledger([remade])
    sharing = Sharing(
        ledger,  # type: ignore[arg-type]
        holder,
        LedgerView(),
        FakeClock(),
        lambda group: rest if group.id == "g1" else None,
    )
    sharing.others[GROUP.id] = GROUP

    async def take(group: Group) -> bool:
        raise AssertionError("a live holder's group is never taken")

    await sharing.settle_others(take, lambda: False)
    assert (sharing.others, list(sharing.later)) == ({}, ["g2"])
    late = msgspec.structs.replace(GROUP, id="g3")
    sharing.others["g3"] = late  # a take that failed after the feed's watch
    taken: list[str] = []

    async def take_later(group: Group) -> None:
        taken.append(group.id)

    holder.held = 0  # everyone's holder is gone now
    await sharing.settle_later(take_later, lambda: False, within=60.0)
    assert sorted(taken) == ["g2", "g3"]
    assert "g1" in holder.asked  # g2 passed through its maker's claim on g1


class Lapsing(LocalCoordinator):
    """A coordinator whose claims have all run out (this process was paused past its lease)
    until it claims each again; ``taken``: another process took them meanwhile."""

    lease_s = 30.0

    def __init__(self, taken: bool, fresh: float = 30.0) -> None:
        self.taken = taken
        #: What a claim holds for once taken again (less than the margin: the database took
        #: nearly the whole lease to answer).
        self.fresh = fresh
        self.claimed: set[str] = set()

    def held_for(self, group: str) -> float | None:
        return self.fresh if group in self.claimed else 0.0

    async def claim(self, group: str) -> bool:
        if self.taken:
            return False
        self.claimed.add(group)
        return True


@pytest.mark.parametrize("taken", [False, True])
async def test_a_claim_that_may_have_run_out_is_claimed_again_before_a_request_leaves(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, taken: bool
) -> None:
    """After its attempt is on record, a process whose claim may have run out claims the
    group again before the request leaves: still its own, the request goes, with the fresh
    lease (less the margin) as its bound; taken by another meanwhile, no request leaves here."""
    coordinator = Lapsing(taken)
    monkeypatch.setattr(runner, "coordinator_for", lambda store, lease_s: coordinator)
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient()
    s = await runner.run_job(job, FAST, client, clock=FakeClock())
    if taken:
        assert (client.calls, s.sent_groups) == ([], 0)
        assert groups_in(job.ledger, "sent") == set()
    else:
        assert s.sent_groups == 2
        assert coordinator.claimed == {g.id for g in client.calls}
        assert client.leave_within == [30.0 - HOLD_MARGIN_S] * 2


async def test_a_claim_taken_again_with_no_time_left_sends_nothing(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim taken again that holds for less than the margin leaves the request no time to
    leave in: it never does, and the group is pending a rerun."""
    coordinator = Lapsing(taken=False, fresh=HOLD_MARGIN_S / 2)
    monkeypatch.setattr(runner, "coordinator_for", lambda store, lease_s: coordinator)
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient()
    s = await runner.run_job(job, FAST, client, clock=FakeClock())
    assert (client.calls, s.sent_groups) == ([], 0)
    assert len(groups_in(job.ledger, "retry_pending")) == 1


class StoppedOnWaking(Lapsing):
    """:class:`Lapsing`, and the job is stopped (a SIGTERM) as the process wakes, before it
    claims the groups again."""

    def __init__(self, stop: Stop) -> None:
        super().__init__(taken=False)
        self.stop = stop

    def held_for(self, group: str) -> float | None:
        if group not in self.claimed:
            self.stop.request(StopReason.SIGTERM)
        return super().held_for(group)


async def test_a_stop_before_a_claim_that_may_have_run_out_is_taken_again_records_no_outcome(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process woken past its lease and stopped before it could claim the group again
    writes no outcome for the attempt it has on record (the group may be another's, its own
    attempt open): the group reads in doubt, never pending a rerun, and nothing is sent."""
    stop = Stop()
    coordinator = StoppedOnWaking(stop)
    monkeypatch.setattr(runner, "coordinator_for", lambda store, lease_s: coordinator)
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient()
    await runner.run_job(job, FAST, client, clock=FakeClock(), stop=stop)
    assert client.calls == []
    assert groups_in(job.ledger, "retry_pending") == set()
    assert len(groups_in(job.ledger, "in_doubt")) == 1


class TakenInFlight(LocalCoordinator):
    """A coordinator whose claims pass to another process while the request is out (this
    process paused past its lease with it in flight): its own until then, never again."""

    lease_s = 30.0

    def __init__(self) -> None:
        self.taken = False

    def held_for(self, group: str) -> float | None:
        return 0.0 if self.taken else 30.0

    async def claim(self, group: str) -> bool:
        return not self.taken


@pytest.mark.parametrize("ending", ["retries_spent", "forced_stop", "past_deadline"])
async def test_a_failure_that_comes_after_the_claim_passed_on_is_not_recorded(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """A try that fails once another process has taken the group over writes no failure,
    whether its retries are spent (a 503), a forced stop (a second signal) cancels it in
    its backoff, or it is read past the job's deadline (no expired_unsent, which is final):
    that would close the taker's own attempt, open while its request is out, and leave the
    group pending a rerun or failed; it reads in doubt instead."""
    coordinator = TakenInFlight()
    monkeypatch.setattr(runner, "coordinator_for", lambda store, lease_s: coordinator)
    jobs.people(4)
    job = jobs.job(extra='group_size = 4\ndeadline = "2026-11-24T12:00:05+00:00"')
    clock = FakeClock(wall=dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC).timestamp())
    stop = Stop()

    def busy(group: Group, n: int) -> ServerError:
        coordinator.taken = True
        if ending == "forced_stop":
            asyncio.get_running_loop().call_soon(stop.force, StopReason.SIGINT)
        if ending == "past_deadline":
            clock.advance(10.0)  # paused past its lease and the deadline, the request out
        return ServerError("busy", status=503)

    client = FakeClient(handler=busy)
    tries = FAST.retry.attempts if ending == "forced_stop" else 1
    settings = msgspec.structs.replace(
        FAST, retry=msgspec.structs.replace(FAST.retry, attempts=tries)
    )
    await runner.run_job(job, settings, client, clock=clock, stop=stop)
    assert len(client.calls) == 1
    assert groups_in(job.ledger, "retry_pending") == groups_in(job.ledger, "failed") == set()
    assert len(groups_in(job.ledger, "in_doubt")) == 1


async def test_a_look_during_which_the_claim_passed_on_records_no_never_accepted(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group in doubt whose records, looked up as the run ends, show it never accepted once
    another process has taken it over meanwhile writes no failure (it would close the
    taker's attempt pending a rerun) and is not sent again here: it reads in doubt."""
    coordinator = TakenInFlight()
    monkeypatch.setattr(runner, "coordinator_for", lambda store, lease_s: coordinator)
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")

    def reset(group: Group, n: int) -> AmbiguousSendError:
        return AmbiguousSendError("reset before the server took it", status=None)

    class Paused(FakeClient):
        async def fetch_records(
            self, cli: str, cld: str, start: float, end: float
        ) -> list[MessageRecord]:
            coordinator.taken = True  # paused past its lease in the look
            return await super().fetch_records(cli, cld, start, end)

    clock = FakeClock()
    client = Paused(reset, wall=clock.wall)
    no_retry = msgspec.structs.replace(
        FAST, retry=msgspec.structs.replace(FAST.retry, retry_ambiguous=False), records_lag_s=0
    )
    await runner.run_job(job, no_retry, client, clock=clock)
    assert len(client.calls) == 1
    assert [e for e in ledger_events(job.ledger) if e["event"] == "failed"] == []
    assert len(groups_in(job.ledger, "in_doubt")) == 1


async def test_a_group_that_gives_up_before_its_first_try_once_taken_over_records_nothing(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group that gives up waiting out its sender's pause (max_group_age_s) before any
    attempt of its own, once another process has taken it over meanwhile, writes no failure
    (it would close the taker's attempt pending a rerun), nor does the group whose 429 began
    the pause."""
    coordinator = TakenInFlight()
    monkeypatch.setattr(runner, "coordinator_for", lambda store, lease_s: coordinator)
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")

    def slow_down(group: Group, n: int) -> RateLimited:
        coordinator.taken = True  # paused past its lease while the next group waits
        return RateLimited("slow down", retry_after=600.0)

    settings = msgspec.structs.replace(
        FAST,
        concurrency=1,
        max_group_age_s=60.0,
        retry=msgspec.structs.replace(FAST.retry, max_retry_after=900),
    )
    client = FakeClient(slow_down)
    await runner.run_job(job, settings, client, clock=FakeClock())
    assert len(client.calls) == 1
    assert [e for e in ledger_events(job.ledger) if e["event"] == "failed"] == []


async def test_a_group_whose_records_complete_during_a_look_is_looked_at_again(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look at the records of a group held in doubt that begins a moment before they are
    complete cannot show it never accepted, even if it ends after (each lookup takes 3 s
    here; in a shared job, the group before it was lost to another process at once, so its
    look came at that moment): the group is looked at again once they are complete, found
    never accepted and sent, not left in doubt (exit 1) by a look that could not decide it."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    (held,) = (await crash_mid_send(job, monkeypatch)).calls
    untrusted = msgspec.structs.replace(FAST.retry, retry_ambiguous=False)  # no key replayed
    settings = msgspec.structs.replace(FAST, records_lag_s=0.0, retry=untrusted)
    tried = load(job.ledger).groups[held.id].last_try
    # held 3 s in (after the first look), complete 2 s later: during the second look
    clock = FakeClock(wall=tried + settings.request_timeout - 2)
    client = FakeClient(wall=clock.wall)
    served = client.fetch_records

    async def slow(cli: str, cld: str, start: float, end: float) -> list[MessageRecord]:
        await clock.sleep(3.0)
        return await served(cli, cld, start, end)

    client.fetch_records = slow  # type: ignore[method-assign]
    s = await runner.run_job(job, settings, client, clock=clock)
    assert [g.id for g in client.calls] == [held.id]
    assert (s.sent_groups, s.held_groups, s.open_in_doubt) == (1, 0, 0)


class Groups:
    """A shared ledger's events by group, as they are now; every look it was asked for."""

    def __init__(self, history: dict[str, list[events.Event]]) -> None:
        self.history = history
        #: The groups of each look, in order.
        self.looks: list[list[str]] = []

    async def events_of(self, gids: Collection[str]) -> dict[str, list[events.Event]]:
        self.looks.append(list(gids))
        return {gid: list(self.history.get(gid, ())) for gid in gids}


class Died(LocalCoordinator):
    """A shared coordinator whose ``free`` groups' holder died (claimed by whoever asks);
    every ask it was made, in order."""

    shared = True
    lease_s = 2.0

    def __init__(self, free: set[str]) -> None:
        self.free = free
        self.asks: list[list[str]] = []

    async def claim_many(self, groups: Collection[str]) -> set[str]:
        self.asks.append(list(groups))
        return self.free & set(groups)


def _of(gid: str, *, origin: str = "", suppressed: tuple[str, ...] = ()) -> Group:
    return msgspec.structs.replace(GROUP, id=gid, origin=origin, suppressed=suppressed)


def _tried(gid: str) -> events.Attempt:
    return msgspec.structs.replace(ATTEMPT, group=gid)


async def test_watched_groups_are_read_in_one_look_and_claimed_in_one_ask_per_poll() -> None:
    """Five groups others hold cost one look and one ask a poll, and each is decided as if
    watched alone: the one sent is done with, the undecided one set aside, the open one
    watched on (one look more), and those whose holder died dispatched in the order watched,
    their claims asked for but never a settled one's."""
    ledger = Groups(
        {
            "g1": [_tried("g1"), msgspec.structs.replace(SENT, group="g1")],
            "g2": [_tried("g2")],
            "g3": [_tried("g3"), msgspec.structs.replace(DOUBT, group="g3")],
            "g4": [_tried("g4")],
        }
    )
    died = Died({"g5", "g2"})
    sharing = Sharing(ledger, died, LedgerView(), FakeClock())  # type: ignore[arg-type]
    for gid in ("g1", "g2", "g3", "g4", "g5"):
        sharing.others[gid] = _of(gid)
    dispatched: list[str] = []

    async def dispatch(group: Group) -> bool:
        dispatched.append(group.id)
        ledger.history["g4"] = [_tried("g4"), msgspec.structs.replace(SENT, group="g4")]
        return True

    await sharing.settle_others(dispatch, lambda: False)
    assert dispatched == ["g2", "g5"]
    assert ledger.looks == [["g1", "g2", "g3", "g4", "g5"], ["g4"]]
    assert died.asks == [["g2", "g3", "g4", "g5"], []]
    assert (sharing.others, list(sharing.later)) == ({}, ["g3"])
    assert (sharing.view.state("g1"), sharing.view.state("g4")) == ("sent", "sent")


async def test_groups_watched_after_the_run_are_read_then_claimed_through_their_makers() -> None:
    """After the run, the groups watched are read in one look, the origins of remade ones
    not yet handed on in a second, and the claims they pass through asked for in one: a
    remade group whose origin went out whole is dropped unclaimed, one whose origin's maker
    died is taken over through the origin's claim, asked for once for two groups."""
    ledger = Groups({"o1": [_tried("o1"), msgspec.structs.replace(SENT, group="o1")]})
    died = Died({"o2"})
    sharing = Sharing(ledger, died, LedgerView(), FakeClock())  # type: ignore[arg-type]
    sharing.watch_later(_of("r1", origin="o1", suppressed=MEMBERS[1:]), "o1")
    sharing.watch_later(_of("r2", origin="o2", suppressed=MEMBERS[1:]), "o2")
    sharing.watch_later(_of("s2"), "o2")  # what goes out in place of o2 too
    taken: list[str] = []

    async def take_later(group: Group) -> None:
        taken.append(group.id)

    await sharing.settle_later(take_later, lambda: False, within=60.0)
    assert ledger.looks == [["r1", "r2", "s2"], ["o1", "o2"]]
    assert died.asks == [["o2"]]
    assert (taken, sharing.later) == (["r2", "s2"], {})
