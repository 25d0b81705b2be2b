"""Summaries read back from a ledger: what ``bulk-mms report`` (and ``status``) prints.

One pass over the ledger folds every event: outcomes per group (a later outcome wins, and a sent
group stays sent), delivery statuses per recipient (through
:class:`~bulk_mms.delivery.DeliveryBook`, so the report orders reports as ``track`` and
``webhooks`` do), costs per currency, waits and error codes. :func:`write_failed_csv` turns the
recipients who did not get the message into an input file a new job can take as it is.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from bulk_mms.delivery import FINAL, NOT_RECEIVED, DeliveryBook
from bulk_mms.ledger import fingerprint, iter_events, parse_time
from bulk_mms.models import parse_money
from bulk_mms.reader import Row, RowReader
from bulk_mms.validate import PhoneError, normalize_phone


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
    #: Recipients of sent groups by their latest delivery status (``queued`` until tracked).
    delivery: Counter[str] = field(default_factory=Counter)
    #: Recipients who did not get the message, with why: failed and in-doubt groups, and
    #: delivery_failed / sending_failed / expired. In ledger order.
    undelivered: list[tuple[str, str]] = field(default_factory=list)
    #: The ledger header's phone column (the failed-recipients file uses the same name).
    phone_column: str = "phone"
    fingerprint: str | None = None
    #: The ledger's campaign (its identity; None for a format-1 ledger).
    campaign: str | None = None
    #: The ledger itself, and the input columns its outcome events record rows in (none in a
    #: ledger written before rows were recorded).
    ledger: Path | None = None
    columns: tuple[str, ...] = ()

    @property
    def recipients(self) -> int:
        return self.sent_recipients + self.failed_recipients + self.in_doubt_recipients

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
            "recipients": self.recipients,
            "delivery": dict(self.delivery.most_common()),
            "delivery_pending": sum(n for k, n in self.delivery.items() if k not in FINAL),
            "undelivered_recipients": len(self.undelivered),
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


def _reason_kind(reason: str) -> str:
    """Reasons without their specifics, so they can be counted: 'duplicate', 'malformed JSON'."""
    return reason.split(":", 1)[0].split(" (", 1)[0]


class _Summarizer:
    """Folds ledger events into a :class:`LedgerSummary`. Private: use :func:`summarize`."""

    def __init__(self, path: Path) -> None:
        self.s = LedgerSummary()
        self.book = DeliveryBook(path)
        #: Group → (latest outcome, recipients, why it failed).
        self.outcome: dict[str, tuple[str, tuple[str, ...], str]] = {}
        self.costs: dict[str, tuple[Decimal, str]] = {}
        self.rejected: dict[int, str] = {}
        #: Groups with an attempt and no outcome after it (their recipients, when recorded).
        self.open: dict[str, tuple[str, ...]] = {}
        # first attempt and last outcome of the current run, for the sending time
        self.run_first: str | None = None
        self.run_last: str | None = None

    def close_run(self) -> None:
        if self.run_first and self.run_last:
            span = parse_time(self.run_last) - parse_time(self.run_first)
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
            s.phone_column = str(ev.get("phone_column") or "phone")
            s.fingerprint = ev.get("fingerprint")
            s.campaign = ev.get("campaign") if isinstance(ev.get("campaign"), str) else None
            cols = ev.get("columns")
            s.columns = tuple(str(c) for c in cols) if isinstance(cols, list) else ()
        elif kind == "status":
            self.book.feed(ev)
        elif kind == "run":
            s.runs += 1
            self.close_run()
        elif kind == "attempt":
            s.attempts += 1
            self.run_first = self.run_first or t
            # open until an outcome closes it: a crash in between leaves the group in doubt,
            # as a resume takes it (ledger.replay)
            self.open[ev["group"]] = tuple(ev.get("to") or ())
        elif kind in ("sent", "failed", "in_doubt"):
            self.outcome_event(kind, ev, t)
        elif kind == "rejected":
            self.rejected[ev["line"]] = str(ev.get("reason", ""))

    def outcome_event(self, kind: str, ev: dict[str, Any], t: str | None) -> None:
        s = self.s
        gid = ev["group"]
        self.open.pop(gid, None)
        self.run_last = t or self.run_last
        s.rate_limited += int(ev.get("rate_limited") or 0)
        s.sent_events += kind == "sent"
        prev = self.outcome.get(gid)
        if prev is not None and prev[0] == "sent":
            return  # a sent group stays sent
        if prev is not None and prev[0] == "in_doubt" and kind == "failed" and ev.get("retryable"):
            return  # a transient failure settles nothing: its first request may have landed
        why = (
            f"failed: {ev.get('code') or ev.get('status') or ''} {ev.get('title') or ''}".strip()
            if kind == "failed"
            else "in doubt: may not have been sent"
        )
        self.outcome[gid] = (kind, tuple(ev.get("to") or ()), why)
        if kind == "sent":
            self.book.feed(ev)
            cost = parse_money(ev.get("cost"))  # the same bounds as when it was received
            if cost is not None:
                self.costs[gid] = (cost.amount, cost.currency)
            if isinstance(ev.get("wait_seconds"), int | float):
                s.wait_seconds.append(float(ev["wait_seconds"]))
        elif kind == "failed":
            s.error_codes[str(ev.get("code"))] += 1

    def finish(self) -> LedgerSummary:
        s = self.s
        self.close_run()
        for gid, to in self.open.items():  # cut off by a crash: in doubt, unless sent before
            prev = self.outcome.get(gid)
            if prev is None or prev[0] == "failed":
                self.outcome[gid] = ("in_doubt", to or (prev[1] if prev else ()), _CUT_OFF)
        for kind, to, why in self.outcome.values():
            n = len(to)
            if kind == "sent":
                s.sent_groups += 1
                s.sent_recipients += n
                for phone in to:
                    status = self.book.status_of(phone) or "queued"
                    s.delivery[status] += 1
                    if status in NOT_RECEIVED:
                        s.undelivered.append((phone, status))
                continue
            if kind == "failed":
                s.failed_groups += 1
                s.failed_recipients += n
            else:
                s.in_doubt_groups += 1
                s.in_doubt_recipients += n
            s.undelivered.extend((phone, why) for phone in to)
        for amount, currency in self.costs.values():
            s.cost[currency] = s.cost.get(currency, Decimal(0)) + amount
        s.rejected_rows = len(self.rejected)
        s.rejected_reasons = Counter(_reason_kind(r) for r in self.rejected.values())
        return s


def summarize(path: Path) -> LedgerSummary:
    """Read a whole ledger once. Later events win: a group sent on a rerun is no longer failed."""
    folder = _Summarizer(path)
    for _, ev in iter_events(path):
        folder.feed(ev)
    summary = folder.finish()
    summary.ledger = path
    return summary


def format_text(s: LedgerSummary, path: Path) -> str:
    """The report as a table, for a person at a terminal."""
    d = s.as_dict()
    cost = ", ".join(f"{v} {k}" for k, v in d["cost_by_currency"].items()) or "0"
    lines = [
        f"ledger       {path}",
        f"job          {s.job}   runs: {s.runs}   {s.first_time or '-'} .. {s.last_time or '-'}",
        "",
        f"{'':13}{'groups':>10}{'recipients':>12}",
        f"{'sent':13}{s.sent_groups:>10}{s.sent_recipients:>12}",
        f"{'failed':13}{s.failed_groups:>10}{s.failed_recipients:>12}",
        f"{'in doubt':13}{s.in_doubt_groups:>10}{s.in_doubt_recipients:>12}",
        f"{'total':13}{s.sent_groups + s.failed_groups + s.in_doubt_groups:>10}{s.recipients:>12}",
        f"{'rejected':13}{'':>10}{s.rejected_rows:>12}  (input rows not sent)",
        "",
    ]
    if s.delivery:
        lines.append("delivery     (recipients of sent groups, latest status)")
        lines.extend(f"  {k:24}{v:>8}" for k, v in s.delivery.most_common())
        if d["delivery_pending"]:
            lines.append(
                f"  not final yet: {d['delivery_pending']} (run `bulk-mms track {path}`; add "
                "--sandbox for a sandbox run)"
            )
        lines.append("")
    lines.append(f"did not get   {len(s.undelivered)} recipients (write them with --failed-csv)")
    lines.append(f"cost         {cost}")
    if d["achieved_rate"] is not None:
        lines.append(
            f"rate         {d['achieved_rate']} groups/s while sending; 429s: {s.rate_limited}"
        )
    if d["wait_seconds_max"] is not None:
        lines.append(
            f"wait_seconds p50 {d['wait_seconds_p50']}  p95 {d['wait_seconds_p95']}"
            f"  max {d['wait_seconds_max']}"
        )
    if s.error_codes:
        lines.append(
            "errors       " + ", ".join(f"{k} x{v}" for k, v in s.error_codes.most_common(10))
        )
    if s.rejected_reasons:
        lines.append(
            "rejections   " + ", ".join(f"{k} x{v}" for k, v in s.rejected_reasons.most_common(5))
        )
    return "\n".join(lines)


def format_csv(s: LedgerSummary) -> str:
    """The report as ``metric,value`` rows; nested counts become ``delivery.delivered`` etc."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["metric", "value"])
    for key, value in s.as_dict().items():
        if isinstance(value, dict):
            for sub, v in value.items():
                w.writerow([f"{key}.{sub}", v])
        else:
            w.writerow([key, "" if value is None else value])
    return out.getvalue()


#: The column the failed-recipients file adds, saying why each row is in it.
_CUT_OFF = "in doubt: attempted before a crash, outcome unknown"
REASON_COLUMN = "bulk_mms_reason"
#: The campaign the recipients were missed by. It makes each round's file differ from the last
#: even when the same people fail for the same reason, so ``run --input`` (which names the
#: resend after the file's hash) gives every round a ledger and a campaign of its own.
CAMPAIGN_COLUMN = "bulk_mms_campaign"


def write_failed_csv(s: LedgerSummary, out: Path) -> tuple[int, bool]:
    """Write the recipients who did not get the message as a CSV a new job can take.

    Each recipient's whole input row is written, as the ledger recorded it when the group was
    sent, so the new job's templates find the same columns whatever became of the input; for
    a ledger that records no rows, the row is re-read from the input when it is still there
    and unchanged (its fingerprint matches the ledger's); otherwise only the phone column. A
    ``bulk_mms_reason`` column says why, and ``bulk_mms_campaign`` which campaign missed them
    (replacing those columns of an input that was itself such a file).
    The file is written next to ``out`` and renamed into place, so it is never half written.

    Returns:
        (rows written, whether they are the original rows).
    """
    wanted = dict(s.undelivered)
    source = Path(s.input) if s.input else None
    rows: list[dict[str, str]] = []
    columns = [s.phone_column]
    full = False
    recorded = _recorded_rows(s, wanted) if wanted and s.columns else None
    if recorded is not None:
        columns, rows, full = [s.phone_column, *s.columns], recorded, True
    elif wanted and source is not None and source.exists() and fingerprint(source) == s.fingerprint:
        columns, rows = _original_rows(source, s.phone_column, wanted)
        full = True
    else:
        rows = [{s.phone_column: phone} for phone in wanted]
    for row in rows:
        row[REASON_COLUMN] = wanted[_phone_key(row[s.phone_column])]
        row[CAMPAIGN_COLUMN] = s.campaign or ""
    ours = (REASON_COLUMN, CAMPAIGN_COLUMN)
    columns = [c for c in columns if c not in ours]
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, [*columns, *ours], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out)
    return len(rows), full


def _recorded_rows(s: LedgerSummary, wanted: dict[str, str]) -> list[dict[str, str]] | None:
    """The wanted recipients' input rows as the ledger recorded them when it sent (or tried to
    send) their groups: every column, whatever became of the input file since. None when some
    recipient's row is not recorded (a group written by an older bulk-mms)."""
    assert s.ledger is not None
    found: dict[str, dict[str, str]] = {}
    for _, ev in iter_events(s.ledger, skip_status=True):
        rows, to = ev.get("rows"), ev.get("to")
        if ev.get("event") not in ("sent", "failed", "in_doubt") or not isinstance(rows, list):
            continue
        for phone, values in zip(to if isinstance(to, list) else (), rows, strict=False):
            if phone in wanted and isinstance(values, list):
                cells = dict(zip(s.columns, map(str, values), strict=False))
                found[phone] = {s.phone_column: phone, **cells}
    if not all(phone in found for phone in wanted):
        return None
    return [found[phone] for phone in wanted]


def _phone_key(value: str) -> str:
    try:
        return normalize_phone(value)
    except PhoneError:
        return value


def _original_rows(
    source: Path, phone_column: str, wanted: dict[str, str]
) -> tuple[list[str], list[dict[str, str]]]:
    """The input rows of the wanted numbers, each once, with every column of the input."""
    with RowReader(source, phone_column) as probe:
        columns = list(probe.columns)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    with RowReader(source, phone_column, columns) as reader:
        for row in reader:
            if isinstance(row, Row):
                key = _phone_key(row.fields.get(phone_column, ""))
                if key in wanted and key not in seen:
                    seen.add(key)
                    rows.append(dict(row.fields))
    # numbers whose row is no longer readable still go in, with the phone column alone
    rows.extend({phone_column: p} for p in wanted if p not in seen)
    return columns, rows
