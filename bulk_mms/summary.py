"""What a run did: :class:`JobSummary` (and a dry run's :class:`Estimate`), kept as it goes.

The state of the whole ledger is not kept here: that is :class:`~bulk_mms.ledger.LedgerView`'s.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from typing import Any

import msgspec

from bulk_mms.ledger import RecipientCounts
from bulk_mms.models import Group, Money, Rejection
from bulk_mms.scan import InputScan


def minute_utc(seconds: float) -> str | None:
    """Wall-clock seconds as an ISO time in UTC to the minute (``2026-12-06T05:00Z``): when
    members waiting for a carrier's reset may be sent, as the run and the report say it;
    None for 0 (no time)."""
    if not seconds:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%MZ")


def rerun_from(
    seconds: float, *, own_cap: bool = False, run: str = "a rerun", provided: str = ""
) -> str:
    """From when a rerun sends members a daily cap holds (wall-clock seconds: its reset), and
    on what else (``provided``: " with max_cost raised"), as the run and the report say it.
    When the account's own cap (``daily_recipients``) holds some of them, that rerun sends no
    more of them than the cap allows that day."""
    limit = " (up to [limits] daily_recipients a day)" if own_cap else ""
    return f"{run} from {minute_utc(seconds)}{provided} sends them{limit}"


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of sorted ``values``, nearest rank; None when empty."""
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


class Estimate(msgspec.Struct, frozen=True):
    """What a dry run expects sending to take: time at the configured ceilings, and cost."""

    seconds: float
    #: Requests (or recipients, with ``cost = "recipient"``) per second it assumes.
    rate: float
    cost: Money | None
    #: Where the price came from: ``[pricing]``, else the ledger's own sends, or nowhere.
    price_basis: str
    #: What ``max_cost`` counts the ledger has paid already, and the rest of the job at the
    #: price a run counts it at (None: no price): :func:`~bulk_mms.caps.max_cost_counts`.
    paid: Decimal = Decimal(0)
    counted: Money | None = None

    def cost_text(self) -> str:
        """``about 1.2138 USD (basis)``, or why there is no price."""
        if self.cost is None:
            return self.price_basis
        return f"about {self.cost.amount:.4f} {self.cost.currency} ({self.price_basis})"


class JobSummary(msgspec.Struct):
    """What one run did, and where the whole ledger stands afterwards."""

    job: str
    sent_groups: int = 0
    sent_recipients: int = 0
    #: Groups this run recorded failed, and their recipients; not a group refused because
    #: members opted out (40300: nobody may text them): the ledger's
    #: :attr:`~bulk_mms.ledger.RecipientCounts.opted_out` counts those.
    failed_groups: int = 0
    failed_recipients: int = 0
    #: Of the failed groups, those that ran out of retries on a transient error: the next run
    #: sends them again.
    retry_later_groups: int = 0
    in_doubt_groups: int = 0
    #: Rows this run read and rejected: losses (:attr:`~bulk_mms.models.Rejection.loss`), a
    #: bad number or a broken row (the whole input's: :attr:`lost_rows`). The rows left out
    #: on purpose are counted apart, by kind:
    rejected_rows: int = 0
    #: Rows whose number appears earlier in the input.
    duplicate_rows: int = 0
    #: Rows whose number is on the suppression list (left out of their groups).
    suppressed_rows: int = 0
    #: Rows whose number a ledger given to ``--exclude-sent`` records sent.
    excluded_rows: int = 0
    #: What the scan before sending found in the whole input.
    input: InputScan | None = None
    #: Whether this run (or dry run) planned its whole input: its counts of rows are the
    #: input's, else only those of the rows it read.
    read_whole_input: bool = False
    #: Groups another run finished (sent, or failed for good): an earlier one, or another
    #: process on a shared ledger, which may have decided one this run had in doubt.
    skipped_groups: int = 0
    #: Groups held back because an earlier run left them in doubt.
    held_groups: int = 0
    #: Groups the job's ``deadline`` left unsent (recorded ``expired_unsent``).
    expired_groups: int = 0
    cost: dict[str, Decimal] = msgspec.field(default_factory=dict)
    #: Reported ``wait_seconds``: median, 95th percentile and maximum (None: none reported).
    wait_seconds_p50: float | None = None
    wait_seconds_p95: float | None = None
    wait_seconds_max: float | None = None
    #: Requests per second while sending: every try, over the time from the first request
    #: leaving to the last, on the monotonic clock (None when nothing was sent).
    achieved_rate: float | None = None
    #: 429 answers, and of those how many said the queue was full (40318).
    rate_limited: int = 0
    queue_full: int = 0
    duration_s: float = 0.0
    #: Why the run stopped early (a :class:`~bulk_mms.signals.StopReason`), or None if it
    #: reached the end of its input.
    stopped: str | None = None
    #: Open problems over the whole ledger after the run: groups failed for good (an opt-out
    #: too: :attr:`recipients` tells those apart), in doubt, and pending a rerun; and every
    #: valid recipient's state.
    open_failed: int = 0
    open_in_doubt: int = 0
    open_retry_pending: int = 0
    recipients: RecipientCounts | None = None
    #: Groups (of those sent, or a dry run would send) whose message took a placeholder's
    #: value from the first member though the members' values differ, or left it empty.
    template_differs: Counter[str] = msgspec.field(default_factory=Counter)
    template_empty: Counter[str] = msgspec.field(default_factory=Counter)
    #: Set by a dry run: the PID of a run that holds the ledger now (a run would exit 75).
    locked_by: str | None = None
    #: The job's senders the API refused in this ledger, in this run or an earlier one (out of
    #: the pool for the rest of the job).
    retired: tuple[str, ...] = ()
    #: Set by a dry run: the first groups, for display, and what sending them would take.
    preview: list[Group] = msgspec.field(default_factory=list)
    estimate: Estimate | None = None
    #: Set by a dry run with quiet hours: recipients it would send, by their zones.
    zones: dict[str, int] = msgspec.field(default_factory=dict)
    #: Quiet hours: recipients left for their window, by zone, and when the first opens.
    quiet: dict[str, int] = msgspec.field(default_factory=dict)
    next_opening: dt.datetime | None = None
    #: Members held for a daily cap's reset that is still to come: moved out of a sent group
    #: by a delivery report (a carrier's, 40016), or in a group pending a rerun that a cap
    #: (a carrier's, or the account's ``daily_recipients``) refused at the send
    #: (:func:`~bulk_mms.report.waiting`, :func:`~bulk_mms.report.capped`). A rerun from
    #: ``waiting_until`` (wall-clock seconds, the latest of their resets) sends them; the
    #: run exits 5.
    waiting_recipients: int = 0
    waiting_until: float = 0.0
    #: Members held so whose cap's reset comes only at or after the job's deadline: no
    #: run sends them (the first run past the deadline records them expired); exit 1. Both
    #: counts as :func:`~bulk_mms.report.held_for_reset` splits them, as the report does.
    waiting_past_deadline: int = 0
    #: Whether the account's own cap (``daily_recipients``) holds some of those members:
    #: the recipients line names the cap so, not as a carrier's alone.
    waiting_own_cap: bool = False
    #: The job's deadline the run sent under (:func:`~bulk_mms.gates.job_deadline`), as its
    #: ``run`` event records it; None: it has none.
    deadline: dt.datetime | None = None
    error: BaseException | None = None

    @property
    def lost_rows(self) -> int:
        """Rows rejected (losses) in the whole input, as the scan before sending found them
        (a run stopped before its input's end has read only part of it); without a scan,
        this run's count (:attr:`rejected_rows`). What every output of the run says."""
        return self.input.lost_rows if self.input is not None else self.rejected_rows

    def as_log(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "sent_groups": self.sent_groups,
            "sent_recipients": self.sent_recipients,
            "failed_groups": self.failed_groups,
            "retry_later_groups": self.retry_later_groups,
            "in_doubt_groups": self.in_doubt_groups,
            "rejected_rows": self.lost_rows,
            "duplicate_rows": self.duplicate_rows,
            "suppressed_rows": self.suppressed_rows,
            "excluded_rows": self.excluded_rows,
            "input_rows": self.input.rows if self.input else None,
            "rejected_by_reason": dict(self.input.lost.most_common()) if self.input else None,
            "skipped_groups": self.skipped_groups,
            "held_groups": self.held_groups,
            "expired_groups": self.expired_groups,
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
            "recipients": self.recipients.as_dict() if self.recipients else None,
            "opted_out_recipients": self.recipients.opted_out if self.recipients else None,
            "waiting_recipients": self.waiting_recipients,
            "waiting_not_before": minute_utc(self.waiting_until),
            "waiting_past_deadline": self.waiting_past_deadline,
            "deadline": minute_utc(self.deadline.timestamp()) if self.deadline else None,
        }

    def note_rejected(self, kind: Rejection) -> None:
        """Count a row that is not sent, as its kind is counted."""
        if kind is Rejection.DUPLICATE:
            self.duplicate_rows += 1
        elif kind is Rejection.SUPPRESSED:
            self.suppressed_rows += 1
        elif kind is Rejection.EXCLUDED:
            self.excluded_rows += 1
        else:
            self.rejected_rows += 1

    def rows_text(self) -> str:
        """The input rows not sent, in words, the losses apart from the rows left out on
        purpose: ``"3 of 400 rows rejected (0.8%: not a valid number: 2 rows, ...); 1
        duplicate number; 2 suppressed (on the suppression list); 5 already sent
        (--exclude-sent)"``: the whole input's. A run stopped before its input's end read only
        part of it: its rows left out are the scan's, as the ledger's count of valid
        recipients takes them; without that scan, only this run's counts."""
        scan = self.input
        duplicates, suppressed, excluded = (
            (scan.duplicates, scan.suppressed, scan.excluded)
            if scan is not None and not self.read_whole_input
            else (self.duplicate_rows, self.suppressed_rows, self.excluded_rows)
        )
        if scan is None:
            text = f"{_rows(self.lost_rows)} rejected"
        else:
            text = f"{self.lost_rows} of {_rows(scan.rows)} rejected"
            if scan.lost_rows:
                text += f" ({scan.lost_share:.1%}: {scan.reasons()})"
        if duplicates:
            text += f"; {duplicates} duplicate number{'s' * (duplicates != 1)}"
        if suppressed:
            text += f"; {suppressed} suppressed (on the suppression list)"
        if excluded:
            text += f"; {excluded} already sent (--exclude-sent)"
        return text

    def note_sent(self, group: Group, cost: Money | None, unstated: str) -> None:
        """Count ``group`` sent by this run, at ``cost`` (in ``unstated``, the run's
        ``[pricing] currency``, when it names no currency)."""
        self.sent_groups += 1
        self.sent_recipients += len(group.to)
        if cost is not None:
            currency = cost.currency_or(unstated)
            self.cost[currency] = self.cost.get(currency, Decimal(0)) + cost.amount

    def note_template(self, group: Group) -> None:
        """Count the placeholders that do not fit ``group`` (see :attr:`template_differs`)."""
        if group.differs:  # most groups have none of either: no count to update
            self.template_differs.update(group.differs)
        if group.empty:
            self.template_empty.update(group.empty)


def _rows(n: int) -> str:
    """``1 row``, ``3 rows``."""
    return f"{n} row{'s' * (n != 1)}"
