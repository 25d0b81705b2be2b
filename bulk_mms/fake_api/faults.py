"""The scripted faults: what the next POST does wrong, by name (``--fault``), and the broken
answers they give (a dropped connection, a cut-off body, one that never ends, a gzip bomb)."""

from __future__ import annotations

import contextlib
import functools
import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiohttp import web

from bulk_mms.fake_api.wire import error_object, json_answer

FaultKind = Literal[
    "status",
    "status_after",
    "drop_before",
    "drop_after",
    "slow",
    "no_id",
    "not_json",
    "truncated",
    "redirect",
    "endless",
    "bomb",
    "patch",
    "raw",
]


@dataclass(slots=True)
class Fault:
    """One scripted misbehaviour, used by the next POST that reaches the server.

    Args:
        kind: ``status`` (answer ``status`` with ``headers`` and a Telnyx error body: one
            error of ``code``, the status when none; several codes, comma separated, one
            error each in that order; or, when ``raw`` is given, that body as HTML: a
            gateway's page, no JSON at all),
            ``status_after`` (accept, then answer ``status`` as ``status`` does: a gateway's
            5xx after the server acted),
            ``drop_before`` (close the connection without accepting, after ``delay``
            seconds), ``drop_after`` (accept, then close without answering), ``slow`` (accept
            after ``delay`` seconds),
            ``no_id`` (accept, answer 200 without an id), ``not_json`` (accept, answer 200 with
            a body that is not JSON), ``truncated`` (accept, then cut the body off midway),
            ``redirect`` (answer ``status``, a 3xx, with ``Location: location``, accepting
            nothing), ``endless`` (accept, then send a 200 body that never ends), ``bomb``
            (accept, then send a 200 gzip body of a few KiB, its Content-Length honest, that
            inflates to 8 MiB),
            ``patch`` (accept, and answer with ``patch`` merged into the response's ``data``:
            ``{"wait_seconds": 1e12}``, an overflowing cost, someone else's numbers...),
            ``raw`` (accept, and answer 200 with the bytes ``raw``, ``{id}`` replaced by the
            message id: JSON that no encoder would write, such as ``1e999``).
    """

    kind: FaultKind
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    code: str = ""
    delay: float = 0.0
    location: str = "/v2/elsewhere"
    patch: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""


def fault_answer(fault: Fault) -> web.Response:
    """A ``status`` fault's answer: its status and headers, and an ``errors`` list of one
    error per code of ``code`` (comma separated, in order), or of the status when none."""
    codes = (fault.code or str(fault.status)).split(",")
    errors = [error_object(code, "Scripted fault", "") for code in codes]
    return json_answer(fault.status, {"errors": errors}, fault.headers)


#: A gateway's error page, as a proxy in front of an API answers in its place.
GATEWAY_PAGE: Final = b"<html><body><h1>503 Service Unavailable</h1></body></html>"

#: Named misbehaviours, for the sandbox (``BULK_MMS_SANDBOX_FAULTS``) and ``--fault``.
FAULT_PRESETS: dict[str, Callable[[], Fault]] = {
    "status-500": lambda: Fault("status", 500),
    "status-503": lambda: Fault("status", 503),
    "status-502-after": lambda: Fault("status_after", 502),
    # a gateway's own error page in front of the API: HTML, no errors[] to read
    "status-503-html": lambda: Fault("status", 503, raw=GATEWAY_PAGE),
    # Telnyx's documented rate limit: code 10011 and x-ratelimit-* (reset in seconds)
    "status-429": lambda: Fault(
        "status",
        429,
        headers={"x-ratelimit-limit": "20", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"},
        code="10011",
    ),
    "queue-full": lambda: Fault("status", 429, code="40318"),
    "refused-422": lambda: Fault("status", 422, code="10015"),
    "huge-retry-after": lambda: Fault("status", 429, headers={"Retry-After": "1000000000000"}),
    "huge-ratelimit-reset": lambda: Fault(
        "status", 429, headers={"x-ratelimit-reset": "99999999999999"}
    ),
    "huge-wait": lambda: Fault("patch", patch={"wait_seconds": 1e12}),
    "overflow-cost": lambda: Fault(
        "patch", patch={"cost": {"amount": "9e999999999", "currency": "USD"}}
    ),
    "negative-cost": lambda: Fault("patch", patch={"cost": {"amount": "-5", "currency": "USD"}}),
    "foreign-numbers": lambda: Fault(
        "patch", patch={"to": [{"phone_number": "+12025550000", "status": "queued"}]}
    ),
    "endless-body": lambda: Fault("endless"),
    "gzip-bomb": lambda: Fault("bomb"),
    "redirect-302": lambda: Fault("redirect", 302),
    "redirect-307": lambda: Fault("redirect", 307),
    "drop-before": lambda: Fault("drop_before"),
    "drop-after": lambda: Fault("drop_after"),
    "slow": lambda: Fault("slow", delay=5.0),
    "no-id": lambda: Fault("no_id"),
    "not-json": lambda: Fault("not_json"),
    "truncated": lambda: Fault("truncated"),
}


def parse_faults(spec: str) -> list[Fault]:
    """``"huge-wait,redirect-302*3"``: presets in order, each ``*N`` times (once by default).

    Raises:
        ValueError: an unknown name or a bad count, naming the choices.
    """
    out: list[Fault] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition("*")
        if name not in FAULT_PRESETS or (count and not count.isdigit()):
            raise ValueError(f"unknown fault {item!r}; use one of {', '.join(FAULT_PRESETS)}")
        out.extend(FAULT_PRESETS[name]() for _ in range(int(count or 1)))
    return out


def drop_connection(request: web.Request) -> web.Response:
    """Close the connection without answering (the client sees a disconnect)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


async def truncated_answer(request: web.Request, body: bytes) -> web.StreamResponse:
    """Promise the whole body, send half of it, and close the connection."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return resp


async def endless_answer(request: web.Request) -> web.StreamResponse:
    """A 200 whose JSON body never ends: it streams until the client hangs up."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(b'{"data": {"id": "')
    block = b"x" * 65536
    with contextlib.suppress(ConnectionError):
        while request.transport is not None and not request.transport.is_closing():
            await resp.write(block)
    return resp


@functools.cache
def bomb_body() -> bytes:
    """A gzip body of a few KiB that inflates to an 8 MiB JSON string (made once)."""
    return gzip.compress(b'{"data": {"id": "' + b"x" * (8 << 20) + b'"}}', mtime=0)
