"""Never twice without trusting the key: groups in doubt are settled by the API's records.

Against the fake API as Telnyx behaves (keys ignored), with connections reset after the server
took the message: nobody is accepted twice, and a plain rerun leaves everyone accepted exactly
once with nothing in doubt."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import msgspec
import msgspec.structs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from bulk_mms import runner
from bulk_mms.answers import parse_records
from bulk_mms.cli import main
from bulk_mms.client import AiohttpMmsClient
from bulk_mms.clock import CLOCK_SKEW_S, iso
from bulk_mms.config import JobConfig
from bulk_mms.csvfile import CAMPAIGN_COLUMN
from bulk_mms.errors import AmbiguousSendError, RateLimited, RecordsUnread, SendError, ServerError
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.ledger import (
    Attempt,
    Header,
    InDoubt,
    LedgerView,
    Moved,
    RunStarted,
    Sent,
    Status,
    load,
    open_store,
)
from bulk_mms.ledger.fold import GroupRecord
from bulk_mms.models import Group, MessageRecord, Money, SendReceipt
from bulk_mms.report import summarize
from bulk_mms.settle import Settler, Verdict, never_accepted
from bulk_mms.testing import FakeClient, FakeClock, ledger_events
from bulk_mms.track import track_ledger
from tests.conftest import FAST, JobFactory, crash_mid_send, groups_counted, numbers, ok_receipt
from tests.threaded import fake_api_thread

KEY = "KEY-settle"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    monkeypatch.setenv("TELNYX_API_KEY", KEY)


def faulty_job(
    jobs: JobFactory, n: int, faults: list[Fault], config: str = "[api]\nrecords_lag_s = 0\n"
) -> tuple[FakeTelnyx, JobConfig, list[str]]:
    """A fake API that misbehaves with ``faults``, a job of ``n`` people in groups of 4, and
    the command line that runs it under the settings ``config`` (less ``--base-url``)."""
    fake = FakeTelnyx(api_key=KEY)
    fake.faults.extend(faults)
    jobs.people(n)
    job = jobs.job(extra="group_size = 4")
    settings = jobs.root / "config.toml"
    settings.write_text(config)
    return fake, job, ["-q", "run", str(job.path), "--config", str(settings)]


def test_resets_after_acceptance_never_text_anyone_twice(jobs: JobFactory) -> None:
    """Drops after acceptance, keys ignored, default settings but records_lag_s = 0: each
    dropped group is looked up in the records and recorded sent, never resent; a plain rerun
    finds nothing left in doubt and everyone accepted exactly once."""
    faults = [Fault("drop_after"), Fault("drop_after"), Fault("drop_before")]
    config = "[api]\nrecords_lag_s = 0\n[retry]\nbackoff_initial = 0.01\n"
    fake, job, run = faulty_job(jobs, 40, faults, config)
    with fake_api_thread(fake) as url:
        first = main([*run, "--base-url", url])
        again = main([*run, "--base-url", url])
    assert fake.recipient_counts() == dict.fromkeys(numbers(40), 1)
    assert first in (0, 1)  # three answers lost in a row may stop it as the API being down
    assert again == 0
    report = summarize(job.ledger)
    assert report.recipient_states.sent == 40
    assert report.recipient_states.in_doubt == 0


def test_a_5xx_to_a_send_is_settled_by_the_records_not_repeated(jobs: JobFactory) -> None:
    """Keys ignored: a 502 after the server took a group and a 504 before it took another
    are both in doubt, never repeated blindly; the records settle them (sent, and sent
    again under a new key), and everyone is accepted exactly once, exit 0. A 503 (the
    server could not handle it) is retried at once."""
    faults = [Fault("status_after", 502), Fault("status", 504), Fault("status", 503)]
    fake, job, run = faulty_job(jobs, 16, faults)
    with fake_api_thread(fake) as url:
        code = main([*run, "--base-url", url])
    assert code == 0
    assert fake.recipient_counts() == dict.fromkeys(numbers(16), 1)
    assert len(fake.accepted) == 4
    assert summarize(job.ledger).recipient_states.sent == 16


def test_a_group_never_accepted_is_sent_again_under_a_new_key(jobs: JobFactory) -> None:
    """A request dropped before the server took it leaves no record: with the records
    complete (records_lag_s = 0) it is sent again in the same run, under a new key."""
    config = '[api]\nrecords_lag_s = 0\nidempotency = "untrusted"\n'
    fake, _, run = faulty_job(jobs, 4, [Fault("drop_before")], config)
    with fake_api_thread(fake) as url:
        code = main([*run, "--base-url", url])
    assert code == 0
    assert fake.recipient_counts() == dict.fromkeys(numbers(4), 1)
    keys = [r.idempotency_key for r in fake.accepted]
    assert len(keys) == 1


async def crashed_with_records(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> tuple[JobConfig, Group, Group, FakeClient, FakeClock]:
    """A job of two groups a crash left in doubt, a day on: the job, the group the API took
    (its record is served), the one it never took, the client serving the records, the clock."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 8")
    first = await crash_mid_send(job, monkeypatch, hanging=2)
    took, gone = first.calls[0], first.calls[1]
    later = FakeClock(wall=load(job.ledger).groups[took.id].last_try + 86_400)
    client = FakeClient(wall=later.wall)
    t0 = load(job.ledger).groups[took.id].last_try
    client.records += [  # Telnyx cuts one record per recipient of a group message
        MessageRecord(f"rec-{i + 1}", took.message.from_, p, t0 + 1) for i, p in enumerate(took.to)
    ]
    return job, took, gone, client, later


async def test_a_run_counts_a_settled_group_once(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group a crash left in doubt that the next run's records show accepted is counted
    already done, not sent by that run nor held; one they show never accepted is sent by it."""
    job, _, gone, client, later = await crashed_with_records(jobs, monkeypatch)
    s = await runner.run_job(job, FAST, client, clock=later)
    assert (s.sent_groups, s.skipped_groups, s.held_groups, s.in_doubt_groups) == (1, 1, 0, 0)
    assert [g.id for g in client.calls] == [gone.id]


async def test_a_group_resent_by_this_run_then_in_doubt_and_settled_is_its_send(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash's group the records show never accepted is sent again by this run; its answer
    is lost too, and the records settle it accepted before the run ends: this run's send,
    counted once, neither held nor in doubt."""
    job, took, gone, client, later = await crashed_with_records(jobs, monkeypatch)

    def lost(g: Group, n: int) -> SendReceipt | SendError:
        client.took(g, ok_receipt(g, n))  # the API takes it; the answer never comes back
        return AmbiguousSendError("the connection dropped after sending")

    client.handler = lost
    s = await runner.run_job(job, FAST, client, clock=later)
    assert (s.sent_groups, s.skipped_groups, s.held_groups, s.in_doubt_groups) == (1, 1, 0, 0)
    assert [g.id for g in client.calls] == [gone.id]
    assert took.id != gone.id


#: One send at a time, its Idempotency-Key never trusted to be replayed (a group whose answer
#: was lost stays in doubt), and the API's records complete at once: a group in doubt is
#: settled by them as soon as it is looked at.
SETTLED_BY_RECORDS = msgspec.structs.replace(
    FAST,
    records_lag_s=0.0,
    concurrency=1,
    retry=msgspec.structs.replace(FAST.retry, retry_ambiguous=False),
)


async def test_a_group_this_run_left_in_doubt_and_settled_is_counted_sent_once(
    jobs: JobFactory, fake_api: tuple[FakeTelnyx, str]
) -> None:
    """A group whose answer was lost after the API took it, settled by the records before the
    run ends, is counted sent by this run and no longer in doubt."""
    fake, url = fake_api
    fake.faults.append(Fault("drop_after"))
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    settings = SETTLED_BY_RECORDS
    async with AiohttpMmsClient(url, "test-key-123") as client:
        s = await runner.run_job(job, settings, client, clock=FakeClock())
    assert (s.sent_groups, s.in_doubt_groups, s.held_groups) == (2, 0, 0)
    assert fake.recipient_counts() == dict.fromkeys(numbers(8), 1)


@pytest.mark.parametrize("named", [True, False], ids=["group-message-ids", "records-only"])
async def test_a_group_settled_by_the_fake_s_records_is_tracked_under_what_they_name(
    jobs: JobFactory, fake_api: tuple[FakeTelnyx, str], named: bool
) -> None:
    """A group whose answer was lost after the API took it is settled by the detail records:
    when they name their group message (group_message_id, as Telnyx's do) it is recorded sent
    under the id the API took it under, and track follows it through the group's GET; when
    they do not, under the first member's record, and track asks each member by its own.
    Either way every member ends delivered, accepted once."""
    fake, url = fake_api
    fake.group_message_ids = named
    fake.faults.append(Fault("drop_after"))
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    async with AiohttpMmsClient(url, "test-key-123") as client:
        s = await runner.run_job(job, SETTLED_BY_RECORDS, client, clock=FakeClock())
        tracked = await track_ledger(job.ledger, SETTLED_BY_RECORDS, client, clock=FakeClock())
    (msg,) = fake.accepted
    assert (s.sent_groups, s.in_doubt_groups) == (1, 0)
    (sent,) = [e for e in ledger_events(job.ledger) if e["event"] == "sent"]
    assert sent["message_id"] == (msg.id if named else msg.recipient_ids[0])
    asked = [r.path for r in fake.http_log if r.method == "GET"]
    gets = [p.removeprefix("/v2/messages/") for p in asked if p.startswith("/v2/messages/")]
    assert gets == ([f"group/{msg.id}"] if named else list(msg.recipient_ids))
    assert (tracked.statuses, tracked.pending, tracked.unlisted) == ({"delivered": 4}, 0, [])
    assert fake.recipient_counts() == dict.fromkeys(numbers(4), 1)


@pytest.mark.parametrize("took", [True, False], ids=["accepted", "never-accepted"])
async def test_a_group_track_settles_beside_the_run_that_left_it_in_doubt_is_counted(
    jobs: JobFactory, took: bool
) -> None:
    """A JSONL ledger is the run's alone but for ``track``, which writes beside it: a group
    whose answer was lost, which ``track`` settles by the API's records while the run waits
    on them, is still settled and counted by the run itself: sent (the API took it), or sent
    again once the records show it never accepted; every group counted, nobody left in
    doubt, and the report agrees."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    clock = FakeClock()
    client = FakeClient(wall=clock.wall)

    def lost(g: Group, n: int) -> SendReceipt | SendError:
        if g.seq != 0 or n != 0:
            return ok_receipt(g, n)
        if took:
            client.took(g, ok_receipt(g, n))  # the API takes it; the answer never comes back
        return AmbiguousSendError("the connection dropped after sending")

    client.handler = lost
    looked = client.fetch_records

    async def tracked_meanwhile(cli: str, cld: str, start: float, end: float) -> Any:
        """Each of the run's looks at the records: ``track`` looks first, on the same file."""
        other = FakeClient(wall=clock.wall, records=client.records)
        await track_ledger(job.ledger, SETTLED_BY_RECORDS, other, clock=clock)
        return await looked(cli, cld, start, end)

    client.fetch_records = tracked_meanwhile  # type: ignore[method-assign]
    s = await runner.run_job(job, SETTLED_BY_RECORDS, client, clock=clock)
    assert (s.sent_groups, s.in_doubt_groups, s.skipped_groups) == (2, 0, 0)
    assert groups_counted(s) == 2
    assert sum(g.seq == 0 for g in client.calls) == 2 - took
    doubtful = client.calls[0].id
    settled = [
        e
        for e in ledger_events(job.ledger)
        if e.get("group") == doubtful
        and (e.get("code") == "not_accepted" if not took else e["event"] == "sent")
    ]
    assert len(settled) == 2  # by track, then by the run, which did not see track's
    report = summarize(job.ledger)
    assert (report.recipient_states.sent, report.recipient_states.in_doubt) == (8, 0)


async def test_track_settles_groups_in_doubt_by_the_records(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash leaves two groups in doubt; track looks them up: the one the records show
    accepted is recorded sent (and tracked), the one they show nothing of (complete) is left
    for the next run, retryable."""
    job, took, gone, client, later = await crashed_with_records(jobs, monkeypatch)
    await track_ledger(job.ledger, FAST, client, clock=later)
    view = load(job.ledger)
    assert (view.groups[took.id].state, view.groups[took.id].message_id) == ("sent", "rec-1")
    assert view.groups[gone.id].state == "retry_pending"


async def test_track_leaves_a_group_a_run_sent_again_while_it_looked_to_that_run(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While track looks a group in doubt up in the records, a run beside it settles it and
    sends it again (its attempt open): track writes nothing of its older look, so the
    group reads in doubt (the run's request is out), not pending a rerun that would text
    its members again."""
    job, _, gone, client, later = await crashed_with_records(jobs, monkeypatch)
    looked = client.fetch_records

    async def resent_meanwhile(cli: str, cld: str, start: float, end: float) -> Any:
        found = await looked(cli, cld, start, end)
        if cld == gone.to[-1]:  # the run's look and resend, while track still looks
            store = open_store(job.ledger, "append")
            store.append_now(never_accepted(3600, "", group=gone.id, to=gone.to))
            store.append_now(Attempt(gone.id, gone.to, attempt=2, t0=later.wall()))
            store.close_sync()
        return found

    client.fetch_records = resent_meanwhile  # type: ignore[method-assign]
    await track_ledger(job.ledger, FAST, client, clock=later)
    view = load(job.ledger)
    assert view.groups[gone.id].state == "in_doubt"
    not_accepted = [
        e for e in ledger_events(job.ledger) if e.get("group") == gone.id and e.get("code")
    ]
    assert len(not_accepted) == 1  # the run's alone


DOUBT = GroupRecord(
    "g1", ("+12125550001", "+12125550002", "+12125550003"), sender="+18445550001",
    t0=1_000_000.0, last_try=1_000_000.0, doubt_at=1_000_001.0,
)  # fmt: skip


def record(rid: str, member: str, **kw: Any) -> MessageRecord:
    """A detail record of DOUBT's sender to ``member``, inside its window."""
    return MessageRecord(rid, "+18445550001", member, 1_000_000.5, "DELIVERED", **kw)


async def test_the_records_settle_a_group_only_by_every_members_record() -> None:
    """Telnyx cuts one record per recipient of a group message: a group whose every member
    has a record is accepted (under the first's id, its cost the records' sum); one member's
    record alone (another message to that number) leaves it in doubt, never sent, never
    resent, even once the records are complete; an SMS record is no group MMS's; with no
    record of any member, complete, it is absent only after every member was looked up; a
    lookup that fails leaves it in doubt."""
    clock = FakeClock(wall=1_000_000.0 + 86_400)
    client = FakeClient(wall=clock.wall)
    settler = Settler(client, records_lag_s=3600, request_timeout=30, clock=clock)
    usd = Money(Decimal("0.0102"), "USD")
    client.records += [record(f"r{i}", p, cost=usd) for i, p in enumerate(DOUBT.to, 1)]
    found = await settler.settle(DOUBT)
    assert found.verdict == Verdict.ACCEPTED
    assert found.record is not None
    assert (found.record.id, found.record.cost) == ("r1", Money(Decimal("0.0306"), "USD"))
    client.records[:] = [record("r3", DOUBT.to[2])]
    assert (await settler.settle(DOUBT)).verdict == Verdict.UNKNOWN
    client.records[:] = [record(f"r{i}", p, message_type="SMS") for i, p in enumerate(DOUBT.to)]
    assert (await settler.settle(DOUBT)).verdict == Verdict.ABSENT
    client.records.clear()
    client.fetches.clear()
    assert (await settler.settle(DOUBT)).verdict == Verdict.ABSENT
    assert len(client.fetches) == 3

    async def unreadable(cli: str, cld: str, start: float, end: float) -> list[MessageRecord]:
        raise ServerError("down", status=503)

    client.fetch_records = unreadable  # type: ignore[method-assign]
    assert (await settler.settle(DOUBT)).verdict == Verdict.UNKNOWN


async def test_records_stamped_when_the_queue_let_the_message_go_still_settle_accepted() -> None:
    """A detail record is stamped with its message's sent time (the spec's MDR created_at,
    "Message sent time"), which comes after the queue's wait: records stamped 20 minutes
    after the group's last try, found once the records are complete, prove it accepted; it
    is never taken for absent and texted twice. One stamped after the records' lag is not
    its record."""
    clock = FakeClock(wall=1_000_000.0 + 86_400)
    client = FakeClient(wall=clock.wall)
    settler = Settler(client, records_lag_s=3600, request_timeout=30, clock=clock)
    queued = [
        MessageRecord(f"r{i}", "+18445550001", p, 1_000_000.0 + 1200, "DELIVERED")
        for i, p in enumerate(DOUBT.to)
    ]
    client.records += queued
    found = await settler.settle(DOUBT)
    assert (found.verdict, found.record and found.record.id) == (Verdict.ACCEPTED, "r0")
    client.records[:] = [msgspec.structs.replace(r, created_at=1_000_000.0 + 7200) for r in queued]
    assert (await settler.settle(DOUBT)).verdict == Verdict.ABSENT


@pytest.mark.parametrize("strip", ["+", "+1"])
async def test_a_record_naming_the_numbers_without_a_plus_still_settles_accepted(
    strip: str,
) -> None:
    """A server that filters the records by the query's numbers but writes its own without
    the leading + (cli 18445550001), or as ten digits (8445550001), still proves acceptance:
    the group is accepted, never taken for absent and sent again."""
    clock = FakeClock(wall=1_000_000.0 + 86_400)
    settler = Settler(FakeClient(wall=clock.wall), records_lag_s=3600, request_timeout=30,
                      clock=clock)  # fmt: skip

    async def bare(cli: str, cld: str, start: float, end: float) -> list[MessageRecord]:
        plain = MessageRecord("r1", cli.removeprefix(strip), cld.removeprefix(strip), 1_000_000.5,
                              "DELIVERED")  # fmt: skip
        return [plain]

    settler.client.fetch_records = bare  # type: ignore[union-attr, method-assign]
    found = await settler.settle(DOUBT)
    assert (found.verdict, found.record and found.record.id) == (Verdict.ACCEPTED, "r1")


async def test_records_naming_their_group_message_settle_it_under_that_id() -> None:
    """Records that name their group message (group_message_id, as Telnyx's do) settle the
    group only when every member has one under the same group message, and the group is
    recorded under that id (the one its GET answers for); members whose records name
    different group messages (other messages to those numbers) leave it in doubt."""
    clock = FakeClock(wall=1_000_000.0 + 86_400)
    client = FakeClient(wall=clock.wall)
    settler = Settler(client, records_lag_s=3600, request_timeout=30, clock=clock)
    other = [record("x0", DOUBT.to[0], group_message_id="other-group")]
    client.records += other + [
        record(f"r{i}", p, group_message_id="the-group") for i, p in enumerate(DOUBT.to)
    ]
    found = await settler.settle(DOUBT)
    assert found.verdict == Verdict.ACCEPTED
    assert found.record is not None
    assert found.record.id == "the-group"
    client.records[:] = other + [
        record(f"r{i}", p, group_message_id="the-group") for i, p in enumerate(DOUBT.to[1:])
    ]
    assert (await settler.settle(DOUBT)).verdict == Verdict.UNKNOWN


def test_a_record_s_group_message_id_and_type_are_read_bounded() -> None:
    """parse_records keeps a record's message_type and its group_message_id when that is an
    id; anything else there is dropped, never a crash."""
    base = {"id": "r1", "cli": "+18445550001", "cld": "+12125550001",
            "created_at": "2026-12-05T08:00:00Z", "message_type": "MMS"}  # fmt: skip
    good, bad = parse_records(
        {"data": [{**base, "group_message_id": "g-1"}, {**base, "group_message_id": ["x"] * 9}]}
    )
    assert (good.message_type, good.group_message_id) == ("MMS", "g-1")
    assert bad.group_message_id == ""


@pytest.mark.parametrize("rid", ["rec\x1b[2J\nzz", "r" * 5000, ""])
async def test_records_whose_id_is_no_id_leave_the_group_in_doubt(rid: str) -> None:
    """A detail record whose id is not an id (an escape sequence, a line end, 5,000
    characters, nothing) still shows its member's message was accepted, so the group is never
    taken for absent and sent again; but it names no message to record the group sent under:
    the group stays in doubt, and no such id reaches the ledger."""
    base = {"cli": "+18445550001", "created_at": "1970-01-12T13:46:40.5Z", "status": "x"}
    (parsed,) = parse_records({"data": [{**base, "id": rid, "cld": DOUBT.to[0]}]})
    assert parsed.id == ""
    clock = FakeClock(wall=1_000_000.0 + 86_400)
    client = FakeClient(wall=clock.wall)
    settler = Settler(client, records_lag_s=3600, request_timeout=30, clock=clock)
    client.records += [record("", p) for p in DOUBT.to]
    with capture_logs() as logs:
        assert (await settler.settle(DOUBT)).verdict == Verdict.UNKNOWN
    assert "settle.record_unusable" in [e["event"] for e in logs]


async def test_a_crash_after_a_resend_waits_for_the_new_tries_records() -> None:
    """A group in doubt, settled as never accepted and sent again, then left in doubt by a
    crash during that new try: its records are complete only ``records_lag_s`` after the new
    try, not after the first doubt; until then it stays in doubt (never taken for absent and
    texted twice), and its records are looked up over the same span that completion counts."""
    first, lag = 1_000_000.0, 3600.0
    resent = first + 2 * lag  # the first doubt settled absent, then the group went again
    gid, to, sender = DOUBT.id, DOUBT.to, DOUBT.sender
    view = LedgerView.fold([
        RunStarted(time=iso(first)),
        Attempt(gid, to, 1, sender, 1, "k1", first, iso(first)),
        InDoubt(gid, to, time=iso(first + 1)),
        RunStarted(time=iso(first + lag + 10)),
        never_accepted(lag, iso(first + lag + 10), group=gid, to=to),
        Attempt(gid, to, 1, sender, 1, "k2", resent, iso(resent)),
        RunStarted(time=iso(resent + 60)),  # the crash: the new try's outcome was never written
    ])  # fmt: skip
    rec = view.groups[gid]
    assert rec.state == "in_doubt"
    clock = FakeClock(wall=resent + 60)
    client = FakeClient(wall=clock.wall)
    settler = Settler(client, records_lag_s=lag, request_timeout=30, clock=clock)
    assert settler.complete_in(rec) > lag - 60
    assert (await settler.settle(rec)).verdict == Verdict.UNKNOWN
    window = settler.window(rec)
    assert window is not None
    assert window[1] == pytest.approx(clock.wall() + settler.complete_in(rec) + CLOCK_SKEW_S)


async def test_records_not_yet_complete_stop_at_the_first_member_without_one() -> None:
    """Before the records are complete, a member with no record leaves the group in doubt
    after one lookup (not one a member); once complete, every member is looked up before it
    is called absent."""
    clock = FakeClock(wall=1_000_000.0 + 60)
    client = FakeClient(wall=clock.wall)
    settler = Settler(client, records_lag_s=3600, request_timeout=30, clock=clock)
    assert (await settler.settle(DOUBT)).verdict == Verdict.UNKNOWN
    assert client.fetches == [f"records {DOUBT.sender} {DOUBT.to[0]}"]
    client.fetches.clear()
    clock.advance(86_400)
    assert (await settler.settle(DOUBT)).verdict == Verdict.ABSENT
    assert client.fetches == [f"records {DOUBT.sender} {p}" for p in DOUBT.to]


SENDER = "+18445550001"


async def test_every_page_of_the_records_is_read(fake_api: tuple[FakeTelnyx, str]) -> None:
    """Records spread over three pages (45 at the default 20 a page) are all read: a group
    whose record is on a later page is found, not taken for absent."""
    fake, url = fake_api
    member = DOUBT.to[0]
    for i in range(45):
        fake.adopt(f"m{i}", SENDER, (member, DOUBT.to[1]), age=60)
    async with AiohttpMmsClient(url, "test-key-123") as client:
        found = await client.fetch_records(SENDER, member, fake.wall() - 3600, fake.wall())
    assert sorted(r.id for r in found) == sorted(fake.by_id[f"m{i}"].recipient_ids[0]
                                                 for i in range(45))  # fmt: skip
    pages = [r.query for r in fake.http_log if r.path.endswith("/reports/mdrs")]
    assert [("page[number]" in q) for q in pages] == [False, True, True]


async def test_a_records_server_that_ignores_page_numbers_settles_nothing(
    fake_api: tuple[FakeTelnyx, str],
) -> None:
    """A server that answers page[number] with the first page again (the spec declares no page
    parameter for the records) gives no answer: the read is incomplete, never taken whole."""
    fake, url = fake_api
    fake.records_paging = False
    for i in range(25):
        fake.adopt(f"m{i}", SENDER, DOUBT.to[:2], age=60)
    async with AiohttpMmsClient(url, "test-key-123") as client:
        with pytest.raises(AmbiguousSendError, match="page 2 was asked for and not served"):
            await client.fetch_records(SENDER, DOUBT.to[0], fake.wall() - 3600, fake.wall())


def mdr(rid: str, cld: str, message_type: str = "MMS") -> dict[str, Any]:
    """One record of DOUBT's sender, as ``/reports/mdrs`` lists it."""
    return {"id": rid, "cli": SENDER, "cld": cld, "created_at": "1970-01-12T13:46:40.5Z",
            "status": "DELIVERED", "message_type": message_type}  # fmt: skip


@contextlib.asynccontextmanager
async def records_server(
    answer: Callable[[web.Request], object],
) -> AsyncIterator[tuple[str, list[str]]]:
    """A server whose ``GET /v2/reports/mdrs`` answers ``answer(request)`` as JSON: its base
    URL, and the query of every request it got."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.query_string)
        return web.json_response(answer(request))

    app = web.Application()
    app.router.add_get("/v2/reports/mdrs", handler)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        yield str(server.make_url("/v2")), seen


@pytest.mark.parametrize(
    "body",
    [
        {"data": [mdr("r1", DOUBT.to[0])], "meta": {"total_pages": 1_000_000, "page_number": 1}},
        {"data": [mdr("r1", DOUBT.to[0])], "meta": {"total_pages": 1, "total_results": 10**9}},
        {"data": [mdr("r1", DOUBT.to[0])], "meta": {"total_pages": 1, "total_results": 2}},
        {"data": [mdr("r1", DOUBT.to[0])]},
        {"data": [mdr("r1", DOUBT.to[0])], "meta": {"total_pages": "1", "total_results": True}},
        {"data": [mdr(f"r{i}", DOUBT.to[0]) for i in range(1001)], "meta": {"total_pages": 1}},
        {"data": {"id": "r1"}, "meta": {"total_pages": 1}},
        {"meta": {"total_pages": 0, "total_results": 0}},
    ],
    ids=[
        "million-pages",
        "billion-records",
        "short",
        "no-meta",
        "counts-not-ints",
        "page-too-long",
        "data-not-a-list",
        "no-data",
    ],
)
async def test_a_records_answer_that_cannot_be_read_whole_is_no_answer(body: object) -> None:
    """A records answer claiming a million pages or a billion records, counting more than it
    lists, stating no page count, listing too many on a page, or no data list, is no answer
    (never a partial one taken whole), after one request."""
    async with (
        records_server(lambda r: body) as (url, seen),
        AiohttpMmsClient(url, "test-key-123") as client,
    ):
        with pytest.raises(AmbiguousSendError, match="not read whole"):
            await client.fetch_records(SENDER, DOUBT.to[0], 1_000_000.0, 1_000_100.0)
    assert len(seen) == 1


async def test_a_group_whose_records_are_on_a_later_page_is_accepted_not_absent() -> None:
    """Each member's first page lists only another message's records (SMS) and says there are
    two pages: the group's own records, on page 2, settle it accepted; read alone, page 1
    would have shown it absent, and it would have been texted twice."""

    def answer(request: web.Request) -> object:
        cld, page = request.query["cld"], request.query.get("page[number]", "1")
        meta = {"page_number": int(page), "page_size": 20, "total_pages": 2, "total_results": 21}
        if page == "1":
            return {"data": [mdr(f"sms-{i}", cld, "SMS") for i in range(20)], "meta": meta}
        return {"data": [mdr(f"mms-{cld[-4:]}", cld)], "meta": meta}

    clock = FakeClock(wall=1_000_000.0 + 86_400)
    async with (
        records_server(answer) as (url, seen),
        AiohttpMmsClient(url, "test-key-123") as client,
    ):
        settler = Settler(client, records_lag_s=3600, request_timeout=30, clock=clock)
        found = await settler.settle(DOUBT)
    assert found.verdict == Verdict.ACCEPTED
    assert [r.id for r in found.members] == [f"mms-{p[-4:]}" for p in DOUBT.to]
    assert len(seen) == 6


@pytest.mark.parametrize(
    ("own", "verdict"), [(True, Verdict.ACCEPTED), (False, Verdict.UNKNOWN)], ids=["own", "other"]
)
async def test_records_without_paging_show_acceptance_never_absence(
    own: bool, verdict: Verdict
) -> None:
    """An answer that states no paging (the spec's ``meta`` is optional) cannot be shown
    whole: the group's own records on it settle it accepted, as a record on any page would;
    without them it stays in doubt, never taken for absent and texted again."""

    def answer(request: web.Request) -> object:
        cld = request.query["cld"]
        record = mdr(f"mms-{cld[-4:]}", cld) if own else mdr(f"sms-{cld[-4:]}", cld, "SMS")
        return {"data": [record]}

    clock = FakeClock(wall=1_000_000.0 + 86_400)
    async with (
        records_server(answer) as (url, _),
        AiohttpMmsClient(url, "test-key-123") as client,
    ):
        settler = Settler(client, records_lag_s=3600, request_timeout=30, clock=clock)
        with capture_logs() as logs:
            found = await settler.settle(DOUBT)
    assert found.verdict == verdict
    if own:
        assert [r.id for r in found.members] == [f"mms-{p[-4:]}" for p in DOUBT.to]
    else:
        assert any(e["event"] == "settle.records_unreadable" for e in logs)


class _Limited(FakeClient):
    """A client whose record lookups answer 429 (``wait`` s) until ``refusals`` are spent, or
    raise ``fault`` every time."""

    def __init__(self, refusals: int = 0, fault: SendError | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.refusals, self.fault = refusals, fault

    async def fetch_records(
        self, cli: str, cld: str, start: float, end: float
    ) -> list[MessageRecord]:
        if self.fault is not None:
            self.fetches.append(f"records {cli} {cld}")
            raise self.fault
        if self.refusals:
            self.refusals -= 1
            self.fetches.append(f"records {cli} {cld}")
            raise RateLimited("429 Too Many Requests", retry_after=2.0)
        return await super().fetch_records(cli, cld, start, end)


async def test_a_lookup_the_api_refuses_for_now_is_asked_again_after_its_wait() -> None:
    """A record lookup answered 429 (the account's request limit, a burst of lookups after a
    bad night) is asked again after the answer's wait, under the run's retry policy, and
    the group is settled in that look, not left in doubt for another rerun; without a
    policy it is asked once, as before."""
    clock = FakeClock(wall=1_000_000.0 + 86_400)
    client = _Limited(refusals=2, wall=clock.wall)
    client.records += [record(f"r{i}", p, group_message_id="g") for i, p in enumerate(DOUBT.to)]
    settler = Settler(client, 3600, 30, clock, retry=FAST.retry)
    started = clock.monotonic()
    assert (await settler.settle(DOUBT)).verdict == Verdict.ACCEPTED
    assert clock.monotonic() - started >= 4.0  # both waits the answers asked for
    assert len(client.fetches) == len(DOUBT.to) + 2
    once = _Limited(refusals=1, wall=clock.wall)
    once.records += client.records
    assert (await Settler(once, 3600, 30, clock).settle(DOUBT)).verdict == Verdict.UNKNOWN


async def test_a_records_answer_that_cannot_be_read_whole_is_not_asked_again() -> None:
    """An answer that cannot be read whole (RecordsUnread: paging the API does not state) is
    not asked again under the retry policy (asking does not make it whole): one lookup,
    and the group stays in doubt."""
    clock = FakeClock(wall=1_000_000.0 + 86_400)
    client = _Limited(fault=RecordsUnread("states no page count"), wall=clock.wall)
    settler = Settler(client, 3600, 30, clock, retry=FAST.retry)
    assert (await settler.settle(DOUBT)).verdict == Verdict.UNKNOWN
    assert client.fetches == [f"records {DOUBT.sender} {DOUBT.to[0]}"]


async def test_a_client_that_cannot_read_records_says_so_once() -> None:
    """A client without fetch_records leaves groups in doubt, and the settler warns once."""
    clock = FakeClock(wall=1_000_000.0 + 86_400)
    settler = Settler(object(), records_lag_s=3600, request_timeout=30, clock=clock)
    with capture_logs() as logs:
        assert (await settler.settle(DOUBT)).verdict == Verdict.UNKNOWN
        assert (await settler.settle(DOUBT)).verdict == Verdict.UNKNOWN
    said = [e for e in logs if e["event"] == "settle.records_unavailable"]
    assert len(said) == 1


async def test_a_record_of_another_groups_message_is_not_this_groups() -> None:
    """A record that names a message the ledger knows as another group's, or one of a member
    moved out of another group sent from the same sender, stamped before the report that moved
    it, is that earlier send's: with no other record, complete, the group was never accepted;
    a record stamped after it is the group's own; without the report's stamp, it is in doubt."""
    clock = FakeClock(wall=1_000_000.0 + 86_400)
    client = FakeClient(wall=clock.wall)
    settler = Settler(client, records_lag_s=3600, request_timeout=30, clock=clock)
    client.records += [record(f"r{i}", p, group_message_id="m0") for i, p in enumerate(DOUBT.to)]
    assert (await settler.settle(DOUBT)).verdict == Verdict.ACCEPTED
    assert (await settler.settle(DOUBT, LedgerView(by_message_id={"m0": "g0"}))).verdict == (
        Verdict.ABSENT
    )
    client.records[:] = [record(f"r{i}", p) for i, p in enumerate(DOUBT.to)]  # at 1_000_000.5
    earlier = Sent("g0", DOUBT.to, message_id="m1", from_=DOUBT.sender)
    moved = Moved("g0", DOUBT.to)
    for stamp, verdict in [
        ("1970-01-12T13:46:41Z", Verdict.ABSENT),  # 1_000_001: reported after the record
        ("1970-01-12T13:46:39Z", Verdict.ACCEPTED),  # 999_999: the record is after it
        (None, Verdict.UNKNOWN),
    ]:
        reports = [Status("g0", p, "delivery_failed", at=stamp) for p in DOUBT.to]
        ledger = LedgerView.fold([earlier, *reports, moved])
        assert (await settler.settle(DOUBT, ledger)).verdict == verdict


async def test_a_record_of_the_original_campaigns_send_is_not_its_resends() -> None:
    """A group of a failed file's resend: a record of a member the original campaign's ledger
    sent from the same sender, stamped no later than its delivery report, is that send's
    (complete, the resend was never accepted); stamped after it, the resend's own; with the
    original ledger not found or unreadable, in doubt."""
    clock = FakeClock(wall=1_000_000.0 + 86_400)
    client = FakeClient(wall=clock.wall)
    client.records += [record(f"r{i}", p) for i, p in enumerate(DOUBT.to)]  # at 1_000_000.5
    origins: dict[str, LedgerView | None] = {}
    settler = Settler(
        client, records_lag_s=3600, request_timeout=30, clock=clock,
        originals=lambda rec, header: origins,
    )  # fmt: skip
    resend = LedgerView(header=Header("j", None, columns=("first", CAMPAIGN_COLUMN)))
    sent = Sent(DOUBT.id, DOUBT.to, message_id="m1", from_=DOUBT.sender)  # its own group ids
    for stamp, verdict in [
        ("1970-01-12T13:46:41Z", Verdict.ABSENT),  # 1_000_001: reported after the record
        ("1970-01-12T13:46:39Z", Verdict.ACCEPTED),  # 999_999: the record is after it
        (None, Verdict.UNKNOWN),
    ]:
        reports = [Status(DOUBT.id, p, "delivery_failed", at=stamp) for p in DOUBT.to]
        origins.update(dict.fromkeys(DOUBT.to, LedgerView.fold([sent, *reports])))
        assert (await settler.settle(DOUBT, resend)).verdict == verdict
    origins.update(dict.fromkeys(DOUBT.to, None))
    assert (await settler.settle(DOUBT, resend)).verdict == Verdict.UNKNOWN
    assert (await settler.settle(DOUBT, LedgerView())).verdict == Verdict.ACCEPTED  # no resend
