"""Summaries read back from a ledger: what ``bulk-mms report`` (and ``status``) prints.

The numbers come from the one fold, :class:`~bulk_mms.ledger.LedgerView`, the same a run and its
resume act on: every valid recipient in exactly one state (sent, failed, retry pending, in
doubt, not attempted), every input row once (valid, rejected: a loss, or left out on purpose:
:class:`~bulk_mms.ledger.InputRows`), delivery statuses as ``track`` and ``webhooks`` ordered
them, costs per currency, waits and error codes. Every error or reason is said in words
(:mod:`bulk_mms.words`) where a person reads it. The lists of people a report writes beside it
(``--failed-csv``, ``--rejected-csv``, ``--recipients-csv``): :mod:`bulk_mms.recipient_lists`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from bulk_mms.clock import Clock, SystemClock
from bulk_mms.csvfile import safe_cell
from bulk_mms.delivery import FINAL, NOT_RECEIVED, UNCONFIRMED
from bulk_mms.errors import InputError, LedgerError
from bulk_mms.gates import before
from bulk_mms.ledger import (
    STATES,
    Header,
    InputRows,
    LedgerView,
    Location,
    RecipientCounts,
    display,
    load,
)
from bulk_mms.ledger.fold import (
    FAILED,
    IN_DOUBT,
    NOT_ATTEMPTED,
    RETRY_PENDING,
    SENT,
    Miss,
    Missed,
    action_of,
)
from bulk_mms.reader import fingerprint, short_digest
from bulk_mms.summary import minute_utc, percentile, rerun_from
from bulk_mms.words import MAX_COST, OPEN, OWN_CAP, count, error_words, escaped, why_code, why_words

#: Why a ledger without a job header cannot be summed up.
NO_HEADER = "is empty: no job header, so not a bulk-mms ledger (or nothing was ever written to it)"


class Waiting(msgspec.Struct, frozen=True):
    """A member waiting to go again: moved out of a sent group (:func:`waiting`), or in a
    group a carrier's cap refused at the send (:func:`capped`); the group, the code that
    held it, and not before when a rerun sends it (0: at once)."""

    group: str
    code: str
    after: float


class ResetHolds(msgspec.Struct, frozen=True):
    """Members held until a reset (:func:`waiting`, :func:`capped`), and which of them no
    rerun of the job sends before its deadline: made by :func:`held_for_reset`, the one
    reckoning of it, and read as it is by the run's summary and the report (text, JSON,
    HTML), so they say the same."""

    #: Every member held, by number, in ledger order.
    held: dict[str, Waiting] = {}
    #: Of :attr:`held`, those no rerun of the job sends before its deadline: their reset
    #: comes at or after it (or the deadline has passed).
    past_deadline: dict[str, Waiting] = {}

    @property
    def in_time(self) -> dict[str, Waiting]:
        """Of :attr:`held`, those a rerun sends before the deadline: from their reset
        (``after``), or at once."""
        return {p: w for p, w in self.held.items() if p not in self.past_deadline}

    @property
    def until(self) -> float:
        """When the last of :attr:`in_time` may be sent (0: none waits for a reset)."""
        return max((w.after for w in self.in_time.values()), default=0.0)

    @property
    def own_cap(self) -> bool:
        """Whether the account's own cap (``daily_recipients``, :data:`~bulk_mms.words.
        OWN_CAP`) holds some of :attr:`held`, not only a carrier's."""
        return any(w.code == OWN_CAP for w in self.held.values())


def held_for_reset(
    waits: Mapping[str, Waiting], now: float, deadline: dt.datetime | None
) -> ResetHolds:
    """Split the members waiting to go again by whether a rerun can still send them before
    the job's ``deadline`` (None: there is none, or none is known): the earliest a rerun sends
    one is its reset or ``now``, whichever is later (:func:`~bulk_mms.gates.before`). The
    one reckoning of it, for the run's summary and for the report, so they say the same.

    Args:
        waits: the members waiting (:func:`waiting`, or :func:`capped`), by number.
        now: the wall clock, seconds since the epoch.
        deadline: the job's (:func:`~bulk_mms.gates.job_deadline`; in a report, the latest
            run's, :attr:`~bulk_mms.ledger.LedgerView.deadline_at`).
    """
    late = {p: w for p, w in waits.items() if not before(deadline, max(w.after, now))}
    return ResetHolds(dict(waits), late)


def past_deadline_words(deadline: dt.datetime | None) -> str:
    """What the run and the report say of members no rerun sends before the job's
    ``deadline`` (:attr:`ResetHolds.past_deadline`), and what to do."""
    named = f" ({minute_utc(deadline.timestamp())})" if deadline is not None else ""
    return (
        f"no rerun of this job before its deadline{named} sends them: move the deadline "
        "later, or send them in a new job"
    )


class LedgerSummary(msgspec.Struct):
    """The state of a job as its ledger records it, each group and recipient counted once."""

    job: str | None = None
    input: str | None = None
    runs: int = 0
    #: Groups by state (``sent``, ``failed``, ``retry_pending``, ``in_doubt``).
    groups: Counter[str] = msgspec.field(default_factory=Counter)
    #: Every valid recipient in exactly one state.
    recipient_states: RecipientCounts = msgspec.field(
        default_factory=lambda: RecipientCounts(0, 0, 0, 0, 0, 0, input_read=False)
    )
    #: Every input row the ledger accounts for: valid, rejected (losses, by reason) or left
    #: out on purpose (duplicates, suppressed, excluded), adding up to the input's rows.
    rows: InputRows = msgspec.field(
        default_factory=lambda: InputRows(0, {}, 0, 0, 0, input_read=False)
    )
    cost: dict[str, Decimal] = msgspec.field(default_factory=dict)
    #: The cost per currency as (final, estimated): final where a status report carried a
    #: recipient's final cost, the send's estimate otherwise (:meth:`LedgerView.cost_parts`).
    cost_parts: dict[str, tuple[Decimal, Decimal]] = msgspec.field(default_factory=dict)
    attempts: int = 0
    wait_seconds: list[float] = msgspec.field(default_factory=list)
    #: Failed events by their code (each time a group's tries ended on an error, every run).
    error_codes: Counter[str] = msgspec.field(default_factory=Counter)
    #: What the error policy did about each code of :attr:`error_codes` (the actions its
    #: ``failed`` events recorded: :attr:`LedgerView.error_actions
    #: <bulk_mms.ledger.LedgerView.error_actions>`), for the codes it had an action for.
    error_actions: dict[str, set[str]] = msgspec.field(default_factory=dict)
    #: The groups not sent (failed, retry pending, in doubt), by state and why in words
    #: (:func:`~bulk_mms.words.why_words`): (groups, recipients).
    unsent: dict[tuple[str, str], tuple[int, int]] = msgspec.field(default_factory=dict)
    first_time: str | None = None
    last_time: str | None = None
    #: 429 answers over all groups, and seconds spent sending (first attempt to last outcome,
    #: run by run, so the gaps between reruns do not count).
    rate_limited: int = 0
    sending_seconds: float = 0.0
    sent_events: int = 0
    #: Recipients of sent groups by their latest delivery status (``queued`` until tracked).
    delivery: Counter[str] = msgspec.field(default_factory=Counter)
    #: Recipients who did not get the message and no rerun will send, with why and what kind
    #: of miss (:class:`~bulk_mms.ledger.fold.Missed`): groups failed for good, and
    #: delivery_failed / sending_failed / expired. In ledger order.
    undelivered: list[tuple[str, Missed]] = msgspec.field(default_factory=list)
    #: Of :attr:`undelivered`, those a delivery report failed, by the code it carried
    #: (carriers' codes arrive there, never in the send's answer), and what the error policy
    #: did about each code (:func:`~bulk_mms.ledger.fold.action_of`), for the codes it had an
    #: action for.
    delivery_codes: Counter[str] = msgspec.field(default_factory=Counter)
    delivery_actions: dict[str, set[str]] = msgspec.field(default_factory=dict)
    #: The ledger header's phone column (the failed-recipients file uses the same name).
    phone_column: str = "phone"
    fingerprint: str | None = None
    #: The ledger's campaign (its identity; None for a format-1 ledger).
    campaign: str | None = None
    #: The ledger itself, and the input columns its outcome events record rows in (none in a
    #: ledger written before rows were recorded).
    ledger: Location | None = None
    columns: tuple[str, ...] = ()
    #: The input's encoding as the job read it (None: a ledger begun before it was kept).
    encoding: str | None = None
    #: What separated the input's columns as the job read it (``","`` for a ledger begun
    #: before it was kept): the failed-recipients file is written with it.
    delimiter: str = ","
    #: Members a delivery report moved out of a sent group (a carrier's limit, a sender
    #: blocked) whose new group no run has tried yet: counted ``not_attempted``, and named
    #: here, each with the code that moved them and when a rerun may send them (wall-clock
    #: seconds; 0: at once) (:func:`waiting`), and which of them no rerun of the job sends
    #: before its :attr:`deadline` (:func:`held_for_reset`), as that run's summary counted
    #: them.
    waiting: ResetHolds = msgspec.field(default_factory=ResetHolds)
    #: Members a delivery report moved out of a sent group that no group has sent since
    #: (:func:`moved_unsent`): :attr:`waiting`'s, and those whose new group is in doubt,
    #: pending a rerun or failed. :attr:`delivery` counts them under the status that moved
    #: them.
    moved_unsent: int = 0
    #: Members a delivery report said a group's message reached after they were moved out
    #: of it, whom a later group was sent to as well: texted twice
    #: (:meth:`~bulk_mms.ledger.LedgerView.texted_twice`). :attr:`delivery` counts each once,
    #: by its later send.
    texted_twice: int = 0
    #: The job's deadline as the ledger's latest run had it (None: it had none, or the
    #: ledger was written before runs recorded it).
    deadline: dt.datetime | None = None
    #: Whether that deadline had passed as the ledger was summed up: then no rerun of the job
    #: sends anyone left (the first run past it records them ``expired_unsent``).
    deadline_passed: bool = False
    #: Members of groups pending a rerun whose cap (a carrier's 40016 refused at the send, or
    #: the account's ``daily_recipients`` before it left) has not lifted yet, each with when
    #: it does (:func:`capped`), and which of them no rerun of the job sends before its
    #: deadline (:func:`held_for_reset`), as the run that met the cap said
    #: (:class:`~bulk_mms.errors.ResetAfterDeadline`).
    capped: ResetHolds = msgspec.field(default_factory=ResetHolds)
    #: Whether a group pending a rerun was refused by the job's ``max_cost``
    #: (:class:`~bulk_mms.errors.MaxCostReached`): no rerun sends it, nor those not
    #: attempted, until ``max_cost`` is raised.
    max_cost_reached: bool = False
    #: When a rerun has recipients left to send (:attr:`~bulk_mms.ledger.RecipientCounts.
    #: rerun_sends`) but the file at the ledger's input path is not the one it was begun on:
    #: what becomes of a rerun, in words (:func:`_input_changed`: refused, or a new ledger);
    #: no rerun sends them. None otherwise, and when the file is not here to compare.
    input_changed: str | None = None
    #: Set by :func:`~bulk_mms.recipient_lists.left_to_resend`: the recipients --failed-csv
    #: leaves out because an earlier resend of this campaign's failed file took them
    #: (:func:`~bulk_mms.recipient_lists.resent`), each with that resend's ledger.
    resent: dict[str, str] = msgspec.field(default_factory=dict)
    #: Set by :func:`~bulk_mms.recipient_lists.left_to_resend`: how many recipients it leaves
    #: out because the job's deadline left their groups unsent
    #: (:attr:`~bulk_mms.ledger.fold.Miss.EXPIRED`).
    expired_left_out: int = 0
    #: Set by :func:`~bulk_mms.recipient_lists.left_to_resend`: how many recipients it leaves
    #: out because they opted out (40300, at the send or in a delivery report): nobody is to
    #: text them again.
    opted_out_left_out: int = 0

    @property
    def misses(self) -> Counter[Miss]:
        """How many of :attr:`undelivered` are of each kind of miss."""
        return Counter(m.kind for _, m in self.undelivered)

    @property
    def rejected_rows(self) -> int:
        """Rows rejected: losses (a bad number, a broken row)."""
        return self.rows.lost

    @property
    def rejected_reasons(self) -> Counter[str]:
        """Rows rejected, by reason."""
        return Counter(self.rows.rejected)

    @property
    def duplicate_rows(self) -> int:
        """Rows whose number appears earlier in the input (the latest run's count)."""
        return self.rows.duplicates

    @property
    def sent_groups(self) -> int:
        return self.groups[SENT]

    @property
    def sent_recipients(self) -> int:
        return self.recipient_states.sent

    @property
    def failed_groups(self) -> int:
        return self.groups[FAILED]

    @property
    def failed_recipients(self) -> int:
        return self.recipient_states.failed

    @property
    def in_doubt_groups(self) -> int:
        return self.groups[IN_DOUBT]

    @property
    def in_doubt_recipients(self) -> int:
        return self.recipient_states.in_doubt

    @property
    def retry_pending_groups(self) -> int:
        return self.groups[RETRY_PENDING]

    @property
    def not_sent_yet(self) -> int:
        """Recipients not attempted that wait for nothing (:attr:`waiting` apart): a plain
        rerun sends them; the ledger counts them, it does not name them."""
        return self.recipient_states.not_attempted - len(self.waiting.held)

    @property
    def achieved_rate(self) -> float | None:
        """Groups sent per second of sending."""
        if self.sending_seconds <= 0:
            return None
        return self.sent_events / self.sending_seconds

    @property
    def total_cost(self) -> Decimal | None:
        """The cost when it is all in one currency (the usual case), else None."""
        if not self.cost:
            return Decimal(0)
        return next(iter(self.cost.values())) if len(self.cost) == 1 else None

    def as_dict(self) -> dict[str, Any]:
        waits = sorted(self.wait_seconds)
        total = self.total_cost
        r = self.recipient_states
        return {
            "job": self.job,
            "input": self.input,
            "runs": self.runs,
            "recipients": r.as_dict(),
            "input_read": r.input_read,
            "groups": {state: self.groups[state] for state in STATES[:-1]},
            "sent_groups": self.sent_groups,
            "sent_recipients": r.sent,
            "failed_groups": self.failed_groups,
            "failed_recipients": r.failed,
            "opted_out_recipients": r.opted_out,
            "retry_pending_groups": self.retry_pending_groups,
            "retry_pending_recipients": r.retry_pending,
            "retry_pending_not_before": minute_utc(self.capped.until),
            "retry_pending_past_deadline": len(self.capped.past_deadline),
            "max_cost_reached": self.max_cost_reached,
            "input_changed": self.input_changed is not None,
            "in_doubt_groups": self.in_doubt_groups,
            "in_doubt_recipients": r.in_doubt,
            "input_rows": self.rows.rows,
            "rejected_rows": self.rejected_rows,
            "duplicate_rows": self.duplicate_rows,
            "suppressed_rows": self.rows.suppressed,
            "excluded_rows": self.rows.excluded,
            "delivery": dict(self.delivery.most_common()),
            "delivery_pending": sum(n for k, n in self.delivery.items() if k not in FINAL),
            "delivery_unconfirmed": sum(n for k, n in self.delivery.items() if k in UNCONFIRMED),
            "undelivered_recipients": len(self.undelivered),
            "texted_twice_recipients": self.texted_twice,
            "waiting_recipients": len(self.waiting.in_time),
            "waiting_not_before": minute_utc(self.waiting.until),
            "waiting_past_deadline": len(self.waiting.past_deadline),
            "deadline": minute_utc(self.deadline.timestamp()) if self.deadline else None,
            "deadline_passed": self.deadline_passed,
            "cost": str(total) if total is not None else None,
            "currency": next(iter(self.cost), "USD") if len(self.cost) <= 1 else None,
            "cost_by_currency": {k: str(v) for k, v in sorted(self.cost.items())},
            "cost_final": {k: str(f) for k, (f, _) in sorted(self.cost_parts.items())},
            "cost_estimated": {k: str(e) for k, (_, e) in sorted(self.cost_parts.items())},
            "attempts": self.attempts,
            "achieved_rate": round(a, 3) if (a := self.achieved_rate) is not None else None,
            "rate_limited": self.rate_limited,
            "wait_seconds_p50": percentile(waits, 0.50),
            "wait_seconds_p95": percentile(waits, 0.95),
            "wait_seconds_max": waits[-1] if waits else None,
            "error_codes": dict(self.error_codes.most_common()),
            "delivery_error_codes": dict(self.delivery_codes.most_common()),
            "rejected_rows_by_reason": dict(self.rejected_reasons.most_common()),
            "first_event": self.first_time,
            "last_event": self.last_time,
        }


def summarize(location: Location, *, clock: Clock | None = None) -> LedgerSummary:
    """Read a whole ledger once (one fold, :class:`~bulk_mms.ledger.LedgerView`) and sum it up.

    Args:
        location: the ledger.
        clock: now, by its wall time (whether a rerun can still send a member waiting for a
            reset before the deadline); the system's by default.

    Raises:
        LedgerError: it is missing, unreadable or corrupt, or has no job header (an empty
            file, or not a ledger): nothing to sum up.
    """
    view = load(location)
    if view.header is None:
        raise LedgerError(display(location), NO_HEADER)
    s = LedgerSummary(ledger=location)
    if (h := view.header) is not None:
        s.job, s.input, s.phone_column = h.job, h.input, h.phone_column
        s.fingerprint, s.campaign, s.columns = h.fingerprint, h.campaign, h.columns
        s.encoding, s.delimiter = h.encoding, h.delimiter
    s.runs, s.attempts, s.rate_limited = view.runs, view.attempts, view.rate_limited
    s.first_time, s.last_time = view.first_time, view.last_time
    s.sending_seconds, s.sent_events = view.sending_seconds, view.sent_events
    s.wait_seconds = view.waits
    s.error_codes, s.error_actions = view.error_codes, view.error_actions
    s.cost_parts = view.cost_parts()
    s.cost = {cur: final + est for cur, (final, est) in s.cost_parts.items()}
    s.recipient_states = view.recipients()
    s.rows = view.input_rows(s.recipient_states)
    s.groups = Counter(st for rec in view.groups.values() if (st := rec.state) is not None)
    s.delivery = view.delivery()
    s.undelivered = list(view.not_received().items())
    s.delivery_codes, s.delivery_actions = _delivery_codes(view, s.undelivered)
    s.deadline = view.deadline_at
    now = (clock or SystemClock()).wall()
    s.deadline_passed = not before(s.deadline, now)
    s.waiting = held_for_reset(waiting(view), now, s.deadline)
    s.moved_unsent = len(moved_unsent(view))
    s.texted_twice = len(view.texted_twice())
    s.capped = held_for_reset(capped(view, now), now, s.deadline)
    s.max_cost_reached = any(
        rec.state == RETRY_PENDING and why_code(rec.why) == MAX_COST for rec in view.groups.values()
    )
    if s.recipient_states.rerun_sends:  # else no rerun to refuse
        s.input_changed = _input_changed(h, display(location))
    s.unsent = _unsent(view, _reset_words(s))
    return s


def _input_changed(header: Header, ledger: str) -> str | None:
    """What becomes of a rerun of the ledger (at ``ledger``) when the file it was begun on
    (the header's ``input``: the report has the ledger, not the job file, and names the
    file it compared) is no longer that file, or None: the same file, or none there (the
    report may run where the input is not; the run says what is wrong). A plain run
    resuming it is refused, in that run's words
    (:meth:`~bulk_mms.ledger.Header.input_changed`); a ``run --input`` ledger (named after
    its file's :func:`~bulk_mms.reader.short_digest`) is resumed by no run: the same
    command with the file as it is now begins a ledger of its own."""
    source = Path(header.input) if header.input else None
    if source is None or not source.is_file():
        return None
    try:
        now = fingerprint(source)  # the whole file: only when a rerun would be suggested
    except (InputError, OSError):
        return None
    if (changed := header.input_changed(now, ledger)) is None:
        return None
    if header.fingerprint and header.job.endswith(f"-{short_digest(header.fingerprint)}"):
        return (
            f"no rerun resumes this ledger: its input file ({escaped(str(source))}) changed since "
            "it was started, and a run with --input of it now begins a ledger of its own; to send "
            f"the new one, add --exclude-sent {ledger} to that run"
        )
    return f"a rerun is refused: {changed}"


def _delivery_codes(
    view: LedgerView, undelivered: list[tuple[str, Missed]]
) -> tuple[Counter[str], dict[str, set[str]]]:
    """The codes the latest delivery reports of the ``undelivered`` carried, each recipient
    once, and what the error policy did about each (:attr:`LedgerSummary.delivery_codes`)."""
    codes: Counter[str] = Counter()
    actions: dict[str, set[str]] = {}
    known = view.known
    for phone, _ in undelivered:
        k = known.get(phone)
        if k is None or not k.code or k.status not in NOT_RECEIVED:
            continue  # its group failed at the send, or its report named no code
        codes[k.code] += 1
        if (action := action_of(k.action, k.code)) is not None:
            actions.setdefault(k.code, set()).add(str(action))
    return codes, actions


def moved_unsent(view: LedgerView) -> set[str]:
    """The members a delivery report moved out of a sent group that no group has sent since:
    not attempted yet (:func:`waiting`), or their new group in doubt, pending a rerun or
    failed. The delivery counts still count each under the status that moved it."""
    moved = [rec for rec in view.groups.values() if rec.moved and rec.state == SENT]
    if not moved:
        return set()
    sent = {p for rec in view.sent_groups() for p in rec.counted}
    return {p for rec in moved for p in rec.moved if p not in sent}


def waiting(view: LedgerView) -> dict[str, Waiting]:
    """The members a delivery report moved out of a sent group (their sender blocked, or a
    carrier's limit until its reset: :class:`~bulk_mms.ledger.events.Moved`) whose new group
    no run has tried yet: the fold counts them not attempted, and only the ledger's ``moved``
    lines name them. A member moved again out of its new group takes that group's."""
    moved = [rec for rec in view.groups.values() if rec.moved and rec.state == SENT]
    if not moved:
        return {}  # the usual ledger: nobody waits, and no recipient's status is looked at
    tried = {p for rec in view.groups.values() if rec.state is not None for p in rec.counted}
    known = view.known
    out: dict[str, Waiting] = {}
    for rec in moved:
        for phone in rec.moved:
            if phone not in tried:
                k = known.get(phone)
                out[phone] = Waiting(
                    rec.id, (k.code or "") if k is not None else "", rec.moved_after
                )
    return out


def capped(view: LedgerView, now: float) -> dict[str, Waiting]:
    """The members of groups pending a rerun that a cap refused at the send (a carrier's, or
    the account's daily one) and that it still holds at ``now``
    (:attr:`~bulk_mms.ledger.GroupRecord.resets`, the reset the run that met it worked out),
    each with the code and when a run may send them."""
    return {
        phone: Waiting(rec.id, why_code(rec.why), rec.resets)
        for rec in view.groups.values()
        if rec.capped_until > now
        for phone in rec.counted
    }


def _reset_words(s: LedgerSummary) -> dict[str, str]:
    """What the table adds to the why of each group pending a rerun that a cap holds (a
    carrier's, or the account's daily one: :attr:`LedgerSummary.capped`), by its id: from
    when a rerun sends it, or that no rerun before the job's deadline does."""
    if s.input_changed is not None:
        return {}  # no rerun sends them: the retry-pending row says why
    late = {w.group for w in s.capped.past_deadline.values()}
    return {
        w.group: f"; {past_deadline_words(s.deadline)}"
        if w.group in late
        else f"; {rerun_from(w.after, own_cap=w.code == OWN_CAP)}"
        for w in s.capped.held.values()
    }


def rerun_words(s: LedgerSummary) -> str:
    """When a rerun sends the recipients pending a rerun or not attempted that wait for no
    reset of their own: at once; but while a cap that refused a group at the send holds (a
    carrier's, or the account's daily one: :attr:`LedgerSummary.capped`; the run that met
    it stopped there, exit 5, and left them), from its reset, or, when that comes at or
    after the job's deadline, no rerun of the job before it (:func:`past_deadline_words`,
    as that run said); once the latest run's deadline has passed
    (:attr:`LedgerSummary.deadline_passed`), none: a run then records them expired. Once
    the job's ``max_cost`` refused a group (:attr:`LedgerSummary.max_cost_reached`), only a
    rerun with it raised. None of it when the input file changed since the ledger was begun
    (:attr:`LedgerSummary.input_changed`): a rerun is refused, and this says what to do."""
    if s.input_changed is not None:
        return s.input_changed
    if s.deadline_passed or s.capped.past_deadline:
        return past_deadline_words(s.deadline)
    raised = " with max_cost raised" if s.max_cost_reached else ""
    if s.capped.held:
        return rerun_from(s.capped.until, own_cap=s.capped.own_cap, provided=raised)
    return f"a rerun{raised} sends them" if raised else "a plain rerun sends them"


def _retry_note(s: LedgerSummary) -> str:
    """The retry-pending row's note: a rerun sends them (:func:`rerun_words`), but those a
    cap holds (:attr:`LedgerSummary.capped`: "a carrier's", or "a cap's" when the account's
    own is among them) only from its reset, or, past the job's deadline, none."""
    waits = _waits(s.capped, f"wait for {'a cap' if s.capped.own_cap else 'a carrier'}'s reset")
    if not waits:
        return f"  ({rerun_words(s)})"
    rest = s.recipient_states.retry_pending - len(s.capped.held)
    return f"  ({', '.join(waits)}: see below{f'; the rest: {rerun_words(s)}' * bool(rest)})"


def _waiting_note(s: LedgerSummary) -> str:
    """The not-attempted row's note when some of them wait to go again (:func:`waiting`):
    those a rerun sends before the job's deadline apart from those it does not."""
    others = s.not_sent_yet
    rest = f"; {others} {not_sent_yet_words(s)}" if others else ""
    return f"  ({', '.join(_waits(s.waiting, 'wait to go again'))}: see below{rest})"


def _waits(holds: ResetHolds, what: str) -> list[str]:
    """How many of ``holds`` ``what`` (a rerun sends them before the job's deadline), and
    how many wait past the deadline: each when there are any."""
    in_time, late = len(holds.in_time), len(holds.past_deadline)
    return [
        *([f"{in_time} {what}"] * bool(in_time)),
        *([f"{late} wait past the job's deadline"] * bool(late)),
    ]


def not_sent_yet_words(s: LedgerSummary) -> str:
    """Why the recipients not attempted that wait for no reset of their own are not sent, and
    when a rerun sends them (:func:`rerun_words`)."""
    return f"not sent yet: {rerun_words(s)}"


def not_attempted_reasons(s: LedgerSummary) -> list[tuple[int, str]]:
    """Why the recipients not attempted are not sent, in words, with how many each: those
    waiting to go again by the code that moved them (and from when), then the rest."""
    out = _waiting_reasons(s)
    if (rest := s.not_sent_yet) > 0:
        out.append((rest, not_sent_yet_words(s)))
    return out


def _waiting_reasons(s: LedgerSummary) -> list[tuple[int, str]]:
    """The members waiting to go again (:func:`waiting`), by the code that moved them and
    whether a rerun sends them before the job's deadline (:attr:`ResetHolds.past_deadline`),
    most first: how many, and why in words (from when a rerun sends them, or that none
    before the deadline does)."""
    by_code: dict[tuple[str, bool], list[Waiting]] = {}
    for phone, w in s.waiting.held.items():
        by_code.setdefault((w.code, phone in s.waiting.past_deadline), []).append(w)
    out = []
    for (code, late), ws in sorted(by_code.items(), key=lambda kv: -len(kv[1])):
        after = max(w.after for w in ws)
        if s.input_changed is not None:
            when = f"; {rerun_words(s)}"
        elif late:
            when = f"; {past_deadline_words(s.deadline)}"
        elif after:
            when = f"; {rerun_from(after)}"
        else:
            when = "; a plain rerun sends them"
        what = error_words(code) if code else "moved out of a sent group"
        out.append((len(ws), f"{what}: moved out of their sent group{when}"))
    return out


def _waiting_lines(s: LedgerSummary) -> list[str]:
    """The table's lines for the members waiting to go again, by the code that moved them."""
    return [
        f"  {_LABELS[NOT_ATTEMPTED]:14}{count(n, 'recipient')}: {why}"
        for n, why in _waiting_reasons(s)
    ]


def _unsent(view: LedgerView, resets: Mapping[str, str]) -> dict[tuple[str, str], tuple[int, int]]:
    """The groups not sent, by (state, why in words, with what ``resets`` adds to a group's:
    :func:`_reset_words`): how many groups, how many recipients."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    words: dict[str, str] = {}  # a few whys among many groups: each said once
    for rec in view.groups.values():
        state = rec.state
        if state is None or state == SENT:
            continue
        why = rec.why or OPEN
        said = words.get(why)
        if said is None:
            said = words[why] = why_words(why)
        said += resets.get(rec.id, "")
        groups, recipients = out.get((state, said), (0, 0))
        out[state, said] = (groups + 1, recipients + len(rec.counted))
    return dict(sorted(out.items(), key=lambda kv: (STATES.index(kv[0][0]), -kv[1][1])))


#: How the table names each state, and what it means for the next step (pending a rerun and
#: not attempted: :func:`_retry_note`, :func:`not_sent_yet_words`).
_STATE_ROWS = (
    (SENT, "sent", ""),
    (FAILED, "failed", "  (final: in --failed-csv)"),
    (RETRY_PENDING, "retry pending", ""),
    (IN_DOUBT, "in doubt", "  (may have been sent: held)"),
    (NOT_ATTEMPTED, "not attempted", ""),
)
_LABELS = {state: label for state, label, _ in _STATE_ROWS}


def _delivery_lines(s: LedgerSummary, d: dict[str, Any], path: Location) -> list[str]:
    """The table's delivery section: the sent groups' recipients by their latest status."""
    if not s.delivery:
        return []
    lines = ["delivery     (recipients of sent groups, latest status)"]
    lines.extend(f"  {k:24}{v:>8}" for k, v in s.delivery.most_common())
    if s.moved_unsent:
        lines.append(
            f"  of these, {count(s.moved_unsent, 'recipient')} moved out of their group to "
            'go again (under "not sent, and why"), by the status that moved them'
        )
    if s.texted_twice:
        lines.append(f"  {texted_twice_words(s)}")
    if d["delivery_unconfirmed"]:
        lines.append(
            f"  delivered? unconfirmed: {count(d['delivery_unconfirmed'], 'recipient')} "
            "(final: no handset report will come; not failed, not pending)"
        )
    if d["delivery_pending"]:
        lines.append(
            f"  not final yet: {count(d['delivery_pending'], 'recipient')} (run "
            f"`bulk-mms track {path}`; add --sandbox for a sandbox run)"
        )
    lines.append("")
    return lines


def format_text(s: LedgerSummary, path: Location) -> str:
    """The report as a table, for a person at a terminal: every count with its unit, every
    error and reason in words (:mod:`bulk_mms.words`), every rejection reason; what the
    ledger took from a server (a code, a title) with its control characters escaped
    (:func:`~bulk_mms.words.escaped`)."""
    d = s.as_dict()
    r = d["recipients"]
    cost = cost_words(s)
    lines = [
        f"ledger       {path}",
        f"job          {s.job}   runs: {s.runs}   {s.first_time or '-'} .. {s.last_time or '-'}",
        "",
        f"{'':15}{'groups':>8}{'recipients':>12}",
    ]
    for state, label, note in _STATE_ROWS:
        groups = s.groups[state] if state in s.groups or state != NOT_ATTEMPTED else ""
        said = note
        if state == NOT_ATTEMPTED:
            said = _waiting_note(s) if s.waiting.held else f"  ({not_sent_yet_words(s)})"
        if state == RETRY_PENDING:
            said = _retry_note(s)
        if state == FAILED and (s.misses[Miss.EXPIRED] or s.recipient_states.opted_out):
            said = _failed_note(r[FAILED], s.misses[Miss.EXPIRED], s.recipient_states.opted_out)
        lines.append(f"{label:15}{groups:>8}{r[state]:>12}{said if r[state] else ''}")
    valid_note = (
        "" if s.recipient_states.input_read else "  (so far: no run has read the whole input)"
    )
    lines += [f"{'valid':15}{'':>8}{r['valid']:>12}{valid_note}", "", *_rows_lines(s.rows), ""]
    if s.unsent or s.waiting.held:
        lines.append("not sent, and why")
        for (state, why), (groups, recipients) in s.unsent.items():
            lines.append(
                f"  {_LABELS[state]:14}{count(groups, 'group')}, "
                f"{count(recipients, 'recipient')}: {why}"
            )
        lines.extend(_waiting_lines(s))
        lines.append("")
    lines += _delivery_lines(s, d, path)
    kinds = s.misses
    resendable, late, stopped = kinds[Miss.RESENDABLE], kinds[Miss.EXPIRED], kinds[Miss.OPTED_OUT]
    left_out = [
        *([f"the {late} past the job's deadline: a late message is worse than none"] * bool(late)),
        *([f"the {stopped} who opted out (STOP): never to be texted again"] * bool(stopped)),
        *([f"the {len(s.resent)} an earlier resend took, which settles them"] * bool(s.resent)),
    ]
    lines.append(
        f"did not get  {count(len(s.undelivered), 'recipient')} ({resendable} of them met a "
        "carrier's cap or filter: resendable); write them with --failed-csv"
        + (f" (not {'; not '.join(left_out)})" if left_out else "")
    )
    lines.append(f"cost         {cost}")
    if d["achieved_rate"] is not None:
        lines.append(
            f"rate         {d['achieved_rate']} groups/s while sending; "
            f"429 answers: {s.rate_limited}"
        )
    if d["wait_seconds_max"] is not None:
        lines.append(
            f"wait_seconds p50 {d['wait_seconds_p50']}  p95 {d['wait_seconds_p95']}"
            f"  max {d['wait_seconds_max']}"
        )
    if s.error_codes:
        lines.append("errors that ended a group's tries (a group counts again in each run it did)")
        lines.extend(
            f"  {count(n, 'group'):>12}  {error_words(code)}"
            for code, n in s.error_codes.most_common()
        )
    if s.delivery_codes:
        lines.append("carriers' codes in the delivery reports of those who did not get it")
        lines.extend(
            f"  {count(n, 'recipient'):>12}  {error_words(code)}"
            for code, n in s.delivery_codes.most_common()
        )
    if s.rows.rejected:
        lines.append("rejected rows, by reason")
        lines.extend(f"  {count(n, 'row'):>12}  {reason}" for reason, n in s.rows.rejected.items())
    return "\n".join(map(escaped, lines))


def _failed_note(failed: int, late: int, stopped: int) -> str:
    """The failed row's note when --failed-csv leaves some of them out: those the deadline
    left unsent (a late message is worse than none), and those who opted out (``stopped``:
    nobody may text them, so they are not left unsent and never a run's failure)."""
    whys = [
        (n, all_of, the_n)
        for n, all_of, the_n in (
            (late, "past the job's deadline", "past the job's deadline"),
            (stopped, "opted out (STOP), never to be texted again", "who opted out (STOP)"),
        )
        if n
    ]
    if late + stopped >= failed:
        return f"  (final: {' or '.join(w for _, w, _ in whys)}, not in --failed-csv)"
    return f"  (final: in --failed-csv, but not {' nor '.join(f'the {n} {w}' for n, _, w in whys)})"


def _rows_lines(rows: InputRows) -> list[str]:
    """Where the input's rows went: the losses apart from the rows left out on purpose, each
    kind counted, adding up to the rows."""
    so_far = " so far (no run has read the whole input)" if not rows.input_read else ""

    def kind(label: str, n: int, what: str) -> str:
        return f"  {label:13}{n:>8} {'row' if n == 1 else 'rows':4}  {what}"

    return [
        f"input        {count(rows.rows, 'row')}{so_far}: {rows.valid:,} valid, "
        f"{rows.lost:,} rejected, {rows.left_out:,} left out on purpose",
        f"rejected     {count(rows.lost, 'row')} that cannot be sent (losses: a bad number, a "
        "broken row)" + ("; list them with --rejected-csv" if rows.lost else ""),
        "left out     on purpose, not losses:",
        kind(
            "duplicate",
            rows.duplicates,
            "whose number is in the job already (the latest run's count; nobody is sent twice)",
        ),
        kind("suppressed", rows.suppressed, "whose number is on the suppression list"),
        kind("already sent", rows.excluded, "by a ledger given to --exclude-sent"),
    ]


def texted_twice_words(s: LedgerSummary) -> str:
    """Those texted twice (:attr:`LedgerSummary.texted_twice`), in words, for the table and
    the HTML page."""
    return (
        f"texted twice: {count(s.texted_twice, 'recipient')} (moved out of their group and "
        "sent again, yet reported delivered by the first message)"
    )


def cost_words(s: LedgerSummary) -> str:
    """The cost per currency, and how much of it is final: ``1.23 USD: 0.90 final, 0.33
    estimated``. The send's answer gives an estimate; a recipient's final cost comes with
    ``message.finalized`` or a GET of a finalized message (``track``)."""
    out = []
    for cur, (final, est) in sorted(s.cost_parts.items()):
        total = _amount(final + est)
        if not est:
            out.append(f"{total} {cur} (final)")
        elif not final:
            out.append(f"{total} {cur} (estimated: final costs come with track or webhooks)")
        else:
            out.append(f"{total} {cur}: {_amount(final)} final, {_amount(est)} estimated")
    return "; ".join(out) or "0"


def _amount(value: Decimal) -> str:
    """An amount as a person reads it: its digits without the trailing zeros that sums of
    the API's amounts carry (``0.04420000``: 0.0442), at least to the cent, never in
    exponent form."""
    plain = value.normalize()
    if plain.as_tuple().exponent > -2:  # type: ignore[operator]
        plain = plain.quantize(_CENT)
    return f"{plain:f}"


_CENT = Decimal("0.01")


def format_csv(s: LedgerSummary) -> str:
    """The report as ``metric,value`` rows; nested counts become ``delivery.delivered`` etc.
    Every cell goes through :func:`~bulk_mms.csvfile.safe_cell` (a reason read from an input
    row never runs as a formula)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["metric", "value"])
    for key, value in s.as_dict().items():
        if isinstance(value, dict):
            for sub, v in value.items():
                w.writerow([safe_cell(f"{key}.{sub}"), safe_cell(v)])
        else:
            w.writerow([key, safe_cell(value)])
    return out.getvalue()
