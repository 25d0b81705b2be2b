"""Benchmark: CPU per group, bulk_mms's send path against the official telnyx SDK.

Usage: python bench/client_cpu.py [GROUPS]     (default 2000; needs `pip install telnyx`)

The fake API runs in a separate process, so only the client's CPU is counted (user + system
time of this process, from getrusage). Both sides send the same groups of 8 with 8 requests in
flight:

* sdk: ``AsyncTelnyx.messages.send_group_mms`` in an ``asyncio.Semaphore(8)`` loop, nothing
  recorded;
* bulk_mms: ``run_job`` with the aiohttp client, pacing, retries and the fsync'd ledger (an
  attempt line and an outcome line per group), minus the CPU of reading, validating and grouping
  the same input (measured on its own), which the SDK loop does not do.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import structlog

from bulk_mms.client import AiohttpMmsClient
from bulk_mms.config import Settings, load_job
from bulk_mms.models import Group
from bulk_mms.prepare import open_reader, plan
from bulk_mms.runner import run_job

SENDER = "+13125550100"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_fake(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulk_mms.fake_api", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the fake API did not start")


def write_job(root: Path, groups: int) -> Path:
    rows = [f"+1212{i // 10000 % 800 + 200:03d}{i % 10000:04d},P{i}" for i in range(groups * 8)]
    (root / "in.csv").write_text("phone,first\n" + "\n".join(rows) + "\n")
    job = root / "job.toml"
    job.write_text(
        f'name = "cpu"\ninput = "in.csv"\nmix_unrelated = true\n[message]\nfrom = "{SENDER}"\ntext = "Hi {{first}}"\n'
    )
    return job


async def sdk(base_url: str, groups: list[Group]) -> float:
    from telnyx import AsyncTelnyx  # noqa: PLC0415 - optional: only this benchmark needs it

    client = AsyncTelnyx(api_key="bench-key", base_url=base_url, max_retries=0)
    sem = asyncio.Semaphore(8)

    async def one(g: Group) -> None:
        async with sem:
            await client.messages.send_group_mms(
                from_=SENDER, to=list(g.to), text=g.message.text or "", idempotency_key=g.id
            )

    await one(groups[0])  # warm up: connection and imports
    t0 = cpu()
    await asyncio.gather(*(one(g) for g in groups[1:]))
    spent = cpu() - t0
    await client.close()
    return spent / (len(groups) - 1)


async def ours(base_url: str, job_path: Path, n: int) -> tuple[float, float]:
    job = load_job(job_path)
    t0 = cpu()
    with open_reader(job) as reader:
        planned = sum(1 for _ in plan(job, reader))
    planning = cpu() - t0
    settings = replace(Settings(), rate=10_000.0, concurrency=8)
    async with AiohttpMmsClient(base_url, "bench-key", max_connections=8) as client:
        t0 = cpu()
        s = await run_job(job, settings, client)
        total = cpu() - t0
    assert s.sent_groups == n == planned, (s.sent_groups, n, planned)
    return total / n, (total - planning) / n


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    port = free_port()
    proc = start_fake(port)
    base = f"http://127.0.0.1:{port}/v2"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            job_path = write_job(Path(tmp), n)
            job = load_job(job_path)
            with open_reader(job) as reader:
                groups = [g for g in plan(job, reader) if isinstance(g, Group)]
            try:
                sdk_ms = await sdk(base, groups) * 1000
            except ImportError:
                sdk_ms = None
            whole, send = await ours(base, job_path, n)
    finally:
        proc.terminate()
        proc.wait()
    print(f"groups of 8: {n}")
    if sdk_ms is None:
        print("sdk: not installed (pip install telnyx)")
    else:
        print(f"sdk (AsyncTelnyx, semaphore 8):       {sdk_ms:.3f} ms CPU per group")
    print(f"bulk_mms send path + fsync'd ledger:  {send * 1000:.3f} ms CPU per group")
    print(f"bulk_mms whole run incl. validation:  {whole * 1000:.3f} ms CPU per group")
    if sdk_ms is not None:
        print(f"ratio (send path / sdk): {send * 1000 / sdk_ms:.2f}  (target <= 0.20)")


if __name__ == "__main__":
    asyncio.run(main())
