"""The real runner and aiohttp client against the fake Telnyx server with scripted faults."""

from __future__ import annotations

import datetime as dt

import pytest
from aiohttp.test_utils import TestServer
from msgspec.structs import replace

from bulk_mms.client import AiohttpMmsClient
from bulk_mms.console import run_outcome
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.summary import JobSummary
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, ArrivalsFake, FakeClock, JobFactory, groups_counted, numbers

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


NOON = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
#: Thirty seconds after NOON.
DEADLINE = 'deadline = "2026-11-24T12:00:30+00:00"'


async def run_past_deadline(
    jobs: JobFactory, faults: list[Fault], *, concurrency: int = 1, max_connections: int = 8
) -> tuple[JobSummary, ArrivalsFake]:
    """Four groups of four, their job's deadline 30 s on, sent by the real client to the fake
    (``faults`` scripted) on a clock at NOON; the run's summary, and the fake."""
    clock = FakeClock(wall=NOON.timestamp())
    fake = ArrivalsFake(api_key=KEY, arrival_clock=clock.wall)
    fake.faults.extend(faults)
    jobs.people(16)
    job = jobs.job(extra=f"group_size = 4\n{DEADLINE}")
    retry = replace(FAST.retry, attempts=5, max_retry_after=900, backoff_initial=10, backoff_max=40)
    settings = replace(FAST, concurrency=concurrency, retry=retry)
    async with (
        TestServer(fake.app(), host="127.0.0.1", port=0) as server,
        AiohttpMmsClient(
            str(server.make_url("/v2")),
            KEY,
            connect_timeout=60,
            request_timeout=60,
            max_connections=max_connections,
        ) as client,
    ):
        s = await run_job(job, settings, client, clock=clock)
    return s, fake


@pytest.mark.parametrize(
    "faults",
    [
        [Fault("status", 429, headers={"Retry-After": "600"})],
        [Fault("status", 503, headers={"Retry-After": "20"})] * 3,
        [Fault("status", 429, code="40318", headers={"Retry-After": "12"})] * 3,
        [Fault("slow", delay=40.0)],
        [Fault("drop_before", delay=40.0)],
        [Fault("patch", patch={"wait_seconds": 1e12})],
    ],
    ids=["429-retry-after", "503s", "queue-full", "slow", "drop-before", "huge-wait"],
)
async def test_no_request_reaches_the_api_after_the_deadline(
    jobs: JobFactory, faults: list[Fault]
) -> None:
    """A 429 whose Retry-After, queues full whose pauses, a wait_seconds whose slowing, 503s
    whose Retry-After, or a slow or held first request would carry the tries past the deadline:
    the real client sends no request that reaches the API after it, and every group is
    counted once (sent, expired, pending or in doubt), the run exiting 1."""
    s, fake = await run_past_deadline(jobs, faults)
    assert fake.arrivals
    assert max(fake.arrivals) <= NOON.timestamp() + 30
    assert groups_counted(s) == 4
    assert run_outcome(s) == 1


async def test_a_request_that_waited_for_a_connection_past_the_deadline_is_expired(
    jobs: JobFactory,
) -> None:
    """The pool's one connection is held by a request answered only after the deadline: the
    group waiting for it never leaves, and is recorded expired_unsent, not left pending as
    "API unreachable" for a rerun that cannot send it either."""
    s, fake = await run_past_deadline(
        jobs, [Fault("slow", delay=40.0)], concurrency=2, max_connections=1
    )
    assert len(fake.arrivals) == 1
    assert (s.sent_groups, s.expired_groups, s.failed_groups) == (1, 3, 0)
    codes = [e.get("code") for e in ledger_events(jobs.root / "ledgers/test-job.jsonl")]
    assert "NetworkError" not in codes
