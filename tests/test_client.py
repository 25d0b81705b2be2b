"""The real aiohttp client against the fake Telnyx server: every answer becomes a typed result."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import secrets
import socket
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

import bulk_mms.client
import bulk_mms.clock
from bulk_mms.answers import parse_receipt, parse_retry_after, parse_statuses, read_receipt
from bulk_mms.client import AiohttpMmsClient, idempotency_key, request_body
from bulk_mms.errors import (
    AccountRefused,
    AmbiguousSendError,
    AuthError,
    DescriptorsExhausted,
    EndpointError,
    FatalSendError,
    NetworkError,
    RateLimited,
    Rejected,
    ServerError,
)
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.grouping import group_id
from bulk_mms.models import Group, MessageBody, parse_money

KEY = "test-key-123"
IDEM = idempotency_key("c0ffee", "gid0001")
API = tuple[FakeTelnyx, str]


def group(n: int = 3, **message: object) -> Group:
    body = MessageBody(from_="+18445550001", text="hello", **message)  # type: ignore[arg-type]
    to = tuple(f"+1212555{i:04d}" for i in range(n))
    return Group(id="gid0001", seq=0, to=to, lines=tuple(range(2, 2 + n)), message=body)


def client(url: str, key: str = KEY, timeout: float = 5.0) -> AiohttpMmsClient:
    return AiohttpMmsClient(url, key, connect_timeout=1.0, request_timeout=timeout)


async def test_send_returns_typed_receipt(fake_api: API) -> None:
    """A 200 becomes a receipt: id, per-recipient status, wait_seconds and an exact Decimal cost."""
    fake, url = fake_api
    fake.wait_seconds = lambda n: 1.5
    async with client(url) as c:
        receipt = await c.send(group(3, subject="S", media_urls=("https://x.test/a.png",)), IDEM)
    assert receipt.message_id == fake.accepted[0].id
    assert [s.phone for s in receipt.statuses] == list(group(3).to)
    assert {s.status for s in receipt.statuses} == {"queued"}
    assert receipt.wait_seconds == 1.5
    assert receipt.cost is not None
    assert receipt.cost.amount == Decimal("0.0153")
    assert receipt.cost.currency == "USD"
    assert fake.requests[0]["media_urls"] == ["https://x.test/a.png"]
    assert fake.accepted[0].idempotency_key == IDEM == "bulk-mms-c0ffee-gid0001"


def test_request_body_leaves_out_unset_fields() -> None:
    """Only set fields go in the body; `from` and `to` are always there."""
    assert request_body(group(2)) == {
        "from": "+18445550001",
        "to": ["+12125550000", "+12125550001"],
        "text": "hello",
    }
    body = request_body(group(1, use_profile_webhooks=False, webhook_url="https://h.test"))
    assert body["use_profile_webhooks"] is False
    assert body["webhook_url"] == "https://h.test"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"amount": "0.0051", "currency": "USD"}, Decimal("0.0051")),
        ({"amount": 0.0051, "currency": "USD"}, Decimal("0.0051")),
        ({"amount": 3, "currency": "EUR"}, Decimal(3)),
        ({"amount": None, "currency": "USD"}, None),
        ({"amount": "NaN", "currency": "USD"}, None),
        ("0.1", None),
    ],
)
def test_cost_amount_as_string_or_number(raw: object, expected: Decimal | None) -> None:
    """cost.amount parses to the same exact Decimal whether the API sent a string or a number."""
    money = parse_money(raw)
    assert (money.amount if money else None) == expected


def test_retry_after_variants() -> None:
    """Retry-After (seconds or date), retry-after-ms and x-ratelimit-reset (delta or epoch)."""
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "7"}, now) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}, now) == 1.5
    assert parse_retry_after({"retry-after": "Tue, 14 Nov 2023 22:13:30 GMT"}, now) == 10.0
    assert parse_retry_after({"x-ratelimit-reset": "4"}, now) == 4.0
    assert parse_retry_after({"x-ratelimit-reset": str(now + 12)}, now) == 12.0
    assert parse_retry_after({"retry-after": "soon"}, now) is None
    assert parse_retry_after({}, now) is None


@pytest.mark.parametrize(
    ("fault", "error", "fields"),
    [
        (
            Fault("status", 429, headers={"Retry-After": "3"}, code="40318"),
            RateLimited,
            {"retry_after": 3.0, "code": "40318"},
        ),
        (Fault("status", 503), ServerError, {"status": 503, "retry_after": None}),
        (
            Fault("status", 503, headers={"Retry-After": "40", "x-ratelimit-reset": "9"}),
            ServerError,
            {"retry_after": 40.0},
        ),
        (
            Fault("status", 503, headers={"x-ratelimit-reset": "9"}),
            ServerError,
            {"retry_after": None},
        ),
        (Fault("status", 503, raw=b"<html>busy</html>"), ServerError, {"status": 503}),
        (Fault("status", 500, raw=b"<html>oops</html>"), AmbiguousSendError, {"status": 500}),
        (
            Fault("status", 429, headers={"x-ratelimit-reset": "2"}, raw=b"<html>slow</html>"),
            RateLimited,
            {"retry_after": 2.0, "code": "429"},
        ),
        (Fault("status", 409, raw=b"<html>conflict</html>"), ServerError, {"status": 409}),
        (Fault("status", 500), AmbiguousSendError, {"status": 500}),
        (Fault("status_after", 502), AmbiguousSendError, {"status": 502}),
        (Fault("status", 400, code="40001"), Rejected, {"code": "40001"}),
        (Fault("status", 403), AuthError, {"status": 403}),
        (Fault("status", 402, raw=b"<html>pay</html>"), AccountRefused, {"status": 402}),
        (Fault("status", 402, code="20100"), Rejected, {"code": "20100"}),
        (Fault("drop_before"), AmbiguousSendError, {}),
        (Fault("drop_after"), AmbiguousSendError, {}),
        (Fault("no_id"), AmbiguousSendError, {"status": 200}),
        (Fault("not_json"), AmbiguousSendError, {"status": 200}),
        (Fault("truncated"), AmbiguousSendError, {}),
    ],
)
async def test_faults_map_to_the_error_tree(
    fake_api: API, fault: Fault, error: type[Exception], fields: dict[str, object]
) -> None:
    """Each scripted fault raises the documented BulkMmsError subclass with its details."""
    fake, url = fake_api
    fake.faults.append(fault)
    async with client(url) as c:
        with pytest.raises(error) as info:
            await c.send(group(), IDEM)
    for name, value in fields.items():
        assert getattr(info.value, name) == value
    assert KEY not in str(info.value)


async def test_slow_response_times_out_as_ambiguous(fake_api: API) -> None:
    """A server slower than the request timeout gives an ambiguous failure, not a retryable one."""
    fake, url = fake_api
    fake.faults.append(Fault("slow", delay=2.0))
    async with client(url, timeout=0.2) as c:
        with pytest.raises(AmbiguousSendError, match="no response in time"):
            await c.send(group(), IDEM)
    assert len(fake.accepted) == 1  # it was accepted after all: exactly why it is in doubt


async def test_a_request_that_cannot_leave_in_time_never_leaves(fake_api: API) -> None:
    """A send whose connection is not ready within ``leave_within`` (the pool's one connection
    busy) fails as never sent, and never reaches the server; the same send with room goes."""
    fake, url = fake_api
    fake.faults.append(Fault("slow", delay=0.5))
    c = AiohttpMmsClient(url, KEY, connect_timeout=5.0, request_timeout=5.0, max_connections=1)
    async with c:
        holding = asyncio.ensure_future(c.send(group(), IDEM))
        await asyncio.sleep(0.05)  # the first request holds the one connection
        with pytest.raises(NetworkError, match="connect timed out"):
            await c.send(group(2), idempotency_key("c0ffee", "late"), leave_within=0.1)
        assert [r.method for r in fake.http_log] == ["POST"]  # the late one never went out
        await holding
        receipt = await c.send(group(2), idempotency_key("c0ffee", "late"), leave_within=2.0)
    assert [a.id for a in fake.accepted] == [(await holding).message_id, receipt.message_id]


async def test_a_machine_asleep_while_a_send_waits_for_its_connection_never_sends_it(
    fake_api: API, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine suspended while a send waits for its connection (a clock that sleeps with it,
    the event loop's, sees no time pass) finds the send's time to leave in gone once it wakes:
    the request never leaves, and the connection goes back to serve the next send."""
    fake, url = fake_api
    fake.faults.append(Fault("slow", delay=0.5))
    asleep = [0.0]
    awake_clock = bulk_mms.clock.since_boot
    monkeypatch.setattr(bulk_mms.client, "since_boot", lambda: awake_clock() + asleep[0])
    c = AiohttpMmsClient(url, KEY, connect_timeout=30.0, request_timeout=30.0, max_connections=1)
    async with c:
        holding = asyncio.ensure_future(c.send(group(), IDEM))
        await asyncio.sleep(0.05)  # the first request holds the one connection
        late = asyncio.ensure_future(
            c.send(group(2), idempotency_key("c0ffee", "late"), leave_within=20.0)
        )
        await asyncio.sleep(0.05)
        asleep[0] = 60.0  # the machine slept a minute; the loop's clock saw none of it
        with pytest.raises(NetworkError, match="ran out while waiting for a connection"):
            await late
        first = await holding
        again = await c.send(group(2), idempotency_key("c0ffee", "again"), leave_within=20.0)
    assert [a.id for a in fake.accepted] == [first.message_id, again.message_id]
    assert [r.method for r in fake.http_log] == ["POST", "POST"]


async def test_a_long_time_to_leave_in_is_kept_to_the_millisecond(fake_api: API) -> None:
    """A bound over aiohttp's rounding threshold (5 s) is not rounded up to a whole second:
    a request whose connection is ready 0.1 s after its time is up still never leaves."""
    fake, url = fake_api
    fake.faults.append(Fault("slow", delay=5.6))
    c = AiohttpMmsClient(url, KEY, connect_timeout=30.0, request_timeout=30.0, max_connections=1)
    async with c:
        holding = asyncio.ensure_future(c.send(group(), IDEM))
        await asyncio.sleep(0.1)  # the first request holds the one connection until 5.6 s
        with pytest.raises(NetworkError, match="connect timed out"):
            await c.send(group(2), idempotency_key("c0ffee", "late"), leave_within=5.4)
        await holding
    assert len(fake.accepted) == 1


async def test_wrong_key_is_auth_error_without_the_key(fake_api: API) -> None:
    """A refused key raises AuthError, and the message does not contain the key."""
    _, url = fake_api
    async with client(url, key="wrong-secret-key") as c:
        with pytest.raises(AuthError) as info:
            await c.send(group(), IDEM)
    assert info.value.status == 401
    assert "wrong-secret-key" not in str(info.value)
    assert "wrong-secret-key" not in repr(c)


async def test_a_key_put_in_the_base_url_is_in_no_error(fake_api: API) -> None:
    """A base URL holding the key by mistake (its path) is named, in the error its 404 makes
    and in the client's repr, with the key blanked."""
    _, url = fake_api
    async with client(f"{url}/{KEY}") as c:
        with pytest.raises(EndpointError) as info:
            await c.send(group(), IDEM)
    assert f"{url}/[redacted]" in str(info.value)
    assert KEY not in str(info.value)
    assert KEY not in repr(c)


async def test_invalid_body_is_rejected_by_the_fake(fake_api: API) -> None:
    """More than 8 numbers is refused with 422, as the API documents."""
    _, url = fake_api
    big = Group(
        id="g",
        seq=0,
        to=tuple(f"+1212555{i:04d}" for i in range(9)),
        lines=(),
        message=group().message,
    )
    async with client(url) as c:
        with pytest.raises(Rejected) as info:
            await c.send(big, IDEM)
    assert info.value.status == 422
    assert "No more than 8" in str(info.value)


async def test_connection_refused_is_network_error(tmp_path: Path) -> None:
    """Nothing listening means the request never left: a retryable NetworkError."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with client(f"http://127.0.0.1:{port}/v2") as c:
        with pytest.raises(NetworkError, match="cannot connect"):
            await c.send(group(), IDEM)


async def test_dns_failure_is_network_error() -> None:
    """A host name that does not resolve fails before anything is sent: NetworkError."""
    async with client("http://no-such-host.invalid/v2") as c:
        with pytest.raises(NetworkError, match="cannot connect"):
            await c.send(group(), IDEM)


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
async def test_descriptors_exhausted_while_connecting_is_a_local_fatal_error(
    fake_api: API, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """EMFILE/ENFILE on the socket is DescriptorsExhausted (exit 2, naming ulimit -n and
    --concurrency), not a NetworkError that would read as the API failing; nothing was sent."""
    fake, url = fake_api

    async def no_socket(*args: object, **kwargs: object) -> socket.socket:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("aiohttp.connector.aiohappyeyeballs.start_connection", no_socket)
    async with client(url) as c:
        with pytest.raises(DescriptorsExhausted) as info:
            await c.send(group(), IDEM)
    assert isinstance(info.value, FatalSendError)
    assert not isinstance(info.value, NetworkError)
    assert info.value.exit_code == 2
    assert "ulimit -n" in str(info.value)
    assert "--concurrency" in str(info.value)
    assert "\n" not in str(info.value)
    assert fake.requests == []


def test_receipt_without_data_is_ambiguous() -> None:
    """A 2xx body without a data object or id cannot be trusted as sent."""
    with pytest.raises(AmbiguousSendError):
        parse_receipt({"errors": []})
    with pytest.raises(AmbiguousSendError):
        parse_receipt({"data": {"id": ""}})


async def test_idempotency_key_replays_first_response(fake_api: API) -> None:
    """The same group sent twice with the same key is accepted once; the id is replayed
    (by a server that replays keys: Telnyx does not for group MMS)."""
    fake, url = fake_api
    fake.replay_keys = True
    async with client(url) as c:
        first = await c.send(group(), IDEM)
        second = await c.send(group(), IDEM)
    assert first.message_id == second.message_id
    assert len(fake.accepted) == 1


def test_valid_until_is_kept_when_it_is_a_time() -> None:
    """The API's valid_until is recorded when it is a time, and dropped when it is not."""
    data = {
        "id": "40385f64-5717-4562-b3fc-2c963f66afa6",
        "to": [{"phone_number": "+12125550100", "status": "queued"}],
        "valid_until": "2026-11-25T14:00:00.000+00:00",
    }
    assert parse_receipt({"data": data}).valid_until == "2026-11-25T14:00:00.000+00:00"
    assert parse_receipt({"data": {**data, "valid_until": "soon"}}).valid_until is None
    assert parse_receipt({"data": {**data, "valid_until": "9" * 500}}).valid_until is None


GID = "40385f64-5717-4562-b3fc-2c963f66afa6"
MEMBERS = ("+12125550100", "+12125550101", "+12125550102")


def test_a_member_listed_under_cc_in_the_answer_is_read_and_checked() -> None:
    """The spec gives cc[] a status: a send's answer listing members past the first under cc
    reports them, and one naming a number the request did not send to under cc is in doubt,
    as under to."""
    data = {
        "id": GID,
        "to": [{"phone_number": MEMBERS[0], "status": "queued"}],
        "cc": [{"phone_number": p, "status": "queued"} for p in MEMBERS[1:]],
        "cost": {"amount": "0.0153", "currency": "USD"},
    }
    r = parse_receipt({"data": data}, MEMBERS)
    assert sorted((st.phone, st.status) for st in r.statuses) == [(p, "queued") for p in MEMBERS]
    foreign = {**data, "cc": [{"phone_number": "+12025550000", "status": "queued"}]}
    with pytest.raises(AmbiguousSendError, match="did not send to"):
        parse_receipt({"data": foreign}, MEMBERS)


def test_cc_is_read_only_from_the_message_asked_for_and_never_over_to() -> None:
    """A group's own message (the id asked for) reports members under cc, with only the
    errors that point at them and no cost (the message's is the group's); a recipient's own
    message lists the others in cc and says nothing of them; a member under to anywhere in
    the answer keeps that report; an inbound message (a reply) reports nobody."""
    err = {"code": "40002", "title": "Blocked as spam - temporary", "source": {"pointer": "/cc/1"}}
    group_msg = {
        "id": GID,
        "direction": "outbound",
        "to": [{"phone_number": MEMBERS[0], "status": "delivered"}],
        "cc": [
            {"phone_number": MEMBERS[1], "status": "delivered"},
            {"phone_number": MEMBERS[2], "status": "delivery_failed"},
        ],
        "errors": [err],
        "cost": {"amount": "0.0153", "currency": "USD"},
    }
    got = {st.phone: st for st in parse_statuses(group_msg, GID)}
    assert {p: st.status for p, st in got.items()} == {
        MEMBERS[0]: "delivered", MEMBERS[1]: "delivered", MEMBERS[2]: "delivery_failed",
    }  # fmt: skip
    assert [e.code for e in got[MEMBERS[2]].errors] == ["40002"]
    assert got[MEMBERS[1]].errors == ()
    assert got[MEMBERS[1]].message_id is None
    assert all(st.cost is None for st in got.values())
    assert [st.phone for st in parse_statuses(group_msg, "another-id")] == [MEMBERS[0]]
    own = {**group_msg, "id": "own-1", "to": [{"phone_number": MEMBERS[1], "status": "sent"}]}
    both = {(st.phone, st.status) for st in parse_statuses([group_msg, own], GID)}
    assert (MEMBERS[1], "sent") in both
    assert (MEMBERS[1], "delivered") not in both
    inbound = {**group_msg, "direction": "inbound"}
    assert parse_statuses(inbound, GID) == ()


def test_a_message_of_several_members_gives_each_only_the_errors_that_are_its_own() -> None:
    """In a message naming several members (under to and cc), an error that points at one
    (/to/i, /cc/i) is that member's alone, and one that points at nobody goes to the members
    it did not reach (their status says so), never to the first member under to: a delivered
    member never takes another's carrier code. A message of one recipient keeps them all."""
    cap = {"code": "40016", "title": "T-Mobile daily cap"}
    group_msg = {
        "id": GID,
        "to": [{"phone_number": MEMBERS[0], "status": "delivered"}],
        "cc": [
            {"phone_number": MEMBERS[1], "status": "delivered"},
            {"phone_number": MEMBERS[2], "status": "delivery_failed"},
        ],
        "errors": [cap],
    }
    got = {st.phone: [e.code for e in st.errors] for st in parse_statuses(group_msg, GID)}
    assert got == {MEMBERS[0]: [], MEMBERS[1]: [], MEMBERS[2]: ["40016"]}
    pointed = {**group_msg, "errors": [{**cap, "source": {"pointer": "/cc/1"}}]}
    got = {st.phone: [e.code for e in st.errors] for st in parse_statuses(pointed, GID)}
    assert got == {MEMBERS[0]: [], MEMBERS[1]: [], MEMBERS[2]: ["40016"]}
    at_first = {**group_msg, "errors": [{**cap, "source": {"pointer": "/to/0"}}]}
    got = {st.phone: [e.code for e in st.errors] for st in parse_statuses(at_first, GID)}
    assert got == {MEMBERS[0]: ["40016"], MEMBERS[1]: [], MEMBERS[2]: []}
    alone = {"id": "own-1", "to": [{"phone_number": MEMBERS[0], "status": "sent"}], "errors": [cap]}
    assert [e.code for e in parse_statuses(alone)[0].errors] == ["40016"]


def test_every_idempotency_key_is_one_a_server_honouring_keys_takes() -> None:
    """Each form of key a group is sent under (a campaign's, an old ledger's, a resend's, a
    new sender's) matches the pattern Telnyx documents where it honours keys."""
    documented = re.compile(r"[A-Za-z0-9_:-]{1,255}")
    gid = group_id("a job name with spaces/and+signs", [f"+1212555{i:04d}" for i in range(8)])
    campaign = secrets.token_hex(8)
    keys = [
        idempotency_key(campaign, gid),
        idempotency_key(None, gid),
        idempotency_key(campaign, f"{gid}-r12"),
        idempotency_key(campaign, f"{gid}-18445550001"),
    ]
    assert [k for k in keys if not documented.fullmatch(k)] == []


@pytest.mark.parametrize("plain", [True, False])
def test_an_answer_naming_its_group_message_is_the_groups_and_its_id_no_members_but_a_lone_one(
    plain: bool,
) -> None:
    """A send's answer whose group_message_id is not its id (one member's own message) is
    the group message's, plain or read field by field; its id is the own id of the one
    member under to, and of none when to lists several."""
    gid, mid = "g-0000-1111", "m-2222-3333"
    to = ["+12125550100", "+12125550101"]

    def answer(listed: list[str]) -> dict[str, object]:
        data: dict[str, object] = {
            "id": mid,
            "group_message_id": gid,
            "to": [{"phone_number": p, "status": "sending_failed"} for p in listed],
            "cc": [{"phone_number": p} for p in to if p not in listed],
        }
        if plain:
            data["errors"] = []
        return {"data": data}

    several, lone = (read_receipt(orjson.dumps(answer(listed)), to) for listed in (to, to[:1]))
    assert several.message_id == lone.message_id == gid
    assert [(st.phone, st.message_id) for st in several.statuses] == [(p, None) for p in to]
    assert [(st.phone, st.message_id) for st in lone.statuses] == [(to[0], mid), (to[1], None)]
