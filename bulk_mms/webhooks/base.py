"""What every receiver does with a request before a ledger is involved (:class:`BaseReceiver`):
the aiohttp app and its handler, and the bounded look again for events no ledger holds yet.

The handler verifies a request (:mod:`bulk_mms.webhooks.signature`) before it parses its
body (:data:`MAX_EVENT_BODY` at most), takes an inbound keyword onto the suppression list
(:mod:`bulk_mms.webhooks.keywords`), and hands a delivery report to the subclass, one delivery
of an event at a time. An event no ledger knows yet is looked for again (:class:`Late`) every
:data:`LATE_POLL_S` for :data:`LATE_WINDOW_S`, at most :data:`LATE_MAX` at once, then counted
unmatched; it is spooled before it is answered (:mod:`bulk_mms.webhooks.spool`), so one
that a stop cut short is looked for again by the next receiver
(:meth:`BaseReceiver.replay_held`). A subclass says what a delivery report does
(``_delivery``) and what a look reads and matches (``_read_late``, ``_views``, ``_found``):
the receiver of one ledger (:mod:`bulk_mms.webhooks.receiver`), and of a job's dated ledgers
(:mod:`bulk_mms.webhooks.days`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import traceback
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bulk_mms.answers import as_message_id, parse_json, payload_message_id, status_stamp
from bulk_mms.clock import Clock, SystemClock, instant
from bulk_mms.config import Settings
from bulk_mms.errors import ConfigError, LedgerError
from bulk_mms.models import RecipientStatus
from bulk_mms.suppression import Suppressed
from bulk_mms.webhooks.events import EVENTS, Origin, origin, reports_in, short_field
from bulk_mms.webhooks.keywords import take_keywords
from bulk_mms.webhooks.signature import Unverified, verify
from bulk_mms.webhooks.spool import Held, Spool, SpoolFull

log = structlog.get_logger(__name__)

#: Largest body accepted; a messaging event is a few kilobytes.
MAX_EVENT_BODY = 256 * 1024

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
#: ledger's that beat its `sent` line, so Telnyx must deliver it again (3 tries at most, then
#: the failover URL; ``track`` still reads a status Telnyx gave up on), never a 2xx that drops
#: it unlooked for.
LATE_MAX = 10_000

_T = TypeVar("_T")


def write_failed(event_id: str, exc: ConfigError | LedgerError) -> None:
    """Log, in one line and without a traceback, that what an event says could not be written
    (its reports to the ledger, its keyword to the suppression list)."""
    log.error("webhook.write_failed", id=short_field(event_id), error=str(exc))


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
    #: Its line's token in the receiver's spool (:mod:`bulk_mms.webhooks.spool`), if it has one.
    held: str = ""
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
    spool: Spool | None


class BaseReceiver:
    """What every receiver does with a request before a ledger is involved: the aiohttp
    handler (:meth:`handle`: verify, parse, take a keyword onto the suppression list, one
    delivery of an event at a time), and the bounded look again (:meth:`look_later`) for
    what a ledger does not hold yet. A delivery report goes to :meth:`_delivery`; what the
    look again reads is :meth:`_read_late`'s, and what it does with an event :meth:`_found`'s."""

    def __init__(
        self,
        key: Ed25519PublicKey | None,
        *,
        clock: Clock | None = None,
        suppressed: Suppressed | None = None,
        settings: Settings | None = None,
        stop: asyncio.Event | None = None,
        spool: Spool | None = None,
    ) -> None:
        #: Set when the receiver is stopping: events still looked for again are given up.
        self.stop = stop
        #: Where an event looked for again is kept until it is settled, so that a stop before
        #: its `sent` line does not lose it (None: in memory only).
        self.spool = spool
        #: The account's suppression list, where inbound STOPs go (None: not kept).
        self.suppressed = suppressed
        #: The account's settings, as runs and ``track`` read delivery reports by them: the
        #: error table (``[errors]``: which codes say a member opted out, which send a member
        #: again), the carriers' reset, and the keywords that opt out and back in.
        self.settings = settings or Settings()
        #: The account's public key, which every request must be signed by (None: no request
        #: is taken, as none can be verified: a receiver that only applies its spool,
        #: :meth:`replay_held`, as ``track`` does).
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
        #: Places of :attr:`late_max` taken by events being held now (:meth:`look_later`).
        self._reserved = 0
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

    async def _found(self, late: Late) -> bool | None:
        """Record what a ledger, as its view stands (:meth:`_read_late`), now says is an
        event's: True when it is recorded whole, False when what is left is not known, None
        when a write failed (tried again at the next look)."""
        raise NotImplementedError

    def _seen(self, event_id: str) -> None:
        """Remember an event answered 200 though no ledger knew it: its redelivery is a
        duplicate."""
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
        if self.key is None:  # no request can be verified (a receiver of its spool alone)
            return self._reject(request, "no public key to verify it with", 401)
        try:
            verify(self.key, request.headers, raw, self.clock.wall())
        except Unverified as exc:
            return self._reject(request, exc.reason, exc.status)
        # read as an answer's body is: a number beyond a double (1e999) loses only itself
        body = parse_json(raw)
        data = body.get("data") if isinstance(body, dict) else None
        data = data if isinstance(data, dict) else {}
        event_id, event_type = data.get("id"), data.get("event_type")
        # the spec requires no field of an event: one without a payload reports nothing
        payload = data.get("payload")
        event_id = as_message_id(event_id)  # the spec's event id is a UUID
        if event_id is None or not isinstance(event_type, str):
            # not an event, its id is not an id (ids are UUIDs), or its type is not a word
            log.warning("webhook.malformed", remote=request.remote)
            return web.json_response({"error": "not a Telnyx event"}, status=400)
        if event_type == "message.received":
            now = self.clock.wall()
            texted = instant(status_stamp(data.get("occurred_at"), now))  # one far ahead: none
            try:
                suppressed, lifted = (
                    await self.suppressed.off_loop(
                        functools.partial(
                            take_keywords, self.suppressed, self.settings, payload, texted, now
                        )
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

    async def look_later(
        self,
        event_id: str,
        event_type: str,
        data: dict[str, Any],
        message_id: str,
        statuses: Sequence[RecipientStatus],
    ) -> str | None:
        """Look for an event's reports again (``statuses``: as read now, none recorded,
        :func:`reports_in`), the request answered: every :data:`LATE_POLL_S` for
        :attr:`late_window_s` (a webhook can beat the run's ``sent`` line), with every other
        such event (:meth:`_poll`); what matching needs is kept of it, not its body
        (:class:`Late`), and kept durably in the :attr:`spool` first, so a stop before its
        ``sent`` line does not lose it. None when it is looked for; else why not, and the
        caller answers 503 (:meth:`not_held`): :attr:`late_max` are already, those being
        held counted (:data:`LATE_MAX`), the receiver is stopping (no look would follow but
        the last, a moment later), or the spool cannot take it (a full disk:
        ``webhook.held_failed``)."""
        if self._stopping():
            log.warning("webhook.late_refused", id=short_field(event_id), reason="stopping")
            return "stopping"
        if len(self._late) + self._reserved >= self.late_max:
            log.warning("webhook.late_full", id=short_field(event_id), pending=len(self._late))
            return "too many events are being looked for now"
        # without a spool, a token nothing settles (:meth:`_settle`)
        held = Held(self.spool.token() if self.spool else "", event_id, event_type, data)
        if self.spool is not None:
            hold = functools.partial(self.spool.hold, held, self.clock.wall())
            self._reserved += 1  # its place, while its hold is under way
            try:
                await self._finished(asyncio.to_thread(hold))
            except (OSError, SpoolFull) as exc:
                error = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                log.error(  # noqa: TRY400 - one line, no traceback
                    "webhook.held_failed", id=short_field(event_id), error=error
                )
                return "the held events cannot be written now"
            finally:
                self._reserved -= 1
        self._keep(held, message_id, statuses)
        self._start_looking()
        return None

    def _keep(self, held: Held, message_id: str, statuses: Sequence[RecipientStatus]) -> None:
        """Look for an event again from now for :attr:`late_window_s` (:meth:`look_later`)."""
        payload = held.data.get("payload")
        listed = isinstance(payload, dict) and payload.get("cc")
        now = self.clock.wall()
        self._late[next(self._late_numbers)] = Late(
            held.event_id,
            message_id,
            *origin(held.data, payload, now),
            statuses=tuple(statuses),
            as_group=reports_in(payload, held.event_type, message_id, now=now) if listed else None,
            deadline=self.clock.monotonic() + self.late_window_s,
            held=held.token,
        )

    def _start_looking(self) -> None:
        """Have the looks again (:meth:`_poll`) go on while there are events to look for."""
        if self._late and (self._poller is None or self._poller.done()):
            self._poller = asyncio.create_task(self._poll())
            self._poller.add_done_callback(self._poll_ended)

    async def replay_held(self, *, look_on: bool = True) -> None:
        """Look again for the events of the :attr:`spool` (answered by a receiver before this
        one, which stopped before it settled them: :meth:`Spool.replay`), each for a whole
        :attr:`late_window_s` from now, the first look at once: those whose ``sent`` line
        has landed since are recorded (and settled) before the receiver takes a request, and a
        redelivery of any is a duplicate. At most :attr:`late_max` are looked for; the rest stay
        in the spool, unsettled, for a receiver after this one (``webhook.held_left``). A spool
        that cannot be read is logged, and the receiver serves all the same. Without
        ``look_on`` only that first look is taken: the events it does not find stay held,
        neither looked for again nor counted unmatched (``track``'s, for a receiver that is
        not running)."""
        if self.spool is None:
            return
        try:
            found = await asyncio.to_thread(self.spool.replay, self.clock.wall())
        except OSError as exc:
            log.error(  # noqa: TRY400 - one line, no traceback
                "webhook.held_unreadable", spool=str(self.spool.path), error=exc.strerror
            )
            return
        room = max(0, self.late_max - len(self._late))
        if left := found[room:]:
            log.warning("webhook.held_left", left=len(left), late_max=self.late_max)
        for held in found[:room]:
            payload = held.data.get("payload")
            message_id = payload_message_id(payload)
            if message_id is None:  # not one a receiver held: each names a message
                self.spool.settle(held.token)
                continue
            self._keep(
                held, message_id, reports_in(payload, held.event_type, now=self.clock.wall())
            )
            self._seen(held.event_id)
        if self._late:
            await self._look(self._stopping())
        if found:
            log.info("webhook.held_replayed", held=len(found), pending=len(self._late))
        if not look_on:
            self._late.clear()  # their spool's lines stay: the next receiver's to look for
        await self._compact()
        self._start_looking()

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
        after its request matched it against the views as they stood). An event is settled
        (:meth:`_settle`) once recorded, or once a look at or after its deadline read the
        ledgers and still did not find it; one counted unmatched otherwise (a read or a write
        that failed, a fault, a stop) stays in the spool, the next receiver's to look for."""
        now = self.clock.monotonic()
        read = True
        try:
            await self._read_late()
        except LedgerError as exc:
            # the events are looked for in what was read; the next look reads again
            log.warning("webhook.late_read_failed", error=str(exc), pending=len(self._late))
            read = False
        views, before = self._views(), self._matched_on
        self._matched_on = views
        for number, late in list(self._late.items()):
            try:
                found = await self._found(late) if views != before else False
            except Exception as exc:  # one event's fault must not stop the others
                log.error("webhook.late_failed", **fault(exc), id=late.event_id)  # noqa: TRY400
                del self._late[number]
                self._unmatched(late.event_id, late.message_id, late.left())
                continue
            if found:
                del self._late[number]
                self._settle(late)
            elif now >= late.deadline or last:
                del self._late[number]
                if read and found is False and now >= late.deadline:
                    self._settle(late)  # looked for its whole window, in ledgers read whole
                self._unmatched(late.event_id, late.message_id, late.left())
        await self._compact()

    def _settle(self, late: Late) -> None:
        """An event looked for again is done with: out of the spool at its next compaction."""
        if self.spool is not None:
            self.spool.settle(late.held)

    async def _compact(self) -> None:
        """Take the events settled out of the spool, once they are at least as many as those
        looked for (:meth:`Spool.wants_compaction`); one that fails is logged, and tried
        again after the next look."""
        if self.spool is None or not self.spool.wants_compaction(len(self._late)):
            return
        try:
            await self._finished(asyncio.to_thread(self.spool.compact))
        except OSError as exc:
            log.warning("webhook.held_compaction_failed", error=exc.strerror)

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

    def not_held(self, why: str) -> web.Response:
        """The answer to an event that no ledger knows and that :meth:`look_later` refused,
        saying ``why``: 503, so Telnyx delivers it again (3 tries at most, then the failover
        URL; past those the report is ``track``'s to fetch)."""
        return web.json_response({"error": why}, status=503)

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
