"""``bulk-mms webhooks``: receive Telnyx messaging webhooks into a ledger as ``status`` lines.

Every request is checked before its body is even parsed: ``telnyx-signature-ed25519`` must be an
Ed25519 signature, by the account's public key (``TELNYX_PUBLIC_KEY``, base64), over
``"{telnyx-timestamp}|{raw body}"``, and the timestamp must be within :data:`TOLERANCE_S` of now
(an old, replayed request fails). A request that fails gets 401 and a ``webhook.rejected`` log
line; nothing of it is written.

A verified ``message.sent`` or ``message.finalized`` event is matched to a sent group of the
ledger by its message id alone (:attr:`LedgerView.by_message_id`): the group's own id (the
send's answer) matches the group's members it lists; a recipient's own id (learnt from a GET
by ``track``, or an earlier event) matches that recipient only, and is learnt only while the
recipient has none. A number is never enough: the same number may be texted by another job or
app from the same account. Each matched recipient
whose report is news (:meth:`LedgerView.apply_status`: a status that supersedes, or a final
cost) gets a durable ``status`` event before the 200 goes back, which takes milliseconds (group
commit). ``message.finalized`` carries the recipient's final cost, which is recorded with it;
the other events' costs are estimates and are not. A report is read by the settings' error
table as a run's and ``track``'s are (:func:`~bulk_mms.policy.delivery_action`): a member its
blocked sender or a carrier's cap failed gets a ``moved`` event too, so a rerun sends it again.
Repeats (the same event id) and stale
reports (a ``message.sent`` after ``message.finalized``) are acknowledged and not recorded; a
repeat that comes while the first delivery is still writing waits for its outcome.

An event whose message id the ledger does not know is acknowledged, looked for again for 30 s
(a webhook can beat the run's own ``sent`` line: it is then read again as the ledger stands, so
the members a group's own message lists under ``cc`` are recorded too), then counted
(:attr:`WebhookReceiver.unmatched`, ``webhook.unmatched`` in the log) and dropped, never
written against anyone: whatever arrives, the only file written is the ledger, and only with
recipients of messages it sent.

Inbound ``message.received`` events keep the suppression list as Telnyx keeps its block
rules: a message that is only STOP, STOPALL, STOP ALL, UNSUBSCRIBE, CANCEL, END or QUIT (case
and surrounding spaces aside), or a keyword the settings add (``[suppression]
opt_out_words``: a messaging profile's own), adds the sender; START or UNSTOP (or
``opt_in_words``) lift a suppression that a STOP added (never one added by hand); HELP, or a
keyword among other words, changes nothing.
Keywords are taken in the order they were texted (``occurred_at``), as the suppression list
records it (so across restarts, and between receivers sharing the list's file): a late one
changes nothing. A keyword the list cannot take (or a report the ledger cannot) gets 503, so
Telnyx delivers it again.

A job whose ledger is a new one each day (``{date}``) has one receiver for all its days
(:class:`JobReceiver`, ``webhooks --job``): each of its open ledgers matches and records as
above, an event in the ledger that sent its message, and a keyword is taken once.

Nothing of a request's headers is logged, not even by aiohttp's server (:func:`server_log`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import functools
import logging
import math
import re
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Container,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Any, TypedDict, Unpack

import msgspec.structs
import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from bulk_mms.answers import address, as_message_id, parse_statuses, status_stamp
from bulk_mms.clock import CLOCK_SKEW_S, Clock, SystemClock, instant, iso
from bulk_mms.codes import keyword
from bulk_mms.config import JobConfig, Settings
from bulk_mms.errors import ConfigError, LedgerError
from bulk_mms.ledger import LedgerStore, LedgerView, Location, keep_database_time, open_store
from bulk_mms.ledger.events import status_event
from bulk_mms.ledger.fold import SENT
from bulk_mms.ledger.store import display, exists, is_database
from bulk_mms.models import RecipientStatus
from bulk_mms.policy import delivery_action, opted_out_in, report_action
from bulk_mms.suppression import (
    Suppressed,
    added_by_stop,
    listable,
    suppress_opted_out,
    texted_at,
)

log = structlog.get_logger("bulk_mms.webhooks")

#: An event under a recipient's own id not yet learnt is taken for this ledger's only within
#: this long after the group was sent (Telnyx keeps trying for up to 72 hours).
LEARN_WINDOW_S = 72 * 3600.0

PUBLIC_KEY_ENV = "TELNYX_PUBLIC_KEY"
SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
#: How far a request's timestamp may be from now, in seconds (Telnyx's documented tolerance).
TOLERANCE_S = 300
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
#: A webhook can arrive before the run has written its group's `sent` line: its recipients are
#: looked for again every LATE_POLL_S seconds for LATE_WINDOW_S seconds.
LATE_WINDOW_S = 30.0
LATE_POLL_S = 0.5


def load_public_key(value: str | None) -> Ed25519PublicKey:
    """The account's Ed25519 public key from ``TELNYX_PUBLIC_KEY`` (base64, or PEM).

    Raises:
        ConfigError: missing, or not an Ed25519 public key.
    """
    if not value or not value.strip():
        raise ConfigError(PUBLIC_KEY_ENV, "is not set: export the public key from the portal")
    text = value.strip()
    bad = ConfigError(PUBLIC_KEY_ENV, "is not an Ed25519 public key (base64 of 32 bytes, or PEM)")
    try:
        if text.startswith("-----BEGIN"):
            key = load_pem_public_key(text.encode())
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise bad from None
    if not isinstance(key, Ed25519PublicKey):
        raise bad
    return key


class Unverified(Exception):
    """Why a request fails :func:`verify`, and the status it gets: 400 for a header that is
    malformed, 401 for one that is well formed but missing, stale or not by the key."""

    def __init__(self, reason: str, status: int) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)


#: A timestamp is Unix seconds: digits only, and no more than 12 of them (the year 33658). A
#: longer one would only be a way to make the arithmetic below overflow.
_STAMP = re.compile(r"[0-9]{1,12}")  # whole (fullmatch), as _SIGNATURE
#: An Ed25519 signature is 64 bytes: 88 characters of base64.
_SIGNATURE = re.compile(r"[A-Za-z0-9+/]{86}==")


def verify(key: Ed25519PublicKey, headers: Mapping[str, str], raw: bytes, now: float) -> None:
    """Check a request's signature and age.

    Raises:
        Unverified: the reason it fails, with its status (400 or 401).
    """
    signature, stamp = headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER)
    if not signature or not stamp:
        raise Unverified("missing signature headers", 401)
    if not _STAMP.fullmatch(stamp):
        raise Unverified("malformed timestamp", 400)
    if not _SIGNATURE.fullmatch(signature):
        raise Unverified("malformed signature", 400)
    age = abs(now - int(stamp))
    if age > TOLERANCE_S:
        raise Unverified(f"timestamp {age:.0f} s away from now (tolerance {TOLERANCE_S} s)", 401)
    try:
        key.verify(base64.b64decode(signature, validate=True), stamp.encode() + b"|" + raw)
    except (InvalidSignature, binascii.Error, ValueError):
        raise Unverified("signature does not verify", 401) from None


def _write_failed(event_id: str, exc: ConfigError | LedgerError) -> None:
    """Log, in one line and without a traceback, that what an event says could not be written
    (its reports to the ledger, its keyword to the suppression list)."""
    log.error("webhook.write_failed", id=_short(event_id), error=str(exc))


def _short(value: object) -> str | None:
    return value[:_FIELD_MAX] if isinstance(value, str) else None


class ReceiverOptions(TypedDict, total=False):
    """What every receiver takes beside its key and its ledgers (see :class:`_Receiver`)."""

    clock: Clock | None
    suppressed: Suppressed | None
    settings: Settings | None
    stop: asyncio.Event | None


class _Receiver:
    """What every receiver does with a request before a ledger is involved: the aiohttp
    handler (:meth:`handle`: verify, parse, take a keyword onto the suppression list, one
    delivery of an event at a time), and the bounded look again (:meth:`_look_again`) for
    what a ledger does not hold yet. A delivery report goes to :meth:`_delivery`."""

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
        self._later: set[asyncio.Task[None]] = set()
        #: Events being handled now, each with what is set once it is done (:meth:`_alone`).
        self._busy: dict[str, asyncio.Future[None]] = {}

    async def _delivery(
        self, event_id: str, event_type: str, data: dict[str, Any], payload: object
    ) -> web.Response:
        """The answer to a ``message.sent`` or ``message.finalized`` (:meth:`handle`)."""
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
            payload = data["payload"]
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
                _write_failed(event_id, exc)
                return web.json_response(
                    {"error": "the suppression list cannot be written now"}, status=503
                )
            return web.json_response({"ok": True, "suppressed": suppressed, "lifted": lifted})
        if event_type not in EVENTS:
            log.info("webhook.ignored", event_type=_short(event_type), id=_short(event_id))
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
            id=_short(event_id),
            message_id=message_id,
            recipients=len(unknown),
            unmatched=self.unmatched,
        )

    async def _look_again(self, look: Callable[[], Awaitable[bool]]) -> bool:
        """Call ``look`` every :data:`LATE_POLL_S` seconds until it says it found all it
        looks for, for :attr:`late_window_s` at most (a webhook can beat the run's ``sent``
        line); a receiver stopping takes one last look at once. Whether ``look`` found all."""
        deadline = self.clock.monotonic() + self.late_window_s
        last = False
        while self.clock.monotonic() < deadline and not last:
            await self.clock.sleep(LATE_POLL_S)  # a stopping clock's returns at once
            last = self._stopping()  # this look is the last
            if await look():
                return True
        return False

    def _in_background(self, later: Coroutine[Any, Any, None]) -> None:
        """Run ``later`` (a look again, the request answered already) until it is done, or
        the receiver closes (:meth:`settle`, :meth:`close`)."""
        task = asyncio.create_task(later)
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    async def settle(self) -> None:
        """Wait until every event still being looked for is matched or counted unmatched."""
        while self._later:
            await asyncio.gather(*self._later, return_exceptions=True)

    async def close(self) -> None:
        """Stop waiting for late matches."""
        for task in list(self._later):
            task.cancel()
        await asyncio.gather(*self._later, return_exceptions=True)

    def _reject(self, request: web.Request, reason: str, status: int) -> web.Response:
        self.rejected += 1
        log.warning("webhook.rejected", reason=reason, remote=request.remote, status=status)
        return web.json_response(
            {"error": "unauthorized" if status == 401 else reason}, status=status
        )


class WebhookReceiver(_Receiver):
    """The receiver of one ledger; keeps the ledger's view current as events come in."""

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
            log.debug("webhook.duplicate", id=_short(event_id))
            return web.json_response({"ok": True, "duplicate": True})
        occurred_at = status_stamp(data.get("occurred_at"))
        # an id that is not one (too long, a line end, an escape) names no message: the event
        # is never matched by it, nor learnt as a recipient's own id
        message_id = as_message_id(payload.get("id")) if isinstance(payload, dict) else None
        sent_from = address(payload.get("from")) if isinstance(payload, dict) else None
        try:
            self.ready()
            statuses = self._statuses(payload, message_id, event_type)
            matched, unknown = self.match(statuses, message_id, sent_from, occurred_at)
            recorded = await self.record(event_id, matched, message_id, occurred_at)
        except LedgerError as exc:
            # Telnyx redelivers on a 5xx: the event is recorded once the ledger takes writes
            _write_failed(event_id, exc)
            return web.json_response({"error": "the ledger cannot be written now"}, status=503)
        self.view.webhook_ids.add(event_id)
        if unknown and message_id is None:
            self._unmatched(event_id, message_id, unknown)
            unknown = []
        elif unknown:
            # the run may not have written this group's `sent` line yet (a webhook can beat it)
            later = self.match_later(
                event_id,
                unknown,
                message_id,
                occurred_at,
                sent_from,
                reread=functools.partial(self._statuses, payload, message_id, event_type),
                done={st.phone for _, st in matched},
            )
            self._in_background(later)
        log.info("webhook.received", event_type=event_type, id=event_id, recorded=recorded)
        return web.json_response({"ok": True, "recorded": recorded, "pending": len(unknown)})

    def _statuses(
        self, payload: object, message_id: str | None, event_type: str
    ) -> tuple[RecipientStatus, ...]:
        """The reports an event's payload carries, as the ledger stands now: ``cc`` is read
        only from a group's own message (a recipient's lists the others), so an event that
        beat its group's ``sent`` line is read again once the line lands; the cost only from
        ``message.finalized`` (the others' is an estimate)."""
        statuses = parse_statuses(payload, self._own_group_id(message_id))
        if event_type != FINALIZED:
            statuses = tuple(msgspec.structs.replace(st, cost=None) for st in statuses)
        return statuses

    def match(
        self,
        statuses: Sequence[RecipientStatus],
        message_id: str | None,
        sent_from: str | None = None,
        occurred_at: str | None = None,
    ) -> tuple[list[tuple[str, RecipientStatus]], list[RecipientStatus]]:
        """Split reports into those for recipients of the message ``message_id`` names (with
        their group) and the rest: all of them when the id is not one this ledger knows.

        The group's own id matches every member it lists; a recipient's own id matches that
        recipient alone. A listed number that is not such a recipient is ignored (logged):
        it is never matched by number to some other group. A recipient's own id the ledger
        has not learnt yet (group MMS sends one event per recipient, under an id the send's
        answer does not give) is learnt from an event about that one recipient
        (:meth:`_learn`).
        """
        if not statuses:
            return [], []
        gid = self._group_for(message_id)
        if gid is None and message_id is not None:
            self.refresh()  # sent since this server last read the ledger?
            gid = self._group_for(message_id) or self._learn(
                statuses, message_id, sent_from, occurred_at
            )
            if gid is not None and self._group_for(message_id) is None:
                return [(gid, statuses[0])], []
        if gid is None:
            return [], list(statuses)
        rec = self.view.groups[gid]
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
                    self.ready()
            raise
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

    def ready(self) -> None:
        """Have a store that takes writes: open the ledger anew, and read it into a fresh view,
        if the current store's write failed (a full disk freed since, say).

        Raises:
            LedgerError: the store failed and the ledger cannot be opened again (yet).
        """
        failure = self.store.failed
        if failure is None:
            return
        if self.reopen is None:
            raise failure
        store = self.reopen()
        try:
            view = store.fold()
        except BaseException:
            store.close_sync()
            raise
        self.store.close_sync()
        store.on_kept_back(view.kept_back)
        self.store, self.view = store, view
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

    async def match_later(
        self,
        event_id: str,
        unknown: list[RecipientStatus],
        message_id: str | None,
        occurred_at: str | None,
        sent_from: str | None = None,
        *,
        reread: Callable[[], Sequence[RecipientStatus]] | None = None,
        done: Iterable[str] = (),
    ) -> None:
        """Look for reports' recipients again for a while as the ledger grows
        (:meth:`_look_again`); then give up. ``reread``: the event's reports read again as
        the ledger stands (its group's own message, once the group's ``sent`` line lands,
        reports members under ``cc`` too, which were not read before); those matched already
        (``done``) are not again."""
        matched_before = set(done)
        left = unknown

        async def look() -> bool:
            nonlocal left
            try:
                self.ready()
                if reread is not None:
                    left = [st for st in reread() if st.phone not in matched_before]
                matched, rest = self.match(left, message_id, sent_from, occurred_at)
                await self.record(event_id, matched, message_id, occurred_at)
            except LedgerError as exc:
                # answered already, so nobody redelivers: look for them again at the next poll
                _write_failed(event_id, exc)
                return False
            matched_before.update(st.phone for _, st in matched)
            left = rest
            return not left

        if unknown and not await self._look_again(look):
            self._unmatched(event_id, message_id, left)

    def refresh(self) -> None:
        """Take in what has been written since (a run may still be sending)."""
        for ev in self.store.new_events():
            self.view.apply(ev)

    def _learn(
        self,
        statuses: Sequence[RecipientStatus],
        message_id: str,
        sent_from: str | None,
        occurred_at: str | None,
    ) -> str | None:
        """The sent group an event under an unknown id is about, when the event is about one
        recipient, that recipient is a member of a group this ledger sent from the event's
        sender, and the event comes after that send and within ``LEARN_WINDOW_S`` of it, and
        the recipient has no own id yet: the event's id is then that recipient's own
        (recorded with its status, so later events match by it). None otherwise: the event is
        not this ledger's (one under another id for a recipient whose own id is known is
        another message to the same number, another job's from the same sender)."""
        if len(statuses) != 1 or sent_from is None:
            return None
        phone = statuses[0].phone
        gid = self.view.group_of(phone)
        rec = self.view.groups.get(gid) if gid is not None else None
        if rec is None or rec.sender != sent_from or rec.outcome != SENT:
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
        answer's, not one recipient's), reading what was written since if need be; else
        None."""
        gid = self._group_for(message_id)
        if gid is None and message_id is not None:
            self.refresh()
            gid = self._group_for(message_id)
        rec = self.view.groups.get(gid) if gid is not None else None
        if rec is None or self.view.group_message_id(rec) != message_id:
            return None
        return message_id

    def knows(self, message_id: str) -> bool:
        """Whether ``message_id`` is of a group this ledger sent (the group's own, or a
        recipient's learnt), reading what was written since if need be."""
        if self._group_for(message_id) is None:
            self.refresh()
        return self._group_for(message_id) is not None

    def _group_for(self, message_id: str | None) -> str | None:
        """The sent group a message id is of (its own, or one of its recipients'), if any."""
        if message_id is None:
            return None
        gid = self.view.by_message_id.get(message_id)
        rec = self.view.groups.get(gid) if gid is not None else None
        return gid if rec is not None and rec.outcome == SENT else None


#: How many dates before today a job's dated ledgers stay open (:class:`JobReceiver`): an
#: event is taken for a send within :data:`LEARN_WINDOW_S` of it, so a message sent just
#: before midnight is reported on until that many dates after its send's; and a run after
#: midnight may send into the date before's ledger, to finish its campaign
#: (:func:`~bulk_mms.prepare.continues_earlier`): one date more. Older messages' reports are
#: ``track``'s to fetch (``GET /messages/{id}`` serves a message for 10 days).
DAYS_BACK = math.ceil(LEARN_WINDOW_S / 86_400) + 1


class JobReceiver(_Receiver):
    """The receiver of a job whose ledger is a new one each day (``{date}``): it serves the
    job's ledgers of today and the :data:`DAYS_BACK` dates before (dates in the job's time
    zone) that exist, each through a :class:`WebhookReceiver` of its own (:attr:`ledgers`),
    which matches and records an event as it does alone. An event goes to the ledger that
    sent its message (:meth:`_sender`). One that no open ledger knows makes it look for
    ledgers begun since (today's, once the day's run has begun it; a new date's after
    midnight), then look again as a single ledger does (:meth:`_look_again`) before it is
    counted unmatched; while one of the job's ledgers exists but cannot be opened, it may be
    the one that sent it, and gets 503 (Telnyx redelivers it). A keyword reaches the
    suppression list once, whatever the ledgers. A ledger past :data:`DAYS_BACK` is closed."""

    def __init__(
        self,
        ledger_on: Callable[[dt.date], Location],
        zone: dt.tzinfo,
        key: Ed25519PublicKey,
        **options: Unpack[ReceiverOptions],
    ) -> None:
        super().__init__(key, **options)
        #: The job's ledger for a date (:meth:`~bulk_mms.config.job.JobConfig.ledger_on`).
        self.ledger_on = ledger_on
        self.zone = zone
        #: The open ledgers' receivers by location, each with the date it is the ledger of.
        self.ledgers: dict[str, tuple[dt.date, WebhookReceiver]] = {}
        self._today: dt.date | None = None
        #: When :meth:`roll` last looked for ledgers begun since (monotonic).
        self._looked = -math.inf
        #: What the ledgers closed had recorded.
        self._recorded_before = 0
        #: Events answered that no open ledger knew, with when (monotonic), oldest first: a
        #: redelivery is a duplicate. Kept for :data:`LEARN_WINDOW_S` (Telnyx's retries are
        #: over by then), not for the receiver's life: most may be other apps' messages.
        self._answered: dict[str, float] = {}
        #: The job's ledgers that exist but could not be opened at the last :meth:`roll`
        #: (logged), each with why: any of them may have sent an event's message.
        self._unavailable: dict[str, LedgerError] = {}

    def __repr__(self) -> str:
        return (
            f"<JobReceiver {len(self.ledgers)} ledgers recorded={self.recorded} "
            f"unmatched={self.unmatched}>"
        )

    @property
    def recorded(self) -> int:
        """Reports recorded, into every ledger served."""
        return self._recorded_before + sum(r.recorded for _, r in self.ledgers.values())

    def today(self) -> dt.date:
        """Today's date in the job's time zone, by the receiver's clock."""
        return dt.datetime.fromtimestamp(self.clock.wall(), self.zone).date()

    async def roll(self, *, look: bool = False) -> None:
        """Have open the job's ledgers of today and the :data:`DAYS_BACK` dates before that
        exist, and no others: done when the date has changed since, and with ``look`` to
        find ledgers begun since (at most once every :data:`LATE_POLL_S`)."""
        today, now = self.today(), self.clock.monotonic()
        look = look and now - self._looked >= LATE_POLL_S
        if today == self._today and not look:
            return
        self._today = today
        if look:
            self._looked = now
        wanted: dict[str, tuple[dt.date, Location]] = {}
        for back in range(DAYS_BACK + 1):
            day = today - dt.timedelta(days=back)
            where = self.ledger_on(day)
            wanted.setdefault(str(where), (day, where))  # one ledger for every day: its newest
        # what this roll closes leaves the ledgers before its first wait: another request's
        # roll meanwhile neither closes it again nor hands it an event
        past = [self.ledgers.pop(name)[1] for name in list(self.ledgers) if name not in wanted]
        self._unavailable = {}
        for name, (day, where) in wanted.items():
            if name in self.ledgers:
                self.ledgers[name] = (day, self.ledgers[name][1])
                continue
            try:
                receiver = self._open(where)
            except LedgerError as exc:
                log.warning("webhooks.ledger_unavailable", ledger=display(where), error=str(exc))
                self._unavailable[name] = exc
                continue
            if receiver is not None:
                self.ledgers[name] = (day, receiver)
        for receiver in past:
            await self._close(receiver)

    def _open(self, where: Location) -> WebhookReceiver | None:
        """A receiver of the ledger at ``where``; None while there is none (its day's run
        has not begun it), or its file is empty (a run created it and wrote nothing yet, or
        stopped there: nothing was sent with it).

        Raises:
            LedgerError: it cannot be told whether it exists, or it cannot be opened now.
        """
        if not exists(where):
            return None
        with contextlib.suppress(OSError):
            if isinstance(where, Path) and where.stat().st_size == 0:
                return None
        store = open_store(where, "append")
        try:
            view = store.fold()
        except BaseException:
            store.close_sync()
            raise
        receiver = WebhookReceiver(
            view,
            store,
            self.key,
            clock=self.clock,
            suppressed=self.suppressed,
            reopen=functools.partial(open_store, where, "append"),
            settings=self.settings,
            stop=self.stop,
        )
        receiver.late_window_s = self.late_window_s
        log.info("webhooks.ledger_opened", ledger=store.name, groups=len(view.groups))
        return receiver

    async def _close(self, receiver: WebhookReceiver) -> None:
        """Close a ledger's receiver taken out of :attr:`ledgers`, keeping its count."""
        await receiver.close()
        await receiver.store.close()
        self._recorded_before += receiver.recorded
        log.info("webhooks.ledger_closed", ledger=receiver.store.name)

    def _sender(
        self, event_type: str, data: dict[str, Any], payload: object
    ) -> WebhookReceiver | None:
        """The open ledger that sent the message an event is about: the one that knows its
        id (a group's own, or a recipient's learnt) if any; else the newest whose recipient
        the event's id is learnt for (:meth:`WebhookReceiver.match`), as a recipient of an
        older ledger has long learnt its id from the events that followed that send. None:
        no open ledger sent it.

        Raises:
            LedgerError: a ledger cannot be read.
        """
        message_id = as_message_id(payload.get("id")) if isinstance(payload, dict) else None
        if message_id is None:
            return None
        newest = [r for _, r in sorted(self.ledgers.values(), key=lambda d: d[0], reverse=True)]
        for receiver in newest:
            receiver.ready()
            if receiver.knows(message_id):
                return receiver
        sent_from = address(payload.get("from")) if isinstance(payload, dict) else None
        occurred_at = status_stamp(data.get("occurred_at"))
        for receiver in newest:
            statuses = receiver._statuses(payload, message_id, event_type)
            if receiver.match(statuses, message_id, sent_from, occurred_at)[0]:
                return receiver
        return None

    async def _delivery(
        self, event_id: str, event_type: str, data: dict[str, Any], payload: object
    ) -> web.Response:
        """The answer to a ``message.sent`` or ``message.finalized``: the ledger that sent its
        message records it (:meth:`WebhookReceiver._delivery`); none yet, it is looked for
        again (:meth:`_find_later`)."""
        if self._answered_before(event_id):
            log.debug("webhook.duplicate", id=_short(event_id))
            return web.json_response({"ok": True, "duplicate": True})
        try:
            await self.roll()
            ledger = self._sender(event_type, data, payload)
            if ledger is None:
                await self.roll(look=True)  # begun since: today's, once its run began
                ledger = self._sender(event_type, data, payload)
            if ledger is None and self._unavailable:
                # a ledger not open may have sent it: no 2xx, so Telnyx redelivers it
                raise next(iter(self._unavailable.values()))
        except LedgerError as exc:
            _write_failed(event_id, exc)
            return web.json_response({"error": "the ledger cannot be read now"}, status=503)
        if ledger is not None:
            return await ledger._delivery(event_id, event_type, data, payload)
        self._answered[event_id] = self.clock.monotonic()
        message_id = as_message_id(payload.get("id")) if isinstance(payload, dict) else None
        reports = parse_statuses(payload)
        if message_id is None:
            self._unmatched(event_id, message_id, reports)
        else:
            self._in_background(self._find_later(event_id, event_type, data, payload))
        log.info("webhook.received", event_type=event_type, id=event_id, recorded=0)
        pending = len(reports) if message_id is not None else 0
        return web.json_response({"ok": True, "recorded": 0, "pending": pending})

    def _answered_before(self, event_id: str) -> bool:
        """Whether ``event_id`` was answered though no open ledger knew it, within
        :data:`LEARN_WINDOW_S`; those answered before that are forgotten."""
        horizon = self.clock.monotonic() - LEARN_WINDOW_S
        answered = self._answered
        while answered and answered[oldest := next(iter(answered))] < horizon:
            del answered[oldest]
        return event_id in answered

    async def _find_later(
        self, event_id: str, event_type: str, data: dict[str, Any], payload: object
    ) -> None:
        """Look again for the ledger that sent an event's message, among those begun since
        too (:meth:`_look_again`), and have it record the event; else count it unmatched."""

        async def look() -> bool:
            try:
                await self.roll(look=True)
                ledger = self._sender(event_type, data, payload)
            except LedgerError as exc:
                _write_failed(event_id, exc)
                return False
            if ledger is None:
                return False
            answer = await ledger._delivery(event_id, event_type, data, payload)
            return answer.status < 500  # a write that failed: the next look tries again

        if not await self._look_again(look):
            message_id = as_message_id(payload.get("id")) if isinstance(payload, dict) else None
            self._unmatched(event_id, message_id, parse_statuses(payload))

    async def settle(self) -> None:
        """Wait until every event still being looked for, here or by a ledger, is recorded
        or counted unmatched."""
        await super().settle()
        for _, receiver in list(self.ledgers.values()):
            await receiver.settle()

    async def close(self) -> None:
        """Stop waiting for late matches, and close every ledger."""
        await super().close()
        while self.ledgers:
            await self._close(self.ledgers.popitem()[1][1])


class _ServerLog(logging.Filter):
    """aiohttp's server log, for the receiver: each line it would write becomes one of ours.
    A request aiohttp could not parse (:class:`~aiohttp.http_exceptions.HttpProcessingError`)
    is one ``webhook.bad_request`` line with its status and kind, never its text, which
    quotes the offending header line (an ``Authorization`` a proxy added, say), nor a
    traceback; a fault of this receiver keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            bad = log.warning if record.levelno >= logging.WARNING else log.debug
            bad("webhook.bad_request", status=exc.code, error=type(exc).__name__)
        elif record.levelno >= logging.WARNING:
            log.error("webhook.failed", detail=record.getMessage(), exc_info=record.exc_info)
        return False


def server_log() -> logging.Logger:
    """The logger the receiver's HTTP server writes to (:class:`_ServerLog`); it reaches no
    handler of the logging module."""
    logger = logging.Logger("bulk_mms.webhooks.http")
    logger.addFilter(_ServerLog())
    return logger


async def serve_webhooks(
    target: Location | JobConfig,
    host: str,
    port: int,
    key: Ed25519PublicKey,
    stop: asyncio.Event,
    *,
    started: Callable[[str], None] | None = None,
    suppressed: Suppressed | None = None,
    settings: Settings | None = None,
) -> WebhookReceiver | JobReceiver:
    """Listen on ``host:port`` until ``stop`` is set; return the receiver (for its counts).
    ``target``: one ledger (:class:`WebhookReceiver`), or a job whose ledger is a new one each
    day (:class:`JobReceiver`, on the job's :meth:`~bulk_mms.config.job.JobConfig.ledger_on`
    in its time zone: none of its ledgers need exist yet). ``settings``: the account's
    (:attr:`WebhookReceiver.settings`).

    Raises:
        LedgerError: the ledger is missing, empty or cannot be written; a job's ledgers are
            a database's that cannot be reached.
        ConfigError: the address cannot be listened on.
    """
    clock = SystemClock(stop)
    where = target.where if isinstance(target, JobConfig) else target
    if is_database(where):  # a database's: its time, as the job's runs and track keep it
        await keep_database_time(clock, str(where))
    receiver: WebhookReceiver | JobReceiver
    if isinstance(target, JobConfig):
        receiver = JobReceiver(
            target.ledger_on,
            target.zone,
            key,
            clock=clock,
            suppressed=suppressed,
            settings=settings,
            stop=stop,
        )
    else:
        store = open_store(target, "append")
        receiver = WebhookReceiver(
            store.fold(),
            store,
            key,
            clock=clock,
            suppressed=suppressed,
            reopen=lambda: open_store(target, "append"),
            settings=settings,
            stop=stop,
        )
    try:
        if isinstance(receiver, JobReceiver):
            await receiver.roll()
            fields: dict[str, object] = {
                "ledger": display(where),
                "ledgers": [r.store.name for _, r in receiver.ledgers.values()],
            }
        else:
            fields = {"ledger": receiver.store.name, "groups": len(receiver.view.groups)}
        await _listen(receiver, host, port, stop, started, **fields)
    finally:
        await receiver.close()
        if isinstance(receiver, WebhookReceiver):
            await receiver.store.close()
    log.info(
        "webhooks.stopped",
        recorded=receiver.recorded,
        rejected=receiver.rejected,
        unmatched=receiver.unmatched,
    )
    return receiver


async def _listen(
    receiver: _Receiver,
    host: str,
    port: int,
    stop: asyncio.Event,
    started: Callable[[str], None] | None,
    **fields: object,
) -> None:
    """Serve ``receiver`` on ``host:port`` until ``stop`` is set (``fields``: what the
    ``webhooks.listening`` line says of its ledgers).

    Raises:
        ConfigError: the address cannot be listened on.
    """
    runner = web.AppRunner(
        receiver.app(), access_log=None, handle_signals=False, logger=server_log()
    )
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError(
                "--listen", f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        bound = runner.addresses[0]
        address = f"{bound[0]}:{bound[1]}"
        log.info("webhooks.listening", address=address, **fields)
        if started is not None:
            started(address)
        await stop.wait()
    finally:
        await runner.cleanup()
