"""A run's start, before its first send: the send window's check, the scan of the whole input,
the ledger resumed (or begun) and checked against that input, the run's start written, and the
parts the run sends through: its recorder, and its sender with the sender's pacer.

:func:`bulk_mms.runner.run_job` takes these steps in this order; nothing here sends.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
from collections.abc import Container
from pathlib import Path

import structlog
from msgspec.structs import replace

from bulk_mms.caps import run_limits
from bulk_mms.client import MmsClient
from bulk_mms.clock import Clock, iso, utc
from bulk_mms.config import JobConfig, Settings
from bulk_mms.coordination import Coordinator
from bulk_mms.gates import job_deadline
from bulk_mms.ledger import Header, LedgerStore, LedgerView, RunStarted
from bulk_mms.ledger.fold import FAILED, IN_DOUBT, RETRY_PENDING, ExcludedLedger
from bulk_mms.pacing import Pacer, max_cost
from bulk_mms.policy import PolicyClient
from bulk_mms.prepare import check_resumable, header_for, pacing_config
from bulk_mms.recipient_lists import Originals
from bulk_mms.recorder import Recorder
from bulk_mms.scan import InputScan, ScanStopped, check_rejected_share, scan_input
from bulk_mms.sending import GroupSender
from bulk_mms.settle import Settler
from bulk_mms.signals import Stop, StopReason
from bulk_mms.summary import JobSummary
from bulk_mms.suppression import Suppressed
from bulk_mms.windows import window_stop

log = structlog.get_logger(__name__)


def outside_window(job: JobConfig, clock: Clock) -> JobSummary | None:
    """The summary of a run that sends nothing because the job's ``send_window`` is closed
    now (or opens only after its deadline), said once; None when it is open."""
    if (stopped := window_stop(job, clock)) is None:
        return None
    log.warning(
        "job.outside_window",
        send_window=str(job.send_window),
        timezone=job.timezone,
        local_time=utc(clock).astimezone(job.zone).strftime("%H:%M"),
        opens_after_deadline=stopped == StopReason.AFTER_DEADLINE,
    )
    return JobSummary(job.name, stopped=stopped)


async def scan_whole_input(
    job: JobConfig,
    suppressed: Suppressed,
    excluded: Container[int],
    rejected_csv: Path | None,
    stop: Stop,
) -> InputScan | None:
    """Scan the whole input (:func:`~bulk_mms.scan.scan_input`) in a worker thread, so a signal
    during a long scan is heard at once; None when a stop came meanwhile.

    Raises:
        InputError, ConfigError: the input cannot be used, or loses more than
            ``max_rejected_share`` of its rows.
    """
    log.info("input.scan_started", input=str(job.input))
    try:
        scan = await asyncio.to_thread(
            scan_input,
            job,
            suppressed=suppressed,
            excluded=excluded,
            rejected_csv=rejected_csv,
            stopped=stop.is_set,
        )
    except ScanStopped:
        log.warning("job.stopped_while_scanning", reason=stop.reason)
        return None
    check_rejected_share(scan, job, rejected_csv)
    return scan


async def begin(
    store: LedgerStore,
    job: JobConfig,
    scan: InputScan,
    columns: tuple[str, ...] | list[str],
    clock: Clock,
    *,
    excluded_from: tuple[ExcludedLedger, ...] = (),
    currency: str | None = None,
) -> LedgerView:
    """The ledger's view as this run begins: folded (:func:`_resume`), and this run's start
    written to it, with the ``[pricing] currency`` it counts in (``currency``) and the
    ledgers its ``--exclude-sent`` named (``excluded_from``:
    :func:`~bulk_mms.prepare.ledger_names`). Off the loop (a long fold, an fsync, a lock's
    wait): a signal meanwhile is heard."""
    header = header_for(job, scan.fingerprint, clock)
    view = await asyncio.to_thread(
        _resume, store, header, columns, job.phone_column, scan, excluded_from=excluded_from
    )
    expires = job_deadline(job, view)  # the sender's own, from the same view: the report's
    started = RunStarted(
        os.getpid(),
        iso(clock.wall()),
        shared=store.shared,
        deadline=iso(expires.timestamp()) if expires is not None else None,
        excluded_from=tuple(name for name, _ in excluded_from),
        excluded_campaigns=tuple(campaign for _, campaign in excluded_from),
        currency=currency,
    )
    await asyncio.to_thread(store.append_now, started)
    view.apply(started)
    return view


def _resume(
    store: LedgerStore,
    header: Header,
    columns: tuple[str, ...] | list[str],
    phone_column: str,
    scan: InputScan,
    *,
    excluded_from: tuple[ExcludedLedger, ...],
) -> LedgerView:
    """Fold what the ledger holds (not the delivery statuses: a run needs none); a new ledger
    gets its header: a new campaign, with its own Idempotency-Keys."""
    view = store.fold(skip_status=True)
    if view.header is None:
        header = replace(
            header,
            campaign=secrets.token_hex(8),
            columns=tuple(c for c in columns if c != phone_column),
        )
        # insert-or-read: another process that started at the same moment may have won
        view.apply(there := store.put_header(header))
        if there is header:
            return view
    check_resumable(view, header, store.name, scan, excluded_from)
    log.info(
        "ledger.resumed",
        ledger=store.name,
        campaign=view.campaign,
        sent=view.count("sent"),
        failed=view.count(FAILED),
        retry_pending=view.count(RETRY_PENDING),
        in_doubt=view.count(IN_DOUBT),
        runs=view.runs,
    )
    return view


def build_recorder(
    job: JobConfig,
    settings: Settings,
    store: LedgerStore,
    view: LedgerView,
    *,
    coordinator: Coordinator,
    scan: InputScan,
    clock: Clock,
) -> Recorder:
    """The run's recorder, its summary starting from the input as ``scan`` found it
    (:func:`planned_by_scan`)."""
    recorder = Recorder(
        store,
        view,
        JobSummary(job.name),
        clock,
        coordinator=coordinator,
        policy=settings.error_policy,
    )
    recorder.summary.input = scan
    planned_by_scan(recorder, scan)
    # a move the shared ledger did not write (MAX_RESENDS, by any process) leaves the view
    store.on_kept_back(view.kept_back)
    return recorder


def planned_by_scan(recorder: Recorder, scan: InputScan) -> None:
    """Record how many of the input's recipients are valid as ``scan`` found them, before the
    first send: a report of a run that ends before its input's end (a crash, a stop) adds up.
    Rejected: every row not sent that is not a duplicate, as the plan's own count, with how
    many of them are suppressed and excluded."""
    left_out = scan.lost_rows + scan.suppressed + scan.excluded
    recorder.planned(
        scan.recipients - scan.suppressed,
        0,
        left_out,
        scan.duplicates,
        suppressed=scan.suppressed,
        excluded=scan.excluded,
    )


def build_sender(
    job: JobConfig,
    settings: Settings,
    client: MmsClient,
    recorder: Recorder,
    *,
    clock: Clock,
    stop: Stop,
    suppressed: Suppressed,
) -> GroupSender:
    """The run's :class:`~bulk_mms.sending.GroupSender`: every send through the error policy
    (:class:`~bulk_mms.policy.PolicyClient`), paced by :func:`_pacer`, its doubts looked up by
    a :class:`~bulk_mms.settle.Settler` on ``client``, under the run's caps
    (:func:`~bulk_mms.caps.run_limits`). A commit that fails, even of an event nobody waits
    for (a send's outcome), stops the job at once: every wait (a 429's, a pause) ends instead
    of running its course.

    Raises:
        ConfigError, LedgerError: as :func:`~bulk_mms.caps.run_limits` does (before the
            account budget is taken).
    """
    limits = run_limits(job, settings, recorder.view, clock)
    sender = GroupSender(
        job,
        settings,
        PolicyClient(client, settings.error_policy, clock, settings.daily_reset),
        recorder,
        clock=clock,
        stop=stop,
        pacer=_pacer(job, settings, recorder, clock, stop),
        settler=Settler(
            client,
            settings.records_lag_s,
            settings.request_timeout,
            clock,
            retry=settings.retry,
            originals=Originals(job.where),
        ),
        suppressed=suppressed,
        limits=limits,
    )
    recorder.store.on_failure(sender.stops.ledger_failed)
    return sender


def _pacer(
    job: JobConfig, settings: Settings, recorder: Recorder, clock: Clock, stop: Stop
) -> Pacer:
    """The run's pacer over the job's senders, behind the account budget the processes
    sharing the job share (the coordinator's; else its own), telling the recorder as its pace
    changes; the senders refused in an earlier run of the job are out of its pool."""
    pacing = pacing_config(settings)
    pacer = Pacer(
        pacing,
        job.message.senders,
        clock=clock,
        stopped=stop.is_set,
        budget=recorder.coordinator.account_budget(
            settings.account,
            settings.rate,
            clock,
            max_cost=max_cost(pacing),
            stopped=stop.is_set,
        ),
    )
    pacer.on_change = functools.partial(recorder.paced, pacing.cost)
    for sender in sorted(recorder.view.retired):
        pacer.retire(sender)
    for sender, leaves in recorder.view.queued_until.items():
        pacer.queued_until(sender, leaves)  # an earlier run's messages still queued at Telnyx
    return pacer
