"""One clock: a run, ``track`` and the receiver read every time from the clock they are given,
so a test on a fixed date years from the machine's gets what it would on that date."""

from __future__ import annotations

import datetime as dt

import pytest
from msgspec.structs import replace

from bulk_mms import runner as runner_module
from bulk_mms.models import Group, RecipientStatus, SendReceipt
from bulk_mms.runner import run_job
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, ok_receipt

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
