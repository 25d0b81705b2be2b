"""The PostgreSQL ledger store against the real server: the same promises as the file (a run,
its resume and its report agree), several processes sharing one job (claims, leases, a killed
process's groups finished by the others), webhook events recorded once, ledger copy both ways,
the schema migrated by the tool, and no password in what a user sees."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yarl
from msgspec.structs import replace
from structlog.testing import capture_logs

from bulk_mms.cli import main
from bulk_mms.clock import instant, iso, parse_time
from bulk_mms.codes import Action
from bulk_mms.config import JobConfig, Settings
from bulk_mms.console import run_outcome
from bulk_mms.coordination import coordinator_for
from bulk_mms.errors import (
    AmbiguousSendError,
    ApiError,
    AuthError,
    LedgerError,
    Rejected,
    SendError,
)
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.ledger import LedgerView, display, events, open_store, read_events, to_json
from bulk_mms.ledger.pgbudget import PostgresTally
from bulk_mms.ledger.pgschema import _MIGRATIONS, _USABLE_FROM, SCHEMA_VERSION, migrate_url
from bulk_mms.ledger.store import named
from bulk_mms.models import Group, RecipientStatus, SendReceipt
from bulk_mms.prepare import dry_run, resume_leaves_out
from bulk_mms.recipient_lists import write_failed_csv
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.settle import never_accepted
from bulk_mms.sharing import Sharing
from bulk_mms.signals import Stop, StopReason
from bulk_mms.summary import JobSummary
from bulk_mms.suppression import put_back_opted_out, suppression_for
from bulk_mms.testing import groups_in, write_ledger
from bulk_mms.track import track_ledger
from tests.conftest import (
    FAST,
    SERVER,
    FakeClient,
    FakeClock,
    JobFactory,
    groups_counted,
    live_claims,
    numbers,
    ok_receipt,
    wait_for,
    zone_at,
)
from tests.test_suppression import PUT_BACK, refusals
from tests.test_webhooks import SIGNER
from tests.threaded import fake_api_thread

KEY = "pg-test-key"


async def test_a_run_resume_and_report_agree_on_postgres(jobs: JobFactory, database: str) -> None:
    """A job sent into PostgreSQL: the report counts what the server accepted and refused,
    and a rerun sends nobody again."""
    jobs.people(20)
    job = jobs.job(extra="group_size = 4")
    job = replace(job, database=str(named(database, job.name)))

    def handler(g: Group, n: int) -> SendReceipt | Rejected:
        return Rejected("invalid", status=400) if g.seq == 1 else ok_receipt(g, n)

    client = FakeClient(handler)
    s = await run_job(job, FAST, client, clock=FakeClock())
    assert (s.sent_groups, s.failed_groups) == (4, 1)
    report = summarize(job.where)
    assert report.recipient_states.as_dict() == {
        "valid": 20,
        "sent": 16,
        "failed": 4,
        "retry_pending": 0,
        "in_doubt": 0,
        "not_attempted": 0,
    }
    again = FakeClient()
    s2 = await run_job(job, FAST, again, clock=FakeClock())
    assert again.calls == []
    assert s2.skipped_groups == 5
    assert len(groups_in(job.where, "sent")) == 4
    assert not job.ledger.exists()  # nothing went to the file


async def test_a_ledger_urls_own_options_are_kept(jobs: JobFactory, database: str) -> None:
    """A URL whose options put the ledger's tables in a schema of their own (search_path)
    keeps them: a run, its resume and the report all use that schema, and nothing goes to
    public."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA campaigns")
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    where = f"{database}?options=-c%20search_path%3Dcampaigns&ledger={job.name}"
    job = replace(job, database=where)
    s = await run_job(job, FAST, FakeClient(), clock=FakeClock())
    assert s.sent_groups == 2
    again = FakeClient()
    await run_job(job, FAST, again, clock=FakeClock())
    assert again.calls == []
    assert summarize(job.where).recipient_states.sent == 8
    with psycopg.connect(database) as conn:
        schemas = {r[0] for r in conn.execute(
            "SELECT DISTINCT table_schema FROM information_schema.tables "
            "WHERE table_name LIKE 'bulk_mms%%'"
        )}  # fmt: skip
    assert schemas == {"campaigns"}


async def test_each_group_is_claimed_by_one_process_until_its_lease_runs_out(
    database: str,
) -> None:
    """Two processes on one ledger: a group goes to the first that claims it; the other gets
    it only once the first's heartbeat has stopped for the lease."""
    where = f"{database}?ledger=shared"
    first, second = open_store(where, "run"), open_store(where, "run")
    one, two = coordinator_for(first, 30.0), coordinator_for(second, 30.0)
    assert await one.claim("g1")
    assert not await two.claim("g1")
    assert await one.claim("g1")  # a renewal
    assert await two.claim("g2")
    age_claims(database, 31)  # as if 31 s had passed since first's last heartbeat
    assert await two.claim("g1")
    for c in (one, two):
        await c.close()
    await first.close()
    await second.close()


def test_three_processes_share_a_job_and_finish_a_killed_ones_groups(
    jobs: JobFactory, database: str
) -> None:
    """Three real `bulk-mms run` processes on one PostgreSQL ledger, one SIGKILLed mid-run:
    the others take over its groups when its lease runs out; every recipient is accepted
    exactly once at the server, both survivors exit 0 as a single run would, and together
    they never put more than the account's rate into any one-second window."""
    fake = FakeTelnyx(api_key=KEY)
    job, config = shared_job(jobs, 120, rate=15, concurrency=2)
    where = f"{database}?ledger=three"
    with fake_api_thread(fake) as url:
        procs = [run_cli(job.path, url, config, where) for _ in range(3)]
        wait_for("its groups claimed", lambda: live_claims(database, procs[0].pid) > 0)
        procs[0].send_signal(signal.SIGKILL)
        outs = [p.communicate(timeout=90) for p in procs]
    assert procs[0].returncode == -signal.SIGKILL
    assert_each_accepted_once(fake, where, procs[1:], outs[1:], numbers(120))
    # one account budget for all three: no one-second window at the server above the rate
    times = [t for t, _, _ in fake.accept_log]
    busiest = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
    assert busiest <= 15


@pytest.mark.slow
@pytest.mark.parametrize("held", [1, 2])
def test_groups_killed_before_the_api_took_them_are_sent_once_by_the_survivors(
    jobs: JobFactory, database: str, held: int
) -> None:
    """A process SIGKILLed while ``held`` requests of its are held at the API, never taken in:
    the two processes started after it take its groups over when its lease runs out; each
    group is in doubt until the API's records, complete, show it was never accepted, and then
    its taker sends it. Each process waits for the groups the other holds in doubt to be
    decided, and neither waits for the other forever (two groups: one each): both exit 0,
    everyone is accepted exactly once."""
    fake = FakeTelnyx(api_key=KEY)
    fake.faults.extend(Fault("drop_before", delay=60.0) for _ in range(held))  # the killed one's
    job, config = shared_job(jobs, 20, rate=20, concurrency=held)
    where = f"{database}?ledger=held"
    with fake_api_thread(fake) as url:
        first = run_cli(job.path, url, config, where)
        wait_for("the first process's requests", lambda: len(fake.requests) >= held)
        assert len(fake.requests) == held
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        procs = [run_cli(job.path, url, config, where) for _ in range(2)]
        outs = [p.communicate(timeout=90) for p in procs]
    assert_each_accepted_once(fake, where, procs, outs, numbers(20))


@pytest.mark.slow
def test_processes_sharing_a_job_with_suppressed_members_each_exit_0(
    jobs: JobFactory, database: str
) -> None:
    """Two processes on a job whose groups lose members to the database's suppression list:
    each remade group is made and sent by one of them, and the other watches it to the end,
    so both exit 0 with every valid recipient sent, and nobody is texted twice."""
    where = f"{database}?ledger=suppressed"
    gone = numbers(40)[1::9]  # four numbers in four different groups
    for phone in gone:
        assert main(["-q", "suppress", "add", phone, "--ledger", where]) == 0
    fake = FakeTelnyx(api_key=KEY)
    job, config = shared_job(jobs, 40, rate=20, concurrency=2, group_size=4)
    with fake_api_thread(fake) as url:
        procs = [run_cli(job.path, url, config, where) for _ in range(2)]
        outs = [p.communicate(timeout=90) for p in procs]
    assert_each_accepted_once(fake, where, procs, outs, sorted(set(numbers(40)) - set(gone)))


@pytest.mark.slow
def test_processes_sharing_a_job_agree_on_members_the_api_refused(
    jobs: JobFactory, database: str
) -> None:
    """Two processes; the API refuses two members by name (opted out), and whoever sent their
    groups sends the other members on in groups of their own. Each process follows those to
    the end: both say the same (38 sent, the 2 opted out, none unaccounted for) and exit 0:
    someone who opted out is not a recipient left unsent; nobody is texted twice."""
    fake = FakeTelnyx(api_key=KEY)
    stopped = numbers(40)[1::21]  # two numbers in two different groups
    for phone in stopped:
        fake.opt_out(phone, "+18445550001")
    job, config = shared_job(jobs, 40, rate=20, concurrency=2, group_size=4)
    where = f"{database}?ledger=refused"
    with fake_api_thread(fake) as url:
        procs = [run_cli(job.path, url, config, where) for _ in range(2)]
        outs = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [(o + e).decode()[-1000:] for o, e in outs]
    said = "40 valid recipients: 38 sent, 0 failed, 2 opted out (STOP: never to be texted again"
    assert all(said in out.decode() for out, _ in outs), [out.decode() for out, _ in outs]
    counts = fake.recipient_counts()
    assert sorted(counts) == sorted(set(numbers(40)) - set(stopped))
    assert max(counts.values()) == 1


@pytest.mark.slow
def test_processes_never_wait_on_each_other_for_remade_groups_held_for_quiet_hours(
    jobs: JobFactory, database: str
) -> None:
    """Two processes; half the groups are in a zone outside the recipient window and each of
    those loses a member to the suppression list. A group held for quiet hours is neither
    claimed nor watched, so neither process waits for a remade group the other will not send
    tonight: both end within seconds, the open zone's recipients sent once each. (Zones where
    it is now noon and midnight: the window is six hours from either edge at any hour.)"""
    opened, closed_zone = zone_at(12), zone_at(0)
    people = numbers(48)
    closed = {p for i, p in enumerate(people) if i // 4 % 2}  # every other group of four
    gone = sorted(closed)[::4]  # one member of each of those
    where = f"{database}?ledger=quiet"
    for phone in gone:
        assert main(["-q", "suppress", "add", phone, "--ledger", where]) == 0
    rows = [
        {"phone": p, "first": "x", "tz": closed_zone if p in closed else opened} for p in people
    ]
    jobs.csv(rows)
    job = jobs.job(extra='group_size = 4\nrecipient_window = "06:00-18:00"\ntimezone_column = "tz"')
    config = jobs.root / "config.toml"
    config.write_text("[limits]\nrate = 20\nconcurrency = 1\nlease_s = 2\n")
    fake = FakeTelnyx(api_key=KEY)
    with fake_api_thread(fake) as url:
        procs = [run_cli(job.path, url, config, where) for _ in range(2)]
        outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [4, 4], [(o + e).decode()[-1000:] for o, e in outs]
    counts = fake.recipient_counts()
    assert sorted(counts) == sorted(set(people) - closed)
    assert max(counts.values()) == 1


@pytest.mark.slow
def test_processes_whose_suppression_lists_differ_never_wait_on_each_other(
    jobs: JobFactory, database: str
) -> None:
    """The suppression list changes between two processes' starts (numbers taken off, others
    put on), so each remakes groups the other planned whole: neither waits for an origin the
    other remade (it never gets an outcome of its own), both end within seconds, and nobody
    is texted twice."""
    people = numbers(64)
    first, second = people[32::8], people[36::8]  # a member of every other group, each
    where = f"{database}?ledger=skew"
    assert main(["-q", "suppress", "add", *second, "--ledger", where]) == 0
    job, config = shared_job(jobs, 64, rate=8, concurrency=1, group_size=4)
    fake = FakeTelnyx(api_key=KEY)
    with fake_api_thread(fake) as url:
        a = run_cli(job.path, url, config, where)
        wait_for("its requests", lambda: len(fake.requests) >= 2)
        assert main(["-q", "suppress", "remove", *second, "--ledger", where]) == 0
        assert main(["-q", "suppress", "add", *first, "--ledger", where]) == 0
        b = run_cli(job.path, url, config, where)
        try:
            outs = [p.communicate(timeout=45) for p in (a, b)]
        finally:  # a process still waiting is a failure: none is left behind
            for p in (a, b):
                if p.poll() is None:
                    p.kill()
    for out, err in outs:
        assert b"Traceback" not in err, (out + err).decode()[-1000:]
    assert {a.returncode, b.returncode} <= {0, 1}
    assert max(fake.recipient_counts().values()) == 1


def age_claims(database: str, seconds: float) -> None:
    """Move every claim's last renewal (and the expiry it set) ``seconds`` into the past."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "UPDATE bulk_mms_claims SET heartbeat = heartbeat - make_interval(secs => %s)",
            (seconds,),
        )
        with contextlib.suppress(psycopg.errors.UndefinedColumn):
            conn.execute(
                "UPDATE bulk_mms_claims SET expires = expires - make_interval(secs => %s)",
                (seconds,),
            )


def shared_job(
    jobs: JobFactory, people: int, *, rate: int, concurrency: int, group_size: int = 2
) -> tuple[JobConfig, Path]:
    """A job of ``people`` in groups of ``group_size``, and a config for processes sharing
    it: a lease of two seconds, and the API's records complete at once (``records_lag_s``)."""
    jobs.people(people)
    job = jobs.job(extra=f"group_size = {group_size}")
    config = jobs.root / "config.toml"
    config.write_text(
        f"[limits]\nrate = {rate}\nconcurrency = {concurrency}\nlease_s = 2\n"
        "[api]\nrecords_lag_s = 0\n"
    )
    return job, config


def assert_each_accepted_once(
    fake: FakeTelnyx,
    where: str,
    procs: list[subprocess.Popen[bytes]],
    outs: list[tuple[bytes, bytes]],
    recipients: list[str],
) -> None:
    """Every process exited 0 (else: what each printed last), and the API accepted each of
    ``recipients`` (sorted) exactly once, as the shared ledger records."""
    assert [p.returncode for p in procs] == [0] * len(procs), [
        (out + err).decode()[-1000:] for out, err in outs
    ]
    counts = fake.recipient_counts()
    assert sorted(counts) == recipients
    assert max(counts.values()) == 1
    assert summarize(where).sent_recipients == len(recipients)


def run_cli(job: Path, url: str, config: Path, ledger: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TELNYX_API_KEY": KEY}
    env.pop("TELNYX_BASE_URL", None)
    cmd = [sys.executable, "-m", "bulk_mms", "-q", "run", str(job), "--base-url", url]
    cmd += ["--config", str(config), "--ledger", ledger, "--yes"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_redelivered_webhook_event_is_recorded_once(database: str) -> None:
    """The same webhook event written twice (two receivers, a redelivery) is one row, and so is
    a row rejected by two processes."""
    where = f"{database}?ledger=hooks"
    store = open_store(where, "run")
    status = events.status_event(
        "g1", RecipientStatus("+12125550100", "delivered"), source="webhook",
        time="", webhook_id="evt-1",
    )  # fmt: skip
    store.append_now(status)
    store.append_now(status)
    rejected = events.Rejected(7, "x", "bad")
    store.append_now(rejected)  # two processes reading the same input: recorded once
    store.append_now(rejected)
    store.close_sync()
    assert [to_json(e) for e in read_events(where)] == [to_json(status), to_json(rejected)]


def test_the_table_keeps_what_the_error_policy_did(database: str) -> None:
    """A ``failed`` and a ``status`` row read back with the action the error policy recorded
    (what the report's kinds of miss are read by)."""
    where = f"{database}?ledger=actions"
    store = open_store(where, "run")
    failed = events.Failed("g1", to=("+12125550100",), status=400, code="40002", action=Action.FAIL)
    status = events.status_event(
        "g2", RecipientStatus("+12125550101", "delivery_failed"), source="track", time="",
        action=Action.RETRY,
    )  # fmt: skip
    store.append_now(failed)
    store.append_now(status)
    store.close_sync()
    assert list(read_events(where)) == [failed, status]


def test_the_table_keeps_the_kinds_of_row_a_run_planned_not_to_send(database: str) -> None:
    """A ``planned`` row reads back with its suppressed and excluded counts, and a row
    written without them (an older bulk-mms) with both 0, as a file's line does."""
    where = f"{database}?ledger=planned"
    store = open_store(where, "run")
    planned = events.Planned(8, 0, 3, "", 1, suppressed=1, excluded=1)
    store.append_now(planned)
    store.close_sync()
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "UPDATE bulk_mms_events SET body = body - 'suppressed' - 'excluded' "
            "WHERE kind = 'planned'"
        )
        store = open_store(where, "run")
        store.append_now(planned)
        store.close_sync()
    older = replace(planned, suppressed=0, excluded=0)
    assert list(read_events(where)) == [older, planned]


def test_ledger_copy_both_ways_keeps_every_event(
    jobs: JobFactory, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSONL → PostgreSQL → JSONL gives back the same events, in order, through the CLI; a
    copy cut short is resumed by the same copy, and a target holding other events is refused."""
    jobs.people(12)
    job = jobs.job(extra="group_size = 4")
    asyncio.run(run_job(job, FAST, FakeClient(), clock=FakeClock()))
    where = f"{database}?ledger=copied"
    back = jobs.root / "back.jsonl"
    lines = job.ledger.read_bytes().splitlines(keepends=True)
    cut, other = jobs.root / "cut.jsonl", jobs.root / "other.jsonl"
    cut.write_bytes(b"".join(lines[:3]))  # what a copy the database cut short leaves
    other.write_bytes(b"".join([lines[0], *lines[2:]]))  # the header, then not its next event
    assert main(["-q", "ledger", "copy", str(cut), where]) == 0
    assert main(["-q", "ledger", "copy", str(job.ledger), where]) == 0  # resumed
    assert main(["-q", "ledger", "copy", where, str(back)]) == 0
    original = [to_json(e) for e in read_events(job.ledger)]
    assert [to_json(e) for e in read_events(back)] == original
    assert main(["-q", "ledger", "copy", str(other), where]) == 2  # not into another's
    assert "already holds events" in capsys.readouterr().err
    assert main(["-q", "report", where, "--json"]) == 0
    assert sorted(summarize(where).undelivered) == []
    assert summarize(where).sent_recipients == len(numbers(12))


def test_the_schema_is_migrated_by_the_tool(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """db migrate creates the schema, and a second time finds it current."""
    assert main(["-q", "db", "migrate", database]) == 0
    assert f"schema version 0 -> {SCHEMA_VERSION}" in capsys.readouterr().err
    assert main(["-q", "db", "migrate", database]) == 0
    assert f"schema version {SCHEMA_VERSION} -> {SCHEMA_VERSION}" in capsys.readouterr().err


def test_a_ledger_with_two_raced_headers_migrates_to_its_first(
    database: str, tmp_path: Path
) -> None:
    """Two raced job headers at schema 5 migrate: the first stays, the later is kept ignored."""
    first = events.Header("raced", "sha256:aa", campaign="c-first")
    second = events.Header("raced", "sha256:aa", campaign="c-second")
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE bulk_mms_schema (version int NOT NULL)")
        for version in range(1, 6):
            conn.execute(_MIGRATIONS[version])
            conn.execute("INSERT INTO bulk_mms_schema (version) VALUES (%s)", (version,))
        row = conn.execute(
            "INSERT INTO bulk_mms_ledgers (name) VALUES ('raced') RETURNING id"
        ).fetchone()
        assert row is not None
        ledger = row[0]
        bodies = [orjson.dumps(to_json(header)).decode() for header in (first, second)]
        for body in bodies:
            conn.execute(
                "INSERT INTO bulk_mms_events (ledger, kind, body) VALUES (%s, 'job', %s::jsonb)",
                (ledger, body),
            )
    assert migrate_url(database) == (5, SCHEMA_VERSION)
    where = f"{database}?ledger=raced"
    assert summarize(where).campaign == "c-first"
    assert [to_json(e) for e in read_events(where)] == [to_json(first)]
    store = open_store(where, "run")
    assert store.put_header(second) == first  # the index now holds: the first is the header
    store.close_sync()
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT kind, body FROM bulk_mms_events WHERE ledger = %s ORDER BY seq", (ledger,)
        ).fetchall()
    assert [kind for kind, _ in rows] == ["job", "job_duplicate"]
    assert rows[1][1] == {**orjson.loads(bodies[1]), "event": "job_duplicate"}  # all else kept
    copied = tmp_path / "raced.jsonl"
    assert main(["-q", "ledger", "copy", where, str(copied)]) == 0  # not a second header
    assert [to_json(e) for e in read_events(copied)] == [to_json(first)]


async def test_claims_made_before_schema_8_upgrade_in_place_and_run_out_by_the_takers_lease(
    database: str,
) -> None:
    """A schema-7 database holding a live claim (no expiry recorded) migrates in place: the
    claim stays its holder's until the taker's lease has passed since its heartbeat, then is
    taken over under the next token; a claim an older bulk-mms renewed after a newer one set
    its expiry runs out by its heartbeat, not by the stale expiry."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE bulk_mms_schema (version int NOT NULL)")
        for version in range(1, 8):
            conn.execute(_MIGRATIONS[version])
            conn.execute("INSERT INTO bulk_mms_schema (version) VALUES (%s)", (version,))
        row = conn.execute("INSERT INTO bulk_mms_ledgers (name) VALUES ('old') RETURNING id")
        ledger = row.fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO bulk_mms_claims (ledger, grp, owner, heartbeat, token) "
            "VALUES (%s, 'g1', 'old-host:1:aa', now() - interval '10 s', 4)",
            (ledger,),
        )
    assert migrate_url(database) == (7, SCHEMA_VERSION)
    store = open_store(f"{database}?ledger=old", "run")
    coord = coordinator_for(store, 30.0)
    try:
        assert not await coord.claim("g1")  # 10 s since its heartbeat: within 30 s
        age_claims(database, 25)
        assert await coord.claim("g1")
        assert coord.fence("g1").token == 5  # type: ignore[union-attr]
        age_claims(database, 31)  # our lease ran out, and an older bulk-mms takes it over:
        with psycopg.connect(database, autocommit=True) as conn:  # our expiry stays, stale
            conn.execute(
                "UPDATE bulk_mms_claims SET owner = 'old-host:2:bb', heartbeat = now() "
                "WHERE grp = 'g1'"
            )
        age_claims(database, 10)
        assert not await coord.claim("g1")
        age_claims(database, 21)
        assert await coord.claim("g1")
    finally:
        await coord.close()
        await store.close()


def test_a_list_at_schema_9_is_indexed_by_10_while_hosts_look(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schema-9 database migrates to 10 while a look holds the list open: the index on
    ``added`` is made valid, a current host's looks go on through it, and the database
    records that schema 9 can use it."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE bulk_mms_schema (version int NOT NULL)")
        for version in range(1, 10):
            conn.execute(_MIGRATIONS[version])
            conn.execute("INSERT INTO bulk_mms_schema (version) VALUES (%s)", (version,))
        conn.execute(
            "INSERT INTO bulk_mms_suppressions (number, reason, added) "
            "SELECT '+1212' || (5000000 + i)::text, 'imported', now() - interval '30 days' "
            "FROM generate_series(1, 10000) i"
        )
    monkeypatch.setattr("bulk_mms.ledger.pgschema.SCHEMA_VERSION", 9)
    old = suppression_for(None, database)  # a host of a bulk-mms at schema 9, running
    monkeypatch.setattr("bulk_mms.ledger.pgschema.SCHEMA_VERSION", 10)  # a bulk-mms at 10
    with psycopg.connect(database) as looking, looking.transaction():
        looking.execute("SELECT count(*) FROM bulk_mms_suppressions")  # a look in flight
        assert migrate_url(database) == (9, 10)
    with psycopg.connect(database) as conn:
        valid = conn.execute(
            "SELECT indisvalid FROM pg_index "
            "WHERE indexrelid = 'bulk_mms_suppressions_added'::regclass"
        ).fetchone()
    assert valid == (True,)
    current = suppression_for(None, database)
    suppression_for(None, database).add(["+12125550100"], "texted STOP (webhook)")
    assert current.look_again() == ["+12125550100"]
    monkeypatch.setattr("bulk_mms.ledger.pgschema.SCHEMA_VERSION", 9)
    old.look_again()  # at 9, this code goes on (a release at 9 refuses: it predates the rule)
    with psycopg.connect(database) as conn:
        usable = conn.execute("SELECT usable_from FROM bulk_mms_schema WHERE version = 10")
        assert usable.fetchone() == (9,)


async def test_counts_made_before_schema_11_carry_over_and_hold_by_group(database: str) -> None:
    """A schema-10 database whose job's spend count stands at 1.50 of 2.00 migrates in place:
    the count stays 1.50, and a group's reservation repeated (a takeover's) counts once."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE bulk_mms_schema (version int NOT NULL)")
        for version in range(1, 11):
            conn.execute(_MIGRATIONS[version])
            conn.execute("INSERT INTO bulk_mms_schema (version) VALUES (%s)", (version,))
        conn.execute("INSERT INTO bulk_mms_limits (name, used) VALUES ('spend-old', 1.50)")
    assert migrate_url(database) == (10, SCHEMA_VERSION)
    tally = PostgresTally(f"{database}?ledger=old")
    cap, seed = Decimal("2.00"), Decimal(0)
    try:
        for _ in range(2):
            assert await tally.take("spend-old", Decimal("0.30"), cap, seed, ("old", "g1")) is None
        assert await tally.take("spend-old", Decimal("0.30"), cap, seed, ("old", "g2")) == Decimal(
            "1.80"
        )
    finally:
        await tally.close()


#: The schema of a bulk-mms newer than this one.
NEWER = SCHEMA_VERSION + 1


def _newer_migrates(database: str, monkeypatch: pytest.MonkeyPatch, usable_from: int) -> None:
    """A bulk-mms that knows schema :data:`NEWER` (an index on the list's reasons, usable
    from ``usable_from``) migrates ``database``, which this bulk-mms made."""
    migrate_url(database)
    with monkeypatch.context() as newer:
        newer.setattr("bulk_mms.ledger.pgschema.SCHEMA_VERSION", NEWER)
        newer.setitem(_MIGRATIONS, NEWER, "CREATE INDEX reasons ON bulk_mms_suppressions (reason)")
        newer.setitem(_USABLE_FROM, NEWER, usable_from)
        assert migrate_url(database) == (SCHEMA_VERSION, NEWER)


def test_a_database_a_newer_bulk_mms_only_indexed_is_used_as_it_is(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that a newer bulk-mms took to a version it recorded as usable from this
    one's is used, not refused and not migrated back: a rolling upgrade of an index."""
    _newer_migrates(database, monkeypatch, usable_from=SCHEMA_VERSION)
    assert migrate_url(database) == (NEWER, NEWER)
    listed = suppression_for(None, database)
    suppression_for(None, database).add(["+12125550100"], "texted STOP (webhook)")
    assert listed.look_again() == ["+12125550100"]


def test_a_database_a_newer_bulk_mms_changed_is_refused_in_one_line(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at a version that needs a newer bulk-mms is refused, naming both
    versions, and left as it is."""
    _newer_migrates(database, monkeypatch, usable_from=NEWER)
    with pytest.raises(LedgerError) as info:
        migrate_url(database)
    assert str(info.value).endswith(
        f"schema version {NEWER} is from a newer bulk-mms (it needs schema {NEWER}; "
        f"this one knows {SCHEMA_VERSION})"
    )
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT max(version) FROM bulk_mms_schema").fetchone() == (NEWER,)


def test_a_password_never_shows(database: str) -> None:
    """A URL's password is neither in the ledger's name nor in a connection error."""
    server = SERVER.replace("postgres@", "postgres:s3cr3t-pw@")
    with pytest.raises(LedgerError) as info:
        open_store(f"{server.rsplit(':', 1)[0]}:1/nowhere?ledger=x", "read")
    assert "s3cr3t-pw" not in str(info.value)
    store = open_store(f"{server}/{database.rsplit('/', 1)[1]}?ledger=pw", "run")
    assert "s3cr3t-pw" not in store.name
    store.close_sync()


async def test_batched_events_keep_every_character(database: str) -> None:
    """Events written in one batch (the COPY path) read back exactly, backslashes, tabs and
    quotes in their text included."""
    where = f"{database}?ledger=chars"
    store = open_store(where, "run")
    tricky = ("back\\slash", 'quote"d', "tab\there", "new\nline", "ünï \\N")
    batch = [
        events.Failed(f"g{i}", ("+12125550100",), i, rows=(tricky,), title=t, detail=t)
        for i, t in enumerate(tricky)
    ]
    for ev in batch:
        store.append_nowait(ev)
    await store.close()
    assert list(read_events(where)) == batch


async def test_track_dry_run_and_failed_csv_work_on_postgres(
    jobs: JobFactory, database: str
) -> None:
    """On a database ledger: a dry run sees what was sent, track records delivery statuses, and
    the failed-recipients file holds the refused group and the failed delivery."""
    jobs.people(12)
    job = jobs.job(extra="group_size = 4")
    job = replace(job, database=str(named(database, job.name)))

    def handler(g: Group, n: int) -> SendReceipt | Rejected:
        return Rejected("invalid", status=400) if g.seq == 0 else ok_receipt(g, n)

    client = FakeClient(handler)
    await run_job(job, FAST, client, clock=FakeClock())
    plan = await dry_run(job, FAST, clock=FakeClock())
    assert (plan.skipped_groups, plan.sent_groups) == (3, 0)
    sent = [g for g in client.calls if g.seq != 0]
    for n, g in enumerate(client.calls):  # each message's id names its call, in any order
        client.delivery[f"msg-{g.id}-{n}"] = tuple(
            RecipientStatus(p, "delivery_failed" if p == g.to[0] else "delivered") for p in g.to
        )
    result = await track_ledger(job.where, FAST, client, clock=FakeClock())
    assert result.statuses == {"delivered": 6, "delivery_failed": 2}
    out = jobs.root / "failed.csv"
    count, _ = write_failed_csv(summarize(job.where), out)
    refused = next(g for g in client.calls if g.seq == 0)
    assert count == len(refused.to) + len(sent)


async def test_a_live_run_of_a_database_ledger_is_one_holding_a_claim(database: str) -> None:
    """A database ledger's live run is the owner of a claim whose lease has not run out:
    none before any claim, the claimant while its lease holds, none once it ran out; a
    claim that records no expiry (an older bulk-mms) runs out by the asker's lease."""
    where = f"{database}?ledger=live"
    open_store(where, "run").close_sync()  # the ledger, and no run of it open
    claimer = open_store(where, "append")
    looker = open_store(where, "append")
    coord = coordinator_for(claimer, 30.0)
    try:
        assert await looker.live_run(30.0) is None
        assert await coord.claim("g1")
        fence = coord.fence("g1")
        assert fence is not None
        assert await looker.live_run(30.0) == fence.owner
        age_claims(database, 31)
        assert await looker.live_run(30.0) is None
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("UPDATE bulk_mms_claims SET heartbeat = now() - interval '10 s', "
                         "expires = NULL, owner = 'old-host:1:aa'")  # fmt: skip
        assert await looker.live_run(30.0) == "old-host:1:aa"
        assert await looker.live_run(5.0) is None
    finally:
        await coord.close()
        await looker.close()
        await claimer.close()


async def test_a_run_of_a_database_ledger_is_live_from_its_opening_to_its_closing(
    database: str, another_database: str
) -> None:
    """A run that has opened a database ledger is live before it claims anything (reading its
    input, waiting for its window), named by its session; two at once share it; once both
    closed, none is; and another ledger, of this database or of another on the same server
    (whose ledgers are numbered from 1 too), never saw one."""
    where = f"{database}?ledger=opened"
    other = f"{database}?ledger=other"
    open_store(other, "run").close_sync()  # the database's first ledger
    looker = open_store(other, "append")
    elsewhere = open_store(f"{another_database}?ledger=first", "run")  # that one's first
    first = open_store(where, "run")
    watcher = open_store(where, "append")
    try:
        assert await looker.live_run(30.0) is None
        assert await watcher.live_run(30.0) == f"bulk-mms pid {os.getpid()}"
        second = open_store(where, "run")  # a run on another host: never waits on the first
        first.close_sync()
        assert await watcher.live_run(30.0) == f"bulk-mms pid {os.getpid()}"
        second.close_sync()
        assert await watcher.live_run(30.0) is None
        assert await looker.live_run(30.0) is None
    finally:
        first.close_sync()
        elsewhere.close_sync()
        await watcher.close()
        await looker.close()


def _claims(database: str) -> dict[str, tuple[str, int]]:
    """Each claimed group's (owner, fence token), as the database has them."""
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT grp, owner, token FROM bulk_mms_claims").fetchall()
    return {str(grp): (str(owner), int(token)) for grp, owner, token in rows}


@pytest.mark.parametrize("ends", ["done", "refused_key", "stopped"])
async def test_a_run_that_ends_gives_its_claims_back_at_once(
    jobs: JobFactory, database: str, ends: str
) -> None:
    """A run of a database ledger that ends (its input done, stopped by a refused key, or
    by a signal) gives back every claim it took: no run of the ledger is live as soon as
    it returns, not a lease later, and each claim keeps its fence token."""
    jobs.people(12)
    job = jobs.job(extra="group_size = 4")
    job = replace(job, database=str(named(database, job.name)))
    stop = Stop()

    def handler(g: Group, n: int) -> SendReceipt | SendError:
        if g.seq == 1 and ends == "refused_key":
            return AuthError("refused", status=401)
        if g.seq == 1 and ends == "stopped":
            stop.request(StopReason.SIGTERM)
        return ok_receipt(g, n)

    settings = replace(FAST, concurrency=1)
    s = await run_job(job, settings, FakeClient(handler), clock=FakeClock(), stop=stop)
    assert (s.error is not None) == (ends == "refused_key")
    assert (s.stopped is not None) == (ends != "done")
    looker = open_store(job.where, "append")
    try:
        assert await looker.live_run(FAST.lease_s) is None
    finally:
        await looker.close()
    claims = _claims(database)
    assert len(claims) >= 2  # it did claim groups
    assert {owner for owner, _ in claims.values()} == {""}  # none is anybody's now
    assert {token for _, token in claims.values()} == {1}


async def _first_group_left_in_doubt(
    jobs: JobFactory, database: str
) -> tuple[JobConfig, Settings, FakeClient, JobSummary]:
    """A job of 8 in groups of 4 on ``database``, without retries of an answer lost, and its
    first run, whose first group's answer was lost (in doubt): the job, those settings, the
    run's client and its summary."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    job = replace(job, database=str(named(database, job.name)))
    no_retry = replace(FAST, retry=replace(FAST.retry, retry_ambiguous=False))

    def lost(g: Group, n: int) -> SendReceipt | SendError:
        return AmbiguousSendError("timeout", status=None) if g.seq == 0 else ok_receipt(g, n)

    first = FakeClient(lost)
    s = await run_job(job, no_retry, first, clock=FakeClock())
    return job, no_retry, first, s


async def test_a_group_a_run_left_in_doubt_is_not_sent_again_by_the_next_host(
    jobs: JobFactory, database: str
) -> None:
    """A run whose group ends in doubt (its answer lost, the API's records not complete
    yet) gives its claims back as it ends, so no run is live at once; another host's run
    then takes the group over (under the next fence token) and, its attempt on record,
    holds it in doubt instead of sending it: nobody is texted twice."""
    job, no_retry, first, s = await _first_group_left_in_doubt(jobs, database)
    assert (s.sent_groups, s.in_doubt_groups) == (1, 1)
    doubtful = next(g.id for g in first.calls if g.seq == 0)
    looker = open_store(job.where, "append")
    try:
        assert await looker.live_run(FAST.lease_s) is None
    finally:
        await looker.close()
    second = FakeClient()  # the default: no key the API replays, so in doubt is held
    s2 = await run_job(job, no_retry, second, clock=FakeClock())
    assert second.calls == []
    assert (s2.held_groups, s2.skipped_groups) == (1, 1)
    assert groups_in(job.where, "in_doubt") == {doubtful}
    assert _claims(database)[doubtful] == ("", 2)  # taken over, held, and given back again


async def test_track_settles_a_group_in_doubt_only_under_its_claim(
    jobs: JobFactory, database: str
) -> None:
    """``track`` settling a group in doubt on a shared ledger writes what the API's records
    show only under the group's claim: a run on another host that claims the group while
    track looks at the records keeps it (track writes nothing of it, and leaves the claim
    alone); once nobody holds it, track writes the finding (never accepted: retryable) under
    a claim of its own, and gives that back."""
    job, no_retry, first, _ = await _first_group_left_in_doubt(jobs, database)
    held = next(g for g in first.calls if g.seq == 0)
    other = open_store(job.where, "append")
    run_there = coordinator_for(other, no_retry.lease_s)
    looker = FakeClient()
    looked = looker.fetch_records

    async def claimed_meanwhile(cli: str, cld: str, start: float, end: float) -> list[Any]:
        """track's look at the records, during which a run on another host claims the group."""
        if not looker.fetches:
            assert await run_there.claim(held.id)
        return await looked(cli, cld, start, end)

    looker.fetch_records = claimed_meanwhile  # type: ignore[method-assign]
    complete = time.time() + 86400  # the records of the lost request complete by then
    try:
        await track_ledger(job.where, no_retry, looker, clock=FakeClock(wall=complete))
        assert looker.fetches  # it did look
        assert groups_in(job.where, "in_doubt") == {held.id}  # left to the run holding it
        fence = run_there.fence(held.id)
        assert fence is not None
        assert _claims(database)[held.id] == (fence.owner, fence.token)
        await run_there.release()
    finally:
        await run_there.close()
        await other.close()
    await track_ledger(job.where, no_retry, FakeClient(), clock=FakeClock(wall=complete))
    assert groups_in(job.where, "in_doubt") == set()
    assert held.id in groups_in(job.where, "retry_pending")  # the next run sends it
    assert _claims(database)[held.id] == ("", 3)  # taken by track, and given back


@pytest.mark.parametrize("other", ["never_accepted", "accepted", "still_holds"])
async def test_a_group_held_in_doubt_that_another_process_settled_meanwhile_is_counted_once(
    jobs: JobFactory, database: str, monkeypatch: pytest.MonkeyPatch, other: str
) -> None:
    """A run holding a group in doubt (from a run before it) is paused past its lease while
    the records may still lag, and another process takes the group over meanwhile. Found
    never accepted there and given back before it went out (that process paused in turn),
    the group is sent here, once; found sent there, or still held there until it sends it,
    it is watched, and this run counts it already done, neither held nor sent: either way
    the run ends with nobody left in doubt or pending (exit 0), not with a group "held in
    doubt", and its summary counts both groups."""
    job, no_retry, first, _ = await _first_group_left_in_doubt(jobs, database)
    held = next(g for g in first.calls if g.seq == 0)
    survivor = FakeClient()
    looked = survivor.fetch_records

    async def paused_meanwhile(cli: str, cld: str, start: float, end: float) -> list[Any]:
        """The survivor's first look at the records (they are not complete yet): meanwhile
        it is paused past its lease, and the other process takes the group over."""
        if not survivor.fetches:
            await _settle_elsewhere(database, str(job.where), held, other)
        return await looked(cli, cld, start, end)

    survivor.fetch_records = paused_meanwhile  # type: ignore[method-assign]
    if other == "still_holds":  # it sends the group once the survivor watches it
        watch = Sharing.settle_later

        async def sent_there(sharing: Sharing, *args: Any, **kwargs: Any) -> None:
            sent = events.Sent(held.id, held.to, held.seq, message_id="msg-there")
            await asyncio.to_thread(sharing.store.append_now, sent)
            await watch(sharing, *args, **kwargs)

        monkeypatch.setattr(Sharing, "settle_later", sent_there)
    s = await run_job(job, no_retry, survivor, clock=FakeClock())
    resent = other == "never_accepted"
    assert [g.id for g in survivor.calls] == ([held.id] if resent else [])
    assert (s.held_groups, s.in_doubt_groups, s.sent_groups) == (0, 0, int(resent))
    assert s.skipped_groups == 2 - resent
    assert groups_counted(s) == 2
    assert (s.open_in_doubt, s.open_retry_pending) == (0, 0)
    assert s.recipients is not None
    assert s.recipients.sent == 8
    assert run_outcome(s) == 0


#: What another process made of a group this run left in doubt, and how this run counts it:
#: (sent, already done) of its two groups, and the group's requests from here.
SETTLED_THERE = {
    "accepted": (2, 0, 1),  # the records showed this run's request accepted
    "resent_there": (1, 1, 1),  # never accepted: that process sent it
    "never_accepted": (2, 0, 2),  # never accepted, given back unsent: sent here again
}


@pytest.mark.looptime(True)  # the API's records complete a request's timeout on: slept through
@pytest.mark.parametrize("other", list(SETTLED_THERE))
async def test_a_group_this_run_left_in_doubt_that_another_process_settled_is_counted(
    jobs: JobFactory, database: str, other: str
) -> None:
    """A run's group ends in doubt (its answer lost); while the run waits for the API's
    records, paused past its lease, another process takes the group over and settles it.
    The run's summary counts it as the ledger has it: sent by this run when the records
    showed this run's request accepted, already done when that process sent it, sent by this
    run when it was found never accepted and left unsent; so its counts add up to both
    groups, nobody is left in doubt, and it exits 0."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    job = replace(job, database=str(named(database, job.name)))
    untrusted = replace(FAST.retry, retry_ambiguous=False)
    settings = replace(FAST, records_lag_s=0.0, retry=untrusted)

    def lost(g: Group, n: int) -> SendReceipt | SendError:
        if g.seq == 0 and n == 0:
            return AmbiguousSendError("timeout", status=None)
        return ok_receipt(g, n)

    client = FakeClient(lost)
    looked = client.fetch_records

    async def taken_over_meanwhile(cli: str, cld: str, start: float, end: float) -> list[Any]:
        """The run's first look at the records (not complete yet): meanwhile it is paused
        past its lease, and another process takes its group in doubt over and settles it."""
        if not client.fetches:
            await _settle_elsewhere(database, str(job.where), client.calls[0], other)
        return await looked(cli, cld, start, end)

    client.fetch_records = taken_over_meanwhile  # type: ignore[method-assign]
    s = await run_job(job, settings, client, clock=FakeClock())
    sent, done, tries = SETTLED_THERE[other]
    counts = (s.sent_groups, s.skipped_groups, s.in_doubt_groups, s.held_groups)
    assert counts == (sent, done, 0, 0)
    assert s.sent_recipients == 4 * sent
    assert groups_counted(s) == 2
    assert sum(g.seq == 0 for g in client.calls) == tries
    assert (s.open_in_doubt, s.open_retry_pending) == (0, 0)
    assert run_outcome(s) == 0


async def _settle_elsewhere(database: str, where: str, group: Group, other: str) -> None:
    """Another process takes ``group`` (in doubt) over from a run paused past its lease and
    decides it as ``other`` says: ``accepted`` (by the API's records), ``never_accepted``
    (and lost back unsent), or ``resent_there`` (never accepted, and sent there); then it is
    paused past its own lease. ``still_holds``: it holds the group, undecided, for now."""
    age_claims(database, 31)
    store = open_store(where, "run")
    taker = coordinator_for(store, FAST.lease_s)
    try:
        assert await taker.claim(group.id)
        if other == "accepted":
            store.append_now(events.Sent(group.id, group.to, group.seq, message_id="rec-1"))
        elif other != "still_holds":
            store.append_now(never_accepted(0.0, "", group=group.id, seq=group.seq, to=group.to))
        if other == "resent_there":
            later = iso(time.time() + 60)
            again = events.Attempt(
                group.id, group.to, group.seq, group.message.from_, key="k-there", time=later
            )
            await store.append(again, fence=taker.fence(group.id))
            store.append_now(
                events.Sent(group.id, group.to, group.seq, message_id="msg-there", time=later)
            )
    finally:
        await taker.close()
        await store.close()
    if other != "still_holds":
        age_claims(database, 31)


async def _one_group_delivered(jobs: JobFactory, database: str) -> tuple[JobConfig, FakeClient]:
    """A job of one group of 4 sent on a database ledger, and the client whose API now says
    every member of it was delivered."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    job = replace(job, database=str(named(database, job.name)))
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    (g,) = client.calls
    client.delivery[f"msg-{g.id}-0"] = tuple(RecipientStatus(p, "delivered") for p in g.to)
    return job, client


@pytest.mark.looptime(True)  # track's passes, seconds apart, until a 30 s lease runs out
async def test_track_follow_on_a_database_waits_while_a_run_holds_a_claim(
    jobs: JobFactory, database: str
) -> None:
    """track --follow on a database ledger whose every recipient is final goes on while a
    run of it holds a live claim, and stops once that claim's lease has run out."""
    job, client = await _one_group_delivered(jobs, database)
    run = open_store(job.where, "append")  # as a run of an older bulk-mms: no run lock
    coord = coordinator_for(run, FAST.lease_s)
    try:
        assert await coord.claim("next")  # a run of the job, about to send its next group
        tracking = asyncio.create_task(
            track_ledger(job.where, FAST, client, follow=True, clock=FakeClock())
        )
        await asyncio.sleep(FAST.track.interval * 3.5)
        assert not tracking.done()
        age_claims(database, FAST.lease_s + 1)  # its lease ran out: it ended
        result = await asyncio.wait_for(tracking, FAST.track.interval * 2)
    finally:
        await coord.close()
        await run.close()
    assert (result.statuses, result.pending) == ({"delivered": 4}, 0)


async def test_track_follow_on_a_database_ends_as_soon_as_the_last_run_has_ended(
    jobs: JobFactory, database: str
) -> None:
    """track --follow on a database ledger whose run has ended, every recipient final, ends
    after one pass: the run gave its claims back, so nothing is waited on (no lease)."""
    job, client = await _one_group_delivered(jobs, database)
    with capture_logs() as logs:
        result = await asyncio.wait_for(
            track_ledger(job.where, FAST, client, follow=True, clock=FakeClock()),
            FAST.track.interval * 2,
        )
    assert (result.statuses, result.pending, result.passes) == ({"delivered": 4}, 0, 1)
    assert not [e for e in logs if e["event"] == "track.waiting"]


async def test_with_a_database_ledger_the_suppression_list_is_its_table(
    jobs: JobFactory, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`suppress add --ledger URL` writes the database's own list, shared by every host: a job
    on that database rejects the number without a request."""
    where = f"{database}?ledger=supp"
    assert main(["-q", "suppress", "add", "+12125550001", "--ledger", where]) == 0
    jobs.people(4)
    job = replace(jobs.job(extra="group_size = 4"), database=where)
    client = FakeClient()
    s = await run_job(job, FAST, client, clock=FakeClock())
    assert "+12125550001" not in client.sent_numbers()
    assert (s.rejected_rows, s.suppressed_rows) == (0, 1)
    capsys.readouterr()
    assert main(["-q", "suppress", "list", "--ledger", where]) == 0
    assert capsys.readouterr().out.split() == ["+12125550001"]


@pytest.mark.parametrize("removed", ["after", "before"])
async def test_a_removal_from_the_table_after_a_40300_wins_over_the_put_back(
    jobs: JobFactory, database: str, monkeypatch: pytest.MonkeyPatch, removed: str
) -> None:
    """With a database ledger, a member the API refused as opted out (40300) and then taken
    off the table by hand (`suppress remove --ledger`) is not put back by the job's next
    run; one taken off before a refusal whose write to the table failed is put back."""
    from bulk_mms.ledger.pgsuppression import PostgresSuppressed  # noqa: PLC0415 - psycopg

    where = f"{database}?ledger=removals"
    jobs.people(2)
    job = replace(jobs.job(extra="group_size = 1"), database=where)
    asked = numbers(2)[0]

    def handler(g: Group, n: int) -> SendReceipt | Rejected:
        if asked not in g.to:
            return ok_receipt(g, n)
        return Rejected("refused", status=409, errors=(ApiError("40300", "Blocked", ""),))

    def lost(self: PostgresSuppressed, phones: object, reason: str) -> list[str]:
        raise LedgerError(where, "server closed the connection unexpectedly")

    if removed == "after":
        await run_job(job, FAST, FakeClient(handler), clock=FakeClock(wall=time.time() - 3600))
        assert suppression_for(None, where).numbers() == [asked]
        assert main(["-q", "suppress", "remove", asked, "--ledger", where]) == 0
    else:
        assert main(["-q", "suppress", "add", asked, "--ledger", where]) == 0
        assert main(["-q", "suppress", "remove", asked, "--ledger", where]) == 0
        with monkeypatch.context() as cut:
            cut.setattr(PostgresSuppressed, "add", lost)
            await run_job(job, FAST, FakeClient(handler), clock=FakeClock(wall=time.time() + 3600))
        assert suppression_for(None, where).numbers() == []
    rerun = FakeClient(handler)
    await run_job(job, FAST, rerun, clock=FakeClock(wall=time.time() + 7200))
    assert rerun.calls == []
    assert suppression_for(None, where).numbers() == ([] if removed == "after" else [asked])


async def _cut_short(job_path: Path, when: dt.datetime) -> JobConfig:
    """Run the job as of ``when`` (its {date} ledger) and stop it after one group."""
    from bulk_mms.config import load_job  # noqa: PLC0415 - this test's alone

    earlier = load_job(job_path, now=when)
    await run_job(earlier, FAST, FakeClient(), limit=1)
    return earlier


def test_a_campaign_cut_at_midnight_finishes_its_database_ledger(
    jobs: JobFactory, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A {date} job whose database ledger yesterday's run left unfinished: today's run finishes
    that ledger, as for a file, instead of beginning today's and texting again whoever
    yesterday reached."""
    jobs.people(24)
    job = jobs.job(extra=f'group_size = 4\nledger = "{database}?ledger={{name}}-{{date}}"')
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    earlier = asyncio.run(_cut_short(job.path, yesterday))
    assert earlier.database is not None
    monkeypatch.setenv("TELNYX_API_KEY", KEY)
    fake = FakeTelnyx()
    with fake_api_thread(fake) as url:
        assert main(["-q", "run", str(job.path), "--base-url", url]) == 0
    assert sorted(fake.recipient_counts()) == numbers(24)[4:]  # the first group went yesterday
    assert summarize(earlier.database).recipient_states.sent == 24


class _Behind:
    """The time module as a host whose wall clock is two minutes slow sees it."""

    monotonic = staticmethod(time.monotonic)
    clock_gettime = staticmethod(time.clock_gettime)
    gmtime = staticmethod(time.gmtime)  # an event's stamp is written with these
    strftime = staticmethod(time.strftime)

    @staticmethod
    def time() -> float:
        return time.time() - 120.0


async def test_a_host_whose_clock_is_slow_keeps_the_databases_deadline(
    jobs: JobFactory, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose clock is two minutes slow, on a shared ledger, judges the job's deadline
    by the database's clock: a deadline the database has passed (though the host's clock
    has not) records the group expired and sends nothing, and the skew is logged."""
    import bulk_mms.clock  # noqa: PLC0415 - the module whose time this test slows

    jobs.people(4)
    passed = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    job = jobs.job(extra=f'group_size = 4\ndeadline = "{passed.isoformat()}"')
    job = replace(job, database=str(named(database, job.name)))
    monkeypatch.setattr(bulk_mms.clock, "time", _Behind)
    client = FakeClient()
    with capture_logs() as logs:
        s = await run_job(job, FAST, client)
    assert (client.calls, s.sent_groups, s.expired_groups) == ([], 0, 1)
    skewed = [e for e in logs if e["event"] == "clock.skewed"]
    assert len(skewed) == 1
    assert 119 < skewed[0]["seconds"] < 121


async def test_the_webhook_receiver_on_a_host_whose_clock_is_slow_keeps_the_databases_time(
    jobs: JobFactory, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bulk-mms webhooks on a database ledger, from a host whose clock is two minutes slow,
    keeps the database's time (its stamps are the runs'), and logs the skew once."""
    import bulk_mms.clock  # noqa: PLC0415 - the module whose time this test slows
    from bulk_mms.webhooks import serve_webhooks  # noqa: PLC0415 - cryptography

    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    job = replace(job, database=str(named(database, job.name)))
    await run_job(job, FAST, FakeClient(), clock=FakeClock())
    monkeypatch.setattr(bulk_mms.clock, "time", _Behind)
    stop = asyncio.Event()
    with capture_logs() as logs:
        receiver = await serve_webhooks(
            job.where, "127.0.0.1", 0, SIGNER.public_key(), stop, started=lambda _: stop.set()
        )
    assert abs(receiver.clock.wall() - time.time()) < 30
    assert [round(e["seconds"]) for e in logs if e["event"] == "clock.skewed"] == [120]


async def test_track_on_a_host_whose_clock_is_slow_keeps_the_databases_time(
    jobs: JobFactory, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """track on a database ledger, from a host whose clock is two minutes slow, stamps what
    it records by the database's time (a carrier's reset it computes is the runs' reset) and
    logs the skew once."""
    import bulk_mms.clock  # noqa: PLC0415 - the module whose time this test slows

    job, client = await _one_group_delivered(jobs, database)
    monkeypatch.setattr(bulk_mms.clock, "time", _Behind)
    with capture_logs() as logs:
        result = await track_ledger(job.where, FAST, client)
    assert result.statuses == {"delivered": 4}
    assert [round(e["seconds"]) for e in logs if e["event"] == "clock.skewed"] == [120]
    stamps = [parse_time(e.time) for e in read_events(job.where) if isinstance(e, events.Status)]
    assert len(stamps) == 4
    assert all(abs(t - time.time()) < 30 for t in stamps)


def test_a_remove_whose_stop_time_cannot_be_kept_takes_nobody_off(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``suppress remove`` on the table deletes a STOP's row and keeps its time as one change:
    when the time cannot be written (the connection lost between the two), the number stays
    listed with its STOP time, so the remove can be run again and keeps it."""
    from bulk_mms.ledger.pgsuppression import PostgresSuppressed  # noqa: PLC0415 - psycopg

    phone, stop = "+12125550002", "texted STOP (webhook) at 2026-11-23T10:05:00.000000Z"
    where = f"{database}?ledger=keywords"
    suppression_for(None, where).add([phone], stop)

    def lost(self: PostgresSuppressed, phone: str, reason: str, texted: float) -> bool:
        raise LedgerError(where, "server closed the connection unexpectedly")

    with monkeypatch.context() as cut:
        cut.setattr(PostgresSuppressed, "record_keyword", lost)
        with pytest.raises(LedgerError):
            suppression_for(None, where).remove([phone])
    listed = suppression_for(None, where)
    assert listed.numbers() == [phone]
    assert listed.reason(phone) == stop
    assert listed.remove([phone]) == [phone]
    assert suppression_for(None, where).keyword_at(phone) == instant("2026-11-23T10:05:00Z")


async def test_a_run_puts_back_the_opt_outs_its_table_lacks_in_one_read_of_the_table(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a database ledger, the run's look for the opt-outs its ledger records that the
    table lacks reads their keyword and removal times in one statement, however many there
    are, and puts back the same numbers as a file's list does."""
    from bulk_mms.ledger.pgsuppression import PostgresSuppressed  # noqa: PLC0415 - psycopg

    where = f"{database}?ledger=put-back"
    suppression_for(None, where).add(["+12125550015"], "added by hand")
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO bulk_mms_keywords (number, texted_at) VALUES (%s, %s)",
            ("+12125550011", instant("2026-11-23T10:30:00Z")),
        )
        removals = [
            ("+12125550012", instant("2026-11-23T11:00:00Z")),
            ("+12125550013", instant("2026-11-23T09:00:00Z")),
        ]
        for removal in removals:
            conn.execute("INSERT INTO bulk_mms_removals VALUES (%s, %s)", removal)
    listed = PostgresSuppressed(where)
    said: list[str] = []
    run = listed._run

    def counted(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        said.append(sql.split(maxsplit=1)[0])
        return run(sql, params)

    monkeypatch.setattr(listed, "_run", counted)
    await put_back_opted_out(refusals(), listed)
    added = sorted(set(suppression_for(None, where).numbers()) - {"+12125550015"})
    assert (said, added) == (["SELECT", "INSERT"], PUT_BACK)


def test_a_resumes_excluded_ledger_is_opened_through_its_own_database_alone(
    database: str,
) -> None:
    """A database ledger a run's --exclude-sent named (recorded without its password) is
    opened through the resumed ledger's own URL (its password kept) when in that database
    and of the campaign recorded; from another database, a file, or after another campaign
    was begun under its name, it is one that cannot be read there."""
    old = write_ledger(named(database, "old"), [events.Header("old", "sha256:aa", campaign="c1")])
    url = yarl.URL(database)
    secret = str(url.with_user(url.user or "postgres").with_password("s3cret"))
    view = LedgerView(sent_excluded_from=((display(old), "c1"),))
    assert resume_leaves_out(view, named(secret, "b", rename=True)) == (
        [named(secret, "old", rename=True)],
        [],
    )
    elsewhere = str(url.with_path("/another_database").update_query(ledger="b"))
    for where in (elsewhere, Path("b.jsonl")):
        assert resume_leaves_out(view, where) == ([], [display(old)])
    replaced = LedgerView(sent_excluded_from=((display(old), "c0"),))
    assert resume_leaves_out(replaced, named(database, "b", rename=True)) == ([], [display(old)])
