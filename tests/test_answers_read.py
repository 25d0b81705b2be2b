"""A send's answer read from its bytes (``read_receipt``): a plain answer in one typed pass,
any other field by field, and every body to the same receipt, the same doubt and the same
warnings as :func:`parse_receipt` of its JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bulk_mms import answers
from bulk_mms.answers import NOT_JSON, _plain_receipt, parse_json, parse_receipt, read_receipt
from bulk_mms.client import AiohttpMmsClient
from bulk_mms.errors import AmbiguousSendError
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.models import Group, MessageBody, SendReceipt

API = tuple[FakeTelnyx, str]
MID = "40385f64-5717-4562-b3fc-2c963f66afa6"
TO = tuple(f"+1212555{100 + i:04d}" for i in range(8))


def verdict(read: Any) -> tuple[object, ...]:
    """What a reading comes to: its receipt, or its doubt's words; and its log lines."""
    with capture_logs() as logs:
        try:
            got: object = read()
        except AmbiguousSendError as exc:
            got = ("in doubt", str(exc))
    return got, logs


def general(raw: bytes, to: tuple[str, ...]) -> SendReceipt:
    """The field-by-field reading: the body parsed whole, then :func:`parse_receipt`."""
    body = parse_json(raw)
    if body is NOT_JSON:
        raise AmbiguousSendError("the answer's body is not JSON")
    return parse_receipt(body, to)


def spec_answer(in_cc: bool = False) -> dict[str, Any]:
    """The spec's example answer (OutboundMessagePayload) to a send of :data:`TO`: members
    under ``to``, or (``in_cc``) past the first under ``cc``."""
    members = [
        {"carrier": "T-MOBILE USA, INC.", "line_type": "Wireless", "phone_number": p, "status": s}
        for p, s in zip(TO, ["queued"] * 7 + ["sending"], strict=True)
    ]
    return {
        "data": {
            "record_type": "message",
            "direction": "outbound",
            "id": MID,
            "type": "MMS",
            "messaging_profile_id": "4000eba1-a0c0-4563-9925-b25e842a7cb6",
            "from": {"carrier": "TELNYX LLC", "line_type": "VoIP", "phone_number": "+18445550001"},
            "to": members[:1] if in_cc else members,
            "cc": members[1:] if in_cc else [],
            "text": "Hello, World!",
            "subject": None,
            "media": [{"url": "https://x.test/a.png", "content_type": None, "size": None}],
            "encoding": "GSM-7",
            "parts": 1,
            "tags": ["Greetings"],
            "cost": {"amount": "0.0408", "currency": "USD"},
            "cost_breakdown": {"rate": {"amount": "0.0164", "currency": "USD"}},
            "received_at": "2019-01-23T18:10:02.574Z",
            "sent_at": None,
            "completed_at": None,
            "valid_until": "2019-01-23T19:10:02.574Z",
            "wait_seconds": 0.5,
            "errors": [],
        }
    }


@pytest.mark.parametrize("in_cc", [False, True])
def test_the_specs_answer_is_read_in_one_typed_pass_to_the_same_receipt(in_cc: bool) -> None:
    """The spec's answer to a send of eight (members under ``to``, or past the first under
    ``cc``) is plain: the typed pass reads it, to the receipt parse_receipt reads."""
    raw = json.dumps(spec_answer(in_cc)).encode()
    plain = _plain_receipt(raw, TO)
    assert plain is not None
    assert plain == parse_receipt(json.loads(raw), TO)
    assert sorted((st.phone, st.status) for st in plain.statuses) == sorted(
        [(p, "queued") for p in TO[:7]] + [(TO[7], "sending")]
    )
    assert (plain.wait_seconds, plain.valid_until) == (0.5, "2019-01-23T19:10:02.574Z")


async def test_the_fake_apis_answer_takes_the_typed_pass(
    fake_api: API, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send through the real client to the fake API (the spec's answer) is read without
    the field-by-field reading."""
    fake, url = fake_api

    def unused(body: object, to: object = None) -> SendReceipt:
        raise AssertionError("read field by field")

    monkeypatch.setattr(answers, "parse_receipt", unused)
    group = Group("gid", 0, TO, tuple(range(8)), MessageBody(from_="+18445550001", text="hi"))
    async with AiohttpMmsClient(url, "test-key-123") as client:
        receipt = await client.send(group, "k1")
    assert receipt.message_id == fake.accepted[0].id
    assert [st.phone for st in receipt.statuses] == list(TO)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"data": null}',
        b'{"data": {"id": "' + MID.encode() + b'", "errors": [], "x": "\xff"}}',  # not UTF-8
        b'{"data": {"id": "' + MID.encode() + b'", "errors": [], "x": "\\ud800"}}',
        b'{"data": {"id": "' + MID.encode() + b'", "errors": [], "x": NaN}}',
        b'{"data": {"id": "' + MID.encode() + b'", "errors": [], "x": ' + b"[" * 3000 + b"]" * 3000,
        b'{"data": {"id": "' + MID.encode() + b'", "errors": []}} trailing',
        b'\xef\xbb\xbf{"data": {"id": "' + MID.encode() + b'", "errors": []}}',  # a BOM
        b'{"data": {"id": "' + MID.encode() + b'", "errors": [], "wait_seconds": 1' + b"0" * 400,
        b'{"data": {"id": "'
        + MID.encode()
        + b'", "errors": [], "wait_seconds": 1'
        + b"0" * 400
        + b"}}",
        b'{"data": {"id": "' + MID.encode() + b'", "errors": [], "wait_seconds": 1e999}}',
        b'{"data": {"id": "' + MID.encode() + b'", "errors": [], '
        b'"cost": {"amount": 1e999, "currency": "USD"}}}',
        b'{"data": {"id": "' + MID.encode() + b'\\n", "errors": []}}',
        b'{"data": {"id": "' + MID.encode() + b'", "id": "", "errors": []}}',
    ],
)
def test_a_body_off_the_plain_path_reads_as_it_did(raw: bytes) -> None:
    """Bodies that are not JSON, JSON only the standard parser reads (a lone surrogate, NaN,
    a number beyond a double), too deep, or carrying a stray byte in a field nobody reads:
    each gives the receipt or the doubt the field-by-field reading gives, never a crash
    (a whole number of wait beyond a double is no wait)."""
    assert verdict(lambda: read_receipt(raw, TO)) == verdict(lambda: general(raw, TO))


PHONES = st.sampled_from([*TO[:3], "+12025550000", "", "x" * 40])
TEXTS = st.one_of(
    st.sampled_from(["queued", "", "sent", "q" * 41, MID, "not an id", "2026-11-25T14:00:00Z"]),
    st.text(max_size=12),
)
ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), TEXTS
)


MEMBER = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "phone_number": st.one_of(PHONES, ANY),
            "status": st.one_of(TEXTS, ANY),
            "carrier": TEXTS,
        },
    ),
    ANY,
)
MEMBERS = st.one_of(st.lists(MEMBER, max_size=10), ANY)
ERROR = st.fixed_dictionaries(
    {"code": st.one_of(st.sampled_from(["40002", 40002]), ANY), "title": TEXTS},
    optional={"source": st.fixed_dictionaries({"pointer": st.sampled_from(["/to/0", "/cc/1"])})},
)
COST = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "amount": st.one_of(st.sampled_from(["0.0408", " 1 ", "-1", "NaN", "1e99", ""]), ANY),
            "currency": st.one_of(st.sampled_from(["USD", "usd", "", "EURO"]), ANY),
        },
    ),
    ANY,
)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.sampled_from([MID, "", "a b", MID + "\n", "-x"]), ANY),
        "to": MEMBERS,
        "cc": MEMBERS,
        "errors": st.one_of(st.lists(st.one_of(ERROR, ANY), max_size=2), ANY),
        "direction": st.one_of(st.sampled_from(["outbound", "inbound"]), ANY),
        "group_message_id": st.one_of(st.sampled_from([MID, "not an id"]), ANY),
        "cost": COST,
        "wait_seconds": ANY,
        "valid_until": st.one_of(st.sampled_from(["2026-11-25T14:00:00.000+00:00", "soon"]), ANY),
        "code": ANY,
        "title": TEXTS,
        "media": st.lists(st.dictionaries(st.text(max_size=3), ANY, max_size=2), max_size=2),
    },
)
#: Mostly of the spec's types, so that many are plain (read in the typed pass).
SPEC_MEMBER = st.fixed_dictionaries(
    {"phone_number": st.one_of(st.sampled_from(TO[:3]), st.sampled_from(TO[:3]), PHONES)},
    optional={"status": st.one_of(TEXTS, st.none()), "line_type": TEXTS},
)
SPEC_MESSAGE = st.fixed_dictionaries(
    {"id": st.sampled_from([MID, MID, MID, "", MID + "\n"]), "errors": st.just([])},
    optional={
        "to": st.lists(SPEC_MEMBER, max_size=9),
        "cc": st.lists(SPEC_MEMBER, max_size=4),
        "direction": st.sampled_from(["outbound", "outbound", "inbound", None]),
        "group_message_id": st.sampled_from([MID, "not an id", None]),
        "cost": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {"amount": st.sampled_from(["0.0408", " 1 ", "0.0408", "-1", "NaN", "1" * 41, ""])},
                optional={"currency": st.sampled_from(["USD", "usd", "", "EURO", None])},
            ),
        ),
        "wait_seconds": st.one_of(st.none(), st.floats(allow_nan=False), st.integers(-9, 2**70)),
        "valid_until": st.sampled_from(["2026-11-25T14:00:00.000+00:00", "soon", "9" * 50, None]),
        "media": st.lists(st.dictionaries(st.text(max_size=3), ANY, max_size=2), max_size=2),
    },
)
BODY = st.one_of(
    st.fixed_dictionaries({"data": SPEC_MESSAGE}),
    st.fixed_dictionaries({"data": SPEC_MESSAGE}),
    st.fixed_dictionaries({"data": st.one_of(MESSAGE, ANY)}),
    MESSAGE,
    ANY,
)


@settings(max_examples=300)
@given(BODY, st.booleans())
def test_every_answer_reads_as_parse_receipt_reads_it(body: object, ascii_only: bool) -> None:
    """Any JSON answer (fields of the spec's types and of others, absent, null, out of
    bounds, unknown; its text escaped or not) gives read_receipt the receipt, the doubt and
    the warnings that parse_receipt of the same JSON gives."""
    raw = json.dumps(body, ensure_ascii=ascii_only).encode()
    assert verdict(lambda: read_receipt(raw, TO[:3])) == verdict(lambda: general(raw, TO[:3]))


SENDER = "+18445550001"


@pytest.mark.parametrize("in_cc", [False, True])
def test_an_answer_listing_its_own_sender_in_cc_is_read_not_in_doubt(in_cc: bool) -> None:
    """An answer whose ``cc`` lists the sending number itself (a group's messages list every
    participant, the sender included) is read by both passes to the members' statuses alone."""
    body = spec_answer(in_cc)
    body["data"]["cc"].append(
        {"phone_number": SENDER, "carrier": "TELNYX LLC", "line_type": "VoIP"}
    )
    raw = json.dumps(body).encode()
    plain = _plain_receipt(raw, TO, SENDER)
    assert plain is not None
    assert plain == read_receipt(raw, TO, SENDER) == parse_receipt(json.loads(raw), TO, SENDER)
    assert sorted(st.phone for st in plain.statuses) == sorted(TO)
    with pytest.raises(AmbiguousSendError):  # another number in cc is still not ours
        read_receipt(raw.replace(SENDER.encode(), b"+18445550002"), TO, SENDER)
