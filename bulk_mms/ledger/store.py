"""The ledger store seam: where a job's events are kept, and the one way to open it.

A :class:`LedgerStore` appends events durably and gives them back in order. Nothing outside a
store knows where or how it keeps them: the runner, ``track``, ``webhooks`` and ``report`` see
:mod:`events <bulk_mms.ledger.events>` going in and a :class:`~bulk_mms.ledger.LedgerView`
coming out. The JSONL file (:class:`~bulk_mms.ledger.jsonl.JsonlStore`) is the embedded store;
PostgreSQL (:class:`~bulk_mms.ledger.postgres.PostgresStore`) is the one several hosts share.
A backend is one module implementing this protocol and one branch in :func:`open_store`.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Callable, Collection, Generator, Iterator
from pathlib import Path
from typing import Final, Literal, Protocol

import structlog
import yarl

from bulk_mms.clock import SystemClock, instant
from bulk_mms.coordination import Fence
from bulk_mms.errors import LedgerError
from bulk_mms.extras import needs
from bulk_mms.filenames import file_name_problem
from bulk_mms.ledger.events import Event, Header, Sent
from bulk_mms.ledger.fold import LedgerView
from bulk_mms.ledger.jsonl import JsonlStore

#: ``run``: this process sends for the job (exclusive where the store needs it; created if
#: missing). ``append``: delivery statuses beside a run (the ledger must exist and hold a
#: header). ``read``: reports. ``copy``: as ``run``, for ``ledger copy``: every event written
#: as it is (a run's database ledger keeps a number's resends to ``policy.MAX_RESENDS``; a copy
#: keeps what the source holds).
Mode = Literal["run", "append", "read", "copy"]
#: Where a ledger is: a file path (JSONL), or a URL naming another store.
Location = Path | str


class LedgerStore(Protocol):
    """An open ledger."""

    #: How to name it to a person (never with a password in it).
    name: str

    @property
    def failed(self) -> LedgerError | None:
        """Set once an append failed: nothing more may be sent."""
        ...

    events_written: int
    #: Durable commits made (group commit: one covers many events).
    commits: int
    #: Whether other processes may run the same ledger at once (then each group is claimed
    #: before it is sent: :mod:`bulk_mms.coordination`); a store that is not shared is
    #: exclusive to one run.
    shared: bool

    def events(self, *, skip_status: bool = False) -> Iterator[Event]:
        """Every event in order; ``skip_status`` passes over delivery statuses (a resume)."""
        ...

    def new_events(self) -> Iterator[Event]:
        """The events appended since the last call, by anyone (``webhooks`` follows a run)."""
        ...

    def may_have_new(self) -> bool:
        """Whether :meth:`new_events` may find anything: False only when a look cheap enough
        for the event loop shows that nothing was appended since the last read; True when
        such a look cannot tell."""
        ...

    def fold(self, *, skip_status: bool = False) -> LedgerView:
        """:class:`LedgerView` of every event (a store may start from a checkpoint of it);
        :meth:`new_events` then goes on from the last event it folded."""
        ...

    async def events_of(self, groups: Collection[str]) -> dict[str, list[Event]]:
        """Each of ``groups``' events as the ledger has them now, by whichever process wrote
        them (none from a store that is not shared: the run's own view holds them all), in as
        few round trips as the store allows (what watching many groups others hold asks for,
        every poll).

        Raises:
            LedgerError: the store failed (LedgerUnavailable: lost, or no answer in time).
        """
        ...

    def put_header(self, header: Header) -> Header:
        """The ledger's one job header: ``header``, appended and durable now, when it has
        none; else the one already there (another process that started at the same moment
        wrote it first), which the caller checks against its own.

        Raises:
            LedgerError: it could not be written or read.
        """
        ...

    def append_now(self, event: Event) -> None:
        """Append and make durable now, blocking (the header, a run's start)."""
        ...

    def append_nowait(self, event: Event, *, fence: Fence | None = None) -> None:
        """Append; durable with the next commit. With a ``fence`` (as :meth:`append`'s), a
        shared store writes it only while the claim is still held with that fence, and
        leaves it out otherwise: nobody waits to be told."""
        ...

    def on_failure(self, callback: Callable[[LedgerError], None]) -> None:
        """Have ``callback`` told at once when a commit fails, even one nobody waits for
        (:meth:`append_nowait`): the run stops then, not at its next write."""
        ...

    def on_kept_back(self, callback: Callable[[str, tuple[str, ...]], None]) -> None:
        """Have ``callback(group, members)`` told, once the commit is durable, of members a
        ``moved`` event of ``group`` named that the store did not write: a shared ledger keeps
        each number's moves to :data:`~bulk_mms.policy.MAX_RESENDS` across its processes,
        while each process judges by its own view (:meth:`LedgerView.kept_back
        <bulk_mms.ledger.fold.LedgerView.kept_back>` puts that view right). Never called by
        a store one run has to itself."""
        ...

    async def append(self, event: Event, *, fence: Fence | None = None) -> None:
        """Append and return once it is durable. With a ``fence`` (a write-ahead attempt
        under a claim, :meth:`Coordinator.fence <bulk_mms.coordination.Coordinator.fence>`,
        or a failure that would close one), a shared store appends it only while the claim
        is still held with that fence.

        Raises:
            ClaimLost: the fence no longer holds: nothing was written; the group must not be
                sent, nor decided, by this process.
            LedgerError: it could not be made durable; the store takes no more events.
        """
        ...

    async def live_run(self, lease_s: float) -> str | None:
        """Who runs this ledger now, or None when no run is live: a file's run holds its
        lock (its PID); a database's has the ledger open (its session's run lock), or holds
        a claim whose lease has not run out (its owner; a run gives its claims back as it
        ends, a killed one's run out; a claim that records no expiry runs out ``lease_s``
        after its last renewal, as a taker judges it). What ``track --follow`` waits on.

        Raises:
            LedgerError: the store failed (LedgerUnavailable: lost, or no answer in time).
        """
        ...

    async def drain(self) -> None:
        """Wait until every appended event is durable."""
        ...

    async def close(self) -> None:
        """Make everything durable, release what the store holds and close."""
        ...

    def close_sync(self) -> None:
        """Release and close without waiting (queued events may be lost)."""
        ...


#: How a URL begins (its scheme): a ledger location that begins so is a database or refused.
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


#: A libpq ``key=value`` connection string (``host=db password=...``): one of the keywords
#: that name a database or a login, as a word of its own followed by ``=``.
_KEYWORDS: Final = re.compile(
    r"(?:^|\s)(?:host|hostaddr|dbname|user|password|passfile|service|sslpassword)\s*=", re.I
)


def location(text: str | Path) -> Location:
    """A ledger location as given (a flag, a job setting, ``BULK_MMS_LEDGER_URL``): a
    ``postgresql://`` URL stays a URL, anything else is a file path.

    Raises:
        ValueError: ``text`` is a URL of another scheme (``postgresq://``, ``mysql://``): never
            taken for a file's path, a ledger of this host's own beside the shared one; or
            a path that cannot be a file's name here (:func:`~bulk_mms.filenames.
            file_name_problem`); or a libpq ``key=value`` connection string, never taken
            for a file's name (which would hold its password), and not quoted; or a path
            that ends in ``/`` (a folder's: ``ledgers/``). Its message names the text (but
            the connection string's); the caller names the setting.
    """
    text = str(text)
    if is_database(text):
        return text
    if _SCHEME.match(text):
        raise ValueError(f"{_shown(text)!r} is not a postgresql:// URL, nor a file's path")
    if _KEYWORDS.search(text):
        raise ValueError(
            "is a libpq key=value connection string, not a file's path: give the database as"
            " a postgresql:// URL (its password in ~/.pgpass or PGPASSWORD)"
        )
    if (problem := file_name_problem(text)) is not None:
        raise ValueError(problem)
    refuse_folder(text)
    return Path(text)


def refuse_folder(text: str, path: Path | None = None) -> None:
    """Refuse a ledger given as ``text`` that names a folder: one ending in ``/`` (Path would
    drop the slash, and a file would take the name), or ``path`` (where ``text`` lies: a job
    file's ledger is relative to the job's folder) that is a folder already (one that cannot
    be looked at is left to the ledger's opening, which says why). The one refusal of a
    folder for every place a ledger is given: the job's setting, ``--ledger``,
    ``BULK_MMS_LEDGER_URL``.

    Raises:
        ValueError: it names a folder; the caller names the setting.
    """
    try:
        folder = text.endswith("/") or (path is not None and path.is_dir())
    except OSError:
        folder = False
    if folder:
        raise ValueError(f"{text!r} names a folder, not a file: name the ledger's file in it")


def is_database(where: Location) -> bool:
    """Whether ``where`` names a database (``postgresql://``) rather than a file."""
    return isinstance(where, str) and where.split("://", 1)[0] in ("postgresql", "postgres")


def database_url(where: str) -> yarl.URL:
    """``where`` (a ``postgresql://`` location) as a URL, its host and port checked.

    Raises:
        LedgerError: not a URL a connection can be made to (said without the URL: it may hold
            a password), a %-escape in it that spells no UTF-8 text (a password encoded from
            Latin-1) included: libpq would fail on it, or be given another password.
    """
    try:
        urllib.parse.unquote_to_bytes(where).decode()
    except UnicodeDecodeError:
        raise LedgerError(
            "ledger URL", "is not a usable postgresql:// URL: a %-escape in it spells no UTF-8"
        ) from None
    try:
        url = yarl.URL(where)
        port = url.port  # yarl reads the port only when asked
    except (TypeError, ValueError) as exc:
        why = "its port is not a number from 1 to 65535" if "port" in str(exc).lower() else ""
        raise LedgerError(
            "ledger URL", f"is not a usable postgresql:// URL{': ' if why else ''}{why}"
        ) from None
    if port == 0:
        raise LedgerError("ledger URL", "is not a usable postgresql:// URL: its port is 0")
    if not url.host:  # postgresql:///db: no URL with its ?ledger= could be written back
        raise LedgerError("ledger URL", "is not a usable postgresql:// URL: it names no host")
    return url


#: The query parameters of a libpq URL that hold a secret (a password may be given either way).
_SECRET_PARAMS: Final = frozenset({"password", "sslpassword"})


def redacted(url: yarl.URL) -> yarl.URL:
    """``url`` without its secrets: the password, and every query parameter that holds one."""
    kept = [(k, v) for k, v in url.query.items() if k.lower() not in _SECRET_PARAMS]
    return url.with_password(None).with_query(kept)


def secrets(url: yarl.URL) -> tuple[str, ...]:
    """The secrets ``url`` holds (what :func:`redacted` leaves out), each non-empty, each
    both decoded and as written in ``url`` (percent-encoded: what libpq quotes of a value it
    cannot decode), longest first (so none is left in part where a shorter one is in it)."""
    found = [v for k, v in url.query.items() if k.lower() in _SECRET_PARAMS]
    pairs = (p.partition("=") for p in url.raw_query_string.split("&"))
    written = [v for k, _, v in pairs if urllib.parse.unquote(k).lower() in _SECRET_PARAMS]
    every = {s for s in (url.password, url.raw_password, *found, *written) if s}
    return tuple(sorted(every, key=len, reverse=True))


def _shown(text: str) -> str:
    """A URL as a person may see it: :func:`redacted`, or none of it when it does not parse."""
    try:
        return str(redacted(yarl.URL(text)))
    except (TypeError, ValueError):
        return "the URL"


def display(where: Location) -> str:
    """How to name a ledger to a person: a URL without its secrets (:func:`redacted`)."""
    if is_database(where):
        try:
            return str(redacted(database_url(str(where))))
        except LedgerError:
            return "the ledger URL"  # never shown as given: it may hold a password
    if isinstance(where, str) and _SCHEME.match(where):
        return _shown(where)
    return str(where)


def named(where: Location, name: str, *, rename: bool = False) -> Location:
    """A database location with the ledger ``name`` (when it names none, or ``rename``); a
    file is returned as it is.

    Raises:
        LedgerError: not a usable database URL.
    """
    if isinstance(where, Path):
        return where
    url = database_url(where)
    if "ledger" in url.query and not rename:
        return where
    return str(url.update_query(ledger=name))


def open_store(where: Location, mode: Mode = "run") -> LedgerStore:
    """Open the ledger at ``where``: a JSONL file, or a PostgreSQL URL.

    Raises:
        LedgerLocked: ``run``, and another run holds it.
        LedgerError: it cannot be opened as ``mode`` needs.
    """
    if isinstance(where, str) and is_database(where):
        with needs("postgres", "a PostgreSQL ledger"):
            from bulk_mms.ledger import postgres  # noqa: PLC0415 - psycopg only when it is used

        return postgres.PostgresStore.open(where, mode)
    return JsonlStore.open(Path(where), "run" if mode == "copy" else mode)


def holder(where: Location) -> str | None:
    """Who runs the job at ``where`` now (a PID), or None: what a dry run warns about."""
    if is_database(where):
        return None  # shared: another run there is a partner, not an obstacle
    return JsonlStore.holder(Path(where))


def exists(where: Location) -> bool:
    """Whether a ledger is at ``where`` (a database that cannot be reached is an error).

    Raises:
        LedgerError: the database cannot be reached.
    """
    if is_database(where):
        try:
            open_store(where, "read").close_sync()
        except LedgerError as exc:
            if "no such ledger" in str(exc):
                return False
            raise
        return True
    return Path(where).exists()


def read_events(where: Location, *, skip_status: bool = False) -> Generator[Event, None, None]:
    """Every event of the ledger at ``where``, in order (read only).

    Raises:
        LedgerError: it is missing or unreadable; LedgerCorrupt names a bad event.
    """
    store = open_store(where, "read")
    try:
        yield from store.events(skip_status=skip_status)
    finally:
        store.close_sync()


def load(where: Location, *, statuses: bool = True) -> LedgerView:
    """Fold a whole ledger (read only). ``statuses=False`` skips delivery statuses (faster).

    Raises:
        LedgerError: it is missing or unreadable; LedgerCorrupt names a bad event.
    """
    store = open_store(where, "read")
    try:
        return store.fold(skip_status=not statuses)
    finally:
        store.close_sync()


async def copy_ledger(source: Location, target: Location) -> int:
    """Copy every event of ``source`` into ``target``; how many it wrote. A target that holds
    the first of ``source``'s events and nothing else (a copy the disk, a write limit or the
    database cut short) is resumed: the rest are appended, so the rerun an interrupted copy
    asks for finishes it.

    Raises:
        LedgerError: the target is the source (:func:`_same_ledger`), the source cannot be
            read, or the target holds events that are not the source's first ones.
    """
    if _same_ledger(source, target):
        raise LedgerError(display(target), "is the source ledger: copy into a new ledger")
    store = open_store(target, "copy")
    events = read_events(source)
    try:
        _pass_copied(store, events, target)
        n = 0
        for ev in events:
            store.append_nowait(ev)
            n += 1
            if n % 4096 == 0:
                await store.drain()
        await store.close()
    except BaseException:
        store.close_sync()
        raise
    finally:
        events.close()
    return n


def _same_ledger(a: Location, b: Location) -> bool:
    """Whether ``a`` and ``b`` name one ledger: one file however it is named (a link, a
    hard link, a relative path), or one database ledger as named to a person
    (:func:`display`: its URL without the password)."""
    if is_database(a) or is_database(b):
        return is_database(a) and is_database(b) and display(a) == display(b)
    try:
        return Path(a).samefile(b)
    except OSError:  # one of them is no file (a new target): not the same
        return Path(a).resolve() == Path(b).resolve()


def _pass_copied(store: LedgerStore, events: Iterator[Event], target: Location) -> None:
    """Advance ``events`` past those ``store`` already holds.

    Raises:
        LedgerError: ``store`` holds an event that is not the next of ``events``.
    """
    if not all(next(events, None) == held for held in store.events()):
        raise LedgerError(display(target), "already holds events: copy into a new ledger")


def migrate_database(url: str) -> tuple[int, int]:
    """Bring the database at ``url`` up to this bulk-mms's schema: (version before, after).

    Raises:
        LedgerError: it cannot be reached, or its schema is newer.
    """
    if not is_database(url):
        raise LedgerError(display(url), "is not a postgresql:// URL")
    with needs("postgres", "a PostgreSQL ledger"):
        from bulk_mms.ledger import pgschema  # noqa: PLC0415 - psycopg only when it is used

    return pgschema.migrate_url(url)


def sent_since(where: Location, since: float) -> int:
    """Recipients the account's ledgers record as sent since ``since`` (epoch seconds): every
    ledger of the database, or every ``*.jsonl`` ledger beside the file (what a daily cap
    counts). Files that are not ledgers are passed over."""
    if is_database(where):
        with needs("postgres", "a PostgreSQL ledger"):
            from bulk_mms.ledger import postgres  # noqa: PLC0415 - psycopg only when it is used

        return postgres.sent_since(str(where), since)
    total = 0
    for path in sorted(Path(where).parent.glob("*.jsonl")):
        try:
            total += sum(
                len(ev.to)
                for ev in read_events(path, skip_status=True)
                if isinstance(ev, Sent) and (instant(ev.time) or 0.0) >= since
            )
        except LedgerError:
            continue  # not a ledger (or damaged): nothing it says can be counted
    return total


def headers_beside(where: Location) -> Iterator[tuple[Location, Header]]:
    """Every other ledger of ``where``'s store, with its job header: each ledger of the
    database but ``where`` (by one query; one with no header yet is passed over), or each
    JSONL ledger beside the file (``*.jsonl``; a file that is not a ledger, or whose header
    cannot be read, is passed over). Where ``run --input`` puts a resend's ledger, and where
    a report looks for the resends of its campaign and the inputs it must not write over.

    Raises:
        LedgerError: the database cannot be read.
    """
    if is_database(where):
        with needs("postgres", "a PostgreSQL ledger"):
            from bulk_mms.ledger import postgres  # noqa: PLC0415 - psycopg only when it is used

        for name, found in postgres.headers_beside(str(where)):
            yield named(where, name, rename=True), found
        return
    from bulk_mms.csvfile import is_ledger  # noqa: PLC0415 - csvfile imports the ledger's events

    path = Path(where)
    for other in sorted(path.parent.glob("*.jsonl")):
        if other == path or not is_ledger(other):
            continue
        try:
            header = header_at(other)
        except LedgerError:
            continue
        if header is not None:
            yield other, header


def header_at(where: Location) -> Header | None:
    """The job header of the ledger at ``where``; None when there is no ledger there (yet),
    or it has no header.

    Raises:
        LedgerError: it cannot be read.
    """
    if not exists(where):
        return None
    events = read_events(where, skip_status=True)
    try:
        first = next(events, None)
    finally:
        events.close()  # the ledger's file or connection, closed now, not when collected
    return first if isinstance(first, Header) else None


#: A clock further than this from a shared ledger's database's, in seconds, is logged.
SKEWED_S: Final = 1.0


async def keep_database_time(clock: SystemClock, where: str) -> None:
    """Every process of a job on a database ledger (its runs, ``track``) judges deadlines,
    windows, the day (a daily cap's reset) and a carrier's reset by one clock, the
    database's at ``where``, whatever its host's says: ``clock`` follows it from here on
    (:meth:`~bulk_mms.clock.SystemClock.follow`). A host further off than :data:`SKEWED_S`
    is told so, once (``clock.skewed``).

    Raises:
        LedgerError: the database cannot be reached (exit 7 when it did not answer).
    """
    with needs("postgres", "a PostgreSQL ledger"):
        from bulk_mms.ledger.postgres import follow_database_clock  # noqa: PLC0415 - psycopg

    skew = await asyncio.to_thread(follow_database_clock, where, clock.follow)
    if abs(skew) > SKEWED_S:
        structlog.get_logger(__name__).warning(
            "clock.skewed",
            ledger=display(where),
            seconds=round(skew, 1),
            hint="this host's clock is off the database's; bulk-mms keeps the database's "
            "time. Synchronise it (NTP, chrony)",
        )
