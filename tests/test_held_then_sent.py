"""A group a window held (its retry would come past the job's ``send_window`` or its
recipients' ``recipient_window``) whose tries left it in doubt, then settled by the API's
records and sent again while the window is still open, is left for no later run: the run's
exit code says what is left at its end (0 when everyone is sent, 1 when what is left is a
group failed for good), not 4 for a window nobody waits for. Integration tests: the real
client against the fake API."""

from __future__ import annotations

import datetime as dt

import pytest
from msgspec.structs import replace

from bulk_mms.console import run_outcome
from bulk_mms.errors import Exit
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.runner import run_job
from tests.conftest import FAST, FakeClock, JobFactory, real_client

#: Two minutes before the windows below close (10:30 UTC).
NOW = dt.datetime(2026, 11, 24, 10, 28, tzinfo=dt.UTC)
WINDOWS = {
    "send_window": 'send_window = "09:00-10:30"',
    "recipient_window": 'recipient_window = "09:00-10:30"\ntimezone_column = "tz"',
}
#: One worker; the API's records complete at once, so the run settles its doubts itself.
SETTLED = replace(FAST, concurrency=1, records_lag_s=0.0)
#: The first group's tries: dropped unanswered and not taken (in doubt), then a 503 whose
#: Retry-After (ten minutes) comes past the windows' close.
IN_DOUBT_THEN_HELD = (Fault("drop_before"), Fault("status", 503, headers={"Retry-After": "600"}))


class WokenShort(FakeClock):
    """A clock whose every sleep ends a hair (1 us) short of the wall time it was to reach:
    a timer fired at the loop clock's resolution early, a wall time (1.8e9 s: a float a
    quarter microsecond from the next) rounded down, as a loaded machine's run meets."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        self.step_wall(-1e-6)


@pytest.mark.parametrize("window", sorted(WINDOWS))
@pytest.mark.parametrize(("refused", "code"), [(False, Exit.OK), (True, Exit.INCOMPLETE)])
async def test_a_held_group_settled_and_sent_in_the_window_is_not_left_for_it(
    jobs: JobFactory, window: str, refused: bool, code: Exit
) -> None:
    """A held group found unsent and sent in its window leaves exit 0 (or 1 for a refusal)."""
    jobs.people(12 if refused else 8, tz="UTC")
    job = jobs.job(extra=f'timezone = "UTC"\ngroup_size = 4\n{WINDOWS[window]}')
    fake = FakeTelnyx(records_lag_s=0.0)
    # the first try's connection drops unanswered (in doubt), its repeat's 503 asks for ten
    # minutes: past the window's close; the records then show it never accepted (the fake
    # took neither), and it goes again
    fake.faults.extend(IN_DOUBT_THEN_HELD)
    if refused:
        fake.faults.append(Fault("status", 400))
    clock = FakeClock(wall=NOW.timestamp())
    async with real_client(fake) as client:
        s = await run_job(job, SETTLED, client, clock=clock)
    assert clock.wall() < NOW.timestamp() + 120  # the windows are still open
    assert s.recipients is not None
    assert (s.recipients.sent, s.recipients.failed) == (8, 4 if refused else 0)
    assert (s.error, s.stopped, s.quiet, run_outcome(s)) == (None, None, {}, code)


@pytest.mark.parametrize("window", sorted(WINDOWS))
async def test_a_held_group_is_settled_by_a_wait_that_ends_a_hair_short(
    jobs: JobFactory, window: str
) -> None:
    """Records due complete as the wait for them ends a hair short are complete: sent, exit 0."""
    jobs.people(8, tz="UTC")
    job = jobs.job(extra=f'timezone = "UTC"\ngroup_size = 4\n{WINDOWS[window]}')
    fake = FakeTelnyx(records_lag_s=0.0)
    fake.faults.extend(IN_DOUBT_THEN_HELD)
    clock = WokenShort(wall=NOW.timestamp())
    async with real_client(fake) as client:
        s = await run_job(job, SETTLED, client, clock=clock)
    assert s.recipients is not None
    assert (s.recipients.sent, s.recipients.in_doubt, s.stopped, run_outcome(s)) == (
        8, 0, None, Exit.OK
    )  # fmt: skip
