"""Limits shared by every process that sends for one account, checked at the fake server:
the account rate through a commit stall, the daily cap and the spend ceiling across processes
and jobs, and a send of unknown cost counted at the configured price."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from msgspec.structs import replace

from bulk_mms.caps import DailyCap, FileTally, SpendCeiling, Tally
from bulk_mms.console import exit_for
from bulk_mms.errors import LimitReached
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.ledger.pgbudget import PostgresTally
from bulk_mms.models import Group, MessageBody, Money, SendReceipt
from bulk_mms.prepare import dry_run
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.testing import ok_receipt
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers
from tests.test_postgres import KEY, run_cli
from tests.threaded import fake_api_thread


def busiest_second(times: list[float]) -> int:
    """The most accepts in any one-second window [t, t + 1) of the server's log."""
    return max(sum(1 for u in times if t <= u < t + 1.0) for t in times)


def wait_for(what: str, done: object, timeout: float = 60.0) -> None:
    """Poll ``done()`` until true (real time: real processes are running)."""
    assert callable(done)
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


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
            time.sleep(3.0)
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
    assert await tallies[0].take("daily-acme", Decimal(1), Decimal(50), Decimal(0)) == 50


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
