"""The held spool: a report answered 200 before its group's `sent` line lands survives the
receiver's stop, a spool that cannot take one answers 503, and the spool stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from msgspec.structs import replace
from structlog.testing import capture_logs

from bulk_mms.clock import iso
from bulk_mms.config import JobConfig
from bulk_mms.config.folders import user_folder
from bulk_mms.errors import LedgerError
from bulk_mms.ledger import Location, open_store, read_events
from bulk_mms.ledger.events import Sent, Status
from bulk_mms.ledger.store import named
from bulk_mms.models import Group
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.signals import Stop, StopReason
from bulk_mms.track import track_ledger
from bulk_mms.webhooks import spool as spool_module
from bulk_mms.webhooks.spool import HELD_MAX_AGE_S, Held, Spool, SpoolFull, spool_for
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, sent_ledger
from tests.test_webhooks import (
    append_late_group,
    beating,
    disk_full_for,
    event,
    post_signed,
    posted,
    receiver_for_ledger,
    serving,
    signed,
    status_lines,
    stranger,
)
from tests.test_webhooks_dated import Sends, dated_job


def held_lines(path: Path) -> list[bytes]:
    """The lines of the spool of the ledger at ``path`` (none when it has no file)."""
    spool = spool_for(path)
    return spool.read_bytes().splitlines() if spool.exists() else []


async def served_once(path: Location | JobConfig, *bodies: dict[str, Any]) -> tuple[list[int], Any]:
    """``webhooks LEDGER`` started, sent ``bodies``, then stopped as by SIGTERM: what each
    was answered, and the receiver."""
    stop = Stop()
    server, ready = serving(path, stop)
    address = await ready
    answers = []
    for body in bodies:
        raw, headers = signed(body)
        answers.append(await posted(address, raw, headers))
    stop.request(StopReason.SIGTERM)
    return answers, await server


async def test_a_report_answered_then_cut_short_by_a_stop_is_recorded_after_a_restart(
    jobs: JobFactory,
) -> None:
    """A report answered 200 before its `sent` line, the receiver stopped before the line
    lands, is recorded by the receiver started after it has; the spool is then empty."""
    path, client = await sent_ledger(jobs, 4)
    like = client.calls[0]
    answers, first = await served_once(path, beating(like))
    assert answers == [200]
    assert (first.recorded, status_lines(path)) == (0, [])
    assert len(held_lines(path)) == 1
    append_late_group(path, like)  # the run's `sent` line, after the receiver stopped
    _, again = await served_once(path)
    assert again.recorded == 1
    assert [(e["group"], e["status"]) for e in status_lines(path)] == [("late-group", "delivered")]
    assert held_lines(path) == []


async def test_a_report_the_spool_cannot_take_gets_503_and_its_redelivery_is_held(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the spool's disk is full a report no ledger knows yet gets 503 (Telnyx delivers
    it again), never a 200 that could be lost; its redelivery, once space is back, is held,
    and recorded when its `sent` line lands."""
    path, client = await sent_ledger(jobs, 4)
    like = client.calls[0]
    receiver = await receiver_for_ledger(path, spool=Spool(spool_for(path), max_age_s=3600))
    disk_full_for(monkeypatch, b'"token"', 1)
    async with TestClient(TestServer(receiver.app())) as http:
        with capture_logs() as logs:
            assert (await post_signed(http, beating(like)))[0] == 503
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["webhook.held_failed"]
        assert held_lines(path) == []
        assert (await post_signed(http, beating(like)))[1]["pending"] == 1
        append_late_group(path, like)
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert [(e["group"], e["status"]) for e in status_lines(path)] == [("late-group", "delivered")]
    assert held_lines(path) == []


async def test_a_spool_past_its_bound_answers_503(jobs: JobFactory) -> None:
    """A report that would grow the spool past its bound gets 503 while none held is settled."""
    path, client = await sent_ledger(jobs, 4)
    spool = Spool(spool_for(path), max_age_s=3600)
    receiver = await receiver_for_ledger(path, spool=spool)
    async with TestClient(TestServer(receiver.app())) as http:
        first = await post_signed(http, stranger(0, client.calls[0]))
        spool.max_bytes = spool.path.stat().st_size * 3 // 2  # room for half a report more
        second = await post_signed(http, stranger(1, client.calls[0]))
    await receiver.close()
    await receiver.store.close()
    assert (first[0], second[0]) == (200, 503)
    assert len(held_lines(path)) == 1


async def test_reports_looked_for_their_whole_window_leave_the_spool(jobs: JobFactory) -> None:
    """Other apps' reports, looked for their whole window by a running receiver, are counted
    unmatched and taken out of the spool, as they were never kept past it before."""
    path, client = await sent_ledger(jobs, 4)
    receiver = await receiver_for_ledger(path, spool=Spool(spool_for(path), max_age_s=3600))
    receiver.late_window_s = 1.0
    async with TestClient(TestServer(receiver.app())) as http:
        for n in range(3):
            assert (await post_signed(http, stranger(n, client.calls[0])))[0] == 200
        assert len(held_lines(path)) == 3
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert (receiver.unmatched, held_lines(path)) == (3, [])


async def test_a_report_held_past_the_bound_is_dropped_with_a_warning(jobs: JobFactory) -> None:
    """A spooled report held longer ago than the spool keeps one is dropped at the next start,
    with a warning, even once its message is known; a younger one is recorded."""
    path, client = await sent_ledger(jobs, 4)
    like = client.calls[0]
    receiver = await receiver_for_ledger(path)
    spool = Spool(spool_for(path), max_age_s=HELD_MAX_AGE_S)
    old, young = beating(like)["data"], beating(like)["data"]
    now = receiver.clock.wall()
    spool.hold(Held(spool.token(), old["id"], old["event_type"], old), now - HELD_MAX_AGE_S - 1)
    spool.hold(Held(spool.token(), young["id"], young["event_type"], young), now - 60)
    await receiver.close()
    await receiver.store.close()
    append_late_group(path, like)
    again = await receiver_for_ledger(path, spool=spool)
    with capture_logs() as logs:
        await again.replay_held()
    await again.close()
    await again.store.close()
    assert [e["id"] for e in logs if e["event"] == "webhook.held_expired"] == [old["id"]]
    assert [e["webhook_id"] for e in status_lines(path)] == [young["id"]]
    assert held_lines(path) == []


async def test_a_spool_line_cut_short_is_passed_over_and_taken_out(jobs: JobFactory) -> None:
    """A spool whose last line a crash cut short replays the whole lines before it."""
    path, client = await sent_ledger(jobs, 4)
    like = client.calls[0]
    answers, _ = await served_once(path, beating(like))
    assert answers == [200]
    with spool_for(path).open("ab") as f:
        f.write(b'{"token": "x", "id"')
    append_late_group(path, like)
    with capture_logs() as logs:
        _, again = await served_once(path)
    assert again.recorded == 1
    assert [e["line"] for e in logs if e["event"] == "webhook.held_unreadable"] == [2]
    assert held_lines(path) == []


async def test_a_spool_is_beside_its_ledger_or_job_file_and_never_a_ledgers_name(
    jobs: JobFactory,
) -> None:
    """A ledger's spool is ``LEDGER.jsonl.held`` (no ``*.jsonl`` the account's ledgers are
    looked for among), a job's receiver's ``JOB.toml.held``."""
    path, _ = await sent_ledger(jobs, 4)
    job = jobs.job()
    assert spool_for(job) == job.path.with_name(job.path.name + ".held")
    assert spool_for(path) == path.with_name(path.name + ".held")
    assert not spool_for(path).match("*.jsonl")


async def test_a_database_ledgers_report_cut_short_is_recorded_after_a_restart(
    jobs: JobFactory, database: str
) -> None:
    """On a PostgreSQL ledger the spool is in the user's data folder, and a report answered
    before its `sent` line and cut short by a stop is recorded after a restart all the same."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    job = replace(job, database=str(named(database, job.name)))
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    like = client.calls[0]
    answers, _ = await served_once(job.where, beating(like))
    assert answers == [200]
    assert spool_for(job.where).is_relative_to(user_folder("data"))
    assert len(spool_for(job.where).read_bytes().splitlines()) == 1
    late = Group("late-group", 9, ("+13125550111",), (9,), like.message)
    store = open_store(job.where, "append")
    store.append_now(Sent(late.id, late.to, late.seq, message_id="late-msg", time=iso(time.time())))
    store.close_sync()
    _, again = await served_once(job.where)
    assert again.recorded == 1
    statuses = [e for e in read_events(job.where) if isinstance(e, Status)]
    assert [(e.group, e.status) for e in statuses] == [("late-group", "delivered")]
    assert spool_for(job.where).read_bytes() == b""


async def test_a_jobs_report_cut_short_is_recorded_after_a_restart(jobs: JobFactory) -> None:
    """A job's receiver (dated ledgers) stopped after it answered a report no ledger knew yet
    holds it beside the job file; the receiver started after the day's run wrote the
    message's `sent` line records it in that day's ledger."""
    job = dated_job(jobs)
    today, sent = await Sends(job).run_on(dt.datetime.now(dt.UTC))
    late = Group("late-group", 9, ("+13125550111",), (9,), sent[0][0].message)
    answers, _ = await served_once(job, event("message.sent", late, "late-msg", "sent"))
    assert answers == [200]
    assert len(spool_for(job).read_bytes().splitlines()) == 1
    append_late_group(today, sent[0][0])
    _, again = await served_once(job)
    assert again.recorded == 1
    assert [(e["group"], e["status"]) for e in status_lines(today)] == [("late-group", "sent")]
    assert spool_for(job).read_bytes() == b""


async def test_track_records_the_held_reports_whose_message_the_ledger_now_knows(
    jobs: JobFactory,
) -> None:
    """A receiver stopped after it answered a report no ledger knew yet, and never started
    again: ``track``, once the `sent` line has landed, records the report and takes it out of
    the spool; another app's report stays held, and a receiver started later records nothing
    again."""
    path, client = await sent_ledger(jobs, 4)
    like = client.calls[0]
    answers, _ = await served_once(path, beating(like), stranger(0, like))
    assert answers == [200, 200]
    append_late_group(path, like)
    result = await track_ledger(path, FAST, client, clock=FakeClock())
    late = [(e["status"], e["source"]) for e in status_lines(path) if e["group"] == "late-group"]
    assert late == [("delivered", "webhook")]
    assert result.changes >= 1
    [left] = held_lines(path)
    assert orjson.loads(left)["data"]["payload"]["id"] == "other-0"
    _, again = await served_once(path)
    assert again.recorded == 0


async def test_a_held_report_both_track_and_a_receiver_apply_is_recorded_once(
    jobs: JobFactory,
) -> None:
    """A held report that ``track`` recorded and a receiver replays all the same (its spool
    line read before track settled it) writes no second status line; one both wrote at once
    (a race) counts as one."""
    path, client = await sent_ledger(jobs, 4)
    like = client.calls[0]
    answers, _ = await served_once(path, beating(like))
    assert answers == [200]
    spooled = spool_for(path).read_bytes()
    append_late_group(path, like)
    await track_ledger(path, FAST, client, clock=FakeClock())
    spool_for(path).write_bytes(spooled)  # as a receiver that read it before track settled it
    _, again = await served_once(path)
    assert again.recorded == 0
    assert [e["status"] for e in status_lines(path) if e["group"] == "late-group"] == ["delivered"]
    assert held_lines(path) == []
    once = summarize(path)
    line = next(
        x for x in path.read_bytes().splitlines() if b'"event":"status","group":"late-group"' in x
    )
    with path.open("ab") as f:
        f.write(line + b"\n")
    assert summarize(path) == once


async def test_a_receiver_without_a_public_key_takes_no_request(jobs: JobFactory) -> None:
    """A receiver made only to record its spool (``track``'s: no public key) answers a
    signed request 401, as one it cannot verify, and records nothing."""
    path, client = await sent_ledger(jobs, 4)
    receiver = await receiver_for_ledger(path)
    receiver.key = None
    async with TestClient(TestServer(receiver.app())) as http:
        answer = await post_signed(http, beating(client.calls[0]))
    await receiver.close()
    await receiver.store.close()
    assert (answer[0], receiver.recorded) == (401, 0)


def report(n: int) -> Held:
    """A held report ``ev-{n}`` of message ``msg-{n}`` (a spool's own token left to it)."""
    data = {"id": f"ev-{n}", "event_type": "message.finalized", "payload": {"id": f"msg-{n}"}}
    return Held(f"token-{n}", f"ev-{n}", "message.finalized", data)


@pytest.mark.parametrize("tail", [b'{"token": "x", "id"', b"\0\0\0\0"], ids=["cut", "nul"])
def test_a_line_cut_short_by_a_crash_swallows_no_report_held_after_it(
    tmp_path: Path, tail: bytes
) -> None:
    """A report held after a line a crash cut short (no line end, or NUL bytes) is a line of
    its own: both reports around it replay."""
    spool = Spool(tmp_path / "l.jsonl.held", max_age_s=3600)
    spool.hold(report(1), time.time())
    with spool.path.open("ab") as f:
        f.write(tail)
    spool.hold(report(2), time.time())
    assert [h.event_id for h in spool.replay(time.time())] == ["ev-1", "ev-2"]


def test_a_compaction_says_which_lines_it_drops_that_are_no_report(tmp_path: Path) -> None:
    """A whole line that is no report is dropped by the next compaction with a warning naming
    it, never silently; the reports not settled stay."""
    spool = Spool(tmp_path / "l.jsonl.held", max_age_s=3600)
    spool.hold(report(1), time.time())
    with spool.path.open("ab") as f:
        f.write(b'{"token": "x"}\n')
    spool.hold(report(2), time.time())
    spool.settle("token-1")
    with capture_logs() as logs:
        spool.compact()
    assert [e["line"] for e in logs if e["event"] == "webhook.held_dropped"] == [2]
    assert [h.event_id for h in spool.replay(time.time())] == ["ev-2"]


def failing_reads(monkeypatch: pytest.MonkeyPatch, receiver: Any, _: Path) -> None:
    """Every read of the receiver's ledger fails, as when its database is down."""

    async def read_late() -> None:
        raise LedgerError("ledger", "the database cannot be reached")

    monkeypatch.setattr(receiver, "_read_late", read_late)


def failing_records(monkeypatch: pytest.MonkeyPatch, receiver: Any, path: Path) -> None:
    """Every write of a report into the receiver's ledger fails, as on a full disk (the
    ledger read anew after each, as a served receiver's is)."""
    disk_full_for(monkeypatch, b'"webhook_id"', 1_000)
    receiver.reopen = functools.partial(open_store, path, "append")


@pytest.mark.parametrize("fault", [failing_reads, failing_records], ids=["read", "write"])
async def test_reports_a_receiver_could_not_look_for_or_record_stay_for_the_next(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, fault: Any
) -> None:
    """A report whose window ends while its ledger cannot be read, or its report written, is
    counted unmatched by this receiver but stays in the spool; the next receiver records it."""
    path, client = await sent_ledger(jobs, 4)
    like = client.calls[0]
    receiver = await receiver_for_ledger(path, spool=Spool(spool_for(path), max_age_s=3600))
    receiver.late_window_s = 1.0
    async with TestClient(TestServer(receiver.app())) as http:
        assert (await post_signed(http, beating(like)))[0] == 200
        append_late_group(path, like)
        fault(monkeypatch, receiver, path)
        await receiver.settle()
    await receiver.close()
    with contextlib.suppress(LedgerError):  # the store whose write failed says so again
        await receiver.store.close()
    monkeypatch.undo()
    assert (receiver.unmatched, len(held_lines(path))) == (1, 1)
    _, again = await served_once(path)
    assert again.recorded == 1
    assert held_lines(path) == []


async def test_reports_held_at_once_never_pass_late_max(jobs: JobFactory) -> None:
    """Reports whose holds are under way together take no more than ``late_max`` places: the
    one past it is refused before it is held."""
    path, client = await sent_ledger(jobs, 4)
    receiver = await receiver_for_ledger(path, spool=Spool(spool_for(path), max_age_s=3600))
    receiver.late_max = 2
    events = [stranger(n, client.calls[0])["data"] for n in range(3)]
    refused = await asyncio.gather(
        *(
            receiver.look_later(e["id"], e["event_type"], e, f"other-{n}", [])
            for n, e in enumerate(events)
        )
    )
    pending = len(receiver._late)
    await receiver.close()
    await receiver.store.close()
    assert [why is not None for why in refused] == [False, False, True]
    assert (pending, len(held_lines(path))) == (2, 2)


async def test_a_replay_looks_for_at_most_late_max_and_leaves_the_rest_held(
    jobs: JobFactory,
) -> None:
    """A receiver replays no more reports than it may look for at once; the rest stay in the
    spool, unsettled, for a receiver after it."""
    path, client = await sent_ledger(jobs, 4)
    spool = Spool(spool_for(path), max_age_s=3600)
    for n in range(3):
        data = stranger(n, client.calls[0])["data"]
        spool.hold(Held(spool.token(), data["id"], data["event_type"], data), time.time())
    receiver = await receiver_for_ledger(path, spool=spool)
    receiver.late_max = 2
    with capture_logs() as logs:
        await receiver.replay_held()
    pending = len(receiver._late)
    await receiver.close()
    await receiver.store.close()
    assert (pending, len(held_lines(path))) == (2, 3)
    assert [e["left"] for e in logs if e["event"] == "webhook.held_left"] == [1]


async def test_a_report_held_days_ago_is_still_recorded_when_its_sent_line_lands(
    jobs: JobFactory,
) -> None:
    """A report held four days ago (past the 72 h a recipient's id is learnt in, but a `sent`
    line a later run writes settling its group can still come) is recorded at a restart."""
    path, client = await sent_ledger(jobs, 4)
    like = client.calls[0]
    spool = Spool(spool_for(path), max_age_s=3600)
    data = beating(like)["data"]
    spool.hold(Held(spool.token(), data["id"], data["event_type"], data), time.time() - 4 * 86_400)
    append_late_group(path, like)
    _, again = await served_once(path)
    assert again.recorded == 1
    assert held_lines(path) == []


async def test_a_spool_that_cannot_be_locked_stops_the_receiver_at_its_start(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spool that cannot be written or locked (ENOLCK on NFS) stops the receiver before it
    listens, with a one-line ledger error naming the spool, not a 503 per report."""
    path, _ = await sent_ledger(jobs, 4)

    def flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr("bulk_mms.webhooks.spool.fcntl.flock", flock)
    stop = Stop()
    server, ready = serving(path, stop)
    first: list[asyncio.Future[Any]] = [server, ready]
    await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    stop.request(StopReason.SIGTERM)  # one that listened after all is stopped, and fails below
    with pytest.raises(LedgerError) as caught:
        await server
    assert not ready.done()
    assert str(spool_for(path)) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_hold_never_compacts_a_full_spool_and_the_next_compaction_makes_room(
    tmp_path: Path,
) -> None:
    """A report past the bound is refused (SpoolFull) without rewriting the spool in the
    request's path, however many are settled; the compaction after a look makes room."""
    spool = Spool(tmp_path / "l.jsonl.held", max_age_s=3600)
    spool.hold(report(1), time.time())
    spool.max_bytes = spool.path.stat().st_size * 3 // 2
    spool.settle("token-1")
    inode = spool.path.stat().st_ino
    with pytest.raises(SpoolFull):
        spool.hold(report(2), time.time())
    assert spool.path.stat().st_ino == inode
    assert spool.wants_compaction(2)  # at a look's end, though more are looked for
    spool.compact()
    spool.hold(report(2), time.time())
    assert [h.event_id for h in spool.replay(time.time())] == ["ev-2"]


async def test_the_spool_stays_within_its_bound_and_takes_reports_again_once_settled(
    jobs: JobFactory,
) -> None:
    """However many reports come, the spool's file never grows past its bound: past it they
    get 503; once those held are settled (looked for their whole window) it takes them again."""
    path, client = await sent_ledger(jobs, 4)
    spool = Spool(spool_for(path), max_age_s=3600)
    receiver = await receiver_for_ledger(path, spool=spool)
    receiver.late_window_s = 1.0
    sizes, answers = [], []
    async with TestClient(TestServer(receiver.app())) as http:
        answers.append((await post_signed(http, stranger(0, client.calls[0])))[0])
        spool.max_bytes = spool.path.stat().st_size * 5 // 2  # two reports, not three
        for n in range(1, 4):
            answers.append((await post_signed(http, stranger(n, client.calls[0])))[0])
            sizes.append(spool.path.stat().st_size)
        await receiver.settle()
        answers.append((await post_signed(http, stranger(4, client.calls[0])))[0])
        sizes.append(spool.path.stat().st_size)
        await receiver.settle()
    await receiver.close()
    await receiver.store.close()
    assert answers == [200, 200, 503, 503, 200]
    assert max(sizes) <= spool.max_bytes
    assert held_lines(path) == []


def test_folders_a_spool_makes_are_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spool whose folders are missing makes them, and syncs the folder of each it made as
    well as its own, so a crash does not take the file and its report away with them."""
    synced: list[Path] = []
    real = spool_module._sync_folder

    def sync(folder: Path) -> None:
        synced.append(folder)
        real(folder)

    monkeypatch.setattr(spool_module, "_sync_folder", sync)
    spool = Spool(tmp_path / "a" / "b" / "l.held", max_age_s=3600)
    spool.hold(report(1), time.time())
    assert set(synced) >= {tmp_path, tmp_path / "a", tmp_path / "a" / "b"}


def test_a_compaction_whose_folder_cannot_be_synced_still_counts_as_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compaction that renamed its file but cannot sync the folder raises nothing (the file
    is not as it was) and is not done again; the failure is logged."""
    spool = Spool(tmp_path / "l.held", max_age_s=3600)
    spool.hold(report(1), time.time())
    spool.hold(report(2), time.time())
    spool.settle("token-1")

    def sync(folder: Path) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(spool_module, "_sync_folder", sync)
    with capture_logs() as logs:
        spool.compact()
    assert [e["event"] for e in logs] == ["webhook.held_sync_failed"]
    assert not spool.wants_compaction(0)
    assert [h.event_id for h in spool.replay(time.time())] == ["ev-2"]


def test_compaction_files_left_by_processes_gone_are_removed_at_replay(tmp_path: Path) -> None:
    """A compaction's temporary file its process, killed, left behind is removed when the spool
    is replayed; a live process's is left alone."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    spool = Spool(tmp_path / "l.held", max_age_s=3600)
    spool.hold(report(1), time.time())
    stale = tmp_path / f"l.held.{int(gone.stdout)}.tmp"
    live = tmp_path / f"l.held.{os.getpid()}.tmp"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    spool.replay(time.time())
    assert (stale.exists(), live.exists()) == (False, True)


@pytest.mark.parametrize("dated", [False, True], ids=["ledger", "job"])
async def test_a_replayed_reports_redelivery_is_a_duplicate_not_held_again(
    jobs: JobFactory, dated: bool
) -> None:
    """A report replayed from the spool (its 200 may not have reached Telnyx before a crash)
    is a duplicate when Telnyx delivers it again: it is not held a second time."""
    target: Location | JobConfig
    if dated:
        target = dated_job(jobs)
        _, sent = await Sends(target).run_on(dt.datetime.now(dt.UTC))
        like = sent[0][0]
    else:
        target, client = await sent_ledger(jobs, 4)
        like = client.calls[0]
    body = stranger(0, like)
    spool = Spool(spool_for(target), max_age_s=3600)
    spool.hold(
        Held(spool.token(), body["data"]["id"], "message.finalized", body["data"]), time.time()
    )
    answers, _ = await served_once(target, body)
    assert answers == [200]
    assert len(spool_for(target).read_bytes().splitlines()) == 1
