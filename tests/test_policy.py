"""The error policy (a Telnyx code decides what happens to a group and to the job) and the
suppression list."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from msgspec.structs import replace

from bulk_mms.caps import max_cost_counts, paid_per_recipient
from bulk_mms.cli import main
from bulk_mms.client import AiohttpMmsClient
from bulk_mms.codes import Action
from bulk_mms.config import JobConfig, Settings, load_settings
from bulk_mms.console import exit_for, print_dry_run, run_outcome
from bulk_mms.errors import (
    AccountRefused,
    AmbiguousSendError,
    ApiError,
    AuthError,
    ConfigError,
    LimitReached,
    Rejected,
    SendError,
    ServerError,
    SpamFiltered,
)
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.ledger import load
from bulk_mms.ledger.fold import Miss, Missed, RecipientCounts
from bulk_mms.models import Group, Money, RecipientStatus, SendReceipt
from bulk_mms.pacing import Pacer
from bulk_mms.policy import carrier_reset, refused_members
from bulk_mms.prepare import dry_run
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.signals import Stop, StopReason
from bulk_mms.summary import JobSummary
from bulk_mms.suppression import Suppressed, default_list
from bulk_mms.testing import groups_in
from bulk_mms.track import track_ledger
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers, ok_receipt
from tests.threaded import fake_api_thread


def refused(code: str, status: int = 400) -> Rejected:
    return Rejected("refused", status=status, errors=(ApiError(code, "t", "d"),))


def first_group_gets(code: str, status: int = 400, times: int = 1) -> FakeClient:
    """A client that refuses group 0's first ``times`` tries with ``code``."""
    tries: dict[str, int] = {}

    def handler(g: Group, n: int) -> SendReceipt | Rejected:
        tries[g.id] = tries.get(g.id, 0) + 1
        if g.seq == 0 and tries[g.id] <= times:
            return refused(code, status)
        return ok_receipt(g, n)

    return FakeClient(handler)


async def test_insufficient_funds_halts_the_job_with_exit_6_and_loses_nothing(
    jobs: JobFactory,
) -> None:
    """20100 stops the job at once (exit 6), saying so once; the group is pending a rerun,
    nothing failed."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4")
    s = await run_job(
        job, replace(FAST, concurrency=1), first_group_gets("20100", 402), clock=FakeClock()
    )
    assert isinstance(s.error, AccountRefused)
    assert str(s.error).startswith("HTTP 402: the account cannot send (20100")
    assert str(s.error).count("20100") == 1
    assert exit_for(s.error) == 6
    assert groups_in(job.ledger, "failed") == set()
    assert len(groups_in(job.ledger, "retry_pending")) == 1


async def test_insufficient_funds_beside_an_unknown_code_still_halts_the_job(
    jobs: JobFactory,
) -> None:
    """A send refused with 20100 and a code the table does not know stops the job at once
    (exit 6) with nothing failed, instead of failing group after group."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4")
    tries: list[str] = []

    def handler(g: Group, n: int) -> Rejected:
        tries.append(g.id)
        errors = (ApiError("20100", "Insufficient funds", ""), ApiError("10999", "t", ""))
        return Rejected("refused", status=402, errors=errors)

    s = await run_job(job, replace(FAST, concurrency=1), FakeClient(handler), clock=FakeClock())
    assert isinstance(s.error, AccountRefused)
    assert exit_for(s.error) == 6
    assert len(tries) == 1
    assert groups_in(job.ledger, "failed") == set()
    assert len(groups_in(job.ledger, "retry_pending")) == 1


async def test_insufficient_funds_beside_an_opt_out_naming_nobody_halts_and_suppresses_nobody(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A group's send refused with 40300 naming no member beside 20100 stops the job (exit 6)
    with the group pending a rerun, and puts nobody on the suppression list."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4")
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    settings = replace(load_settings(config), rate=FAST.rate, retry=FAST.retry, concurrency=1)

    def handler(g: Group, n: int) -> Rejected:
        errors = (ApiError("40300", "Blocked due to STOP message", ""), ApiError("20100", "", ""))
        return Rejected("refused", status=402, errors=errors)

    s = await run_job(job, settings, FakeClient(handler), clock=FakeClock())
    assert isinstance(s.error, AccountRefused)
    assert exit_for(s.error) == 6
    assert groups_in(job.ledger, "failed") == set()
    assert len(groups_in(job.ledger, "retry_pending")) == 1
    assert Suppressed(tmp_path / "suppressed.txt").numbers() == []


async def test_a_daily_cap_stops_with_exit_5_until_midnight_pacific(jobs: JobFactory) -> None:
    """40016 (T-Mobile's daily cap) stops the job, exit 5, naming the reset; a rerun before
    it sends the other group and holds the refused one (exit 5), a rerun after it sends it."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    morning = dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.UTC).timestamp()  # 10:00 in LA
    s = await run_job(
        job,
        replace(FAST, concurrency=1),
        first_group_gets("40016"),
        clock=FakeClock(wall=morning),
    )
    assert isinstance(s.error, LimitReached)
    assert exit_for(s.error) == 5
    assert "resumable after 2026-11-26 08:00 UTC" in str(s.error)
    before = await run_job(job, FAST, FakeClient(), clock=FakeClock(wall=morning + 3600))
    assert (before.sent_groups, before.waiting_recipients, run_outcome(before)) == (1, 4, 5)
    after = await run_job(job, FAST, FakeClient(), clock=FakeClock(wall=morning + 15 * 3600))
    assert (after.sent_groups, run_outcome(after)) == (1, 0)


async def test_a_daily_cap_at_the_send_names_the_configured_reset(jobs: JobFactory) -> None:
    """40016 in the answer to a send names the day's reset as [limits] daily_reset sets it,
    the same moment a 40016 in a delivery report holds its member until
    (:func:`~bulk_mms.policy.carrier_reset`), not midnight US/Pacific whatever the setting."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    now = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)  # 05:00 in New York
    settings = replace(FAST, concurrency=1, daily_reset="06:00 America/New_York")
    clock = FakeClock(wall=now.timestamp())
    s = await run_job(job, settings, first_group_gets("40016"), clock=clock)
    assert isinstance(s.error, LimitReached)
    reset = carrier_reset("40016", settings.daily_reset, now.timestamp())
    assert reset == dt.datetime(2026, 11, 25, 11, 0, tzinfo=dt.UTC).timestamp()
    assert "resumable after 2026-11-25 11:00 UTC" in str(s.error)


async def test_a_per_minute_limit_waits_for_the_next_minute(jobs: JobFactory) -> None:
    """40018 (AT&T per minute) waits until the next minute, then sends."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    clock = FakeClock(wall=dt.datetime(2026, 11, 25, 10, 0, 45, tzinfo=dt.UTC).timestamp())
    s = await run_job(job, FAST, first_group_gets("40018"), clock=clock)
    assert s.sent_groups == 1
    assert any(14 <= c <= 16 for c in clock.calls)  # 15 s to the next minute


async def test_spam_codes_slow_the_sender_and_retry(jobs: JobFactory) -> None:
    """40002 (spam block, temporary) is a 429 for that sender: it slows down and retries."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    s = await run_job(job, FAST, first_group_gets("40002", times=2), clock=FakeClock())
    assert s.sent_groups == 1
    assert s.rate_limited == 2


def test_the_table_is_overridable_and_checked(tmp_path: Path) -> None:
    """[errors] code = "action" overrides the built-in table; a bad action names the code,
    and an opt-out's code (40300) keeps suppress: a table cannot have STOP-sayers texted."""
    config = tmp_path / "config.toml"
    config.write_text('[errors]\n40014 = "retry"\n12345 = "halt"\n40300 = "suppress"\n')
    policy = load_settings(config).error_policy
    assert (policy["40014"], policy["12345"], policy["20100"], policy["40300"]) == (
        Action.RETRY,
        Action.HALT,
        Action.HALT,
        Action.SUPPRESS,
    )
    config.write_text('[errors]\n40014 = "ignore"\n')
    with pytest.raises(ConfigError, match="40014"):
        load_settings(config)
    config.write_text('[errors]\n40300 = "retry"\n')
    with pytest.raises(ConfigError, match=r"errors\.40300.*opt-out"):
        load_settings(config)


def test_midnight_is_pacific_midnight() -> None:
    """By default the daily cap resets at midnight US/Pacific, whatever the machine's zone."""
    now = dt.datetime(2026, 11, 25, 7, 30, tzinfo=dt.UTC)  # 23:30 the day before in LA
    reset = carrier_reset("40016", Settings().daily_reset, now.timestamp())
    assert reset == dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC).timestamp()


async def test_suppressed_numbers_are_rejected_before_any_request(
    jobs: JobFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Numbers on the suppression list (added with `suppress add`) are rejected at validation
    with the reason `suppressed`: no request is made for them, the others are sent."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    assert (
        main(["-q", "suppress", "add", "+12125550001", "(212) 555-0003", "--config", str(config)])
        == 0
    )
    assert "2 numbers added to" in capsys.readouterr().err
    settings = replace(load_settings(config), rate=FAST.rate, retry=FAST.retry)
    client = FakeClient()
    s = await run_job(job, settings, client, clock=FakeClock())
    assert sorted(client.sent_numbers()) == [
        n for n in numbers(8) if n not in ("+12125550001", "+12125550003")
    ]
    assert (s.rejected_rows, s.suppressed_rows) == (0, 2)
    assert summarize(job.ledger).rows.suppressed == 2
    assert main(["-q", "suppress", "remove", "+12125550001", "--config", str(config)]) == 0
    assert main(["-q", "suppress", "list", "--config", str(config)]) == 0
    assert capsys.readouterr().out.split() == ["+12125550003"]


def test_suppress_add_names_each_bad_number_and_adds_the_good(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`suppress add` with bad numbers among good ones: each bad one is named on its own line,
    the good ones are on the list, and the exit code is 1."""
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    given = ["+12125550001", "call-me", "(212) 555-0003", "+1555"]
    assert main(["-q", "suppress", "add", *given, "--config", str(config)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0]
        == "bulk-mms: 'call-me' is not a phone number (phone number contains letters): not added"
    )
    assert err[1].startswith("bulk-mms: '+1555' is not a phone number (")
    assert err[2] == f"bulk-mms: 2 numbers added to {tmp_path / 'suppressed.txt'}"
    assert len(err) == 3
    assert main(["-q", "suppress", "list", "--config", str(config)]) == 0
    assert capsys.readouterr().out.split() == ["+12125550001", "+12125550003"]


def test_suppress_add_with_only_bad_numbers_adds_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`suppress add` with no valid number names it, writes no list, and exits 1."""
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    assert main(["-q", "suppress", "add", "nope", "--config", str(config)]) == 1
    assert "'nope' is not a phone number" in capsys.readouterr().err
    assert not (tmp_path / "suppressed.txt").exists()


async def test_an_opt_out_refusal_puts_the_number_on_the_list(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A 40300 (the recipient texted STOP) for a message of one: that number goes on the
    suppression list, and the next job rejects it without a request."""
    jobs.people(3)
    job = jobs.job(extra="group_size = 1")
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    settings = replace(load_settings(config), rate=FAST.rate, retry=FAST.retry)
    stop_sayer = numbers(3)[1]

    def handler(g: Group, n: int) -> SendReceipt | Rejected:
        return refused("40300", 400) if g.to == (stop_sayer,) else ok_receipt(g, n)

    await run_job(job, settings, FakeClient(handler), clock=FakeClock())
    assert (tmp_path / "suppressed.txt").read_text().startswith(stop_sayer)
    again = FakeClient()
    job2 = replace(job, name="tomorrow", ledger=jobs.root / "tomorrow.jsonl")
    s = await run_job(job2, settings, again, clock=FakeClock())
    assert stop_sayer not in again.sent_numbers()
    assert (s.rejected_rows, s.suppressed_rows) == (0, 1)


async def test_the_spend_ceiling_stops_before_a_send_that_could_pass_it(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """max_cost: at 0.0051 a recipient, 0.05 covers two groups of 4 (0.0408) but not a third:
    the run sends two, stops with exit 5, and the dry run said the job would not fit."""
    jobs.people(16)
    job = jobs.job(extra='group_size = 4\nmax_cost = "0.05"')
    settings = replace(FAST, concurrency=1, price_per_recipient=Decimal("0.0051"))
    plan = await dry_run(job, settings, clock=FakeClock())
    assert plan.estimate is not None
    print_dry_run(plan, job, settings)
    assert "does NOT fit" in capsys.readouterr().out
    client = FakeClient()
    s = await run_job(job, settings, client, clock=FakeClock())
    assert isinstance(s.error, LimitReached)
    assert exit_for(s.error) == 5
    assert s.sent_groups == 2
    assert summarize(job.ledger).total_cost == Decimal("0.0408")


async def sends_until_a_limit(job: JobConfig, settings: Settings) -> int:
    """How many groups a run of ``job`` sends before a limit stops it (it must)."""
    client = FakeClient()
    s = await run_job(job, settings, client, clock=FakeClock())
    assert isinstance(s.error, LimitReached)
    return len(client.calls)


def first_unpriced(g: Group, n: int) -> SendReceipt:
    """The fake API's answer, with no cost for the first group (the API may leave it null)."""
    return replace(ok_receipt(g, n), cost=None) if g.seq == 0 else ok_receipt(g, n)


async def test_the_dry_run_judges_max_cost_by_the_run_s_own_count(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a send whose cost the API left null, at [pricing] 0.0100 a recipient: the run
    counts that send at the price (0.04) and the 12 recipients left at it (0.12), so under
    max_cost 0.15 it sends two more groups and stops, exit 5; the dry run says the rest does
    not fit, counting as the run does (not the paid costs alone, nor the ledger's average
    price)."""
    jobs.people(16)
    job = jobs.job(extra='group_size = 4\nmax_cost = "0.15"')
    settings = replace(FAST, concurrency=1, price_per_recipient=Decimal("0.0100"))

    await run_job(job, settings, FakeClient(first_unpriced), clock=FakeClock(), limit=1)
    plan = await dry_run(job, settings, clock=FakeClock())
    print_dry_run(plan, job, settings)
    said = next(line for line in capsys.readouterr().out.splitlines() if "max_cost" in line)
    assert said.endswith("0.0400 paid + about 0.1200 more does NOT fit: a run stops at it (exit 5)")
    assert await sends_until_a_limit(job, settings) == 2


async def test_a_send_the_api_left_unpriced_is_counted_at_what_the_priced_ones_cost(
    jobs: JobFactory,
) -> None:
    """With no [pricing] (after a first run with one), a send the API gave no cost for is
    counted at the mean price of the sends it did price (0.0051 a recipient), not diluted by
    the unpriced send's own recipients (0.00255): under max_cost 0.08 the run sends one more
    group of 4 and stops (0.0204 paid, 0.0204 counted, 0.0204 more)."""
    jobs.people(16)
    job = jobs.job(extra='group_size = 4\nmax_cost = "0.08"')
    settings = replace(FAST, concurrency=1)
    first = replace(settings, price_per_recipient=Decimal("0.0051"))  # a price to begin at
    await run_job(job, first, FakeClient(first_unpriced), clock=FakeClock(), limit=2)
    assert paid_per_recipient(load(job.ledger), "USD") == Money(Decimal("0.0051"), "USD")
    assert await sends_until_a_limit(job, settings) == 1


async def test_the_daily_cap_counts_every_job_and_stops_at_exactly_the_cap(
    jobs: JobFactory,
) -> None:
    """[limits] daily_recipients = 10: one job sends 6, a second job on the account sends 4 and
    stops with exit 5; the next day (after midnight US/Pacific) it sends the rest."""
    day = dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.UTC)  # 10:00 in Los Angeles
    settings = replace(FAST, concurrency=1, daily_recipients=10)
    jobs.people(6)
    first = jobs.job(extra="group_size = 1", name="first")
    await run_job(first, settings, FakeClient(), clock=FakeClock(wall=day.timestamp()))
    jobs.people(6, start=100)
    second = jobs.job(extra="group_size = 1", name="second")
    client = FakeClient()
    s = await run_job(second, settings, client, clock=FakeClock(wall=day.timestamp()))
    assert isinstance(s.error, LimitReached)
    assert exit_for(s.error) == 5
    assert len(client.sent_numbers()) == 4
    tomorrow = day + dt.timedelta(days=1)
    s2 = await run_job(second, settings, client, clock=FakeClock(wall=tomorrow.timestamp()))
    assert s2.error is None
    assert len(client.sent_numbers()) == 6


async def test_past_the_deadline_groups_are_recorded_expired_and_never_sent(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """deadline: a run after it sends nothing; the groups are recorded expired_unsent (final,
    in the failed file with why), and a later run does not send them either."""
    jobs.people(8)
    job = jobs.job(extra='group_size = 4\ndeadline = "2026-11-24T12:00"\ntimezone = "UTC"')
    after = dt.datetime(2026, 11, 24, 12, 5, tzinfo=dt.UTC)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=FakeClock(wall=after.timestamp()))
    assert client.calls == []
    assert s.expired_groups == 2
    report = summarize(job.ledger)
    assert report.recipient_states.failed == 8
    assert report.error_codes == {"expired_unsent": 2}
    again = await run_job(job, FAST, client, clock=FakeClock(wall=after.timestamp()))
    assert (again.skipped_groups, client.calls) == (2, [])


async def test_carrier_refusals_end_to_end_against_the_sandbox(
    jobs: JobFactory, tmp_path: Path, fake_api: tuple[FakeTelnyx, str]
) -> None:
    """The real client against the fake API refusing by rule: a 40300 number is never
    accepted, its neighbours are, and it is suppressed for the next job with no request for
    it; a 20100 then halts the job with exit 6 and nothing lost."""
    fake, url = fake_api
    jobs.people(4)
    job = jobs.job(extra="group_size = 1")
    stop_sayer = numbers(4)[2]
    fake.refuse[stop_sayer] = "40300"
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    settings = replace(load_settings(config), rate=FAST.rate, retry=FAST.retry, concurrency=1)
    async with AiohttpMmsClient(url, "test-key-123") as client:
        await run_job(job, settings, client, clock=FakeClock())
        assert sorted(fake.recipient_counts()) == sorted(set(numbers(4)) - {stop_sayer})
        requests_before = len(fake.requests)
        tomorrow = replace(job, name="tomorrow", ledger=jobs.root / "tomorrow.jsonl")
        fake.refuse[numbers(4)[0]] = "20100"
        s = await run_job(tomorrow, settings, client, clock=FakeClock())
    assert stop_sayer not in [p for r in fake.requests[requests_before:] for p in r["to"]]
    assert isinstance(s.error, AccountRefused)
    assert exit_for(s.error) == 6
    assert summarize(tomorrow.ledger).recipient_states.failed == 0


async def test_a_burst_of_spam_codes_stops_the_job_instead_of_burning_the_list(
    jobs: JobFactory,
) -> None:
    """When spam filtering (40002) meets half of the last 20 tries, the job stops with exit 5
    and the groups not sent are pending a rerun, not failed."""
    jobs.people(40)
    job = jobs.job(extra="group_size = 1")
    client = FakeClient(lambda g, n: refused("40002") if g.seq >= 10 else ok_receipt(g, n))
    s = await run_job(job, replace(FAST, concurrency=1), client, clock=FakeClock())
    assert isinstance(s.error, LimitReached)
    assert "spam filtering" in str(s.error)
    assert exit_for(s.error) == 5
    assert s.sent_groups == 10
    assert groups_in(job.ledger, "failed") == set()
    assert run_outcome(s) == 5  # others are left: a rerun resumes once it is fixed


async def test_a_cap_and_a_burst_of_spam_stop_with_their_own_reason_not_limit_s(
    jobs: JobFactory,
) -> None:
    """A carrier's daily cap (40016) stops the run for ``cap`` and a burst of spam filtering
    for ``spam``, as the summary and its log line say; ``limit`` is --limit's alone."""
    jobs.people(40)
    job = jobs.job(extra="group_size = 1")
    one = replace(FAST, concurrency=1)
    capped = await run_job(job, one, first_group_gets("40016"), clock=FakeClock())
    assert (capped.stopped, capped.as_log()["stopped"]) == ("cap", "cap")
    jobs.people(40)
    spammed = jobs.job(extra="group_size = 1", name="spammed")
    client = FakeClient(lambda g, n: refused("40002") if g.seq >= 10 else ok_receipt(g, n))
    s = await run_job(spammed, one, client, clock=FakeClock())
    assert (s.stopped, s.as_log()["stopped"]) == ("spam", "spam")
    limited = await run_job(jobs.job(name="limited"), one, FakeClient(), clock=FakeClock(), limit=1)
    assert limited.stopped == "limit"


async def test_a_burst_of_spam_met_with_nobody_left_exits_as_the_run_ended(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spam filtering that meets half of the last 20 tries only as the last group is accepted
    (every group refused once with 40002, then sent) leaves nobody for a rerun: exit 0, the
    summary told, and the last line warns of the filtering without asking for a rerun."""
    jobs.people(10)
    job = jobs.job(extra="group_size = 1")
    tries: dict[str, int] = {}

    def handler(g: Group, n: int) -> SendReceipt | Rejected:
        tries[g.id] = tries.get(g.id, 0) + 1
        return refused("40002") if tries[g.id] == 1 else ok_receipt(g, n)

    s = await run_job(job, replace(FAST, concurrency=1), FakeClient(handler), clock=FakeClock())
    assert isinstance(s.error, LimitReached)
    assert s.recipients is not None
    assert s.recipients.sent == 10
    capsys.readouterr()
    assert run_outcome(s) == 0
    out = capsys.readouterr()
    assert "sent 10 groups" in out.out
    last = out.err.strip().splitlines()[-1]
    assert "spam filtering met 10 of the last 20 tries" in last
    assert "nobody left to send" in last
    assert "rerun" not in last


def test_spam_met_at_the_end_warns_before_the_expiry_that_decides_the_exit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Spam filtering met with nobody left, in a run that recorded a group expired: the spam
    warning comes after the counts and the expiry line (the cause of exit 1) last, as the
    exit codes' table and the carriers page say."""
    counts = RecipientCounts(10, 9, 1, 0, 0, 0, input_read=True)
    finding = "spam filtering met 10 of the last 20 tries"
    s = JobSummary("j", sent_groups=9, expired_groups=1, open_failed=1, recipients=counts,
                   error=SpamFiltered(finding))  # fmt: skip
    assert run_outcome(s) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert finding in lines[-2]
    assert "expired unsent" in lines[-1]
    docs = Path(__file__).parent.parent / "docs" / "carriers.md"
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for text in (docs.read_text(encoding="utf-8"), readme):
        assert "the expiry line comes after it" in " ".join(text.split())


def test_optouts_sync_pulls_every_page_into_the_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`optouts sync` reads GET /v2/messaging_optouts page by page and adds each number to the
    suppression list once (a second sync adds none)."""
    # kind fake until issue 28 part 2: the sync does not ask for unredacted numbers yet
    fake = FakeTelnyx(api_key="test-key-123", redaction_default=False)
    fake.optouts = [f"+1212555{i:04d}" for i in range(300)]  # two pages of 250
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    monkeypatch.setenv("TELNYX_API_KEY", "test-key-123")
    with fake_api_thread(fake) as url:
        argv = ["-q", "optouts", "sync", "--config", str(config), "--base-url", url]
        assert main(argv) == 0
        assert "300 opt-outs on the profile, 300 new" in capsys.readouterr().err
        assert main(argv) == 0
        assert "300 opt-outs on the profile, 0 new" in capsys.readouterr().err
    assert len((tmp_path / "suppressed.txt").read_text().splitlines()) == 300


async def test_max_age_expires_what_is_left_that_long_after_the_campaign_began(
    jobs: JobFactory,
) -> None:
    """max_age_s = 3600: a run inside the hour sends; a resume two hours after the campaign
    began sends nothing more and records the rest expired_unsent."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4\nmax_age_s = 3600")
    start = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
    first = await run_job(job, FAST, FakeClient(), clock=FakeClock(wall=start.timestamp()), limit=1)
    assert first.sent_groups == 1
    later = FakeClock(wall=(start + dt.timedelta(hours=2)).timestamp())
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=later)
    assert client.calls == []
    assert s.expired_groups == 1


async def test_a_delivery_failure_on_a_carrier_cap_is_marked_resendable(
    jobs: JobFactory,
) -> None:
    """A delivery report failing with 40016 (a carrier's daily cap) moves its member, to go
    again after the reset (not in the failed file: the next run after the reset sends it);
    one failing with 40008 (undeliverable) is in the failed file, for good."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 2")
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    (g,) = client.calls
    cap, bad = (ApiError("40016", "T-Mobile daily cap", ""), ApiError("40008", "Undeliverable", ""))
    client.delivery[f"msg-{g.id}-0"] = (
        RecipientStatus(g.to[0], "delivery_failed", errors=(cap,)),
        RecipientStatus(g.to[1], "delivery_failed", errors=(bad,)),
    )
    await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    reasons = dict(summarize(job.ledger).undelivered)
    assert reasons == {g.to[1]: Missed("delivery_failed 40008", Miss.FAILED)}
    rec = load(job.ledger).groups[g.id]
    assert rec.moved == (g.to[0],)
    assert rec.moved_after > FakeClock().wall()  # the carrier's next daily reset


def listed(tmp_path: Path, *phones: str) -> tuple[Path, Settings]:
    """A config whose suppression list (``suppressed.txt``) has ``phones``, added with
    ``suppress add``, and its settings at test speed."""
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    if phones:
        assert main(["-q", "suppress", "add", *phones, "--config", str(config)]) == 0
    return config, replace(load_settings(config), rate=FAST.rate, retry=FAST.retry)


def opted_out(group: Group, *phones: str) -> Rejected:
    """A 40300 as Telnyx words it: one error per opted-out member, each with its pointer."""
    errors = tuple(
        ApiError(
            "40300",
            "Blocked due to STOP message",
            f"Messages cannot be sent from {group.message.from_} to {p} due to an existing block "
            "rule.",
            pointer=f"/to/{group.to.index(p)}",
        )
        for p in phones
    )
    return Rejected("refused", status=409, errors=errors)


def test_refused_members_are_named_by_pointer_or_detail_never_guessed() -> None:
    """The opted-out members come from each error's pointer, else from the number its detail
    names; a group of one is its member; an answer naming nobody in a larger group names none."""
    to = tuple(numbers(3))
    policy = load_settings(None).error_policy
    by_pointer = Rejected("x", errors=(ApiError("40300", "t", "", pointer="/to/2"),))
    by_detail = Rejected("x", errors=(ApiError("40300", "t", "... to (212) 555-0001 due"),))
    nobody = Rejected("x", errors=(ApiError("40300", "t", "blocked"),))
    other_code = Rejected("x", errors=(ApiError("40310", "t", "", pointer="/to/0"),))
    assert refused_members(by_pointer, to, policy) == (to[2],)
    assert refused_members(by_detail, to, policy) == (to[1],)
    assert refused_members(nobody, to, policy) == ()
    assert refused_members(nobody, to[:1], policy) == to[:1]
    assert refused_members(other_code, to, policy) == ()


async def test_an_opt_out_in_a_group_sends_the_others_without_it(
    jobs: JobFactory, tmp_path: Path, fake_api: tuple[FakeTelnyx, str]
) -> None:
    """Against the fake API refusing two numbers with 40300: neither is ever accepted, their
    group-mates are (in groups made without them, under new keys), only the two count failed,
    as opted out (the run exits 0), both go on the suppression list, and the next job makes no
    request for them."""
    fake, url = fake_api
    fake.name_refused_members = True  # kind fake until issue 28 part 2: the 409 names the members
    people = numbers(8)
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    stop_sayers = {people[1], people[6]}
    fake.refuse.update(dict.fromkeys(stop_sayers, "40300"))
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    settings = replace(load_settings(config), rate=FAST.rate, retry=FAST.retry)
    async with AiohttpMmsClient(url, "test-key-123") as client:
        s = await run_job(job, settings, client, clock=FakeClock())
        assert fake.recipient_counts() == dict.fromkeys(set(people) - stop_sayers, 1)
        keys = [m.idempotency_key for m in fake.accepted]
        assert len(set(keys)) == 2
        summary = summarize(job.ledger)
        assert (summary.recipient_states.sent, summary.recipient_states.failed) == (6, 2)
        assert {phone for phone, _ in summary.undelivered} == stop_sayers
        assert (s.failed_groups, summary.recipient_states.opted_out) == (0, 2)
        assert run_outcome(s) == 0  # the two opted out: nobody may text them, not a failure
        listed = (tmp_path / "suppressed.txt").read_text()
        assert all(p in listed for p in stop_sayers)
        before = len(fake.requests)
        tomorrow = replace(job, name="tomorrow", ledger=jobs.root / "tomorrow.jsonl")
        s2 = await run_job(tomorrow, settings, client, clock=FakeClock())
    sent_tomorrow = [p for r in fake.requests[before:] for p in r["to"]]
    assert sorted(sent_tomorrow) == sorted(set(people) - stop_sayers)
    assert (s2.rejected_rows, s2.suppressed_rows) == (0, 2)
    assert summarize(tomorrow.ledger).rows.suppressed == 2


async def test_a_group_refused_for_one_member_is_resumed_without_it(jobs: JobFactory) -> None:
    """When the group made without an opted-out member did not get out (the API went away),
    a plain rerun sends that group (not the first, not the member), with no suppression list:
    the ledger remembers who was refused."""
    people = numbers(4)
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")

    def first_run(g: Group, n: int) -> SendReceipt | Rejected | ServerError:
        if people[2] in g.to:
            return opted_out(g, people[2])
        return ServerError("down", status=503)

    one_try = replace(FAST, retry=replace(FAST.retry, attempts=1))
    await run_job(job, one_try, FakeClient(first_run), clock=FakeClock())
    assert summarize(job.ledger).recipient_states.as_dict() == {
        "valid": 4, "sent": 0, "failed": 1, "retry_pending": 3, "in_doubt": 0,
        "not_attempted": 0,
    }  # fmt: skip
    again = FakeClient()
    s = await run_job(job, FAST, again, clock=FakeClock())
    assert [g.to for g in again.calls] == [(people[0], people[1], people[3])]
    assert s.recipients is not None
    assert (s.recipients.sent, s.recipients.failed, s.recipients.valid) == (3, 1, 4)


async def test_a_list_change_between_runs_never_regroups_what_was_sent(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """Numbers suppressed after a run began do not shift the groups: a sent group with one of
    them stays sent (nobody texted twice), a group not yet sent goes out without it."""
    people = numbers(8)
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    settings = replace(load_settings(config), rate=FAST.rate, retry=FAST.retry)
    first = FakeClient()
    await run_job(job, settings, first, clock=FakeClock(), limit=1)
    assert main(["-q", "suppress", "add", people[0], people[5], "--config", str(config)]) == 0
    second = FakeClient()
    await run_job(job, settings, second, clock=FakeClock())
    assert [g.to for g in first.calls] == [tuple(people[:4])]
    assert [g.to for g in second.calls] == [(people[4], people[6], people[7])]
    assert summarize(job.ledger).recipient_states.sent == 7


async def test_a_refused_sender_leaves_the_pool_and_its_groups_go_out_from_another(
    jobs: JobFactory,
) -> None:
    """40003 on one sender: it is retired for the job, the refused group goes out from the
    other sender under a new key, every later group too, and the run ends clean (exit 0)."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4", sender='["+18445550001", "+18445550002"]')

    def handler(g: Group, n: int) -> SendReceipt | Rejected:
        if g.message.from_ == "+18445550001":
            return refused("40003")
        return ok_receipt(g, n)

    client = FakeClient(handler)
    s = await run_job(job, replace(FAST, concurrency=1), client, clock=FakeClock())
    accepted = [g for g in client.calls if g.message.from_ == "+18445550002"]
    assert len(accepted) == 4
    assert len([g for g in client.calls if g.message.from_ == "+18445550001"]) == 1
    moved = client.calls[0].id
    assert len({k for g, k in zip(client.calls, client.keys, strict=True) if g.id == moved}) == 2
    assert s.error is None
    assert s.recipients is not None
    assert s.recipients.sent == 16
    assert run_outcome(s) == 0


async def test_every_sender_refused_stops_with_exit_6_and_nothing_failed(
    jobs: JobFactory,
) -> None:
    """When the API refuses the job's only sender (40315), the job stops at once with exit 6;
    its group is pending a rerun, nothing is failed, and a resume does not use that sender."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient(lambda g, n: refused("40315"))
    s = await run_job(job, replace(FAST, concurrency=1), client, clock=FakeClock())
    assert isinstance(s.error, AccountRefused)
    assert exit_for(s.error) == 6
    assert "every sender" in str(s.error)
    assert groups_in(job.ledger, "failed") == set()
    assert len(client.calls) == 1
    again = FakeClient()
    s2 = await run_job(job, FAST, again, clock=FakeClock())
    assert isinstance(s2.error, AccountRefused)
    assert again.calls == []


async def test_the_sandbox_reports_a_carrier_cap_in_delivery_statuses(
    jobs: JobFactory, fake_api: tuple[FakeTelnyx, str]
) -> None:
    """The fake API's report rule (``*LAST4`` → code): the recipient is accepted, then
    ``track`` reads delivery_failed with 40016 from the API and the ledger moves it, to go
    again after the carrier's reset."""
    fake, url = fake_api
    people = numbers(2)
    fake.report[f"*{people[1][-4:]}"] = "40016"
    jobs.people(2)
    job = jobs.job(extra="group_size = 2")
    async with AiohttpMmsClient(url, "test-key-123") as client:
        await run_job(job, FAST, client, clock=FakeClock())
        await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    assert dict(summarize(job.ledger).undelivered) == {}
    (rec,) = load(job.ledger).groups.values()
    assert rec.moved == (people[1],)


async def test_a_number_suppressed_after_its_group_went_out_never_regroups_it(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A group sent without a suppressed member is recorded as made without it (``remade``):
    when another member of it opts out later, a resume still finds the group it sent, and
    nobody is texted twice."""
    people = numbers(8)
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    config, settings = listed(tmp_path, people[3])
    first = FakeClient()
    await run_job(job, settings, first, clock=FakeClock(), limit=1)
    assert main(["-q", "suppress", "add", people[1], "--config", str(config)]) == 0
    second = FakeClient()
    s = await run_job(job, settings, second, clock=FakeClock())
    assert [g.to for g in first.calls] == [tuple(people[:3])]
    assert [g.to for g in second.calls] == [tuple(people[4:])]
    assert s.recipients is not None
    assert (s.recipients.valid, s.recipients.sent) == (7, 7)


async def test_an_opt_out_answer_to_a_group_in_doubt_sends_nothing_in_its_place(
    jobs: JobFactory,
) -> None:
    """A group left in doubt, resent under its key and refused 40300 for one member, stays in
    doubt (the first request may have gone out): no group is made without the member, and
    the recipients still add up."""
    people = numbers(4)
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    no_retry = replace(FAST, retry=replace(FAST.retry, retry_ambiguous=False))
    lost = FakeClient(lambda g, n: AmbiguousSendError("timeout", status=None))
    await run_job(job, no_retry, lost, clock=FakeClock())
    again = FakeClient(lambda g, n: opted_out(g, people[2]))
    await run_job(job, FAST, again, clock=FakeClock(), resend_in_doubt=True)
    assert len(again.calls) == 1
    states = summarize(job.ledger).recipient_states
    assert (states.valid, states.in_doubt) == (4, 4)


async def test_a_rerun_never_sends_from_a_sender_an_earlier_run_retired(
    jobs: JobFactory,
) -> None:
    """A sender the API refused (40003) in one run stays out of the next run's pool from its
    start: every group the rerun sends goes out from the other sender."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4", sender='["+18445550001", "+18445550002"]')

    def handler(g: Group, n: int) -> SendReceipt | Rejected:
        return refused("40003") if g.message.from_ == "+18445550001" else ok_receipt(g, n)

    await run_job(job, FAST, FakeClient(handler), clock=FakeClock(), limit=1)
    assert load(job.ledger).retired == {"+18445550001"}
    again = FakeClient()
    s = await run_job(job, FAST, again, clock=FakeClock())
    assert s.sent_groups == 3
    assert {g.message.from_ for g in again.calls} == {"+18445550002"}


async def test_a_group_moved_off_a_retired_sender_after_a_5xx_keeps_its_key(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group whose try got a 503 (which may follow a processed request) and whose sender
    is then retired goes out from the other sender under the same key, and the run, all
    sent, is not counted failed."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4", sender='["+18445550001", "+18445550002"]')

    def handler(g: Group, n: int) -> SendReceipt | SendError:
        if g.message.from_ == "+18445550001":
            if g.seq == 0:
                return ServerError("down", status=503)
            return refused("40003")
        return ok_receipt(g, n)

    retired = asyncio.Event()
    retire = Pacer.retire

    def retiring(self: Pacer, sender: str) -> int:
        left = retire(self, sender)
        retired.set()
        return left

    monkeypatch.setattr(Pacer, "retire", retiring)
    monkeypatch.setattr("tenacity.wait.random.uniform", lambda low, high: high)  # no jitter

    class UntilRetired(FakeClock):
        """A retry's backoff (1 s here; the pacer's waits are far shorter) lasts until the
        sender has been retired: the order the test is about, made certain."""

        async def sleep(self, seconds: float) -> None:
            if seconds >= 0.5:
                await retired.wait()
            await super().sleep(seconds)

    client = FakeClient(handler)
    backoff = replace(FAST.retry, attempts=3, backoff_initial=1.0, backoff_max=1.0)
    s = await run_job(
        job, replace(FAST, concurrency=2, retry=backoff), client, clock=UntilRetired()
    )
    first = client.calls[0].id
    tries = [(g.message.from_, k) for g, k in zip(client.calls, client.keys, strict=True)]
    mine = [t for g, t in zip(client.calls, tries, strict=True) if g.id == first]
    assert [sender for sender, _ in mine] == ["+18445550001", "+18445550002"]
    assert len({key for _, key in mine}) == 1
    assert s.recipients is not None
    assert s.recipients.sent == 16
    assert (s.failed_groups, s.retry_later_groups) == (0, 0)
    assert run_outcome(s) == 0


async def test_the_dry_run_follows_the_ledger_to_the_group_a_run_would_send(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """After a 40300 stopped a run before the group made without the member went out, the dry
    run counts that group to send, as the run then sends it (even with the list edited)."""
    people = numbers(4)
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    _, settings = listed(tmp_path, people[3])
    stop = Stop()

    def handler(g: Group, n: int) -> SendReceipt | SendError:
        if people[1] in g.to:
            stop.request(StopReason.SIGTERM)
            return opted_out(g, people[1])
        return ok_receipt(g, n)

    await run_job(job, settings, FakeClient(handler), clock=FakeClock(), stop=stop)
    (tmp_path / "suppressed.txt").write_text(f"{people[3]}\n")  # the 40300 line removed
    planned = await dry_run(job, settings, clock=FakeClock())
    second = FakeClient()
    await run_job(job, settings, second, clock=FakeClock())
    assert [g.to for g in second.calls] == [(people[0], people[2])]
    assert planned.sent_groups == 1


async def test_opt_outs_are_honoured_with_no_list_configured(
    jobs: JobFactory, fake_api: tuple[FakeTelnyx, str]
) -> None:
    """With no ``[suppression] file`` in the settings, a 40300 still puts the number on the
    default list (the user's data folder), and the next job makes no request for it."""
    fake, url = fake_api
    fake.name_refused_members = True  # kind fake until issue 28 part 2: the 409 names the member
    people = numbers(8)
    fake.refuse[people[5]] = "40300"
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    async with AiohttpMmsClient(url, "test-key-123") as client:
        await run_job(job, FAST, client, clock=FakeClock())
        before = len(fake.requests)
        tomorrow = replace(job, name="tomorrow", ledger=jobs.root / "tomorrow.jsonl")
        s = await run_job(tomorrow, FAST, client, clock=FakeClock())
    assert people[5] in default_list().read_text()
    assert people[5] not in [p for r in fake.requests[before:] for p in r["to"]]
    assert (s.rejected_rows, s.suppressed_rows) == (0, 1)


async def test_an_opt_out_in_a_403_is_judged_by_its_code_not_taken_for_a_bad_key(
    jobs: JobFactory,
) -> None:
    """A server that answers an opt-out with HTTP 403 and code 40300: the member is refused and
    the rest sent, not the whole job stopped as if the key were refused."""
    people = numbers(4)
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")

    def handler(g: Group, n: int) -> SendReceipt | SendError:
        if people[0] in g.to:
            err = opted_out(g, people[0])
            return AuthError("forbidden", status=403, errors=err.errors)
        return ok_receipt(g, n)

    client = FakeClient(handler)
    s = await run_job(job, FAST, client, clock=FakeClock())
    assert s.error is None
    assert [g.to for g in client.calls][-1] == tuple(people[1:])
    assert s.recipients is not None
    assert (s.recipients.sent, s.recipients.failed) == (3, 1)


async def test_the_dry_run_says_when_every_sender_was_refused(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the API refused the job's only sender, the dry run names it and says a run
    would exit 6, instead of promising groups a run will not send."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    await run_job(job, FAST, FakeClient(lambda g, n: refused("40003")), clock=FakeClock())
    planned = await dry_run(job, FAST, clock=FakeClock())
    assert planned.retired == ("+18445550001",)
    print_dry_run(planned, job, FAST)
    assert "none left: a run now exits 6" in capsys.readouterr().out


async def test_the_dry_runs_estimate_prices_a_recipient_as_its_max_cost_line_does(
    jobs: JobFactory,
) -> None:
    """With [pricing] per_recipient set and a ledger that paid another price, the dry run's
    cost estimate counts at [pricing] (as a run's max_cost does, and the dry run's max_cost
    line), not at the ledger's average; without [pricing], at the ledger's average."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4")
    paid = replace(FAST, concurrency=1, price_per_recipient=Decimal("0.0051"))
    await run_job(job, paid, FakeClient(), clock=FakeClock(), limit=2)
    observed = paid_per_recipient(load(job.ledger), "USD")
    assert observed is not None
    assert observed.amount != Decimal("0.0100")
    priced = await dry_run(job, replace(paid, price_per_recipient=Decimal("0.0100")))
    assert priced.estimate is not None
    assert priced.estimate.cost == Money(Decimal("0.0800"), "USD")  # 8 left at 0.0100
    assert priced.estimate.price_basis == "[pricing] per_recipient"
    unpriced = await dry_run(job, replace(paid, price_per_recipient=None))
    assert unpriced.estimate is not None
    assert unpriced.estimate.cost == Money(observed.amount * 8, "USD")


async def test_a_ledger_paid_in_another_currency_gives_no_price_in_the_settings_one(
    jobs: JobFactory,
) -> None:
    """A ledger whose sends cost EUR, [pricing] currency USD and no per_recipient: the dry
    run has no price (never the EUR average taken for dollars), and max_cost's paid count
    adds no EUR amount to the USD one; under EUR, the average is the price."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4")

    def euros(g: Group, n: int) -> SendReceipt:
        return replace(ok_receipt(g, n), cost=Money(Decimal("0.08"), "EUR"))

    await run_job(job, replace(FAST, concurrency=1), FakeClient(euros), clock=FakeClock(), limit=2)
    view = load(job.ledger)
    assert paid_per_recipient(view, "USD") is None
    assert max_cost_counts(FAST, view) == (None, Decimal(0))
    dollars = await dry_run(job, FAST)
    assert dollars.estimate is not None
    assert (dollars.estimate.cost, dollars.estimate.counted) == (None, None)
    assert paid_per_recipient(view, "EUR") == Money(Decimal("0.02"), "EUR")
    euro = await dry_run(job, replace(FAST, currency="EUR"))
    assert euro.estimate is not None
    assert euro.estimate.cost == Money(Decimal("0.16"), "EUR")  # 8 left at 0.02


async def test_a_sender_not_on_the_account_is_retired_when_the_settings_say_so(
    jobs: JobFactory, fake_api: tuple[FakeTelnyx, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither the spec nor FACTS names 40305, so by default it fails the group like any
    refusal; with ``[errors] 40305 = "retire_sender"`` a sender the API refuses as not on the
    account (the fake's 400 / 40305) leaves the pool, every group goes out from the other
    sender, exit 0, and the run's summary names the sender refused."""
    fake, url = fake_api
    fake.numbers = frozenset({"+18445550002"})
    jobs.people(8)
    job = jobs.job(extra="group_size = 4", sender='["+18445550001", "+18445550002"]')
    policy = {**FAST.error_policy, "40305": Action.RETIRE_SENDER}
    settings = replace(FAST, concurrency=1, error_policy=policy)
    async with AiohttpMmsClient(url, "test-key-123") as client:
        s = await run_job(job, settings, client, clock=FakeClock())
    assert (s.error, run_outcome(s)) == (None, 0)
    assert "refused 1 sender (+18445550001)" in capsys.readouterr().out
    assert {m.from_ for m in fake.accepted} == {"+18445550002"}
    assert fake.recipient_counts() == dict.fromkeys(numbers(8), 1)
    assert s.retired == ("+18445550001",)
    assert load(job.ledger).retired == {"+18445550001"}
