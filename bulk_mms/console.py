"""What the CLI says to a person: a run's outcome and its exit code, a dry run, a question.

Every code comes from one table: :class:`~bulk_mms.errors.Exit`, and an error's own
``exit_code`` (drawn with the error tree in :mod:`bulk_mms.errors`).
"""

from __future__ import annotations

import sys
from decimal import Decimal

from bulk_mms.clock import SystemClock, utc
from bulk_mms.config import JobConfig, SendWindow, Settings
from bulk_mms.errors import BulkMmsError, Exit
from bulk_mms.prepare import in_window
from bulk_mms.quiet import next_opening, open_for
from bulk_mms.summary import Estimate, JobSummary

#: The code a stop by a signal exits with.
SIGNAL_EXIT = {"SIGINT": Exit.SIGINT, "SIGTERM": Exit.SIGTERM}


def fail(exc: BaseException, code: int) -> int:
    """Say what stopped the command, in one line, and give its code."""
    print(f"bulk-mms: error: {exc}", file=sys.stderr)
    return code


def exit_for(exc: BaseException) -> int:
    """The exit code of an error that stopped the work: its class's own (see errors.py)."""
    return exc.exit_code if isinstance(exc, BulkMmsError) else Exit.USAGE


#: How a stop is told: what happened, what to do next, and (when it ends the run early) the
#: exit code. ``limit`` and ``deadline`` are told after the run's counts.
_STOPS: dict[str, tuple[str, str]] = {
    "window": ("send window closed", "the next run inside the window resumes"),
    "SIGINT": ("stopped by SIGINT", "run the same command again to resume"),
    "SIGTERM": ("stopped by SIGTERM", "run the same command again to resume"),
    "limit": ("--limit reached", "a run without --limit sends the rest"),
    "deadline": ("stopped at max_job_duration_s", "run the same command again to resume"),
}


def _tell_stop(s: JobSummary) -> None:
    what, then = _STOPS[s.stopped or ""]
    print(f"bulk-mms: {what}: {s.sent_groups} groups sent this run; {then}", file=sys.stderr)


def _tell_quiet(s: JobSummary) -> int:
    """Quiet hours left recipients for later: say which zones and when the next one opens."""
    waiting = ", ".join(f"{n} in {zone}" for zone, n in sorted(s.quiet.items()))
    when = f"{s.next_opening:%Y-%m-%d %H:%M} UTC" if s.next_opening else "not within two days"
    print(
        f"bulk-mms: {s.sent_groups} groups sent this run; recipients' quiet hours: {waiting} "
        f"wait for their window; the next opens {when}: a run then sends them",
        file=sys.stderr,
    )
    return Exit.WINDOW


def run_outcome(s: JobSummary) -> int:
    """Say how the run ended, and where the ledger stands; the exit code that says it."""
    if s.error is not None:
        return fail(s.error, exit_for(s.error))
    if s.stopped in ("window", *SIGNAL_EXIT):
        _tell_stop(s)
        return SIGNAL_EXIT.get(s.stopped or "", Exit.WINDOW)
    if s.stopped == "quiet_hours":
        return _tell_quiet(s)
    print(
        f"{s.job}: sent {s.sent_groups} groups ({s.sent_recipients} recipients), "
        f"failed {s.failed_groups}, in doubt {s.in_doubt_groups}, "
        f"already done {s.skipped_groups}, held in doubt {s.held_groups}; {s.rows_text()}"
    )
    if (r := s.recipients) is not None:
        print(
            f"{s.job}: the ledger's {r.valid} valid recipients: sent {r.sent}, failed {r.failed}, "
            f"pending a rerun {r.retry_pending}, in doubt {r.in_doubt}, "
            f"not attempted {r.not_attempted}"
        )
    print_template_notes(s)
    if s.achieved_rate is not None:
        print(
            f"{s.job}: {s.achieved_rate:.2f} requests/s; wait_seconds p50 {s.wait_seconds_p50} "
            f"p95 {s.wait_seconds_p95} max {s.wait_seconds_max}; 429s {s.rate_limited} "
            f"(queue full {s.queue_full})"
        )
    if s.stopped in ("limit", "deadline"):
        _tell_stop(s)
    if s.stopped == "deadline":
        return Exit.INCOMPLETE
    incomplete = s.open_failed or s.open_in_doubt or s.open_retry_pending or s.retry_later_groups
    return Exit.INCOMPLETE if incomplete else Exit.OK


def print_dry_run(s: JobSummary, job: JobConfig, settings: Settings) -> int:
    print(f"dry run of {job.name}: nothing was sent")
    print(f"  would send   {s.sent_groups} groups, {s.sent_recipients} recipients")
    print(f"  input        {s.rows_text()}")
    print(f"  grouping     {job.grouping}")
    if job.recipient_window is not None:
        _print_zones(s, job.recipient_window)
    print_template_notes(s, prefix="  templates    ")
    print(f"  already done {s.skipped_groups} groups, held in doubt {s.held_groups}")
    e = s.estimate
    if e is not None:
        unit = "recipients" if settings.cost == "recipient" else "groups"
        print(f"  duration     at least {duration(e.seconds)} at {e.rate:g} {unit}/s")
        print(f"  cost         {e.cost_text()}")
    if job.max_cost is not None:
        print(f"  max_cost     {_fits(job.max_cost, e)}")
    if job.send_window is not None:
        now = "open" if in_window(job, utc(SystemClock())) else "closed: a run now exits 4"
        print(f"  window       {job.send_window} {job.timezone}, {now}")
    if s.locked_by is not None:
        print(f"  ledger       held by a run now (PID {s.locked_by}): a run now exits 75")
    if s.retired:
        gone = ", ".join(s.retired)
        left = len(job.message.senders) - len(s.retired)
        tail = f"{left} left" if left else "none left: a run now exits 6"
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
    print(f"{prefix or s.job + ': templates: '}{'; '.join(notes)}. {hint}")


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


def _print_zones(s: JobSummary, window: SendWindow) -> None:
    """Recipients per time zone, and whether each zone's window is open now or when it opens."""
    now = utc(SystemClock())
    print(f"  quiet hours  {window} in each recipient's zone")
    for key, n in sorted(s.zones.items(), key=lambda kv: -kv[1]):
        zones = tuple(key.split(", "))
        if open_for(window, zones, now):
            state = "open now"
        else:
            at = next_opening(window, zones, now)
            state = f"opens {at:%Y-%m-%d %H:%M} UTC" if at else "no overlap within two days"
        print(f"    {n:>8} in {key}: {state}")


def _fits(ceiling: Decimal, e: Estimate | None) -> str:
    """Whether the rest of the job fits under ``max_cost``, as a dry run can tell."""
    if e is None or e.cost is None:
        return f"{ceiling}: no price to judge by (set [pricing] per_recipient); a run needs one"
    total = e.paid + e.cost.amount
    verdict = "fits" if total <= ceiling else "does NOT fit: a run stops at it (exit 5)"
    return f"{ceiling} {e.cost.currency}: {e.paid} paid + about {e.cost.amount:.4f} more {verdict}"


def confirm(plan: JobSummary, job: JobConfig) -> bool:
    """Show what the run would send and ask; True only for a yes."""
    e = plan.estimate
    cost_time = f", {e.cost_text()}, at least {duration(e.seconds)}" if e else ""
    print(
        f"{job.name}: about to send {plan.sent_groups} groups ({plan.sent_recipients} "
        f"recipients){cost_time}; grouping: {job.grouping}",
        file=sys.stderr,
    )
    print("Send now? [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, KeyboardInterrupt):
        return False
    return answer.strip().lower() in ("y", "yes")
