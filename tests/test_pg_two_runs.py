"""Two runs of one job at once in one process (the library's ``run_job``, twice) on one
PostgreSQL ledger, with the real client against the fake API."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestServer
from msgspec.structs import replace

from bulk_mms.client import AiohttpMmsClient
from bulk_mms.console import run_outcome
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, JobFactory, numbers

KEY = "pg-two-runs-key"


async def test_two_runs_in_one_process_send_everyone_once_with_nothing_in_doubt(
    jobs: JobFactory, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two run_job runs of a 300-group job at once in one process, on one database ledger:
    both send, each number reaches the API once, nothing is in doubt, both exit 0 saying so."""
    people = 600
    jobs.people(people)
    job = jobs.job(extra="group_size = 2")
    job = replace(job, database=f"{database}?ledger=two-runs")
    # a lease as short as the process tests' (shared_job), the API's records lagging as
    # Telnyx's may: a group left in doubt would stay so, and show
    settings = replace(FAST, rate=400.0, concurrency=8, lease_s=2.0)
    fake = FakeTelnyx(api_key=KEY)
    async with TestServer(fake.app(), host="127.0.0.1", port=0) as server:
        url = str(server.make_url("/v2"))
        async with (
            AiohttpMmsClient(url, KEY, max_connections=8) as one,
            AiohttpMmsClient(url, KEY, max_connections=8) as two,
        ):
            summaries = await asyncio.gather(
                run_job(job, settings, one), run_job(job, settings, two)
            )
    counts = fake.recipient_counts()
    assert sorted(counts) == numbers(people)
    assert set(counts.values()) == {1}
    assert all(s.sent_groups > 0 for s in summaries)  # the job was shared, not run by one
    assert sum(s.sent_groups for s in summaries) == people // 2
    assert not [e for e in ledger_events(job.where) if e["event"] == "in_doubt"]
    assert [s.in_doubt_groups for s in summaries] == [0, 0]
    assert [run_outcome(s) for s in summaries] == [0, 0]
    said = f"{people} valid recipients: {people} sent, 0 failed"
    assert capsys.readouterr().out.count(said) == 2
    status = summarize(job.where)
    assert (status.sent_recipients, status.in_doubt_recipients) == (people, 0)
