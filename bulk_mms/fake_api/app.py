"""The fake API as one object, :class:`FakeTelnyx`: its aiohttp application (the five endpoints,
the request log, the account's request limit) and :func:`serve`, which runs it on a port."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from bulk_mms.fake_api.lists import ListEndpoints
from bulk_mms.fake_api.records import SeenRequest
from bulk_mms.fake_api.rules import REFUSALS
from bulk_mms.fake_api.sending import GroupMmsEndpoint
from bulk_mms.fake_api.wire import errors_answer


@dataclass
class FakeTelnyx(GroupMmsEndpoint, ListEndpoints):
    """State and behaviour of the fake API. Tests inspect :attr:`accepted` and :attr:`requests`.

    By default it behaves as the spec and Telnyx's docs say, not more kindly: keys are not
    replayed, carrier codes come only as delivery statuses, a 40300 on a group names no
    member, opt-outs are listed redacted unless asked otherwise. Each kindness the older tests
    relied on is a constructor switch (``replay_keys``, ``sync_carrier_codes``,
    ``name_refused_members``, ``redaction_default``), off by default.
    """

    def app(self) -> web.Application:
        """The aiohttp application: the five endpoints, and the webhook pump when asked."""
        app = web.Application(middlewares=[self._front])
        app.router.add_post("/v2/messages/group_mms", self.send_group_mms)
        app.router.add_get("/v2/messages/group/{message_id}", self.get_group)
        app.router.add_get("/v2/messages/{id}", self.get_message)
        app.router.add_get("/v2/messaging_optouts", self.get_optouts)
        app.router.add_get("/v2/reports/mdrs", self.get_mdrs)
        if self.webhook_every_s is not None:
            app.cleanup_ctx.append(self._pumping)
        return app

    @web.middleware
    async def _front(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Log every request as it came (:attr:`http_log`), then apply the request limit."""
        raw = await request.read()  # aiohttp keeps it: the handler reads it again
        self.http_log.append(
            SeenRequest(
                request.method, request.path, request.query_string, dict(request.headers), raw
            )
        )
        if (limited := self._over_limit()) is not None:
            return limited
        return await handler(request)

    def _over_limit(self) -> web.Response | None:
        """429 / 10011 with ``x-ratelimit-*`` (reset in seconds) past :attr:`request_limit`."""
        if self.request_limit is None:
            return None
        limit, window = self.request_limit
        now = self.clock()
        start, count = self._window
        if now - start >= window:
            start, count = now, 0
        count += 1
        self._window = (start, count)
        if count <= limit:
            return None
        headers = {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": str(max(1, math.ceil(start + window - now))),
        }
        return errors_answer(429, "10011", REFUSALS["10011"][1], "Rate limit exceeded.", headers)


@contextlib.asynccontextmanager
async def serve(fake: FakeTelnyx | None = None, port: int = 0) -> AsyncIterator[str]:
    """Run the fake on 127.0.0.1 in this event loop; yield its base URL (``.../v2``)."""
    fake = fake or FakeTelnyx()
    # a stopping run must not wait a minute for a handler that is still slow or endless
    runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        bound = runner.addresses[0][1]  # the port the OS chose when port is 0
        yield f"http://127.0.0.1:{bound}/v2"
    finally:
        await runner.cleanup()
