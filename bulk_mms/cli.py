"""``bulk-mms``: a thin command line over :func:`bulk_mms.run_job` and the ledger report.

It parses arguments, loads the job and settings, configures logging, runs, and turns the result
or the error into one of the documented exit codes. Expected failures print one line on stderr,
never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from bulk_mms import commands, console, log
from bulk_mms._version import __version__
from bulk_mms.commands import CONFIG_HELP, LEDGER_URL_ENV, find_config
from bulk_mms.config import Settings
from bulk_mms.config._toml import Bounds
from bulk_mms.console import fail, say
from bulk_mms.errors import BulkMmsError, Exit, MissingExtra
from bulk_mms.extras import needs
from bulk_mms.filenames import file_name_problem
from bulk_mms.ledger import Location, location

__all__ = ["EXIT_WINDOW", "build_parser", "find_config", "main"]

if TYPE_CHECKING:  # generic only to the type checker
    #: What ``add_subparsers`` returns.
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

LEDGER_HELP = "a JSONL ledger file, or postgresql://USER@HOST/DB?ledger=NAME"
#: The defaults a flag's help names: the settings' own.
_DEFAULTS = Settings()
BASE_URL_HELP = (
    "API base URL (default: $TELNYX_BASE_URL, else the settings' [api] base_url, else the live API)"
)

#: ``run --progress-every``: seconds between two ``job.progress`` events.
PROGRESS_EVERY = Bounds(1, 86_400)

#: For scripts and tests that name it (the table is :class:`bulk_mms.errors.Exit`).
EXIT_WINDOW = Exit.WINDOW


def _global_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The flags every command takes, before or after its name (``-v run`` or ``run -v``).

    On the subcommands they default to SUPPRESS, so a flag given before the name is not reset.
    """
    default: object = False if defaults else argparse.SUPPRESS
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log every group"
    )
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="log warnings and errors"
    )
    parser.add_argument(
        "--log-json", action="store_true", default=default, help="JSON log lines on a terminal too"
    )
    parser.add_argument(
        "--no-color", action="store_true", default=default, help="no colors (also: NO_COLOR set)"
    )


def _format_flag(
    parser: argparse.ArgumentParser,
    choices: tuple[str, ...],
    default: str = "table on a terminal, JSON otherwise (default)",
) -> None:
    """``--format`` (``default`` says what it is when not given), with ``--json`` as its
    alias."""
    parser.add_argument("--format", choices=choices, help=default)
    parser.add_argument(
        "--json",
        action="store_const",
        const="json",
        dest="format",
        help="the same as --format json",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line naming the argument (no usage block; one
    JSON object under ``--log-json``, the usage beside it), exit 2. ``--help`` is argparse's.
    Private."""

    def error(self, message: str) -> NoReturn:
        say(
            "command.usage_error",
            f"{self.prog}: error: {message} (see {self.prog} --help)",
            level="error",
            usage=self.format_usage().strip(),
            exit_code=int(Exit.USAGE),
        )
        sys.exit(Exit.USAGE)


def build_parser() -> argparse.ArgumentParser:
    # typed as argparse's own: its subparsers are _Parser too (argparse makes them its type)
    parser: argparse.ArgumentParser = _Parser(
        prog="bulk-mms", description="Send group MMS in bulk through the Telnyx Messaging API."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_flags(parser, defaults=True)
    common = _Parser(add_help=False)
    _global_flags(common, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run_parser(sub, common)
    _ledger_parsers(sub, common)
    _admin_parsers(sub, common)
    return parser


def _run_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    run = sub.add_parser("run", help="send a job (resumes from its ledger)", parents=[common])
    run.add_argument("job", type=_path, help="the job file (TOML)")
    run.add_argument("--config", type=_path, help=CONFIG_HELP)
    run.add_argument(
        "--ledger",
        type=_ledger,
        help="ledger: a JSONL path, or postgresql://USER@HOST/DB[?ledger=NAME] (default: "
        f"${LEDGER_URL_ENV}, else the job's)",
    )
    run.add_argument(
        "--input",
        type=_path,
        help="send to this file instead of the job's input (e.g. a report --failed-csv file)",
    )
    run.add_argument(
        "--name",
        help="job name (default: the job's; with --input, the job's plus the file's stem and "
        "a short hash of it, so the resend has a ledger and a campaign of its own)",
    )
    run.add_argument("--base-url", help=BASE_URL_HELP)
    run.add_argument(
        "--rate",
        type=float,
        help='groups per second, account-wide (recipients with [limits] cost = "recipient"); '
        f"default: the settings' [limits] rate, else {_DEFAULTS.rate:g}",
    )
    run.add_argument(
        "--concurrency",
        type=int,
        help="requests in flight at once; default: the settings' [limits] concurrency, else "
        f"{_DEFAULTS.concurrency}",
    )
    run.add_argument(
        "--sandbox", action="store_true", help="send to the built-in fake API (no key needed)"
    )
    run.add_argument("--dry-run", action="store_true", help="read, check and group; send nothing")
    run.add_argument(
        "--skip-media-check",
        action="store_true",
        help="do not fetch media_urls before sending (they are checked by default)",
    )
    run.add_argument(
        "--progress-every",
        type=lambda text: _within(PROGRESS_EVERY, text),
        default=30.0,
        metavar="SECONDS",
        help="off a terminal, log a job.progress event this often (default 30; 1 to 86400)",
    )
    run.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        help="send only the next N groups (a rehearsal); a later run sends the rest",
    )
    run.add_argument(
        "--to",
        action="append",
        metavar="NUMBER",
        help="seed send: the job's message, rendered as for its first rows, to these numbers "
        "only (repeatable, up to 8), in a ledger of its own; the campaign is untouched",
    )
    run.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="do not ask before sending (the question is only asked on a terminal)",
    )
    run.add_argument(
        "--resend-in-doubt",
        action="store_true",
        help="also send groups an earlier run left in doubt (they may arrive twice)",
    )
    run.add_argument(
        "--exclude-sent",
        type=_ledger,
        action="append",
        default=[],
        metavar="LEDGER",
        help="skip every number this ledger records sent, or a resend of its failed file "
        "took (repeatable): after fixing an input, or moving a campaign to a new ledger, "
        "nobody is texted twice",
    )
    run.add_argument(
        "--rejected-csv",
        type=_path,
        metavar="PATH",
        help="write every input row rejected, a duplicate or excluded (line, value, reason) "
        "to this CSV",
    )
    _metrics_flag(run)


def _metrics_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-file",
        type=_path,
        metavar="PATH",
        help="when done, write Prometheus metrics here (node_exporter's textfile collector)",
    )


def _ledger_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """The commands that work on a ledger: track, webhooks, report, status."""
    track = sub.add_parser(
        "track", help="poll delivery statuses of a ledger's sent groups", parents=[common]
    )
    track.add_argument("ledger", type=_ledger, help=LEDGER_HELP)
    track.add_argument(
        "--follow",
        action="store_true",
        help="keep polling until all are final and no run of the ledger is live",
    )
    track.add_argument("--config", type=_path, help=CONFIG_HELP)
    track.add_argument("--base-url", help=BASE_URL_HELP)
    track.add_argument(
        "--sandbox",
        action="store_true",
        help="ask the built-in fake API, which knows a sandbox run's messages (its ledger only)",
    )
    track.add_argument(
        "--rate",
        type=float,
        help="GET requests per second; default: the settings' [track] rate, else "
        f"{_DEFAULTS.track.rate:g}",
    )
    _format_flag(track, ("table", "json"))
    _metrics_flag(track)

    hooks = sub.add_parser(
        "webhooks",
        help="receive delivery webhooks into a ledger, or into a job's ledgers of each day",
        parents=[common],
    )
    hooks.add_argument("ledger", type=_ledger, nargs="?", help=LEDGER_HELP)
    hooks.add_argument("--ledger", type=_ledger, dest="ledger_option", help=argparse.SUPPRESS)
    hooks.add_argument(
        "--job",
        type=_path,
        metavar="JOB.toml",
        help="instead of LEDGER: record into the job's ledgers; for a ledger named with "
        "{date} (a new one each day), today's and those of the days before whose messages "
        "may still be reported on (docs/tracking.md), each report into the one that sent "
        "its message; a day's ledger is taken in once its first run has begun it",
    )
    hooks.add_argument(
        "--listen",
        required=True,
        metavar="HOST:PORT",
        help="address to listen on, e.g. 0.0.0.0:8080",
    )
    hooks.add_argument("--config", type=_path, help=CONFIG_HELP + " (its [suppression] file)")

    report = sub.add_parser(
        "report", help="outcomes, delivery, cost and errors of a ledger", parents=[common]
    )
    report.add_argument("ledger", type=_ledger, help=LEDGER_HELP)
    _format_flag(report, ("table", "json", "csv"))
    report.add_argument(
        "--failed-csv",
        type=_path,
        metavar="PATH",
        help="write the recipients no rerun will send (refused for good, or whose delivery "
        "failed for good) as a job input file; not those who opted out, those the deadline "
        "left unsent, nor those an earlier resend of this campaign tried or holds",
    )
    report.add_argument(
        "--rejected-csv",
        type=_path,
        metavar="PATH",
        help="write the input rows the ledger records rejected as losses (bad numbers, broken "
        "rows; not duplicates, suppressed or excluded numbers): line,value,reason",
    )
    report.add_argument(
        "--recipients-csv",
        type=_path,
        metavar="PATH",
        help="write one row per recipient: phone, group, state, delivery status, error, cost",
    )
    report.add_argument(
        "--html",
        type=_path,
        metavar="PATH",
        help="also write the report as one self-contained HTML page with charts",
    )

    status = sub.add_parser(
        "status", help="the same as report (kept for scripts)", parents=[common]
    )
    status.add_argument("ledger", type=_ledger, help=LEDGER_HELP)
    _format_flag(status, ("table", "json", "csv"), default="table, even piped (default)")


def _admin_parsers(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """``db migrate``, ``ledger copy`` and ``suppress``."""
    db = sub.add_parser("db", help="the PostgreSQL ledger database", parents=[common])
    db_sub = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    migrate = db_sub.add_parser("migrate", help="create or upgrade the schema", parents=[common])
    migrate.add_argument(
        "url", nargs="?", help=f"postgresql://USER@HOST/DB (default: ${LEDGER_URL_ENV})"
    )
    ledger = sub.add_parser("ledger", help="move ledgers between stores", parents=[common])
    ledger_sub = ledger.add_subparsers(dest="action", required=True, metavar="ACTION")
    copy = ledger_sub.add_parser(
        "copy", help="copy a ledger: JSONL to PostgreSQL or back", parents=[common]
    )
    copy.add_argument("source", type=_ledger, help=LEDGER_HELP)
    copy.add_argument("target", type=_ledger, help="a new ledger: " + LEDGER_HELP)
    suppress = sub.add_parser(
        "suppress", help="the account's suppression list ([suppression] file)", parents=[common]
    )
    suppress.add_argument("action", choices=("add", "remove", "list"))
    suppress.add_argument("numbers", nargs="*", metavar="NUMBER")
    suppress.add_argument("--config", type=_path, help=CONFIG_HELP)
    suppress.add_argument("--reason", default="added by hand", help="a note kept beside each")
    suppress.add_argument(
        "--ledger", type=_ledger, help="a postgresql:// ledger: the database's own list"
    )
    optouts = sub.add_parser(
        "optouts", help="the messaging profile's opt-outs (STOP)", parents=[common]
    )
    optouts.add_argument("action", choices=("sync",), help="add them to the suppression list")
    optouts.add_argument("--config", type=_path, help=CONFIG_HELP)
    optouts.add_argument(
        "--ledger", type=_ledger, help="a postgresql:// ledger: the database's own list"
    )
    optouts.add_argument("--base-url", help=BASE_URL_HELP)
    optouts.add_argument(
        "--sandbox", action="store_true", help="ask the built-in fake API (no key needed)"
    )


def entry() -> int:
    """The ``bulk-mms`` program: :func:`main` in a process of its own, with the cycle
    collector tuned for a run's many short-lived objects and few cycles: what the imports
    made is frozen out of its sight, and the youngest generation is collected every 10,000
    allocations rather than 700 (docs/performance.md). Not done in :func:`main`, which tests
    and embedders call in their own processes."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    _null_for_closed_streams()
    return main()


def _null_for_closed_streams() -> None:
    """Give a standard stream the process was started without (``>&-``, ``<&-``: Python
    makes it None) the null device: what the command says there is dropped, the question it
    asks reads no answer, and no file it opens takes the stream's descriptor."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        if getattr(sys, name) is not None:
            continue
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        setattr(sys, name, open(fd, mode, encoding="utf-8", closefd=False))  # noqa: SIM115


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bulk-mms``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # before parsing, so that argparse's own errors are JSON too
    console.use_json("--log-json" in argv)
    args = build_parser().parse_args(argv)
    log.configure(
        -1 if args.quiet else 1 if args.verbose else 0,
        json=True if args.log_json else None,
        no_color=args.no_color,
    )
    path = getattr(args, "metrics_file", None)
    args.metrics = None
    if path is not None:
        try:
            with needs("metrics", "--metrics-file"):
                from bulk_mms.metrics import CommandMetrics  # noqa: PLC0415 - prometheus_client
        except MissingExtra as exc:
            return fail(exc, exc.exit_code)
        args.metrics = CommandMetrics(path, args.command)
    code = _command(args)
    if args.metrics is not None:  # whatever the outcome: monitoring must hear of a failure
        try:
            args.metrics.write(code)
        except BulkMmsError as exc:
            return fail(exc, code or exc.exit_code)
    return code


def _command(args: argparse.Namespace) -> int:
    try:
        commands.refuse_overwrites(args)  # the files it names; the job's, once it is loaded
        with console.reader_may_leave() as stdout:
            code = COMMANDS[args.command](args)
    except BulkMmsError as exc:
        return fail(exc, exc.exit_code)
    except KeyboardInterrupt:
        say("command.interrupted", "bulk-mms: interrupted", level="warning")
        return Exit.SIGINT
    except BrokenPipeError:
        # the reader of our output went away (`| head`): end quietly, as other tools do
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.OK
    if stdout.lost is not None:  # the command's work stands; what it printed did not
        return fail(stdout.lost, code or stdout.lost.exit_code)
    return code


COMMANDS = {
    "run": commands.cmd_run,
    "track": commands.cmd_track,
    "webhooks": commands.cmd_webhooks,
    "report": commands.cmd_report,
    "status": commands.cmd_report,
    "db": commands.cmd_db,
    "ledger": commands.cmd_ledger,
    "suppress": commands.cmd_suppress,
    "optouts": commands.cmd_optouts,
}


def _ledger(text: str) -> Location:
    """A ledger argument (:func:`~bulk_mms.ledger.location`), refused as a usage error."""
    try:
        return location(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _path(text: str) -> Path:
    """A file's path, refused as a usage error when it cannot be a file name here
    (:func:`~bulk_mms.filenames.file_name_problem`)."""
    if (problem := file_name_problem(text)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def _within(bounds: Bounds, text: str) -> float:
    """A number flag in ``bounds`` (not nan, nor infinite), refused as a usage error naming
    the bound, as the setting the flag stands for would be (:class:`Bounds`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not bounds.lo <= value <= bounds.hi:
        raise argparse.ArgumentTypeError(bounds.refusal(value))
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


if __name__ == "__main__":  # pragma: no cover
    sys.exit(entry())
