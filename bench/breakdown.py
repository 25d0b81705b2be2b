"""Benchmark: where a run's instructions go, part by part, against the floor of our stack.

Usage: python bench/breakdown.py [GROUPS]   (default 2000; needs valgrind; about five minutes)

The same job as ``bench/client_cpu.py`` (2,000 groups of 8, 32 in flight, the fake API in its
own process). Each measurement is one process under valgrind's callgrind, which counts the
user-space instructions it executes: repeatable to a fraction of a percent, where CPU seconds
on a shared VM are not (and blind to the kernel's part: sockets, fsync). A part's cost is what
a run saves when that part is stubbed out (``--stub``: this file's own stand-ins, never shipped):

* ``sent``: the recorder counts a sent group and writes nothing (no event, line or fold);
* ``answer``: a 2xx answer becomes a receipt without its recipients' statuses;
* ``attempt``: no write-ahead ``attempt`` and no wait for its group commit;
* ``pace``: every group admitted at once.

The row pipeline (read, validate, de-duplicate, group) and the imports are measured apart:
one pass of :func:`bulk_mms.prepare.plan` over the input after a first one (what the first
pass loads on its way, phonenumbers' metadata among it, is start-up, not the rows'), and the
modules a run imports against the floor's (asyncio, csv, aiohttp, orjson).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from client_cpu import IN_FLIGHT, free_port, instructions, start_fake, write_job

STUBS = ("sent", "answer", "attempt", "pace")


def stub(parts: set[str]) -> None:
    """Replace the named parts of a run with stand-ins that do (almost) nothing."""
    from bulk_mms import answers, client, pacing, recorder  # noqa: PLC0415 - charged to the child
    from bulk_mms.models import Group, RecipientStatus, SendReceipt  # noqa: PLC0415

    if "sent" in parts:

        def sent(
            self: recorder.Recorder, group: Group, r: SendReceipt, attempts: int, throttled: int
        ) -> list[RecipientStatus]:
            self.summary.sent_groups += 1
            return []

        recorder.Recorder.sent = sent  # type: ignore[method-assign]
    if "answer" in parts:

        def bare(raw: bytes, to: object = None, sender: object = None) -> SendReceipt:
            body = answers.parse_json(raw)
            data = body.get("data") if isinstance(body, dict) else None
            if isinstance(data, dict):
                body = {"data": {**data, "to": []}}
            return answers.parse_receipt(body)

        client.read_receipt = bare  # type: ignore[attr-defined] # the name the client calls
    if "attempt" in parts:

        async def attempt(
            self: recorder.Recorder, group: Group, number: int, key: str, t0: float
        ) -> None:
            return None

        recorder.Recorder.attempt = attempt  # type: ignore[method-assign]
    if "pace" in parts:

        async def acquire(
            self: pacing.Pacer, sender: str, size: int, deadline: float | None = None
        ) -> pacing.Ticket:
            cost = self.cost_of(size)
            return await self._admitted(sender, self.senders[sender], cost, self.clock.monotonic())

        async def send_slot(
            self: pacing.Pacer, ticket: pacing.Ticket, deadline: float | None = None
        ) -> None:
            return None

        pacing.Pacer.acquire = acquire  # type: ignore[method-assign]
        pacing.Pacer.send_slot = send_slot  # type: ignore[method-assign]


def child(mode: str, job: str, base: str) -> None:
    """One measured process: a run with some parts stubbed, a plan pass, or imports."""
    if mode == "imports-floor":
        import aiohttp  # noqa: F401, PLC0415
        import orjson  # noqa: F401, PLC0415

        return
    from bulk_mms import cli  # noqa: PLC0415

    if mode.startswith("plan"):
        from bulk_mms.config import load_job  # noqa: PLC0415
        from bulk_mms.prepare import plan  # noqa: PLC0415
        from bulk_mms.scan import open_reader  # noqa: PLC0415

        loaded = load_job(Path(job))
        for _ in range(2 if mode == "plan" else 1):
            with open_reader(loaded, keep_all=True) as reader:
                for _ in plan(loaded, reader):
                    pass
        return
    if mode == "imports":
        return
    stub(set(mode.split("+")) - {"run"})
    from bulk_mms import runner  # noqa: PLC0415

    # a run lasts minutes under valgrind: its delivery watcher (first asked ten seconds after a
    # group is sent) would poll what it sent, as many GETs as the run lasted, in every mode
    runner.DELIVERY_FIRST_S = 1e9
    argv = ["-q", "run", job, "--base-url", base, "--yes", "--rate", "10000"]
    argv += ["--concurrency", str(IN_FLIGHT), "--skip-media-check"]
    sys.argv[1:] = argv  # entry() reads them, and tunes the collector as the program does
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            code: object = cli.entry()
        except SystemExit as exc:
            code = exc.code
    # a run that failed is no measurement of one that worked; a stubbed one ends as its stubs
    # leave the ledger (with no sent lines, its groups are in doubt: exit 1)
    if code and mode == "run":
        sys.exit(f"the run exited {code}")


def count(mode: str, job: Path, base: str, env: dict[str, str]) -> int | None:
    """Instructions of one child process under callgrind; None if it failed."""
    shutil.rmtree(job.parent / "ledgers", ignore_errors=True)
    return instructions([sys.executable, __file__, "--child", mode, str(job), base], env)


def main() -> None:
    if shutil.which("valgrind") is None:
        sys.exit("bench/breakdown.py needs valgrind (Debian's valgrind package)")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    port = free_port()
    proc = start_fake(port)
    base = f"http://127.0.0.1:{port}/v2"
    env = {**os.environ, "TELNYX_API_KEY": "bench-key"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as an installed program runs
    runs = ["run", *(f"run+{part}" for part in STUBS), "run+" + "+".join(STUBS)]
    modes = ["imports-floor", "imports", "plan-once", "plan", *runs]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # two at a time (the machine's two cores), each run in a job directory of its own
            jobs = {}
            for i, mode in enumerate(modes):
                root = Path(tmp) / f"job{i}"
                root.mkdir()
                jobs[mode] = write_job(root, n)
            with ThreadPoolExecutor(2) as pool:
                counts = dict(
                    zip(modes, pool.map(lambda m: count(m, jobs[m], base, env), modes), strict=True)
                )
    finally:
        proc.terminate()
        proc.wait()
    if any(v is None for v in counts.values()):
        sys.exit("a measurement failed")
    c = {k: v or 0 for k, v in counts.items()}
    print(f"{n} groups of 8, {IN_FLIGHT} in flight; user-space instructions (callgrind)")
    print("| part | instructions | per group |")
    print("|---|---|---|")
    rows = [("a whole run (in one process, imports included)", c["run"])]
    rows.append(("imports beyond the floor's", c["imports"] - c["imports-floor"]))
    rows.append(("read, validate, de-duplicate and group the rows", c["plan"] - c["plan-once"]))
    rows += [(f"stubbed out: {part}", c["run"] - c[f"run+{part}"]) for part in STUBS]
    all_four = "run+" + "+".join(STUBS)
    rows.append(("a run with all four stubbed out", c[all_four]))
    for label, value in rows:
        print(f"| {label} | {value / 1e9:.2f} G | {value / n:,.0f} |")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    else:
        main()
