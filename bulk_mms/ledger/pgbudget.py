"""The account budget shared through PostgreSQL: every process that names the same ``account``
paces under one rate.

One row per account in ``bulk_mms_budgets`` holds a GCRA's theoretical arrival time (``tat``,
on the database's clock) and the account's pause; ``bulk_mms_sender_pauses`` holds each
sender's pause (a 429, a queue to let drain), so hosts do not fight over one sender's queue.
Admission is one atomic ``UPDATE``: it succeeds only when the row's ``tat`` has come, and moves
it on by the cost's spacing, so N processes together are spaced as one. The spacing has no burst
allowance and a 5 % margin, so no one-second window at the API holds more than ``rate`` even
with tens of milliseconds of jitter between admission and arrival.

Times cross the :class:`~bulk_mms.rate.AccountBudget` seam on the process's monotonic clock;
they are converted at each round trip by the offset between it and the database's clock.
``pause`` is synchronous (the pacer's 429 path is): it takes effect here at once and is written
through by a task of its own.

The limits every process of an account keeps together (the daily cap, a job's ``max_cost``)
count in ``bulk_mms_limits`` (:class:`PostgresTally`): a row per count, reserved by one
``UPDATE ... SET used = used + n WHERE used + n <= cap RETURNING``, so two processes can never
both take the last room.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Final, TypeVar

import psycopg

from bulk_mms.clock import Clock
from bulk_mms.errors import LedgerError, LedgerUnavailable
from bulk_mms.rate import PaceAborted, Pauses, WindowGuard

#: Spacing is ``cost / rate`` times this: room for jitter between admission and arrival (the
#: write-ahead commit and the connection lie between them): 50 ms in any second.
MARGIN: Final = 1.05
_ADMIT: Final = """
    WITH now AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS t)
    UPDATE bulk_mms_budgets b SET tat = greatest(b.tat, now.t) + %(spacing)s
    FROM now
    WHERE b.account = %(account)s AND b.tat <= now.t AND b.paused_until <= now.t
    RETURNING now.t, b.tat, b.paused_until
"""
_PEEK: Final = """
    SELECT extract(epoch FROM clock_timestamp())::float8, tat, paused_until,
           coalesce((SELECT max(until) FROM bulk_mms_sender_pauses
                     WHERE account = %(account)s), 0)
    FROM bulk_mms_budgets WHERE account = %(account)s
"""
_PAUSE_ACCOUNT: Final = (
    "UPDATE bulk_mms_budgets SET paused_until = greatest(paused_until, %s) WHERE account = %s"
)
_PAUSE_SENDER: Final = """
    INSERT INTO bulk_mms_sender_pauses (account, sender, until) VALUES (%s, %s, %s)
    ON CONFLICT (account, sender) DO UPDATE
    SET until = greatest(bulk_mms_sender_pauses.until, EXCLUDED.until)
"""
_SENDER_PAUSES: Final = "SELECT sender, until FROM bulk_mms_sender_pauses WHERE account = %s"


class PostgresBudget(Pauses):
    """An :class:`~bulk_mms.rate.AccountBudget` in the database. Build it with
    :meth:`PostgresStore.account_budget <bulk_mms.ledger.postgres.PostgresStore.account_budget>`.
    """

    def __init__(
        self,
        conninfo: str,
        name: str,
        account: str,
        rate: float,
        clock: Clock,
        *,
        max_cost: float = 1.0,
        stopped: Callable[[], bool] = lambda: False,
    ) -> None:
        self._conninfo = conninfo
        self._name = name
        self.account = account
        self.rate = rate
        self.clock = clock
        self._stopped = stopped
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        #: database time minus this process's monotonic time, from the last round trip
        self._offset: float | None = None
        super().__init__()
        self._writes: set[asyncio.Task[None]] = set()
        self._guard = WindowGuard(max(rate, max_cost))

    def __repr__(self) -> str:
        return f"<PostgresBudget {self.account} {self.rate:g}/s>"

    async def _db(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None:
            try:
                self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                await self._conn.execute(
                    "INSERT INTO bulk_mms_budgets (account) VALUES (%s) ON CONFLICT DO NOTHING",
                    (self.account,),
                )
            except psycopg.Error as exc:
                raise LedgerError(self._name, f"account budget: {exc}".splitlines()[0]) from None
        return self._conn

    def _local(self, db_time: float) -> float:
        assert self._offset is not None
        return db_time - self._offset

    def pause(self, until: float, sender: str | None = None) -> None:
        super().pause(until, sender)
        if self._offset is not None:
            task = asyncio.get_running_loop().create_task(
                self._write_pause(until + self._offset, sender)
            )
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write_pause(self, db_until: float, sender: str | None) -> None:
        with contextlib.suppress(psycopg.Error, LedgerError):
            conn = await self._db()
            if sender is None:
                await conn.execute(_PAUSE_ACCOUNT, (db_until, self.account))
            else:
                await conn.execute(_PAUSE_SENDER, (self.account, sender, db_until))

    async def admit_now(self, cost: float) -> float | None:
        return None  # admission is the database's: always a round trip

    async def acquire(self, cost: float, deadline: float | None = None) -> float:
        spacing = cost / self.rate * MARGIN
        async with self._lock:
            while True:
                if self._stopped():
                    raise PaceAborted("stopping", self.clock.monotonic())
                admitted, at = await self._try_admit(spacing)
                if admitted:
                    # the moment the database admitted it (not when the answer came back): the
                    # pacer measures an admission's age from it, and takes a stale one again
                    return min(at, self.clock.monotonic())
                if deadline is not None and at > deadline:
                    raise PaceAborted("deadline", at)
                await self.clock.sleep(max(0.0, at - self.clock.monotonic()))

    async def _try_admit(self, spacing: float) -> tuple[bool, float]:
        """One round trip: (True, when it was admitted), or (False, when to try again), on
        the local monotonic clock."""
        conn = await self._db()
        try:
            before = self.clock.monotonic()
            cur = await conn.execute(_ADMIT, {"spacing": spacing, "account": self.account})
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(_PEEK, {"account": self.account})
                row = await cur.fetchone()
            assert row is not None
            self._offset = float(row[0]) - (before + self.clock.monotonic()) / 2
            if len(row) == 3:
                return True, self._local(float(row[0]))
            await self._learn_pauses(conn, float(row[2]))
            return False, self._local(max(float(row[1]), float(row[2])))
        except psycopg.Error as exc:
            raise LedgerError(self._name, f"account budget: {exc}".splitlines()[0]) from None

    async def _learn_pauses(self, conn: psycopg.AsyncConnection[Any], account_until: float) -> None:
        """Take in the pauses other processes wrote (the account's and each sender's)."""
        super().pause(self._local(account_until))
        cur = await conn.execute(_SENDER_PAUSES, (self.account,))
        for sender, until in await cur.fetchall():
            super().pause(self._local(float(until)), sender)

    async def send_slot(self, cost: float) -> float:
        # the shared spacing already keeps the account's windows; this keeps this process's
        # own sends from bunching after a stall
        while (at := self._guard.earliest(self.clock.monotonic(), cost)) > self.clock.monotonic():
            if self._stopped():
                raise PaceAborted("stopping", at)
            await self.clock.sleep(at - self.clock.monotonic())
        now = self.clock.monotonic()
        self._guard.record(now, cost)
        return now

    async def close(self) -> None:
        for task in list(self._writes):
            with contextlib.suppress(Exception):
                await task
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None


_T = TypeVar("_T")
#: The longest one count's round trip may take before the run stops (a locked table, a
#: server gone): seconds.
TALLY_TIMEOUT_S: Final = 30.0
_TALLY_SEED: Final = (
    "INSERT INTO bulk_mms_limits (name, used) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING"
)
_TALLY_TAKE: Final = """
    UPDATE bulk_mms_limits SET used = used + %(amount)s
    WHERE name = %(name)s AND used + %(amount)s <= %(cap)s
    RETURNING used
"""
_TALLY_USED: Final = "SELECT used FROM bulk_mms_limits WHERE name = %s"
_TALLY_ADD: Final = "UPDATE bulk_mms_limits SET used = greatest(0, used + %s) WHERE name = %s"


class PostgresTally:
    """A :class:`~bulk_mms.caps.Tally` in the ledger's database, shared by every process
    and job that uses it: a row of ``bulk_mms_limits`` per count, changed atomically.

    A count that has no row yet is made with the ``seed`` its first taker passes (an insert
    that does nothing when another process made it first), then reserved by one ``UPDATE``
    that adds only while the sum stays within the cap. Its own connection (autocommit), made
    at the first count; every round trip ends within :data:`TALLY_TIMEOUT_S`, or in
    :class:`~bulk_mms.errors.LedgerUnavailable` (the run stops, exit 7, resumable).

    Args:
        location: the ledger's ``postgresql://`` URL.
    """

    def __init__(self, location: str) -> None:
        from bulk_mms.ledger.postgres import split  # noqa: PLC0415 - postgres imports this

        self._conninfo, self.ledger, self._shown = split(location)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._seeded: set[str] = set()
        # one connection: one count's statements at a time
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<PostgresTally {self._shown}>"

    async def _run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        """``work`` on the connection, under the lock and the timeout; a database's error or
        silence becomes a :class:`LedgerError` (and the connection is dropped)."""
        from bulk_mms.ledger.postgres import _scrub  # noqa: PLC0415 - postgres imports this

        async with self._lock:
            try:
                async with asyncio.timeout(TALLY_TIMEOUT_S):
                    if self._conn is None:
                        self._conn = await psycopg.AsyncConnection.connect(
                            self._conninfo, autocommit=True
                        )
                    return await work(self._conn)
            except (psycopg.Error, TimeoutError) as exc:
                conn, self._conn = self._conn, None
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
                why = (
                    _scrub(exc, self._conninfo)
                    if isinstance(exc, psycopg.Error)
                    else (f"no answer within {TALLY_TIMEOUT_S:g} s")
                )
                raise LedgerUnavailable(
                    self._shown, f"cannot keep the limits' count: {why}"
                ) from None

    async def take(self, key: str, amount: Decimal, cap: Decimal, seed: Decimal) -> Decimal | None:
        async def work(conn: psycopg.AsyncConnection[Any]) -> Decimal | None:
            if key not in self._seeded:
                await conn.execute(_TALLY_SEED, (key, seed))
                self._seeded.add(key)
            cur = await conn.execute(_TALLY_TAKE, {"amount": amount, "name": key, "cap": cap})
            if await cur.fetchone() is not None:
                return None
            cur = await conn.execute(_TALLY_USED, (key,))
            row = await cur.fetchone()
            return Decimal(row[0]) if row is not None else seed

        return await self._run(work)

    async def add(self, key: str, amount: Decimal) -> None:
        async def work(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(_TALLY_ADD, (amount, key))

        await self._run(work)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
