"""``bulk-mms run``: the job as the flags leave it, its dry run or confirmation, and the run."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
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
from bulk_mms.ledger import (
    Header,
    LedgerView,
    Location,
    display,
    exists,
    header_at,
    headers_beside,
    load,
    location,
)
from bulk_mms.ledger.store import is_database
from bulk_mms.media import check_media
from bulk_mms.prepare import (
    continues_earlier,
    dry_run,
    header_for,
    ledger_names,
    left_to_send,
    seed_job,
    sent_numbers,
    still_to_send,
)
from bulk_mms.progress import BarProgress, LogProgress, Progress
from bulk_mms.reader import fingerprint
from bulk_mms.recipient_lists import (
    ledger_of,
    lists_nobody,
    missed_by,
    place_words,
    taken_by_resends,
)
from bulk_mms.runner import run_job
from bulk_mms.scan import scan_input
from bulk_mms.signals import Stop, stopping_on_signals
from bulk_mms.summary import JobSummary
from bulk_mms.words import count


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
        if args.input is not None and (missed := _missed(job)):
            _refuse_resend_apart(job, set(missed))
            _refuse_resending_again(job, args, missed)
        else:
            _refuse_sending_again(job, args)
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


def _finish_yesterdays(
    job: JobConfig, args: argparse.Namespace, *, say: bool = True
) -> tuple[JobConfig, LedgerView | None]:
    """The job with the previous day's ``{date}`` ledger (a file, or a database's named
    ledger) when the run belongs there (:func:`~bulk_mms.prepare.continues_earlier`), and
    that ledger's fold: a campaign cut at midnight is finished, not sent again to everyone
    under a new date. The job as it is and None otherwise. ``say``: log ``ledger.continued``
    (the run goes there; a check that only looks at the job does not)."""
    now = utc(SystemClock())
    # the previous local date, by the calendar: 24 hours back is two dates back in the hour
    # after a 23-hour day (spring forward), and today in the last hour of a 25-hour one
    day_before = now.astimezone(job.zone).date() - dt.timedelta(days=1)
    earlier = load_job(
        args.job,
        name=job.name,
        input_file=args.input,
        now=dt.datetime.combine(day_before, dt.time(12), job.zone),
    )
    yesterday = sandbox_ledger(earlier.ledger) if args.sandbox else earlier.where
    if (view := continues_earlier(job, yesterday)) is None:
        return job, None
    if say:
        structlog.get_logger(__name__).info(
            "ledger.continued", ledger=display(yesterday), instead_of=display(job.where)
        )
    return _at(job, yesterday), view


def _at(job: JobConfig, where: Location) -> JobConfig:
    """The job with its ledger at ``where``, a ledger found as it is (a file, or a database's
    named ledger): not named after the job again (:func:`with_ledger` names it)."""
    if isinstance(where, Path):
        return replace(job, ledger=where, database=None)
    return replace(job, database=where)


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
    job, _ = _placed(job, args)
    settings = settings_for(args)
    if args.sandbox:
        settings = sealed(settings)
    check_ledger_file(
        "--ledger" if args.ledger else LEDGER_URL_ENV if _ledger_given(args) else "ledger",
        job.where,
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
    (with its fold, else None: :func:`_finish_yesterdays`, which ``say`` is passed to).

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
        return _finish_yesterdays(job, args, say=say)
    return job, None


def _file_input(args: argparse.Namespace) -> Path | None:
    """With ``--input``, the input the job file names (kept too); None when it names none."""
    if args.input is None:
        return None
    try:  # any valid name: only the input is wanted, and the file need not name the job
        return load_job(args.job, name="job").input
    except ConfigError:
        return None


def _refuse_sending_again(job: JobConfig, args: argparse.Namespace) -> None:
    """A run that would text again whoever of its input the job's earlier ledgers sent
    (:func:`_earlier_ledgers`, counted as ``--exclude-sent`` counts them:
    :func:`~bulk_mms.prepare.sent_numbers`), while nothing says whom to leave out: refused,
    as a changed input under the job's own ledger is. Such a run is either ``run JOB --input
    FILE`` where FILE is not a failed file (``report --failed-csv``), a campaign of its own
    (:func:`_rerun_name`); or a plain run that begins the job's ledger after its ``--input``
    runs (a pilot on a few of the list, then the whole list). A plain run resuming its own
    ledger is not asked (that ledger's own checks hold it), nor one with a ledger a day
    (``{date}``: another day's ``--input`` run is no earlier round), and the ledgers are
    read only when such an ``--input`` run's is beside. ``--exclude-sent`` leaves them out;
    ``--name`` starts a campaign of its own on purpose.

    The run also counts whom the job's runs begun and unfinished would still text when
    resumed (:func:`~bulk_mms.prepare.left_to_send`): the job's own ledger's (a pilot after
    the whole list stopped partway) and its other ``--input`` runs' (a second pilot beside a
    first one stopped partway), less whom this run's own ledger sent; ``--exclude-sent``
    does not leave them out (they are not sent yet): those runs are to be finished first.
    Each ledger is folded once.

    Raises:
        ConfigError: naming how many, the ledgers and both ways on (exit 2, nothing sent).
        LedgerError: an earlier ledger cannot be read.
    """
    if args.name is not None:
        return
    if args.input is None:  # the job as it is: its --input runs beside a ledger it begins
        if exists(job.where):
            return
        plain, folded = job, None
    else:  # as run without --input; a job file that names no input (always run with one) takes it
        plain, folded = _placed(
            load_job(args.job, input_file=None if _file_input(args) else args.input),
            args,
            say=False,
        )
        if folded is None and exists(plain.where):
            folded = load(plain.where, statuses=False)
    reruns = _reruns_beside(plain, job)
    folds = {plain.where: folded} if folded is not None else {}
    unsent = _unfinished_runs(args, plain, reruns, folds)
    pending = frozenset().union(*(numbers for _, numbers in unsent))
    if pending and exists(job.where):  # its resume would text them: less whom this run's holds
        pending -= sent_numbers([job.where], in_doubt_ok=True)
    earlier = [] if args.exclude_sent else _earlier_ledgers(plain, job, reruns)
    sent = (
        sent_numbers(earlier, in_doubt_ok=True, own=job.where, folded=folds)
        if earlier
        else frozenset()
    )
    if not (sent or pending):
        return
    if not (scan := scan_input(job, excluded=(sent | pending) - args.excluded)).excluded:
        return
    ledgers = [*earlier, *(run.where for run, _ in unsent if run.where not in earlier)]
    named = ", ".join(display(w) for w in ledgers)
    leave_out = " ".join(f"--exclude-sent {display(w)}" for w in ledgers)
    if pending:
        ways = " and ".join(
            "without --input" if run is plain else f"with --input {run.input}" for run, _ in unsent
        )
        runs_ = "run" if len(unsent) == 1 else "runs"
        whom = f"already sent by this job or left to send by its unfinished {runs_}"
        then = (
            f"finish {'that run' if len(unsent) == 1 else 'those runs'} first "
            f"(run {'it' if len(unsent) == 1 else 'them'} {ways}), then add "
        )
    else:
        whom, then = "already sent by this job", "add "
    raise ConfigError(
        "--input" if args.input is not None else "input",
        f"{count(scan.excluded, 'recipient')} of {job.input} {whom} ({named}) would be "
        f"texted again: {then}{leave_out} to leave them out, or give --name NAME to text "
        "them again in a campaign of its own; nothing sent",
        source=None if args.input is not None else job.path,
    )


def _unfinished_runs(
    args: argparse.Namespace,
    plain: JobConfig,
    reruns: list[tuple[Location, Header]],
    folds: dict[Location, LedgerView],
) -> list[tuple[JobConfig, frozenset[int]]]:
    """The job's runs begun and unfinished, each with whom its resume would text
    (:func:`~bulk_mms.prepare.left_to_send`): the job's own (``plain``, whose ledger's fold
    ``folds`` holds when it is begun) and its other ``--input`` runs' (``reruns``), each of
    whose folds is added to ``folds`` for the caller to count whom it sent without reading it
    again.

    Raises:
        LedgerError: a ledger cannot be read.
    """
    runs = [(plain, folds[plain.where])] if plain.where in folds else []
    for where, header in reruns:
        if (rerun := _rerun_job(args, header, where)) is not None:
            folds[where] = view = load(where, statuses=False)
            runs.append((rerun, view))
    return [(run, left_to_send(run, view)) for run, view in runs if still_to_send(run, view)]


def _rerun_job(args: argparse.Namespace, header: Header, where: Location) -> JobConfig | None:
    """The job of the ``--input`` run whose ledger, at ``where``, begins with ``header``: as
    ``run JOB --input FILE`` would resume it. None when its input is no longer there (no
    run of it can be resumed)."""
    if header.input is None or not Path(header.input).is_file():
        return None
    return _at(load_job(args.job, name=header.job, input_file=Path(header.input)), where)


def _missed(job: JobConfig) -> dict[str, set[str]]:
    """The campaigns whose failed file (``report --failed-csv``) the job's input is, each
    with the numbers its rows list as that campaign's (:func:`~bulk_mms.recipient_lists.
    missed_by`); none for another file."""
    header = header_for(job, "", SystemClock())
    return {
        campaign: phones for campaign, phones in missed_by(job.input, header).items() if campaign
    }


def _refuse_resending_again(
    job: JobConfig, args: argparse.Namespace, missed: dict[str, set[str]]
) -> None:
    """A failed file whose recipients another resend of the campaign that missed them took
    (:func:`~bulk_mms.recipient_lists.taken_by_resends`, as ``--exclude-sent`` counts it: not
    one the API refused there for good) would text them again: the same file copied, edited
    or saved again by a spreadsheet has another hash, so another resend's ledger. Refused
    unless ``--exclude-sent`` leaves them out or ``--name`` texts them again on purpose. A
    number another campaign's rows list too, whose resends did not take it (failed files
    of two rounds joined into one), is the later round's to resend; the run's own ledger
    (resuming this resend) is none of the others.

    Raises:
        ConfigError: naming how many, the resends' ledgers and both ways on (exit 2).
        LedgerError: a ledger cannot be read.
    """
    if args.name is not None:
        return
    own = header_at(job.where)
    texted: dict[str, str] = {}
    owed: set[str] = set()  # listed by a campaign whose resends did not take them
    for campaign, phones in missed.items():
        where = ledger_of(campaign, job.where)
        taken = (
            taken_by_resends(where, campaign, refused=False, besides=own.campaign if own else None)
            if where is not None
            else {}
        )
        texted |= {p: by for p, by in taken.items() if p in phones}
        owed |= phones - taken.keys()
    whom = {p: by for p, by in texted.items() if p not in owed and int(p[1:]) not in args.excluded}
    if not whom:
        return
    ledgers = sorted(set(whom.values()))
    raise ConfigError(
        "--input",
        f"{count(len(whom), 'recipient')} of {job.input} texted, or held to send, by another "
        f"resend of the campaign that missed them ({', '.join(ledgers)}) would be texted "
        "again: finish that resend first if it stopped partway, then add "
        f"{' '.join(f'--exclude-sent {w}' for w in ledgers)} to leave them out, or give "
        "--name NAME to text them again in a campaign of its own; nothing sent",
    )


def _refuse_resend_apart(job: JobConfig, campaigns: set[str]) -> None:
    """A new resend of a failed file goes beside the ledgers of the campaigns that missed its
    recipients (:func:`~bulk_mms.recipient_lists.ledger_of`): only there do that campaign's
    next failed file and ``--exclude-sent`` see whom it texted, and its settling tell that
    campaign's messages from its own. One run elsewhere (another job file, ``--ledger``, a
    database) is refused before it begins; a resend begun already is resumed wherever it is.

    Raises:
        ConfigError: naming the campaign and where its ledger was looked for (exit 2).
        LedgerError: the database cannot be read.
    """
    if exists(job.where):
        return
    apart = sorted(c for c in campaigns if ledger_of(c, job.where) is None)
    if not apart:
        return
    here = display(job.where)
    place = place_words(job.where)
    raise ConfigError(
        "--input",
        f"{job.input} lists recipients campaign {', '.join(apart)} missed, and no ledger of that "
        f"campaign is in the {place} this resend's ledger ({here}) goes to: a later failed "
        "file or --exclude-sent would not see whom it texts and text them again; resend it "
        "with the job file (and --ledger) whose run sent that campaign, or put its ledger "
        "back there; nothing sent",
    )


def _earlier_ledgers(
    plain: JobConfig, job: JobConfig, reruns: list[tuple[Location, Header]]
) -> list[Location]:
    """The ledgers of the job (``plain``: as run without ``--input``) that are not ``job``'s:
    its own ledger, and those of its other ``--input`` runs beside it (``reruns``:
    :func:`_reruns_beside`).

    Raises:
        LedgerError: the database cannot be read.
    """
    own = [plain.where] if plain.where != job.where and exists(plain.where) else []
    return own + [where for where, _ in reruns]


def _reruns_beside(plain: JobConfig, job: JobConfig) -> list[tuple[Location, Header]]:
    """The ledgers beside the job's (``plain``: as run without ``--input``) of its other
    ``--input`` runs (:func:`_rerun_of`), not ``job``'s, with their headers; none with a
    ledger a day (``{date}``): every day's campaign sends anew, and another day's ``--input``
    run is no earlier round of this one.

    Raises:
        LedgerError: the database cannot be read.
    """
    if plain.dated_ledger:
        return []
    return [
        (where, header)
        for where, header in headers_beside(plain.where)
        if header.job != job.name and _rerun_of(header, plain.name)
    ]


def _rerun_of(header: Header, job: str) -> bool:
    """Whether the ledger whose header is ``header`` is one of a run of ``job`` with
    ``--input`` (named by :func:`_rerun_name`). Its name ends in the hash of its input; when
    it ends in that input's stem too (not cut at the length, nor a link's), whatever is
    before is the job's name: a job whose name begins with ``job``'s (``news-weekly`` beside
    ``news``) is another job."""
    head, _, digest = header.job.rpartition("-")
    if not (
        len(digest) == 8
        and all(c in "0123456789abcdef" for c in digest)
        and head.startswith(f"{job}-"[:91])
        and head != job
    ):
        return False
    if header.input is None:
        return True
    own, sep, tail = head.rpartition(f"-{_stem(Path(header.input))}")
    return not sep or bool(tail) or own == job


def _stem(input_file: Path) -> str:
    """The part of :func:`_rerun_name` that ``input_file``'s name gives."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", input_file.stem).strip("-.") or "input"


def _rerun_name(name: str, input_file: Path) -> str:
    """The job name for ``run --input FILE``: ``<name>-<stem>-<first 8 hex of the file's hash>``.

    The name picks the ledger, so a resend gets a ledger (and a campaign) of its own instead of
    tripping over the first send's; the hash gives each round of ``--failed-csv`` reruns its own
    (a second ``failed.csv`` differs from the first), while rerunning the same file resumes.

    Raises:
        InputError: the file is missing, unreadable or not a regular file.
    """
    digest = fingerprint(input_file).removeprefix("sha256:")[:8]
    return f"{name}-{_stem(input_file)}"[:91] + f"-{digest}"


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
    excluded_from: tuple[str, ...] = (),
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
