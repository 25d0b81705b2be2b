"""The API's wire conventions: JSON answers and the ``errors[]`` envelope, the bearer check,
times as ISO 8601, and the list endpoints' query parameters and paging."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

#: Largest ``page[size]`` of the list endpoints (the spec's maximum).
MAX_PAGE_SIZE = 250


#: The ways Telnyx writes a time (ISO 8601 all): ``(separator, fraction digits, offset)``,
#: offset ``Z``, ``+00:00`` or another zone's (``-06:00``, the MDR example's). The spec's
#: examples: messages ``2019-01-23T18:10:02.574Z``, opt-outs ``2025-04-28 12:00:38.631252+00:00``
#: (a space for the ``T``: not the RFC 3339 date-time its schema names, so only a varied
#: stamp has it), MDRs ``2020-07-01T00:00:00-06:00``.
STAMP_FORMS: tuple[tuple[str, int, str], ...] = (
    ("T", 3, "Z"),
    ("T", 6, "+00:00"),
    (" ", 6, "+00:00"),
    ("T", 0, "-06:00"),
    ("T", 1, "Z"),
    ("T", 9, "+00:00"),
    ("T", 0, "Z"),
    ("T", 7, "Z"),
)
MESSAGE_STAMP, OPTOUT_STAMP, MDR_STAMP = STAMP_FORMS[0], STAMP_FORMS[1], ("T", 0, "+00:00")
#: As Telnyx's webhook examples write ``occurred_at``: milliseconds, ``+00:00``.
WEBHOOK_STAMP = ("T", 3, "+00:00")


def iso(wall: float, form: tuple[str, int, str]) -> str:
    """Unix seconds as the API writes times, ISO 8601 in ``form`` (:data:`STAMP_FORMS`:
    separator, digits of the fraction, offset)."""
    sep, digits, offset = form
    zone = dt.timezone(dt.timedelta(hours=-6)) if offset == "-06:00" else dt.UTC
    when = dt.datetime.fromtimestamp(wall, zone)
    stamp = when.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if digits:
        nanos = f"{when.microsecond:06d}000"  # beyond microseconds: zeros, as a longer clock's
        stamp += "." + nanos[:digits]
    return stamp + offset


def parse_when(text: str | None) -> float | None:
    """An ISO 8601 date or time (UTC when it names no zone) as Unix seconds; None for None.

    Raises:
        ValueError: it does not parse.
    """
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace(" ", "+") if "T" in text else text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not an ISO 8601 date or time") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def parse_flag(text: str | None, default: bool) -> bool:
    """A boolean query parameter (``true``/``false``).

    Raises:
        ValueError: it is neither.
    """
    if text is None:
        return default
    if text.lower() not in ("true", "false"):
        raise ValueError(f"{text[:20]!r} is not true or false")
    return text.lower() == "true"


def paging(query: Mapping[str, str]) -> tuple[int, int]:
    """``page[number]`` (from 1) and ``page[size]`` (1 to :data:`MAX_PAGE_SIZE`, default 20).

    Raises:
        ValueError: either is not a number in its range.
    """
    number, size = query.get("page[number]", "1"), query.get("page[size]", "20")
    if not number.isdigit() or int(number) < 1:
        raise ValueError("page[number] must be a whole number from 1")
    if not size.isdigit() or not 1 <= int(size) <= MAX_PAGE_SIZE:
        raise ValueError(f"page[size] must be from 1 to {MAX_PAGE_SIZE}")
    return int(number), int(size)


def page_meta(page: int, size: int, total: int) -> dict[str, int]:
    return {
        "page_number": page,
        "page_size": size,
        "total_pages": max(1, -(-total // size)),
        "total_results": total,
    }


def redacted(phone: str) -> str:
    """A number as a redacted list shows it: the first seven characters, then ``****``."""
    return phone[:7] + "****"


def json_answer(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def errors_answer(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    *,
    pointer: str | None = None,
) -> web.Response:
    return json_answer(status, {"errors": [error_object(code, title, detail, pointer)]}, headers)


def error_object(code: str, title: str, detail: str, pointer: str | None = None) -> dict[str, Any]:
    """One messaging_Error: ``code`` (a string), ``title``, ``detail``, ``source.pointer``."""
    err: dict[str, Any] = {"code": code, "title": title, "detail": detail}
    if pointer is not None:
        err["source"] = {"pointer": pointer}
    return err


def auth_refusal(request: web.Request, api_key: str | None) -> web.Response | None:
    """401 / 10009 unless the request carries a bearer token: ``api_key``, or any when None."""
    header = request.headers.get("Authorization", "")
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    if not token or (api_key is not None and token != api_key):
        return errors_answer(401, "10009", "Authentication failed", "The API key is not valid.")
    return None
