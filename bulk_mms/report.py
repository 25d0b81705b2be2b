"""Summaries read back from a ledger: what ``bulk-mms status`` prints."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from bulk_mms.ledger import iter_events


@dataclass(slots=True)
class LedgerSummary:
    """The state of a job as its ledger records it, each group and row counted once."""

    job: str | None = None
    input: str | None = None
    runs: int = 0
    sent_groups: int = 0
    sent_recipients: int = 0
    failed_groups: int = 0
    failed_recipients: int = 0
    in_doubt_groups: int = 0
    in_doubt_recipients: int = 0
    rejected_rows: int = 0
    cost: dict[str, Decimal] = field(default_factory=dict)
    attempts: int = 0
    wait_seconds: list[float] = field(default_factory=list)
    error_codes: Counter[str] = field(default_factory=Counter)
    rejected_reasons: Counter[str] = field(default_factory=Counter)
    first_time: str | None = None
    last_time: str | None = None
    #: 429 answers over all groups, and seconds spent sending (first attempt to last outcome,
    #: run by run, so the gaps between reruns do not count).
    rate_limited: int = 0
    sending_seconds: float = 0.0
    sent_events: int = 0

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
        return {
            "job": self.job,
            "input": self.input,
            "runs": self.runs,
            "sent_groups": self.sent_groups,
            "sent_recipients": self.sent_recipients,
            "failed_groups": self.failed_groups,
            "failed_recipients": self.failed_recipients,
            "in_doubt_groups": self.in_doubt_groups,
            "in_doubt_recipients": self.in_doubt_recipients,
            "rejected_rows": self.rejected_rows,
            "cost": str(total) if total is not None else None,
            "currency": next(iter(self.cost), "USD") if len(self.cost) <= 1 else None,
            "cost_by_currency": {k: str(v) for k, v in sorted(self.cost.items())},
            "attempts": self.attempts,
            "achieved_rate": round(r, 3) if (r := self.achieved_rate) is not None else None,
            "rate_limited": self.rate_limited,
            "wait_seconds_p50": percentile(waits, 0.50),
            "wait_seconds_p95": percentile(waits, 0.95),
            "wait_seconds_max": waits[-1] if waits else None,
            "error_codes": dict(self.error_codes.most_common()),
            "rejected_reasons": dict(self.rejected_reasons.most_common(10)),
            "first_event": self.first_time,
            "last_event": self.last_time,
        }


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of sorted ``values``, nearest rank; None when empty."""
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def _seconds(iso: str) -> float:
    """Seconds since the epoch of an event's ISO 8601 ``time``."""
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _reason_kind(reason: str) -> str:
    """Reasons without their specifics, so they can be counted: 'duplicate', 'malformed JSON'."""
    return reason.split(":", 1)[0].split(" (", 1)[0]


class _Summarizer:
    """Folds ledger events into a :class:`LedgerSummary`. Private: use :func:`summarize`."""

    def __init__(self) -> None:
        self.s = LedgerSummary()
        self.outcome: dict[str, tuple[str, int]] = {}
        self.costs: dict[str, tuple[Decimal, str]] = {}
        self.rejected: dict[int, str] = {}
        # first attempt and last outcome of the current run, for the sending time
        self.run_first: str | None = None
        self.run_last: str | None = None

    def close_run(self) -> None:
        if self.run_first and self.run_last:
            span = _seconds(self.run_last) - _seconds(self.run_first)
            self.s.sending_seconds += max(0.0, span)
        self.run_first = self.run_last = None

    def feed(self, ev: dict[str, Any]) -> None:
        s = self.s
        kind = ev["event"]
        t = ev.get("time") if isinstance(ev.get("time"), str) else None
        if t is not None:
            s.first_time = s.first_time or t
            s.last_time = t
        if kind == "job":
            s.job, s.input = ev.get("job"), ev.get("input")
        elif kind == "run":
            s.runs += 1
            self.close_run()
        elif kind == "attempt":
            s.attempts += 1
            self.run_first = self.run_first or t
        elif kind in ("sent", "failed", "in_doubt"):
            self.outcome_event(kind, ev, t)
        elif kind == "rejected":
            self.rejected[ev["line"]] = str(ev.get("reason", ""))

    def outcome_event(self, kind: str, ev: dict[str, Any], t: str | None) -> None:
        s = self.s
        gid = ev["group"]
        self.run_last = t or self.run_last
        s.rate_limited += int(ev.get("rate_limited") or 0)
        s.sent_events += kind == "sent"
        prev = self.outcome.get(gid)
        if prev is not None and prev[0] == "sent":
            return  # a sent group stays sent
        self.outcome[gid] = (kind, len(ev.get("to") or ()))
        if kind == "sent":
            cost = ev.get("cost")
            if isinstance(cost, dict) and cost.get("amount") is not None:
                self.costs[gid] = (Decimal(str(cost["amount"])), str(cost.get("currency", "USD")))
            if isinstance(ev.get("wait_seconds"), int | float):
                s.wait_seconds.append(float(ev["wait_seconds"]))
        elif kind == "failed":
            s.error_codes[str(ev.get("code"))] += 1

    def finish(self) -> LedgerSummary:
        s = self.s
        self.close_run()
        for kind, n in self.outcome.values():
            if kind == "sent":
                s.sent_groups += 1
                s.sent_recipients += n
            elif kind == "failed":
                s.failed_groups += 1
                s.failed_recipients += n
            else:
                s.in_doubt_groups += 1
                s.in_doubt_recipients += n
        for amount, currency in self.costs.values():
            s.cost[currency] = s.cost.get(currency, Decimal(0)) + amount
        s.rejected_rows = len(self.rejected)
        s.rejected_reasons = Counter(_reason_kind(r) for r in self.rejected.values())
        return s


def summarize(path: Path) -> LedgerSummary:
    """Read a whole ledger once. Later events win: a group sent on a rerun is no longer failed."""
    folder = _Summarizer()
    for _, ev in iter_events(path):
        folder.feed(ev)
    return folder.finish()


def format_text(s: LedgerSummary, path: Path) -> str:
    """A short human-readable status block."""
    d = s.as_dict()
    cost = ", ".join(f"{v} {k}" for k, v in d["cost_by_currency"].items()) or "0"
    lines = [
        f"ledger     {path}",
        f"job        {s.job}   runs: {s.runs}",
        f"sent       {s.sent_groups} groups, {s.sent_recipients} recipients",
        f"failed     {s.failed_groups} groups, {s.failed_recipients} recipients",
        f"in doubt   {s.in_doubt_groups} groups, {s.in_doubt_recipients} recipients",
        f"rejected   {s.rejected_rows} rows",
        f"cost       {cost}",
    ]
    if d["achieved_rate"] is not None:
        lines.append(
            f"rate       {d['achieved_rate']} groups/s while sending; 429s: {s.rate_limited}"
        )
    if d["wait_seconds_max"] is not None:
        lines.append(
            f"wait_s     p50 {d['wait_seconds_p50']}  p95 {d['wait_seconds_p95']}"
            f"  max {d['wait_seconds_max']}"
        )
    if s.error_codes:
        lines.append(
            "errors     " + ", ".join(f"{k} x{v}" for k, v in s.error_codes.most_common(5))
        )
    if s.rejected_reasons:
        lines.append(
            "rejections " + ", ".join(f"{k} x{v}" for k, v in s.rejected_reasons.most_common(5))
        )
    return "\n".join(lines)
