"""The real runner and aiohttp client against the fake Telnyx server with scripted faults."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from bulk_mms.client import AiohttpMmsClient
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, FakeClock, JobFactory, numbers

API = tuple[FakeTelnyx, str]
KEY = "test-key-123"


FAULTS = [
    Fault("status", 429, headers={"Retry-After": "2"}),
    Fault("status", 503),
    Fault("status", 429, headers={"retry-after-ms": "250"}, code="40318"),
    Fault("drop_after"),
    Fault("status", 500),
    Fault("drop_before"),
    Fault("slow", delay=1.0),
]


@pytest.mark.parametrize("honour_keys", [True, False])
async def test_fault_mix_accepts_each_recipient_at_most_once(
    fake_api: API, jobs: JobFactory, fake_sleep: FakeClock, honour_keys: bool
) -> None:
    """429s, 5xx, drops before and after acceptance and a slow answer, with the real client.

    When the server honours Idempotency-Key, ambiguous tries are repeated under the same key
    and every recipient is accepted exactly once. When it does not (and retry_ambiguous is
    off), no recipient is accepted twice, and every group not known sent is listed in doubt.
    """
    fake, url = fake_api
    fake.replay_keys = honour_keys
    fake.faults.extend(FAULTS)
    jobs.people(64)
    job = jobs.job(extra="group_size = 4")
    retry = replace(FAST.retry, attempts=5, retry_ambiguous=honour_keys)
    settings = replace(FAST, concurrency=1, retry=retry)
    async with AiohttpMmsClient(url, KEY, request_timeout=0.5) as client:
        s = await run_job(job, settings, client, clock=fake_sleep)
        # three groups in a row without a usable answer stop the job; reruns go on from there
        while s.stopped == "unavailable":
            s = await run_job(job, settings, client, clock=fake_sleep)
    counts = fake.recipient_counts()
    assert set(counts.values()) == {1}
    status = summarize(job.ledger)
    assert status.rate_limited == 2
    assert 2.0 in fake_sleep.calls
    assert 0.25 in fake_sleep.calls
    if honour_keys:
        assert (s.sent_groups, s.in_doubt_groups, s.failed_groups) == (16, 0, 0)
        assert sorted(counts) == numbers(64)
    else:
        assert status.failed_groups == 0
        assert status.sent_recipients + status.in_doubt_recipients == 64
        missing = set(numbers(64)) - set(counts)
        doubt = {p for e in ledger_events(job.ledger) if e["event"] == "in_doubt" for p in e["to"]}
        assert missing <= doubt
    sent_ids = {e["message_id"] for e in ledger_events(job.ledger) if e["event"] == "sent"}
    # a group the API's records settled is sent under its record's id (a recipient's own)
    ids = {m.id for m in fake.accepted} | {r for m in fake.accepted for r in m.recipient_ids}
    assert sent_ids <= ids


async def test_growing_wait_seconds_are_recorded(fake_api: API, jobs: JobFactory) -> None:
    """The wait_seconds the API reports for each message lands in the ledger and the summary."""
    fake, url = fake_api
    fake.wait_seconds = lambda n: 0.5 * n
    jobs.people(40)
    job = jobs.job(extra="group_size = 8")
    async with AiohttpMmsClient(url, KEY) as client:
        s = await run_job(job, replace(FAST, concurrency=1), client)
    waits = [e["wait_seconds"] for e in ledger_events(job.ledger) if e["event"] == "sent"]
    assert waits == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert s.wait_seconds_max == 2.0
    assert summarize(job.ledger).as_dict()["wait_seconds_max"] == 2.0


async def test_rerun_against_the_server_sends_nothing(fake_api: API, jobs: JobFactory) -> None:
    """Running the same job twice against the server accepts every recipient exactly once."""
    fake, url = fake_api
    jobs.people(30)
    job = jobs.job()
    for _ in range(2):
        async with AiohttpMmsClient(url, KEY) as client:
            await run_job(job, FAST, client)
    assert fake.recipient_counts() == dict.fromkeys(numbers(30), 1)
    assert len(fake.requests) == 4
