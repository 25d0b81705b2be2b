"""Run a job: read → validate → group → skip what the ledger has → pace → send/retry → record.

The reader feeds a bounded queue (backpressure: the file is read only as fast as groups go out)
drained by ``concurrency`` worker tasks. Before each request leaves, an ``attempt`` event is made
durable in the ledger; the outcome follows. A stop (signal, refused key, ledger failure) stops the
reader and lets requests in flight finish and be recorded; what was never attempted is simply
sent by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import itertools
import os
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import structlog

from bulk_mms._version import __version__
from bulk_mms.client import MmsClient, idempotency_key
from bulk_mms.config import MAX_GROUP_SIZE, JobConfig, RetryConfig, Settings
from bulk_mms.errors import (
    AmbiguousSendError,
    ApiUnavailable,
    AuthError,
    ConfigError,
    EndpointError,
    FatalSendError,
    InputError,
    LedgerError,
    RateLimited,
    Rejected,
    RetryableSendError,
    SendError,
)
from bulk_mms.grouping import make_groups
from bulk_mms.ledger import (
    FORMAT,
    Ledger,
    LedgerState,
    check_header,
    fingerprint,
    now_iso,
    replay,
)
from bulk_mms.models import Group, Money, Recipient, RejectedRow
from bulk_mms.pacing import PaceAborted, Pacer, PacingConfig, Ticket
from bulk_mms.progress import Progress, Snapshot, open_count
from bulk_mms.reader import RowReader
from bulk_mms.report import percentile, summarize
from bulk_mms.retry import Attempted, RetryDigest, StopRetrying, send_with_retry
from bulk_mms.validate import PhoneError, normalize_phone, validate_rows

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


class Clock(Protocol):
    """Time for the pacer, the backoff and the deadlines. Tests pass a fake that jumps."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The event loop's clock; its sleep wakes early when the job is asked to stop."""

    def __init__(self, stop: Stop) -> None:
        self._stop = stop
        self._loop = asyncio.get_running_loop()

    def now(self) -> float:
        return self._loop.time()

    async def sleep(self, seconds: float) -> None:
        await self._stop.sleep(seconds)


class Stop(asyncio.Event):
    """A stop request with its reason (``"SIGINT"``, ``"auth"``, ``"ledger"``...).

    A stop is graceful: no new request leaves, every wait ends at once, the requests in flight
    finish and are recorded. :meth:`force` (a second Ctrl-C) also cancels those in flight:
    their attempts stay on record, in doubt, and every line already written stays written.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None
        self.forced = False
        self._on_force: list[Callable[[], None]] = []

    def request(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
            self.set()

    def force(self, reason: str | None = None) -> None:
        """Stop now: a stop (if none was asked yet), and cancel the work in flight."""
        self.request(reason or "forced")
        if not self.forced:
            self.forced = True
            for callback in self._on_force:
                callback()

    def on_force(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the stop is forced (at once if it already is)."""
        self._on_force.append(callback)
        if self.forced:
            callback()

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when a stop is requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait(), timeout=seconds)


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a dry run expects sending to take: time at the configured ceilings, and cost."""

    seconds: float
    #: Requests (or recipients, with ``cost = "recipient"``) per second it assumes.
    rate: float
    cost: Money | None
    #: Where the price came from: the ledger's own sends, ``[pricing]``, or nowhere.
    price_basis: str

    def cost_text(self) -> str:
        """``about 1.2138 USD (basis)``, or why there is no price."""
        if self.cost is None:
            return self.price_basis
        return f"about {self.cost.amount:.4f} {self.cost.currency} ({self.price_basis})"


def pacing_config(settings: Settings) -> PacingConfig:
    """The pacer's part of the settings."""
    return PacingConfig(
        rate=settings.rate,
        cost=settings.cost,
        max_queue_wait_s=settings.max_queue_wait_s,
        sender_limits=settings.sender_limits,
        type_limits=settings.type_limits,
        max_pause_s=settings.retry.max_retry_after,
    )


def estimate(
    job: JobConfig, settings: Settings, groups: int, recipients: int, observed: Money | None
) -> Estimate:
    """Time at the lowest of the account rate and the senders' summed ceilings; cost at the
    price per recipient seen in this ledger so far, else ``[pricing] per_recipient``.

    The time is a floor: Telnyx's queue (``wait_seconds``) can only slow the adaptive pacing.
    """
    pacer = Pacer(pacing_config(settings), job.message.senders)
    rate = min(settings.rate, sum(p.ceiling for p in pacer.senders.values()))
    units = recipients if settings.cost == "recipient" else groups
    if observed is not None:
        price, basis = observed, "the average per recipient this ledger has paid"
    elif settings.price_per_recipient is not None:
        price = Money(settings.price_per_recipient, settings.currency)
        basis = "[pricing] per_recipient"
    else:
        return Estimate(units / rate, rate, None, "unknown: set [pricing] per_recipient")
    return Estimate(units / rate, rate, Money(price.amount * recipients, price.currency), basis)


@dataclass(slots=True)
class JobSummary:
    """What one run did, and where the whole ledger stands afterwards."""

    job: str
    sent_groups: int = 0
    sent_recipients: int = 0
    failed_groups: int = 0
    failed_recipients: int = 0
    #: Of the failed groups, those that ran out of retries on a transient error: the next run
    #: sends them again.
    retry_later_groups: int = 0
    in_doubt_groups: int = 0
    rejected_rows: int = 0
    #: Groups skipped because an earlier run finished them.
    skipped_groups: int = 0
    #: Groups held back because an earlier run left them in doubt.
    held_groups: int = 0
    cost: dict[str, Decimal] = field(default_factory=dict)
    #: Reported ``wait_seconds``: median, 95th percentile and maximum (None: none reported).
    wait_seconds_p50: float | None = None
    wait_seconds_p95: float | None = None
    wait_seconds_max: float | None = None
    #: Requests admitted per second, first to last admission.
    achieved_rate: float | None = None
    #: 429 answers, and of those how many said the queue was full (40318).
    rate_limited: int = 0
    queue_full: int = 0
    duration_s: float = 0.0
    #: Why the run stopped early, or None if it reached the end of the input.
    stopped: str | None = None
    #: Open problems over the whole ledger: failed and in-doubt groups.
    open_failed: int = 0
    open_in_doubt: int = 0
    #: Groups (of those sent, or a dry run would send) whose message took a placeholder's
    #: value from the first member though the members' values differ, or left it empty.
    template_differs: Counter[str] = field(default_factory=Counter)
    template_empty: Counter[str] = field(default_factory=Counter)
    #: Set by a dry run: the PID of a run that holds the ledger now (a run would exit 75).
    locked_by: str | None = None
    #: Set by a dry run: the first groups, for display, and what sending them would take.
    preview: list[Group] = field(default_factory=list)
    estimate: Estimate | None = None
    error: BaseException | None = field(default=None, repr=False)

    def as_log(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "sent_groups": self.sent_groups,
            "sent_recipients": self.sent_recipients,
            "failed_groups": self.failed_groups,
            "retry_later_groups": self.retry_later_groups,
            "in_doubt_groups": self.in_doubt_groups,
            "rejected_rows": self.rejected_rows,
            "skipped_groups": self.skipped_groups,
            "held_groups": self.held_groups,
            "cost": {k: str(v) for k, v in self.cost.items()},
            "achieved_rate": round(self.achieved_rate, 3) if self.achieved_rate else None,
            "wait_seconds_p50": self.wait_seconds_p50,
            "wait_seconds_p95": self.wait_seconds_p95,
            "wait_seconds_max": self.wait_seconds_max,
            "rate_limited": self.rate_limited,
            "queue_full": self.queue_full,
            "duration_s": round(self.duration_s, 3),
            "stopped": self.stopped,
            "template_differs": dict(self.template_differs),
            "template_empty": dict(self.template_empty),
        }

    def note_template(self, group: Group) -> None:
        """Count the placeholders that do not fit ``group`` (see :attr:`template_differs`)."""
        self.template_differs.update(group.differs)
        self.template_empty.update(group.empty)


# --------------------------------------------------------------------------------------------
# Preparing


def open_reader(job: JobConfig, *, keep_all: bool = False) -> RowReader:
    """Open the job's input and check it against the job. Raises InputError or ConfigError.

    ``keep_all``: keep every column of each row (a run records the rows in its ledger).
    """
    keep = [*job.message.fields, *([job.group_by] if job.group_by else [])]
    reader = RowReader(job.input, job.phone_column, keep, keep_all=keep_all)
    reader.open()
    if reader.columns:  # a JSONL file whose first lines are all bad has no known columns
        for setting, names in (
            ("message.text", job.message.text.fields if job.message.text else ()),
            ("message.subject", job.message.subject.fields if job.message.subject else ()),
            ("group_by", (job.group_by,) if job.group_by else ()),
        ):
            for name in names:
                if name not in reader.columns:
                    reader.close()
                    raise ConfigError(
                        setting,
                        f"{name!r} is not a column of {job.input} "
                        f"(columns: {', '.join(reader.columns)})",
                        source=job.path,
                    )
    return reader


def seed_job(job: JobConfig, to: Sequence[str], now: dt.datetime) -> JobConfig:
    """The job of a seed send (``run --to``): the job's message to ``to`` only, as one group.

    Each seed number takes the template values of one of the input's first valid rows, so
    the seeds see the message as the first recipients will. The seed rows are written to a
    CSV beside the ledger (a record of what was sent to whom), and the job is renamed
    ``<name>-seed-<UTC time>``: its own ledger and campaign, the real campaign untouched.

    Raises:
        ConfigError: a seed number is not valid, is repeated, or there are more than 8.
        InputError: the input cannot be read.
    """
    seeds: list[str] = []
    for value in to:
        try:
            phone = normalize_phone(value, job.default_region)
        except PhoneError as exc:
            raise ConfigError("--to", f"{value!r}: {exc}") from None
        if phone in seeds:
            raise ConfigError("--to", f"{value!r} is given twice")
        seeds.append(phone)
    if len(seeds) > MAX_GROUP_SIZE:
        raise ConfigError("--to", f"at most {MAX_GROUP_SIZE} numbers, not {len(seeds)}")
    with open_reader(job) as reader:
        rows = validate_rows(reader, job.phone_column, job.default_region)
        firsts = list(itertools.islice((r for r in rows if isinstance(r, Recipient)), len(seeds)))
    if not firsts:
        raise InputError(job.input, "has no valid row to render the message from")
    name = f"{job.name}-seed-{now.astimezone(dt.UTC):%Y%m%dT%H%M%S}"[-100:].lstrip("-._")
    path = job.ledger.parent / f"{name}.csv"
    columns = [job.phone_column, *(c for c in job.message.fields if c != job.phone_column)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for i, phone in enumerate(seeds):
                fields = firsts[i % len(firsts)].fields
                writer.writerow([phone, *(fields.get(c, "") for c in columns[1:])])
    except OSError as exc:
        raise ConfigError("--to", f"cannot write {path}: {exc.strerror or exc}") from None
    return replace(
        job,
        name=name,
        input=path,
        ledger=path.with_suffix(".jsonl"),
        group_size=len(seeds),
        group_by=None,
        mix_unrelated=True,
        send_window=None,  # the seeds are the operator's own phones, asked for now
    )


def header_for(job: JobConfig, input_fingerprint: str) -> dict[str, Any]:
    """The ledger's first line for this job."""
    return {
        "event": "job",
        "format": FORMAT,
        "version": __version__,
        "job": job.name,
        "input": str(job.input.resolve()),
        "fingerprint": input_fingerprint,
        "phone_column": job.phone_column,
        "group_size": job.group_size,
        "group_by": job.group_by,
        "from": job.message.from_,
        "time": now_iso(),
    }


def key_valid_until(
    state: LedgerState, retry: RetryConfig, group_id: str, fresh: float | None = None
) -> float | None:
    """Until when a repeat of this group is safe (its key is replayed), if it is at all.

    ``fresh`` stands in for the first attempt of a group never tried before (a moment before
    it, so the window it gives is, if anything, short).
    """
    if not retry.retry_ambiguous:
        return None
    t0 = state.first_attempt.get(group_id, fresh)
    return None if t0 is None else t0 + retry.idempotency_window_s


def disposition(
    state: LedgerState, retry: RetryConfig, group_id: str, *, resend_in_doubt: bool
) -> str:
    """What a run does with a group: ``"skip"`` (done), ``"hold"`` (in doubt) or ``"send"``.

    An in-doubt group is sent again if the operator says so, or if its key still holds.
    """
    if state.is_done(group_id):
        return "skip"
    if group_id in state.in_doubt and not resend_in_doubt:
        until = key_valid_until(state, retry, group_id)
        if until is None or time.time() >= until:
            return "hold"
    return "send"


def in_window(job: JobConfig, now: dt.datetime) -> bool:
    """Whether the job may send at ``now`` (an aware datetime): always, without a send_window."""
    if job.send_window is None:
        return True
    return job.send_window.contains(now.astimezone(job.zone).time())


def plan(job: JobConfig, reader: RowReader) -> Iterator[Group | RejectedRow]:
    """The whole pipeline up to sending, as one lazy stream."""
    rows = validate_rows(reader, job.phone_column, job.default_region)
    return make_groups(rows, job)


# --------------------------------------------------------------------------------------------
# Running


class Runner:
    """One run of one job. Private: use :func:`run_job`."""

    def __init__(
        self,
        job: JobConfig,
        settings: Settings,
        client: MmsClient,
        ledger: Ledger,
        state: LedgerState,
        *,
        resend_in_doubt: bool,
        clock: Clock | None,
        stop: Stop,
        limit: int | None = None,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.job = job
        self.wall = wall
        self.settings = settings
        self.client = client
        self.ledger = ledger
        self.state = state
        self.resend_in_doubt = resend_in_doubt
        #: Send at most this many groups in this run (``run --limit``); the next run goes on.
        self.limit = limit
        self.queued = 0
        self.stop = stop
        self.clock: Clock = clock or LoopClock(stop)
        self.summary = JobSummary(job.name)
        self.pacer = Pacer(
            pacing_config(settings),
            job.message.senders,
            now=self.clock.now,
            sleep=self.clock.sleep,
            stopped=stop.is_set,
        )
        self.started = self.clock.now()
        self.deadline = (
            self.started + settings.max_job_duration_s if settings.max_job_duration_s else None
        )
        self.waits: list[float] = []
        self.queue: asyncio.Queue[Group | None] = asyncio.Queue(
            settings.concurrency * QUEUE_DEPTH_PER_WORKER
        )
        self.in_flight = 0
        self.errors: Counter[str] = Counter()
        #: The input columns the ledger records each group's rows in (its header's).
        header_columns = state.header.get("columns") if state.header else None
        self.columns: list[str] = header_columns if isinstance(header_columns, list) else []
        #: Retries told one line per cause now and then, not one line each.
        self.retries = RetryDigest()
        self.transient_streak = 0  # groups in a row that used up their retries
        #: Groups whose attempt is on record and whose outcome is not yet: cut off in flight
        #: by a forced stop, they are recorded in doubt.
        #: (None: a request is out, or may have been accepted; an error: the last try
        #: certainly failed and the group waits for its next try.)
        self.open_attempts: dict[str, SendError | None] = {}
        #: Input rows dealt with, for progress: recorded, rejected, skipped or held; and of
        #: those, the rows that needed no request (rejected, done before, held): the ETA's
        #: rate counts only the others.
        self.rows_done = 0
        self.rows_free = 0
        self.last_sent: float | None = None

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<Runner {self.job.name} sent={s.sent_groups} failed={s.failed_groups} "
            f"in_doubt={s.in_doubt_groups} in_flight={self.in_flight}>"
        )

    async def produce(self, reader: RowReader) -> None:
        """Feed groups to the workers; record rejected rows; skip what is done."""
        s, state = self.summary, self.state
        for n, item in enumerate(plan(self.job, reader)):
            if self.stop.is_set():
                break
            if self.deadline is not None and self.clock.now() >= self.deadline:
                self._deadline_reached()
                break
            if n % 512 == 511:
                await asyncio.sleep(0)  # let workers and the flusher run on long skip streaks
            if isinstance(item, RejectedRow):
                s.rejected_rows += 1
                self.rows_done += 1
                self.rows_free += 1
                if item.line not in state.rejected_lines:
                    self.ledger.write_nowait(
                        {
                            "event": "rejected",
                            "line": item.line,
                            "value": item.value,
                            "reason": item.reason,
                            "time": now_iso(),
                        }
                    )
                log.debug("row.rejected", line=item.line, value=item.value, reason=item.reason)
                continue
            action = disposition(
                state, self.settings.retry, item.id, resend_in_doubt=self.resend_in_doubt
            )
            if action != "send":
                self.rows_done += len(item.to)
                self.rows_free += len(item.to)
            if action == "skip":
                s.skipped_groups += 1
                continue
            if action == "hold":
                s.held_groups += 1
                if item.id not in state.doubt_recorded:
                    # cut off by a crash after its attempt: say so, with its recipients, once
                    state.outcome("in_doubt", item.id)
                    reason = "attempted before a crash; the outcome is unknown"
                    self.ledger.write_nowait(
                        _in_doubt_event(_base(item, self.columns), reason, 0, 0)
                    )
                continue
            s.note_template(item)
            await self.queue.put(item)
            self.queued += 1
            if self.limit is not None and self.queued >= self.limit:
                log.info("job.limit_reached", limit=self.limit)
                break

    async def work(self) -> None:
        while (group := await self.queue.get()) is not None:
            if self.stop.is_set():
                continue  # drain without sending; the next run sends these
            self.in_flight += 1
            try:
                await self.send(group)
            except asyncio.CancelledError:
                self.cut_off(group)
                raise
            finally:
                self.in_flight -= 1
        self.queue.put_nowait(None)  # pass the end on to the next worker (a slot just freed)

    def cut_off(self, group: Group) -> None:
        """A forced stop cancelled ``group``: if its attempt is on record, record where it
        stands, so the report counts it and a resume knows: in doubt when a request was out
        (or an earlier try may have landed), else failed with its last try's error (retryable).
        """
        if group.id not in self.open_attempts:
            return
        last = self.open_attempts.pop(group.id)
        base = _base(group, self.columns)
        if last is None:
            self.summary.in_doubt_groups += 1
            self.state.outcome("in_doubt", group.id)
            reason = "cut off in flight by a forced stop; the outcome is unknown"
            event = _in_doubt_event(base, reason, attempts=0, throttled=0)
        else:
            self.summary.failed_groups += 1
            self.summary.retry_later_groups += 1
            event = _failed_event(base, last, attempts=0, throttled=0, retryable=True)
        with contextlib.suppress(LedgerError):
            self.ledger.write_nowait(event)

    def sender_for(self, group: Group) -> Group:
        """Give the group its sender: the one it had before (sticky), or the freest in the pool."""
        sender = self.state.sender_of.get(group.id)
        if sender is not None and sender not in self.pacer.senders:
            log.warning("group.sender_gone", group=group.id, sender=sender)
            sender = None
        sender = sender or self.pacer.choose()
        if sender == group.message.from_:
            return group
        return replace(group, message=replace(group.message, from_=sender))

    async def send(self, group: Group) -> None:
        group = self.sender_for(group)
        sender = group.message.from_
        ticket: Ticket | None = None
        throttled = 0
        ambiguous = False  # a try of this run may have been accepted
        age_limit = self.settings.max_group_age_s
        group_deadline = self.clock.now() + age_limit if age_limit else None
        deadlines = [d for d in (self.deadline, group_deadline) if d is not None]
        deadline = min(deadlines) if deadlines else None

        # An earlier run may have sent this group already (it was in doubt): any answer now
        # is a replay under the same key, and a 422 would mean the body changed under it.
        was_in_doubt = group.id in self.state.in_doubt
        t0 = self.state.first_attempt.get(group.id)
        key = idempotency_key(self.state.campaign, group.id)

        async def before_attempt(number: int) -> None:
            nonlocal ticket, t0
            try:
                ticket = await self.pacer.acquire(sender, len(group.to), deadline)
            except PaceAborted as exc:
                raise self._gave_up(exc) from None
            if not self.stop.is_set() and not in_window(self.job, self.wall()):
                log.warning("job.window_closed", send_window=str(self.job.send_window))
                self.stop.request("window")
            if self.stop.is_set():
                raise StopRetrying
            if t0 is None:
                t0 = self.state.first_attempt[group.id] = time.time()
            # Write-ahead: the intent is durable before the request can leave.
            self.open_attempts[group.id] = None
            await self.ledger.write(
                {
                    "event": "attempt",
                    "group": group.id,
                    "seq": group.seq,
                    "to": list(group.to),
                    "from": group.message.from_,
                    "attempt": number,
                    "key": key,
                    "t0": t0,
                    "time": now_iso(),
                }
            )
            try:
                await self.pacer.send_slot(ticket)
            except PaceAborted:
                # The attempt is on record but the request never left: say so, or a resume
                # would take this group for one that may have been accepted.
                raise StopRetrying(_never_left()) from None

        def on_error(exc: SendError) -> None:
            nonlocal throttled, ambiguous
            ambiguous = self._after_try(group.id, sender, exc, ambiguous)
            throttled += isinstance(exc, RateLimited)

        try:
            result = await send_with_retry(
                self.client,
                group,
                key,
                self.settings.retry,
                sleep=self.clock.sleep,
                before_attempt=before_attempt,
                on_error=on_error,
                deadline=deadline,
                now=self.clock.now,
                ambiguous_until=key_valid_until(
                    self.state, self.settings.retry, group.id, fresh=time.time()
                ),
                digest=self.retries,
            )
        except StopRetrying:
            return
        except LedgerError as exc:
            self.fail_ledger(exc)
            return
        if result.receipt is not None and ticket is not None:
            # the wait as the pacer took it (clamped), for the ledger and the percentiles too
            wait = self.pacer.observe(ticket, result.receipt.wait_seconds)
            result = replace(result, receipt=replace(result.receipt, wait_seconds=wait))
        if (
            isinstance(result.error, Rejected)
            and result.error.status == 422
            and (was_in_doubt or result.attempts > 1)
        ):
            result = replace(result, error=_key_conflict(result.error))
        try:
            await self.record(group, result, throttled)
        except LedgerError as exc:
            self.fail_ledger(exc)

    def _after_try(self, group_id: str, sender: str, exc: SendError, ambiguous: bool) -> bool:
        """Learn from a failed try (the pacer from a 429); whether a try so far may have
        been accepted."""
        ambiguous = ambiguous or isinstance(exc, AmbiguousSendError)
        if not ambiguous and isinstance(exc, RetryableSendError):
            self.open_attempts[group_id] = exc  # nothing is out until the next try
        if isinstance(exc, RateLimited):
            self.pacer.on_rate_limited(sender, exc.retry_after, exc.code)
        return ambiguous

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

    def _deadline_reached(self) -> None:
        """``max_job_duration_s`` has come (or a wait would pass it): stop the job, once."""
        if not self.stop.is_set():
            log.warning("job.deadline", max_job_duration_s=self.settings.max_job_duration_s)
            self.stop.request("deadline")

    def achieved_rate(self) -> float | None:
        """Groups this run got sent per second, from its first request to its last send: no
        rate at all when it sent fewer than two (retries and failures are not progress)."""
        first, last = self.pacer.first_admit, self.last_sent
        if self.summary.sent_groups < 2 or first is None or last is None or last <= first:
            return None
        return self.summary.sent_groups / (last - first)

    def fail_ledger(self, exc: LedgerError) -> None:
        if self.summary.error is None:
            self.summary.error = exc
        self.stop.request("ledger")

    async def record(self, group: Group, result: Attempted, throttled: int = 0) -> None:
        s = self.summary
        self.open_attempts.pop(group.id, None)
        if not isinstance(result.error, FatalSendError):
            self.rows_done += len(group.to)
        base = _base(group, self.columns)
        if result.receipt is not None:
            r = result.receipt
            self.transient_streak = 0
            s.sent_groups += 1
            s.sent_recipients += len(group.to)
            self.last_sent = self.clock.now()
            if r.cost is not None:
                s.cost[r.cost.currency] = s.cost.get(r.cost.currency, Decimal(0)) + r.cost.amount
            if r.wait_seconds is not None:
                self.waits.append(r.wait_seconds)
            await self.ledger.write(
                {
                    "event": "sent",
                    **base,
                    "from": group.message.from_,
                    "message_id": r.message_id,
                    "statuses": {st.phone: st.status for st in r.statuses},
                    "wait_seconds": r.wait_seconds,
                    "cost": (
                        {"amount": str(r.cost.amount), "currency": r.cost.currency}
                        if r.cost
                        else None
                    ),
                    "attempts": result.attempts,
                    "rate_limited": throttled,
                    "time": now_iso(),
                }
            )
            self.state.outcome("sent", group.id)
            log.debug("group.sent", group=group.id, message_id=r.message_id, to=len(group.to))
            return
        err = result.error
        assert err is not None
        self.errors[err.code] += 1
        if isinstance(err, FatalSendError):
            # Not a verdict on this group: stop the job (a rerun with the key or the base URL
            # fixed sends it), and record where the group stands so a resume knows.
            self._stop_for(err)
            err = _settled(err)
        retryable = isinstance(err, RetryableSendError)
        # no usable answer (retries used up, or in doubt): group after group means the API is
        # down or broken, and the job stops instead of burning through the list
        unanswered = retryable or isinstance(err, AmbiguousSendError)
        self.transient_streak = self.transient_streak + 1 if unanswered else 0
        if isinstance(err, AmbiguousSendError):
            s.in_doubt_groups += 1
            await self.ledger.write(_in_doubt_event(base, str(err), result.attempts, throttled))
            self.state.outcome("in_doubt", group.id)
            log.warning("group.in_doubt", group=group.id, reason=str(err))
            self._stop_if_unavailable(err)
            return
        s.failed_groups += 1
        s.failed_recipients += len(group.to)
        s.retry_later_groups += retryable
        await self.ledger.write(_failed_event(base, err, result.attempts, throttled, retryable))
        self.state.outcome("failed", group.id, retryable=retryable)
        log.warning(
            "group.failed", group=group.id, code=err.code, error=str(err), retryable=retryable
        )
        self._stop_if_unavailable(err)

    def _stop_for(self, err: FatalSendError) -> None:
        if self.summary.error is None:
            self.summary.error = err
        if isinstance(err, AuthError):
            self.stop.request("auth")
            log.error("job.auth_refused", status=err.status)
        else:
            self.stop.request("endpoint")
            log.error("job.endpoint_refused", status=err.status, error=str(err))

    def _stop_if_unavailable(self, err: SendError) -> None:
        if self.transient_streak >= UNREACHABLE_AFTER and not self.stop.is_set():
            if self.summary.error is None:
                self.summary.error = ApiUnavailable(
                    f"the API keeps failing ({err}); stopped after {UNREACHABLE_AFTER} groups "
                    "in a row got no usable answer. Nothing is lost: rerun to resume"
                )
            self.stop.request("unavailable")

    def snapshot(self, total: int | None) -> Snapshot:
        s = self.summary
        return Snapshot(
            rows_done=self.rows_done,
            rows_free=self.rows_free,
            rows_total=total,
            groups_sent=s.sent_groups,
            groups_failed=s.failed_groups,
            groups_in_doubt=s.in_doubt_groups,
            rate_limited=self.pacer.rate_limited,
            wait_seconds=self.waits[-1] if self.waits else None,
            elapsed_s=self.clock.now() - self.started,
        )

    async def report_progress(self, progress: Progress, total: int | None) -> None:
        """Hand a snapshot to ``progress`` twice a second (real time: it is for display)."""
        while True:
            progress.update(self.snapshot(total))
            await asyncio.sleep(PROGRESS_PERIOD_S)

    async def feed(self, reader: RowReader) -> None:
        """Produce, then tell the workers the input has ended (one end marker, passed on)."""
        try:
            await self.produce(reader)
        except LedgerError as exc:
            self.fail_ledger(exc)
        # not in a finally: a cancelled feeder must not wait on a queue nobody drains
        await self.queue.put(None)

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


async def run_job(
    job: JobConfig,
    settings: Settings,
    client: MmsClient,
    *,
    resend_in_doubt: bool = False,
    clock: Clock | None = None,
    stop: Stop | None = None,
    wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    progress: Progress | None = None,
    limit: int | None = None,
) -> JobSummary:
    """Run a job to the end of its input, or until stopped.

    Args:
        job: what to send to whom.
        settings: rate, concurrency, retries.
        client: the API seam.
        resend_in_doubt: also send groups an earlier run left in doubt.
        clock: time for pacing, backoff and deadlines (tests pass a fake); by default the loop's,
            with a sleep that a stop interrupts.
        stop: set it to stop early (the CLI sets it on SIGINT/SIGTERM).
        wall: the wall clock (aware) for the job's ``send_window``. Outside the window nothing
            is sent (``summary.stopped == "window"``); when it closes mid-run, requests not yet
            sent stay for the next run and those in flight finish.
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
    started = time.monotonic()
    stop = stop or Stop()
    if not in_window(job, wall()):
        local = wall().astimezone(job.zone)
        log.warning(
            "job.outside_window",
            send_window=str(job.send_window),
            timezone=job.timezone,
            local_time=local.strftime("%H:%M"),
        )
        return JobSummary(job.name, stopped="window")
    with open_reader(job, keep_all=True) as reader:
        input_fp = fingerprint(job.input)
        header = header_for(job, input_fp)
        header["columns"] = [c for c in reader.columns if c != job.phone_column]
        ledger = Ledger.open(job.ledger)
        try:
            state = replay(job.ledger)
            if state.header is None:
                # A new ledger is a new campaign: its own identity, in every Idempotency-Key.
                header["campaign"] = secrets.token_hex(8)
                ledger.write_sync(header)
                state.header = header
            else:
                check_header(job.ledger, state.header, header)
                log.info(
                    "ledger.resumed",
                    ledger=str(job.ledger),
                    campaign=state.campaign,
                    sent=len(state.sent),
                    failed=len(state.failed),
                    in_doubt=len(state.in_doubt),
                    runs=state.runs,
                )
            ledger.write_sync({"event": "run", "pid": os.getpid(), "time": now_iso()})
            runner = Runner(
                job,
                settings,
                client,
                ledger,
                state,
                resend_in_doubt=resend_in_doubt,
                clock=clock,
                stop=stop,
                wall=wall,
                limit=limit,
            )
            log.info(
                "job.started",
                job=job.name,
                input=str(job.input),
                ledger=str(job.ledger),
                campaign=state.campaign,
                grouping=job.grouping,
                rate=settings.rate,
                concurrency=settings.concurrency,
            )
            async with _showing(runner, progress, job):
                await runner.run(reader)
            try:
                await ledger.drain()
            except LedgerError as exc:
                runner.fail_ledger(exc)
        finally:
            await _close(ledger)
    runner.retries.flush()
    s = runner.summary
    s.stopped = stop.reason or ("limit" if limit is not None and runner.queued >= limit else None)
    s.duration_s = time.monotonic() - started
    waits = sorted(runner.waits)
    s.wait_seconds_p50 = percentile(waits, 0.50)
    s.wait_seconds_p95 = percentile(waits, 0.95)
    s.wait_seconds_max = waits[-1] if waits else None
    s.achieved_rate = runner.achieved_rate()
    s.rate_limited = runner.pacer.rate_limited
    s.queue_full = runner.pacer.queue_full
    # The state was kept up to date as each outcome was written: no second read of the ledger.
    s.open_failed = len(state.failed)
    s.open_in_doubt = len(state.in_doubt)
    log.info("job.finished", **s.as_log(), errors=dict(runner.errors))
    return s


async def dry_run(
    job: JobConfig,
    settings: Settings,
    *,
    resend_in_doubt: bool = False,
    preview: int = 5,
    limit: int | None = None,
) -> JobSummary:
    """Read, validate and group the whole input; send and write nothing.

    The summary's ``sent_*`` counts are what a real run with the same settings would send now:
    the skip/hold decision is the runner's own (:func:`disposition`).
    """
    started = time.monotonic()
    s = JobSummary(job.name)
    state = replay(job.ledger) if job.ledger.exists() else LedgerState()
    with open_reader(job) as reader:
        if state.header is not None:  # the run's own check: refuse another input or grouping
            check_header(job.ledger, state.header, header_for(job, fingerprint(job.input)))
        s.locked_by = Ledger.holder(job.ledger)
        for item in plan(job, reader):
            if isinstance(item, RejectedRow):
                s.rejected_rows += 1
                continue
            action = disposition(state, settings.retry, item.id, resend_in_doubt=resend_in_doubt)
            if action == "skip":
                s.skipped_groups += 1
                continue
            if action == "hold":
                s.held_groups += 1
                continue
            if limit is not None and s.sent_groups >= limit:
                continue  # counted as the runner would leave it: for the next run
            s.sent_groups += 1
            s.sent_recipients += len(item.to)
            s.note_template(item)
            if len(s.preview) < preview:
                s.preview.append(item)
    s.duration_s = time.monotonic() - started
    s.stopped = "dry-run"
    s.estimate = estimate(
        job, settings, s.sent_groups, s.sent_recipients, _paid_per_recipient(job.ledger)
    )
    return s


def _paid_per_recipient(path: Path) -> Money | None:
    """The mean price per recipient of a ledger's sent groups, if it has any in one currency."""
    if not path.exists():
        return None
    paid = summarize(path)
    if len(paid.cost) != 1 or not paid.sent_recipients:
        return None
    ((currency, total),) = paid.cost.items()
    return Money((total / paid.sent_recipients).quantize(Decimal("0.000001")), currency)


def _base(group: Group, columns: Sequence[str] = ()) -> dict[str, Any]:
    """The fields every outcome event of a group starts with; with ``rows``, the members'
    input rows as values in the header's ``columns`` order (what --failed-csv writes)."""
    base: dict[str, Any] = {"group": group.id, "seq": group.seq, "to": list(group.to)}
    if columns and group.rows:
        base["rows"] = [[row.get(c, "") for c in columns] for row in group.rows]
    return base


def _in_doubt_event(
    base: dict[str, Any], reason: str, attempts: int, throttled: int
) -> dict[str, Any]:
    return {
        "event": "in_doubt",
        **base,
        "reason": reason,
        "attempts": attempts,
        "rate_limited": throttled,
        "time": now_iso(),
    }


def _failed_event(
    base: dict[str, Any], err: SendError, attempts: int, throttled: int, retryable: bool
) -> dict[str, Any]:
    first = err.errors[0] if err.errors else None
    return {
        "event": "failed",
        **base,
        "status": err.status,
        "code": err.code,
        "title": first.title if first else type(err).__name__,
        "detail": first.detail if first and first.detail else str(err),
        "attempts": attempts,
        "rate_limited": throttled,
        "retryable": retryable,
        "time": now_iso(),
    }


def _settled(err: FatalSendError) -> SendError:
    """Where a group stands after the error that stopped the job: a redirect that may follow a
    processed POST (301/302/303, "see the result there") leaves it in doubt; a refused key or
    a 307/308 ("send it there instead") left it unsent, for a rerun to send."""
    if isinstance(err, EndpointError) and err.status in (301, 302, 303):
        return AmbiguousSendError(
            f"{err.message}; the server may have acted on it first", status=err.status
        )
    return RetryableSendError(err.message, status=err.status, errors=err.errors)


def _never_left() -> RetryableSendError:
    """The outcome of a try whose ``attempt`` is on record but whose request never left (the job
    was stopped in the last moment before it): nothing was sent, so a rerun sends it."""
    return RetryableSendError("stopped before the request left; nothing was sent")


def _key_conflict(err: Rejected) -> AmbiguousSendError:
    """A 422 on a repeat under the same Idempotency-Key: the request body changed under the key.

    bulk_mms builds the same body for the same group every time, so this is a bug (or the job's
    message was edited while a group was in doubt). It is logged at error level and the group
    is recorded in doubt, with the reason spelled out: the first request may have gone out.
    """
    log.error("idempotency.conflict", error=str(err))
    return AmbiguousSendError(
        "idempotency conflict: the request body changed under the same Idempotency-Key "
        "(was the message edited while this group was in doubt?); the first request may "
        "have been delivered",
        status=err.status,
    )


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


async def _close(ledger: Ledger) -> None:
    try:
        await ledger.close()
    except LedgerError:
        ledger.close_sync()
