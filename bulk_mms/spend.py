"""The job's spend ceiling (``max_cost``): no send starts that could take its spend past it.

What could be spent is what the ledger has paid so far plus what every send in flight could
cost, at a price per recipient: the average this ledger has paid, else ``[pricing]
per_recipient``. A group that would not fit stops the job (exit 5, resumable once the ceiling
is raised) before its request leaves.
"""

from __future__ import annotations

from decimal import Decimal

from bulk_mms.errors import ConfigError, LimitReached
from bulk_mms.models import Group, Money


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

    def settle(self, group: Group, cost: Money | None) -> None:
        """The group ended: its reservation goes, what it cost (if anything) is paid."""
        self._reserved.pop(group.id, None)
        if cost is not None:
            self.paid += cost.amount
