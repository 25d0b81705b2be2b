"""Media preflight against a local server: HEAD, ranged GET, content types, the 1 MB total."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from msgspec.structs import replace

from bulk_mms.cli import main
from bulk_mms.errors import MediaError
from bulk_mms.media import MAX_MEDIA_BYTES, carrier_warnings, check_media
from bulk_mms.models import Money
from bulk_mms.prepare import dry_run
from tests.conftest import FAST, JobFactory


async def ok(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"x" * 2000, content_type="image/png")


async def half_mb(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"x" * (MAX_MEDIA_BYTES // 2 + 1), content_type="image/jpeg")


async def no_head(request: web.Request) -> web.StreamResponse:
    if request.method == "HEAD":
        return web.Response(status=405)
    assert request.headers.get("Range") == "bytes=0-0"
    return web.Response(
        status=206, body=b"x", content_type="video/mp4", headers={"Content-Range": "bytes 0-0/5000"}
    )


async def page(request: web.Request) -> web.StreamResponse:
    return web.Response(text="<html>log in</html>", content_type="text/html")


@pytest.fixture
async def media() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/ok.png", ok)
    app.router.add_get("/half.jpg", half_mb)
    app.router.add_route("*", "/nohead.mp4", no_head)
    app.router.add_get("/page", page)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        yield str(server.make_url("")).rstrip("/")


async def test_good_media_is_measured(media: str) -> None:
    """HEAD gives type and size; a server refusing HEAD is measured with a one-byte range."""
    infos = await check_media([f"{media}/ok.png", f"{media}/nohead.mp4"])
    assert [(i.content_type, i.size) for i in infos] == [("image/png", 2000), ("video/mp4", 5000)]


@pytest.mark.parametrize(
    ("paths", "bad", "words"),
    [
        (["/ok.png", "/missing.png"], "/missing.png", "HTTP 404"),
        (["/page"], "/page", "HTML page"),
        (["/half.jpg", "/ok.png", "/half.jpg"], "/half.jpg", "media total"),
    ],
)
async def test_bad_media_names_the_url(media: str, paths: list[str], bad: str, words: str) -> None:
    """A 404, an HTML page, or a total of 1 MB or more is a MediaError naming the URL."""
    with pytest.raises(MediaError) as info:
        await check_media([media + p for p in paths])
    assert info.value.url == media + bad
    assert words in str(info.value)


async def test_unreachable_host_is_one_line() -> None:
    """A refused connection is a MediaError saying it cannot be fetched."""
    with pytest.raises(MediaError) as info:
        await check_media(["http://127.0.0.1:9/x.png"])
    assert "cannot be fetched" in str(info.value)
    assert "\n" not in str(info.value)


def test_run_stops_before_sending_on_bad_media(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bulk-mms run` with an unreachable media URL exits 2 naming it; no ledger is written."""
    jobs.people(4)
    job = jobs.job(message='text = "hi"\nmedia_urls = ["http://127.0.0.1:9/x.png"]')
    assert main(["-q", "run", str(job.path), "--base-url", "http://127.0.0.1:9/v2"]) == 2
    err = capsys.readouterr().err
    assert "media http://127.0.0.1:9/x.png: cannot be fetched" in err
    assert not job.ledger.exists()


async def test_dry_run_estimates_time_and_cost(jobs: JobFactory) -> None:
    """The dry run's estimate: groups over the lowest ceiling, recipients times the price."""
    jobs.people(20)
    job = jobs.job(extra="group_size = 4", sender='["+18445550001", "+18445550002"]')
    settings = replace(
        FAST,
        rate=10.0,
        sender_limits={"+18445550001": 0.5, "+18445550002": 1.5},
        price_per_recipient=Decimal("0.0100"),
    )
    s = await dry_run(job, settings)
    assert s.estimate is not None
    assert s.estimate.rate == 2.0
    assert s.estimate.seconds == 2.5  # 5 groups at 2/s
    assert s.estimate.cost == Money(Decimal("0.2000"), "USD")
    bare = await dry_run(job, FAST)
    assert bare.estimate is not None
    assert bare.estimate.cost is None


def test_carrier_caps_warn_per_sender_type() -> None:
    """700 KB fits the API's 1 MB but not the 600 KB some carriers deliver from toll-free and
    short codes: a warning for those types, none for a long code."""
    warnings = carrier_warnings(700_000, ["+18445550001", "12345", "+13125550100"])
    assert len(warnings) == 2
    assert warnings[0].startswith("short_code")
    assert warnings[1].startswith("toll_free")
    assert carrier_warnings(500_000, ["+18445550001"]) == []
