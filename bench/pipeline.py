"""Benchmark: read, validate, de-duplicate and group a large input in one streaming pass.

Usage: python bench/pipeline.py [ROWS]   (default 1,000,000)

Writes a CSV of ROWS recipients (3% invalid, 2% duplicates) to a temporary folder, the numbers
written as people write them (a quarter each ``+1NXXNXXXXXX``, ``(NXX) NXX-XXXX``,
``NXX-NXX-XXXX``, ``1NXXNXXXXXX``), runs the pipeline up to sending in this process and prints
rows/s and peak RSS; then ``bulk-mms run JOB --dry-run`` on the same file as a child process
(the whole program: start-up, the input's scan and its plan), its rows/s and peak RSS by
getrusage of that child alone. BENCH_CANONICAL=1 writes every number canonical;
BENCH_DRY_RUN_ONLY=1 measures only the dry run. Also times the
replay of a ledger with ROWS/8 sent groups (what a resume reads first), then, with a delivery
status for every recipient appended, a resume and a report: the first replays and leaves a
checkpoint of the fold, the second starts from it.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bulk_mms.config import load_job
from bulk_mms.ledger import load
from bulk_mms.models import Group, RejectedRow
from bulk_mms.prepare import plan
from bulk_mms.report import summarize
from bulk_mms.scan import open_reader


def write_input(path: Path, rows: int) -> None:
    rng = random.Random(1)
    areas = ["212", "312", "415", "617", "206", "303", "512", "404", "416", "604"]
    with path.open("w", encoding="utf-8") as f:
        f.write("phone,first_name\n")
        for i in range(rows):
            r = rng.random()
            if r < 0.03:
                phone = f"+44 20 7946 {i % 10000:04d}" if r < 0.015 else f"12ab{i}"
            elif r < 0.05 and i > 10:
                phone = f"+1{areas[(i - 7) % 10]}{(i - 7) // 10 % 10_000_000:07d}"
            else:
                phone = f"+1{areas[i % 10]}{i // 10 % 10_000_000:07d}"
                phone = phone[:5] + "2" + phone[6:]  # exchange must not start with 0/1
            f.write(f"{as_written(phone, i)},Name{i}\n")


#: How people write a +1 number, a quarter of the rows each (BENCH_CANONICAL=1: all canonical).
LAYOUTS = ("+1{a}{e}{l}", "({a}) {e}-{l}", "{a}-{e}-{l}", "1{a}{e}{l}")


def as_written(phone: str, i: int) -> str:
    """``phone`` (canonical or not a +1 number) in row ``i``'s layout; a duplicate keeps the
    layout of its row, so it is written unlike its first (as in a real export)."""
    if os.environ.get("BENCH_CANONICAL") or len(phone) != 12 or not phone.startswith("+1"):
        return phone
    layout = LAYOUTS[i % len(LAYOUTS)]
    return layout.format(a=phone[2:5], e=phone[5:8], l=phone[8:])


def dry_run_child(job: Path, rows: int) -> None:
    """``bulk-mms run JOB --dry-run`` as a user runs it: wall time, rows/s, and the child's own
    peak RSS (``wait4``'s rusage of that one process)."""
    program = Path(sys.executable).with_name("bulk-mms")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(program), "-q", "run", str(job), "--dry-run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        print(f"dry run failed ({proc.returncode}): {err[-300:]}", file=sys.stderr)
        return
    cpu = usage.ru_utime + usage.ru_stime
    print(
        f"bulk-mms run --dry-run: {rows:,} rows in {dt:.2f} s ({rows / dt:,.0f} rows/s), "
        f"CPU {cpu:.2f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MB"
    )


def write_job(root: Path) -> Path:
    job = root / "job.toml"
    job.write_text(
        'name = "bench"\ninput = "in.csv"\nmix_unrelated = true\n[message]\nfrom = "+18445550001"\n'
        'text = "Hi {first_name}"\n'
    )
    return job


def member(group: int, k: int) -> str:
    """Member ``k`` of group ``group``: a distinct valid number for each of up to 8,000,000."""
    n = group * 8 + k
    return f"+1212{n // 10000 % 800 + 200:03d}{n % 10000:04d}"


def write_ledger(path: Path, groups: int) -> None:
    header = {"event": "job", "job": "bench", "fingerprint": "x", "group_size": 8}
    with path.open("wb") as f:
        f.write(orjson.dumps(header) + b"\n")
        for i in range(groups):
            gid = f"{i:024x}"
            to = [member(i, k) for k in range(8)]
            attempt = {
                "event": "attempt",
                "group": gid,
                "seq": i,
                "from": "+13125550100",
                "attempt": 1,
                "key": f"bulk-mms-{gid}",
                "t0": 1.8e9,
                "time": "2026-11-23T16:00:00.000Z",
            }
            f.write(orjson.dumps(attempt) + b"\n")
            f.write(
                orjson.dumps(
                    {
                        "event": "sent",
                        "group": gid,
                        "seq": i,
                        "to": to,
                        "message_id": "40385f64-5717-4562-b3fc-2c963f66afa6",
                        "statuses": dict.fromkeys(to, "queued"),
                        "wait_seconds": 0.5,
                        "cost": {"amount": "0.0408", "currency": "USD"},
                        "attempts": 1,
                        "time": "2026-11-23T16:00:00.000Z",
                    }
                )
                + b"\n"
            )


def append_statuses(path: Path, groups: int) -> None:
    """A final delivery status line for every recipient, as `track` would write them."""
    with path.open("ab") as f:
        for i in range(groups):
            gid = f"{i:024x}"
            for k in range(8):
                f.write(
                    orjson.dumps(
                        {
                            "event": "status",
                            "group": gid,
                            "recipient": member(i, k),
                            "status": "delivered",
                            "message_id": "40385f64-5717-4562-b3fc-2c963f66afa6",
                            "errors": [],
                            "at": "2026-11-23T16:00:05.000Z",
                            "source": "track",
                            "time": "2026-11-23T16:10:00.000Z",
                        }
                    )
                    + b"\n"
                )


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_input(root / "in.csv", rows)
        job_path = write_job(root)
        if os.environ.get("BENCH_DRY_RUN_ONLY"):
            dry_run_child(job_path, rows)
            return
        job = load_job(job_path)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        groups = rejected = recipients = 0
        with open_reader(job) as reader:
            for item in plan(job, reader):
                if isinstance(item, RejectedRow):
                    rejected += 1
                elif isinstance(item, Group):
                    groups += 1
                    recipients += len(item.to)
        dt = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"pipeline: {rows:,} rows in {dt:.1f} s ({rows / dt:,.0f} rows/s)")
        print(f"  {groups:,} groups, {recipients:,} recipients, {rejected:,} rejected rows")
        print(f"  peak RSS {peak:.0f} MB (interpreter and imports: {rss_before:.0f} MB)")
        dry_run_child(job_path, rows)

        n_groups = max(1, rows // 8)
        write_ledger(root / "ledger.jsonl", n_groups)
        size = (root / "ledger.jsonl").stat().st_size / 1e6
        t0 = time.perf_counter()
        view = load(root / "ledger.jsonl", statuses=False)
        dt = time.perf_counter() - t0
        print(f"resume: replayed {view.count('sent'):,} sent groups ({size:.0f} MB) in {dt:.2f} s")

        append_statuses(root / "ledger.jsonl", n_groups)
        size = (root / "ledger.jsonl").stat().st_size / 1e6
        print(f"tracked ledger: +8 status lines per group, {size:.0f} MB")
        for what in ("resume", "report"):
            for attempt in ("replay, leaves a checkpoint", "from the checkpoint"):
                t0 = time.perf_counter()
                if what == "resume":
                    load(root / "ledger.jsonl", statuses=False)
                    counted = ""
                else:
                    summary = summarize(root / "ledger.jsonl")
                    counted = f" ({sum(summary.delivery.values()):,} recipients)"
                dt = time.perf_counter() - t0
                print(f"  {what} of the tracked ledger, {attempt}: {dt:.2f} s{counted}")


if __name__ == "__main__":
    main()
