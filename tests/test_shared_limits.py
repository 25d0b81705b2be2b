"""Limits shared by every process that sends for one account, checked at the fake server:
the account rate through a commit stall and through hosts paused, killed and cut off, the
daily cap and the spend ceiling across processes and jobs (and through the same chaos), a
sender's pause one host meets kept by every host, and a send of unknown cost counted at the
configured price."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from msgspec.structs import replace
from structlog.testing import capture_logs

from bulk_mms import runner
from bulk_mms.caps import (
    SPENT,
    UNDECIDED,
    UNSENT,
    DailyCap,
    FileTally,
    MemoryTally,
    SpendCeiling,
    Tally,
    max_cost_counts,
)
from bulk_mms.client import AiohttpMmsClient
from bulk_mms.clock import SystemClock
from bulk_mms.config import JobConfig, Settings
from bulk_mms.console import exit_for
from bulk_mms.coordination import Fence
from bulk_mms.errors import (
    AmbiguousSendError,
    AuthError,
    ConfigError,
    LedgerError,
    LedgerUnavailable,
    LimitReached,
    MaxCostReached,
    Rejected,
    ServerError,
)
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.ledger import load
from bulk_mms.ledger.events import Event
from bulk_mms.ledger.fold import IN_DOUBT
from bulk_mms.ledger.jsonl import JsonlStore
from bulk_mms.ledger.pgbudget import PostgresBudget, PostgresTally
from bulk_mms.ledger.pgschema import migrate_url
from bulk_mms.ledger.postgres import PostgresCoordinator, PostgresStore
from bulk_mms.leftover import Leftover
from bulk_mms.models import Group, MessageBody, Money, SendReceipt, parse_money
from bulk_mms.pacing import PaceAborted, Pacer, PacingConfig
from bulk_mms.prepare import dry_run
from bulk_mms.report import format_text, summarize
from bulk_mms.runner import run_job
from bulk_mms.stopping import stop_reason
from bulk_mms.summary import JobSummary
from bulk_mms.testing import ledger_events, ok_receipt
from bulk_mms.words import BY_KIND, MAX_COST, why_words
from tests.conftest import (
    FAST,
    FakeClient,
    FakeClock,
    JobFactory,
    held_for,
    live_claims,
    numbers,
    query,
    wait_for,
    waits_on_a_lock,
)
from tests.test_pg_faults import _config, _count, _locked, _stopped, _terminate, two_hosts
from tests.test_postgres import KEY, age_claims, run_cli
from tests.threaded import fake_api_thread


def busiest_second(times: list[float]) -> int:
    """The most accepts in any one-second window [t, t + 1) of the server's log."""
    return max(sum(1 for u in times if t <= u < t + 1.0) for t in times)


@pytest.mark.slow
def test_a_commit_stall_never_puts_more_than_the_rate_into_a_second(
    jobs: JobFactory, database: str
) -> None:
    """Three real `bulk-mms run` processes at rate 10 on one PostgreSQL ledger, the events
    table locked for 3 s mid-run (every write-ahead commit stalls while admissions go on): no
    one-second window at the server holds more than rate + 1 groups, and all are sent once."""
    fake = FakeTelnyx(api_key=KEY)
    jobs.people(90)
    job = jobs.job(extra="group_size = 1")
    config = jobs.root / "config.toml"
    config.write_text("[limits]\nrate = 10\nconcurrency = 4\n")
    where = f"{database}?ledger=stall"
    with fake_api_thread(fake) as url:
        procs = [run_cli(job.path, url, config, where) for _ in range(3)]
        wait_for("sending to start", lambda: len(fake.accept_log) >= 15)
        with psycopg.connect(database) as conn:  # the lock is held until this commits
            conn.execute("LOCK TABLE bulk_mms_events IN EXCLUSIVE MODE")
            locked = time.monotonic()
            wait_for(
                "a commit stalled", lambda: any(waits_on_a_lock(database, p.pid) for p in procs)
            )
            held_for(3.0, locked)
        outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1].decode()[-400:] for o in outs]
    counts = fake.recipient_counts()
    assert sorted(counts) == numbers(90)
    assert max(counts.values()) == 1
    assert busiest_second([t for t, _, _ in fake.accept_log]) <= 11


def group(i: int, size: int = 2) -> Group:
    """A group of ``size`` made-up recipients, its id ``g<i>``."""
    to = tuple(numbers(size, start=i * size))
    return Group(f"g{i}", i, to, tuple(range(size)), MessageBody("+18445550001", "hi"))


async def test_concurrent_reservations_in_a_ledger_folder_never_pass_the_cap(
    tmp_path: Path,
) -> None:
    """Forty groups of 2 race for a cap of 50 through four tallies on one folder (the file
    lock): exactly 25 get room, and the count stands at 50."""
    tallies = [FileTally(tmp_path) for _ in range(4)]
    caps = [DailyCap(50, 0, "00:00 UTC", account="acme", tally=t) for t in tallies]
    results = await asyncio.gather(*(caps[i % 4].reserve(group(i)) for i in range(40)))
    assert sum(r is None for r in results) == 25
    assert all(isinstance(r, LimitReached) for r in results if r is not None)
    # one more recipient is refused, and says the count stands at 50
    one = ("other", "g1")
    assert await tallies[0].take("daily-acme", Decimal(1), Decimal(50), Decimal(0), one) == 50


async def test_a_send_that_never_happened_gives_its_room_back_and_one_in_doubt_keeps_it(
    tmp_path: Path,
) -> None:
    """A cap of 4: a group never sent frees its 2; a group in doubt keeps its 2 counted, as
    does one sent; so after one of each only the freed room is left."""
    cap = DailyCap(6, 0, "00:00 UTC", account="acme", tally=FileTally(tmp_path))
    sent, unsent, doubt, late = group(1), group(2), group(3), group(4)
    for g in (sent, unsent, doubt):
        assert await cap.reserve(g) is None
    assert isinstance(await cap.reserve(late), LimitReached)
    await cap.settle(sent, ok_receipt(sent))
    await cap.settle(unsent, None)
    await cap.settle(doubt, None, maybe_sent=True)
    assert await cap.reserve(late) is None
    assert isinstance(await cap.reserve(group(5)), LimitReached)


async def test_a_send_counts_at_its_price_or_its_answers_cost_whichever_is_more() -> None:
    """max_cost 0.075 at 0.01 a recipient: a send the API left without a cost stays counted
    at the price (never free), and so does one whose answer said 0.004 (the POST's cost is an
    estimate: the final one adds carrier fees); one that said 0.03 counts 0.03."""
    ceiling = SpendCeiling(Decimal("0.075"), Decimal(0), Money(Decimal("0.01"), "USD"))
    unknown, cheap, dear = group(1), group(2), group(3)
    assert await ceiling.reserve(unknown) is None
    await ceiling.settle(unknown, replace(ok_receipt(unknown), cost=None))
    assert await ceiling.reserve(cheap) is None
    await ceiling.settle(cheap, replace(ok_receipt(cheap), cost=Money(Decimal("0.004"), "USD")))
    assert await ceiling.reserve(dear) is None
    await ceiling.settle(dear, replace(ok_receipt(dear), cost=Money(Decimal("0.03"), "USD")))
    # 0.02 + 0.02 + 0.03 spent: no room for another group of 2
    assert isinstance(await ceiling.reserve(group(4)), LimitReached)


def run_and_dry_run(
    job: JobConfig, settings: Settings, client: FakeClient
) -> list[Callable[[], Coroutine[Any, Any, JobSummary]]]:
    """A run of ``job`` and its dry run, each begun when called: what a refusal must stop."""
    return [
        lambda: run_job(job, settings, client, clock=FakeClock()),
        lambda: dry_run(job, settings),
    ]


async def test_max_cost_without_a_price_is_refused_naming_the_job_file(jobs: JobFactory) -> None:
    """max_cost with no [pricing] per_recipient and a ledger that has paid nothing: a run and
    its dry run are refused before sending, in one line naming the job file and max_cost."""
    jobs.people(4)
    job = jobs.job(extra='max_cost = "1.00"')
    client = FakeClient()
    for attempt in run_and_dry_run(job, FAST, client):
        with pytest.raises(ConfigError) as info:
            await attempt()
        assert str(info.value).startswith(f"{job.path}: max_cost: needs a price to keep to: ")
    assert client.sent_numbers() == []


async def test_a_send_whose_answer_costs_another_currency_blocks_the_ceiling() -> None:
    """max_cost counted in USD ([pricing] currency): a send whose answer gave its cost in EUR
    is counted at the USD price (its 0.50 EUR never added as dollars, never free), and no
    further send starts under the ceiling, which refuses naming both currencies."""
    ceiling = SpendCeiling(Decimal("1.00"), Decimal(0), Money(Decimal("0.01"), "USD"))
    euro = group(1)
    assert await ceiling.reserve(euro) is None
    await ceiling.settle(euro, replace(ok_receipt(euro), cost=Money(Decimal("0.50"), "EUR")))
    probe = ("probe", "p")  # refused at a cap of 0: the count as it stands
    assert await ceiling.tally.take("spend", Decimal(0), Decimal(0), Decimal(0), probe) == (
        Decimal("0.02")
    )
    refused = await ceiling.reserve(group(2))
    assert isinstance(refused, MaxCostReached)
    assert str(refused).startswith(
        "a send's answer gave its cost in EUR, not USD ([pricing] currency), which max_cost "
        "1.00 USD is counted in: "
    )


async def run_in_euros(jobs: JobFactory) -> tuple[JobConfig, Settings, FakeClient, JobSummary]:
    """A run of the job's people in groups of 4, max_cost in USD far off, every answer's cost
    in EUR: the job, its settings, the client and the run's summary."""
    job = jobs.job(extra='group_size = 4\nmax_cost = "100.00"')
    settings = replace(FAST, concurrency=1, price_per_recipient=Decimal("0.0051"))

    def euros(g: Group, n: int) -> SendReceipt:
        return replace(ok_receipt(g, n), cost=Money(Decimal("0.02"), "EUR"))

    client = FakeClient(euros)
    return job, settings, client, await run_job(job, settings, client, clock=FakeClock())


async def test_a_run_whose_answers_cost_another_currency_stops_and_the_next_is_refused(
    jobs: JobFactory,
) -> None:
    """Every answer's cost in EUR, [pricing] currency USD, max_cost far off: the run sends the
    first group and stops there (exit 5), saying why; a rerun and its dry run are refused
    before sending (exit 2, naming the job file, max_cost and both currencies)."""
    jobs.people(16)
    job, settings, client, s = await run_in_euros(jobs)
    assert isinstance(s.error, MaxCostReached)
    assert (exit_for(s.error), len(client.sent_numbers())) == (5, 4)
    assert "cost in EUR, not USD ([pricing] currency)" in str(s.error)
    for again in run_and_dry_run(job, settings, client):
        with pytest.raises(ConfigError) as info:
            await again()
        assert str(info.value).startswith(
            f"{job.path}: max_cost: this ledger's sends cost in EUR, not USD ([pricing] "
            "currency), which max_cost is counted in: "
        )
    assert len(client.sent_numbers()) == 4


async def test_a_run_counts_null_cost_sends_at_the_configured_price_against_max_cost(
    jobs: JobFactory,
) -> None:
    """The API leaves every cost null; max_cost 0.05 at [pricing] 0.0051 covers two groups
    of 4 (0.0408) but not a third: the run sends two and stops with exit 5 (before, a null
    cost freed its reservation and max_cost never stopped anything)."""
    jobs.people(16)
    job = jobs.job(extra='group_size = 4\nmax_cost = "0.05"')
    settings = replace(FAST, concurrency=1, price_per_recipient=Decimal("0.0051"))

    def no_cost(g: Group, n: int) -> SendReceipt:
        return replace(ok_receipt(g, n), cost=None)

    client = FakeClient(no_cost)
    s = await run_job(job, settings, client, clock=FakeClock())
    assert isinstance(s.error, LimitReached)
    assert exit_for(s.error) == 5
    assert len(client.sent_numbers()) == 8


async def test_a_max_cost_stop_is_reported_as_needing_max_cost_raised(jobs: JobFactory) -> None:
    """max_cost met after two groups of four: the refused group is recorded MaxCostReached, and
    the report says a rerun with max_cost raised sends the rest (not "a plain rerun", which
    would stop there again); the rerun with it raised sends the eight left, each number once."""
    jobs.people(16)
    job = jobs.job(extra='group_size = 4\nmax_cost = "0.05"')
    settings = replace(FAST, concurrency=1, price_per_recipient=Decimal("0.0051"))
    client = FakeClient()
    s = await run_job(job, settings, client, clock=FakeClock())
    assert isinstance(s.error, MaxCostReached)
    assert exit_for(s.error) == 5
    text = format_text(summarize(job.ledger), job.ledger)
    assert "retry pending         1           4  (a rerun with max_cost raised sends them)" in text
    assert "(not sent yet: a rerun with max_cost raised sends them)" in text
    assert f"retry pending 1 group, 4 recipients: {BY_KIND[MAX_COST]}" in text
    assert "plain rerun" not in text
    raised = jobs.job(extra='group_size = 4\nmax_cost = "1.00"')
    again = await run_job(raised, settings, client, clock=FakeClock())
    assert again.error is None
    assert sorted(client.sent_numbers()) == sorted(numbers(16))
    assert "plain rerun" not in format_text(summarize(job.ledger), job.ledger)


async def test_a_max_cost_stop_is_a_limit_s_in_the_log_and_the_json_report(
    jobs: JobFactory,
) -> None:
    """max_cost met: the run logs its stop as a cap's (job.cap_refused, never the endpoint's
    nor --limit's), and the JSON report says max_cost_reached, which a plain rerun would meet."""
    jobs.people(16)
    job = jobs.job(extra='group_size = 4\nmax_cost = "0.05"')
    settings = replace(FAST, concurrency=1, price_per_recipient=Decimal("0.0051"))
    with capture_logs() as logs:
        s = await run_job(job, settings, FakeClient(), clock=FakeClock())
    refused = [e["event"] for e in logs if str(e["event"]).endswith("_refused")]
    assert (s.stopped, stop_reason(MaxCostReached("m", status=None)), refused) == (
        "cap",
        "cap",
        ["job.cap_refused"],
    )
    assert summarize(job.ledger).as_dict()["max_cost_reached"] is True


async def test_a_run_stopped_by_a_failed_attempt_write_gives_its_room_back(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger refuses the third group's write-ahead attempt (disk full): the run stops
    for the ledger, and the day's count holds exactly the recipients sent, nothing held (the
    refused group's room, whose request never left, used to stay counted)."""
    jobs.people(10)
    job = jobs.job(extra="group_size = 2")
    settings = replace(FAST, concurrency=1, daily_recipients=100)
    write = JsonlStore._write_lines
    attempts = iter(range(1000))

    def full(self: JsonlStore, lines: list[bytes]) -> None:
        if any(b'"attempt"' in line for line in lines) and next(attempts) == 2:
            raise LedgerError(self.name, "cannot write: disk full")
        write(self, lines)

    monkeypatch.setattr(JsonlStore, "_write_lines", full)
    client = FakeClient()
    s = await run_job(job, settings, client, clock=FakeClock())
    assert isinstance(s.error, LedgerError)
    assert s.stopped == "ledger"
    (count,) = job.ledger.parent.glob(".bulk-mms-daily-*.json")
    assert orjson.loads(count.read_bytes()) == {"used": "4", "held": []}
    assert len(client.sent_numbers()) == 4


async def test_a_jsonl_run_gives_back_the_room_a_killed_run_held_for_groups_never_sent(
    jobs: JobFactory,
) -> None:
    """A run killed after sending 6 of 10 recipients under a daily cap of 10 left held in the
    day's count a sent group (counted) and a group it never sent (2 more): the next run keeps
    the first counted, gives the second back, and sends the last 4, reaching the cap."""
    jobs.people(10)
    job = jobs.job(extra="group_size = 2")
    one = replace(FAST, concurrency=1)
    first = await run_job(job, replace(one, daily_recipients=6), FakeClient(), clock=FakeClock())
    assert isinstance(first.error, LimitReached)
    (count,) = job.ledger.parent.glob(".bulk-mms-daily-*.json")
    sent = next(rec.id for rec in load(job.ledger).sent_groups())
    held = [[job.ledger.name, sent, "2"], [job.ledger.name, "never-sent", "2"]]
    count.write_bytes(orjson.dumps({"used": "8", "held": held}))  # as the kill left it
    client = FakeClient()
    rerun = await run_job(job, replace(one, daily_recipients=10), client, clock=FakeClock())
    assert rerun.error is None
    assert len(client.sent_numbers()) == 4
    assert orjson.loads(count.read_bytes()) == {"used": "10", "held": []}


async def test_two_jobs_in_one_ledger_folder_share_the_daily_cap_as_they_run(
    jobs: JobFactory,
) -> None:
    """Two jobs with JSONL ledgers in one folder, run at once, eight recipients each, cap
    10: together they send at most 10 (each used to count only what was sent at its start,
    and sent 16), and one of them stops at the cap."""
    day = dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.UTC)
    settings = replace(FAST, concurrency=2, daily_recipients=10)
    jobs.csv([{"phone": p, "first": "A"} for p in numbers(8)], name="a.csv")
    jobs.csv([{"phone": p, "first": "B"} for p in numbers(8, start=100)], name="b.csv")
    first = jobs.job("a.csv", extra="group_size = 1", name="first")
    second = jobs.job("b.csv", extra="group_size = 1", name="second")
    assert first.ledger.parent == second.ledger.parent
    clients = [FakeClient(), FakeClient()]
    # a scan first, alone: the number patterns' cache is filled once, before the two race
    await dry_run(first, settings, clock=FakeClock(wall=day.timestamp()))
    summaries = await asyncio.gather(
        *(
            run_job(job, settings, client, clock=FakeClock(wall=day.timestamp()))
            for job, client in zip((first, second), clients, strict=True)
        )
    )
    sent = sum(len(c.sent_numbers()) for c in clients)
    assert sent <= 10
    assert any(isinstance(s.error, LimitReached) for s in summaries)
    assert sum(summarize(j.ledger).sent_recipients for j in (first, second)) == sent


def _day_count(job: JobConfig) -> dict[str, Any]:
    """The day's count file beside ``job``'s ledger (its only one), as written."""
    (count,) = job.ledger.parent.glob(".bulk-mms-daily-*.json")
    return dict(orjson.loads(count.read_bytes()))


@pytest.mark.parametrize("status", [301, 302, 303])
async def test_a_redirect_that_leaves_the_group_in_doubt_keeps_its_room(
    fake_api: tuple[FakeTelnyx, str], jobs: JobFactory, status: int
) -> None:
    """A 301/302/303 to the POST stops the job with the group in doubt (the server may have
    processed it): its 4 recipients stay counted in the day's count, held by the group, as
    any group in doubt's are (they used to be given back, and a cap could then be passed)."""
    fake, url = fake_api
    fake.faults.append(Fault("redirect", status))
    jobs.people(16)
    job = jobs.job(extra="group_size = 4")
    settings = replace(FAST, concurrency=1, daily_recipients=100)
    async with AiohttpMmsClient(url, "test-key-123", request_timeout=5.0) as client:
        s = await run_job(job, settings, client, clock=FakeClock())
    assert (s.in_doubt_groups, s.sent_groups) == (1, 0)
    (doubt,) = (rec.id for rec in load(job.ledger).groups.values() if rec.state == IN_DOUBT)
    assert _day_count(job) == {"used": "4", "held": [[job.ledger.name, doubt, "4"]]}


async def test_a_redirect_whose_outcome_cannot_be_written_keeps_the_groups_room(
    fake_api: tuple[FakeTelnyx, str], jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 302 to the POST, and the ledger then refuses the group's in_doubt event (disk full):
    its attempt is left open (in doubt), and its 4 recipients stay counted in the day's count
    (they used to be given back)."""
    fake, url = fake_api
    fake.faults.append(Fault("redirect", 302))
    write = JsonlStore._write_lines

    def full(self: JsonlStore, lines: list[bytes]) -> None:
        if any(b'"in_doubt"' in line for line in lines):
            raise LedgerError(self.name, "cannot write: disk full")
        write(self, lines)

    monkeypatch.setattr(JsonlStore, "_write_lines", full)
    jobs.people(16)
    job = jobs.job(extra="group_size = 4")
    settings = replace(FAST, concurrency=1, daily_recipients=100)
    async with AiohttpMmsClient(url, "test-key-123", request_timeout=5.0) as client:
        s = await run_job(job, settings, client, clock=FakeClock())
    assert (s.stopped, s.sent_groups) == ("endpoint", 0)  # the first stop's reason
    assert not [e for e in ledger_events(job.ledger) if e["event"] == "in_doubt"]
    (doubt,) = (rec.id for rec in load(job.ledger).groups.values() if rec.state == IN_DOUBT)
    assert _day_count(job) == {"used": "4", "held": [[job.ledger.name, doubt, "4"]]}


async def test_a_group_in_doubt_whose_resend_fails_keeps_the_room_its_first_run_held(
    jobs: JobFactory,
) -> None:
    """A group left in doubt by a run holds its 4 in the day's count; resent by the next run
    (--resend-in-doubt) into 503s until its retries run out, it stays in doubt, and so does
    its room: the resend's reservation is that same room (one per group), so giving it back
    would free the room of a send that may have happened."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    settings = replace(
        FAST, concurrency=1, daily_recipients=100, retry=replace(FAST.retry, retry_ambiguous=False)
    )

    def first_dropped(g: Group, n: int) -> SendReceipt | AmbiguousSendError:
        return AmbiguousSendError("dropped") if g.seq == 0 else ok_receipt(g, n)

    await run_job(job, settings, FakeClient(first_dropped), clock=FakeClock())
    (doubt,) = (rec.id for rec in load(job.ledger).groups.values() if rec.state == IN_DOUBT)
    kept = {"used": "8", "held": [[job.ledger.name, doubt, "4"]]}
    assert _day_count(job) == kept
    down = FakeClient(lambda g, n: ServerError("down", status=503))
    s = await run_job(job, settings, down, clock=FakeClock(), resend_in_doubt=True)
    assert (len(down.calls), s.in_doubt_groups) == (3, 1)
    assert _day_count(job) == kept


async def test_tallies_in_one_database_never_pass_the_cap(database: str) -> None:
    """Three processes' tallies (each its own connection) race sixty groups of 2 for a cap
    of 80 in one database: exactly 40 get room; releases give room back."""
    where = f"{database}?ledger=tally"
    from bulk_mms.ledger.pgschema import migrate_url  # noqa: PLC0415

    migrate_url(where)
    tallies: list[Tally] = [PostgresTally(where) for _ in range(3)]
    caps = [DailyCap(80, 0, "00:00 UTC", account="acme", tally=t) for t in tallies]
    try:
        results = await asyncio.gather(*(caps[i % 3].reserve(group(i)) for i in range(60)))
        assert sum(r is None for r in results) == 40
        held = next(i for i, r in enumerate(results) if r is None)
        await caps[held % 3].settle(group(held), None)  # never sent: its 2 go back
        assert await caps[0].reserve(group(99)) is None
        assert isinstance(await caps[1].reserve(group(98)), LimitReached)
    finally:
        for t in tallies:
            await t.close()


@pytest.fixture(params=["memory", "file", "database"])
async def tally(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Tally]:
    """Each kind of tally: in memory, in a ledger folder's files, in a database."""
    made: Tally
    if request.param == "memory":
        made = MemoryTally()
    elif request.param == "file":
        made = FileTally(tmp_path)
    else:
        where = f"{request.getfixturevalue('database')}?ledger=held"
        migrate_url(where)
        made = PostgresTally(where)
    try:
        yield made
    finally:
        await made.close()


async def test_a_groups_reservation_repeated_or_released_again_counts_once(tally: Tally) -> None:
    """A cap of 5: g1 takes 2, and taking it again (a lost commit's repeat, a takeover) adds
    nothing; released twice, its 2 come back once (g2's 3 stay), so 2 fit and 3 do not."""
    key, cap, zero = "daily-acme", Decimal(5), Decimal(0)
    assert await tally.take(key, Decimal(2), cap, zero, ("job", "g1")) is None
    assert await tally.take(key, Decimal(2), cap, zero, ("job", "g1")) is None
    assert await tally.take(key, Decimal(3), cap, zero, ("job", "g2")) is None
    assert await tally.held("job") == [(key, "g1"), (key, "g2")]
    await tally.release(key, ("job", "g1"))
    await tally.release(key, ("job", "g1"))
    assert await tally.held("job") == [(key, "g2")]
    assert await tally.take(key, Decimal(3), cap, zero, ("job", "g3")) == 3
    assert await tally.take(key, Decimal(2), cap, zero, ("job", "g3")) is None


async def test_a_host_taking_a_group_over_reuses_the_room_it_holds(tally: Tally) -> None:
    """Room for two groups of 2: a host reserves g1 and dies; another that takes g1 over
    reserves it within that same room, so g2 still fits and g3 does not; g1 sent at 0.03
    stays counted at 0.03 and is held no more."""
    price = Money(Decimal("0.01"), "USD")
    dead, alive = (
        SpendCeiling(Decimal("0.05"), Decimal(0), price, tally, "spend-j", ledger="j")
        for _ in range(2)
    )
    assert await dead.reserve(group(1)) is None  # then killed: never settled
    assert await alive.reserve(group(1)) is None
    assert await alive.reserve(group(2)) is None
    assert isinstance(await alive.reserve(group(3)), LimitReached)
    g1 = group(1)
    await alive.settle(g1, replace(ok_receipt(g1), cost=Money(Decimal("0.03"), "USD")))
    assert await tally.held("j") == [("spend-j", "g2")]
    assert await tally.take(
        "spend-j", Decimal("0.01"), Decimal("0.05"), Decimal(0), ("j", "x")
    ) == Decimal("0.05")


async def test_a_run_reconciles_the_room_a_killed_run_held_by_what_its_groups_became(
    tally: Tally,
) -> None:
    """A killed run held room for four groups of 2 of a cap of 10: one the ledger shows
    sent stays counted, one ended unsent and one never attempted are given back, one in
    doubt stays held; another job's group is not looked at. So 4 more fit, not 5."""
    killed = DailyCap(10, 0, "00:00 UTC", account="acme", tally=tally, ledger="j")
    for i in range(4):
        assert await killed.reserve(group(i)) is None
    other = DailyCap(10, 0, "00:00 UTC", account="acme", tally=tally, ledger="k")
    assert await other.reserve(group(9)) is None
    became = {"g0": SPENT, "g1": UNSENT, "g2": UNSENT, "g3": UNDECIDED}
    asked: list[str] = []

    async def decide(gid: str) -> str:
        asked.append(gid)
        return became[gid]

    rerun = DailyCap(10, 0, "00:00 UTC", account="acme", tally=tally, ledger="j")
    await rerun.reconcile(decide)
    assert sorted(asked) == ["g0", "g1", "g2", "g3"]
    assert await tally.held("j") == [("daily-acme", "g3")]
    assert await rerun.reserve(group(5, size=4)) is None
    assert isinstance(await rerun.reserve(group(6, size=1)), LimitReached)


async def test_a_run_reconciling_past_its_lease_gives_back_none_of_a_takers_room(
    database: str,
) -> None:
    """A run reconciling a killed run's room decides a group never attempted (unsent) under
    its claim, then is paused past its lease while another process takes the group over and
    reserves it in that room: woken, it gives nothing back, so the taker's send stays
    counted."""
    where = f"{database}?ledger=j"
    async with two_hosts(where) as (_, _, rerunning, taking):
        tallies = [PostgresTally(where) for _ in range(3)]
        killed, rerun, taker = (
            DailyCap(10, 0, "00:00 UTC", account="acme", tally=t, ledger="j") for t in tallies
        )
        assert await killed.reserve(group(1)) is None  # then killed: never settled

        async def decide(gid: str) -> str:
            assert await rerunning.claim(gid)
            age_claims(database, 31)  # then paused past its lease
            assert await taking.claim(gid)
            assert await taker.reserve(group(1), taking.fence(gid)) is None  # in that room
            return UNSENT

        try:
            await rerun.reconcile(decide, rerunning.fence)
            assert await tallies[0].held("j") == [("daily-acme", "g1")]
            await taker.settle(group(1), ok_receipt(group(1)))
            assert _counted(database) == 2
        finally:
            for t in tallies:
                await t.close()


@pytest.mark.slow
def test_three_processes_on_one_database_keep_one_daily_cap(
    jobs: JobFactory, database: str
) -> None:
    """Three real `bulk-mms run` processes on one PostgreSQL ledger, 120 recipients, [limits]
    daily_recipients = 80: the server accepts at most 80 recipients, each once, and a process
    that met the cap exits 5 (resumable tomorrow)."""
    fake = FakeTelnyx(api_key=KEY)
    jobs.people(120)
    job = jobs.job(extra="group_size = 2")
    config = jobs.root / "config.toml"
    config.write_text("[limits]\nrate = 40\nconcurrency = 3\ndaily_recipients = 80\n")
    where = f"{database}?ledger=capped"
    with fake_api_thread(fake) as url:
        procs = [run_cli(job.path, url, config, where) for _ in range(3)]
        outs = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    assert set(codes) <= {0, 5}, [o[1].decode()[-400:] for o in outs]
    assert 5 in codes
    counts = fake.recipient_counts()
    assert sum(counts.values()) <= 80
    assert max(counts.values()) == 1
    assert summarize(where).sent_recipients == sum(counts.values())


class _Arrivals(list[Any]):
    """The fake's log of POST bodies (:attr:`FakeTelnyx.requests`), each arrival stamped on
    its clock (:attr:`times`), and which arrivals took a scripted fault (:attr:`faulted`: the
    POST that arrives while one is queued takes it)."""

    def __init__(self, fake: FakeTelnyx) -> None:
        super().__init__()
        self.fake = fake
        self.times: list[float] = []
        self.faulted: list[int] = []

    def append(self, item: Any) -> None:
        if self.fake.faults:
            self.faulted.append(len(self))
        self.times.append(self.fake.clock())
        super().append(item)


def _hosts(job: Path, url: str, config: Path, where: str) -> list[subprocess.Popen[bytes]]:
    """Three hosts (real `bulk-mms run` processes) on one ledger."""
    return [run_cli(job, url, config, where) for _ in range(3)]


def _chaos(database: str, hosts: list[subprocess.Popen[bytes]], lease_s: float) -> None:
    """The ledger's table locked (every host's attempts wait, their room reserved and their
    admissions growing stale), meanwhile the second host killed (-9) and the first paused
    (SIGSTOP); the lock gone, the first woken three leases later and the third's sessions
    ended from the server."""
    with _locked(database, "bulk_mms_events"):
        locked = time.monotonic()
        wait_for(
            "every host's attempts waiting",
            lambda: all(waits_on_a_lock(database, h.pid) for h in hosts if h.poll() is None),
        )
        held_for(1.0, locked)  # their admissions growing stale
        hosts[1].kill()
        hosts[0].send_signal(signal.SIGSTOP)
    with _stopped(hosts[0]):  # already stopped: woken as this ends
        paused = time.monotonic()
        wait_for("its lease to run out", lambda: not live_claims(database, hosts[0].pid))
        held_for(3 * lease_s, paused)
    if hosts[2].poll() is None:
        _terminate(database, hosts[2].pid)


def _ended(hosts: list[subprocess.Popen[bytes]], codes: set[int]) -> None:
    """Every host but the killed one ended with one of ``codes``, without a traceback."""
    outs = [h.communicate(timeout=240) for h in hosts]
    assert hosts[1].returncode == -signal.SIGKILL
    for host, (_, err) in zip(hosts, outs, strict=True):
        assert b"Traceback" not in err
        if host is not hosts[1]:
            assert host.returncode in codes, err.decode()[-400:]


def _through_chaos(
    fake: FakeTelnyx, job: Path, config: Path, database: str, *, sent: int, codes: set[int]
) -> tuple[int, str]:
    """Three hosts on the job (lease 2 s in ``config``) and ``fake``, through :func:`_chaos`
    once ``sent`` groups are sent; each host left ends with one of ``codes``
    (:func:`_ended`), and then a rerun: its exit code and the end of what it wrote."""
    where = f"{database}?ledger=chaos"
    with fake_api_thread(fake) as url:
        hosts = _hosts(job, url, config, where)
        wait_for("sending to start", lambda: _count(database, "sent") >= sent)
        _chaos(database, hosts, 2)
        _ended(hosts, codes)
        rerun = run_cli(job, url, config, where)
        _, err = rerun.communicate(timeout=240)
    return rerun.returncode, err.decode()[-400:]


def _spending(jobs: JobFactory, max_cost: str, limits: str) -> tuple[JobConfig, Path]:
    """A job in groups of 2 under ``max_cost`` at 0.01 a recipient, and its settings:
    ``limits``, the records complete at once."""
    job = jobs.job(extra=f'group_size = 2\nmax_cost = "{max_cost}"')
    pricing = 'per_recipient = "0.01"'
    return job, _config(jobs.root, limits, api="records_lag_s = 0", pricing=pricing)


def _counted(database: str) -> Decimal:
    """The one count of the database's shared limits."""
    with psycopg.connect(database, autocommit=True) as conn:
        ((used,),) = conn.execute("SELECT used FROM bulk_mms_limits").fetchall()
    return Decimal(used)


@pytest.mark.slow
def test_hosts_paused_killed_and_cut_off_never_put_more_than_the_rate_into_a_second(
    jobs: JobFactory, database: str
) -> None:
    """Three hosts at rate 10 through a locked ledger table, a host killed (-9), one paused
    past three leases and sessions ended from the server, then a rerun: no one-second window
    of the requests' arrivals at the server holds more than 10, and everyone is sent once."""
    fake = FakeTelnyx(api_key=KEY)
    fake.requests = arrivals = _Arrivals(fake)
    jobs.people(240)
    job = jobs.job(extra="group_size = 1")
    config = _config(jobs.root, "rate = 10\nconcurrency = 4\nlease_s = 2", api="records_lag_s = 0")
    code, err = _through_chaos(fake, job.path, config, database, sent=30, codes={0, 1, 7})
    assert code == 0, err
    assert fake.recipient_counts() == dict.fromkeys(numbers(240), 1)
    assert busiest_second(arrivals.times) <= 10


@pytest.mark.slow
@pytest.mark.parametrize(
    ("limit", "unit"),
    [("daily_recipients = 200", Decimal(1)), ('max_cost = "2.00"', Decimal("0.01"))],
)
def test_hosts_paused_killed_and_cut_off_keep_one_cap(
    jobs: JobFactory, database: str, limit: str, unit: Decimal
) -> None:
    """Three hosts under a cap of 200 recipients (the daily cap; max_cost at 0.01 each),
    every answer 0.4 s late, through a locked ledger table, a host killed (-9) holding
    reservations, one paused past three leases and sessions ended from the server, then a
    rerun: the server accepts at most 200, each once; the database's count is never below
    what was accepted, and above it by at most the killed host's groups (3 of 2)."""
    fake = FakeTelnyx(api_key=KEY)
    fake.faults.extend(Fault("slow", delay=0.4) for _ in range(1000))  # requests in flight
    jobs.people(400)
    job = jobs.job(extra=f"group_size = 2\n{limit}" if "max_cost" in limit else "group_size = 2")
    limits = "" if "max_cost" in limit else f"{limit}\n"
    config = _config(
        jobs.root,
        f"{limits}rate = 5\nconcurrency = 3\nlease_s = 2",
        api="records_lag_s = 0",
        pricing='per_recipient = "0.01"',
    )
    code, err = _through_chaos(fake, job.path, config, database, sent=10, codes={1, 5, 7})
    assert code == 5, err
    counts = fake.recipient_counts()
    accepted = sum(counts.values())
    assert max(counts.values()) == 1
    assert 200 - 3 * 2 <= accepted <= 200
    assert accepted * unit <= _counted(database) <= 200 * unit


@pytest.mark.slow
def test_a_rerun_after_a_host_killed_holding_reservations_reaches_max_cost_exactly(
    jobs: JobFactory, database: str
) -> None:
    """Three hosts under max_cost 2.00 (0.01 a recipient, groups of 2); one killed (-9)
    while the ledger's table is locked, its groups' room reserved and their attempts not yet
    written. Its groups are taken over in the room they hold, or their room given back, so
    after a rerun the server has accepted exactly 200 recipients, each once, and the
    database counts exactly 2.00 (the killed host's room used to stay counted for good: the
    job ended short by its groups)."""
    fake = FakeTelnyx(api_key=KEY)
    fake.faults.extend(Fault("slow", delay=0.4) for _ in range(1000))
    jobs.people(400)
    job, config = _spending(jobs, "2.00", "rate = 5\nconcurrency = 3\nlease_s = 2")
    where = f"{database}?ledger=killed"
    with fake_api_thread(fake) as url:
        hosts = _hosts(job.path, url, config, where)
        wait_for("sending to start", lambda: _count(database, "sent") >= 10)
        with _locked(database, "bulk_mms_events"):  # every host's next attempts wait,
            wait_for(
                "their room reserved",
                lambda: all(waits_on_a_lock(database, h.pid) for h in hosts if h.poll() is None),
            )
            hosts[1].kill()
        _ended(hosts, {5})
        rerun = run_cli(job.path, url, config, where)
        _, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 5, err.decode()[-400:]
    counts = fake.recipient_counts()
    assert max(counts.values()) == 1
    assert sum(counts.values()) == 200
    assert _counted(database) == Decimal("2.00")


@pytest.mark.slow
def test_a_host_that_lost_a_claim_leaves_the_groups_room_to_its_taker(
    jobs: JobFactory, database: str
) -> None:
    """A host held after writing attempts (its account's budget row locked), paused past its
    lease while another host (another account) takes those groups over and sends them
    slowly, then woken to find its claims lost: max_cost (38 recipients of 40) is never
    passed, and the count never falls below what was accepted."""
    fake = FakeTelnyx(api_key=KEY)
    jobs.people(40)
    job, config = _spending(jobs, "0.38", 'rate = 5\nconcurrency = 2\nlease_s = 2\naccount = "a"')
    other = jobs.root / "other.toml"
    other.write_text(config.read_text().replace('account = "a"', 'account = "b"'))
    where = f"{database}?ledger=taken"
    with fake_api_thread(fake) as url, psycopg.connect(database) as budget:
        first = run_cli(job.path, url, config, where)
        wait_for("sending to start", lambda: _count(database, "sent") >= 2)
        attempts = _count(database, "attempt")
        with _locked(database, "bulk_mms_events"):  # its admissions grow stale meanwhile
            locked = time.monotonic()
            wait_for("its attempts waiting", lambda: waits_on_a_lock(database, first.pid))
            held_for(0.8, locked)
            budget.execute("SELECT FROM bulk_mms_budgets WHERE account = 'a' FOR UPDATE")
        # its attempts written, it waits to be admitted again (on the budget row)
        wait_for("its attempts written", lambda: _count(database, "attempt") > attempts)
        wait_for("it waiting to be admitted", lambda: waits_on_a_lock(database, first.pid))
        with _stopped(first):
            fake.faults.extend(Fault("slow", delay=3.0) for _ in range(100))
            wait_for("its lease to run out", lambda: not live_claims(database, first.pid))
            attempts, requests = _count(database, "attempt"), len(fake.requests)
            second = run_cli(job.path, url, other, where)
            wait_for("the takeover", lambda: _count(database, "attempt") > attempts)
            wait_for("its requests in flight", lambda: len(fake.requests) > requests)
            budget.rollback()
        outs = [p.communicate(timeout=180) for p in (first, second)]
    assert b"group.claim_lost" in outs[0][1]
    counts = fake.recipient_counts()
    assert max(counts.values()) == 1
    assert sum(counts.values()) <= 38
    assert _counted(database) >= sum(counts.values()) * Decimal("0.01")


@pytest.mark.slow
def test_a_429_one_host_meets_pauses_that_sender_on_every_host(
    jobs: JobFactory, database: str
) -> None:
    """Three hosts sending from two numbers at rate 15; one meets a 429 with Retry-After 3:
    no host's request from that number reaches the server for the next 3 s but those
    already on their way (within 0.3 s); it used to pause on the one host alone."""
    fake = FakeTelnyx(api_key=KEY)
    fake.requests = arrivals = _Arrivals(fake)
    jobs.people(300)
    job = jobs.job(extra="group_size = 1", sender='["+18445550001", "+18445550002"]')
    config = _config(jobs.root, "rate = 15\nconcurrency = 4", api="records_lag_s = 0")
    where = f"{database}?ledger=paused"
    with fake_api_thread(fake) as url:
        hosts = _hosts(job.path, url, config, where)
        wait_for("sending to start", lambda: _count(database, "sent") >= 40)
        fake.faults.append(Fault("status", 429, headers={"Retry-After": "3"}, code="10011"))
        outs = [h.communicate(timeout=240) for h in hosts]
    assert [h.returncode for h in hosts] == [0, 0, 0], [o[1].decode()[-400:] for o in outs]
    (i,) = arrivals.faulted
    at, sender = arrivals.times[i], arrivals[i]["from"]
    during = [
        t - at
        for t, body in zip(arrivals.times, arrivals, strict=True)
        if body["from"] == sender and at + 0.3 < t < at + 3.0
    ]
    assert during == []
    assert fake.recipient_counts() == dict.fromkeys(numbers(300), 1)


async def test_a_sender_another_process_paused_is_waited_out_from_the_next_admission(
    database: str,
) -> None:
    """Two processes' budgets on one account, at a rate that never waits: one pauses a sender
    for a minute (a 429); a pacer on the other, which knew of no pause, is admitted by the
    account, learns the pause on that admission, and admits nothing from that sender before
    the pause ends (a deadline 5 s away gives up)."""
    where = f"{database}?ledger=pauses"
    migrate_url(where)
    clock = SystemClock()
    sender = "+18445550001"
    pausing, other = (PostgresBudget(database, where, "acme", 1e6, clock) for _ in range(2))
    pacer = Pacer(PacingConfig(rate=1e6), [sender], clock=clock, budget=other)
    try:
        await pausing.acquire(1.0)  # learns the database's clock: its pauses are written
        pausing.pause(clock.monotonic() + 60.0, sender)
        await pausing.close()  # the pause is written through
        with pytest.raises(PaceAborted, match="deadline"):
            await pacer.acquire(sender, 1, deadline=clock.monotonic() + 5.0)
        assert other.paused_until(sender) > clock.monotonic() + 50.0
    finally:
        await other.close()


async def test_a_reset_in_the_hour_the_clocks_repeat_starts_the_day_once(
    tmp_path: Path,
) -> None:
    """daily_reset "01:30 America/Chicago" on the day the clocks go back: the day begins at
    the first 01:30, and the hour that follows, 01:00 to 01:30 again, is still that day's, so
    a cap of 4 reached after the reset refuses a group then, with its lift still ahead."""
    first = dt.datetime(2026, 11, 1, 6, 40, tzinfo=dt.UTC)  # 01:40 CDT, after the reset
    clock = FakeClock(wall=first.timestamp())
    cap = DailyCap(4, 0, "01:30 America/Chicago", tally=FileTally(tmp_path), clock=clock)
    assert await cap.reserve(group(1)) is None
    assert await cap.reserve(group(2)) is None
    clock.step_wall(30 * 60)  # 07:10 UTC: 01:10 CST, the second time round
    refused = await cap.reserve(group(3))
    assert isinstance(refused, LimitReached)
    assert refused.resumes_at == dt.datetime(2026, 11, 2, 7, 30, tzinfo=dt.UTC).timestamp()


#: Every claim run out, as a host's paused past its lease find them on the database's clock.
_RUN_OUT = "UPDATE bulk_mms_claims SET owner = '', heartbeat = '-infinity', expires = '-infinity'"


class _Lapsing(PostgresCoordinator):
    """A host's claims that it may have let go (paused past its lease) once ``lapsed``."""

    lapsed = False

    def held_for(self, group: str) -> float | None:
        return 0.0 if self.lapsed else super().held_for(group)


class _Takeover:
    """Two hosts of one job in one process on one database: the first (its coordinator
    :class:`_Lapsing`) stalls in a write of the test's choosing, while its claims run out and
    the second, the taker, takes its groups over; the taker's request waits for ``answer``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, database: str) -> None:
        self.database = database
        self.made: list[PostgresCoordinator] = []
        self.in_flight, self.answer = asyncio.Event(), asyncio.Event()
        self.taker = FakeClient(handler=self._slow)  # its records: no try of the first host's
        self.taking: list[asyncio.Task[Any]] = []
        monkeypatch.setattr(runner, "coordinator_for", self._coordinator)

    def _coordinator(self, store: PostgresStore, lease_s: float) -> PostgresCoordinator:
        self.made.append((_Lapsing if not self.made else PostgresCoordinator)(store, lease_s))
        return self.made[-1]

    async def _slow(self, group: Group, n: int) -> SendReceipt:
        self.in_flight.set()
        await self.answer.wait()
        return ok_receipt(group, n)

    def stalls(self, store: PostgresStore) -> bool:
        """Whether a write of ``store``'s is the first host's, before the takeover."""
        return store.owner == self.made[0].owner and not self.taking

    async def take_over(self, run: Coroutine[Any, Any, JobSummary]) -> None:
        """The first host's claims run out (on the database's clock, and by its own), the
        taker's ``run`` starts, and its request is out once this returns."""
        first = self.made[0]
        assert isinstance(first, _Lapsing)
        first.lapsed = True
        with psycopg.connect(self.database, autocommit=True) as conn:
            conn.execute(_RUN_OUT)
        self.taking.append(asyncio.create_task(run))
        await self.in_flight.wait()


def _two_groups_priced(jobs: JobFactory, where: str, max_cost: str) -> tuple[JobConfig, Settings]:
    """A job of two groups of 2 on the ledger ``where`` under ``max_cost``, and settings
    that send one group at a time at 0.01 a recipient."""
    jobs.people(4)
    job = jobs.job(extra=f'group_size = 2\nmax_cost = "{max_cost}"')
    settings = replace(FAST, concurrency=1, price_per_recipient=Decimal("0.01"))
    return replace(job, database=where), settings


async def test_a_ledger_fault_after_a_claim_ran_out_leaves_the_groups_room_to_its_taker(
    jobs: JobFactory, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose attempt write fails after its claim ran out leaves the room to the taker
    sending the group: max_cost (one group's room) lets nothing more out."""
    job, settings = _two_groups_priced(jobs, f"{database}?ledger=stalled", "0.02")
    hosts = _Takeover(monkeypatch, database)
    append = PostgresStore.append

    async def stalled(self: PostgresStore, event: Event, *, fence: Fence | None = None) -> None:
        if fence is None or not hosts.stalls(self):
            await append(self, event, fence=fence)
            return
        await hosts.take_over(run_job(job, settings, hosts.taker))
        raise LedgerUnavailable(self.name, "no answer in time")

    monkeypatch.setattr(PostgresStore, "append", stalled)
    stalled_host = FakeClient()
    first = await run_job(job, settings, stalled_host)
    hosts.answer.set()
    second = await hosts.taking[0]
    assert isinstance(first.error, LedgerError)
    assert stalled_host.calls == []
    assert isinstance(second.error, MaxCostReached)
    assert len(hosts.taker.sent_numbers()) == 2
    assert _counted(database) == Decimal("0.02")


async def test_a_host_woken_after_its_group_was_taken_over_and_settled_takes_no_room(
    jobs: JobFactory, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host paused past its lease before it reserved a group's room wakes once another
    took the job over, sent everyone and settled: it takes no room under its old claim
    (none would ever be settled), sends nothing, and the count is the taker's sends alone."""
    job, settings = _two_groups_priced(jobs, f"{database}?ledger=woken", "1")
    hosts = _Takeover(monkeypatch, database)
    take = PostgresTally.take

    async def paused(self: PostgresTally, *args: Any, **kwargs: Any) -> Decimal | None:
        if not hosts.taking:  # the first host's first reservation: it was paused before it
            await hosts.take_over(run_job(job, settings, hosts.taker))
            hosts.answer.set()
            await hosts.taking[0]  # the taker sent the job and settled its room
        return await take(self, *args, **kwargs)

    monkeypatch.setattr(PostgresTally, "take", paused)
    woken = FakeClient()
    first = await run_job(job, settings, woken)
    second = await hosts.taking[0]
    assert (woken.calls, first.sent_recipients) == ([], 0)
    assert (second.error, len(hosts.taker.sent_numbers())) == (None, 4)
    assert _counted(database) == Decimal("0.04")
    assert query(database, "SELECT count(*) FROM bulk_mms_reservations") == 0


@pytest.mark.parametrize("ending", ["retries_spent", "past_deadline", "never_accepted"])
async def test_a_failure_whose_write_stalls_past_a_takeover_leaves_the_takers_attempt_open(
    jobs: JobFactory, database: str, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """A host whose failure write (its retries spent on a 503, read past the job's deadline
    or not; a group in doubt the API's records show never accepted) stalls until its claim
    ran out and another host took the group over and sent it writes no failure: the group
    reads in doubt while the taker's request is out (not pending a rerun, nor expired), and
    its room stays held for the taker."""
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(hours=6)
    jobs.people(2)
    job = jobs.job(extra=f'group_size = 2\nmax_cost = "0.04"\ndeadline = "{deadline:%FT%T%z}"')
    job = replace(job, database=f"{database}?ledger=late_failure")
    once = replace(  # a key the API is not trusted to replay: a group in doubt is settled
        FAST,
        concurrency=1,
        price_per_recipient=Decimal("0.01"),
        retry=replace(FAST.retry, attempts=1, retry_ambiguous=False),
    )
    later = FakeClock(wall=time.time() + 5 * 3600.0)  # the earlier tries' records complete
    clock = FakeClock()
    if ending == "never_accepted":  # an earlier run left the group in doubt
        lost = FakeClient(handler=lambda group, n: AmbiguousSendError("no answer", status=None))
        await run_job(job, once, lost, clock=FakeClock())
        stalled_host, clock = FakeClient(), later
    else:

        def busy(group: Group, n: int) -> ServerError:
            if ending == "past_deadline":
                clock.advance(7 * 3600.0)  # paused past the deadline, the request out
            return ServerError("busy", status=503)

        stalled_host = FakeClient(handler=busy)
    hosts = _Takeover(monkeypatch, database)
    append = PostgresStore.append
    written = asyncio.Event()

    async def stalled(self: PostgresStore, event: Event, *, fence: Fence | None = None) -> None:
        if event.kind != "failed" or not hosts.stalls(self):
            await append(self, event, fence=fence)
            return
        await hosts.take_over(run_job(job, once, hosts.taker, clock=later))
        try:
            await append(self, event, fence=fence)
        finally:
            written.set()

    monkeypatch.setattr(PostgresStore, "append", stalled)
    first = asyncio.create_task(run_job(job, once, stalled_host, clock=clock))
    stall = asyncio.create_task(written.wait())
    await asyncio.wait({first, stall}, return_when=asyncio.FIRST_COMPLETED)
    (gid,) = load(job.where, statuses=False).groups
    during = load(job.where, statuses=False).groups[gid].state
    room = _counted(database)
    hosts.answer.set()
    stall.cancel()
    await asyncio.gather(first, *hosts.taking)
    assert (during, room) == ("in_doubt", Decimal("0.02"))
    assert len(stalled_host.calls) == (ending != "never_accepted")
    assert len(hosts.taker.calls) == 1
    assert load(job.where, statuses=False).groups[gid].state == "sent"
    assert _counted(database) == Decimal("0.02")


async def _failed_one_of_two(jobs: JobFactory, database: str) -> tuple[JobConfig, Settings]:
    """A job of two groups under max_cost 0.02 (one group's room) on the ledger ``killed``,
    run once: one group failed for good (a 400), the other pending a rerun (a 401 stopped
    the run)."""
    job, settings = _two_groups_priced(jobs, f"{database}?ledger=killed", "0.02")
    handler = [Rejected("bad", status=400), AuthError("refused", status=401)]
    first = await run_job(job, settings, FakeClient(lambda g, n: handler[n]))
    assert isinstance(first.error, AuthError)
    return job, settings


def _killed_after_the_failure(database: str) -> None:
    """As a run killed (kill -9) after its group's failure for good was on record, before
    the group's room went back, leaves it: the room held, the claim live for a lease."""
    with psycopg.connect(database, autocommit=True) as conn:
        failed = str(
            query(
                database,
                "SELECT grp FROM bulk_mms_events WHERE kind = 'failed' "
                "AND NOT (body->>'retryable')::boolean",
            )
        )
        conn.execute(
            "INSERT INTO bulk_mms_reservations (name, ledger, grp, amount) "
            "VALUES ('spend-killed', 'killed', %s, 0.02)",
            (failed,),
        )
        conn.execute("UPDATE bulk_mms_limits SET used = used + 0.02")
        conn.execute(
            "UPDATE bulk_mms_claims SET owner = 'killed:1:abc', "
            "expires = now() + interval '30 seconds' WHERE grp = %s",
            (failed,),
        )


async def test_a_rerun_within_a_lease_of_a_kill_is_not_stopped_by_a_failed_groups_room(
    jobs: JobFactory, database: str
) -> None:
    """A run killed after a group's failure was on record but before its room went back
    (its claim still live, as for a lease after a kill -9): a rerun started at once sends
    the group still to send in max_cost's room, not stopped short by the failed group's."""
    job, settings = await _failed_one_of_two(jobs, database)
    _killed_after_the_failure(database)
    rerun = FakeClient()
    second = await run_job(job, settings, rerun)
    assert (second.error, len(rerun.sent_numbers())) == (None, 2)
    assert _counted(database) == Decimal("0.02")


async def test_a_host_running_when_another_is_killed_is_not_stopped_by_its_failed_groups_room(
    jobs: JobFactory, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host already running (its room settled as it began) when another is killed after a
    group's failure was on record, before its room went back: the other's room stops none
    of its groups, which it sends in max_cost's room (the failed group's given back)."""
    job, settings = await _failed_one_of_two(jobs, database)
    reconcile = Leftover.reconcile

    async def then_killed(self: Leftover) -> None:
        await reconcile(self)
        _killed_after_the_failure(database)

    monkeypatch.setattr(Leftover, "reconcile", then_killed)
    running = FakeClient()
    second = await run_job(job, settings, running)
    assert (second.error, len(running.sent_numbers())) == (None, 2)
    assert _counted(database) == Decimal("0.02")
    assert query(database, "SELECT count(*) FROM bulk_mms_reservations") == 0


async def test_a_paused_hosts_release_after_a_rerun_gave_its_failed_groups_room_back_counts_once(
    jobs: JobFactory, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host paused after a group's failure for good was on record, before it gave the
    group's room back (its claim live): a rerun started meanwhile gives that room back, and
    the host's own release once woken gives nothing back twice, so its other group's send
    stays counted in max_cost."""
    job, settings = _two_groups_priced(jobs, f"{database}?ledger=paused", "0.04")
    settings = replace(settings, concurrency=2)
    release, reconcile = PostgresTally.release, Leftover.reconcile
    reconciled, rerun, held = asyncio.Event(), FakeClient(), []
    reruns: list[asyncio.Task[JobSummary]] = []

    async def paused(self: PostgresTally, key: str, holder: tuple[str, str], **kw: Any) -> None:
        if not reruns:  # the first host gives back the failed group's room: paused first
            reruns.append(asyncio.create_task(run_job(job, settings, rerun)))
            await reconciled.wait()
            sql = "SELECT count(*) FROM bulk_mms_reservations WHERE grp = %s"
            held.append(query(database, sql, holder[1]))
        await release(self, key, holder, **kw)

    async def reconciling(self: Leftover) -> None:
        await reconcile(self)
        if reruns:
            reconciled.set()

    monkeypatch.setattr(PostgresTally, "release", paused)
    monkeypatch.setattr(Leftover, "reconcile", reconciling)
    first = await run_job(
        job,
        settings,
        FakeClient(lambda g, n: Rejected("bad", status=400) if n == 0 else ok_receipt(g, n)),
    )
    second = await reruns[0]
    assert (first.error, first.sent_recipients, second.error, rerun.calls) == (None, 2, None, [])
    assert held == [0]  # the rerun gave it back while the failing host was paused
    assert _counted(database) == Decimal("0.02")
    assert query(database, "SELECT count(*) FROM bulk_mms_reservations") == 0


async def test_a_send_whose_answer_names_no_currency_counts_in_pricing_currency() -> None:
    """[pricing] currency EUR: a send whose answer's cost names no currency (the spec requires
    none) is counted in EUR, at its amount over the price, and the ceiling goes on reserving."""
    ceiling = SpendCeiling(Decimal("1.00"), Decimal(0), Money(Decimal("0.01"), "EUR"))
    unstated = group(1)
    assert await ceiling.reserve(unstated) is None
    cost = parse_money({"amount": "0.05"})
    await ceiling.settle(unstated, replace(ok_receipt(unstated), cost=cost))
    probe = ("probe", "p")  # refused at a cap of 0: the count as it stands
    assert await ceiling.tally.take("spend", Decimal(0), Decimal(0), Decimal(0), probe) == (
        Decimal("0.05")
    )
    assert ceiling.foreign is None
    assert await ceiling.reserve(group(2)) is None


async def test_a_run_whose_answers_name_no_currency_keeps_max_cost_in_pricing_currency(
    jobs: JobFactory,
) -> None:
    """[pricing] currency EUR, max_cost set, every answer's cost {"amount": "0.02"} with no
    currency: the run sends everyone (exit 0), a rerun and its dry run are not refused, the
    paid count is in EUR, and the report totals the cost in EUR, never USD."""
    jobs.people(16)
    job = jobs.job(extra='group_size = 4\nmax_cost = "100.00"')
    settings = replace(FAST, concurrency=1, price_per_recipient=Decimal("0.0051"), currency="EUR")

    def unstated(g: Group, n: int) -> SendReceipt:
        return replace(ok_receipt(g, n), cost=parse_money({"amount": "0.02"}))

    client = FakeClient(unstated)
    s = await run_job(job, settings, client, clock=FakeClock())
    assert (s.error, len(client.sent_numbers())) == (None, 16)
    assert s.cost == {"EUR": Decimal("0.08")}
    sent = [e for e in ledger_events(job.ledger) if e["event"] == "sent"]
    assert [e["cost"]["currency"] for e in sent] == [None] * 4
    _, paid = max_cost_counts(settings, load(job.ledger))
    assert paid == Decimal("0.08")
    for again in run_and_dry_run(job, settings, client):
        assert (await again()).error is None
    report = summarize(job.ledger)
    assert report.cost == {"EUR": Decimal("0.08")}
    assert report.as_dict()["currency"] == "EUR"
    assert len(client.sent_numbers()) == 16


async def test_a_cost_in_another_currency_on_the_last_group_still_exits_5(
    jobs: JobFactory,
) -> None:
    """max_cost in USD, one group whose answer costs EUR: max_cost could not be kept, so the
    run never exits 0 though nothing was left to send: exit 5, naming both currencies."""
    jobs.people(4)
    _, _, client, s = await run_in_euros(jobs)
    assert len(client.sent_numbers()) == 4
    assert isinstance(s.error, MaxCostReached)
    assert exit_for(s.error) == 5
    assert "cost in EUR, not USD ([pricing] currency)" in str(s.error)


async def test_a_group_refused_for_a_cost_in_another_currency_says_so_not_max_cost_reached() -> (
    None
):
    """A group refused once a cost came back in another currency is refused for that, in
    words of its own: never "max_cost was reached", which it was not."""
    ceiling = SpendCeiling(Decimal("1.00"), Decimal(0), Money(Decimal("0.01"), "USD"))
    euro = group(1)
    assert await ceiling.reserve(euro) is None
    stop = await ceiling.settle(euro, replace(ok_receipt(euro), cost=Money(Decimal("1"), "EUR")))
    refused = await ceiling.reserve(group(2))
    assert isinstance(stop, MaxCostReached)
    assert isinstance(refused, MaxCostReached)
    said = why_words(f"failed: {refused.code} {type(refused).__name__}")
    assert said != BY_KIND[MAX_COST]
    assert said.startswith("not sent yet: a send's cost came back in another currency")
