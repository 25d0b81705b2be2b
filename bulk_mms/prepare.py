"""Everything before sending: the job's input opened and checked, its plan (read → validate →
group), what a run would do with each group given its ledger, and the dry run that says so.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import itertools
from bisect import bisect_left
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from msgspec.structs import replace

from bulk_mms._version import __version__
from bulk_mms.caps import max_cost_counts, recipient_price, run_limits
from bulk_mms.clock import Clock, SystemClock, iso
from bulk_mms.config import MAX_GROUP_SIZE, JobConfig, RetryConfig, Settings
from bulk_mms.errors import BulkMmsError, ConfigError, InputError, LedgerError, LedgerMismatch
from bulk_mms.grouping import make_groups, moved, without
from bulk_mms.ledger import (
    FORMAT,
    Header,
    LedgerView,
    Location,
    display,
    exists,
    header_at,
    holder,
    load,
    named,
    zones_source,
)
from bulk_mms.ledger.fold import FAILED, SENT, ExcludedLedger
from bulk_mms.ledger.store import database_url, is_database
from bulk_mms.models import Group, Money, Recipient, RejectedRow, Rejection
from bulk_mms.pacing import Pacer, PacingConfig
from bulk_mms.quiet import NO_COMMON_HOURS, UNKNOWN_ZONE
from bulk_mms.reader import RowReader, fingerprint, separator
from bulk_mms.recipient_lists import taken_by_resends
from bulk_mms.scan import (
    InputScan,
    Tally,
    check_columns,
    check_rejected_share,
    checked_rows,
    open_reader,
    scan_input,
    write_rejected,
)
from bulk_mms.signals import StopReason
from bulk_mms.summary import Estimate, JobSummary
from bulk_mms.suppression import Suppressed, suppression_for
from bulk_mms.validate import PhoneError, normalize_phone
from bulk_mms.words import OWN_CAP, why_code

T = TypeVar("T")


def seed_job(job: JobConfig, to: Sequence[str], now: dt.datetime) -> JobConfig:
    """The job of a seed send (``run --to``): the job's message to ``to`` only, as one group.

    Each seed number takes the template values of one of the input's first valid rows, so
    the seeds see the message as the first recipients will. The seed rows are written to a
    CSV beside the ledger (a record of what was sent to whom; UTF-8 with a byte order mark,
    read so under any ``encoding``), and the job is renamed
    ``<name>-seed-<UTC time>``: its own ledger and campaign, the real campaign untouched.

    Raises:
        ConfigError: a seed number is not valid, is repeated, is the job's own sender, or
            there are more than 8.
        InputError: the input cannot be read.
    """
    seeds: list[str] = []
    for value in to:
        try:
            phone = normalize_phone(value, job.default_region)
        except PhoneError as exc:
            raise ConfigError("--to", f"{value!r}: {exc}") from None
        if phone in seeds:
            raise ConfigError("--to", f"{value!r} is given twice")
        if phone in job.message.senders:  # as the input's rows are (checked_rows)
            raise ConfigError(
                "--to",
                f"{value!r} is the job's own sender ({phone} is in message.from): a number "
                "never texts itself",
            )
        seeds.append(phone)
    if len(seeds) > MAX_GROUP_SIZE:
        raise ConfigError("--to", f"at most {MAX_GROUP_SIZE} numbers, not {len(seeds)}")
    with open_reader(job) as reader:
        rows = checked_rows(job, reader)
        firsts = list(itertools.islice((r for r in rows if isinstance(r, Recipient)), len(seeds)))
        if not reader.complete:  # a JSONL file's columns are known once it is read through
            collections.deque(reader, maxlen=0)
            check_columns(job, reader)
    if not firsts:
        raise InputError(job.input, "has no valid row to render the message from")
    name = f"{job.name}-seed-{now.astimezone(dt.UTC):%Y%m%dT%H%M%S}"[-100:].lstrip("-._")
    path = job.ledger.parent / f"{name}.csv"
    columns = [job.phone_column, *(c for c in job.message.fields if c != job.phone_column)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # UTF-8 with a byte order mark, which the reader takes whatever the job's encoding
        # says (the seeds' values may hold what that encoding cannot write); the job's own
        # separator, which the job, kept, reads it by
        with path.open("w", encoding="utf-8-sig", newline="") as f:
            writer = csv.writer(f, delimiter=job.delimiter)
            writer.writerow(columns)
            for i, phone in enumerate(seeds):
                fields = firsts[i % len(firsts)].fields
                writer.writerow([phone, *(fields.get(c, "") for c in columns[1:])])
    except OSError as exc:
        raise ConfigError("--to", f"cannot write {path}: {exc.strerror or exc}") from None
    return replace(
        job,
        name=name,
        input=path,
        ledger=path.with_suffix(".jsonl"),
        database=str(named(job.database, name, rename=True)) if job.database else None,
        group_size=len(seeds),
        group_by=None,
        mix_unrelated=True,
        send_window=None,  # the seeds are the operator's own phones, asked for now
    )


def header_for(job: JobConfig, input_fingerprint: str, clock: Clock) -> Header:
    """The ledger's first event for this job (a new ledger adds its campaign and columns)."""
    return Header(
        job=job.name,
        fingerprint=input_fingerprint,
        phone_column=job.phone_column,
        group_size=job.group_size,
        group_by=job.group_by,
        input=str(job.input.resolve()),
        from_=job.message.from_,
        recipient_window=str(job.recipient_window) if job.recipient_window else None,
        zones=zones_source(job.recipient_window, job.timezone_column),
        rejoins=job.group_by is not None and job.recipient_window is not None,
        encoding=job.encoding,
        delimiter=separator(job.input, job.delimiter),
        format=FORMAT,
        version=__version__,
        time=iso(clock.wall()),
    )


def check_resumable(
    view: LedgerView,
    expected: Header,
    where: str,
    scan: InputScan,
    excluded_from: Sequence[ExcludedLedger] = (),
) -> None:
    """Refuse to resume a ledger written for another job, input or grouping (``scan``: the
    input's, for a ledger begun by a bulk-mms that grouped it otherwise: :func:`_regrouped`).

    A ledger whose earlier run sent leaving out more rows as already sent (``--exclude-sent``:
    :attr:`~bulk_mms.ledger.LedgerView.sent_excluded`) than ``scan`` does is refused too: a
    rerun without the same ``--exclude-sent`` (cron's line, a run after ``--limit`` or a
    crash) would text them. Not when this run's ``--exclude-sent`` (``excluded_from``:
    :func:`ledger_names`) names every ledger those runs named
    (:attr:`~bulk_mms.ledger.LedgerView.sent_excluded_from`), each still of the campaign it
    was (not another begun at its path since, which counts none of theirs): it leaves out
    whom they count sent now, and one they count so no more (a delivery report moved them
    out of a sent group, a resend's untried numbers whose input is gone) is texted by no run
    of theirs.

    Raises:
        LedgerMismatch: it belongs to a different run.
    """
    header = view.header
    if header is None:
        return
    if (why := header.mismatch(expected, where)) is not None:
        raise LedgerMismatch(where, why)
    named = view.sent_excluded_from
    given = dict(excluded_from)
    if view.sent_excluded > scan.excluded and not (named and _all_given(named, given)):
        replaced = [n for n, campaign in named if campaign and given.get(n, campaign) != campaign]
        same = (
            f"(the ledger at {replaced[0]} is no longer the one they named: another campaign "
            "was begun there since; name the ledger they named, wherever it was moved)"
            if replaced
            else f"({' '.join(f'--exclude-sent {n}' for n, _ in named)})"
            if named  # else begun by a bulk-mms that did not record them
            else "(given already: those ledgers now count fewer sent, a report moved some to "
            "go again or a resend's input is gone; finish them first)"
        )
        raise LedgerMismatch(
            where,
            f"was sent leaving out {view.sent_excluded} rows already sent (--exclude-sent), "
            f"and this run leaves out {scan.excluded}: the rest would be texted again; give "
            f"the same --exclude-sent as the runs that sent {same}",
        )
    if (why := _regrouped(header, scan)) is None:
        return
    raise LedgerMismatch(
        where,
        f"was begun by bulk-mms {header.version or '(an older one)'}, which {why}, and "
        "regrouping would resend people already sent: finish this ledger with the bulk-mms "
        "that began it, or go on in a new ledger with --exclude-sent naming this one",
    )


def _all_given(named: Sequence[ExcludedLedger], given: Mapping[str, str]) -> bool:
    """Whether ``given`` (a run's ``--exclude-sent`` ledgers: name → campaign) names every
    ledger of ``named``, each still of its campaign (any, for one recorded without)."""
    return all(n in given and campaign in ("", given[n]) for n, campaign in named)


def _regrouped(header: Header, scan: InputScan) -> str | None:
    """How the bulk-mms that began a ledger of ``header`` grouped ``scan``'s input otherwise
    than this one (the groups after the rows it grouped otherwise would not be the ones it
    sent), or None. Begun before its header kept where zones come from, it grouped rows this
    one rejects: a timezone_column value naming no zone; with ``group_by``, zones that share
    no time of the window. Begun before it kept :attr:`Header.rejoins`, it took a person's
    rows after one in a ``group_by`` group that shares no hour of the window for duplicates."""
    if not header.recipient_window:
        return None
    apart = scan.apart
    if header.group_by and not header.rejoins and apart is not None and apart.released:
        return (
            f"took the later rows of the {len(apart.released)} people in "
            f"{header.group_by!r} groups that share no hour of the window for duplicates; "
            "this one sends them with their next group"
        )
    if header.zones is not None:
        return None
    if unknown := scan.lost.get(UNKNOWN_ZONE):
        why = f"the {unknown} rows whose timezone_column names no zone by their number"
    elif header.group_by and (never := scan.lost.get(NO_COMMON_HOURS)):
        # a never-open member held its group_by chunk; rejecting it shifts the key's chunks
        why = (
            f"the {never} rows whose zones share no time of the window into their "
            f"{header.group_by!r} groups"
        )
    else:
        return None
    return f"grouped {why}; this one rejects them"


def key_valid_until(
    view: LedgerView, retry: RetryConfig, group_id: str, fresh: float | None = None
) -> float | None:
    """Until when (wall clock) a repeat of this group is safe (its key is replayed), if at all.

    ``fresh`` stands in for the first attempt of a group never tried before (a moment before
    it, so the window it gives is, if anything, short).
    """
    if not retry.retry_ambiguous:
        return None
    rec = view.groups.get(group_id)
    t0 = rec.t0 if rec is not None and rec.t0 is not None else fresh
    return None if t0 is None else t0 + retry.idempotency_window_s


def disposition(
    view: LedgerView, retry: RetryConfig, group_id: str, now: float, *, resend_in_doubt: bool
) -> str:
    """What a run does with a group: ``"skip"`` (done), ``"hold"`` (in doubt) or ``"send"``.

    An in-doubt group is sent again if the operator says so, or if its key still holds at
    ``now`` (wall clock).
    """
    if view.is_done(group_id):
        return "skip"
    if view.in_doubt(group_id) and not resend_in_doubt:
        until = key_valid_until(view, retry, group_id)
        if until is None or now >= until:
            return "hold"
    return "send"


def in_window(job: JobConfig, now: dt.datetime) -> bool:
    """Whether the job may send at ``now`` (an aware datetime): always, without a send_window."""
    if job.send_window is None:
        return True
    return job.send_window.contains(now.astimezone(job.zone).time())


def plan(
    job: JobConfig,
    reader: RowReader,
    suppressed: Container[str] = (),
    view: LedgerView | None = None,
    *,
    scan: InputScan | None = None,
    excluded: Container[int] = (),
    tally: Tally | None = None,
) -> Iterator[Group | RejectedRow]:
    """The whole pipeline up to sending, as one lazy stream: rows read and checked as every
    pass checks them (:func:`~bulk_mms.scan.checked_rows`: numbers, text, ``group_by``
    values, duplicates, ``excluded``), counted by ``tally`` if given (what a scan would
    find, found in this pass) and grouped (where each key ends: the ``scan`` of the same
    input), then each group as the ledger and the suppression list leave it
    (:func:`members_left`)."""
    view = view if view is not None else LedgerView()
    sent_before = SortedNumbers(counted_sent(view))
    rows = checked_rows(
        job,
        reader,
        excluded,
        apart=scan.apart if scan is not None else None,
        known=lambda: view.groups,
    )
    if tally is not None:
        rows = tally.count(rows)
    for item in make_groups(rows, job, scan.last_lines if scan is not None else None):
        if type(item) is RejectedRow:
            yield item
            continue
        if view.groups.get(item.id) is None:
            if sent_before:
                _not_regrouped(item, sent_before, job)
            if not suppressed:  # nothing for members_left to do: the group as it is
                yield item
                continue
        yield from members_left(item, view, suppressed, job)


def retired_senders(job: JobConfig, view: LedgerView) -> tuple[str, ...]:
    """The job's senders the API refused in this ledger (out of the pool for the rest of the
    job), in the job's order: what a dry run and a run's summary say of them."""
    return tuple(x for x in job.message.senders if x in view.retired)


def counted_sent(view: LedgerView) -> Iterator[str]:
    """The numbers a ledger counts sent, one by one (not a member a delivery report moved out
    of a sent group to go again): what a resume must not regroup (:func:`plan`) and what
    ``--exclude-sent`` leaves out (:func:`sent_numbers`)."""
    return (p for rec in view.sent_groups() for p in rec.counted)


class SortedNumbers:
    """Numbers for ``in``, held as one sorted list searched by bisection: a pointer a number,
    where a set's table takes three to six times that. The list refers to the strings it is
    given (a :class:`~bulk_mms.ledger.LedgerView`'s own, which the view keeps), and copies
    none. A number given twice is held twice (``len`` counts it so)."""

    __slots__ = ("_numbers",)

    def __init__(self, numbers: Iterable[str]) -> None:
        self._numbers = sorted(numbers)

    def __bool__(self) -> bool:
        return bool(self._numbers)

    def __len__(self) -> int:
        return len(self._numbers)

    def __contains__(self, phone: object) -> bool:
        return isinstance(phone, str) and not self.isdisjoint((phone,))

    def isdisjoint(self, phones: Iterable[str]) -> bool:
        """Whether none of ``phones`` is one of these numbers."""
        numbers = self._numbers
        end = len(numbers)
        for phone in phones:
            i = bisect_left(numbers, phone)
            if i < end and numbers[i] == phone:
                return False
        return True


def _not_regrouped(group: Group, sent_before: SortedNumbers, job: JobConfig) -> None:
    """Refuse ``group``, one the ledger has never seen, when it holds a number the ledger
    counts sent in another group: this pass groups the input otherwise than the run that
    began the ledger (a bulk-mms or phonenumbers that reads some rows otherwise, another
    ``--exclude-sent``), and every group from here on could text people a second time.

    Raises:
        LedgerMismatch: naming the first such row's line.
    """
    if sent_before.isdisjoint(group.to):
        return
    for phone, line in zip(group.to, group.lines, strict=True):
        if phone in sent_before:
            where = display(job.where)
            raise LedgerMismatch(
                where,
                f"line {line}'s number was sent in another group of this ledger, but this run "
                "groups the input otherwise (its rows checked otherwise since the ledger "
                "began: another bulk-mms or phonenumbers, or another --exclude-sent): "
                "resuming would text people twice; finish this ledger with what began it, "
                f"or run under a new --name with --exclude-sent {where}",
            )


def members_left(
    group: Group, view: LedgerView, suppressed: Container[str], job: JobConfig
) -> Iterator[Group | RejectedRow]:
    """A group as the ledger and the suppression list leave it.

    Grouping depends on the input alone, so a resume finds the groups it sent whatever the list
    says now. Then the ledger decides while it knows the group: one that failed with members
    the API refused by name (opted out), or that an earlier run made anew without suppressed
    members (``remade``), gives way to the group made without them, and so on; one it knows
    otherwise stands as it is (sent, in doubt, pending: a resume acts on what was). Only a
    group the ledger has never seen meets today's list: its suppressed members are rejected
    ``suppressed`` and it is made anew without them, marked :attr:`Group.suppressed` for the
    run to record (``remade``) before it sends it, so no later run regroups it. The members
    an earlier run left out so are rejected ``suppressed`` again as the chain is followed:
    every pass counts every row it passes, and the ledger records each line once.
    """
    while (remade := remade_from(group, view, job)) is not None:
        yield from _left_out_before(group, view)
        group = remade
    if suppressed and view.groups.get(group.id) is None:  # (an empty list drops no one)
        drop = _suppressed_rows(group, suppressed)
        yield from drop
        if drop:
            gone = tuple(row.value for row in drop)
            remade = without(group, gone, job)
            if remade is None:
                return  # nobody left: their rows are all rejected
            group = replace(
                remade,
                origin=group.id,
                suppressed=gone,
                refused=group.refused,
                stayed=group.stayed,
            )
    yield group


def _left_out_before(group: Group, view: LedgerView) -> list[RejectedRow]:
    """The rows of ``group`` that an earlier run left out as suppressed when it made the group
    anew (``remade``: never attempted itself); none for a group refused or moved."""
    rec = view.groups.get(group.id)
    if rec is None or rec.state is not None or not rec.refused:
        return []
    return _suppressed_rows(group, rec.refused)


def _suppressed_rows(group: Group, listed: Container[str]) -> list[RejectedRow]:
    """The rows of ``group``'s members in ``listed``, rejected ``suppressed``."""
    return [
        RejectedRow(
            line, phone, f"suppressed: {phone} is on the suppression list", Rejection.SUPPRESSED
        )
        for phone, line in zip(group.to, group.lines, strict=True)
        if phone in listed
    ]


def suppressed_as_planned(
    scan: InputScan, view: LedgerView, suppressed: Suppressed, excluded: Container[int] = ()
) -> InputScan:
    """``scan`` with its count of suppressed recipients as the plan leaves them out
    (:func:`members_left`), not as today's list alone says. The scan counts every number on
    the list; but a group the ledger has tried stands as it is (a member listed since is
    counted in its group's state: sent, or refused at the try), and a member an earlier run
    left out of a group it made anew (``remade``) stays left out, on the list now or not.
    So a rerun that stops before its input's end counts its valid recipients, and the
    ledger's ``planned`` event takes them, as its plan goes on to find them. ``excluded``:
    the numbers the scan left out as excluded (not its recipients)."""
    groups = view.groups.values()
    listed = {p for rec in groups for p in rec.to if p in suppressed} if len(suppressed) else set()
    unlisted = {
        p for rec in groups if rec.state is None for p in rec.refused if p not in suppressed
    }
    if not listed and not unlisted:
        return scan
    tried = sum(1 for p in listed if int(p[1:]) not in excluded)
    left_out = sum(1 for p in unlisted if int(p[1:]) not in excluded)
    return replace(scan, suppressed=max(0, scan.suppressed - tried) + left_out)


def remade_from(group: Group, view: LedgerView, job: JobConfig) -> Group | None:
    """The group the ledger says goes out in place of ``group``, if any: made without the
    members the API refused by name (they failed there, and :attr:`Group.refused` carries
    them on to be counted) or that an earlier run left out as suppressed (``remade``), or of
    the members a delivery report moved out of it once it was sent (the others stayed sent
    there, and :attr:`Group.stayed` carries them on to be counted). None
    when ``group`` stands as it is: unknown to the ledger, sent, in doubt or pending with that
    membership, or with every member refused."""
    rec = view.groups.get(group.id)
    if rec is not None and rec.moved and rec.state == SENT and rec.sender is not None:
        again = moved(group, rec.moved, rec.sender, job)  # blocked sender, or a carrier's "later"
        if again is None:
            return None
        stayed = group.stayed + tuple(p for p in group.to if p not in rec.moved)
        return replace(again, not_before=rec.moved_after, refused=group.refused, stayed=stayed)
    if rec is None or not rec.refused or rec.state not in (FAILED, None):
        return None
    remade = without(group, rec.refused, job)
    if remade is None:
        return None
    refused = group.refused + (rec.refused if rec.state == FAILED else ())
    return replace(remade, refused=refused, stayed=group.stayed)


def not_before(group: Group, view: LedgerView) -> float:
    """When a run may send ``group`` at the earliest (wall clock; 0: at once), as the ledger
    has it now: the reset of the carrier's cap that holds it. Members a delivery report moved
    out of a sent group wait for theirs (:attr:`Group.not_before`, from :func:`remade_from`);
    a group the cap refused at the send waits, while it is pending a rerun, for the reset
    its ``failed`` event keeps (:attr:`GroupRecord.capped_until
    <bulk_mms.ledger.GroupRecord.capped_until>`). Read from the fold, so every process on a
    shared ledger holds the same groups until the same time. The account's own cap
    (``daily_recipients``: recorded ``LimitReached``, its reset kept for the report) holds
    nothing here: the run asks it again before the group leaves
    (:meth:`~bulk_mms.caps.DailyCap.reserve`), raised since or not."""
    rec = view.groups.get(group.id)
    if rec is None or why_code(rec.why) == OWN_CAP:
        return group.not_before
    return max(group.not_before, rec.capped_until)


def pacing_config(settings: Settings) -> PacingConfig:
    """The pacer's part of the settings."""
    return PacingConfig(
        rate=settings.rate,
        cost=settings.cost,
        max_queue_wait_s=settings.max_queue_wait_s,
        sender_limits=settings.sender_limits,
        type_limits=settings.type_limits,
        max_pause_s=settings.retry.max_retry_after,
    )


def estimate(
    job: JobConfig,
    settings: Settings,
    groups: int,
    recipients: int,
    view: LedgerView,
    *,
    clock: Clock,
) -> Estimate:
    """Time at the lowest of the account rate and the senders' summed ceilings; cost at the
    price a run counts a recipient at (:func:`~bulk_mms.caps.recipient_price`).

    The time is a floor: Telnyx's queue (``wait_seconds``) can only slow the adaptive pacing.
    """
    pacer = Pacer(pacing_config(settings), job.message.senders, clock=clock)
    rate = min(settings.rate, sum(p.ceiling for p in pacer.senders.values()))
    units = recipients if settings.cost == "recipient" else groups
    price, basis = recipient_price(settings, view)
    if price is None:
        return Estimate(units / rate, rate, None, basis)
    return Estimate(units / rate, rate, Money(price.amount * recipients, price.currency), basis)


async def dry_run(
    job: JobConfig,
    settings: Settings,
    *,
    clock: Clock | None = None,
    resend_in_doubt: bool = False,
    preview: int = 5,
    limit: int | None = None,
    excluded: Container[int] = (),
    excluded_from: Sequence[ExcludedLedger] = (),
    rejected_csv: Path | None = None,
) -> JobSummary:
    """Read, validate and group the whole input as a run would, and refuse it as a run would
    (in the same order: the input, then the ledger and the limits); send and write nothing but
    ``rejected_csv``.

    The summary's ``sent_*`` counts are what a real run with the same settings would send now:
    the skip/hold decision is the runner's own (:func:`disposition`), its limits are checked
    as a run checks them (:func:`~bulk_mms.caps.run_limits`: ``max_cost`` needs a price).
    A job with ``group_by`` is scanned first (where each key ends decides its groups); any
    other is scanned and planned in one pass.

    Raises:
        InputError: the input cannot be read to its end, or loses too many rows.
        ConfigError: a setting a run would refuse.
        LedgerMismatch: the ledger belongs to another input or job.
    """
    clock = clock or SystemClock()
    started = clock.monotonic()
    s = JobSummary(job.name)
    dry = _DryRun(
        s,
        settings,
        clock,
        resend_in_doubt=resend_in_doubt,
        preview=preview,
        limit=limit,
        excluded_from=excluded_from,
    )
    if job.group_by is not None:
        scan = scan_input(job, excluded=excluded, rejected_csv=rejected_csv)
        check_rejected_share(scan, job, rejected_csv)
        view = load(job.where, statuses=False) if exists(job.where) else LedgerView()
        dry.check_ledger(job, view, scan)
        suppressed = suppression_for(settings.suppression_file, job.where)
        with open_reader(job) as reader:
            dry.take(plan(job, reader, suppressed, view, scan=scan, excluded=excluded), view)
    else:
        view = dry.one_pass(job, excluded, rejected_csv)
    s.read_whole_input = True
    s.duration_s = clock.monotonic() - started
    s.stopped = StopReason.DRY_RUN
    estimated = estimate(job, settings, s.sent_groups, s.sent_recipients, view, clock=clock)
    price, paid = max_cost_counts(settings, view)
    counted = Money(price.amount * s.sent_recipients, price.currency) if price else None
    s.estimate = replace(estimated, paid=paid, counted=counted)
    return s


class _DryRun:
    """A dry run's summary, filled in as its plan streams by. Private."""

    def __init__(
        self,
        summary: JobSummary,
        settings: Settings,
        clock: Clock,
        *,
        resend_in_doubt: bool,
        preview: int,
        limit: int | None,
        excluded_from: Sequence[ExcludedLedger],
    ) -> None:
        self.s = summary
        self.settings = settings
        self.clock = clock
        self.resend_in_doubt = resend_in_doubt
        self.preview = preview
        self.limit = limit
        self.excluded_from = excluded_from

    def check_ledger(self, job: JobConfig, view: LedgerView, scan: InputScan) -> None:
        """The refusals after the input's, in a run's order (limits, then the ledger's job
        and input); then what the summary says of the ledger."""
        self.s.input = scan
        run_limits(job, self.settings, view, self.clock)
        header = header_for(job, scan.fingerprint, self.clock)
        check_resumable(view, header, display(job.where), scan, self.excluded_from)
        self.s.locked_by = holder(job.where)
        self.s.retired = retired_senders(job, view)

    def one_pass(
        self, job: JobConfig, excluded: Container[int], rejected_csv: Path | None
    ) -> LedgerView:
        """Scan and plan a job without ``group_by`` in one pass over its input. What the
        plan needs first (the ledger, the suppression list) is read first, but a refusal of
        theirs is raised only where a scan-first dry run would raise it: after the input's."""
        view, unreadable = _attempt(
            lambda: load(job.where, statuses=False) if exists(job.where) else LedgerView(),
            LedgerView(),
        )
        nobody: Container[str] = ()
        suppressed, unlisted = _attempt(
            lambda: suppression_for(self.settings.suppression_file, job.where), nobody
        )
        tally = Tally(job)
        with open_reader(job) as reader:
            items = plan(job, reader, suppressed, view, excluded=excluded, tally=tally)
            write_rejected(rejected_csv, self._rejected(items, view), reader.delimiter)
        scan = tally.scan(job, reader)
        check_rejected_share(scan, job, rejected_csv)
        if unreadable is not None:
            raise unreadable
        self.check_ledger(job, view, scan)
        if unlisted is not None:
            raise unlisted
        return view

    def _rejected(
        self, items: Iterator[Group | RejectedRow], view: LedgerView
    ) -> Iterator[tuple[int, str, str]]:
        """:meth:`take`, yielding the rows a scan rejects (line, value, reason): every
        rejected row but those the suppression list drops from groups."""
        for item in self._taken(items, view):
            if item.kind is not Rejection.SUPPRESSED:
                yield item.line, item.value, item.reason

    def take(self, items: Iterator[Group | RejectedRow], view: LedgerView) -> None:
        """Count the plan's groups and rejected rows into the summary."""
        for _ in self._taken(items, view):
            pass

    def _taken(
        self, items: Iterator[Group | RejectedRow], view: LedgerView
    ) -> Iterator[RejectedRow]:
        """The plan's groups into the summary, as a run would decide each now; its rejected
        rows counted and passed on."""
        s, retry, limit = self.s, self.settings.retry, self.limit
        now = self.clock.wall()
        for item in items:
            if type(item) is RejectedRow:
                s.note_rejected(item.kind)
                yield item
                continue
            action = disposition(view, retry, item.id, now, resend_in_doubt=self.resend_in_doubt)
            if action == "skip":
                s.skipped_groups += 1
            elif action == "hold":
                s.held_groups += 1
            elif (until := not_before(item, view)) > now:  # a carrier's reset, as a run holds it
                s.waiting_recipients += len(item.to)
                s.waiting_until = max(s.waiting_until, until)
            elif limit is None or s.sent_groups < limit:  # else for the next run, as a run does
                self._send(item)

    def _send(self, group: Group) -> None:
        """A group the run would send now, into the summary."""
        s = self.s
        s.sent_groups += 1
        s.sent_recipients += len(group.to)
        if group.zones:
            key = ", ".join(group.zones)
            s.zones[key] = s.zones.get(key, 0) + len(group.to)
        s.note_template(group)
        if len(s.preview) < self.preview:
            s.preview.append(group)


def _attempt(make: Callable[[], T], instead: T) -> tuple[T, BulkMmsError | None]:
    """``make()`` and None, or ``instead`` and the refusal ``make`` raised (for the caller to
    raise in its turn)."""
    try:
        return make(), None
    except BulkMmsError as exc:
        return instead, exc


def continues_earlier(job: JobConfig, earlier: Location) -> LedgerView | None:
    """The fold of ``earlier`` (the previous date's ledger) when a run of a ``{date}`` job
    belongs there rather than in its own: ``earlier`` is this job's, the job's own ledger is
    not begun, ``earlier`` is for this very input and unfinished (:func:`unfinished`), and
    the job's ``send_window`` does not cross midnight (its ``{date}`` is already the date
    its night began on, :func:`~bulk_mms.config.job.load_job`: the previous date's ledger is
    the night before's). None when it does not."""
    if job.send_window is not None and job.send_window.crosses_midnight:  # its date says
        return None
    if earlier == job.where or exists(job.where):
        return None
    return unfinished(job, earlier)


def unfinished(job: JobConfig, where: Location) -> LedgerView | None:
    """The ledger at ``where``'s fold when a run of ``job`` there would send more
    (:func:`still_to_send`); None otherwise, or when there is none. A ledger of another job or
    input is told by its header, not folded.

    Raises:
        LedgerError: it cannot be read.
    """
    if not _runs_on(job, header_at(where)):
        return None
    view = load(where, statuses=False)
    return view if view.recipients().sends_more else None


def still_to_send(job: JobConfig, view: LedgerView) -> bool:
    """Whether ``view`` (a ledger's fold) is ``job``'s, for this very input, and unfinished
    (:attr:`~bulk_mms.ledger.RecipientCounts.sends_more`): a run of ``job`` there would send
    more."""
    return _runs_on(job, view.header) and view.recipients().sends_more


def _runs_on(job: JobConfig, header: Header | None) -> bool:
    """Whether ``header`` is a ledger's of ``job``, for this very input (its hash)."""
    return (
        header is not None
        and header.job == job.name
        and header.fingerprint == fingerprint(job.input)
    )


def left_to_send(
    job: JobConfig, view: LedgerView, leaving_out: Container[int] = ()
) -> frozenset[int]:
    """The numbers (E.164 digits) of ``job``'s input that ``view``, the fold of its ledger,
    begun and unfinished (:func:`still_to_send`), has neither sent nor failed for good, and
    ``leaving_out`` (whom the ledgers its runs excluded count sent now:
    :func:`resume_leaves_out`) does not hold: whom resuming it would text."""
    done = {p for rec in view.groups.values() if rec.state in (SENT, FAILED) for p in rec.counted}
    with open_reader(job) as reader:
        return frozenset(
            number
            for item in checked_rows(job, reader)
            if type(item) is Recipient
            and item.phone not in done
            and (number := int(item.phone[1:])) not in leaving_out
        )


def resume_leaves_out(view: LedgerView, where: Location) -> tuple[list[Location], list[str]]:
    """The ledgers a resume of the ledger at ``where`` (its fold: ``view``) must name to
    ``--exclude-sent`` (:attr:`~bulk_mms.ledger.LedgerView.sent_excluded_from`, as
    :func:`check_resumable` holds it to them), each as it can be opened here; and the names
    of those that cannot be: not there, of another campaign now (another begun at its path
    since), or a database's other than ``where``'s (its recorded name has no password; one
    in ``where``'s database is opened through ``where``'s own). A caller counts the rows of
    those it cannot open as the resume's to send.

    Raises:
        LedgerError: a ledger cannot be read.
    """
    found: list[Location] = []
    lost: list[str] = []
    for name, campaign in view.sent_excluded_from:
        at = _opened_as(name, where)
        header = header_at(at) if at is not None else None
        if at is not None and header is not None and campaign in ("", header.campaign or ""):
            found.append(at)
        else:
            lost.append(name)
    return found, lost


def _opened_as(name: str, beside: Location) -> Location | None:
    """The location the ledger ``name`` (:func:`ledger_name`) is opened by from a run whose
    ledger is ``beside``: a file's path as it is; a database's ledger through ``beside``'s
    URL when that is its database (None otherwise, or when ``name`` names no ledger)."""
    if not is_database(name):
        return Path(name)
    if not is_database(beside) or not (ledger := database_url(name).query.get("ledger")):
        return None
    at = named(beside, ledger, rename=True)
    return at if ledger_name(at) == name else None


def ledger_name(where: Location) -> str:
    """How a run's ledger records a ledger its ``--exclude-sent`` names: a file by its
    absolute path, a database's ledger as named to a person (no password)."""
    return display(where.resolve() if isinstance(where, Path) else where)


def ledger_names(ledgers: Sequence[Location]) -> tuple[ExcludedLedger, ...]:
    """How a run's ledger records the ledgers its ``--exclude-sent`` names
    (:attr:`~bulk_mms.ledger.events.RunStarted.excluded_from`), each once: a file by its
    absolute path, a database's ledger as named to a person (no password); each with its
    campaign (its header's, "" for none), which another ledger begun at its path since has
    not.

    Raises:
        LedgerError: a ledger cannot be read.
    """
    names = {ledger_name(w): w for w in ledgers}
    return tuple(
        (name, (header.campaign or "") if (header := header_at(w)) is not None else "")
        for name, w in names.items()
    )


def sent_numbers(
    ledgers: Sequence[Location],
    *,
    in_doubt_ok: bool = False,
    own: Location | None = None,
    folded: Mapping[str, LedgerView] | None = None,
) -> frozenset[int]:
    """The numbers (E.164 digits) these ledgers record sent (``run --exclude-sent``): as
    their counts have them, so not a member a delivery report moved out of a sent group to go
    again (a carrier's cap, a blocked sender), whom the old ledger counts not attempted; and
    every number a resend of its failed file (or a later round's) took, a ledger beside it in
    the same folder or database (:func:`~bulk_mms.recipient_lists.taken_by_resends`): that
    resend texts them, or has; not one the API refused there for good and no later round
    took (nobody sent it: this run does). Never the run's own ledger, ``own`` (resuming a
    resend of such a failed file: the numbers it holds are the ones it is to send).
    ``folded``: the folds (without statuses) of those ledgers the caller has, by their
    :func:`ledger_name` (a path found beside a ledger and one a ledger recorded are one
    ledger however each was written), not read again.

    Raises:
        LedgerError: a ledger is not there or cannot be read; or it has recipients in doubt
            (a request whose answer was lost may have been taken: neither sent nor not),
            unless ``in_doubt_ok`` (``--resend-in-doubt``: a duplicate is acceptable).
    """
    if not ledgers:
        return frozenset()
    numbers: set[int] = set()
    header = header_at(own) if own is not None else None
    besides = header.campaign if header is not None else None
    for where in ledgers:
        if not exists(where):
            raise LedgerError(display(where), "no such ledger (--exclude-sent)")
        view = (folded or {}).get(ledger_name(where))
        if view is None:
            view = load(where, statuses=False)
        if (doubts := view.recipients().in_doubt) and not in_doubt_ok:
            raise LedgerError(
                display(where),
                f"{doubts} recipients in doubt (--exclude-sent): the API may have taken their "
                f"messages, so they may have been sent; settle them by the API's records "
                f"first (bulk-mms track {display(where)}), or give --resend-in-doubt to "
                "send them in this campaign anyway",
            )
        numbers.update(int(phone[1:]) for phone in counted_sent(view))
        if view.campaign is not None:
            resent = taken_by_resends(where, view.campaign, refused=False, besides=besides)
            numbers.update(int(phone[1:]) for phone in resent)
    return frozenset(numbers)
