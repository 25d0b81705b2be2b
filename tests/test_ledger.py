"""The ledger: durable appends, torn tails, corruption, replay, header checks and the lock."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulk_mms.errors import LedgerCorrupt, LedgerLocked, LedgerMismatch
from bulk_mms.ledger import Ledger, check_header, iter_events, replay

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
    ledger = Ledger.open(tmp_path / "l.jsonl")
    ledger.write_sync(HEADER)
    await asyncio.gather(*(ledger.write({"event": "sent", "group": f"g{i}"}) for i in range(50)))
    await ledger.close()
    events = [e for _, e in iter_events(tmp_path / "l.jsonl")]
    assert [e.get("group") for e in events[1:]] == [f"g{i}" for i in range(50)]
    assert ledger.fsyncs < 50


def test_torn_last_line_is_cut_on_open(tmp_path: Path) -> None:
    """A crash mid-write leaves a partial line; opening cuts it so appends stay clean."""
    p = tmp_path / "l.jsonl"
    p.write_bytes(lines(HEADER, {"event": "sent", "group": "a"}) + b'{"event":"se')
    assert replay(p).sent == {"a"}  # readers ignore it
    ledger = Ledger.open(p)
    ledger.write_sync({"event": "sent", "group": "b"})
    ledger.close_sync()
    assert replay(p).sent == {"a", "b"}
    assert p.read_bytes().endswith(b'"b"}\n')


def test_nul_filled_tail_is_cut(tmp_path: Path) -> None:
    """Some file systems leave NUL bytes after a crash; they are cut like a torn line."""
    p = tmp_path / "l.jsonl"
    p.write_bytes(lines(HEADER) + b"\x00" * 300)
    Ledger.open(p).close_sync()
    assert p.read_bytes() == lines(HEADER)


def test_corrupt_line_in_the_middle_names_the_line(tmp_path: Path) -> None:
    """A complete line that is not an event is corruption, reported with its line number."""
    p = tmp_path / "l.jsonl"
    p.write_bytes(lines(HEADER) + b"garbage\n" + lines({"event": "sent", "group": "a"}))
    with pytest.raises(LedgerCorrupt) as info:
        replay(p)
    assert info.value.line == 2
    assert f"{p}:2" in str(info.value)


def test_replay_classifies_groups(tmp_path: Path) -> None:
    """Sent and failed are done; an attempt without outcome is in doubt; transient failures are not
    done; a resend clears doubt."""
    p = tmp_path / "l.jsonl"
    p.write_bytes(
        lines(
            HEADER,
            {"event": "run"},
            {"event": "attempt", "group": "a"},
            {"event": "sent", "group": "a"},
            {"event": "attempt", "group": "b"},
            {"event": "failed", "group": "b"},
            {"event": "attempt", "group": "c"},
            {"event": "in_doubt", "group": "d"},
            {"event": "attempt", "group": "e"},
            {"event": "in_doubt", "group": "e"},
            {"event": "attempt", "group": "e"},
            {"event": "sent", "group": "e"},
            {"event": "attempt", "group": "f"},
            {"event": "failed", "group": "f", "retryable": True},
            {"event": "rejected", "line": 7},
        )
    )
    state = replay(p)
    assert state.sent == {"a", "e"}
    assert state.failed == {"b"}  # f ran out of retries on a transient error: sent next run
    assert not state.is_done("f")
    assert state.in_doubt == {"c", "d"}
    assert state.rejected_lines == {7}
    assert state.runs == 1


def test_header_mismatch_is_refused(tmp_path: Path) -> None:
    """Another input file or another grouping under the same ledger is refused, saying which."""
    p = tmp_path / "l.jsonl"
    with pytest.raises(LedgerMismatch, match="input file contents"):
        check_header(p, HEADER, {**HEADER, "fingerprint": "sha256:bb"})
    with pytest.raises(LedgerMismatch, match="group_size"):
        check_header(p, HEADER, {**HEADER, "group_size": 4})
    check_header(p, HEADER, dict(HEADER))


def test_second_open_is_locked_out_with_the_holder_pid(tmp_path: Path) -> None:
    """While one run holds the ledger, a second open fails naming the holder's PID."""
    first = Ledger.open(tmp_path / "l.jsonl")
    with pytest.raises(LedgerLocked) as info:
        Ledger.open(tmp_path / "l.jsonl")
    assert str(os.getpid()) in str(info.value)
    first.close_sync()
    Ledger.open(tmp_path / "l.jsonl").close_sync()


EVENTS = st.lists(
    st.one_of(
        st.builds(lambda g: {"event": "attempt", "group": g}, st.sampled_from("abcd")),
        st.builds(lambda g: {"event": "sent", "group": g}, st.sampled_from("abcd")),
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
def test_any_prefix_torn_anywhere_replays_consistently(
    tmp_path_factory: pytest.TempPathFactory, events: list[dict[str, Any]], cut: int, tail: int
) -> None:
    """Any prefix of a ledger, torn anywhere in its last line, replays to the full lines' state."""
    data = lines(HEADER, *events)
    whole = data.split(b"\n")[:-1]
    n = cut % (len(whole) + 1)
    kept = b"".join(x + b"\n" for x in whole[:n])
    torn = whole[n][: tail % (len(whole[n]) + 1)] if n < len(whole) else b""
    p = tmp_path_factory.mktemp("l") / "l.jsonl"
    p.write_bytes(kept + torn)
    state = replay(p)
    expected = replay_of(whole[:n])
    assert (state.sent, state.failed, state.in_doubt, state.rejected_lines) == expected
    assert state.sent.isdisjoint(state.in_doubt)
    assert state.failed.isdisjoint(state.in_doubt)


def replay_of(raw: list[bytes]) -> tuple[set[str], set[str], set[str], set[int]]:
    """A slow, obvious model of replay: each group's history, read whole."""
    history: dict[str, list[dict[str, Any]]] = {}
    rejected: set[int] = set()
    for line in raw:
        e = orjson.loads(line)
        if e["event"] == "rejected":
            rejected.add(e["line"])
        elif "group" in e:
            history.setdefault(e["group"], []).append(e)
    sent = {g for g, h in history.items() if any(e["event"] == "sent" for e in h)}
    failed = {
        g
        for g, h in history.items()
        if any(e["event"] == "failed" and not e.get("retryable") for e in h)
    }
    doubt = (
        {
            g
            for g, h in history.items()
            if h[-1]["event"] == "attempt" or any(e["event"] == "in_doubt" for e in h)
        }
        - sent
        - failed
    )
    return sent, failed, doubt, rejected
