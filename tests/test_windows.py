"""Never past the deadline nor outside a window, on any try, and never held for a window that
cannot open: a run outside its send_window past the deadline settles what is left as expired
(exit 1, not 4), and a group_by group whose members share no hour of the recipient_window is
rejected as the input is scanned (injected clock)."""

from __future__ import annotations

import datetime as dt

import pytest
from msgspec.structs import replace

from bulk_mms.console import run_outcome
from bulk_mms.errors import AmbiguousSendError
from bulk_mms.ledger import Location
from bulk_mms.models import Group, SendReceipt
from bulk_mms.runner import run_job
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory

UTC = dt.UTC
MORNING = dt.datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
EVENING = dt.datetime(2026, 11, 24, 19, 0, tzinfo=UTC)
WINDOW = 'timezone = "UTC"\nsend_window = "09:00-17:00"\ngroup_size = 4\n'


def clock_at(when: dt.datetime) -> FakeClock:
    return FakeClock(wall=when.timestamp())


def expired_codes(ledger: Location) -> list[object]:
    return [e.get("code") for e in ledger_events(ledger) if e["event"] == "failed"]


@pytest.mark.parametrize(
    "deadline", ['deadline = "2026-11-24T12:00+00:00"', "max_age_s = 3600"], ids=["at", "age"]
)
async def test_a_run_outside_the_window_past_the_deadline_records_the_rest_expired(
    jobs: JobFactory, deadline: str
) -> None:
    """Started outside its send_window after the deadline (a set time, or max_age_s after the
    campaign began), a run sends nothing, records what is left expired_unsent and exits 1 at
    once, instead of exiting 4 ("try later") for a later run that can never send it."""
    jobs.people(8)
    job = jobs.job(extra=WINDOW + deadline)
    first = await run_job(job, FAST, FakeClient(), clock=clock_at(MORNING), limit=1)
    assert first.sent_groups == 1
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=clock_at(EVENING))
    assert (client.calls, s.stopped, s.expired_groups) == ([], None, 1)
    assert run_outcome(s) == 1
    assert expired_codes(job.ledger) == ["expired_unsent"]


async def test_outside_the_window_before_the_deadline_a_run_still_waits_for_it(
    jobs: JobFactory,
) -> None:
    """Outside its send_window with the deadline still ahead, a run sends nothing, records
    nothing and exits 4: the next run inside the window sends the rest."""
    jobs.people(8)
    job = jobs.job(extra=WINDOW + 'deadline = "2026-11-25T12:00+00:00"')
    await run_job(job, FAST, FakeClient(), clock=clock_at(MORNING), limit=1)
    before = ledger_events(job.ledger)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=clock_at(EVENING))
    assert (client.calls, s.stopped, s.expired_groups) == ([], "window", 0)
    assert run_outcome(s) == 4
    assert ledger_events(job.ledger) == before


async def test_outside_the_window_past_the_deadline_a_group_in_doubt_is_never_resent(
    jobs: JobFactory,
) -> None:
    """A group left in doubt, whose API records (complete two days on) show it never accepted,
    is not sent again by a run outside the window past the deadline: it is recorded
    expired_unsent and the run exits 1."""
    jobs.people(4)
    job = jobs.job(extra=WINDOW + 'deadline = "2026-11-24T12:00+00:00"')

    def dropped(g: Group, n: int) -> SendReceipt:
        raise AmbiguousSendError("dropped")

    settings = replace(FAST, retry=replace(FAST.retry, retry_ambiguous=False))
    first = await run_job(job, settings, FakeClient(dropped), clock=clock_at(MORNING))
    assert first.in_doubt_groups == 1
    later = clock_at(EVENING + dt.timedelta(days=2))
    client = FakeClient(wall=later.wall)
    s = await run_job(job, FAST, client, clock=later)
    assert (client.calls, s.stopped, s.expired_groups) == ([], None, 1)
    assert run_outcome(s) == 1
    assert expired_codes(job.ledger) == ["not_accepted", "expired_unsent"]
