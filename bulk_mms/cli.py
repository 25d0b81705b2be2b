"""``bulk-mms``: a thin command line over :func:`bulk_mms.run_job` and the ledger report.

It parses arguments, loads the job and settings, configures logging, runs, and turns the result
or the error into one of the documented exit codes. Expected failures print one line on stderr,
never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import orjson
import structlog

from bulk_mms import fake_api, log
from bulk_mms._version import __version__
from bulk_mms.client import AiohttpMmsClient
from bulk_mms.config import (
    API_KEY_ENV,
    JobConfig,
    Settings,
    check_settings,
    load_job,
    load_settings,
    sends_key_in_clear,
)
from bulk_mms.delivery import DeliveryBook
from bulk_mms.errors import (
    BulkMmsError,
    ConfigError,
    FatalSendError,
    LedgerError,
)
from bulk_mms.ledger import fingerprint
from bulk_mms.media import check_media
from bulk_mms.progress import BarProgress, LogProgress, Progress
from bulk_mms.report import format_csv, format_text, summarize, write_failed_csv
from bulk_mms.runner import JobSummary, Stop, dry_run, in_window, run_job, seed_job
from bulk_mms.track import TrackResult, format_track, track_ledger
from bulk_mms.webhooks import PUBLIC_KEY_ENV, load_public_key, serve_webhooks

#: Exit codes that are not an error's own (documented in the README; an error that stops a
#: command exits with its class's ``exit_code``: 2, 3 or 75, see errors.py).
EXIT_OK = 0
EXIT_INCOMPLETE = 1  # finished, but some groups failed or are in doubt
EXIT_USAGE = 2  # bad usage, config, input or ledger; nothing sent
EXIT_WINDOW = 4  # outside the job's send_window, or it closed: resumable
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

#: Misbehaviours for ``run --sandbox`` to show (see ``fake_api.FAULT_PRESETS``).
SANDBOX_FAULTS_ENV = "BULK_MMS_SANDBOX_FAULTS"

_SIGNAL_EXIT = {"SIGINT": EXIT_SIGINT, "SIGTERM": EXIT_SIGTERM}
#: Seconds given to requests in flight after the first signal, beyond the request timeout.
DRAIN_GRACE_S = 5.0


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


def _format_flag(parser: argparse.ArgumentParser, choices: tuple[str, ...]) -> None:
    """``--format`` (table on a terminal, JSON otherwise), with ``--json`` as its alias."""
    parser.add_argument(
        "--format", choices=choices, help="table on a terminal, JSON otherwise (default)"
    )
    parser.add_argument(
        "--json",
        action="store_const",
        const="json",
        dest="format",
        help="the same as --format json",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bulk-mms", description="Send group MMS in bulk through the Telnyx Messaging API."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_flags(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="send a job (resumes from its ledger)", parents=[common])
    run.add_argument("job", type=Path, help="the job file (TOML)")
    run.add_argument("--config", type=Path, help=CONFIG_HELP)
    run.add_argument("--ledger", type=Path, help="ledger path (default: from the job)")
    run.add_argument(
        "--input",
        type=Path,
        help="send to this file instead of the job's input (e.g. a report --failed-csv file)",
    )
    run.add_argument(
        "--name",
        help="job name (default: the job's; with --input, the job's plus the file's stem and "
        "a short hash of it, so the resend has a ledger and a campaign of its own)",
    )
    run.add_argument(
        "--base-url", help=f"API base URL (default: ${'{'}TELNYX_BASE_URL{'}'} or the live API)"
    )
    run.add_argument("--rate", type=float, help="groups per second, account-wide")
    run.add_argument("--concurrency", type=int, help="requests in flight at once")
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
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="off a terminal, log a job.progress event this often (default 30)",
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

    track = sub.add_parser(
        "track", help="poll delivery statuses of a ledger's sent groups", parents=[common]
    )
    track.add_argument("ledger", type=Path)
    track.add_argument("--follow", action="store_true", help="keep polling until all are final")
    track.add_argument("--config", type=Path, help=CONFIG_HELP)
    track.add_argument("--base-url", help="API base URL (default: $TELNYX_BASE_URL or live)")
    track.add_argument(
        "--sandbox",
        action="store_true",
        help="ask the built-in fake API (a sandbox ledger's ids are unknown to it: reported 404)",
    )
    track.add_argument("--rate", type=float, help="GET requests per second")
    _format_flag(track, ("table", "json"))

    hooks = sub.add_parser(
        "webhooks", help="receive delivery webhooks into a ledger", parents=[common]
    )
    hooks.add_argument("ledger", type=Path, nargs="?", help="the ledger to record into")
    hooks.add_argument("--ledger", type=Path, dest="ledger_option", help=argparse.SUPPRESS)
    hooks.add_argument(
        "--listen",
        required=True,
        metavar="HOST:PORT",
        help="address to listen on, e.g. 0.0.0.0:8080",
    )

    report = sub.add_parser(
        "report", help="outcomes, delivery, cost and errors of a ledger", parents=[common]
    )
    report.add_argument("ledger", type=Path)
    _format_flag(report, ("table", "json", "csv"))
    report.add_argument(
        "--failed-csv",
        type=Path,
        metavar="PATH",
        help="write the recipients who did not get the message as a job input file",
    )

    status = sub.add_parser(
        "status", help="the same as report (kept for scripts)", parents=[common]
    )
    status.add_argument("ledger", type=Path)
    _format_flag(status, ("table", "json", "csv"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bulk-mms``; returns the exit code."""
    args = build_parser().parse_args(argv)
    log.configure(
        -1 if args.quiet else 1 if args.verbose else 0,
        json=True if args.log_json else None,
        no_color=args.no_color,
    )
    try:
        if args.command in ("status", "report"):
            return cmd_report(args)
        if args.command == "track":
            return cmd_track(args)
        if args.command == "webhooks":
            return cmd_webhooks(args)
        return cmd_run(args)
    except BulkMmsError as exc:
        return _fail(exc, exc.exit_code)
    except KeyboardInterrupt:
        print("bulk-mms: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except BrokenPipeError:
        # the reader of our output went away (`| head`): end quietly, as other tools do
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _fail(exc: BaseException, code: int) -> int:
    print(f"bulk-mms: error: {exc}", file=sys.stderr)
    return code


def cmd_report(args: argparse.Namespace) -> int:
    summary = summarize(args.ledger)
    fmt = args.format
    if fmt is None:
        # status keeps its documented table default for scripts that parse it
        fmt = "json" if args.command == "report" and not sys.stdout.isatty() else "table"
    if fmt == "json":
        sys.stdout.write(
            orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n"
        )
    elif fmt == "csv":
        sys.stdout.write(format_csv(summary))
    else:
        print(format_text(summary, args.ledger))
    failed_csv = getattr(args, "failed_csv", None)
    if failed_csv is not None:
        try:
            n, full = write_failed_csv(summary, failed_csv)
        except OSError as exc:
            raise LedgerError(failed_csv, f"cannot write: {exc.strerror or exc}") from None
        how = (
            "with their input rows" if full else "phone numbers only (the input is gone or changed)"
        )
        print(f"bulk-mms: wrote {n} recipients to {failed_csv} ({how})", file=sys.stderr)
    return EXIT_OK


#: Where the settings are looked for, first found wins (documented in the README).
CONFIG_ENV = "BULK_MMS_CONFIG"
CONFIG_HELP = (
    f"account settings (TOML; see config.example.toml). Default: ${CONFIG_ENV}, else "
    "./config.toml, else ~/.config/bulk-mms/config.toml, if there"
)


def find_config(given: Path | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The settings file: ``--config``, else ``$BULK_MMS_CONFIG``, else ``./config.toml``, else
    ``$XDG_CONFIG_HOME/bulk-mms/config.toml`` (``~/.config/...``), whichever comes first.

    A path given explicitly must exist (the loader says so); the defaults only if they do.
    """
    env = os.environ if env is None else env
    if given is not None:
        return given
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    home = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    for candidate in (Path("config.toml"), home / "bulk-mms" / "config.toml"):
        if candidate.is_file():
            return candidate
    return None


def _settings(args: argparse.Namespace) -> Settings:
    path = find_config(args.config)
    if path is not None and args.config is None:
        structlog.get_logger("bulk_mms.cli").info("config.found", path=str(path))
    settings = load_settings(path)
    if args.base_url:
        settings = replace(settings, base_url=args.base_url)
    if args.rate is not None:
        if args.command == "track":
            if not 0 < args.rate <= 1000:
                raise ConfigError("--rate", f"must be above 0 and at most 1000, not {args.rate:g}")
            settings = replace(settings, track=replace(settings.track, rate=args.rate))
        else:
            settings = replace(settings, rate=args.rate)
    if getattr(args, "concurrency", None) is not None:
        settings = replace(settings, concurrency=args.concurrency)
    return check_settings(settings)


def _api_key(args: argparse.Namespace) -> str:
    if args.sandbox:
        return "sandbox-key"
    key = os.environ.get(API_KEY_ENV, "")
    if not key.strip():
        raise ConfigError(API_KEY_ENV, "is not set: export your Telnyx API key (or use --sandbox)")
    if key != key.strip() or any(ch in key for ch in "\r\n\t "):
        raise ConfigError(API_KEY_ENV, "contains whitespace; check how it was exported")
    return key


def cmd_run(args: argparse.Namespace) -> int:
    job = load_job(args.job, name=args.name, input_file=args.input)
    if args.input is not None and args.name is None:
        job = load_job(args.job, name=_rerun_name(job.name, args.input), input_file=args.input)
    if args.to:
        if args.ledger is not None:
            raise ConfigError("--to", "a seed send has a ledger of its own: drop --ledger")
        job = seed_job(job, args.to, dt.datetime.now(dt.UTC))
    elif args.ledger is not None:
        job = replace(job, ledger=args.ledger)
    settings = _settings(args)
    _preflight_media(job, args)
    if args.dry_run:
        summary = asyncio.run(
            dry_run(job, settings, resend_in_doubt=args.resend_in_doubt, limit=args.limit)
        )
        return _print_dry_run(summary, job, settings)
    key = _api_key(args)
    if not args.yes and not args.sandbox and _interactive():
        plan = asyncio.run(
            dry_run(job, settings, resend_in_doubt=args.resend_in_doubt, limit=args.limit)
        )
        if plan.sent_groups and not _confirm(plan, job):
            print("bulk-mms: nothing sent (answered no)", file=sys.stderr)
            return EXIT_INCOMPLETE
    progress: Progress
    if sys.stderr.isatty() and not args.quiet and not args.log_json:
        progress = BarProgress(sys.stderr)
    else:
        progress = LogProgress(max(1.0, args.progress_every))
    summary = asyncio.run(
        _run(
            job,
            settings,
            key,
            sandbox=args.sandbox,
            resend=args.resend_in_doubt,
            progress=progress,
            limit=args.limit,
        )
    )
    return _exit_code(summary)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _interactive() -> bool:
    """Whether someone is at a terminal to answer a question (cron: never)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def _confirm(plan: JobSummary, job: JobConfig) -> bool:
    """Show what the run would send and ask; True only for a yes."""
    e = plan.estimate
    cost_time = f", {e.cost_text()}, at least {_duration(e.seconds)}" if e else ""
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


def _rerun_name(name: str, input_file: Path) -> str:
    """The job name for ``run --input FILE``: ``<name>-<stem>-<first 8 hex of the file's hash>``.

    The name picks the ledger, so a resend gets a ledger (and a campaign) of its own instead of
    tripping over the first send's; the hash gives each round of ``--failed-csv`` reruns its own
    (a second ``failed.csv`` differs from the first), while rerunning the same file resumes.
    """
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", input_file.stem).strip("-.") or "input"
    try:
        digest = fingerprint(input_file).removeprefix("sha256:")[:8]
    except OSError:
        return f"{name}-{stem}"[:100]  # unreadable: the run stops on it with its own message
    return f"{name}-{stem}"[:91] + f"-{digest}"


@contextlib.contextmanager
def _stop_on_signals(stop: Stop, grace: float, *, cancel_on_force: bool = False) -> Iterator[None]:
    """SIGINT/SIGTERM: the first asks ``stop`` (waits end at once, requests in flight finish)
    and forces it after ``grace`` s; a second forces it now (requests in flight are cancelled,
    every written line kept); a third cancels everything. ``cancel_on_force``: for work that
    has nothing in flight worth finishing (tracking), forcing cancels the task."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    log = structlog.get_logger("bulk_mms.cli")
    signals: list[str] = []

    def force(name: str) -> None:
        stop.force(name)
        if cancel_on_force:
            task.cancel()

    def on_signal(name: str) -> None:
        signals.append(name)
        if len(signals) == 1:
            log.warning("job.stopping", signal=name)
            stop.request(name)
            loop.call_later(grace, force, name)
        elif len(signals) == 2:
            log.warning("job.cancelled", signal=name)
            force(name)
        else:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            if signals:
                # already on the way out with the code a signal gives: another Ctrl-C must not
                # turn the clean exit into a KeyboardInterrupt
                signal.signal(sig, signal.SIG_IGN)


def _client(settings: Settings, base_url: str, key: str) -> AiohttpMmsClient:
    if sends_key_in_clear(base_url):
        structlog.get_logger("bulk_mms.cli").warning(
            "config.cleartext_base_url",
            base_url=base_url,
            hint="plain http to a host that is not this machine: the API key would cross the "
            "network unencrypted; use https",
        )
    return AiohttpMmsClient(
        base_url,
        key,
        connect_timeout=settings.connect_timeout,
        request_timeout=settings.request_timeout,
        max_connections=settings.concurrency,
    )


async def _run(
    job: JobConfig,
    settings: Settings,
    key: str,
    *,
    sandbox: bool,
    resend: bool,
    progress: Progress | None = None,
    limit: int | None = None,
) -> JobSummary:
    stop = Stop()
    try:
        with _stop_on_signals(stop, settings.request_timeout + DRAIN_GRACE_S):
            async with (
                _endpoint(settings, sandbox) as base_url,
                _client(settings, base_url, key) as client,
            ):
                return await run_job(
                    job,
                    settings,
                    client,
                    resend_in_doubt=resend,
                    stop=stop,
                    progress=progress,
                    limit=limit,
                )
    except asyncio.CancelledError:
        return JobSummary(job.name, stopped=stop.reason or "SIGINT")


def _preflight_media(job: JobConfig, args: argparse.Namespace) -> None:
    """Fetch each media URL once before anything is sent (MediaError: exit 2, nothing sent)."""
    urls = job.message.media_urls
    if not urls:
        return
    if args.skip_media_check or args.sandbox:
        reason = "--skip-media-check" if args.skip_media_check else "sandbox (media is not sent)"
        structlog.get_logger("bulk_mms.cli").info("media.check_skipped", reason=reason)
        return
    asyncio.run(check_media(urls))


def cmd_track(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.sandbox:  # the sandbox's carrier finishes in seconds: ask every second, not 30
        settings = replace(settings, track=replace(settings.track, interval=1.0, max_interval=2.0))
    key = _api_key(args)
    result = asyncio.run(
        _track(args.ledger, settings, key, follow=args.follow, sandbox=args.sandbox)
    )
    if result.error is not None:
        return _fail(result.error, _exit_for(result.error))
    fmt = args.format or ("table" if sys.stdout.isatty() else "json")
    if fmt == "json":
        sys.stdout.write(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_track(result, args.ledger))
    if result.stopped in _SIGNAL_EXIT:
        return _SIGNAL_EXIT[result.stopped]
    trouble = result.not_found or result.unlisted or result.errors
    return EXIT_INCOMPLETE if trouble or (args.follow and result.pending) else EXIT_OK


async def _track(
    path: Path, settings: Settings, key: str, *, follow: bool, sandbox: bool = False
) -> TrackResult:
    stop = Stop()
    try:
        with _stop_on_signals(stop, settings.request_timeout + DRAIN_GRACE_S, cancel_on_force=True):
            async with (
                _endpoint(settings, sandbox, ledger=path) as base_url,
                _client(settings, base_url, key) as client,
            ):
                return await track_ledger(path, settings, client, follow=follow, stop=stop)
    except asyncio.CancelledError:
        return TrackResult(stopped=stop.reason or "SIGINT")
    except FatalSendError as exc:
        return TrackResult(error=exc)


@contextlib.asynccontextmanager
async def _endpoint(
    settings: Settings, sandbox: bool, *, ledger: Path | None = None
) -> AsyncIterator[str]:
    """The API's base URL: the configured one, or a sandbox started here for the command.

    For ``track --sandbox`` the sandbox first learns the ledger's sent groups (their run had
    a sandbox of its own), and reports them through a carrier timeline: queued, sent, then
    delivered, or delivery_failed for one number in seven, over a few seconds.
    """
    if not sandbox:
        yield settings.base_url
        return
    fake = fake_api.FakeTelnyx()
    if ledger is not None:
        fake.delivery_status = fake_api.carrier_timeline(fail_every=7, final_after=3.0)
        now = time.time()
        for g in DeliveryBook.load(ledger).groups.values():
            fake.adopt(g.message_id, g.sender or "", g.to, max(0.0, now - g.sent_at))
    try:
        fake.faults.extend(fake_api.parse_faults(os.environ.get(SANDBOX_FAULTS_ENV, "")))
    except ValueError as exc:
        raise ConfigError(SANDBOX_FAULTS_ENV, str(exc)) from None
    async with fake_api.serve(fake) as url:
        structlog.get_logger("bulk_mms.cli").info(
            "sandbox.started", base_url=url, faults=len(fake.faults)
        )
        yield url


def _exit_for(exc: BaseException) -> int:
    """The exit code of an error that stopped the work: its class's own (see errors.py)."""
    return exc.exit_code if isinstance(exc, BulkMmsError) else EXIT_USAGE


def cmd_webhooks(args: argparse.Namespace) -> int:
    host, sep, port_text = args.listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError("--listen", f"{args.listen!r} is not HOST:PORT (e.g. 0.0.0.0:8080)")
    ledger = args.ledger or args.ledger_option
    if ledger is None:
        raise ConfigError("LEDGER", "name the ledger to record into: bulk-mms webhooks LEDGER")
    key = load_public_key(os.environ.get(PUBLIC_KEY_ENV))

    async def serve() -> None:
        stop = Stop()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.request, sig.name)
        try:
            await serve_webhooks(
                ledger,
                host.strip("[]") or "0.0.0.0",  # noqa: S104 - ":PORT" asks for every interface
                int(port_text),
                key,
                stop,
            )
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(serve())
    return EXIT_OK


def _exit_code(s: JobSummary) -> int:
    if s.error is not None:
        return _fail(s.error, _exit_for(s.error))
    if s.stopped == "window":
        print(
            f"bulk-mms: send window closed: {s.sent_groups} groups sent this run; "
            "the next run inside the window resumes",
            file=sys.stderr,
        )
        return EXIT_WINDOW
    if s.stopped in _SIGNAL_EXIT:
        print(
            f"bulk-mms: stopped by {s.stopped}: {s.sent_groups} groups sent this run; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return _SIGNAL_EXIT[s.stopped]
    print(
        f"{s.job}: sent {s.sent_groups} groups ({s.sent_recipients} recipients), "
        f"failed {s.failed_groups}, in doubt {s.in_doubt_groups}, rejected rows {s.rejected_rows}, "
        f"already done {s.skipped_groups}, held in doubt {s.held_groups}"
    )
    _print_template_notes(s)
    if s.achieved_rate is not None:
        print(
            f"{s.job}: {s.achieved_rate:.2f} requests/s; wait_seconds p50 {s.wait_seconds_p50} "
            f"p95 {s.wait_seconds_p95} max {s.wait_seconds_max}; 429s {s.rate_limited} "
            f"(queue full {s.queue_full})"
        )
    if s.stopped == "limit":
        print(
            f"bulk-mms: --limit reached: {s.sent_groups} groups sent this run; a run without "
            "--limit sends the rest",
            file=sys.stderr,
        )
    if s.stopped == "deadline":
        print(
            f"bulk-mms: stopped at max_job_duration_s: {s.sent_groups} groups sent this run; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    incomplete = s.open_failed or s.open_in_doubt or s.retry_later_groups
    return EXIT_INCOMPLETE if incomplete else EXIT_OK


def _print_dry_run(s: JobSummary, job: JobConfig, settings: Settings) -> int:
    print(f"dry run of {job.name}: nothing was sent")
    print(f"  would send   {s.sent_groups} groups, {s.sent_recipients} recipients")
    print(f"  rejected     {s.rejected_rows} rows")
    print(f"  grouping     {job.grouping}")
    _print_template_notes(s, prefix="  templates    ")
    print(f"  already done {s.skipped_groups} groups, held in doubt {s.held_groups}")
    e = s.estimate
    if e is not None:
        unit = "recipients" if settings.cost == "recipient" else "groups"
        print(f"  duration     at least {_duration(e.seconds)} at {e.rate:g} {unit}/s")
        print(f"  cost         {e.cost_text()}")
    if job.send_window is not None:
        now = "open" if in_window(job, dt.datetime.now(dt.UTC)) else "closed: a run now exits 4"
        print(f"  window       {job.send_window} {job.timezone}, {now}")
    if s.locked_by is not None:
        print(f"  ledger       held by a run now (PID {s.locked_by}): a run now exits 75")
    media = ", media URLs" if job.message.media_urls else ""
    print(f"  checked      job, settings, input{media}, ledger (its job, input, grouping, lock)")
    print(
        "  not checked  the API key and the API's answers (a dry run sends nothing); "
        "try run --to YOUR_NUMBER, or --limit 1"
    )
    for g in s.preview:
        text = (g.message.text or "")[:60]
        print(f"  group {g.seq} [{g.id}] {', '.join(g.to)}: {text!r}")
    return EXIT_OK


def _print_template_notes(s: JobSummary, prefix: str | None = None) -> None:
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


def _duration(seconds: float) -> str:
    """``3 h 25 min``, ``12 min 5 s``, ``40 s``."""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h} h {m} min"
    return f"{m} min {sec} s" if m else f"{sec} s"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
