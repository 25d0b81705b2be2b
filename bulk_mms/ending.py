"""A run's end, once its sending is over: its last events made durable within a bound (much
less once a stop is asked for), what it held let go (the sender's budget and caps, the store,
then its claims), and its summary completed with where the whole ledger stands.

:func:`bulk_mms.runner.run_job` takes these steps in this order.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable

import structlog

from bulk_mms.clock import Clock
from bulk_mms.config import JobConfig
from bulk_mms.coordination import Coordinator
from bulk_mms.errors import LedgerError, LedgerUnavailable
from bulk_mms.ledger import LedgerStore
from bulk_mms.ledger.fold import FAILED, IN_DOUBT, RETRY_PENDING
from bulk_mms.prepare import retired_senders
from bulk_mms.report import capped, held_for_reset, waiting
from bulk_mms.sending import GroupSender
from bulk_mms.signals import Stop, StopReason
from bulk_mms.summary import JobSummary, percentile
from bulk_mms.windows import held_for_windows, reset_in_time

log = structlog.get_logger(__name__)

#: The longest the events of a run that ends are waited for: the database's own bound on a
#: commit, and much less once a stop was asked for (a signal ends a run within
#: ``request_timeout`` + 5 s whatever the database does) or forced.
DRAIN_LIMIT_S = 30.0
DRAIN_LIMIT_STOPPING_S = 2.0
DRAIN_LIMIT_FORCED_S = 0.25


def final_summary(
    sender: GroupSender,
    job: JobConfig,
    clock: Clock,
    *,
    stopped: str | None,
    left: Counter[tuple[str, ...]],
) -> JobSummary:
    """The summary of the run ``sender`` sent for, with where the whole ledger stands now.
    ``stopped``: why the run ended early, if it did; ``left``: the recipients of the groups a
    stop left unsent, by zones."""
    recorder = sender.recorder
    s, view, stats = recorder.summary, recorder.view, sender.stats()
    # the groups the windows held that are still left now (not sent since, nor settled)
    gates = sender.gates
    window_left, quiet = gates.window_left.left(view), gates.quiet.left(view)
    if stopped is None and window_left:  # groups left for a run inside the window
        stopped = StopReason.WINDOW
    s.stopped = stopped
    s.duration_s = stats.elapsed_s
    waits = sorted(recorder.waits)
    s.wait_seconds_p50 = percentile(waits, 0.50)
    s.wait_seconds_p95 = percentile(waits, 0.95)
    s.wait_seconds_max = waits[-1] if waits else None
    s.achieved_rate = stats.achieved_rate
    s.rate_limited = stats.rate_limited
    s.queue_full = stats.queue_full
    # the view took in every event as it was written: no second read of the ledger
    s.open_failed = view.count(FAILED)
    s.open_in_doubt = view.count(IN_DOUBT)
    s.open_retry_pending = view.count(RETRY_PENDING)
    s.recipients = view.recipients()
    s.retired = retired_senders(job, view)
    s.deadline = gates.expires_at
    if s.recipients.not_attempted or s.recipients.retry_pending:
        wall = clock.wall()
        held = held_for_reset(  # as the report has them: moved, or refused at the send
            {**waiting(view), **capped(view, wall)}, wall, s.deadline
        )
        later = [w.after for w in held.in_time.values() if w.after > wall]
        s.waiting_recipients, s.waiting_until = len(later), max(later, default=0.0)
        s.waiting_past_deadline = len(held.past_deadline)
        s.waiting_own_cap = held.own_cap
    # after the recipients: who else the stop left counts
    left = left + window_left
    held_for_windows(s, job, clock, gates.expires_at, quiet=quiet, left=left)
    reset_in_time(s, gates.expires_at)
    log.info("job.finished", **s.as_log(), errors=dict(recorder.errors))
    return s


async def drain(store: LedgerStore, sender: GroupSender, stop: Stop) -> None:
    """Wait (:func:`_bounded`) for the run's last events to be durable; a ledger that fails
    or takes too long stops the job as a failure during the run would."""
    try:
        await _bounded(store.drain(), stop)
    except TimeoutError:
        sender.stops.ledger_failed(_undrained(store, stop))
    except LedgerError as exc:
        sender.stops.ledger_failed(exc)


async def let_go(
    sender: GroupSender | None, store: LedgerStore, coordinator: Coordinator, stop: Stop
) -> None:
    """Let go of what the run held: the sender's budget and caps, then the store (its events
    durable, or given up, before its claims go), then the claims."""
    if sender is not None:
        await sender.close()
    await _close(store, stop)
    await _release(coordinator, stop)
    await coordinator.close()


def _drain_limit(stop: Stop) -> float:
    """How long a run that ends waits for its last events to be durable."""
    if stop.forced:
        return DRAIN_LIMIT_FORCED_S
    return DRAIN_LIMIT_STOPPING_S if stop.is_set() else DRAIN_LIMIT_S


async def _bounded(work: Awaitable[None], stop: Stop) -> None:
    """Await ``work`` for at most :func:`_drain_limit` s, and at most
    :data:`DRAIN_LIMIT_STOPPING_S` s once a stop comes meanwhile.

    Raises:
        TimeoutError: it took longer (``work`` is cancelled).
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(_drain_limit(stop)) as bound:

        def shorten(_: object) -> None:
            soon = loop.time() + DRAIN_LIMIT_STOPPING_S
            if (when := bound.when()) is None or soon < when:
                bound.reschedule(soon)

        stopping = asyncio.ensure_future(stop.wait())
        stopping.add_done_callback(shorten)
        try:
            await work
        finally:
            stopping.remove_done_callback(shorten)
            stopping.cancel()


def _undrained(store: LedgerStore, stop: Stop) -> LedgerUnavailable:
    return LedgerUnavailable(
        store.name,
        f"its last events were not durable within {_drain_limit(stop):g} s (the database is "
        "locked or gone): what they record is in doubt; rerun to resume",
    )


async def _release(coordinator: Coordinator, stop: Stop) -> None:
    """Give back the claims of a run that has ended (:meth:`Coordinator.release
    <bulk_mms.coordination.Coordinator.release>`), waiting no longer than :func:`_bounded`;
    claims not given back run out by their lease (``claims.not_given_back``)."""
    try:
        await _bounded(coordinator.release(), stop)
    except (LedgerError, TimeoutError) as exc:
        log.warning("claims.not_given_back", error=str(exc) or "no answer in time")


async def _close(store: LedgerStore, stop: Stop) -> None:
    """Close the store, waiting for it no longer than :func:`_bounded` (then let go of it
    with what is not yet durable)."""
    try:
        await _bounded(store.close(), stop)
    except (LedgerError, TimeoutError):
        store.close_sync()
