"""Which earlier runs of a job a new run would text again, and the refusals that keep anyone
from being texted twice.

A job is run as it is (``run JOB``: its own ledger), and with ``run JOB --input FILE``: a
campaign of its own whose name, and so whose ledger, :func:`rerun_name` gives (a resend of a
failed file, or a pilot on a few of the list). Before anything is sent, ``run`` asks here:

- :func:`finish_yesterdays`: a job with a ledger a day (``{date}``) whose previous day's
  campaign is unfinished finishes it there, instead of texting everyone again under a new date;
- :func:`missed_campaigns`, :func:`refuse_resend_apart` and :func:`refuse_resending_again`: a
  resend of a failed file (``report --failed-csv``) goes beside the ledgers of the campaigns
  that missed its people, where their next failed file and ``--exclude-sent`` see whom it
  texts, and does not text again whom another resend of those campaigns took;
- :func:`refuse_sending_again`: any other run that would text again whom the job's earlier
  ledgers sent, or whom its runs begun and unfinished would still text, is refused unless
  ``--exclude-sent`` leaves them out.

Each function takes the job (:class:`~bulk_mms.config.JobConfig`) and the values of the
command's flags it needs, and reads the ledgers (:mod:`bulk_mms.ledger`) and the input
(:func:`~bulk_mms.scan.scan_input`); none writes anything. A refusal is a
:class:`~bulk_mms.errors.ConfigError` (exit 2, nothing sent) in one line naming the ledgers and
the ways on; a ledger that cannot be read is a :class:`~bulk_mms.errors.LedgerError`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Container, Sequence
from pathlib import Path

import structlog
from msgspec.structs import replace

from bulk_mms.clock import SystemClock, utc
from bulk_mms.config import JobConfig, load_job
from bulk_mms.config.folders import sandbox_ledger
from bulk_mms.csvfile import CAMPAIGN_COLUMN
from bulk_mms.errors import ConfigError
from bulk_mms.ledger import (
    Header,
    LedgerView,
    Location,
    display,
    exists,
    header_at,
    headers_beside,
    load,
)
from bulk_mms.prepare import (
    continues_earlier,
    header_for,
    ledger_name,
    left_to_send,
    resume_leaves_out,
    sent_numbers,
    still_to_send,
)
from bulk_mms.reader import fingerprint, short_digest
from bulk_mms.recipient_lists import ledger_of, missed_by, place_words, taken_by_resends
from bulk_mms.scan import scan_input
from bulk_mms.words import count


def rerun_name(name: str, input_file: Path) -> str:
    """The job name for ``run --input FILE``: ``<name>-<stem>-<first 8 hex of the file's hash>``.

    The name picks the ledger, so a resend gets a ledger (and a campaign) of its own instead of
    tripping over the first send's; the hash gives each round of ``--failed-csv`` reruns its own
    (a second ``failed.csv`` differs from the first), while rerunning the same file resumes.

    Raises:
        InputError: the file is missing, unreadable or not a regular file.
    """
    digest = short_digest(fingerprint(input_file))
    return f"{name}-{_stem(input_file)}"[:91] + f"-{digest}"


def finish_yesterdays(
    job: JobConfig,
    *,
    job_file: Path,
    input_file: Path | None,
    sandbox: bool,
    say: bool = True,
) -> tuple[JobConfig, LedgerView | None]:
    """The job with the previous day's ``{date}`` ledger (a file, or a database's named
    ledger) when the run belongs there (:func:`~bulk_mms.prepare.continues_earlier`), and
    that ledger's fold: a campaign cut at midnight is finished, not sent again to everyone
    under a new date. The job as it is and None otherwise.

    ``job_file`` and ``input_file`` (``--input``, else None) load the job as of the previous
    date; ``sandbox``: the ledger is the sandbox's beside it. ``say``: log
    ``ledger.continued`` (the run goes there; a check that only looks at the job does not).
    """
    now = utc(SystemClock())
    # the previous local date, by the calendar: 24 hours back is two dates back in the hour
    # after a 23-hour day (spring forward), and today in the last hour of a 25-hour one
    day_before = now.astimezone(job.zone).date() - dt.timedelta(days=1)
    earlier = load_job(
        job_file,
        name=job.name,
        input_file=input_file,
        now=dt.datetime.combine(day_before, dt.time(12), job.zone),
    )
    yesterday = sandbox_ledger(earlier.ledger) if sandbox else earlier.where
    if (view := continues_earlier(job, yesterday)) is None:
        return job, None
    if say:
        structlog.get_logger(__name__).info(
            "ledger.continued", ledger=display(yesterday), instead_of=display(job.where)
        )
    return _at(job, yesterday), view


def missed_campaigns(job: JobConfig) -> tuple[dict[str, set[str]], frozenset[int]]:
    """The campaigns whose failed file (``report --failed-csv``) the job's input is, each
    with the numbers its rows list as that campaign's (:func:`~bulk_mms.recipient_lists.
    missed_by`); none for another file. And the numbers (E.164 digits) of such a file's rows
    that name no campaign (an empty :data:`~bulk_mms.csvfile.CAMPAIGN_COLUMN` cell: a row
    added by hand) and that no campaign's rows list: no campaign missed them, so they are
    asked about as any other input's rows are (:func:`refuse_sending_again`'s ``only``)."""
    header = header_for(job, "", SystemClock())
    missed = missed_by(job.input, header)
    unnamed = missed.pop("", set())
    if not missed:
        return {}, frozenset()  # not a failed file's rows: the run asks of them all
    listed = set().union(*missed.values())
    return missed, frozenset(int(p[1:]) for p in unnamed - listed)


def refuse_resending_again(
    job: JobConfig, missed: dict[str, set[str]], *, excluded: Container[int]
) -> None:
    """A failed file whose recipients another resend of the campaign that missed them took
    (:func:`~bulk_mms.recipient_lists.taken_by_resends`, as ``--exclude-sent`` counts it: not
    one the API refused there for good) would text them again: the same file copied, edited
    or saved again by a spreadsheet has another hash, so another resend's ledger. Refused
    unless ``--exclude-sent`` leaves them out (``excluded``: the numbers it leaves out) or
    ``--name`` texts them again on purpose (the caller does not ask then). A number another
    campaign's rows list too, whose resends did not take it (failed files of two rounds
    joined into one), is the later round's to resend; the run's own ledger (resuming this
    resend) is none of the others.

    Raises:
        ConfigError: naming how many, the resends' ledgers and both ways on (exit 2).
        LedgerError: a ledger cannot be read.
    """
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
    whom = {p: by for p, by in texted.items() if p not in owed and int(p[1:]) not in excluded}
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


def refuse_resend_apart(job: JobConfig, campaigns: set[str]) -> None:
    """A new resend of a failed file goes beside the ledgers of the ``campaigns`` that missed
    its recipients (:func:`missed_campaigns`, :func:`~bulk_mms.recipient_lists.ledger_of`):
    only there do that campaign's next failed file and ``--exclude-sent`` see whom it texted,
    and its settling tell that campaign's messages from its own. One run elsewhere (another
    job file, ``--ledger``, a database) is refused before it begins; a resend begun already is
    resumed wherever it is.

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


def refuse_sending_again(
    job: JobConfig,
    plain: JobConfig,
    *,
    folded: LedgerView | None,
    job_file: Path,
    input_file: Path | None,
    exclude_sent: Sequence[Location],
    excluded: frozenset[int],
    only: frozenset[int] | None = None,
) -> None:
    """A run of ``job`` that would text again whoever of its input the job's earlier ledgers
    sent (:func:`_earlier_ledgers`, counted as ``--exclude-sent`` counts them:
    :func:`~bulk_mms.prepare.sent_numbers`), while nothing says whom to leave out: refused,
    as a changed input under the job's own ledger is. Such a run is either ``run JOB --input
    FILE`` where FILE is not a failed file (``report --failed-csv``), a campaign of its own
    (:func:`rerun_name`); or a plain run that begins the job's ledger after its ``--input``
    runs (a pilot on a few of the list, then the whole list). A plain run resuming its own
    ledger is not asked (that ledger's own checks hold it), nor one with a ledger a day
    (``{date}``: another day's ``--input`` run is no earlier round), and the ledgers are
    read only when such an ``--input`` run's is beside. ``exclude_sent`` (``--exclude-sent``)
    leaves them out. The caller does not ask a run given ``--name``: it starts a campaign of
    its own on purpose.

    The run also counts whom the job's runs begun and unfinished would still text when
    resumed (:func:`~bulk_mms.prepare.left_to_send`): the job's own ledger's (a pilot after
    the whole list stopped partway) and its other ``--input`` runs' (a second pilot beside a
    first one stopped partway), less whom this run's own ledger sent, and less whom the
    ledgers that run's ``--exclude-sent`` named count sent (its resume leaves them out; a
    run whose resume leaves out this run's ledger is not counted: whom this run texts, it
    leaves out); ``exclude_sent`` does not leave them out (they are not sent yet): those
    runs are to be finished first. Each of the job's ledgers is folded once.

    Args:
        job: the job as this run's flags leave it.
        plain: the job as run without ``--input``, its ledger placed by the same flags
            (``job`` itself when ``input_file`` is None).
        folded: the fold of ``plain``'s ledger when :func:`finish_yesterdays` read it, else
            None (it is read here when begun).
        job_file: the job file, which each ``--input`` run beside is loaded from.
        input_file: the run's ``--input``; None: the job's own input.
        exclude_sent: the ledgers ``--exclude-sent`` names.
        excluded: the numbers those ledgers record sent (not counted again).
        only: the numbers (E.164 digits) of the input it asks about, None: every one. A
            failed file's rows that name no campaign (:func:`missed_campaigns`): the rest
            are its campaigns' to resend (:func:`refuse_resending_again`), and the way on
            is to take those rows out, not ``--exclude-sent`` (that would leave out whom a
            campaign's sent group did not reach too); asked about whatever ledgers
            ``exclude_sent`` names (another job's, another resend's), but for the numbers
            those ledgers leave out.

    Raises:
        ConfigError: naming how many, the ledgers and both ways on (exit 2, nothing sent).
        LedgerError: an earlier ledger cannot be read.
    """
    if input_file is None:  # the job as it is: its --input runs beside a ledger it begins
        if exists(job.where):
            return
    elif folded is None and exists(plain.where):
        folded = load(plain.where, statuses=False)
    reruns = _reruns_beside(plain, job)
    folds = {ledger_name(plain.where): folded} if folded is not None else {}
    unsent, unread = _unfinished_runs(job_file, plain, reruns, folds, job.where)
    pending = frozenset().union(*(numbers for _, numbers in unsent))
    if pending and exists(job.where):  # its resume would text them: less whom this run's holds
        pending -= sent_numbers([job.where], in_doubt_ok=True)
    # --exclude-sent leaves out whom its ledgers sent: the way on, but for rows it asks about
    # ``only``, which leave out whom the job's ledgers sent only when it names them
    earlier = [] if exclude_sent and only is None else _earlier_ledgers(plain, job, reruns)
    sent = (
        sent_numbers(earlier, in_doubt_ok=True, own=job.where, folded=folds)
        if earlier
        else frozenset()
    )
    if only is not None:
        sent, pending = sent & only, pending & only
    if not (sent or pending):
        return
    if not (scan := scan_input(job, excluded=(sent | pending) - excluded)).excluded:
        return
    ledgers = [*earlier, *(run.where for run, _ in unsent if run.where not in earlier)]
    named = ", ".join(display(w) for w in ledgers)
    leave_out = " ".join(f"--exclude-sent {display(w)}" for w in ledgers)
    again = "would be texted again"
    if pending:
        ways = " and ".join(
            "without --input" if run is plain else f"with --input {run.input}" for run, _ in unsent
        )
        one = len(unsent) == 1
        whom = (
            f"already sent by this job or left to send by its unfinished {'run' if one else 'runs'}"
        )
        those = "that run" if one else "those runs"
        then = f"finish {those} first (run {'it' if one else 'them'} {ways}), then add "
        if unread:  # their resume leaves out whom these count sent; unread, none are left out
            again += (
                f" (whom {', '.join(unread)} counted sent when {those} left them out is counted "
                "in: it cannot be read here)"
            )
    else:
        whom, then = "already sent by this job", "add "
    if only is not None:
        raise ConfigError(
            "--input",
            f"{count(scan.excluded, 'recipient')} of {job.input} whose rows name no campaign "
            f"(an empty {CAMPAIGN_COLUMN}: added by hand) {whom} ({named}) {again}: take those "
            "rows out of the file, or give --name NAME to text them again in a campaign of its "
            "own; nothing sent",
        )
    raise ConfigError(
        "--input" if input_file is not None else "input",
        f"{count(scan.excluded, 'recipient')} of {job.input} {whom} ({named}) {again}: "
        f"{then}{leave_out} to leave them out, or give --name NAME to text "
        "them again in a campaign of its own; nothing sent",
        source=None if input_file is not None else job.path,
    )


def _unfinished_runs(
    job_file: Path,
    plain: JobConfig,
    reruns: list[tuple[Location, Header]],
    folds: dict[str, LedgerView],
    texting: Location,
) -> tuple[list[tuple[JobConfig, frozenset[int]]], list[str]]:
    """The job's runs begun and unfinished, each with whom its resume would text
    (:func:`~bulk_mms.prepare.left_to_send`): the job's own (``plain``, whose ledger's fold
    ``folds`` holds when it is begun) and its other ``--input`` runs' (``reruns``, loaded from
    ``job_file``), each of whose folds is added to ``folds`` (by its
    :func:`~bulk_mms.prepare.ledger_name`, as :func:`~bulk_mms.prepare.sent_numbers` looks
    them up) for the resumes here and the caller to count whom it sent without reading it
    again. A resume names the ledgers its runs' ``--exclude-sent``
    named (:func:`~bulk_mms.prepare.resume_leaves_out`) and leaves out whom they count sent:
    not counted, nor is a run whose resume leaves out ``texting`` (the asking run's ledger),
    which counts sent whom it texts. And the names of such ledgers that cannot be read here
    (their rows are counted: a refusal, not a text twice).

    Raises:
        LedgerError: a ledger cannot be read.
    """
    own = folds.get(ledger_name(plain.where))
    runs = [(plain, plain.where, own)] if own is not None else []
    for where, header in reruns:
        if (rerun := _rerun_job(job_file, header, where)) is not None:
            folds[ledger_name(where)] = view = load(where, statuses=False)
            runs.append((rerun, where, view))
    unsent: list[tuple[JobConfig, frozenset[int]]] = []
    unread: list[str] = []
    asking = ledger_name(texting)
    for run, where, view in runs:
        if not still_to_send(run, view):
            continue
        found, lost = resume_leaves_out(view, where)
        if asking in {ledger_name(w) for w in found}:
            continue  # whom the asking run texts, its ledger counts sent: this resume leaves out
        gone = sent_numbers(found, in_doubt_ok=True, own=where, folded=folds)
        unsent.append((run, left_to_send(run, view, gone)))
        unread += lost
    return unsent, unread


def _rerun_job(job_file: Path, header: Header, where: Location) -> JobConfig | None:
    """The job of the ``--input`` run of ``job_file`` whose ledger, at ``where``, begins with
    ``header``: as ``run JOB --input FILE`` would resume it. None when its input is no longer
    there (no run of it can be resumed)."""
    if header.input is None or not Path(header.input).is_file():
        return None
    return _at(load_job(job_file, name=header.job, input_file=Path(header.input)), where)


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
    ``--input`` (named by :func:`rerun_name`). Its name ends in the hash of its input; when
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
    """The part of :func:`rerun_name` that ``input_file``'s name gives."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", input_file.stem).strip("-.") or "input"


def _at(job: JobConfig, where: Location) -> JobConfig:
    """The job with its ledger at ``where``, a ledger found as it is (a file, or a database's
    named ledger): not named after the job again
    (:func:`~bulk_mms.commands.common.with_ledger` names it)."""
    if isinstance(where, Path):
        return replace(job, ledger=where, database=None)
    return replace(job, database=where)
