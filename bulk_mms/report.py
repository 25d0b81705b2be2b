"""Summaries read back from a ledger: what ``bulk-mms status`` prints."""

from __future__ import annotations

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


def _reason_kind(reason: str) -> str:
    """Reasons without their specifics, so they can be counted: 'duplicate', 'malformed JSON'."""
    return reason.split(":", 1)[0].split(" (", 1)[0]


def summarize(path: Path) -> LedgerSummary:
    """Read a whole ledger once. Later events win: a group sent on a rerun is no longer failed."""
    s = LedgerSummary()
    outcome: dict[str, tuple[str, int]] = {}
    costs: dict[str, tuple[Decimal, str]] = {}
    rejected: dict[int, str] = {}
    for _, ev in iter_events(path):
        kind = ev["event"]
        t = ev.get("time")
        if isinstance(t, str):
            s.first_time = s.first_time or t
            s.last_time = t
        if kind == "job":
            s.job, s.input = ev.get("job"), ev.get("input")
        elif kind == "run":
            s.runs += 1
        elif kind == "attempt":
            s.attempts += 1
        elif kind in ("sent", "failed", "in_doubt"):
            gid = ev["group"]
            prev = outcome.get(gid)
            if prev is not None and prev[0] == "sent":
                continue  # a sent group stays sent
            outcome[gid] = (kind, len(ev.get("to") or ()))
            if kind == "sent":
                cost = ev.get("cost")
                if isinstance(cost, dict) and cost.get("amount") is not None:
                    costs[gid] = (Decimal(str(cost["amount"])), str(cost.get("currency", "USD")))
                if isinstance(ev.get("wait_seconds"), int | float):
                    s.wait_seconds.append(float(ev["wait_seconds"]))
            elif kind == "failed":
                s.error_codes[str(ev.get("code"))] += 1
        elif kind == "rejected":
            rejected[ev["line"]] = str(ev.get("reason", ""))
    for kind, n in outcome.values():
        if kind == "sent":
            s.sent_groups += 1
            s.sent_recipients += n
        elif kind == "failed":
            s.failed_groups += 1
            s.failed_recipients += n
        else:
            s.in_doubt_groups += 1
            s.in_doubt_recipients += n
    for amount, currency in costs.values():
        s.cost[currency] = s.cost.get(currency, Decimal(0)) + amount
    s.rejected_rows = len(rejected)
    s.rejected_reasons = Counter(_reason_kind(r) for r in rejected.values())
    return s


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
