"""``POST /messages/group_mms``: the body checked as the spec documents it, the synchronous
refusals, the sender's queue, and the scripted fault of the request, if any."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import Final

import orjson
from aiohttp import web

from bulk_mms.codes import MEANINGS
from bulk_mms.fake_api.faults import (
    bomb_body,
    drop_connection,
    endless_answer,
    fault_answer,
    truncated_answer,
)
from bulk_mms.fake_api.rules import REFUSALS
from bulk_mms.fake_api.webhooks import WebhookPump
from bulk_mms.fake_api.wire import auth_refusal, errors_answer, json_answer

#: Telnyx's 10003: "URLs can be a maximum of 2000 characters" (its API error codes).
MAX_URL_CHARS: Final = 2000
_URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$", re.IGNORECASE)
_E164_NANP = re.compile(r"^\+1[2-9]\d{2}[2-9]\d{6}$")
_SENDER = re.compile(r"^(\+[1-9]\d{6,14}|\d{3,8}|(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11})$")
#: The kind fake's old answers for carrier codes, used only with ``sync_carrier_codes=True``.
_KIND_REFUSALS: Final = dict.fromkeys(("40016", "40018", "40002", "40011", "40003", "40315"), 400)


class GroupMmsEndpoint(WebhookPump):
    """The send endpoint: accepts, refuses or misbehaves as scripted."""

    async def send_group_mms(self, request: web.Request) -> web.StreamResponse:  # noqa: C901, PLR0911, PLR0912 - the API's own branching: each scripted fault and refusal answers here
        if (denied := auth_refusal(request, self.api_key)) is not None:
            return denied
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return errors_answer(400, "10015", "Bad Request", "The request body is not valid JSON.")
        self.requests.append(body if isinstance(body, dict) else {"_": body})
        fault = self.faults.popleft() if self.faults else None
        if fault is not None and fault.kind == "status" and fault.raw:
            return web.Response(
                status=fault.status, body=fault.raw, content_type="text/html", headers=fault.headers
            )
        if fault is not None and fault.kind == "status":
            return fault_answer(fault)
        if fault is not None and fault.kind == "drop_before":
            await asyncio.sleep(fault.delay)  # a request held, never taken in
            return drop_connection(request)
        if fault is not None and fault.kind == "redirect":
            return web.Response(status=fault.status, headers={"Location": fault.location})
        if (invalid := _validate(body)) is not None:
            return invalid
        if self.numbers is not None and body["from"] not in self.numbers:
            detail = f"{body['from']} is not a number of this account that can send messages."
            return errors_answer(400, "40305", "Invalid 'from' address", detail, pointer="/from")
        key = request.headers.get("Idempotency-Key")
        if key is not None and self.replay_keys and key in self._keys:
            first_raw, first_response = self._keys[key]
            if first_raw != raw:
                return errors_answer(
                    422, "10015", "Idempotency key reused", "Same key, different request body."
                )
            return json_answer(200, first_response)  # a replay, whatever the rules say by now
        refused = [
            (i, p, code)
            for i, p in enumerate(body["to"])
            if (code := self.refusal_code(body["from"], p)) is not None
        ]
        if refused:
            return self._refusal(body["from"], refused)
        wait: float | None = None
        queue = self.queue_for(body["from"])
        if queue is not None:
            size = len(body["to"]) if self.queue_unit == "recipient" else 1
            wait = queue.offer(self.clock(), size)
            if wait is None:
                return errors_answer(429, "40318", "Message queue full", "Try again later.")
        msg = self._accept(body, key, wait)
        response = {"data": self._record(msg, live=self.live_answers, send=True)}
        if self.webhooks_before_answer:
            await self.pump_webhooks()
        if key is not None and self.replay_keys:
            self._keys[key] = (raw, response)
        if fault is not None:
            if fault.kind == "drop_after":
                return drop_connection(request)
            if fault.kind == "status_after":
                return fault_answer(replace(fault, headers={}))
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
            elif fault.kind == "no_id":
                del response["data"]["id"]
            elif fault.kind == "not_json":
                return web.Response(status=200, body=b"<html>oops", content_type="text/html")
            elif fault.kind == "truncated":
                return await truncated_answer(request, orjson.dumps(response))
            elif fault.kind == "endless":
                return await endless_answer(request)
            elif fault.kind == "bomb":
                return web.Response(
                    status=200,
                    body=bomb_body(),
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                )
            elif fault.kind == "patch":
                response = {"data": {**response["data"], **fault.patch}}
            elif fault.kind == "raw":
                body = fault.raw.replace(b"{id}", msg.id.encode())
                return web.Response(status=200, body=body, content_type="application/json")
        return json_answer(200, response)

    def _refusal(self, sender: str, refused: list[tuple[int, str, str]]) -> web.Response:
        """The answer to a send that names refused numbers: the first one's code. An opt-out
        is one 40300 naming nobody, or (``name_refused_members``) one error per opted-out
        member with its ``source.pointer``."""
        _, first, code = refused[0]
        status, title = REFUSALS.get(code) or (
            _KIND_REFUSALS.get(code, 400),
            MEANINGS.get(code, ""),
        )
        if code != "40300":
            return errors_answer(status, code, title or "Refused", f"Refused for {first}.")
        if not self.name_refused_members:
            detail = f"Messages cannot be sent from {sender} due to an existing block rule."
            return errors_answer(status, code, title, detail)
        errors = [
            {
                "code": code,
                "title": title,
                "detail": f"Messages cannot be sent from {sender} to {phone} due to an "
                "existing block rule.",
                "source": {"pointer": f"/to/{i}"},
            }
            for i, phone, c in refused
            if c == code
        ]
        return json_answer(status, {"errors": errors})


def _validate(body: object) -> web.Response | None:  # noqa: C901, PLR0911, PLR0912 - the spec's request rules, one check and answer each
    """Refuse what the real API documents as invalid, with a Telnyx-shaped 422."""

    def bad(detail: str, pointer: str) -> web.Response:
        return errors_answer(422, "10015", "Invalid parameter", detail, pointer=pointer)

    if not isinstance(body, dict):
        return bad("The request body must be an object.", "/")
    sender = body.get("from")
    if not isinstance(sender, str) or not _SENDER.match(sender):
        return bad("'from' must be a +E.164 number, short code or alphanumeric id.", "/from")
    to = body.get("to")
    if not isinstance(to, list) or not to:
        return bad("'to' must be a non-empty list.", "/to")
    if len(to) > 8:
        return bad("No more than 8 destinations are allowed.", "/to")
    if len(set(to)) != len(to):
        return bad("'to' must not repeat a number.", "/to")
    for phone in to:
        if not isinstance(phone, str) or not _E164_NANP.match(phone):
            return bad(f"{phone!r} is not a +E.164 US/Canada number.", "/to")
    text = body.get("text")
    if text is not None and (not isinstance(text, str) or not text):
        return bad("'text' must be a non-empty string.", "/text")
    media = body.get("media_urls")
    if media is not None and (
        not isinstance(media, list) or not all(isinstance(u, str) and u for u in media)
    ):
        return bad("'media_urls' must be a list of URLs.", "/media_urls")
    for i, url in enumerate(media or ()):
        if not _URL.match(url) or len(url) > MAX_URL_CHARS:
            detail = f"media_urls[{i}] is not an http(s) URL of at most {MAX_URL_CHARS} characters."
            return errors_answer(400, "10003", "Invalid URL", detail, pointer=f"/media_urls/{i}")
    if not text and not media:
        return bad("A message needs text or media_urls.", "/text")
    for key in ("subject", "webhook_url", "webhook_failover_url"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return bad(f"'{key}' must be a string.", f"/{key}")
    upw = body.get("use_profile_webhooks")
    if upw is not None and not isinstance(upw, bool):
        return bad("'use_profile_webhooks' must be a boolean.", "/use_profile_webhooks")
    return None
