"""Benchmark: the peak memory of a resume, and of a run on a PostgreSQL ledger.

Usage: python bench/resume_memory.py [ROWS [UNSENT]]   (default 1,000,000 rows, 1,000 groups left)

Writes the CSV of ``bench/pipeline.py`` (3% invalid, 2% duplicates, numbers written as people
write them), plans it in this process as a run would, and writes the JSONL ledger of a run that
sent every group but the last UNSENT (an ``attempt`` and a ``sent`` line each, statuses
``queued``). Then ``bulk-mms run`` resumes it as a child process against the fake API (in a
process of its own): it reads the whole input, skips the sent groups and sends the rest, each
new group checked against what the ledger counts sent. Printed: wall time, CPU, and the peak
RSS of that child alone (``wait4``'s rusage).

``BULK_MMS_BENCH_POSTGRES`` (e.g. ``postgresql://postgres@127.0.0.1:5432``) adds a fresh run of
ROWS // 5 rows on a PostgreSQL ledger in a database of its own (dropped after), against the
same run on a JSONL ledger (``BENCH_POSTGRES_ONLY=1``: those two alone).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from bulk_mms.clock import SystemClock
from bulk_mms.config import load_job
from bulk_mms.ledger import Attempt, Sent
from bulk_mms.ledger.events import encode
from bulk_mms.models import Group, Money
from bulk_mms.prepare import header_for, plan
from bulk_mms.reader import fingerprint
from bulk_mms.scan import open_reader

sys.path.insert(0, str(Path(__file__).parent))
from client_cpu import bulk_mms_argv, free_port, start_fake
from ledger import database
from pipeline import write_input, write_job

SENDER = "+18445550001"


def job_file(root: Path) -> Path:
    """``bench/pipeline.py``'s job, its rejected rows (3%, more on small inputs) let through."""
    job = write_job(root)
    job.write_text("max_rejected_share = 0.2\n" + job.read_text())
    return job


def write_ledger(job_path: Path, unsent: int) -> tuple[int, int]:
    """The ledger of a run that sent every group of the job's input but the last ``unsent``:
    (groups sent, recipients sent)."""
    job = load_job(job_path)
    with open_reader(job) as reader:
        groups = [g for g in plan(job, reader) if isinstance(g, Group)]
    sent = groups[: max(0, len(groups) - unsent)]
    cost = Money(Decimal("0.0408"), "USD")
    header = header_for(job, fingerprint(job.input), SystemClock())
    job.ledger.parent.mkdir(parents=True, exist_ok=True)
    with job.ledger.open("wb") as f:
        f.write(encode(header))
        for seq, g in enumerate(sent):
            key = f"bulk-mms-{g.id}"
            f.write(encode(Attempt(g.id, g.to, seq, SENDER, 1, key, 1.8e9, "2026-12-06T07:00:00Z")))
            f.write(
                encode(
                    Sent(
                        g.id,
                        g.to,
                        seq,
                        attempts=1,
                        time="2026-12-06T07:00:00Z",
                        message_id="40385f64-5717-4562-b3fc-2c963f66afa6",
                        from_=SENDER,
                        statuses=dict.fromkeys(g.to, "queued"),
                        wait_seconds=0.5,
                        cost=cost,
                    )
                )
            )
    return len(sent), sum(len(g.to) for g in sent)


def child(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """Run ``argv``: (wall s, CPU s, peak RSS MB of that process alone, its stderr's tail)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-3000:]
    dt = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = f"exit {code}: {tail}"
    return dt, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, tail


def report(what: str, result: tuple[float, float, float, str]) -> None:
    dt, cpu, rss, tail = result
    print(f"{what}: {dt:.1f} s, CPU {cpu:.1f} s, peak RSS {rss:.0f} MB")
    if tail.strip():
        print("  " + tail.strip().replace("\n", "\n  "))


def prepare(root: Path, rows: int, unsent: int) -> None:
    """The input, job and ledger in ``root`` (run in a process of its own: see :func:`main`)."""
    write_input(root / "in.csv", rows)
    job = job_file(root)
    t0 = time.perf_counter()
    groups, recipients = write_ledger(job, unsent)
    size = load_job(job).ledger.stat().st_size / 1e6
    print(
        f"ledger: {groups:,} groups sent, {recipients:,} recipients, {size:.0f} MB "
        f"({time.perf_counter() - t0:.0f} s to write)"
    )


def sent_lines(ledger: Path) -> int:
    """The ledger's ``sent`` events, counted line by line (this process stays small)."""
    with ledger.open("rb") as f:
        return sum(line.startswith(b'{"event":"sent"') for line in f)


def main() -> None:
    """Each input and ledger is made by a process of its own, so that this one stays small: a
    child's ``ru_maxrss`` starts from its parent's resident size when it is spawned (Linux
    counts the parent's pages the child shared until its ``exec``), and a parent that had
    planned a million rows itself would show its own peak as every child's."""
    if sys.argv[1:2] == ["--prepare"]:
        prepare(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    unsent = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    port = free_port()
    fake = start_fake(port)
    base = f"http://127.0.0.1:{port}/v2"
    env = {**os.environ, "TELNYX_API_KEY": "bench-key"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            if not os.environ.get("BENCH_POSTGRES_ONLY"):
                prep = [sys.executable, __file__, "--prepare", str(root), str(rows), str(unsent)]
                subprocess.run(prep, check=True)
                job = root / "job.toml"
                report(
                    f"resume, {rows:,} rows, {unsent:,} groups left",
                    child(bulk_mms_argv(job, base), env),
                )
                after = sent_lines(root / "ledgers" / "bench.jsonl")
                print(f"  the ledger counts {after:,} groups sent after it")
            server = os.environ.get("BULK_MMS_BENCH_POSTGRES")
            if server:
                small = rows // 5
                sub = root / "pg"
                sub.mkdir()
                write_input(sub / "in.csv", small)
                job = job_file(sub)
                report(
                    f"fresh run, {small:,} rows, JSONL ledger", child(bulk_mms_argv(job, base), env)
                )
                with database(server) as url:
                    argv = [*bulk_mms_argv(job, base), "--ledger", url]
                    report(f"fresh run, {small:,} rows, PostgreSQL ledger", child(argv, env))
    finally:
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    main()
