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
by none at one process): their reservations were all made before it was reached.

The room is held by the group (its ledger and id: :data:`Holder`) in the shared store, not by
the process: a reservation repeated for a group that holds room adds nothing, and a release
gives back what the group holds, once. A process that dies between reserving and settling
leaves its groups' room counted (never a send too many); whoever takes one of those groups
over reserves it in the room it holds. On a shared ledger a group's room is taken only under
this process's claim on it (its :class:`~bulk_mms.coordination.Fence`): a process paused past
its lease, woken after the taker sent the group and settled its room, takes none (the room it
would make nobody would settle). A run, as it begins, settles the room its ledger's
groups still hold (:meth:`Limit.reconcile`, decided by :mod:`bulk_mms.leftover`): kept for a
group sent or in doubt, given back for one that ended unsent or never left, each decided
under the run's own claim on it and given back only while that claim holds; given back too
for one the ledger shows failed for good, whoever holds its claim (a run killed between
writing the failure and giving the room back leaves it live for a lease): no host sends such
a group again. A run already going when another is killed so gives that room back before a
limit stops it: the reservation refused is tried once more after.

The spend ceiling counts each send at the larger of its price and what the API's answer said
it cost: that cost is an estimate (the final one, in ``message.finalized``, adds the carriers'
pass-through fees), so a send is never counted below the price the settings give. A send of
unknown cost (the API left its cost null) counts at the price, never as free. (A send that cost more
than the price it was reserved at can take the count past the ceiling by the difference: only
the groups in flight, each by what it was underpriced.) The price is
``[pricing] per_recipient``; without one, the average this ledger has paid per recipient; with
neither, ``max_cost`` is refused (:class:`~bulk_mms.errors.ConfigError`).

``max_cost`` is counted in ``[pricing] currency``, and so is a cost that names no currency
(:attr:`~bulk_mms.models.Money.currency` None: the spec requires none); no rate to any other
currency is known. A send
whose answer gave its cost in another currency counts at the price (its amount is never added
as if it were in this one), and no send starts after it: the run stops
(:class:`~bulk_mms.errors.MaxCostReached`, exit 5) saying which currency came back. A run
whose ledger holds a cost in another currency is refused before sending
(:class:`~bulk_mms.errors.ConfigError`, exit 2), until ``[pricing] currency`` names the one
the account is billed in (or the job drops ``max_cost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final, Protocol, TypeVar

import orjson
import structlog

from bulk_mms.clock import Clock, utc
from bulk_mms.config import JobConfig, Settings
from bulk_mms.config.settings import day_start, next_day_start
from bulk_mms.coordination import Fence
from bulk_mms.errors import ConfigError, ForeignCost, LedgerError, LimitReached, MaxCostReached
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

log = structlog.get_logger(__name__)

_T = TypeVar("_T")


#: A reservation's holder: a group (its id) of a ledger (its name). Each holder holds room in
#: a count once, so a repeat of its reservation (a retry, a lost commit's, a takeover's) adds
#: nothing, and its release gives back what it holds, once.
Holder = tuple[str, str]


#: What :meth:`Limit.reconcile` asks of each group holding room: what became of it.
Decide = Callable[[str], Awaitable[str]]
#: The fence of this process's claim on a group (None: nothing is shared).
FenceOf = Callable[[str], Fence | None]


def unfenced(group: str) -> Fence | None:
    """No fence: a ledger nobody shares."""
    return None


class Tally(Protocol):
    """Counts shared by everyone who keeps a limit, by name: reserve under a cap, atomically,
    each reservation held by its :data:`Holder` in the shared store (not in a process's
    memory), so whoever decides about the group later can release it or keep it."""

    async def take(
        self,
        key: str,
        amount: Decimal,
        cap: Decimal,
        seed: Decimal,
        holder: Holder,
        *,
        fence: Fence | None = None,
    ) -> Decimal | None:
        """Add ``amount`` to the count ``key`` for ``holder`` if it stays within ``cap``: None.
        Else the count as it stands (nothing added). A holder that holds room in ``key``
        already keeps it and adds nothing: None. A count that does not exist yet starts at
        ``seed`` (what the ledgers say was used before any process counted). Under a
        ``fence`` (a shared ledger's), only while this process holds the holder group's claim
        with it, as its attempt is written (the claim locked until the room is taken).

        Raises:
            ClaimLost: another process holds the group's claim under ``fence``'s: nothing
                was taken.
            LedgerError: the count cannot be read or written.
        """
        ...

    async def release(self, key: str, holder: Holder, *, fence: Fence | None = None) -> None:
        """Give back the room ``holder`` holds in ``key`` (nothing, if it holds none); under
        a ``fence`` (a shared ledger's), only while this process holds the holder group's
        claim with it (else nothing: the room is the claim holder's, who may send in it).

        Raises:
            LedgerError: the count cannot be written.
        """
        ...

    async def spend(self, key: str, holder: Holder, extra: Decimal) -> None:
        """``holder``'s room in ``key`` was spent: it stays counted, ``extra`` more with it,
        and is held no more (nothing, if it holds none).

        Raises:
            LedgerError: the count cannot be written.
        """
        ...

    async def held(self, ledger: str) -> list[tuple[str, str]]:
        """Every (count, group) in which a group of ``ledger`` holds room.

        Raises:
            LedgerError: the counts cannot be read.
        """
        ...

    async def close(self) -> None:
        """Let go of what the tally holds (a connection)."""
        ...


class _Count:
    """A count as :class:`MemoryTally` and :class:`FileTally` keep it: what is used, and
    what each holder holds of it."""

    __slots__ = ("held", "used")

    def __init__(self, used: Decimal, held: dict[Holder, Decimal] | None = None) -> None:
        self.used = used
        self.held = held or {}

    def take(self, amount: Decimal, cap: Decimal, holder: Holder) -> Decimal | None:
        """:meth:`Tally.take` on this count."""
        if holder in self.held:
            return None
        if self.used + amount > cap:
            return self.used
        self.used += amount
        self.held[holder] = amount
        return None

    def release(self, holder: Holder) -> bool:
        """:meth:`Tally.release` on this count: whether it changed."""
        if (amount := self.held.pop(holder, None)) is None:
            return False
        self.used = max(Decimal(0), self.used - amount)
        return True

    def spend(self, holder: Holder, extra: Decimal) -> bool:
        """:meth:`Tally.spend` on this count: whether it changed."""
        if self.held.pop(holder, None) is None:
            return False
        self.used += max(Decimal(0), extra)
        return True


class MemoryTally:
    """A :class:`Tally` in this process alone: for a limit nobody else shares."""

    def __init__(self) -> None:
        self._counts: dict[str, _Count] = {}

    async def take(
        self,
        key: str,
        amount: Decimal,
        cap: Decimal,
        seed: Decimal,
        holder: Holder,
        *,
        fence: Fence | None = None,
    ) -> Decimal | None:
        return self._counts.setdefault(key, _Count(seed)).take(amount, cap, holder)

    async def release(self, key: str, holder: Holder, *, fence: Fence | None = None) -> None:
        if (count := self._counts.get(key)) is not None:
            count.release(holder)

    async def spend(self, key: str, holder: Holder, extra: Decimal) -> None:
        if (count := self._counts.get(key)) is not None:
            count.spend(holder, extra)

    async def held(self, ledger: str) -> list[tuple[str, str]]:
        return [
            (key, grp)
            for key, count in self._counts.items()
            for owner, grp in count.held
            if owner == ledger
        ]

    async def close(self) -> None:
        return None


#: The lock file beside the ledgers that every count file of the folder is changed under.
LOCK_NAME = ".bulk-mms-limits.lock"
#: How a count file is named: ``.bulk-mms-<key>.json``.
_COUNT_PREFIX, _COUNT_SUFFIX = ".bulk-mms-", ".json"


class FileTally:
    """A :class:`Tally` in files beside the JSONL ledgers: ``.bulk-mms-<key>.json`` each, the
    count and what each holder holds of it (``{"used": "12", "held": [[ledger, group,
    "2"], ...]}``; a file without ``held``, written before, holds nothing).

    Every change reads the count, changes it and replaces the file (a temporary file renamed
    over it, so a crash leaves the old count or the new, never half of one) while holding an
    exclusive ``flock`` of :data:`LOCK_NAME` in the folder: runs of any job in the folder
    change the counts one at a time. The file work runs in a thread, off the event loop.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, key: str) -> Path:
        """The file that holds the count ``key``."""
        return self.folder / f"{_COUNT_PREFIX}{key}{_COUNT_SUFFIX}"

    def _locked(self, work: Callable[[], _T], shown: Path) -> _T:
        """``work`` under the folder's lock.

        Raises:
            LedgerError: the lock cannot be had, or ``work`` met an OS error.
        """
        try:
            lock = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LedgerError(str(shown), f"cannot lock the counts: {exc.strerror}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released with the descriptor
            return work()
        except OSError as exc:
            raise LedgerError(str(shown), f"cannot keep the count: {exc.strerror}") from None
        finally:
            os.close(lock)

    def _change(self, key: str, change: Callable[[_Count], bool], seed: Decimal) -> None:
        """Under the folder's lock: read ``key`` (``seed`` if it has no file), and write it
        back if ``change`` changed it."""
        path = self.path(key)

        def work() -> None:
            count = self._read(path, seed)
            if change(count):
                self._write(path, count)

        self._locked(work, path)

    @staticmethod
    def _read(path: Path, seed: Decimal) -> _Count:
        try:
            data = orjson.loads(path.read_bytes())
            held = {(str(o), str(g)): Decimal(str(a)) for o, g, a in data.get("held", [])}
            return _Count(Decimal(str(data["used"])), held)
        except FileNotFoundError:
            return _Count(seed)
        except (
            orjson.JSONDecodeError,
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            InvalidOperation,
        ):
            raise LedgerError(str(path), "is not a count: remove it to count afresh") from None

    def _write(self, path: Path, count: _Count) -> None:
        held = [[owner, grp, str(amount)] for (owner, grp), amount in count.held.items()]
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps({"used": str(count.used), "held": held}))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def take(
        self,
        key: str,
        amount: Decimal,
        cap: Decimal,
        seed: Decimal,
        holder: Holder,
        *,
        fence: Fence | None = None,
    ) -> Decimal | None:
        refused: list[Decimal] = []

        def change(count: _Count) -> bool:
            if (used := count.take(amount, cap, holder)) is not None:
                refused.append(used)
                return False
            return True

        await asyncio.to_thread(self._change, key, change, seed)
        return refused[0] if refused else None

    async def release(self, key: str, holder: Holder, *, fence: Fence | None = None) -> None:
        await asyncio.to_thread(self._change, key, lambda count: count.release(holder), Decimal(0))

    async def spend(self, key: str, holder: Holder, extra: Decimal) -> None:
        await asyncio.to_thread(
            self._change, key, lambda count: count.spend(holder, extra), Decimal(0)
        )

    async def held(self, ledger: str) -> list[tuple[str, str]]:
        def work() -> list[tuple[str, str]]:
            found = []
            for path in sorted(self.folder.glob(f"{_COUNT_PREFIX}?*{_COUNT_SUFFIX}")):
                key = path.name.removeprefix(_COUNT_PREFIX).removesuffix(_COUNT_SUFFIX)
                found += [
                    (key, grp)
                    for owner, grp in self._read(path, Decimal(0)).held
                    if owner == ledger
                ]
            return found

        return await asyncio.to_thread(self._locked, work, self.folder / LOCK_NAME)

    async def close(self) -> None:
        return None


class Limit(Protocol):
    """A limit the sender keeps: room reserved before a group's first try, settled after."""

    async def reserve(self, group: Group, fence: Fence | None = None) -> LimitReached | None:
        """Hold room for ``group`` (once: a retry holds it already); the error to stop with
        when it would not fit. Under ``fence`` (a shared ledger's claim on the group), only
        while this process holds the claim with it (:meth:`Tally.take`).

        Raises:
            ClaimLost: another process took the group over: no room was taken.
            LedgerError: the shared count cannot be kept.
        """
        ...

    async def settle(
        self, group: Group, receipt: SendReceipt | None, *, maybe_sent: bool = False
    ) -> LimitReached | None:
        """The group's tries are over: ``receipt`` if it was sent. Without a receipt its
        room is released, unless ``maybe_sent`` (a try may have been accepted: in doubt).
        Returns the error to stop the run with when the limit can no longer be kept after
        this send (a cost in another currency than the ceiling's), else None.

        Never raises: a count that cannot be changed is logged (``limits.unsettled``) and
        stays as it was, its reservation counted (never a send too many).
        """
        ...

    async def reconcile(self, decide: Decide, fence_of: FenceOf = unfenced) -> None:
        """As a run begins: settle the room the ledger's groups hold in the shared count from
        runs that ended without settling it (killed, their claims run out). ``decide`` says
        what became of each group, by the ledger: :data:`SPENT` (it stays counted),
        :data:`UNSENT` (it is given back, under ``fence_of(group)``: the claim ``decide``
        took, so a room another process took the group over in meanwhile, this one paused,
        is left to it), :data:`ENDED` (failed for good: given back, whoever holds its claim)
        or :data:`UNDECIDED` (in doubt, or another live process holds it: it stays held, the
        safe side).

        Never raises: a count that cannot be read or changed is logged
        (``limits.unreconciled``) and left as it is.
        """
        ...

    async def close(self) -> None:
        """The run is over: let go of the shared count."""
        ...


#: What :meth:`Limit.reconcile` makes of a group's room: it was sent (counted for good), it
#: was not and will not be without a new reservation (given back), or neither is known.
SPENT: Final = "spent"
UNSENT: Final = "unsent"
UNDECIDED: Final = "undecided"
#: Its group failed for good, by the ledger: given back whoever holds its claim, unfenced.
#: No host sends a group the ledger shows so (every claimant reads the group again before it
#: decides, and skips it), so none reserves it again, nor sends in its room; and a release
#: deletes the group's row and takes its amount off in one statement, so the late release of
#: the host that failed it (paused, its claim live) finds no row and gives back nothing twice.
ENDED: Final = "ended"


async def _settle(
    tally: Tally, key: str, holder: Holder, extra: Decimal | None, group: Group
) -> None:
    """Settle ``holder``'s room in ``key``: spent (``extra`` more with it), or given back
    (None); a count that cannot be changed is logged and left (a release not made keeps the
    room taken, the safe side)."""
    try:
        if extra is None:
            await tally.release(key, holder)
        else:
            await tally.spend(key, holder, extra)
    except LedgerError as exc:
        log.warning(
            "limits.unsettled",
            count=key,
            group=group.id,
            released=extra is None,
            error=str(exc),
        )


async def _reconcile(
    tally: Tally,
    ledger: str,
    counts: Callable[[str], bool],
    decide: Decide,
    fence_of: FenceOf,
) -> None:
    """:meth:`Limit.reconcile` of the room ``ledger``'s groups hold in the counts of
    ``tally`` that ``counts`` names."""
    try:
        for key, gid in await tally.held(ledger):
            if not counts(key):
                continue
            verdict = await decide(gid)
            if verdict == SPENT:
                await tally.spend(key, (ledger, gid), Decimal(0))
            elif verdict == UNSENT:
                await tally.release(key, (ledger, gid), fence=fence_of(gid))
            elif verdict == ENDED:
                await tally.release(key, (ledger, gid))
            log.info("limits.reconciled", count=key, group=gid, verdict=verdict)
    except LedgerError as exc:
        log.warning("limits.unreconciled", ledger=ledger, error=str(exc))


def _key_part(text: str) -> str:
    """``text`` as a safe part of a file name (an account's name, a ledger's)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:100] or "_"


class SpendCeiling:
    """No send starts that could take the job's spend past ``max_cost``.

    Counted in ``tally`` under ``key`` (every process of the job shares it): what the ledger
    has paid, plus every send in flight at ``price`` per recipient. A send's own cost raises
    its reservation once the API says it, never lowers it (the answer's cost is an estimate);
    a send of unknown cost stays counted at ``price``, and so does one whose answer gave a
    cost in another currency than ``price``'s: after such a send no reservation is made
    (:attr:`foreign`; each is refused with :class:`~bulk_mms.errors.MaxCostReached` saying
    why), as the spend can no longer be kept under ``ceiling``.

    Args:
        ceiling: ``max_cost``.
        paid: what the ledger has spent already (the count's start, if nobody counted yet).
        price: per recipient: ``[pricing] per_recipient``, else the ledger's average, in
            ``[pricing] currency`` (a price naming no currency is no price to keep to).
        tally: where the count is kept.
        key: the count's name.
        ledger: the job's ledger, whose groups hold the reservations (:data:`Holder`).
    """

    def __init__(
        self,
        ceiling: Decimal,
        paid: Decimal,
        price: Money | None,
        tally: Tally | None = None,
        key: str = "spend",
        *,
        ledger: str = "",
    ) -> None:
        if price is None or price.currency is None:
            raise ConfigError(
                "max_cost",
                "needs a price to keep to: set [pricing] per_recipient in the settings "
                "(a ledger that has paid for sends already has one)",
            )
        self.ceiling = ceiling
        self.paid = paid
        self.price = price
        #: ``[pricing] currency``: what the ceiling, and a cost naming no currency, are in.
        self.currency: str = price.currency
        self.tally: Tally = tally or MemoryTally()
        self.key = key
        self.ledger = ledger
        self._reserved: dict[str, Decimal] = {}
        #: The currency of a send's answer that was not the price's: set, no send starts.
        self.foreign: str | None = None

    async def reserve(self, group: Group, fence: Fence | None = None) -> LimitReached | None:
        if group.id in self._reserved:
            return None  # a retry: already held
        if self.foreign is not None:
            return self._foreign_stop(self.foreign)
        need = self.price.amount * len(group.to)
        holder = (self.ledger, group.id)  # a takeover's holds what the group held already
        used = await self.tally.take(self.key, need, self.ceiling, self.paid, holder, fence=fence)
        if used is not None:
            return MaxCostReached(
                f"the job's spend ceiling (max_cost {self.ceiling} {self.currency}) "
                f"would be passed: {used} spent or in flight, {need} more next; "
                "resumable once max_cost is raised",
                status=None,
            )
        self._reserved[group.id] = need
        return None

    def _foreign_stop(self, currency: str) -> ForeignCost:
        """What stops the run once a send cost in ``currency``, not the ceiling's."""
        return ForeignCost(
            f"a send's answer gave its cost in {currency}, not {self.currency} "
            f"([pricing] currency), which max_cost {self.ceiling} {self.currency} "
            f"is counted in: {FOREIGN_STOP}",
            status=None,
        )

    async def settle(
        self, group: Group, receipt: SendReceipt | None, *, maybe_sent: bool = False
    ) -> LimitReached | None:
        need = self._reserved.pop(group.id, None)
        if need is None:
            return None
        holder = (self.ledger, group.id)
        if receipt is None:
            if not maybe_sent:  # nothing was sent: the room goes back
                await _settle(self.tally, self.key, holder, None, group)
            return None
        # a null cost, or one under the price: it stays counted at the price (the answer's
        # cost is an estimate; the final one adds the carriers' fees)
        cost = receipt.cost
        currency = self.currency if cost is None else cost.currency_or(self.currency)
        if cost is not None and currency != self.currency:
            # no rate between the two is known: counted at the price, and nothing more sent
            self.foreign = self.foreign or currency
            log.warning(
                "limits.foreign_cost",
                group=group.id,
                currency=currency,
                counted_in=self.currency,
            )
            await _settle(self.tally, self.key, holder, Decimal(0), group)
            return self._foreign_stop(currency)
        more = cost.amount - need if cost is not None else Decimal(0)
        await _settle(self.tally, self.key, holder, max(Decimal(0), more), group)
        return None

    async def reconcile(self, decide: Decide, fence_of: FenceOf = unfenced) -> None:
        await _reconcile(self.tally, self.ledger, lambda key: key == self.key, decide, fence_of)

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
        ledger: the job's ledger, whose groups hold the reservations (:data:`Holder`).
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
        ledger: str = "",
    ) -> None:
        self.cap = cap
        self.sent = sent_today
        self.resets = resets
        self.account = account
        self.clock = clock
        self.tally: Tally = tally or MemoryTally()
        self.ledger = ledger
        self._started = self._day()
        self._reserved: dict[str, tuple[str, int]] = {}

    def _day(self) -> str:
        """The count of the day it is now (``daily-<account>-<YYYY-MM-DD>``)."""
        if self.clock is None:
            return f"daily-{_key_part(self.account)}"
        start = day_start(self.resets, utc(self.clock))
        return f"daily-{_key_part(self.account)}-{start.date().isoformat()}"

    async def reserve(self, group: Group, fence: Fence | None = None) -> LimitReached | None:
        if group.id in self._reserved:
            return None
        key, n = self._day(), len(group.to)
        # a day that began during this run started with nothing sent but what others counted
        seed = Decimal(self.sent if key == self._started else 0)
        used = await self.tally.take(
            key, Decimal(n), Decimal(self.cap), seed, (self.ledger, group.id), fence=fence
        )
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
    ) -> LimitReached | None:
        held = self._reserved.pop(group.id, None)
        if held is not None and not (receipt is None and maybe_sent):
            spent = None if receipt is None else Decimal(0)  # None: given back
            await _settle(self.tally, held[0], (self.ledger, group.id), spent, group)
        return None

    async def reconcile(self, decide: Decide, fence_of: FenceOf = unfenced) -> None:
        prefix = f"daily-{_key_part(self.account)}"
        await _reconcile(
            self.tally,
            self.ledger,
            lambda key: key == prefix or key.startswith(f"{prefix}-"),
            decide,
            fence_of,
        )

    async def close(self) -> None:
        await self.tally.close()


def _tallies(job: JobConfig) -> tuple[Tally, Tally, str, str]:
    """Where the job's counts are kept: the account's daily count, the job's spend, the
    spend count's name (the ledger's), and the ledger's name, whose groups hold the room."""
    if is_database(job.where):
        from bulk_mms.ledger.pgbudget import PostgresTally  # noqa: PLC0415 - psycopg if used

        tally = PostgresTally(str(job.where))
        return tally, tally, f"spend-{tally.ledger}", tally.ledger
    ledger = Path(job.where)
    return FileTally(ledger.parent), MemoryTally(), "spend", ledger.name


def run_limits(job: JobConfig, settings: Settings, view: LedgerView, clock: Clock) -> list[Limit]:
    """The limits a run keeps: the job's ``max_cost`` and the account's daily cap. Nothing is
    opened until the first reservation; :meth:`Limit.close` each when the run is over.

    Raises:
        ConfigError: ``max_cost`` without any price to keep to, or with a ledger whose sends
            cost in a currency other than ``[pricing] currency`` (each naming the job file).
        LedgerError: the account's ledgers cannot be read (for the daily cap).
    """
    limits: list[Limit] = []
    if job.max_cost is None and settings.daily_recipients is None:
        return limits
    daily, spend, key, ledger = _tallies(job)
    if job.max_cost is not None:
        if foreign := sorted(set(view.cost(settings.currency)) - {settings.currency}):
            raise ConfigError(
                "max_cost",
                f"this ledger's sends cost in {', '.join(foreign)}, not {settings.currency} "
                f"([pricing] currency), which max_cost is counted in: {FOREIGN_STOP}",
                source=job.path,
            )
        price, paid = max_cost_counts(settings, view)
        try:
            ceiling = SpendCeiling(job.max_cost, paid, price, spend, key, ledger=ledger)
        except ConfigError as exc:  # the setting is the job file's: named with it
            raise ConfigError(exc.setting, exc.message, source=job.path) from None
        limits.append(ceiling)
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
                ledger=ledger,
            )
        )
    return limits


#: What a spend in another currency than ``[pricing] currency`` leaves to do: no rate between
#: the two is known, so ``max_cost`` cannot be kept, and nothing more is sent under it.
FOREIGN_STOP: Final = (
    "no more is sent under a ceiling that cannot be kept; set [pricing] currency to the "
    "currency the account is billed in (or drop max_cost), then rerun"
)


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
    if (observed := paid_per_recipient(view, settings.currency)) is not None:
        return observed, "the average per recipient this ledger has paid"
    return None, "unknown: set [pricing] per_recipient"


def max_cost_counts(settings: Settings, view: LedgerView) -> tuple[Money | None, Decimal]:
    """What a job's ``max_cost`` is counted in, by a run (:func:`run_limits`) and by the dry
    run's verdict alike: the price of a recipient (:func:`recipient_price`), and what the
    ledger has paid in ``[pricing] currency`` (its sends' costs in it, a cost that names no
    currency taken to be in it, and every recipient of a send the API gave no cost for, or a
    cost in another currency, at that price: never an amount of another currency added as
    if it were this one's)."""
    currency = settings.currency
    price, _ = recipient_price(settings, view)
    paid = view.cost(currency).get(currency, Decimal(0))
    if price is not None:
        unknown = sum(
            len(rec.to)
            for rec in view.sent_groups()
            if rec.cost is None or rec.cost.currency_or(currency) != currency
        )
        paid += price.amount * unknown
    return price, paid


def paid_per_recipient(view: LedgerView, currency: str) -> Money | None:
    """The mean price per recipient of a ledger's sent groups the API gave a cost for, if it
    has any and they all cost in ``currency`` (``[pricing] currency``: a cost that names none
    is in it), else None: an average in another currency is no price in this one (a send it
    gave no cost for is counted at this price: its recipients are not in the mean, or they
    would lower it)."""
    paid = view.cost(currency)
    sent = sum(len(rec.to) for rec in view.sent_groups() if rec.cost is not None)
    if set(paid) != {currency} or not sent:
        return None
    return Money((paid[currency] / sent).quantize(Decimal("0.000001")), currency)
