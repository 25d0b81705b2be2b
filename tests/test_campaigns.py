"""Idempotency-Keys belong to a campaign (one ledger), not to a recipient list.

Telnyx replays the first answer to a repeated key for 24 hours: if tonight's groups went out
under last night's keys, every group would be recorded sent and nobody would get tonight's
message. Each ledger gets an identity when it is created, and every key includes it.
"""

from __future__ import annotations

from msgspec.structs import replace

from bulk_mms.client import AiohttpMmsClient, idempotency_key
from bulk_mms.errors import AmbiguousSendError
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.ledger import Attempt, load, open_store
from bulk_mms.runner import run_job
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers, ok_receipt

API = tuple[FakeTelnyx, str]
KEY = "test-key-123"


async def test_two_ledgers_of_one_job_send_every_group_twice(
    fake_api: API, jobs: JobFactory
) -> None:
    """Against a server that honours keys, a second ledger sends anew; a rerun of the first
    sends nothing."""
    fake, url = fake_api
    jobs.people(24)
    job = jobs.job(extra="group_size = 4")
    second = replace(job, ledger=jobs.root / "ledgers" / "tomorrow.jsonl")
    async with AiohttpMmsClient(url, KEY) as client:
        s1 = await run_job(job, FAST, client, clock=FakeClock())
        s2 = await run_job(second, FAST, client, clock=FakeClock())
        again = await run_job(job, FAST, client, clock=FakeClock())
    assert (s1.sent_groups, s2.sent_groups, again.sent_groups) == (6, 6, 0)
    assert again.skipped_groups == 6
    assert len(fake.accepted) == 12
    assert fake.recipient_counts() == dict.fromkeys(numbers(24), 2)
    # the second night's message ids are its own, not replays of the first night's
    ids = [
        {e["message_id"] for e in ledger_events(led) if e["event"] == "sent"}
        for led in (job.ledger, second.ledger)
    ]
    assert len(ids[0]) == len(ids[1]) == 6
    assert not ids[0] & ids[1]


async def test_keys_carry_the_ledgers_campaign_and_resume_keeps_them(jobs: JobFactory) -> None:
    """The header names the campaign; every key includes it, and a resume uses the same keys."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient(
        lambda g, n: AmbiguousSendError("dropped after sending") if n == 0 else ok_receipt(g, n)
    )
    settings = replace(FAST, concurrency=1, retry=replace(FAST.retry, retry_ambiguous=False))
    first = await run_job(job, settings, client, clock=FakeClock())
    assert first.in_doubt_groups == 1
    header = next(e for e in ledger_events(job.ledger))
    campaign = header["campaign"]
    assert header["format"] == 3
    assert isinstance(campaign, str)
    assert len(campaign) == 16
    assert client.keys == [idempotency_key(campaign, g.id) for g in client.calls]
    # --resend-in-doubt on the same ledger: the same key as the first try (a replay if it landed)
    held = client.calls[0]
    resend = FakeClient()
    await run_job(job, settings, resend, clock=FakeClock(), resend_in_doubt=True)
    assert [g.id for g in resend.calls] == [held.id]
    assert resend.keys == [client.keys[0]]
    attempts = [e["key"] for e in ledger_events(job.ledger) if e["event"] == "attempt"]
    assert set(attempts) == set(client.keys)


async def test_a_format_1_ledger_resumes_under_its_old_keys(jobs: JobFactory) -> None:
    """A ledger written before campaigns existed keeps the keys its groups were sent under."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    probe = FakeClient()
    await run_job(replace(job, ledger=jobs.root / "probe.jsonl"), FAST, probe, clock=FakeClock())
    gid = probe.calls[0].id
    header = load(jobs.root / "probe.jsonl").header
    assert header is not None
    # a format-1 ledger: no campaign; its group's attempt under the key of the time
    store = open_store(job.ledger, "run")
    store.append_now(replace(header, campaign=None, format=1))
    key = f"bulk-mms-{gid}"
    store.append_now(Attempt(gid, (), 0, "+18445550001", 1, key, 9e12, "2026-11-24T01:00:00Z"))
    store.close_sync()
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=FakeClock())
    assert s.sent_groups == 2
    assert dict(zip([g.id for g in client.calls], client.keys, strict=True))[gid] == (
        f"bulk-mms-{gid}"
    )
    assert all(k == f"bulk-mms-{g.id}" for g, k in zip(client.calls, client.keys, strict=True))
