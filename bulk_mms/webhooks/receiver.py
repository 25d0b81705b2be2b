"""The receiver of one ledger (:class:`WebhookReceiver`), on what every receiver does with a
request (:class:`~bulk_mms.webhooks.base.BaseReceiver`).

A delivery report is matched to a group this ledger sent by its message id alone
(:meth:`WebhookReceiver.match`): the group's own id matches every member it lists; a
recipient's own id matches that recipient alone, and is learnt from an event only within
:data:`LEARN_WINDOW_S` of the group's send. What is news is written durably before the
request is answered (:meth:`WebhookReceiver.record`). The ledger's view is kept current by
reads in a worker thread, one at a time (:func:`opened`, :func:`read_new`); see
:mod:`bulk_mms.webhooks`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Unpack

import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bulk_mms.answers import payload_message_id
from bulk_mms.clock import CLOCK_SKEW_S, Clock, instant, iso
from bulk_mms.config import Settings
from bulk_mms.errors import LedgerError
from bulk_mms.ledger import LedgerStore, LedgerView, Location
from bulk_mms.ledger.delivery_fold import News
from bulk_mms.ledger.events import Event, status_event
from bulk_mms.ledger.fold import SENT
from bulk_mms.models import RecipientStatus
from bulk_mms.policy import delivery_action, judged, opted_out_in
from bulk_mms.suppression import Suppressed, suppress_opted_out
from bulk_mms.webhooks.base import (
    BaseReceiver,
    Late,
    ReceiverOptions,
    write_failed,
)
from bulk_mms.webhooks.events import FIELD_MAX, Origin, origin, reports_in, short_field
from bulk_mms.webhooks.spool import Spool, spool_for

log = structlog.get_logger(__name__)

#: An event under a recipient's own id not yet learnt is taken for this ledger's only within
#: this long after the group was sent (Telnyx keeps trying for up to 72 hours).
LEARN_WINDOW_S = 72 * 3600.0

#: Events a read gave taken into a view between two turns of the event loop: a run may have
#: appended a million lines since, and requests are answered meanwhile.
APPLY_SLICE = 1000

#: Every receiver's :attr:`~WebhookReceiver.revision` is one of these, never the same twice.
_revisions = itertools.count()


def opened(open_: Callable[[], LedgerStore]) -> tuple[LedgerStore, LedgerView]:
    """A ledger's store, opened by ``open_``, and its view, read from it (blocking: a large
    ledger takes seconds, so a receiver calls it in a worker thread).

    Raises:
        LedgerError: it cannot be opened or read (a store opened is closed again).
    """
    store = open_()
    try:
        view = store.fold()
    except BaseException:
        store.close_sync()
        raise
    return store, view


async def apply_held(
    location: Location,
    view: LedgerView,
    store: LedgerStore,
    settings: Settings,
    *,
    clock: Clock,
    suppressed: Callable[[], Awaitable[Suppressed | None]],
) -> int:
    """Record the reports the receiver of the ledger at ``location`` holds in its spool
    (:func:`~bulk_mms.webhooks.spool.spool_for`) whose message the ledger (``view`` and
    ``store``, open already) now knows, and settle them, as that receiver does when it
    starts (:meth:`~bulk_mms.webhooks.base.BaseReceiver.replay_held`), without looking
    again: the others stay held for the next receiver. For ``track``, whose user may never
    start the receiver again; ``suppressed`` gives the list an opt-out reported goes on (read
    only when the spool has a file). How many reports were recorded.

    A report recorded both here and by a receiver that replays it (its line read before it
    was settled here) is news once: the second finds its status on record and writes none
    (two that write it at the same moment write the same line twice, which the fold takes
    as one).
    """
    spool = Spool(spool_for(location), max_age_s=LEARN_WINDOW_S)
    if not spool.path.exists():
        return 0
    receiver = WebhookReceiver(
        view, store, None, clock=clock, suppressed=await suppressed(), settings=settings,
        spool=spool,
    )  # fmt: skip
    try:
        await receiver.replay_held(look_on=False)
    finally:
        await receiver.close()
    return receiver.recorded


def read_new(store: LedgerStore) -> tuple[list[Event], LedgerError | None]:
    """The events appended to ``store``'s ledger since its last read (blocking: called in a
    worker thread), with the error that ended the read, if one did: the events read before
    it are past the store's read position, so they must be taken in all the same."""
    events: list[Event] = []
    try:
        events.extend(store.new_events())
    except LedgerError as exc:
        return events, exc
    return events, None


class WebhookReceiver(BaseReceiver):
    """The receiver of one ledger; keeps the ledger's view current as events come in. Every
    read of the ledger while it serves (what was appended since: :meth:`catch_up`; the whole
    ledger anew after a failed write: :meth:`ready`) runs in a worker thread, one at a time,
    so the event loop answers other requests meanwhile."""

    def __init__(
        self,
        view: LedgerView,
        store: LedgerStore,
        key: Ed25519PublicKey | None,
        *,
        reopen: Callable[[], LedgerStore] | None = None,
        **options: Unpack[ReceiverOptions],
    ) -> None:
        super().__init__(key, **options)
        #: Opens the ledger anew: a store whose write failed takes nothing more, so the next
        #: request that writes works on a fresh one (None: it stays failed, every write a 503).
        self.reopen = reopen
        self.view = view
        self.store = store
        store.on_kept_back(view.kept_back)  # a move the shared ledger did not write
        self.recorded = 0
        #: Held while the ledger is read off the loop: two reads of one store at once would
        #: each take part of what was appended, from the same read position.
        self._reading = asyncio.Lock()
        #: Reads begun (:meth:`catch_up`): a request that waited for one begun after it asked
        #: has what it asked for.
        self._reads = 0
        #: Taken anew whenever the view may match an event otherwise: a read took events in,
        #: the ledger was read anew, reports were recorded or failed to be (:meth:`_views`).
        self.revision = next(_revisions)

    def __repr__(self) -> str:
        return (
            f"<WebhookReceiver {self.store.name} recorded={self.recorded} "
            f"unmatched={self.unmatched}>"
        )

    async def _delivery(
        self, event_id: str, event_type: str, data: dict[str, Any], payload: object
    ) -> web.Response:
        """The answer to a ``message.sent`` or ``message.finalized`` (:meth:`handle`)."""
        if event_id in self.view.webhook_ids:
            log.debug("webhook.duplicate", id=short_field(event_id))
            return web.json_response({"ok": True, "duplicate": True})
        now = self.clock.wall()
        occurred_at, said = origin(data, payload, now)
        # an id that is not one (too long, a line end, an escape) names no message: the event
        # is never matched by it, nor learnt as a recipient's own id
        message_id = payload_message_id(payload)
        try:
            await self.ready()
            await self.catch_up(message_id)
            statuses = reports_in(payload, event_type, self._own_group_id(message_id), now=now)
            matched, unknown = self.match(statuses, message_id, said, occurred_at)
            recorded = await self.record(event_id, matched, message_id, occurred_at)
        except LedgerError as exc:
            # Telnyx redelivers on a 5xx: the event is recorded once the ledger takes writes
            write_failed(event_id, exc)
            return web.json_response({"error": "the ledger cannot be written now"}, status=503)
        # nothing was matched (so nothing written): the run may not have written this group's
        # `sent` line yet (a webhook can beat it); looked for again, or refused for now
        if (
            unknown
            and message_id is not None
            and (why := await self.look_later(event_id, event_type, data, message_id, unknown))
        ):
            return self.not_held(why)
        self.view.webhook_ids.add(event_id)
        if unknown and message_id is None:
            self._unmatched(event_id, message_id, unknown)
            unknown = []
        log.info("webhook.received", event_type=event_type, id=event_id, recorded=recorded)
        return web.json_response({"ok": True, "recorded": recorded, "pending": len(unknown)})

    def match(
        self,
        statuses: Sequence[RecipientStatus],
        message_id: str | None,
        said: Origin | None = None,
        occurred_at: str | None = None,
    ) -> tuple[list[tuple[str, RecipientStatus]], list[RecipientStatus]]:
        """Split reports into those for recipients of the message ``message_id`` names (with
        their group) and the rest: all of them when the id is not one this ledger knows (as
        the view stands: :meth:`catch_up` first).

        The group's own id matches every member it lists; a recipient's own id matches that
        recipient alone. A listed number that is not such a recipient is ignored (logged):
        it is never matched by number to some other group. A recipient's own id the ledger
        has not learnt yet (group MMS sends one event per recipient, under an id the send's
        answer does not give) is learnt from an event about that one recipient that ``said``
        (its :func:`origin`) ties to the recipient's group (:meth:`_learn`). An event that
        names another group message than its id's group
        (:meth:`~bulk_mms.ledger.LedgerView.names_another`) is matched by neither: its
        reports are all left over, as an event this ledger did not send.
        """
        if not statuses:
            return [], []
        gid = self._group_for(message_id)
        if gid is None and message_id is not None:
            gid = self._learn(statuses, message_id, said or Origin(), occurred_at)
            if gid is not None:
                return [(gid, statuses[0])], []
        if gid is None:
            return [], list(statuses)
        rec = self.view.groups[gid]
        if said is not None and self.view.names_another(rec, said.group_id):
            # its id is this ledger's, the group message it names is not: not this group's
            log.warning("webhook.other_group_message", message_id=message_id, group=gid)
            return [], list(statuses)
        if self.view.group_message_id(rec) == message_id:
            mine = set(rec.to)
        else:  # a recipient's own id: only that recipient (one moved out and sent again too)
            mine = {p for p in rec.to if self.view.own_id(rec, p) == message_id}
        matched = [(gid, st) for st in statuses if st.phone in mine]
        if len(matched) < len(statuses):
            log.warning(
                "webhook.stray_recipients",
                message_id=message_id,
                count=len(statuses) - len(matched),
            )
        return matched, []

    async def record(
        self,
        event_id: str,
        matched: Sequence[tuple[str, RecipientStatus]],
        message_id: str | None,
        occurred_at: str | None,
    ) -> int:
        """Write, durably, the reports that are news; how many were.

        Raises:
            LedgerError: a write failed. The view is then read anew from the ledger (it had
                taken in reports that were not written), so a redelivery finds them news.
        """
        # this store and the view that goes with it, even should another writer's failure
        # swap both meanwhile: a report goes into the view only of the store it is written to
        store, view = self.store, self.view
        try:
            n = await self._record(
                store,
                view,
                event_id=event_id,
                matched=matched,
                message_id=message_id,
                occurred_at=occurred_at,
            )
        except LedgerError:
            if self.store is store:  # the first of the writers that saw it fail
                with contextlib.suppress(LedgerError):
                    await self.ready()
            raise
        finally:
            # once the view has taken them all in: a look during the writes (which yield
            # between members) matched against part of them
            if matched:
                self.revision = next(_revisions)
        await self._opted_out(matched)
        return n

    async def _opted_out(self, matched: Sequence[tuple[str, RecipientStatus]]) -> None:
        """Recipients of this ledger whose delivery failed because they opted out (a
        ``suppress`` code, 40300, reported after the group was accepted) go on the suppression
        list, as a send's 409 puts them (a redelivered report adds nobody twice)."""
        if self.suppressed is None:
            return
        for _, st in matched:
            if (code := opted_out_in(st, self.settings.error_policy)) is not None:
                await suppress_opted_out(self.suppressed, (st.phone,), code, source="webhook")

    async def ready(self) -> None:
        """Have a store that takes writes: if the current store's write failed (a full disk
        freed since, say), open the ledger anew and read it into a fresh view, in a worker
        thread, one read of the ledger at a time (a request that comes meanwhile waits, and
        finds it reopened).

        Raises:
            LedgerError: the store failed and the ledger cannot be opened again (yet).
        """
        failure = self.store.failed
        if failure is None:
            return
        if self.reopen is None:
            raise failure
        await self._finished(self._reopen(self.reopen))

    async def _reopen(self, reopen: Callable[[], LedgerStore]) -> None:
        async with self._reading:
            failure = self.store.failed
            if failure is None:  # reopened while this waited
                return
            store, view = await asyncio.to_thread(opened, reopen)
            self.store.close_sync()
            store.on_kept_back(view.kept_back)
            self.store, self.view = store, view
            self.revision = next(_revisions)
        log.info("webhook.ledger_reopened", ledger=store.name, after=str(failure))

    async def _record(
        self,
        store: LedgerStore,
        view: LedgerView,
        *,
        event_id: str,
        matched: Sequence[tuple[str, RecipientStatus]],
        message_id: str | None,
        occurred_at: str | None,
    ) -> int:
        n = 0
        for gid, st in matched:
            rec = view.groups.get(gid)
            # a recipient keeps its own id; the group's id is not one recipient's
            own = message_id if rec is None or view.group_message_id(rec) != message_id else None
            report, action = judged(
                RecipientStatus(
                    st.phone,
                    st.status[:FIELD_MAX],
                    message_id=own,
                    errors=st.errors,
                    at=occurred_at or st.at,
                    cost=st.cost,
                ),
                self.settings.error_policy,
            )
            # a cost only finalized's
            if news := view.apply_status(report, gid, finalized=True, action=action):
                now = self.clock.wall()
                status = status_event(
                    gid, report, source="webhook", webhook_id=event_id, time=iso(now), action=action
                )
                # a member its sender's block or a carrier's cap failed goes again on a rerun,
                # as track would send it (and one moved that the message reached after all
                # does not): its move in the report's commit, so a redelivery after a failed
                # write finds neither on record (the event id not yet seen)
                moved = (
                    delivery_action(rec, report, self.settings, now, view.moves)[1]
                    if rec is not None and news & (News.STATUS | News.REACHED)
                    else None
                )
                if moved is not None:
                    store.append_nowait(status)
                    view.apply(moved)
                    await store.append(moved)
                else:
                    await store.append(status)
                n += 1
        self.recorded += n
        return n

    def _views(self) -> object:
        return self.revision

    def _seen(self, event_id: str) -> None:
        self.view.webhook_ids.add(event_id)

    async def _read_late(self) -> None:
        """The ledger opened anew if a write failed (:meth:`ready`), and what was appended
        to it since taken in (:meth:`take_in_new`).

        Raises:
            LedgerError: it cannot be opened again, or read.
        """
        await self.ready()
        await self.take_in_new()

    async def _found(self, late: Late) -> bool | None:
        """Record an event's reports whose recipients the view now knows (its group's own
        message read again once its `sent` line lands: the members it lists under ``cc`` too);
        whether none is left. A write that fails is logged, and tried at the next look (the
        event was answered already: nobody redelivers it): None."""
        message_id = late.message_id
        statuses = late.reports(own_group=self._own_group_id(message_id) is not None)
        left = [st for st in statuses if st.phone not in late.done]
        matched, rest = self.match(left, message_id, late.origin, late.occurred_at)
        if matched:
            try:
                await self.record(late.event_id, matched, message_id, late.occurred_at)
            except LedgerError as exc:
                write_failed(late.event_id, exc)
                return None
            late.done.update(st.phone for _, st in matched)
        return not rest

    async def catch_up(self, message_id: str | None) -> None:
        """Take in what has been written since, when ``message_id`` is not of a group the view
        knows (sent since this server last read the ledger?): read in a worker thread, one
        read of the ledger at a time; a request that waited for a read begun after it asked
        takes that one's.

        Raises:
            LedgerError: the ledger cannot be read (what was read before is taken in).
        """
        if message_id is not None and self._group_for(message_id) is None:
            await self.take_in_new()

    async def take_in_new(self) -> None:
        """Take in what has been written since: read in a worker thread, one read of the
        ledger at a time. A caller that comes while one runs waits for the next, which
        every caller that came meanwhile shares; none is needed when no read is under way
        and the store shows nothing appended since the last (:meth:`LedgerStore.may_have_new`).

        Raises:
            LedgerError: the ledger cannot be read (what was read before is taken in).
        """
        if self._reading.locked() or self.store.may_have_new():
            await self._finished(self._read_since(self._reads))

    async def _read_since(self, asked: int) -> None:
        async with self._reading:
            if self._reads > asked:
                return
            self._reads += 1
            events, error = await asyncio.to_thread(read_new, self.store)
            for start in range(0, len(events), APPLY_SLICE):
                if start:
                    await asyncio.sleep(0)  # requests between slices: the view is a prefix
                for ev in events[start : start + APPLY_SLICE]:
                    self.view.apply(ev)
            if events:
                self.revision = next(_revisions)
            if error is not None:
                raise error  # after what was read before it: past the store's read position

    def _learn(
        self,
        statuses: Sequence[RecipientStatus],
        message_id: str,
        said: Origin,
        occurred_at: str | None,
    ) -> str | None:
        """The sent group an event under an unknown id is about, when the event is about one
        recipient, that recipient is a member of a group this ledger sent that what the event
        ``said`` ties it to (:meth:`Origin.ties`: the group message it names, else its sender,
        else its participants), the event comes after that send and within
        ``LEARN_WINDOW_S`` of it, and the recipient has no own id yet: the event's id is then
        that recipient's own (recorded with its status, so later events match by it). None
        otherwise: the event is not this ledger's, or nothing it says shows it is (one under
        another id for a recipient whose own id is known is another message to the same
        number, another job's from the same sender)."""
        if len(statuses) != 1:
            return None
        phone = statuses[0].phone
        gid = self.view.group_of(phone)
        rec = self.view.groups.get(gid) if gid is not None else None
        if (
            rec is None
            or rec.outcome != SENT
            or self.view.names_another(rec, said.group_id)
            or not said.ties(rec, self.view.group_message_id(rec))
        ):
            return None
        if (known := self.view.known.get(phone)) is not None and known.message_id:
            # the recipient's own id is known and it is not this one: the event is about
            # another message to the same number (another job's, from the same sender)
            return None
        at = instant(occurred_at) if occurred_at else None
        if (
            at is not None
            and rec.sent_at
            and not (rec.sent_at - CLOCK_SKEW_S <= at <= rec.sent_at + LEARN_WINDOW_S)
        ):
            return None
        log.debug("webhook.learnt_id", message_id=message_id, group=gid)
        return gid

    def _own_group_id(self, message_id: str | None) -> str | None:
        """``message_id`` when it is the own id of a group this ledger sent (the send's
        answer's, not one recipient's); else None."""
        gid = self._group_for(message_id)
        rec = self.view.groups.get(gid) if gid is not None else None
        if rec is None or self.view.group_message_id(rec) != message_id:
            return None
        return message_id

    def knows(self, message_id: str) -> bool:
        """Whether ``message_id`` is of a group this ledger sent (the group's own, or a
        recipient's learnt), as the view stands (:meth:`catch_up` first)."""
        return self._group_for(message_id) is not None

    def _group_for(self, message_id: str | None) -> str | None:
        """The sent group a message id is of (its own, or one of its recipients'), if any."""
        if message_id is None:
            return None
        gid = self.view.by_message_id.get(message_id)
        rec = self.view.groups.get(gid) if gid is not None else None
        return gid if rec is not None and rec.outcome == SENT else None
