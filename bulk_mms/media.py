"""Media preflight: every media URL must answer, say what it is, and fit under 1 MB together.

Telnyx fetches ``media_urls`` itself when it sends, and a dead link or an oversized image fails
each group *after* it was paid for. So before the first request, each distinct URL is asked once:
``HEAD`` (following redirects), and where a server refuses HEAD or leaves out the size, a ranged
``GET`` of one byte (``Content-Range`` then gives the size; a server that ignores ranges is read
up to the limit and no further). A URL that does not answer 2xx, has no content type or serves
an HTML page, or a message whose media add up to :data:`MAX_MEDIA_BYTES` or more, stops the run
before anything is sent, with a :class:`~bulk_mms.errors.MediaError` naming the URL.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

import aiohttp
import msgspec
import structlog

from bulk_mms._version import __version__
from bulk_mms.errors import MediaError

log = structlog.get_logger(__name__)

#: The API's limit: "The total media size must be less than 1 MB."
MAX_MEDIA_BYTES = 1_000_000
#: The smallest MMS size the US carriers (AT&T, T-Mobile, Verizon) deliver untouched, by sender
#: type: above it some carrier drops or transcodes the media (read 2026-11-23).
CARRIER_CAPS = {"toll_free": 600_000, "short_code": 600_000, "long_code": 1_000_000}
_CONTENT_RANGE = re.compile(r"bytes\s+(?:\d+-\d+|\*)/(\d+)")


class MediaInfo(msgspec.Struct, frozen=True):
    """What a media URL serves."""

    url: str
    content_type: str
    size: int


def _content_type(resp: aiohttp.ClientResponse) -> str:
    return resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


async def _ranged_size(session: aiohttp.ClientSession, url: str) -> tuple[str, int]:
    async with session.get(url, headers={"Range": "bytes=0-0"}) as resp:
        if resp.status >= 400:
            raise MediaError(url, f"answered HTTP {resp.status}")
        ctype = _content_type(resp)
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if resp.status == 206 and m:
            return ctype, int(m.group(1))
        if resp.content_length is not None:
            return ctype, resp.content_length
        size = 0  # no size anywhere: count the bytes, up to just past the limit
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size >= MAX_MEDIA_BYTES:
                break
        return ctype, size


async def probe(session: aiohttp.ClientSession, url: str) -> MediaInfo:
    """Ask one URL what it serves.

    Raises:
        MediaError: it does not answer 2xx, has no content type, or serves an HTML page.
    """
    try:
        async with session.head(url, allow_redirects=True) as resp:
            status, ctype, size = resp.status, _content_type(resp), resp.content_length
        if status >= 400 or size is None or not ctype:
            ranged_type, size = await _ranged_size(session, url)
            ctype = ctype or ranged_type
    except MediaError:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise MediaError(url, f"cannot be fetched ({reason})") from None
    if not ctype:
        raise MediaError(url, "has no Content-Type; Telnyx needs one to send it")
    if ctype == "text/html":
        raise MediaError(url, "serves an HTML page, not media (a login or error page?)")
    return MediaInfo(url, ctype, size)


def carrier_warnings(total: int, senders: Sequence[str]) -> list[str]:
    """What some carrier would do to media of ``total`` bytes from these senders, by type."""
    from bulk_mms.pacing import sender_type  # noqa: PLC0415 - media must not need the pacer

    warnings = []
    for kind in sorted({sender_type(s) for s in senders}):
        cap = CARRIER_CAPS.get(kind)
        if cap is not None and total > cap:
            warnings.append(
                f"{kind} senders: {total:,} bytes of media is over the {cap:,} some US carriers "
                "deliver untouched; they may drop or transcode it"
            )
    return warnings


async def check_media(
    urls: Sequence[str], *, request_timeout: float = 15.0, senders: Sequence[str] = ()
) -> tuple[MediaInfo, ...]:
    """Probe each distinct URL once, concurrently, and check the message's total (and warn,
    per sender type, where some carrier's cap is lower than the API's).

    Raises:
        MediaError: the first URL that fails, or the total size.
    """
    distinct = list(dict.fromkeys(urls))
    if not distinct:
        return ()
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=request_timeout),
        headers={"User-Agent": f"bulk-mms/{__version__} (media preflight)"},
    ) as session:
        results = await asyncio.gather(
            *(probe(session, u) for u in distinct), return_exceptions=True
        )
    infos: list[MediaInfo] = []
    for result in results:  # in the job's order, so the error named is the first listed
        if isinstance(result, BaseException):
            raise result
        infos.append(result)
    sizes = {i.url: i for i in infos}
    total = sum(sizes[u].size for u in urls)
    for info in infos:
        log.info("media.checked", url=info.url, content_type=info.content_type, size=info.size)
    if total >= MAX_MEDIA_BYTES:
        biggest = max(infos, key=lambda i: i.size)
        raise MediaError(
            biggest.url,
            f"the message's media total {total:,} bytes; Telnyx takes less than "
            f"{MAX_MEDIA_BYTES:,} (this one is {biggest.size:,})",
        )
    for warning in carrier_warnings(total, senders):
        log.warning("media.carrier_cap", detail=warning)
    return tuple(infos)
