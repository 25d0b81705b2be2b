"""Following delivery once the real API accepted a group: an opt-out reported after acceptance,
a group settled by records that name no group message, and a webhook that beats its `sent`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bulk_mms import runner as runner_module
from bulk_mms.client import AiohttpMmsClient
from bulk_mms.config import Settings
from bulk_mms.errors import ApiError
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.ledger import LedgerView, Sent, load, open_store
from bulk_mms.ledger.fold import Miss
from bulk_mms.models import Group, RecipientStatus, SendReceipt
from bulk_mms.policy import load_policy
from bulk_mms.recipient_lists import write_failed_csv
from bulk_mms.report import format_text, summarize
from bulk_mms.runner import run_job
from bulk_mms.suppression import Suppressed, default_list
from bulk_mms.track import track_ledger
from bulk_mms.webhooks import WebhookReceiver, load_public_key
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers, ok_receipt
from tests.test_settle import SETTLED_BY_RECORDS
from tests.test_webhooks import PUBLIC_B64, SIGNER, own_event, post_signed, status_lines

STOP = ApiError("40300", "Blocked due to STOP message", "")


def opted_out_report(g: Group, phone: str) -> tuple[RecipientStatus, ...]:
    """A group's delivery report in which ``phone`` failed with 40300 (opted out) and the
    others were delivered."""
    return tuple(
        RecipientStatus(p, "delivery_failed", errors=(STOP,), message_id=f"own-{i}")
        if p == phone
        else RecipientStatus(p, "delivered", message_id=f"own-{i}")
        for i, p in enumerate(g.to)
    )


def assert_opted_out(ledger: Path, phone: str, tmp_path: Path) -> None:
    """``phone`` is on the suppression list, the report says it opted out, and the failed
    file leaves it out (nobody is to text it again)."""
    assert phone in Suppressed(default_list())
    s = summarize(ledger)
    assert dict(s.undelivered)[phone].kind == Miss.OPTED_OUT
    assert "opted out" in dict(s.undelivered)[phone].why
    assert "opted out" in format_text(s, ledger)
    n, _ = write_failed_csv(s, tmp_path / "failed.csv")
    assert n == 0
    assert phone not in (tmp_path / "failed.csv").read_text(encoding="utf-8-sig")


async def test_an_opt_out_that_track_reads_in_a_delivery_report_is_suppressed(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A 40300 that arrives in a member's delivery report (not as the send's 409) puts that
    member on the suppression list when track reads it; the report says it opted out and
    --failed-csv leaves it out."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    (g,) = client.calls
    client.delivery[f"msg-{g.id}-0"] = opted_out_report(g, g.to[1])
    await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    assert_opted_out(job.ledger, g.to[1], tmp_path)
    assert Suppressed(default_list()).reason(g.to[1]) is not None


async def test_an_opt_out_in_a_delivery_report_during_the_run_is_suppressed(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The run's own delivery polling reads a 40300 in a member's report: the member goes
    on the suppression list before the run ends, and is not sent again."""
    monkeypatch.setattr(runner_module, "DELIVERY_FIRST_S", 0.02)
    monkeypatch.setattr(runner_module, "DELIVERY_SHARE", 1.0)
    jobs.people(12)
    job = jobs.job(extra="group_size = 1")
    client = FakeClient()
    stopped = numbers(12)[4]

    def answer(g: Group, n: int) -> SendReceipt:
        receipt = ok_receipt(g, n)
        client.delivery[receipt.message_id] = opted_out_report(g, stopped)
        return receipt

    client.handler = answer
    await run_job(job, msgspec.structs.replace(FAST, rate=6.0, concurrency=1), client)
    assert_opted_out(job.ledger, stopped, tmp_path)
    before = len(client.calls)
    await run_job(job, FAST, client, clock=FakeClock())
    assert len(client.calls) == before


async def test_an_opt_out_in_the_sends_own_answer_is_suppressed(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """The send's 200 (an OutboundMessagePayload, whose errors may point at members) lists a
    member sending_failed with 40300: the member goes on the suppression list, the report
    says it opted out and --failed-csv leaves it out, as for the same report read later (the
    status is final, so no GET or webhook would bring it again)."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient()
    stopped = numbers(4)[2]

    def answer(g: Group, n: int) -> SendReceipt:
        receipt = ok_receipt(g, n)
        pointed = ApiError(STOP.code, STOP.title, "", pointer=f"/to/{g.to.index(stopped)}")
        statuses = tuple(
            RecipientStatus(p, "sending_failed", errors=(pointed,))
            if p == stopped
            else RecipientStatus(p, "queued")
            for p in g.to
        )
        return msgspec.structs.replace(receipt, statuses=statuses)

    client.handler = answer
    await run_job(job, FAST, client, clock=FakeClock())
    assert_opted_out(job.ledger, stopped, tmp_path)


@pytest.mark.parametrize("code", ["40300", "40008"])
async def test_an_opt_out_in_a_finalized_webhook_is_suppressed(
    jobs: JobFactory, tmp_path: Path, code: str
) -> None:
    """A message.finalized whose errors carry a code the settings' [errors] table says to
    suppress (40300, or one a user added) puts its recipient on the receiver's suppression
    list (as an inbound STOP does, and as a run reading the same report would), and the
    report says it opted out and leaves it out of --failed-csv."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    (g,) = client.calls
    listed = Suppressed(default_list())
    store = open_store(job.ledger, "append")
    settings = Settings(error_policy=load_policy({"40008": "suppress"}))
    key = load_public_key(PUBLIC_B64)
    receiver = WebhookReceiver(
        LedgerView(), store, key, clock=FakeClock(), suppressed=listed, settings=settings
    )
    await receiver.take_in_new()
    sender = {"phone_number": g.message.from_}
    body = own_event("message.finalized", g.to[2], "own-2", "delivery_failed", sender, later=1)
    body["data"]["payload"]["errors"] = [{"code": code, "title": STOP.title}]
    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, body))[1]["recorded"] == 1
        await receiver.settle()
    await receiver.close()
    await store.close()
    assert_opted_out(job.ledger, g.to[2], tmp_path)


async def test_a_synchronous_opt_out_is_said_so_and_left_out_of_the_failed_file(
    jobs: JobFactory, fake_api: tuple[FakeTelnyx, str], tmp_path: Path
) -> None:
    """A member the send's 409 refuses by name (40300) is reported opted out and, on the
    suppression list already, is not written to --failed-csv as someone to resend to."""
    fake, url = fake_api
    fake.name_refused_members = True
    stopped = numbers(4)[2]
    fake.refuse[stopped] = "40300"
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    async with AiohttpMmsClient(url, "test-key-123") as client:
        await run_job(job, FAST, client, clock=FakeClock())
    assert_opted_out(job.ledger, stopped, tmp_path)


async def test_a_group_settled_by_records_without_a_group_id_is_tracked_for_every_member(
    jobs: JobFactory, fake_api: tuple[FakeTelnyx, str]
) -> None:
    """The answer to a send is lost after the API took it, and the records that settle it name
    no group message (the spec's records have no such field): every member's own message is
    tracked to its final status, none left pending or unlisted."""
    fake, url = fake_api
    fake.faults.append(Fault("drop_after"))
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    settings = SETTLED_BY_RECORDS
    async with AiohttpMmsClient(url, "test-key-123") as client:
        s = await run_job(job, settings, client, clock=FakeClock())
        assert (s.sent_groups, s.in_doubt_groups) == (1, 0)
        result = await track_ledger(job.ledger, settings, client, clock=FakeClock())
    (msg,) = fake.accepted
    view = load(job.ledger)
    assert {p: view.known[p].message_id for p in msg.to} == dict(
        zip(msg.to, msg.recipient_ids, strict=True)
    )
    assert (result.pending, result.unlisted, result.not_found) == (0, [], [])
    assert dict(view.delivery()) == {"delivered": 4}


async def test_track_settles_a_group_by_records_and_tracks_every_member(
    jobs: JobFactory, fake_api: tuple[FakeTelnyx, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, settled by track rather than by the run: each member's record id is kept as
    its own message id, and each is asked by it."""
    fake, url = fake_api
    fake.faults.append(Fault("drop_after"))
    jobs.people(3)
    job = jobs.job(extra="group_size = 3")
    lagging = msgspec.structs.replace(SETTLED_BY_RECORDS, records_lag_s=3600.0)
    monkeypatch.setattr(runner_module, "SETTLE_WAIT_S", 0.0)
    async with AiohttpMmsClient(url, "test-key-123") as client:
        fake.records_lag_s = 3600.0  # the run's look finds no record yet: left in doubt
        await run_job(job, lagging, client, clock=FakeClock())
        assert load(job.ledger).count("in_doubt") == 1
        fake.records_lag_s = 0.0
        later = FakeClock(wall=time.time() + 7200)
        result = await track_ledger(job.ledger, lagging, client, clock=later)
    view = load(job.ledger)
    assert view.count("sent") == 1
    assert (result.pending, result.unlisted, result.not_found) == (0, [], [])
    assert dict(view.delivery()) == {"delivered": 3}


async def test_a_webhook_under_a_settled_members_own_id_is_that_members_only(
    jobs: JobFactory, fake_api: tuple[FakeTelnyx, str]
) -> None:
    """A group settled by records that name no group message is recorded under its first
    member's id: a webhook under that id is that member's own message, so its cc (the other
    participants, with statuses the spec allows) is not recorded for the others."""
    fake, url = fake_api
    fake.faults.append(Fault("drop_after"))
    jobs.people(3)
    job = jobs.job(extra="group_size = 3")
    settings = SETTLED_BY_RECORDS
    async with AiohttpMmsClient(url, "test-key-123") as client:
        await run_job(job, settings, client, clock=FakeClock())
    (msg,) = fake.accepted
    store = open_store(job.ledger, "append")
    receiver = WebhookReceiver(LedgerView(), store, load_public_key(PUBLIC_B64))
    await receiver.take_in_new()
    assert receiver.view.groups[next(iter(receiver.view.groups))].message_id == msg.recipient_ids[0]
    sender = {"phone_number": msg.from_}
    body = own_event("message.finalized", msg.to[0], msg.recipient_ids[0], "delivered", sender)
    body["data"]["payload"]["cc"] = [
        {"phone_number": p, "status": "delivery_failed"} for p in msg.to[1:]
    ]
    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, body))[1]["recorded"] == 1
    await receiver.close()
    await store.close()
    lines = [e for e in status_lines(job.ledger) if e["source"] == "webhook"]
    assert [(e["recipient"], e["status"]) for e in lines] == [(msg.to[0], "delivered")]


async def test_members_under_cc_of_an_event_that_beats_its_sent_line_are_recorded(
    jobs: JobFactory,
) -> None:
    """A webhook about the group's own message, listing members past the first under cc with
    their statuses, that arrives before the run wrote the group's `sent` line: once the line
    lands, every member it reports is recorded, not only the one under `to`."""
    path, client = await _sent(jobs)
    store = open_store(path, "append")
    receiver = WebhookReceiver(LedgerView(), store, load_public_key(PUBLIC_B64))
    await receiver.take_in_new()
    late = ("+13125550111", "+13125550112", "+13125550113")
    sender = {"phone_number": client.calls[0].message.from_}
    body = own_event("message.finalized", late[0], "late-msg", "delivered", sender)
    body["data"]["payload"]["cc"] = [{"phone_number": p, "status": "delivered"} for p in late[1:]]
    async with TestClient(TestServer(receiver.app())) as http:
        status, answer = await post_signed(http, body)
        assert (status, answer["recorded"]) == (200, 0)
        writer = open_store(path, "append")
        writer.append_now(
            Sent("late-group", late, 9, message_id="late-msg", from_=sender["phone_number"],
                 time="2026-11-23T10:00:00Z")
        )  # fmt: skip
        writer.close_sync()
        for _ in range(100):
            if len(status_lines(path)) >= 3:
                break
            await asyncio.sleep(0.05)
    await receiver.close()
    await store.close()
    assert {e["recipient"]: e["status"] for e in status_lines(path)} == dict.fromkeys(
        late, "delivered"
    )


async def _sent(jobs: JobFactory) -> tuple[Path, FakeClient]:
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    return job.ledger, client


async def test_webhooks_posted_before_the_sends_answer_are_all_recorded(
    jobs: JobFactory, fake_api: tuple[FakeTelnyx, str]
) -> None:
    """The real API may post a group's webhooks (one per recipient, under each one's own id)
    before the send's answer is read, so before the run writes the group's `sent` line: the
    fake does so when asked, and every member's report is recorded once the line lands."""
    fake, url = fake_api
    fake.faults.extend([Fault("status", 503)] * 3)  # a first run leaves the ledger, unsent
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    async with AiohttpMmsClient(url, "test-key-123") as client:
        await run_job(job, FAST, client, clock=FakeClock())
        store = open_store(job.ledger, "append")
        receiver = WebhookReceiver(LedgerView(), store, load_public_key(PUBLIC_B64))
        await receiver.take_in_new()
        async with TestServer(receiver.app(), host="127.0.0.1", port=0) as hooks:
            fake.signing_key, fake.webhook_url = SIGNER, str(hooks.make_url("/hooks"))
            fake.webhooks_before_answer = True
            await run_job(job, FAST, client, clock=FakeClock())
            await receiver.settle()
    await receiver.close()
    await store.close()
    (msg,) = fake.accepted
    assert [w.event_type for w in fake.webhooks_sent][:1] == ["message.sent"]
    view = load(job.ledger)
    assert {p: view.known[p].status for p in msg.to} == dict.fromkeys(msg.to, "delivered")
    assert {p: view.known[p].message_id for p in msg.to} == dict(
        zip(msg.to, msg.recipient_ids, strict=True)
    )
    assert receiver.unmatched == 0
