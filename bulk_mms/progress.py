"""Progress of a run: a bar on a terminal, ``job.progress`` log events everywhere else.

The runner hands a :class:`Snapshot` to a :class:`Progress` twice a second. :class:`BarProgress`
draws it with tqdm (rows done of the total when the input's size is known, groups/s, ETA, 429s,
the latest ``wait_seconds``); log lines go through :func:`bulk_mms.log.configure`'s bar-safe
stream, which lifts the bar, prints the line whole and puts the bar back, so neither garbles the
other. :class:`LogProgress` logs one ``job.progress`` event every ``every`` seconds instead: cron
mail and log files get a heartbeat, not carriage returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Never, Protocol, TextIO

import msgspec
import structlog

if TYPE_CHECKING:
    from tqdm import tqdm

log = structlog.get_logger(__name__)
_BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt} rows [{elapsed}<{remaining}]{postfix}"


class Snapshot(msgspec.Struct, frozen=True):
    """Where a run stands."""

    #: Input rows dealt with (sent, failed, in doubt, rejected, skipped as done or held).
    rows_done: int
    #: Of those, the rows that needed no request (rejected, done by an earlier run, held):
    #: they go by in an instant, so rates and ETAs leave them out.
    rows_free: int
    #: Data rows in the input, when known (an uncompressed file's line count, header excluded).
    rows_total: int | None
    groups_sent: int
    groups_failed: int
    groups_in_doubt: int
    #: 429 answers so far, and the latest ``wait_seconds`` Telnyx reported.
    rate_limited: int
    wait_seconds: float | None
    elapsed_s: float


class Progress(Protocol):
    def update(self, snap: Snapshot) -> None: ...

    def close(self) -> None: ...


def _eta(snap: Snapshot, rate: float) -> float | None:
    """Seconds left: the rows still to do at the rate rows needing a request were done."""
    if snap.rows_total is None or rate <= 0:
        return None
    return max(0.0, (snap.rows_total - snap.rows_done) / rate)


class _Rate:
    """Rows per second, smoothed over recent updates."""

    def __init__(self) -> None:
        self.last: tuple[float, int] | None = None
        self.value = 0.0

    def update(self, t: float, rows: int) -> float:
        if self.last is not None and t > self.last[0]:
            now = (rows - self.last[1]) / (t - self.last[0])
            self.value = now if self.value == 0 else 0.8 * self.value + 0.2 * now
        self.last = (t, rows)
        return self.value


class BarProgress:
    """A tqdm bar on ``stream`` (a terminal), made at the first snapshot (which knows the total)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bar: tqdm[Never] | None = None

    def update(self, snap: Snapshot) -> None:
        # The bar counts this run's work: rows that need no request (done before, rejected)
        # leave the total instead of racing the bar ahead and the ETA down.
        total = None if snap.rows_total is None else snap.rows_total - snap.rows_free
        if self.bar is None:
            from tqdm import tqdm  # noqa: PLC0415 - loaded only when a terminal shows a bar

            self.bar = tqdm(
                total=total,
                unit="row",
                file=self.stream,
                dynamic_ncols=True,
                smoothing=0.1,
                bar_format=_BAR,
            )
        bar = self.bar
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(snap.rows_done - snap.rows_free - bar.n)
        wait = "-" if snap.wait_seconds is None else f"{snap.wait_seconds:.1f}s"
        bar.set_postfix_str(
            f"{snap.groups_sent / max(snap.elapsed_s, 1e-9):.1f} groups/s, "
            f"429s {snap.rate_limited}, wait {wait}",
            refresh=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LogProgress:
    """A ``job.progress`` event every ``every`` seconds (and none between)."""

    def __init__(self, every: float, now: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.now = now
        self.next_at = now() + every
        self.rate = _Rate()

    def update(self, snap: Snapshot) -> None:
        t = self.now()
        rate = self.rate.update(t, snap.rows_done - snap.rows_free)
        if t < self.next_at:
            return
        self.next_at = t + self.every
        eta = _eta(snap, rate)
        log.info(
            "job.progress",
            rows_done=snap.rows_done,
            rows_total=snap.rows_total,
            percent=round(100 * snap.rows_done / snap.rows_total, 1) if snap.rows_total else None,
            groups_sent=snap.groups_sent,
            groups_failed=snap.groups_failed,
            groups_in_doubt=snap.groups_in_doubt,
            rows_per_s=round(rate, 2),
            eta_s=round(eta) if eta is not None else None,
            rate_limited=snap.rate_limited,
            wait_seconds=snap.wait_seconds,
        )

    def close(self) -> None:
        return None
