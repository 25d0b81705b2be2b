"""What goes out in a sent group's place (another sender, the members not refused) goes back
on the run's queue, is sent by a worker, and is sent before the run ends."""

from __future__ import annotations

import asyncio

import pytest
from msgspec.structs import replace

from bulk_mms.console import run_outcome
from bulk_mms.errors import AmbiguousSendError, SendError
from bulk_mms.models import Group, SendReceipt
from bulk_mms.runner import _FED, _RESEND, QUEUE_DEPTH_PER_WORKER, Runner, run_job
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers, ok_receipt
from tests.test_policy import opted_out, refused

REFUSED = "+18445550001"
HEALTHY = "+18445550002"
SENDERS = f'["{REFUSED}", "{HEALTHY}"]'


def spy_on_queue(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Record what every run puts on its queue: (rank, group id or ``end``), in order."""
    put: list[tuple[int, str]] = []
    original = Runner._put

    def spying(self: Runner, rank: int, group: Group | None) -> None:
        put.append((rank, "end" if group is None else group.id))
        original(self, rank, group)

    monkeypatch.setattr(Runner, "_put", spying)
    return put


async def test_a_group_refused_its_sender_goes_back_on_the_queue_and_a_worker_sends_it(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 40003 group is put back on the queue as a resend, a worker task sends it from the
    other sender, and the run ends clean (exit 0) with everyone sent."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4", sender=SENDERS)
    put = spy_on_queue(monkeypatch)
    tasks: list[str] = []

    def handler(g: Group, n: int) -> SendReceipt | SendError:
        task = asyncio.current_task()
        tasks.append(task.get_name() if task is not None else "")
        return refused("40003") if g.message.from_ == REFUSED else ok_receipt(g, n)

    client = FakeClient(handler)
    s = await run_job(job, replace(FAST, concurrency=2), client, clock=FakeClock())
    moved = [g.id for g in client.calls if g.message.from_ == REFUSED]
    assert moved
    for gid in moved:
        assert [g.message.from_ for g in client.calls if g.id == gid] == [REFUSED, HEALTHY]
    assert sorted(gid for rank, gid in put if rank == _RESEND) == sorted(moved)
    assert all(name.startswith("bulk-mms-worker-") for name in tasks)
    assert s.recipients is not None
    assert s.recipients.sent == 16
    assert run_outcome(s) == 0


async def test_the_run_ends_only_after_a_resend_even_when_the_input_ended_first(
    jobs: JobFactory,
) -> None:
    """With the input read to its end (and idle workers) while the one group is still out,
    the run does not end until the group the API refused its sender has gone out again."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4", sender=SENDERS)

    async def answer(g: Group, n: int) -> SendReceipt:
        if g.message.from_ == REFUSED:
            await asyncio.sleep(5)  # long after the reader has put the end of the input
            raise refused("40003")
        return ok_receipt(g, n)

    client = FakeClient(answer)
    s = await run_job(job, replace(FAST, concurrency=3), client, clock=FakeClock())
    assert [g.message.from_ for g in client.calls] == [REFUSED, HEALTHY]
    kinds = [(e["event"], e.get("groups"), e.get("from")) for e in ledger_events(job.ledger)]
    read_all = kinds.index(("planned", 1, None))
    resent = kinds.index(("attempt", None, HEALTHY))
    assert read_all < resent
    assert s.recipients is not None
    assert s.recipients.sent == 4
    assert run_outcome(s) == 0


async def test_one_worker_puts_resends_into_a_full_queue_without_waiting_and_sends_them_first(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At concurrency 1, with the reader's share of the queue full, every group refused one
    opt-out puts the rest back on the queue: the run ends (no deadlock), each resend goes out
    right after the group it replaces, and the recipients add up."""
    people = numbers(48)
    opted = set(people[1::4])  # one member of each group of 4
    jobs.people(48)
    job = jobs.job(extra="group_size = 4")
    put = spy_on_queue(monkeypatch)

    def handler(g: Group, n: int) -> SendReceipt | SendError:
        out = [p for p in g.to if p in opted]
        return opted_out(g, *out) if out else ok_receipt(g, n)

    client = FakeClient(handler)
    s = await asyncio.wait_for(
        run_job(job, replace(FAST, concurrency=1), client, clock=FakeClock()), 600
    )
    calls = [g.to for g in client.calls]
    firsts = calls[0::2]
    assert calls[1::2] == [tuple(p for p in to if p not in opted) for to in firsts]
    assert sorted(p for to in firsts for p in to) == sorted(people)
    ranks = [rank for rank, _ in put]
    assert ranks.count(_RESEND) == 12
    # when the first resend was put, the reader's groups filled its share (one was taken)
    assert ranks[: ranks.index(_RESEND)].count(_FED) >= 1 + QUEUE_DEPTH_PER_WORKER
    assert s.error is None
    assert s.recipients is not None
    assert (s.recipients.sent, s.recipients.failed) == (36, 12)


async def test_what_goes_out_in_place_of_a_group_settled_at_the_end_is_sent_too(
    jobs: JobFactory,
) -> None:
    """A group left in doubt, shown never accepted by the API's records as the run ends, is
    sent again there; refused one opt-out, the rest go out as a new group in the same run."""
    people = numbers(4)
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")

    def handler(g: Group, n: int) -> SendReceipt | SendError:
        if n == 0:
            return AmbiguousSendError("reset before the server took it", status=None)
        return opted_out(g, people[2]) if people[2] in g.to else ok_receipt(g, n)

    clock = FakeClock()
    client = FakeClient(handler, wall=clock.wall)
    no_retry = replace(FAST, retry=replace(FAST.retry, retry_ambiguous=False), records_lag_s=0)
    s = await run_job(job, no_retry, client, clock=clock)
    assert [g.to for g in client.calls] == [tuple(people), tuple(people), (*people[:2], people[3])]
    assert s.recipients is not None
    assert (s.recipients.sent, s.recipients.failed, s.recipients.in_doubt) == (3, 1, 0)
