"""The one fold: :class:`LedgerView` turns a ledger's events into where everything stands.

Every reader of a ledger reads this: a run and its resume (what to skip, hold or send), the dry
run, ``report`` and ``status``, ``track`` and ``webhooks`` (sent groups and their recipients'
latest statuses), and ``--failed-csv``. A run applies each event it writes to its own view, so
the state it acts on is the state a later reader folds from the same events.

This module folds the sends: the groups, their attempts, outcomes and moves, and who did not get
the message. What delivery reports say of the sent groups (their recipients' latest statuses,
the counts by status, final costs, own message ids) is the view's base,
:class:`~bulk_mms.ledger.delivery_fold.DeliveryFold`, in a module of its own.

Each group of the ledger is in one state, and so is each of its recipients::

    sent           the API accepted it (final: nothing undoes a sent)
    failed         the API refused it for good: no rerun sends it (the failed file lists it)
    retry_pending  nothing was accepted and a plain rerun sends it (retries ran out on 5xx,
                   the job stopped before the request left)
    in_doubt       a request may have been accepted (an answer lost, a crash after the
                   ``attempt``): held, never counted failed; only ``sent`` settles it

A valid recipient the ledger has no group for is ``not_attempted`` (counted against the
``planned`` event a run writes when it has read its whole input).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import Counter
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Final, NamedTuple

import msgspec
import msgspec.structs

from bulk_mms.clock import instant
from bulk_mms.codes import DEFAULT_POLICY, EXPIRED_UNSENT, RESENDABLE, Action
from bulk_mms.delivery import DELIVERED, Known
from bulk_mms.ledger import events
from bulk_mms.ledger.delivery_fold import DeliveryFold
from bulk_mms.models import (
    LOST,
    Money,
    Rejection,
    reason_kind,
    row_kind,
)

SENT: Final = "sent"
FAILED: Final = "failed"
RETRY_PENDING: Final = "retry_pending"
IN_DOUBT: Final = "in_doubt"
NOT_ATTEMPTED: Final = "not_attempted"
#: The states of a recipient, in the order reports show them.
STATES: Final = (SENT, FAILED, RETRY_PENDING, IN_DOUBT, NOT_ATTEMPTED)
#: Why a group is in doubt whose attempt a new run found open: the run before ended without
#: recording its outcome (a crash, a kill).
ENDED_WITHOUT_OUTCOME: Final = "in doubt: attempted before a crash, outcome unknown"
#: The why of a group that has an ``in_doubt`` event of its own.
RECORDED_DOUBT: Final = "in doubt: may have been sent; not resent without --resend-in-doubt"
#: The code of the ``failed`` event that settles a group in doubt as never accepted (the API's
#: records, complete, show no message): it is sent again, under a new key.
NOT_ACCEPTED: Final = "not_accepted"
#: What the reason of a recipient that a later send may reach says (a carrier's cap).
RESENDABLE_NOTE: Final = "resendable"
#: What the reason of a recipient that opted out says (40300: refused by name at the send, or
#: reported in its delivery report): nobody is to text it again, and ``--failed-csv`` leaves it
#: out.
OPTED_OUT_NOTE: Final = "opted out (STOP), not to be texted again"
#: The reason :meth:`LedgerView.input_rows` gives rows a run's check rejected (a loss) that no
#: ``rejected`` line records yet.
UNRECORDED: Final = (
    "not recorded yet: the run stopped before it reached them (a rerun records them)"
)
#: The places a recipient's share of its group's estimated cost is rounded to.
SHARE_PLACES: Final = Decimal("0.00000001")


class Miss(enum.StrEnum):
    """What kind of miss a recipient who did not get the message is
    (:meth:`LedgerView.not_received`): what decides who a resend takes (``--failed-csv``) and
    how the report counts them. Decided once, by the fold, as it writes the why: the why is
    words for a person (and may carry a server's title), never read back to decide."""

    #: The job's deadline left its group unsent (``expired_unsent``): a late message is worse
    #: than none, and no resend takes it.
    EXPIRED = "expired"
    #: It opted out (40300: refused by name at the send, or in its latest delivery report):
    #: nobody is to text it again, and no resend takes it.
    OPTED_OUT = "opted_out"
    #: Its delivery met a carrier's cap or filter (a code the error policy resends: its
    #: action was one of :data:`~bulk_mms.codes.RESENDABLE`): nothing was wrong with the
    #: number, and a later send may reach it.
    RESENDABLE = "resendable"
    #: Failed for any other reason (a group the API refused for good, an undeliverable number).
    FAILED = "failed"


#: The kinds of miss a resend (``--failed-csv``) leaves out.
NOT_RESENT: Final = frozenset({Miss.EXPIRED, Miss.OPTED_OUT})


class Missed(NamedTuple):
    """A recipient who did not get the message: why, in words, and what kind of miss."""

    why: str
    kind: Miss


class _Tallies(NamedTuple):
    """What :class:`LedgerView` sums over the events it takes in, beside its groups: what a
    group read again (:meth:`LedgerView.refresh_group`) leaves as it was."""

    attempts: int
    rate_limited: int
    sent_events: int
    waits: int
    error_codes: Counter[str]
    first_time: str | None
    last_time: str | None
    run_first: float | None
    run_last: float | None

    @classmethod
    def of(cls, view: LedgerView) -> _Tallies:
        return cls(
            view.attempts, view.rate_limited, view.sent_events, len(view.waits),
            view.error_codes.copy(), view.first_time, view.last_time,
            view._run_first, view._run_last,
        )  # fmt: skip

    def restore(self, view: LedgerView) -> None:
        """Put ``view``'s tallies back as they were (events are only ever added to them)."""
        view.attempts, view.rate_limited, view.sent_events = (
            self.attempts, self.rate_limited, self.sent_events,
        )  # fmt: skip
        del view.waits[self.waits :]
        view.error_codes = self.error_codes
        view.first_time, view.last_time = self.first_time, self.last_time
        view._run_first, view._run_last = self.run_first, self.run_last


class GroupRecord(msgspec.Struct):
    """One group as the ledger has it."""

    id: str
    to: tuple[str, ...] = ()
    #: The last outcome's state (None: attempted, no outcome yet).
    outcome: str | None = None
    #: An attempt with no outcome after it: a request may be out (or was, before a crash).
    open: bool = False
    #: The group has an ``in_doubt`` event of its own (a crash's open attempt has none).
    doubt_recorded: bool = False
    sender: str | None = None
    #: Wall-clock seconds of its first attempt: its Idempotency-Key's age.
    t0: float | None = None
    message_id: str | None = None
    #: The ``sent`` event's time, in seconds since the epoch (0 when it has none).
    sent_at: float = 0.0
    cost: Money | None = None
    #: Why it failed, for the failed-recipients file.
    why: str = ""
    #: What kind of miss its recipients (:attr:`counted`) are while it is failed for good: set
    #: with :attr:`why` by the outcome that failed it (None after any other outcome).
    miss: Miss | None = None
    #: The Idempotency-Key of its latest attempt (a group moved off a refused sender gets a
    #: new one).
    key: str | None = None
    #: The members the API refused by name (opted out): when the group failed for that, only
    #: they failed, and the rest went on in a group made without them. For a group never
    #: attempted (``remade``), the suppressed members it went on without.
    refused: tuple[str, ...] = ()
    #: The sender the API refused on its latest outcome (40003, 40315): only then does the
    #: group take a new key, for the new sender.
    refused_sender: str | None = None
    #: Wall-clock seconds of its latest attempt (0 when it has none), and of the latest
    #: outcome that left it in doubt (0 when none did).
    last_try: float = 0.0
    doubt_at: float = 0.0
    #: How often the API's records showed it never accepted after it was in doubt: each such
    #: send goes under a key of its own.
    resends: int = 0
    #: Members of this sent group that go again (``moved``: their sender blocked, or a
    #: carrier's temporary refusal), and not before when (wall clock; 0: at once): their state
    #: is their new group's.
    moved: tuple[str, ...] = ()
    moved_after: float = 0.0
    #: Members moved out of it whom a later report of its message said it reached
    #: (:class:`~bulk_mms.ledger.events.Reached`). Those no longer in :attr:`moved` are its
    #: own again (counted sent here, sent by no rerun); those still in it were tried in
    #: another group first, which counts them (:meth:`LedgerView.texted_twice`).
    reached: tuple[str, ...] = ()
    #: Members moved out of it and sent again since, each with the own message id of their
    #: copy of its message as known when their new send replaced their status: a later report
    #: under that id is still about this group's message (:meth:`LedgerView.own_id`). One id
    #: a member at most (a member leaves a group once); None while it keeps none.
    moved_ids: dict[str, str] | None = None
    #: Pending a rerun because a cap refused it at the send (a carrier's, or the account's
    #: ``daily_recipients``; a run holds it for a carrier's only): when the cap lifts
    #: (its ``failed`` event's :attr:`~bulk_mms.ledger.events.Failed.resets`, wall clock):
    #: for a carrier's, the earliest a run may send it again. 0: no cap holds it.
    resets: float = 0.0

    @property
    def sent(self) -> bool:
        """Whether the API accepted it (final: nothing undoes a sent)."""
        return self.outcome == SENT

    @property
    def state(self) -> str | None:
        """Where it stands: an open attempt leaves it in doubt unless it was sent before."""
        if self.outcome == SENT:
            return SENT
        if self.open or self.outcome == IN_DOUBT:
            return IN_DOUBT
        return self.outcome

    @property
    def capped_until(self) -> float:
        """While it is pending a rerun, the reset of the cap that refused it at the send
        (:attr:`resets`, wall clock): no run sends it before then if a carrier's cap refused
        it (:func:`~bulk_mms.prepare.not_before`); the account's ``daily_recipients`` is asked
        again by each run. 0 otherwise: no cap refused it, or it has gone on since (sent, in
        doubt, failed for good)."""
        return self.resets if self.state == RETRY_PENDING else 0.0

    def reached_after_move(self, phone: str, status: str) -> bool:
        """Whether a report of ``status`` for ``phone`` says, for the first time, that this
        group's message reached a member moved out of it
        (:class:`~bulk_mms.ledger.events.Reached`)."""
        return status == DELIVERED and phone in self.moved and phone not in self.reached

    @property
    def moves_counted(self) -> tuple[str, ...]:
        """The members moved out of it whose move counts towards
        :data:`~bulk_mms.policy.MAX_RESENDS`: all but those its message reached after all
        (:class:`~bulk_mms.ledger.events.Reached`)."""
        return tuple(p for p in self.moved if p not in self.reached)

    @property
    def counted(self) -> tuple[str, ...]:
        """The recipients whose state is this group's: all its members, except when the API
        refused some by name (those failed; the others are another group's now)."""
        if self.refused and self.state == FAILED:
            return self.refused
        if self.moved and self.state == SENT:
            return tuple(p for p in self.to if p not in self.moved)
        return self.to


#: A ledger a run's ``--exclude-sent`` named: its name (:func:`~bulk_mms.prepare.ledger_names`)
#: and its campaign ("" for none known).
ExcludedLedger = tuple[str, str]


class RecipientCounts(msgspec.Struct, frozen=True):
    """Every valid recipient in exactly one state; the five add up to ``valid``. Of the
    failed, :attr:`opted_out` are not left unsent: nobody may text them."""

    valid: int
    sent: int
    failed: int
    retry_pending: int
    in_doubt: int
    not_attempted: int
    #: Whether a run has read the whole input (else ``not_attempted`` counts only what the
    #: ledger knows of, and ``valid`` is a floor).
    input_read: bool
    #: Of :attr:`failed`, those refused at the send as opted out (40300, or on the suppression
    #: list by the time their group left: :attr:`Miss.OPTED_OUT`): not a recipient anybody may
    #: text, so not one left unsent, as a number suppressed before planning is not.
    opted_out: int = 0

    @property
    def later(self) -> int:
        """Those a later run may still send: never attempted, pending a rerun, or in doubt
        (the API's records settle them: sent, or sent again)."""
        return self.not_attempted + self.retry_pending + self.in_doubt

    @property
    def rerun_sends(self) -> bool:
        """Whether a rerun would send anyone as it goes: the input not all read
        (``not_attempted`` is then a floor), or someone never attempted or pending a rerun.
        Not those in doubt: a rerun holds them until the API's records settle them (sent,
        or sent again), so ``report`` words them apart, never "a rerun sends them"."""
        return not self.input_read or self.not_attempted + self.retry_pending > 0

    @property
    def sends_more(self) -> bool:
        """Whether a later run would send anyone: one a rerun sends (:attr:`rerun_sends`),
        or one in doubt, whom the API's records may leave to send again."""
        return self.rerun_sends or self.in_doubt > 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in ("valid", *STATES)}


class InputRows(msgspec.Struct, frozen=True):
    """Every input row the ledger accounts for, each counted once: a valid recipient (in one
    of the states of :class:`RecipientCounts`), a row rejected (a loss: a bad number, a
    broken row), or a row left out on purpose (not a loss: a duplicate of a number in the
    job, a number on the suppression list, a number an ``--exclude-sent`` ledger records
    sent). They add up to :attr:`rows`: the input's rows once a run has read it whole and
    recorded its rejections (``input_read``)."""

    valid: int
    #: Rows rejected, by reason (:func:`~bulk_mms.models.reason_kind`), commonest first.
    rejected: dict[str, int]
    duplicates: int
    suppressed: int
    excluded: int
    input_read: bool

    @property
    def lost(self) -> int:
        """Rows rejected: someone the job meant to reach and cannot."""
        return sum(self.rejected.values())

    @property
    def left_out(self) -> int:
        """Rows left out on purpose."""
        return self.duplicates + self.suppressed + self.excluded

    @property
    def rows(self) -> int:
        return self.valid + self.lost + self.left_out


class LedgerView(DeliveryFold, eq=False):
    """Everything a ledger says, folded from its events in order by :meth:`apply`: its sends
    here, its delivery statuses in its base
    (:class:`~bulk_mms.ledger.delivery_fold.DeliveryFold`), one view.

    Two views are equal when everything they say is (``__eq__``: the fields, with
    :attr:`known` compared as built).
    """

    header: events.Header | None = None
    runs: int = 0
    #: The job's deadline as the latest run had it (its ``run`` event's
    #: :attr:`~bulk_mms.ledger.events.RunStarted.deadline`, an event's stamp): None when it
    #: had none, or its ledger was written before runs recorded it (:attr:`deadline_at`).
    deadline: str | None = None
    #: The ``[pricing] currency`` the latest run counted in (its ``run`` event's
    #: :attr:`~bulk_mms.ledger.events.RunStarted.currency`): None when its ledger was written
    #: before runs recorded it (:attr:`unstated_currency`).
    currency: str | None = None
    #: The latest ``planned`` event: how much of the input is valid.
    planned: events.Planned | None = None
    #: The most rows a run that sent (an attempt after its ``planned`` event) left out as
    #: already sent (``--exclude-sent``): a resume leaving out fewer would text them
    #: (:func:`~bulk_mms.prepare.check_resumable`).
    sent_excluded: int = 0
    #: The ledgers every run that sent (an attempt after its ``run`` event) left rows out by
    #: (``--exclude-sent``: :attr:`~bulk_mms.ledger.events.RunStarted.excluded_from`), each
    #: with its campaign ("" where the run recorded none), in order; empty in a ledger written
    #: before runs recorded them. A resume naming them all, each still that campaign's,
    #: leaves out whom they count sent now, however many fewer
    #: (:func:`~bulk_mms.prepare.check_resumable`).
    sent_excluded_from: tuple[ExcludedLedger, ...] = ()
    #: The latest run's ``--exclude-sent`` ledgers, until it sends.
    _excluding: tuple[ExcludedLedger, ...] = ()
    groups: dict[str, GroupRecord] = msgspec.field(default_factory=dict)
    #: Rejected input rows by reason (:func:`~bulk_mms.models.reason_kind`): counts only, so
    #: a ledger of any number of rejected rows folds in bounded memory (the rows themselves
    #: are read from the events: ``report --rejected-csv``).
    rejected: Counter[str] = msgspec.field(default_factory=Counter)
    #: The last input line recorded as rejected in input order (all but suppressed rows,
    #: which are rejected as their group is made): a rerun records only the lines after it.
    rejected_through: int = 0
    #: The input lines recorded as suppressed: each is counted once, however many runs
    #: record it (a group whose members are all suppressed is made anew by every run), as a
    #: PostgreSQL ledger keeps one ``rejected`` event a line.
    suppressed_lines: set[int] = msgspec.field(default_factory=set)
    # what reports add up
    attempts: int = 0
    rate_limited: int = 0
    sent_events: int = 0
    waits: list[float] = msgspec.field(default_factory=list)
    #: Sender → when the latest message its answers reported queued leaves Telnyx's queue
    #: for the carrier (seconds since the epoch: its ``sent`` event's time plus its
    #: ``wait_seconds``), at the latest: a run that begins sooner starts behind it
    #: (:meth:`~bulk_mms.pacing.Pacer.queued_until`).
    queued_until: dict[str, float] = msgspec.field(default_factory=dict)
    error_codes: Counter[str] = msgspec.field(default_factory=Counter)
    #: Each code of :attr:`error_codes` → what the error policy did about it (the actions the
    #: ``failed`` events recorded, :func:`action_of`), for a code it had an action for.
    error_actions: dict[str, set[str]] = msgspec.field(default_factory=dict)
    first_time: str | None = None
    last_time: str | None = None
    #: Seconds spent sending: first attempt to last outcome, run by run.
    sending_seconds: float = 0.0
    #: Senders the API refused (40003, 40315): out of the pool for the rest of the job.
    retired: set[str] = msgspec.field(default_factory=set)
    _open: set[str] = msgspec.field(default_factory=set)
    #: Phone number → group id of its sent group: built when first asked (:meth:`group_of`).
    _group_of: dict[str, str] | None = None
    #: Whether any member was moved out of a group (:meth:`_sent_again` looks only then).
    _any_moved: bool = False
    #: Phone number → how many groups it was moved out of: built when first asked (:meth:`moves`).
    _moves: Counter[str] | None = None
    #: Whether any member was reached after a move (:meth:`_tried_again` looks only then).
    _any_reached: bool = False
    #: Phone number → the groups it was tried in (an attempt, or an outcome), in the order
    #: they were first tried: built when first asked once a member was reached after a move
    #: (:meth:`_tried`), kept from then on.
    _tried_in: dict[str, tuple[str, ...]] | None = None
    #: Phone number → the group a ``reached`` event took it back into (out of its ``moved``):
    #: built when first asked (:meth:`_taken_back`).
    _back: dict[str, str] | None = None
    _run_first: float | None = None
    _run_last: float | None = None

    @classmethod
    def fold(cls, stream: Iterable[events.Event], *, statuses: bool = True) -> LedgerView:
        view = cls(statuses=statuses)
        for ev in stream:
            view.apply(ev)
        view.close_run()
        return view

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LedgerView):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _COMPARED)

    __hash__ = None  # type: ignore[assignment]  # mutable: never a key

    @property
    def deadline_at(self) -> dt.datetime | None:
        """:attr:`deadline` as a time (None: none known, or a stamp that does not parse)."""
        when = instant(self.deadline)
        return None if when is None else dt.datetime.fromtimestamp(when, dt.UTC)

    @property
    def unstated_currency(self) -> str:
        """The currency a cost that names none is in: the one the latest run counted in
        (:attr:`currency`); USD in a ledger no run recorded it in (bulk-mms wrote every such
        cost as USD then, and a run records it before it writes any)."""
        return self.currency or "USD"

    @property
    def campaign(self) -> str | None:
        """The ledger's identity, part of every Idempotency-Key; None for a format-1 ledger."""
        return self.header.campaign if self.header is not None else None

    # -- folding ----------------------------------------------------------------------------

    def apply(self, ev: events.Event) -> None:  # noqa: C901, PLR0912 - one match over the event kinds: the fold in one place
        """Take one event in (on replay, and as a run writes it)."""
        if ev.time:
            self.first_time = self.first_time or ev.time
            self.last_time = ev.time
        match ev:
            case events.Status():
                self._status(ev)
            case events.Attempt():
                self._attempt(ev)
                if self.planned is not None and self.planned.excluded > self.sent_excluded:
                    self.sent_excluded = self.planned.excluded
                if self._excluding:
                    self._left_out_by(self._excluding)
            case events.Sent() | events.Failed() | events.InDoubt():
                self._outcome(ev)
            case events.Rejected():
                kind = reason_kind(ev.reason)
                if kind != Rejection.SUPPRESSED:
                    self.rejected[kind] += 1
                    self.rejected_through = max(self.rejected_through, ev.line)
                elif ev.line not in self.suppressed_lines:
                    self.suppressed_lines.add(ev.line)
                    self.rejected[kind] += 1
            case events.Remade():
                rec = self._group(ev.group, ())
                if rec.outcome is None and not rec.open:
                    rec.refused = ev.without
            case events.Moved():
                self._moved(ev)
            case events.Reached():
                self._reached(ev)
            case events.Planned():
                self.planned = ev
            case events.RunStarted():
                self.deadline = ev.deadline
                self.currency = ev.currency or self.currency
                campaigns = ev.excluded_campaigns or ("",) * len(ev.excluded_from)
                self._excluding = tuple(zip(ev.excluded_from, campaigns, strict=False))
                self._run_started(ev.shared)
            case events.Header():
                self.header = ev

    def _left_out_by(self, ledgers: tuple[ExcludedLedger, ...]) -> None:
        """A run that left rows out by ``ledgers`` sent: they join
        :attr:`sent_excluded_from`."""
        self.sent_excluded_from += tuple(w for w in ledgers if w not in self.sent_excluded_from)
        self._excluding = ()

    def _run_started(self, shared: bool) -> None:
        """A new run: an attempt still open belonged to a run that ended without recording
        its outcome (a crash), so its request may have been accepted. (Not so on a shared
        ledger, where other processes send at the same time: there an open attempt stays
        open, in doubt only while it is, until its owner or the one that takes over its
        group records the outcome.)"""
        self.runs += 1
        self.close_run()
        if shared:
            return
        for gid in self._open:
            rec = self.groups[gid]
            if rec.open and rec.outcome != SENT:
                rec.outcome, rec.why, rec.miss = IN_DOUBT, ENDED_WITHOUT_OUTCOME, None
        self._open.clear()

    def _moved(self, ev: events.Moved) -> None:
        """Members of ``ev.group`` that go again: all but those a ``reached`` event took back
        or kept (:class:`~bulk_mms.ledger.events.Reached`): a member reached stays so,
        whatever a process that had not read that event wrote after it."""
        rec = self._group(ev.group, ())
        new = [p for p in ev.members if p not in rec.moved and p not in rec.reached]
        if self._moves is not None:
            self._moves.update(new)
        rec.moved = (*rec.moved, *dict.fromkeys(new))
        rec.moved_after = max(rec.moved_after, ev.after)
        self._any_moved = True
        if ev.sender:
            self.retired.add(ev.sender)

    def _reached(self, ev: events.Reached) -> None:
        """Members moved out of ``ev.group`` that its message reached after all: back in it,
        unless another group was tried with them since (:class:`~bulk_mms.ledger.events.
        Reached` says why)."""
        rec = self.groups.get(ev.group)
        if rec is None:
            return
        new = [p for p in ev.members if p in rec.moved and p not in rec.reached]
        if not new:
            return  # a report recorded again: nothing more
        rec.reached = (*rec.reached, *new)
        self._any_reached = True
        if self._moves is not None:
            self._moves.subtract(new)
        tried = self._tried()  # a group tried before this one (refused, moved) makes no odds
        back = [p for p in new if tried.get(p, (rec.id,))[-1] == rec.id]
        if back:
            rec.moved = tuple(p for p in rec.moved if p not in back)
            self._taken_back().update(dict.fromkeys(back, rec.id))

    def _tried(self) -> dict[str, tuple[str, ...]]:
        """:attr:`_tried_in`, built when first asked (the groups are in the order they were
        first seen, which is the order they were first tried in)."""
        if self._tried_in is None:
            tried: dict[str, tuple[str, ...]] = {}
            for rec in self.groups.values():
                if rec.state is not None:
                    for p in rec.to:
                        tried[p] = (*tried.get(p, ()), rec.id)
            self._tried_in = tried
        return self._tried_in

    def _taken_back(self) -> dict[str, str]:
        """:attr:`_back`, built when first asked."""
        if self._back is None:
            self._back = {
                p: rec.id for rec in self.groups.values() for p in rec.reached if p not in rec.moved
            }
        return self._back

    def _tried_again(self, rec: GroupRecord) -> None:
        """``rec`` is tried with members a ``reached`` event took back into another group
        (a process that had not read it): their move stands after all, and ``rec`` counts
        them, as if the event had come after this attempt."""
        tried, back = self._tried(), self._taken_back()
        for phone in rec.to:
            if rec.id not in (was_in := tried.get(phone, ())):
                tried[phone] = (*was_in, rec.id)
            gid = back.get(phone)
            if gid is None or gid == rec.id:
                continue
            del back[phone]
            was = self.groups[gid]
            was.moved = (*was.moved, phone)  # still reached: not counted a move (moves())
            self._any_moved = True

    def _group(self, gid: str, to: tuple[str, ...]) -> GroupRecord:
        rec = self.groups.get(gid)
        if rec is None:
            rec = self.groups[gid] = GroupRecord(gid, to)
        elif to and not rec.to:
            rec.to = to
        return rec

    def _attempt(self, ev: events.Attempt) -> None:
        rec = self._group(ev.group, ev.to)
        self.attempts += 1
        rec.open = True
        self._open.add(rec.id)
        rec.sender = ev.from_ or rec.sender
        if ev.key is not None and ev.key != rec.key:
            rec.key, rec.t0 = ev.key, ev.t0  # a new key (a new sender): its own age
        elif rec.t0 is None and ev.t0 is not None:
            rec.t0 = ev.t0
        at = instant(ev.time)
        rec.last_try = at or rec.last_try
        if self._any_reached:  # some member was reached after a move
            self._tried_again(rec)
        if self._run_first is None:
            self._run_first = at

    def _outcome(self, ev: events.Sent | events.Failed | events.InDoubt) -> None:
        rec = self._group(ev.group, ev.to)
        rec.open = False
        self._open.discard(rec.id)
        self.rate_limited += ev.rate_limited
        at = instant(ev.time)
        self._run_last = at or self._run_last
        if rec.outcome == SENT:
            return  # a sent group stays sent
        if isinstance(ev, events.Sent):
            self._sent(rec, ev, at)
        elif isinstance(ev, events.InDoubt):
            rec.outcome, rec.why, rec.miss = IN_DOUBT, RECORDED_DOUBT, None
            rec.doubt_recorded, rec.doubt_at = True, at or rec.doubt_at
        elif ev.code == NOT_ACCEPTED:  # the API's records show it never took the group
            rec.outcome, rec.key, rec.resends = RETRY_PENDING, None, rec.resends + 1
            rec.why, rec.miss, rec.resets = f"failed: {ev.code} {ev.title}".strip(), None, 0.0
        else:
            code = str(ev.code)
            self.error_codes[code] += 1
            if (action := action_of(ev.action, code)) is not None:
                self.error_actions.setdefault(code, set()).add(action)
            if ev.retired:
                self.retired.add(ev.retired)
            if rec.outcome == IN_DOUBT:
                return  # a later failure does not undo what an earlier try may have done
            rec.outcome = RETRY_PENDING if ev.retryable else FAILED
            rec.refused, rec.refused_sender, rec.resets = ev.refused, ev.retired, ev.resets
            rec.why, rec.miss = _failure(ev)

    def _sent(self, rec: GroupRecord, ev: events.Sent, at: float | None) -> None:
        again = self._sent_again(rec) if self.statuses else {}
        rec.outcome = SENT
        rec.message_id = ev.message_id
        rec.sender = ev.from_ or rec.sender
        rec.sent_at = at or 0.0
        rec.cost = ev.cost
        self.sent_events += 1
        if ev.wait_seconds is not None:
            self.waits.append(ev.wait_seconds)
            if at and rec.sender is not None:
                leaves = at + ev.wait_seconds
                if leaves > self.queued_until.get(rec.sender, 0.0):
                    self.queued_until[rec.sender] = leaves
        self.by_message_id[ev.message_id] = rec.id
        if self._group_of is not None:
            self._group_of.update(dict.fromkeys(rec.to, rec.id))
        if not self.statuses:
            return
        self._sent_statuses(rec, ev.statuses, again)

    def refresh_group(self, gid: str, stream: Iterable[events.Event]) -> GroupRecord | None:
        """Rebuild one group from its events as the ledger has them now (another process
        may have sent it): what a shared run does before it decides about the group. Its
        moves count once, as the ledger has them now (:meth:`moves`). It keeps its place among
        the groups: their order is the order they were first tried in (:meth:`_tried`).

        Only the group is rebuilt: the view's tallies (:class:`_Tallies`) count the events it
        took in as they came, once each, and stay as they were (the events a group read again
        gives were counted when first taken in; what other processes wrote is counted by a
        fold of the ledger, as ``report`` reads it). Its members' statuses and delivery counts
        are taken in once, when the view first learns it was sent; and the own ids it kept
        for members sent again since (:attr:`GroupRecord.moved_ids`, learnt from their later
        sends) stay with it."""
        old = self.groups.get(gid)
        later: dict[str, str] = {}  # its members a later send took (group_of): theirs still
        tallies, statuses = _Tallies.of(self), self.statuses
        if old is not None:
            if self._group_of is not None and old.moved:
                later = {p: g for p in old.moved if (g := self._group_of.get(p, gid)) != gid}
            if self._moves is not None:
                self._moves.subtract(old.moves_counted)
            if old.reached:
                self._back = None  # built again as the ledger has the group now
            self.groups[gid] = GroupRecord(gid, ())
            # a group sent already had its members' statuses and delivery counts taken in
            self.statuses = statuses and old.outcome != SENT
        try:
            for ev in stream:
                self.apply(ev)
        finally:
            self.statuses = statuses
            tallies.restore(self)
        if later and self._group_of is not None:
            self._group_of.update(later)
        rec = self.groups.get(gid)
        if rec is not None and rec == GroupRecord(gid, ()):
            del self.groups[gid]  # no event of it left: unknown, as a fold has it
            return None
        if rec is not None and old is not None and old.moved_ids is not None:
            rec.moved_ids = old.moved_ids
        return rec

    def kept_back(self, gid: str, members: tuple[str, ...]) -> None:
        """``members`` of ``gid`` stay where they were: a shared ledger did not write their
        move, which this view took in (the number was moved :data:`~bulk_mms.policy.MAX_RESENDS`
        times by any process: :meth:`LedgerStore.on_kept_back
        <bulk_mms.ledger.store.LedgerStore.on_kept_back>`). The view then holds what a fold of
        the ledger holds: its failure stands, and nobody waits to go again."""
        rec = self.groups.get(gid)
        if rec is None:
            return
        gone = [p for p in rec.moved if p in members]
        if not gone:
            return
        rec.moved = tuple(p for p in rec.moved if p not in gone)
        if self._moves is not None:
            self._moves.subtract(p for p in gone if p not in rec.reached)

    def close_run(self) -> None:
        """End the current run's sending span (a new run starts, or the fold ends)."""
        if self._run_first is not None and self._run_last is not None:
            self.sending_seconds += max(0.0, self._run_last - self._run_first)
        self._run_first = self._run_last = None

    # -- reading ----------------------------------------------------------------------------

    def state(self, gid: str) -> str | None:
        """A group's state, or None when the ledger has never seen it."""
        rec = self.groups.get(gid)
        return rec.state if rec is not None else None

    def is_done(self, gid: str) -> bool:
        """True when the group has a final outcome (sent, or failed for good)."""
        return self.state(gid) in (SENT, FAILED)

    def in_doubt(self, gid: str) -> bool:
        return self.state(gid) == IN_DOUBT

    def count(self, state: str) -> int:
        """Groups in ``state``."""
        return sum(1 for rec in self.groups.values() if rec.state == state)

    def recipients(self) -> RecipientCounts:
        by_state: Counter[str] = Counter()
        opted_out = 0
        for rec in self.groups.values():
            if (st := rec.state) is not None:
                by_state[st] += len(rec.counted)
                if st == FAILED and rec.miss is Miss.OPTED_OUT:
                    opted_out += len(rec.counted)
        known = sum(by_state.values())
        valid = max(known, self.planned.recipients) if self.planned else known
        return RecipientCounts(
            valid=valid,
            sent=by_state[SENT],
            failed=by_state[FAILED],
            retry_pending=by_state[RETRY_PENDING],
            in_doubt=by_state[IN_DOUBT],
            not_attempted=valid - known,
            input_read=self.planned is not None,
            opted_out=opted_out,
        )

    def input_rows(self, recipients: RecipientCounts | None = None) -> InputRows:
        """Where every input row the ledger accounts for went (:class:`InputRows`), the
        rejected rows told apart by their reasons (:func:`~bulk_mms.models.row_kind`).
        ``recipients``: :meth:`recipients`, when the caller has it already.

        Duplicates are the latest run's count (``planned``: a run counts them, it records no
        line for each), or the ledger's ``rejected`` lines for duplicates where they are more.

        A run records a row not sent as it reads past it, so one stopped early (``--limit``,
        a crash, a signal) has checked the whole input (its ``planned`` counts) but recorded
        only the rows before where it stopped. The rows its ``planned`` event counts that no
        line records yet are counted too, each as its kind: suppressed and excluded as such
        (up to the event's count of each), the rest rejected under :data:`UNRECORDED`. So the
        rows add up to the input's, never fewer of any kind than recorded; a ledger whose
        ``planned`` does not tell the kinds apart (written before it did) counts them all
        rejected."""
        recipients = recipients if recipients is not None else self.recipients()
        lost: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        for reason, n in self.rejected.items():
            kind = row_kind(reason)
            if kind == LOST:
                lost[reason] += n
            else:
                kinds[kind] += n
        planned = self.planned
        suppressed, excluded = kinds[Rejection.SUPPRESSED], kinds[Rejection.EXCLUDED]
        missing = 0
        if planned is not None:
            # rows checked, not recorded: of them, the kinds left out on purpose first
            missing = planned.rejected - (lost.total() + suppressed + excluded)
            if missing > 0:
                more = min(missing, max(0, planned.suppressed - suppressed))
                suppressed, missing = suppressed + more, missing - more
                more = min(missing, max(0, planned.excluded - excluded))
                excluded, missing = excluded + more, missing - more
        rejected = dict(lost.most_common())
        if missing > 0:
            rejected[UNRECORDED] = missing  # after the reasons recorded
        return InputRows(
            valid=recipients.valid,
            rejected=rejected,
            duplicates=max(planned.duplicates if planned else 0, kinds[Rejection.DUPLICATE]),
            suppressed=suppressed,
            excluded=excluded,
            input_read=recipients.input_read,
        )

    def moves(self, phone: str) -> int:
        """How many sent groups ``phone`` was moved out of (:class:`~bulk_mms.ledger.Moved`: a
        delivery report sent it again, from another sender or after a carrier's reset) whose
        message a later report did not say reached it after all
        (:class:`~bulk_mms.ledger.events.Reached`): what :data:`~bulk_mms.policy.MAX_RESENDS`
        counts, in a database's ledger too."""
        if not self._any_moved:
            return 0
        if self._moves is None:
            self._moves = Counter(p for rec in self.groups.values() for p in rec.moves_counted)
        return self._moves[phone]

    def group_of(self, phone: str) -> str | None:
        """The sent group ``phone`` is in: its latest (a number is in two only when a delivery
        report moved it out of the first, and a later run sent it again)."""
        if self._group_of is None:
            self._group_of = {p: rec.id for rec in self.sent_groups() for p in rec.to}
        return self._group_of.get(phone)

    def sent_groups(self) -> Iterator[GroupRecord]:
        return (rec for rec in self.groups.values() if rec.outcome == SENT)

    def resent_from(self, rec: GroupRecord, *, beside: bool = False) -> dict[str, float | None]:
        """The members of ``rec`` that another group sent from ``rec``'s sender before a
        delivery report (the API's records of that message to them are records from the same
        sender to the same numbers as ``rec``'s), each with the time its latest delivery report
        says it was reached (the API's clock, as the records' stamps; None: this view keeps no
        stamp of it). That earlier message was sent before its report, so its record is
        stamped no later. Of this ledger's groups, one a report moved them out of; with
        ``beside`` (``rec`` is a group of another ledger, the resend of this one's failed file:
        :func:`~bulk_mms.recipient_lists.write_failed_csv`, written after those reports), any
        sent group."""
        if rec.sender is None or not (beside or self._any_moved):
            return {}
        members = set(rec.to)
        resent = {
            p
            for other in self.sent_groups()
            if other.sender == rec.sender and (beside or other.id != rec.id)
            for p in (other.to if beside else other.moved)
            if p in members
        }
        if not resent:
            return {}  # the usual group: the statuses (built when first asked) stay unbuilt
        known = self.known
        return {p: instant(k.at) if (k := known.get(p)) is not None else None for p in resent}

    def not_received(self) -> dict[str, Missed]:
        """Who did not get the message, with why and what kind of miss (:class:`Miss`), in
        ledger order: the failed groups' recipients (final failures only: no rerun sends
        them) and sent recipients whose delivery failed for good (as their latest status
        says). Never a recipient in doubt or pending a rerun."""
        out: dict[str, Missed] = {}
        for _, missed in self._misses(self._failed_deliveries()):
            out.update(missed)
        return out

    def refused_opted_out(self) -> dict[str, float]:
        """The recipients refused at the send as opted out (40300), in ledger order, each with
        the latest try (wall clock) of the group that refused them so: of the failed groups
        that count a recipient the latest decides, as in :meth:`not_received`, whose opt-outs
        these are with the delivery statuses left out (a run's view keeps none). What a run
        puts back on the suppression list (:func:`~bulk_mms.suppression.put_back_opted_out`)."""
        latest: dict[str, float | None] = {}
        for rec, missed in self._misses({}):
            at = rec.last_try
            latest.update((p, at if m.kind is Miss.OPTED_OUT else None) for p, m in missed.items())
        return {p: at for p, at in latest.items() if at is not None}

    def _misses(self, failed: dict[str, Known]) -> Iterator[tuple[GroupRecord, dict[str, Missed]]]:
        """The groups in ledger order, each with the misses it records: a failed group's, of
        the recipients it counts (:attr:`GroupRecord.counted`), and a sent group's, of the
        recipients it counts whose latest status is among ``failed`` (one of
        :data:`~bulk_mms.delivery.NOT_RECEIVED`), as that status says. A recipient's miss is
        the latest group's that records one."""
        for rec in self.groups.values():
            state = rec.state
            if state == FAILED:
                yield rec, dict.fromkeys(rec.counted, Missed(rec.why, rec.miss or Miss.FAILED))
            elif state == SENT and not failed.keys().isdisjoint(rec.to):
                # a moved member goes again (its state is its new group's): not in this list
                yield rec, {p: _delivery_miss(failed[p]) for p in rec.counted if p in failed}

    def cost(self, unstated: str | None = None) -> dict[str, Decimal]:
        """What the sent groups cost, per currency: final where known, else estimated
        (:meth:`cost_parts` says how much is which, and what ``unstated`` is)."""
        return {cur: final + est for cur, (final, est) in self.cost_parts(unstated).items()}

    def cost_parts(self, unstated: str | None = None) -> dict[str, tuple[Decimal, Decimal]]:
        """What the sent groups cost, per currency, as (final, estimated). A cost that names
        no currency is in ``unstated`` (a run's ``[pricing] currency``), by default
        :attr:`unstated_currency`.

        Final: the recipients whose final cost a status report carried (:attr:`final_cost`),
        each with its latest send (a member moved out of a group is priced with its new one).
        Estimated: for the rest, their share of their group's cost as the send's answer gave
        it (the whole estimate when no member's final cost is known; else split evenly, to
        :data:`SHARE_PLACES`). A group with neither adds nothing. All in Decimal, never float.
        """
        parts: dict[str, tuple[Decimal, Decimal]] = {}
        final_cost = self.final_cost
        account = unstated or self.unstated_currency

        def add(money: Money, final: Decimal, est: Decimal) -> None:
            currency = money.currency_or(account)
            f, e = parts.get(currency, (Decimal(0), Decimal(0)))
            parts[currency] = (f + final, e + est)

        for rec in self.sent_groups():
            # a moved member's final cost is its new send's (not counted here)
            finals = [c for p in rec.counted if (c := final_cost.get(p)) is not None]
            for c in finals:
                add(c, c.amount, Decimal(0))
            if rec.cost is None or len(finals) == len(rec.to):
                continue
            if not finals:
                add(rec.cost, Decimal(0), rec.cost.amount)
            else:
                left = len(rec.to) - len(finals)
                share = (rec.cost.amount * left / len(rec.to)).quantize(SHARE_PLACES)
                add(rec.cost, Decimal(0), share)
        return parts


def action_of(recorded: str | None, code: str | None) -> str | None:
    """What the error policy did about ``code``: the action its event ``recorded`` (the
    policy of the run, ``track`` or receiver that wrote it, ``[errors]`` over the built-in
    table), else the built-in table's (:data:`~bulk_mms.codes.DEFAULT_POLICY`: a ledger
    written before events kept it; every policy holds the table's codes, so an event that
    records none for its code means the same)."""
    if recorded is not None:
        return recorded
    return DEFAULT_POLICY.get(code) if code is not None else None


def _failure(ev: events.Failed) -> tuple[str, Miss | None]:
    """Why a group failed, and what kind of miss its recipients are (None: a plain rerun sends
    it). Expired only by the event bulk-mms writes as the deadline passes (no HTTP answer:
    a server's code never says it); opted out only for the members refused by name under a
    ``suppress`` action (:func:`action_of`)."""
    why = f"failed: {ev.code or ev.status or ''} {ev.title}".strip()
    miss = Miss.FAILED
    if ev.refused and action_of(ev.action, ev.code) == Action.SUPPRESS:
        why, miss = f"{why}: {OPTED_OUT_NOTE}", Miss.OPTED_OUT  # the members it names opted out
    elif ev.code == EXPIRED_UNSENT and ev.status is None:
        miss = Miss.EXPIRED
    return why, None if ev.retryable else miss


def _delivery_miss(k: Known) -> Missed:
    """Why a delivery failed, and whether a later send may reach the recipient (a carrier's
    daily cap, a spam filter), or nobody is to (it opted out): as the error policy that acted
    on its report says (:func:`action_of`)."""
    if k.code is None:
        return Missed(k.status, Miss.FAILED)
    action = action_of(k.action, k.code)
    if action == Action.SUPPRESS:
        return Missed(f"{k.status} {k.code}: {OPTED_OUT_NOTE}", Miss.OPTED_OUT)
    if action in RESENDABLE:
        return Missed(
            f"{k.status} {k.code}: {RESENDABLE_NOTE}, nothing was wrong with the number",
            Miss.RESENDABLE,
        )
    return Missed(f"{k.status} {k.code}", Miss.FAILED)


#: What :meth:`LedgerView.__eq__` compares: every field but the caches, with ``known`` as built.
_COMPARED: Final = tuple(
    "known" if f.name == "_known" else f.name
    for f in msgspec.structs.fields(LedgerView)
    if f.name
    not in (
        "_known_columns",
        "_group_of",
        "_any_moved",
        "_moves",
        "_any_reached",
        "_tried_in",
        "_back",
    )
)
