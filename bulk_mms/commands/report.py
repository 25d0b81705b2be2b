"""``report`` and ``status``: what a ledger says, as a table, JSON, CSV or HTML, and the lists
of recipients to resend or to read."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bulk_mms.commands.common import OUTPUT_OPTIONS, json_text, refuse_overwrites
from bulk_mms.console import say
from bulk_mms.errors import Exit, LedgerError
from bulk_mms.extras import needs
from bulk_mms.ledger import Location, display
from bulk_mms.ledger.fold import UNRECORDED
from bulk_mms.recipient_lists import (
    inputs_beside,
    left_to_resend,
    write_failed_csv,
    write_recipients_csv,
    write_rejected_csv,
)
from bulk_mms.report import LedgerSummary, format_csv, format_text, summarize
from bulk_mms.words import count


def cmd_report(args: argparse.Namespace) -> int:
    if getattr(args, "html", None) is not None:
        # its cache is its own affair: a folder it cannot write (a full disk, a HOME cron may
        # not write) is no error of the report's, which says its own in one line
        logging.getLogger("matplotlib").setLevel(logging.ERROR)
        with needs("html", "report --html"):  # refused before the table, not after it
            import matplotlib  # noqa: F401, PLC0415
    summary = summarize(args.ledger)
    writes = any(getattr(args, attr, None) is not None for _, attr in OUTPUT_OPTIONS)
    beside = inputs_beside(summary.ledger) if writes else []  # every other ledger: only then
    refuse_overwrites(
        args, [("the job's input", Path(summary.input) if summary.input else None), *beside]
    )
    fmt = args.format
    if fmt is None:
        # status keeps its documented table default for scripts that parse it
        piped = args.command == "report" and not sys.stdout.isatty()
        fmt = "json" if piped or args.log_json else "table"
    if fmt == "json":
        text = format_text(summary, display(args.ledger)) if args.log_json else ""
        note = ("report.summary", text) if args.log_json else None
        sys.stdout.write(json_text(summary.as_dict(), note))
    elif fmt == "csv":
        sys.stdout.write(format_csv(summary))
    else:
        left_to_resend(summary)  # who an earlier resend took: the table leaves them out too
        print(format_text(summary, display(args.ledger)))
    if (page := getattr(args, "html", None)) is not None:
        _write_html(args.ledger, page, summary)
    if (failed := getattr(args, "failed_csv", None)) is not None:
        _write_failed(summary, failed)
    if (rejected := getattr(args, "rejected_csv", None)) is not None:
        _write_rejected(summary, rejected)
    if (everyone := getattr(args, "recipients_csv", None)) is not None:
        _write_everyone(summary, everyone)
    return Exit.OK


def _write_html(ledger: Location, page: Path, summary: LedgerSummary) -> None:
    """``--html``: the report as one page."""
    from bulk_mms.html_report import write_html  # noqa: PLC0415 - matplotlib: only here

    try:
        write_html(ledger, page, summary)
    except OSError as exc:
        raise LedgerError(page, f"cannot write: {exc.strerror or exc}") from None
    say(
        "report.html_written",
        f"bulk-mms: wrote the report to {page.resolve().as_uri()}",
        path=str(page),
    )


def _write_failed(summary: LedgerSummary, failed_csv: Path) -> None:
    """``--failed-csv``: who failed for good, as a new job's input, and who is not in it."""
    try:
        n, full = write_failed_csv(summary, failed_csv)
    except OSError as exc:
        raise LedgerError(failed_csv, f"cannot write: {exc.strerror or exc}") from None
    how = (
        (
            "nobody left to resend"
            if summary.resent or summary.expired_left_out or summary.opted_out_left_out
            else "nobody failed for good"
        )
        if not n
        else "with their input rows"
        if full
        else "phone numbers only: the input is gone or changed"
    )
    r = summary.recipient_states
    say(
        "report.failed_csv_written",
        f"bulk-mms: wrote {count(n, 'recipient')} to {failed_csv} ({how}); not in it: "
        f"{r.retry_pending} pending a rerun, {r.in_doubt} in doubt"
        + (
            f", {summary.expired_left_out} past the job's deadline (a late message is worse "
            "than none)"
            if summary.expired_left_out
            else ""
        )
        + (
            f", {summary.opted_out_left_out} opted out (STOP: never to be texted again)"
            if summary.opted_out_left_out
            else ""
        )
        + (
            f", {len(summary.resent)} taken by an earlier resend, which settles them "
            f"({', '.join(sorted(set(summary.resent.values())))})"
            if summary.resent
            else ""
        ),
        path=str(failed_csv),
        recipients=n,
    )


def _write_rejected(summary: LedgerSummary, rejected: Path) -> None:
    """``--rejected-csv``: the input's rejected rows, and what was left out on purpose; and
    how many rows a run that stopped early checked rejected but did not record (the report
    counts them, the file cannot name them)."""
    n = write_rejected_csv(summary, rejected)
    unrecorded = summary.rows.rejected.get(UNRECORDED, 0)
    say(
        "report.rejected_csv_written",
        f"bulk-mms: wrote {count(n, 'rejected row')} to {rejected}; not in it, left out on "
        f"purpose: {count(summary.duplicate_rows, 'duplicate row')} (their numbers are in "
        f"the job already), {summary.rows.suppressed} suppressed, "
        f"{summary.rows.excluded} already sent (--exclude-sent)"
        + (
            f"; {count(unrecorded, 'more rejected row')} not recorded yet: the run stopped "
            "before it reached them (a rerun records them; run --rejected-csv lists them)"
            if unrecorded
            else ""
        ),
        path=str(rejected),
        rows=n,
        unrecorded=unrecorded,
    )


def _write_everyone(summary: LedgerSummary, everyone: Path) -> None:
    """``--recipients-csv``: everyone the ledger names, and how many it only counts."""
    n = write_recipients_csv(summary, everyone)
    say(
        "report.recipients_csv_written",
        f"bulk-mms: wrote {count(n, 'recipient')} to {everyone}; not in it: "
        f"{count(summary.not_sent_yet, 'recipient')}"
        " not attempted "
        "(the ledger counts them, it does not name them)",
        path=str(everyone),
        recipients=n,
    )
