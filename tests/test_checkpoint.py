"""Checkpoints of the fold: a cache of the ledger's replay, never a second truth."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

import orjson
import pytest
from msgspec.structs import replace

from bulk_mms.errors import SendError, ServerError
from bulk_mms.ledger import LedgerView, load, read_events
from bulk_mms.ledger import checkpoint as ckpt
from bulk_mms.ledger import events as ev
from bulk_mms.models import Group, RecipientStatus, SendReceipt
from bulk_mms.report import summarize, waiting
from bulk_mms.runner import run_job
from bulk_mms.track import track_ledger
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, ok_receipt
from tests.test_policy import opted_out


def replay(ledger: Path, *, statuses: bool) -> LedgerView:
    """The fold from the first line, no checkpoint."""
    return LedgerView.fold(read_events(ledger, skip_status=not statuses), statuses=statuses)


async def tracked_ledger(jobs: JobFactory, people: int = 48) -> Path:
    """A ledger with every kind of state: sent (tracked, some failed delivery), a refused
    member, a group pending a rerun, a run per call."""
    jobs.people(people)
    job = jobs.job(extra="group_size = 4")

    def handler(g: Group, n: int) -> SendReceipt | SendError:
        if g.seq == 1 and len(g.to) == 4:
            return opted_out(g, g.to[1])
        if g.seq == 2:
            return ServerError("down", status=503)
        return ok_receipt(g, n)

    client = FakeClient(handler)
    one_try = replace(FAST, retry=replace(FAST.retry, attempts=1))
    await run_job(job, one_try, client, clock=FakeClock())
    for i, g in enumerate(client.calls):
        client.delivery[f"msg-{g.id}-{i}"] = tuple(
            RecipientStatus(
                p, "delivered" if k % 3 else "delivery_failed", at=f"2026-11-30T0{k}:00Z"
            )
            for k, p in enumerate(g.to)
        )
    await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    return job.ledger


@pytest.mark.parametrize("statuses", [True, False])
async def test_a_fold_from_a_checkpoint_equals_a_full_replay(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, statuses: bool
) -> None:
    """A fold leaves a checkpoint; the next fold starts from it and, with more events appended
    since (another run, more statuses), gives exactly the full replay's view."""
    monkeypatch.setattr(ckpt, "EVERY", 10)
    ledger = await tracked_ledger(jobs)
    first = load(ledger, statuses=statuses)
    assert ckpt.path_for(ledger, statuses).exists()
    assert first == replay(ledger, statuses=statuses)
    await tracked_ledger(jobs)  # a second run of the same job, and another tracking pass
    again = load(ledger, statuses=statuses)
    assert again == replay(ledger, statuses=statuses)
    assert again.runs == 2


async def test_a_checkpoint_that_no_longer_describes_the_ledger_is_ignored(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger replaced under its checkpoint (same length, other bytes), cut short, or a
    damaged checkpoint: the fold replays from the first line and is right."""
    monkeypatch.setattr(ckpt, "EVERY", 10)
    ledger = await tracked_ledger(jobs)
    load(ledger)
    saved = ledger.read_bytes()
    ledger.write_bytes(saved.replace(b'"delivered"', b'"deliverex"'))  # same length
    assert load(ledger) == replay(ledger, statuses=True)
    ledger.write_bytes(saved[: len(saved) // 2].rsplit(b"\n", 1)[0] + b"\n")
    assert load(ledger) == replay(ledger, statuses=True)
    ledger.write_bytes(saved)
    ckpt.path_for(ledger, True).write_bytes(b'{"version": 1, "offset": "x"}')
    assert load(ledger) == replay(ledger, statuses=True)


async def test_a_resume_reads_the_checkpoint_and_sends_nothing_twice(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run resumed from a checkpoint knows every group: a rerun of a finished job sends only
    the group left pending, once."""
    monkeypatch.setattr(ckpt, "EVERY", 10)
    ledger = await tracked_ledger(jobs)
    load(ledger, statuses=False)
    assert ckpt.path_for(ledger, False).exists()
    job = jobs.job(extra="group_size = 4")
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    assert [g.seq for g in client.calls] == [2]


async def test_delivery_counts_kept_as_statuses_change_match_a_recount(jobs: JobFactory) -> None:
    """The fold's running count of sent recipients by status equals a recount from each
    recipient's latest status, after statuses moved on twice (sent, then final)."""
    jobs.people(24)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    for final in (False, True):
        for i, g in enumerate(client.calls):
            client.delivery[f"msg-{g.id}-{i}"] = tuple(
                RecipientStatus(p, ("delivered", "delivery_failed")[k % 2] if final else "sent")
                for k, p in enumerate(g.to)
            )
        await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    view = load(job.ledger)
    recount = Counter(
        view.known[p].status if p in view.known else "queued"
        for rec in view.sent_groups()
        for p in rec.to
    )
    assert view.delivery() == recount == Counter(delivered=12, delivery_failed=12)


async def test_a_report_from_a_checkpoint_builds_no_statuses_and_says_what_a_replay_says(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a checkpoint with nothing after it, who did not get the message comes from the
    saved columns (the per-recipient statuses are never built) and equals a full replay's."""
    monkeypatch.setattr(ckpt, "EVERY", 10)
    ledger = await tracked_ledger(jobs)
    load(ledger)  # leaves the checkpoint
    view = load(ledger)
    undelivered = view.not_received()
    assert view._known is None  # still the columns
    full = replay(ledger, statuses=True)
    assert undelivered == full.not_received()
    assert any("delivery_failed" in why for why, _ in undelivered.values())
    assert view.known == full.known  # built when asked for, the same
    assert view == full


async def test_a_checkpoint_with_a_damaged_cost_is_ignored(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's cost in a checkpoint that is no amount makes the checkpoint unusable, even
    sealed anew: the fold replays from the first line (no error reaches the reader)."""
    monkeypatch.setattr(ckpt, "EVERY", 10)
    ledger = await tracked_ledger(jobs)
    load(ledger, statuses=False)
    path = ckpt.path_for(ledger, False)
    data = orjson.loads(path.read_bytes().partition(b"\n")[2])
    costs = data["view"]["groups"]["cost"]
    costs[next(i for i, c in enumerate(costs) if c is not None)] = ["NaN?", "USD"]
    body = orjson.dumps(data)
    path.write_bytes(hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    assert ckpt.read(ledger, statuses=False) is None
    assert load(ledger, statuses=False) == replay(ledger, statuses=False)


async def test_a_ledger_edited_in_place_reports_what_the_file_says(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit far before the checkpoint's offset that keeps the ledger's length (a status
    ``delivered`` turned into ``sent``): the checkpoint no longer counts, and the report says
    what the file says."""
    monkeypatch.setattr(ckpt, "EVERY", 10)
    ledger = await tracked_ledger(jobs)
    before = summarize(ledger)  # leaves the checkpoint
    assert ckpt.path_for(ledger, True).exists()
    saved = ledger.read_bytes()
    at = saved.index(b'"status":"delivered"')
    assert len(saved) - at > 4096  # beyond any window near the offset
    ledger.write_bytes(saved[:at] + b'"status":"sent"     ' + saved[at + 20 :])
    assert len(ledger.read_bytes()) == len(saved)
    after = summarize(ledger)
    assert after.delivery["delivered"] == before.delivery["delivered"] - 1
    assert load(ledger) == replay(ledger, statuses=True)


@pytest.mark.parametrize("damage", ["random bytes", "one byte flipped", "cut short", "empty"])
async def test_a_damaged_checkpoint_is_ignored(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """A checkpoint of random bytes, with one byte changed, cut short or empty, is ignored
    without an error: the fold replays and leaves a sound checkpoint again."""
    monkeypatch.setattr(ckpt, "EVERY", 10)
    ledger = await tracked_ledger(jobs)
    load(ledger)
    path = ckpt.path_for(ledger, True)
    sound = path.read_bytes()
    if damage == "random bytes":
        path.write_bytes(random.Random(7).randbytes(len(sound)))
    elif damage == "one byte flipped":
        at = len(sound) // 2
        path.write_bytes(sound[:at] + bytes([sound[at] ^ 1]) + sound[at + 1 :])
    elif damage == "cut short":
        path.write_bytes(sound[: len(sound) // 2])
    else:
        path.write_bytes(b"")
    assert ckpt.read(ledger, statuses=True) is None
    assert load(ledger) == replay(ledger, statuses=True)
    assert path.read_bytes() == sound


async def test_a_checkpoint_keeps_each_number_once(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A view read from a checkpoint holds each number once: the statuses' numbers are the
    groups' own strings, and a report that moved nobody never builds the statuses."""
    monkeypatch.setattr(ckpt, "EVERY", 10)
    ledger = await tracked_ledger(jobs)
    load(ledger)  # leaves the checkpoint
    view = load(ledger)
    assert waiting(view) == {}
    assert view._known is None  # a report that moved nobody looks at no status
    members = {id(p) for rec in view.groups.values() for p in rec.to}
    assert view.known
    assert all(id(p) in members for p in view.known)
    assert view == replay(ledger, statuses=True)


def test_a_checkpoint_keeps_statuses_of_numbers_in_two_groups_and_in_none() -> None:
    """A number sent in two groups (moved out of the first), a status of a number in no
    group, and a message id two groups were given: read back from a checkpoint, the view
    is the one saved."""
    view = LedgerView()
    a, b, c, stray = "+12125550101", "+12125550102", "+12125550103", "+12125550199"
    view.apply(ev.Sent("g1", (a, b), message_id="m1", statuses={a: "queued", b: "sent"}))
    view.apply(ev.Status("g1", a, "delivery_failed", message_id="own-a", at="2026-01-01T00:00Z"))
    view.apply(ev.Moved("g1", (a,), code="40002", after=5.0))
    view.apply(ev.Sent("g2", (a, c), message_id="m1"))
    view.apply(ev.Status("g2", c, "delivered", message_id="own-c"))
    view.apply(ev.Status("g9", stray, "delivered", at="2026-01-02T00:00Z"))
    view.apply(ev.Attempt("g3", ("+12125550104",)))
    again = ckpt.from_state(orjson.loads(orjson.dumps(ckpt.to_state(view))))
    assert again.not_received() == view.not_received()
    assert again.known == view.known
    assert (
        again.by_message_id
        == view.by_message_id
        == {
            "m1": "g2",
            "own-a": "g1",
            "own-c": "g2",
        }
    )
    assert again == view


def test_a_checkpoint_keeps_the_exclude_sent_ledgers_and_each_senders_queue() -> None:
    """The ledgers a run that sent left rows out by (with their campaigns, or none recorded),
    the latest run's not yet sent by, and each sender's queue at Telnyx: read back from a
    checkpoint, the view is the one saved."""
    view = LedgerView()
    view.apply(
        ev.RunStarted(
            1, "2026-01-01T00:00:00Z", excluded_from=("/l/a.jsonl",), excluded_campaigns=("c-a",)
        )
    )
    view.apply(ev.Attempt("g1", ("+12125550101",), from_="+12125550001"))
    view.apply(
        ev.Sent(
            "g1",
            ("+12125550101",),
            message_id="m1",
            from_="+12125550001",
            wait_seconds=30.0,
            time="2026-01-01T00:00:01Z",
        )
    )
    view.apply(ev.RunStarted(2, "2026-01-01T01:00:00Z", excluded_from=("/l/b.jsonl",)))
    assert view.sent_excluded_from == (("/l/a.jsonl", "c-a"),)
    assert view.queued_until == {"+12125550001": pytest.approx(1767225631.0)}
    again = ckpt.from_state(orjson.loads(orjson.dumps(ckpt.to_state(view))))
    assert again == view
    again.apply(ev.Attempt("g2", ("+12125550102",)))
    assert again.sent_excluded_from == (("/l/a.jsonl", "c-a"), ("/l/b.jsonl", ""))
