"""The fold's delivery-status half: :class:`DeliveryFold`, the base of
:class:`~bulk_mms.ledger.fold.LedgerView`.

What delivery reports say of a ledger's sent groups, folded with the sends: each recipient's
latest status (:attr:`DeliveryFold.known`, with its own message id, its code and what the
error policy did about it), the recipients of sent groups counted by status
(:meth:`DeliveryFold.delivery`), their final costs, the webhook events already recorded, and
the message ids reports are matched by (a group's, a member's own). A member moved out of a
group that a later report says the group's message reached is told here too
(:attr:`News.REACHED`, :meth:`DeliveryFold.texted_twice`).

It is not a fold of its own: :class:`~bulk_mms.ledger.fold.LedgerView` is the one fold, and
this half reads the groups it keeps (their members, moves and outcomes) as it takes each
report in. A view made without statuses (a resume's) takes none in.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Protocol

import msgspec

from bulk_mms.codes import DEFAULT_POLICY, deciding
from bulk_mms.delivery import FINAL, NOT_RECEIVED, STATUSES, Known, supersedes
from bulk_mms.ledger import events
from bulk_mms.models import Money, RecipientStatus

if TYPE_CHECKING:
    from bulk_mms.ledger.fold import GroupRecord


class News(enum.Flag):
    """What a delivery report told that was not known (:meth:`DeliveryFold.apply_status`);
    falsy when nothing (the report is not worth recording)."""

    NONE = 0
    #: Its status supersedes the one known (:func:`~bulk_mms.delivery.supersedes`): the one
    #: kind of news the error policy acts on (a member moved, a sender retired or slowed).
    STATUS = enum.auto()
    #: A final cost: recorded, but no word on whether the message reached anyone.
    COST = enum.auto()
    #: ``delivered``, for a member moved out of the group it reports on, said for the first
    #: time: the report is recorded, and so is a :class:`~bulk_mms.ledger.events.Reached` for
    #: the member (:func:`~bulk_mms.policy.delivery_action`), even when it was sent again
    #: since (the status is then its new send's: not this one's to replace).
    REACHED = enum.auto()


class _Bare(dict[str, Known]):
    """Status → the :class:`Known` that says only it."""

    def __missing__(self, status: str) -> Known:
        return Known(status)  # not kept: a server's statuses do not grow it


#: The :class:`Known` of each status that says nothing more (a sent group's recipients before
#: any report): one for every recipient in a status of the API's, not one each.
BARE: Final = _Bare((status, Known(status)) for status in STATUSES)


class KnownColumns(Protocol):
    """Latest statuses kept out of :attr:`DeliveryFold.known` until asked for (a checkpoint's:
    :mod:`~bulk_mms.ledger.checkpoint`)."""

    def select(self, only: frozenset[str] | None = None) -> dict[str, Known]:
        """The latest status of every number (``only``: of those in one of these statuses)."""
        ...


class DeliveryFold(msgspec.Struct, eq=False):
    """The delivery statuses :class:`~bulk_mms.ledger.fold.LedgerView` folds: its fields and
    methods of them, read as the view's own (never made alone)."""

    #: Whether it keeps recipients' delivery statuses (a resume needs none: a million
    #: recipients' worth of objects it would build for nothing).
    statuses: bool = True
    #: :attr:`known`, once built: None while a checkpoint's columns wait in ``_known_columns``.
    _known: dict[str, Known] | None = msgspec.field(default_factory=dict)
    _known_columns: KnownColumns | None = None
    #: Recipients of sent groups by their latest status, kept as statuses change.
    _delivery: Counter[str] = msgspec.field(default_factory=Counter)
    #: Group message ids and recipients' own ids → group id.
    by_message_id: dict[str, str] = msgspec.field(default_factory=dict)
    #: Webhook event ids already recorded: a redelivered event is recorded once.
    webhook_ids: set[str] = msgspec.field(default_factory=set)
    #: Recipient → the final cost of their message, once a final status report carried one
    #: (``message.finalized``, a GET of a finalized message); the send's answer is only an
    #: estimate (:meth:`~bulk_mms.ledger.fold.LedgerView.cost_parts`).
    final_cost: dict[str, Money] = msgspec.field(default_factory=dict)

    if TYPE_CHECKING:  # the sends half's, which the view holds

        @property
        def groups(self) -> dict[str, GroupRecord]: ...

        @property
        def _any_moved(self) -> bool: ...

        @property
        def _any_reached(self) -> bool: ...

        def group_of(self, phone: str) -> str | None: ...

    @property
    def known(self) -> dict[str, Known]:
        """Latest delivery status per recipient of a sent group. After a checkpoint it is
        built when first asked for: a report that needs only its counts and its failures
        (:meth:`~bulk_mms.ledger.fold.LedgerView.not_received`) never makes a million of
        them."""
        if self._known is None:
            self._known = self._known_columns.select() if self._known_columns else {}
            self._known_columns = None
        return self._known

    # -- folding ----------------------------------------------------------------------------

    def _status(self, ev: events.Status) -> None:
        """Take a ``status`` event in (none when the view keeps no statuses)."""
        if not self.statuses:
            return
        # a webhook's report carries a cost only from message.finalized: the final one
        self.apply_status(ev.report, ev.group, finalized=bool(ev.webhook_id), action=ev.action)
        if ev.webhook_id:
            self.webhook_ids.add(ev.webhook_id)

    def _sent_again(self, rec: GroupRecord) -> dict[str, str]:
        """The members of ``rec`` (about to be recorded sent) whose latest send was another
        group's that they were moved out of (:class:`~bulk_mms.ledger.events.Moved`), each
        with that group."""
        again: dict[str, str] = {}
        if not self._any_moved:
            return again  # the usual ledger: no number is in two groups
        for phone in rec.to:
            gid = self.group_of(phone)
            if gid is not None and gid != rec.id and phone in self.groups[gid].moved:
                again[phone] = gid
        return again

    def _sent_statuses(
        self, rec: GroupRecord, statuses: Mapping[str, str], again: dict[str, str]
    ) -> None:
        """``rec``, just recorded sent, puts its members in the statuses its ``sent`` event
        gives (``queued`` for one it gives none); ``again``: those of them sent again
        (:meth:`_sent_again`, asked before ``rec`` was recorded sent)."""
        known, delivery = self.known, self._delivery
        for phone in rec.to:
            status = statuses.get(phone) or "queued"
            old = known.get(phone)
            if phone in again and old is not None:
                # sent again: its delivery starts over, and what the earlier send's reports
                # said (counted with that group, its cost that send's) is not this one's; its
                # own id of that send stays that group's, for a late report under it
                if old.message_id:
                    was = self.groups[again[phone]]
                    was.moved_ids = {**(was.moved_ids or {}), phone: old.message_id}
                delivery[old.status] -= 1
                self.final_cost.pop(phone, None)
                old = None
            if supersedes(status, None, old):
                known[phone] = BARE[status]
            delivery[known[phone].status] += 1

    def apply_status(
        self,
        st: RecipientStatus,
        group: str,
        *,
        finalized: bool = False,
        action: str | None = None,
    ) -> News:
        """Take a delivery report in; what of it is news (:class:`News`; falsy: none, not
        worth recording). ``action``: what the error policy of whoever recorded it did about
        its code (the ``status`` event's), kept with the status for the kind of miss it makes.

        News is a status that supersedes the one known (:func:`~bulk_mms.delivery.supersedes`),
        or the one known again with the error code it was known without (why it failed),
        or a final cost, alone (a stale report's, one after ``delivered``'s: no status news,
        so none the error policy acts on): a report's cost is taken as the recipient's final
        cost only when its status is final, and replaces one known only when the status is
        news too (a late, stale report does not overwrite the cost of the newer one), or when
        the report is ``finalized`` (``message.finalized``'s, which carries the final cost: it
        replaces what a GET said).
        """
        old = self.known.get(st.phone)
        if st.message_id:
            self.by_message_id.setdefault(st.message_id, group)
        rec = self.groups.get(group)
        reached = News.NONE
        if rec is not None and st.phone in rec.moved:
            if rec.reached_after_move(st.phone, st.status):
                reached = News.REACHED
            if self.group_of(st.phone) != group:
                return reached  # a report of a send it was moved out of: its new send's state
        # the same status again, now saying why (the send's answer's errors, written after the
        # sent line that gave the bare status; a GET's bare failure, then message.finalized's
        # code): news, or the code that makes an opt-out or a carrier's refusal is never kept
        why = old is not None and old.status == st.status and old.code is None
        moved = supersedes(st.status, st.at, old) or (why and any(e.code for e in st.errors))
        priced = False
        if st.cost is not None and st.status in FINAL:
            had = self.final_cost.get(st.phone)
            if had is None or ((moved or finalized) and had != st.cost):
                self.final_cost[st.phone] = st.cost
                priced = True
        news = (News.COST if priced else News.NONE) | reached
        if not moved:
            if old is not None and st.message_id and not old.message_id:
                self.known[st.phone] = old._replace(message_id=st.message_id)
            return news
        mid = st.message_id or (old.message_id if old else None)
        at = st.at or (old.at if why and old is not None else None)
        self.known[st.phone] = Known(st.status, at, mid, _deciding_code(st, action), action)
        if old is not None and rec is not None and rec.sent and st.phone in rec.to:
            self._delivery[old.status] -= 1  # a recipient of a sent group moves on
            self._delivery[st.status] += 1
        return news | News.STATUS

    # -- reading ----------------------------------------------------------------------------

    def texted_twice(self) -> dict[str, tuple[str, str]]:
        """The members a report said a group's message reached after they were moved out of
        it (:class:`~bulk_mms.ledger.events.Reached`), whom another group was sent to as
        well, each with both groups (the first, then the later): texted twice."""
        if not self._any_reached:
            return {}
        return {
            p: (rec.id, later)
            for rec in self.groups.values()
            for p in rec.reached
            if p in rec.moved and (later := self.group_of(p)) not in (None, rec.id)
        }

    def group_message_id(self, rec: GroupRecord) -> str | None:
        """The id the API knows a sent group by (``GET /messages/group/{id}``, the group's own
        webhooks): its ``sent`` line's, unless that is one member's own message id. A group in
        doubt that message detail records settled, when they name no group message, is
        recorded under its first member's record, and each member's record id is that
        member's own (the ``status`` lines written with it): such a group has no group id on
        record, and is asked about member by member. (Told apart by every member having an
        own id, one of them the ``sent`` line's: a group's own message that lists its members
        past the first under ``cc`` gives only the first the group's id.)"""
        mid = rec.message_id
        if not mid:
            return None
        known = self.known
        own = [k.message_id if (k := known.get(p)) is not None else None for p in rec.to]
        return None if mid in own and all(own) else mid

    def names_another(self, rec: GroupRecord, group_message_id: str | None) -> bool:
        """Whether a report or an event that names the group message ``group_message_id``
        (Telnyx's ``group_message_id``) shows it is about another group of this ledger than
        ``rec``: it names the id of another of its groups (a message of this ledger's is its
        group's alone). An id this ledger does not know proves nothing: the spec does not
        declare the field, so what it holds is not ours to judge beyond our own ids."""
        if group_message_id is None or group_message_id == self.group_message_id(rec):
            return False
        other = self.by_message_id.get(group_message_id)
        return other is not None and other != rec.id

    def own_id(self, rec: GroupRecord, phone: str) -> str | None:
        """The own message id of ``phone``'s copy of ``rec``'s message, when known: the one
        ``rec`` kept as the member was sent again (:attr:`GroupRecord.moved_ids
        <bulk_mms.ledger.fold.GroupRecord.moved_ids>`), else its latest status's while ``rec``
        is the sent group it is in (:meth:`group_of`); else None: that status is another
        group's copy (a member moved out and sent again before its own id here was known)."""
        if rec.moved_ids is not None and (mid := rec.moved_ids.get(phone)) is not None:
            return mid
        if self.group_of(phone) not in (None, rec.id):
            return None
        k = self.known.get(phone)
        return k.message_id if k is not None else None

    def status_of(self, phone: str) -> str | None:
        k = self.known.get(phone)
        return k.status if k else None

    def pending(self, rec: GroupRecord) -> list[str]:
        """The recipients of a sent group not yet in a final delivery status (a member moved
        out of it is its new group's)."""
        known = self.known
        return [p for p in rec.counted if (k := known.get(p)) is None or k.status not in FINAL]

    def _failed_deliveries(self) -> dict[str, Known]:
        """The recipients whose latest status is one of :data:`NOT_RECEIVED`: from the
        checkpoint's columns while :attr:`known` is not built (only these become objects)."""
        if self._known is not None or self._known_columns is None:
            return {p: k for p, k in self.known.items() if k.status in NOT_RECEIVED}
        return self._known_columns.select(NOT_RECEIVED)

    def delivery(self) -> Counter[str]:
        """Recipients of sent groups by their latest delivery status (``queued`` until one is
        reported), as the fold kept them."""
        return +self._delivery  # a copy, without the statuses nobody is in any more


def _deciding_code(st: RecipientStatus, action: str | None) -> str | None:
    """The code that decided what was done about a recorded delivery report: its first, when
    the report records the action for it (whoever recorded it put the code that decided
    first: :func:`~bulk_mms.policy.judged`); else (no action: a code no table had one for, or
    a ledger written before reports kept it) the one the built-in table weighs first
    (:func:`~bulk_mms.codes.deciding`), as :func:`~bulk_mms.ledger.fold.action_of` reads
    it."""
    codes = (e.code for e in st.errors if e.code)
    return next(codes, None) if action is not None else deciding(codes, DEFAULT_POLICY)
