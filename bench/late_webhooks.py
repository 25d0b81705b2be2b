"""Benchmark: a webhook receiver's CPU under a steady stream of events that are not its own
(another app on the same messaging profile), each of which it looks for again for
``LATE_WINDOW_S`` before counting it unmatched.

Usage: python bench/late_webhooks.py [RATE] [WARM_S] [MEASURE_S]
(default 200 events a second, 35 s to fill the late window, 10 s measured)

The ledger is a JSONL file, or, when ``BULK_MMS_BENCH_POSTGRES`` names a server (e.g.
``postgresql://postgres@127.0.0.1:5432``), a PostgreSQL ledger in a throwaway database
(dropped after); then it also prints the connections made to that database, and the
statements run there (each read one: the server's transactions), over the measured stretch
(``pg_stat_database``).

Events go straight to the receiver's delivery (no HTTP, no signature: those cost the same
whatever happens to an event after), each in a task of its own as aiohttp runs requests, on
the real clock. It prints the process's CPU seconds per second over the measured stretch, the
tasks alive, the events refused (503: more than ``LATE_MAX`` looked for at once), how long the
deliveries of the measured stretch took to answer, and the process's peak memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ledger import database

from bulk_mms.ledger import Header, Location, Sent, open_store
from bulk_mms.webhooks import WebhookReceiver


def stranger(n: int) -> tuple[str, dict[str, Any]]:
    """Another app's message.sent: an event id, and its data."""
    data: dict[str, Any] = {
        "event_type": "message.sent",
        "id": str(uuid.uuid4()),
        "occurred_at": "2026-11-23T10:00:00.000+00:00",
        "record_type": "event",
        "payload": {
            "id": f"other-app-{n}",
            "direction": "outbound",
            "from": {"phone_number": "+12125550100"},
            "to": [{"phone_number": "+13125550111", "status": "sent"}],
            "errors": [],
        },
    }
    return str(data["id"]), data


async def stream(
    rate: float,
    warm_s: float,
    measure_s: float,
    path: Location,
    sessions: Callable[[], tuple[int, int]],
) -> None:
    store = open_store(path, "append")
    key = Ed25519PrivateKey.generate().public_key()
    receiver = WebhookReceiver(store.fold(), store, key)
    loop = asyncio.get_running_loop()
    start, n, refused = loop.time(), 0, 0
    cpu0 = wall0 = None
    made0 = ran0 = -1
    answered: list[float] = []  # seconds each delivery of the measured stretch took
    delivering: set[asyncio.Task[None]] = set()

    async def deliver(n: int, measured: bool) -> None:
        nonlocal refused
        event_id, data = stranger(n)
        asked = loop.time()
        answer = await receiver._delivery(event_id, "message.sent", data, data["payload"])
        refused += answer.status == 503
        if measured:
            answered.append(loop.time() - asked)

    while (now := loop.time()) < start + warm_s + measure_s:
        if cpu0 is None and now >= start + warm_s:
            cpu0, wall0, (made0, ran0) = time.process_time(), now, sessions()
        due = start + n / rate
        if now < due:
            await asyncio.sleep(due - now)
            continue
        # each its own task, as aiohttp runs each request
        task = asyncio.create_task(deliver(n, cpu0 is not None))
        delivering.add(task)
        task.add_done_callback(delivering.discard)
        n += 1
    assert cpu0 is not None
    assert wall0 is not None
    cpu, wall = time.process_time() - cpu0, loop.time() - wall0
    made, ran = sessions()
    tasks = len(asyncio.all_tasks())
    await asyncio.gather(*delivering)
    answered.sort()
    print(
        f"events {n} at {rate:g}/s ({refused} refused with 503); tasks alive {tasks}; "
        f"unmatched {receiver.unmatched}"
    )
    print(f"CPU over the last {wall:.1f} s: {cpu:.2f} s, {cpu / wall:.3f} s a second")
    print(
        f"answered in {1000 * answered[len(answered) // 2]:.1f} ms (median), "
        f"{1000 * answered[-1]:.1f} ms (slowest)"
    )
    if made0 >= 0:
        made, ran = made - made0, ran - ran0
        print(
            f"connections made to the database: {made} ({made / wall:.1f} a second); "
            f"statements there: {ran} ({ran / wall:.0f} a second)"
        )
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    await receiver.close()
    await store.close()


def main() -> None:
    given = [float(a) for a in sys.argv[1:]]
    rate, warm_s, measure_s = given + [200.0, 35.0, 10.0][len(given) :]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    with ledger() as (path, sessions):
        run = open_store(path)
        run.append_now(Header(job="bench", fingerprint=None))
        run.append_now(Sent("g1", ("+13125550100",), 1, message_id="ours", time="x"))
        run.close_sync()
        asyncio.run(stream(rate, warm_s, measure_s, path, sessions))


@contextlib.contextmanager
def ledger() -> Iterator[tuple[Location, Callable[[], tuple[int, int]]]]:
    """The bench's ledger (see the module doc), and the connections made to its database and
    the transactions run there so far (-1, -1: a file)."""
    server = os.environ.get("BULK_MMS_BENCH_POSTGRES")
    if not server:
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp) / "ledger.jsonl", lambda: (-1, -1)
        return
    with database(server) as url, psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        name = url.rsplit("/", 1)[1]

        def sessions() -> tuple[int, int]:
            sql = (
                "SELECT sessions, xact_commit + xact_rollback FROM pg_stat_database "
                "WHERE datname = %s"
            )
            row = admin.execute(sql, (name,)).fetchone()
            return (int(row[0]), int(row[1])) if row else (0, 0)

        yield f"{url}?ledger=bench", sessions


if __name__ == "__main__":
    main()
