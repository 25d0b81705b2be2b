"""The account's suppression list: numbers never to text (they opted out, or asked not to be).

A plain file named by ``[suppression] file`` in the settings, by default
``$XDG_DATA_HOME/bulk-mms/suppressed.txt`` (``~/.local/share/bulk-mms/suppressed.txt``): opt-outs
are honoured whether or not anyone configured a list. One E.164 number a line, ``#`` starts a
comment (the rest of the line: a reason, a date). Every job that uses the settings
rejects these recipients at validation with the reason ``suppressed``, before any request: no
charge, no carrier complaint. ``bulk-mms suppress add|remove|list`` edit it; additions are
appended with fsync, removals rewrite the file atomically.

Each addition records why (the comment): by hand (``suppress add --reason``), or because the
number itself opted out: an inbound STOP (``texted STOP``), the profile's opt-out list or a
40300 refusal (``opted out (...)``). Only the latter are lifted by that number's START
(:func:`added_by_stop`): the opt-out was the recipient's to make, and theirs to take back.

The list also keeps the order in which each number texted its keywords, so that a STOP or
START delivered late (Telnyx redelivers) is judged against the latest one, by any receiver,
after any restart: an inbound STOP's reason ends with ``at <when it was texted>``, and a START
(or a STOP whose number is listed already) leaves a comment line ``# +NUMBER texted START
(webhook) at <when>``, which no reader takes for a number (:meth:`Suppressed.keyword_at`), as
does a STOP's line taken off the list (:meth:`Suppressed.remove`, ``texted STOP``). A
line without a time (an older file) says nothing of the order.

A number taken off the list (:meth:`Suppressed.remove`: ``suppress remove``, a START) leaves
a comment line ``# +NUMBER removed at <when>`` (:meth:`Suppressed.removed_at`): a run puts
back a number its ledger records refused as opted out (a list write that failed then) only
when it was refused after its latest removal, so a removal by hand is never undone
(:func:`put_back_opted_out`). A file written before removals were recorded reads as one that
records none.

Every change, and every judgement that must see the file as it stands
(:meth:`Suppressed.held`), holds an exclusive ``flock`` of the side file ``.NAME.lock`` beside
the list, and reads the list anew under it: processes sharing the file (two receivers, a
receiver and a run) change it one at a time, and none loses another's line.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import functools
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final, NamedTuple, TypeVar

import structlog

from bulk_mms.clock import instant
from bulk_mms.codes import OPTED_OUT
from bulk_mms.config.folders import user_folder
from bulk_mms.csvfile import write_whole
from bulk_mms.errors import ConfigError, LedgerError
from bulk_mms.ledger.fold import LedgerView
from bulk_mms.validate import PhoneError, normalize_phone

T = TypeVar("T")
log = structlog.get_logger(__name__)

#: How the reason of a suppression that the number's own STOP caused starts: an inbound STOP
#: (webhooks), the profile's opt-out list (``optouts sync``), a 40300 refusal (a run).
STOP_REASONS = ("texted STOP", "opted out")


#: A keyword's time as the list records it: in a number line's comment (a STOP's reason), or
#: in a comment line of its own that names the number first (``# +NUMBER texted START ...``).
_TEXTED_AT = re.compile(r"^texted (?:STOP|START)\b.*? at (\S+)")
_RECORD = re.compile(r"^\s*#\s*(\+[1-9]\d{6,14})\s+(texted .*)$")
#: A number's removal as the list records it: a comment line of its own, ``# +NUMBER removed
#: at <when>`` (:meth:`Suppressed.remove`, :meth:`Suppressed.removed_at`).
_REMOVED = re.compile(r"^\s*#\s*(\+[1-9]\d{6,14})\s+removed at (\S+)")
#: A ``+`` and the digits after it: a number in E.164 that a line holds begins one of these.
_PLUS_DIGITS = re.compile(r"\+\d+")


class Times(NamedTuple):
    """What the list records of a number: when it texted its latest STOP or START
    (:meth:`Suppressed.keyword_at`), and when it was last taken off
    (:meth:`Suppressed.removed_at`), epoch seconds; None where it records none."""

    keyword: float | None = None
    removed: float | None = None


#: A number the list records nothing of.
NO_TIMES: Final = Times()


def _utc(at: float) -> str:
    """``at`` (epoch seconds) as the list writes a time: UTC to the microsecond (as precise as
    ``occurred_at``: a redelivery reads back as the same time), as
    :func:`~bulk_mms.clock.instant` reads it back."""
    when = dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="microseconds")
    return when.replace("+00:00", "Z")


def texted_at(reason: str, texted: float) -> str:
    """``reason`` (``texted STOP ...`` or ``texted START ...``) with when the keyword was
    texted (:func:`_utc`), as :meth:`Suppressed.keyword_at` reads it back."""
    return f"{reason} at {_utc(texted)}"


def texted_in(reason: str | None) -> float | None:
    """When the keyword a recorded reason is about was texted (:func:`texted_at`); None when
    the reason says no time (an older list's, or one not of a keyword)."""
    found = _TEXTED_AT.match(reason) if reason is not None else None
    return instant(found[1]) if found is not None else None


def added_by_stop(reason: str | None) -> bool:
    """Whether a suppression's recorded reason says the number's own STOP put it there."""
    return reason is not None and reason.startswith(STOP_REASONS)


def opted_out(code: str) -> str:
    """The reason recorded for a number the API said opted out, under ``code`` (40300): in the
    send's refusal, or in a delivery report after it accepted the message."""
    return f"opted out ({code})"


async def suppress_opted_out(
    suppressed: Suppressed, phones: Iterable[str], code: str, *, source: str
) -> list[str]:
    """Put numbers the API said opted out (``code``, 40300) on the suppression list, off the
    loop, so no later job texts them; the ones added. A list that cannot be written is logged
    (``suppression.unwritable``), not raised: the ledger still records the refusal, and the
    report says who opted out."""
    phones = list(dict.fromkeys(phones))
    if not phones:
        return []
    try:
        added = await suppressed.off_loop(
            functools.partial(suppressed.add, phones, opted_out(code))
        )
    except (ConfigError, LedgerError) as exc:
        log.warning("suppression.unwritable", error=str(exc), recipients=phones)
        return []
    log.info("recipient.suppressed", recipients=phones, code=code, new=len(added), source=source)
    return added


async def put_back_opted_out(view: LedgerView, suppressed: Suppressed) -> None:
    """Put on the suppression list the recipients ``view`` (a run's: its sends, no delivery
    statuses) records as opted out (refused at the send, 40300:
    :meth:`~bulk_mms.ledger.fold.LedgerView.refused_opted_out`) that the list does not hold,
    nor records a keyword of (a START that lifted the number, a STOP removed by hand), nor
    records taken off after their group's latest try (``suppress remove``: the refusal
    came after that try, so the removal came after the refusal, and is the user's word): an
    earlier run that could not write the list as the API said so (a full disk, its database
    lost) kept them in the ledger alone, where no other job looks. One walk of the ledger's
    groups and one read of the list's times (:meth:`Suppressed.times_of`), off the loop,
    however many numbers the ledger records so (those a START lifted stay among them)."""

    def missing() -> list[str]:
        refused = {p: at for p, at in view.refused_opted_out().items() if p not in suppressed}
        times = suppressed.times_of(refused)
        return [
            p
            for p, tried in refused.items()
            if (t := times.get(p, NO_TIMES)).keyword is None
            and (t.removed is None or t.removed <= tried)
        ]

    await suppress_opted_out(
        suppressed, await asyncio.to_thread(missing), OPTED_OUT, source="ledger"
    )


class Suppressed:
    """The numbers of a suppression list, for membership tests (E.164 digits as ints).

    The list is the settings' file, or, with a database ledger, the database's own table
    (:func:`suppression_for`); this class is the file, and the base of the table's.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path: object = path
        self._numbers: set[int] = set()
        #: The numbers another process (or a look) put on the list after this one first read
        #: it: noted before they show in :attr:`_numbers` (:meth:`_renew`, :meth:`late`).
        self._late: set[int] = set()
        #: one change at a time in this process (:meth:`off_loop`, :meth:`held`)
        self._changing = threading.RLock()
        self._lock_fd: int | None = None  # the side file's lock, while :meth:`held`
        #: The file as it was last read (:func:`_stamp`): :meth:`look_again` reads it only
        #: once it has changed.
        self._read_as: tuple[int, ...] | None = None
        if path is not None:
            self._numbers = self._listed()

    def _listed(self) -> set[int]:
        """The numbers on the list as its file holds them now (none before it is begun)."""
        path = self.path
        if not isinstance(path, Path) or not _begun(path):
            return set()
        stamp = _stamp(path)  # taken before the read: a change during it is read again
        numbers = {int(p[1:]) for p in _read(path)}
        self._read_as = stamp  # only once read: a failed read is tried again at the next look
        return numbers

    def look_again(self) -> list[str]:
        """Take in the numbers put on the list since this process last read it (an inbound
        STOP a webhook receiver took, another run's 40300, ``suppress add``): the ones new
        here. A number taken off meanwhile stays on for this process: a lift is seen by the
        next run, an opt-out at once. The file is read (under its lock) only when it changed.

        Raises:
            ConfigError: the file cannot be read, or a line is not a number.
        """
        path = self.path
        if not isinstance(path, Path) or _stamp(path) == self._read_as:
            return []
        before = self._numbers
        with self.held():  # reads the file anew
            self._numbers |= before
        return [f"+{n}" for n in sorted(self._numbers - before)]

    def _renew(self, numbers: set[int]) -> None:
        """Take ``numbers`` (the list read anew) for the list: the ones new to this process
        are noted :meth:`late` first, so whoever finds one on the list finds it noted so."""
        self._late |= numbers - self._numbers
        self._numbers = numbers

    def late(self, phone: str) -> bool:
        """Whether ``phone`` was put on the list after this process first read it, by another
        process or a command (a STOP a webhook receiver took, ``suppress add``), however this
        process came to see it (a run's look, a read for a change of its own)."""
        return phone[1:].isdigit() and int(phone[1:]) in self._late

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The list to this thread until the block ends: no other thread of this process, and
        (a file) no other process, changes it meanwhile; the numbers are read anew from the
        file at the start, as other processes left them. Re-entrant.

        Raises:
            ConfigError: the file's lock cannot be taken, or the file read.
        """
        with self._changing:
            if not isinstance(self.path, Path) or self._lock_fd is not None:
                yield  # no file to lock, or held already
                return
            lock = self.path.with_name(f".{self.path.name}.lock")
            try:
                lock.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise _unlockable(lock, exc) from None
            try:
                try:
                    # released with the descriptor; a share without locks (ENOLCK) refuses it
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except OSError as exc:
                    raise _unlockable(lock, exc) from None
                self._lock_fd = fd
                self._renew(self._listed())
                yield
            finally:
                self._lock_fd = None
                os.close(fd)

    def keyword_at(self, phone: str) -> float | None:
        """When ``phone`` texted its latest STOP or START that the list records (epoch
        seconds): the latest time of its STOP line's reason and of its comment lines
        (``# +NUMBER texted START (webhook) at ...``). None when the list records none (an
        older file, a line added otherwise). Read under :meth:`held` to judge a keyword."""
        lines = self._lines()
        return max((t for line in lines if (t := _texted(line, phone)) is not None), default=None)

    def removed_at(self, phone: str) -> float | None:
        """When ``phone`` was last taken off the list (:meth:`remove`: its comment line
        ``# +NUMBER removed at <when>``), epoch seconds; None when the list records no removal
        of it (none made, or made before removals were recorded)."""
        times = (
            found[1]
            for line in self._lines()
            if phone in line and (found := _removal_in(line)) is not None and found[0] == phone
        )
        return max(times, default=None)

    def _lines(self) -> list[str]:
        """The list file's lines (none before it is begun, or without a file).

        Raises:
            ConfigError: the file cannot be read.
        """
        if not isinstance(self.path, Path) or not _begun(self.path):
            return []
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("suppression.file", f"cannot read {self.path}: {exc}") from None

    def record_keyword(self, phone: str, reason: str, texted: float) -> bool:
        """Append (durably) that ``phone`` texted a keyword at ``texted`` (``reason``:
        ``texted START (webhook)``, say), as a comment line: no number is added or lifted.
        Nothing is written when the list records one at that time or later. True when
        written.

        Raises:
            ConfigError: the list has no file, or it cannot be written.
        """
        with self.held():
            if not isinstance(self.path, Path):
                return False  # no file to record it in
            latest = self.keyword_at(phone)
            if latest is not None and latest >= texted:
                return False
            self._append(_record(phone, texted_at(reason, texted)))
        return True

    def times_of(self, phones: Collection[str]) -> dict[str, Times]:
        """The :class:`Times` the list records of each of ``phones`` (E.164), as
        :meth:`keyword_at` and :meth:`removed_at` read them, from one read of the list; a
        number it records nothing of is left out.

        Raises:
            ConfigError: the file cannot be read.
        """
        if not (wanted := set(phones)):
            return {}
        keyword: dict[str, float] = {}
        removed: dict[str, float] = {}
        lengths = {len(p) for p in wanted}
        for line in self._lines():
            if not any(run[:n] in wanted for run in _PLUS_DIGITS.findall(line) for n in lengths):
                continue  # names none of them: passed over unparsed
            for times, found in ((keyword, _keyword_in(line)), (removed, _removal_in(line))):
                if found is not None and found[0] in wanted:
                    times[found[0]] = max(found[1], times.get(found[0], found[1]))
        return {p: Times(keyword.get(p), removed.get(p)) for p in keyword.keys() | removed}

    async def off_loop(self, change: Callable[[], T]) -> T:
        """Run ``change`` (an :meth:`add`, a :meth:`remove`, or several) in a thread, one
        change to the list at a time: the file's fsync, or the table's round trips, never hold
        the event loop."""

        def one_at_a_time() -> T:
            with self._changing:
                return change()

        return await asyncio.to_thread(one_at_a_time)

    def __contains__(self, phone: object) -> bool:
        if not self._numbers:
            return False  # asked of every recipient: an empty list answers at once
        return isinstance(phone, str) and phone[1:].isdigit() and int(phone[1:]) in self._numbers

    def among(self, phones: Sequence[str]) -> tuple[int, ...]:
        """The positions in ``phones`` of the numbers on the list (:meth:`__contains__`):
        nothing to do for an empty list (asked of every group before it leaves)."""
        if not self._numbers:
            return ()
        return tuple(i for i, p in enumerate(phones) if p in self)

    def __len__(self) -> int:
        return len(self._numbers)

    def numbers(self) -> list[str]:
        return [f"+{n}" for n in sorted(self._numbers)]

    def reason(self, phone: str) -> str | None:
        """Why ``phone`` is on the list, as recorded when it was added (its line's comment,
        the date included); None when it is not on the list or no reason was written."""
        if phone not in self or not isinstance(self.path, Path):
            return None
        found = None
        for line in self._lines():
            if (text := _number(line)) is None:
                continue
            try:
                same = normalize_phone(text) == phone
            except PhoneError:
                continue
            if same:
                found = line.partition("#")[2].strip() or None
        return found

    def add(self, phones: Iterable[str], reason: str, now: float | None = None) -> list[str]:
        """Append the numbers not on the list yet (durably), each with ``reason`` and the date
        (UTC) of ``now`` (the caller's wall time; the system's by default); the ones added.
        Only numbers the list can hold are taken (:func:`listable`: as the list is read back).

        Raises:
            ConfigError: the list has no file, or it cannot be written.
        """
        self._writable()
        with self.held():
            new = [p for p in listable(phones) if p not in self]
            if not new:
                return []
            at = time.time() if now is None else now
            stamp = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d")
            self._append("".join(f"{p}  # {reason} {stamp}\n" for p in new))
            self._numbers.update(int(p[1:]) for p in new)
        return new

    def _append(self, text: str) -> None:
        """Append ``text`` to the file, flushed to disk (under :meth:`held`), on a line of its
        own: after a newline when the last line (edited by hand) ends without one, which
        would otherwise take ``text`` for the rest of its comment."""
        path = self._writable()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a+b") as f:  # every write goes to the end
                if (end := f.seek(0, os.SEEK_END)) > 0:
                    f.seek(end - 1)
                    text = text if f.read(1) == b"\n" else f"\n{text}"
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise ConfigError("suppression.file", f"cannot write {path}: {exc.strerror}") from None

    def remove(self, phones: Iterable[str], now: float | None = None) -> list[str]:
        """Take numbers off the list (the file is rewritten in place, atomically; comment
        lines, keyword records among them, stay, and a removed line whose reason says when
        its number texted STOP leaves that as a record: :meth:`keyword_at` still orders a
        keyword texted before it and delivered late). Each number taken off leaves a comment
        line saying when (``# +NUMBER removed at <when>``, :meth:`removed_at`: ``now``, the
        caller's wall time, the system's by default): a run puts a number its ledger records
        refused as opted out back on the list only when it was refused after that."""
        path = self._writable()
        with self.held():
            gone = {int(p[1:]) for p in phones if p in self}
            if not gone:
                return []
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = "".join(_kept(line, gone) for line in lines)
            if kept and not kept.endswith("\n"):
                kept += "\n"  # a last line written by hand without one: the records go after it
            when = _utc(time.time() if now is None else now)
            text = kept + "".join(_record(f"+{n}", f"removed at {when}") for n in sorted(gone))
            try:
                write_whole(path, lambda f: f.write(text), newline="")  # flushed
            except OSError as exc:
                raise ConfigError(
                    "suppression.file", f"cannot write {path}: {exc.strerror}"
                ) from None
            self._numbers -= gone
        return [f"+{n}" for n in sorted(gone)]

    def _writable(self) -> Path:
        if not isinstance(self.path, Path):
            raise ConfigError("suppression.file", "no suppression list: set [suppression] file")
        return self.path


def default_list() -> Path:
    """Where the suppression list is when the settings name none: the user's data folder."""
    return user_folder("data") / "suppressed.txt"


def suppression_for(file: Path | None, where: object = None) -> Suppressed:
    """The account's suppression list: the database's table when the ledger is in one, else
    the settings' file (``[suppression] file``, else :func:`default_list`).

    Raises:
        LedgerError: the database cannot be reached.
    """
    from bulk_mms.ledger.store import is_database  # noqa: PLC0415 - no cycle at import

    if isinstance(where, str) and is_database(where):
        from bulk_mms.extras import needs  # noqa: PLC0415 - no cycle at import

        with needs("postgres", "a PostgreSQL ledger"):
            from bulk_mms.ledger.pgsuppression import PostgresSuppressed  # noqa: PLC0415 - psycopg

        return PostgresSuppressed(where)
    return Suppressed(file if file is not None else default_list())


def _unlockable(lock: Path, exc: OSError) -> ConfigError:
    """The error for a list whose lock (the side file ``lock``) cannot be made or taken."""
    return ConfigError("suppression.file", f"cannot lock {lock}: {exc.strerror}")


def _number(line: str) -> str | None:
    text = line.split("#", 1)[0].strip()
    return text or None


def _kept(line: str, gone: set[int]) -> str:
    """``line`` as :meth:`Suppressed.remove` leaves it with the numbers ``gone`` taken off:
    a removed number's line becomes the record of its keyword time (:data:`_RECORD`) when its
    reason carries one, else nothing; every other line as it is."""
    number = _number(line)
    if not number or int(number[1:]) not in gone:
        return line
    note = line.partition("#")[2].strip()
    return _record(number, note) if texted_in(note) is not None else ""


def _record(phone: str, said: str) -> str:
    """The comment line that records when ``phone`` texted a keyword (``said``: ``texted ...
    at <when>``), as :data:`_RECORD` reads it, or was taken off the list (``removed at
    <when>``, :data:`_REMOVED`); no reader takes it for a number."""
    return f"# {phone}  {said}\n"


def _texted(line: str, phone: str) -> float | None:
    """When ``line`` says ``phone`` texted a keyword (:func:`_keyword_in`); None when the line
    says no such thing. A line that does not hold ``phone`` is passed over unparsed (the whole
    list is read for each keyword, under its lock)."""
    if phone not in line:
        return None
    found = _keyword_in(line)
    return found[1] if found is not None and found[0] == phone else None


def _keyword_in(line: str) -> tuple[str, float] | None:
    """The number ``line`` says texted a keyword, and when: its number line's reason, or a
    comment line naming it (:data:`_RECORD`); None when the line says no such thing. Only
    lines this module wrote carry a time, each with the number in E.164 as given: a line that
    does not hold its number so says nothing."""
    if (record := _RECORD.match(line)) is not None:
        number, note = record[1], record[2]
    else:
        text, _, note = line.partition("#")
        number, note = text.strip(), note.strip()
    if not number or (at := texted_in(note)) is None:
        return None
    try:
        phone = normalize_phone(number)
    except PhoneError:
        return None
    return (phone, at) if phone in line else None


def _removal_in(line: str) -> tuple[str, float] | None:
    """The number ``line`` says was taken off the list, and when (:data:`_REMOVED`); None
    when the line says no such thing, or no time that reads as one."""
    if (m := _REMOVED.match(line)) is None or (at := instant(m[2])) is None:
        return None
    return m[1], at


def _stamp(path: Path) -> tuple[int, ...] | None:
    """What tells the list file changed (its inode, size and time of change); None when
    nothing is at its path."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _begun(path: Path) -> bool:
    """Whether the list file is there to read: False only when nothing is at its path (a list
    not begun yet, read as empty).

    Raises:
        ConfigError: the path is a symlink to no file (its volume not mounted) or a loop: a
            list that cannot be read, never taken for an empty one; or it is not a file (a
            folder, or a device such as /dev/zero, whose reading never ends).
    """
    if path.exists():
        if not path.is_file():
            raise ConfigError(
                "suppression.file",
                f"cannot read {path}: not a file (a folder, a device or a pipe): name a file",
            )
        return True
    if path.is_symlink():
        raise ConfigError(
            "suppression.file",
            f"cannot read {path}: a symlink to no file (a volume not mounted, or a loop)",
        )
    return False


def _read(path: Path) -> list[str]:
    """The numbers of a list file, each checked.

    Raises:
        ConfigError: a line is not a number (naming the file and line).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("suppression.file", f"cannot read {path}: {exc}") from None
    out = []
    for i, line in enumerate(lines, start=1):
        if (text := _number(line)) is None:
            continue
        try:
            out.append(normalize_phone(text))
        except PhoneError as exc:
            raise ConfigError("suppression.file", f"{path}:{i}: {exc}") from None
    return out


def listable(phones: Iterable[str]) -> list[str]:
    """The numbers of ``phones`` a suppression list can hold, in E.164, each once, in order:
    those :func:`~bulk_mms.validate.normalize_phone` takes, the one check a list's numbers
    are read back with (and every recipient's). The others (a number from abroad in an
    opt-out or a webhook: no job can text it) are logged and left out."""
    good, bad = parse_numbers(phones)
    for given, why in bad:
        log.warning("suppression.not_a_number", number=given[:32], reason=why)
    return list(dict.fromkeys(good))


def parse_numbers(
    values: Iterable[str], region: str = "US"
) -> tuple[list[str], list[tuple[str, str]]]:
    """Numbers given on the command line: the valid ones in E.164, and each one that is not a
    number as ``(what was given, why)``, both in the order given."""
    good: list[str] = []
    bad: list[tuple[str, str]] = []
    for v in values:
        try:
            good.append(normalize_phone(v, region))
        except PhoneError as exc:
            bad.append((v, str(exc)))
    return good, bad
