"""After sending: ``track`` asks the API what became of each message, ``webhooks`` takes
Telnyx's signed delivery reports into the ledger."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from msgspec.structs import replace

from bulk_mms.commands.common import (
    DRAIN_GRACE_S,
    LEDGER_URL_ENV,
    api_key,
    client_for,
    find_config,
    json_text,
    refuse_undated_database,
    settings_for,
    with_ledger,
)
from bulk_mms.commands.sandbox import endpoint
from bulk_mms.config import JobConfig, Settings, load_job, load_settings
from bulk_mms.config.folders import SANDBOX_FOLDER, is_sandbox_ledger
from bulk_mms.console import SIGNAL_EXIT, exit_for, fail
from bulk_mms.errors import ConfigError, Exit, FatalSendError
from bulk_mms.extras import needs
from bulk_mms.ledger import Location, display, location
from bulk_mms.signals import Stop, StopReason, stopping_on_signals
from bulk_mms.suppression import suppression_for
from bulk_mms.track import TrackResult, format_track, track_ledger


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
    key = api_key(args)
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
        sys.stdout.write(json_text(result.as_dict(), note))
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
                endpoint(settings, sandbox, ledger=path) as base_url,
                client_for(settings, base_url, key) as client,
            ):
                return await track_ledger(
                    path, settings, client, follow=follow, stop=stop, result=found
                )
    except asyncio.CancelledError:
        return TrackResult(stopped=stop.reason or StopReason.SIGINT, job=found.job)
    except FatalSendError as exc:
        return TrackResult(error=exc, job=found.job)


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
            whose ledger holds ``{date}`` (:func:`refuse_undated_database`).
    """
    job = load_job(path)
    if where := os.environ.get(LEDGER_URL_ENV):
        try:
            given = location(where)
        except ValueError as exc:
            raise ConfigError(LEDGER_URL_ENV, str(exc)) from None
        refuse_undated_database(job, given, LEDGER_URL_ENV)
        job = with_ledger(job, given)
    return job
