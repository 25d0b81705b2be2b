"""The people a ledger names, as CSV files: what ``bulk-mms report`` writes beside its summary.

:func:`write_failed_csv` (``--failed-csv``) turns the recipients no rerun will send (failed for
good, or not delivered) into an input file a new job can take as it is: never one that is in
doubt or that a plain rerun sends, so nobody is texted twice; :func:`lists_nobody` tells such a
file that lists nobody. :func:`write_rejected_csv` (``--rejected-csv``) lists the input rows
rejected (the losses), :func:`write_recipients_csv` (``--recipients-csv``) every recipient the
ledger names, with where each stands. Each reads a :class:`~bulk_mms.report.LedgerSummary`
(:func:`~bulk_mms.report.summarize`) and the ledger it names; every file goes through
:func:`~bulk_mms.csvfile.write_csv` (whole or not at all, no formulas), and every error or
reason is said in words (:mod:`bulk_mms.words`).
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Container, Iterator
from itertools import chain
from pathlib import Path
from typing import Final

import structlog

from bulk_mms.codes import MEANINGS
from bulk_mms.csvfile import CAMPAIGN_COLUMN, REASON_COLUMN, own_delimiter, write_csv
from bulk_mms.errors import InputError, LedgerError, LedgerUnavailable
from bulk_mms.ledger import (
    Attempt,
    Event,
    Failed,
    GroupRecord,
    Header,
    InDoubt,
    LedgerView,
    Location,
    Rejected,
    Sent,
    display,
    headers_beside,
    load,
    read_events,
)
from bulk_mms.ledger.fold import FAILED, NOT_ATTEMPTED, NOT_RESENT, SENT, SHARE_PLACES, Miss
from bulk_mms.ledger.store import is_database
from bulk_mms.lines import BLANK
from bulk_mms.models import LOST, row_kind
from bulk_mms.reader import Row, RowReader, file_encoding, fingerprint
from bulk_mms.report import LedgerSummary, waiting
from bulk_mms.scan import REJECTED_COLUMNS
from bulk_mms.validate import PhoneError, normalize_phone
from bulk_mms.words import BY_KIND, OPEN, error_words, why_words

log = structlog.get_logger(__name__)


def lists_nobody(path: Path) -> bool:
    """Whether ``path`` is a file :func:`write_failed_csv` wrote that lists nobody: its header
    alone, naming :data:`~bulk_mms.csvfile.CAMPAIGN_COLUMN` (a resend of it has nothing to
    send), maybe followed by rows of empty cells (a spreadsheet's, once its rows were
    cleared), which the reader skips as blank lines. Any other file, or one that cannot be
    read, is not (its run says what is wrong)."""
    try:
        if not path.is_file():  # a FIFO's open would wait for a writer: the run refuses it
            return False
        with path.open("rb") as f:
            head = f.read(_HEADER_MAX + 1)
    except OSError:
        return False
    if len(head) > _HEADER_MAX:
        return False
    lines = [line for line in head.decode("utf-8-sig", "replace").splitlines() if line.strip()]
    if not lines:
        return False
    sep = own_delimiter(lines[0]) or ","
    if any(line.strip(_BLANK + sep) for line in lines[1:]):  # a row of empty cells is none
        return False
    return CAMPAIGN_COLUMN in next(csv.reader(lines[:1], delimiter=sep))


#: The most a failed file that lists nobody can hold: its header row (and rows of empty cells).
_HEADER_MAX: Final = 64 * 1024
#: What a line of a file that lists nobody may hold besides separators, as the reader skips
#: such a line (:data:`~bulk_mms.lines.BLANK`).
_BLANK: Final = BLANK.decode("ascii")


def write_failed_csv(s: LedgerSummary, out: Path) -> tuple[int, bool]:
    """Write the recipients who did not get the message as a CSV a new job can take.

    Each recipient's whole input row is written, as the ledger recorded it when the group was
    sent, so the new job's templates find the same columns whatever became of the input; for
    a ledger that records no rows, the row is re-read from the input when it is still there
    and unchanged (its fingerprint matches the ledger's); otherwise only the phone column. A
    ``bulk_mms_reason`` column says why, and ``bulk_mms_campaign`` which campaign missed them
    (replacing those columns of an input that was itself such a file). Recipients the job's
    deadline left unsent are not in it (:attr:`LedgerSummary.expired_left_out` counts them):
    the deadline says a late message is worse than none, and a resend is a campaign of its
    own, whose ``max_age_s`` would start anew. Nor are recipients who opted out (a 40300 at
    the send or in their delivery report; :attr:`LedgerSummary.opted_out_left_out` counts
    them): they are on the suppression list, and nobody is to text them again. Each is told
    by the kind of miss the fold gave it (:class:`~bulk_mms.ledger.fold.Miss`), never by
    its why's words.
    Written by :func:`~bulk_mms.csvfile.write_csv` in UTF-8 with a byte order mark (so a job
    whose own input is Windows-1252 reads it as UTF-8), its columns separated as the job's
    input was (the ledger header's ``delimiter``: a spreadsheet that wrote the input opens
    it, and the reader takes a file of failed recipients by its own separator:
    :func:`~bulk_mms.csvfile.own_delimiter`): whole or not at all, and no cell a
    spreadsheet runs as a formula (E.164 numbers stay as they are, so the file reads back as
    a job's input).

    Returns:
        (rows written, whether they are the original rows).
    """
    wanted = left_to_resend(s)
    source = Path(s.input) if s.input else None
    rows: list[dict[str, str]] = []
    columns = [s.phone_column]
    full = False
    recorded = _recorded_rows(s, wanted) if wanted and s.columns else None
    if recorded is not None:
        columns, rows, full = [s.phone_column, *s.columns], recorded, True
    elif (
        wanted and source is not None and source.is_file() and fingerprint(source) == s.fingerprint
    ):
        encoding = s.encoding or file_encoding(source)
        columns, rows = _original_rows(source, s.phone_column, wanted, encoding, s.delimiter)
        full = True
    else:
        rows = [{s.phone_column: phone} for phone in wanted]
    for row in rows:
        row[REASON_COLUMN] = wanted[_phone_key(row[s.phone_column])]
        row[CAMPAIGN_COLUMN] = s.campaign or ""
    ours = (REASON_COLUMN, CAMPAIGN_COLUMN)
    columns = [c for c in columns if c not in ours]
    header = [*columns, *ours]
    cells = ([row.get(c, "") for c in header] for row in rows)
    n = write_csv(out, header, cells, delimiter=s.delimiter)
    return n, full


def left_to_resend(s: LedgerSummary) -> dict[str, str]:
    """The recipients :func:`write_failed_csv` writes, number -> why: those who did not get
    the message, but for the kinds it leaves out, each counted on ``s``
    (:attr:`~LedgerSummary.expired_left_out`, :attr:`~LedgerSummary.opted_out_left_out`,
    and :attr:`~LedgerSummary.resent`: taken by an earlier resend, :func:`resent`)."""
    kinds = s.misses
    s.expired_left_out, s.opted_out_left_out = kinds[Miss.EXPIRED], kinds[Miss.OPTED_OUT]
    wanted = {p: m.why for p, m in s.undelivered if m.kind not in NOT_RESENT}
    s.resent = resent(s, wanted) if wanted else {}
    for phone in s.resent:
        del wanted[phone]
    return wanted


def resent(s: LedgerSummary, wanted: Container[str]) -> dict[str, str]:
    """Of the ``wanted`` recipients, those an earlier resend of this campaign's failed file
    took (:func:`taken_by_resends`): number -> that resend's ledger.

    A failed file written again later (tracking found more failures since) holds the first
    file's recipients too; ``run --input`` names each file's resend after its hash, so each
    gets a ledger of its own, and without this the first file's recipients would be texted
    by both."""
    if s.campaign is None or s.ledger is None:
        return {}
    return {p: r for p, r in taken_by_resends(s.ledger, s.campaign).items() if p in wanted}


def taken_by_resends(
    ledger: Location, campaign: str, *, refused: bool = True, besides: str | None = None
) -> dict[str, str]:
    """Every number a resend of ``campaign``'s failed file took (tried to send, sent, or
    holds for its rerun), or a resend of such a resend's failed file (the next round), and so
    on: number (E.164) -> the resend's ledger that took it first, as named to a person.
    Without ``refused``, not a number the API refused there for good (its group failed at
    the send) unless a later round took it: nobody sent it there, and no rerun of that
    resend will. ``besides``: the campaign of a ledger that is none of them (a run's own,
    resuming a resend: what it holds is what it is to send).

    The resends are the other ledgers of ``ledger``'s store (where ``run --input`` puts them:
    the JSONL ledgers beside the file, or the database's other ledgers;
    :func:`~bulk_mms.ledger.store.headers_beside`) whose rows carry ``campaign`` in
    :data:`CAMPAIGN_COLUMN`: every number one of them tried counts, and so does every number
    of its input while that file is here and unchanged (a rerun of that resend settles its
    own, and sends those it has not tried yet: it stopped early, at a cap, a signal or a
    crash). A ledger that cannot be read past its header is none of them; a database that
    does not answer stops the count (LedgerUnavailable), never leaves its resends out.

    Raises:
        LedgerError: the database cannot be read.
    """
    beside = [
        (w, h)
        for w, h in headers_beside(ledger)
        if CAMPAIGN_COLUMN in h.columns and (besides is None or h.campaign != besides)
    ]
    out: dict[str, str] = {}
    read: dict[Location, _Resend | None] = {}  # each ledger read once, for every round
    rounds, seen = [campaign], {campaign}
    for of in rounds:  # grows by each resend's campaign: the rounds after it
        for where, header in beside:
            try:
                if where not in read:
                    read[where] = None  # a ledger that cannot be read is none of its resends
                    read[where] = _Resend(where, header)
                if (resend := read[where]) is None:
                    continue
                took = resend.took(of)
                kept = took - resend.refused() if took and not refused else took
            except LedgerUnavailable:
                raise
            except LedgerError:
                continue
            if took and header.campaign and header.campaign not in seen:
                seen.add(header.campaign)
                rounds.append(header.campaign)
            for phone in kept:
                out.setdefault(phone, display(where))
    return out


class Originals:
    """The ledgers whose failed files the ledger at ``ledger`` sends (a
    :class:`~bulk_mms.settle.Settler`'s ``originals``): the campaign each member's row names
    in :data:`CAMPAIGN_COLUMN`, as the ledger's outcome events recorded it (a member whose
    row it has not recorded yet, a crash before its group's outcome: the one campaign the
    ledger's rows name, when they name one), found beside it (the JSONL ledgers beside the
    file, or the database's other ledgers: :func:`~bulk_mms.ledger.store.headers_beside`) by
    its header's campaign, and folded, once."""

    def __init__(self, ledger: Location) -> None:
        self.ledger = ledger
        self._named: dict[str, str] = {}
        self._views: dict[str, LedgerView | None] = {}

    def __call__(self, rec: GroupRecord, header: Header) -> dict[str, LedgerView | None]:
        """Each member of ``rec`` (a group of this ledger, whose job header is ``header``) →
        the ledger of the campaign its row names, folded; None when there is none (its row
        names no campaign, or none is found) or it cannot be read."""
        if not self._named.keys() >= set(rec.to):
            self._named = _campaigns(self.ledger, header)
        named = set(self._named.values())
        only = named.pop() if len(named) == 1 else ""
        return {p: self._view(self._named.get(p, only)) for p in rec.to}

    def _view(self, campaign: str) -> LedgerView | None:
        """The ledger of ``campaign``, folded; None when it is not found or cannot be read,
        said once (``settle.original_missing``): a group of its members whose records are
        found stays in doubt until it is back."""
        if not campaign or campaign in self._views:
            return self._views.get(campaign)
        try:
            if (where := ledger_of(campaign, self.ledger)) is None:
                self._missing(campaign, "not found")
            else:
                self._views[campaign] = load(where)
        except LedgerError as exc:  # not read: never taken for one with no such send
            self._missing(campaign, f"unreadable ({exc})")
        return self._views[campaign]

    def _missing(self, campaign: str, why: str) -> None:
        """Say once that the ledger of ``campaign`` is ``why``, what that holds in doubt and
        what to do; it is looked for again on the next run or ``track``."""
        self._views[campaign] = None
        beside = display(self.ledger)
        place = place_words(self.ledger)
        log.warning(
            "settle.original_missing",
            campaign=campaign,
            ledger=beside,
            message=(
                f"the ledger of campaign {campaign}, whose failed file {beside} sends, is "
                f"{why} in the same {place}: its groups in doubt stay in doubt (the API's "
                "records cannot be told from that campaign's own); put that ledger back "
                f"there, then run `bulk-mms track {beside}`"
            ),
        )


def ledger_of(campaign: str, beside: Location) -> Location | None:
    """The ledger of ``campaign`` beside ``beside`` (the JSONL ledgers beside the file, or the
    database's other ledgers: :func:`~bulk_mms.ledger.store.headers_beside`), where ``run
    --input`` puts a resend of its failed file; None when there is none.

    Raises:
        LedgerError: the database cannot be read.
    """
    return next((w for w, h in headers_beside(beside) if h.campaign == campaign), None)


def place_words(beside: Location) -> str:
    """Where :func:`ledger_of` looks beside ``beside``, for a person: ``database``, or
    ``folder (PATH)``."""
    return "database" if is_database(beside) else f"folder ({Path(display(beside)).parent})"


def missed_by(path: Path, header: Header) -> dict[str, set[str]]:
    """The numbers of the input at ``path``, read as ``header`` (a job's, for that input)
    says, by the campaign their rows name in :data:`CAMPAIGN_COLUMN` (a failed file's: the
    campaign that missed them); none for a file without that column.

    Raises:
        InputError, OSError: the file cannot be read.
    """
    encoding = header.encoding or file_encoding(path)
    with RowReader(
        path, header.phone_column, keep_all=True, encoding=encoding, delimiter=header.delimiter
    ) as reader:
        out: dict[str, set[str]] = {}
        if reader.complete and CAMPAIGN_COLUMN not in reader.columns:
            return out  # a CSV header without it (any export): no row is read
        for row in reader:  # streamed: another file (any --input's) keeps nothing of its rows
            if isinstance(row, Row) and (campaign := row.fields.get(CAMPAIGN_COLUMN)) is not None:
                with contextlib.suppress(PhoneError):
                    value = row.fields.get(header.phone_column, "")
                    out.setdefault(campaign, set()).add(normalize_phone(value))
    return out


def _campaigns(ledger: Location, header: Header) -> dict[str, str]:
    """Each number the ledger at ``ledger`` (whose job header, ``header``, has
    :data:`CAMPAIGN_COLUMN`) records a row of → the campaign that row names; none when the
    ledger cannot be read."""
    at = header.columns.index(CAMPAIGN_COLUMN)
    named: dict[str, str] = {}
    try:
        events = read_events(ledger, skip_status=True)
        try:
            for ev in events:
                named.update(_row_campaigns(ev, at))
        finally:
            events.close()
    except LedgerError:
        return {}
    return named


def inputs_beside(ledger: Location | None) -> list[tuple[str, Path]]:
    """(what it is, path) of the input each other ledger of ``ledger``'s store (the JSONL
    ledgers beside the file, or the database's other ledgers:
    :func:`~bulk_mms.ledger.store.headers_beside`) was sent from: a resend's failed file,
    another day's export. A command writing over one would leave that ledger unable to
    resume (its input changed), and whoever it has not sent yet unsent.

    Raises:
        LedgerError: the database cannot be read.
    """
    if ledger is None:
        return []
    return [
        (f"the input ledger {display(where)} was sent from", Path(header.input))
        for where, header in headers_beside(ledger)
        if header.input
    ]


class _Resend:
    """A ledger beside a campaign's whose rows carry :data:`CAMPAIGN_COLUMN`, read once for
    every round of :func:`taken_by_resends`: the numbers its attempts tried, the campaigns
    its outcomes' rows name, its input's numbers by the campaign their rows name (while
    that input is unchanged: :func:`_held`), and, once asked, those it counts refused.

    Raises:
        LedgerError: the ledger cannot be read.
    """

    def __init__(self, where: Location, header: Header) -> None:
        self.where = where
        at = header.columns.index(CAMPAIGN_COLUMN)
        self.tried: set[str] = set()
        self.named: set[str] = set()
        events = read_events(where, skip_status=True)
        try:
            for ev in events:
                if isinstance(ev, Attempt):
                    self.tried.update(ev.to)
                else:
                    self.named.update(named for _, named in _row_campaigns(ev, at))
        finally:
            events.close()  # the ledger's file or connection, closed now, not when collected
        self.held = _held(header)
        self._refused: set[str] | None = None

    def took(self, campaign: str) -> set[str]:
        """Every number it tried or holds, when its rows carry ``campaign`` (a resend of that
        campaign's failed file): those its events name, and those of its input while that
        is unchanged; else none."""
        held = self.held.get(campaign, set())
        return self.tried | held if campaign in self.named or held else set()

    def refused(self) -> set[str]:
        """The numbers it counts failed at the send (the API refused their group for good,
        or them by name)."""
        if self._refused is None:
            view = load(self.where, statuses=False)
            self._refused = {
                p for rec in view.groups.values() if rec.state == FAILED for p in rec.counted
            }
        return self._refused


def _row_campaigns(ev: Event, at: int) -> Iterator[tuple[str, str]]:
    """(number, the campaign its row names in column ``at``) of each row ``ev`` records: an
    outcome's (sent, failed, in doubt) rows, its members' input rows; none of another event."""
    if isinstance(ev, Sent | Failed | InDoubt) and ev.rows:
        yield from ((p, r[at]) for p, r in zip(ev.to, ev.rows, strict=False) if len(r) > at)


def _held(header: Header) -> dict[str, set[str]]:
    """The numbers of a resend ledger's input by the campaign their rows carry, while that
    input is the file the ledger was begun on (its fingerprint): a rerun resumes it and
    sends every one it has not tried yet. None once the file is gone or changed (no rerun of
    that ledger sends anything more) or cannot be read."""
    source = Path(header.input) if header.input else None
    try:
        if source is None or not source.is_file() or fingerprint(source) != header.fingerprint:
            return {}
        return missed_by(source, header)
    except (InputError, OSError):
        return {}


def _recorded_rows(s: LedgerSummary, wanted: dict[str, str]) -> list[dict[str, str]] | None:
    """The wanted recipients' input rows as the ledger recorded them when it sent (or tried to
    send) their groups: every column, whatever became of the input file since. None when some
    recipient's row is not recorded (a group written by an older bulk-mms)."""
    assert s.ledger is not None
    found: dict[str, dict[str, str]] = {}
    for ev in read_events(s.ledger, skip_status=True):
        if not isinstance(ev, Sent | Failed | InDoubt) or not ev.rows:
            continue
        for phone, values in zip(ev.to, ev.rows, strict=False):
            if phone in wanted:
                found[phone] = {s.phone_column: phone, **dict(zip(s.columns, values, strict=False))}
    if not all(phone in found for phone in wanted):
        return None
    return [found[phone] for phone in wanted]


def _phone_key(value: str) -> str:
    try:
        return normalize_phone(value)
    except PhoneError:
        return value


def _original_rows(
    source: Path, phone_column: str, wanted: dict[str, str], encoding: str, delimiter: str
) -> tuple[list[str], list[dict[str, str]]]:
    """The input rows of the wanted numbers, each once, with every column of the input (a
    JSONL file's: every record's keys, known once it is read to its end), read in the
    ``encoding`` and with the ``delimiter`` the job read it with."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    with RowReader(
        source, phone_column, keep_all=True, encoding=encoding, delimiter=delimiter
    ) as reader:
        for row in reader:
            if isinstance(row, Row):
                key = _phone_key(row.fields.get(phone_column, ""))
                if key in wanted and key not in seen:
                    seen.add(key)
                    rows.append(dict(row.fields))
        columns = list(reader.columns)
    # numbers whose row is no longer readable still go in, with the phone column alone
    rows.extend({phone_column: p} for p in wanted if p not in seen)
    return columns, rows


def write_rejected_csv(s: LedgerSummary, out: Path) -> int:
    """Write every input row the ledger records rejected, the losses (a bad number, a broken
    row: :data:`~bulk_mms.models.LOST`), to ``out``, in the columns of ``run --rejected-csv``
    (:data:`~bulk_mms.scan.REJECTED_COLUMNS`: ``line,value,reason``), separated as the input
    was (the header's ``delimiter``, as ``run --rejected-csv`` writes it): the rows to fix.

    The rows left out on purpose are not in it: suppressed and excluded numbers (a file
    fixed and sent again would text them) and duplicates (a run counts them, it records no
    row for each); the report counts each kind. The rows are streamed from the ledger's
    events as they are read, never held (a ledger may record millions). Written by
    :func:`~bulk_mms.csvfile.write_csv`.

    Returns:
        The rows written.

    Raises:
        LedgerError: the ledger cannot be read, or ``out`` cannot be written (naming it).
    """
    assert s.ledger is not None
    rows = (
        (ev.line, ev.value, ev.reason)
        for ev in read_events(s.ledger, skip_status=True)
        if isinstance(ev, Rejected) and row_kind(ev.reason) == LOST
    )
    return _write(out, REJECTED_COLUMNS, rows, s.delimiter)


#: The columns of ``report --recipients-csv``.
RECIPIENTS_HEADER = (
    "phone",
    "group",
    "state",
    "delivery_status",
    "error_code",
    "error_title",
    "cost",
    "currency",
)


def write_recipients_csv(s: LedgerSummary, out: Path) -> int:
    """Write one row per recipient the ledger names, with where each stands, to ``out``.

    Columns (:data:`RECIPIENTS_HEADER`):

    * ``phone``, ``group``: the number (E.164) and its group's id;
    * ``state``: ``sent``, ``failed``, ``retry_pending`` or ``in_doubt``, as the fold has it
      (:class:`~bulk_mms.ledger.LedgerView`); ``not_attempted`` for a member a delivery report
      moved out of its sent group (``group``) to go again, not sent again yet (:func:`waiting`:
      ``error_code`` is the code that moved it). Other recipients not attempted are not named
      by the ledger (only counted), so they are not in the file;
    * ``delivery_status``: a sent recipient's latest status (``queued`` until one is reported),
      empty for the others;
    * ``error_code``, ``error_title``: the delivery report's code and Telnyx's title for it,
      or the code that ended the group's tries and its title (in words where the recorded
      title is only an error's kind); for a group in doubt, no code and why in words;
    * ``cost``, ``currency``: the recipient's final cost when a status report carried it
      (``message.finalized``, ``track``), else their share of the group's estimated cost (the
      send's answer gives one per group message: divided evenly among the group's
      recipients, to 8 decimal places); empty when the group was not sent or no cost was
      reported.

    Raises:
        LedgerError: the ledger cannot be read, or ``out`` cannot be written (naming it).
    """
    assert s.ledger is not None
    view = load(s.ledger)
    return _write(out, RECIPIENTS_HEADER, chain(_recipient_rows(view), _waiting_rows(view)))


def _waiting_rows(view: LedgerView) -> Iterator[tuple[str, ...]]:
    """The members waiting to go again (:func:`waiting`), as ``not_attempted`` rows."""
    for phone, w in waiting(view).items():
        status = view.status_of(phone) or ""
        title = (MEANINGS.get(w.code) or error_words(w.code)) if w.code else ""
        yield (phone, w.group, NOT_ATTEMPTED, status, w.code, title, "", "")


def _recipient_rows(view: LedgerView) -> Iterator[tuple[str, ...]]:
    known, final_cost, unstated = view.known, view.final_cost, view.unstated_currency
    for rec in view.groups.values():
        state = rec.state
        if state is None:
            continue  # made anew without some members, never attempted: another group's now
        cost = currency = ""
        if state == SENT and rec.cost is not None and rec.to:
            share = (rec.cost.amount / len(rec.to)).quantize(SHARE_PLACES).normalize()
            cost, currency = f"{share:f}", rec.cost.currency_or(unstated)
        code, title = ("", "") if state == SENT else _error_of(rec)
        for phone in rec.counted:
            status = ""
            if state == SENT:
                k = known.get(phone)
                status = k.status if k is not None else "queued"
                if k is not None and k.code:
                    code, title = k.code, MEANINGS.get(k.code) or error_words(k.code)
                else:
                    code, title = "", ""
                if (final := final_cost.get(phone)) is not None:
                    amount = f"{final.amount:f}"
                    paid_in = final.currency_or(unstated)
                    yield (phone, rec.id, state, status, code, title, amount, paid_in)
                    continue
            yield (phone, rec.id, state, status, code, title, cost, currency)


def _error_of(rec: GroupRecord) -> tuple[str, str]:
    """The code and title a group not sent ended on, from its why (``failed: CODE TITLE``),
    the title in words where it is only an error's kind; for a group in doubt, no code and
    why in words."""
    if not rec.why.startswith("failed: "):
        return "", why_words(rec.why or OPEN)
    code, _, title = rec.why.removeprefix("failed: ").partition(" ")
    if not title or title in BY_KIND or title == code:
        title = error_words(code)
    return code, title


def _write(
    out: Path, header: tuple[str, ...], rows: Iterator[tuple[object, ...]], delimiter: str = ","
) -> int:
    try:
        return write_csv(out, header, rows, delimiter=delimiter)
    except OSError as exc:
        raise LedgerError(out, f"cannot write: {exc.strerror or exc}") from None
