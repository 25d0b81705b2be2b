"""The fold under crash and resume: whatever moment a run dies at (a request out, its answer
lost), the next run settles it by the API's records and everyone ends accepted exactly once,
with the report's states adding up to every valid recipient."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from bulk_mms.models import Group, SendReceipt
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.signals import Stop, StopReason
from bulk_mms.testing import FakeClient, FakeClock, ok_receipt
from tests.conftest import FAST, JobFactory, numbers

#: Keys not trusted (the default): a request whose answer was lost is settled by the records.
UNTRUSTED = replace(FAST, concurrency=1, retry=replace(FAST.retry, retry_ambiguous=False))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(people=st.integers(1, 30), size=st.integers(1, 8), dies_at=st.integers(0, 40))
def test_a_run_that_dies_anywhere_resumes_to_everyone_once(
    tmp_path_factory: pytest.TempPathFactory, people: int, size: int, dies_at: int
) -> None:
    """A run killed on its ``dies_at``-th request (taken by the server, its answer lost) and
    a resume a day later: every recipient accepted once, nothing in doubt, the states add up."""
    jobs = JobFactory(tmp_path_factory.mktemp("fold"))
    jobs.people(people)
    job = jobs.job(extra=f"group_size = {size}")
    stop = Stop()
    clock = FakeClock()
    client = FakeClient(wall=clock.wall)

    async def answer(g: Group, n: int) -> SendReceipt:
        receipt = ok_receipt(g, n)
        if n == dies_at:
            client.took(g, receipt)  # the server took it; the answer never comes back
            stop.force(StopReason.FORCED)
            await asyncio.Event().wait()
        return receipt

    client.handler = answer

    async def both() -> None:
        await run_job(job, UNTRUSTED, client, clock=clock, stop=stop)
        later = FakeClock(wall=time.time() + 86_400)
        client.wall = later.wall
        client.handler = None
        await run_job(job, UNTRUSTED, client, clock=later)

    asyncio.run(both())
    accepted = Counter(r.cld for r in client.records)
    assert accepted == dict.fromkeys(numbers(people), 1)
    r = summarize(job.ledger).recipient_states
    assert (r.valid, r.sent, r.in_doubt, r.not_attempted) == (people, people, 0, 0)
