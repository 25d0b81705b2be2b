"""The commands: each turns parsed arguments into a run, a tracking pass, a webhook receiver or a
report, and returns the exit code. Long commands stop through the one signal path
(:func:`bulk_mms.signals.stopping_on_signals`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import os
import re
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

import orjson
import structlog
from msgspec.structs import replace

from bulk_mms.client import AiohttpMmsClient
from bulk_mms.clock import SystemClock, utc
from bulk_mms.config import (
    API_KEY_ENV,
    JobConfig,
    Settings,
    cap_concurrency,
    check_settings,
    load_job,
    load_settings,
    sends_key_in_clear,
)
from bulk_mms.config.folders import (
    SANDBOX_FOLDER,
    is_sandbox_ledger,
    sandbox_ledger,
    sandbox_list,
    user_folder,
)
from bulk_mms.console import (
    SIGNAL_EXIT,
    confirm,
    exit_for,
    fail,
    interactive,
    print_dry_run,
    run_outcome,
    say,
)
from bulk_mms.csvfile import check_output, is_ledger
from bulk_mms.errors import (
    AmbiguousSendError,
    ApiUnavailable,
    ConfigError,
    Exit,
    FatalSendError,
    LedgerError,
    MissingExtra,
    RetryableSendError,
)
from bulk_mms.extras import needs
from bulk_mms.ledger import (
    Location,
    copy_ledger,
    display,
    load,
    location,
    migrate_database,
    named,
)
from bulk_mms.media import check_media
from bulk_mms.prepare import continues_earlier, dry_run, seed_job, sent_numbers
from bulk_mms.progress import BarProgress, LogProgress, Progress
from bulk_mms.reader import fingerprint
from bulk_mms.recipient_lists import (
    lists_nobody,
    write_failed_csv,
    write_recipients_csv,
    write_rejected_csv,
)
from bulk_mms.report import format_csv, format_text, summarize
from bulk_mms.retry import fetch_with_retry
from bulk_mms.runner import run_job
from bulk_mms.signals import Stop, stopping_on_signals
from bulk_mms.summary import JobSummary
from bulk_mms.suppression import parse_numbers, suppression_for
from bulk_mms.track import TrackResult, format_track, track_ledger
from bulk_mms.words import count

if TYPE_CHECKING:
    from bulk_mms.fake_api import FakeTelnyx

#: A database for the ledger of every run that names none on the command line.
LEDGER_URL_ENV = "BULK_MMS_LEDGER_URL"
#: Misbehaviours for ``run --sandbox`` to show (see ``fake_api.FAULT_PRESETS``).
SANDBOX_FAULTS_ENV = "BULK_MMS_SANDBOX_FAULTS"
#: Seconds given to requests in flight after the first signal, beyond the request timeout.
DRAIN_GRACE_S = 5.0


def cmd_run(args: argparse.Namespace) -> int:
    if args.metrics is not None:  # the job's name once the job is read; its file until then
        args.metrics.name = str(args.job)
    if args.input is not None and lists_nobody(args.input):  # a resend after a good night
        say(
            "run.nobody_to_resend",
            f"bulk-mms: {args.input} lists nobody (report --failed-csv found no one to resend): "
            "nothing sent",
            input=str(args.input),
        )
        return Exit.OK
    job, settings = _job_and_settings(args)
    _refuse_daily_cap_with_dated_ledger(job, settings)
    _preflight_media(job, args)
    args.excluded = sent_numbers(args.exclude_sent, in_doubt_ok=args.resend_in_doubt)
    if args.dry_run:
        if not args.sandbox:
            _warn_cleartext(settings.base_url)
        return print_dry_run(_plan(job, settings, args), job, settings)
    key = _api_key(args)
    if not args.yes and not args.sandbox and interactive():
        plan = _plan(job, settings, args)
        if plan.sent_groups and not confirm(plan, job):
            say("run.declined", "bulk-mms: nothing sent (answered no)", job=job.name)
            return Exit.INCOMPLETE
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
            excluded=args.excluded,
            rejected_csv=args.rejected_csv,
        )
    )
    if args.metrics is not None:
        args.metrics.summary = summary
    return run_outcome(summary)


def sealed(settings: Settings) -> Settings:
    """The settings for a sandbox command: the sandbox's own suppression list (its opt-out
    rule refuses numbers ending in 0300), never the account's, whatever the settings name."""
    return replace(settings, suppression_file=sandbox_list())


def _with_ledger(job: JobConfig, where: Location) -> JobConfig:
    """The job with its ledger somewhere else (``--ledger``, ``BULK_MMS_LEDGER_URL``): that
    one every day (:meth:`~bulk_mms.config.job.JobConfig.ledger_on`)."""
    if isinstance(where, Path):
        return replace(job, ledger=where, database=None, ledger_template=None)
    return replace(job, database=str(named(where, job.name)), ledger_template=None)


def _plan(job: JobConfig, settings: Settings, args: argparse.Namespace) -> JobSummary:
    """What a run would do now (a dry run)."""
    return asyncio.run(
        dry_run(
            job,
            settings,
            resend_in_doubt=args.resend_in_doubt,
            limit=args.limit,
            excluded=args.excluded,
            rejected_csv=args.rejected_csv,
        )
    )


def _finish_yesterdays(job: JobConfig, args: argparse.Namespace) -> JobConfig:
    """The job with the previous day's ``{date}`` ledger (a file, or a database's named
    ledger) when the run belongs there (:func:`~bulk_mms.prepare.continues_earlier`): a
    campaign cut at midnight is finished, not sent again to everyone under a new date."""
    now = utc(SystemClock())
    earlier = load_job(
        args.job, name=job.name, input_file=args.input, now=now - dt.timedelta(days=1)
    )
    yesterday = sandbox_ledger(earlier.ledger) if args.sandbox else earlier.where
    if not continues_earlier(job, yesterday, now):
        return job
    structlog.get_logger(__name__).info(
        "ledger.continued", ledger=display(yesterday), instead_of=display(job.where)
    )
    if isinstance(yesterday, Path):
        return replace(job, ledger=yesterday)
    return replace(job, database=yesterday)


def _refuse_daily_cap_with_dated_ledger(job: JobConfig, settings: Settings) -> None:
    """A daily cap cuts a campaign short for the next day to finish; a ``{date}`` ledger
    would start the list anew each day instead (the first people texted daily, the rest
    never). The combination is refused, saying what to write instead."""
    if settings.daily_recipients is not None and job.dated_ledger:
        raise ConfigError(
            "ledger",
            "holds {date}, and [limits] daily_recipients is set: each day would start the list "
            "again from the top; name the ledger without {date} (e.g. "
            '"ledgers/{name}.jsonl") so the next day continues where the cap stopped, or '
            "give each day's campaign a job name of its own",
            source=job.path,
        )


def _refuse_undated_database(job: JobConfig, where: Location, setting: str) -> None:
    """A job whose ledger is a new one each day (``{date}``) refuses a database ledger given
    without a name (``--ledger``, ``BULK_MMS_LEDGER_URL``): it would be named after the job
    alone, so the second day would find the first day's campaign (another input: refused; the
    same input: nothing left, exit 0, and nobody texted that day).

    Raises:
        ConfigError: naming ``setting`` and what to write instead (exit 2).
    """
    if not job.dated_ledger or not isinstance(where, str) or named(where, job.name) == where:
        return
    raise ConfigError(
        setting,
        "names a database ledger with no date, and the job's ledger holds {date} (a new "
        "campaign each day): put the database in the job, ledger = "
        '"postgresql://...?ledger={name}-{date}", or name one ledger for every day with '
        "?ledger=NAME",
        source=job.path,
    )


def _job_and_settings(args: argparse.Namespace) -> tuple[JobConfig, Settings]:
    """The job as ``run``'s flags leave it (``--input``, ``--name``, ``--ledger``, the
    sandbox's own folder and list, the previous date's unfinished ledger, ``--to``), and the
    settings.

    Raises:
        ConfigError: a setting is wrong, the ledger file holds something else, or a file the
            run would write is one it must keep (:func:`refuse_overwrites`); nothing written.
    """
    job = load_job(args.job, name=args.name, input_file=args.input)
    if args.input is not None and args.name is None:
        job = load_job(args.job, name=_rerun_name(job.name, args.input), input_file=args.input)
    if args.metrics is not None:  # a sandbox run's series never pass for the real job's
        args.metrics.name = f"{job.name}-sandbox" if args.sandbox else job.name
    if args.to and args.ledger is not None:
        raise ConfigError("--to", "a seed send has a ledger of its own: drop --ledger")
    if (where := args.ledger or os.environ.get(LEDGER_URL_ENV) or None) is not None:
        flag = "--ledger" if args.ledger else LEDGER_URL_ENV
        try:
            given = location(where)
        except ValueError as exc:
            raise ConfigError(flag, str(exc)) from None
        if not args.sandbox:  # a sandbox run's ledger is never a database
            _refuse_undated_database(job, given, flag)
        job = _with_ledger(job, given)
    settings = settings_for(args)
    if args.sandbox:  # sealed: its own ledgers' folder (never a database) and list
        job = replace(job, ledger=sandbox_ledger(job.ledger), database=None)
        settings = sealed(settings)
    if where is None and job.dated_ledger:
        job = _finish_yesterdays(job, args)
    _check_ledger_file(
        "--ledger" if args.ledger else LEDGER_URL_ENV if where else "ledger", job.where
    )
    refuse_overwrites(
        args,
        [
            ("the job's input", job.input),
            ("the job's ledger", job.where),
            ("the job file's input", _file_input(args)),
        ],
        writes=[("suppression.file", settings.suppression_file)],
    )
    if args.to:
        job = seed_job(job, args.to, utc(SystemClock()))
    return job, settings


#: The options that name a file a command writes: (option, its attribute on the arguments).
OUTPUT_OPTIONS: Final = (
    ("--rejected-csv", "rejected_csv"),
    ("--failed-csv", "failed_csv"),
    ("--recipients-csv", "recipients_csv"),
    ("--html", "html"),
    ("--metrics-file", "metrics_file"),
)
#: The files a command line names that no output may replace: (attribute, what it is).
_NAMED_FILES: Final = (
    ("job", "the job file"),
    ("input", "the input given to --input"),
    ("ledger", "the ledger given on the command line"),
    ("exclude_sent", "a ledger given to --exclude-sent"),
)


def refuse_overwrites(
    args: argparse.Namespace,
    keep: Iterable[tuple[str, Location | None]] = (),
    *,
    writes: Iterable[tuple[str, Path | None]] = (),
) -> None:
    """Refuse, before anything is read, sent or written, every file the command would write
    (its output options, and ``writes``: (setting, path) of the settings' files it writes)
    when it is a file to keep: one the command line names (the job file, the settings, a
    ledger, ``--input``), one of ``keep`` ((what it is, where): the job's input and ledger),
    another output's file, or any bulk-mms ledger (:func:`~bulk_mms.csvfile.check_output`).

    Raises:
        ConfigError: naming the option or setting and the path (exit 2). A refused
            ``--metrics-file`` is then not written either (``args.metrics`` is dropped).
    """
    kept = [(what, p) for what, p in [*_named_files(args), *keep] if isinstance(p, Path)]
    outputs = [(flag, getattr(args, attr, None)) for flag, attr in OUTPUT_OPTIONS]
    for option, path in [*writes, *outputs]:
        if path is None:
            continue
        try:
            check_output(option, path, kept)
        except ConfigError:
            if option == "--metrics-file":
                args.metrics = None
            raise
        kept.append((f"the file {option} names", path))  # one file, two outputs: one lost


def _named_files(args: argparse.Namespace) -> list[tuple[str, Location | None]]:
    """The files the command line names, and the settings file (:func:`find_config`)."""
    named_: list[tuple[str, Location | None]] = []
    for attr, what in _NAMED_FILES:
        value = getattr(args, attr, None)
        named_ += [(what, v) for v in (value if isinstance(value, list) else [value])]
    if hasattr(args, "config"):
        named_.append(("the settings file", find_config(args.config)))
    return named_


def _file_input(args: argparse.Namespace) -> Path | None:
    """With ``--input``, the input the job file names (kept too); None when it names none."""
    if args.input is None:
        return None
    try:  # any valid name: only the input is wanted, and the file need not name the job
        return load_job(args.job, name="job").input
    except ConfigError:
        return None


def _check_ledger_file(setting: str, where: Location) -> None:
    """Refuse a ledger file to write into that holds something else: it must be new, empty
    or a bulk-mms ledger (opening one cuts an unfinished last line, the mark of a crash).

    Raises:
        ConfigError: naming ``setting`` and the file (exit 2); nothing is written.
    """
    if not isinstance(where, Path):
        return
    try:
        holds = where.is_file() and where.stat().st_size > 0
        if holds:
            where.open("rb").close()  # one it may not read is not another file
    except OSError:
        return  # opening it says why
    if holds and not is_ledger(where):
        raise ConfigError(
            setting, f"{where} is not a bulk-mms ledger: it would be written into; name a new file"
        )


def _rerun_name(name: str, input_file: Path) -> str:
    """The job name for ``run --input FILE``: ``<name>-<stem>-<first 8 hex of the file's hash>``.

    The name picks the ledger, so a resend gets a ledger (and a campaign) of its own instead of
    tripping over the first send's; the hash gives each round of ``--failed-csv`` reruns its own
    (a second ``failed.csv`` differs from the first), while rerunning the same file resumes.

    Raises:
        InputError: the file is missing, unreadable or not a regular file.
    """
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", input_file.stem).strip("-.") or "input"
    digest = fingerprint(input_file).removeprefix("sha256:")[:8]
    return f"{name}-{stem}"[:91] + f"-{digest}"


def _warn_cleartext(base_url: str) -> None:
    """Warn when the API key would cross the network unencrypted (a run, and its dry run)."""
    if sends_key_in_clear(base_url):
        structlog.get_logger(__name__).warning(
            "config.cleartext_base_url",
            base_url=base_url,
            hint="plain http to a host that is not this machine: the API key would cross the "
            "network unencrypted; use https",
        )


def _client(settings: Settings, base_url: str, key: str) -> AiohttpMmsClient:
    _warn_cleartext(base_url)
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
    excluded: frozenset[int] = frozenset(),
    rejected_csv: Path | None = None,
) -> JobSummary:
    stop = Stop()
    try:
        with stopping_on_signals(stop, settings.request_timeout + DRAIN_GRACE_S):
            hooks = job.where if sandbox and os.environ.get(SANDBOX_WEBHOOKS_ENV) else None
            async with (
                _endpoint(settings, sandbox, webhooks_into=hooks) as base_url,
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
                    excluded=excluded,
                    rejected_csv=rejected_csv,
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
        structlog.get_logger(__name__).info("media.check_skipped", reason=reason)
        return
    asyncio.run(check_media(urls, senders=job.message.senders))


def cmd_track(args: argparse.Namespace) -> int:
    if args.metrics is not None:  # the job's name once the ledger is read; its path until
        args.metrics.name = display(args.ledger)
    settings = settings_for(args)
    if args.sandbox:  # the sandbox's carrier finishes in seconds: ask every second, not 30
        if not is_sandbox_ledger(args.ledger):
            raise ConfigError(
                "--sandbox",
                f"{display(args.ledger)} is not a sandbox run's ledger (those are in a "
                f"{SANDBOX_FOLDER}/ folder): the sandbox's made-up statuses would go into it",
            )
        settings = replace(settings, track=replace(settings.track, interval=1.0, max_interval=2.0))
    key = _api_key(args)
    result = asyncio.run(
        _track(args.ledger, settings, key, follow=args.follow, sandbox=args.sandbox)
    )
    if args.metrics is not None:
        args.metrics.name = result.job or args.metrics.name
        args.metrics.track = result
    if result.error is not None:
        return fail(result.error, exit_for(result.error))
    fmt = args.format or ("table" if sys.stdout.isatty() and not args.log_json else "json")
    if fmt == "json":
        text = format_track(result, display(args.ledger)) if args.log_json else ""
        note = ("track.result", text) if args.log_json else None
        sys.stdout.write(_json_text(result.as_dict(), note))
    else:
        print(format_track(result, display(args.ledger)))
    if result.stopped in SIGNAL_EXIT:
        return SIGNAL_EXIT[result.stopped]
    trouble = result.not_found or result.unlisted or result.errors
    return Exit.INCOMPLETE if trouble or (args.follow and result.pending) else Exit.OK


async def _track(
    path: Location, settings: Settings, key: str, *, follow: bool, sandbox: bool = False
) -> TrackResult:
    stop = Stop()
    found = TrackResult()  # its job is known once the ledger is read, whatever happens next
    try:
        with stopping_on_signals(
            stop, settings.request_timeout + DRAIN_GRACE_S, cancel_on_force=True
        ):
            async with (
                _endpoint(settings, sandbox, ledger=path) as base_url,
                _client(settings, base_url, key) as client,
            ):
                return await track_ledger(
                    path, settings, client, follow=follow, stop=stop, result=found
                )
    except asyncio.CancelledError:
        return TrackResult(stopped=stop.reason or "SIGINT", job=found.job)
    except FatalSendError as exc:
        return TrackResult(error=exc, job=found.job)


@contextlib.asynccontextmanager
async def _endpoint(
    settings: Settings,
    sandbox: bool,
    *,
    ledger: Location | None = None,
    webhooks_into: Location | None = None,
) -> AsyncIterator[str]:
    """The API's base URL: the configured one, or a sandbox started here for the command.

    For ``track --sandbox`` the sandbox first learns the ledger's sent groups (their run had
    a sandbox of its own), and reports them through a carrier timeline: queued, sent, then
    delivered, or delivery_failed for one number in seven, over a few seconds. With
    ``webhooks_into`` (a sandbox run, ``$BULK_MMS_SANDBOX_WEBHOOKS`` set), the same timeline
    reaches that ledger as signed webhooks once the command is done (:func:`_sandbox_webhooks`).
    """
    if not sandbox:
        yield settings.base_url
        return
    from bulk_mms import fake_api  # noqa: PLC0415 - aiohttp's server: only for the sandbox

    fake = fake_api.FakeTelnyx(
        refuse=dict(fake_api.SANDBOX_REFUSE),
        report=dict(fake_api.SANDBOX_REPORT),
        varied_stamps=True,  # times in every form Telnyx writes them, as a run must read them
    )
    if ledger is not None or webhooks_into is not None:
        fake.delivery_status = fake_api.carrier_timeline(fail_every=7, final_after=3.0)
    if ledger is not None:
        now = SystemClock().wall()
        for g in load(ledger).sent_groups():
            fake.adopt(g.message_id or "", g.sender or "", g.to, max(0.0, now - g.sent_at))
    try:
        fake.faults.extend(fake_api.parse_faults(os.environ.get(SANDBOX_FAULTS_ENV, "")))
    except ValueError as exc:
        raise ConfigError(SANDBOX_FAULTS_ENV, str(exc)) from None
    async with fake_api.serve(fake) as url:
        structlog.get_logger(__name__).info(
            "sandbox.started", base_url=url, faults=len(fake.faults)
        )
        yield url
        if webhooks_into is not None and fake.accepted:
            await _sandbox_webhooks(fake, webhooks_into, settings)


#: ``run --sandbox`` with this set: the sandbox's carrier reports by signed webhook too.
SANDBOX_WEBHOOKS_ENV = "BULK_MMS_SANDBOX_WEBHOOKS"
#: How long a sandbox run posts its carrier's webhooks for (its timeline ends in 3 s).
SANDBOX_WEBHOOKS_S = 6.0


async def _sandbox_webhooks(fake: FakeTelnyx, where: Location, settings: Settings) -> None:
    """The sandbox's carrier reports each recipient's fate (``message.sent``, then
    ``message.finalized``) by signed webhook to a receiver started on this machine for the
    run's ledger: the path a real campaign's webhooks take, end to end (``make demo``).
    The receiver reads delivery reports by the run's ``settings``, as the run did. Without
    the ``webhooks`` extra (cryptography), it is skipped."""
    logger = structlog.get_logger(__name__)
    try:
        with needs("webhooks", "the sandbox's webhooks"):
            from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
                Ed25519PrivateKey,
            )

            from bulk_mms.webhooks import serve_webhooks  # noqa: PLC0415 - cryptography
    except MissingExtra:
        logger.info("sandbox.webhooks_skipped", reason="no cryptography (bulk-mms[webhooks])")
        return
    signer = Ed25519PrivateKey.generate()
    fake.signing_key = signer
    done, ready = asyncio.Event(), asyncio.Event()
    address: list[str] = []

    def started(where_at: str) -> None:
        address.append(where_at)
        ready.set()

    serving = asyncio.create_task(
        serve_webhooks(
            where, "127.0.0.1", 0, signer.public_key(), done, started=started, settings=settings
        )
    )
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        fake.webhook_url = f"http://{address[0]}/webhooks"
        loop = asyncio.get_running_loop()
        end = loop.time() + SANDBOX_WEBHOOKS_S
        everyone = sum(len(m.to) for m in fake.accepted)
        while loop.time() < end:
            await fake.pump_webhooks()
            finals = sum(1 for p in fake.webhooks_sent if p.event_type == "message.finalized")
            if finals >= everyone:
                break  # every recipient's fate is told
            await asyncio.sleep(0.5)
    finally:
        done.set()
    receiver = await serving
    logger.info("sandbox.webhooks", recorded=receiver.recorded, posted=len(fake.webhooks_sent))


def cmd_webhooks(args: argparse.Namespace) -> int:
    host, sep, port_text = args.listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError("--listen", f"{args.listen!r} is not HOST:PORT (e.g. 0.0.0.0:8080)")
    ledger = args.ledger or args.ledger_option
    if ledger is not None and args.job is not None:
        raise ConfigError("--job", "records into the job's ledgers: drop LEDGER, or drop --job")
    if ledger is None and args.job is None:
        raise ConfigError(
            "LEDGER",
            "name the ledger to record into: bulk-mms webhooks LEDGER, or the job whose "
            "ledgers it is: bulk-mms webhooks --job JOB.toml",
        )
    with needs("webhooks", "bulk-mms webhooks"):
        from bulk_mms.webhooks import (  # noqa: PLC0415 - aiohttp's server and cryptography
            PUBLIC_KEY_ENV,
            load_public_key,
            serve_webhooks,
        )

    job = _webhooks_job(args.job) if args.job is not None else None
    key = load_public_key(os.environ.get(PUBLIC_KEY_ENV))
    path = find_config(args.config)
    settings = load_settings(path) if path else Settings()
    listen = (host.strip("[]") or "0.0.0.0", int(port_text))  # noqa: S104 - ":PORT": every interface
    suppressed = suppression_for(settings.suppression_file, job.where if job else ledger)

    async def serve() -> None:
        stop = Stop()
        with stopping_on_signals(stop, DRAIN_GRACE_S, cancel_on_force=True):
            await serve_webhooks(
                job or ledger, *listen, key, stop, suppressed=suppressed, settings=settings
            )

    asyncio.run(serve())
    return Exit.OK


def _webhooks_job(path: Path) -> JobConfig:
    """The job ``webhooks --job`` serves: its file's ledgers, one a day when the ledger holds
    ``{date}``, or the one ``$BULK_MMS_LEDGER_URL`` names, as a run takes it.

    Raises:
        ConfigError: the job file is wrong, or the variable names no dated ledger for a job
            whose ledger holds ``{date}`` (:func:`_refuse_undated_database`).
    """
    job = load_job(path)
    if where := os.environ.get(LEDGER_URL_ENV):
        try:
            given = location(where)
        except ValueError as exc:
            raise ConfigError(LEDGER_URL_ENV, str(exc)) from None
        _refuse_undated_database(job, given, LEDGER_URL_ENV)
        job = _with_ledger(job, given)
    return job


def cmd_report(args: argparse.Namespace) -> int:
    if getattr(args, "html", None) is not None:
        with needs("html", "report --html"):  # refused before the table, not after it
            import matplotlib  # noqa: F401, PLC0415
    summary = summarize(args.ledger)
    refuse_overwrites(args, [("the job's input", Path(summary.input) if summary.input else None)])
    fmt = args.format
    if fmt is None:
        # status keeps its documented table default for scripts that parse it
        piped = args.command == "report" and not sys.stdout.isatty()
        fmt = "json" if piped or args.log_json else "table"
    if fmt == "json":
        text = format_text(summary, display(args.ledger)) if args.log_json else ""
        note = ("report.summary", text) if args.log_json else None
        sys.stdout.write(_json_text(summary.as_dict(), note))
    elif fmt == "csv":
        sys.stdout.write(format_csv(summary))
    else:
        print(format_text(summary, display(args.ledger)))
    page = getattr(args, "html", None)
    if page is not None:
        from bulk_mms.html_report import write_html  # noqa: PLC0415 - matplotlib: only here

        try:
            write_html(args.ledger, page, summary)
        except OSError as exc:
            raise LedgerError(page, f"cannot write: {exc.strerror or exc}") from None
        say(
            "report.html_written",
            f"bulk-mms: wrote the report to {page.resolve().as_uri()}",
            path=str(page),
        )
    failed_csv = getattr(args, "failed_csv", None)
    if failed_csv is not None:
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
            f"bulk-mms: wrote {n} recipients to {failed_csv} ({how}); not in it: "
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
                f", {len(summary.resent)} already sent again by an earlier resend "
                f"({', '.join(sorted(set(summary.resent.values())))})"
                if summary.resent
                else ""
            ),
            path=str(failed_csv),
            recipients=n,
        )
    if (rejected := getattr(args, "rejected_csv", None)) is not None:
        n = write_rejected_csv(summary, rejected)
        say(
            "report.rejected_csv_written",
            f"bulk-mms: wrote {count(n, 'rejected row')} to {rejected}; not in it, left out on "
            f"purpose: {count(summary.duplicate_rows, 'duplicate row')} (their numbers are in "
            f"the job already), {summary.rows.suppressed} suppressed, "
            f"{summary.rows.excluded} already sent (--exclude-sent)",
            path=str(rejected),
            rows=n,
        )
    if (everyone := getattr(args, "recipients_csv", None)) is not None:
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
    return Exit.OK


def _json_text(data: dict[str, object], note: tuple[str, str] | None = None) -> str:
    """A command's JSON answer: indented for a person; under ``--log-json`` (``note`` given as
    its event and message) one line that is also a note, the answer's keys beside them."""
    if note is None:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    event, message = note
    return (
        orjson.dumps({"event": event, "level": "info", "message": message, **data}).decode() + "\n"
    )


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
    for candidate in (Path("config.toml"), user_folder("config", env) / "config.toml"):
        if candidate.is_file():
            return candidate
    return None


def settings_for(args: argparse.Namespace) -> Settings:
    path = find_config(args.config)
    settings = load_settings(path)
    if path is not None and args.config is None:  # found, and read
        structlog.get_logger(__name__).info("config.found", path=str(path))
    if args.base_url is not None:  # "" too: a variable left unset must not mean the live API
        settings = replace(settings, base_url=args.base_url)
    if getattr(args, "rate", None) is not None:
        if args.command == "track":
            settings = replace(settings, track=replace(settings.track, rate=args.rate))
        else:
            settings = replace(settings, rate=args.rate)
    if getattr(args, "concurrency", None) is not None:
        settings = replace(settings, concurrency=args.concurrency)
    try:  # the one check of each bound (config.settings: RATE, TRACK_RATE, CONCURRENCY)
        checked = check_settings(settings)
    except ConfigError as exc:  # a value from the command line is named as it was given
        name = exc.setting.rsplit(".", 1)[-1]  # limits.rate, track.rate: --rate
        if getattr(args, name, None) is not None:
            raise ConfigError(f"--{name.replace('_', '-')}", exc.message) from None
        raise
    return cap_concurrency(checked)


def _api_key(args: argparse.Namespace) -> str:
    if args.sandbox:
        return "sandbox-key"
    key = os.environ.get(API_KEY_ENV, "")
    if not key.strip():
        raise ConfigError(API_KEY_ENV, "is not set: export your Telnyx API key (or use --sandbox)")
    if key != key.strip() or any(ch in key for ch in "\r\n\t "):
        raise ConfigError(API_KEY_ENV, "contains whitespace; check how it was exported")
    if not (key.isascii() and key.isprintable()):  # no header could carry it
        raise ConfigError(
            API_KEY_ENV,
            "holds a character that is not printable ASCII; check how it was exported",
        )
    return key


def cmd_db(args: argparse.Namespace) -> int:
    """``db migrate [URL]``: create or upgrade the ledger schema (a run does it on first use)."""
    url = args.url or os.environ.get(LEDGER_URL_ENV)
    if not url:
        raise ConfigError(
            "URL", f"name the database: bulk-mms db migrate URL (or ${LEDGER_URL_ENV})"
        )
    before, after = migrate_database(url)
    say(
        "db.migrated",
        f"bulk-mms: {display(url)}: schema version {before} -> {after}",
        database=display(url),
        before=before,
        after=after,
    )
    return Exit.OK


def cmd_ledger(args: argparse.Namespace) -> int:
    """``ledger copy SOURCE TARGET``: every event, in order, into a new ledger."""
    _check_ledger_file("TARGET", args.target)
    n = asyncio.run(copy_ledger(args.source, args.target))
    say(
        "ledger.copied",
        f"bulk-mms: copied {n} events to {display(args.target)}",
        events=n,
        target=display(args.target),
    )
    return Exit.OK


def cmd_suppress(args: argparse.Namespace) -> int:
    """``suppress add|remove|list [NUMBER ...]``: the account's suppression list.

    Each given value that is not a phone number is named on a line of its own, the valid ones
    are still added (or removed), and the exit code is then 1.
    """
    path = find_config(args.config)
    listed = suppression_for(load_settings(path).suppression_file if path else None, args.ledger)
    if args.action == "list":
        for number in listed.numbers():
            print(number)
        return Exit.OK
    numbers, bad = parse_numbers(args.numbers)
    if not numbers and not bad:
        raise ConfigError("NUMBER", f"name the numbers to {args.action}")
    done_word = "added" if args.action == "add" else "removed"
    for given, why in bad:  # each named; the good ones are still done
        say(
            "suppress.not_a_number",
            f"bulk-mms: {given!r} is not a phone number ({why}): not {done_word}",
            level="error",
            number=given,
            reason=why,
        )
    if numbers:
        done = listed.add(numbers, args.reason) if args.action == "add" else listed.remove(numbers)
        where = "to" if args.action == "add" else "from"
        unit = "number" if len(done) == 1 else "numbers"
        say(
            f"suppress.{done_word}",
            f"bulk-mms: {len(done)} {unit} {done_word} {where} {listed.path}",
            numbers=done,
            list=str(listed.path),
        )
    return Exit.INCOMPLETE if bad else Exit.OK


def cmd_optouts(args: argparse.Namespace) -> int:
    """``optouts sync``: every number that opted out of the profile (``[api]
    messaging_profile_id``; else of any profile of the account) goes on the list, read
    unredacted (a redacted number names nobody)."""
    settings = sealed(settings_for(args)) if args.sandbox else settings_for(args)
    listed = suppression_for(settings.suppression_file, args.ledger)
    key = _api_key(args)
    numbers = asyncio.run(_pull_optouts(settings, key, sandbox=args.sandbox))
    added = listed.add(numbers, "opted out (messaging_optouts)")
    say(
        "optouts.synced",
        f"bulk-mms: {len(numbers)} opt-outs on the profile, {len(added)} new on {listed.path}",
        optouts=len(numbers),
        added=len(added),
        list=str(listed.path),
    )
    return Exit.OK


async def _pull_optouts(settings: Settings, key: str, *, sandbox: bool) -> list[str]:
    """Every opted-out number of the profile, each once, page by page to ``meta.total_pages``
    or the first page that brings no new block (an empty page, or one that repeats: no
    answer makes it read on to a count of pages it claims). A block is a sender → number
    pair: a page of other senders' blocks of numbers already read is news, not a repeat."""
    async with (
        _endpoint(settings, sandbox) as base_url,
        _client(settings, base_url, key) as client,
    ):
        blocks: dict[tuple[str, str], None] = {}  # in the order read
        page, pages = 1, 1
        while page <= pages:
            try:
                found, pages = await fetch_with_retry(
                    functools.partial(
                        client.fetch_optouts, page, profile=settings.messaging_profile_id
                    ),
                    settings.retry,
                    what="optouts",
                )
            except (RetryableSendError, AmbiguousSendError) as exc:  # the network's, not ours
                raise ApiUnavailable(
                    f"the API cannot be reached ({exc}); nothing was changed: check base_url "
                    "and the network, then run optouts sync again"
                ) from None
            before = len(blocks)
            blocks.update(dict.fromkeys((block.from_, block.to) for block in found))
            if len(blocks) == before:
                break
            page += 1
        return list(dict.fromkeys(to for _, to in blocks))
