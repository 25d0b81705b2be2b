"""The account's suppression list as a table of a PostgreSQL ledger's database
(``bulk_mms_suppressions``), with when each number last texted STOP or START
(``bulk_mms_keywords``) and when it was last taken off (``bulk_mms_removals``): every host
and job on the database shares one list.
:func:`~bulk_mms.suppression.suppression_for` picks it for a database ledger; the file's list
(:class:`~bulk_mms.suppression.Suppressed`) is its base, and what it means is the same.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Collection, Iterable, Iterator
from typing import Any, Final

import psycopg

from bulk_mms.ledger.pgconnect import failure, split, sync_connect
from bulk_mms.ledger.pgschema import migrate
from bulk_mms.suppression import NO_TIMES, Suppressed, Times, listable, texted_in

#: The advisory lock a webhook receiver holds while it judges and applies a keyword
#: (:meth:`PostgresSuppressed.held`): receivers on one database take keywords one at a time.
_KEYWORDS_LOCK: Final = 0x6B657977


class PostgresSuppressed(Suppressed):
    """The account's suppression list as a table of the ledger's database: every host and job
    on it shares one list. Read whole at the start (membership tests must be fast), what was
    added since at each :meth:`look_again` (a run's, every few seconds), and anew for each
    keyword a receiver judges (:meth:`held`); additions and removals go straight to
    the table and say what the table did. When each number last texted STOP or START is kept
    in ``bulk_mms_keywords`` (:meth:`keyword_at`, :meth:`record_keyword`)."""

    def __init__(self, location: str) -> None:
        super().__init__(None)
        self._conninfo, _, shown = split(location)
        self.path = shown
        #: The connection :meth:`held` holds its lock on; every statement of the block uses it.
        self._held: psycopg.Connection[Any] | None = None
        #: The database's time at the last read (:meth:`look_again` reads what was added
        #: since); None before the first.
        self._read_at: dt.datetime | None = None
        self._numbers = self._listed()

    def _listed(self) -> set[int]:
        return self._added_since(None)

    def _added_since(self, since: dt.datetime | None) -> set[int]:
        """The numbers the table holds that were added after ``since`` (the database's time,
        less :data:`_COMMIT_SLACK_S`: a row is stamped as its statement began, a moment
        before it is seen), every one when None; the read's time is kept for the next."""
        if since is None:
            rows = self._run(_EVERY, ())
        else:
            rows = self._run(_ADDED_SINCE, (since, _COMMIT_SLACK_S))
        read_at, numbers = rows[0]
        self._read_at = read_at
        return {int(str(n)[1:]) for n in numbers if str(n)[1:].isdigit()}

    def look_again(self) -> list[str]:
        """Take in the numbers added to the table since this process last read it: one
        query, of those rows alone. A number taken off meanwhile stays on for this process,
        as a file's list does (:meth:`Suppressed.look_again
        <bulk_mms.suppression.Suppressed.look_again>`)."""
        with self._changing:
            new = self._added_since(self._read_at) - self._numbers
            self._late |= new  # first: a planner that finds one on the list finds it late
            self._numbers |= new
        return [f"+{n}" for n in sorted(new)]

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The table to this block (re-entrant): the database's advisory lock
        :data:`_KEYWORDS_LOCK`, held on one connection that every statement of the block uses
        (the lock ends with it, whatever becomes of this process), and the numbers read anew,
        as every process on the table left them: what a keyword is judged by, one receiver at
        a time.

        Raises:
            LedgerError: the database cannot be reached or used.
        """
        with self._changing:
            if self._held is not None:
                yield
                return
            with sync_connect(self._conninfo) as conn:  # closed on any failure too
                try:
                    migrate(conn)
                    conn.execute("SELECT pg_advisory_lock(%s)", (_KEYWORDS_LOCK,))
                except psycopg.Error as exc:
                    raise failure(str(self.path), exc, self._conninfo) from None
                self._held = conn
                try:
                    self._renew(self._listed())
                    yield
                finally:
                    self._held = None

    def _run(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            if self._held is not None:
                cur = self._held.execute(sql, params)
                return cur.fetchall() if cur.description else []
            with sync_connect(self._conninfo) as conn:
                migrate(conn)
                cur = conn.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise failure(str(self.path), exc, self._conninfo) from None

    def add(self, phones: Iterable[str], reason: str, now: float | None = None) -> list[str]:
        """Insert the numbers the table does not hold (as it stands, not as this process read
        it: another may have lifted one since); the ones added. Only numbers a list can hold
        are taken (:func:`~bulk_mms.suppression.listable`), as the file's list takes them.
        Each row is stamped by the database's clock, not ``now``."""
        given = listable(phones)
        if not given:
            return []
        added = {str(r[0]) for r in self._run(_SUPPRESS, (reason, given))}
        self._numbers.update(int(p[1:]) for p in given)
        return [p for p in given if p in added]

    def reason(self, phone: str) -> str | None:
        if phone not in self:
            return None
        rows = self._run("SELECT reason FROM bulk_mms_suppressions WHERE number = %s", (phone,))
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def keyword_at(self, phone: str) -> float | None:
        """When ``phone`` last texted STOP or START, as the table records it: its keyword
        record, or the time its suppression row's reason gives (a STOP taken before the
        records were kept); None when neither says."""
        return self.times_of((phone,)).get(phone, NO_TIMES).keyword

    def times_of(self, phones: Collection[str]) -> dict[str, Times]:
        """The :class:`~bulk_mms.suppression.Times` the tables record of each of ``phones``
        (:meth:`keyword_at`, :meth:`removed_at`), in one statement; a number they record
        nothing of is left out."""
        if not phones:
            return {}
        out: dict[str, Times] = {}
        for number, texted, removed, reason in self._run(_TIMES, (list(phones),)):
            phone = str(number)
            times = [float(texted)] if texted is not None else []
            stop = texted_in(str(reason)) if phone in self and reason is not None else None
            if stop is not None:  # its row's reason, as :meth:`reason` reads it
                times.append(stop)
            said = Times(max(times, default=None), None if removed is None else float(removed))
            if said != NO_TIMES:
                out[phone] = said
        return out

    def record_keyword(self, phone: str, reason: str, texted: float) -> bool:
        """Record that ``phone`` texted a keyword at ``texted`` (``reason`` says which; the
        table keeps the time alone), unless a time that late or later is recorded. True when
        written."""
        return bool(self._run(_KEYWORD, (phone, texted)))

    def removed_at(self, phone: str) -> float | None:
        """When ``phone`` was last taken off the table (the database's clock), as
        ``bulk_mms_removals`` records it; None when it records none."""
        return self.times_of((phone,)).get(phone, NO_TIMES).removed

    def remove(self, phones: Iterable[str], now: float | None = None) -> list[str]:
        """Delete the numbers the table holds (as it stands); the ones removed. A removed
        row whose reason says when its number texted STOP leaves that time in
        ``bulk_mms_keywords`` (:meth:`keyword_at` still orders a keyword texted before it and
        delivered late), and every removed number when it was taken off in
        ``bulk_mms_removals`` (:meth:`removed_at`, by the database's clock, not ``now``), under
        :meth:`held`, in one transaction: a number is taken off with its times kept, or not at
        all."""
        given = list(dict.fromkeys(phones))
        if not given:
            return []
        with self.held():  # no receiver judges a keyword between the two
            assert self._held is not None
            try:
                with self._held.transaction():
                    rows = self._run(
                        "DELETE FROM bulk_mms_suppressions WHERE number = ANY(%s) "
                        "RETURNING number, reason",
                        (given,),
                    )
                    for number, reason in rows:
                        if (stop := texted_in(str(reason))) is not None:
                            self.record_keyword(str(number), str(reason), stop)
                    self._run(_REMOVED, ([str(r[0]) for r in rows],))
            except psycopg.Error as exc:  # the commit's (each statement's is a LedgerError)
                raise failure(str(self.path), exc, self._conninfo) from None
        self._numbers -= {int(p[1:]) for p in given}
        return sorted(str(r[0]) for r in rows)


#: How long before a read a row it did not see may be stamped (``added``: as its
#: statement began) and yet commit after it: the next read takes those in again.
_COMMIT_SLACK_S: Final = 60.0
#: The database's time now, and every number on the list.
_EVERY: Final = "SELECT now(), array(SELECT number FROM bulk_mms_suppressions)"
#: The database's time now, and the numbers added after a time less a slack: a range on the
#: index of ``added`` in any plan, the generic one a reused connection may switch to (a
#: ``%s IS NULL OR`` in it would read the whole table there).
_ADDED_SINCE: Final = """
    SELECT now(), array(
        SELECT number FROM bulk_mms_suppressions
        WHERE added > %s::timestamptz - make_interval(secs => %s))
"""
#: For each number (an array): its keyword time, when it was last taken off, and its
#: suppression row's reason, each null when none is recorded.
_TIMES: Final = """
    SELECT n, k.texted_at, r.removed_at, s.reason
    FROM unnest(%s::text[]) AS n
    LEFT JOIN bulk_mms_keywords k ON k.number = n
    LEFT JOIN bulk_mms_removals r ON r.number = n
    LEFT JOIN bulk_mms_suppressions s ON s.number = n
"""
#: A number's keyword time, kept only when later than the one recorded; the number comes back
#: when it was written.
_KEYWORD: Final = """
    INSERT INTO bulk_mms_keywords AS k (number, texted_at) VALUES (%s, %s)
    ON CONFLICT (number) DO UPDATE SET texted_at = EXCLUDED.texted_at
    WHERE k.texted_at < EXCLUDED.texted_at
    RETURNING number
"""
#: When the numbers (an array) were taken off the list: now, by the database's clock.
_REMOVED: Final = """
    INSERT INTO bulk_mms_removals AS r (number, removed_at)
    SELECT n, extract(epoch FROM now()) FROM unnest(%s::text[]) n
    ON CONFLICT (number) DO UPDATE SET removed_at = greatest(r.removed_at, EXCLUDED.removed_at)
"""
#: The numbers (an array) put on the list with one reason; those it did not hold come back.
_SUPPRESS: Final = (
    "INSERT INTO bulk_mms_suppressions (number, reason) SELECT n, %s FROM unnest(%s::text[]) n "
    "ON CONFLICT DO NOTHING RETURNING number"
)
