"""Delivery statuses after the send: what ``track``, ``webhooks`` and ``report`` share.

A sent group's recipients move ``queued`` → ``sending`` → ``sent`` → a final status
(:data:`FINAL`). Reports arrive twice over (polling and webhooks), late, repeated and out of
order, so one rule (:func:`supersedes`) decides whether a report is news:

* a final status is never replaced by a non-final one (a late ``message.sent`` after
  ``message.finalized`` is ignored);
* a final status is replaced by another final one only when the report is stamped later
  (a carrier correcting ``delivery_unconfirmed`` to ``delivered``);
* a non-final status only moves forward.

Every piece of news becomes one ``status`` line in the ledger (:func:`status_event`), with
``event`` as its first key so that replay for a resume can skip these lines unparsed. A recipient
is keyed by phone number alone: a ledger never has one number in two groups (input rows are
deduplicated before grouping).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bulk_mms.errors import LedgerCorrupt
from bulk_mms.ledger import Event, Tail, now_iso, parse_time
from bulk_mms.models import RecipientStatus

#: Statuses a recipient never leaves.
FINAL = frozenset(
    {"delivered", "delivery_failed", "sending_failed", "expired", "delivery_unconfirmed"}
)
#: Final statuses that mean the recipient did not get the message.
NOT_RECEIVED = frozenset({"delivery_failed", "sending_failed", "expired"})
_RANK = {"": 0, "queued": 1, "sending": 2, "sent": 3}


@dataclass(frozen=True, slots=True)
class Known:
    """The latest status of one recipient, as the ledger has it."""

    status: str
    #: When the API says it was reached (ISO 8601), if it said.
    at: str | None = None
    #: The recipient's own message id, once the API has named it.
    message_id: str | None = None


def supersedes(new: str, new_at: str | None, old: Known | None) -> bool:
    """Whether a report of ``new`` (stamped ``new_at``) is news over what is ``old``."""
    if not new:
        return False
    if old is None:
        return True
    if old.status in FINAL:
        if new not in FINAL or new == old.status:
            return False
        new_t, old_t = _instant(new_at), _instant(old.at)
        return new_t is not None and old_t is not None and new_t > old_t
    if new in FINAL:
        return True
    return _RANK.get(new, 0) > _RANK.get(old.status, 0)


def _instant(at: str | None) -> float | None:
    """A report's stamp as an instant (``10:00:00.500+00:00`` is after ``10:00:00Z``, and
    ``-05:00`` is five hours behind UTC), or None when it has none or it does not parse."""
    if at is None:
        return None
    try:
        return parse_time(at)
    except (ValueError, OverflowError):
        return None


def status_event(
    group: str,
    st: RecipientStatus,
    *,
    source: str,
    webhook_id: str | None = None,
) -> Event:
    """The ledger line for one recipient's new status (``event`` first: see the module doc)."""
    event: Event = {
        "event": "status",
        "group": group,
        "recipient": st.phone,
        "status": st.status,
        "message_id": st.message_id,
        "errors": [{"code": e.code, "title": e.title, "detail": e.detail} for e in st.errors[:5]],
        "at": st.at,
        "source": source,
    }
    if webhook_id is not None:
        event["webhook_id"] = webhook_id
    event["time"] = now_iso()
    return event


def _sent_at(iso: object) -> float:
    try:
        return parse_time(iso) if isinstance(iso, str) else 0.0
    except ValueError:
        return 0.0


@dataclass(frozen=True, slots=True)
class SentGroup:
    """A group the API accepted, as its ``sent`` line records it."""

    id: str
    message_id: str
    to: tuple[str, ...]
    sender: str | None
    #: The ``sent`` line's ``time``, in seconds since the epoch (0 when it has none).
    sent_at: float


@dataclass(slots=True)
class DeliveryBook:
    """Sent groups and each recipient's latest status, read from a ledger.

    ``track`` polls what is not final; ``webhooks`` maps events to groups and drops repeats.
    """

    path: Path
    groups: dict[str, SentGroup] = field(default_factory=dict)
    #: Latest status per recipient (phone number).
    known: dict[str, Known] = field(default_factory=dict)
    #: Phone number → group id, for every recipient of a sent group.
    group_of: dict[str, str] = field(default_factory=dict)
    #: Group message ids and recipients' own ids → group id.
    by_message_id: dict[str, str] = field(default_factory=dict)
    #: Webhook event ids already recorded, so a redelivered event is not recorded twice.
    webhook_ids: set[str] = field(default_factory=set)
    tail: Tail | None = None

    @classmethod
    def load(cls, path: Path) -> DeliveryBook:
        """Read every ``sent`` and ``status`` line of a ledger.

        Raises:
            LedgerError: the ledger is missing or unreadable; LedgerCorrupt names a bad line.
        """
        book = cls(path, tail=Tail(path))
        book.refresh()
        return book

    def refresh(self) -> None:
        """Take in the lines written since the last read (a run may still be sending)."""
        if self.tail is None:
            self.tail = Tail(self.path)
        for lineno, ev in self.tail.read():
            try:
                self.feed(ev)
            except (KeyError, TypeError, ValueError):
                raise LedgerCorrupt(
                    self.path, f"{ev['event']} event is malformed", line=lineno
                ) from None

    def feed(self, ev: Event) -> None:
        kind = ev["event"]
        if kind == "sent":
            g = SentGroup(
                id=ev["group"],
                message_id=ev["message_id"],
                to=tuple(ev["to"]),
                sender=ev.get("from"),
                sent_at=_sent_at(ev.get("time")),
            )
            self.groups[g.id] = g
            self.by_message_id[g.message_id] = g.id
            for phone in g.to:
                self.group_of[phone] = g.id
                status = (ev.get("statuses") or {}).get(phone) or "queued"
                if supersedes(status, None, self.known.get(phone)):
                    self.known[phone] = Known(status)
        elif kind == "status":
            self.apply(
                RecipientStatus(
                    ev["recipient"], ev["status"], message_id=ev.get("message_id"), at=ev.get("at")
                ),
                ev["group"],
            )
            if ev.get("webhook_id"):
                self.webhook_ids.add(ev["webhook_id"])

    def apply(self, st: RecipientStatus, group: str) -> bool:
        """Take a report into the book; True when it is news (and so worth a ledger line)."""
        old = self.known.get(st.phone)
        if st.message_id:
            self.by_message_id.setdefault(st.message_id, group)
        if not supersedes(st.status, st.at, old):
            if old is not None and st.message_id and not old.message_id:
                self.known[st.phone] = Known(old.status, old.at, st.message_id)
            return False
        mid = st.message_id or (old.message_id if old else None)
        self.known[st.phone] = Known(st.status, st.at, mid)
        return True

    def pending(self, group: SentGroup) -> list[str]:
        """The recipients of ``group`` not yet in a final status."""
        return [p for p in group.to if (k := self.known.get(p)) is None or k.status not in FINAL]

    def status_of(self, phone: str) -> str | None:
        k = self.known.get(phone)
        return k.status if k else None
