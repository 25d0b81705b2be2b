"""The receiver of a job whose ledger is a new one each day (:class:`JobReceiver`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Unpack

import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bulk_mms.answers import parse_statuses, payload_message_id
from bulk_mms.errors import LedgerError
from bulk_mms.ledger import Location, open_store
from bulk_mms.ledger.store import display, exists
from bulk_mms.models import RecipientStatus
from bulk_mms.webhooks.base import (
    LATE_POLL_S,
    BaseReceiver,
    Late,
    ReceiverOptions,
    write_failed,
)
from bulk_mms.webhooks.events import Origin, origin, reports_in, short_field
from bulk_mms.webhooks.receiver import LEARN_WINDOW_S, WebhookReceiver, opened

log = structlog.get_logger(__name__)

#: How many dates before today a job's dated ledgers stay open (:class:`JobReceiver`): an
#: event is taken for a send within :data:`LEARN_WINDOW_S` of it, so a message sent just
#: before midnight is reported on until that many dates after its send's; and a run after
#: midnight may send into the date before's ledger, to finish its campaign
#: (:func:`~bulk_mms.prepare.continues_earlier`): one date more. Older messages' reports are
#: ``track``'s to fetch (``GET /messages/{id}`` serves a message for 10 days).
DAYS_BACK = math.ceil(LEARN_WINDOW_S / 86_400) + 1
#: At most this many events that no open ledger knew are remembered (:class:`JobReceiver`),
#: the oldest forgotten first: a flood of other apps' events within the 72 h must not grow
#: the receiver without limit. Forgetting one costs little: its redelivery, if one comes, is
#: looked for again and counted unmatched once more, never recorded. And one comes only when
#: the 2xx did not reach Telnyx within 2 s, at its next attempts (three at most), long before
#: this many other events.
ANSWERED_MAX = 100_000


class JobReceiver(BaseReceiver):
    """The receiver of a job whose ledger is a new one each day (``{date}``): it serves the
    job's ledgers of today and the :data:`DAYS_BACK` dates before (dates in the job's time
    zone) that exist, each through a :class:`WebhookReceiver` of its own (:attr:`ledgers`),
    which matches and records an event as it does alone. An event goes to the ledger that
    sent its message (:meth:`_sender`). One that no open ledger knows makes it look for
    ledgers begun since (today's, once the day's run has begun it; a new date's after
    midnight), then look again as a single ledger does (:meth:`look_later`: one read of every
    ledger a look) before it is counted unmatched; while one of the job's ledgers exists but
    cannot be opened, it may be the one that sent it, and gets 503 (Telnyx redelivers it). A
    keyword reaches the suppression list once, whatever the ledgers. A ledger past
    :data:`DAYS_BACK` is closed.
    Ledgers are opened, and read, in a worker thread: a request waits only for a read it
    needs (a ledger's being opened, when no open one knows its message)."""

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
        #: over by then), not for the receiver's life, and at most :data:`ANSWERED_MAX` of
        #: them: most may be other apps' messages.
        self._answered: OrderedDict[str, float] = OrderedDict()
        #: The job's ledgers that exist but could not be opened at the last :meth:`roll`
        #: (logged), each with why: any of them may have sent an event's message.
        self._unavailable: dict[str, LedgerError] = {}
        #: Held by :meth:`roll` while it opens ledgers off the loop: one roll at a time.
        self._rolling = asyncio.Lock()
        #: Set by :meth:`close`: a roll under way opens no more ledgers.
        self._closing = False

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
        find ledgers begun since (at most once every :data:`LATE_POLL_S`). A ledger is
        opened and read off the event loop (a large one takes seconds), by one roll at a
        time: one that comes meanwhile waits for it, unless it has nothing to do (the same
        date, no ``look``). A roll runs to its end, its request
        cancelled or not (:meth:`_finished`), so what it opens is closed with the rest."""
        if not look and self.today() == self._today:
            return
        await self._finished(self._rolled(look=look))

    async def _rolled(self, *, look: bool) -> None:
        async with self._rolling:
            await self._roll(look=look)

    async def _roll(self, *, look: bool) -> None:
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
        # set whole once this roll is done: a request that reads it while a roll goes on (one
        # begun while it read a ledger) finds the last roll's, never a half-done one's
        unavailable: dict[str, LedgerError] = {}
        for name, (day, where) in wanted.items():
            if name in self.ledgers:
                self.ledgers[name] = (day, self.ledgers[name][1])
                continue
            if self._closing:
                break
            try:
                receiver = await asyncio.to_thread(self._open, where)
            except LedgerError as exc:
                log.warning("webhooks.ledger_unavailable", ledger=display(where), error=str(exc))
                unavailable[name] = exc
                continue
            if receiver is not None:
                self.ledgers[name] = (day, receiver)
        self._unavailable = unavailable
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
        store, view = opened(functools.partial(open_store, where, "append"))
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
        receiver.late_window_s, receiver.late_max = self.late_window_s, self.late_max
        log.info("webhooks.ledger_opened", ledger=store.name, groups=len(view.groups))
        return receiver

    async def _close(self, receiver: WebhookReceiver) -> None:
        """Close a ledger's receiver taken out of :attr:`ledgers`, keeping its count."""
        await receiver.close()
        await receiver.store.close()
        self._recorded_before += receiver.recorded
        log.info("webhooks.ledger_closed", ledger=receiver.store.name)

    async def _sender(self, data: dict[str, Any], payload: object) -> WebhookReceiver | None:
        """The open ledger that sent the message an event is about: the one that knows its
        id (a group's own, or a recipient's learnt), once it has read what was appended to
        it since (:meth:`WebhookReceiver.catch_up`), if any; else :meth:`_known_sender`'s.
        None: no open ledger sent it.

        Raises:
            LedgerError: a ledger cannot be read.
        """
        message_id = payload_message_id(payload)
        if message_id is None:
            return None
        for name, receiver in self._newest():
            await receiver.ready()
            await receiver.catch_up(message_id)
            if receiver.knows(message_id) and self._serves(name, receiver):
                return receiver
        now = self.clock.wall()
        return self._known_sender(
            message_id, parse_statuses(payload, now=now), *origin(data, payload, now)
        )

    def _known_sender(
        self,
        message_id: str,
        statuses: Sequence[RecipientStatus],
        occurred_at: str | None,
        said: Origin,
    ) -> WebhookReceiver | None:
        """The open ledger that sent the message an event is about, as their views stand:
        the one that knows its id, else the newest whose recipient the event's id is learnt
        for (:meth:`WebhookReceiver.match`), as a recipient of an older ledger has long learnt
        its id from the events that followed that send. None: none of them."""
        newest = self._newest()
        for _, receiver in newest:
            if receiver.knows(message_id):
                return receiver
        for _, receiver in newest:
            if receiver.match(statuses, message_id, said, occurred_at)[0]:
                return receiver
        return None

    def _newest(self) -> list[tuple[str, WebhookReceiver]]:
        """The open ledgers' receivers by location, the newest date first."""
        newest = sorted(self.ledgers.items(), key=lambda d: d[1][0], reverse=True)
        return [(name, receiver) for name, (_, receiver) in newest]

    def _serves(self, name: str, receiver: WebhookReceiver) -> bool:
        """Whether ``receiver`` is still open as the ledger ``name`` (a roll while a request
        read may have closed it)."""
        return name in self.ledgers and self.ledgers[name][1] is receiver

    async def _delivery(
        self, event_id: str, event_type: str, data: dict[str, Any], payload: object
    ) -> web.Response:
        """The answer to a ``message.sent`` or ``message.finalized``: the ledger that sent its
        message records it (:meth:`WebhookReceiver._delivery`); none yet, it is looked for
        again (:meth:`look_later`)."""
        if self._answered_before(event_id):
            log.debug("webhook.duplicate", id=short_field(event_id))
            return web.json_response({"ok": True, "duplicate": True})
        try:
            await self.roll()
            ledger = await self._sender(data, payload)
            if ledger is None:
                await self.roll(look=True)  # begun since: today's, once its run began
                ledger = await self._sender(data, payload)
            if ledger is None and self._unavailable:
                # a ledger not open may have sent it: no 2xx, so Telnyx redelivers it
                raise next(iter(self._unavailable.values()))
        except LedgerError as exc:
            write_failed(event_id, exc)
            return web.json_response({"error": "the ledger cannot be read now"}, status=503)
        if ledger is not None:
            return await ledger._delivery(event_id, event_type, data, payload)
        message_id = payload_message_id(payload)
        reports = reports_in(payload, event_type, now=self.clock.wall())
        if message_id is None:
            self._unmatched(event_id, message_id, reports)
        elif why := await self.look_later(event_id, event_type, data, message_id, reports):
            return self.not_held(why)
        self._seen(event_id)
        log.info("webhook.received", event_type=event_type, id=event_id, recorded=0)
        pending = len(reports) if message_id is not None else 0
        return web.json_response({"ok": True, "recorded": 0, "pending": pending})

    def _seen(self, event_id: str) -> None:
        """Remember an event answered that no open ledger knew (:meth:`_answered_before`)."""
        self._answered[event_id] = self.clock.monotonic()
        if len(self._answered) > ANSWERED_MAX:
            self._answered.popitem(last=False)

    def _answered_before(self, event_id: str) -> bool:
        """Whether ``event_id`` was answered though no open ledger knew it, within
        :data:`LEARN_WINDOW_S` and among the last :data:`ANSWERED_MAX` such; those answered
        before that are forgotten."""
        horizon = self.clock.monotonic() - LEARN_WINDOW_S
        answered = self._answered
        while answered and answered[next(iter(answered))] < horizon:
            answered.popitem(last=False)
        return event_id in answered

    async def _read_late(self) -> None:
        """Have open the ledgers begun since (:meth:`roll`), and take in what every open one
        was appended since (:meth:`WebhookReceiver.take_in_new`).

        Raises:
            LedgerError: a ledger cannot be read (the others are read all the same).
        """
        await self.roll(look=True)
        failed: LedgerError | None = None
        for _, receiver in self._newest():
            try:
                await receiver.ready()
                await receiver.take_in_new()
            except LedgerError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    def _views(self) -> object:
        """The open ledgers' revisions (no two receivers' are ever the same)."""
        return tuple(receiver.revision for _, receiver in self._newest())

    async def _found(self, late: Late) -> bool | None:
        """Have the open ledger that sent an event's message, as the views stand, record it
        (:meth:`WebhookReceiver._found`); whether one did, whole (None: a write that failed,
        which the next look tries again)."""
        ledger = self._known_sender(late.message_id, late.statuses, late.occurred_at, late.origin)
        return ledger is not None and await ledger._found(late)

    async def settle(self) -> None:
        """Wait until every event still being looked for, here or by a ledger, is recorded
        or counted unmatched."""
        await super().settle()
        for _, receiver in list(self.ledgers.values()):
            await receiver.settle()

    async def close(self) -> None:
        """Stop waiting for late matches, and close every ledger: those a roll under way
        opens too (it opens no more once this begins)."""
        self._closing = True
        await super().close()  # waits for a roll under way
        while self.ledgers:
            await self._close(self.ledgers.popitem()[1][1])
