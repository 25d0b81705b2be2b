"""The ledger: typed events, the JSONL store (durable appends, torn tails, corruption, the lock),
the one fold and its states, header checks."""

from __future__ import annotations

import asyncio
import os
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace

from bulk_mms.errors import ApiError, LedgerCorrupt, LedgerError, LedgerLocked
from bulk_mms.ledger import events as ev
from bulk_mms.ledger import jsonl, load, open_store, to_json
from bulk_mms.ledger.commit import GroupCommit
from bulk_mms.ledger.events import decode, encode
from bulk_mms.ledger.jsonl import JsonlStore
from bulk_mms.models import Money
from bulk_mms.testing import ledger_events

HEADER: dict[str, Any] = {
    "event": "job",
    "format": 1,
    "job": "j",
    "fingerprint": "sha256:aa",
    "group_size": 8,
    "group_by": None,
    "phone_column": "phone",
}


def lines(*events: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


async def test_events_are_appended_in_order_and_group_committed(tmp_path: Path) -> None:
    """Concurrent writers each return once durable; lines keep order; fsyncs are shared."""
    ledger = open_store(tmp_path / "l.jsonl")
    ledger.append_now(decode(HEADER))  # type: ignore[arg-type]
    await asyncio.gather(*(ledger.append(ev.Sent(f"g{i}", message_id=f"m{i}")) for i in range(50)))
    await ledger.close()
    events = ledger_events(tmp_path / "l.jsonl")
    assert [e.get("group") for e in events[1:]] == [f"g{i}" for i in range(50)]
    assert ledger.commits < 50
    assert isinstance(ledger, JsonlStore)
    assert ledger.commit_interval == jsonl.COMMIT_INTERVAL_S


class _Timers:
    """A fake ``call_later``: records each timer; the test fires them."""

    def __init__(self) -> None:
        self.set: list[tuple[float, Any, Any]] = []
        self.cancelled = 0

    def __call__(self, delay: float, callback: Any, arg: Any) -> _Timers:
        self.set.append((round(delay, 6), callback, arg))
        return self

    def cancel(self) -> None:
        self.cancelled += 1

    def fire(self) -> None:
        _, callback, arg = self.set[-1]
        callback(arg)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _spaced(interval: float) -> tuple[GroupCommit[int], list[list[int]], list[float], _Timers]:
    t = [100.0]
    batches: list[list[int]] = []

    async def commit(items: list[int]) -> None:
        batches.append(items)

    timers = _Timers()
    return GroupCommit(commit, interval, now=lambda: t[0], call_later=timers), batches, t, timers


async def test_a_busy_commit_waits_out_its_interval_and_takes_all_that_queued_meanwhile() -> None:
    """After a commit that released several writers, the next one due within the interval
    waits the rest of it and covers every item queued meanwhile; after a lone writer's, or
    once the interval is past, a commit starts at once."""
    gc, batches, t, timers = _spaced(0.005)
    await gc.add_and_wait(1)
    await gc.add_and_wait(2)  # a lone writer: no wait
    await asyncio.gather(*(gc.add_and_wait(i) for i in (3, 4)))
    t[0] += 0.001
    five = asyncio.ensure_future(gc.add_and_wait(5))
    await _settle()
    assert batches == [[1], [2], [3, 4]]  # 5 waits for company
    gc.add(6)  # queued meanwhile, not waited for
    timers.fire()
    await five
    t[0] += 1.0
    await gc.add_and_wait(7)  # its interval is past
    assert batches == [[1], [2], [3, 4], [5, 6], [7]]
    assert [delay for delay, _, _ in timers.set] == [0.004]


async def test_the_wait_for_company_ends_when_as_many_writers_wait_as_last_time() -> None:
    """Once as many writers wait as the last commit released, the commit goes without waiting
    out its interval (writers that all wait at once lose no time to it)."""
    gc, batches, _t, timers = _spaced(60.0)
    await asyncio.gather(*(gc.add_and_wait(i) for i in (1, 2)))
    first = asyncio.ensure_future(gc.add_and_wait(3))
    await _settle()
    assert batches == [[1, 2]]
    assert len(timers.set) == 1
    await asyncio.gather(first, gc.add_and_wait(4))
    await asyncio.gather(*(gc.add_and_wait(i) for i in (5, 6)))  # both wait at once: no timer
    assert batches == [[1, 2], [3, 4], [5, 6]]
    assert len(timers.set) == 1
    assert timers.cancelled == 1


async def test_drain_ends_the_wait_for_company_and_commits_what_a_cancelled_flusher_left() -> None:
    """At the end nobody else is coming: drain sends a waiting commit at once; and items a
    cancelled flusher left queued are committed by drain, their writers released."""
    gc, batches, _t, timers = _spaced(60.0)
    await asyncio.gather(*(gc.add_and_wait(i) for i in (1, 2)))
    three = asyncio.ensure_future(gc.add_and_wait(3))
    await _settle()
    await gc.drain()  # the timer never fires
    await three
    assert batches == [[1, 2], [3]]
    await asyncio.gather(*(gc.add_and_wait(i) for i in (4, 5)))
    six = asyncio.ensure_future(gc.add_and_wait(6))
    await _settle()
    assert gc._flusher is not None
    gc._flusher.cancel()  # as a loop's shutdown would
    await _settle()
    assert not six.done()
    await gc.drain()
    await six
    assert batches == [[1, 2], [3], [4, 5], [6]]
    assert len(timers.set) == 2


async def test_a_commit_that_fails_after_waiting_for_company_fails_its_writers() -> None:
    """The commit after a wait fails: every writer it covered gets the error, and so does
    drain."""
    batches: list[list[int]] = []
    timers = _Timers()

    async def commit(items: list[int]) -> None:
        if 3 in items:
            raise LedgerError(Path("l.jsonl"), "cannot write: disk full")
        batches.append(items)

    gc: GroupCommit[int] = GroupCommit(commit, 60.0, now=lambda: 100.0, call_later=timers)
    await asyncio.gather(*(gc.add_and_wait(i) for i in (1, 2)))
    three = asyncio.ensure_future(gc.add_and_wait(3))
    await _settle()
    timers.fire()
    with pytest.raises(LedgerError, match="disk full"):
        await three
    with pytest.raises(LedgerError, match="disk full"):
        await gc.drain()
    assert batches == [[1, 2]]


@pytest.mark.parametrize("how", ["a bug", "cancelled"])
async def test_a_commit_that_ends_otherwise_is_never_taken_for_durable(how: str) -> None:
    """A commit that raises something other than a LedgerError, or is cancelled while it
    runs, fails its writers with a LedgerError naming the store: drain says so too (not a
    CancelledError it did not ask for), and the store takes nothing more."""
    started = asyncio.Event()

    async def commit(items: list[int]) -> None:
        if how == "a bug":
            raise RuntimeError("oops")
        started.set()
        await asyncio.sleep(3600)  # cancelled below, as a loop's shutdown would

    gc: GroupCommit[int] = GroupCommit(commit, where=lambda: "l.jsonl")
    one = asyncio.ensure_future(gc.add_and_wait(1))
    if how == "cancelled":
        await started.wait()
        assert gc._flusher is not None
        gc._flusher.cancel()
    reason = "a commit failed" if how == "a bug" else "a commit was cancelled"
    with pytest.raises(LedgerError, match=f"l.jsonl: {reason}"):
        await one
    with pytest.raises(LedgerError, match=reason):
        await gc.drain()
    with pytest.raises(LedgerError):
        gc.add(2)


async def test_the_fsync_runs_off_the_event_loop(tmp_path: Path) -> None:
    """Every commit's fsync runs on a worker thread, never the loop's, and each commit is
    durable before its writers return."""
    loop_thread = threading.get_ident()
    synced_on: list[int] = []
    ledger = open_store(tmp_path / "l.jsonl")
    assert isinstance(ledger, JsonlStore)
    ledger.append_now(decode(HEADER))  # type: ignore[arg-type]
    fsync = ledger._fsync

    def recorded() -> None:
        synced_on.append(threading.get_ident())
        fsync()

    ledger._fsync = recorded  # type: ignore[method-assign]
    for i in range(3):
        await ledger.append(ev.Sent(f"g{i}", message_id=f"m{i}"))
        assert ledger.commits == i + 2  # the header's, then one an append
    await ledger.close()
    assert len(synced_on) == 3
    assert loop_thread not in synced_on
    assert [e.get("group") for e in ledger_events(tmp_path / "l.jsonl")[1:]] == ["g0", "g1", "g2"]


def test_torn_last_line_is_cut_on_open(tmp_path: Path) -> None:
    """A crash mid-write leaves a partial line; opening cuts it so appends stay clean."""
    p = tmp_path / "l.jsonl"
    p.write_bytes(lines(HEADER, sent("a")) + b'{"event":"se')
    assert set(load(p).groups) == {"a"}  # readers ignore it
    ledger = open_store(p)
    ledger.append_now(ev.Sent("b", message_id="mb"))
    ledger.close_sync()
    assert {g for g, r in load(p).groups.items() if r.state == "sent"} == {"a", "b"}
    assert p.read_bytes().count(b"\n") == 3
    assert b'{"event":"se{' not in p.read_bytes()


def test_nul_filled_tail_is_cut(tmp_path: Path) -> None:
    """Some file systems leave NUL bytes after a crash; they are cut like a torn line."""
    p = tmp_path / "l.jsonl"
    p.write_bytes(lines(HEADER) + b"\x00" * 300)
    open_store(p).close_sync()
    assert p.read_bytes() == lines(HEADER)


def test_corrupt_line_in_the_middle_names_the_line(tmp_path: Path) -> None:
    """A complete line that is not an event is corruption, reported with its line number."""
    p = tmp_path / "l.jsonl"
    p.write_bytes(lines(HEADER) + b"garbage\n" + lines(sent("a")))
    with pytest.raises(LedgerCorrupt) as info:
        load(p)
    assert info.value.line == 2
    assert f"{p}:2" in str(info.value)


def sent(group: str) -> dict[str, Any]:
    return {"event": "sent", "group": group, "message_id": f"m-{group}"}


def test_the_fold_puts_each_group_in_one_state(tmp_path: Path) -> None:
    """ev.Sent wins; a refusal is failed; retries run out is retry_pending; an attempt without an
    outcome, or any doubt, is in doubt until a send settles it; a later failure never clears
    doubt; a new run turns an attempt left open by a crash into doubt."""
    p = tmp_path / "l.jsonl"
    p.write_bytes(
        lines(
            HEADER,
            {"event": "run"},
            {"event": "attempt", "group": "a", "to": ["+1"]},
            sent("a"),
            {"event": "attempt", "group": "b"},
            {"event": "failed", "group": "b"},
            {"event": "attempt", "group": "c", "to": ["+3", "+4"]},
            {"event": "in_doubt", "group": "d"},
            {"event": "attempt", "group": "e"},
            {"event": "in_doubt", "group": "e"},
            {"event": "attempt", "group": "e"},
            sent("e"),
            {"event": "attempt", "group": "f"},
            {"event": "failed", "group": "f", "retryable": True},
            {"event": "in_doubt", "group": "g"},
            {"event": "attempt", "group": "g"},
            {"event": "failed", "group": "g", "retryable": True},
            {"event": "attempt", "group": "h"},
            {"event": "run"},
            {"event": "attempt", "group": "h"},
            {"event": "failed", "group": "h", "code": "500", "retryable": True},
            {"event": "rejected", "line": 7},
            {"event": "planned", "recipients": 9, "groups": 6, "rejected": 1},
        )
    )
    view = load(p)
    states = {g: r.state for g, r in view.groups.items()}
    assert states == {
        "a": "sent",
        "b": "failed",
        "c": "in_doubt",
        "d": "in_doubt",
        "e": "sent",
        "f": "retry_pending",
        "g": "in_doubt",
        "h": "in_doubt",
    }
    assert view.is_done("b")
    assert not view.is_done("f")
    assert view.rejected == {"": 1}
    assert view.rejected_through == 7
    assert view.runs == 2
    r = view.recipients()
    assert (r.valid, r.sent, r.in_doubt, r.not_attempted) == (9, 1, 2, 6)


def test_every_event_survives_the_round_trip() -> None:
    """Each kind of event encodes to one JSON line (kind first) and decodes to itself."""
    events: list[ev.Event] = [
        ev.Header("j", "sha256:aa", campaign="c1", columns=("name",)),
        ev.RunStarted(12, "2026-11-25T00:00:00.000Z"),
        ev.Planned(10, 2, 1),
        ev.Attempt("g", ("+1", "+2"), 3, "+15550001", 2, "key", 1.5),
        ev.Sent(
            "g",
            ("+1",),
            message_id="m",
            rows=(("Ann",),),
            statuses={"+1": "queued"},
            wait_seconds=1.5,
            cost=Money(Decimal("0.004"), "USD"),
        ),
        ev.Failed("g", ("+1",), status=400, code="40310", title="t", retryable=False),
        ev.InDoubt("g", ("+1",), reason="lost"),
        ev.Rejected(4, "x", "bad"),
        ev.Status("g", "+1", "delivered", "m1", (ApiError("1", "t", "d"),), "2026-01-01T00:00:00Z"),
    ]
    for event in events:
        line = encode(event)
        assert line.startswith(b'{"event":"' + event.kind.encode() + b'"')
        assert decode(orjson.loads(line)) == event
        assert to_json(event)["event"] == event.kind


def test_a_version_2_ledger_still_reads() -> None:
    """Lines written by the format-2 writer decode, missing fields taking their defaults."""
    old = {
        "event": "failed",
        "group": "g",
        "seq": 1,
        "to": ["+1"],
        "status": 503,
        "code": "503",
        "title": "ServerError",
        "detail": "x",
        "attempts": 4,
        "rate_limited": 0,
        "retryable": True,
        "time": "2026-11-20T10:00:00.000Z",
    }
    failed = decode(old)
    assert isinstance(failed, ev.Failed)
    assert failed.retryable
    assert failed.to == ("+1",)
    assert decode({"event": "from-the-future"}) is None


def test_header_mismatch_is_refused() -> None:
    """Another input file or another grouping under the same ledger is refused, saying which."""
    header = decode(HEADER)
    assert isinstance(header, ev.Header)
    assert "input file contents" in (
        header.mismatch(replace(header, fingerprint="sha256:bb")) or ""
    )
    assert "group_size" in (header.mismatch(replace(header, group_size=4)) or "")
    assert "newer" in (replace(header, format=99).mismatch(header) or "")
    assert header.mismatch(header) is None


def test_second_open_is_locked_out_with_the_holder_pid(tmp_path: Path) -> None:
    """While one run holds the ledger, a second open fails naming the holder's PID."""
    first = open_store(tmp_path / "l.jsonl")
    with pytest.raises(LedgerLocked) as info:
        open_store(tmp_path / "l.jsonl")
    assert str(os.getpid()) in str(info.value)
    first.close_sync()
    open_store(tmp_path / "l.jsonl").close_sync()


EVENTS = st.lists(
    st.one_of(
        st.builds(lambda g: {"event": "attempt", "group": g}, st.sampled_from("abcd")),
        st.builds(sent, st.sampled_from("abcd")),
        st.builds(lambda g: {"event": "failed", "group": g}, st.sampled_from("abcd")),
        st.builds(
            lambda g: {"event": "failed", "group": g, "retryable": True}, st.sampled_from("abcd")
        ),
        st.builds(lambda n: {"event": "rejected", "line": n}, st.integers(1, 9)),
        st.builds(lambda g: {"event": "in_doubt", "group": g}, st.sampled_from("abcd")),
    ),
    max_size=25,
)


@given(events=EVENTS, cut=st.integers(0, 10_000), tail=st.integers(1, 200))
def test_any_prefix_torn_anywhere_folds_consistently(
    tmp_path_factory: pytest.TempPathFactory, events: list[dict[str, Any]], cut: int, tail: int
) -> None:
    """Any prefix of a ledger, torn anywhere in its last line, folds to the full lines' state,
    the same as a slow, obvious model of each group's history."""
    data = lines(HEADER, *events)
    whole = data.split(b"\n")[:-1]
    n = cut % (len(whole) + 1)
    kept = b"".join(x + b"\n" for x in whole[:n])
    torn = whole[n][: tail % (len(whole[n]) + 1)] if n < len(whole) else b""
    p = tmp_path_factory.mktemp("l") / "l.jsonl"
    p.write_bytes(kept + torn)
    view = load(p)
    assert {g: r.state for g, r in view.groups.items()} == model_of(whole[1:n])
    rejected = [orjson.loads(x)["line"] for x in whole[1:n] if b"rejected" in x]
    assert sum(view.rejected.values()) == len(rejected)
    assert view.rejected_through == max(rejected, default=0)


def model_of(raw: list[bytes]) -> dict[str, str]:
    """Each group's state from its whole history: sent if ever sent; else in doubt if ever in
    doubt or its last event is an attempt; else as its last failure says."""
    history: dict[str, list[dict[str, Any]]] = {}
    for line in raw:
        e = orjson.loads(line)
        if "group" in e:
            history.setdefault(e["group"], []).append(e)
    states = {}
    for g, h in history.items():
        kinds = [e["event"] for e in h]
        if "sent" in kinds:
            states[g] = "sent"
        elif "in_doubt" in kinds or kinds[-1] == "attempt":
            states[g] = "in_doubt"
        else:
            last = [e for e in h if e["event"] == "failed"][-1]
            states[g] = "retry_pending" if last.get("retryable") else "failed"
    return states


async def test_a_failed_commit_nobody_waits_for_is_told_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit of queued events (append_nowait, no writer waiting) that fails tells the
    store's failure callback right away, once, with the error; later appends raise it."""
    store = open_store(tmp_path / "l.jsonl", "run")
    told: list[LedgerError] = []
    store.on_failure(told.append)

    def full(self: JsonlStore, lines: list[bytes]) -> None:
        raise LedgerError(self.name, "cannot write: disk full")

    monkeypatch.setattr(JsonlStore, "_write_lines", full)
    store.append_nowait(ev.Rejected(3, "x", "bad", "t"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert [str(e) for e in told] == [f"{store.name}: cannot write: disk full"]
    with pytest.raises(LedgerError):
        store.append_nowait(ev.Rejected(4, "y", "bad", "t"))
    store.close_sync()
