"""Limits that stop a run before a send that would pass them (exit 5, resumable):

* :class:`SpendCeiling`: the job's ``max_cost``, shared by every process running the job;
* :class:`DailyCap`: ``[limits] daily_recipients``, shared by every job on the account per day.

Both count in a :class:`Tally` that everyone who shares the limit shares, so the processes
together keep it, not each one alone:

* a PostgreSQL ledger counts in its database (:class:`~bulk_mms.ledger.pgbudget.PostgresTally`:
  a row per count, reserved by one ``UPDATE ... SET used = used + n WHERE used + n <= cap``);
* JSONL ledgers count in small files in their folder (:class:`FileTally`,
  ``.bulk-mms-daily-<account>-<day>.json``), each read, changed and replaced under an
  exclusive ``flock`` of the folder's ``.bulk-mms-limits.lock``; a JSONL ledger's spend is its
  own run's alone (the ledger is exclusive), so it counts in memory (:class:`MemoryTally`).

A group reserves its room before its first try leaves; room that could not be had stops the
job before the request. The reservation is released when the group's tries end with nothing
sent and no try that may have been accepted; a send that was (or may have been) accepted stays
counted. So a cap is never passed by more than the groups in flight when it was reached (and
by none at one process): their reservations were all made before it was reached. A process
that dies between reserving and settling leaves its reservations counted (never a send too
many; at worst the groups it had in flight, for the rest of the day or until the job's count
row is reset).

The spend ceiling counts each send at the larger of its price and what the API's answer said
it cost: that cost is an estimate (the final one, in ``message.finalized``, adds the carriers'
pass-through fees), so a send is never counted below the price the settings give. A send of
unknown cost (the API left its cost null) counts at the price, never as free. (A send that cost more
than the price it was reserved at can take the count past the ceiling by the difference: only
the groups in flight, each by what it was underpriced.) The price is
``[pricing] per_recipient``; without one, the average this ledger has paid per recipient; with
neither, ``max_cost`` is refused (:class:`~bulk_mms.errors.ConfigError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Protocol

import orjson
import structlog

from bulk_mms.clock import Clock, utc
from bulk_mms.config import JobConfig, Settings
from bulk_mms.config.settings import day_start, next_day_start
from bulk_mms.errors import ConfigError, LedgerError, LimitReached
from bulk_mms.ledger import LedgerView
from bulk_mms.ledger.store import is_database, sent_since
from bulk_mms.models import Group, Money, SendReceipt

__all__ = [
    "DailyCap",
    "FileTally",
    "Limit",
    "MemoryTally",
    "SpendCeiling",
    "Tally",
    "max_cost_counts",
    "paid_per_recipient",
    "recipient_price",
    "run_limits",
    "settings_price",
]

log = structlog.get_logger("bulk_mms.caps")


class Tally(Protocol):
    """Counts shared by everyone who keeps a limit, by name: reserve under a cap, atomically."""

    async def take(self, key: str, amount: Decimal, cap: Decimal, seed: Decimal) -> Decimal | None:
        """Add ``amount`` to the count ``key`` if it stays within ``cap``: None. Else the count
        as it stands (nothing added). A count that does not exist yet starts at ``seed`` (what
        the ledgers say was used before any process counted).

        Raises:
            LedgerError: the count cannot be read or written.
        """
        ...

    async def add(self, key: str, amount: Decimal) -> None:
        """Add ``amount`` (negative: release a reservation; never below 0) to the count ``key``.

        Raises:
            LedgerError: the count cannot be written.
        """
        ...

    async def close(self) -> None:
        """Let go of what the tally holds (a connection)."""
        ...


class MemoryTally:
    """A :class:`Tally` in this process alone: for a limit nobody else shares."""

    def __init__(self) -> None:
        self._counts: dict[str, Decimal] = {}

    async def take(self, key: str, amount: Decimal, cap: Decimal, seed: Decimal) -> Decimal | None:
        used = self._counts.setdefault(key, seed)
        if used + amount > cap:
            return used
        self._counts[key] = used + amount
        return None

    async def add(self, key: str, amount: Decimal) -> None:
        self._counts[key] = max(Decimal(0), self._counts.get(key, Decimal(0)) + amount)

    async def close(self) -> None:
        return None


#: The lock file beside the ledgers that every count file of the folder is changed under.
LOCK_NAME = ".bulk-mms-limits.lock"


class FileTally:
    """A :class:`Tally` in files beside the JSONL ledgers: ``.bulk-mms-<key>.json`` each.

    Every change reads the count, changes it and replaces the file (a temporary file renamed
    over it, so a crash leaves the old count or the new, never half of one) while holding an
    exclusive ``flock`` of :data:`LOCK_NAME` in the folder: runs of any job in the folder
    change the counts one at a time. The file work runs in a thread, off the event loop.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, key: str) -> Path:
        """The file that holds the count ``key``."""
        return self.folder / f".bulk-mms-{key}.json"

    def _change(
        self, key: str, change: Callable[[Decimal], Decimal | None], seed: Decimal
    ) -> Decimal:
        """Under the folder's lock: read ``key`` (``seed`` if it has no file), write back what
        ``change`` makes of it (None: leave it); the count as read."""
        path = self.path(key)
        try:
            lock = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LedgerError(str(path), f"cannot lock the counts: {exc.strerror}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released with the descriptor
            used = self._read(path, seed)
            new = change(used)
            if new is not None:
                self._write(path, new)
        except OSError as exc:
            raise LedgerError(str(path), f"cannot keep the count: {exc.strerror}") from None
        finally:
            os.close(lock)
        return used

    @staticmethod
    def _read(path: Path, seed: Decimal) -> Decimal:
        try:
            data = orjson.loads(path.read_bytes())
            return Decimal(str(data["used"]))
        except FileNotFoundError:
            return seed
        except (orjson.JSONDecodeError, KeyError, TypeError, InvalidOperation):
            raise LedgerError(str(path), "is not a count: remove it to count afresh") from None

    def _write(self, path: Path, used: Decimal) -> None:
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps({"used": str(used)}))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def take(self, key: str, amount: Decimal, cap: Decimal, seed: Decimal) -> Decimal | None:
        refused: list[Decimal] = []

        def change(used: Decimal) -> Decimal | None:
            if used + amount > cap:
                refused.append(used)
                return None
            return used + amount

        await asyncio.to_thread(self._change, key, change, seed)
        return refused[0] if refused else None

    async def add(self, key: str, amount: Decimal) -> None:
        await asyncio.to_thread(
            self._change, key, lambda used: max(Decimal(0), used + amount), Decimal(0)
        )

    async def close(self) -> None:
        return None


class Limit(Protocol):
    """A limit the sender keeps: room reserved before a group's first try, settled after."""

    async def reserve(self, group: Group) -> LimitReached | None:
        """Hold room for ``group`` (once: a retry holds it already); the error to stop with
        when it would not fit.

        Raises:
            LedgerError: the shared count cannot be kept.
        """
        ...

    async def settle(
        self, group: Group, receipt: SendReceipt | None, *, maybe_sent: bool = False
    ) -> None:
        """The group's tries are over: ``receipt`` if it was sent. Without a receipt its
        room is released, unless ``maybe_sent`` (a try may have been accepted: in doubt).

        Never raises: a count that cannot be changed is logged (``limits.unsettled``) and
        stays as it was, its reservation counted (never a send too many).
        """
        ...

    async def close(self) -> None:
        """The run is over: let go of the shared count."""
        ...


async def _adjust(tally: Tally, key: str, amount: Decimal, group: Group) -> None:
    """Add ``amount`` to the count ``key`` for ``group``'s settling; a count that cannot be
    changed is logged and left (a release not made keeps the room taken, the safe side)."""
    try:
        await tally.add(key, amount)
    except LedgerError as exc:
        log.warning(
            "limits.unsettled", count=key, group=group.id, change=str(amount), error=str(exc)
        )


def _key_part(text: str) -> str:
    """``text`` as a safe part of a file name (an account's name, a ledger's)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:100] or "_"


class SpendCeiling:
    """No send starts that could take the job's spend past ``max_cost``.

    Counted in ``tally`` under ``key`` (every process of the job shares it): what the ledger
    has paid, plus every send in flight at ``price`` per recipient. A send's own cost raises
    its reservation once the API says it, never lowers it (the answer's cost is an estimate);
    a send of unknown cost stays counted at ``price``.

    Args:
        ceiling: ``max_cost``.
        paid: what the ledger has spent already (the count's start, if nobody counted yet).
        price: per recipient: ``[pricing] per_recipient``, else the ledger's average.
        tally: where the count is kept.
        key: the count's name.
    """

    def __init__(
        self,
        ceiling: Decimal,
        paid: Decimal,
        price: Money | None,
        tally: Tally | None = None,
        key: str = "spend",
    ) -> None:
        if price is None:
            raise ConfigError(
                "max_cost",
                "needs a price to keep to: set [pricing] per_recipient in the settings "
                "(a ledger that has paid for sends already has one)",
            )
        self.ceiling = ceiling
        self.paid = paid
        self.price = price
        self.tally: Tally = tally or MemoryTally()
        self.key = key
        self._reserved: dict[str, Decimal] = {}

    async def reserve(self, group: Group) -> LimitReached | None:
        if group.id in self._reserved:
            return None  # a retry: already held
        need = self.price.amount * len(group.to)
        used = await self.tally.take(self.key, need, self.ceiling, self.paid)
        if used is not None:
            return LimitReached(
                f"the job's spend ceiling (max_cost {self.ceiling} {self.price.currency}) "
                f"would be passed: {used} spent or in flight, {need} more next; "
                "resumable once max_cost is raised",
                status=None,
            )
        self._reserved[group.id] = need
        return None

    async def settle(
        self, group: Group, receipt: SendReceipt | None, *, maybe_sent: bool = False
    ) -> None:
        need = self._reserved.pop(group.id, None)
        if need is None:
            return
        if receipt is None:
            if not maybe_sent:  # nothing was sent: the room goes back
                await _adjust(self.tally, self.key, -need, group)
        elif receipt.cost is not None and receipt.cost.amount > need:
            await _adjust(self.tally, self.key, receipt.cost.amount - need, group)
        # a null cost, or one under the price: it stays counted at the price (the answer's
        # cost is an estimate; the final one adds the carriers' fees)

    async def close(self) -> None:
        await self.tally.close()


class DailyCap:
    """Recipients the account may still send today, counted in ``tally`` by every job on the
    account (a count per account and day: ``daily-<account>-<day>``), reserved as this run's
    groups start and released for those that were not sent.

    Args:
        cap: ``[limits] daily_recipients``.
        sent_today: what the account's ledgers recorded sent today when the run began (the
            day's count starts there if nobody counted yet).
        resets: ``daily_reset``, ``"HH:MM Zone"``: when a day starts.
        account: the account's name (``[limits] account``).
        clock: the job's clock: which day it is, at each reservation.
        tally: where the count is kept.
    """

    def __init__(
        self,
        cap: int,
        sent_today: int,
        resets: str,
        *,
        account: str = "default",
        clock: Clock | None = None,
        tally: Tally | None = None,
    ) -> None:
        self.cap = cap
        self.sent = sent_today
        self.resets = resets
        self.account = account
        self.clock = clock
        self.tally: Tally = tally or MemoryTally()
        self._started = self._day()
        self._reserved: dict[str, tuple[str, int]] = {}

    def _day(self) -> str:
        """The count of the day it is now (``daily-<account>-<YYYY-MM-DD>``)."""
        if self.clock is None:
            return f"daily-{_key_part(self.account)}"
        start = day_start(self.resets, utc(self.clock))
        return f"daily-{_key_part(self.account)}-{start.date().isoformat()}"

    async def reserve(self, group: Group) -> LimitReached | None:
        if group.id in self._reserved:
            return None
        key, n = self._day(), len(group.to)
        # a day that began during this run started with nothing sent but what others counted
        seed = Decimal(self.sent if key == self._started else 0)
        used = await self.tally.take(key, Decimal(n), Decimal(self.cap), seed)
        if used is not None:
            return LimitReached(
                f"the daily cap ([limits] daily_recipients = {self.cap}) is reached: "
                f"{used} sent or in flight today; the next day's run (after {self.resets}) "
                "resumes",
                status=None,
                resumes_at=next_day_start(self.resets, utc(self.clock)).timestamp()
                if self.clock is not None
                else None,
            )
        self._reserved[group.id] = (key, n)
        return None

    async def settle(
        self, group: Group, receipt: SendReceipt | None, *, maybe_sent: bool = False
    ) -> None:
        held = self._reserved.pop(group.id, None)
        if held is not None and receipt is None and not maybe_sent:
            await _adjust(self.tally, held[0], -Decimal(held[1]), group)

    async def close(self) -> None:
        await self.tally.close()


def _tallies(job: JobConfig) -> tuple[Tally, Tally, str]:
    """Where the job's counts are kept: the account's daily count, the job's spend, and the
    spend count's name (the ledger's)."""
    if is_database(job.where):
        from bulk_mms.ledger.pgbudget import PostgresTally  # noqa: PLC0415 - psycopg if used

        tally = PostgresTally(str(job.where))
        return tally, tally, f"spend-{tally.ledger}"
    return FileTally(Path(job.where).parent), MemoryTally(), "spend"


def run_limits(job: JobConfig, settings: Settings, view: LedgerView, clock: Clock) -> list[Limit]:
    """The limits a run keeps: the job's ``max_cost`` and the account's daily cap. Nothing is
    opened until the first reservation; :meth:`Limit.close` each when the run is over.

    Raises:
        ConfigError: ``max_cost`` without any price to keep to.
        LedgerError: the account's ledgers cannot be read (for the daily cap).
    """
    limits: list[Limit] = []
    if job.max_cost is None and settings.daily_recipients is None:
        return limits
    daily, spend, key = _tallies(job)
    if job.max_cost is not None:
        price, paid = max_cost_counts(settings, view)
        limits.append(SpendCeiling(job.max_cost, paid, price, spend, key))
    if settings.daily_recipients is not None:
        start = day_start(settings.daily_reset, utc(clock))
        sent = sent_since(job.where, start.timestamp())
        limits.append(
            DailyCap(
                settings.daily_recipients,
                sent,
                settings.daily_reset,
                account=settings.account,
                clock=clock,
                tally=daily,
            )
        )
    return limits


def settings_price(settings: Settings) -> Money | None:
    """``[pricing] per_recipient``, if set."""
    if settings.price_per_recipient is None:
        return None
    return Money(settings.price_per_recipient, settings.currency)


def recipient_price(settings: Settings, view: LedgerView) -> tuple[Money | None, str]:
    """The price of a recipient, and where it comes from in words: ``[pricing]
    per_recipient``, else the average this ledger has paid (None: neither). The one rule for
    what a recipient costs: a run's ``max_cost`` (:func:`max_cost_counts`) and the dry run's
    estimate count by it."""
    if (configured := settings_price(settings)) is not None:
        return configured, "[pricing] per_recipient"
    if (observed := paid_per_recipient(view)) is not None:
        return observed, "the average per recipient this ledger has paid"
    return None, "unknown: set [pricing] per_recipient"


def max_cost_counts(settings: Settings, view: LedgerView) -> tuple[Money | None, Decimal]:
    """What a job's ``max_cost`` is counted in, by a run (:func:`run_limits`) and by the dry
    run's verdict alike: the price of a recipient (:func:`recipient_price`), and what the
    ledger has paid (its sends' costs, and every recipient of a send the API gave no cost
    for at that price)."""
    price, _ = recipient_price(settings, view)
    paid = sum(view.cost().values(), Decimal(0))
    if price is not None:
        unknown = sum(len(rec.to) for rec in view.sent_groups() if rec.cost is None)
        paid += price.amount * unknown
    return price, paid


def paid_per_recipient(view: LedgerView) -> Money | None:
    """The mean price per recipient of a ledger's sent groups the API gave a cost for, if it
    has any, in one currency (a send it gave none for is counted at this price: its
    recipients are not in the mean, or they would lower it)."""
    paid = view.cost()
    sent = sum(len(rec.to) for rec in view.sent_groups() if rec.cost is not None)
    if len(paid) != 1 or not sent:
        return None
    ((currency, total),) = paid.items()
    return Money((total / sent).quantize(Decimal("0.000001")), currency)
