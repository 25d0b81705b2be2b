"""The sandbox API: documented validation and shapes, so tests against it mean something."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from bulk_mms.fake_api import FakeTelnyx

API = tuple[FakeTelnyx, str]
AUTH = {"Authorization": "Bearer test-key-123"}


async def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/messages/group_mms", json=body, headers=AUTH) as r,
    ):
        data: dict[str, Any] = await r.json()
        return r.status, data


async def get(url: str, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}{path}", headers=AUTH) as r:
        data: dict[str, Any] = await r.json()
        return r.status, data


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"to": ["+12125550100"], "text": "x"}, "'from'"),
        ({"from": "+18445550001", "to": [], "text": "x"}, "non-empty list"),
        (
            {"from": "+18445550001", "to": [f"+1212555010{i}" for i in range(9)], "text": "x"},
            "No more than 8",
        ),
        ({"from": "+18445550001", "to": ["2125550100"], "text": "x"}, "+E.164"),
        ({"from": "+18445550001", "to": ["+12125550100"], "text": ""}, "non-empty string"),
        ({"from": "+18445550001", "to": ["+12125550100"]}, "text or media"),
        (
            {"from": "+18445550001", "to": ["+12125550100", "+12125550100"], "text": "x"},
            "repeat",
        ),
    ],
)
async def test_invalid_bodies_get_422(fake_api: API, body: dict[str, Any], detail: str) -> None:
    """Bodies the API documents as invalid are refused with a Telnyx-shaped 422."""
    _, url = fake_api
    status, data = await post(url, body)
    assert status == 422
    assert detail in data["errors"][0]["detail"]


async def test_gets_return_what_was_sent(fake_api: API) -> None:
    """The group GET lists one message per recipient; the message GET finds both kinds of id."""
    fake, url = fake_api
    to = ["+12125550100", "+12125550101"]
    status, sent = await post(url, {"from": "+18445550001", "to": to, "text": "hi"})
    assert status == 200
    assert sent["data"]["cost"]["amount"] == "0.0102"  # a string on send, as documented
    gid = sent["data"]["id"]
    status, group = await get(url, f"/messages/group/{gid}")
    assert status == 200
    assert [m["to"][0]["phone_number"] for m in group["data"]] == to
    assert group["data"][0]["cost"] == {"amount": "0.00605", "currency": "USD"}  # final, a string
    one = group["data"][1]["id"]
    status, msg = await get(url, f"/messages/{one}")
    assert (status, msg["data"]["to"][0]["phone_number"]) == (200, to[1])
    status, _ = await get(url, "/messages/group/00000000-0000-0000-0000-000000000000")
    assert status == 404
    assert fake.recipient_counts() == dict.fromkeys(to, 1)
