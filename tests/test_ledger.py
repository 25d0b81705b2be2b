"""The ledger: typed events, the JSONL store (durable appends, torn tails, corruption, the lock),
the one fold and its states, header checks."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import os
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace

from bulk_mms.errors import (
    ApiError,
    LedgerCorrupt,
    LedgerError,
    LedgerLocked,
    LedgerUnavailable,
)
from bulk_mms.ledger import checkpoint, jsonl, load, open_store, to_json
from bulk_mms.ledger import events as ev
from bulk_mms.ledger.commit import GroupCommit
from bulk_mms.ledger.events import decode, encode
from bulk_mms.ledger.fold import LedgerView
from bulk_mms.ledger.jsonl import JsonlStore
from bulk_mms.models import Group, MessageBody, Money, SendReceipt
from bulk_mms.recorder import Recorder
from bulk_mms.summary import JobSummary
from bulk_mms.testing import FakeClock, ledger_events

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


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _batched(gate: asyncio.Event | None = None) -> tuple[GroupCommit[int], list[list[int]]]:
    """A group commit whose commit records its batches, then waits for ``gate`` if given."""
    batches: list[list[int]] = []

    async def commit(items: list[int]) -> None:
        batches.append(items)
        if gate is not None:
            await gate.wait()

    return GroupCommit(commit), batches


async def test_items_queued_while_a_commit_runs_go_together_in_the_next() -> None:
    """Writers that come while a commit runs share the next commit, in the order they came,
    and each is released only by the commit that covers its item."""
    gate = asyncio.Event()
    gc, batches = _batched(gate)
    one = asyncio.ensure_future(gc.add_and_wait(1))
    await _settle()
    rest = asyncio.gather(*(gc.add_and_wait(i) for i in (2, 3, 4)))
    await _settle()
    assert batches == [[1]]
    assert not one.done()
    gate.set()
    await one
    await rest
    assert batches == [[1], [2, 3, 4]]


async def test_drain_commits_what_a_cancelled_flusher_left() -> None:
    """Items a flusher cancelled before it ran left queued (as a loop's shutdown would) are
    committed by drain."""
    gc, batches = _batched()
    await gc.add_and_wait(1)
    gc.add(2)
    assert gc._flusher is not None
    gc._flusher.cancel()
    await _settle()
    assert batches == [[1]]
    await gc.drain()
    assert batches == [[1], [2]]
    assert gc.failed is None


async def test_a_failed_commit_fails_its_writers_and_drain() -> None:
    """A commit that fails gives every writer it covered the error, and drain too."""
    batches: list[list[int]] = []

    async def commit(items: list[int]) -> None:
        if 3 in items:
            raise LedgerError(Path("l.jsonl"), "cannot write: disk full")
        batches.append(items)

    gc: GroupCommit[int] = GroupCommit(commit)
    await asyncio.gather(*(gc.add_and_wait(i) for i in (1, 2)))
    with pytest.raises(LedgerError, match="disk full"):
        await gc.add_and_wait(3)
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


def _run_store(path: Path) -> JsonlStore:
    store = open_store(path)
    assert isinstance(store, JsonlStore)
    store.append_now(decode(HEADER))  # type: ignore[arg-type]
    return store


def _ended(thread: threading.Thread | None) -> bool:
    """Whether ``thread`` ended (it was asked to: the join returns as it does)."""
    assert thread is not None
    thread.join(timeout=30)
    return not thread.is_alive()


async def test_each_store_s_fsync_thread_ends_when_it_closes(tmp_path: Path) -> None:
    """A store's fsync thread starts with its first group commit (not with a header written
    at once, nor for a store only read), is its own (two stores, two threads), is a daemon,
    and ends when the store closes: by close, by close_sync, or dropped unclosed and collected."""
    one, two = _run_store(tmp_path / "1.jsonl"), _run_store(tmp_path / "2.jsonl")
    read = open_store(tmp_path / "1.jsonl", "read")
    assert isinstance(read, JsonlStore)
    assert one._syncer.thread is None
    await asyncio.gather(one.append(ev.Sent("g1", message_id="m1")), two.append(ev.Sent("g2")))
    first, second = one._syncer.thread, two._syncer.thread
    assert first is not None
    assert second not in (None, first)
    assert first.is_alive()
    assert first.daemon
    await one.close()
    assert _ended(first)
    assert one._syncer.thread is None
    two.close_sync()
    assert _ended(second)
    read.close_sync()
    assert read._syncer.thread is None

    dropped = _run_store(tmp_path / "3.jsonl")
    await dropped.append(ev.Sent("g3", message_id="m3"))
    thread = dropped._syncer.thread
    del dropped  # the thread holds nothing of it between fsyncs
    gc.collect()  # a store is in cycles of its own (its group commit calls it back)
    assert _ended(thread)
    assert [e["group"] for e in ledger_events(tmp_path / "3.jsonl")[1:]] == ["g3"]


def test_a_child_forked_after_the_fsync_thread_started_syncs_on_a_thread_of_its_own(
    tmp_path: Path,
) -> None:
    """A process forked while a store's fsync thread runs (the thread is not in the child)
    appends durably there on a new thread of the child's own, and closes; the parent's
    thread and store go on as they were."""
    store = _run_store(tmp_path / "l.jsonl")
    asyncio.run(store.append(ev.Sent("g1", message_id="m1")))
    parent_thread = store._syncer.thread
    pid = os.fork()
    if pid == 0:  # the child: its exit code says how it went (an alarm ends a hang)
        code = 1
        try:
            import signal  # noqa: PLC0415 - the child's alone

            signal.alarm(20)
            asyncio.run(store.append(ev.Sent("g2", message_id="m2")))
            thread = store._syncer.thread
            fresh = thread is not None and thread is not parent_thread and thread.is_alive()
            store.close_sync()
            code = 0 if fresh and _ended(thread) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._syncer.thread is parent_thread
    assert parent_thread is not None
    assert parent_thread.is_alive()
    store.close_sync()
    assert _ended(parent_thread)
    assert [e["group"] for e in ledger_events(tmp_path / "l.jsonl")[1:]] == ["g1", "g2"]


async def test_a_failed_fsync_on_the_thread_fails_every_waiter_and_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync the disk refuses, on the store's thread, fails every writer its commit
    covered with the store's LedgerUnavailable, and drain and every later append with it;
    the thread then ends with the store."""
    store = _run_store(tmp_path / "l.jsonl")

    def refused(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", refused)
    results = await asyncio.gather(
        *(store.append(ev.Sent(f"g{i}", message_id=f"m{i}")) for i in range(3)),
        return_exceptions=True,
    )
    said = f"{store.name}: cannot sync to disk: Input/output error; {jsonl._RESUMES}"
    assert [type(r) for r in results] == [LedgerUnavailable] * 3
    assert {str(r) for r in results} == {said}
    with pytest.raises(LedgerUnavailable, match="cannot sync to disk"):
        await store.drain()
    with pytest.raises(LedgerUnavailable, match="cannot sync to disk"):
        await store.append(ev.Sent("g9", message_id="m9"))
    thread = store._syncer.thread
    with pytest.raises(LedgerUnavailable, match="cannot sync to disk"):
        await store.close()
    assert _ended(thread)


def _gated(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """os.fsync made to say when it starts, then wait for the gate before it syncs."""
    started, gate = threading.Event(), threading.Event()
    fsync = os.fsync

    def held(fd: int) -> None:
        started.set()
        assert gate.wait(timeout=30)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", held)
    return started, gate


async def test_a_commit_cancelled_while_its_fsync_runs_is_never_taken_for_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flusher cancelled while the thread runs its fsync (as a loop's shutdown would)
    fails its writer at once, without waiting for the fsync; the fsync's end, come later, is
    dropped without an error on the loop, and the thread still ends with the store."""
    store = _run_store(tmp_path / "l.jsonl")
    started, gate = _gated(monkeypatch)
    told: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: told.append(context))
    writer = asyncio.ensure_future(store.append(ev.Sent("g0", message_id="m0")))
    await asyncio.to_thread(started.wait, 30)
    assert store._commits._flusher is not None
    store._commits._flusher.cancel()
    with pytest.raises(LedgerError, match="a commit was cancelled"):
        await writer
    thread = store._syncer.thread
    store.close_sync()
    assert thread is not None
    assert thread.is_alive()  # its fsync is still running
    gate.set()
    assert _ended(thread)
    await _settle()
    assert told == []


def test_an_fsync_that_ends_after_its_loop_closed_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose loop ends while its fsync still runs (the writer's task cancelled, the
    loop closed) leaves the thread nothing to report to: it drops the fsync's end and ends
    with the store, with no error of its own."""
    store = _run_store(tmp_path / "l.jsonl")
    started, gate = _gated(monkeypatch)
    died: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", died.append)

    writers: list[asyncio.Future[None]] = []

    async def run() -> None:
        writers.append(asyncio.ensure_future(store.append(ev.Sent("g0", message_id="m0"))))
        await asyncio.to_thread(started.wait, 30)  # the loop's end cancels the append

    asyncio.run(run())
    assert writers[0].cancelled()
    thread = store._syncer.thread
    store.close_sync()
    gate.set()
    assert _ended(thread)
    assert died == []


_LEFT_OPEN = """\
import asyncio, sys
from pathlib import Path
from bulk_mms.ledger import open_store
from bulk_mms.ledger import events as ev
kept = []

async def main() -> None:
    store = open_store(Path(sys.argv[1]))
    await store.append(ev.Sent("g0", message_id="m0"))
    kept.append(store)

asyncio.run(main())
"""


def test_a_process_that_leaves_a_store_open_still_exits(tmp_path: Path) -> None:
    """A store left open, its fsync thread started, does not keep its process from exiting:
    the thread is a daemon."""
    done = subprocess.run(
        [sys.executable, "-c", _LEFT_OPEN, str(tmp_path / "l.jsonl")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    written = (tmp_path / "l.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["group"] for line in written] == ["g0"]


@pytest.mark.parametrize("call", ["ftruncate", "pwrite"])
def test_a_full_disk_as_a_run_opens_its_ledger_is_exit_7(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """A disk that refuses the lock file's PID (ENOSPC) as a run opens its ledger stops it
    with LedgerUnavailable (exit 7, resumable) naming the ledger, not a traceback."""

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, call, full)
    with pytest.raises(LedgerUnavailable) as info:
        open_store(tmp_path / "l.jsonl", "run")
    assert str(info.value).startswith(f"{tmp_path / 'l.jsonl'}: cannot write: disk full;")


def test_a_ledger_whose_folder_is_a_file_is_said_so(tmp_path: Path) -> None:
    """A ledger path whose folder is a file is refused naming that file as no folder."""
    (tmp_path / "f").write_text("x", encoding="utf-8")
    with pytest.raises(LedgerError) as info:
        open_store(tmp_path / "f" / "l.jsonl", "run")
    assert (
        str(info.value)
        == f"{tmp_path}/f/l.jsonl: cannot create: {tmp_path}/f is a file, not a folder"
    )


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
        ev.Planned(10, 2, 5, "2026-11-25T00:00:00.000Z", 1, suppressed=2, excluded=1),
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


def test_fields_a_newer_bulk_mms_wrote_are_passed_over() -> None:
    """An event with a field this bulk-mms does not know (as a ledger a newer one wrote has)
    reads as the fields it knows: so an older bulk-mms reads a ``planned`` line that counts
    suppressed and excluded rows apart, and a line without them reads with them 0."""
    planned = ev.Planned(10, 2, 5, "2026-11-25T00:00:00.000Z", 1, suppressed=2, excluded=1)
    assert decode({**to_json(planned), "counted_later": {"x": 1}}) == planned
    old = {k: v for k, v in to_json(planned).items() if k not in ("suppressed", "excluded")}
    assert decode(old) == replace(planned, suppressed=0, excluded=0)
    sent = ev.Sent("g", ("+1",), message_id="m")
    assert decode({**to_json(sent), "counted_later": 1}) == sent


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


def test_a_window_to_midnight_written_2359_resumes_under_2400() -> None:
    """A ledger whose header has a recipient_window ending 23:59 (as 0.3 wrote 24:00) resumes
    under the same window written 24:00, and either way round; another window is refused."""
    header = decode(HEADER)
    assert isinstance(header, ev.Header)
    old = replace(header, recipient_window="08:00-23:59")
    assert old.mismatch(replace(header, recipient_window="08:00-24:00")) is None
    assert replace(header, recipient_window="08:00-24:00").mismatch(old) is None
    assert "recipient_window" in (
        old.mismatch(replace(header, recipient_window="09:00-24:00")) or ""
    )


@pytest.mark.parametrize(
    ("was", "now", "same"),
    [
        ("23:59-23:59", "23:59-24:00", True),  # 0.3's header of a last-minute window
        ("23:59-06:00", "23:59-06:00", True),
        ("23:59-06:00", "24:00-06:00", False),
        ("23:59-06:00", "23:59-24:00", False),
        ("22:00-23:59", "23:59-24:00", False),
    ],
)
def test_only_a_window_s_end_at_2359_is_read_as_midnight(was: str, now: str, same: bool) -> None:
    """A header's window starting 23:59 is taken as written: only its end at 23:59 reads as
    24:00, so no other start or end matches a job's window by it."""
    header = decode(HEADER)
    assert isinstance(header, ev.Header)
    found = replace(header, recipient_window=was).mismatch(replace(header, recipient_window=now))
    assert (found is None) is same


def test_second_open_is_locked_out_with_the_holder_pid(tmp_path: Path) -> None:
    """While one run holds the ledger, a second open fails naming the holder's PID, after
    LOCK_TRIES tries a bounded pause apart."""
    first = open_store(tmp_path / "l.jsonl")
    pauses: list[float] = []
    with pytest.raises(LedgerLocked) as info:
        JsonlStore.open(tmp_path / "l.jsonl", pause=pauses.append)
    assert str(os.getpid()) in str(info.value)
    assert pauses == [jsonl.LOCK_RETRY_S] * (jsonl.LOCK_TRIES - 1)
    assert sum(pauses) <= 0.1
    first.close_sync()
    open_store(tmp_path / "l.jsonl").close_sync()


def test_a_run_waits_out_a_look_that_holds_its_lock_for_an_instant(tmp_path: Path) -> None:
    """A run that finds its lock taken by a look at who holds it (``track --follow``, a dry
    run) tries again once the look has given it back, and runs."""
    path = tmp_path / "l.jsonl"
    open_store(path).close_sync()
    look = os.open(f"{path}.lock", os.O_RDWR)
    fcntl.flock(look, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the look, at the run's very instant
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        os.close(look)  # the look is over

    store = JsonlStore.open(path, pause=pause)
    assert JsonlStore.holder(path) == str(os.getpid())
    store.close_sync()
    assert pauses == [jsonl.LOCK_RETRY_S]
    assert JsonlStore.holder(path) is None


def test_runs_starting_while_another_process_keeps_looking_are_never_locked_out(
    tmp_path: Path,
) -> None:
    """Runs opening the ledger over and over while a thread keeps asking who holds it (as
    ``track --follow`` does between passes) never fail with LedgerLocked."""
    path = tmp_path / "l.jsonl"
    open_store(path).close_sync()
    done = threading.Event()
    looks = 0

    def keep_looking() -> None:
        nonlocal looks
        while not done.is_set():
            JsonlStore.holder(path)
            looks += 1

    looker = threading.Thread(target=keep_looking)
    looker.start()
    locked = 0
    try:
        for _ in range(300):
            try:
                open_store(path).close_sync()
            except LedgerLocked:
                locked += 1
    finally:
        done.set()
        looker.join()
    assert looks > 0
    assert locked == 0


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


def test_a_line_recorded_suppressed_by_every_run_is_counted_once() -> None:
    """Each run records the rows of a group it finds all suppressed: the fold counts a line
    once however often it is recorded (as PostgreSQL's one event a line), and a checkpoint
    keeps which lines it counted."""
    view = LedgerView()
    reason = "suppressed: +12125550103 is on the suppression list"
    for line in (4, 4, 7, 4):
        view.apply(ev.Rejected(line, "+12125550103", reason, "t"))
    view.apply(ev.Rejected(9, "x", "phone number contains letters", "t"))
    assert view.rejected == {"suppressed": 2, "phone number contains letters": 1}
    saved = checkpoint.from_state(orjson.loads(orjson.dumps(checkpoint.to_state(view))))
    saved.apply(ev.Rejected(7, "+12125550103", reason, "t"))
    assert saved.rejected == view.rejected


@pytest.mark.parametrize(
    ("columns", "recorded"),
    [
        (("last", "first"), [[["Lee", "Ann"]], [["Lee", "Ann"], ["", "Bo"]]]),
        (("last",), [[["Lee"]], [["Lee"], [""]]]),
    ],
)
async def test_a_sent_group_records_its_members_rows_in_the_headers_columns(
    tmp_path: Path, columns: tuple[str, ...], recorded: list[Any]
) -> None:
    """A sent group's rows hold each member's values in the header's columns' order, and an
    empty value for a column a member's row does not have (a JSONL object may leave it out)."""
    header = ev.Header("j", None, columns=columns)
    store = open_store(tmp_path / "l.jsonl", "run")
    await store.append(header)
    recorder = Recorder(store, LedgerView(header=header), JobSummary("j"), FakeClock())
    to = ("+12125550100", "+12125550101")
    group = Group(
        "g", 0, to, (2, 3), MessageBody("+13125550100", "Hi"),
        rows=({"first": "Ann", "last": "Lee"}, {"first": "Bo"}),
    )  # fmt: skip
    for rows in (group.rows[:1], group.rows):
        recorder.sent(replace(group, to=to[: len(rows)], rows=rows), SendReceipt("m", ()), 1, 0)
    await store.drain()
    sent = [e["rows"] for e in ledger_events(tmp_path / "l.jsonl") if e["event"] == "sent"]
    assert sent == recorded
    store.close_sync()


@pytest.mark.parametrize("mode", ["run", "append", "read"])
def test_a_ledger_that_is_a_pipe_or_a_folder_is_refused_unread(tmp_path: Path, mode: str) -> None:
    """A ledger path naming a pipe (reading it would wait forever) or a folder is refused in
    every mode, naming it, and nothing is written beside it."""
    fifo = tmp_path / "ledger.jsonl"
    os.mkfifo(fifo)
    for where in (fifo, tmp_path):
        with pytest.raises(LedgerError, match="is not a file"):
            open_store(where, mode)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.jsonl"]
