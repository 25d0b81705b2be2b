"""Limits that stop a run before a send that would pass them (exit 5, resumable):

* :class:`SpendCeiling`: the job's ``max_cost``;
* :class:`DailyCap`: ``[limits] daily_recipients``, every job on the account per day.

The spend ceiling: no send starts that could take the job's spend past it.

What could be spent is what the ledger has paid so far plus what every send in flight could
cost, at a price per recipient: the average this ledger has paid, else ``[pricing]
per_recipient``. A group that would not fit stops the job (exit 5, resumable once the ceiling
is raised) before its request leaves.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from bulk_mms.clock import Clock, utc
from bulk_mms.config import JobConfig, Settings
from bulk_mms.config.settings import day_start
from bulk_mms.errors import ConfigError, LimitReached
from bulk_mms.ledger import LedgerView
from bulk_mms.ledger.store import sent_since
from bulk_mms.models import Group, Money, SendReceipt
from bulk_mms.prepare import paid_per_recipient, settings_price


class Limit(Protocol):
    """A limit the sender keeps: room reserved before a group's first try, settled after."""

    def reserve(self, group: Group) -> LimitReached | None: ...

    def settle(self, group: Group, receipt: SendReceipt | None) -> None: ...


class SpendCeiling:
    """Reservations against ``max_cost``, kept by the sender as groups start and end."""

    def __init__(self, ceiling: Decimal, paid: Decimal, price: Money | None) -> None:
        if price is None:
            raise ConfigError(
                "max_cost",
                "needs a price to keep to: set [pricing] per_recipient in the settings "
                "(a ledger that has paid for sends already has one)",
            )
        self.ceiling = ceiling
        self.paid = paid
        self.price = price
        self._reserved: dict[str, Decimal] = {}

    def reserve(self, group: Group) -> LimitReached | None:
        """Hold room for ``group``; the error to stop with when it would not fit."""
        if group.id in self._reserved:
            return None  # a retry: already held
        need = self.price.amount * len(group.to)
        could = self.paid + sum(self._reserved.values()) + need
        if could > self.ceiling:
            return LimitReached(
                f"the job's spend ceiling (max_cost {self.ceiling} {self.price.currency}) "
                f"would be passed: {self.paid} paid, {could - self.paid} more in flight and "
                "next; resumable once max_cost is raised",
                status=None,
            )
        self._reserved[group.id] = need
        return None

    def settle(self, group: Group, receipt: SendReceipt | None) -> None:
        """The group ended: its reservation goes, what it cost (if it was sent) is paid."""
        self._reserved.pop(group.id, None)
        if receipt is not None and receipt.cost is not None:
            self.paid += receipt.cost.amount


class DailyCap:
    """Recipients the account may still send today, counted across its ledgers at the start
    of the run (what other jobs sent today counts too) and kept as this run's groups go."""

    def __init__(self, cap: int, sent_today: int, resets: str) -> None:
        self.cap = cap
        self.sent = sent_today
        self.resets = resets
        self._reserved: dict[str, int] = {}

    def reserve(self, group: Group) -> LimitReached | None:
        """Hold room for ``group``; the error to stop with when the day's cap would pass."""
        if group.id in self._reserved:
            return None
        if self.sent + sum(self._reserved.values()) + len(group.to) > self.cap:
            return LimitReached(
                f"the daily cap ([limits] daily_recipients = {self.cap}) is reached: "
                f"{self.sent} sent today; the next day's run (after {self.resets}) resumes",
                status=None,
            )
        self._reserved[group.id] = len(group.to)
        return None

    def settle(self, group: Group, receipt: SendReceipt | None) -> None:
        """The group ended: its reservation goes, and counts if it was sent."""
        n = self._reserved.pop(group.id, 0)
        if receipt is not None:
            self.sent += n


def run_limits(job: JobConfig, settings: Settings, view: LedgerView, clock: Clock) -> list[Limit]:
    """The limits a run keeps: the job's ``max_cost`` and the account's daily cap.

    Raises:
        ConfigError: ``max_cost`` without any price to keep to.
        LedgerError: the account's ledgers cannot be read (for the daily cap).
    """
    limits: list[Limit] = []
    if job.max_cost is not None:
        paid = sum(view.cost().values(), Decimal(0))
        price = paid_per_recipient(view) or settings_price(settings)
        limits.append(SpendCeiling(job.max_cost, paid, price))
    if settings.daily_recipients is not None:
        start = day_start(settings.daily_reset, utc(clock))
        sent = sent_since(job.where, start.timestamp())
        limits.append(DailyCap(settings.daily_recipients, sent, settings.daily_reset))
    return limits
