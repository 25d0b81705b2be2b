"""The receiver of one ledger (:class:`WebhookReceiver`), on what every receiver does with a
request before a ledger is involved (:class:`BaseReceiver`); see :mod:`bulk_mms.webhooks`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import traceback
from collections.abc import (
    AsyncIterator,
    Callable,
    Container,
    Coroutine,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, TypeVar, Unpack

import msgspec.structs
import orjson
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bulk_mms.answers import (
    address,
    as_message_id,
    parse_statuses,
    payload_message_id,
    status_stamp,
)
from bulk_mms.clock import CLOCK_SKEW_S, Clock, SystemClock, instant, iso
from bulk_mms.codes import keyword
from bulk_mms.config import Settings
from bulk_mms.errors import ConfigError, LedgerError
from bulk_mms.ledger import LedgerStore, LedgerView
from bulk_mms.ledger.events import Event, status_event
from bulk_mms.ledger.fold import SENT, GroupRecord
from bulk_mms.models import RecipientStatus
from bulk_mms.policy import delivery_action, opted_out_in, report_action
from bulk_mms.suppression import (
    Suppressed,
    added_by_stop,
    listable,
    suppress_opted_out,
    texted_at,
)
from bulk_mms.webhooks.signature import Unverified, verify

log = structlog.get_logger("bulk_mms.webhooks.receiver")

#: An event under a recipient's own id not yet learnt is taken for this ledger's only within
#: this long after the group was sent (Telnyx keeps trying for up to 72 hours).
LEARN_WINDOW_S = 72 * 3600.0
#: Largest body accepted; a messaging event is a few kilobytes.
MAX_EVENT_BODY = 256 * 1024
EVENTS = frozenset({"message.sent", "message.finalized"})
#: The event whose payload carries a message's final cost.
FINALIZED = "message.finalized"
#: The reason an inbound STOP is recorded under on the suppression list (with when it was
#: texted: :func:`~bulk_mms.suppression.texted_at`).
STOP_REASON = "texted STOP (webhook)"
#: What an inbound START's record on the suppression list says (a comment line, no number).
START_REASON = "texted START (webhook)"
_FIELD_MAX = 128
#: Most numbers an event's ``to`` or ``cc`` lists that are read as its participants: a group
#: MMS has at most 8 recipients and its sender.
_MAX_PARTICIPANTS = 9
#: A webhook can arrive before the run has written its group's `sent` line: its recipients are
#: looked for again every LATE_POLL_S seconds for LATE_WINDOW_S seconds.
LATE_WINDOW_S = 30.0
LATE_POLL_S = 0.5
#: Looks again that fail in a row of a fault of the receiver's before the events held are
#: given up (:meth:`BaseReceiver._poll`): each waits twice as long as the one before.
LATE_FAULTS = 5
#: At most this many events are looked for again at once by one receiver
#: (:meth:`BaseReceiver.look_later`): a steady 333 events a second that no ledger knows (another
#: app on the messaging profile sending 100 messages a second makes about 200) for their
#: LATE_WINDOW_S each. One more is answered 503, not acknowledged: it may be a report of this
#: ledger's that beat its `sent` line, so Telnyx must deliver it again (and ``track`` still
#: reads a status Telnyx gave up on), never a 2xx that drops it unlooked for.
LATE_MAX = 10_000

#: Events a read gave taken into a view between two turns of the event loop: a run may have
#: appended a million lines since, and requests are answered meanwhile.
APPLY_SLICE = 1000

_T = TypeVar("_T")

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


def write_failed(event_id: str, exc: ConfigError | LedgerError) -> None:
    """Log, in one line and without a traceback, that what an event says could not be written
    (its reports to the ledger, its keyword to the suppression list)."""
    log.error("webhook.write_failed", id=short_field(event_id), error=str(exc))


def short_field(value: object) -> str | None:
    return value[:_FIELD_MAX] if isinstance(value, str) else None


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


def origin(data: dict[str, Any], payload: object) -> tuple[str | None, Origin]:
    """When an event says its message reached its status (``occurred_at``, when it is a time:
    :func:`~bulk_mms.answers.status_stamp`), and where it says its message came from."""
    stamp = status_stamp(data.get("occurred_at"))
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
    payload: object, event_type: str, own_group: str | None = None
) -> tuple[RecipientStatus, ...]:
    """The reports an event's payload carries: ``cc`` read only when it is the message
    ``own_group``, a group's own (a recipient's lists the others); the cost only from
    ``message.finalized`` (the others' is an estimate)."""
    statuses = parse_statuses(payload, own_group)
    if event_type != FINALIZED:
        statuses = tuple(msgspec.structs.replace(st, cost=None) for st in statuses)
    return statuses


@dataclass(frozen=True, slots=True)
class Late:
    """An event answered that no ledger here knew, looked for again until ``deadline``
    (:meth:`BaseReceiver.look_later`): what matching it needs, not its body."""

    event_id: str
    message_id: str
    occurred_at: str | None
    #: Where it says its message came from.
    origin: Origin
    #: Its reports as they were read when it came.
    statuses: tuple[RecipientStatus, ...]
    #: Its reports read as a group's own message (:func:`reports_in`), when it lists members
    #: under ``cc``: its id may turn out a group's own once the group's `sent` line lands.
    as_group: tuple[RecipientStatus, ...] | None
    #: When it is given up (the receiver's monotonic time).
    deadline: float
    #: The recipients recorded already.
    done: set[str] = field(default_factory=set)

    def reports(self, *, own_group: bool) -> tuple[RecipientStatus, ...]:
        """Its reports, read as a group's own message when its id is one (``own_group``)."""
        return self.as_group if own_group and self.as_group is not None else self.statuses

    def left(self) -> list[RecipientStatus]:
        """Its reports not recorded yet, as they were read when it came."""
        return [st for st in self.statuses if st.phone not in self.done]


class ReceiverOptions(TypedDict, total=False):
    """What every receiver takes beside its key and its ledgers (see :class:`BaseReceiver`)."""

    clock: Clock | None
    suppressed: Suppressed | None
    settings: Settings | None
    stop: asyncio.Event | None


class BaseReceiver:
    """What every receiver does with a request before a ledger is involved: the aiohttp
    handler (:meth:`handle`: verify, parse, take a keyword onto the suppression list, one
    delivery of an event at a time), and the bounded look again (:meth:`look_later`) for
    what a ledger does not hold yet. A delivery report goes to :meth:`_delivery`; what the
    look again reads is :meth:`_read_late`'s, and what it does with an event :meth:`_found`'s."""

    def __init__(
        self,
        key: Ed25519PublicKey,
        *,
        clock: Clock | None = None,
        suppressed: Suppressed | None = None,
        settings: Settings | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        #: Set when the receiver is stopping: events still looked for again are given up.
        self.stop = stop
        #: The account's suppression list, where inbound STOPs go (None: not kept).
        self.suppressed = suppressed
        #: The account's settings, as runs and ``track`` read delivery reports by them: the
        #: error table (``[errors]``: which codes say a member opted out, which send a member
        #: again), the carriers' reset, and the keywords that opt out and back in.
        self.settings = settings or Settings()
        self.key = key
        self.clock: Clock = clock or SystemClock()
        self.rejected = 0
        #: Events for messages no ledger here sent (or whose id none learnt), after the late
        #: window: acknowledged, counted, never recorded.
        self.unmatched = 0
        #: Seconds to keep looking for an event's recipients that the ledger does not hold yet.
        self.late_window_s = LATE_WINDOW_S
        #: At most this many events looked for again at once (:data:`LATE_MAX`).
        self.late_max = LATE_MAX
        #: The events looked for again, oldest first, each under a number of its own (a
        #: redelivery may be looked for beside its first: :meth:`look_later`).
        self._late: dict[int, Late] = {}
        self._late_numbers = itertools.count()
        #: Looks them over while there are any (:meth:`_poll`); one for the receiver.
        self._poller: asyncio.Task[None] | None = None
        #: The views as the last look matched the events held against them (:meth:`_views`).
        self._matched_on: object = None
        #: Events being handled now, each with what is set once it is done (:meth:`_alone`).
        self._busy: dict[str, asyncio.Future[None]] = {}
        #: Work on a ledger off the loop that runs to its end whoever waits (:meth:`_finished`).
        self._finishing: set[asyncio.Task[Any]] = set()

    async def _delivery(
        self, event_id: str, event_type: str, data: dict[str, Any], payload: object
    ) -> web.Response:
        """The answer to a ``message.sent`` or ``message.finalized`` (:meth:`handle`)."""
        raise NotImplementedError

    async def _read_late(self) -> None:
        """Take in what the ledgers served were appended since, once for every look over the
        events looked for again (:meth:`_poll`).

        Raises:
            LedgerError: a ledger cannot be read (what was read of the others is taken in).
        """
        raise NotImplementedError

    async def _found(self, late: Late) -> bool:
        """Record what a ledger, as its view stands (:meth:`_read_late`), now says is an
        event's; whether it is recorded whole (a write that fails: not yet)."""
        raise NotImplementedError

    def _views(self) -> object:
        """What changes whenever the ledgers' views may match an event otherwise than they
        did: unchanged since a look, the events held are not matched again (:meth:`_look`)."""
        raise NotImplementedError

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_EVENT_BODY)
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:  # noqa: PLR0911 - one answer per kind of request Telnyx may send
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(request, "body too large", 413)
        try:
            verify(self.key, request.headers, raw, self.clock.wall())
        except Unverified as exc:
            return self._reject(request, exc.reason, exc.status)
        try:
            body = orjson.loads(raw)
            data = body["data"]
            event_id, event_type = data["id"], data["event_type"]
            # the spec requires no field of an event: one without a payload reports nothing
            payload = data.get("payload")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            event_id = event_type = None
        event_id = as_message_id(event_id)  # the spec's event id is a UUID
        if event_id is None or not isinstance(event_type, str):
            # not an event, its id is not an id (ids are UUIDs), or its type is not a word
            log.warning("webhook.malformed", remote=request.remote)
            return web.json_response({"error": "not a Telnyx event"}, status=400)
        if event_type == "message.received":
            texted = instant(status_stamp(data.get("occurred_at")))  # one far ahead: none
            try:
                suppressed, lifted = (
                    await self.suppressed.off_loop(
                        functools.partial(self._keywords, payload, texted)
                    )
                    if self.suppressed is not None
                    else (False, False)
                )
            except (ConfigError, LedgerError) as exc:
                # no 2xx: Telnyx redelivers, and the keyword is taken once the list takes it
                write_failed(event_id, exc)
                return web.json_response(
                    {"error": "the suppression list cannot be written now"}, status=503
                )
            return web.json_response({"ok": True, "suppressed": suppressed, "lifted": lifted})
        if event_type not in EVENTS:
            log.info(
                "webhook.ignored", event_type=short_field(event_type), id=short_field(event_id)
            )
            return web.json_response({"ok": True})
        async with self._alone(event_id):
            return await self._delivery(event_id, event_type, data, payload)

    @contextlib.asynccontextmanager
    async def _alone(self, event_id: str) -> AsyncIterator[None]:
        """Handle one delivery of an event at a time. Telnyx delivers an event again when it
        gets no 2xx within 2 s, so a redelivery may come while the first is still writing: it
        waits for it, and is then a duplicate only if the first's reports were written (they
        are durable before it is answered), or is taken anew if they could not be."""
        while (busy := self._busy.get(event_id)) is not None:
            await asyncio.wait([busy])  # a waiter cancelled leaves the first undisturbed
        self._busy[event_id] = done = asyncio.get_running_loop().create_future()
        try:
            yield
        finally:
            del self._busy[event_id]
            done.set_result(None)

    def _keyword_from(self, payload: object, words: Container[str]) -> str | None:
        """The sender of an inbound message that is one of ``words`` (case and spaces
        aside), in E.164, when there is a suppression list to act on and the sender is a
        number it can hold (:func:`~bulk_mms.suppression.listable`); else None."""
        if self.suppressed is None or self.suppressed.path is None:
            return None
        if not isinstance(payload, dict):
            return None
        text, phone = payload.get("text"), address(payload.get("from"))
        if not isinstance(text, str) or keyword(text) not in words:
            return None
        if not isinstance(phone, str) or len(phone) > _FIELD_MAX:
            return None
        return next(iter(listable([phone])), None)

    def _keywords(self, payload: object, texted: float | None) -> tuple[bool, bool]:
        """An inbound message's STOP or START applied, in the order its sender texted them
        (``texted``: the event's ``occurred_at``): one older than the latest the suppression
        list records for that sender (:meth:`Suppressed.keyword_at`, read under the list's
        lock, as every receiver on it left it, whenever it started) changes nothing (Telnyx
        redelivers an event up to three times; a STOP redelivered after a START must not undo
        it). One that fails to be taken in (the list cannot be written) is not recorded, so
        its redelivery is taken. (suppressed, lifted)."""
        words = self.settings.opt_out_words | self.settings.opt_in_words
        phone = self._keyword_from(payload, words)
        if phone is None or self.suppressed is None:
            return False, False
        with self.suppressed.held():
            latest = self.suppressed.keyword_at(phone)
            if texted is not None and latest is not None and texted < latest:
                log.info("webhook.keyword_stale", recipient=phone)
                return False, False
            # may raise: no 2xx, so Telnyx redelivers and it is taken again
            return self.opt_out(payload, texted), self.opt_in(payload, texted)

    def opt_out(self, payload: object, texted: float | None = None) -> bool:
        """An inbound message that opts out (STOP and its synonyms): its sender goes on the
        suppression list, so no later job texts them, with when it was texted (``texted``,
        if known) in its reason; a sender listed already gets that time recorded instead
        (:meth:`Suppressed.record_keyword`). True when it was added."""
        phone = self._keyword_from(payload, self.settings.opt_out_words)
        if phone is None or self.suppressed is None:
            return False
        reason = STOP_REASON if texted is None else texted_at(STOP_REASON, texted)
        added = self.suppressed.add([phone], reason)
        if not added and texted is not None:
            self.suppressed.record_keyword(phone, STOP_REASON, texted)
        log.info("webhook.opt_out", recipient=phone, new=bool(added))
        return bool(added)

    def opt_in(self, payload: object, texted: float | None = None) -> bool:
        """An inbound START (or UNSTOP; case and surrounding spaces aside) lifts its sender's
        suppression, but only one a STOP added (:func:`~bulk_mms.suppression.added_by_stop`):
        a number suppressed by hand stays suppressed. When it was texted (``texted``, if
        known) is recorded on the list first, lifted or not, so a STOP texted before it and
        delivered after it changes nothing (a crash between the two leaves the number
        suppressed, and the redelivered START lifts it). The request is verified before this
        runs (signed by Telnyx), so nobody can lift a block by posting. True when it was
        lifted."""
        phone = self._keyword_from(payload, self.settings.opt_in_words)
        if phone is None or self.suppressed is None:
            return False
        if texted is not None:
            self.suppressed.record_keyword(phone, START_REASON, texted)
        if phone not in self.suppressed:
            return False
        reason = self.suppressed.reason(phone)
        if not added_by_stop(reason):
            log.info("webhook.opt_in_kept", recipient=phone, reason=reason)
            return False
        lifted = bool(self.suppressed.remove([phone]))
        log.info("webhook.opt_in", recipient=phone, lifted=lifted)
        return lifted

    def _unmatched(
        self, event_id: str, message_id: str | None, unknown: Sequence[RecipientStatus]
    ) -> None:
        """An event for a message this ledger did not send: counted and dropped."""
        self.unmatched += 1
        log.warning(
            "webhook.unmatched",
            id=short_field(event_id),
            message_id=message_id,
            recipients=len(unknown),
            unmatched=self.unmatched,
        )

    def look_later(
        self,
        event_id: str,
        event_type: str,
        data: dict[str, Any],
        message_id: str,
        statuses: Sequence[RecipientStatus],
    ) -> bool:
        """Look for an event's reports again (``statuses``: as read now, none recorded,
        :func:`reports_in`), the request answered: every :data:`LATE_POLL_S` for
        :attr:`late_window_s` (a webhook can beat the run's ``sent`` line), with every other
        such event (:meth:`_poll`); what matching needs is kept of it, not its body (:class:`Late`).
        False, and not looked for, when :attr:`late_max` are already: the caller answers 503,
        so Telnyx delivers it again (:data:`LATE_MAX`)."""
        if len(self._late) >= self.late_max:
            log.warning("webhook.late_full", id=short_field(event_id), pending=len(self._late))
            return False
        payload = data.get("payload")
        listed = isinstance(payload, dict) and payload.get("cc")
        self._late[next(self._late_numbers)] = Late(
            event_id,
            message_id,
            *origin(data, payload),
            statuses=tuple(statuses),
            as_group=reports_in(payload, event_type, message_id) if listed else None,
            deadline=self.clock.monotonic() + self.late_window_s,
        )
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
            self._poller.add_done_callback(self._poll_ended)
        return True

    def _poll_ended(self, task: asyncio.Task[None]) -> None:
        """The looks again (:meth:`_poll`) ended: one that failed outside a look (a fault of
        the receiver's, logged in one line) counts the events it held unmatched, as a look
        that failed :data:`LATE_FAULTS` times does; a later event starts the looks anew."""
        if task.cancelled() or (exc := task.exception()) is None:
            return
        log.error("webhook.late_failed", **fault(exc), pending=len(self._late))
        self._give_up()

    async def _poll(self) -> None:
        """Every :data:`LATE_POLL_S` while events are looked for again (:meth:`look_later`):
        one look (:meth:`_look`). A look that fails of a fault of the receiver's (a bug: a
        ledger that cannot be read is not one) is logged, and the next waits twice as long;
        after :data:`LATE_FAULTS` in a row, or when stopping, the events held are counted
        unmatched (a later one starts the looks anew). A receiver stopping takes one last look
        at once, then counts the rest."""
        faults = 0
        while self._late:
            await self.clock.sleep(LATE_POLL_S * 2**faults)  # a stopping clock's returns at once
            last = self._stopping()  # this look is the last
            try:
                await self._look(last)
            except Exception as exc:  # a bug must not leave the events unlooked for
                faults += 1
                log.error(  # noqa: TRY400 - one line: its message may quote an event
                    "webhook.late_failed", **fault(exc), faults=faults, pending=len(self._late)
                )
                if last or faults >= LATE_FAULTS:
                    self._give_up()
            else:
                faults = 0

    def _give_up(self) -> None:
        """Count every event held unmatched, and hold none (the looks again cannot go on)."""
        for late in self._late.values():
            self._unmatched(late.event_id, late.message_id, late.left())
        self._late.clear()

    async def _look(self, last: bool) -> None:
        """One read of what the ledgers were appended since (:meth:`_read_late`), then each
        event against the views in memory (:meth:`_found`), in the order they came; one not
        found by its deadline (or at the ``last`` look) is counted unmatched, and so is one
        whose matching fails of a fault of the receiver's (logged), the others looked for
        all the same. Views unchanged since the last look match none of them (each came
        after its request matched it against the views as they stood)."""
        now = self.clock.monotonic()
        try:
            await self._read_late()
        except LedgerError as exc:
            # the events are looked for in what was read; the next look reads again
            log.warning("webhook.late_read_failed", error=str(exc), pending=len(self._late))
        views, before = self._views(), self._matched_on
        self._matched_on = views
        for number, late in list(self._late.items()):
            try:
                found = views != before and await self._found(late)
            except Exception as exc:  # one event's fault must not stop the others
                log.error("webhook.late_failed", **fault(exc), id=late.event_id)  # noqa: TRY400
                found = None
            if found:
                del self._late[number]
            elif found is None or last or now >= late.deadline:
                del self._late[number]
                self._unmatched(late.event_id, late.message_id, late.left())

    async def _finished(self, work: Coroutine[Any, Any, _T]) -> _T:
        """What ``work`` returns: a ledger opened or read in a worker thread, and what is done
        with it on the loop. It runs to its end even when the request waiting for it is
        cancelled (the receiver stopping, its client gone): a thread cannot be stopped, and
        what it read must reach the view (the store's read position is past it), what it
        opened be kept or closed. :meth:`close` waits for it."""
        task = asyncio.ensure_future(work)
        self._finishing.add(task)
        task.add_done_callback(_retrieved)
        task.add_done_callback(self._finishing.discard)
        return await asyncio.shield(task)

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    async def settle(self) -> None:
        """Wait until every event still being looked for is matched or counted unmatched."""
        while (poller := self._poller) is not None and not poller.done():
            await asyncio.wait([poller])

    async def close(self) -> None:
        """Stop looking for events again (those left are neither recorded nor counted), and
        wait for the ledgers' reads under way (:meth:`_finished`)."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.wait([self._poller])
        self._late.clear()
        await asyncio.gather(*self._finishing, return_exceptions=True)

    def _reject(self, request: web.Request, reason: str, status: int) -> web.Response:
        self.rejected += 1
        log.warning("webhook.rejected", reason=reason, remote=request.remote, status=status)
        return web.json_response(
            {"error": "unauthorized" if status == 401 else reason}, status=status
        )


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Take a finished task's exception, so one nobody awaited any more is not reported as
    never retrieved (its request was answered, or cancelled, already)."""
    if not task.cancelled():
        task.exception()


def fault(exc: BaseException) -> dict[str, str]:
    """A fault of the receiver's, for a log line: its type and where it was raised, without
    its message (which may quote an event, or a database's address)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return {"error": type(exc).__name__, "at": where}


class WebhookReceiver(BaseReceiver):
    """The receiver of one ledger; keeps the ledger's view current as events come in. Every
    read of the ledger while it serves (what was appended since: :meth:`catch_up`; the whole
    ledger anew after a failed write: :meth:`ready`) runs in a worker thread, one at a time,
    so the event loop answers other requests meanwhile."""

    def __init__(
        self,
        view: LedgerView,
        store: LedgerStore,
        key: Ed25519PublicKey,
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
        occurred_at, said = origin(data, payload)
        # an id that is not one (too long, a line end, an escape) names no message: the event
        # is never matched by it, nor learnt as a recipient's own id
        message_id = payload_message_id(payload)
        try:
            await self.ready()
            await self.catch_up(message_id)
            statuses = reports_in(payload, event_type, self._own_group_id(message_id))
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
            and not self.look_later(event_id, event_type, data, message_id, unknown)
        ):
            return too_many_late()
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
        else:  # a recipient's own id: only that recipient
            known = self.view.known
            mine = {p for p in rec.to if (k := known.get(p)) and k.message_id == message_id}
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
            report = RecipientStatus(
                st.phone,
                st.status[:_FIELD_MAX],
                message_id=own,
                errors=st.errors[:5],
                at=occurred_at or st.at,
                cost=st.cost,
            )
            action = report_action(report, self.settings.error_policy)
            # a cost only finalized's
            if view.apply_status(report, gid, finalized=True, action=action):
                now = self.clock.wall()
                status = status_event(
                    gid, report, source="webhook", webhook_id=event_id, time=iso(now), action=action
                )
                # a member its sender's block or a carrier's cap failed goes again on a rerun,
                # as track would send it: its move in the report's commit, so a redelivery
                # after a failed write finds neither on record (the event id not yet seen)
                moved = (
                    delivery_action(rec, report, self.settings, now, view.moves)[1]
                    if rec is not None
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

    async def _read_late(self) -> None:
        """The ledger opened anew if a write failed (:meth:`ready`), and what was appended
        to it since taken in (:meth:`take_in_new`).

        Raises:
            LedgerError: it cannot be opened again, or read.
        """
        await self.ready()
        await self.take_in_new()

    async def _found(self, late: Late) -> bool:
        """Record an event's reports whose recipients the view now knows (its group's own
        message read again once its `sent` line lands: the members it lists under ``cc`` too);
        whether none is left. A write that fails is logged, and tried at the next look (the
        event was answered already: nobody redelivers it)."""
        message_id = late.message_id
        statuses = late.reports(own_group=self._own_group_id(message_id) is not None)
        left = [st for st in statuses if st.phone not in late.done]
        matched, rest = self.match(left, message_id, late.origin, late.occurred_at)
        if matched:
            try:
                await self.record(late.event_id, matched, message_id, late.occurred_at)
            except LedgerError as exc:
                write_failed(late.event_id, exc)
                return False
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


def too_many_late() -> web.Response:
    """The answer to an event that no ledger knows and cannot be looked for again now
    (:data:`LATE_MAX`): 503, so Telnyx delivers it again."""
    return web.json_response({"error": "too many events are being looked for now"}, status=503)
