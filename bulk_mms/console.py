"""What the CLI says to a person: a run's outcome and its exit code, a dry run, a question.

Every note for a person goes through :func:`say`: a plain line normally, one JSON object (with
``event``, ``level``, ``message`` and the note's fields) under ``--log-json``
(:func:`use_json`), so a log collector never meets a line it cannot parse.

Every code comes from one table: :class:`~bulk_mms.errors.Exit`, and an error's own
``exit_code`` (drawn with the error tree in :mod:`bulk_mms.errors`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, TextIO

from bulk_mms import log
from bulk_mms.clock import SystemClock, utc
from bulk_mms.config import JobConfig, SendWindow, Settings
from bulk_mms.errors import (
    AccountRefused,
    BulkMmsError,
    Exit,
    LedgerLocked,
    LimitReached,
    OutputLost,
    SpamFiltered,
)
from bulk_mms.gates import past
from bulk_mms.ledger import RecipientCounts
from bulk_mms.prepare import in_window
from bulk_mms.quiet import next_opening, open_for, opens_before
from bulk_mms.report import past_deadline_words
from bulk_mms.signals import StopReason
from bulk_mms.summary import Estimate, JobSummary, minute_utc, rerun_from
from bulk_mms.windows import deadline_before_start, sending_window, window_stop
from bulk_mms.words import escaped

#: The code a stop by a signal exits with.
SIGNAL_EXIT: dict[str, Exit] = {StopReason.SIGINT: Exit.SIGINT, StopReason.SIGTERM: Exit.SIGTERM}


#: Whether notes are JSON objects (``--log-json``); set by :func:`use_json`.
_json = False


def use_json(on: bool) -> None:
    """Make every note :func:`say` gives (``on``) a JSON object, or (off) a plain line.

    On, Python's warnings and the standard library's log records (aiohttp's) become notes too,
    instead of lines of their own shape on stderr; off puts back what was there.
    """
    global _json  # noqa: PLW0603 - the one switch, set once per command by the CLI
    _json = on
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _NoteHandler)]:
        root.removeHandler(handler)
    if on:
        root.addHandler(_NoteHandler(logging.WARNING))
        warnings.showwarning = _show_warning
    else:
        warnings.showwarning = _SHOW_WARNING


def say(
    event: str,
    message: str,
    *,
    level: str = "info",
    stream: TextIO | None = None,
    **fields: Any,
) -> None:
    """Tell a person ``message``, on stderr unless ``stream`` says otherwise.

    A plain line normally; under ``--log-json`` one JSON object on one line: ``event`` (a
    dotted name), ``level``, ``message``, ``timestamp`` and ``fields``. Either way with the
    API key scrubbed as in the log.
    """
    out = stream or sys.stderr
    if not _json:
        print(log.scrub_text(message), file=out, flush=True)
        return
    note = {
        **fields,
        "event": event,
        "level": level,
        "message": message,
        "timestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
    }
    out.write(log.json_dumps(log.scrub(note)) + "\n")
    out.flush()


class Unheard:
    """A command's stdout once nobody may be reading it: when its reader goes (``| head``
    closed the pipe), or it refuses a write (a full disk: then :attr:`lost` says why), the
    stream is pointed at the null device and what follows is dropped, so that the command
    carries on to the exit code it would have given (a run that failed groups must not exit 0
    because its summary could not be printed)."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner
        #: Why what was printed did not reach the file stdout is (never a reader gone).
        self.lost: OutputLost | None = None

    def write(self, text: str) -> int:
        try:
            return self._inner.write(text)
        except OSError as exc:
            self._gone(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self._inner.flush()
        except OSError as exc:
            self._gone(exc)

    def _gone(self, exc: OSError) -> None:
        if not isinstance(exc, BrokenPipeError) and self.lost is None:
            self.lost = OutputLost(exc)
        self._silence()

    def _silence(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # no descriptor: nothing to point
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._inner.fileno())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def reader_may_leave() -> Iterator[Unheard]:
    """Run a command whose stdout's reader may go away or whose file may refuse it
    (:class:`Unheard`, given to the block); what it printed is flushed before the block
    ends, so no broken pipe is left for the interpreter's exit."""
    unheard = Unheard(sys.stdout)
    with contextlib.redirect_stdout(unheard):
        try:
            yield unheard
        finally:
            unheard.flush()


@contextlib.contextmanager
def said(event: str, **fields: Any) -> Iterator[None]:
    """Under ``--log-json``, what the block prints on stdout becomes one note there (its lines
    the ``message``); otherwise the block prints as it would."""
    if not _json:
        yield
        return
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        yield
    say(event, text.getvalue().rstrip("\n"), stream=sys.stdout, **fields)


class _NoteHandler(logging.Handler):
    """The standard library's log records (aiohttp's, asyncio's), as notes. Private."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            say(record.name, text, level=record.levelname.lower())
        except Exception:  # a log line must never stop the command
            self.handleError(record)


_SHOW_WARNING = warnings.showwarning


def _show_warning(  # noqa: PLR0917 - the signature of warnings.showwarning
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    say(
        "python.warning",
        str(message),
        level="warning",
        stream=file,
        category=category.__name__,
        where=f"{filename}:{lineno}",
    )


def fail(exc: BaseException, code: int) -> int:
    """Say what stopped the command, in one line, and give its code: a control character in
    it (a newline or an escape sequence in a file's name) is written escaped, as ``\\n``."""
    say(
        "command.failed",
        "bulk-mms: error: " + escaped(str(exc)),
        level="error",
        error=type(exc).__name__,
        exit_code=int(code),
    )
    return code


def exit_for(exc: BaseException) -> int:
    """The exit code of an error that stopped the work: its class's own (see errors.py)."""
    return exc.exit_code if isinstance(exc, BulkMmsError) else Exit.USAGE


#: How a stop is told: what happened, what to do next, and (when it ends the run early) the
#: exit code. ``limit`` and ``deadline`` are told after the run's counts.
_STOPS: dict[str, tuple[str, str]] = {
    StopReason.WINDOW: ("send window closed", "the next run inside the window resumes"),
    StopReason.AFTER_DEADLINE: (
        "outside the window, which opens again only after the job's deadline",
        "nobody left can be sent in time: widen the window or move the deadline and rerun; "
        "else the first run past the deadline records them expired",
    ),
    StopReason.SIGINT: ("stopped by SIGINT", "run the same command again to resume"),
    StopReason.SIGTERM: ("stopped by SIGTERM", "run the same command again to resume"),
    StopReason.LIMIT: ("--limit reached", "a run without --limit sends the rest"),
    StopReason.DEADLINE: ("stopped at max_job_duration_s", "run the same command again to resume"),
}


def _tell_stop(s: JobSummary) -> None:
    """Why the run stopped, what it sent, who it left (:func:`_left`) and what comes next."""
    what, then = _STOPS[s.stopped or ""]
    held = f"; {_held(s)}" if s.quiet else _left(s)
    say(
        "job.stopped",
        f"bulk-mms: {what}: {_n(s.sent_groups, 'group')} sent this run{held}; {then}",
        level="warning",
        reason=s.stopped,
        sent_groups=s.sent_groups,
        **(_held_fields(s) if s.quiet else {}),
    )


def _left(s: JobSummary) -> str:
    """Who a stop mid-run left for a later run (:attr:`RecipientCounts.later
    <bulk_mms.ledger.RecipientCounts.later>`), as its line says them: nothing when the
    ledger's counts are unknown (a stop before the run began) or nobody is left."""
    r = s.recipients
    if r is None or not r.later:
        return ""
    doubt = f" ({r.in_doubt} of them in doubt)" if r.in_doubt else ""
    return f"; {_n(r.later, 'recipient')} not sent{doubt}"


def _held_fields(s: JobSummary) -> dict[str, Any]:
    """The note's fields for the recipients held for their quiet hours (:func:`_held`)."""
    return {"held_recipients": dict(sorted(s.quiet.items())), "next_opening": s.next_opening}


def _held(s: JobSummary) -> str:
    """The recipients held for their quiet hours, by zone, and when the first of them can be
    sent (their window and the send_window open together)."""
    zones = ", ".join(f"{n} in {zone}" for zone, n in sorted(s.quiet.items()))
    when = (
        f"the first sendable at {s.next_opening:%Y-%m-%d %H:%M} UTC"
        if s.next_opening
        else "none sendable within two days"
    )
    held = _n(sum(s.quiet.values()), "recipient")
    return f"{held} held for their quiet hours ({zones}), {when}"


def _tell_quiet(s: JobSummary) -> int:
    """Quiet hours left recipients for later: say how many in which zones, and when the next
    zone's window opens."""
    say(
        "job.quiet_hours",
        f"bulk-mms: {_n(s.sent_groups, 'group')} sent this run; {_held(s)}: a run then sends them",
        level="warning",
        sent_groups=s.sent_groups,
        **_held_fields(s),
    )
    return Exit.WINDOW


def _n(count: int, unit: str) -> str:
    """``1 group``, ``3 groups``: a count with its unit."""
    return f"{count} {unit}{'' if count == 1 else 's'}"


#: The code of a stop mid-run that leaves someone unsent (:func:`_incomplete`) or held for
#: their quiet hours: the ``send_window`` closing (or, for a run outside it before it began,
#: never open), and ``max_job_duration_s`` coming. Such a stop that leaves nobody ends as a
#: run to the end of its input does (:func:`_ended`): its last rows were done already.
_STOP_LEAVING: dict[str, Exit] = {
    StopReason.WINDOW: Exit.WINDOW,
    StopReason.AFTER_DEADLINE: Exit.INCOMPLETE,
    StopReason.DEADLINE: Exit.INCOMPLETE,
}


def run_outcome(s: JobSummary) -> int:
    """Say how the run ended, and where the ledger stands; the exit code that says it."""
    if isinstance(s.error, SpamFiltered) and not _leaves_anyone(s):
        return _spam_at_the_end(s, s.error)
    if s.error is not None:
        return fail(s.error, exit_for(s.error))
    if s.stopped in SIGNAL_EXIT or (s.stopped in _STOP_LEAVING and s.recipients is None):
        _tell_stop(s)  # stopped by a signal, or outside the send window before it began
        return SIGNAL_EXIT.get(s.stopped or "") or _STOP_LEAVING[s.stopped or ""]
    _tell_summary(s)
    if s.stopped in _STOP_LEAVING and (_incomplete(s) or s.quiet):
        _tell_stop(s)  # the window closed or the time ran out with someone left
        return _STOP_LEAVING[s.stopped or ""]
    # (a window that closed, or max_job_duration_s that came, once everyone was sent: done)
    if s.stopped == StopReason.QUIET_HOURS:
        return _tell_quiet(s)
    if s.stopped == StopReason.LIMIT:
        _tell_stop(s)
    return _ended(s)


def _leaves_anyone(s: JobSummary) -> bool:
    """Whether a later run would send anyone of the run's ledger
    (:attr:`RecipientCounts.sends_more <bulk_mms.ledger.RecipientCounts.sends_more>`, or
    members waiting for a cap's reset); True when its counts are unknown."""
    r = s.recipients
    return r is None or r.sends_more or bool(s.waiting_recipients)


def _spam_at_the_end(s: JobSummary, err: SpamFiltered) -> int:
    """A burst of spam filtering met with nobody left to send (the last group's try, or the
    delivery reports after it): no rerun has anything to resume, so the code is the one of a
    run that ended (:func:`_ended`: 0 when everyone was sent), and the warning is said after
    the run's counts, before what decides a 1."""
    _tell_summary(s)
    say(
        "job.spam_filtered",
        f"bulk-mms: {err.finding} as the run ended, with nobody left to send: check the "
        "content and the sender's reputation before the next job",
        level="warning",
        job=s.job,
        sent_groups=s.sent_groups,
    )
    return _ended(s)


def _ended(s: JobSummary) -> int:
    """The code of a run that went to the end of its input or to its ``--limit``, or that
    stopped leaving nobody unsent (:data:`_STOP_LEAVING`): 1 past the deadline, or when it
    leaves a valid recipient unsent (:func:`_incomplete`); 5 (a cap,
    :class:`~bulk_mms.errors.LimitReached`) when members wait for a daily cap's reset still
    to come (a carrier's, or the account's ``daily_recipients``), whatever else is left: a
    rerun from it sends them; else 0. Groups it recorded expired are said (:func:`_tell_expired`)
    whatever the code, and the code's cause last: the members waiting, for a 5."""
    if s.expired_groups:
        _tell_expired(s)
    if s.waiting_recipients and s.stopped != StopReason.LIMIT:
        if s.expired_groups:  # said after it (else the summary's recipients line says them)
            say(
                "job.waiting",
                f"bulk-mms: {_held_by_cap(s)}",
                level="warning",
                waiting_recipients=s.waiting_recipients,
                not_before=minute_utc(s.waiting_until),
            )
        return LimitReached.exit_code
    return Exit.INCOMPLETE if _incomplete(s) else Exit.OK


def _tell_expired(s: JobSummary) -> None:
    """The line of a run that recorded groups ``expired_unsent``: the job's deadline passed
    (or comes before any retry of theirs could), and no run sends them (the cause of an exit
    1, said last, as a stop's is)."""
    named = f" ({minute_utc(s.deadline.timestamp())})" if s.deadline is not None else ""
    say(
        "job.expired",
        f"bulk-mms: past the job's deadline{named}: {_n(s.sent_groups, 'group')} sent this "
        f"run; {_n(s.expired_groups, 'group')} expired unsent, which no run sends",
        level="warning",
        sent_groups=s.sent_groups,
        expired_groups=s.expired_groups,
        deadline=minute_utc(s.deadline.timestamp()) if s.deadline is not None else None,
    )


def _opted_out(r: RecipientCounts) -> str:
    """The recipients who opted out (of the fold's failed: refused at the send as a STOP),
    said apart from the failed: not texted, and not left unsent (:func:`_incomplete`)."""
    if not r.opted_out:
        return ""
    return f"{r.opted_out} opted out (STOP: never to be texted again, not left unsent), "


def _again(s: JobSummary) -> str:
    """Of the failed groups, those a rerun sends again (their retries ran out on a transient
    error), said beside them, in the recipients' words: "failed" alone reads as for good."""
    return f" ({s.retry_later_groups} pending a rerun)" if s.retry_later_groups else ""


def _tell_summary(s: JobSummary) -> None:
    """The run's counts, the ledger's recipients, template notes and the rate, on stdout:
    what it sent, and what it did not (failed, expired, in doubt), however it ended."""
    out = sys.stdout
    expired = (
        f"{s.expired_groups} expired unsent (past the job's deadline), " if s.expired_groups else ""
    )
    say(
        "job.summary",
        f"{s.job}: sent {_n(s.sent_groups, 'group')} ({_n(s.sent_recipients, 'recipient')}); "
        f"{_n(s.failed_groups, 'group')} failed{_again(s)}, {expired}"
        f"{s.in_doubt_groups} in doubt; "
        f"{_n(s.skipped_groups, 'group')} already done, "
        f"{s.held_groups} held in doubt; {s.rows_text()}",
        stream=out,
        **s.as_log(),
    )
    if (r := s.recipients) is not None:
        say(
            "job.recipients",
            f"{s.job}: the ledger's {_n(r.valid, 'valid recipient')}: {r.sent} sent, "
            f"{r.failed - r.opted_out} failed, {_opted_out(r)}{r.retry_pending} pending a "
            f"rerun, {r.in_doubt} in doubt, "
            f"{r.not_attempted} not attempted{_waiting(s)}",
            stream=out,
            job=s.job,
            recipients=r.as_dict(),
            opted_out_recipients=r.opted_out,
        )
    if s.retired:
        say(
            "job.senders_retired",
            f"{s.job}: the API refused {_n(len(s.retired), 'sender')} ({', '.join(s.retired)}): "
            "left out of the pool for the rest of the job, their groups sent from the others; "
            "fix or remove them in the job",
            stream=out,
            job=s.job,
            senders=list(s.retired),
        )
    print_template_notes(s)
    if s.achieved_rate is not None:
        say(
            "job.rate",
            f"{s.job}: {s.achieved_rate:.2f} requests/s while sending; the API's queue wait "
            f"(wait_seconds): median {_s(s.wait_seconds_p50)}, 95th percentile "
            f"{_s(s.wait_seconds_p95)}, max {_s(s.wait_seconds_max)}; "
            f"{_n(s.rate_limited, 'rate-limit answer')} (429), {s.queue_full} of them queue full",
            stream=out,
            job=s.job,
            requests_per_s=round(s.achieved_rate, 3),
            wait_seconds_p50=s.wait_seconds_p50,
            wait_seconds_p95=s.wait_seconds_p95,
            wait_seconds_max=s.wait_seconds_max,
            rate_limited=s.rate_limited,
            queue_full=s.queue_full,
        )


def _waiting(s: JobSummary) -> str:
    """What the recipients line adds of the members waiting for a daily cap's reset (moved
    out of a sent group by a carrier's, or pending a rerun in a group a cap refused at the
    send: a carrier's, or the account's ``daily_recipients``, named so when it is among
    them): before the job's deadline, and after it (no rerun sends those before it), as the
    report says them (:func:`~bulk_mms.report.held_for_reset`)."""
    notes = []
    cap = _cap_of(s)
    if s.waiting_recipients:
        notes.append(_held_by_cap(s))
    if s.waiting_past_deadline:
        notes.append(
            f"{_n(s.waiting_past_deadline, 'recipient')} held by {cap} daily limit until "
            f"after the job's deadline; {past_deadline_words(s.deadline)}"
        )
    return f"; of those not sent, {'; '.join(notes)}" if notes else ""


def _held_by_cap(s: JobSummary) -> str:
    """The members waiting for a daily cap's reset still to come, and from when a rerun sends
    them: what a run that exits 5 for them says of them."""
    return (
        f"{_n(s.waiting_recipients, 'recipient')} held by {_cap_of(s)} daily limit: "
        f"{rerun_from(s.waiting_until, own_cap=s.waiting_own_cap)}"
    )


def _cap_of(s: JobSummary) -> str:
    """Whose daily cap holds the members waiting for a reset: a carrier's, or the account's
    (``daily_recipients``) when it is among them."""
    return "the account's or a carrier's" if s.waiting_own_cap else "a carrier's"


def _incomplete(s: JobSummary) -> bool:
    """Whether a run leaves a valid recipient unsent: failed, pending a rerun or in doubt, or
    never attempted (a group another process held and never settled, a group remade without
    a suppressed member, rows a stop came before: the scan before the first request counted
    every valid recipient). ``--limit`` aside: it says how many remain.
    A recipient who opted out (:attr:`RecipientCounts.opted_out
    <bulk_mms.ledger.RecipientCounts.opted_out>`: refused at the send as a STOP) is not left
    unsent, wherever the STOP was found: nobody may text them, as a number suppressed at
    planning."""
    if s.open_in_doubt or s.open_retry_pending or s.retry_later_groups:
        return True
    r = s.recipients
    if r is None:
        return bool(s.open_failed)
    return r.failed > r.opted_out or (s.stopped != StopReason.LIMIT and r.not_attempted > 0)


def print_dry_run(s: JobSummary, job: JobConfig, settings: Settings) -> int:
    """Say what a run would do now; under ``--log-json`` as one ``dry_run.plan`` note with
    the counts as fields."""
    with said(
        "dry_run.plan",
        job=job.name,
        groups=s.sent_groups,
        recipients=s.sent_recipients,
        rejected_rows=s.lost_rows,
        skipped_groups=s.skipped_groups,
        held_groups=s.held_groups,
        waiting_recipients=s.waiting_recipients,
        seconds=round(s.estimate.seconds, 1) if s.estimate else None,
        cost=s.estimate.cost if s.estimate else None,
    ):
        return _print_dry_run(s, job, settings)


def _window_now(job: JobConfig) -> str:
    """The job's ``send_window`` now, and the exit a run started now outside it gives (as
    the run decides it: :func:`~bulk_mms.windows.window_stop`)."""
    clock = SystemClock()
    if in_window(job, utc(clock)):
        return "open"
    stopped = window_stop(job, clock)
    if stopped == StopReason.AFTER_DEADLINE:
        return (
            "closed, and it opens again only after the job's deadline: a run now exits "
            f"{Exit.INCOMPLETE:d}"
        )
    if stopped is None:
        return (
            "closed, past the job's deadline: a run now records what is left expired, exits "
            f"{Exit.INCOMPLETE:d}"
        )
    return f"closed: a run now exits {Exit.WINDOW:d}"


def _print_dry_run(s: JobSummary, job: JobConfig, settings: Settings) -> int:
    print(f"dry run of {job.name}: nothing was sent")
    deadline = deadline_before_start(job)
    planned = f"{s.sent_groups} groups, {s.sent_recipients} recipients"
    if deadline is not None and past(deadline, SystemClock()):
        print(f"  would send   nothing: the deadline has passed ({planned} left; see deadline)")
    else:
        print(f"  would send   {planned}")
    print(f"  input        {s.rows_text()}")
    print(f"  grouping     {job.grouping}")
    if job.recipient_window is not None:
        _print_zones(s, job, job.recipient_window, deadline)
    print_template_notes(s, prefix="  templates    ")
    print(f"  already done {s.skipped_groups} groups, held in doubt {s.held_groups}")
    if s.waiting_recipients:
        print(
            f"  held         {_n(s.waiting_recipients, 'recipient')} until {_cap_of(s)} reset: "
            f"{rerun_from(s.waiting_until, own_cap=s.waiting_own_cap, run='a run')}"
        )
    e = s.estimate
    if e is not None:
        unit = "recipients" if settings.cost == "recipient" else "groups"
        print(f"  duration     at least {duration(e.seconds)} at {e.rate:g} {unit}/s")
        print(f"  cost         {e.cost_text()}")
    if job.max_cost is not None:
        print(f"  max_cost     {_fits(job.max_cost, e)}")
    if job.send_window is not None:
        print(f"  window       {job.send_window} {job.timezone}, {_window_now(job)}")
    if deadline is not None:
        print(f"  deadline     {_deadline_now(deadline)}")
    if s.locked_by is not None:
        print(
            f"  ledger       held by a run now (PID {s.locked_by}): a run now exits "
            f"{LedgerLocked.exit_code}"
        )
    if s.retired:
        gone = ", ".join(s.retired)
        left = len(job.message.senders) - len(s.retired)
        tail = f"{left} left" if left else f"none left: a run now exits {AccountRefused.exit_code}"
        print(f"  senders      refused by the API earlier in this ledger: {gone} ({tail})")
    media = ", media URLs" if job.message.media_urls else ""
    print(f"  checked      job, settings, input{media}, ledger (its job, input, grouping, lock)")
    print(
        "  not checked  the API key and the API's answers (a dry run sends nothing); "
        "try run --to YOUR_NUMBER, or --limit 1"
    )
    for g in s.preview:
        text = (g.message.text or "")[:60]
        print(f"  group {g.seq} [{g.id}] {', '.join(g.to)}: {text!r}")
    return Exit.OK


def print_template_notes(s: JobSummary, prefix: str | None = None) -> None:
    """Say which placeholders did not fit their groups, and how to fix them."""

    def groups(n: int) -> str:
        return f"{n} group{'' if n == 1 else 's'}"

    notes = [
        f"{{{name}}} differs between members in {groups(n)} (the first member's value is used)"
        for name, n in s.template_differs.most_common()
    ] + [f"{{{name}}} is empty in {groups(n)}" for name, n in s.template_empty.most_common()]
    if not notes:
        return
    hint = "[message] join = [...] lists every member's value; [message.defaults] fills empties"
    text = f"{prefix or s.job + ': templates: '}{'; '.join(notes)}. {hint}"
    if prefix is not None:  # a line of a longer text (the dry run's)
        print(text)
        return
    say(
        "job.templates",
        text,
        level="warning",
        stream=sys.stdout,
        job=s.job,
        differs=dict(s.template_differs),
        empty=dict(s.template_empty),
    )


def _s(seconds: float | None) -> str:
    """``0.4 s``, or ``-`` when the API reported none."""
    return "-" if seconds is None else f"{seconds:g} s"


def duration(seconds: float) -> str:
    """``3 h 25 min``, ``12 min 5 s``, ``40 s``."""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h} h {m} min"
    return f"{m} min {sec} s" if m else f"{sec} s"


def interactive() -> bool:
    """Whether someone is at a terminal to answer a question (cron: never)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def _print_zones(
    s: JobSummary, job: JobConfig, window: SendWindow, deadline: dt.datetime | None
) -> None:
    """Recipients per time zone, and whether each zone's window is open now or when it opens
    with the job's ``send_window`` open too (nothing is sent outside that), and whether that
    is after the job's ``deadline`` (no run sends them: a run exits 1 for them)."""
    now = utc(SystemClock())
    also = sending_window(job)
    print(f"  quiet hours  {window} in each recipient's zone")
    for key, n in sorted(s.zones.items(), key=lambda kv: -kv[1]):
        zones = tuple(key.split(", "))
        if open_for(window, zones, now, also):
            state = "open now"
        else:
            at = next_opening(window, zones, now, also)
            state = f"opens {at:%Y-%m-%d %H:%M} UTC" if at else "no overlap within two days"
            if not opens_before(window, zones, now, deadline, also):
                state += ", after the job's deadline: no run sends them"
        print(f"    {n:>8} recipients in {key}: {state}")


def _deadline_now(deadline: dt.datetime) -> str:
    """The job's deadline, and what a run started now does past it."""
    at = f"{deadline.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
    if past(deadline, SystemClock()):
        return (
            f"{at}, passed: a run now sends nothing, records what is left expired, exits "
            f"{Exit.INCOMPLETE:d}"
        )
    return f"{at}: nothing is sent after it"


def _fits(ceiling: Decimal, e: Estimate | None) -> str:
    """Whether the rest of the job fits under ``max_cost``, as a dry run can tell."""
    if e is None or e.counted is None:
        return f"{ceiling}: no price to judge by (set [pricing] per_recipient); a run needs one"
    more = e.counted.amount
    stops = f"does NOT fit: a run stops at it (exit {LimitReached.exit_code})"
    verdict = "fits" if e.paid + more <= ceiling else stops
    return f"{ceiling} {e.counted.currency}: {e.paid} paid + about {more:.4f} more {verdict}"


def confirm(plan: JobSummary, job: JobConfig) -> bool:
    """Show what the run would send and ask; True only for a yes."""
    e = plan.estimate
    cost_time = f", {e.cost_text()}, at least {duration(e.seconds)}" if e else ""
    say(
        "run.confirm",
        f"{job.name}: about to send {_n(plan.sent_groups, 'group')} "
        f"({_n(plan.sent_recipients, 'recipient')}){cost_time}; grouping: {job.grouping}",
        job=job.name,
        groups=plan.sent_groups,
        recipients=plan.sent_recipients,
    )
    if _json:
        say("run.question", "Send now? [y/N]", job=job.name)
    else:
        print("Send now? [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, KeyboardInterrupt):
        return False
    return answer.strip().lower() in ("y", "yes")
