"""End to end on a mean fake: the real client and receiver against webhooks delivered again
(the same event, as Telnyx retries an answer that is lost or slow) and out of order (a
``message.finalized`` before its ``message.sent``), and against a send's answer whose
recipients are not all ``queued``. The ledger records each recipient's final status once,
``report`` counts it, and no late report undoes a final one."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bulk_mms.config import JobConfig, load_job
from bulk_mms.delivery import FINAL
from bulk_mms.fake_api import FakeTelnyx, Fault, carrier_timeline
from bulk_mms.ledger import load
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.testing import ledger_events
from bulk_mms.track import track_ledger
from bulk_mms.webhooks import JobReceiver, WebhookReceiver
from tests.conftest import FAST, FakeClock, JobFactory, posting_to, real_client, receiving

KEY = "test-key-123"
PEOPLE = [f"+1212555000{i}" for i in range(4)]
#: What each of PEOPLE ends as (the third with the carrier's code 40008).
FINALS = {
    PEOPLE[0]: "delivered",
    PEOPLE[1]: "delivery_unconfirmed",
    PEOPLE[2]: "delivery_failed",
    PEOPLE[3]: "delivered",
}


def mean_fake(clock: FakeClock, signer: Ed25519PrivateKey) -> FakeTelnyx:
    """The fake at its meanest about webhooks: each event delivered three times (two 2xx
    answers taken as lost) and every recipient's message.finalized before its message.sent."""
    fake = FakeTelnyx(
        api_key=KEY,
        clock=clock.monotonic,
        signing_key=signer,
        webhook_repeats=2,
        webhooks_out_of_order=True,
    )
    outcomes = {"*0001": "delivery_unconfirmed", "*0002": "delivery_failed"}
    fake.delivery_status = carrier_timeline(0, 1, 3, outcomes=outcomes)
    fake.report["*0002"] = "40008"
    return fake


def four_people(jobs: JobFactory) -> JobConfig:
    """A job that texts four people in one group."""
    jobs.people(4)
    return jobs.job(extra="group_size = 4")


async def run_then_hooks(
    job: JobConfig, fake: FakeTelnyx, clock: FakeClock, signer: Ed25519PrivateKey
) -> WebhookReceiver:
    """``job`` run through the real client against ``fake`` (:func:`mean_fake`), then its
    webhooks posted to the real receiver on its ledger as the timeline reaches them: none
    at 1.5 s (every message.sent held back), the eight due at 3.5 s. The receiver, once it
    has looked for every event it held."""
    async with real_client(fake) as client:
        await run_job(job, FAST, client, clock=FakeClock())
    async with receiving(fake, job.ledger, signer) as receiver:
        clock.advance(1.5)
        assert await fake.pump_webhooks() == 0  # every message.sent held back
        clock.advance(2)
        assert await fake.pump_webhooks() == 8
        await receiver.settle()
    return receiver


def webhook_statuses(ledger: Path) -> list[dict[str, Any]]:
    return [e for e in ledger_events(ledger) if e["event"] == "status" and e["source"] == "webhook"]


@pytest.mark.parametrize("switch", [None, "webhooks_without_from", "sparse_answers"])
async def test_repeated_and_reordered_webhooks_record_each_final_status_once(
    jobs: JobFactory, switch: str | None
) -> None:
    """Every event three times, each recipient's finalized before its sent, naming the
    sender or not (or the least the spec allows: no sender, no occurred_at, no meta): the
    ledger has one status line per recipient, its final status, and report counts each
    once; nobody asked the API for a status."""
    clock, signer = FakeClock(), Ed25519PrivateKey.generate()
    fake = mean_fake(clock, signer)
    if switch is not None:
        setattr(fake, switch, True)
    job = four_people(jobs)
    receiver = await run_then_hooks(job, fake, clock, signer)
    posts = [(p.phone, p.event_type) for p in fake.webhooks_sent]
    assert len(posts) == 24
    assert {p.answer for p in fake.webhooks_sent} == {200}
    for phone in PEOPLE:  # the receiver saw it finalized first, and sent last
        assert posts.index((phone, "message.finalized")) < posts.index((phone, "message.sent"))
    lines = webhook_statuses(job.ledger)
    assert Counter(e["recipient"] for e in lines) == dict.fromkeys(PEOPLE, 1)
    assert {e["recipient"]: e["status"] for e in lines} == FINALS
    assert receiver.recorded == 4
    view = load(job.ledger)
    assert {p: view.known[p].status for p in PEOPLE} == FINALS
    report = summarize(job.ledger)
    assert report.groups == {"sent": 1}
    assert report.delivery == Counter(FINALS.values())
    assert report.delivery_codes == {"40008": 1}
    assert [r.method for r in fake.http_log] == ["POST"]
    named = {"from" in orjson.loads(p.body)["data"]["payload"] for p in fake.webhooks_sent}
    assert named == {switch is None}


@pytest.mark.parametrize("sparse", [False, True])
async def test_webhooks_naming_only_their_group_message_record_each_final_status_once(
    jobs: JobFactory, sparse: bool
) -> None:
    """The mean webhooks, for four groups of one, naming neither sender nor participants
    (no from; cc empty, or absent with the least the spec allows) but their group message
    (group_message_id), the one thing left to tie them to their groups: each recipient's
    final status is recorded once, and nobody asked the API for a status."""
    clock, signer = FakeClock(), Ed25519PrivateKey.generate()
    fake = mean_fake(clock, signer)
    fake.webhooks_without_from = fake.group_message_ids = True
    fake.sparse_answers = sparse
    jobs.people(4)
    job = jobs.job(extra="group_size = 1")
    receiver = await run_then_hooks(job, fake, clock, signer)
    assert len(fake.webhooks_sent) == 24
    payloads = [orjson.loads(p.body)["data"]["payload"] for p in fake.webhooks_sent]
    assert not any("from" in p or p.get("cc") for p in payloads)
    sent_as = {m.to[0]: m.id for m in fake.accepted}
    assert {(p["to"][0]["phone_number"], p["group_message_id"]) for p in payloads} == set(
        sent_as.items()
    )
    lines = webhook_statuses(job.ledger)
    assert Counter(e["recipient"] for e in lines) == dict.fromkeys(PEOPLE, 1)
    assert {e["recipient"]: e["status"] for e in lines} == FINALS
    assert (receiver.recorded, receiver.unmatched) == (4, 0)
    assert summarize(job.ledger).delivery == Counter(FINALS.values())
    assert [r.method for r in fake.http_log] == ["POST"] * 4


async def test_webhooks_of_a_send_answered_with_a_members_own_message_are_all_recorded(
    jobs: JobFactory,
) -> None:
    """A send answered with its first member's own message, naming the group only by
    group_message_id (member_id_answers): the mean webhooks of every member, each under its
    own id, are recorded once each at their final status, none unmatched."""
    clock, signer = FakeClock(), Ed25519PrivateKey.generate()
    fake = mean_fake(clock, signer)
    fake.member_id_answers = True
    job = four_people(jobs)
    receiver = await run_then_hooks(job, fake, clock, signer)
    lines = webhook_statuses(job.ledger)
    assert Counter(e["recipient"] for e in lines) == dict.fromkeys(PEOPLE, 1)
    assert {e["recipient"]: e["status"] for e in lines} == FINALS
    assert (receiver.recorded, receiver.unmatched) == (4, 0)
    assert summarize(job.ledger).delivery == Counter(FINALS.values())


async def test_webhooks_repeated_reordered_and_before_the_answer_are_recorded_once(
    jobs: JobFactory,
) -> None:
    """The same mean webhooks, every one posted before the send's answer is read (so before
    the run's `sent` line): once it lands, each recipient's final status is recorded once,
    and the message.sent that came after it changes nothing."""
    clock, signer = FakeClock(), Ed25519PrivateKey.generate()
    fake = mean_fake(clock, signer)
    fake.delivery_status = lambda phone, _age: FINALS[phone]  # final at once: all due at once
    fake.webhooks_before_answer = True
    fake.faults.extend([Fault("status", 503)] * 3)  # a first run leaves the ledger, unsent
    job = four_people(jobs)
    async with real_client(fake) as client:
        await run_job(job, FAST, client, clock=FakeClock())
        async with receiving(fake, job.ledger, signer) as receiver:
            await run_job(job, FAST, client, clock=FakeClock())
            await receiver.settle()
    assert fake.http_log[-1].path.endswith("/group_mms")  # the webhooks beat its answer
    assert len(fake.webhooks_sent) == 24
    assert receiver.unmatched == 0
    lines = webhook_statuses(job.ledger)
    assert Counter(e["recipient"] for e in lines) == dict.fromkeys(PEOPLE, 1)
    view = load(job.ledger)
    assert {p: view.known[p].status for p in PEOPLE} == FINALS
    assert summarize(job.ledger).delivery == Counter(FINALS.values())


async def test_a_late_message_sent_never_undoes_a_final_status_tracked_before_it(
    jobs: JobFactory,
) -> None:
    """track records everyone sent; then each recipient's finalized, its sent after it, and
    both again: each recipient has its tracked sent and its final status, in that order, and
    nothing after it."""
    clock, signer = FakeClock(), Ed25519PrivateKey.generate()
    fake = mean_fake(clock, signer)
    job = four_people(jobs)
    async with real_client(fake) as client:
        await run_job(job, FAST, client, clock=FakeClock())
        clock.advance(1.5)
        await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    async with receiving(fake, job.ledger, signer):
        clock.advance(2)
        assert await fake.pump_webhooks() == 8
    last_post = {p.phone: p.event_type for p in fake.webhooks_sent}
    assert last_post == dict.fromkeys(PEOPLE, "message.sent")
    history: dict[str, list[tuple[str, str]]] = {}
    for e in ledger_events(job.ledger):
        if e["event"] == "status":
            history.setdefault(e["recipient"], []).append((e["source"], e["status"]))
    assert history == {p: [("track", "sent"), ("webhook", FINALS[p])] for p in PEOPLE}
    view = load(job.ledger)
    assert {p: view.known[p].status for p in PEOPLE} == FINALS
    assert summarize(job.ledger).delivery == Counter(FINALS.values())


#: Each recipient's status in the send's answer (the fifth with the carrier's code 40008).
ANSWERED = ["queued", "sending", "sent", "delivered", "delivery_failed"]


async def test_a_send_answered_with_statuses_past_queued_is_sent_and_the_rest_tracked(
    jobs: JobFactory,
) -> None:
    """The send's answer gives its recipients queued, sending, sent, delivered and
    delivery_failed (the spec's enum allows them all): the group is recorded sent, the two
    final ones recorded from the answer with the failure's code, and track follows the
    other three to their end without recording those two again."""
    clock = FakeClock()
    fake = FakeTelnyx(api_key=KEY, clock=clock.monotonic, live_answers=True)

    def timeline(phone: str, age: float) -> str:
        first = ANSWERED[int(phone[-1])]
        return first if age < 1 or first in FINAL else "delivered"

    fake.delivery_status = timeline
    fake.report["*0004"] = "40008"
    people = [f"+1212555000{i}" for i in range(5)]
    jobs.people(5)
    job = jobs.job(extra="group_size = 5")
    async with real_client(fake) as client:
        result = await run_job(job, FAST, client, clock=FakeClock())
        (msg,) = fake.accepted
        answered = summarize(job.ledger)
        clock.advance(2)
        await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    assert (result.sent_groups, result.failed_groups) == (1, 0)
    assert answered.groups == {"sent": 1}
    assert answered.delivery == Counter(ANSWERED)
    assert answered.delivery_codes == {"40008": 1}
    events = ledger_events(job.ledger)
    (sent,) = [e for e in events if e["event"] == "sent"]
    assert sent["message_id"] == msg.id
    history: dict[str, list[tuple[str, str]]] = {}
    for e in events:
        if e["event"] == "status":
            history.setdefault(e["recipient"], []).append((e["source"], e["status"]))
    assert history == {
        people[0]: [("track", "delivered")],
        people[1]: [("track", "delivered")],
        people[2]: [("track", "delivered")],
        people[3]: [("send", "delivered")],
        people[4]: [("send", "delivery_failed")],
    }
    tracked = summarize(job.ledger)
    assert tracked.delivery == {"delivered": 4, "delivery_failed": 1}
    assert tracked.delivery_codes == {"40008": 1}


@pytest.mark.parametrize("without_from", [False, True])
async def test_a_dated_jobs_receiver_records_repeated_reordered_webhooks_once_per_day(
    jobs: JobFactory, without_from: bool
) -> None:
    """webhooks --job, yesterday's and today's runs texting the same people: each event three
    times, finalized before sent, naming the sender or not; each day's ledger has each
    recipient's final status once."""
    clock, signer = FakeClock(), Ed25519PrivateKey.generate()
    fake = mean_fake(clock, signer)
    fake.webhooks_without_from = without_from
    jobs.people(4)
    job = jobs.job(extra='group_size = 4\nledger = "ledgers/{name}-{date}.jsonl"')
    now = dt.datetime.now(job.zone)
    days = [load_job(job.path, now=now - dt.timedelta(days=1)), load_job(job.path, now=now)]
    async with real_client(fake) as client:
        for day in days:
            await run_job(day, FAST, client, clock=FakeClock())
    receiver = JobReceiver(job.ledger_on, job.zone, signer.public_key(), clock=FakeClock())
    async with posting_to(fake, receiver):
        clock.advance(3.5)
        assert await fake.pump_webhooks() == 16
    assert len(fake.webhooks_sent) == 48
    assert receiver.recorded == 8
    for day in days:
        lines = webhook_statuses(day.ledger)
        assert Counter(e["recipient"] for e in lines) == dict.fromkeys(PEOPLE, 1)
        assert {e["recipient"]: e["status"] for e in lines} == FINALS
        assert summarize(day.ledger).delivery == Counter(FINALS.values())
