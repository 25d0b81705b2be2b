"""Benchmark: durable ledger events per second, commit per event versus group commit, for the
JSONL file and (when ``BULK_MMS_BENCH_POSTGRES`` names a server, e.g.
``postgresql://postgres@127.0.0.1:5432``) the PostgreSQL store, side by side in one run.

Usage: python bench/ledger.py [EVENTS] [WRITERS]   (default 2000 events, 32 concurrent writers)

Per-event: each event is written and fsync'd before the next (what a naive ledger does).
Group commit: WRITERS tasks each await ``LedgerStore.append`` (durable on return), as the runner's
workers do; one fsync covers every event queued while the previous fsync ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from bulk_mms.ledger import Attempt, Location, open_store


def event(i: int) -> Attempt:
    return Attempt(f"{i:024x}", ("+12125550100",), i, "+1", 1)


def per_event(path: Location, n: int) -> tuple[float, int]:
    ledger = open_store(path)
    t0 = time.perf_counter()
    for i in range(n):
        ledger.append_now(event(i))
    dt = time.perf_counter() - t0
    ledger.close_sync()
    return n / dt, n


async def group_commit(path: Location, n: int, writers: int) -> tuple[float, int]:
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


@contextlib.contextmanager
def database(server: str) -> Iterator[str]:
    """A scratch database on ``server``, dropped afterwards."""
    name = f"bulk_mms_bench_{secrets.token_hex(4)}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{server}/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    writers = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    rows = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        rows.append(("JSONL", per_event(Path(tmp) / "a.jsonl", n)))
        rows.append(("JSONL", asyncio.run(group_commit(Path(tmp) / "b.jsonl", n, writers))))
    if server := os.environ.get("BULK_MMS_BENCH_POSTGRES"):
        with database(server) as db:
            rows.append(("PostgreSQL", per_event(f"{db}?ledger=a", n)))
            rows.append(("PostgreSQL", asyncio.run(group_commit(f"{db}?ledger=b", n, writers))))
    print("| store | mode | events/s | commits |")
    print("|---|---|---|---|")
    for i, (store, (rate, commits)) in enumerate(rows):
        mode = "commit per event" if i % 2 == 0 else f"group commit, {writers} writers"
        print(f"| {store} | {mode} | {rate:,.0f} | {commits:,} |")


if __name__ == "__main__":
    main()
