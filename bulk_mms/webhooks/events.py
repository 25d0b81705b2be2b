"""What a verified webhook event says, read as untrusted input: whether it is a delivery
report a receiver records (:data:`EVENTS`), where it says its message came from
(:class:`Origin`, :func:`origin`), and the reports it carries (:func:`reports_in`). Every
value is bounded (:data:`FIELD_MAX`, :data:`_MAX_PARTICIPANTS`); nothing here reads a ledger
or writes anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec.structs

from bulk_mms.answers import address, as_message_id, parse_statuses, status_stamp
from bulk_mms.ledger.fold import GroupRecord
from bulk_mms.models import RecipientStatus

#: The delivery reports a receiver records; every other event but ``message.received`` (an
#: inbound message: :mod:`bulk_mms.webhooks.keywords`) is acknowledged and ignored.
EVENTS = frozenset({"message.sent", "message.finalized"})
#: The event whose payload carries a message's final cost.
FINALIZED = "message.finalized"

#: Longest text of an event's kept where it is logged or recorded (a status, an id, a number).
FIELD_MAX = 128
#: Most numbers an event's ``to`` or ``cc`` lists that are read as its participants: a group
#: MMS has at most 8 recipients and its sender.
_MAX_PARTICIPANTS = 9


def short_field(value: object) -> str | None:
    """An event's field for a log line: a text cut to :data:`FIELD_MAX`; None if not a text."""
    return value[:FIELD_MAX] if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Origin:
    """What an event says, beside its id, of the message it reports on: what ties an id not
    learnt yet to a group this ledger sent (:meth:`ties`). The spec requires none of it."""

    #: The number it was sent from (``from``).
    sent_from: str | None = None
    #: The group message it is one recipient's of (``group_message_id``, which Telnyx adds to
    #: a group's webhooks and records: support article 8255134; the spec does not declare it).
    group_id: str | None = None
    #: Every number it lists, ``to`` and ``cc`` (a group's delivery webhooks "show all
    #: participants", the same article), when it has a ``cc`` list; else None.
    participants: frozenset[str] | None = None

    def ties(self, rec: GroupRecord, group_id: str | None) -> bool:
        """Whether the event shows it is about a message of the group ``rec``, known to the
        API as ``group_id``: by the group message it names, when both it and the ledger have
        one; else by its sender, when it names one; else by its participants, exactly the
        group's members (its sender aside), for a group of two or more (a group of one's
        participants are those of any message to that number)."""
        if self.group_id is not None and group_id is not None:
            return self.group_id == group_id
        if self.sent_from is not None:
            return self.sent_from == rec.sender
        if self.participants is None or len(rec.to) < 2:
            return False
        return self.participants - {rec.sender} == set(rec.to)


def origin(data: dict[str, Any], payload: object, now: float) -> tuple[str | None, Origin]:
    """When an event says its message reached its status (``occurred_at``, when it is a time
    as of ``now``, the receiver's wall time: :func:`~bulk_mms.answers.status_stamp`), and
    where it says its message came from."""
    stamp = status_stamp(data.get("occurred_at"), now)
    if not isinstance(payload, dict):
        return stamp, Origin()
    group_id = as_message_id(payload.get("group_message_id"))
    return stamp, Origin(address(payload.get("from")), group_id, participants(payload))


def participants(payload: dict[str, Any]) -> frozenset[str] | None:
    """Every number a message object's ``to`` and ``cc`` list, when both are lists of at most
    :data:`_MAX_PARTICIPANTS` addresses; else None (it does not say who they all are)."""
    numbers: set[str] = set()
    for entries in (payload.get("to"), payload.get("cc")):
        if not isinstance(entries, list) or len(entries) > _MAX_PARTICIPANTS:
            return None
        for entry in entries:
            if (number := address(entry)) is None:
                return None
            numbers.add(number)
    return frozenset(numbers)


def reports_in(
    payload: object, event_type: str, own_group: str | None = None, *, now: float
) -> tuple[RecipientStatus, ...]:
    """The reports an event's payload carries, their stamps read as of ``now`` (the
    receiver's wall time): ``cc`` read only when it is the message ``own_group``, a group's
    own (a recipient's lists the others); the cost only from ``message.finalized`` (the
    others' is an estimate)."""
    statuses = parse_statuses(payload, own_group, now=now)
    if event_type != FINALIZED:
        statuses = tuple(msgspec.structs.replace(st, cost=None) for st in statuses)
    return statuses
