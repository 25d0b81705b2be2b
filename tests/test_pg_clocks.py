"""Hosts whose clocks disagree, sharing one PostgreSQL ledger: real ``bulk-mms run`` processes,
one of them under libfaketime (its wall clock minutes off, its monotonic clock true), judge
the job's deadline and the day of a daily cap by the database's clock, so by one clock."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import orjson
import psycopg
import pytest

from bulk_mms.fake_api import FakeTelnyx
from tests.conftest import FAKETIME, JobFactory, missing
from tests.threaded import fake_api_thread

KEY = "pg-clock-key"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _faketime() -> None:
    """These tests need libfaketime: a skip without it (a failure where CI requires it)."""
    if FAKETIME is None:
        missing("no libfaketime (Debian's faketime package) to set a host's clock off")


#: ``python -m bulk_mms`` once its imports are done: it says so in a line on stdout, then
#: takes its arguments from a line of JSON on stdin (:func:`loaded`, :func:`go`).
LOADED: Final = (
    "import json, sys; from bulk_mms.cli import entry; print('loaded', flush=True); "
    "sys.argv[1:] = json.loads(sys.stdin.readline()); sys.exit(entry())"
)


def environment(offset: str | None) -> dict[str, str]:
    """The environment of a host whose wall clock is ``offset`` off (``"+120s"``), if any."""
    env = {**os.environ, "TELNYX_API_KEY": KEY}
    env.pop("TELNYX_BASE_URL", None)
    if offset is not None:
        env |= {"LD_PRELOAD": str(FAKETIME), "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}
    return env


def arguments(job: Path, url: str, config: Path, ledger: str) -> list[str]:
    """The arguments of ``bulk-mms run`` of ``job`` on the fake API at ``url``."""
    where = ["--config", str(config), "--ledger", ledger]
    return ["-q", "run", str(job), "--base-url", url, *where, "--yes"]


def run(
    job: Path, url: str, config: Path, ledger: str, offset: str | None
) -> subprocess.Popen[bytes]:
    """``bulk-mms run`` on a host whose wall clock is ``offset`` off (``"+120s"``), if any."""
    cmd = [sys.executable, "-m", "bulk_mms", *arguments(job, url, config, ledger)]
    pipe = subprocess.PIPE
    return subprocess.Popen(cmd, env=environment(offset), stdout=pipe, stderr=pipe)


def loaded(offset: str | None) -> subprocess.Popen[bytes]:
    """``bulk-mms`` on a host whose wall clock is ``offset`` off, once its imports are done (on
    a busy machine most of a start's time), waiting for its arguments (:func:`go`)."""
    pipe = subprocess.PIPE
    cmd = [sys.executable, "-c", LOADED]
    proc = subprocess.Popen(cmd, env=environment(offset), stdin=pipe, stdout=pipe, stderr=pipe)
    assert proc.stdout is not None
    if proc.stdout.readline() != b"loaded\n":
        proc.kill()
        raise AssertionError(proc.communicate()[1].decode()[-1000:])
    return proc


def go(proc: subprocess.Popen[bytes], argv: list[str]) -> None:
    """Hand a :func:`loaded` program its arguments: it runs."""
    assert proc.stdin is not None
    proc.stdin.write(orjson.dumps(argv) + b"\n")
    proc.stdin.flush()


def finish(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """Each process's exit code, once it ended (killed after 60 s); no traceback from any."""
    for p in procs:
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        assert b"Traceback" not in err, err.decode()[-1000:]
    return [p.returncode for p in procs]


def test_hosts_two_minutes_apart_keep_one_daily_cap_across_its_reset(
    jobs: JobFactory, database: str
) -> None:
    """The daily cap resets at a minute the host two minutes ahead has passed and the other
    has not: both count one day (the database's), so at most 40 are sent, not 40 a day each,
    and the day's count is what was sent (the groups a host's stop at the cap caught in
    flight, at most two of 2 each, given back)."""
    now = dt.datetime.now(dt.UTC)
    reset = now.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    if (reset - now).total_seconds() < 15:  # the run must not cross it by the true clock
        reset += dt.timedelta(minutes=1)
    jobs.people(120)
    job = jobs.job(extra="group_size = 2")
    config = jobs.root / "config.toml"
    config.write_text(
        "[limits]\nrate = 20\nconcurrency = 2\nlease_s = 2\ndaily_recipients = 40\n"
        f'daily_reset = "{reset:%H:%M} UTC"\n[api]\nrecords_lag_s = 0\n'
    )
    where = f"{database}?ledger=daily"
    fake = FakeTelnyx(api_key=KEY)
    with fake_api_thread(fake) as url:
        codes = finish(
            [run(job.path, url, config, where, None), run(job.path, url, config, where, "+120s")]
        )
    assert codes == [5, 5]  # the cap, for both
    sent = sum(fake.recipient_counts().values())
    assert 40 - 2 * 2 * 2 <= sent <= 40
    with psycopg.connect(database) as conn:
        counted = conn.execute("SELECT used FROM bulk_mms_limits").fetchall()
    assert counted == [(sent,)]


def test_a_host_two_minutes_behind_sends_nothing_past_the_deadline(
    jobs: JobFactory, database: str
) -> None:
    """A deadline 5 s away by the true clock, two hosts sending, one of them two minutes
    behind: no request reaches the API after the deadline (the late host keeps the
    database's time, not its own, 120 s earlier). The deadline is set once both hosts have
    loaded the program, so a slow start on a busy machine does not use it up unsent."""
    jobs.people(200)
    config = jobs.root / "config.toml"
    config.write_text(
        "[limits]\nrate = 6\nconcurrency = 2\nlease_s = 2\n[api]\nrecords_lag_s = 0\n"
    )
    where = f"{database}?ledger=deadline"
    fake = FakeTelnyx(api_key=KEY)
    with fake_api_thread(fake) as url:
        hosts = [loaded(None), loaded("-120s")]
        deadline = time.time() + 5
        stamp = dt.datetime.fromtimestamp(deadline, dt.UTC).isoformat(timespec="seconds")
        job = jobs.job(extra=f'group_size = 2\ndeadline = "{stamp}"')
        for host in hosts:
            go(host, arguments(job.path, url, config, where))
        codes = finish(hosts)
    accepted = [fake.wall() - fake.clock() + t for t, _, _ in fake.accept_log]
    assert accepted, codes  # both sent until the deadline
    assert max(accepted) <= int(deadline) + 0.05  # the stamp's whole second, and the trip back
    assert 0 not in codes  # not everyone could be sent in time


def test_a_host_two_minutes_behind_starts_when_the_databases_window_opened(
    jobs: JobFactory, database: str
) -> None:
    """The send window opened this minute by the database's clock; a host two minutes behind
    thinks it is still shut. Its run sends (exit 0), as the database's time says, instead of
    stopping at once as 'outside the window' (exit 4)."""
    opened = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    window = f"{opened:%H:%M}-{opened + dt.timedelta(minutes=30):%H:%M}"
    jobs.people(6)
    job = jobs.job(extra=f'group_size = 2\ntimezone = "UTC"\nsend_window = "{window}"')
    config = jobs.root / "config.toml"
    config.write_text("[limits]\nrate = 20\nlease_s = 2\n[api]\nrecords_lag_s = 0\n")
    where = f"{database}?ledger=window"
    fake = FakeTelnyx(api_key=KEY)
    with fake_api_thread(fake) as url:
        codes = finish([run(job.path, url, config, where, "-120s")])
    assert codes == [0]
    assert sum(fake.recipient_counts().values()) == 6
