"""The one seam between the runner and the Telnyx API.

:class:`MmsClient` is all the runner knows: ``await client.send(group, key)`` returns a
:class:`~bulk_mms.models.SendReceipt` or raises a :class:`~bulk_mms.errors.SendError`. Unit tests
pass a fake; :class:`AiohttpMmsClient` is the real one. No aiohttp exception leaves this module:
:func:`map_client_errors` translates them at the boundary, and status codes become typed errors
in :func:`error_for_status`.

Whether a failure is *ambiguous* decides whether a retry could text people twice, so the split is
careful: a failure while connecting (DNS, refused, TLS, connect timeout) happened before the
request left and is a :class:`NetworkError`; anything after the request may have been written
(reset, disconnect, read timeout, unreadable 2xx body) is an :class:`AmbiguousSendError`.
"""

from __future__ import annotations

import contextlib
import email.utils
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Any, Protocol, Self

import aiohttp
import orjson

from bulk_mms._version import __version__
from bulk_mms.errors import (
    AmbiguousSendError,
    ApiError,
    AuthError,
    NetworkError,
    NotFound,
    RateLimited,
    Rejected,
    SendError,
    ServerError,
)
from bulk_mms.models import Group, Money, RecipientStatus, SendReceipt

SEND_PATH = "/messages/group_mms"
GROUP_PATH = "/messages/group/"
MESSAGE_PATH = "/messages/"

USER_AGENT = f"bulk-mms/{__version__}"


class MmsClient(Protocol):
    """Sends one group MMS, and reads back where its recipients stand. The one API seam."""

    async def send(self, group: Group, key: str) -> SendReceipt:
        """Send ``group`` under the ``Idempotency-Key`` ``key``; return the API's receipt.

        Raises:
            SendError: a subclass saying whether a retry is safe (see :mod:`bulk_mms.errors`).
        """
        ...

    async def fetch_group(self, message_id: str) -> tuple[RecipientStatus, ...]:
        """``GET /messages/group/{message_id}``: every recipient the API lists for a group.

        Raises:
            NotFound: the API does not know the id.
            SendError: as for :meth:`send` (a GET is always safe to retry).
        """
        ...

    async def fetch_message(self, message_id: str) -> tuple[RecipientStatus, ...]:
        """``GET /messages/{id}``: the recipients of one message (a recipient's own id)."""
        ...


def idempotency_key(campaign: str | None, group_id: str) -> str:
    """The ``Idempotency-Key`` of a group in a campaign: the same on every retry and resume.

    ``campaign`` is the ledger's identity (its header's ``campaign``), made when the ledger is
    created: the same group in another ledger (tomorrow's ``{date}`` ledger, a new
    ``--ledger``) gets another key, so the API sends it anew instead of replaying the answer
    it gave the first campaign. ``None`` is a ledger written before campaigns existed: its
    groups keep the key they were first sent under, so resuming it is still a replay.
    """
    if campaign is None:
        return f"bulk-mms-{group_id}"
    return f"bulk-mms-{campaign}-{group_id}"


def request_body(group: Group) -> dict[str, Any]:
    """The JSON body of ``POST /messages/group_mms`` for a group, leaving out unset fields."""
    m = group.message
    body: dict[str, Any] = {"from": m.from_, "to": list(group.to)}
    if m.text is not None:
        body["text"] = m.text
    if m.subject is not None:
        body["subject"] = m.subject
    if m.media_urls:
        body["media_urls"] = list(m.media_urls)
    if m.webhook_url is not None:
        body["webhook_url"] = m.webhook_url
    if m.webhook_failover_url is not None:
        body["webhook_failover_url"] = m.webhook_failover_url
    if m.use_profile_webhooks is not None:
        body["use_profile_webhooks"] = m.use_profile_webhooks
    return body


# --------------------------------------------------------------------------------------------
# Parsing responses


def parse_money(value: object) -> Money | None:
    """``{"amount": "0.0051" | 0.0051, "currency": "USD"}`` as exact :class:`Money`.

    The API sends the amount as a string on some endpoints and as a JSON number on others;
    ``str()`` of the parsed float gives back the shortest literal, so both become the same
    Decimal.
    """
    if not isinstance(value, dict):
        return None
    amount, currency = value.get("amount"), value.get("currency")
    if amount is None or isinstance(amount, bool) or not isinstance(amount, str | int | float):
        return None
    try:
        dec = Decimal(str(amount).strip())
    except InvalidOperation:
        return None
    if not dec.is_finite():
        return None
    return Money(dec, str(currency or "USD"))


def parse_errors(body: object) -> tuple[ApiError, ...]:
    """The ``errors`` array of a Telnyx body (top level or inside ``data``), tolerantly."""
    if not isinstance(body, dict):
        return ()
    items = body.get("errors")
    if items is None and isinstance(body.get("data"), dict):
        items = body["data"].get("errors")
    if not isinstance(items, list):
        return ()
    out = []
    for item in items:
        if isinstance(item, dict):
            out.append(
                ApiError(
                    code=str(item.get("code") or ""),
                    title=str(item.get("title") or ""),
                    detail=str(item.get("detail") or ""),
                )
            )
    return tuple(out)


def parse_receipt(body: object) -> SendReceipt:
    """Turn a 2xx body into a :class:`SendReceipt`.

    Raises:
        AmbiguousSendError: the body has no message id: the API took the request but we cannot
            tell what became of it.
    """
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise AmbiguousSendError("accepted, but the response has no 'data' object")
    message_id = data.get("id")
    if not isinstance(message_id, str) or not message_id:
        raise AmbiguousSendError("accepted, but the response has no message id")
    statuses = []
    for item in data.get("to") or ():
        if isinstance(item, dict) and isinstance(item.get("phone_number"), str):
            statuses.append(RecipientStatus(item["phone_number"], str(item.get("status") or "")))
    wait = data.get("wait_seconds")
    return SendReceipt(
        message_id=message_id,
        statuses=tuple(statuses),
        wait_seconds=float(wait) if isinstance(wait, int | float) and wait >= 0 else None,
        cost=parse_money(data.get("cost")),
        errors=parse_errors(data),
    )


def parse_statuses(data: object) -> tuple[RecipientStatus, ...]:
    """Recipients and statuses from a message object or a list of them (the GET endpoints).

    ``GET /messages/group/{id}`` lists one message per recipient, each with its own id, ``to``
    and ``errors``; ``GET /messages/{id}`` returns one. Entries that are not objects, or have no
    ``phone_number``, are skipped: a partial answer still yields what it does say.
    """
    messages = data if isinstance(data, list) else [data]
    out: list[RecipientStatus] = []
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        mid = msg.get("id") if isinstance(msg.get("id"), str) else None
        errors = parse_errors(msg)
        at = next(
            (msg[k] for k in ("completed_at", "sent_at") if isinstance(msg.get(k), str)), None
        )
        for item in msg.get("to") or ():
            if isinstance(item, dict) and isinstance(item.get("phone_number"), str):
                out.append(
                    RecipientStatus(
                        item["phone_number"],
                        str(item.get("status") or ""),
                        message_id=mid,
                        errors=errors,
                        at=at,
                    )
                )
    return tuple(out)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``Retry-After`` or ``x-ratelimit-reset``.

    ``Retry-After`` may be seconds or an HTTP date; ``x-ratelimit-reset`` may be seconds or a
    Unix time (taken as a time when it is larger than a year in seconds).
    """
    now = time.time() if now is None else now
    value = headers.get("retry-after-ms")
    if value is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value) / 1000)
    value = headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - now)
    value = headers.get("x-ratelimit-reset")
    if value is not None:
        with contextlib.suppress(ValueError):
            seconds = float(value)
            return max(0.0, seconds - now if seconds > 31_536_000 else seconds)
    return None


def error_for_status(status: int, body: object, headers: Mapping[str, str]) -> SendError:
    """The typed error for a non-2xx response."""
    errors = parse_errors(body)
    if status in (401, 403):
        return AuthError("the API key was refused", status=status, errors=errors)
    if status == 404:
        return NotFound("the API does not know this message id", status=status, errors=errors)
    if status == 429:
        return RateLimited(
            "rate limited", retry_after=parse_retry_after(headers), status=status, errors=errors
        )
    if status >= 500 or status in (408, 409):
        # 408/409: the server did not (yet) act on the request; safe to try again
        return ServerError("the server failed", status=status, errors=errors)
    return Rejected("the API refused the request", status=status, errors=errors)


@contextlib.contextmanager
def map_client_errors() -> Iterator[None]:
    """Translate aiohttp and socket failures into the :class:`SendError` tree."""
    try:
        yield
    except SendError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:
        raise NetworkError(f"connect timed out ({exc or 'no answer'})") from None
    except aiohttp.ClientConnectorError as exc:
        # DNS, refused, TLS: the connection was never made, so nothing was sent
        raise NetworkError(f"cannot connect: {exc}") from None
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise AmbiguousSendError(f"no response in time ({type(exc).__name__})") from None
    except aiohttp.ServerDisconnectedError:
        raise AmbiguousSendError("the server closed the connection before answering") from None
    except aiohttp.ClientPayloadError as exc:
        raise AmbiguousSendError(f"the response was cut off ({exc})") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise AmbiguousSendError(f"connection failed ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------------------------
# The real client


class AiohttpMmsClient:
    """:class:`MmsClient` over one :class:`aiohttp.ClientSession`.

    Args:
        base_url: e.g. ``https://api.telnyx.com/v2`` (no trailing slash needed).
        api_key: sent as ``Authorization: Bearer``; never logged, never in an error.
        connect_timeout: seconds to establish a connection.
        request_timeout: seconds for the whole request, connection included.
        max_connections: connection pool size; match it to the concurrency.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        max_connections: int = 8,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._send_url = self.base_url + SEND_PATH
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, connect=connect_timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # the key stays out of every repr
        return f"<AiohttpMmsClient {self.base_url}>"

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, group: Group, key: str) -> SendReceipt:
        """POST the group; return a receipt or raise a typed :class:`SendError`."""
        data = orjson.dumps(request_body(group))
        headers = {**self._headers, "Idempotency-Key": key}
        status, body = await self._request("POST", self._send_url, data, headers)
        try:
            return parse_receipt(body)
        except AmbiguousSendError as exc:
            exc.status = status
            raise

    async def fetch_group(self, message_id: str) -> tuple[RecipientStatus, ...]:
        """GET the group's messages; the recipients and statuses they list."""
        url = f"{self.base_url}{GROUP_PATH}{_segment(message_id)}"
        _, body = await self._request("GET", url)
        return parse_statuses(body.get("data") if isinstance(body, dict) else None)

    async def fetch_message(self, message_id: str) -> tuple[RecipientStatus, ...]:
        """GET one message; the recipients and statuses it lists."""
        url = f"{self.base_url}{MESSAGE_PATH}{_segment(message_id)}"
        _, body = await self._request("GET", url)
        return parse_statuses(body.get("data") if isinstance(body, dict) else None)

    async def _request(
        self,
        method: str,
        url: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, object]:
        """One request; the status and parsed body of a 2xx, or a typed :class:`SendError`."""
        session = self._open()
        with map_client_errors():
            async with session.request(
                method, url, data=data, headers=headers or self._headers
            ) as resp:
                raw = await resp.read()
                status = resp.status
                resp_headers = {k.lower(): v for k, v in resp.headers.items()}
        try:
            body: object = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
            if 200 <= status < 300:
                raise AmbiguousSendError(
                    f"HTTP {status} with a body that is not JSON", status=status
                ) from None
        if 200 <= status < 300:
            return status, body
        raise error_for_status(status, body, resp_headers)


def _segment(message_id: str) -> str:
    """A message id as one URL path segment: ids come from a ledger or a webhook, so quote them."""
    return urllib.parse.quote(message_id, safe="")
