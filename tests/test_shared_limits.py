"""Limits shared by every process that sends for one account, checked at the fake server:
the account rate through a commit stall, the daily cap and the spend ceiling across processes
and jobs, and a send of unknown cost counted at the configured price."""

from __future__ import annotations

import time

import psycopg
import pytest

from bulk_mms.fake_api import FakeTelnyx
from tests.conftest import JobFactory, numbers
from tests.test_postgres import KEY, run_cli
from tests.test_postgres import database as database  # noqa: PLC0414 - the fixture, shared
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
