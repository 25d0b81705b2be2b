"""``bulk-mms run``: the job as the flags leave it, the refusals that keep anyone from being
texted twice (:mod:`bulk_mms.reruns`), its dry run or confirmation, and the run."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import structlog
from msgspec.structs import replace

from bulk_mms.clock import SystemClock, utc
from bulk_mms.commands.common import (
    DRAIN_GRACE_S,
    LEDGER_URL_ENV,
    api_key,
    check_ledger_file,
    client_for,
    refuse_overwrites,
    refuse_undated_database,
    sealed,
    settings_for,
    warn_cleartext,
    with_ledger,
)
from bulk_mms.commands.sandbox import SANDBOX_WEBHOOKS_ENV, endpoint
from bulk_mms.config import JobConfig, Settings, load_job
from bulk_mms.config.folders import sandbox_ledger
from bulk_mms.console import confirm, interactive, print_dry_run, run_outcome, say
from bulk_mms.errors import ConfigError, Exit
from bulk_mms.ledger import LedgerView, location
from bulk_mms.ledger.fold import ExcludedLedger
from bulk_mms.ledger.store import is_database
from bulk_mms.media import check_media
from bulk_mms.prepare import dry_run, ledger_names, seed_job, sent_numbers
from bulk_mms.progress import BarProgress, LogProgress, Progress
from bulk_mms.recipient_lists import lists_nobody
from bulk_mms.reruns import (
    finish_yesterdays,
    missed_campaigns,
    refuse_resend_apart,
    refuse_resending_again,
    refuse_sending_again,
    rerun_name,
)
from bulk_mms.runner import run_job
from bulk_mms.signals import Stop, StopReason, stopping_on_signals
from bulk_mms.summary import JobSummary


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
    args.excluded = sent_numbers(args.exclude_sent, in_doubt_ok=args.resend_in_doubt, own=job.where)
    args.excluded_from = ledger_names(args.exclude_sent)
    if not args.to:
        _refuse_texting_twice(job, args)
    if args.dry_run:
        if not args.sandbox:
            warn_cleartext(settings.base_url)
        return print_dry_run(_plan(job, settings, args), job, settings)
    key = api_key(args)
    if not args.yes and not args.sandbox and interactive():
        plan = _plan(job, settings, args)
        if plan.sent_groups and not confirm(plan, job):
            say("run.declined", "bulk-mms: nothing sent (answered no)", job=job.name)
            return Exit.INCOMPLETE
    progress: Progress
    if sys.stderr.isatty() and not args.quiet and not args.log_json:
        progress = BarProgress(sys.stderr)
    else:
        progress = LogProgress(args.progress_every)
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
            excluded_from=args.excluded_from,
            rejected_csv=args.rejected_csv,
        )
    )
    if args.metrics is not None:
        args.metrics.summary = summary
    return run_outcome(summary)


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
        job = load_job(args.job, name=rerun_name(job.name, args.input), input_file=args.input)
    if args.metrics is not None:  # a sandbox run's series never pass for the real job's
        args.metrics.name = f"{job.name}-sandbox" if args.sandbox else job.name
    if args.to and args.ledger is not None:
        raise ConfigError("--to", "a seed send has a ledger of its own: drop --ledger")
    job, _ = _placed(job, args)
    settings = settings_for(args)
    if args.sandbox:
        settings = sealed(settings)
    given = _ledger_given(args) is not None
    check_ledger_file(  # the job's own ledger is named with its file, as its settings are
        "--ledger" if args.ledger else LEDGER_URL_ENV if given else "ledger",
        job.where,
        source=None if given else job.path,
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


def _ledger_given(args: argparse.Namespace) -> str | None:
    """The ledger the command line or the environment gives (``--ledger``, else
    ``BULK_MMS_LEDGER_URL``); None: the job's own."""
    return args.ledger or os.environ.get(LEDGER_URL_ENV) or None


def _placed(
    job: JobConfig, args: argparse.Namespace, *, say: bool = True
) -> tuple[JobConfig, LedgerView | None]:
    """The job with the ledger ``run``'s flags give it: ``--ledger`` or
    ``BULK_MMS_LEDGER_URL``, the sandbox's own folder, the previous date's unfinished ledger
    (with its fold, else None: :func:`~bulk_mms.reruns.finish_yesterdays`, which ``say`` is
    passed to).

    Raises:
        ConfigError: the ledger given cannot be one (a sandbox run's database, an undated
            database for a dated job).
    """
    if (where := _ledger_given(args)) is not None:
        flag = "--ledger" if args.ledger else LEDGER_URL_ENV
        try:
            given = location(where)
        except ValueError as exc:
            raise ConfigError(flag, str(exc)) from None
        if not args.sandbox:  # a sandbox run's ledger is never a database
            refuse_undated_database(job, given, flag)
        else:  # refused as given, before the sandbox folder beside it is made (/dev/sandbox)
            check_ledger_file(flag, given)
        job = with_ledger(job, given)
        if args.sandbox and args.ledger and is_database(given):  # named, not dropped unsaid
            raise ConfigError(
                flag, "a --sandbox run's ledger is never a database; drop --ledger or --sandbox"
            )
    if args.sandbox:  # sealed: its own ledgers' folder (never a database) and list
        job = replace(job, ledger=sandbox_ledger(job.ledger), database=None)
    if where is None and job.dated_ledger:
        return finish_yesterdays(
            job, job_file=args.job, input_file=args.input, sandbox=args.sandbox, say=say
        )
    return job, None


def _file_input(args: argparse.Namespace) -> Path | None:
    """With ``--input``, the input the job file names (kept too); None when it names none."""
    if args.input is None:
        return None
    try:  # any valid name: only the input is wanted, and the file need not name the job
        return load_job(args.job, name="job").input
    except ConfigError:
        return None


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


def _refuse_texting_twice(job: JobConfig, args: argparse.Namespace) -> None:
    """Refuse a run that would text again whom the job's earlier runs sent or would still
    send: a resend of a failed file apart from its campaigns' ledgers
    (:func:`~bulk_mms.reruns.refuse_resend_apart`) or texting again whom another resend of
    theirs took (:func:`~bulk_mms.reruns.refuse_resending_again`), else any other run
    (:func:`~bulk_mms.reruns.refuse_sending_again`), and so the rows of a failed file that
    name no campaign (added by hand); ``--name`` asks for a campaign of its
    own, on purpose, so only the first is asked then. Not asked of a seed send (``--to``):
    the caller leaves it out.

    Raises:
        ConfigError: the run is refused (exit 2, nothing sent).
        LedgerError: an earlier ledger cannot be read.
    """
    missed, by_hand = missed_campaigns(job) if args.input is not None else ({}, frozenset())
    if missed:
        refuse_resend_apart(job, set(missed))
    if args.name is not None:
        return
    if missed:
        refuse_resending_again(job, missed, excluded=args.excluded)
    if not missed or by_hand:  # a failed file's rows added by hand: asked as any input's
        plain, folded = _as_run_plainly(job, args)
        refuse_sending_again(
            job,
            plain,
            folded=folded,
            job_file=args.job,
            input_file=args.input,
            exclude_sent=args.exclude_sent,
            excluded=args.excluded,
            only=by_hand if missed else None,
        )


def _as_run_plainly(
    job: JobConfig, args: argparse.Namespace
) -> tuple[JobConfig, LedgerView | None]:
    """The job as ``run`` without ``--input`` would run it, its ledger placed by the same
    flags (:func:`_placed`, saying nothing), with the fold of the previous date's ledger it
    continues (else None); ``job`` itself without ``--input``. A job file that names no input
    (always run with one) takes ``--input``."""
    if args.input is None:
        return job, None
    return _placed(
        load_job(args.job, input_file=None if _file_input(args) else args.input),
        args,
        say=False,
    )


def _plan(job: JobConfig, settings: Settings, args: argparse.Namespace) -> JobSummary:
    """What a run would do now (a dry run). Its reading of the input never awaits, and
    asyncio.run's Ctrl-C only cancels a task at its next await (it would go unheard until
    the whole input was read): on a loop of its own, Ctrl-C stops it at once
    (KeyboardInterrupt: exit 130, nothing sent or written)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(
            dry_run(
                job,
                settings,
                resend_in_doubt=args.resend_in_doubt,
                limit=args.limit,
                excluded=args.excluded,
                excluded_from=args.excluded_from,
                rejected_csv=args.rejected_csv,
            )
        )
    finally:
        loop.close()


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
    excluded_from: tuple[ExcludedLedger, ...] = (),
    rejected_csv: Path | None = None,
) -> JobSummary:
    stop = Stop()
    try:
        with stopping_on_signals(stop, settings.request_timeout + DRAIN_GRACE_S):
            hooks = job.where if sandbox and os.environ.get(SANDBOX_WEBHOOKS_ENV) else None
            async with (
                endpoint(settings, sandbox, webhooks_into=hooks) as base_url,
                client_for(settings, base_url, key) as client,
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
                    excluded_from=excluded_from,
                    rejected_csv=rejected_csv,
                )
    except asyncio.CancelledError:
        return JobSummary(job.name, stopped=stop.reason or StopReason.SIGINT)
