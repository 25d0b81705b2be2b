"""The values that flow through the pipeline: rows in, groups across, receipts and outcomes back."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

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


@dataclass(frozen=True, slots=True)
class Recipient:
    """One valid, normalised input row."""

    #: E.164, e.g. ``+14155550100``.
    phone: str
    #: 1-based line of the input file where the row starts.
    line: int
    #: The row's fields, for ``{column}`` placeholders.
    fields: Mapping[str, str] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """An input row that will not be sent, and why."""

    line: int
    value: str
    reason: str


@dataclass(frozen=True, slots=True)
class MessageBody:
    """Everything of a group MMS request except ``to``, after templates are filled."""

    from_: str
    text: str | None = None
    subject: str | None = None
    media_urls: tuple[str, ...] = ()
    webhook_url: str | None = None
    webhook_failover_url: str | None = None
    use_profile_webhooks: bool | None = None


@dataclass(frozen=True, slots=True)
class Group:
    """Up to eight recipients that receive one group MMS together."""

    #: Deterministic id from the job name and the recipients: stable across runs.
    id: str
    #: 0-based position in the job, for humans and for ordering.
    seq: int
    #: E.164 numbers, 1 to 8 of them.
    to: tuple[str, ...]
    #: Input lines of the recipients, same order as ``to``.
    lines: tuple[int, ...]
    message: MessageBody


@dataclass(frozen=True, slots=True)
class Money:
    """An amount and its currency. Telnyx sends the amount as a string or a number."""

    amount: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """Where one recipient of a group message stands."""

    phone: str
    status: str
    #: The recipient's own message id, when the API gives one (``GET /messages/group/...``).
    message_id: str | None = None
    errors: tuple[ApiError, ...] = ()
    #: When the API says the status was reached (``completed_at``, ``sent_at``, or the
    #: webhook's ``occurred_at``), ISO 8601; None when it does not say.
    at: str | None = None


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """The API's answer to an accepted group MMS, typed."""

    message_id: str
    statuses: tuple[RecipientStatus, ...]
    #: Seconds Telnyx queued the message because of rate limits; None when not reported.
    wait_seconds: float | None = None
    cost: Money | None = None
    errors: tuple[ApiError, ...] = ()
