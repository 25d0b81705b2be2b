"""Benchmark: pacing against the sandbox's queue model, in real time.

Usage: python bench/pacing.py [a|b|c ...]   (default: all three; about four minutes)
       python bench/pacing.py --help

Prints docs/performance.md's pacing table, and draws each scenario's accepted rate and
``wait_seconds`` over time into docs/img/pacing.png (matplotlib), which that page shows.

The run goes through the whole pacer: the adaptive per-sender controller, the fixed limits
(aiolimiter's bucket on the job's clock) and the account budget's one-second window guard.

(a) a fixed cap R with no queue: achieved rate / R, and the most accepted in any 1 s window;
(b) a queue draining at D/s while the configured ceiling is 5xD: achieved / D, p95 wait, 429s;
(c) the drain rate halving mid-run: how long until waits are back within the target.

Every figure is read from the server's own log of when it accepted each message.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import structlog

from bulk_mms.client import AiohttpMmsClient
from bulk_mms.config import Settings, load_job
from bulk_mms.fake_api import FakeTelnyx, serve
from bulk_mms.runner import run_job
from bulk_mms.summary import percentile

SENDER = "+13125550100"
TARGET_WAIT = 30.0


def phones(n: int) -> list[str]:
    areas = ["212", "312", "415", "617", "206", "303", "512", "404", "646", "718"]
    return [f"+1{areas[i % 10]}55{5 + (i // 10) // 10000}{(i // 10) % 10000:04d}" for i in range(n)]


def max_in_window(times: list[float], window: float = 1.0) -> int:
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


async def run(fake: FakeTelnyx, groups: int, settings: Settings, root: Path) -> None:
    (root / "in.csv").write_text("phone\n" + "\n".join(phones(groups)) + "\n")
    (root / "job.toml").write_text(
        f'name = "bench"\ninput = "in.csv"\ngroup_size = 1\n[message]\nfrom = "{SENDER}"\n'
        'text = "hello"\n'
    )
    job = load_job(root / "job.toml")
    async with serve(fake) as url, AiohttpMmsClient(url, "bench-key") as client:
        await run_job(job, replace(settings, base_url=url), client)


async def scenario_a(root: Path) -> Result:
    rate = 20.0
    fake = FakeTelnyx()
    await run(fake, 600, Settings(rate=rate, concurrency=8), root)
    times = [t for t, _, _ in fake.accept_log]
    achieved = (len(times) - 1) / (times[-1] - times[0])
    row = (
        f"| (a) fixed cap R = {rate:g}/s, no queue | achieved {achieved:.2f}/s = "
        f"{achieved / rate:.3f} R | max in any 1 s window: {max_in_window(times)} "
        f"(R = {rate:g}) |"
    )
    return Result(row, f"(a) fixed cap R = {rate:g}/s, no queue", fake, rate)


def wait_stats(fake: FakeTelnyx, after: float) -> list[float]:
    t0 = fake.accept_log[0][0]
    return sorted(
        m.wait_seconds
        for (t, _, _), m in zip(fake.accept_log, fake.accepted, strict=True)
        if t - t0 >= after
    )


async def scenario_b(root: Path) -> Result:
    drain = 5.0
    fake = FakeTelnyx(drain_rate=drain, queue_cap=100)
    fulls: list[float] = []
    original = fake.send_group_mms

    async def counting(request):  # type: ignore[no-untyped-def]
        response = await original(request)
        if response.status == 429:
            fulls.append(fake.clock())
        return response

    fake.send_group_mms = counting  # type: ignore[method-assign]
    start = fake.clock()
    await run(fake, 450, Settings(rate=5 * drain, concurrency=8), root)
    times = [t for t, _, _ in fake.accept_log]
    steady = [t for t in times if t - times[0] >= 10]
    achieved = (len(steady) - 1) / (steady[-1] - steady[0])
    waits = wait_stats(fake, 10)
    late_fulls = sum(1 for t in fulls if t - start > 10)
    return Result(
        f"| (b) drain D = {drain:g}/s, ceiling 5D = {5 * drain:g}/s, cap 100 | achieved "
        f"{achieved:.2f}/s = {achieved / drain:.3f} D after 10 s | p95 wait "
        f"{percentile(waits, 0.95):.1f} s (target {TARGET_WAIT:g}); 429s: {len(fulls)} in all, "
        f"{late_fulls} after 10 s |",
        f"(b) queue draining at D = {drain:g}/s, ceiling 5D",
        fake,
        drain,
    )


async def scenario_c(root: Path) -> Result:
    fake = FakeTelnyx(drain_rate=10.0, queue_cap=1000)
    halve_at = 40.0

    async def halve() -> float:
        await asyncio.sleep(halve_at)
        fake.set_drain(SENDER, 5.0)
        return fake.clock()

    halver = asyncio.create_task(halve())
    await run(fake, 900, Settings(rate=50.0, concurrency=8), root)
    changed = await halver
    after = [
        (t - changed, m.wait_seconds)
        for (t, _, _), m in zip(fake.accept_log, fake.accepted, strict=True)
        if t >= changed
    ]
    peak = max(w for _, w in after)
    over = [dt for dt, w in after if w > TARGET_WAIT]
    back = max(over) if over else 0.0
    settle = max((dt for dt, w in after if w > 1.5 * TARGET_WAIT / 4), default=0.0)
    tail = [t for t, _, _ in fake.accept_log if t - changed >= 30]
    rate_after = (len(tail) - 1) / (tail[-1] - tail[0]) if len(tail) > 1 else 0.0
    return Result(
        f"| (c) drain 10/s halves to 5/s at {halve_at:g} s, ceiling 50/s | peak wait {peak:.1f} s, "
        f"over the {TARGET_WAIT:g} s target for {back:.1f} s; back near the goal wait "
        f"(<= {1.5 * TARGET_WAIT / 4:.1f} s) {settle:.1f} s after | rate after: "
        f"{rate_after:.2f}/s |",
        f"(c) drain 10/s halves to 5/s at {halve_at:g} s",
        fake,
        None,
        changed - fake.accept_log[0][0],
    )


class Result(NamedTuple):
    """A scenario's row of the docs' table, and what its picture is drawn from: the line the
    rate should sit on (R or D), and when the drain changed (seconds from the first
    acceptance)."""

    row: str
    title: str
    fake: FakeTelnyx
    target: float | None = None
    change_at: float | None = None


def draw(results: list[Result], path: Path) -> None:
    """Each scenario's accepted rate (per second, from the server's log) and wait_seconds."""
    from matplotlib.figure import Figure  # noqa: PLC0415 - only the picture needs it

    fig = Figure(figsize=(10, 3.2 * len(results)), layout="constrained")
    for ax, r in zip(fig.subplots(len(results), 1, squeeze=False)[:, 0], results, strict=True):
        t0 = r.fake.accept_log[0][0]
        times = [t - t0 for t, _, _ in r.fake.accept_log]
        per_second = [0] * (int(times[-1]) + 1)
        for t in times:
            per_second[int(t)] += 1
        per_second = per_second[:-1] or per_second  # the last second is only partly run
        ax.step(range(len(per_second)), per_second, where="post", label="accepted per second")
        ax.set_ylim(0, max(*per_second, r.target or 0) * 1.25)
        if r.target is not None:
            ax.axhline(r.target, color="#2ca02c", linestyle="--", linewidth=1, label="R or D")
        if r.change_at is not None:
            ax.axvline(r.change_at, color="#888888", linestyle=":", label="drain halves")
        ax.set_ylabel("messages / s")
        ax.set_title(r.title, loc="left")
        waits = ax.twinx()
        waits.plot(
            times, [m.wait_seconds for m in r.fake.accepted], ".", markersize=2,
            color="#ff7f0e", label="wait_seconds",
        )  # fmt: skip
        waits.axhline(TARGET_WAIT, color="#d62728", linestyle=":", linewidth=1, label="30 s")
        waits.set_ylabel("wait_seconds")
        waits.set_ylim(bottom=0)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = waits.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize="small")
    fig.axes[-1].set_xlabel("seconds from the first acceptance")
    fig.savefig(path, dpi=90)


async def main(which: list[str]) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print("| scenario | rate | detail |")
    print("|---|---|---|")
    results = []
    for name, scenario in (("a", scenario_a), ("b", scenario_b), ("c", scenario_c)):
        if name in which:
            with tempfile.TemporaryDirectory() as tmp:
                result = await scenario(Path(tmp))
                print(result.row, flush=True)
                results.append(result)
    picture = Path(__file__).parent.parent / "docs" / "img" / "pacing.png"
    draw(results, picture)
    print(f"drawn: {picture}")


if __name__ == "__main__":
    args = sys.argv[1:] or ["a", "b", "c"]
    if not set(args) <= {"a", "b", "c"}:
        print(__doc__)
        sys.exit(0 if {"-h", "--help"} & set(args) else 2)
    asyncio.run(main(args))
