"""Why a run stops for its windows and its deadline: the one judgement, at both ends of a run.

At the start, :func:`window_stop`: a run outside its ``send_window`` sends nothing and stops
``window`` (exit 4: a later run inside the window sends) when the window opens again before
the job's deadline, else :attr:`~bulk_mms.signals.StopReason.AFTER_DEADLINE` (exit 1: no run can).
At the end, :func:`held_for_windows`: the recipients a run held for their quiet hours, or
left unsent as the ``send_window`` closed, make it stop ``quiet_hours`` or ``window`` (exit 4)
only when a later run can send one of them before the deadline; when nobody can,
:attr:`~bulk_mms.signals.StopReason.AFTER_DEADLINE` (exit 1).

At the end too, :func:`reset_in_time`: a run a cap stopped (exit 5: a run after its reset
resumes) whose reset comes only after the deadline ends with exit 1 instead: no run can.

They read the job, the clock and the deadline, and nothing of the run but its summary and two
counts by time zones; they decide ``JobSummary.stopped`` (and a cap's error), which
:func:`~bulk_mms.console.run_outcome` turns into the exit code (with
:func:`~bulk_mms.console._incomplete`, the rule for whether a run leaves someone unsent).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import structlog

from bulk_mms.clock import Clock, utc
from bulk_mms.config import JobConfig, SendWindow
from bulk_mms.errors import LedgerError, LimitReached, ResetAfterDeadline
from bulk_mms.gates import before, job_deadline, past
from bulk_mms.ledger import Header, LedgerView, display, exists, open_store
from bulk_mms.prepare import in_window
from bulk_mms.quiet import next_opening, opens_before
from bulk_mms.signals import StopReason
from bulk_mms.summary import JobSummary, minute_utc

log = structlog.get_logger(__name__)

#: Recipients by their time zones (a group's ``zones``).
ByZones = Mapping[tuple[str, ...], int]


def window_stop(job: JobConfig, clock: Clock) -> str | None:
    """Why a run started now, outside its ``send_window`` and before the job's deadline,
    stops with nothing sent: the window opens again before the deadline (``window``, exit 4)
    or only after it (:attr:`StopReason.AFTER_DEADLINE`, exit 1). None inside the window, or
    past the deadline (the run goes on and records what is left expired, exit 1). What a run
    does, and what ``--dry-run`` says it would."""
    window = job.send_window
    if window is None or in_window(job, now := utc(clock)):
        return None
    deadline = deadline_before_start(job)
    return None if past(deadline, clock) else _closed(job, now, deadline)


def sending_window(job: JobConfig) -> tuple[tuple[SendWindow, tuple[str, ...]], ...]:
    """The job's ``send_window`` with its zone, as :func:`~bulk_mms.quiet.next_opening`'s
    ``also``: nothing is sent outside it, whatever a recipient's window says."""
    window = job.send_window
    return () if window is None else ((window, (job.timezone,)),)


def _closed(job: JobConfig, now: dt.datetime, deadline: dt.datetime | None) -> str:
    """Why a run outside its (set) ``send_window`` at ``now`` stops: ``window`` (exit 4)
    when it opens again before ``deadline``, else :attr:`StopReason.AFTER_DEADLINE` (exit 1)."""
    assert job.send_window is not None
    return (
        StopReason.WINDOW
        if opens_before(job.send_window, (job.timezone,), now, deadline)
        else StopReason.AFTER_DEADLINE
    )


def deadline_before_start(job: JobConfig) -> dt.datetime | None:
    """The job's deadline (``deadline``, or ``max_age_s`` after its ledger began:
    :func:`~bulk_mms.gates.job_deadline`), for a run outside its ``send_window``: past it,
    such a run goes on, sends nothing (past the deadline nothing leaves) and records what is
    left ``expired_unsent``, rather than exit 4 for a later run that cannot send it either;
    before it, a window that opens again only after it stops the run with exit 1
    (:attr:`StopReason.AFTER_DEADLINE`). Reads no more of the ledger than its header, and only for
    ``max_age_s``; a ledger that cannot be read then is left to the next run inside the
    window, which says why."""
    if job.max_age_s is None:
        return job.deadline
    try:
        header = None
        if exists(job.where):
            store = open_store(job.where, "read")
            try:
                header = next(iter(store.events(skip_status=True)), None)
            finally:
                store.close_sync()
    except LedgerError as exc:
        log.warning("job.deadline_unknown", ledger=display(job.where), error=str(exc))
        return job.deadline
    view = LedgerView()
    if isinstance(header, Header):
        view.apply(header)
    return job_deadline(job, view)


def held_for_windows(
    s: JobSummary,
    job: JobConfig,
    clock: Clock,
    expires: dt.datetime | None,
    *,
    quiet: ByZones,
    left: ByZones,
) -> None:
    """Say in ``s``, the summary of a run that has ended, what the windows left for later.

    Call it once the run's ``stopped``, ``recipients`` and ``read_whole_input`` are in ``s``.
    It writes:

    * ``s.quiet`` and ``s.next_opening``, when ``job`` has a ``recipient_window`` and
      ``quiet`` holds someone: the held recipients by zone (``"A, B"``), and the first moment
      one of them can be sent (their window and the ``send_window`` open together; None:
      not within two days);
    * ``s.stopped``, only from ``window`` (the ``send_window`` closed mid-run) or None:
      ``window`` becomes :attr:`StopReason.AFTER_DEADLINE` when nobody left can be sent before
      ``expires``; None becomes ``quiet_hours`` when recipients are held and one of them can
      be sent before ``expires``, else :attr:`StopReason.AFTER_DEADLINE`. Every other stop stands.

    Args:
        s: the run's summary.
        job: its ``send_window``, ``timezone`` and ``recipient_window``.
        clock: now, by its wall time.
        expires: the job's deadline (:func:`~bulk_mms.gates.job_deadline`); None: none.
        quiet: recipients held for their quiet hours, by their zones.
        left: recipients of the groups a stop left unsent (queued, or between tries), by
            their zones.
    """
    now, window = utc(clock), job.recipient_window
    if quiet and window is not None:
        also = sending_window(job)  # a held recipient is sent only when both are open
        openings = [next_opening(window, z, now, also) for z in quiet]
        s.next_opening = min((o for o in openings if o is not None), default=None)
        s.quiet = {", ".join(z): n for z, n in quiet.items()}
    if s.stopped == StopReason.WINDOW and job.send_window is not None:  # it closed mid-run
        others = _others_left(s, quiet, left)
        if not _sendable_in_time(job, now, expires, quiet, left, others=others):
            s.stopped = StopReason.AFTER_DEADLINE
    elif s.stopped is None and s.quiet:
        sendable = _sendable_in_time(job, now, expires, quiet, left, others=False)
        s.stopped = StopReason.QUIET_HOURS if sendable else StopReason.AFTER_DEADLINE


def reset_in_time(s: JobSummary, expires: dt.datetime | None) -> None:
    """Say in ``s``, the summary of a run a cap stopped (:class:`~bulk_mms.errors.LimitReached`)
    that lifts by itself only at or after ``expires`` (the job's deadline: the daily cap's
    next day, a carrier's), that no later run can send what is left: its error becomes
    :class:`~bulk_mms.errors.ResetAfterDeadline` (exit 1), not 5's resumable stop."""
    err = s.error
    if not isinstance(err, LimitReached) or err.resumes_at is None or expires is None:
        return
    if before(expires, err.resumes_at):
        return
    s.error = ResetAfterDeadline(
        f"{err}; but it lifts only after the job's deadline ({minute_utc(expires.timestamp())}): "
        "no run can send the rest in time (the first run past the deadline records it "
        "expired). Raise the cap or move the deadline, and rerun"
    )


def _sendable_in_time(
    job: JobConfig,
    now: dt.datetime,
    expires: dt.datetime | None,
    quiet: ByZones,
    left: ByZones,
    *,
    others: bool,
) -> bool:
    """Whether a later run can send someone left before ``expires``: a recipient held for
    their quiet hours (``quiet``), or left by a stop (``left``), once their
    ``recipient_window`` and the ``send_window`` are open together; ``others`` (their zones
    unknown: input not read, a group pending a rerun) once the ``send_window`` opens."""
    theirs, window = job.recipient_window, job.send_window
    if theirs is None:  # no zones to wait for: the send_window alone
        others = others or bool(left) or bool(quiet)
    if others and (window is None or opens_before(window, (job.timezone,), now, expires)):
        return True
    also = sending_window(job)
    return theirs is not None and any(
        opens_before(theirs, z, now, expires, also) for z in (*quiet, *left)
    )


def _others_left(s: JobSummary, quiet: ByZones, left: ByZones) -> bool:
    """Whether someone is left unsent whose zones the run does not know: input not read to
    its end, or more recipients not attempted, pending a rerun or in doubt (a later run
    settles or resends them) than those held for their quiet hours (``quiet``) or left by
    the stop (``left``)."""
    r = s.recipients
    if not s.read_whole_input or r is None:
        return True
    known = sum(quiet.values()) + sum(left.values())
    return r.later > known
