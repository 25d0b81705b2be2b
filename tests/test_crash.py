"""Kill the real CLI at random moments and resume it; the server's record must stay exact.

The fake API runs in a thread of the test process; ``bulk-mms run`` runs in a subprocess that
is SIGKILLed several times mid-run, then run to the end. With a server that honours
Idempotency-Key every recipient is accepted exactly once; with one that ignores it (and
``retry_ambiguous = false``) no recipient is accepted twice and every one missing is in doubt.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bulk_mms.config import JobConfig
from bulk_mms.fake_api import FakeTelnyx, parse_faults
from bulk_mms.report import summarize
from bulk_mms.testing import ledger_events
from tests.conftest import ArrivalsFake, JobFactory, numbers, wait_for
from tests.threaded import fake_api_thread

pytestmark = pytest.mark.slow

KEY = "crash-test-key"
N = 160


def start(job: Path, url: str, config: Path, *flags: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TELNYX_API_KEY": KEY}
    env.pop("TELNYX_BASE_URL", None)
    cmd = [
        sys.executable,
        "-m",
        "bulk_mms",
        *(flags or ("-q",)),
        "run",
        str(job),
        "--base-url",
        url,
    ]
    cmd += ["--config", str(config)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("honour_keys", [True, False])
def test_sigkill_at_random_moments_then_resume(jobs: JobFactory, honour_keys: bool) -> None:
    """Four SIGKILLs mid-run and a final run: exactly once with keys, at most once without."""
    fake = FakeTelnyx(api_key=KEY, replay_keys=honour_keys)
    jobs.people(N)
    job = jobs.job(extra="group_size = 2")
    config = jobs.root / "config.toml"
    flag = str(honour_keys).lower()
    config.write_text(f"[limits]\nrate = 30\nconcurrency = 4\n[retry]\nretry_ambiguous = {flag}\n")
    rng = random.Random(7 if honour_keys else 8)
    kills = 0
    with fake_api_thread(fake) as url:
        for _ in range(4):
            proc = _started_sending(job, url, config)
            time.sleep(rng.uniform(0.0, 0.6))  # a random moment of its sending
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=10)
        final = start(job.path, url, config)
        out, err = final.communicate(timeout=60)
    assert kills >= 3, "the job finished before it could be killed: slow the rate down"
    assert final.returncode in (0, 1), err.decode()
    counts = fake.recipient_counts()
    assert max(counts.values()) == 1
    status = summarize(job.ledger)
    if honour_keys:
        assert sorted(counts) == numbers(N)
        assert final.returncode == 0
        assert status.sent_recipients == N
    else:
        missing = set(numbers(N)) - set(counts)
        ledger_doubt = _in_doubt_numbers(job.ledger)
        assert missing <= ledger_doubt
        assert status.failed_groups == 0
    assert KEY.encode() not in job.ledger.read_bytes()
    assert KEY.encode() not in out + err


def _started_sending(job: JobConfig, url: str, config: Path) -> subprocess.Popen[bytes]:
    """A run of ``job`` (:func:`start`) once it has written an attempt of its own to the
    ledger (or has ended)."""
    before = _attempts(job.ledger)
    proc = start(job.path, url, config)
    wait_for("the run to send", lambda: _attempts(job.ledger) > before or proc.poll() is not None)
    return proc


def _attempts(ledger: Path) -> int:
    """How many attempts the ledger at ``ledger`` holds."""
    return ledger.read_bytes().count(b'"event":"attempt"') if ledger.exists() else 0


def _in_doubt_numbers(ledger: Path) -> set[str]:
    """Recipients the ledger lists in doubt at the end (in doubt, and not sent later)."""
    events = ledger_events(ledger)
    sent = {e["group"] for e in events if e["event"] == "sent"}
    return {
        p for e in events if e["event"] == "in_doubt" and e["group"] not in sent for p in e["to"]
    }


def paced_job(jobs: JobFactory) -> tuple[FakeTelnyx, JobConfig, Path]:
    """A job of N recipients in pairs, paced at 40 groups/s: about two seconds of sending."""
    jobs.people(N)
    job = jobs.job(extra="group_size = 2")
    config = jobs.root / "config.toml"
    config.write_text("[limits]\nrate = 40\nconcurrency = 4\n")
    return FakeTelnyx(api_key=KEY), job, config


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly_and_rerun_resumes(
    jobs: JobFactory, sig: signal.Signals, code: int
) -> None:
    """SIGINT/SIGTERM: requests in flight finish, one summary line, exit 130/143; a rerun
    completes with every recipient accepted exactly once."""
    fake, job, config = paced_job(jobs)
    with fake_api_thread(fake) as url:
        proc = start(job.path, url, config)
        _wait_for_line(job.ledger, b'"event":"sent"')  # sending: the handlers are in place
        time.sleep(0.3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == code
        assert f"stopped by {sig.name}" in err.decode()
        before = sum(fake.recipient_counts().values())
        assert 0 < before < N
        final = start(job.path, url, config)
        final.communicate(timeout=60)
    assert final.returncode == 0
    assert fake.recipient_counts() == dict.fromkeys(numbers(N), 1)
    # nothing was left in doubt by the clean stop: every attempt has an outcome
    status = summarize(job.ledger)
    assert status.in_doubt_groups == 0


def test_second_sigint_cancels_at_once_and_rerun_is_exact(jobs: JobFactory) -> None:
    """A second SIGINT cancels requests in flight; their attempts are durable, so the rerun
    repeats them under the same key and every recipient is still accepted exactly once."""
    fake, job, config = paced_job(jobs)
    with fake_api_thread(fake) as url:
        proc = start(job.path, url, config)
        _wait_for_line(job.ledger, b'"event":"sent"')  # sending: the handlers are in place
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 130, err.decode()[-3000:]
        assert b"Traceback" not in err
        final = start(job.path, url, config)
        final.communicate(timeout=60)
    assert final.returncode == 0
    assert fake.recipient_counts() == dict.fromkeys(numbers(N), 1)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_a_day_long_pause_at_once(
    jobs: JobFactory, sig: signal.Signals, code: int
) -> None:
    """A 429 asking for ages (clamped to max_retry_after, 10 minutes here) pauses the sender; a
    signal ends the pause within a second: exit 130/143, job.finished logged, the lock
    released (a rerun starts at once), and the 429'd group on record, not in doubt."""
    fake, job, config = paced_job(jobs)
    config.write_text("[limits]\nrate = 40\nconcurrency = 4\n[retry]\nmax_retry_after = 600\n")
    fake.faults.extend(parse_faults("huge-retry-after*4"))
    with fake_api_thread(fake) as url:
        proc = start(job.path, url, config, "--log-json")
        wait_for("a 429 answered", lambda: len(fake.faults) < 4)
        assert proc.poll() is None  # paused, not finished
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - t0
        assert proc.returncode == code, err.decode()[-2000:]
        assert elapsed < 15, f"took {elapsed:.1f} s to stop"  # not the pause's 600 s, even loaded
        assert b"Traceback" not in err
        assert b'"job.finished"' in err
        assert summarize(job.ledger).in_doubt_groups == 0
        fake.faults.clear()
        final = start(job.path, url, config)
        final.communicate(timeout=60)
    assert final.returncode == 0
    assert fake.recipient_counts() == dict.fromkeys(numbers(N), 1)


def test_an_endless_body_keeps_the_process_small(jobs: JobFactory, tmp_path: Path) -> None:
    """Answers whose bodies never end are read up to 1 MiB each: the run finishes with every
    recipient accepted once (with a server that replays keys, so the cut-off groups are
    retried in the same run), no traceback, and a peak RSS of this process alone of a few
    tens of MB."""
    fake, job, config = paced_job(jobs)
    config.write_text(config.read_text() + '[api]\nidempotency = "replayed"\n')
    fake.replay_keys = True
    fake.faults.extend(parse_faults("endless-body*6"))
    err_path = tmp_path / "stderr"
    with fake_api_thread(fake) as url, err_path.open("wb") as err_file:
        env = {**os.environ, "TELNYX_API_KEY": KEY}
        env.pop("TELNYX_BASE_URL", None)
        cmd = [sys.executable, "-m", "bulk_mms", "-q", "run", str(job.path), "--base-url", url]
        peak = tmp_path / "peak"
        code = subprocess.call(
            [sys.executable, "-c", _PEAK_OF, str(peak), *cmd, "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    err = err_path.read_bytes()
    assert code == 0, err.decode()[-2000:]
    assert b"Traceback" not in err
    assert fake.recipient_counts() == dict.fromkeys(numbers(N), 1)
    assert int(peak.read_text()) < 300 * 1024  # kB on Linux


#: Runs ``argv[2:]`` as its child, writes the child's peak RSS (kB) to ``argv[1]`` and exits
#: with its code. A process started straight from pytest's would report pytest's own peak as
#: its own (Linux keeps the old memory's high-water mark across exec), so the figure would
#: depend on which tests ran before; this small process's child starts from its memory.
_PEAK_OF = """\
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _wait_for_line(path: Path, needle: bytes) -> None:
    """Wait until ``needle`` is in the ledger at ``path``."""
    wait_for(f"{needle!r} in {path}", lambda: path.exists() and needle in path.read_bytes())


def test_a_process_stopped_past_the_deadline_sends_nothing_once_continued(
    jobs: JobFactory,
) -> None:
    """A run paced at two groups a second, SIGSTOPped after its first send and continued two
    seconds past its job's deadline: no request reaches the API after the deadline (those
    queued, paced or between connection and send when it stopped are not sent), the rest is
    recorded expired_unsent, and the run exits 1 with nobody in doubt or left out."""
    fake = ArrivalsFake(api_key=KEY)
    jobs.people(40)
    deadline = datetime.now(UTC) + timedelta(seconds=4)
    job = jobs.job(extra=f'group_size = 2\ndeadline = "{deadline.isoformat()}"')
    config = jobs.root / "config.toml"
    config.write_text("[limits]\nrate = 2\nconcurrency = 4\n")
    with fake_api_thread(fake) as url:
        proc = start(job.path, url, config)
        _wait_for_line(job.ledger, b'"event":"sent"')
        proc.send_signal(signal.SIGSTOP)
        time.sleep(max(0.0, deadline.timestamp() - time.time()) + 2.0)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err.decode()[-2000:]
    assert fake.arrivals
    assert max(fake.arrivals) <= deadline.timestamp()
    s = summarize(job.ledger)
    assert (s.recipient_states.sent, s.recipient_states.in_doubt) == (2 * len(fake.arrivals), 0)
    assert s.recipient_states.failed == 40 - 2 * len(fake.arrivals)
