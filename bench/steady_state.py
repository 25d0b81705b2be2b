"""Benchmark: CPU per group at steady state, bulk-mms against the bare aiohttp loop.

Usage: python bench/steady_state.py [SMALL LARGE [ROUNDS]]   (default 1000 8000 groups, 5 rounds)

Each client sends SMALL and then LARGE groups of 8 (32 in flight) to the fake API, which runs
in a process of its own (a fresh one each round), so a client's CPU is its own alone: user +
system time of that one child process (``wait4``'s rusage). The slope between the two sizes,
(CPU at LARGE - CPU at SMALL) / (LARGE - SMALL), is the CPU one more group costs: start-up,
imports and the first connections cancel out. Start-up is reported too: the CPU at SMALL less
SMALL groups at the slope.

* floor: ``bench/client_cpu.py``'s bare aiohttp + orjson loop: read the CSV, chunk it by 8,
  POST each group; no validation, pacing, retries or ledger.
* bulk-mms: ``bulk-mms run`` as a user runs it: every number validated, the groups paced
  (at a rate that never waits), each try under tenacity, each attempt and outcome in the
  fsync'd JSONL ledger.

Rounds interleave the clients, and each round's ratio is taken within the round (this
machine's speed drifts over minutes); the result is the median of the rounds' ratios.

``BENCH_INSTRUCTIONS=1`` counts each client's user-space instructions under valgrind's
callgrind instead of its CPU seconds: repeatable to a few tenths of a percent where CPU
seconds on a shared VM move by a tenth, so one round tells a change of 1% apart (blind to
the kernel's part: sockets, fsync, and each ``getpid`` that Python 3.11's
``asyncio.get_running_loop`` makes). A run lasts minutes under valgrind, so bulk-mms's
delivery watcher (it first asks about a group ten seconds after sending it) is held off there,
or it would poll what the run sent.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from client_cpu import IN_FLIGHT, free_port, instructions, start_fake, write_job

COUNT_INSTRUCTIONS = bool(os.environ.get("BENCH_INSTRUCTIONS"))
#: bulk-mms with its delivery watcher held off, for a run under valgrind (see the module).
_WATCHER_HELD_OFF = (
    "import sys; import bulk_mms.runner as r; r.DELIVERY_FIRST_S = 1e9; "
    "from bulk_mms.cli import entry; sys.argv[0] = 'bulk-mms'; sys.exit(entry())"
)


def cpu_of(argv: list[str], env: dict[str, str]) -> float:
    """User + system CPU seconds of one child process, alone; with ``BENCH_INSTRUCTIONS``,
    its user-space instructions in thousands of millions (so that a slope per group reads in
    thousands where CPU reads in µs, and start-up in thousands of millions where CPU reads
    in s)."""
    if COUNT_INSTRUCTIONS:
        counted = instructions(argv, env)
        if counted is None:
            raise RuntimeError(f"{argv[1:3]} failed under callgrind")
        return counted / 1e9
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[1:3]} exited {proc.returncode}: {err.decode()[-400:]}")
    return usage.ru_utime + usage.ru_stime


def clients(base: str, root: Path) -> dict[str, list[str]]:
    """Each client's command line, for the job in ``root``."""
    program = (
        [sys.executable, "-c", _WATCHER_HELD_OFF]
        if COUNT_INSTRUCTIONS
        else [str(Path(sys.executable).with_name("bulk-mms"))]
    )
    client_cpu = str(Path(__file__).with_name("client_cpu.py"))
    return {
        "floor": [sys.executable, client_cpu, "--floor", base, str(root / "in.csv")],
        "bulk-mms": [
            *program, "-q", "run", str(root / "job.toml"), "--base-url", base, "--yes",
            "--rate", "10000", "--concurrency", str(IN_FLIGHT), "--skip-media-check",
        ],
    }  # fmt: skip


def one_round(sizes: tuple[int, int], roots: dict[int, Path]) -> dict[str, list[float]]:
    """Each client's CPU at each size, against a fresh fake API."""
    port = free_port()
    fake = start_fake(port)
    base = f"http://127.0.0.1:{port}/v2"
    env = {**os.environ, "TELNYX_API_KEY": "bench-key"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    spent: dict[str, list[float]] = {}
    try:
        for size in sizes:
            for name, argv in clients(base, roots[size]).items():
                shutil.rmtree(roots[size] / "ledgers", ignore_errors=True)  # all sent anew
                spent.setdefault(name, []).append(cpu_of(argv, env))
    finally:
        fake.terminate()
        fake.wait()
    return spent


def main() -> None:
    small = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    large = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    with tempfile.TemporaryDirectory() as tmp:
        roots = {}
        for size in (small, large):
            roots[size] = Path(tmp) / str(size)
            roots[size].mkdir()
            write_job(roots[size], size)
        one_round((small, small), roots)  # unmeasured: bytecode and page caches
        slopes: dict[str, list[float]] = {}
        starts: dict[str, list[float]] = {}
        ratios: list[float] = []
        for r in range(rounds):
            spent = one_round((small, large), roots)
            for name, (at_small, at_large) in spent.items():
                slope = (at_large - at_small) / (large - small)
                slopes.setdefault(name, []).append(slope)
                starts.setdefault(name, []).append(at_small - small * slope)
            ratios.append(slopes["bulk-mms"][-1] / slopes["floor"][-1])
            shown = ", ".join(f"{n} {v[-1] * 1e6:.0f} µs" for n, v in slopes.items())
            print(f"round {r + 1}: per group {shown}; ratio {ratios[-1]:.2f}", flush=True)
    unit = "instructions" if COUNT_INSTRUCTIONS else "CPU"
    print(f"\n{small:,} and {large:,} groups of 8, {IN_FLIGHT} in flight, {rounds} rounds")
    if COUNT_INSTRUCTIONS:
        print("(instructions: read µs as thousands, s as thousands of millions)")
    print(f"| client | {unit} per group (median, range) | start-up {unit} (median) | vs floor |")
    print("|---|---|---|---|")
    for name, values in slopes.items():
        lo, mid, hi = min(values), statistics.median(values), max(values)
        ratio = "1.00" if name == "floor" else f"**{statistics.median(ratios):.2f}**"
        print(
            f"| {name} | {mid * 1e6:.0f} µs ({lo * 1e6:.0f} to {hi * 1e6:.0f}) "
            f"| {statistics.median(starts[name]):.2f} s | {ratio} |"
        )
    print(f"round-by-round ratios: {', '.join(f'{x:.2f}' for x in ratios)}")


if __name__ == "__main__":
    main()
