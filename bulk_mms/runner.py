"""Run a job: read → validate → group → skip what the ledger has → pace → send/retry → record.

The reader feeds a bounded queue (backpressure: the file is read only as fast as groups go out)
drained by ``concurrency`` worker tasks. Before each request leaves, an ``attempt`` event is made
durable in the ledger; the outcome follows (:class:`~bulk_mms.recorder.Recorder`). A stop
(signal, refused key, ledger failure) stops the reader and lets requests in flight finish and be
recorded; what was never attempted is simply sent by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import structlog

from bulk_mms.client import MmsClient, idempotency_key
from bulk_mms.clock import Clock, SystemClock, iso, utc
from bulk_mms.config import JobConfig, Settings
from bulk_mms.errors import (
    AmbiguousSendError,
    ApiUnavailable,
    AuthError,
    FatalSendError,
    LedgerError,
    RateLimited,
    Rejected,
    RetryableSendError,
    SendError,
)
from bulk_mms.ledger import Header, LedgerStore, LedgerView, RunStarted, open_store
from bulk_mms.ledger.fold import FAILED, IN_DOUBT, RETRY_PENDING
from bulk_mms.models import Group, RejectedRow
from bulk_mms.pacing import PaceAborted, Pacer, Ticket
from bulk_mms.prepare import (
    check_resumable,
    disposition,
    header_for,
    in_window,
    key_valid_until,
    open_reader,
    pacing_config,
    plan,
)
from bulk_mms.progress import Progress, Snapshot, open_count
from bulk_mms.reader import RowReader, fingerprint
from bulk_mms.recorder import Recorder, key_conflict, never_left, settled
from bulk_mms.retry import Attempted, RetryDigest, StopRetrying, send_with_retry
from bulk_mms.signals import Stop
from bulk_mms.summary import JobSummary, percentile

log = structlog.get_logger("bulk_mms.runner")

#: After this many groups in a row end without a usable answer (a transient error with their
#: retries used up, or in doubt), the API is taken to be down and the job stops (a rerun
#: resumes) instead of going through every group.
UNREACHABLE_AFTER = 3
#: Seconds between progress snapshots.
PROGRESS_PERIOD_S = 0.5
#: How many groups may wait in the queue per worker: enough to keep workers busy, small enough
#: that the reader never runs far ahead of the sending.
QUEUE_DEPTH_PER_WORKER = 2


@dataclass(slots=True)
class _Tries:
    """One group's tries in this run."""

    group: Group
    key: str
    #: No try starts after this (monotonic): the job's deadline or the group's age limit.
    deadline: float | None
    #: Wall-clock time of the group's first attempt ever: its key's age.
    t0: float | None = None
    #: A try (this run's, or an earlier run's) may have been accepted.
    ambiguous: bool = False
    ticket: Ticket | None = None
    throttled: int = 0


class Runner:
    """One run of one job. Private: use :func:`run_job`."""

    def __init__(
        self,
        job: JobConfig,
        settings: Settings,
        client: MmsClient,
        recorder: Recorder,
        *,
        clock: Clock,
        stop: Stop,
        resend_in_doubt: bool = False,
        limit: int | None = None,
    ) -> None:
        self.job = job
        self.settings = settings
        self.client = client
        self.recorder = recorder
        self.view = recorder.view
        self.summary = recorder.summary
        self.clock = clock
        self.stop = stop
        self.resend_in_doubt = resend_in_doubt
        #: Send at most this many groups in this run (``run --limit``); the next run goes on.
        self.limit = limit
        self.queued = 0
        self.pacer = Pacer(
            pacing_config(settings), job.message.senders, clock=clock, stopped=stop.is_set
        )
        self.started = clock.monotonic()
        self.deadline = (
            self.started + settings.max_job_duration_s if settings.max_job_duration_s else None
        )
        self.queue: asyncio.Queue[Group | None] = asyncio.Queue(
            settings.concurrency * QUEUE_DEPTH_PER_WORKER
        )
        self.in_flight = 0
        #: Retries told one line per cause now and then, not one line each.
        self.retries = RetryDigest(now=clock.monotonic)
        self.transient_streak = 0  # groups in a row that got no usable answer
        #: Groups whose attempt is on record and whose outcome is not yet, for a forced stop:
        #: None while a request is out (or a try may have been accepted); else the error of
        #: the last try, which certainly failed.
        self.open_attempts: dict[str, SendError | None] = {}
        #: Input rows dealt with, for progress; of those, the rows that needed no request.
        self.rows_done = 0
        self.rows_free = 0
        self.last_sent: float | None = None

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<Runner {self.job.name} sent={s.sent_groups} failed={s.failed_groups} "
            f"in_doubt={s.in_doubt_groups} in_flight={self.in_flight}>"
        )

    # -- reading ----------------------------------------------------------------------------

    async def produce(self, reader: RowReader) -> None:
        """Feed groups to the workers; record rejected rows; skip what is done; say how much
        of the input is valid once it has all been read."""
        recipients = groups = rejected = 0
        for n, item in enumerate(plan(self.job, reader)):
            if self.stop.is_set():
                return
            if self.deadline is not None and self.clock.monotonic() >= self.deadline:
                self._deadline_reached()
                return
            if n % 512 == 511:
                await asyncio.sleep(0)  # let workers and the flusher run on long skip streaks
            if isinstance(item, RejectedRow):
                rejected += 1
                self.rows_done += 1
                self.rows_free += 1
                self.recorder.rejected(item)
                continue
            recipients += len(item.to)
            groups += 1
            if not await self._dispatch(item):
                return
        self.recorder.planned(recipients, groups, rejected)

    async def _dispatch(self, group: Group) -> bool:
        """Skip, hold or queue one group; False once ``--limit`` groups are queued."""
        action = disposition(
            self.view,
            self.settings.retry,
            group.id,
            self.clock.wall(),
            resend_in_doubt=self.resend_in_doubt,
        )
        if action != "send":
            self.rows_done += len(group.to)
            self.rows_free += len(group.to)
            if action == "skip":
                self.summary.skipped_groups += 1
            else:
                self.recorder.held(group)
            return True
        self.summary.note_template(group)
        await self.queue.put(group)
        self.queued += 1
        if self.limit is not None and self.queued >= self.limit:
            log.info("job.limit_reached", limit=self.limit)
            return False
        return True

    async def feed(self, reader: RowReader) -> None:
        """Produce, then tell the workers the input has ended (one end marker, passed on)."""
        try:
            await self.produce(reader)
        except LedgerError as exc:
            self.fail_ledger(exc)
        # not in a finally: a cancelled feeder must not wait on a queue nobody drains
        await self.queue.put(None)

    # -- sending ----------------------------------------------------------------------------

    async def work(self) -> None:
        while (group := await self.queue.get()) is not None:
            if self.stop.is_set():
                continue  # drain without sending; the next run sends these
            self.in_flight += 1
            try:
                await self.send(group)
            except asyncio.CancelledError:
                if group.id in self.open_attempts:
                    self.recorder.cut_off(group, self.open_attempts.pop(group.id))
                raise
            finally:
                self.in_flight -= 1
        self.queue.put_nowait(None)  # pass the end on to the next worker (a slot just freed)

    def sender_for(self, group: Group) -> Group:
        """Give the group its sender: the one it had before (sticky), or the freest in the pool."""
        rec = self.view.groups.get(group.id)
        sender = rec.sender if rec is not None else None
        if sender is not None and sender not in self.pacer.senders:
            log.warning("group.sender_gone", group=group.id, sender=sender)
            sender = None
        sender = sender or self.pacer.choose()
        if sender == group.message.from_:
            return group
        return replace(group, message=replace(group.message, from_=sender))

    def _deadline_for(self) -> float | None:
        """The earlier of the job's deadline and this group's ``max_group_age_s``."""
        age_limit = self.settings.max_group_age_s
        group_deadline = self.clock.monotonic() + age_limit if age_limit else None
        deadlines = [d for d in (self.deadline, group_deadline) if d is not None]
        return min(deadlines) if deadlines else None

    async def send(self, group: Group) -> None:
        group = self.sender_for(group)
        rec = self.view.groups.get(group.id)
        # An earlier run may have sent this group already (it was in doubt): any answer now
        # is a replay under the same key, and a 422 would mean the body changed under it.
        was_in_doubt = self.view.in_doubt(group.id)
        tries = _Tries(
            group,
            idempotency_key(self.view.campaign, group.id),
            self._deadline_for(),
            t0=rec.t0 if rec is not None else None,
            ambiguous=was_in_doubt,
        )
        try:
            result = await send_with_retry(
                self.client,
                group,
                tries.key,
                self.settings.retry,
                clock=self.clock,
                before_attempt=functools.partial(self._before_attempt, tries),
                on_error=functools.partial(self._on_error, tries),
                deadline=tries.deadline,
                ambiguous_until=key_valid_until(
                    self.view, self.settings.retry, group.id, fresh=self.clock.wall()
                ),
                digest=self.retries,
            )
        except StopRetrying:
            self.open_attempts.pop(group.id, None)
            return
        except LedgerError as exc:
            self.fail_ledger(exc)
            return
        if result.receipt is not None and tries.ticket is not None:
            # the wait as the pacer took it (clamped), for the ledger and the percentiles too
            wait = self.pacer.observe(tries.ticket, result.receipt.wait_seconds)
            result = replace(result, receipt=replace(result.receipt, wait_seconds=wait))
        if (
            isinstance(result.error, Rejected)
            and result.error.status == 422
            and (was_in_doubt or result.attempts > 1)
        ):
            result = replace(result, error=key_conflict(result.error))
        try:
            await self.conclude(group, result, tries.throttled)
        except LedgerError as exc:
            self.fail_ledger(exc)

    async def _before_attempt(self, tries: _Tries, number: int) -> None:
        """Pace, check the window and the stop, write the attempt ahead, take a send slot."""
        group = tries.group
        try:
            tries.ticket = await self.pacer.acquire(
                group.message.from_, len(group.to), tries.deadline
            )
        except PaceAborted as exc:
            raise self._gave_up(exc) from None
        if not self.stop.is_set() and not in_window(self.job, utc(self.clock)):
            log.warning("job.window_closed", send_window=str(self.job.send_window))
            self.stop.request("window")
        if self.stop.is_set():
            raise StopRetrying
        tries.t0 = tries.t0 if tries.t0 is not None else self.clock.wall()
        self.open_attempts[group.id] = None
        await self.recorder.attempt(group, number, tries.key, tries.t0)
        try:
            await self.pacer.send_slot(tries.ticket)
        except PaceAborted:
            # on record, but the request never left: a resume must not take it for one that
            # may have been accepted
            raise StopRetrying(never_left()) from None

    def _on_error(self, tries: _Tries, exc: SendError) -> None:
        """Learn from a failed try (the pacer from a 429); keep what a forced stop records."""
        tries.ambiguous = tries.ambiguous or isinstance(exc, AmbiguousSendError)
        if not tries.ambiguous and isinstance(exc, RetryableSendError):
            self.open_attempts[tries.group.id] = exc  # nothing is out until the next try
        if isinstance(exc, RateLimited):
            self.pacer.on_rate_limited(tries.group.message.from_, exc.retry_after, exc.code)
            tries.throttled += 1

    def _gave_up(self, exc: PaceAborted) -> StopRetrying:
        """Why a group stops waiting for the pacer: the job stops, its deadline passes (the job
        stops too), or its own ``max_group_age_s`` would pass first (the group alone gives up,
        recorded with its last error, or as rate limited when it never got a try)."""
        if exc.reason == "deadline" and self.deadline is not None and exc.earliest > self.deadline:
            self._deadline_reached()
            return StopRetrying()
        if exc.reason == "deadline":
            return StopRetrying(
                RateLimited(
                    f"not sent within max_group_age_s ({self.settings.max_group_age_s:g} s): "
                    "its sender is paused past it (429s or a long queue); a rerun sends it",
                    status=None,
                )
            )
        return StopRetrying()

    async def conclude(self, group: Group, result: Attempted, throttled: int = 0) -> None:
        """Record how the group's tries ended; stop the job when that is what it says."""
        self.open_attempts.pop(group.id, None)
        if not isinstance(result.error, FatalSendError):
            self.rows_done += len(group.to)
        if result.receipt is not None:
            self.transient_streak = 0
            self.last_sent = self.clock.monotonic()
            await self.recorder.sent(group, result.receipt, result.attempts, throttled)
            return
        err = result.error
        assert err is not None
        if isinstance(err, FatalSendError):
            # Not a verdict on this group: stop the job (a rerun with the key or the base URL
            # fixed sends it), and record where the group stands so a resume knows.
            self._stop_for(err)
            err = settled(err)
        # no usable answer (retries used up, or in doubt): group after group means the API is
        # down or broken, and the job stops instead of burning through the list
        unanswered = isinstance(err, RetryableSendError | AmbiguousSendError)
        self.transient_streak = self.transient_streak + 1 if unanswered else 0
        await self.recorder.outcome(group, err, result.attempts, throttled)
        if self.transient_streak >= UNREACHABLE_AFTER and not self.stop.is_set():
            self._fail(
                ApiUnavailable(
                    f"the API keeps failing ({err}); stopped after {UNREACHABLE_AFTER} groups "
                    "in a row got no usable answer. Nothing is lost: rerun to resume"
                ),
                "unavailable",
            )

    # -- stopping ---------------------------------------------------------------------------

    def _fail(self, error: BaseException, reason: str) -> None:
        if self.summary.error is None:
            self.summary.error = error
        self.stop.request(reason)

    def _stop_for(self, err: FatalSendError) -> None:
        if isinstance(err, AuthError):
            log.error("job.auth_refused", status=err.status)
        else:
            log.error("job.endpoint_refused", status=err.status, error=str(err))
        self._fail(err, "auth" if isinstance(err, AuthError) else "endpoint")

    def fail_ledger(self, exc: LedgerError) -> None:
        self._fail(exc, "ledger")

    def _deadline_reached(self) -> None:
        """``max_job_duration_s`` has come (or a wait would pass it): stop the job, once."""
        if not self.stop.is_set():
            log.warning("job.deadline", max_job_duration_s=self.settings.max_job_duration_s)
            self.stop.request("deadline")

    async def run(self, reader: RowReader) -> None:
        tasks = [asyncio.create_task(self.feed(reader), name="bulk-mms-reader")]
        tasks += [
            asyncio.create_task(self.work(), name=f"bulk-mms-worker-{i}")
            for i in range(self.settings.concurrency)
        ]

        def cancel_all() -> None:
            for task in tasks:
                task.cancel()

        self.stop.on_force(cancel_all)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:  # cancelled from outside: take the children along
            cancel_all()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        broken = [e for t in done if not t.cancelled() and (e := t.exception()) is not None]
        if broken:
            # a bug, not a send error (those are all recorded): stop everything rather than
            # let the reader wait for workers that are gone, and let it be seen
            self.stop.force("error")
            await asyncio.gather(*tasks, return_exceptions=True)
            raise broken[0]

    # -- telling ----------------------------------------------------------------------------

    def achieved_rate(self) -> float | None:
        """Groups this run got sent per second, from its first request to its last send: no
        rate at all when it sent fewer than two (retries and failures are not progress)."""
        first, last = self.pacer.first_admit, self.last_sent
        if self.summary.sent_groups < 2 or first is None or last is None or last <= first:
            return None
        return self.summary.sent_groups / (last - first)

    def snapshot(self, total: int | None) -> Snapshot:
        s = self.summary
        waits = self.recorder.waits
        return Snapshot(
            rows_done=self.rows_done,
            rows_free=self.rows_free,
            rows_total=total,
            groups_sent=s.sent_groups,
            groups_failed=s.failed_groups,
            groups_in_doubt=s.in_doubt_groups,
            rate_limited=self.pacer.rate_limited,
            wait_seconds=waits[-1] if waits else None,
            elapsed_s=self.clock.monotonic() - self.started,
        )

    async def report_progress(self, progress: Progress, total: int | None) -> None:
        """Hand a snapshot to ``progress`` twice a second (real time: it is for display)."""
        while True:
            progress.update(self.snapshot(total))
            await asyncio.sleep(PROGRESS_PERIOD_S)

    def finish(self) -> JobSummary:
        """The run's summary, with where the whole ledger stands now."""
        self.retries.flush()
        s, view = self.summary, self.view
        limited = self.limit is not None and self.queued >= self.limit
        s.stopped = self.stop.reason or ("limit" if limited else None)
        s.duration_s = self.clock.monotonic() - self.started
        waits = sorted(self.recorder.waits)
        s.wait_seconds_p50 = percentile(waits, 0.50)
        s.wait_seconds_p95 = percentile(waits, 0.95)
        s.wait_seconds_max = waits[-1] if waits else None
        s.achieved_rate = self.achieved_rate()
        s.rate_limited = self.pacer.rate_limited
        s.queue_full = self.pacer.queue_full
        # the view took in every event as it was written: no second read of the ledger
        s.open_failed = view.count(FAILED)
        s.open_in_doubt = view.count(IN_DOUBT)
        s.open_retry_pending = view.count(RETRY_PENDING)
        s.recipients = view.recipients()
        log.info("job.finished", **s.as_log(), errors=dict(self.recorder.errors))
        return s


async def run_job(
    job: JobConfig,
    settings: Settings,
    client: MmsClient,
    *,
    resend_in_doubt: bool = False,
    clock: Clock | None = None,
    stop: Stop | None = None,
    progress: Progress | None = None,
    limit: int | None = None,
) -> JobSummary:
    """Run a job to the end of its input, or until stopped.

    Args:
        job: what to send to whom.
        settings: rate, concurrency, retries.
        client: the API seam.
        resend_in_doubt: also send groups an earlier run left in doubt.
        clock: the one clock (pacing, backoff, deadlines, the ``send_window``, event stamps);
            by default the system's, with sleeps that a stop ends. Tests pass a fake.
            Outside the window nothing is sent (``summary.stopped == "window"``); when it
            closes mid-run, requests not yet sent stay for the next run.
        stop: set it to stop early (the CLI sets it on SIGINT/SIGTERM).
        progress: where to show progress (a bar, or ``job.progress`` events); None: nowhere.
        limit: send at most this many groups (``run --limit``, a rehearsal); the rest stay
            for the next run (``summary.stopped == "limit"``).

    Returns:
        The run's :class:`JobSummary`. ``summary.error`` holds the :class:`FatalSendError`,
        :class:`ApiUnavailable` or :class:`LedgerError` that stopped the run, if one did.

    Raises:
        InputError, ConfigError: the input cannot be used; nothing was sent.
        LedgerError: the ledger is locked, corrupt or belongs to another input; nothing was sent.
    """
    stop = stop or Stop()
    clock = clock or SystemClock(stop)
    if not in_window(job, utc(clock)):
        local = utc(clock).astimezone(job.zone)
        log.warning(
            "job.outside_window",
            send_window=str(job.send_window),
            timezone=job.timezone,
            local_time=local.strftime("%H:%M"),
        )
        return JobSummary(job.name, stopped="window")
    with open_reader(job, keep_all=True) as reader:
        header = header_for(job, fingerprint(job.input), clock)
        store = open_store(job.ledger, "run")
        try:
            view = _resume(store, header, reader.columns, job.phone_column)
            started = RunStarted(os.getpid(), iso(clock.wall()))
            store.append_now(started)
            view.apply(started)
            recorder = Recorder(store, view, JobSummary(job.name), clock)
            runner = Runner(
                job,
                settings,
                client,
                recorder,
                clock=clock,
                stop=stop,
                resend_in_doubt=resend_in_doubt,
                limit=limit,
            )
            log.info(
                "job.started",
                job=job.name,
                input=str(job.input),
                ledger=store.name,
                campaign=view.campaign,
                grouping=job.grouping,
                rate=settings.rate,
                concurrency=settings.concurrency,
            )
            async with _showing(runner, progress, job):
                await runner.run(reader)
            try:
                await store.drain()
            except LedgerError as exc:
                runner.fail_ledger(exc)
        finally:
            await _close(store)
    return runner.finish()


def _resume(
    store: LedgerStore, header: Header, columns: tuple[str, ...] | list[str], phone_column: str
) -> LedgerView:
    """Fold what the ledger holds (not the delivery statuses: a run needs none); a new ledger
    gets its header: a new campaign, with its own Idempotency-Keys."""
    view = LedgerView.fold(store.events(skip_status=True))
    if view.header is None:
        header = replace(
            header,
            campaign=secrets.token_hex(8),
            columns=tuple(c for c in columns if c != phone_column),
        )
        store.append_now(header)
        view.apply(header)
        return view
    check_resumable(view, header, store.name)
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


@contextlib.asynccontextmanager
async def _showing(
    runner: Runner, progress: Progress | None, job: JobConfig
) -> AsyncIterator[None]:
    """Show the runner's progress while the block runs, and a last snapshot after it."""
    if progress is None:
        yield
        return
    total = open_count(job.input)
    shower = asyncio.create_task(runner.report_progress(progress, total))
    try:
        yield
    finally:
        shower.cancel()
        progress.update(runner.snapshot(total))
        progress.close()


async def _close(store: LedgerStore) -> None:
    try:
        await store.close()
    except LedgerError:
        store.close_sync()
