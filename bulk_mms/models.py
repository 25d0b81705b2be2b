"""The values that flow through the pipeline: rows in, groups across, receipts and outcomes back.

Every record the pipeline, the ledger and the reports use is a :class:`msgspec.Struct` (the
sandbox and the test helpers keep plain dataclasses): frozen where it is a value, as a frozen
slotted dataclass would be (fields, defaults, equality, hashing, ``replace`` from
:mod:`msgspec.structs`). A Struct class is made in C, where ``dataclasses`` compiles six
methods for each class at import (about 4 M instructions a class, 0.2 G for a run's 43), and
an instance is built in a fifth of the time: a send of 2,000 groups runs 13% fewer
instructions (``bench/breakdown.py``).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import final

import msgspec

from bulk_mms.errors import ApiError


class Outcome(enum.StrEnum):
    """The ``event`` of a ledger line that records what happened to a group or a row."""

    #: The API accepted the group.
    SENT = "sent"
    #: The API refused the group, or retries ran out.
    FAILED = "failed"
    #: The request may have been accepted; it is not resent without the operator's say-so.
    IN_DOUBT = "in_doubt"
    #: An input row that was never sent (bad number, duplicate, malformed line).
    REJECTED = "rejected"


# final: the row loops tell these apart by ``type(item) is``, which a subclass would pass
# unseen (``isinstance`` asks a Struct's metaclass, several times the cost a row)
@final
class Recipient(msgspec.Struct, frozen=True, eq=False):
    """One valid, normalised input row. Equal by number and line; its fields (personal data)
    are neither compared nor shown in its repr."""

    #: E.164, e.g. ``+14155550100``.
    phone: str
    #: 1-based line of the input file where the row starts.
    line: int
    #: The row's fields, for ``{column}`` placeholders.
    fields: Mapping[str, str]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Recipient):
            return NotImplemented
        return (self.phone, self.line) == (other.phone, other.line)

    def __hash__(self) -> int:
        return hash((self.phone, self.line))

    def __repr__(self) -> str:
        return f"Recipient(phone={self.phone!r}, line={self.line!r})"


class Rejection(enum.StrEnum):
    """Why an input row is not sent, as a kind: the one table of reasons' first words.

    Only :attr:`INVALID` and :attr:`ROW` are losses (:attr:`loss`): a duplicate's number is in
    the job already, a suppressed or excluded number is left out on purpose.
    """

    #: The number is not one group MMS can reach.
    INVALID = "invalid"
    #: The row itself is unusable: malformed, a column missing, too long, an empty group key.
    ROW = "row"
    #: The number appears earlier in the input (counted, never written to the ledger a row
    #: at a time).
    DUPLICATE = "duplicate"
    #: The number is on the suppression list.
    SUPPRESSED = "suppressed"
    #: A ledger named by ``run --exclude-sent`` records the number sent.
    EXCLUDED = "excluded"

    @property
    def loss(self) -> bool:
        """Whether a row of this kind is someone the job meant to reach and cannot."""
        return self in (Rejection.INVALID, Rejection.ROW)


#: The most characters of a rejected input row's text its value keeps (:class:`RejectedRow`).
SHOWN_CHARS = 200


@final  # see Recipient
class Row(msgspec.Struct, frozen=True):
    """One input record as read (:class:`~bulk_mms.reader.RowReader`): its first line and the
    fields the job needs."""

    line: int
    fields: dict[str, str]


@final  # see Recipient
class RejectedRow(msgspec.Struct, frozen=True):
    """An input row that will not be sent, and why: its value is the row's text, or its phone,
    at most :data:`SHOWN_CHARS` characters of it."""

    line: int
    value: str
    reason: str
    kind: Rejection = Rejection.ROW


def reason_kind(reason: str) -> str:
    """A reason without its specifics, so reasons can be counted: ``"duplicate"``,
    ``"malformed JSON"``, ``"not a valid number"``."""
    return reason.split(":", 1)[0].split(" (", 1)[0]


#: What :func:`row_kind` calls a row that is a loss (:attr:`Rejection.loss`).
LOST = "lost"
#: The kinds of row left out on purpose: the reason of each starts with its kind's name
#: (``"suppressed: +12125550100 is on the suppression list"``).
ON_PURPOSE = frozenset({Rejection.DUPLICATE, Rejection.SUPPRESSED, Rejection.EXCLUDED})


def row_kind(reason: str) -> str:
    """What a row not sent is, from its reason alone (all a ledger records of it):
    ``"duplicate"``, ``"suppressed"`` or ``"excluded"`` for a row left out on purpose, else
    :data:`LOST` (a bad number, a broken row: a loss)."""
    kind = reason_kind(reason)
    return kind if kind in ON_PURPOSE else LOST


class MessageBody(msgspec.Struct, frozen=True):
    """Everything of a group MMS request except ``to``, after templates are filled."""

    from_: str
    text: str | None = None
    subject: str | None = None
    media_urls: tuple[str, ...] = ()
    webhook_url: str | None = None
    webhook_failover_url: str | None = None
    use_profile_webhooks: bool | None = None


class Group(msgspec.Struct, frozen=True, eq=False):
    """Up to eight recipients that receive one group MMS together.

    Two groups are equal when their identity is (id, place, members, lines and
    message); what is counted or carried along (template notes, rows, zones, the
    members left out) is not compared, and the rows (personal data) stay out of its repr.
    """

    #: Deterministic id from the job name and the recipients: stable across runs.
    id: str
    #: 0-based position in the job, for humans and for ordering.
    seq: int
    #: E.164 numbers, 1 to 8 of them.
    to: tuple[str, ...]
    #: Input lines of the recipients, same order as ``to``.
    lines: tuple[int, ...]
    message: MessageBody
    #: Placeholders whose value differs between the members (the message carries the first
    #: member's), and placeholders left empty: counted and reported, so the job can fix them.
    differs: tuple[str, ...] = ()
    empty: tuple[str, ...] = ()
    #: The members' input rows (every column the reader kept), same order as ``to``: the
    #: ledger records them, so the failed-recipients file never re-reads a changed input.
    rows: tuple[Mapping[str, str], ...] = ()
    #: The members' time zones, when the job keeps quiet hours (``recipient_window``): the
    #: group may be sent only while the window is open in every one.
    zones: tuple[str, ...] = ()
    #: When the group was made anew without members the API refused by name (opted out):
    #: those members, counted failed in the group they were refused in.
    refused: tuple[str, ...] = ()
    #: When the group is of members a delivery report moved out of a sent group (to go again
    #: from another sender, or after a carrier's reset): the members who stayed there,
    #: counted sent in it (and so on, through every group it was made from).
    stayed: tuple[str, ...] = ()
    #: When this run made the group anew without members on the suppression list: the id of
    #: the group it was made from, and those members (the run records it before sending).
    origin: str = ""
    suppressed: tuple[str, ...] = ()
    #: Not sent before this (wall clock, 0: any time): members a carrier refused for now,
    #: going again after its reset.
    not_before: float = 0.0

    def _identity(self) -> tuple[object, ...]:
        return (self.id, self.seq, self.to, self.lines, self.message)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Group):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self.__struct_fields__ if name != "rows"
        )
        return f"Group({shown})"


class Money(msgspec.Struct, frozen=True):
    """An amount and its currency. Telnyx sends the amount as a string or a number."""

    amount: Decimal
    #: An ISO 4217 code (:func:`is_currency`); None: the API gave the amount without one (the
    #: spec's ``cost`` requires none of its fields). Such an amount is in the account's own
    #: currency, which only whoever counts it knows (:meth:`currency_or`): never taken for USD.
    currency: str | None

    def currency_or(self, account: str) -> str:
        """The currency this amount is in: its own, else ``account`` (``[pricing] currency``,
        or what a ledger's runs counted in): the one rule for a cost that names none."""
        return self.currency or account


#: Largest cost accepted for one message, and the most characters its amount may have: a price
#: beyond them is not a price, and summing it could overflow the Decimal context.
MAX_AMOUNT = Decimal(1_000_000)
_AMOUNT_CHARS = 40


def parse_money(value: object) -> Money | None:
    """``{"amount": "0.0051" | 0.0051, "currency": "USD"}`` as exact :class:`Money`, or None.

    The API sends the amount as a string on some endpoints and as a JSON number on others;
    ``str()`` of the parsed float gives back the shortest literal, so both become the same
    Decimal. No currency (missing, null or ``""``) is :attr:`Money.currency` None, the
    account's own. An amount that is not a finite number from 0 to :data:`MAX_AMOUNT` (``"NaN"``,
    ``"-1"``, ``"9e999999999"``) is no amount: None (the spec's amount is what is deducted
    from the account; it gives no negative one). Negative zero (``"-0"``) is 0. The ledger's
    own cost fields are read back through this too.
    """
    if not isinstance(value, dict):
        return None
    amount, currency = value.get("amount"), value.get("currency")
    if amount is None or isinstance(amount, bool) or not isinstance(amount, str | int | float):
        return None
    if currency is not None and not isinstance(currency, str):
        return None
    return money(str(amount), currency)


def money(amount: str, currency: str | None) -> Money | None:
    """:func:`parse_money` of an amount's text and a currency already known to be strings
    (or no currency): the same bounds, the same :class:`Money` or None."""
    text = amount.strip()
    if len(text) > _AMOUNT_CHARS:
        return None
    return _money(text, currency[:_AMOUNT_CHARS] if currency else "")


@functools.lru_cache(maxsize=1024)
def _money(text: str, currency: str) -> Money | None:
    """:func:`parse_money` of an amount's text and a currency: every message of a campaign
    costs one of a few prices, worked out once each (a Money is immutable)."""
    try:
        dec = Decimal(text)
    except InvalidOperation:
        return None
    if not dec.is_finite() or not 0 <= dec <= MAX_AMOUNT:
        return None
    dec = dec.copy_abs()  # "-0" is within the bounds, and is 0: no amount is kept negative
    exponent = dec.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -24:  # more places than any price has
        return None
    if currency == "":
        return Money(dec, None)  # none given: the account's, which the counter knows
    cur = currency.strip().upper()
    # a currency that is not an ISO code is no currency: the amount cannot be added up
    return Money(dec, cur) if is_currency(cur) else None


_CURRENCY = re.compile(r"[A-Z]{3}")


def is_currency(code: str) -> bool:
    """Whether ``code`` is written as an ISO 4217 currency code is: three ASCII capital
    letters (``USD``), nothing around them. The one rule for what a currency is. The settings'
    ``[pricing] currency`` must be written so (``"usd"`` is refused, naming ``'USD'``); the
    API's, untrusted input read leniently, is checked once trimmed and upper-cased (``"eur"``
    is EUR), and one that then fails it is no currency (its amount cannot be added up)."""
    return _CURRENCY.fullmatch(code) is not None


class RecipientStatus(msgspec.Struct, frozen=True):
    """Where one recipient of a group message stands."""

    phone: str
    status: str
    #: The recipient's own message id, when the API gives one (``GET /messages/group/...``).
    message_id: str | None = None
    errors: tuple[ApiError, ...] = ()
    #: When the API says the status was reached (``completed_at``, ``sent_at``, or the
    #: webhook's ``occurred_at``), ISO 8601; None when it does not say.
    at: str | None = None
    #: What this recipient's message cost, as the report said (a message that names only this
    #: recipient: a group's GET lists one per recipient, a webhook is about one). Final only
    #: when the status is (see :meth:`~bulk_mms.ledger.LedgerView.apply_status`).
    cost: Money | None = None
    #: The group message the report says its message is one recipient's of (Telnyx's
    #: ``group_message_id``: support article 8255134; the spec does not declare it), when
    #: it names one: a report naming another group's is not about this group
    #: (:meth:`~bulk_mms.ledger.LedgerView.names_another`).
    group_message_id: str | None = None


class MessageRecord(msgspec.Struct, frozen=True):
    """One message detail record (``GET /reports/mdrs``): evidence that the API accepted a
    message from ``cli`` to ``cld``, whatever became of the answer to its request."""

    id: str
    cli: str
    cld: str
    #: Seconds since the epoch.
    created_at: float
    status: str = ""
    cost: Money | None = None
    #: ``SMS`` or ``MMS``, as the record says; empty when it does not.
    message_type: str = ""
    #: The group message the record is one recipient's of, when the record names it (Telnyx
    #: adds ``group_message_id`` to a group's records: support article 8255134); else empty.
    group_message_id: str = ""


class OptOut(msgspec.Struct, frozen=True):
    """One block of the profile's opt-out list (``GET /messaging_optouts``): ``to`` texted
    STOP to ``from_``, so ``from_`` cannot text ``to`` (a 40300) until ``to`` texts START."""

    #: The sending address the block is for (a number, or a short code, or an alphanumeric id).
    from_: str
    #: The number that opted out, E.164; or as the list showed it redacted (``+447766****``).
    to: str

    @property
    def redacted(self) -> bool:
        """Whether the list showed the number redacted (``+447766****``): it names nobody."""
        return "*" in self.to


class SendReceipt(msgspec.Struct, frozen=True):
    """The API's answer to an accepted group MMS, typed."""

    message_id: str
    statuses: tuple[RecipientStatus, ...]
    #: Seconds Telnyx queued the message because of rate limits; None when not reported.
    wait_seconds: float | None = None
    cost: Money | None = None
    errors: tuple[ApiError, ...] = ()
    #: Until when Telnyx will try to deliver it, when the API says (ISO 8601).
    valid_until: str | None = None
