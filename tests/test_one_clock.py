"""One clock: a run, ``track`` and the receiver read every time from the clock they are given,
so a test on a fixed date years from the machine's gets what it would on that date."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from msgspec.structs import replace

from bulk_mms import runner as runner_module
from bulk_mms.client import AiohttpMmsClient
from bulk_mms.clock import iso, parse_time
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.ledger import LedgerView, open_store
from bulk_mms.models import Group, RecipientStatus, SendReceipt
from bulk_mms.runner import run_job
from bulk_mms.suppression import Suppressed
from bulk_mms.testing import ledger_events
from bulk_mms.webhooks import WebhookReceiver, load_public_key
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, ok_receipt, sent_ledger
from tests.test_webhooks import (
    PUBLIC_B64,
    event,
    inbound,
    post_signed,
    signed,
    status_lines,
)

#: A date years after any day these tests run on: the machine's clock is years short of it.
YEARS_ON = dt.datetime(2031, 6, 1, 15, tzinfo=dt.UTC).timestamp()
#: A date years before any day these tests run on: every age the machine's clock gives a
#: group sent then is far past ``[track] max_age``.
LONG_AGO = dt.datetime(2020, 3, 2, 15, tzinfo=dt.UTC).timestamp()


async def test_a_runs_delivery_watch_judges_max_age_by_the_runs_clock(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run on a clock dated years from the machine's asks for its groups' delivery statuses
    while it sends, and records them: the groups are seconds old by the run's clock."""
    monkeypatch.setattr(runner_module, "DELIVERY_FIRST_S", 0.02)
    monkeypatch.setattr(runner_module, "DELIVERY_SHARE", 1.0)  # a GET a group, here
    jobs.people(12)
    job = jobs.job(extra="group_size = 1")
    clock = FakeClock(wall=LONG_AGO)
    client = FakeClient(wall=clock.wall)

    def answer(g: Group, n: int) -> SendReceipt:
        receipt = ok_receipt(g, n)
        client.delivery[receipt.message_id] = tuple(RecipientStatus(p, "delivered") for p in g.to)
        return receipt

    client.handler = answer
    await run_job(job, replace(FAST, rate=6.0, concurrency=1), client, clock=clock)
    assert client.fetches  # the watch asked
    statuses = [e for e in ledger_events(job.ledger) if e["event"] == "status"]
    assert statuses
    assert {e["status"] for e in statuses} == {"delivered"}


async def test_a_run_on_a_clock_years_ahead_records_the_stamps_of_its_delivery_reports(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run on a clock dated years after the machine's, through the real client on that clock,
    records each delivery report with the time the API says it was reached: its stamps are
    no later than the run's now, not years ahead of a clock it was never given."""
    monkeypatch.setattr(runner_module, "DELIVERY_FIRST_S", 0.02)
    monkeypatch.setattr(runner_module, "DELIVERY_SHARE", 1.0)  # a GET a group, here
    jobs.people(12)
    job = jobs.job(extra="group_size = 1")
    clock = FakeClock(wall=YEARS_ON)
    fake = FakeTelnyx(api_key="test-key-123", clock=clock.monotonic, wall_clock=clock.wall)
    settings = replace(FAST, rate=6.0, concurrency=1)
    async with (
        TestServer(fake.app(), host="127.0.0.1", port=0) as server,
        AiohttpMmsClient(str(server.make_url("/v2")), "test-key-123", clock=clock) as client,
    ):
        await run_job(job, settings, client, clock=clock)
    statuses = [e for e in ledger_events(job.ledger) if e["event"] == "status"]
    assert statuses
    stamps = [parse_time(str(e["at"])) for e in statuses if e.get("at") is not None]
    assert len(stamps) == len(statuses)
    assert all(YEARS_ON <= at <= clock.wall() for at in stamps)


async def test_a_receiver_on_a_clock_years_ahead_keeps_the_times_of_its_reports(
    jobs: JobFactory,
) -> None:
    """A receiver on a clock dated years after the machine's records a report's
    ``occurred_at`` of its own date as the report's time: a stamp is judged far ahead by the
    receiver's clock."""
    path, client = await sent_ledger(jobs, 4)
    clock = FakeClock(wall=YEARS_ON)
    ledger = open_store(path, "append")
    receiver = WebhookReceiver(LedgerView(), ledger, load_public_key(PUBLIC_B64), clock=clock)
    await receiver.take_in_new()
    g = client.calls[0]
    body = event("message.finalized", g, f"msg-{g.id}-0", "delivered", event_id="e1")
    body["data"]["occurred_at"] = stamp = iso(YEARS_ON + 5)
    raw, headers = signed(body, age=time.time() - clock.wall())
    async with TestClient(TestServer(receiver.app())) as http:
        resp = await http.post("/h", data=raw, headers=headers)
        assert resp.status == 200
    await receiver.close()
    await ledger.close()
    assert {e.get("at") for e in status_lines(path)} == {stamp}


async def test_a_start_on_a_receiver_years_ahead_records_the_removal_at_its_clocks_time(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A START that lifts a STOP on a receiver dated years after the machine's records the
    number taken off the list at the receiver's time: a run on that clock judges the
    removal against its own tries (:func:`~bulk_mms.suppression.put_back_opted_out`)."""
    path, _ = await sent_ledger(jobs, 4)
    clock = FakeClock(wall=YEARS_ON)
    listed = Suppressed(tmp_path / "suppressed.txt")
    ledger = open_store(path, "append")
    receiver = WebhookReceiver(
        LedgerView(), ledger, load_public_key(PUBLIC_B64), clock=clock, suppressed=listed
    )
    await receiver.take_in_new()
    age = time.time() - clock.wall()
    async with TestClient(TestServer(receiver.app())) as http:
        await post_signed(http, inbound("STOP", at=iso(YEARS_ON - 60)), age=age)
        answer = await post_signed(http, inbound("START", at=iso(YEARS_ON - 30)), age=age)
    await receiver.close()
    await ledger.close()
    assert answer[1]["lifted"] is True
    removed = listed.removed_at("+12125550002")
    assert removed is not None
    assert removed == pytest.approx(clock.wall(), abs=5)
