"""Webhooks: Ed25519 verification, duplicates and order, and what may reach the ledger."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from structlog.testing import capture_logs

from bulk_mms.cli import main
from bulk_mms.clock import instant, iso
from bulk_mms.codes import OPT_IN_WORDS, OPT_OUT_WORDS
from bulk_mms.config import JobConfig, Settings
from bulk_mms.errors import ConfigError
from bulk_mms.ledger import (
    GroupRecord,
    LedgerStore,
    LedgerView,
    Location,
    Sent,
    load,
    open_store,
)
from bulk_mms.ledger.events import Status
from bulk_mms.models import Group, Money, RecipientStatus
from bulk_mms.signals import Stop, StopReason
from bulk_mms.suppression import Suppressed, opted_out, suppression_for
from bulk_mms.testing import ledger_events
from bulk_mms.webhooks import (
    JobReceiver,
    WebhookReceiver,
    load_public_key,
    serve_webhooks,
)
from bulk_mms.webhooks import receiver as receiver_module
from bulk_mms.webhooks.base import LATE_POLL_S, MAX_EVENT_BODY
from bulk_mms.webhooks.events import Origin
from tests.conftest import FakeClient, FakeClock, JobFactory, sent_ledger

SIGNER = Ed25519PrivateKey.generate()
PUBLIC_B64 = base64.b64encode(
    SIGNER.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
).decode()


def event(
    kind: str, group: Group, message_id: str, status: str, *, event_id: str | None = None
) -> dict[str, Any]:
    """A Telnyx messaging webhook for every recipient of ``group``."""
    return {
        "data": {
            "event_type": kind,
            "id": event_id or str(uuid.uuid4()),
            "occurred_at": "2026-11-23T10:00:00.000+00:00",
            "record_type": "event",
            "payload": {
                "id": message_id,
                "to": [{"phone_number": p, "status": status} for p in group.to],
                "errors": [],
            },
        },
        "meta": {"attempt": 1, "delivered_to": "https://example.com/hooks"},
    }


def signed(
    body: dict[str, Any], *, key: Ed25519PrivateKey = SIGNER, age: float = 0
) -> tuple[bytes, dict[str, str]]:
    raw = orjson.dumps(body)
    stamp = str(int(time.time() - age))
    sig = base64.b64encode(key.sign(stamp.encode() + b"|" + raw)).decode()
    return raw, {"telnyx-signature-ed25519": sig, "telnyx-timestamp": stamp}


async def post_signed(
    http: TestClient[Any, Any], body: dict[str, Any], **kw: Any
) -> tuple[int, dict[str, Any]]:
    """``body`` signed (as Telnyx, or with ``key``) and posted to the receiver: the status,
    and the JSON answer of a 200 (else nothing)."""
    raw, headers = signed(body, **kw)
    resp = await http.post("/h", data=raw, headers=headers)
    return resp.status, dict(await resp.json()) if resp.status == 200 else {}


def disk_full_for(monkeypatch: pytest.MonkeyPatch, marker: bytes, times: int) -> None:
    """The next ``times`` writes of data holding ``marker`` fail as on a full disk (ENOSPC)."""
    real_write, left = os.write, [times]

    def write(fd: int, data: bytes | memoryview) -> int:
        if left[0] and marker in bytes(data):
            left[0] -= 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


class Gate:
    """Holds a blocking call (a ledger's read, open or check) in its worker thread until the
    test releases it: whether it began, and on which thread each call ran."""

    def __init__(self) -> None:
        self.began = threading.Event()
        self.released = threading.Event()
        #: For each call held: whether it ran on the event loop's thread.
        self.on_loop: list[bool] = []

    def hold(self) -> None:
        self.on_loop.append(asyncio._get_running_loop() is not None)
        self.began.set()
        self.released.wait(timeout=60)  # a guard only: the test releases it

    async def begun(self) -> None:
        """Return once a call is held (waiting off the loop, which goes on meanwhile)."""
        await asyncio.to_thread(self.began.wait, 60)


def status_lines(path: Path) -> list[dict[str, Any]]:
    return [e for e in ledger_events(path) if e["event"] == "status"]


def append_late_group(path: Path, like: Group, name: str = "late", seq: int = 9) -> Group:
    """Append the `sent` line a run writes for one more group (id "{name}-group", of one
    recipient, message id "{name}-msg")."""
    late = Group(f"{name}-group", seq, (f"+1312555{seq + 102:04d}",), (seq,), like.message)
    ledger = open_store(path, "append")
    ledger.append_now(
        Sent(late.id, late.to, late.seq, message_id=f"{name}-msg", time="2026-11-23T10:00:00Z")
    )
    ledger.close_sync()
    return late


def stranger(n: int, like: Group) -> dict[str, Any]:
    """A report of another app's message ``other-{n}`` to a number the ledger never texted."""
    other = Group("other", 0, ("+13125550199",), (1,), like.message)
    return event("message.finalized", other, f"other-{n}", "delivered")


def beating(like: Group) -> dict[str, Any]:
    """A report of the group :func:`append_late_group` appends, before its `sent` line."""
    late = Group("late-group", 9, ("+13125550111",), (9,), like.message)
    return event("message.finalized", late, "late-msg", "delivered")


def pollers() -> int:
    """How many tasks look for events again (:meth:`BaseReceiver._poll`) in this loop."""
    return sum(
        getattr(t.get_coro(), "__qualname__", "") == "BaseReceiver._poll"
        for t in asyncio.all_tasks()
    )


def counted_reads(monkeypatch: pytest.MonkeyPatch, store: LedgerStore) -> list[None]:
    """A list that grows by one at every read of what was appended to ``store`` since."""
    reads: list[None] = []
    new_events = store.new_events

    def reading() -> Any:
        reads.append(None)
        return new_events()

    monkeypatch.setattr(store, "new_events", reading)
    return reads


@pytest.fixture
async def hooks(jobs: JobFactory) -> AsyncIterator[tuple[TestClient[Any, Any], Path, FakeClient]]:
    ledger_path, client = await sent_ledger(jobs, 8)
    ledger = open_store(ledger_path, "append")
    receiver = WebhookReceiver(LedgerView(), ledger, load_public_key(PUBLIC_B64))
    await receiver.take_in_new()
    receiver.late_window_s = 0.3
    async with TestClient(TestServer(receiver.app())) as http:
        yield http, ledger_path, client
    await receiver.close()
    await ledger.close()


async def test_signed_finalized_event_is_recorded(
    hooks: tuple[TestClient[Any, Any], Path, FakeClient],
) -> None:
    """A correctly signed message.finalized becomes one status line per recipient."""
    http, path, client = hooks
    g = client.calls[0]
    raw, headers = signed(
        event("message.finalized", g, f"msg-{g.id}-0", "delivered", event_id="e1")
    )
    resp = await http.post("/webhooks", data=raw, headers=headers)
    assert resp.status == 200
    assert (await resp.json())["recorded"] == 4
    lines = status_lines(path)
    assert {e["recipient"] for e in lines} == set(g.to)
    assert all(e["source"] == "webhook" and e["webhook_id"] == "e1" for e in lines)


async def test_an_event_with_a_number_beyond_a_double_is_still_recorded(
    hooks: tuple[TestClient[Any, Any], Path, FakeClient],
) -> None:
    """A signed event whose payload holds a number beyond a double (``1e999``) is read as an
    answer's body is: the reports it carries are recorded, not refused with a 400."""
    http, path, client = hooks
    g = client.calls[0]
    body = orjson.dumps(event("message.finalized", g, f"msg-{g.id}-0", "delivered"))
    raw = body.replace(b'"errors":[]', b'"errors":[],"wait_seconds":1e999')
    stamp = str(int(time.time()))
    sig = base64.b64encode(SIGNER.sign(stamp.encode() + b"|" + raw)).decode()
    headers = {"telnyx-signature-ed25519": sig, "telnyx-timestamp": stamp}
    resp = await http.post("/h", data=raw, headers=headers)
    assert (resp.status, (await resp.json())["recorded"]) == (200, 4)
    assert {e["recipient"] for e in status_lines(path)} == set(g.to)


@pytest.mark.parametrize(
    ("occurred_at", "kept"),
    [
        ("2026-11-23T10:00:00.000+00:00", True),
        ("9999-12-31T23:59:59Z", False),
        ("\x1b[2Jnot a time", False),
    ],
)
async def test_a_reports_time_is_kept_only_when_it_is_a_time_not_far_ahead(
    hooks: tuple[TestClient[Any, Any], Path, FakeClient], occurred_at: str, kept: bool
) -> None:
    """A webhook's ``occurred_at`` is a status's stamp by the rule the API's answers follow:
    one in the year 9999 (it would outrank every later report) or one that is no time is
    not recorded as the report's time."""
    http, path, client = hooks
    g = client.calls[0]
    body = event("message.finalized", g, f"msg-{g.id}-0", "delivered", event_id="e1")
    body["data"]["occurred_at"] = occurred_at
    assert (await post_signed(http, body))[0] == 200
    stamps = {e.get("at") for e in status_lines(path)}
    assert (stamps == {occurred_at}) == kept
    assert "9999-12-31T23:59:59Z" not in stamps


@pytest.mark.parametrize("forgery", ["other_key", "tampered", "missing", "stale", "future"])
async def test_bad_signatures_get_401_and_write_nothing(
    hooks: tuple[TestClient[Any, Any], Path, FakeClient], forgery: str
) -> None:
    """Another key, an edited body, no headers, or a stamp 10 minutes old or ahead: 401, no
    line."""
    http, path, client = hooks
    body = event("message.finalized", client.calls[0], "m", "delivered")
    raw, headers = signed(
        body,
        key=Ed25519PrivateKey.generate() if forgery == "other_key" else SIGNER,
        age={"stale": 600, "future": -600}.get(forgery, 0),
    )
    if forgery == "tampered":
        raw = raw.replace(b"delivered", b"delivery_failed")
    if forgery == "missing":
        headers = {}
    resp = await http.post("/webhooks", data=raw, headers=headers)
    assert resp.status == 401
    assert status_lines(path) == []


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("telnyx-timestamp", "9" * 20),
        ("telnyx-timestamp", "9" * 5000),
        ("telnyx-timestamp", "1e99"),
        ("telnyx-timestamp", "-5"),
        ("telnyx-timestamp", "1700000000.5"),
        ("telnyx-signature-ed25519", "not base64!"),
        ("telnyx-signature-ed25519", "QUJD"),
        ("telnyx-signature-ed25519", "A" * 4000),
    ],
)
async def test_malformed_signature_headers_get_400_never_500(
    hooks: tuple[TestClient[Any, Any], Path, FakeClient], header: str, value: str
) -> None:
    """A timestamp that is not 1 to 12 digits or a signature that is not 64 bytes of base64
    is a bad request (400), checked before any arithmetic: no 500, no line."""
    http, path, client = hooks
    raw, headers = signed(event("message.finalized", client.calls[0], "m", "delivered"))
    headers[header] = value
    resp = await http.post("/webhooks", data=raw, headers=headers)
    assert resp.status == 400
    assert status_lines(path) == []


async def test_a_body_past_the_bound_gets_413_and_writes_nothing(
    hooks: tuple[TestClient[Any, Any], Path, FakeClient],
) -> None:
    """A signed body larger than MAX_EVENT_BODY is refused with 413 before it is parsed."""
    http, path, client = hooks
    body = event("message.finalized", client.calls[0], "m", "delivered")
    body["data"]["payload"]["text"] = "x" * MAX_EVENT_BODY
    raw, headers = signed(body)
    resp = await http.post("/webhooks", data=raw, headers=headers)
    assert resp.status == 413
    assert status_lines(path) == []


async def test_duplicates_and_late_events_are_acknowledged_not_recorded(
    hooks: tuple[TestClient[Any, Any], Path, FakeClient],
) -> None:
    """A redelivered event id, and a message.sent after message.finalized, change nothing."""
    http, path, client = hooks
    g = client.calls[0]
    mid = f"msg-{g.id}-0"
    final = event("message.finalized", g, mid, "delivery_failed", event_id="e-final")
    for body in (final, final, event("message.sent", g, mid, "sent", event_id="e-late")):
        raw, headers = signed(body)
        resp = await http.post("/webhooks", data=raw, headers=headers)
        assert resp.status == 200
    assert [e["status"] for e in status_lines(path)] == ["delivery_failed"] * 4


async def test_unknown_recipients_and_other_events_write_nothing(
    hooks: tuple[TestClient[Any, Any], Path, FakeClient], jobs: JobFactory
) -> None:
    """Numbers the ledger never sent to, and message.received, are acknowledged and ignored."""
    http, path, client = hooks
    stranger = Group("x", 0, ("+13125550199",), (1,), client.calls[0].message)
    for body in (
        event("message.finalized", stranger, "unknown-id", "delivered"),
        event("message.received", client.calls[0], "m", "delivered"),
    ):
        raw, headers = signed(body)
        assert (await http.post("/webhooks", data=raw, headers=headers)).status == 200
    assert status_lines(path) == []
    assert sorted(p.name for p in jobs.root.rglob("*") if p.is_file()) == [
        "job.toml",
        "people.csv",
        "test-job.jsonl",
        "test-job.jsonl.lock",
    ]


def serving(
    target: Location | JobConfig, stop: Stop
) -> tuple[asyncio.Task[WebhookReceiver | JobReceiver], asyncio.Future[str]]:
    """:func:`serve_webhooks` of ``target`` on port 0 as a task, until ``stop``; and the
    address it listens on, once it does."""
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    key = load_public_key(PUBLIC_B64)
    server = asyncio.create_task(
        serve_webhooks(target, "127.0.0.1", 0, key, stop, started=ready.set_result)
    )
    return server, ready


async def posted(address: str, raw: bytes, headers: dict[str, str]) -> int:
    """POST one signed event to the receiver listening at ``address``; the status it answers."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://{address}/hooks", data=raw, headers=headers) as resp,
    ):
        return resp.status


async def test_server_picks_up_groups_sent_after_it_started(jobs: JobFactory) -> None:
    """Listening on port 0 beside a run, events for groups sent later are still recorded."""
    path, client = await sent_ledger(jobs, 4)
    stop = Stop()
    server, ready = serving(path, stop)
    address = await ready
    late = append_late_group(path, client.calls[0])  # sent after the server read the ledger
    raw, headers = signed(event("message.finalized", late, "late-msg", "delivered"))
    assert await posted(address, raw, headers) == 200
    stop.request(StopReason.SIGTERM)
    receiver = await server
    assert receiver.recorded == 1
    assert [e["recipient"] for e in status_lines(path)] == ["+13125550111"]


async def test_no_header_a_request_carries_reaches_the_log(
    jobs: JobFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An Authorization a proxy adds is never logged: not with a request refused for its
    signature (401), nor in a header line aiohttp cannot parse (too long: 400), which is one
    ``webhook.bad_request`` line with its status, without its text or a traceback."""
    path, client = await sent_ledger(jobs, 4)
    secret = "Bearer proxy-secret-0123456789"
    stop = Stop()
    raw, headers = signed(event("message.finalized", client.calls[0], "m", "delivered"))
    answers = []
    with caplog.at_level(logging.DEBUG), capture_logs() as logs:
        server, ready = serving(path, stop)
        url = f"http://{await ready}/hooks"
        async with aiohttp.ClientSession() as session:
            for auth, sig in (
                (secret, "A" * 86 + "=="),
                (secret + "x" * 9000, headers["telnyx-signature-ed25519"]),
            ):
                sent = {**headers, "telnyx-signature-ed25519": sig, "Authorization": auth}
                async with session.post(url, data=raw, headers=sent) as resp:
                    answers.append(resp.status)
        stop.request(StopReason.SIGTERM)
        await server
    assert answers == [401, 400]
    assert "proxy-secret" not in repr(logs) + caplog.text
    assert [(e["event"], e.get("status")) for e in logs if e["log_level"] != "info"] == [
        ("webhook.rejected", 401),
        ("webhook.bad_request", 400),
    ]
    assert [r.getMessage() for r in caplog.records] == []


def test_public_key_errors_name_the_variable() -> None:
    """A missing or wrong TELNYX_PUBLIC_KEY is a ConfigError naming it."""
    for value in (
        None,
        "",
        "bm90IGEga2V5",
        "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----",
    ):
        with pytest.raises(ConfigError) as info:
            load_public_key(value)
        assert info.value.setting == "TELNYX_PUBLIC_KEY"


def test_cli_without_public_key_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bulk-mms webhooks` without the public key exits 2 with one line, no traceback."""
    monkeypatch.delenv("TELNYX_PUBLIC_KEY", raising=False)
    code = main(["webhooks", "--listen", "127.0.0.1:0", "--ledger", str(tmp_path / "l.jsonl")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "TELNYX_PUBLIC_KEY" in err


def test_cli_takes_the_settings_suppression_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bulk-mms webhooks --config FILE` records inbound STOPs into that file's [suppression]
    list, the one `run --config FILE` honours, not the default list, takes its keywords, and
    reads delivery reports by its [errors] table."""
    settings = tmp_path / "settings.toml"
    settings.write_text(
        '[suppression]\nfile = "stops.txt"\nopt_out_words = ["arret"]\n'
        '[errors]\n40008 = "suppress"\n'
    )
    given: dict[str, Any] = {}

    async def serve(*args: Any, suppressed: Suppressed, **kwargs: Any) -> None:
        given["list"] = suppressed.path
        given["policy"] = kwargs["settings"].error_policy
        given["words"] = kwargs["settings"].opt_out_words

    monkeypatch.setenv("TELNYX_PUBLIC_KEY", PUBLIC_B64)
    monkeypatch.setattr("bulk_mms.webhooks.serve_webhooks", serve)
    ledger = str(tmp_path / "l.jsonl")
    assert main(["webhooks", ledger, "--listen", "127.0.0.1:0", "--config", str(settings)]) == 0
    assert given["list"] == tmp_path / "stops.txt"
    assert given["policy"]["40008"] == "suppress"
    assert "ARRET" in given["words"]
    assert "STOP" in given["words"]


async def test_an_event_that_beats_its_sent_line_is_recorded_when_it_lands(
    hooks: tuple[TestClient[Any, Any], Path, FakeClient],
) -> None:
    """A webhook for a group whose `sent` line is not written yet is matched once it is."""
    http, path, client = hooks
    late = Group("late-group", 9, ("+13125550111",), (9,), client.calls[0].message)
    raw, headers = signed(event("message.finalized", late, "late-msg", "delivered"))
    resp = await http.post("/webhooks", data=raw, headers=headers)
    assert (await resp.json())["pending"] == 1
    append_late_group(path, client.calls[0])
    for _ in range(50):
        if status_lines(path):
            break
        await asyncio.sleep(0.05)
    assert [(e["group"], e["status"]) for e in status_lines(path)] == [("late-group", "delivered")]


async def test_a_receiver_stopped_already_takes_one_last_look_for_a_late_event(
    jobs: JobFactory,
) -> None:
    """An event held whose `sent` line lands just as the receiver stops (the stop set before
    its late look begins) is matched by one last look, not dropped as unmatched."""
    stop = asyncio.Event()
    receiver, path, client = await receiver_for(jobs, stop=stop)
    late = append_late_group(path, client.calls[0])
    body = event("message.finalized", late, "late-msg", "delivered", event_id="evt-late")
    report = RecipientStatus(late.to[0], "delivered")
    assert (
        await receiver.look_later(
            "evt-late", "message.finalized", body["data"], "late-msg", [report]
        )
        is None
    )
    stop.set()
    await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert receiver.unmatched == 0
    assert [(e["group"], e["status"]) for e in status_lines(path)] == [("late-group", "delivered")]


async def test_an_event_no_ledger_knows_that_comes_while_stopping_gets_503_not_dropped(
    jobs: JobFactory,
) -> None:
    """A report the ledger does not know yet, in flight when the receiver is told to stop
    (SIGTERM), gets 503, so Telnyx delivers it again, not a 200 its last look then drops:
    redelivered to the receiver started again once its `sent` line has landed, it is
    recorded."""
    stop = asyncio.Event()
    receiver, path, client = await receiver_for(jobs, stop=stop)
    like = client.calls[0]
    beat = beating(like)
    async with TestClient(TestServer(receiver.app())) as http:
        stop.set()
        assert (await post_signed(http, beat))[0] == 503
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert receiver.unmatched == 0
    append_late_group(path, like)
    again = await receiver_for_ledger(path)
    async with TestClient(TestServer(again.app())) as http:
        assert await post_signed(http, beat) == (200, {"ok": True, "recorded": 1, "pending": 0})
    await again.close()
    await again.store.close()
    assert [(e["group"], e["status"]) for e in status_lines(path)] == [("late-group", "delivered")]


async def test_events_no_ledger_knows_are_looked_for_by_one_task_with_one_read_a_look(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty events of messages the ledger does not know make one task that looks for them
    all, not a task each: each look reads the ledger once however many wait (a store that
    cannot tell whether it grew, as PostgreSQL's), and every one is counted unmatched once
    its window ran out."""
    receiver, path, client = await receiver_for(jobs)
    reads = counted_reads(monkeypatch, receiver.store)
    monkeypatch.setattr(receiver.store, "may_have_new", lambda: True)
    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, stranger(0, client.calls[0])))[1]["pending"] == 1
        tasks = len(asyncio.all_tasks())
        for n in range(1, 40):
            assert (await post_signed(http, stranger(n, client.calls[0])))[1]["pending"] == 1
        assert (len(asyncio.all_tasks()), pollers()) == (tasks, 1)
        before = len(reads)
        await asyncio.sleep(10 * LATE_POLL_S)  # ten looks, on the virtual loop clock
        assert 9 <= len(reads) - before <= 11
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert receiver.unmatched == 40
    assert status_lines(path) == []
    assert pollers() == 0


async def test_requests_for_ids_no_ledger_knows_share_a_read_and_see_what_came_before(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty requests for message ids the ledger does not know, come while its read of what
    was appended since is under way, make one read more, not twenty, which they share: begun
    after they came, it finds the `sent` line appended after the first read had read the
    file and before they came, and that group's report is recorded at once."""
    receiver, path, client = await receiver_for(jobs)
    like, gate, reads = client.calls[0], Gate(), list[None]()
    new_events, take_in_new = receiver.store.new_events, receiver.take_in_new
    asked: list[None] = []
    all_asked = asyncio.Event()  # the first request and the twenty came

    def reading() -> Any:
        events = list(new_events())
        reads.append(None)
        if len(reads) == 1:
            gate.hold()  # the file read: what is appended now is the next read's
        return iter(events)

    async def asking() -> None:
        asked.append(None)
        if len(asked) == 21:
            all_asked.set()
        await take_in_new()

    monkeypatch.setattr(receiver.store, "new_events", reading)
    monkeypatch.setattr(receiver, "take_in_new", asking)
    append_late_group(path, like, "first", 9)
    async with TestClient(TestServer(receiver.app())) as http:
        first = asyncio.create_task(post_signed(http, stranger(0, like)))
        await gate.begun()
        late = append_late_group(path, like, "late", 10)
        bodies = [stranger(n, like) for n in range(1, 20)]
        bodies.append(event("message.finalized", late, "late-msg", "delivered"))
        answers = asyncio.gather(*(post_signed(http, body) for body in bodies))
        await all_asked.wait()
        gate.released.set()
        answered = [a[1] for a in await answers]
        assert len(reads) == 2
        assert (await first)[1]["pending"] == 1
    await receiver.close()
    await receiver.store.close()
    assert answered[-1] == {"ok": True, "recorded": 1, "pending": 0}
    assert [a["pending"] for a in answered[:-1]] == [1] * 19
    assert [e["group"] for e in status_lines(path)] == ["late-group"]


async def test_a_request_reads_the_ledger_only_when_it_grew_and_sees_a_line_just_before_it(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests for ids the ledger does not know read nothing while the ledger has not grown
    since its last read, and one that comes just after a `sent` line was appended reads it:
    its report is recorded at once."""
    receiver, path, client = await receiver_for(jobs)
    reads = counted_reads(monkeypatch, receiver.store)
    like = client.calls[0]
    async with TestClient(TestServer(receiver.app())) as http:
        for n in range(5):
            assert (await post_signed(http, stranger(n, like)))[1]["pending"] == 1
        assert reads == []
        late = append_late_group(path, like)
        body = event("message.finalized", late, "late-msg", "delivered")
        assert await post_signed(http, body) == (200, {"ok": True, "recorded": 1, "pending": 0})
        assert len(reads) == 1
    await receiver.close()
    await receiver.store.close()
    assert [e["group"] for e in status_lines(path)] == ["late-group"]


def faulty(monkeypatch: pytest.MonkeyPatch, receiver: WebhookReceiver, name: str) -> list[int]:
    """Have ``receiver``'s method ``name`` raise a bug's RuntimeError (its message quoting
    a secret) while the list returned holds a number above 0, taking one off it each time."""
    real, left = getattr(receiver, name), [0]

    async def failing(*args: Any) -> Any:
        if left[0]:
            left[0] -= 1
            raise RuntimeError("sk-secret")
        return await real(*args)

    monkeypatch.setattr(receiver, name, failing)
    return left


async def test_a_look_again_that_fails_of_a_bug_is_retried_with_backoff_then_gives_up(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look again whose read fails of a bug is logged in one line, without its message,
    and tried again after twice as long each time: a late event is recorded once the looks
    work again. Five such failures in a row give the events held up (counted unmatched),
    and a later event starts the looks anew."""
    receiver, path, client = await receiver_for(jobs)
    assert isinstance(receiver.clock, FakeClock)
    like, fails = client.calls[0], faulty(monkeypatch, receiver, "_read_late")
    late = Group("late-group", 9, ("+13125550111",), (9,), like.message)
    fails[0] = 2
    with capture_logs() as logs:
        async with TestClient(TestServer(receiver.app())) as http:
            body = event("message.finalized", late, "late-msg", "sent")
            assert (await post_signed(http, body))[1]["pending"] == 1
            append_late_group(path, like)
            await receiver.settle()
            assert [e["group"] for e in status_lines(path)] == ["late-group"]
            assert receiver.clock.calls[:3] == [LATE_POLL_S, 2 * LATE_POLL_S, 4 * LATE_POLL_S]
            fails[0], receiver.clock.calls[:] = 5, []
            assert (await post_signed(http, stranger(0, like)))[1]["pending"] == 1
            await receiver.settle()
            assert receiver.clock.calls == [LATE_POLL_S * 2**n for n in range(5)]
            assert receiver.unmatched == 1
            assert (await post_signed(http, stranger(1, like)))[1]["pending"] == 1
            await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert receiver.unmatched == 2
    failed = [e for e in logs if e["event"] == "webhook.late_failed"]
    assert [e["faults"] for e in failed] == [1, 2, 1, 2, 3, 4, 5]
    assert all(e["error"] == "RuntimeError" and "test_webhooks.py:" in e["at"] for e in failed)
    assert "sk-secret" not in repr(logs)
    assert not any("exc_info" in e for e in failed)


async def test_looks_again_that_end_on_a_bug_outside_a_look_give_their_events_up(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The looks again failing of a bug between two looks is logged in one line, without its
    message, and the events they held are counted unmatched (nothing waits on looks that
    ended); a later event starts the looks anew."""
    receiver, path, client = await receiver_for(jobs)
    like, real, left = client.calls[0], receiver._stopping, [1]

    def stopping() -> bool:
        task = asyncio.current_task()
        coro = task.get_coro() if task is not None else None
        looks = getattr(coro, "__qualname__", "") == "BaseReceiver._poll"
        if looks and left[0]:  # the looks', not a request's (:meth:`look_later`)
            left[0] -= 1
            raise RuntimeError("sk-secret")
        return real()

    monkeypatch.setattr(receiver, "_stopping", stopping)
    with capture_logs() as logs:
        async with TestClient(TestServer(receiver.app())) as http:
            assert (await post_signed(http, stranger(0, like)))[1]["pending"] == 1
            await asyncio.sleep(2 * LATE_POLL_S)
            assert receiver.unmatched == 1
            late = Group("late-group", 9, ("+13125550111",), (9,), like.message)
            body = event("message.finalized", late, "late-msg", "delivered")
            assert (await post_signed(http, body))[1]["pending"] == 1
            append_late_group(path, like)
            await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert [e["group"] for e in status_lines(path)] == ["late-group"]
    failed = [e for e in logs if e["event"] == "webhook.late_failed"]
    assert [(e["error"], e["pending"]) for e in failed] == [("RuntimeError", 1)]
    assert "sk-secret" not in repr(logs)


async def test_an_event_whose_look_again_fails_of_a_bug_is_dropped_alone(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event held whose matching fails of a bug is logged and counted unmatched; the other
    events held are looked for all the same, and one is recorded once its `sent` line lands."""
    receiver, path, client = await receiver_for(jobs)
    like, fails = client.calls[0], faulty(monkeypatch, receiver, "_found")
    late = Group("late-group", 9, ("+13125550111",), (9,), like.message)
    with capture_logs() as logs:
        async with TestClient(TestServer(receiver.app())) as http:
            poison = stranger(0, like)
            assert (await post_signed(http, poison))[1]["pending"] == 1
            body = event("message.finalized", late, "late-msg", "delivered")
            assert (await post_signed(http, body))[1]["pending"] == 1
            fails[0] = 1  # the first event's matching, at the next look
            append_late_group(path, like)
            await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert [e["group"] for e in status_lines(path)] == ["late-group"]
    assert receiver.unmatched == 1
    failed = [e for e in logs if e["event"] == "webhook.late_failed"]
    assert [e["id"] for e in failed] == [poison["data"]["id"]]


async def test_the_events_held_are_matched_again_only_once_the_ledger_changed(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events held are not matched again at every look while the ledger stays as it was
    (their requests matched them against it): ten looks match none, and the first look once
    a `sent` line lands matches them again, and records the report whose group it is."""
    receiver, path, client = await receiver_for(jobs)
    like, found, real = client.calls[0], list[str](), receiver._found

    async def counting(late: Any) -> bool | None:
        found.append(late.event_id)
        return await real(late)

    monkeypatch.setattr(receiver, "_found", counting)
    late = Group("late-group", 9, ("+13125550111",), (9,), like.message)
    async with TestClient(TestServer(receiver.app())) as http:
        for n in range(3):
            assert (await post_signed(http, stranger(n, like)))[1]["pending"] == 1
        body = event("message.finalized", late, "late-msg", "delivered")
        assert (await post_signed(http, body))[1]["pending"] == 1
        await asyncio.sleep(2 * LATE_POLL_S)
        matched = len(found)
        await asyncio.sleep(10 * LATE_POLL_S)  # ten looks, on the virtual loop clock
        assert len(found) == matched <= 4
        append_late_group(path, like)
        await asyncio.sleep(2 * LATE_POLL_S)
        assert len(found) > matched
        assert [e["group"] for e in status_lines(path)] == ["late-group"]
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert receiver.unmatched == 3


async def test_a_look_during_a_records_writes_leaves_the_view_to_be_matched_again(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look that comes while a report's writes are under way (a member's report in the
    view, the next not yet) sees a revision the record then leaves behind: the events held
    are matched again against the view the whole record made, not taken as matched."""
    receiver, _, _ = await receiver_for(jobs)
    view = receiver.view
    rec = next(r for r in view.groups.values() if len(r.to) >= 2)
    message_id = view.group_message_id(rec)
    matched = [(rec.id, RecipientStatus(phone, "delivered")) for phone in rec.to]
    during: list[object] = []
    append = receiver.store.append

    async def looked_at(ev: Any) -> None:
        during.append(receiver._views())  # what a look now would take as matched
        await append(ev)

    monkeypatch.setattr(receiver.store, "append", looked_at)
    assert await receiver.record("ev-during", matched, message_id, None) == len(rec.to)
    assert len(during) == len(rec.to)
    assert receiver._views() not in during
    await receiver.close()
    await receiver.store.close()


async def test_each_event_waiting_is_recorded_if_its_sent_line_lands_within_its_window(
    jobs: JobFactory,
) -> None:
    """Three events that beat their groups' `sent` lines, looked for together: those whose
    lines land 10 s and 29 s after them are recorded then, the one whose line lands after
    its 30 s is counted unmatched and never recorded."""
    receiver, path, client = await receiver_for(jobs)
    like = client.calls[0]
    names = ("ten", "twenty-nine", "thirty-one")
    async with TestClient(TestServer(receiver.app())) as http:
        for n, name in enumerate(names):
            late = Group(f"{name}-group", 9 + n, (f"+1312555{n + 111:04d}",), (1,), like.message)
            body = event("message.finalized", late, f"{name}-msg", "delivered")
            assert (await post_signed(http, body))[1]["pending"] == 1
        for n, (name, wait) in enumerate(zip(names, (10, 19, 2), strict=True)):
            await asyncio.sleep(wait)  # on the virtual loop clock: 10 s, 29 s, 31 s
            append_late_group(path, like, name, 9 + n)
            recorded = [e["group"] for e in status_lines(path)]
            await asyncio.sleep(LATE_POLL_S)
            found = [e["group"] for e in status_lines(path)][len(recorded) :]
            assert found == ([] if name == "thirty-one" else [f"{name}-group"])
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert receiver.unmatched == 1


async def test_an_event_past_the_bound_gets_503_and_its_redelivery_is_recorded(
    jobs: JobFactory,
) -> None:
    """With as many events looked for as the bound allows, one more that the ledger does
    not know is not acknowledged (503, so Telnyx delivers it again) and not taken for seen:
    redelivered once its group's `sent` line has landed, it is recorded. Those held are
    counted unmatched after their window, and make room again."""
    receiver, path, client = await receiver_for(jobs)
    receiver.late_max = 2
    like = client.calls[0]
    beat = beating(like)
    async with TestClient(TestServer(receiver.app())) as http:
        for n in range(2):
            assert (await post_signed(http, stranger(n, like)))[1]["pending"] == 1
        assert [(await post_signed(http, beat))[0] for _ in range(2)] == [503, 503]
        assert status_lines(path) == []
        append_late_group(path, like)
        assert await post_signed(http, beat) == (200, {"ok": True, "recorded": 1, "pending": 0})
        await receiver.settle()
        assert receiver.unmatched == 2
        assert (await post_signed(http, stranger(2, like)))[1]["pending"] == 1
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert [(e["group"], e["status"]) for e in status_lines(path)] == [("late-group", "delivered")]
    assert receiver.unmatched == 3


async def test_an_inbound_stop_puts_the_sender_on_the_suppression_list(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A signed message.received saying STOP adds its sender to the suppression list; other
    words do not; a forged one is refused before anything is read."""
    ledger_path, _ = await sent_ledger(jobs, 4)
    listed = Suppressed(tmp_path / "suppressed.txt")
    store = open_store(ledger_path, "append")
    receiver = WebhookReceiver(LedgerView(), store, load_public_key(PUBLIC_B64), suppressed=listed)

    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, inbound("hello")))[1]["suppressed"] is False
        assert (await post_signed(http, inbound(" stop ")))[1]["suppressed"] is True
        forged = await post_signed(http, inbound("STOP"), key=Ed25519PrivateKey.generate())
        assert forged == (401, {})
    await receiver.close()
    await store.close()
    assert Suppressed(tmp_path / "suppressed.txt").numbers() == ["+12125550002"]


async def test_a_stop_from_a_number_no_job_can_text_leaves_the_list_readable(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A STOP from abroad (a UK number: group MMS reaches the US and Canada only) is not
    written to the list, which is read back with the one check of a number (normalize_phone):
    the list stays readable, for the receiver and for every run after it."""
    ledger_path, _ = await sent_ledger(jobs, 4)
    listed = Suppressed(tmp_path / "suppressed.txt")
    store = open_store(ledger_path, "append")
    receiver = WebhookReceiver(LedgerView(), store, load_public_key(PUBLIC_B64), suppressed=listed)
    async with TestClient(TestServer(receiver.app())) as http:
        abroad = await post_signed(http, inbound("STOP", phone="+442079460958"))
        assert abroad[1]["suppressed"] is False
        assert (await post_signed(http, inbound("STOP")))[1]["suppressed"] is True
    await receiver.close()
    await store.close()
    assert Suppressed(tmp_path / "suppressed.txt").numbers() == ["+12125550002"]


@pytest.mark.parametrize("failures", [1, 3])
async def test_a_full_disk_answers_503_and_a_redelivery_is_recorded_once_it_frees(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, failures: int
) -> None:
    """While appending to the ledger fails with ENOSPC each delivery gets 503 (Telnyx
    redelivers) and nothing is recorded; once space is back the same event is recorded in full,
    once, and later events too: the receiver does not stay broken."""
    path, client = await sent_ledger(jobs, 8)
    store = open_store(path, "append")
    receiver = WebhookReceiver(
        store.fold(),
        store,
        load_public_key(PUBLIC_B64),
        reopen=lambda: open_store(path, "append"),
    )
    disk_full_for(monkeypatch, b'"webhook_id"', failures)
    first, second = client.calls[0], client.calls[1]
    async with TestClient(TestServer(receiver.app())) as http:
        delivery = event(
            "message.finalized", first, f"msg-{first.id}-0", "delivered", event_id="e1"
        )
        statuses = []
        for _ in range(failures + 1):
            raw, headers = signed(delivery)
            resp = await http.post("/webhooks", data=raw, headers=headers)
            statuses.append(resp.status)
        assert statuses == [503] * failures + [200]
        assert (await resp.json())["recorded"] == 4
        raw, headers = signed(
            event("message.finalized", second, f"msg-{second.id}-1", "delivered", event_id="e2")
        )
        resp = await http.post("/webhooks", data=raw, headers=headers)
        assert resp.status == 200
        assert (await resp.json())["recorded"] == 4
    await receiver.close()
    await receiver.store.close()
    lines = status_lines(path)
    assert sorted((e["webhook_id"], e["recipient"]) for e in lines) == sorted(
        [("e1", p) for p in first.to] + [("e2", p) for p in second.to]
    )


async def test_a_redelivery_while_the_first_is_writing_waits_for_its_outcome(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Telnyx redelivers an event it got no answer for within 2 s while the first delivery is
    still writing: the redelivery is not answered until the first is done, so when the first's
    write fails (503) the redelivery records every member, none lost behind a 200."""
    path, client = await sent_ledger(jobs, 8)
    store = open_store(path, "append")
    receiver = WebhookReceiver(
        store.fold(), store, load_public_key(PUBLIC_B64), reopen=lambda: open_store(path, "append")
    )
    g = client.calls[0]
    writing, gate = asyncio.Event(), asyncio.Event()
    real_append = store.append

    async def slow_append(ev: Any, **kw: Any) -> None:
        if not writing.is_set():  # the first write is slow; the disk then refuses it
            writing.set()
            await gate.wait()
        await real_append(ev, **kw)

    monkeypatch.setattr(store, "append", slow_append)
    disk_full_for(monkeypatch, g.to[0].encode(), 1)
    delivery = event("message.finalized", g, f"msg-{g.id}-0", "delivered", event_id="e1")
    async with TestClient(TestServer(receiver.app())) as http:
        first = asyncio.create_task(post_signed(http, delivery))
        await writing.wait()
        second = asyncio.create_task(post_signed(http, delivery))
        await asyncio.wait([second], timeout=1)
        assert not second.done()  # held while the first writes
        gate.set()
        answers = [(await first)[0], await second]
    await receiver.close()
    await receiver.store.close()
    assert answers == [503, (200, {"ok": True, "recorded": 4, "pending": 0})]
    assert sorted(e["recipient"] for e in status_lines(path)) == sorted(g.to)


async def test_a_ledger_read_anew_after_a_failed_write_is_read_once_off_the_loop(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """After a write fails, the ledger is opened and read anew in a worker thread, once for
    every delivery that needs it: an inbound STOP is answered meanwhile; the failed delivery
    gets 503, the one that waited is recorded, and the redelivery too."""
    path, client = await sent_ledger(jobs, 8)
    store, gate = open_store(path, "append"), Gate()

    def reopening() -> LedgerStore:
        gate.hold()
        return open_store(path, "append")

    listed = Suppressed(tmp_path / "stops.txt")
    key = load_public_key(PUBLIC_B64)
    receiver = WebhookReceiver(store.fold(), store, key, reopen=reopening, suppressed=listed)
    disk_full_for(monkeypatch, b'"webhook_id"', 1)
    first, second = client.calls[0], client.calls[1]
    failing = event("message.finalized", first, f"msg-{first.id}-0", "delivered", event_id="e1")
    waiting = event("message.finalized", second, f"msg-{second.id}-1", "delivered")
    async with TestClient(TestServer(receiver.app())) as http:
        failed = asyncio.create_task(post_signed(http, failing))
        await gate.begun()  # its write failed: the ledger is being read anew
        waited = asyncio.create_task(post_signed(http, waiting))
        assert (await post_signed(http, inbound("STOP")))[1]["suppressed"] is True
        assert not failed.done()
        assert not waited.done()
        gate.released.set()
        assert (await failed)[0] == 503
        assert (await waited)[1]["recorded"] == 4
        assert (await post_signed(http, failing))[1]["recorded"] == 4
    await receiver.close()
    await receiver.store.close()
    assert gate.on_loop == [False]
    assert sorted(e["recipient"] for e in status_lines(path)) == sorted(first.to + second.to)


async def receiver_for(jobs: JobFactory, **kwargs: Any) -> tuple[WebhookReceiver, Path, FakeClient]:
    """A receiver on a ledger of 8 sent in groups of 4, with a fake clock: its late window
    passes without real waiting."""
    path, client = await sent_ledger(jobs, 8)
    return await receiver_for_ledger(path, **kwargs), path, client


async def receiver_for_ledger(path: Path, **kwargs: Any) -> WebhookReceiver:
    """A receiver on the ledger at ``path``, with a fake clock (:func:`receiver_for`'s)."""
    store = open_store(path, "append")
    receiver = WebhookReceiver(
        LedgerView(), store, load_public_key(PUBLIC_B64), clock=FakeClock(), **kwargs
    )
    await receiver.take_in_new()
    return receiver


async def test_what_was_appended_since_is_taken_in_slice_by_slice_to_the_last_line(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What runs appended since the receiver last read its ledger is taken into its view a
    slice at a time (other requests are answered between slices), to the last line: a report
    of the last of three groups appended meanwhile is recorded at once."""
    receiver, path, client = await receiver_for(jobs)
    monkeypatch.setattr(receiver_module, "APPLY_SLICE", 1)
    run = open_store(path, "append")
    like = client.calls[0]
    for n in range(3):
        late = Group(f"late-{n}", 9 + n, (f"+1312555011{n}",), (9 + n,), like.message)
        run.append_now(Sent(late.id, late.to, late.seq, message_id=f"late-{n}", time="x"))
    run.close_sync()
    async with TestClient(TestServer(receiver.app())) as http:
        answer = await post_signed(http, event("message.finalized", late, "late-2", "delivered"))
    await receiver.close()
    await receiver.store.close()
    assert answer == (200, {"ok": True, "recorded": 1, "pending": 0})
    assert [e["group"] for e in status_lines(path)] == ["late-2"]


async def test_an_event_for_a_message_never_sent_is_counted_not_recorded(
    jobs: JobFactory,
) -> None:
    """An event naming the ledger's own recipients under a message id the ledger never sent
    (another app texting the same numbers) writes nothing and is counted unmatched."""
    receiver, path, client = await receiver_for(jobs)
    g = client.calls[0]
    async with TestClient(TestServer(receiver.app())) as http:
        raw, headers = signed(event("message.finalized", g, "someone-elses-msg", "delivered"))
        resp = await http.post("/hooks", data=raw, headers=headers)
        assert resp.status == 200
        assert (await resp.json())["recorded"] == 0
        await receiver.settle()  # the late window passes on the fake clock
    await receiver.close()
    await receiver.store.close()
    assert receiver.unmatched == 1
    assert status_lines(path) == []


async def test_a_recipients_own_id_matches_that_recipient_only(jobs: JobFactory) -> None:
    """Once track has learnt a recipient's own message id, an event under that id is recorded
    for that recipient alone, even when it lists the others too."""
    receiver, path, client = await receiver_for(jobs)
    g = client.calls[0]
    receiver.view.apply_status(RecipientStatus(g.to[1], "sent", message_id="own-1"), g.id)
    async with TestClient(TestServer(receiver.app())) as http:
        raw, headers = signed(event("message.finalized", g, "own-1", "delivered"))
        resp = await http.post("/hooks", data=raw, headers=headers)
        assert (await resp.json())["recorded"] == 1
    await receiver.close()
    await receiver.store.close()
    assert [(e["recipient"], e["message_id"]) for e in status_lines(path)] == [(g.to[1], "own-1")]
    assert receiver.unmatched == 0


async def test_finalized_records_the_final_cost_and_sent_does_not(jobs: JobFactory) -> None:
    """message.finalized's cost is recorded with the status as the recipient's final cost (an
    exact string amount); message.sent's cost, an estimate, is not."""
    receiver, path, client = await receiver_for(jobs)
    g = client.calls[0]
    one = Group(g.id, g.seq, g.to[:1], g.lines[:1], g.message)

    def priced(kind: str, status: str) -> dict[str, Any]:
        body = event(kind, one, f"msg-{g.id}-0", status)
        body["data"]["payload"]["cost"] = {"amount": "0.0061", "currency": "USD"}
        return body

    async with TestClient(TestServer(receiver.app())) as http:
        for body in (priced("message.sent", "sent"), priced("message.finalized", "delivered")):
            raw, headers = signed(body)
            assert (await http.post("/hooks", data=raw, headers=headers)).status == 200
    await receiver.close()
    await receiver.store.close()
    assert [(e["status"], e.get("cost")) for e in status_lines(path)] == [
        ("sent", None),
        ("delivered", {"amount": "0.0061", "currency": "USD"}),
    ]
    assert load(path).final_cost == {g.to[0]: Money(Decimal("0.0061"), "USD")}


@pytest.mark.parametrize("finalized_first", [False, True])
def test_message_finalized_cost_is_final_over_a_gets(finalized_first: bool) -> None:
    """A final status with a cost from track's GET, and message.finalized's for the same
    recipient: the finalized cost is the final one, whichever came first."""
    phone = "+12125550001"
    got = Status("g1", phone, "delivered", cost=Money(Decimal("0.0051"), "USD"), source="track")
    fin = Status(
        "g1", phone, "delivered", cost=Money(Decimal("0.0061"), "USD"), source="webhook",
        webhook_id="e1",
    )  # fmt: skip
    view = LedgerView()
    for ev in (fin, got) if finalized_first else (got, fin):
        view.apply(ev)
    assert view.final_cost == {phone: Money(Decimal("0.0061"), "USD")}


def inbound(
    text: str, phone: str = "+12125550002", at: str | None = None, event_id: str | None = None
) -> dict[str, Any]:
    """A message.received webhook: ``phone`` texted ``text`` (``at``: its ``occurred_at``)."""
    data: dict[str, Any] = {
        "event_type": "message.received",
        "id": event_id or str(uuid.uuid4()),
        "payload": {"text": text, "from": {"phone_number": phone}},
    }
    if at is not None:
        data["occurred_at"] = at
    return {"data": data}


async def test_a_stop_the_list_could_not_take_is_taken_when_redelivered(
    jobs: JobFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A STOP whose suppression-list write fails gets 503 and one log line naming the setting,
    no traceback; Telnyx redelivers it, and the redelivery is taken in (not dropped as seen)."""
    listed = Suppressed(tmp_path / "suppressed.txt")
    receiver, _, _ = await receiver_for(jobs, suppressed=listed)
    add = listed.add
    calls = iter(range(10))

    def flaky(phones: Any, reason: str, now: float | None = None) -> list[str]:
        if next(calls) == 0:
            raise ConfigError("suppression.file", "cannot write: disk full")
        return add(phones, reason, now)

    monkeypatch.setattr(listed, "add", flaky)
    stop = inbound("STOP", at="2026-11-23T10:00:00Z", event_id="e1")
    with caplog.at_level(logging.DEBUG), capture_logs() as logs:
        async with TestClient(TestServer(receiver.app())) as http:
            assert (await post_signed(http, stop))[0] == 503
            assert (await post_signed(http, stop))[0] == 200
    await receiver.close()
    await receiver.store.close()
    assert listed.numbers() == ["+12125550002"]
    failed = [e for e in logs if e["event"] == "webhook.write_failed"]
    assert [e["error"] for e in failed] == ["suppression.file: cannot write: disk full"]
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


async def test_a_stop_whose_list_cannot_be_locked_gets_503_and_is_taken_when_redelivered(
    jobs: JobFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A STOP whose suppression list's lock cannot be taken (a share whose lock service is
    down: ENOLCK) gets 503 and one line naming the setting, never a 500 with a traceback;
    its redelivery once the lock can be taken puts the number on the list once."""
    listed = Suppressed(tmp_path / "suppressed.txt")
    receiver, _, _ = await receiver_for(jobs, suppressed=listed)
    flock, left = fcntl.flock, [1]

    def no_locks(fd: int, operation: int) -> None:
        if left[0]:
            left[0] -= 1
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        flock(fd, operation)

    monkeypatch.setattr("bulk_mms.suppression.fcntl.flock", no_locks)
    stop = inbound("STOP", at="2026-11-23T10:00:00Z", event_id="e1")
    with caplog.at_level(logging.DEBUG), capture_logs() as logs:
        async with TestClient(TestServer(receiver.app())) as http:
            assert (await post_signed(http, stop))[0] == 503
            assert (await post_signed(http, stop))[1]["suppressed"] is True
            assert (await post_signed(http, stop))[1]["suppressed"] is False
    await receiver.close()
    await receiver.store.close()
    assert listed.numbers() == ["+12125550002"]
    assert (tmp_path / "suppressed.txt").read_text().count("+12125550002") == 1
    failed = [e["error"] for e in logs if e["event"] == "webhook.write_failed"]
    assert len(failed) == 1
    assert failed[0].startswith("suppression.file: cannot lock")
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


async def test_a_stop_redelivered_after_a_start_does_not_undo_it(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """STOP at 10:00, START at 10:05, then the STOP's event again (Telnyx redelivers): the
    number ends off the list, as its latest keyword says; a STOP texted later still counts."""
    listed = Suppressed(tmp_path / "suppressed.txt")
    receiver, _, _ = await receiver_for(jobs, suppressed=listed)
    stop = inbound("STOP", at="2026-11-23T10:00:00Z", event_id="e1")
    start = inbound("START", at="2026-11-23T10:05:00Z")
    later = inbound("stop", at="2026-11-23T10:09:00Z")
    async with TestClient(TestServer(receiver.app())) as http:
        taken = {"ok": True, "suppressed": True, "lifted": False}
        assert await post_signed(http, stop) == (200, taken)
        assert await post_signed(http, start) == (
            200,
            {**taken, "suppressed": False, "lifted": True},
        )
        assert await post_signed(http, stop) == (200, {**taken, "suppressed": False})
        assert listed.numbers() == []
        assert await post_signed(http, later) == (200, taken)
    await receiver.close()
    await receiver.store.close()
    assert listed.numbers() == ["+12125550002"]


async def test_a_start_stamped_far_ahead_never_makes_a_later_stop_stale(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """STOP, then a START whose occurred_at is in the year 9999, then a STOP texted now: the
    START's time is no time (the status stamps' rule), so it is not recorded as the latest
    keyword, and the later STOP puts the number back on the list."""
    listed = Suppressed(tmp_path / "suppressed.txt")
    receiver, _, _ = await receiver_for(jobs, suppressed=listed)
    async with TestClient(TestServer(receiver.app())) as http:
        await post_signed(http, inbound("STOP", at="2026-11-23T10:00:00Z"))
        await post_signed(http, inbound("START", at="9999-12-31T23:59:59Z"))
        assert listed.numbers() == []
        await post_signed(http, inbound("STOP", at="2026-11-23T10:09:00Z"))
    await receiver.close()
    await receiver.store.close()
    assert listed.numbers() == ["+12125550002"]


async def test_start_lifts_a_stop_suppression_but_never_one_added_by_hand(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A verified " Start " (case and surrounding spaces aside) takes a STOP-added number off
    the list; UNSTOP does too; a number suppressed by hand stays; a forged START lifts nothing."""
    listed = Suppressed(tmp_path / "suppressed.txt")
    listed.add(["+12125550009"], "added by hand")
    receiver, _, _ = await receiver_for(jobs, suppressed=listed)
    async with TestClient(TestServer(receiver.app())) as http:

        async def post(body: dict[str, Any]) -> dict[str, Any]:
            return (await post_signed(http, body))[1]

        assert (await post(inbound("STOP")))["suppressed"] is True
        forged = await post_signed(http, inbound("START"), key=Ed25519PrivateKey.generate())
        assert forged == (401, {})
        assert listed.numbers() == ["+12125550002", "+12125550009"]
        assert (await post(inbound(" Start ")))["lifted"] is True
        assert (await post(inbound("stop", "+12125550003")))["suppressed"] is True
        assert (await post(inbound(" unstop ", "+12125550003")))["lifted"] is True
        assert (await post(inbound("START", "+12125550009")))["lifted"] is False
    await receiver.close()
    await receiver.store.close()
    assert Suppressed(tmp_path / "suppressed.txt").numbers() == ["+12125550009"]


def own_event(
    kind: str,
    phone: str,
    message_id: str,
    status: str,
    sender: object,
    *,
    later: float = 0.0,
    code: str | None = None,
) -> dict[str, Any]:
    """A webhook about one recipient of a group MMS, under that recipient's own message id
    (as Telnyx sends them, one per recipient): from ``sender`` (an address object, or the
    bare number some of Telnyx's pages show), ``later`` seconds after now."""
    errors = [{"code": code, "title": "Blocked as spam - temporary"}] if code else []
    return {
        "data": {
            "event_type": kind,
            "id": str(uuid.uuid4()),
            "occurred_at": iso(time.time() + later),
            "record_type": "event",
            "payload": {
                "id": message_id,
                "direction": "outbound",
                "from": sender,
                "to": [{"phone_number": phone, "status": status}],
                "errors": errors,
            },
        },
        "meta": {"attempt": 1, "delivered_to": "https://example.com/hooks"},
    }


async def test_another_message_to_a_recipient_whose_own_id_is_known_is_not_learnt(
    jobs: JobFactory,
) -> None:
    """Once a recipient's own id is learnt, an event under another id for the same number
    from the same sender (another job's message, an hour later) is not taken for it: the
    recipient stays delivered under its own id, and the event is counted unmatched."""
    receiver, path, client = await receiver_for(jobs)
    g = client.calls[0]
    phone, sender = g.to[0], {"phone_number": g.message.from_}
    async with TestClient(TestServer(receiver.app())) as http:
        ours = own_event("message.finalized", phone, "own-a", "delivered", sender, later=5)
        assert (await post_signed(http, ours))[1]["recorded"] == 1
        theirs = own_event(
            "message.finalized", phone, "own-b", "delivery_failed", sender, later=3600,
            code="40002",
        )  # fmt: skip
        assert (await post_signed(http, theirs))[1]["recorded"] == 0
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert [(e["status"], e["message_id"]) for e in status_lines(path)] == [("delivered", "own-a")]
    assert load(path).known[phone].status == "delivered"
    assert receiver.unmatched == 1


async def test_a_sender_given_as_a_bare_number_is_read_as_its_address(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """``from`` as a bare number (Telnyx's group messaging page shows it so) is read as the
    address object's phone_number: a recipient's own id is learnt from such an event, and an
    inbound STOP from such a sender is suppressed."""
    listed = Suppressed(tmp_path / "suppressed.txt")
    receiver, path, client = await receiver_for(jobs, suppressed=listed)
    g = client.calls[0]
    stop = inbound("STOP")
    stop["data"]["payload"]["from"] = "+12125550002"
    async with TestClient(TestServer(receiver.app())) as http:
        hook = own_event("message.sent", g.to[0], "own-a", "sent", g.message.from_, later=5)
        assert (await post_signed(http, hook))[1]["recorded"] == 1
        assert (await post_signed(http, stop))[1]["suppressed"] is True
    await receiver.close()
    await receiver.store.close()
    assert [(e["recipient"], e["message_id"]) for e in status_lines(path)] == [(g.to[0], "own-a")]
    assert listed.numbers() == ["+12125550002"]


@pytest.mark.parametrize("event_id", [None, 42, "", "x" * 200])
async def test_an_event_whose_id_is_not_an_id_is_malformed(
    hooks: tuple[TestClient[Any, Any], Path, FakeClient], event_id: object
) -> None:
    """A signed event whose id is missing, not a string, empty or longer than an id is a bad
    request (400): nothing of it reaches the ledger, and it is not taken for another."""
    http, path, client = hooks
    body = event("message.finalized", client.calls[0], f"msg-{client.calls[0].id}-0", "sent")
    body["data"]["id"] = event_id
    assert (await post_signed(http, body))[0] == 400
    assert status_lines(path) == []


@pytest.mark.parametrize("event_type", [b"[" * 1000 + b"]" * 1000, b"12345", b'{"a": 1}'])
async def test_an_event_whose_type_is_not_a_word_is_malformed(
    hooks: tuple[TestClient[Any, Any], Path, FakeClient], event_type: bytes
) -> None:
    """A signed event whose ``event_type`` is not a string (a number, an object, lists nested
    a thousand deep) is a bad request (400), never a 500 with a traceback; nothing of it
    reaches the ledger."""
    http, path, client = hooks
    body = event("message.finalized", client.calls[0], f"msg-{client.calls[0].id}-0", "sent")
    raw = orjson.dumps(body).replace(b'"message.finalized"', event_type)
    stamp = str(int(time.time()))
    sig = base64.b64encode(SIGNER.sign(stamp.encode() + b"|" + raw)).decode()
    headers = {"telnyx-signature-ed25519": sig, "telnyx-timestamp": stamp}
    with capture_logs() as logs:
        resp = await http.post("/h", data=raw, headers=headers)
    assert resp.status == 400
    assert [e["event"] for e in logs] == ["webhook.malformed"]
    assert status_lines(path) == []


async def test_members_under_cc_are_read_from_the_groups_own_message_only(
    jobs: JobFactory,
) -> None:
    """An event about the group's own message that lists members past the first under cc,
    with statuses (the spec allows it), records each of them; an event under a recipient's
    own id records that recipient only, whatever its cc says of the others."""
    receiver, path, client = await receiver_for(jobs)
    g, h = client.calls[0], client.calls[1]
    sender = {"phone_number": g.message.from_}
    whole = own_event("message.finalized", g.to[0], f"msg-{g.id}-0", "delivered", sender)
    whole["data"]["payload"]["cc"] = [{"phone_number": p, "status": "delivered"} for p in g.to[1:]]
    one = own_event("message.finalized", h.to[0], "own-h0", "delivered", sender, later=1)
    one["data"]["payload"]["cc"] = [{"phone_number": p, "status": "delivered"} for p in h.to[1:]]
    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, whole))[1]["recorded"] == len(g.to)
        assert (await post_signed(http, one))[1]["recorded"] == 1
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert {e["recipient"]: e["status"] for e in status_lines(path)} == dict.fromkeys(
        [*g.to, h.to[0]], "delivered"
    )


async def test_a_held_event_keeps_its_reports_not_its_body_and_its_cc_once_its_group_lands(
    jobs: JobFactory,
) -> None:
    """An event of a group's own message that beats the group's `sent` line is held as its
    reports alone, nothing of its body (its text), those it lists under cc read too: once
    the line lands, every member it lists is recorded."""
    receiver, path, client = await receiver_for(jobs)
    to = ("+13125550111", "+13125550112", "+13125550113")
    first = Group("late-group", 9, to[:1], (9,), client.calls[0].message)
    body = event("message.finalized", first, "late-msg", "delivered")
    body["data"]["payload"]["cc"] = [{"phone_number": p, "status": "delivered"} for p in to[1:]]
    body["data"]["payload"]["text"] = text = "a long message " * 100
    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, body))[1]["pending"] == 1
        (held,) = receiver._late.values()
        assert text not in repr(held)
        run = open_store(path, "append")
        run.append_now(Sent(first.id, to, first.seq, message_id="late-msg", time="x"))
        run.close_sync()
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert sorted(e["recipient"] for e in status_lines(path)) == sorted(to)


@pytest.mark.parametrize(
    ("text", "suppressed"),
    [
        ("STOP", True),
        ("stopall", True),
        (" Stop  All ", True),
        ("UNSUBSCRIBE", True),
        ("cancel", True),
        ("End", True),
        ("quit\n", True),
        ("OPTOUT", False),
        ("S T O P", False),
        ("stop please", False),
        ("please stop all messages", False),
        ("HELP", False),
        ("STOP" * 100, False),
    ],
)
async def test_the_opt_out_keywords_are_exactly_telnyxs(
    jobs: JobFactory, tmp_path: Path, text: str, suppressed: bool
) -> None:
    """An inbound text suppresses its sender exactly when Telnyx makes a block rule for it:
    the whole message one of STOP, STOPALL, STOP ALL, UNSUBSCRIBE, CANCEL, END, QUIT, case and
    surrounding spaces aside; OPTOUT, a spelt-out word, a keyword among other words and HELP
    leave the number textable, as Telnyx does."""
    listed = Suppressed(tmp_path / "suppressed.txt")
    receiver, _, _ = await receiver_for(jobs, suppressed=listed)
    async with TestClient(TestServer(receiver.app())) as http:
        answer = (await post_signed(http, inbound(text)))[1]
    await receiver.close()
    await receiver.store.close()
    assert (answer["suppressed"], answer["lifted"]) == (suppressed, False)
    assert listed.numbers() == (["+12125550002"] if suppressed else [])


@pytest.mark.parametrize(
    ("text", "lifted"),
    [("START", True), ("Unstop", True), ("HELP", False), ("un stop", False), ("start now", False)],
)
async def test_only_start_and_unstop_lift_a_stop(
    jobs: JobFactory, tmp_path: Path, text: str, lifted: bool
) -> None:
    """START and UNSTOP (case and surrounding spaces aside) lift a STOP's suppression, as
    Telnyx lifts its block; HELP, a split word or a keyword among other words do not."""
    listed = Suppressed(tmp_path / "suppressed.txt")
    receiver, _, _ = await receiver_for(jobs, suppressed=listed)
    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, inbound("STOP", at="2026-11-23T10:00:00Z")))[0] == 200
        answer = (await post_signed(http, inbound(text, at="2026-11-23T10:05:00Z")))[1]
    await receiver.close()
    await receiver.store.close()
    assert answer["lifted"] is lifted
    assert listed.numbers() == ([] if lifted else ["+12125550002"])


async def test_a_profiles_own_keywords_opt_out_and_back_in(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """Keywords the settings add (a messaging profile's own auto-responses) suppress and lift
    as Telnyx's do, each read as a keyword is (case and spaces aside); among other words, or
    on a receiver without them, they change nothing."""
    listed = Suppressed(tmp_path / "suppressed.txt")
    receiver, _, _ = await receiver_for(
        jobs,
        suppressed=listed,
        settings=Settings(
            opt_out_words=OPT_OUT_WORDS | {"ARRET"}, opt_in_words=OPT_IN_WORDS | {"ALTA"}
        ),
    )
    async with TestClient(TestServer(receiver.app())) as http:
        texts = [
            ("arret ya", "2026-11-23T10:00:00Z"),
            (" Arret ", "2026-11-23T10:01:00Z"),
            ("alta", "2026-11-23T10:02:00Z"),
        ]
        answers = [(await post_signed(http, inbound(t, at=at)))[1] for t, at in texts]
    await receiver.close()
    await receiver.store.close()
    assert [(a["suppressed"], a["lifted"]) for a in answers] == [
        (False, False),
        (True, False),
        (False, True),
    ]
    assert listed.numbers() == []
    plain = Suppressed(tmp_path / "plain.txt")
    receiver, _, _ = await receiver_for(jobs, suppressed=plain)
    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, inbound("ARRET")))[1]["suppressed"] is False
    await receiver.close()
    await receiver.store.close()


async def keywords_through(
    jobs: JobFactory, listed: Path | str, *bodies: dict[str, Any]
) -> list[tuple[bool, bool]]:
    """``bodies`` posted, in turn, to a receiver started afresh on the list ``listed`` (a
    file, or a database's table) (a restarted ``bulk-mms webhooks``): each answer's
    (suppressed, lifted)."""
    table = isinstance(listed, str)
    suppressed = suppression_for(None, listed) if table else Suppressed(Path(listed))
    receiver, _, _ = await receiver_for(jobs, suppressed=suppressed)
    async with TestClient(TestServer(receiver.app())) as http:
        answers = [(await post_signed(http, body))[1] for body in bodies]
    await receiver.close()
    await receiver.store.close()
    return [(a["suppressed"], a["lifted"]) for a in answers]


async def test_a_restarted_receiver_ignores_a_start_texted_before_the_stop(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """STOP texted at 10:05 taken in; after a restart its redeliveries write nothing, a
    START texted at 10:00 and delivered late lifts nothing (the STOP's time is on the list),
    and one texted at 10:10 lifts it."""
    path = tmp_path / "suppressed.txt"
    stop = inbound("STOP", at="2026-11-23T10:05:00.123456+00:00")
    assert await keywords_through(jobs, path, stop) == [(True, False)]
    written = path.read_text(encoding="utf-8")
    assert await keywords_through(jobs, path, stop, stop) == [(False, False)] * 2
    assert path.read_text(encoding="utf-8") == written  # a redelivery writes nothing
    early = inbound("START", at="2026-11-23T10:00:00Z")
    assert await keywords_through(jobs, path, early) == [(False, False)]
    assert Suppressed(path).numbers() == ["+12125550002"]
    later = inbound("START", at="2026-11-23T10:10:00Z")
    assert await keywords_through(jobs, path, later) == [(False, True)]
    assert Suppressed(path).numbers() == []


@pytest.mark.parametrize("stopped_first", [True, False])
@pytest.mark.parametrize("kind", ["file", "table"])
async def test_a_restarted_receiver_ignores_a_stop_texted_before_the_start(
    jobs: JobFactory, tmp_path: Path, stopped_first: bool, kind: str, request: pytest.FixtureRequest
) -> None:
    """STOP at 10:00 then START at 10:05 (or the START alone, the STOP's event not delivered
    yet); after a restart, the STOP's late delivery suppresses nobody, and after another a
    STOP texted at 10:09 suppresses again: with a list file, and with a database's table."""
    path: Path | str = tmp_path / "suppressed.txt"
    if kind == "table":
        path = f"{request.getfixturevalue('database')}?ledger=keywords"

    def numbers() -> list[str]:
        return (
            suppression_for(None, path) if isinstance(path, str) else Suppressed(path)
        ).numbers()

    stop = inbound("STOP", at="2026-11-23T10:00:00Z")
    start = inbound("START", at="2026-11-23T10:05:00Z")
    first = await keywords_through(jobs, path, *([stop, start] if stopped_first else [start]))
    assert first[-1] == (False, stopped_first)
    assert await keywords_through(jobs, path, stop) == [(False, False)]
    assert numbers() == []
    later = inbound("stop", at="2026-11-23T10:09:00Z")
    assert await keywords_through(jobs, path, later) == [(True, False)]
    assert numbers() == ["+12125550002"]


async def test_a_restarted_receiver_on_the_table_ignores_a_start_texted_before_the_stop(
    jobs: JobFactory, database: str
) -> None:
    """With the database's suppression table, a STOP's time is in its row's reason: after a
    restart a START texted before it lifts nothing, and one texted after it lifts it."""
    where = f"{database}?ledger=keywords"
    stop = inbound("STOP", at="2026-11-23T10:05:00Z")
    assert await keywords_through(jobs, where, stop) == [(True, False)]
    early, later = (inbound("START", at=f"2026-11-23T10:{m}:00Z") for m in ("00", "10"))
    assert await keywords_through(jobs, where, early, later) == [(False, False), (False, True)]
    assert suppression_for(None, where).numbers() == []


@pytest.mark.parametrize("kind", ["file", "table"])
async def test_a_stop_taken_off_by_hand_still_orders_a_start_texted_before_it(
    jobs: JobFactory, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """A STOP texted at 10:05, taken off the list by hand (``suppress remove``), keeps its
    time: the number put back by a 40300 (no time in that reason) is not lifted by a START
    texted at 10:00 and delivered late, and is by one texted at 10:10."""
    where: Path | str = tmp_path / "suppressed.txt"
    if kind == "table":
        where = f"{request.getfixturevalue('database')}?ledger=keywords"

    def listed() -> Suppressed:
        return suppression_for(None, where) if isinstance(where, str) else Suppressed(where)

    phone = "+12125550002"
    assert await keywords_through(jobs, where, inbound("STOP", at="2026-11-23T10:05:00Z")) == [
        (True, False)
    ]
    assert listed().remove([phone]) == [phone]
    assert listed().keyword_at(phone) == instant("2026-11-23T10:05:00Z")
    assert listed().add([phone], opted_out("40300")) == [phone]
    early, later = (inbound("START", at=f"2026-11-23T10:{m}:00Z") for m in ("00", "10"))
    assert await keywords_through(jobs, where, early) == [(False, False)]
    assert listed().numbers() == [phone]
    assert await keywords_through(jobs, where, later) == [(False, True)]
    assert listed().numbers() == []


#: Posts a body to one of two receivers (0 or 1): its answer's (suppressed, lifted).
Poster = Callable[[int, dict[str, Any]], Awaitable[tuple[bool, bool]]]


@contextlib.asynccontextmanager
async def two_receivers(
    jobs: JobFactory, tmp_path: Path, listed: Callable[[], Suppressed]
) -> AsyncIterator[Poster]:
    """Two receivers on one suppression list (behind a load balancer), each on a list of its
    own opening (``listed``), both started before any keyword: a poster to either; both
    closed after."""
    one, _, _ = await receiver_for(jobs, suppressed=listed())
    second = JobFactory(tmp_path / "second")
    second.root.mkdir()
    two, _, _ = await receiver_for(second, suppressed=listed())
    async with (
        TestClient(TestServer(one.app())) as a,
        TestClient(TestServer(two.app())) as b,
    ):

        async def post(which: int, body: dict[str, Any]) -> tuple[bool, bool]:
            answer = (await post_signed((a, b)[which], body))[1]
            return answer["suppressed"], answer["lifted"]

        yield post
    for receiver in (one, two):
        await receiver.close()
        await receiver.store.close()


async def test_two_receivers_on_one_list_keep_the_order_the_recipient_texted(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """Two receivers started on one list file (behind a load balancer): a STOP taken by one
    is lifted by a later START the other takes; the STOP redelivered to the first (which
    took it) then changes nothing; a STOP redelivered after a START taken by the other is
    stale there too."""
    path = tmp_path / "suppressed.txt"
    stop = inbound("STOP", at="2026-11-23T10:00:00Z")
    start = inbound("START", at="2026-11-23T10:05:00Z")
    other_start = inbound("START", "+12125550003", at="2026-11-23T10:05:00Z")
    other_stop = inbound("STOP", "+12125550003", at="2026-11-23T10:00:00Z")
    async with two_receivers(jobs, tmp_path, lambda: Suppressed(path)) as post:
        assert await post(0, stop) == (True, False)
        assert await post(1, start) == (False, True)
        assert await post(0, stop) == (False, False)
        assert await post(1, other_start) == (False, False)
        assert await post(0, other_stop) == (False, False)
    assert Suppressed(path).numbers() == []


async def test_two_receivers_on_the_table_judge_by_the_table_not_their_start(
    jobs: JobFactory, database: str, tmp_path: Path
) -> None:
    """Two receivers on one database's suppression table, both started before any keyword: a
    START taken by the second lifts the STOP the first took, and the STOP the recipient
    texts after it, taken by the first again, puts the number back on the table (neither
    judges by the numbers it read as it started)."""
    where = f"{database}?ledger=shared-list"
    stop = inbound("STOP", at="2026-11-23T10:00:00Z")
    start = inbound("START", at="2026-11-23T10:05:00Z")
    again = inbound("STOP", at="2026-11-23T10:09:00Z")
    async with two_receivers(jobs, tmp_path, lambda: suppression_for(None, where)) as post:
        taken = [await post(0, stop), await post(1, start), await post(0, again)]
    assert taken == [(True, False), (False, True), (True, False)]
    assert suppression_for(None, where).numbers() == ["+12125550002"]


async def test_an_old_list_without_times_still_works(
    jobs: JobFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A list written before keyword times were kept: a START lifts its STOP's line (the
    order is unknown, as before) but not a line added by hand; from then on its time counts,
    so the STOP's late delivery is stale; the START's record is no number to `suppress list`
    or to validation."""
    path = tmp_path / "suppressed.txt"
    path.write_text(
        "# kept by hand\n"
        "+12125550002  # texted STOP (webhook) 2026-11-20\n"
        "+12125550009  # added by hand 2026-11-20\n",
        encoding="utf-8",
    )
    start = inbound("START", at="2026-11-23T10:05:00Z")
    stop = inbound("STOP", at="2026-11-23T10:00:00Z")
    kept = inbound("START", "+12125550009", at="2026-11-23T10:05:00Z")
    answers = await keywords_through(jobs, path, start, kept)
    assert answers == [(False, True), (False, False)]
    assert await keywords_through(jobs, path, stop) == [(False, False)]
    listed = Suppressed(path)
    assert listed.numbers() == ["+12125550009"]
    assert "+12125550002" not in listed
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    capsys.readouterr()
    assert main(["-q", "suppress", "list", "--config", str(config)]) == 0
    assert capsys.readouterr().out.split() == ["+12125550009"]
    assert path.read_text(encoding="utf-8").count("# +12125550002  texted START (webhook) at") == 1


@pytest.mark.parametrize("message_id", ["own\x1b[2J\nid", "o" * 129, "own id", ""])
async def test_an_event_whose_message_id_is_not_an_id_is_learnt_for_nobody(
    jobs: JobFactory, message_id: str
) -> None:
    """An event about one recipient under a message id that is not an id (an escape sequence
    and a line end, one character past an id's length, a space, nothing) is never learnt as
    that recipient's own id: nothing reaches the ledger, and it is counted unmatched."""
    receiver, path, client = await receiver_for(jobs)
    g = client.calls[0]
    sender = {"phone_number": g.message.from_}
    async with TestClient(TestServer(receiver.app())) as http:
        hook = own_event("message.sent", g.to[0], message_id, "sent", sender, later=5)
        status, answer = await post_signed(http, hook)
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert (status, answer["recorded"]) == (200, 0)
    assert status_lines(path) == []
    assert receiver.unmatched == 1


@pytest.mark.parametrize("event_type", ["message.finalized", "message.sent", "other.event"])
async def test_an_event_without_a_payload_is_acknowledged_and_writes_nothing(
    hooks: tuple[TestClient[Any, Any], Path, FakeClient], event_type: str
) -> None:
    """The spec requires no field of an event (``payload`` included): a signed event without
    one is acknowledged (200, so Telnyx does not redeliver it) and writes nothing."""
    http, path, client = hooks
    body = event(event_type, client.calls[0], f"msg-{client.calls[0].id}-0", "sent")
    del body["data"]["payload"]
    status, answer = await post_signed(http, body)
    assert (status, answer.get("ok"), answer.get("recorded", 0)) == (200, True, 0)
    assert status_lines(path) == []


def unsigned_event(
    phone: str, message_id: str, status: str = "delivered", **said: Any
) -> dict[str, Any]:
    """A webhook about one recipient of a group MMS under its own id, naming no sender (the
    spec requires no field), with ``said`` in its payload (``cc``, ``group_message_id``)."""
    hook = own_event("message.finalized", phone, message_id, status, None, later=5)
    del hook["data"]["payload"]["from"]
    hook["data"]["payload"].update(said)
    return hook


def others(group: Group, phone: str) -> list[dict[str, str]]:
    """``group``'s members but ``phone``, as a recipient's own message lists them in ``cc``."""
    return [{"phone_number": p} for p in group.to if p != phone]


async def test_an_event_naming_no_sender_is_learnt_by_its_group_or_its_participants(
    jobs: JobFactory,
) -> None:
    """An event under a recipient's own id not learnt yet that names no sender is recorded,
    and its id learnt, when it names the group's message (group_message_id) or lists the
    group's members exactly (to and cc); a later event under that id needs neither."""
    receiver, path, client = await receiver_for(jobs)
    g, h = client.calls[0], client.calls[1]
    group_id = receiver.view.group_message_id(receiver.view.groups[g.id])
    async with TestClient(TestServer(receiver.app())) as http:
        by_group = unsigned_event(g.to[0], "own-a", group_message_id=group_id)
        assert (await post_signed(http, by_group))[1]["recorded"] == 1
        by_cc = unsigned_event(h.to[1], "own-b", "delivery_unconfirmed", cc=others(h, h.to[1]))
        assert (await post_signed(http, by_cc))[1]["recorded"] == 1
        again = unsigned_event(h.to[1], "own-b")
        again["data"]["occurred_at"] = iso(time.time() + 60)
        assert (await post_signed(http, again))[1]["recorded"] == 1
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert [(e["recipient"], e["status"], e["message_id"]) for e in status_lines(path)] == [
        (g.to[0], "delivered", "own-a"),
        (h.to[1], "delivery_unconfirmed", "own-b"),
        (h.to[1], "delivered", "own-b"),
    ]
    assert receiver.unmatched == 0


async def test_another_apps_message_naming_no_sender_to_a_recipient_is_not_learnt(
    jobs: JobFactory,
) -> None:
    """Events naming no sender for another app's messages to a recipient of the ledger are
    acknowledged and counted unmatched, nothing recorded: one that lists no cc, one to that
    number alone, one to other participants, one naming another group message (though its
    participants are the group's), one from another sender (though they are too)."""
    receiver, path, client = await receiver_for(jobs)
    g = client.calls[0]
    phone = g.to[0]
    theirs = [
        unsigned_event(phone, "other-1"),
        unsigned_event(phone, "other-2", cc=[]),
        unsigned_event(phone, "other-3", cc=[{"phone_number": "+13125550199"}]),
        unsigned_event(phone, "other-4", cc=others(g, phone), group_message_id=str(uuid.uuid4())),
        own_event("message.finalized", phone, "other-5", "delivered", "+13125550100", later=5),
    ]
    theirs[-1]["data"]["payload"]["cc"] = others(g, phone)
    async with TestClient(TestServer(receiver.app())) as http:
        for hook in theirs:
            status, answer = await post_signed(http, hook)
            assert (status, answer["recorded"]) == (200, 0)
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert status_lines(path) == []
    assert receiver.unmatched == len(theirs)


async def test_an_event_under_a_known_id_naming_another_group_message_is_not_recorded(
    jobs: JobFactory,
) -> None:
    """Events under a recipient's own id the ledger learnt, or under its group's own id,
    that name another group of the ledger are acknowledged and counted unmatched, nothing
    recorded; one naming its own group message is recorded."""
    receiver, path, client = await receiver_for(jobs)
    g, h = client.calls[0], client.calls[1]
    view = receiver.view
    gid, hid = (view.group_message_id(view.groups[x.id]) for x in (g, h))
    phone = g.to[0]
    theirs = [
        unsigned_event(phone, "own-a", "delivery_failed", group_message_id=hid),
        unsigned_event(g.to[1], str(gid), "delivery_failed", group_message_id=hid),
    ]
    async with TestClient(TestServer(receiver.app())) as http:
        learnt = unsigned_event(phone, "own-a", "sent", group_message_id=gid)
        assert (await post_signed(http, learnt))[1]["recorded"] == 1
        for hook in theirs:
            status, answer = await post_signed(http, hook)
            assert (status, answer["recorded"]) == (200, 0)
        ours = unsigned_event(phone, "own-a", "delivered", group_message_id=gid)
        assert (await post_signed(http, ours))[1]["recorded"] == 1
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert [(e["recipient"], e["status"]) for e in status_lines(path)] == [
        (phone, "sent"),
        (phone, "delivered"),
    ]
    assert receiver.unmatched == len(theirs)


def test_which_group_message_is_another_than_a_group_s() -> None:
    """A report naming no group message, its group's id, or an id the ledger does not know
    (the spec declares no such field) may be the group's; one naming another group of the
    ledger is not, whether the group has a group id on record or not (settled by records
    that name none)."""
    view = LedgerView()
    view.apply(Sent("a", ("+13125550101", "+13125550102"), 0, message_id="ra1", time="x"))
    for phone, rid in (("+13125550101", "ra1"), ("+13125550102", "ra2")):
        view.apply(Status("a", phone, "queued", message_id=rid, source="records", time="x"))
    view.apply(Sent("b", ("+13125550103",), 1, message_id="gb", time="x"))
    a, b = view.groups["a"], view.groups["b"]
    assert (view.group_message_id(a), view.group_message_id(b)) == (None, "gb")
    assert not view.names_another(b, None)
    assert not view.names_another(b, "gb")
    assert view.names_another(b, "ra1")
    assert not view.names_another(b, "never-sent")
    assert not view.names_another(a, None)
    assert not view.names_another(a, "ra2")
    assert not view.names_another(a, "the-api-s-own-name")
    assert view.names_another(a, "gb")


def test_what_ties_an_event_naming_no_sender_to_a_group() -> None:
    """An event naming no sender is tied to a group by the group message it names, else by
    its participants being the group's members exactly (the sender, if listed, aside), never
    for a group of one (its participants are any message's to that number); a group message
    or a sender it names that is not the group's unties it whatever its participants."""
    pair = GroupRecord("g", ("+13125550101", "+13125550102"), sender="+13125550100")
    alone = GroupRecord("h", ("+13125550103",), sender="+13125550100")
    everyone = frozenset(pair.to)
    assert Origin(group_id="gid").ties(alone, "gid")
    assert Origin(participants=everyone).ties(pair, "gid")
    assert Origin(participants=everyone | {"+13125550100"}).ties(pair, "gid")
    assert not Origin(participants=frozenset(alone.to)).ties(alone, "hid")
    assert not Origin(participants=frozenset(pair.to[:1])).ties(pair, "gid")
    assert not Origin(group_id="other", participants=everyone).ties(pair, "gid")
    assert not Origin(sent_from="+13125550199", participants=everyone).ties(pair, "gid")
    assert Origin(group_id="gid", sent_from=pair.sender).ties(pair, "gid")
