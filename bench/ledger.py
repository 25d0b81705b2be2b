"""Benchmark: ledger events per second, fsync per event versus group commit.

Usage: python bench/ledger.py [EVENTS] [WRITERS]   (default 2000 events, 32 concurrent writers)

Per-event: each event is written and fsync'd before the next (what a naive ledger does).
Group commit: WRITERS tasks each await ``LedgerStore.append`` (durable on return), as the runner's
workers do; one fsync covers every event queued while the previous fsync ran.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bulk_mms.ledger import Attempt, open_store


def event(i: int) -> Attempt:
    return Attempt(f"{i:024x}", ("+12125550100",), i, "+1", 1)


def per_event(path: Path, n: int) -> tuple[float, int]:
    ledger = open_store(path)
    t0 = time.perf_counter()
    for i in range(n):
        ledger.append_now(event(i))
    dt = time.perf_counter() - t0
    ledger.close_sync()
    return n / dt, n


async def group_commit(path: Path, n: int, writers: int) -> tuple[float, int]:
    ledger = open_store(path)

    async def writer(k: int) -> None:
        for i in range(k, n, writers):
            await ledger.append(event(i))

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(k) for k in range(writers)))
    dt = time.perf_counter() - t0
    fsyncs = ledger.commits
    await ledger.close()
    return n / dt, fsyncs


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    writers = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        rate1, fs1 = per_event(Path(tmp) / "a.jsonl", n)
        rate2, fs2 = asyncio.run(group_commit(Path(tmp) / "b.jsonl", n, writers))
    print("| mode | events/s | fsyncs |")
    print("|---|---|---|")
    print(f"| fsync per event | {rate1:,.0f} | {fs1:,} |")
    print(f"| group commit, {writers} writers | {rate2:,.0f} | {fs2:,} |")


if __name__ == "__main__":
    main()
