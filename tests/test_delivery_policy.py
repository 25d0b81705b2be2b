"""The loop closes during the run: carrier codes arrive only in delivery reports, and the run's
own delivery polling brings them to the error policy while it sends."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import msgspec
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from msgspec.structs import replace
from structlog.testing import capture_logs

from bulk_mms import runner as runner_module
from bulk_mms.codes import Action
from bulk_mms.config import JobConfig
from bulk_mms.console import exit_for, run_outcome
from bulk_mms.errors import (
    AmbiguousSendError,
    ApiError,
    EndpointError,
    LimitReached,
    NetworkError,
    SendError,
)
from bulk_mms.ledger import LedgerView, Location, Moved, events, load, open_store
from bulk_mms.ledger import checkpoint as ckpt
from bulk_mms.ledger.fold import GroupRecord
from bulk_mms.ledger.store import named
from bulk_mms.models import Group, Money, RecipientStatus, SendReceipt
from bulk_mms.policy import MAX_RESENDS, delivery_action
from bulk_mms.report import summarize, waiting
from bulk_mms.runner import run_job
from bulk_mms.testing import groups_in
from bulk_mms.track import track_ledger
from bulk_mms.webhooks import WebhookReceiver, load_public_key
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, ok_receipt
from tests.test_webhooks import PUBLIC_B64, disk_full_for, own_event, post_signed

BLOCKED, HEALTHY = "+18445550001", "+18445550002"


async def one_group_sent(
    jobs: JobFactory, senders: str, database: str | None = None
) -> tuple[JobConfig, FakeClient, Group, WebhookReceiver]:
    """A job of four people in one group from ``senders`` (a TOML list), sent: the job, its
    client, the group, and a webhook receiver on its ledger (in ``database``, if given)."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4", sender=senders)
    if database is not None:
        job = replace(job, database=str(named(database, job.name)))
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    (first,) = client.calls
    receiver = receiver_on(job.where) if database else await receiver_of(job.ledger)
    return job, client, first, receiver


async def receiver_of(ledger: Path) -> WebhookReceiver:
    """A webhook receiver recording into the JSONL ledger at ``ledger``, its view taken in."""
    receiver = WebhookReceiver(
        LedgerView(),
        open_store(ledger, "append"),
        load_public_key(PUBLIC_B64),
        clock=FakeClock(),
        settings=FAST,
        reopen=lambda: open_store(ledger, "append"),
    )
    await receiver.take_in_new()
    return receiver


def receiver_on(where: Location) -> WebhookReceiver:
    """A webhook receiver recording into the ledger at ``where`` (a file or a database's),
    with the view a fold of it gives."""
    store = open_store(where, "append")
    return WebhookReceiver(
        store.fold(), store, load_public_key(PUBLIC_B64), clock=FakeClock(), settings=FAST
    )


async def test_a_sender_blocked_as_spam_in_delivery_reports_leaves_the_pool(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API accepts every send, but the first sender's messages fail delivery with 40003:
    the run's delivery polling retires that sender within a poll, the rest of the job goes out
    from the other, and a rerun sends the members it failed from the other: everyone accepted
    once from the healthy sender."""
    monkeypatch.setattr(runner_module, "DELIVERY_FIRST_S", 0.02)
    monkeypatch.setattr(runner_module, "BLOCKED_POLL_S", 0.02)
    jobs.people(40)
    job = jobs.job(extra="group_size = 1", sender=f'["{BLOCKED}", "{HEALTHY}"]')
    client = FakeClient()

    def answer(g: Group, n: int) -> SendReceipt:
        receipt = ok_receipt(g, n)
        if g.message.from_ == BLOCKED:
            spam = ApiError("40003", "Blocked as spam - permanent", "")
            client.delivery[receipt.message_id] = tuple(
                RecipientStatus(p, "delivery_failed", errors=(spam,)) for p in g.to
            )
        return receipt

    client.handler = answer
    settings = replace(FAST, rate=40.0, concurrency=2)  # about a second of sending, real time
    s = await run_job(job, settings, client)
    senders = [g.message.from_ for g in client.calls]
    assert senders.count(BLOCKED) < 20  # retired part way, not after the whole list
    assert senders[-5:] == [HEALTHY] * 5
    assert s.sent_groups == 40
    # the members the blocked sender failed were moved: a plain rerun sends them from the
    # other sender, under keys of their own, and nobody else
    blocked = {p for g in client.calls if g.message.from_ == BLOCKED for p in g.to}
    again = await run_job(job, settings, client)
    resent = client.calls[len(senders) :]
    assert sorted(p for g in resent for p in g.to) == sorted(blocked)
    assert {g.message.from_ for g in resent} == {HEALTHY}
    assert again.sent_groups == len(blocked)
    healthy = [p for g in client.calls if g.message.from_ == HEALTHY for p in g.to]
    assert sorted(healthy) == sorted(set(healthy))
    assert len(healthy) == 40
    r = summarize(job.ledger).recipient_states
    assert (r.valid, r.sent, r.not_attempted) == (40, 40, 0)


async def test_a_carriers_daily_cap_in_delivery_reports_defers_only_its_members(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member failed by T-Mobile's daily cap (40016, in its delivery report) goes again
    after the cap resets, in a group of its own; a rerun before the reset sends nobody, one
    after it sends that member alone."""
    monkeypatch.setattr(runner_module, "DELIVERY_FIRST_S", 0.02)
    monkeypatch.setattr(runner_module, "DELIVERY_SHARE", 1.0)  # a GET a group, here
    jobs.people(12)
    job = jobs.job(extra="group_size = 1")
    client = FakeClient()
    capped = "+12125550005"

    def answer(g: Group, n: int) -> SendReceipt:
        receipt = ok_receipt(g, n)
        cap = ApiError("40016", "T-Mobile daily message limit reached", "")
        client.delivery[receipt.message_id] = tuple(
            RecipientStatus(p, "delivery_failed", errors=(cap,))
            if p == capped
            else RecipientStatus(p, "delivered")
            for p in g.to
        )
        return receipt

    client.handler = answer
    settings = replace(FAST, rate=6.0, concurrency=1)  # two seconds of sending, real time
    await run_job(job, settings, client)
    sent = len(client.calls)
    before = await run_job(job, settings, client)
    assert (len(client.calls), before.sent_groups) == (sent, 0)
    after_reset = FakeClock(wall=time.time() + 2 * 86_400)
    await run_job(job, settings, client, clock=after_reset)
    assert [g.to for g in client.calls[sent:]] == [(capped,)]


async def test_a_burst_of_spam_codes_in_delivery_reports_stops_the_job(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API accepts every send, but from the eleventh on carriers filter them as spam
    (40002, in their delivery reports only): once half of the last 20 final reports say so the
    job stops with exit 5, part way, and nobody is failed: what it did not send, and the
    members filtered, are a rerun's."""
    monkeypatch.setattr(runner_module, "DELIVERY_FIRST_S", 0.02)
    monkeypatch.setattr(runner_module, "DELIVERY_SHARE", 1.0)  # a GET a group, here
    jobs.people(80)
    job = jobs.job(extra="group_size = 1")
    client = FakeClient()
    spam = ApiError("40002", "Message blocked as spam - temporary", "")

    def answer(g: Group, n: int) -> SendReceipt:
        receipt = ok_receipt(g, n)
        client.delivery[receipt.message_id] = tuple(
            RecipientStatus(p, "delivery_failed", errors=(spam,)) if g.seq >= 10 else
            RecipientStatus(p, "delivered")
            for p in g.to
        )  # fmt: skip
        return receipt

    client.handler = answer
    s = await run_job(job, replace(FAST, rate=20.0, concurrency=1), client)
    assert isinstance(s.error, LimitReached)
    assert "of the last 20 delivery reports" in str(s.error)
    assert exit_for(s.error) == 5
    assert 20 <= len(client.calls) < 80
    assert groups_in(job.ledger, "failed") == set()
    r = summarize(job.ledger).recipient_states  # the filtered ones are moved: a rerun's
    assert (r.failed, r.sent + r.not_attempted) == (0, 80)


async def test_track_moves_what_a_blocked_sender_failed_for_the_next_run(
    jobs: JobFactory,
) -> None:
    """A 40003 that arrives only after the run (track reads it) moves that member all the
    same: the next run sends it from the other sender, and nobody else."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4", sender=f'["{BLOCKED}", "{HEALTHY}"]')
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    (first,) = client.calls
    spam = ApiError("40003", "Blocked as spam - permanent", "")
    client.delivery[f"msg-{first.id}-0"] = tuple(
        RecipientStatus(p, "delivery_failed", errors=(spam,)) if p == first.to[1] else
        RecipientStatus(p, "delivered")
        for p in first.to
    )  # fmt: skip
    await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    await run_job(job, FAST, client, clock=FakeClock())
    resent = client.calls[1:]
    assert [(g.to, g.message.from_) for g in resent] == [((first.to[1],), HEALTHY)]


@pytest.mark.parametrize("disk_full", [False, True])
async def test_a_webhook_moves_what_a_blocked_sender_failed_as_track_does(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, disk_full: bool
) -> None:
    """A 40003 that arrives by webhook (no track, no run polling) moves that member as
    `track` would: the next run sends it from the other sender, and nobody else. A disk that
    refuses the write gets 503 with neither the report nor its move on record, so Telnyx's
    redelivery is news and records both (a report on record without its move, its event id
    seen, would leave the member out)."""
    job, client, first, receiver = await one_group_sent(jobs, f'["{BLOCKED}", "{HEALTHY}"]')
    disk_full_for(monkeypatch, b'"moved"', int(disk_full))
    failed = own_event(
        "message.finalized", first.to[1], "own-1", "delivery_failed", BLOCKED, code="40003"
    )
    async with TestClient(TestServer(receiver.app())) as http:
        if disk_full:
            assert (await post_signed(http, failed))[0] == 503
        assert await post_signed(http, failed) == (200, {"ok": True, "recorded": 1, "pending": 0})
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    await run_job(job, FAST, client, clock=FakeClock())
    resent = client.calls[1:]
    assert [(g.to, g.message.from_) for g in resent] == [((first.to[1],), HEALTHY)]


@pytest.mark.parametrize("cost", [None, "0.0100"], ids=["no-cost", "with-cost"])
async def test_a_failure_reported_after_delivered_sends_nobody_again(
    jobs: JobFactory, cost: str | None
) -> None:
    """A member reported delivered and then, stamped later, failed with a code that moves
    members (40014) is neither moved nor sent again: it stays delivered, even when the
    failure's report brings the message's first final cost (a cost is no news of delivery)."""
    job, client, first, receiver = await one_group_sent(jobs, f'["{HEALTHY}"]')
    phone = first.to[1]
    delivered = own_event("message.finalized", phone, "own-1", "delivered", HEALTHY)
    failed = own_event(
        "message.finalized", phone, "own-1", "delivery_failed", HEALTHY, later=60, code="40014"
    )
    if cost is not None:
        failed["data"]["payload"]["cost"] = {"amount": cost, "currency": "USD"}
    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, delivered))[1]["recorded"] == 1
        assert (await post_signed(http, failed))[1]["recorded"] == (cost is not None)
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    view = load(job.ledger)
    assert view.status_of(phone) == "delivered"
    assert not any(rec.moved for rec in view.groups.values())
    again = await run_job(job, FAST, client, clock=FakeClock())
    assert (len(client.calls), again.sent_groups) == (1, 0)


async def test_a_webhooks_move_the_database_keeps_back_leaves_the_receivers_view(
    jobs: JobFactory, database: str
) -> None:
    """On a database ledger, a member another process moved policy.MAX_RESENDS times since
    the receiver last read the ledger: the receiver's 40003 move of it is kept back by the
    ledger, and the receiver's view drops it as a fold of the ledger has it (as a run's and
    track's do), so it does not count the member as going again."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4", sender=f'["{BLOCKED}", "{HEALTHY}"]')
    job = replace(job, database=str(named(database, job.name)))
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    (first,) = client.calls
    spent = first.to[1]
    receiver = receiver_on(job.where)
    store = receiver.store
    other = open_store(job.where, "append")
    for i in range(MAX_RESENDS):  # another process's moves, which the receiver has not read
        await other.append(Moved(f"elsewhere-{i}", (spent,), "", "40016", "t", 0.0))
    await other.close()
    failed = own_event(
        "message.finalized", spent, f"msg-{first.id}-0", "delivery_failed", BLOCKED, code="40003"
    )
    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, failed))[1]["recorded"] == 1
    await receiver.close()
    await store.drain()
    assert receiver.view.groups[first.id].moved == ()
    assert receiver.view.moves(spent) == 0
    assert store.fold().groups[first.id].moved == ()
    await store.close()


async def test_a_member_sent_again_after_a_move_is_tracked_as_its_new_send(
    jobs: JobFactory,
) -> None:
    """A member a 40003 moved out of a sent group and a later run sent again starts over: the
    new message is tracked, its report counts once (the delivery counts add up to the sent),
    it is not in the failed file, and its earlier send's cost is not counted twice."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4", sender=f'["{BLOCKED}", "{HEALTHY}"]')
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    (first,) = client.calls
    moved = first.to[1]
    blocked = ApiError("40003", "Blocked as spam - permanent", "")
    cent = Money(Decimal("0.0100"), "USD")
    client.delivery[f"msg-{first.id}-0"] = tuple(
        RecipientStatus(
            p,
            "delivery_failed" if p == moved else "delivered",
            errors=(blocked,) if p == moved else (),
            cost=cent,
            at="2026-11-23T10:00:00Z",
            message_id=f"own-{i}",
        )
        for i, p in enumerate(first.to)
    )
    await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    await run_job(job, FAST, client, clock=FakeClock())
    (again,) = client.calls[1:]
    assert again.to == (moved,)
    view = load(job.ledger)
    assert view.pending(view.groups[again.id]) == [moved]  # asked about, not taken as final
    client.delivery[f"msg-{again.id}-1"] = (
        RecipientStatus(moved, "delivered", cost=Money(Decimal("0.0200"), "USD"),
                        at="2026-11-23T11:00:00Z", message_id="own-new"),
    )  # fmt: skip
    await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    view = load(job.ledger)
    assert dict(view.delivery()) == {"delivered": 4}
    assert view.not_received() == {}
    assert view.known[moved].message_id == "own-new"
    final, _ = view.cost_parts()["USD"]
    assert final == Decimal("0.0500")  # three at 0.01 and the new send's 0.02, none twice


async def test_a_member_a_carrier_keeps_refusing_is_sent_again_three_times_then_stands(
    jobs: JobFactory,
) -> None:
    """A member whose every send expires in the queue (40014, "send again") goes again after
    each report, but only MAX_RESENDS times: then its failure stands, a rerun sends nobody, and
    the report lists it as not received."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 2")
    expired = ApiError("40014", "Message expired in queue", "")
    client = FakeClient()
    stuck = None
    for _ in range(MAX_RESENDS + 2):
        await run_job(job, FAST, client, clock=FakeClock())
        if not client.calls or (stuck is not None and client.calls[-1].to != (stuck,)):
            break
        last = client.calls[-1]
        stuck = stuck or last.to[0]
        client.delivery[f"msg-{last.id}-{len(client.calls) - 1}"] = tuple(
            RecipientStatus(
                p,
                "delivery_failed" if p == stuck else "delivered",
                errors=(expired,) if p == stuck else (),
                at="2026-11-23T10:00:00Z",
                message_id=f"own-{p}-{len(client.calls)}",
            )
            for p in last.to
        )
        await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    assert stuck is not None
    assert [g.to for g in client.calls[1:]] == [(stuck,)] * MAX_RESENDS
    view = load(job.ledger)
    assert view.moves(stuck) == MAX_RESENDS
    assert list(view.not_received()) == [stuck]
    counts = summarize(job.ledger).recipient_states
    assert (counts.sent, counts.retry_pending, counts.not_attempted) == (2, 0, 0)


def test_a_group_read_again_counts_its_moves_once() -> None:
    """A shared run reads a group again each time it looks at it (refresh_group): a number
    moved out of it once still counts one move, not one per look."""
    phone = "+12125550100"
    moved = Moved("g1", (phone,), "", "40016", "t", 0.0)
    view = LedgerView.fold([moved])
    assert view.moves(phone) == 1
    for _ in range(MAX_RESENDS):
        view.refresh_group("g1", [moved])
    assert view.moves(phone) == 1
    view.refresh_group("g1", [])
    assert view.moves(phone) == 0


A, B = "+12125550100", "+12125550101"


@pytest.mark.parametrize("statuses", [True, False], ids=["report", "resume"])
def test_a_group_read_again_counts_its_events_once(statuses: bool) -> None:
    """A shared run reads a group again (refresh_group) each time it looks at it: the view's
    tallies (attempts, 429s, sends, waits, error codes, delivery counts, times) and its
    members' statuses stay what a fold of the ledger has, however often it is read."""
    g1: list[events.Event] = [
        events.Attempt("g1", (A, B), from_=HEALTHY, time="2026-12-07T10:00:00Z"),
        events.Failed(
            "g1", (A, B), rate_limited=2, status=503, code="503", retryable=True,
            time="2026-12-07T10:00:01Z",
        ),
        events.Attempt("g1", (A, B), from_=HEALTHY, time="2026-12-07T10:00:02Z"),
        events.Sent(
            "g1", (A, B), message_id="m1", from_=HEALTHY, wait_seconds=3.0,
            time="2026-12-07T10:00:03Z",
        ),
    ]  # fmt: skip
    later: list[events.Event] = [
        events.Attempt("g2", ("+12125550102",), from_=HEALTHY, time="2026-12-07T10:05:00Z"),
        events.Sent("g2", ("+12125550102",), message_id="m2", time="2026-12-07T10:05:01Z"),
        events.Status("g1", A, "delivered", "own-a", at="2026-12-07T10:01:00Z"),
    ]
    fold = LedgerView.fold([*g1, *later], statuses=statuses)
    view = LedgerView.fold([*g1, *later], statuses=statuses)
    for _ in range(3):
        view.refresh_group("g1", g1)  # a database's look: its events but the statuses
    assert view == fold
    assert (view.attempts, view.sent_events, view.rate_limited) == (3, 2, 2)


def _moved_then(*later: events.Event, statuses: bool = True) -> LedgerView:
    """A ledger of one group of two sent, ``A`` moved out of it (40016), then ``later``."""
    return LedgerView.fold(
        [
            events.Attempt("g1", (A, B), from_=HEALTHY),
            events.Sent("g1", (A, B), message_id="m1", from_=HEALTHY),
            Moved("g1", (A,), "", "40016", "t", 0.0),
            *later,
        ],
        statuses=statuses,
    )


@pytest.mark.parametrize("statuses", [True, False], ids=["report", "resume"])
def test_a_moved_member_the_message_reached_after_all_is_its_groups_again(
    statuses: bool,
) -> None:
    """Moved, then reached (with or without statuses): the member leaves the group's moved
    members and the move count, counts sent by that group, and nobody waits to go again."""
    view = _moved_then(events.Reached("g1", (A,), "t"), statuses=statuses)
    assert view.groups["g1"].moved == ()
    assert view.moves(A) == 0
    r = view.recipients()
    assert (r.valid, r.sent, r.failed, r.later) == (2, 2, 0, 0)
    assert waiting(view) == {}
    assert view.texted_twice() == {}


@pytest.mark.parametrize("reached_first", [False, True], ids=["report-last", "report-first"])
def test_a_member_reached_after_it_was_sent_again_counts_once_and_was_texted_twice(
    reached_first: bool,
) -> None:
    """Moved, sent again in a group of its own, and reached by the first send (its report
    recorded after the new send, or before it by a process the new send did not hear of):
    counted sent once, in its new group, and reported texted twice; a checkpoint in between
    folds the same."""
    again: list[events.Event] = [
        events.Attempt("g2", (A,), from_=HEALTHY),
        events.Sent("g2", (A,), message_id="m2"),
    ]
    reached = events.Reached("g1", (A,), "t")
    later = [reached, *again] if reached_first else [*again, reached]
    view = _moved_then(*later)
    r = view.recipients()
    assert (r.valid, r.sent, r.later) == (2, 2, 0)
    assert view.groups["g1"].moved == (A,)
    assert view.texted_twice() == {A: ("g1", "g2")}
    assert view.moves(A) == 0  # the message reached it: no move MAX_RESENDS counts
    saved = _moved_then(*later[:1])
    loaded = ckpt.from_state(orjson.loads(orjson.dumps(ckpt.to_state(saved))))
    for ev in later[1:]:
        loaded.apply(ev)
    assert loaded == view
    assert loaded.texted_twice() == view.texted_twice()


def test_a_member_the_message_reached_is_never_sent_again_for_a_blocked_sender() -> None:
    """A delivery report that carries a blocked sender's code (40003) for a member whose
    status says the message reached them retires the sender but moves nobody: only members
    it did not reach go again from another sender."""
    rec = GroupRecord("g1", ("+12125550100", "+12125550101"), sender=BLOCKED)
    blocked = (ApiError("40003", "Blocked as spam - permanent", ""),)
    reached = RecipientStatus("+12125550100", "delivered", errors=blocked)
    action, moved = delivery_action(rec, reached, FAST, time.time(), lambda phone: 0)
    assert (action, moved) == (Action.RETIRE_SENDER, None)
    missed = RecipientStatus("+12125550101", "delivery_failed", errors=blocked)
    action, moved = delivery_action(rec, missed, FAST, time.time(), lambda phone: 0)
    assert moved is not None
    assert moved.members == ("+12125550101",)


async def test_a_moved_member_in_doubt_is_not_settled_by_the_send_it_was_moved_out_of(
    jobs: JobFactory,
) -> None:
    """A member whose first send expired in the queue (40014) goes again from the same sender
    a run later; that try's answer is lost and the API never took it: the record of the
    first send is not its acceptance, so the run exits 1 with the member in doubt, not 0."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 2")
    expired = (ApiError("40014", "Message expired in queue", ""),)

    def answer(group: Group, n: int) -> SendReceipt | AmbiguousSendError:
        if n:
            return AmbiguousSendError("read timeout")  # never reached the API: no record
        first = ok_receipt(group, n)
        stuck = RecipientStatus(group.to[0], "sending_failed", errors=expired)
        return msgspec.structs.replace(first, statuses=(stuck, *first.statuses[1:]))

    client = FakeClient(answer)
    assert run_outcome(await run_job(job, FAST, client, clock=FakeClock())) == 1
    s = await run_job(job, FAST, client, clock=FakeClock())
    assert run_outcome(s) == 1
    again = client.calls[-1]
    assert again.to == client.calls[0].to[:1]
    assert load(job.ledger).state(again.id) == "in_doubt"
    assert s.recipients is not None
    assert (s.recipients.sent, s.recipients.in_doubt) == (1, 1)


@pytest.mark.parametrize(
    "answer",
    [EndpointError("a redirect", status=302), NetworkError("cannot connect: refused")],
    ids=["redirect", "unreachable"],
)
async def test_delivery_gets_that_end_tracking_leave_the_run_sending(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, answer: SendError
) -> None:
    """The API takes every send, but its delivery GETs answer with a redirect, or cannot be
    reached time after time: the run's delivery watch ends, logged, and the run still sends
    everyone and exits 0 (it is not stopped part way with no error said)."""
    monkeypatch.setattr(runner_module, "DELIVERY_FIRST_S", 0.02)
    monkeypatch.setattr(runner_module, "DELIVERY_SHARE", 1.0)  # a GET a group, here
    jobs.people(30)
    job = jobs.job(extra="group_size = 1")
    client = FakeClient()

    def took(g: Group, n: int) -> SendReceipt:
        receipt = ok_receipt(g, n)
        client.delivery[receipt.message_id] = answer
        return receipt

    client.handler = took
    settings = replace(FAST, rate=30.0, concurrency=1)  # about a second of sending, real time
    with capture_logs() as logs:
        s = await run_job(job, settings, client)
    assert client.fetches  # the watch asked, and met the answer
    assert [e["event"] for e in logs].count("delivery.watch_stopped") == 1
    assert (s.sent_groups, s.stopped, s.error) == (30, None, None)
    assert run_outcome(s) == 0


@pytest.mark.parametrize("kind", ["jsonl", "database"])
async def test_a_moved_member_reported_delivered_is_not_texted_again(
    jobs: JobFactory, request: pytest.FixtureRequest, kind: str
) -> None:
    """A member a carrier's cap (40016, by webhook) moved out of its sent group, then reported
    delivered by that same send, is not texted by the next run after the reset: it exits 0,
    everyone counted sent once, nobody later."""
    database = request.getfixturevalue("database") if kind == "database" else None
    job, client, first, receiver = await one_group_sent(jobs, f'["{HEALTHY}"]', database)
    phone = first.to[1]
    capped = own_event(
        "message.finalized", phone, "own-1", "delivery_failed", HEALTHY, code="40016"
    )
    delivered = own_event("message.finalized", phone, "own-1", "delivered", HEALTHY, later=60)
    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, capped))[1]["recorded"] == 1
        assert receiver.view.groups[first.id].moved == (phone,)
        assert (await post_signed(http, delivered))[1]["recorded"] == 1
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    after_reset = FakeClock(wall=time.time() + 2 * 86_400)
    s = await run_job(job, FAST, client, clock=after_reset)
    assert (len(client.calls), s.sent_groups) == (1, 0)
    assert run_outcome(s) == 0
    assert s.recipients is not None
    assert (s.recipients.sent, s.recipients.later) == (4, 0)
    r = summarize(job.where).recipient_states
    assert (r.valid, r.sent, r.failed, r.later) == (4, 4, 0, 0)


@pytest.mark.parametrize("kind", ["jsonl", "database"])
@pytest.mark.parametrize("under", ["group", "own"])
async def test_a_moved_member_reported_delivered_after_its_resend_is_reported_texted_twice(
    jobs: JobFactory, request: pytest.FixtureRequest, under: str, kind: str
) -> None:
    """A member a blocked sender's 40003 moved (reported under its own id) and a run sent
    again from the other sender, then reported delivered by the first send, under the
    group's id or under that same own id (kept with the first group as the resend replaced
    its status): the report says it was texted twice, counts it sent once, a redelivery is
    recorded once, a receiver reading the ledger afresh matches it the same, and the next
    run sends nobody; in a file as in a database."""
    database = request.getfixturevalue("database") if kind == "database" else None
    job, client, first, receiver = await one_group_sent(
        jobs, f'["{BLOCKED}", "{HEALTHY}"]', database
    )
    phone = first.to[1]
    failed = own_event(
        "message.finalized", phone, "own-1", "delivery_failed", BLOCKED, code="40003"
    )
    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, failed))[1]["recorded"] == 1
        await receiver.settle()
    await run_job(job, FAST, client, clock=FakeClock())
    assert [g.to for g in client.calls[1:]] == [(phone,)]
    await receiver.take_in_new()
    message_id = f"msg-{first.id}-0" if under == "group" else "own-1"
    delivered = own_event("message.finalized", phone, message_id, "delivered", BLOCKED, later=60)
    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, delivered))[1]["recorded"] == 1
        assert (await post_signed(http, delivered))[0] == 200  # redelivered: once
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    fresh = receiver_on(job.where)
    report = RecipientStatus(phone, "delivered")
    assert fresh.match([report], message_id) == ([(first.id, report)], [])
    await fresh.store.close()
    s = summarize(job.where)
    assert s.texted_twice == 1
    assert (s.recipient_states.sent, s.recipient_states.later) == (4, 0)
    again = await run_job(job, FAST, client, clock=FakeClock())
    assert (len(client.calls), again.sent_groups) == (2, 0)


async def capped_and_tracked(
    jobs: JobFactory, other: str
) -> tuple[JobConfig, FakeClient, Group, str]:
    """A job of two people in one group, sent; its first member reported failed by a
    carrier's cap (40016), the other ``other``, as track asks once: the job, its client, the
    group, and its member moved (the group's id is its message's)."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 2", sender=f'["{HEALTHY}"]')
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    (first,) = client.calls
    capped = first.to[0]
    cap = (ApiError("40016", "T-Mobile daily message limit reached", ""),)
    client.delivery[f"msg-{first.id}-0"] = (
        RecipientStatus(capped, "delivery_failed", errors=cap, at="2026-11-23T10:00:00Z"),
        RecipientStatus(first.to[1], other),
    )
    await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    assert load(job.ledger, statuses=False).groups[first.id].moved == (capped,)
    return job, client, first, capped


async def test_track_takes_in_a_moved_member_reported_delivered_while_its_group_is_asked(
    jobs: JobFactory,
) -> None:
    """A member a carrier's cap (40016) moved while the rest of its group was not final, then
    listed delivered as track asks about the group again: the next run after the reset texts
    nobody and exits 0."""
    job, client, first, capped = await capped_and_tracked(jobs, "sent")
    client.delivery[f"msg-{first.id}-0"] = (
        RecipientStatus(capped, "delivered", at="2026-11-23T10:05:00Z"),
        RecipientStatus(first.to[1], "delivered"),
    )
    await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    s = await run_job(job, FAST, client, clock=FakeClock(wall=time.time() + 2 * 86_400))
    assert (len(client.calls), s.sent_groups) == (1, 0)
    assert run_outcome(s) == 0


async def test_track_follow_ends_once_a_moved_members_first_message_is_final(
    jobs: JobFactory,
) -> None:
    """A member is moved (40016) only on a final failure of its first message: once the rest
    of its group is final too, track --follow asks nothing more and ends, waiting for no late
    report (a webhook still records one: under the group's id or the member's own)."""
    job, client, _, _ = await capped_and_tracked(jobs, "delivered")
    r = await track_ledger(job.ledger, FAST, client, follow=True, clock=FakeClock())
    assert (r.requests, r.passes, r.pending, r.error) == (0, 1, 0, None)


@pytest.mark.parametrize("statuses", [True, False], ids=["report", "resume"])
@pytest.mark.parametrize("kind", ["jsonl", "database"])
async def test_a_move_written_after_the_member_was_reached_leaves_it_reached(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str, statuses: bool
) -> None:
    """A ``moved`` event a stale process writes after a ``reached`` event for the same
    member (another host that had not read it) leaves the member reached: its group's, no
    rerun texts it, and its move is not counted; a file and a database fold it alike."""
    where: Location = tmp_path / "stale.jsonl"
    if kind == "database":
        where = f"{request.getfixturevalue('database')}?ledger=stale"
    stale: list[events.Event] = [
        events.Attempt("g1", (A, B), from_=HEALTHY),
        events.Sent("g1", (A, B), message_id="m1", from_=HEALTHY),
        Moved("g1", (A,), "", "40016", "t", 0.0),
        events.Reached("g1", (A,), "t"),
        Moved("g1", (A,), BLOCKED, "40003", "t", 0.0),
    ]
    store = open_store(where, "run")
    try:
        store.append_now(events.Header("job", "f" * 8, campaign="c1"))
        for ev in stale:
            await store.append(ev)
    finally:
        await store.close()
    view = load(where, statuses=statuses)
    assert view.groups["g1"].moved == ()
    assert (view.moves(A), waiting(view), view.texted_twice()) == (0, {}, {})
    r = view.recipients()
    assert (r.valid, r.sent, r.later) == (2, 2, 0)
    assert view.groups == LedgerView.fold(stale[:4], statuses=statuses).groups


@pytest.mark.parametrize("before", ["refused", "moved"])
def test_a_member_tried_in_a_group_before_the_one_that_reached_it_is_taken_back(
    before: str,
) -> None:
    """A member tried in an earlier group (refused there for another member's 40300, or
    moved out of it once already), then moved out of the group that reached it after all,
    is that group's again: only a group tried since makes the move stand."""
    first: list[events.Event]
    if before == "refused":
        first = [
            events.Attempt("g0", (A, B), from_=HEALTHY),
            events.Failed("g0", (A, B), code="40300", refused=(B,), action=Action.SUPPRESS),
        ]
    else:
        first = [
            events.Attempt("g0", (A,), from_=HEALTHY),
            events.Sent("g0", (A,), message_id="m0", from_=HEALTHY),
            Moved("g0", (A,), "", "40016", "t", 0.0),
        ]
    view = LedgerView.fold(
        [
            *first,
            events.Attempt("g1", (A,), from_=HEALTHY),
            events.Sent("g1", (A,), message_id="m1", from_=HEALTHY),
            Moved("g1", (A,), "", "40016", "t", 0.0),
            events.Reached("g1", (A,), "t"),
        ]
    )
    assert view.groups["g1"].moved == ()
    assert waiting(view) == {}
    assert view.texted_twice() == {}
    assert view.recipients().later == 0


def test_a_moved_members_own_id_outlives_its_resend_in_a_checkpoint_and_a_read_again() -> None:
    """The own id a moved member's report gave under its first group is kept with that group
    once its resend replaces its status: in the fold, through a checkpoint, and when a shared
    run reads the first group again (refresh_group); one id, however often it is read."""
    first: list[events.Event] = [
        events.Attempt("g1", (A, B), from_=HEALTHY),
        events.Sent("g1", (A, B), message_id="m1", from_=HEALTHY),
        events.Status("g1", A, "delivery_failed", "own-1"),
        Moved("g1", (A,), "", "40016", "t", 0.0),
    ]
    again: list[events.Event] = [
        events.Attempt("g2", (A,), from_=HEALTHY),
        events.Sent("g2", (A,), message_id="m2"),
    ]
    view = LedgerView.fold([*first, *again])
    assert view.groups["g1"].moved_ids == {A: "own-1"}
    assert (view.own_id(view.groups["g1"], A), view.own_id(view.groups["g2"], A)) == ("own-1", None)
    loaded = ckpt.from_state(orjson.loads(orjson.dumps(ckpt.to_state(view))))
    assert loaded == view
    for _ in range(2):
        view.refresh_group("g1", first)
    assert view.groups["g1"].moved_ids == {A: "own-1"}


def test_a_group_read_again_after_its_resend_still_makes_the_move_stand() -> None:
    """A shared run reads a sent group again (refresh_group) after the resend of a member
    moved out of it was sent; then a report says the first message reached that member:
    the move stands (texted twice), as a fold of the same ledger has it."""
    first: list[events.Event] = [
        events.Attempt("g1", (A, B), from_=HEALTHY),
        events.Sent("g1", (A, B), message_id="m1", from_=HEALTHY),
        Moved("g1", (A,), "", "40016", "t", 0.0),
    ]
    again: list[events.Event] = [
        events.Attempt("g2", (A,), from_=HEALTHY),
        events.Sent("g2", (A,), message_id="m2"),
    ]
    reached = events.Reached("g1", (A,), "t")
    view = LedgerView.fold([*first, *again])
    view.refresh_group("g1", first)
    view.apply(reached)
    assert view.groups["g1"].moved == (A,)
    assert view.texted_twice() == {A: ("g1", "g2")}
    fold = LedgerView.fold([*first, *again, reached])
    assert (view.recipients(), view.moves(A)) == (fold.recipients(), fold.moves(A))


def test_a_moved_member_s_own_id_in_its_first_group_is_never_its_resend_s() -> None:
    """A member moved out of g1 before its own id there was known, and sent again in g2,
    whose report gave its own id there: that id is g2's copy's, so g1's is not known (None),
    never g2's, which track would take for g1's report."""
    view = LedgerView.fold(
        [
            events.Attempt("g1", (A, B), from_=HEALTHY),
            events.Sent("g1", (A, B), message_id="m1", from_=HEALTHY),
            Moved("g1", (A,), "", "40016", "t", 0.0),
            events.Attempt("g2", (A,), from_=HEALTHY),
            events.Sent("g2", (A,), message_id="m2"),
            events.Status("g2", A, "delivered", "own-2"),
        ]
    )
    assert (view.own_id(view.groups["g1"], A), view.own_id(view.groups["g2"], A)) == (None, "own-2")
