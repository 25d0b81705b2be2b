"""The account budget shared through PostgreSQL: every process that names the same ``account``
paces under one rate.

One row per account in ``bulk_mms_budgets`` holds a GCRA's theoretical arrival time (``tat``,
on the database's clock) and the account's pause; ``bulk_mms_sender_pauses`` holds each
sender's pause (a 429, a queue to let drain), so hosts do not fight over one sender's queue.
Admission is one atomic ``UPDATE``: it succeeds only when the row's ``tat`` has come, and moves
it on by the cost's spacing, so N processes together are spaced as one. Its round trip also
reads the senders paused, so a pause one process wrote holds every other from its next
admission (the pacer waits it out before its request). The spacing has no burst
allowance and room for the time a request may take from its admission to the API
(:func:`spacing`), so no one-second window at the API holds more than ``rate``.

Times cross the :class:`~bulk_mms.rate.AccountBudget` seam on the process's monotonic clock;
they are converted at each round trip by the offset between it and the database's clock.
``pause`` is synchronous (the pacer's 429 path is): it takes effect here at once and is written
through by a task of its own.

The limits every process of an account keeps together (the daily cap, a job's ``max_cost``)
count in ``bulk_mms_limits`` (:class:`PostgresTally`): a row per count, reserved by one
``UPDATE ... SET used = used + n WHERE used + n <= cap``, so two processes can never
both take the last room.

Both talk to the database as the ledger does, through a
:class:`~bulk_mms.ledger.pgconnect.Link`: a named connection, every round trip bounded by
:data:`~bulk_mms.ledger.pgconnect.DB_TIMEOUT_S`, made again once when found lost, and a failure
a :class:`~bulk_mms.errors.LedgerUnavailable` (exit 7, resumable).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Final, TypeVar

import psycopg
import structlog

from bulk_mms.clock import Clock
from bulk_mms.coordination import Fence
from bulk_mms.errors import ClaimLost, LedgerError
from bulk_mms.ledger.pgconnect import Link, split
from bulk_mms.rate import PaceAborted, Pauses, WindowGuard, permit_max_age

_T = TypeVar("_T")

log = structlog.get_logger(__name__)

#: How much later than the moment it left its request may reach the API, in seconds (the
#: admission's round trip is read at its midpoint, the connection to the API): jitter the
#: spacing leaves room for.
JITTER_S: Final = 0.025


def spacing(cost: float, rate: float, max_cost: float = 1.0) -> float:
    """How far apart, in seconds, the shared budget admits a request of ``cost`` at ``rate``,
    when no request costs more than ``max_cost``.

    Each request leaves within :func:`~bulk_mms.rate.permit_max_age` (``B``) of its
    admission (an older one is admitted again first) and reaches the API within
    :data:`JITTER_S` (``J``) more, so the requests the API sees in any one second were
    admitted within ``W = 1 + B + J`` seconds. Each admission waits for the one before it to
    have its spacing, so all but the last of them cost less than ``W`` over the spacing of
    one unit (``room``), and the last costs at most ``max_cost``. A second may hold ``rate``
    units, rounded down, and at least one request of the largest cost (as each process's own
    window guard allows): ``room`` is that less ``max_cost - 1``, and no more than the rate
    itself (a rate below 1 spaces wider still). At 12/s, 12 requests in a second, never 13;
    at 15 recipients a second, groups of 8 come one a second, never 16 recipients.
    """
    whole = math.floor(rate) if rate >= 1 else rate
    room = min(whole, max(math.floor(rate), math.floor(max_cost)) - math.floor(max_cost) + 1)
    return cost * (1.0 + permit_max_age(rate) + JITTER_S) / room


#: One round trip: the admission (``admitted``: when the row's ``tat`` has come and the account
#: is not paused), and what the row held before it, with the senders paused at the database's
#: time ``now.t`` (``{sender: until}``, or null).
_ADMIT: Final = """
    WITH now AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS t),
    admitted AS (
        UPDATE bulk_mms_budgets b SET tat = greatest(b.tat, now.t) + %(spacing)s
        FROM now
        WHERE b.account = %(account)s AND b.tat <= now.t AND b.paused_until <= now.t
        RETURNING b.account
    )
    SELECT now.t, b.tat, b.paused_until,
           (SELECT json_object_agg(p.sender, p.until) FROM bulk_mms_sender_pauses p
            WHERE p.account = %(account)s AND p.until > now.t),
           EXISTS (SELECT FROM admitted)
    FROM bulk_mms_budgets b, now WHERE b.account = %(account)s
"""
_PAUSE_ACCOUNT: Final = (
    "UPDATE bulk_mms_budgets SET paused_until = greatest(paused_until, %s) WHERE account = %s"
)
_PAUSE_SENDER: Final = """
    INSERT INTO bulk_mms_sender_pauses (account, sender, until) VALUES (%s, %s, %s)
    ON CONFLICT (account, sender) DO UPDATE
    SET until = greatest(bulk_mms_sender_pauses.until, EXCLUDED.until)
"""
_SEED_BUDGET: Final = "INSERT INTO bulk_mms_budgets (account) VALUES (%s) ON CONFLICT DO NOTHING"
#: Seconds :meth:`PostgresBudget.close` gives the pauses still being written before it drops
#: them (they are advice to the other processes: a stop must not wait on them).
_CLOSE_WAIT_S: Final = 1.0


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
        self.account = account
        self.rate = rate
        self.clock = clock
        self._stopped = stopped
        self._link = Link(conninfo, name)
        self._seeded = False
        #: one admission at a time (held across its waits)
        self._lock = asyncio.Lock()
        #: one round trip at a time on the one connection (an admission's, a pause's write)
        self._trip = asyncio.Lock()
        #: database time minus this process's monotonic time, from the last round trip
        self._offset: float | None = None
        super().__init__()
        self._writes: set[asyncio.Task[None]] = set()
        self._max_cost = max_cost
        self._guard = WindowGuard(max(rate, max_cost))

    def __repr__(self) -> str:
        return f"<PostgresBudget {self.account} {self.rate:g}/s>"

    async def _run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        """``work`` on the budget's connection, its account's row made first. Every statement
        here may be repeated on a new connection: the seed and a pause's write change nothing
        the second time, and an admission repeated after its answer was lost only spaces the
        account wider, never closer.

        Raises:
            LedgerUnavailable: the database was lost (twice), or did not answer in time.
            LedgerError: any other database error.
        """

        async def seeded(conn: psycopg.AsyncConnection[Any]) -> _T:
            if not self._seeded:
                await conn.execute(_SEED_BUDGET, (self.account,))
                self._seeded = True
            return await work(conn)

        async with self._trip:
            return await self._link.run(seeded, "account budget")

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
        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            if sender is None:
                await conn.execute(_PAUSE_ACCOUNT, (db_until, self.account))
            else:
                await conn.execute(_PAUSE_SENDER, (self.account, sender, db_until))

        # advice to the other processes: this one has the pause already, and its next
        # admission meets the same fault and says so
        with contextlib.suppress(LedgerError):
            await self._run(write)

    async def admit_now(self, cost: float) -> float | None:
        return None  # admission is the database's: always a round trip

    async def acquire(self, cost: float, deadline: float | None = None) -> float:
        gap = spacing(cost, self.rate, self._max_cost)
        async with self._lock:
            while True:
                if self._stopped():
                    raise PaceAborted("stopping", self.clock.monotonic())
                admitted, at = await self._try_admit(gap)
                if admitted:
                    # the moment the database admitted it (not when the answer came back): the
                    # pacer measures an admission's age from it, and takes a stale one again
                    return min(at, self.clock.monotonic())
                if deadline is not None and at > deadline:
                    raise PaceAborted("deadline", at)
                await self.clock.sleep(max(0.0, at - self.clock.monotonic()))

    async def _try_admit(self, spacing: float) -> tuple[bool, float]:
        """One round trip: (True, when it was admitted), or (False, when to try again), on
        the local monotonic clock.

        Raises:
            LedgerUnavailable: the database was lost, or did not answer in time (exit 7).
        """

        async def admit(conn: psycopg.AsyncConnection[Any]) -> tuple[bool, float]:
            before = self.clock.monotonic()
            cur = await conn.execute(_ADMIT, {"spacing": spacing, "account": self.account})
            row = await cur.fetchone()
            assert row is not None  # the account's row is seeded first
            self._offset = float(row[0]) - (before + self.clock.monotonic()) / 2
            self._learn_pauses(float(row[2]), row[3])
            if row[4]:
                return True, self._local(float(row[0]))
            return False, self._local(max(float(row[1]), float(row[2])))

        return await self._run(admit)

    def _learn_pauses(self, account_until: float, senders: object) -> None:
        """Take in the pauses the account's processes wrote, as one round trip read them:
        the account's, and ``senders`` (``{sender: until}``, or None: none paused). Every
        admission reads them, so a sender another process paused is paused here from this
        process's next admission on (the pacer then waits it out before its request)."""
        super().pause(self._local(account_until))
        if not isinstance(senders, dict):
            return
        for sender, until in senders.items():
            if isinstance(sender, str) and isinstance(until, int | float):
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
        """Let the pauses being written finish (for at most :data:`_CLOSE_WAIT_S`), then close
        the connection (never raises)."""
        if self._writes:
            _, late = await asyncio.wait(list(self._writes), timeout=_CLOSE_WAIT_S)
            for task in late:
                task.cancel()
            if late:  # a cancelled query waits for the server's word: bounded too
                await asyncio.wait(late, timeout=_CLOSE_WAIT_S)
        await self._link.close()


_TALLY_SEED: Final = (
    "INSERT INTO bulk_mms_limits (name, used) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING"
)
#: The CTEs ``fenced`` and ``may`` of a change to a holder's room under a fence: ``may.ok``
#: when no fence is given (``%(owner)s`` none), or while its owner holds the holder group's
#: claim with ``%(token)s`` in the ledger, the claim locked until the change commits (as a
#: fenced attempt locks it), so a takeover either comes first (the change is refused) or
#: sees it made.
_FENCED: Final = """
    fenced AS (
        SELECT FROM bulk_mms_claims c JOIN bulk_mms_ledgers g ON g.id = c.ledger
        WHERE g.name = %(ledger)s AND c.grp = %(grp)s AND c.owner = %(owner)s
          AND c.token = %(token)s
        FOR SHARE OF c),
    may AS (SELECT %(owner)s::text IS NULL OR EXISTS (SELECT FROM fenced) AS ok),
"""
#: A holder's reservation: its row in ``bulk_mms_reservations`` (none made when it has one:
#: it holds the room already), and the count raised by it while within the cap. Whether the
#: row was made, whether the count took it, and whether the fence held (:data:`_FENCED`: else
#: nothing is taken). A row made that the count did not take is rolled back.
_TALLY_TAKE: Final = f"""
    WITH {_FENCED}
    held AS (
        INSERT INTO bulk_mms_reservations (name, ledger, grp, amount)
        SELECT %(name)s, %(ledger)s, %(grp)s, %(amount)s FROM may WHERE may.ok
        ON CONFLICT (name, ledger, grp) DO NOTHING
        RETURNING amount),
    taken AS (
        UPDATE bulk_mms_limits l SET used = l.used + h.amount FROM held h
        WHERE l.name = %(name)s AND l.used + h.amount <= %(cap)s
        RETURNING l.name)
    SELECT EXISTS (SELECT FROM held), EXISTS (SELECT FROM taken), (SELECT ok FROM may)
"""  # noqa: S608 - built of this module's constants only: every value is a parameter
_TALLY_USED: Final = "SELECT used FROM bulk_mms_limits WHERE name = %s"
#: A holder's reservation settled, its row gone: the room given back (``%(back)s`` 1) or
#: spent, ``%(extra)s`` more with it (``%(back)s`` 0). Nothing, for a holder without one, or
#: under a fence that no longer holds (:data:`_FENCED`).
_TALLY_SETTLE: Final = f"""
    WITH {_FENCED}
    gone AS (
        DELETE FROM bulk_mms_reservations
        WHERE name = %(name)s AND ledger = %(ledger)s AND grp = %(grp)s
          AND (SELECT ok FROM may)
        RETURNING amount)
    UPDATE bulk_mms_limits l
    SET used = greatest(0, l.used - %(back)s * g.amount + %(extra)s) FROM gone g
    WHERE l.name = %(name)s
"""  # noqa: S608 - built of this module's constants only: every value is a parameter
_TALLY_HELD: Final = (
    "SELECT name, grp FROM bulk_mms_reservations WHERE ledger = %s ORDER BY name, grp"
)


def _holding(holder: tuple[str, str], fence: Fence | None) -> dict[str, Any]:
    """The parameters naming ``holder`` and the fence its room is changed under
    (:data:`_FENCED`)."""
    return {
        "ledger": holder[0],
        "grp": holder[1],
        "owner": fence.owner if fence is not None else None,
        "token": fence.token if fence is not None else 0,
    }


class PostgresTally:
    """A :class:`~bulk_mms.caps.Tally` in the ledger's database, shared by every process
    and job that uses it: a row of ``bulk_mms_limits`` per count, changed atomically, and a
    row of ``bulk_mms_reservations`` per holder's room in it.

    A count that has no row yet is made with the ``seed`` its first taker passes (an insert
    that does nothing when another process made it first), then reserved by one statement
    that makes the holder's row (unless it has one: it holds the room already) and adds to
    the count only while the sum stays within the cap. Settling deletes the holder's row and
    changes the count by what that row held, in one statement. Its own connection (the
    ledger's kind: named, made at the first count, made again once when found lost); every
    round trip ends within :data:`~bulk_mms.ledger.pgconnect.DB_TIMEOUT_S`, or in
    :class:`~bulk_mms.errors.LedgerUnavailable` (the run stops, exit 7, resumable).

    Each change is its own transaction, and repeating it changes nothing more (a holder
    holds once; a settled one holds nothing), so a connection lost even during the
    ``COMMIT`` is repeated on a new one: a count is never changed twice by one change.

    Args:
        location: the ledger's ``postgresql://`` URL.
    """

    def __init__(self, location: str) -> None:
        conninfo, self.ledger, self._shown = split(location)
        self._link = Link(conninfo, self._shown)
        self._seeded: set[str] = set()
        # one connection: one count's statements at a time
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<PostgresTally {self._shown}>"

    async def _run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        """``work`` on the tally's connection, one at a time; repeated on a new one when the
        connection is lost (every change here may be).

        Raises:
            LedgerUnavailable: the database was lost (twice), or did not answer in time.
            LedgerError: any other database error.
        """
        async with self._lock:
            return await self._link.run(work, "cannot keep the limits' count")

    async def take(
        self,
        key: str,
        amount: Decimal,
        cap: Decimal,
        seed: Decimal,
        holder: tuple[str, str],
        *,
        fence: Fence | None = None,
    ) -> Decimal | None:
        params = {"amount": amount, "name": key, "cap": cap, **_holding(holder, fence)}

        async def take(conn: psycopg.AsyncConnection[Any]) -> Decimal | None:
            if key not in self._seeded:
                await conn.execute(_TALLY_SEED, (key, seed))  # may repeat: DO NOTHING
                self._seeded.add(key)
            async with conn.transaction():
                cur = await conn.execute(_TALLY_TAKE, params)
                row = await cur.fetchone()
                assert row is not None
                made, taken, fenced = bool(row[0]), bool(row[1]), bool(row[2])
                if not fenced and fence is not None:  # another process's group: nothing taken
                    log.warning("group.claim_lost", group=holder[1], token=fence.token)
                    raise ClaimLost(self._shown, holder[1])
                if not made or taken:
                    return None  # held already, or now
                raise psycopg.Rollback  # no room: the holder's row goes too
            cur = await conn.execute(_TALLY_USED, (key,))
            used = await cur.fetchone()
            return Decimal(used[0]) if used is not None else seed

        return await self._run(take)

    async def _settle(
        self, key: str, holder: tuple[str, str], extra: Decimal | None, fence: Fence | None
    ) -> None:
        """Settle ``holder``'s room in ``key``: given back (``extra`` None), or spent; under
        ``fence``, only while it holds."""
        params = {
            "name": key,
            "back": 1 if extra is None else 0,
            "extra": extra or Decimal(0),
            **_holding(holder, fence),
        }

        async def settle(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute(_TALLY_SETTLE, params)

        await self._run(settle)

    async def release(
        self, key: str, holder: tuple[str, str], *, fence: Fence | None = None
    ) -> None:
        await self._settle(key, holder, None, fence)

    async def spend(self, key: str, holder: tuple[str, str], extra: Decimal) -> None:
        await self._settle(key, holder, extra, None)

    async def held(self, ledger: str) -> list[tuple[str, str]]:
        async def held(conn: psycopg.AsyncConnection[Any]) -> list[tuple[str, str]]:
            cur = await conn.execute(_TALLY_HELD, (ledger,))
            return [(str(name), str(grp)) for name, grp in await cur.fetchall()]

        return await self._run(held)

    async def close(self) -> None:
        await self._link.close()
