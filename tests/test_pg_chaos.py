"""A chaos rehearsal in small: three real `bulk-mms run` hosts on one PostgreSQL ledger and one
fake API, while one is paused past its lease, one is killed, the server ends their sessions,
a table is locked, the API answers a storm of 429s, and numbers text STOP mid-run (the
hosts' database ledger's suppression list). Every
valid recipient is accepted exactly once, no STOP texted before the hosts reach that number
is sent, every exit code is a documented one, and no traceback reaches the user."""

from __future__ import annotations

import signal
import subprocess
import time

import psycopg
import pytest

from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.fake_api.faults import parse_faults
from bulk_mms.report import summarize
from tests.conftest import JobFactory, held_for, live_claims, numbers, wait_for, waits_on_a_lock
from tests.test_pg_faults import (
    _config,
    _count,
    _locked,
    _run,
    _stopped,
    _terminate,
)
from tests.test_postgres import KEY
from tests.threaded import fake_api_thread

pytestmark = pytest.mark.slow

PEOPLE = 800
#: The numbers that text STOP once the hosts are sending: the last of the input.
STOPS = numbers(PEOPLE)[-10:]


def test_hosts_under_every_fault_accept_each_recipient_once(
    jobs: JobFactory, database: str
) -> None:
    """Three hosts through a pause past the lease, a kill -9, terminated sessions, a locked
    ledger table, a 429 storm and mid-run STOPs, then a rerun: everyone but the STOPs
    accepted exactly once, the STOPs never, counted suppressed; exits 0, 1 or 7 (the killed
    host -9); no traceback."""
    fake = FakeTelnyx(api_key=KEY)
    jobs.people(PEOPLE)
    job = jobs.job(extra="group_size = 2")
    config = _config(jobs.root, "rate = 25\nconcurrency = 2\nlease_s = 2", api="records_lag_s = 0")
    where = f"{database}?ledger=chaos"
    with fake_api_thread(fake) as url:
        hosts = [_run(job.path, url, config, where) for _ in range(3)]
        wait_for("sending", lambda: _count(database, "sent") >= 20)
        with psycopg.connect(database, autocommit=True) as conn:  # what `webhooks` writes
            conn.execute(
                "INSERT INTO bulk_mms_suppressions (number, reason) "
                "SELECT n, 'texted STOP (webhook)' FROM unnest(%s::text[]) n",
                (STOPS,),
            )
        fake.faults.extend(parse_faults("status-429*8"))  # a storm of rate-limit answers
        with _stopped(hosts[0]):  # past its lease: the others take its groups over
            wait_for("its lease to run out", lambda: not live_claims(database, hosts[0].pid))
        hosts[1].kill()
        _terminate_all(database, hosts)
        with _locked(database, "bulk_mms_events"):
            locked = time.monotonic()
            wait_for(
                "a host's write waiting",
                lambda: any(waits_on_a_lock(database, h.pid) for h in hosts),
            )
            held_for(5.0, locked)
        outs = [h.communicate(timeout=240) for h in hosts]
        rerun = _run(job.path, url, config, where)
        outs.append(rerun.communicate(timeout=240))
    assert not fake.faults  # the storm was answered, to the hosts' sends
    codes = [h.returncode for h in hosts]
    assert codes[1] == -signal.SIGKILL
    assert {codes[0], codes[2]} <= {0, 1, 7}, [o[1][-400:] for o in outs]
    assert rerun.returncode == 0, outs[-1][1][-400:]
    for _, err in outs:
        assert b"Traceback" not in err
    counts = fake.recipient_counts()
    assert counts == dict.fromkeys(sorted(set(numbers(PEOPLE)) - set(STOPS)), 1)
    assert summarize(where).rows.suppressed == len(STOPS)


def _terminate_all(database: str, hosts: list[subprocess.Popen[bytes]]) -> None:
    """End every session of the hosts still running, from the server."""
    for host in hosts:
        if host.poll() is None:
            _terminate(database, host.pid)
