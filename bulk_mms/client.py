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

import contextvars
import datetime as dt
import errno
import json
import math
import re
import resource
import urllib.parse
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Protocol, Self

import aiohttp
import orjson
import structlog
import yarl
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from bulk_mms._version import __version__
from bulk_mms.answers import (
    NOT_JSON,
    OPTOUT_PAGE_MAX,
    RECORDS_MAX,
    RECORDS_MAX_PAGES,
    RECORDS_PAGE_MAX,
    PageMeta,
    page_meta,
    parse_errors,
    parse_json,
    parse_optouts,
    parse_records,
    parse_retry_after,
    parse_statuses,
    read_receipt,
)
from bulk_mms.clock import Clock, SystemClock, running_timeout, since_boot
from bulk_mms.errors import (
    AccountRefused,
    AmbiguousSendError,
    AuthError,
    DescriptorsExhausted,
    EndpointError,
    NetworkError,
    NotFound,
    RateLimited,
    RecordsUnread,
    Rejected,
    SendError,
    ServerError,
)
from bulk_mms.models import (
    Group,
    MessageRecord,
    OptOut,
    RecipientStatus,
    SendReceipt,
)
from bulk_mms.words import one_line

SEND_PATH = "/messages/group_mms"
GROUP_PATH = "/messages/group/"
MESSAGE_PATH = "/messages/"
OPTOUTS_PATH = "/messaging_optouts"
#: Message detail records: evidence of what the API accepted, whatever the answer said.
RECORDS_PATH = "/reports/mdrs"

USER_AGENT = f"bulk-mms/{__version__}"
log = structlog.get_logger(__name__)


class MmsClient(Protocol):
    """Sends one group MMS, and reads back where its recipients stand. The one API seam."""

    async def send(
        self, group: Group, key: str, *, leave_within: float | None = None
    ) -> SendReceipt:
        """Send ``group`` under the ``Idempotency-Key`` ``key``; return the API's receipt.

        ``leave_within``: seconds the request has to leave in (a deadline or a window closes
        then). A connection not ready by then (being made, or waited for from the pool)
        means the request never leaves: :class:`~bulk_mms.errors.NetworkError`.

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
#
# Every answer is untrusted input: each field is read with a bound, and nothing a server sends
# can raise anything but a SendError. A field that fails its bound is dropped (and, where it
# matters, logged), never allowed to crash the run or turn into a send that did not happen.

#: Largest response body read; past it the answer is unusable (a 2xx is then in doubt).
MAX_ANSWER_BODY = 1 << 20
#: What a copy of the API key is replaced with, in an API's answer or a log line
#: (:mod:`bulk_mms.log`).
REDACTED: Final = "[redacted]"
_REDACTED: Final = REDACTED.encode()
#: Shorter "keys" are not real Telnyx keys; blanking them would mangle ordinary words.
MIN_SECRET: Final = 8


def error_for_status(  # noqa: PLR0911 - a table from HTTP status to the error it means, one return a row
    status: int,
    body: object,
    headers: Mapping[str, str],
    *,
    now: float,
    base_url: str = "the base URL",
    method: str = "GET",
) -> SendError:
    """The typed error for a response that is not a 2xx to a ``method`` request, read as of
    ``now`` (the wall time a ``Retry-After`` date is counted from).

    A POST (a send) can change something: a 5xx that may follow the server's acting on it
    (:data:`_MAY_HAVE_ACTED`) is ambiguous, since no Idempotency-Key is declared for group
    MMS to make a repeat safe; and a 404 or 405 means the send endpoint is not at the base
    URL, not a verdict on the group.
    """
    errors = parse_errors(body)
    send = method == "POST"
    if 300 <= status < 400:
        target = _where(headers.get("location"))
        return EndpointError(
            f"the server answered with a redirect{target}, which bulk-mms never follows: "
            + check_base_url_hint(base_url),
            status=status,
        )
    if status in (401, 403):
        return AuthError("the API key was refused", status=status, errors=errors)
    if send and status in (404, 405):
        return EndpointError(
            f"POST {SEND_PATH} is not found here: " + check_base_url_hint(base_url),
            status=status,
            errors=errors,  # what the answer said, should it say more
        )
    if status == 404:
        return NotFound("the API does not know this message id", status=status, errors=errors)
    if status == 402 and not errors:
        # Payment Required with no code to go by (a gateway's page): the account cannot send,
        # whichever group asks; one with its code (20100) is the error policy's to judge
        return AccountRefused("the account cannot send (402 Payment Required)", status=status)
    if status == 429:
        return RateLimited(
            "rate limited",
            retry_after=parse_retry_after(headers, now),
            status=status,
            errors=errors,
        )
    if send and status in _MAY_HAVE_ACTED:
        # a 500, 502 or 504 may come after the server acted (a gateway's, behind which the
        # API took it)
        return AmbiguousSendError(
            f"the server failed ({status}) after the request reached it; it may have been accepted",
            status=status,
            errors=errors,
        )
    if 500 <= status < 600 or status in (408, 409):
        # 408/409, 501/503/505: the server did not (yet) act on the request; safe to retry
        # a Retry-After says when to come back (RFC 9110 15.6.4); a rate window's reset
        # (x-ratelimit-reset, on any answer) says nothing of a failure
        hint = {k: v for k, v in headers.items() if k in ("retry-after", "retry-after-ms")}
        return ServerError(
            "the server failed",
            retry_after=parse_retry_after(hint, now),
            status=status,
            errors=errors,
        )
    if 400 <= status < 500:
        return Rejected("the API refused the request", status=status, errors=errors)
    # 1xx or a status HTTP does not define: no telling what the server did with the request
    return AmbiguousSendError("the server answered with an unknown status", status=status)


def check_base_url_hint(base_url: str) -> str:
    """The end of every message that blames the base URL: which one, and where it is set."""
    return f"check the base URL ({base_url}; api.base_url, --base-url or TELNYX_BASE_URL)"


def _where(location: str | None) -> str:
    """`` to https://host`` for a redirect's Location (scheme and host only), or nothing."""
    if not location:
        return ""
    try:
        url = yarl.URL(location)
    except (ValueError, TypeError):
        return ""
    if not url.is_absolute() or url.host is None:
        return " (to a path on the same host)"
    return f" (to {url.scheme}://{url.host[:100]})"


class _ClientErrors:
    """:func:`map_client_errors`' context manager; it keeps no state, so one serves every
    block."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, aiohttp.ClientError | OSError | ValueError) and not isinstance(
            exc, SendError
        ):
            raise _translate(exc) from None


_CLIENT_ERRORS: Final = _ClientErrors()


def map_client_errors() -> _ClientErrors:
    """Translate aiohttp and socket failures in its block into the :class:`SendError` tree.

    Raises:
        DescriptorsExhausted: no socket could be opened for want of file descriptors (a local
            fault, checked first: aiohttp reports it as a failure to connect).
        SendError: the subclass that says whether the request left (see the module docstring).
    """
    return _CLIENT_ERRORS


def _translate(exc: BaseException) -> SendError:  # noqa: PLR0911 - one return per lower-layer error it maps (httpx's map_exceptions)
    """The :class:`SendError` for an aiohttp, socket or URL failure, its words (:func:`_said`)
    in one line."""
    if (exhausted := out_of_descriptors(exc)) is not None:
        return exhausted
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        # raised before anything is sent (check_settings refuses such URLs up front)
        return EndpointError(f"the base URL cannot be used ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return NetworkError(f"connect timed out ({_said(exc) or 'no answer'})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        # DNS, refused, TLS: the connection was never made, so nothing was sent
        return NetworkError(f"cannot connect: {_said(exc)}")
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return AmbiguousSendError(f"no response in time ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return AmbiguousSendError("the server closed the connection before answering")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return AmbiguousSendError(f"the response was cut off ({_said(exc)})")
    return AmbiguousSendError(f"connection failed ({type(exc).__name__}: {_said(exc)})")


def _said(exc: BaseException) -> str:
    """``exc``'s words in one line (:func:`~bulk_mms.words.one_line`): aiohttp's break theirs
    over several (``400, message:`` and the reason on the next), which a log line, the ledger
    and the terminal keep as one."""
    return one_line(str(exc))


def out_of_descriptors(exc: BaseException) -> DescriptorsExhausted | None:
    """The :class:`DescriptorsExhausted` for ``exc`` when it (or the error it wraps: aiohttp's
    ``os_error``, a cause or context) is EMFILE or ENFILE; None for any other failure."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.EMFILE, errno.ENFILE):
            return DescriptorsExhausted(descriptors_message(err.errno))
        todo += [getattr(err, "os_error", None), err.__cause__, err.__context__]
    return None


def descriptors_message(code: int) -> str:
    """What running out of file descriptors means and what to do, in one line."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    whose = (
        "the system's open-file table is full (ENFILE)"
        if code == errno.ENFILE
        else f"this process has all the file descriptors it may open (EMFILE; ulimit -n is {soft})"
    )
    return (
        f"out of file descriptors, a local limit, not the API's: {whose}; raise ulimit -n or "
        "lower --concurrency. Nothing was sent on that request: rerun to resume"
    )


# --------------------------------------------------------------------------------------------
# The real client


#: When the request being sent must have left by, on :func:`~bulk_mms.clock.since_boot`
#: (:meth:`AiohttpMmsClient.send` sets it for its own request; None: no bound).
_LEAVE_BY: Final[contextvars.ContextVar[float | None]] = contextvars.ContextVar(
    "bulk_mms_leave_by", default=None
)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, with a send's last check before its request leaves: a connection
    got (from the pool, or made) after the send's time to leave ran out (:data:`_LEAVE_BY`) is
    put back, and the request never leaves. The connect timeout bounds that wait on the event
    loop's clock, which stands still while the machine is suspended; this check reads a clock
    that does not (:func:`~bulk_mms.clock.since_boot`)."""

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's own signature, which it calls by keyword
    ) -> Connection:
        conn = await super().connect(req, traces, timeout)
        leave_by = _LEAVE_BY.get()
        if leave_by is not None and since_boot() >= leave_by:
            conn.release()
            raise NetworkError(
                "the time to leave in ran out while waiting for a connection; not sent"
            )
        return conn


class AiohttpMmsClient:
    """:class:`MmsClient` over one :class:`aiohttp.ClientSession`.

    Args:
        base_url: e.g. ``https://api.telnyx.com/v2`` (no trailing slash needed).
        api_key: sent as ``Authorization: Bearer``; never logged, never in an error.
        connect_timeout: seconds to establish a connection.
        request_timeout: seconds for the whole request, connection included, in time this
            process ran (:func:`~bulk_mms.clock.running_timeout`).
        max_connections: connection pool size; match it to the concurrency.
        clock: the job's clock, whose wall time its answers' times are read by (a status's
            stamp, a ``Retry-After`` date); the system's by default.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        max_connections: int = 8,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self.base_url = base_url.rstrip("/")
        self._send_url = self.base_url + SEND_PATH
        # an answer that quotes the key (a proxy's error echoing the request's headers) has it
        # blanked before it is read, so no ledger, log or error ever holds it, in each form it
        # may be written in (_written); a key too short to be a real one is not looked for (it
        # would mangle the answer's own words)
        self._secrets = _written(api_key) if len(api_key) >= MIN_SECRET else ()
        #: the base URL as messages name it: a key put in it by mistake blanked, likewise
        self._shown_url = self._hidden(self.base_url)
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        # never rounded up to a whole second (aiohttp's ceil_threshold): a send's connect is
        # bounded by the time it has to leave in, to the millisecond. The whole request's
        # bound is counted in time this process ran (running_timeout, in _request), not
        # aiohttp's: a process stopped (SIGSTOP, a VM paused) while its answer came reads it
        # when it runs again, instead of holding an accepted group in doubt
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, ceil_threshold=math.inf
        )
        self._request_timeout = request_timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # the key stays out of every repr
        return f"<AiohttpMmsClient {self._shown_url}>"

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = _Connector(limit=self._max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,  # every request's; a send adds its Idempotency-Key
                timeout=self._timeout,
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, group: Group, key: str, *, leave_within: float | None = None
    ) -> SendReceipt:
        """POST the group; return a receipt or raise a typed :class:`SendError`. The
        connection must be ready within ``leave_within`` seconds, if given (see
        :meth:`MmsClient.send`): the request leaves then, or not at all."""
        if leave_within is not None and leave_within <= 0:
            raise NetworkError("no time was left for the request to leave in; not sent")
        data = orjson.dumps(request_body(group))
        timeout = self._timeout
        leaving = None
        if leave_within is not None:
            leaving = _LEAVE_BY.set(since_boot() + leave_within)
            if leave_within < (timeout.connect or float("inf")):
                timeout = aiohttp.ClientTimeout(
                    total=timeout.total, connect=leave_within, ceil_threshold=math.inf
                )
        try:
            status, raw = await self._exchange(
                "POST", self._send_url, data, {"Idempotency-Key": key}, timeout
            )
        finally:
            if leaving is not None:
                _LEAVE_BY.reset(leaving)
        try:
            return read_receipt(raw, group.to, group.message.from_)
        except AmbiguousSendError as exc:
            exc.status = status
            raise

    async def fetch_group(self, message_id: str) -> tuple[RecipientStatus, ...]:
        """GET the group's messages; the recipients and statuses they list."""
        url = f"{self.base_url}{GROUP_PATH}{_segment(message_id)}"
        _, body = await self._request("GET", url)
        data = body.get("data") if isinstance(body, dict) else None
        return parse_statuses(data, message_id, now=self._clock.wall())

    async def fetch_message(self, message_id: str) -> tuple[RecipientStatus, ...]:
        """GET one message; the recipients and statuses it lists."""
        url = f"{self.base_url}{MESSAGE_PATH}{_segment(message_id)}"
        _, body = await self._request("GET", url)
        data = body.get("data") if isinstance(body, dict) else None
        return parse_statuses(data, message_id, now=self._clock.wall())

    async def fetch_optouts(
        self,
        page: int,
        size: int = OPTOUT_PAGE_MAX,
        *,
        from_: str | None = None,
        profile: str | None = None,
    ) -> tuple[list[OptOut], int]:
        """``GET /messaging_optouts``: one page of opt-outs (``page[size]`` at most
        :data:`OPTOUT_PAGE_MAX`), unredacted (``redaction_enabled=false``: a redacted number,
        ``+447766****``, names nobody), filtered by sender (``filter[from]``) and messaging
        profile (``filter[messaging_profile_id]``) when given. The blocks
        (:func:`parse_optouts`) and the number of pages.

        Raises:
            SendError: as for any GET (a GET is always safe to retry).
        """
        size = max(1, min(size, OPTOUT_PAGE_MAX))
        query: dict[str, str | int] = {
            "page[number]": page,
            "page[size]": size,
            "redaction_enabled": "false",
        }
        if from_ is not None:
            query["filter[from]"] = from_
        if profile is not None:
            query["filter[messaging_profile_id]"] = profile
        url = f"{self.base_url}{OPTOUTS_PATH}?" + urllib.parse.urlencode(
            query, quote_via=urllib.parse.quote
        )
        try:
            _, body = await self._request("GET", url)
        except NotFound as exc:  # the list is no message: the endpoint is not here
            raise EndpointError(
                f"GET {OPTOUTS_PATH} is not found here: " + check_base_url_hint(self._shown_url),
                status=exc.status,
                errors=exc.errors,
            ) from None
        return parse_optouts(body, size)

    async def fetch_records(
        self, cli: str, cld: str, start: float, end: float
    ) -> list[MessageRecord]:
        """``GET /reports/mdrs``: the outbound message detail records from ``cli`` to ``cld``
        created from ``start`` to ``end`` (seconds since the epoch), every page of them.

        The spec answers with ``meta`` (``reporting_PaginationMeta``: ``page_number``,
        ``total_pages``, ``total_results``) but declares no parameter to ask for a page. The
        first page is asked for as the spec declares the query; the next ones with
        ``page[number]``, as Telnyx's other lists take it, and each is read only when its
        ``meta`` says it is that page of the same answer (a server that ignores the parameter
        answers the first page again). The answer is whole when its first page lists nothing,
        or every page it states was read and holds the records it counts.

        Raises:
            RecordsUnread: the answer cannot be read whole: its ``meta`` states no page
                count, claims more than :data:`RECORDS_MAX_PAGES` pages or
                :data:`RECORDS_MAX` records, or a later page is not the page asked for. It
                carries the records read until then: they can show a group accepted, never
                absent (a group is never taken for absent on part of its records).
            SendError: as for any GET (a GET is always safe to retry).
        """
        query: dict[str, str | int] = {
            "direction": "OUTBOUND",
            "cli": cli,
            "cld": cld,
            "start_date": _iso_z(start),
            "end_date": _iso_z(end),
        }
        records, first = await self._records_page(query)
        if first.listed == 0 and not first.total_results and (first.total_pages or 0) <= 1:
            return records  # the first page lists none: there are none
        pages, total = first.total_pages, first.total_results
        if pages is None and total is not None and first.listed >= total:
            pages = 1  # no page count, but the first page holds every record it counts
        if pages is None or pages < 1:
            raise _incomplete("states no page count", records)
        if pages > RECORDS_MAX_PAGES:
            raise _incomplete(f"claims more than {RECORDS_MAX_PAGES} pages", records)
        if (total or 0) > RECORDS_MAX:
            raise _incomplete(f"counts more than {RECORDS_MAX} records", records)
        listed = first.listed
        for number in range(2, pages + 1):
            more, meta = await self._records_page({**query, "page[number]": number})
            if meta.page_number != number or meta.listed == 0:
                raise _incomplete(f"page {number} was asked for and not served", records)
            if (meta.total_pages, meta.total_results) != (pages, total):
                raise _incomplete("changed while it was read", records)
            records += more
            listed += meta.listed
            if listed > RECORDS_MAX:
                raise _incomplete(f"lists over {RECORDS_MAX} records", records)
        if total is not None and listed < total:
            raise _incomplete(f"counts {total} records but lists {listed}", records)
        return records

    async def _records_page(
        self, query: Mapping[str, str | int]
    ) -> tuple[list[MessageRecord], PageMeta]:
        """One page of ``GET /reports/mdrs``: its records and its :class:`PageMeta`.

        Raises:
            RecordsUnread: it has no ``data`` list, or lists more than
                :data:`RECORDS_PAGE_MAX` entries (not read whole).
        """
        url = f"{self.base_url}{RECORDS_PATH}?" + urllib.parse.urlencode(
            query, quote_via=urllib.parse.quote
        )
        _, body = await self._request("GET", url)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise _incomplete("has no data list")
        meta = page_meta(body)
        if meta.listed > RECORDS_PAGE_MAX:
            raise _incomplete(f"lists {meta.listed} records on one page")
        return parse_records(body), meta

    async def _request(self, method: str, url: str) -> tuple[int, object]:
        """One request (:meth:`_exchange`); the status and parsed body of a 2xx.

        Raises:
            AmbiguousSendError: a 2xx whose body is not JSON.
        """
        status, raw = await self._exchange(method, url)
        body = parse_json(raw)
        if body is NOT_JSON:
            raise AmbiguousSendError("the answer's body is not JSON", status=status)
        return status, body

    async def _exchange(
        self,
        method: str,
        url: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeouts: aiohttp.ClientTimeout | None = None,
    ) -> tuple[int, bytes]:
        """One request; the status and body of a 2xx, or a typed :class:`SendError`.

        Redirects are never followed, and at most :data:`MAX_ANSWER_BODY` bytes of a body are
        read, the API key blanked wherever the body quotes it (:data:`REDACTED`); the whole
        request, its body read included, is bounded by ``request_timeout`` of running time
        (:func:`~bulk_mms.clock.running_timeout`). ``timeouts``: this request's connect bound,
        instead of the client's.
        """
        session = self._open()
        try:
            with map_client_errors():  # inside it, a TimeoutError of the running bound is mapped
                async with (
                    running_timeout(self._request_timeout),
                    session.request(
                        method,
                        url,
                        data=data,
                        headers=headers,
                        allow_redirects=False,
                        timeout=timeouts or self._timeout,
                    ) as resp,
                ):
                    status = resp.status
                    ok = 200 <= status < 300
                    # an error's headers say when to try again; an answer's are not needed
                    resp_headers = {} if ok else {k.lower(): v for k, v in resp.headers.items()}
                    raw = await _read_bounded(resp) if not 300 <= status < 400 else b""
        except SendError as exc:
            self._blank(exc)
            raise
        if raw:
            raw = self._hidden_answer(raw)
        if raw is None:
            if ok:
                raise AmbiguousSendError(
                    f"the answer's body is over {MAX_ANSWER_BODY} bytes: unusable",
                    status=status,
                )
            body: object = None
        elif ok:
            return status, raw
        else:
            body = parse_json(raw)
            body = None if body is NOT_JSON else body
        raise error_for_status(
            status,
            body,
            resp_headers,
            now=self._clock.wall(),
            base_url=self._shown_url,
            method=method,
        )

    def _hidden_answer(self, raw: bytes) -> bytes:
        """An answer's body with the API key blanked (:data:`REDACTED`) wherever it is
        written: as it is or as a JSON string writes it (:func:`_written`), and in any other
        escape JSON allows (a character as ``\\u004b``), which no form of the bytes matches
        but the parsed strings would spell out. A JSON body holding an escape is parsed
        (:func:`~bulk_mms.answers.parse_json`) and written again plainly; when a string (or a
        name) of it holds the key, that plain JSON, the key blanked, is the body read. A body
        nested too deep to be written again is not read (it becomes empty). A body that is not
        JSON is blanked as bytes only: it is never parsed into words."""
        raw = self._blanked(raw)
        if not self._secrets or b"\\" not in raw:
            return raw  # no escape: the bytes' forms are every form the key takes
        body = parse_json(raw)
        if body is NOT_JSON:
            return raw
        try:
            plain = json.dumps(body, ensure_ascii=False).encode()  # escapes as _written does
        except RecursionError:
            return b""
        blanked = self._blanked(plain)
        return raw if blanked == plain else blanked

    def _blanked(self, raw: bytes) -> bytes:
        """``raw`` with each form of the API key :func:`_written` gives blanked."""
        for secret in self._secrets:
            raw = raw.replace(secret, _REDACTED)
        return raw

    def _hidden(self, text: str) -> str:
        """``text`` with the API key blanked (:data:`REDACTED`) wherever it quotes it, in any
        form :func:`_written` gives (a key too short to be a real one is not looked for: it
        would mangle ordinary words)."""
        for secret in self._secrets:
            text = text.replace(secret.decode(), REDACTED)
        return text

    def _blank(self, exc: SendError) -> None:
        """Blank the API key wherever ``exc``'s message quotes it (:meth:`_hidden`): a failure
        to read an answer quotes the server's bytes (a status line, a header, a chunk's size)
        and the URL, either of which may hold it."""
        if (hidden := self._hidden(exc.message)) != exc.message:
            exc.message = hidden
            exc.args = (str(exc),)


def _written(key: str) -> tuple[bytes, ...]:
    """The API key as an answer may quote it, longest first: as it is, and as it is written
    in a JSON string (a quote or a backslash escaped, and a slash too, as some encoders
    write it), where the answer's words, once parsed, would spell it out."""
    in_json = orjson.dumps(key)[1:-1]
    forms = {key.encode(), in_json, in_json.replace(b"/", b"\\/")}
    return tuple(sorted(forms, key=len, reverse=True))


#: The statuses answering a send that may follow a request the server acted on: any 5xx but
#: those that say it was not handled (501 not implemented, 503 unable to handle it now, 505
#: version not supported), which stay retryable.
_MAY_HAVE_ACTED: Final = frozenset(range(500, 600)) - {501, 503, 505}


#: A Content-Encoding that leaves the body as it is.
_IDENTITY = re.compile(r"\s*(identity)?\s*", re.IGNORECASE)


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BODY) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes (the connection is then dropped)."""
    if resp.content_length is not None and resp.content_length > limit:
        resp.close()
        return None
    if resp.content_length is not None and _IDENTITY.fullmatch(
        resp.headers.get("Content-Encoding", "")
    ):
        # an uncompressed body of a declared length: no more than that (the parser holds it
        # to it). A compressed one's length is not what it inflates to: it is counted below.
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    while chunk := await resp.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            resp.close()  # never read the rest: a body that never ends must not fill memory
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _incomplete(why: str, records: Sequence[MessageRecord] = ()) -> RecordsUnread:
    """The error of a records answer that cannot be read whole (``why``, bounded numbers),
    with the ``records`` its pages listed before it proved so."""
    return RecordsUnread(f"GET {RECORDS_PATH}: the answer {why}; not read whole", records)


def _iso_z(seconds: float) -> str:
    """Seconds since the epoch as ``2026-12-05T08:00:00Z`` (a records query's bound)."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _segment(message_id: str) -> str:
    """A message id as one URL path segment: ids come from a ledger or a webhook, so quote them."""
    return urllib.parse.quote(message_id, safe="")
