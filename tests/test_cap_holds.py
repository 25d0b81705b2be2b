"""A group a carrier's daily cap (40016) refused at the send waits for the cap's reset, as
the members a delivery report moved out of a sent group do: a rerun before the reset holds
it (never sent, counted waiting, exit 5 naming the reset, or 1 when the reset comes after
the job's deadline), a rerun after it sends it; the decision is the ledger's fold, so every
host on a shared ledger holds it alike. What the stop left unattempted is reported as a
rerun from the reset sends it."""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

import pytest
from msgspec.structs import replace

from bulk_mms.codes import Action
from bulk_mms.console import print_dry_run, run_outcome
from bulk_mms.errors import ApiError, Exit, LimitReached, Rejected
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.html_report import Timeline, render
from bulk_mms.ledger import Failed, Header, LedgerView, Planned, Sent, open_store
from bulk_mms.ledger.events import Event
from bulk_mms.ledger.store import named
from bulk_mms.models import Group, MessageBody, SendReceipt
from bulk_mms.prepare import dry_run, not_before
from bulk_mms.report import format_text, not_attempted_reasons, past_deadline_words, summarize
from bulk_mms.runner import run_job
from bulk_mms.sharing import Sharing
from bulk_mms.testing import ledger_events, write_ledger
from bulk_mms.words import BY_KIND, OWN_CAP
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers, ok_receipt, real_client
from tests.test_deadline_report import DEADLINE, LATER, MORNING, RESET, Clock, refused, run

A, B, C, D = numbers(4, start=400)
GROUP = Group("g1", 0, (A, B, C, D), (2, 3, 4, 5), MessageBody(from_="+15550001", text="hi"))
#: An hour after the cap refused the group, before its reset (RESET, 08:00 UTC next day).
SOON = MORNING + dt.timedelta(hours=1)
ONE = replace(FAST, concurrency=1)


def cap() -> Rejected:
    """T-Mobile's daily cap, as the API answers a send with it."""
    return Rejected("cap", status=400, errors=[ApiError("40016", "T-Mobile daily cap", "")])


def first_capped(g: Group, n: int) -> SendReceipt | Rejected:
    """The API's answers: group 0 refused with the daily cap, any other accepted."""
    return cap() if g.seq == 0 else ok_receipt(g, n)


# -- the fold and the plan ------------------------------------------------------------------


def test_a_group_refused_by_the_cap_is_not_sent_before_its_reset_while_pending() -> None:
    """The earliest a run sends a group a 40016 refused at the send is the reset its failed
    line keeps, while it is pending a rerun; sent since, in doubt since, or refused in a
    ledger written before resets were kept, nothing holds it."""
    base: list[Event] = [Header("j", None), run(DEADLINE), Planned(4, 1, 0)]
    view = LedgerView.fold([*base, refused(RESET.timestamp())])
    assert view.groups["g1"].capped_until == RESET.timestamp()
    assert not_before(GROUP, view) == RESET.timestamp()
    sent = Sent("g1", to=(A, B, C, D), message_id="m1")
    assert not_before(GROUP, LedgerView.fold([*base, refused(RESET.timestamp()), sent])) == 0.0
    assert not_before(GROUP, LedgerView.fold([*base, refused(0.0)])) == 0.0
    assert not_before(replace(GROUP, not_before=5.0), LedgerView.fold(base)) == 5.0


# -- a rerun before the reset -----------------------------------------------------------------


async def test_a_rerun_before_the_reset_sends_the_others_and_holds_the_refused_group(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a 40016 stopped the job, a rerun before the reset sends the group the stop left
    and not the refused one: exit 5, the recipients line naming the reset."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    first = await run_job(
        job, ONE, FakeClient(first_capped), clock=FakeClock(wall=MORNING.timestamp())
    )
    assert isinstance(first.error, LimitReached)
    client = FakeClient()
    s = await run_job(job, ONE, client, clock=FakeClock(wall=SOON.timestamp()))
    assert [g.seq for g in client.calls] == [1]
    assert (s.waiting_recipients, s.waiting_until, s.held_groups) == (4, RESET.timestamp(), 0)
    capsys.readouterr()
    assert run_outcome(s) == LimitReached.exit_code
    line = next(x for x in capsys.readouterr().out.splitlines() if "carrier" in x)
    assert "4 pending a rerun" in line
    assert "4 recipients held by a carrier's daily limit: a rerun from 2026-11-26T08:00Z" in line


async def test_members_the_accounts_daily_cap_holds_are_not_said_held_by_a_carrier(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run's recipients line names the account's daily cap among what holds the group it
    refused (not "a carrier's" alone), with the reset a rerun waits for and the cap's bound
    on what that rerun sends."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 2")
    settings = replace(ONE, daily_recipients=4)
    s = await run_job(job, settings, FakeClient(), clock=FakeClock(wall=MORNING.timestamp()))
    assert (s.waiting_recipients, s.waiting_until, s.waiting_own_cap) == (
        2,
        RESET.timestamp(),
        True,
    )
    s.error = None  # the line as a run that ended by itself says it
    capsys.readouterr()
    run_outcome(s)
    line = next(x for x in capsys.readouterr().out.splitlines() if "daily limit" in x)
    said = "2 recipients held by the account's or a carrier's daily limit: a rerun from "
    assert said + "2026-11-26T08:00Z sends them (up to [limits] daily_recipients a day)" in line


async def test_a_dry_run_before_the_reset_counts_the_refused_group_held_not_sent(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a 40016 stopped the job, a dry run before the reset says it would send the
    group the stop left and holds the refused one until the reset, as a run then does; a dry
    run after the reset would send both."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    await run_job(job, ONE, FakeClient(first_capped), clock=FakeClock(wall=MORNING.timestamp()))
    s = await dry_run(job, ONE, clock=FakeClock(wall=SOON.timestamp()))
    assert (s.sent_groups, s.waiting_recipients, s.waiting_until) == (1, 4, RESET.timestamp())
    capsys.readouterr()
    print_dry_run(s, job, ONE)
    out = capsys.readouterr().out
    assert "would send   1 groups, 4 recipients" in out
    assert "held         4 recipients until a carrier's reset: a run from 2026-11-26T08:00Z" in out
    after = await dry_run(
        job, ONE, clock=FakeClock(wall=(RESET + dt.timedelta(hours=1)).timestamp())
    )
    assert (after.sent_groups, after.waiting_recipients) == (2, 0)


async def test_a_rerun_holding_a_group_capped_past_the_deadline_exits_1_saying_so(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A group whose cap lifts only after the job's deadline: a rerun before the deadline
    does not send it either, and exits 1 saying no rerun before the deadline sends it."""
    jobs.people(4)
    job = jobs.job(extra=f'group_size = 4\ndeadline = "{DEADLINE.isoformat()}"')
    await run_job(job, ONE, FakeClient(first_capped), clock=FakeClock(wall=MORNING.timestamp()))
    client = FakeClient()
    s = await run_job(job, ONE, client, clock=FakeClock(wall=SOON.timestamp()))
    assert (client.calls, s.waiting_recipients, s.waiting_past_deadline) == ([], 0, 4)
    capsys.readouterr()
    assert run_outcome(s) == Exit.INCOMPLETE
    assert past_deadline_words(DEADLINE) in capsys.readouterr().out


# -- several hosts ----------------------------------------------------------------------------


async def test_a_host_holds_a_group_another_host_met_the_cap_with_since_it_planned_it(
    jobs: JobFactory, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a shared ledger, another host's 40016 for a group lands after this host planned
    it and before it claims it: the claim reads the ledger as it is then, and this host holds
    the group until the reset as that host would (exit 5); a host after the reset sends it."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    job = replace(job, database=str(named(database, job.name)))
    take = Sharing.take
    other: list[str] = []

    async def taken_after_the_others_cap(self: Sharing, group: Group) -> bool:
        if group.seq == 0 and not other:  # the other host's refusal, written just now
            other.append(group.id)
            store = open_store(job.where, "append")
            try:
                await store.append(
                    Failed(
                        group.id,
                        to=group.to,
                        seq=group.seq,
                        status=400,
                        code="40016",
                        title="T-Mobile daily cap",
                        retryable=True,
                        action=Action.DEFER,
                        resets=RESET.timestamp(),
                    )
                )
            finally:
                await store.close()
        return await take(self, group)

    monkeypatch.setattr(Sharing, "take", taken_after_the_others_cap)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=FakeClock(wall=SOON.timestamp()))
    assert other
    assert [g.seq for g in client.calls] == [1]
    assert (s.waiting_recipients, run_outcome(s)) == (4, LimitReached.exit_code)
    monkeypatch.setattr(Sharing, "take", take)
    after = FakeClient()
    s = await run_job(job, FAST, after, clock=FakeClock(wall=LATER.timestamp()))
    assert ([g.id for g in after.calls], run_outcome(s)) == (other, Exit.OK)


# -- what the stop left ---------------------------------------------------------------------


def test_what_a_cap_stop_left_is_sent_by_a_rerun_from_its_reset(tmp_path: Path) -> None:
    """A ledger whose run a 40016 at the send stopped with eight recipients left: the report
    (table and HTML page) says a rerun from the reset sends them, not a plain rerun; with
    the reset after the deadline, that no rerun before the deadline does; after the reset,
    a plain rerun does."""
    evs: list[Event] = [Header("j", None), Planned(12, 3, 0), refused(RESET.timestamp())]
    path = tmp_path / "l.jsonl"
    write_ledger(path, [evs[0], run(LATER), *evs[1:]])
    s = summarize(path, clock=Clock(MORNING))
    text = format_text(s, path)
    assert "(not sent yet: a rerun from 2026-11-26T08:00Z sends them)" in text
    assert "a plain rerun" not in text
    assert not_attempted_reasons(s) == [
        (8, "not sent yet: a rerun from 2026-11-26T08:00Z sends them")
    ]
    assert "not sent yet: a rerun from 2026-11-26T08:00Z sends them" in render(s, Timeline(), "l")
    late = tmp_path / "late.jsonl"
    write_ledger(late, [evs[0], run(DEADLINE), *evs[1:]])
    words = past_deadline_words(DEADLINE)
    assert f"(not sent yet: {words})" in format_text(summarize(late, clock=Clock(MORNING)), late)
    after_reset = RESET + dt.timedelta(hours=1)  # and before the deadline, LATER
    after = format_text(summarize(path, clock=Clock(after_reset)), path)
    assert "(not sent yet: a plain rerun sends them)" in after


# -- the whole path, through the real client --------------------------------------------------


async def test_a_group_refused_by_the_cap_waits_for_its_reset_then_goes(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real client against the fake API, whose answer to the send is a 40016: the run
    exits 5; a rerun before the reset asks the API nothing and exits 5 naming the reset; a
    rerun after it (the wall clock moved on) sends the group, and exits 0."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    clock = FakeClock(wall=MORNING.timestamp())
    fake = FakeTelnyx()
    fake.faults.append(Fault("status", 400, code="40016"))
    async with real_client(fake) as client:
        first = await run_job(job, ONE, client, clock=clock)
        assert run_outcome(first) == LimitReached.exit_code
        asked = len(fake.requests)
        clock.step_wall(3600)
        capsys.readouterr()
        before = await run_job(job, ONE, client, clock=clock)
        assert run_outcome(before) == LimitReached.exit_code
        assert len(fake.requests) == asked
        assert "a rerun from 2026-11-26T08:00Z sends them" in capsys.readouterr().out
        clock.step_wall((LATER - SOON).total_seconds())
        after = await run_job(job, ONE, client, clock=clock)
        assert run_outcome(after) == Exit.OK
    assert fake.recipient_counts() == dict.fromkeys(numbers(4), 1)
    failed = [e for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert [(e["code"], e["resets"]) for e in failed] == [("40016", RESET.timestamp())]


async def test_the_accounts_daily_cap_is_reported_with_its_reset_and_held_until_it(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """[limits] daily_recipients met mid-run, the real client against the fake API: the run
    exits 5 naming the next day; its group the cap refused is recorded with the cap's reset,
    so the report (table, JSON, page) counts who was not sent and says a rerun from the reset
    sends them, up to the cap a day; a rerun before the reset asks the API nothing (exit 5),
    one after it sends the rest (exit 0)."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 2")
    settings = replace(ONE, daily_recipients=4)
    clock = FakeClock(wall=MORNING.timestamp())
    fake = FakeTelnyx()
    async with real_client(fake) as client:
        first = await run_job(job, settings, client, clock=clock)
        capsys.readouterr()
        assert run_outcome(first) == LimitReached.exit_code
        assert "the next day's run (after 00:00 America/Los_Angeles)" in capsys.readouterr().err
        failed = [e for e in ledger_events(job.ledger) if e["event"] == "failed"]
        assert [(e["code"], e["resets"]) for e in failed] == [(OWN_CAP, RESET.timestamp())]
        s = summarize(job.ledger, clock=Clock(SOON))
        text = format_text(s, job.ledger)
        assert "retry pending         1           2  (2 wait for a cap's reset: see below)" in text
        capped = "sends them (up to [limits] daily_recipients a day)"
        said = f"{BY_KIND[OWN_CAP]}; a rerun from 2026-11-26T08:00Z {capped}"
        assert f"retry pending 1 group, 2 recipients: {said}" in text
        assert f"(not sent yet: a rerun from 2026-11-26T08:00Z {capped})" in text
        d = s.as_dict()
        assert (d["sent_recipients"], d["retry_pending_recipients"]) == (4, 2)
        assert (d["recipients"]["not_attempted"], d["retry_pending_not_before"]) == (
            2,
            "2026-11-26T08:00Z",
        )
        assert html.escape(said) in render(s, Timeline(), "l")
        asked = len(fake.requests)
        clock.step_wall(3600)
        before = await run_job(job, settings, client, clock=clock)
        assert (run_outcome(before), len(fake.requests)) == (LimitReached.exit_code, asked)
        clock.step_wall((LATER - SOON).total_seconds())
        after = await run_job(job, settings, client, clock=clock)
        assert run_outcome(after) == Exit.OK
    assert fake.recipient_counts() == dict.fromkeys(numbers(8), 1)
