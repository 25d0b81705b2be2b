"""Benchmark: whole-process CPU of a send, bulk-mms against the floor of its own stack and the SDK.

Usage: python bench/client_cpu.py [GROUPS [ROUNDS]]   (default 2000 groups, 3 rounds; the SDK
row needs `pip install telnyx`, and is left out with BENCH_NO_SDK=1 while iterating: each of
its rounds takes ten times the others'. This machine's speed varies from run to run, so small
changes need more rounds to show.)

BENCH_INSTRUCTIONS=1 adds a second table: the floor and bulk-mms once each under valgrind's
callgrind, which counts the user-space instructions a process executes. That count repeats to
a fraction of a percent whatever else the machine does, where CPU seconds on a shared VM move
by a fifth; it leaves out the kernel's part (socket calls, fsync), so it measures our code, not
the whole cost. Each run takes about forty times as long; the SDK is left out of it.

The fake API runs in a process of its own; each client runs as a fresh process and is charged
its whole user + system CPU, start-up and imports included (getrusage of the children). All send
the same 2,000 groups of 8, 32 requests in flight, to the same fake API, in the same session:

* floor: a bare aiohttp + orjson loop (this file, ``--floor``): read the CSV, chunk it by 8,
  POST each group; no validation, pacing, retries, logging or ledger. The floor of our stack.
* bulk-mms: ``bulk-mms run`` as a user runs it: every number validated, the groups paced, each
  attempt and outcome in the fsync'd ledger.
* sdk: ``AsyncTelnyx.messages.send_group_mms`` in a ``Semaphore(32)`` loop (``--sdk``), nothing
  validated or recorded.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

SENDER = "+13125550100"
IN_FLIGHT = 32
ROUNDS = 3


def _median(values: list[float | None]) -> float | None:
    """The median of the runs, or None when any failed."""
    if not values or any(v is None for v in values):
        return None
    done = sorted(v for v in values if v is not None)
    return done[len(done) // 2]


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
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


def bulk_mms_argv(job: Path, base_url: str) -> list[str]:
    """``bulk-mms run JOB`` as a user runs it, against the fake API at ``base_url``: this
    interpreter's console script, ``IN_FLIGHT`` requests at once, the rate no limit."""
    return [
        str(Path(sys.executable).with_name("bulk-mms")),
        "-q",
        "run",
        str(job),
        "--base-url",
        base_url,
        "--yes",
        "--rate",
        "10000",
        "--concurrency",
        str(IN_FLIGHT),
        "--skip-media-check",
    ]


def write_job(root: Path, groups: int) -> Path:
    rows = [f"+1212{i // 10000 % 800 + 200:03d}{i % 10000:04d},P{i}" for i in range(groups * 8)]
    (root / "in.csv").write_text("phone,first\n" + "\n".join(rows) + "\n")
    job = root / "job.toml"
    job.write_text(
        f'name = "cpu"\ninput = "in.csv"\nmix_unrelated = true\n[message]\nfrom = "{SENDER}"\n'
        'text = "Hi {first}"\n'
    )
    return job


def groups_of(csv_path: Path) -> list[list[str]]:
    with csv_path.open(newline="") as f:
        phones = [row["phone"] for row in csv.DictReader(f)]
    return [phones[i : i + 8] for i in range(0, len(phones), 8)]


async def floor(base_url: str, csv_path: Path) -> None:
    """The floor: aiohttp and orjson, and nothing else."""
    import aiohttp  # noqa: PLC0415 - the child process's own imports are what it is charged
    import orjson  # noqa: PLC0415

    sem = asyncio.Semaphore(IN_FLIGHT)
    headers = {"Authorization": "Bearer bench-key", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one(to: list[str]) -> None:
            body = orjson.dumps({"from": SENDER, "to": to, "text": "Hi"})
            async with sem, session.post(f"{base_url}/messages/group_mms", data=body) as r:
                orjson.loads(await r.read())

        await asyncio.gather(*(one(g) for g in groups_of(csv_path)))


async def sdk(base_url: str, csv_path: Path) -> None:
    from telnyx import AsyncTelnyx  # noqa: PLC0415 - optional: only this row needs it

    client = AsyncTelnyx(api_key="bench-key", base_url=base_url, max_retries=0)
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def one(to: list[str]) -> None:
        async with sem:
            await client.messages.send_group_mms(from_=SENDER, to=to, text="Hi")

    await asyncio.gather(*(one(g) for g in groups_of(csv_path)))
    await client.close()


def measure(argv: list[str], env: dict[str, str] | None = None) -> float | None:
    """Whole-process CPU of one child, or None if it failed."""
    before = children_cpu()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        print(f"  ({argv[1:3]} failed: {done.stderr.decode()[-300:].strip()})", file=sys.stderr)
        return None
    return children_cpu() - before


def instructions(argv: list[str], env: dict[str, str]) -> int | None:
    """User-space instructions one child executes (callgrind), or None if it failed."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("  (no valgrind on PATH: no instruction counts)", file=sys.stderr)
        return None
    done = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        env=env,
        capture_output=True,
        check=False,
    )
    counted = re.search(rb"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or counted is None:
        tail = done.stderr.decode(errors="replace")[-300:].strip()
        print(f"  ({' '.join(argv[1:4])} failed under callgrind: {tail})", file=sys.stderr)
        return None
    return int(counted.group(1))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else ROUNDS
    port = free_port()
    proc = start_fake(port)
    base = f"http://127.0.0.1:{port}/v2"
    bulk_mms = Path(sys.executable).with_name("bulk-mms")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            job = write_job(Path(tmp), n)
            data = Path(tmp) / "in.csv"
            # as an installed program runs: its modules' bytecode cached (a machine that sets
            # PYTHONDONTWRITEBYTECODE would charge every start with compiling every module)
            env = {**os.environ, "TELNYX_API_KEY": "bench-key"}
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            ledgers = Path(tmp) / "ledgers"
            clients = {
                "floor": [sys.executable, __file__, "--floor", base, str(data)],
                "bulk-mms run": bulk_mms_argv(job, base),
                "sdk": [sys.executable, __file__, "--sdk", base, str(data)],
            }
            if os.environ.get("BENCH_NO_SDK"):
                del clients["sdk"]
            # one unmeasured round (bytecode and page caches), then ``rounds`` interleaved ones;
            # each client's median is its result (a busy machine skews single runs)
            spent: dict[str, list[float | None]] = {name: [] for name in clients}
            for round_ in range(rounds + 1):
                for name, argv in clients.items():
                    shutil.rmtree(ledgers, ignore_errors=True)  # each run sends everything anew
                    cpu = measure(argv, env)
                    if round_:
                        spent[name].append(cpu)
            results = {name: _median(values) for name, values in spent.items()}
            paired = {name: _paired(values, spent["floor"]) for name, values in spent.items()}
            counted: dict[str, int | None] = {}
            if os.environ.get("BENCH_INSTRUCTIONS"):
                # the same console script, given to its interpreter (valgrind follows no
                # #! line); not ``-m bulk_mms``, which would import from the working directory
                clients["bulk-mms run"][:1] = [sys.executable, str(bulk_mms)]
                for name in ("floor", "bulk-mms run"):
                    shutil.rmtree(ledgers, ignore_errors=True)
                    counted[name] = instructions(clients[name], env)
    finally:
        proc.terminate()
        proc.wait()
    title = f"{n} groups of 8, {IN_FLIGHT} in flight, whole-process user+system CPU"
    _table(title, "CPU", results, lambda cpu: f"{cpu:.2f} s", paired)
    if counted:
        title = "\nuser-space instructions (callgrind), one run each"
        _table(title, "instructions", counted, lambda count: f"{count / 1e9:.2f} G")


def _paired(values: list[float | None], floor: list[float | None]) -> float | None:
    """The median of a client's per-round ratios to the floor's run in the same round. The
    machine's speed drifts over minutes, and a round's runs share its moment, so this is the
    steadier estimate of the ratio; None when any run failed."""
    if any(v is None for v in values + floor):
        return None
    return _median([v / f for v, f in zip(values, floor, strict=True) if v and f])


def _table(
    title: str,
    unit: str,
    values: Mapping[str, float | None],
    show: Callable[[float], str],
    paired: Mapping[str, float | None] | None = None,
) -> None:
    """One Markdown table of the clients' results, each as a ratio to the floor's too (and,
    given ``paired``, the median of its ratios round by round)."""
    base = values.get("floor")
    print(title)
    print(f"| client | {unit} | vs floor |" + (" vs floor, round by round |" if paired else ""))
    print("|---|---|---|" + ("---|" if paired else ""))
    for name, value in values.items():
        extra = ""
        if paired is not None:
            extra = f" {r:.2f} |" if (r := paired.get(name)) is not None else " |"
        if value is None:
            print(f"| {name} | not measured | |{extra}")
        else:
            ratio = f"{value / base:.2f}" if base else "?"
            print(f"| {name} | {show(value)} | {ratio} |{extra}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] in ("--floor", "--sdk"):
        loop = floor if sys.argv[1] == "--floor" else sdk
        asyncio.run(loop(sys.argv[2], Path(sys.argv[3])))
    else:
        main()
