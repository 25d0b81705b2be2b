"""Settling groups in doubt by the API's own records, never by resending blindly.

Telnyx declares no ``Idempotency-Key`` for group MMS, so a request whose answer was lost (a
reset after the server took it, a read timeout) may or may not have been accepted, and a
repeat could text everyone twice. Such a group is *in doubt* until evidence settles it: the
message detail records (``GET /reports/mdrs``) of MMS from its sender to its members, created
between its first try and the moment its last try's records are complete (a record is stamped
when its message leaves the queue, which may be hours after the request), with
:data:`~bulk_mms.clock.CLOCK_SKEW_S` either side. Telnyx cuts one record per recipient of a
group message (support article 8255134, "Group Messaging - Bulk Sending MMS"), so an
accepted group has a record for every member: each member is looked up, and one member's
record alone is not the group's (it may be another message to that number from the same
sender: another job's, a resend's).

* Found for every member (all of one group message, when the records name it by
  ``group_message_id``): the group was accepted; it is recorded ``sent`` under that group
  message's id, its cost the records' sum. Records that name no group message (the spec's
  ``MdrDetailResponse`` has no such field) give no group id: the group is recorded under the
  first member's record's id, and each member's record id is recorded as that member's own
  message id (:func:`own_ids`: Telnyx fetches a message detail record by its message's UUID,
  ``GET /messages/{id}``), so ``track`` and ``webhooks`` follow every member by its own.
* Found for every member, but under no usable id (a record whose ``id`` is not an id, and
  no group message named): still in doubt (logged ``settle.record_unusable``): it was
  accepted, so it is never sent again, but there is no message to record it sent under.
* Found for some members only: still in doubt (logged ``settle.partial``): neither a send
  nor a resend can be told apart from another message to those numbers.
* A record of a message the ledger knows as another of its groups' is not the group's, nor
  is one of a member that another group sent from the same sender before a delivery report
  moved them out of it, stamped no later than that report; when the ledger keeps no stamp of
  the report, a record found for such a member leaves the group in doubt (logged
  ``settle.ambiguous``): that earlier message's record cannot be told apart
  (:class:`_Elsewhere`). Alike for a ledger sent from a failed file (``report
  --failed-csv``): a record of a message the ledger of the campaign its row names
  (``bulk_mms_campaign``) knows is not the group's, nor is one of a member that ledger sent
  from the same sender, stamped no later than its latest delivery report; when that ledger
  cannot be found beside it or read, a record found for such a member leaves the group in
  doubt (``settle.ambiguous``).
* Found for none, and the records are complete (``[api] records_lag_s`` after its last try): it
  was never accepted; it is recorded as such (``not_accepted``, retryable) and sent again,
  under a new Idempotency-Key.
* Not found yet, or the records cannot be read: it stays in doubt, for a later look.

With ``[api] idempotency = "replayed"`` a run retries such a group under its key instead
while the key holds; settling is for the rest.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple, Protocol, runtime_checkable

import msgspec
import msgspec.structs
import structlog

from bulk_mms.clock import CLOCK_SKEW_S, Clock, wall_until
from bulk_mms.config import RetryConfig
from bulk_mms.csvfile import CAMPAIGN_COLUMN
from bulk_mms.errors import RecordsUnread, RetryableSendError, SendError
from bulk_mms.ledger.events import Failed, Header, Status
from bulk_mms.ledger.fold import NOT_ACCEPTED, GroupRecord, LedgerView
from bulk_mms.models import MessageRecord, Money
from bulk_mms.retry import fetch_with_retry

log = structlog.get_logger(__name__)

#: How long after a try ended (its connection reset, its answer given up on) the server may
#: still be taking it in, in seconds.
SETTLED_SLACK_S = 2.0


@runtime_checkable
class RecordsReader(Protocol):
    """A client that can read message detail records (:meth:`AiohttpMmsClient.fetch_records
    <bulk_mms.client.AiohttpMmsClient.fetch_records>`)."""

    async def fetch_records(
        self, cli: str, cld: str, start: float, end: float
    ) -> list[MessageRecord]: ...


class Originals(Protocol):
    """Where a resend's members were missed (:class:`~bulk_mms.recipient_lists.Originals`)."""

    def __call__(self, rec: GroupRecord, header: Header) -> Mapping[str, LedgerView | None]:
        """Each member of ``rec``, a group of the ledger whose job header is ``header`` (its
        rows carry :data:`~bulk_mms.csvfile.CAMPAIGN_COLUMN`), whose row names the campaign
        whose failed file it is: that campaign's ledger, folded (None: it cannot be found
        or read)."""
        ...


class Verdict(enum.StrEnum):
    """What the records say of a group in doubt."""

    #: A record shows it was accepted.
    ACCEPTED = "accepted"
    #: The records are complete and show nothing: it was never accepted.
    ABSENT = "absent"
    #: Nothing yet (the records may lag), or they could not be read: still in doubt.
    UNKNOWN = "unknown"


class Finding(msgspec.Struct, frozen=True):
    """A verdict, with the record that proves acceptance (for :attr:`Verdict.ACCEPTED`), and
    each member's own record, in the group's order."""

    verdict: Verdict
    record: MessageRecord | None = None
    members: tuple[MessageRecord, ...] = ()


UNKNOWN = Finding(Verdict.UNKNOWN)


class Settler:
    """Looks a group in doubt up in the API's records.

    Args:
        client: the API seam; one that cannot read records (not a :class:`RecordsReader`)
            settles nothing, and says so once, as it is first asked.
        records_lag_s: how long after a try its record may still be missing.
        request_timeout: how long after a try's start its answer could come.
        clock: the job's clock: its wall time is compared with the records' (the API's wall
            clock), and a lookup's retries sleep on it.
        retry: the run's retry policy, for a lookup the API refused for now (a 429, whose
            wait comes first; a 5xx): asked again as a send would be. None: asked once.
        originals: the ledgers a resend's members were missed by, for a ledger sent from a
            failed file (:class:`_Elsewhere`); None: no other ledger is looked at.
    """

    def __init__(
        self,
        client: object,
        records_lag_s: float,
        request_timeout: float,
        clock: Clock,
        *,
        retry: RetryConfig | None = None,
        originals: Originals | None = None,
    ) -> None:
        self.client = client if isinstance(client, RecordsReader) else None
        self.originals = originals
        self.records_lag_s = records_lag_s
        self.request_timeout = request_timeout
        self.clock = clock
        self.retry = retry
        self._said_unable = False

    def window(self, rec: GroupRecord) -> tuple[float, float] | None:
        """When a record of the group's acceptance would be stamped: from its first try, with
        clock slack, until the records of its last try are complete (:meth:`complete_at`),
        with clock slack. A record is stamped with its message's sent time (the spec's
        ``created_at``: "Message sent time"), after the queue's wait (``wait_seconds``, up to
        hours), not when the API took the request; None when the ledger does not say."""
        first = rec.t0 if rec.t0 is not None else rec.last_try
        if not first or not rec.last_try:
            return None
        return first - CLOCK_SKEW_S, self.complete_at(rec) + CLOCK_SKEW_S

    def complete_at(self, rec: GroupRecord) -> float:
        """Wall-clock seconds when the records of the group's tries are complete (0: the
        ledger does not say): ``records_lag_s`` and :data:`SETTLED_SLACK_S` after its last try
        ended. That try ended by the later of its start plus the request timeout and when it
        was recorded in doubt (a doubt recorded before that try began is an earlier try's:
        the try after it ended in a crash)."""
        timed_out = rec.last_try + self.request_timeout if rec.last_try else 0.0
        recorded = rec.doubt_at if rec.doubt_at >= rec.last_try else 0.0
        ended = max(timed_out, recorded)
        return ended + SETTLED_SLACK_S + self.records_lag_s if ended else 0.0

    def complete_in(self, rec: GroupRecord) -> float:
        """Seconds until the records of the group's tries are complete (0: they are), as
        :meth:`complete_at` says: a run that slept this long finds them complete, though its
        sleep ended a hair early (:func:`~bulk_mms.clock.wall_until`)."""
        at = self.complete_at(rec)
        return wall_until(at, self.clock) if at else 0.0

    async def settle(self, rec: GroupRecord, ledger: LedgerView | None = None) -> Finding:
        """What the records say of ``rec`` (a group in doubt) now. While its records may still
        be incomplete, the lookups stop at the first member without one (neither acceptance
        nor absence can show yet): a resume after a crash asks once a group in doubt, not once
        a member. ``ledger``: the view ``rec`` is of (:class:`_Elsewhere`: a record of another
        of its groups' messages, or of the ledgers whose failed file it sends, is not
        ``rec``'s); None: it knows no other message."""
        window = self.window(rec)
        if self.client is None and not self._said_unable:
            self._said_unable = True
            log.warning("settle.records_unavailable", group=rec.id, reason="no fetch_records")
        if self.client is None or window is None or not rec.to or rec.sender is None:
            return UNKNOWN
        start, end = window
        elsewhere = _Elsewhere.of(ledger, rec, await self._originals(rec, ledger))
        # complete before the first lookup: a record stamped later cannot have been missed
        complete = self.complete_in(rec) <= 0
        each: list[list[MessageRecord]] = []
        unread: RecordsUnread | None = None  # the first member whose records are not whole
        for member in rec.to:  # one record per member: acceptance and absence take them all
            try:
                listed = await self._records(self.client, rec.sender, member, window)
            except RecordsUnread as exc:  # those read can still show it accepted
                unread, listed = unread or exc, list(exc.records)
            except SendError as exc:
                log.warning("settle.records_unreadable", group=rec.id, error=str(exc))
                return UNKNOWN
            each.append(
                [
                    r
                    for r in listed
                    if _ours(r, rec.sender, member, start, end) and not elsewhere.owns(r, member)
                ]
            )
            if not each[-1] and (not complete or unread is not None):
                break  # a member without a record while more may come: nothing decides it yet
        found = _one_message(each) if len(each) == len(rec.to) else None
        if found is not None:
            return UNKNOWN if elsewhere.blurs(rec) else _accepted(rec, found)
        if unread is not None or any(each):  # part of the records: never absence
            if unread is not None:
                log.warning("settle.records_unreadable", group=rec.id, error=str(unread))
            else:
                have = sum(map(bool, each))
                log.warning("settle.partial", group=rec.id, members=len(rec.to), records=have)
            return UNKNOWN
        if not complete:
            return UNKNOWN
        log.info("settle.absent", group=rec.id)
        return Finding(Verdict.ABSENT)

    async def _originals(
        self, rec: GroupRecord, ledger: LedgerView | None
    ) -> Mapping[str, LedgerView | None]:
        """:attr:`originals` of ``rec``, read off the event loop, when ``ledger`` was sent
        from a failed file; else none."""
        header = ledger.header if ledger is not None else None
        if self.originals is None or header is None or CAMPAIGN_COLUMN not in header.columns:
            return {}
        return await asyncio.to_thread(self.originals, rec, header)

    async def _records(
        self, client: RecordsReader, sender: str, member: str, window: tuple[float, float]
    ) -> list[MessageRecord]:
        """The records from ``sender`` to ``member`` in ``window``; a lookup refused for now (a
        429 after its wait, a 5xx) is asked again under :attr:`retry`, so a burst of lookups
        after a bad night keeps to the account's request limit instead of leaving groups in
        doubt. An answer that cannot be read whole (:class:`RecordsUnread`) is not asked
        again: asking does not make it whole.

        Raises:
            SendError: the lookup failed (RecordsUnread: read in part).
        """
        start, end = window
        if self.retry is None:
            return await client.fetch_records(sender, member, start, end)
        return await fetch_with_retry(
            lambda: client.fetch_records(sender, member, start, end),
            self.retry,
            what=f"records {member}",
            clock=self.clock,
            retry_on=(RetryableSendError,),
        )


def _accepted(rec: GroupRecord, found: list[MessageRecord]) -> Finding:
    """The finding of a group every member of which has a record of one message (``found``):
    accepted, under the group message's id or each record's own; in doubt still when that id
    is missing (a record whose ``id`` was not an id: never sent again, nor recorded sent)."""
    whole = _whole(found)
    if not whole.id or (not found[0].group_message_id and not all(r.id for r in found)):
        log.warning("settle.record_unusable", group=rec.id, members=len(rec.to))
        return UNKNOWN
    log.info("settle.accepted", group=rec.id, record=whole.id)
    return Finding(Verdict.ACCEPTED, whole, tuple(found))


class _Elsewhere(NamedTuple):
    """What the ledgers know of the messages that are not one group's (``group``): a record of
    such a message proves nothing of the group.

    ``ids`` (:attr:`LedgerView.by_message_id <bulk_mms.ledger.LedgerView.by_message_id>`)
    names the messages of its ledger's other groups, ``beside`` those of the ledgers whose
    failed file its ledger sends (each member's :class:`Originals`); ``resent`` are the
    group's members that another group sent from the same sender before a delivery report,
    each with when that report says it was reached (:meth:`LedgerView.resent_from
    <bulk_mms.ledger.LedgerView.resent_from>`): one of its ledger's that the report moved
    them out of, or any of the ledger whose failed file lists them. A record of such a member
    stamped no later than that is the earlier message's (this group's request left after the
    report came); when there is no stamp, or the ledger whose failed file lists the member
    cannot be found or read, a record of that earlier message cannot be told from one of this
    group's: records found for such a member show neither acceptance nor absence, and the
    group stays in doubt."""

    group: str
    ids: Mapping[str, str]
    resent: Mapping[str, float | None]
    beside: tuple[Mapping[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        ledger: LedgerView | None,
        rec: GroupRecord,
        originals: Mapping[str, LedgerView | None],
    ) -> _Elsewhere:
        if ledger is None:
            return cls(rec.id, {}, {})
        resent = ledger.resent_from(rec)
        views = {id(v): v for v in originals.values() if v is not None}.values()
        for view in views:
            for p, at in view.resent_from(rec, beside=True).items():
                if originals.get(p) is view:
                    resent[p] = _later(resent[p], at) if p in resent else at
        resent.update((p, None) for p, view in originals.items() if view is None)
        return cls(rec.id, ledger.by_message_id, resent, tuple(v.by_message_id for v in views))

    def owns(self, r: MessageRecord, member: str) -> bool:
        """Whether ``r`` (a record of ``member``) is another group's message: its id, or its
        group message's, names one, or it is stamped before a report of an earlier send."""
        for m in (r.id, r.group_message_id):
            if m and (
                self.ids.get(m, self.group) != self.group or any(m in b for b in self.beside)
            ):
                return True
        reported = self.resent.get(member)
        return reported is not None and r.created_at <= reported

    def blurs(self, rec: GroupRecord) -> bool:
        """Whether the records found for ``rec`` may be an earlier send's (a member of
        :attr:`resent` with no stamp); logged so."""
        blurred = [p for p, at in self.resent.items() if at is None]
        if not blurred:
            return False
        log.warning("settle.ambiguous", group=rec.id, members=len(blurred))
        return True


def _later(a: float | None, b: float | None) -> float | None:
    """The later of two reports' stamps; None when either has none."""
    return None if a is None or b is None else max(a, b)


def _ours(r: MessageRecord, sender: str, member: str, start: float, end: float) -> bool:
    """Whether a record can be the group's to ``member``: an outbound MMS (when the record
    says its type) from ``sender`` to ``member`` inside the window."""
    return (
        r.message_type.upper() in ("", "MMS")
        and _same(r.cli, sender)
        and _same(r.cld, member)
        and start <= r.created_at <= end
    )


def _one_message(each: list[list[MessageRecord]]) -> list[MessageRecord] | None:
    """One record per member, all of one group message, from each member's candidates; None
    when a member has none. Records that name their group message (``group_message_id``,
    which Telnyx adds to a group's records) must name the same one: the first such id every
    member has a record under; when none names one, each member's first record. Members whose
    records name different group messages and no common one: None (not one message)."""
    if not each or not all(each):
        return None
    named = [{r.group_message_id for r in rs if r.group_message_id} for rs in each]
    if not any(named):
        return [rs[0] for rs in each]
    common = set.intersection(*named)
    gid = next((r.group_message_id for r in each[0] if r.group_message_id in common), None)
    if gid is None:
        return None
    return [next(r for r in rs if r.group_message_id == gid) for rs in each]


def _whole(found: list[MessageRecord]) -> MessageRecord:
    """The group's evidence from its members' records: the first one's (under the group
    message's id when the records name it: the id a group's GET answers for), with the
    records' costs summed (each is one recipient's), or no cost when one is missing or the
    currencies differ."""
    first = found[0]
    if first.group_message_id:
        first = msgspec.structs.replace(first, id=first.group_message_id)
    found = [first, *found[1:]]
    costs = [r.cost for r in found]
    currencies = {c.currency for c in costs if c is not None}
    if any(c is None for c in costs) or len(currencies) != 1:
        return msgspec.structs.replace(found[0], cost=None)
    total = sum((c.amount for c in costs if c is not None), Decimal(0))
    return msgspec.structs.replace(found[0], cost=Money(total, currencies.pop()))


def _same(listed: str, ours: str) -> bool:
    """Whether a record's number is ours: as we wrote it, without its leading ``+``, or a +1
    number without its country code (the records are the API's report, not our request; a
    record wrongly taken for absent would send the group again)."""
    return _national(listed) == _national(ours)


def _national(number: str) -> str:
    """``number`` without its ``+``, and a +1 number without its country code: the ten digits
    a North American number is also written as."""
    digits = number.lstrip("+")
    return digits[1:] if len(digits) == 11 and digits[0] == "1" and digits.isdigit() else digits


def own_ids(group: str, to: Sequence[str], finding: Finding, time: str) -> list[Status]:
    """The ``status`` lines that go with the ``sent`` line of a group the records settled,
    when they name no group message: each member's record id as its own message id (status
    ``queued``: the records say it was accepted, tracking says the rest), so each member is
    followed by its own message (``GET /messages/{id}``, its webhooks), not all of them by
    the first member's. None when the records name the group message (its id is the group's)
    or do not match the members."""
    members = finding.members
    if len(members) != len(to) or any(r.group_message_id for r in members):
        return []
    return [
        Status(group, phone, "queued", message_id=r.id, source="records", time=time)
        for phone, r in zip(to, members, strict=True)
        if r.id
    ]


def never_accepted(lag: float, time: str, **members: Any) -> Failed:
    """The event that settles a group in doubt which the API's records, complete ``lag``
    seconds after its last try, show never accepted: failed and retryable, so the next send
    of it is a new request, under a new key. ``members`` are the event's ``group`` and ``to``
    (and ``seq`` and ``rows`` where the caller has them)."""
    return Failed(
        **members,
        code=NOT_ACCEPTED,
        title="the API's records show it was never accepted",
        detail=f"no message detail record {lag:g} s after its last try; sent again",
        retryable=True,
        time=time,
    )
