"""The fake API behaves as Telnyx's spec says, and the spec (tests/data) checks it.

Its answers, and the requests our client sends it, are validated against the unmodified spec
excerpt with openapi-core; the delivery timeline, carrier codes, money, records, opt-outs and
signed webhooks are checked against what Telnyx documents (FACTS). No test sleeps: the fake
runs on a :class:`FakeClock` that the test moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.exceptions import OpenAPIError
from openapi_core.testing import MockRequest, MockResponse

from bulk_mms.answers import parse_statuses
from bulk_mms.client import AiohttpMmsClient
from bulk_mms.clock import parse_time
from bulk_mms.errors import AuthError
from bulk_mms.fake_api import (
    STATUSES,
    Accepted,
    FakeTelnyx,
    SeenRequest,
    WebhookPost,
    accept_log_writer,
    carrier_timeline,
)
from bulk_mms.fake_api.wire import STAMP_FORMS
from bulk_mms.models import Group, MessageBody, money
from bulk_mms.runner import run_job
from bulk_mms.testing import ledger_events
from bulk_mms.webhooks import verify
from tests.conftest import FAST, FakeClock, JobFactory, real_client, receiving, sent_and_tracked

API = tuple[FakeTelnyx, str]
AUTH = {"Authorization": "Bearer test-key-123"}
FROM = "+18445550001"


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


# -- the spec as the judge --------------------------------------------------------------------

SPEC = OpenAPI.from_file_path(str(Path(__file__).parent / "data" / "messaging.openapi.yml"))
#: The spec's host: the fake serves the same paths under its own.
SPEC_HOST = "https://api.telnyx.com"
#: Group recipients off Telnyx's network end ``unknown`` (FACTS 4, a support article); the
#: spec's status enum does not list it. The one deviation the checks tolerate, and only there.
UNKNOWN_ENUM = "'unknown' is not one of"


def as_mock(seen: SeenRequest) -> MockRequest:
    """A request the fake received, as openapi-core reads one."""
    return MockRequest(
        SPEC_HOST,
        seen.method.lower(),
        seen.path,
        args=dict(urllib.parse.parse_qsl(seen.query)),
        headers=seen.headers,
        data=seen.body or None,
        content_type=seen.headers.get("Content-Type", "application/json").split(";")[0],
    )


def problems(exc: OpenAPIError) -> list[str]:
    """Every schema error behind a validation failure, or the failure itself."""
    cause = exc.__cause__
    errors = getattr(cause, "schema_errors", None) or []
    found = [f"{list(e.absolute_path)}: {e.message}" for e in errors if hasattr(e, "message")]
    return found or [f"{type(exc).__name__}: {exc}"]


def request_problems(seen: SeenRequest) -> list[str]:
    try:
        SPEC.validate_request(as_mock(seen))
    except OpenAPIError as exc:
        return problems(exc)
    return []


def response_problems(seen: SeenRequest, status: int, raw: bytes) -> list[str]:
    try:
        SPEC.validate_response(as_mock(seen), MockResponse(raw, status_code=status))
    except OpenAPIError as exc:
        return problems(exc)
    return []


def assert_valid(seen: SeenRequest, status: int, raw: bytes, *, unknown_ok: bool = False) -> None:
    """The request and its answer are what the spec describes (``unknown`` aside, if asked)."""
    found = request_problems(seen) + response_problems(seen, status, raw)
    if unknown_ok:
        found = [p for p in found if UNKNOWN_ENUM not in p]
    assert found == [], found


@dataclass
class WebhookMock:
    """A webhook the fake posted, as openapi-core reads a request to one of the spec's
    ``webhooks`` (its ``WebhookRequest``): its headers and its body."""

    name: str
    body: bytes
    headers: dict[str, str]
    method: str = "post"
    content_type: str = "application/json"
    parameters: RequestParameters = field(init=False)

    def __post_init__(self) -> None:
        # names in lower case, as the spec writes them: HTTP's are case-insensitive
        self.parameters = RequestParameters(header={k.lower(): v for k, v in self.headers.items()})


def webhook_problems(post: WebhookPost) -> list[str]:
    """What the spec's ``deliveryUpdate`` webhook finds wrong with a webhook the fake posted:
    its body (an ``OutboundMessageEvent``) and the header parameters the spec declares
    (``telnyx-timestamp``, an integer, and ``telnyx-signature-ed25519``, both required)."""
    try:
        SPEC.validate_request(WebhookMock("deliveryUpdate", post.body, post.headers))
    except OpenAPIError as exc:
        return problems(exc)
    return []


class Api:
    """The fake on a test server, with a client that checks every exchange against the spec."""

    def __init__(self, fake: FakeTelnyx, url: str, http: aiohttp.ClientSession) -> None:
        self.fake, self.url, self.http = fake, url, http
        #: Check each exchange against the spec; off for deliberately invalid requests.
        self.check = True

    async def call(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        """One request; the status, the parsed body and the headers (their names in lower
        case), checked against the spec."""
        data = None if body is None else orjson.dumps(body)
        sent = {**AUTH, "Content-Type": "application/json", **(headers or {})}
        async with self.http.request(method, f"{self.url}{path}", data=data, headers=sent) as r:
            raw = await r.read()
            status, answer_headers = r.status, {k.lower(): v for k, v in r.headers.items()}
        if self.check:
            assert_valid(self.fake.http_log[-1], status, raw, unknown_ok=True)
        return status, orjson.loads(raw), answer_headers

    async def send(
        self, to: list[str], sender: str = FROM, key: str | None = None, text: str = "hi"
    ) -> tuple[int, Any]:
        headers = {"Idempotency-Key": key} if key else None
        status, body, _ = await self.call(
            "POST", "/messages/group_mms", {"from": sender, "to": to, "text": text}, headers
        )
        return status, body

    async def statuses(self, group_id: str) -> list[str]:
        status, body, _ = await self.call("GET", f"/messages/group/{group_id}")
        assert status == 200
        return [m["to"][0]["status"] for m in body["data"]]


@pytest.fixture
async def api() -> AsyncIterator[tuple[Api, FakeClock]]:
    """A spec-following fake on a fake clock, and a checking client for it."""
    clock = FakeClock()
    fake = FakeTelnyx(api_key="test-key-123", clock=clock.monotonic)
    async with (
        TestServer(fake.app(), host="127.0.0.1", port=0) as server,
        aiohttp.ClientSession() as http,
    ):
        yield Api(fake, str(server.make_url("/v2")), http), clock


ApiClock = tuple[Api, FakeClock]
CARRIER_CODES = ["40002", "40003", "40011", "40014", "40016", "40018"]


async def test_a_repeated_key_is_a_new_message_charged_again(api: ApiClock) -> None:
    """By default Idempotency-Key is ignored: the same body and key twice are two messages."""
    a, _ = api
    to = ["+12125550100", "+12125550101"]
    (s1, first), (s2, second) = [await a.send(to, key="k-1") for _ in range(2)]
    assert (s1, s2) == (200, 200)
    assert first["data"]["id"] != second["data"]["id"]
    assert a.fake.recipient_counts() == dict.fromkeys(to, 2)
    assert [m.idempotency_key for m in a.fake.accepted] == ["k-1", "k-1"]


async def test_replay_keys_replays_the_first_success_and_refuses_another_body(
    api: ApiClock,
) -> None:
    """With replay_keys, a repeated key gets the first answer; another body under it, 422."""
    a, _ = api
    a.fake.replay_keys = True
    to = ["+12125550100"]
    (_, first), (_, again) = [await a.send(to, key="k-1") for _ in range(2)]
    assert first == again
    status, body = await a.send(to, key="k-1", text="other")
    assert (status, body["errors"][0]["code"]) == (422, "10015")
    assert a.fake.recipient_counts() == {to[0]: 1}


@pytest.mark.parametrize("table", ["refuse", "report"])
@pytest.mark.parametrize("code", CARRIER_CODES)
async def test_carrier_codes_come_only_after_acceptance(
    api: ApiClock, code: str, table: str
) -> None:
    """A carrier code never answers the POST: the message is accepted, then the recipient
    ends failed with the code in errors[] on both GETs and in its detail record."""
    a, clock = api
    a.fake.delivery_status = carrier_timeline(0, sent_after=1, final_after=3)
    getattr(a.fake, table)["*0101"] = code
    status, sent = await a.send(["+12125550100", "+12125550101"])
    assert status == 200
    assert [t["status"] for t in sent["data"]["to"]] == ["queued", "queued"]
    clock.advance(5)
    gid = sent["data"]["id"]
    failed = "sending_failed" if code == "40014" else "delivery_failed"
    assert await a.statuses(gid) == ["delivered", failed]
    _, whole, _ = await a.call("GET", f"/messages/{gid}")
    assert [e["code"] for e in whole["data"]["errors"]] == [code]
    _, records, _ = await a.call("GET", "/reports/mdrs?cld=%2B12125550101")
    assert [r["status"] for r in records["data"]] == ["GW_REJECT" if code == "40014" else "FAILED"]


async def test_sync_carrier_codes_is_the_old_kind_answer(api: ApiClock) -> None:
    """With sync_carrier_codes, a refuse rule's carrier code is a 400 and nothing is accepted."""
    a, _ = api
    a.fake.sync_carrier_codes = True
    a.fake.refuse["*0101"] = "40016"
    status, body = await a.send(["+12125550100", "+12125550101"])
    assert (status, body["errors"][0]["code"]) == (400, "40016")
    assert a.fake.accepted == []


@pytest.mark.parametrize(
    ("code", "status"), [("40300", 409), ("20100", 402), ("40333", 429), ("40318", 429)]
)
async def test_synchronous_refusals_keep_their_documented_status(
    api: ApiClock, code: str, status: int
) -> None:
    """The codes the API itself answers with come with their documented HTTP status."""
    a, _ = api
    a.fake.refuse["*0101"] = code
    got, body = await a.send(["+12125550100", "+12125550101"])
    assert (got, [e["code"] for e in body["errors"]]) == (status, [code])
    assert a.fake.accepted == []


async def test_a_full_queue_is_429_40318(api: ApiClock) -> None:
    """The queue model refuses a message past its cap with 429 and code 40318."""
    a, _ = api
    a.fake.drain_rate, a.fake.queue_cap = 1.0, 1.0
    assert (await a.send(["+12125550100"]))[0] == 200
    status, body = await a.send(["+12125550101"])
    assert (status, body["errors"][0]["code"]) == (429, "40318")


async def test_the_request_limit_is_10011_with_x_ratelimit_headers(api: ApiClock) -> None:
    """Past the account's request rate: 429, code 10011, x-ratelimit-* with the reset in
    seconds, and no Retry-After; the next window is served again."""
    a, clock = api
    a.fake.request_limit = (2, 10.0)
    for _ in range(2):
        assert (await a.send(["+12125550100"]))[0] == 200
    clock.advance(4)
    status, body, headers = await a.call(
        "POST", "/messages/group_mms", {"from": FROM, "to": ["+12125550100"], "text": "x"}
    )
    assert (status, body["errors"][0]["code"]) == (429, "10011")
    assert headers["x-ratelimit-limit"] == "2"
    assert headers["x-ratelimit-remaining"] == "0"
    assert headers["x-ratelimit-reset"] == "6"
    assert "retry-after" not in headers
    clock.advance(6)
    assert (await a.send(["+12125550100"]))[0] == 200


async def test_a_bad_key_is_401_10009(api: ApiClock) -> None:
    """A key the account does not have: 401 with code 10009, in the spec's envelope."""
    a, _ = api
    status, body, _ = await a.call(
        "GET", "/messages/group/" + str(uuid.uuid4()), headers={"Authorization": "Bearer wrong"}
    )
    assert (status, body["errors"][0]["code"]) == (401, "10009")


async def test_a_40300_names_no_member_unless_asked(api: ApiClock) -> None:
    """A group with an opted-out member is one 40300 naming nobody; name_refused_members
    gives one error per member with its source.pointer."""
    a, _ = api
    a.fake.refuse["*0101"] = "40300"
    to = ["+12125550100", "+12125550101"]
    _, plain = await a.send(to)
    assert [("source" in e, "0101" in e["detail"]) for e in plain["errors"]] == [(False, False)]
    a.fake.name_refused_members = True
    _, named = await a.send(to)
    assert [e["source"]["pointer"] for e in named["errors"]] == ["/to/1"]


async def test_an_opted_out_pair_is_refused_from_its_sender_only(api: ApiClock) -> None:
    """An opt-out blocks its from→to pair: 409 from that sender, accepted from another."""
    a, _ = api
    a.fake.opt_out("+12125550101", FROM)
    assert (await a.send(["+12125550101"]))[0] == 409
    assert (await a.send(["+12125550101"], sender="+18445550002"))[0] == 200


async def test_every_status_of_the_spec_occurs_and_validates(api: ApiClock) -> None:
    """The carrier timeline takes recipients through queued, sending and sent to each final
    status, unknown included; every GET answer is the spec's shape (unknown aside)."""
    a, clock = api
    finals = ["delivered", "delivery_failed", "sending_failed", "expired",
              "delivery_unconfirmed", "unknown"]  # fmt: skip
    to = [f"+1212555010{i}" for i in range(len(finals))]
    outcomes = dict(zip(to, finals, strict=True))
    a.fake.delivery_status = carrier_timeline(0, sent_after=2, final_after=4, outcomes=outcomes)
    _, sent = await a.send(to)
    seen: set[str] = set()
    for _ in range(6):
        seen.update(await a.statuses(sent["data"]["id"]))
        clock.advance(1)
    assert seen == set(STATUSES)
    assert await a.statuses(sent["data"]["id"]) == finals


async def test_the_spec_omits_unknown_and_the_checks_say_so(api: ApiClock) -> None:
    """The one tolerated deviation is real: an unknown recipient fails the spec's enum."""
    a, _ = api
    a.fake.delivery_status = "unknown"
    _, sent = await a.send(["+12125550100"])
    status, _, _ = await a.call("GET", f"/messages/group/{sent['data']['id']}")
    found = response_problems(a.fake.http_log[-1], status, await _raw_last(a))
    assert len(found) == 1
    assert UNKNOWN_ENUM in found[0]


async def _raw_last(a: Api) -> bytes:
    """The fake's answer to the last GET, again (GETs are safe)."""
    seen = a.fake.http_log[-1]
    async with a.http.get(f"{a.url}{seen.path.removeprefix('/v2')}", headers=AUTH) as r:
        return await r.read()


async def test_money_is_an_estimate_then_final_and_wait_seconds_stays(api: ApiClock) -> None:
    """Costs are string amounts: the POST's estimate, the same on GETs until final, the final
    cost after, null for a message that never left; wait_seconds is on every answer."""
    a, clock = api
    a.fake.wait_seconds = lambda _n: 1.5
    outcomes = {"+12125550101": "sending_failed"}
    a.fake.delivery_status = carrier_timeline(0, 1, 3, outcomes=outcomes)
    _, sent = await a.send(["+12125550100", "+12125550101"])
    assert sent["data"]["cost"] == {"amount": "0.0102", "currency": "USD"}
    assert sent["data"]["wait_seconds"] == 1.5
    gid = sent["data"]["id"]
    _, early, _ = await a.call("GET", f"/messages/group/{gid}")
    assert [m["cost"]["amount"] for m in early["data"]] == ["0.0051", "0.0051"]
    clock.advance(5)
    _, late, _ = await a.call("GET", f"/messages/group/{gid}")
    assert [m["cost"] for m in late["data"]] == [{"amount": "0.00605", "currency": "USD"}, None]
    assert [m["wait_seconds"] for m in late["data"]] == [1.5, 1.5]
    _, whole, _ = await a.call("GET", f"/messages/{gid}")
    assert (whole["data"]["cost"]["amount"], whole["data"]["wait_seconds"]) == ("0.00605", 1.5)
    assert whole["data"]["completed_at"] is not None


async def test_mdrs_list_each_recipient_filtered_and_paged(api: ApiClock) -> None:
    """One record per recipient of each accepted message; cli, cld, id, status, direction,
    message_type and the date window filter; pages follow page[number] and page[size]."""
    a, clock = api
    start = dt.datetime.fromtimestamp(a.fake.wall(), dt.UTC)
    _, one = await a.send(["+12125550100", "+12125550101"])
    clock.advance(60)
    _, two = await a.send(["+12125550102"], sender="+18445550002")
    _, everything, _ = await a.call("GET", "/reports/mdrs")
    rows = everything["data"]
    assert [(r["cli"], r["cld"]) for r in rows] == [
        (FROM, "+12125550100"), (FROM, "+12125550101"), ("+18445550002", "+12125550102")
    ]  # fmt: skip
    group_get = await a.call("GET", f"/messages/group/{one['data']['id']}")
    assert [r["id"] for r in rows[:2]] == [m["id"] for m in group_get[1]["data"]]
    assert everything["meta"]["total_results"] == 3

    async def ids(query: str) -> list[str]:
        status, body, _ = await a.call("GET", f"/reports/mdrs?{query}")
        assert status == 200
        return [r["cld"] for r in body["data"]]

    q = urllib.parse.quote
    assert await ids(f"cli={q('+18445550002')}") == ["+12125550102"]
    assert await ids(f"cld={q('+12125550101')}&cli={q(FROM)}") == ["+12125550101"]
    assert await ids(f"id={rows[0]['id']}") == ["+12125550100"]
    assert await ids("status=DELIVERED&direction=OUTBOUND&message_type=MMS") == [
        r["cld"] for r in rows
    ]
    assert await ids("direction=INBOUND") == []
    after_first = (start + dt.timedelta(seconds=30)).isoformat()
    assert await ids(f"start_date={q(after_first)}") == ["+12125550102"]
    assert await ids(f"end_date={q(after_first)}") == ["+12125550100", "+12125550101"]
    assert await ids("page[number]=2&page[size]=2") == ["+12125550102"]
    _, paged, _ = await a.call("GET", "/reports/mdrs?page[size]=2")
    assert paged["meta"] == {"page_number": 1, "page_size": 2, "total_pages": 2,
                             "total_results": 3}  # fmt: skip
    status, _, _ = await a.call("GET", "/reports/mdrs?start_date=yesterday")
    assert status == 400
    assert two["data"]["id"] in a.fake.by_id


async def test_a_records_query_matches_cli_and_cld_as_the_spec_writes_them(
    api: ApiClock,
) -> None:
    """``cli`` and ``cld`` are +E.164 numbers (the spec's example ``+15551237654``): the fake
    matches them as given, a number without its ``+`` (or a ``+`` sent unencoded, which a
    query reads as a space) names nobody; the real client asks in the spec's form and finds
    the member's record."""
    a, _ = api
    await a.send(["+12125550100", "+12125550101"])
    q = urllib.parse.quote

    async def listed(query: str) -> list[str]:
        _, body, _ = await a.call("GET", f"/reports/mdrs?{query}")
        return [r["cld"] for r in body["data"]]

    assert await listed(f"cld={q('+12125550101')}") == ["+12125550101"]
    assert await listed("cld=12125550101") == []
    assert await listed("cld=+12125550101") == []
    assert await listed(f"cli={FROM.lstrip('+')}") == []
    async with AiohttpMmsClient(a.url, "test-key-123") as client:
        now = a.fake.wall()
        (record,) = await client.fetch_records(FROM, "+12125550101", now - 60, now + 60)
    assert (record.cli, record.cld) == (FROM, "+12125550101")
    query = urllib.parse.parse_qs(a.fake.http_log[-1].query)
    assert (query["cli"], query["cld"]) == ([FROM], ["+12125550101"])


async def test_a_fake_given_a_tests_wall_clock_stamps_by_it_not_by_the_machines_date() -> None:
    """A fake given a FakeClock's wall (a fixed date) stamps its records and messages by it,
    and follows a step of it: a test on a fixed date finds them whatever day it runs."""
    at = dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC).timestamp()
    clock = FakeClock(wall=at)
    fake = FakeTelnyx(api_key="test-key-123", clock=clock.monotonic, wall_clock=clock.wall)
    async with (
        TestServer(fake.app(), host="127.0.0.1", port=0) as server,
        aiohttp.ClientSession() as http,
    ):
        a = Api(fake, str(server.make_url("/v2")), http)
        _, sent = await a.send(["+12125550100"])
        clock.advance(60)
        clock.step_wall(3600)
        _, records, _ = await a.call("GET", "/reports/mdrs?cld=%2B12125550100")
        _, message, _ = await a.call("GET", f"/messages/{sent['data']['id']}")
    (record,) = records["data"]
    assert parse_time(record["created_at"]) == pytest.approx(at, abs=1)
    assert parse_time(message["data"]["sent_at"]) == pytest.approx(at + 3660, abs=1)
    assert fake.wall() == pytest.approx(at + 3660, abs=1)


async def test_records_younger_than_the_lag_are_not_listed_yet(api: ApiClock) -> None:
    """With records_lag_s, a message's records appear only once they are that old."""
    a, clock = api
    a.fake.records_lag_s = 14_400
    await a.send(["+12125550100"])
    clock.advance(14_399)
    assert (await a.call("GET", "/reports/mdrs"))[1]["data"] == []
    clock.advance(1)
    assert len((await a.call("GET", "/reports/mdrs"))[1]["data"]) == 1


async def test_messages_are_found_after_the_lookup_lag_and_for_ten_days(api: ApiClock) -> None:
    """With lookup_lag_s, both GETs answer 404 / 10005 for a message until it is that old;
    by default they serve it for ten days (the spec's limit) and 404 after."""
    a, clock = api
    a.fake.lookup_lag_s = 5
    _, sent = await a.send(["+12125550100", "+12125550101"])
    gid = sent["data"]["id"]
    own = a.fake.accepted[0].recipient_ids[0]
    paths = [f"/messages/group/{gid}", f"/messages/{gid}", f"/messages/{own}"]

    async def statuses() -> list[int]:
        answers = [await a.call("GET", path) for path in paths]
        assert all(b["errors"][0]["code"] == "10005" for s, b, _ in answers if s == 404)
        return [s for s, _, _ in answers]

    assert await statuses() == [404] * 3
    clock.advance(5)
    assert await statuses() == [200] * 3
    clock.advance(10 * 86_400 - 5)
    assert await statuses() == [200] * 3
    clock.advance(1)
    assert await statuses() == [404] * 3


async def test_optouts_are_pairs_filtered_paged_and_redacted(api: ApiClock) -> None:
    """Opt-outs list from→to pairs, redacted unless redaction_enabled=false, filtered by
    sender, profile and creation time, paged with meta.total_pages; page[size] ≤ 250."""
    a, clock = api
    first = a.fake.opt_out("+447766123456", FROM)
    clock.advance(100)
    a.fake.opt_out("+12125550101", "+18445550002", keyword="QUIT")
    a.fake.opt_out("+12125550102", FROM)

    async def listed(query: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
        status, body, _ = await a.call("GET", f"/messaging_optouts?{query}")
        assert status == 200
        return [(o["from"], o["to"]) for o in body["data"]], body["meta"]

    assert (await listed(""))[0][0] == (FROM, "+447766****")
    plain, meta = await listed("redaction_enabled=false")
    assert plain == [(FROM, "+447766123456"), ("+18445550002", "+12125550101"),
                     (FROM, "+12125550102")]  # fmt: skip
    assert meta["total_results"] == 3
    q = urllib.parse.quote
    by_sender, _ = await listed(f"redaction_enabled=false&filter[from]={q(FROM)}")
    assert [to for _, to in by_sender] == ["+447766123456", "+12125550102"]
    profile = f"filter[messaging_profile_id]={first.messaging_profile_id}"
    assert len((await listed(profile))[0]) == 3
    assert (await listed("filter[messaging_profile_id]=other"))[0] == []
    later = q(dt.datetime.fromtimestamp(first.created_at + 50, dt.UTC).isoformat())
    assert len((await listed(f"created_at[gte]={later}"))[0]) == 2
    assert len((await listed(f"created_at[lte]={later}"))[0]) == 1
    page, meta = await listed("page[number]=2&page[size]=2&redaction_enabled=false")
    assert (page, meta["total_pages"]) == ([(FROM, "+12125550102")], 2)
    a.check = False  # a page past the spec's maximum is not a valid request
    status, _, _ = await a.call("GET", "/messaging_optouts?page[size]=251")
    assert status == 400


async def test_our_client_s_requests_are_the_spec_s(api: ApiClock) -> None:
    """Every request AiohttpMmsClient makes (send, both GETs, opt-outs, records) validates."""
    a, _ = api
    a.fake.optouts.append("+12125550109")
    body = MessageBody(FROM, text="hi", media_urls=("https://example.com/a.png",))
    group = Group("g1", 0, ("+12125550100", "+12125550101"), (0, 1), body)
    async with AiohttpMmsClient(a.url, "test-key-123") as client:
        receipt = await client.send(group, "key-1")
        assert receipt.message_id is not None
        await client.fetch_group(receipt.message_id)
        await client.fetch_message(receipt.message_id)
        await client.fetch_optouts(1)
        now = a.fake.wall()
        await client.fetch_records(FROM, "+12125550100", now - 3600, now + 60)
    paths = [s.path for s in a.fake.http_log]
    assert paths[0] == "/v2/messages/group_mms"
    assert "/v2/messaging_optouts" in paths
    for seen in a.fake.http_log:
        assert request_problems(seen) == [], seen.path


async def test_a_recipients_own_message_shows_the_others_in_cc_and_only_to_is_read(
    api: ApiClock,
) -> None:
    """A group's per-recipient messages list the other participants in cc (the spec's shape,
    checked); the client reads each recipient's status from to alone, one per recipient,
    whatever cc says (a status there is another participant's, if anyone's)."""
    a, _ = api
    to = ["+12125550100", "+12125550101", "+12125550102"]
    status, body = await a.send(to)
    assert status == 200
    assert body["data"]["cc"] == []  # the group's own message: every participant is in to
    _, group, _ = await a.call("GET", f"/messages/group/{body['data']['id']}")
    for i, msg in enumerate(group["data"]):
        assert [r["phone_number"] for r in msg["to"]] == [to[i]]
        assert [r["phone_number"] for r in msg["cc"]] == to[:i] + to[i + 1 :]
    msg = group["data"][0]
    msg["to"][0]["status"] = "sending"
    msg["cc"] = [{**r, "status": "delivered"} for r in msg["cc"]]
    assert [(st.phone, st.status) for st in parse_statuses(msg)] == [(to[0], "sending")]
    async with AiohttpMmsClient(a.url, "test-key-123") as client:
        listed = await client.fetch_group(body["data"]["id"])
    assert sorted(st.phone for st in listed) == to


async def test_signed_webhooks_reach_the_real_receiver_and_its_ledger(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A run through the real client, then the timeline: the fake posts one signed
    message.sent and one message.finalized per recipient, each the spec's event, and the real
    receiver verifies them and records every recipient's final status in the ledger."""
    clock = FakeClock()
    signer = Ed25519PrivateKey.generate()
    fake = FakeTelnyx(api_key="test-key-123", clock=clock.monotonic, signing_key=signer)
    fake.delivery_status = carrier_timeline(0, 1, 3, outcomes={"*0002": "delivery_failed"})
    fake.report["*0003"] = "40016"
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    async with real_client(fake) as client:
        await run_job(job, FAST, client, clock=FakeClock())
    async with receiving(fake, job.ledger, signer):
        assert await fake.pump_webhooks() == 0  # all still queued
        clock.advance(1.5)
        assert await fake.pump_webhooks() == 4  # message.sent, one per recipient
        clock.advance(2)
        assert await fake.pump_webhooks() == 4  # message.finalized
        assert await fake.pump_webhooks() == 0  # nothing twice
    assert {p.answer for p in fake.webhooks_sent} == {200}
    for post in fake.webhooks_sent:
        assert webhook_problems(post) == []
    finals = {
        e["recipient"]: e["status"]
        for e in ledger_events(job.ledger)
        if e["event"] == "status" and e["source"] == "webhook"
    }
    assert finals == {
        "+12125550000": "delivered",
        "+12125550001": "delivered",
        "+12125550002": "delivery_failed",
        "+12125550003": "delivery_failed",
    }
    codes = [
        orjson.loads(p.body)["data"]["payload"]["errors"]
        for p in fake.webhooks_sent
        if p.phone == "+12125550003" and p.event_type == "message.finalized"
    ]
    assert [[e["code"] for e in c] for c in codes] == [["40016"]]


async def test_a_webhook_the_receiver_refuses_is_tried_three_times_then_the_failover(
    api: ApiClock,
) -> None:
    """Telnyx's retries: three attempts at the URL, then one at the message's failover URL;
    the signature verifies over "{timestamp}|{raw body}"."""
    a, clock = api
    signer = Ed25519PrivateKey.generate()
    a.fake.signing_key = signer
    answers = [500, 500, 500, 200]
    got: list[tuple[str, int]] = []

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        verify(signer.public_key(), request.headers, raw, a.fake.wall())
        got.append((request.path, orjson.loads(raw)["meta"]["attempt"]))
        return web.Response(status=answers[len(got) - 1])

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    async with TestServer(app, host="127.0.0.1", port=0) as hooks:
        body = {"from": FROM, "to": ["+12125550100"], "text": "hi",
                "webhook_url": str(hooks.make_url("/main")),
                "webhook_failover_url": str(hooks.make_url("/failover"))}  # fmt: skip
        assert (await a.call("POST", "/messages/group_mms", body))[0] == 200
        a.fake.delivery_status = "sent"
        clock.advance(1)
        assert await a.fake.pump_webhooks() == 1
    assert got == [("/main", 1), ("/main", 2), ("/main", 3), ("/failover", 4)]


async def test_the_spec_s_webhook_check_reads_the_headers_it_declares(api: ApiClock) -> None:
    """The deliveryUpdate check sees the headers the spec declares: the fake's webhooks pass
    it, and one without telnyx-timestamp, with one that is not an integer, or without
    telnyx-signature-ed25519, does not."""
    a, clock = api
    a.fake.signing_key = Ed25519PrivateKey.generate()
    async with hook_server() as url:
        a.fake.webhook_url = url
        assert (await a.send(["+12125550100"]))[0] == 200
        clock.advance(1)
        assert await a.fake.pump_webhooks() == 2
    for post in a.fake.webhooks_sent:
        assert webhook_problems(post) == []
    post = a.fake.webhooks_sent[0]
    broken = {
        "no stamp": {k: v for k, v in post.headers.items() if k != "telnyx-timestamp"},
        "a word": {**post.headers, "telnyx-timestamp": "yesterday"},
        "unsigned": {k: v for k, v in post.headers.items() if k != "telnyx-signature-ed25519"},
    }
    found = {
        why: webhook_problems(dataclasses.replace(post, headers=headers))
        for why, headers in broken.items()
    }
    assert all("telnyx-" in " ".join(p) for p in found.values()), found


@contextlib.asynccontextmanager
async def hook_server(answers: list[str] | None = None) -> AsyncIterator[str]:
    """A receiver that answers 200 to every webhook (noting each event's id and type in
    ``answers``, if given); yields its URL."""

    async def hook(request: web.Request) -> web.Response:
        data = orjson.loads(await request.read())["data"]
        if answers is not None:
            answers.append(f"{data['event_type']} {data['id']}")
        return web.Response()

    app = web.Application()
    app.router.add_post("/hooks", hook)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        yield str(server.make_url("/hooks"))


async def test_repeated_webhooks_are_later_attempts_of_the_same_event(api: ApiClock) -> None:
    """webhook_repeats: an event answered 200 comes again, the same id, occurred_at and
    payload, as its next attempts at the same URL (no more than Telnyx's three), after the
    other events' first deliveries; out of order, a recipient's message.finalized comes
    before its message.sent, which says when it happened."""
    a, clock = api
    a.fake.signing_key = Ed25519PrivateKey.generate()
    a.fake.webhook_repeats, a.fake.webhooks_out_of_order = 2, True
    a.fake.delivery_status = carrier_timeline(0, 1, 3)
    got: list[str] = []
    async with hook_server(got) as url:
        a.fake.webhook_url = url
        assert (await a.send(["+12125550100", "+12125550101"]))[0] == 200
        clock.advance(1.5)
        assert await a.fake.pump_webhooks() == 0  # sent, but held back for its finalized
        clock.advance(2)
        assert await a.fake.pump_webhooks() == 4
    posts = a.fake.webhooks_sent
    kinds = [p.event_type for p in posts]
    assert kinds == ["message.finalized", "message.sent"] * 6
    assert got[:4] == list(dict.fromkeys(got))  # four events first, then their repeats
    assert {got.count(event) for event in got} == {3}
    assert {p.url for p in posts} == {url}
    assert sorted(p.attempt for p in posts) == [2] * 4 + [3] * 4 + [4] * 4  # 1: no failover
    bodies: dict[str, set[bytes]] = {}
    for post, event in zip(posts, got, strict=True):
        bodies.setdefault(event, set()).add(orjson.dumps(orjson.loads(post.body)["data"]))
    assert {len(b) for b in bodies.values()} == {1}  # the same event each time
    for post in posts:
        assert webhook_problems(post) == []
    stamps = {
        p.event_type: parse_time(orjson.loads(p.body)["data"]["occurred_at"])
        for p in posts
        if p.phone == "+12125550100"
    }
    assert stamps["message.finalized"] - stamps["message.sent"] == pytest.approx(2)


def test_a_webhook_is_repeated_no_more_than_telnyx_tries_a_url() -> None:
    """webhook_repeats past 2 is refused: Telnyx tries a URL three times (FACTS 7)."""
    with pytest.raises(ValueError, match="0 to 2"):
        FakeTelnyx(webhook_repeats=3)


async def test_live_answers_give_each_recipient_its_status_as_the_spec_allows(
    api: ApiClock,
) -> None:
    """live_answers: the send's answer gives each recipient its status on the timeline (any
    of the spec's enum for the answer, a failure with its code), and it is what the spec
    describes."""
    a, _ = api
    a.fake.live_answers = True
    firsts = ["queued", "sending", "sent", "delivered", "delivery_failed", "delivery_unconfirmed"]
    to = [f"+1212555010{i}" for i in range(len(firsts))]
    a.fake.delivery_status = lambda phone, _age: firsts[int(phone[-1])]
    a.fake.report["+12125550104"] = "40008"
    status, body = await a.send(to)  # checked against the spec by the call
    assert status == 200
    assert [r["status"] for r in body["data"]["to"]] == firsts
    assert [e["code"] for e in body["data"]["errors"]] == ["40008"]


async def test_a_served_fake_posts_due_webhooks_each_time_its_sleep_ends() -> None:
    """With webhook_every_s, the served fake pumps webhooks by itself, on its injected sleep."""
    ticks: asyncio.Queue[float] = asyncio.Queue()
    received: list[str] = []
    both = asyncio.Event()

    async def tick(seconds: float) -> None:
        await ticks.get()

    async def hook(request: web.Request) -> web.Response:
        received.append(orjson.loads(await request.read())["data"]["event_type"])
        if len(received) == 2:
            both.set()
        return web.Response()

    hooks_app = web.Application()
    hooks_app.router.add_post("/hooks", hook)
    fake = FakeTelnyx(
        api_key="test-key-123",
        signing_key=Ed25519PrivateKey.generate(),
        webhook_every_s=1.0,
        sleep=tick,
    )
    async with (
        TestServer(hooks_app, host="127.0.0.1", port=0) as hooks,
        TestServer(fake.app(), host="127.0.0.1", port=0) as server,
        aiohttp.ClientSession() as http,
    ):
        fake.webhook_url = str(hooks.make_url("/hooks"))
        body = {"from": FROM, "to": ["+12125550100"], "text": "hi"}
        async with http.post(server.make_url("/v2/messages/group_mms"), json=body, headers=AUTH):
            pass
        ticks.put_nowait(1.0)
        await asyncio.wait_for(both.wait(), 10)
    assert received == ["message.sent", "message.finalized"]


async def test_the_opt_out_list_refuses_with_one_bare_error_as_the_spec_says(
    api: ApiClock,
) -> None:
    """GET /messaging_optouts answers 400 and 401 with one bare messaging_Error (no
    errors[] around it), as the spec says; the real client reads its code all the same."""
    a, _ = api
    a.check = False  # a page past the spec's maximum is not a valid request
    status, body, _ = await a.call("GET", "/messaging_optouts?page[size]=251")
    assert (status, body["code"]) == (400, "10015")
    status, body, _ = await a.call(
        "GET", "/messaging_optouts", headers={"Authorization": "Bearer x"}
    )
    assert (status, body["code"]) == (401, "10009")
    assert response_problems(a.fake.http_log[-1], status, orjson.dumps(body)) == []
    async with AiohttpMmsClient(a.url, "wrong-key") as client:
        with pytest.raises(AuthError) as info:
            await client.fetch_optouts(1)
    assert info.value.code == "10009"


async def test_statuses_in_cc_answers_are_the_spec_s(api: ApiClock) -> None:
    """With statuses_in_cc, the send's answer and both GETs list the first member under to
    and the rest under cc with their statuses, every answer valid by the spec; the real
    client reads every member from them."""
    a, _ = api
    a.fake.statuses_in_cc = True
    to = ["+12125550100", "+12125550101", "+12125550102"]
    status, body, _ = await a.call("POST", "/messages/group_mms", {"from": FROM, "to": to,
                                                                   "text": "hi"})  # fmt: skip
    assert status == 200
    mid = body["data"]["id"]
    assert [r["phone_number"] for r in body["data"]["cc"]] == to[1:]
    _, group, _ = await a.call("GET", f"/messages/group/{mid}")
    assert [m["id"] for m in group["data"]] == [mid]
    async with AiohttpMmsClient(a.url, "test-key-123") as client:
        assert sorted(st.phone for st in await client.fetch_group(mid)) == to
        assert sorted(st.phone for st in await client.fetch_message(mid)) == to


@pytest.mark.parametrize("statuses_in_cc", [False, True])
async def test_a_sender_listed_in_cc_is_neither_a_stranger_nor_a_member(
    api: ApiClock, statuses_in_cc: bool
) -> None:
    """With sender_in_cc (the guide: a group's messages list every participant, the sending
    number too), every answer is valid by the spec, and the real client takes the send as
    accepted, not in doubt, and reads the members' statuses alone from it and both GETs."""
    a, _ = api
    a.fake.sender_in_cc, a.fake.statuses_in_cc = True, statuses_in_cc
    to = ("+12125550100", "+12125550101", "+12125550102")
    _, body = await a.send(list(to))
    assert FROM in [r["phone_number"] for r in body["data"]["cc"]]
    group = Group("g", 0, to, (1, 2, 3), MessageBody(from_=FROM, text="hi"))
    async with AiohttpMmsClient(a.url, "test-key-123") as client:
        receipt = await client.send(group, "k")
        assert sorted(st.phone for st in receipt.statuses) == list(to)
        mid = receipt.message_id
        assert sorted(st.phone for st in await client.fetch_group(mid)) == list(to)
        assert sorted(st.phone for st in await client.fetch_message(mid)) == list(to)
    for seen in a.fake.http_log[-3:]:
        assert request_problems(seen) == []


async def test_a_lone_member_keeps_its_cost_beside_a_sender_listed_in_cc(api: ApiClock) -> None:
    """A group of one whose message lists its sender in cc (sender_in_cc): the member is the
    message's one recipient, and its GET's final cost is the member's."""
    a, _ = api
    a.fake.sender_in_cc = True
    group = Group("g", 0, ("+12125550100",), (1,), MessageBody(from_=FROM, text="hi"))
    async with AiohttpMmsClient(a.url, "test-key-123") as client:
        receipt = await client.send(group, "k")
        (got,) = await client.fetch_message(receipt.message_id)
    assert (got.phone, got.status, got.cost) == (
        "+12125550100",
        "delivered",
        money("0.00605", "USD"),
    )


async def test_the_accept_log_has_one_line_per_message_taken(api: ApiClock, tmp_path: Path) -> None:
    """``--log``'s writer appends each accepted message (id, to, key), and nothing refused."""
    a, _ = api
    path = tmp_path / "accepted.jsonl"
    a.fake.on_accept = accept_log_writer(str(path))
    a.fake.refuse["+12125550199"] = "40300"
    await a.send(["+12125550100", "+12125550101"], key="k-1")
    await a.send(["+12125550199"], key="k-2")
    await a.send(["+12125550102"], key="k-3")
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [(x["to"], x["key"]) for x in lines] == [
        (["+12125550100", "+12125550101"], "k-1"),
        (["+12125550102"], "k-3"),
    ]
    assert [x["id"] for x in lines] == [m.id for m in a.fake.accepted]


async def test_a_recipients_records_are_looked_up_not_read_off_every_message(
    api: ApiClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``cld`` query reads that number's messages only (a resume settling a crash asks once
    a member, however many were sent): no other recipient's status is looked at."""
    a, _ = api
    for i in range(50):
        await a.send([f"+121255501{i:02d}", f"+121255502{i:02d}"])
    looked_at: list[str] = []
    status_of = a.fake.status_of

    def watched(msg: Accepted, i: int) -> str:
        looked_at.append(msg.to[i])
        return status_of(msg, i)

    monkeypatch.setattr(a.fake, "status_of", watched)
    _, body, _ = await a.call("GET", f"/reports/mdrs?cld={urllib.parse.quote('+12125550207')}")
    assert [r["cld"] for r in body["data"]] == ["+12125550207"]
    assert set(looked_at) == {"+12125550207"}


@pytest.mark.parametrize(
    ("use_profile", "expected"), [(None, ["/main", "/profile"]), (False, ["/main"])]
)
async def test_profile_webhooks_come_after_the_message_s_unless_turned_off(
    api: ApiClock, use_profile: bool | None, expected: list[str]
) -> None:
    """The message's webhook URL is tried first, then the profile's (use_profile_webhooks,
    true by default); with use_profile_webhooks false, never the profile's."""
    a, clock = api
    a.fake.signing_key = Ed25519PrivateKey.generate()
    got: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(request.path)
        return web.Response(status=500 if request.path == "/main" else 200)

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    async with TestServer(app, host="127.0.0.1", port=0) as hooks:
        a.fake.webhook_url = str(hooks.make_url("/profile"))
        body: dict[str, Any] = {"from": FROM, "to": ["+12125550100"], "text": "hi",
                                "webhook_url": str(hooks.make_url("/main"))}  # fmt: skip
        if use_profile is not None:
            body["use_profile_webhooks"] = use_profile
        assert (await a.call("POST", "/messages/group_mms", body))[0] == 200
        a.fake.delivery_status = "sent"
        clock.advance(1)
        await a.fake.pump_webhooks()
    assert sorted(set(got)) == expected


async def test_a_sender_not_on_the_account_is_refused_400_40305(api: ApiClock) -> None:
    """With the account's numbers given, a send from another is refused (nothing accepted)."""
    a, _ = api
    a.fake.numbers = frozenset({FROM})
    status, body = await a.send(["+12125550100"], sender="+13125550199")
    assert (status, body["errors"][0]["code"]) == (400, "40305")
    assert body["errors"][0]["source"] == {"pointer": "/from"}
    assert (await a.send(["+12125550100"]))[0] == 200
    assert len(a.fake.accepted) == 1


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.png", "example.com/a.png", "https://x/" + "a" * 2000]
)
async def test_a_media_url_that_is_no_url_is_refused_400_10003(api: ApiClock, url: str) -> None:
    """A media URL that is not http(s), or is over 2000 characters, is refused: 10003."""
    a, _ = api
    a.check = False
    body = {"from": FROM, "to": ["+12125550100"], "media_urls": [url]}
    status, answer, _ = await a.call("POST", "/messages/group_mms", body)
    assert (status, answer["errors"][0]["code"]) == (400, "10003")
    assert a.fake.accepted == []


async def test_varied_stamps_write_every_form_telnyx_uses_and_each_reads_back(
    api: ApiClock,
) -> None:
    """With varied_stamps, times come with Z or an offset and 0 to 9 fraction digits, and
    each is the same instant (to the microsecond) as the fake's clock says."""
    a, _ = api
    a.fake.varied_stamps = True
    wall = a.fake.wall()
    stamps = {a.fake.stamp(wall) for _ in STAMP_FORMS}
    assert len(stamps) == len(STAMP_FORMS)
    assert {s[-6:] for s in stamps} >= {"+00:00", "-06:00"}
    assert any(s.endswith("Z") for s in stamps)
    assert all(abs(parse_time(s) - wall) < 1 for s in stamps)


@pytest.mark.parametrize("sparse", [False, True])
async def test_group_message_ids_name_the_send_everywhere_and_the_real_client_reads_them(
    api: ApiClock, sparse: bool
) -> None:
    """With group_message_ids the send's answer, both GETs (of the group and of each
    message), each recipient's webhooks and each detail record name the send's id as
    their group_message_id (beside even the least the spec allows), every answer and
    webhook valid by the spec (a sparse GET of one message aside: see below); the real
    client keeps it in each report and record."""
    a, clock = api
    a.fake.group_message_ids = True
    a.fake.sparse_answers = sparse
    a.fake.signing_key = Ed25519PrivateKey.generate()
    to = ["+12125550100", "+12125550101"]
    status, sent = await a.send(to)  # every answer checked against the spec by a.call
    assert status == 200
    gid = sent["data"]["id"]
    clock.advance(5)
    _, group, _ = await a.call("GET", f"/messages/group/{gid}")
    ids = [m["id"] for m in group["data"]]
    # the least the spec allows is valid under both branches of this answer's oneOf (inbound
    # or outbound message), so the spec cannot pass it, group_message_id or not
    a.check = not sparse
    messages = [(await a.call("GET", f"/messages/{mid}"))[1]["data"] for mid in [gid, *ids]]
    a.check = True
    _, records, _ = await a.call("GET", "/reports/mdrs")
    app = web.Application()
    app.router.add_post("/{tail:.*}", _ok)
    async with TestServer(app, host="127.0.0.1", port=0) as hooks:
        a.fake.webhook_url = str(hooks.make_url("/hooks"))
        assert await a.fake.pump_webhooks() == 4
    payloads = [orjson.loads(p.body)["data"]["payload"] for p in a.fake.webhooks_sent]
    named = [sent["data"], *group["data"], *messages, *records["data"], *payloads]
    assert {m["group_message_id"] for m in named} == {gid}
    assert len(named) == 1 + 2 + 3 + 2 + 4
    assert [webhook_problems(p) for p in a.fake.webhooks_sent] == [[]] * 4
    async with AiohttpMmsClient(a.url, "test-key-123") as client:
        listed = await client.fetch_group(gid)
        one = await client.fetch_message(ids[1])
        kept = await client.fetch_records(FROM, to[0], 0, a.fake.wall() + 60)
    assert {st.group_message_id for st in (*listed, *one)} == {gid}
    assert [r.group_message_id for r in kept] == [gid]


async def test_member_id_answers_give_a_members_id_and_the_group_only_by_its_name(
    api: ApiClock,
) -> None:
    """With member_id_answers the send's answer, valid by the spec, has its first member's own
    id and names the group message in group_message_id: the group's GET takes only the
    group message (404 for the member's id), the member's id is that member's message."""
    a, clock = api
    a.fake.member_id_answers = True
    to = ["+12125550100", "+12125550101"]
    status, sent = await a.send(to)  # every answer checked against the spec by a.call
    (msg,) = a.fake.accepted
    assert status == 200
    assert (sent["data"]["id"], sent["data"]["group_message_id"]) == (msg.recipient_ids[0], msg.id)
    assert [m["phone_number"] for m in sent["data"]["to"]] == to
    clock.advance(5)
    assert (await a.call("GET", f"/messages/group/{msg.recipient_ids[0]}"))[0] == 404
    _, group, _ = await a.call("GET", f"/messages/group/{msg.id}")
    assert [m["id"] for m in group["data"]] == list(msg.recipient_ids)
    _, own, _ = await a.call("GET", f"/messages/{msg.recipient_ids[0]}")
    assert [m["phone_number"] for m in own["data"]["to"]] == to[:1]


async def test_group_message_listed_lists_the_groups_own_message_first(api: ApiClock) -> None:
    """With group_message_listed the group's GET, valid by the spec, lists the group's own
    message (every member under to) first, then each recipient's own."""
    a, clock = api
    a.fake.group_message_listed = True
    to = ["+12125550100", "+12125550101"]
    await a.send(to)
    (msg,) = a.fake.accepted
    clock.advance(5)
    _, group, _ = await a.call("GET", f"/messages/group/{msg.id}")
    assert [m["id"] for m in group["data"]] == [msg.id, *msg.recipient_ids]
    assert [[t["phone_number"] for t in m["to"]] for m in group["data"]] == [to, to[:1], to[1:]]


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(status=200)


async def test_sparse_answers_are_the_spec_s_least_and_the_real_client_reads_them(
    api: ApiClock,
) -> None:
    """With sparse_answers every answer holds the least the spec allows (nullable fields
    null, the others absent) and fields it does not declare, each valid by the spec; the
    real client still reads the send's id and each recipient's status and carrier code."""
    a, clock = api
    a.fake.sparse_answers = True
    a.fake.delivery_status = carrier_timeline(0, 1, 3, outcomes={"*0101": "delivery_failed"})
    a.fake.report["*0101"] = "40002"
    to = ["+12125550100", "+12125550101"]
    status, sent = await a.send(to)  # every answer checked against the spec by a.call
    assert status == 200
    assert sent["data"]["wait_seconds"] is None
    assert sent["data"]["cost"] is None
    assert "carrier" not in sent["data"]["to"][0]
    assert "record_type" not in sent["data"]
    assert "errors" not in sent["data"]
    assert sent["data"]["delivery_channel"] == "mms"
    clock.advance(5)
    gid = sent["data"]["id"]
    _, group, _ = await a.call("GET", f"/messages/group/{gid}")
    assert [m["to"][0]["status"] for m in group["data"]] == ["delivered", "delivery_failed"]
    body = MessageBody(FROM, text="hi")
    async with AiohttpMmsClient(a.url, "test-key-123") as client:
        receipt = await client.send(Group("g1", 0, tuple(to), (0, 1), body), "key-1")
        assert (receipt.wait_seconds, receipt.cost) == (None, None)
        assert [(st.phone, st.status) for st in receipt.statuses] == [
            (to[0], "queued"), (to[1], "queued")
        ]  # fmt: skip
        listed = await client.fetch_group(gid)
        whole = await client.fetch_message(gid)
    for answer in (listed, whole):
        got = {st.phone: (st.status, [e.code for e in st.errors]) for st in answer}
        assert got == {to[0]: ("delivered", []), to[1]: ("delivery_failed", ["40002"])}


async def test_a_run_tracked_and_reported_by_webhooks_on_sparse_answers_settles_everyone(
    jobs: JobFactory,
) -> None:
    """A run, track and the receiver on sparse answers and bare webhook events (no meta, no
    occurred_at): each recipient's final status and carrier code reach the ledger."""
    clock = FakeClock()
    signer = Ed25519PrivateKey.generate()
    fake = FakeTelnyx(api_key="test-key-123", clock=clock.monotonic, signing_key=signer)
    fake.sparse_answers = True
    fake.delivery_status = carrier_timeline(0, 1, 3, outcomes={"*0002": "delivery_failed"})
    fake.report["*0002"] = "40011"
    job = await sent_and_tracked(jobs, fake, clock, after=2)
    tracked = {
        e["recipient"]: e["status"]
        for e in ledger_events(job.ledger)
        if e["event"] == "status" and e["source"] == "track"
    }
    assert tracked == dict.fromkeys([f"+1212555000{i}" for i in range(4)], "sent")
    async with receiving(fake, job.ledger, signer):
        clock.advance(2)
        assert await fake.pump_webhooks() == 8
    assert {p.answer for p in fake.webhooks_sent} == {200}
    for post in fake.webhooks_sent:
        assert webhook_problems(post) == []
        assert set(orjson.loads(post.body)) == {"data"}
    finals = {
        e["recipient"]: (e["status"], [x["code"] for x in e.get("errors", [])])
        for e in ledger_events(job.ledger)
        if e["event"] == "status" and e["source"] == "webhook"
    }
    assert finals == {
        "+12125550000": ("delivered", []),
        "+12125550001": ("delivered", []),
        "+12125550002": ("delivery_failed", ["40011"]),
        "+12125550003": ("delivered", []),
    }
