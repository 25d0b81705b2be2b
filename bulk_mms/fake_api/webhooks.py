"""The webhooks the fake emits: ``message.sent`` and ``message.finalized``, one per recipient,
Ed25519-signed, posted as the delivery timeline reaches them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bulk_mms.fake_api.messages import MessageViews
from bulk_mms.fake_api.records import Accepted, WebhookPost
from bulk_mms.fake_api.rules import FINAL_STATUSES, NEVER_SENT
from bulk_mms.fake_api.wire import WEBHOOK_STAMP


@dataclass(slots=True)
class _Delivery:
    """One event on its way (Private): its body, where it is tried, and how far it got."""

    event: dict[str, Any]
    urls: list[str | None]
    #: recipient and status, for :class:`WebhookPost`
    about: tuple[str, str]
    #: the index in ``urls`` of the next attempt
    next: int = 0
    #: 2xx answers still to be taken as lost (:attr:`FakeState.webhook_repeats`)
    lost: int = 0
    #: the last 2xx was taken as lost: the event is delivered again
    again: bool = False


class WebhookPump(MessageViews):
    """Posts the delivery webhooks that are due, as Telnyx does: signed, retried, failed over."""

    def due_events(self) -> list[tuple[Accepted, int, str, str]]:
        """The webhook events the timeline has reached and not yet posted: (message,
        recipient index, event type, status), ``message.sent`` before ``message.finalized``.
        With :attr:`webhooks_out_of_order`, a recipient's ``message.sent`` is due only with
        its ``message.finalized``."""
        due = []
        for msg in list(self.by_id.values()):
            for i in range(len(msg.to)):
                status = self._observe(msg, i)
                posted = self._posted.setdefault((msg.id, i), set())
                reached = status == "sent" or status in FINAL_STATUSES
                if self.webhooks_out_of_order and status not in FINAL_STATUSES:
                    reached = False  # held back until it can come after its finalized
                if reached and status not in NEVER_SENT and "message.sent" not in posted:
                    due.append((msg, i, "message.sent", "sent"))
                if status in FINAL_STATUSES and "message.finalized" not in posted:
                    due.append((msg, i, "message.finalized", status))
        return due

    async def pump_webhooks(self) -> int:
        """Post, signed, every event that is due (:meth:`due_events`); how many were posted.

        Each goes where :meth:`_webhook_urls` says, attempt after attempt, until one answers
        2xx. With :attr:`webhook_repeats`, that many 2xx answers of each event are taken as
        lost, as Telnyx takes an answer that is lost or later than 2 s: the event (the same
        id, ``occurred_at`` and payload) goes on to its next attempt, after every other
        event's first delivery of this pump. With :attr:`webhooks_out_of_order`, the events
        are posted latest first (a recipient's ``message.finalized`` before its
        ``message.sent``). With :attr:`webhooks_without_from`, its payload names no sender.
        An event with no URL, or with no :attr:`signing_key`, is not sent.
        Every attempt is in :attr:`webhooks_sent`.
        """
        if self.signing_key is None:
            return 0
        deliveries = []
        for msg, i, event_type, status in self.due_events():
            self._posted[(msg.id, i)].add(event_type)
            # when the status was reached, not when the event goes out: a held-back or
            # repeated event says when it happened
            reached = self._sent_at if event_type == "message.sent" else self._final_at
            payload = self._record(msg, only=i, live=True, status=status)
            if self.webhooks_without_from:
                payload.pop("from", None)
            event = {
                "event_type": event_type,
                "id": str(uuid.uuid4()),
                "occurred_at": self.stamp(reached.get((msg.id, i), self.wall()), WEBHOOK_STAMP),
                "payload": payload,
                "record_type": "event",
            }
            urls = self._webhook_urls(msg)
            deliveries.append(
                _Delivery(event, urls, (msg.to[i], status), lost=self.webhook_repeats)
            )
        if self.webhooks_out_of_order:
            deliveries.reverse()
        posted = 0
        async with aiohttp.ClientSession() as session:
            for delivery in deliveries:
                if await self._deliver(session, delivery):
                    posted += 1
            again = [d for d in deliveries if d.again]
            while again:
                for delivery in again:
                    await self._deliver(session, delivery)
                again = [d for d in again if d.again]
        return posted

    async def _deliver(self, session: aiohttp.ClientSession, delivery: _Delivery) -> bool:
        """Attempts at ``delivery``'s next URLs until one answers 2xx; whether one did. A 2xx
        taken as lost (``delivery.lost``) still counts as one, and leaves the next attempt
        for later (``delivery.again``)."""
        delivery.again = False
        while delivery.next < len(delivery.urls):
            url, attempt = delivery.urls[delivery.next], delivery.next + 1
            delivery.next += 1
            if url is None:
                continue
            if await self._post_event(session, url, attempt, delivery.event, delivery.about):
                if delivery.lost:
                    delivery.lost -= 1
                    delivery.again = True
                return True
        return False

    def _webhook_urls(self, msg: Accepted) -> list[str | None]:
        """Where an event about ``msg`` is tried, in order: its ``webhook_url`` three times,
        then once its ``webhook_failover_url``; then, unless it says
        ``use_profile_webhooks: false`` (the spec's default is true), the profile's
        :attr:`webhook_url` three times: "webhooks specified on the message itself ... will
        be attempted first, then those on the profile"."""
        own = msg.body.get("webhook_url")
        urls: list[str | None] = [own] * 3 if own else []
        urls.append(msg.body.get("webhook_failover_url"))
        if msg.body.get("use_profile_webhooks") is not False and self.webhook_url:
            urls += [self.webhook_url] * 3
        return urls

    async def _post_event(
        self,
        session: aiohttp.ClientSession,
        url: str,
        attempt: int,
        event: dict[str, Any],
        about: tuple[str, str],
    ) -> bool:
        """One signed POST of ``event`` (about recipient and status ``about``); whether the
        receiver answered 2xx."""
        assert self.signing_key is not None
        if self.sparse_answers:  # the spec requires none of the envelope's fields
            bare = {k: v for k, v in event.items() if k in ("event_type", "id", "payload")}
            raw = orjson.dumps({"data": bare})
        else:
            raw = orjson.dumps({"data": event, "meta": {"attempt": attempt, "delivered_to": url}})
        stamp = str(int(self.wall()))
        signature = base64.b64encode(self.signing_key.sign(stamp.encode() + b"|" + raw))
        headers = {
            "Content-Type": "application/json",
            "telnyx-timestamp": stamp,
            "telnyx-signature-ed25519": signature.decode(),
        }
        answer: int | None = None
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with session.post(
                url, data=raw, headers=headers, timeout=aiohttp.ClientTimeout(total=2)
            ) as resp:
                answer = resp.status
        post = WebhookPost(str(event["event_type"]), *about, url, attempt, answer, raw, headers)
        self.webhooks_sent.append(post)
        return answer is not None and 200 <= answer < 300

    async def _pumping(self, _app: web.Application) -> AsyncIterator[None]:
        """While served: post due webhooks every :attr:`webhook_every_s` seconds."""

        async def pump() -> None:
            assert self.webhook_every_s is not None
            while True:
                await self.sleep(self.webhook_every_s)
                await self.pump_webhooks()

        task = asyncio.create_task(pump())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
