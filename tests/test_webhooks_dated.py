"""`webhooks --job`: one receiver for a job whose ledger is a new one each day (``{date}``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bulk_mms.cli import main
from bulk_mms.config import JobConfig, load_job
from bulk_mms.errors import LedgerError
from bulk_mms.ledger import LedgerStore, Location, Sent, open_store
from bulk_mms.ledger.store import exists
from bulk_mms.models import Group, MessageBody
from bulk_mms.runner import run_job
from bulk_mms.signals import Stop, StopReason
from bulk_mms.suppression import Suppressed
from bulk_mms.testing import ledger_events
from bulk_mms.webhooks import (
    DAYS_BACK,
    JobReceiver,
    days,
    load_public_key,
)
from bulk_mms.webhooks.base import LATE_POLL_S
from bulk_mms.webhooks.receiver import LEARN_WINDOW_S
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory
from tests.test_webhooks import (
    PUBLIC_B64,
    Gate,
    counted_reads,
    event,
    inbound,
    pollers,
    posted,
    serving,
    signed,
    status_lines,
)

CHICAGO = dt.timezone(dt.timedelta(hours=-6))  # America/Chicago in November (CST)
#: 23:59:00 on 24 November 2026 in Chicago: a minute before the date changes.
LATE_ON_24TH = dt.datetime(2026, 11, 24, 23, 59, tzinfo=CHICAGO)


def dated_job(jobs: JobFactory) -> JobConfig:
    """A job of 8 people in groups of 4 whose ledger is a new one each day, in Chicago."""
    jobs.people(8)
    return jobs.job(
        extra='group_size = 4\nledger = "ledgers/{name}-{date}.jsonl"\ntimezone = "America/Chicago"'
    )


class Sends:
    """The job's runs, one a day, through one client (so each send's message id is its own,
    the same people texted each day): what each day's run sent."""

    def __init__(self, job: JobConfig) -> None:
        self.job = job
        self.client = FakeClient()

    async def run_on(self, when: dt.datetime) -> tuple[Path, list[tuple[Group, str]]]:
        """The job run as of ``when`` (its ``{date}`` ledger): the ledger, and each group
        sent with the message id its send was answered with."""
        day = load_job(self.job.path, now=when)
        before = len(self.client.calls)
        await run_job(day, FAST, self.client, clock=FakeClock())
        sent = self.client.calls[before:]
        return day.ledger, [(g, f"msg-{g.id}-{before + i}") for i, g in enumerate(sent)]


def finalized(sent: tuple[Group, str], status: str) -> dict[str, Any]:
    """A message.finalized for every member of a group sent."""
    return event("message.finalized", sent[0], sent[1], status)


async def post_at(
    http: TestClient[Any, Any], clock: FakeClock, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """``body`` signed as Telnyx would at the receiver's time, and posted: status and answer."""
    raw, headers = signed(body, age=time.time() - clock.wall())
    resp = await http.post("/hooks", data=raw, headers=headers)
    return resp.status, dict(await resp.json()) if resp.status == 200 else {}


@pytest.fixture
async def served(
    jobs: JobFactory, tmp_path: Path
) -> AsyncIterator[tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig]]:
    """A receiver of a dated job, its clock at 23:59 on the 24th in Chicago, listening."""
    job = dated_job(jobs)
    clock = FakeClock(wall=LATE_ON_24TH.timestamp())
    receiver = JobReceiver(
        job.ledger_on,
        job.zone,
        load_public_key(PUBLIC_B64),
        clock=clock,
        suppressed=Suppressed(tmp_path / "stops.txt"),
    )
    async with TestClient(TestServer(receiver.app())) as http:
        yield receiver, http, clock, job
    await receiver.close()


def recipients(path: Path) -> list[str]:
    return sorted(e["recipient"] for e in status_lines(path))


async def test_reports_of_yesterdays_and_todays_messages_go_to_their_own_ledgers(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig],
) -> None:
    """One receiver records a report of the 23rd's message in the 23rd's ledger and one of the
    24th's in the 24th's, the same people texted both days; a redelivery is recorded once."""
    receiver, http, clock, job = served
    sends = Sends(job)
    older, sent_23 = await sends.run_on(LATE_ON_24TH - dt.timedelta(days=1))
    newer, sent_24 = await sends.run_on(LATE_ON_24TH)
    assert set(sent_23[0][0].to) == set(sent_24[0][0].to)  # only the message id differs
    todays = finalized(sent_24[0], "delivery_failed")
    assert (await post_at(http, clock, finalized(sent_23[0], "delivered")))[1]["recorded"] == 4
    assert (await post_at(http, clock, todays))[1]["recorded"] == 4
    assert (await post_at(http, clock, todays))[1] == {"ok": True, "duplicate": True}
    assert [e["status"] for e in status_lines(older)] == ["delivered"] * 4
    assert [e["status"] for e in status_lines(newer)] == ["delivery_failed"] * 4
    assert receiver.recorded == 8
    assert receiver.unmatched == 0


async def test_a_receiver_started_before_the_days_ledger_records_it_once_the_run_begins_it(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig],
) -> None:
    """No ledger of the job exists when the receiver starts; the day's run then sends, and the
    receiver records its reports: one that comes after the run's `sent` line at once, one
    that beats it once the line lands."""
    receiver, http, clock, job = served
    await receiver.roll()
    assert receiver.ledgers == {}
    today, sent = await Sends(job).run_on(LATE_ON_24TH)
    assert (await post_at(http, clock, finalized(sent[0], "delivered")))[1]["recorded"] == 4
    late = Group("late-group", 9, ("+13125550111",), (9,), sent[0][0].message)
    answer = await post_at(http, clock, event("message.sent", late, "late-msg", "sent"))
    assert answer[1]["pending"] == 1
    store = open_store(today, "append")
    store.append_now(Sent(late.id, late.to, late.seq, message_id="late-msg", time="x"))
    store.close_sync()
    await receiver.settle()
    assert recipients(today) == sorted([*sent[0][0].to, "+13125550111"])
    assert receiver.unmatched == 0


async def test_the_date_rolling_over_while_it_serves(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig],
) -> None:
    """Past midnight the new date's ledger is taken in once its run begins it, the day
    before's stays open for its late reports, and a ledger past the horizon is closed: its
    reports are then counted unmatched, never written elsewhere."""
    receiver, http, clock, job = served
    sends = Sends(job)
    on_24th, sent_24 = await sends.run_on(LATE_ON_24TH)
    await receiver.roll()
    assert list(receiver.ledgers) == [str(on_24th)]
    clock.step_wall(120)  # 00:01 on the 25th
    on_25th, sent_25 = await sends.run_on(LATE_ON_24TH + dt.timedelta(minutes=2))
    assert on_25th != on_24th
    for body in (finalized(sent_25[1], "delivered"), finalized(sent_24[1], "delivery_failed")):
        assert (await post_at(http, clock, body))[1]["recorded"] == 4
    assert [e["status"] for e in status_lines(on_24th)] == ["delivery_failed"] * 4
    assert [e["status"] for e in status_lines(on_25th)] == ["delivered"] * 4
    clock.step_wall(DAYS_BACK * 86_400)  # the 24th is now past the horizon, the 25th is not
    answer = await post_at(http, clock, finalized(sent_24[0], "delivered"))
    assert answer[1] == {"ok": True, "recorded": 0, "pending": 4}
    await receiver.settle()
    assert list(receiver.ledgers) == [str(on_25th)]
    assert receiver.unmatched == 1
    assert len(status_lines(on_24th)) == 4
    assert receiver.recorded == 8


async def test_a_stop_goes_on_the_list_once_whatever_the_ledgers(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig], tmp_path: Path
) -> None:
    """With two days' ledgers open, an inbound STOP is one entry on the suppression list."""
    receiver, http, clock, job = served
    sends = Sends(job)
    await sends.run_on(LATE_ON_24TH - dt.timedelta(days=1))
    await sends.run_on(LATE_ON_24TH)
    await receiver.roll()
    assert len(receiver.ledgers) == 2
    assert (await post_at(http, clock, inbound("STOP")))[1]["suppressed"] is True
    assert (tmp_path / "stops.txt").read_text().count("+12125550002") == 1


def test_ledger_on_fills_the_jobs_template_for_any_day(jobs: JobFactory) -> None:
    """A job's ledger for a day is the one its run that day writes: a file, or a database's
    named ledger; an undated ledger is the same every day."""
    job = dated_job(jobs)
    day = dt.date(2026, 11, 23)
    assert job.ledger_on(day) == load_job(job.path, now=LATE_ON_24TH - dt.timedelta(days=1)).where
    db = jobs.job(extra='ledger = "postgresql://u@h/db?ledger={name}-{date}"')
    assert db.ledger_on(day) == "postgresql://u@h/db?ledger=test-job-2026-11-23"
    assert jobs.job().ledger_on(day) == jobs.root / "ledgers" / "test-job.jsonl"


def test_cli_takes_a_job_or_a_ledger_not_both(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`webhooks --job JOB.toml` serves the job's ledgers with the settings' list; with a
    LEDGER too, or with neither, it is one line naming the choice (exit 2)."""
    job = dated_job(jobs)
    given: dict[str, Any] = {}

    async def serve(served: JobConfig, *args: Any, suppressed: Suppressed, **kw: Any) -> None:
        given["job"], given["list"] = served.path, suppressed.path

    monkeypatch.setenv("TELNYX_PUBLIC_KEY", PUBLIC_B64)
    monkeypatch.setattr("bulk_mms.webhooks.serve_webhooks", serve)
    settings = jobs.root / "settings.toml"
    settings.write_text('[suppression]\nfile = "stops.txt"\n')
    argv = ["webhooks", "--job", str(job.path), "--listen", "127.0.0.1:0"]
    assert main([*argv, "--config", str(settings)]) == 0
    assert given == {"job": job.path, "list": jobs.root / "stops.txt"}
    assert main([*argv, str(jobs.root / "l.jsonl")]) == 2
    assert main(["webhooks", "--listen", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert "--job" in err[0]
    assert "LEDGER" in err[1]


async def test_serve_webhooks_of_a_job_listens_before_the_days_first_run(jobs: JobFactory) -> None:
    """Listening on port 0 before the day's run has begun its ledger, the run's reports are
    recorded in it; the receiver stops with its counts."""
    job = dated_job(jobs)
    stop = Stop()
    server, ready = serving(job, stop)
    address = await ready
    today, sent = await Sends(job).run_on(dt.datetime.now(dt.UTC))
    raw, headers = signed(finalized(sent[1], "delivered"))
    assert await posted(address, raw, headers) == 200
    stop.request(StopReason.SIGTERM)
    receiver = await server
    assert receiver.recorded == 4
    assert recipients(today) == sorted(sent[1][0].to)


async def test_a_jobs_dated_database_ledgers_each_record_their_own_reports(
    jobs: JobFactory, database: str
) -> None:
    """On a database whose ledger is named with the date (``?ledger={name}-{date}``), one
    receiver records yesterday's and today's reports each in its own day's ledger."""
    jobs.people(8)
    job = jobs.job(
        extra=f'group_size = 4\nledger = "{database}?ledger={{name}}-{{date}}"\n'
        'timezone = "America/Chicago"'
    )
    now = dt.datetime.now(dt.UTC)
    sends = Sends(job)
    _, sent_before = await sends.run_on(now - dt.timedelta(days=1))
    _, sent_today = await sends.run_on(now)
    clock = FakeClock()
    receiver = JobReceiver(job.ledger_on, job.zone, load_public_key(PUBLIC_B64), clock=clock)
    async with TestClient(TestServer(receiver.app())) as http:
        for sent, status in ((sent_before[0], "delivered"), (sent_today[0], "delivery_failed")):
            assert (await post_at(http, clock, finalized(sent, status)))[1]["recorded"] == 4
    await receiver.close()
    for day, status in ((now - dt.timedelta(days=1), "delivered"), (now, "delivery_failed")):
        where = load_job(job.path, now=day).where
        assert isinstance(where, str)
        assert where.endswith(f"-{day.astimezone(job.zone).date()}")
        statuses = [e["status"] for e in ledger_events(where) if e["event"] == "status"]
        assert statuses == [status] * 4


def test_cli_serves_the_ledger_the_runs_take_from_the_variable(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``$BULK_MMS_LEDGER_URL`` set, `webhooks --job` serves the ledger it names every
    day, as the runs take it; one naming no ledger is refused for a ``{date}`` job (exit 2)."""
    job = dated_job(jobs)
    served: list[object] = []

    async def serve(given: JobConfig, *args: Any, **kw: Any) -> None:
        served.extend(given.ledger_on(dt.date(2026, 11, d)) for d in (23, 24))

    monkeypatch.setenv("TELNYX_PUBLIC_KEY", PUBLIC_B64)
    monkeypatch.setattr("bulk_mms.webhooks.serve_webhooks", serve)
    monkeypatch.setattr("bulk_mms.commands.delivery.suppression_for", lambda *a: None)
    argv = ["webhooks", "--job", str(job.path), "--listen", "127.0.0.1:0"]
    monkeypatch.setenv("BULK_MMS_LEDGER_URL", "postgresql://u@h/db?ledger=all-days")
    assert main(argv) == 0
    assert served == ["postgresql://u@h/db?ledger=all-days"] * 2
    monkeypatch.setenv("BULK_MMS_LEDGER_URL", "postgresql://u@h/db")
    assert main(argv) == 2
    assert "BULK_MMS_LEDGER_URL" in capsys.readouterr().err


async def test_a_report_no_open_ledger_knows_gets_503_while_a_days_ledger_cannot_be_opened(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A day's ledger that exists but cannot be opened now (its database down, say) may have
    sent the message: its report gets 503, never a 2xx that drops it, and the redelivery once
    the ledger opens is recorded there."""
    receiver, http, clock, job = served
    older, sent_23 = await Sends(job).run_on(LATE_ON_24TH - dt.timedelta(days=1))

    def unavailable(where: object, mode: str) -> LedgerStore:
        raise LedgerError(str(where), "cannot be reached now")

    monkeypatch.setattr(days, "open_store", unavailable)
    body = finalized(sent_23[0], "delivered")
    assert (await post_at(http, clock, body))[0] == 503
    monkeypatch.setattr(days, "open_store", open_store)
    clock.advance(LATE_POLL_S)  # the next look for ledgers is due
    assert (await post_at(http, clock, body))[1]["recorded"] == 4
    await receiver.settle()
    assert recipients(older) == sorted(sent_23[0][0].to)
    assert receiver.unmatched == 0


async def test_the_events_no_ledger_knew_are_remembered_for_the_horizon_only(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig],
) -> None:
    """Weeks of events for other apps' messages do not pile up: an event no ledger knew is a
    duplicate when redelivered within the horizon, and forgotten past it."""
    receiver, http, clock, _ = served
    stranger = Group("other-app", 1, ("+13125550111",), (1,), MessageBody("+12125550100"))
    first = event("message.finalized", stranger, "other-msg-1", "delivered")
    assert (await post_at(http, clock, first))[1]["pending"] == 1
    assert (await post_at(http, clock, first))[1] == {"ok": True, "duplicate": True}
    await receiver.settle()
    clock.advance(LEARN_WINDOW_S + 1)
    assert (await post_at(http, clock, first))[1]["pending"] == 1  # forgotten: looked for anew
    await receiver.settle()
    assert receiver.unmatched == 2


async def test_a_message_sent_into_the_day_befores_ledger_is_reported_on_for_72_hours(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig],
) -> None:
    """A run on the 24th that finishes the 23rd's campaign (`run` after midnight) sends into the
    23rd's ledger: a report 71 hours after that send, on the 27th, is recorded there."""
    receiver, http, clock, job = served
    on_23rd, sent = await Sends(job).run_on(LATE_ON_24TH - dt.timedelta(days=1))
    clock.step_wall(71 * 3600)  # 22:59 on the 27th: 71 h after the 24th's 23:59
    assert (await post_at(http, clock, finalized(sent[0], "delivered")))[1]["recorded"] == 4
    assert recipients(on_23rd) == sorted(sent[0][0].to)
    assert receiver.unmatched == 0


async def test_an_empty_ledger_of_the_job_is_one_not_begun_yet(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig],
) -> None:
    """A day's ledger file a run has created and written nothing to yet (or never will: it
    stopped there) sent nothing: an event no ledger knows is answered and looked for, not
    refused with 503 as for a ledger that cannot be opened."""
    receiver, http, clock, job = served
    empty = job.ledger_on(LATE_ON_24TH.date())
    assert isinstance(empty, Path)
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.touch()
    stranger = Group("other-app", 1, ("+13125550111",), (1,), MessageBody("+12125550100"))
    body = event("message.finalized", stranger, "other-msg-1", "delivered")
    assert (await post_at(http, clock, body))[1]["pending"] == 1
    await receiver.settle()
    assert receiver.unmatched == 1


async def test_a_ledger_begun_since_is_opened_and_read_off_the_event_loop(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A day's ledger taken in while the receiver serves is opened and folded off the event
    loop (a large one takes seconds; Telnyx wants a 2xx within 2 s), and opened once however
    many requests look for it meanwhile."""
    receiver, http, clock, job = served
    _, sent = await Sends(job).run_on(LATE_ON_24TH)
    folds: list[bool] = []

    def opening(where: Any, mode: Any) -> LedgerStore:
        store = open_store(where, mode)
        fold = store.fold

        def folding() -> Any:
            folds.append(asyncio._get_running_loop() is not None)  # on the loop's thread?
            return fold()

        monkeypatch.setattr(store, "fold", folding)
        return store

    monkeypatch.setattr(days, "open_store", opening)
    answers = await asyncio.gather(*(post_at(http, clock, finalized(s, "delivered")) for s in sent))
    assert [status for status, _ in answers] == [200, 200]
    assert folds == [False]
    assert receiver.recorded == 8


def stranger_event(n: int = 1) -> dict[str, Any]:
    """A report of another app's message (``other-msg-{n}``) to a number none of the job's
    ledgers texted."""
    stranger = Group("other-app", 1, ("+13125550111",), (1,), MessageBody("+12125550100"))
    return event("message.finalized", stranger, f"other-msg-{n}", "delivered")


@pytest.mark.parametrize("slow", ["appended since", "a missing date's ledger"])
async def test_a_known_report_is_answered_while_another_waits_on_a_slow_read(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig],
    monkeypatch: pytest.MonkeyPatch,
    slow: str,
) -> None:
    """A report no open ledger knows makes the receiver read, in a worker thread, what was
    appended to today's ledger since, then look whether the other dates' ledgers exist (a
    database's: a connection each); while that read or check is slow, a report of a message
    today's ledger knows is recorded and answered."""
    receiver, http, clock, job = served
    today, sent = await Sends(job).run_on(LATE_ON_24TH)
    await receiver.roll()
    gate = Gate()
    if slow == "appended since":
        ((_, ledger),) = receiver.ledgers.values()
        new_events = ledger.store.new_events

        def reading() -> Any:
            gate.hold()
            return new_events()

        monkeypatch.setattr(ledger.store, "new_events", reading)
        monkeypatch.setattr(ledger.store, "may_have_new", lambda: True)  # as a database's
    else:

        def checking(where: Location) -> bool:
            gate.hold()
            return exists(where)

        monkeypatch.setattr(days, "exists", checking)
    unknown = asyncio.create_task(post_at(http, clock, stranger_event()))
    await gate.begun()
    assert (await post_at(http, clock, finalized(sent[0], "delivered")))[1]["recorded"] == 4
    assert not unknown.done()
    gate.released.set()
    assert (await unknown)[1]["pending"] == 1
    await receiver.settle()
    assert not any(gate.on_loop)
    assert recipients(today) == sorted(sent[0][0].to)
    assert receiver.unmatched == 1


async def test_the_events_no_ledger_knew_are_remembered_up_to_a_bound(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood of other apps' events does not grow the receiver without limit: past
    ``ANSWERED_MAX`` the oldest is forgotten first (its redelivery is looked for anew), and
    the newest are still duplicates."""
    receiver, http, clock, _ = served
    monkeypatch.setattr(days, "ANSWERED_MAX", 2)
    flood = [stranger_event(n) for n in range(3)]
    for body in flood:
        assert (await post_at(http, clock, body))[1]["pending"] == 1
    for body in flood[:0:-1]:
        assert (await post_at(http, clock, body))[1] == {"ok": True, "duplicate": True}
    assert (await post_at(http, clock, flood[0]))[1]["pending"] == 1  # forgotten
    await receiver.settle()
    assert receiver.unmatched == 4


async def test_a_ledger_being_opened_when_the_receiver_closes_is_closed(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A day's ledger still being opened in its worker thread when the receiver shuts down
    (the request that wanted it cancelled) is closed before ``close`` returns, not left open
    until the process exits; no other date's is opened once closing began."""
    receiver, _, _, job = served
    sends = Sends(job)
    await sends.run_on(LATE_ON_24TH - dt.timedelta(days=1))
    newer, _ = await sends.run_on(LATE_ON_24TH)
    gate, opened, closed = Gate(), list[Location](), list[Location]()

    def opening(where: Location, mode: Any) -> LedgerStore:
        opened.append(where)
        gate.hold()
        store = open_store(where, mode)
        close_sync = store.close_sync

        def closing() -> None:
            closed.append(where)
            close_sync()

        monkeypatch.setattr(store, "close_sync", closing)
        return store

    monkeypatch.setattr(days, "open_store", opening)
    roll = asyncio.create_task(receiver.roll())
    await gate.begun()
    roll.cancel()
    shutdown = asyncio.create_task(receiver.close())
    await asyncio.wait([shutdown], timeout=0.01)
    assert not shutdown.done()  # it waits for the ledger being opened
    gate.released.set()
    await shutdown
    assert roll.cancelled()
    assert opened == [newer]
    assert closed == [newer]
    assert receiver.ledgers == {}


async def test_a_jobs_events_no_ledger_knows_are_looked_for_with_one_read_of_each_a_look(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twenty events no open ledger knows make one task that looks for them all, not a task
    each: each look reads each of the two days' ledgers once, however many wait (stores
    that cannot tell whether they grew, as a database's)."""
    receiver, http, clock, job = served
    sends = Sends(job)
    await sends.run_on(LATE_ON_24TH - dt.timedelta(days=1))
    await sends.run_on(LATE_ON_24TH)
    await receiver.roll()
    reads = {name: counted_reads(monkeypatch, r.store) for name, (_, r) in receiver.ledgers.items()}
    assert len(reads) == 2
    for _, ledger in receiver.ledgers.values():
        monkeypatch.setattr(ledger.store, "may_have_new", lambda: True)
    for n in range(20):
        assert (await post_at(http, clock, stranger_event(n)))[1]["pending"] == 1
    assert pollers() == 1
    before = {name: len(read) for name, read in reads.items()}
    await asyncio.sleep(10 * LATE_POLL_S)  # ten looks, on the virtual loop clock
    assert all(9 <= len(reads[name]) - before[name] <= 11 for name in reads)
    await receiver.settle()
    assert receiver.unmatched == 20


async def test_a_jobs_event_past_the_bound_gets_503_and_is_not_taken_for_answered(
    served: tuple[JobReceiver, TestClient[Any, Any], FakeClock, JobConfig],
) -> None:
    """A job's receiver looking for as many events as its bound allows answers one more
    that no open ledger knows 503 (Telnyx delivers it again), and does not remember it as
    answered: its redelivery, once there is room, is looked for, not taken for a duplicate."""
    receiver, http, clock, _ = served
    receiver.late_max = 1
    assert (await post_at(http, clock, stranger_event(1)))[1]["pending"] == 1
    refused = stranger_event(2)
    assert (await post_at(http, clock, refused))[0] == 503
    await receiver.settle()
    assert (await post_at(http, clock, refused))[1]["pending"] == 1
    await receiver.settle()
    assert receiver.unmatched == 2
