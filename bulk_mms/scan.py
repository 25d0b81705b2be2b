"""The whole input, checked before the first request: read, decoded, parsed and validated once,
and hashed (the ledger's header keeps the hash).

A run and a dry run scan first (:func:`scan_input`), then refuse the input (exit 2, nothing
sent) when it cannot be read to its end (truncated, corrupt, not text in the job's encoding,
an unclosed quote) or when more of its rows are lost than the job allows
(:func:`check_rejected_share`). The scan also learns where each ``group_by`` key's last row is,
so groups form whole wherever their rows stand in the file
(:func:`bulk_mms.grouping.make_groups`).

Memory: a set of the numbers seen (about 70 bytes a recipient, for duplicates), and with
``group_by`` one entry per distinct key (about 120 bytes each); with ``group_by`` and a
``recipient_window``, the lines and numbers of each key's group still open (about 100 bytes a
row: :class:`~bulk_mms.grouping.Households`) and the numbers of the duplicate rows (about 70
bytes each).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import msgspec
import structlog

from bulk_mms.config import JobConfig
from bulk_mms.csvfile import CAMPAIGN_COLUMN, REASON_COLUMN, write_csv
from bulk_mms.errors import ConfigError, InputError
from bulk_mms.grouping import (
    APART,
    Households,
    apart_check,
    key_check,
    plain_check,
    text_check,
    zone_check,
)
from bulk_mms.models import Recipient, RejectedRow, Rejection, reason_kind
from bulk_mms.reader import FileStamp, Row, RowReader, fingerprint
from bulk_mms.validate import recipient_rows

log = structlog.get_logger(__name__)

#: The columns of a ``--rejected-csv`` file.
REJECTED_COLUMNS = ("line", "value", "reason")


class Apart(msgspec.Struct, frozen=True):
    """The ``group_by`` groups whose members share no hour of the ``recipient_window``
    (:class:`~bulk_mms.grouping.Households`): every pass rejects their rows, before it looks
    for duplicates, so a person in one of them goes out with their next household."""

    #: Each rejected row's line → the first line of its group.
    lines: dict[int, int]
    #: Each rejected group's first line → why.
    reasons: dict[int, str]
    #: Each rejected group's first line → its id (a ledger that tried it knows it by it).
    ids: dict[int, str]
    #: The numbers (E.164 digits) of the rows of these groups that have a later row, which
    #: is therefore not a duplicate (it goes out with its own household, if that can be sent).
    released: frozenset[int] = frozenset()


class InputScan(msgspec.Struct, frozen=True):
    """What one pass over the whole input found."""

    #: ``sha256:<hex>`` of the file's bytes as stored (the ledger's header keeps it).
    fingerprint: str
    #: Data rows read (blank lines not counted).
    rows: int
    #: Valid recipients, each number once, those excluded left out.
    recipients: int
    #: Rows lost (:attr:`Rejection.loss`), by reason (:func:`reason_kind`).
    lost: Counter[str]
    #: Rows whose number appears earlier in the input.
    duplicates: int
    #: Rows whose number a ledger named by ``run --exclude-sent`` records sent.
    excluded: int
    #: Of the valid recipients, those on the suppression list now.
    suppressed: int = 0
    #: With ``group_by``: each key's last line, where its last group is complete.
    last_lines: dict[str, int] | None = None
    #: The file the scan read, as it read it: the send reads that version or stops
    #: (:class:`~bulk_mms.reader.FileStamp`).
    stamp: FileStamp | None = None
    #: With ``group_by`` and a ``recipient_window``: the groups whose members share no hour
    #: of the window, rejected (counted in ``lost``); None when there are none.
    apart: Apart | None = None
    #: The input's columns (:attr:`~bulk_mms.reader.RowReader.columns`): a JSONL file's are
    #: every record's keys, known only once it has been read to its end, so the pass that
    #: sends is given them (:func:`open_reader`) for the ledger's header.
    columns: tuple[str, ...] = ()

    @property
    def lost_rows(self) -> int:
        return sum(self.lost.values())

    @property
    def lost_share(self) -> float:
        """The share of the input's rows that are lost: 0 for an input of no rows."""
        return self.lost_rows / self.rows if self.rows else 0.0

    def reasons(self) -> str:
        """The reasons rows are lost, commonest first: ``"not a valid number: 120 rows, ..."``."""
        return ", ".join(
            f"{why}: {n} row{'s' if n != 1 else ''}" for why, n in self.lost.most_common()
        )


def open_reader(
    job: JobConfig,
    *,
    keep_all: bool = False,
    expect: FileStamp | None = None,
    columns: Sequence[str] = (),
) -> RowReader:
    """Open the job's input and check it against the job (:func:`check_columns`, once its
    columns are known: a CSV file's at once, a JSONL file's at the end of a pass, when the
    pass checks them, or at once when ``columns`` gives them). Raises InputError or
    ConfigError.

    ``keep_all``: keep every column of each row (a run records the rows in its ledger).
    ``expect``: the version of the file a scan checked (:attr:`InputScan.stamp`); the reader
    refuses any other, at its opening or while it reads.
    ``columns``: the columns a scan found (:attr:`InputScan.columns`).
    """
    keep = [
        *job.message.fields,
        *([job.group_by] if job.group_by else []),
        *([job.timezone_column] if job.timezone_column else []),
    ]
    reader = RowReader(
        job.input,
        job.phone_column,
        keep,
        keep_all=keep_all,
        encoding=job.encoding,
        delimiter=job.delimiter,
        expect=expect,
        columns=columns,
    )
    reader.open()
    try:
        check_columns(job, reader)
    except (ConfigError, InputError):
        reader.close()
        raise
    return reader


def check_columns(job: JobConfig, reader: RowReader) -> None:
    """Refuse a job whose settings name a column its input does not have, and an input
    that has the column a file of failed recipients adds to say why each is in it
    (:data:`~bulk_mms.csvfile.REASON_COLUMN`) but is no such file (it has no
    :data:`~bulk_mms.csvfile.CAMPAIGN_COLUMN`): that file would write over its values. Once
    the reader's columns are all the file's (:attr:`~bulk_mms.reader.RowReader.complete`);
    nothing before. A JSONL file none of whose records parses has none to check: each of
    its rows is rejected.

    Raises:
        ConfigError: naming the setting, the column and the input's columns.
        InputError: naming the input and the failed file's column.
    """
    if not reader.complete or not reader.columns:
        return
    if REASON_COLUMN in reader.columns and CAMPAIGN_COLUMN not in reader.columns:
        raise InputError(
            job.input,
            f"has a column {REASON_COLUMN!r}, which a --failed-csv file adds to say why each "
            "recipient is in it: that file would lose this one's values. Rename the column "
            "(and any placeholder naming it), and run again",
        )
    for setting, names in (
        ("message.text", job.message.text.fields if job.message.text else ()),
        ("message.subject", job.message.subject.fields if job.message.subject else ()),
        ("group_by", (job.group_by,) if job.group_by else ()),
        ("timezone_column", (job.timezone_column,) if job.timezone_column else ()),
    ):
        for name in names:
            if name not in reader.columns:
                raise ConfigError(
                    setting,
                    f"{name!r} is not a column of {job.input} "
                    f"(columns: {', '.join(reader.columns)})",
                    source=job.path,
                )


def checked_rows(
    job: JobConfig,
    rows: Iterable[Row | RejectedRow],
    excluded: Container[int] = (),
    apart: Apart | None = None,
    known: Callable[[], Container[str]] = frozenset,
    *,
    repeated: set[int] | None = None,
) -> Iterator[Recipient | RejectedRow]:
    """The input's rows as the job's recipients, in input order: the one sequence of checks
    every pass over the input makes (the scan, the send, the dry run, a seed send).

    A row is rejected for its number (one group MMS cannot reach, or one of the job's own
    senders, ``message.from``), for a control character in a value the message takes
    (its line breaks made ``\\n`` first: :func:`~bulk_mms.grouping.plain_check`), for values
    that would leave the message's text blank (:func:`~bulk_mms.grouping.text_check`), for
    quiet hours that cannot be kept (:func:`~bulk_mms.grouping.zone_check`), for an empty
    ``group_by`` value (:func:`~bulk_mms.grouping.key_check`), for being in a ``group_by``
    group whose members share no hour of the ``recipient_window`` (``apart``, as a scan
    found them: :attr:`InputScan.apart`; whole groups, so the rest keep theirs; but not a
    group whose id is in ``known()``, a ledger's groups: one it tried). Only a row that passes
    them takes its number, so a row rejected for its other values never takes a later, valid
    row's number from it. A row whose number a valid row before it has is a duplicate (its
    number added to ``repeated`` if given), and one whose number an ``--exclude-sent`` ledger
    sent (``excluded``) is left out, whatever else is wrong with it: that person is sent.
    All in one loop a row: :func:`~bulk_mms.validate.recipient_rows`."""
    checks = (
        plain_check(job.message),
        text_check(job.message),
        zone_check(job),
        key_check(job.group_by) if job.group_by is not None else None,
        apart_check(apart.lines, apart.reasons, apart.ids, known()) if apart is not None else None,
    )
    return recipient_rows(
        rows,
        job.phone_column,
        job.default_region,
        [check for check in checks if check is not None],
        repeated=repeated,
        excluded=excluded,
        senders=frozenset(job.message.senders),
    )


class ScanStopped(Exception):
    """The scan was asked to stop (``stopped()`` became true) before the end of the input."""


#: Rows between two looks at ``stopped`` during a scan.
STOP_CHECK_ROWS = 4096


def scan_input(
    job: JobConfig,
    *,
    suppressed: Container[str] = (),
    excluded: Container[int] = (),
    rejected_csv: Path | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> InputScan:
    """Read the whole input; write every rejected row to ``rejected_csv`` if given.

    Once, unless a ``group_by`` group whose members share no hour of the ``recipient_window``
    holds a number that a later row repeats: that row is no duplicate (the group is rejected
    whole, before duplicates are looked for), so its own group gains a member and may share
    no hour in turn. The input is then read again, those groups' rows rejected from the
    start, until no new one frees a number (each pass rejects more rows, so this ends).

    ``suppressed`` numbers are counted, not rejected here: the list applies to groups
    (:func:`bulk_mms.prepare.members_left`). ``stopped`` is asked every
    :data:`STOP_CHECK_ROWS` rows (a run scans in a worker thread, so a signal is heard at
    once); when it says so, the scan ends with :class:`ScanStopped` (``rejected_csv`` is then
    left as it was).

    Raises:
        InputError: the file cannot be read to its end, or is not text in its encoding.
        ConfigError: ``rejected_csv`` cannot be written, or a setting names a column the
            input does not have (:func:`check_columns`).
    """
    apart: Apart | None = None
    while True:
        tally = Tally(job, suppressed, apart)
        with open_reader(job) as reader:
            items = checked_rows(job, reader, excluded, apart, repeated=tally.repeated)
            write_rejected(
                rejected_csv, _rejected(job, reader, tally, items, stopped), reader.delimiter
            )
        scan = tally.scan(job, reader)
        if not tally.released:
            return scan
        log.info("input.rescan", numbers=len(tally.released))
        apart = scan.apart


def _rejected(
    job: JobConfig,
    reader: RowReader,
    tally: Tally,
    items: Iterable[Recipient | RejectedRow],
    stopped: Callable[[], bool],
) -> Iterator[tuple[int, str, str]]:
    """:func:`scan_input`'s pass: ``items`` counted by ``tally``, the rejected rows
    yielded (line, value, reason)."""
    counted = tally.count(items)
    while True:
        before = tally.rows
        for item in islice(counted, STOP_CHECK_ROWS):
            if type(item) is RejectedRow:
                yield item.line, item.value, item.reason
        if tally.rows == before:  # the input has ended
            break
        if stopped():
            raise ScanStopped
    check_columns(job, reader)  # a JSONL file's are known now: before it is written
    yield from tally.finish()  # known once the input has ended: listed after the rest


def write_rejected(
    path: Path | None, rows: Iterator[tuple[int, str, str]], delimiter: str = ","
) -> None:
    """Drain ``rows`` (line, value, reason), writing them to ``path`` as a ``--rejected-csv``
    file if given (whole or not at all), its columns separated by the input's ``delimiter``
    (:attr:`~bulk_mms.reader.RowReader.delimiter`).

    Raises:
        ConfigError: ``path`` cannot be written.
    """
    if path is None:
        for _ in rows:
            pass
        return
    try:
        n = write_csv(path, REJECTED_COLUMNS, rows, delimiter=delimiter)
    except OSError as exc:
        raise ConfigError("--rejected-csv", f"cannot write {path}: {exc.strerror or exc}") from None
    log.info("input.rejected_csv", path=str(path), rows=n)


class Tally:
    """What a pass over an input's checked rows finds, counted as they stream by
    (:meth:`count`), then as an :class:`InputScan` (:meth:`scan`). Private."""

    def __init__(
        self, job: JobConfig, suppressed: Container[str] = (), apart: Apart | None = None
    ) -> None:
        """``apart``: the groups an earlier pass found sharing no hour, whose rows the
        counted items reject (:func:`checked_rows`)."""
        self._counts: Counter[Rejection] = Counter()
        self._lost: Counter[str] = Counter()
        self._key = job.group_by
        #: with ``group_by``: each key's last line so far
        self._last_lines: dict[str, int] | None = {} if job.group_by else None
        self._suppressed = suppressed
        self._recipients = self._on_list = 0
        #: with ``group_by`` and a ``recipient_window``: its groups, for those that share no
        #: hour of the window
        self._households = (
            Households(job, job.recipient_window, job.group_by)
            if job.group_by is not None and job.recipient_window is not None
            else None
        )
        self._apart = apart
        #: with ``households``: the numbers of the rows rejected as duplicates (give it to
        #: :func:`checked_rows`)
        self.repeated: set[int] | None = set() if self._households is not None else None
        #: Once finished: the numbers of the rows of the groups found sharing no hour that a
        #: later row repeats (that row is no duplicate: the input must be read again).
        self.released: set[int] = set()

    def count(self, items: Iterable[Recipient | RejectedRow]) -> Iterator[Recipient | RejectedRow]:
        """``items``, unchanged and in order, each counted."""
        counts, lost, suppressed = self._counts, self._lost, self._suppressed
        last_lines, key, households = self._last_lines, self._key or "", self._households
        for item in items:
            if type(item) is RejectedRow:
                counts[item.kind] += 1
                if item.kind.loss:
                    lost[reason_kind(item.reason)] += 1
            else:
                self._recipients += 1
                listed = item.phone in suppressed
                self._on_list += listed
                if last_lines is not None:
                    last_lines[item.fields[key].strip()] = item.line
                if households is not None:
                    households.add(item, listed=listed)
            yield item

    @property
    def rows(self) -> int:
        """The rows counted so far (blank lines are none)."""
        return self._recipients + sum(self._counts.values())

    def finish(self) -> list[tuple[int, str, str]]:
        """Once the input has ended: the rows of the groups whose members share no hour of
        the window (line, number, reason), counted as rejected (a loss) and not as
        recipients, and each key's last line outside them. Once; nothing the second time."""
        households, self._households = self._households, None
        if households is None:
            return []
        households.finish()
        if not households.apart:
            return []
        self.released = {int(p[1:]) for p in households.phones.values()} & (self.repeated or set())
        earlier = self._apart or Apart({}, {}, {})
        self._apart = Apart(
            {**earlier.lines, **households.apart},
            {**earlier.reasons, **households.reasons},
            {**earlier.ids, **households.ids},
            earlier.released | self.released,
        )
        n = len(households.apart)
        self._recipients -= n
        self._on_list -= households.listed
        self._counts[Rejection.ROW] += n
        self._lost[APART] += n
        if (last_lines := self._last_lines) is not None:
            for key, line in list(last_lines.items()):
                if line in households.apart:
                    if (ok := households.last_ok.get(key)) is None:
                        del last_lines[key]
                    else:
                        last_lines[key] = ok
        return [
            (line, households.phones[line], households.reasons[first])
            for line, first in sorted(households.apart.items())
        ]

    def scan(self, job: JobConfig, reader: RowReader) -> InputScan:
        """What was counted, once ``reader`` has read the job's input to its end: with the
        input's fingerprint and the version the reader read (:attr:`RowReader.stamp`).

        Raises:
            InputError: the file was written or replaced while it was read (the fingerprint
                may not be of the rows counted).
        """
        check_columns(job, reader)
        self.finish()
        stamp = reader.stamp
        input_fingerprint = fingerprint(job.input)
        if stamp is not None and FileStamp.of(job.input.stat()) != stamp:
            raise InputError(
                job.input,
                "was written or replaced while it was checked: nothing was sent. Send a file "
                "that nothing writes meanwhile (write the export to another name, then rename "
                "it into place)",
            )
        counts = self._counts
        return InputScan(
            fingerprint=input_fingerprint,
            rows=self.rows,
            recipients=self._recipients,
            lost=self._lost,
            duplicates=counts[Rejection.DUPLICATE],
            excluded=counts[Rejection.EXCLUDED],
            suppressed=self._on_list,
            last_lines=self._last_lines,
            stamp=stamp,
            apart=self._apart,
            columns=reader.columns,
        )


def _enough(lost: int, rows: int) -> str:
    """The least ``max_rejected_share`` of three decimals that lets ``lost`` of ``rows`` rows
    go (a share is refused only when it is more): rounded up, in whole numbers, so that
    ``0.334`` lets a third go where the ``33.3%`` shown would not."""
    thousandths = -(-lost * 1000 // rows)
    return f"{thousandths / 1000:g}"


def check_rejected_share(scan: InputScan, job: JobConfig, written: Path | None = None) -> None:
    """Refuse an input that loses more than ``max_rejected_share`` of its rows; warn of any
    loss at or under it. ``written``: the ``--rejected-csv`` file the rows were written to,
    named in the refusal (else the refusal says how to have them).

    Raises:
        InputError: too many rows are lost; nothing may be sent.
    """
    if not scan.lost_rows:
        return
    share, allowed = scan.lost_share, job.max_rejected_share
    if share > allowed:
        raise InputError(
            job.input,
            f"{scan.lost_rows} of its {scan.rows} rows ({share:.1%}) cannot be sent, more than "
            f"max_rejected_share ({allowed:.1%}); nothing was sent. {scan.reasons()}. "
            f"Every such row: {'in ' + str(written) if written else '--rejected-csv PATH'}; "
            + (
                "no row can be sent: fix the file (or the job's columns) and run again"
                if scan.lost_rows >= scan.rows
                else "to send the rest anyway, set "
                f"max_rejected_share = {_enough(scan.lost_rows, scan.rows)} in the job"
            ),
        )
    log.warning(
        "input.rows_rejected",
        rows=scan.lost_rows,
        of=scan.rows,
        share=round(share, 4),
        max_rejected_share=allowed,
        reasons=dict(scan.lost.most_common()),
    )
