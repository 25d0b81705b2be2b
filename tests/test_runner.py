"""The runner with a fake client: outcomes, the ledger, resume, and stopping."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace

from bulk_mms.config import JobConfig
from bulk_mms.console import exit_for
from bulk_mms.errors import (
    AmbiguousSendError,
    ApiError,
    ApiUnavailable,
    AuthError,
    ConfigError,
    InputError,
    LedgerError,
    LedgerMismatch,
    NetworkError,
    RateLimited,
    RefusedRepeatedly,
    Rejected,
    SendError,
    ServerError,
)
from bulk_mms.ledger import load
from bulk_mms.ledger.jsonl import JsonlStore
from bulk_mms.models import Group, MessageRecord, SendReceipt
from bulk_mms.prepare import SortedNumbers, dry_run
from bulk_mms.runner import run_job
from bulk_mms.scan import scan_input
from bulk_mms.signals import Stop, StopReason
from bulk_mms.summary import JobSummary
from bulk_mms.testing import groups_in, ledger_events
from tests.conftest import (
    FAST,
    FakeClient,
    FakeClock,
    JobFactory,
    crash_mid_send,
    left_out_job,
    numbers,
    ok_receipt,
)


def events(job: JobConfig, kind: str | None = None) -> list[dict[str, object]]:
    return [e for e in ledger_events(job.ledger) if kind is None or e["event"] == kind]


async def test_every_valid_recipient_sent_once_and_recorded(jobs: JobFactory) -> None:
    """20 valid rows plus a bad and a duplicate: 3 groups sent, the bad row rejected and
    recorded, the duplicate counted (in the planned event), not recorded a line at a time."""
    rows = [{"phone": p, "first": "A"} for p in numbers(20)]
    rows.insert(5, {"phone": "nope", "first": "B"})
    rows.insert(9, {"phone": numbers(1)[0], "first": "C"})
    jobs.csv(rows)
    job = jobs.job()
    client = FakeClient()
    s = await run_job(job, FAST, client)
    assert sorted(client.sent_numbers()) == numbers(20)
    assert (s.sent_groups, s.sent_recipients, s.rejected_rows, s.duplicate_rows) == (3, 20, 1, 1)
    assert s.cost == {"USD": Decimal("0.1020")}
    sent = events(job, "sent")
    assert len(sent) == 3
    first = sent[0]
    assert first["to"] == numbers(8)
    assert first["message_id"]
    assert first["statuses"] == dict.fromkeys(numbers(8), "queued")
    assert first["cost"] == {"amount": "0.0408", "currency": "USD"}
    assert first["attempts"] == 1
    rejected = events(job, "rejected")
    assert [(e["line"], e["value"]) for e in rejected] == [(7, "nope")]
    before, after = events(job, "planned")  # from the scan, then from the grouping
    assert (before["recipients"], before["rejected"], before["duplicates"]) == (20, 1, 1)
    assert (after["recipients"], after["groups"], after["duplicates"]) == (20, 3, 1)
    header = events(job)[0]
    assert header["event"] == "job"
    assert str(header["fingerprint"]).startswith("sha256:")


async def test_attempt_is_durable_before_the_request(jobs: JobFactory) -> None:
    """When the client is called, the ledger already holds the group's attempt event."""
    jobs.people(3)
    job = jobs.job()
    seen: list[bool] = []

    def handler(group: Group, n: int) -> SendReceipt:
        attempts = [e for e in events(job, "attempt") if e["group"] == group.id]
        seen.append(bool(attempts))
        return ok_receipt(group, n)

    await run_job(job, FAST, FakeClient(handler))
    assert seen == [True]


async def test_rerun_sends_nothing_and_records_nothing_twice(jobs: JobFactory) -> None:
    """A second run over a finished ledger skips every group and re-records no rejected row."""
    jobs.csv([{"phone": p, "first": "x"} for p in [*numbers(10), "bad"]])
    job = jobs.job(extra="max_rejected_share = 0.5")
    await run_job(job, FAST, FakeClient())
    again = FakeClient()
    s = await run_job(job, FAST, again)
    assert again.calls == []
    assert (s.sent_groups, s.skipped_groups) == (0, 2)
    assert len(events(job, "rejected")) == 1
    assert len(events(job, "run")) == 2


async def test_resume_after_interruption_sends_only_the_rest(jobs: JobFactory) -> None:
    """A run stopped part way is resumed by the next: every recipient is sent exactly once."""
    jobs.people(40)
    job = jobs.job(extra="group_size = 4")
    stop = Stop()

    def handler(group: Group, n: int) -> SendReceipt:
        if n == 3:
            stop.request(StopReason.SIGINT)
        return ok_receipt(group, n)

    first = FakeClient(handler)
    s1 = await run_job(job, FAST.__class__(rate=10_000, concurrency=1), first, stop=stop)
    assert s1.stopped == "SIGINT"
    assert 0 < len(first.calls) < 10
    second = FakeClient()
    await run_job(job, FAST, second)
    assert sorted(first.sent_numbers() + second.sent_numbers()) == numbers(40)


async def test_changed_input_is_refused(jobs: JobFactory) -> None:
    """A different input file with the same ledger is refused before anything is sent."""
    jobs.people(5)
    job = jobs.job()
    await run_job(job, FAST, FakeClient())
    jobs.people(6)
    client = FakeClient()
    with pytest.raises(LedgerMismatch, match="input file"):
        await run_job(job, FAST, client)
    assert client.calls == []


async def test_auth_failure_stops_the_job(jobs: JobFactory) -> None:
    """A refused key stops the job after the first response; the groups it met are recorded
    retryable (never accepted: a rerun with a good key sends them), not left in doubt."""
    jobs.people(80)
    job = jobs.job(extra="group_size = 1")
    client = FakeClient(lambda g, n: AuthError("refused", status=401))
    s = await run_job(job, FAST, client)
    assert isinstance(s.error, AuthError)
    assert s.stopped == "auth"
    assert len(client.calls) <= FAST.concurrency
    failed = events(job, "failed")
    assert all(e["retryable"] for e in failed)
    met = [e for e in failed if e["code"] == "401"]
    assert len(met) == len(client.calls)  # the others were stopped before their request left
    assert groups_in(job.ledger, "in_doubt") == set()


NO_KEYS = replace(FAST, retry=replace(FAST.retry, retry_ambiguous=False))


async def test_ambiguous_failure_is_retried_under_the_same_key(jobs: JobFactory) -> None:
    """An ambiguous send is retried at once with the same Idempotency-Key, and then sent."""
    jobs.people(16)
    job = jobs.job()

    def handler(group: Group, n: int) -> SendReceipt | SendError:
        return AmbiguousSendError("dropped") if n == 0 else ok_receipt(group, n)

    client = FakeClient(handler)
    s = await run_job(job, replace(FAST, concurrency=1), client)
    assert (s.sent_groups, s.in_doubt_groups) == (2, 0)
    assert [g.seq for g in client.calls] == [0, 0, 1]
    attempts = [e for e in events(job, "attempt") if e["seq"] == 0]
    assert len(attempts) == 2
    assert attempts[0]["key"] == attempts[1]["key"]
    assert attempts[0]["t0"] == attempts[1]["t0"]  # the key's age counts from the first try


async def test_ambiguous_failure_is_held_when_keys_are_not_trusted(jobs: JobFactory) -> None:
    """With retry_ambiguous = false, an ambiguous send is in doubt, not retried, not resent
    on a rerun, and resent only with --resend-in-doubt."""
    jobs.people(16)
    job = jobs.job()

    def handler(group: Group, n: int) -> SendReceipt | SendError:
        return AmbiguousSendError("dropped") if group.seq == 0 else ok_receipt(group, n)

    client = FakeClient(handler)
    s = await run_job(job, NO_KEYS, client)
    assert (s.sent_groups, s.in_doubt_groups, s.open_in_doubt) == (1, 1, 1)
    assert len(client.calls) == 2
    (doubt,) = events(job, "in_doubt")
    assert doubt["to"] == numbers(8)
    rerun = FakeClient()
    s2 = await run_job(job, NO_KEYS, rerun)
    assert (rerun.calls, s2.held_groups) == ([], 1)
    resend = FakeClient()
    s3 = await run_job(job, NO_KEYS, resend, resend_in_doubt=True)
    assert [g.to for g in resend.calls] == [tuple(numbers(8))]
    assert s3.open_in_doubt == 0


async def test_attempt_without_outcome_is_resent_under_its_key(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a crash between attempt and outcome, a rerun resends the group with the same key
    (the API replays its first answer); with keys not trusted, it is held in doubt instead."""
    jobs.people(8)
    job = jobs.job()
    first = await crash_mid_send(job, monkeypatch)
    assert groups_in(job.ledger, "in_doubt")
    held = FakeClient()
    s = await run_job(job, NO_KEYS, held)
    assert (held.calls, s.held_groups, s.open_in_doubt) == ([], 1, 1)
    (doubt,) = events(job, "in_doubt")  # recorded once, with its recipients, for status
    assert doubt["to"] == numbers(8)
    await run_job(job, NO_KEYS, FakeClient())
    assert len(events(job, "in_doubt")) == 1
    again = FakeClient()
    s = await run_job(job, FAST, again)
    assert [g.id for g in again.calls] == [g.id for g in first.calls]
    assert (s.sent_groups, s.open_in_doubt) == (1, 0)


async def test_in_doubt_past_the_key_window_is_settled_by_the_records(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its key's window a group in doubt is never resent under the old key: when the
    API's records show it accepted it is recorded sent, with no request; when they are complete
    and show nothing it is sent again, under a new key."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 8")
    first = await crash_mid_send(job, monkeypatch, hanging=2)
    gone, took = first.calls[0], first.calls[1]
    later = FakeClock(wall=time.time() + 2 * 86_400)
    again = FakeClient(wall=later.wall)
    t0 = load(job.ledger).groups[took.id].last_try
    again.records += [  # one per recipient, as Telnyx cuts them
        MessageRecord(f"rec-{i + 1}", took.message.from_, p, t0 + 1) for i, p in enumerate(took.to)
    ]
    s = await run_job(job, FAST, again, clock=later)
    assert [g.id for g in again.calls] == [gone.id]
    assert again.keys[0] != first.keys[0]
    assert (s.held_groups, s.open_in_doubt) == (0, 0)
    assert load(job.ledger).groups[took.id].message_id == "rec-1"


async def test_422_on_a_repeat_is_an_idempotency_conflict(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 422 answering a repeat under the same key is a key conflict, and the group stays in
    doubt (its first request may have been delivered), never failed."""
    jobs.people(8)
    job = jobs.job()
    await crash_mid_send(job, monkeypatch)
    conflict = FakeClient(lambda g, n: Rejected("same key, other body", status=422))
    s = await run_job(job, FAST, conflict)
    assert events(job, "failed") == []
    (doubt,) = events(job, "in_doubt")
    assert "idempotency conflict" in str(doubt["reason"])
    assert (s.open_failed, s.open_in_doubt) == (0, 1)


@pytest.mark.parametrize(
    "after",
    [
        ServerError("busy", status=503),
        RateLimited("slow", retry_after=1.0),
        NetworkError("refused"),
        Rejected("bad", status=400),
    ],
)
@pytest.mark.usefixtures("off_loop_work_on_the_loop")
async def test_a_try_that_may_have_landed_keeps_its_group_in_doubt(
    jobs: JobFactory, after: SendError
) -> None:
    """Once a try was ambiguous, whatever the later tries answer (5xx, 429, refused, 400), the
    group ends in doubt, not failed: the first try may have been accepted."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient(lambda g, n: AmbiguousSendError("dropped") if n == 0 else after)
    s = await run_job(job, replace(FAST, concurrency=1), client, clock=FakeClock())
    assert (s.failed_groups, s.in_doubt_groups) == (0, 1)
    assert events(job, "failed") == []
    assert groups_in(job.ledger, "in_doubt") == {client.calls[0].id}


async def test_permanent_and_exhausted_failures_are_recorded(
    jobs: JobFactory, fake_sleep: FakeClock
) -> None:
    """A 422 fails for good at once; a 429 that never clears fails when the group's maximum age
    passes, marked retryable, so the next run sends it again (and only it)."""
    jobs.people(16)
    job = jobs.job()

    def handler(group: Group, n: int) -> SendError:
        if group.seq == 0:
            return Rejected("bad", status=422)
        return RateLimited("slow down", retry_after=1.0)

    settings = replace(FAST, max_group_age_s=10.0)
    s = await run_job(job, settings, FakeClient(handler), clock=fake_sleep)
    failed = sorted(events(job, "failed"), key=lambda e: int(str(e["seq"])))
    assert [(e["status"], e["retryable"]) for e in failed] == [(422, False), (429, True)]
    assert failed[0]["attempts"] == 1
    assert 10 <= int(str(failed[1]["attempts"])) <= 12  # one try a second until 10 s old
    assert failed[1]["rate_limited"] == failed[1]["attempts"]
    assert (s.open_failed, s.retry_later_groups) == (1, 1)
    rerun = FakeClient()
    s2 = await run_job(job, FAST, rerun, clock=fake_sleep)
    assert [g.seq for g in rerun.calls] == [1]
    assert (s2.sent_groups, s2.open_failed) == (1, 1)


async def test_outage_stops_the_job_instead_of_failing_everything(
    jobs: JobFactory, fake_sleep: FakeClock
) -> None:
    """When group after group uses up its retries, the job stops; a rerun sends everything."""
    jobs.people(80)
    job = jobs.job(extra="group_size = 1")
    down = FakeClient(lambda g, n: NetworkError("cannot connect: refused"))
    s = await run_job(job, replace(FAST, concurrency=1), down, clock=fake_sleep)
    assert isinstance(s.error, ApiUnavailable)
    assert "rerun to resume" in str(s.error)
    assert s.stopped == "unavailable"
    assert s.failed_groups == 3
    assert len(down.calls) == 3 * FAST.retry.attempts
    back = FakeClient()
    await run_job(job, FAST, back)
    assert sorted(back.sent_numbers()) == numbers(80)


async def test_a_server_that_never_answers_stops_the_job_not_the_list(
    jobs: JobFactory, fake_sleep: FakeClock
) -> None:
    """Group after group in doubt (every answer lost) stops the job after three: the rest of
    the list is not turned into groups in doubt, and a rerun resends the three under their
    keys."""
    jobs.people(80)
    job = jobs.job(extra="group_size = 1")
    mute = FakeClient(lambda g, n: AmbiguousSendError("no response in time"))
    s = await run_job(job, replace(FAST, concurrency=1), mute, clock=fake_sleep)
    assert isinstance(s.error, ApiUnavailable)
    assert s.in_doubt_groups == 3
    assert len(mute.calls) == 3 * FAST.retry.attempts
    back = FakeClient()
    await run_job(job, FAST, back)
    assert sorted(back.sent_numbers()) == numbers(80)


async def test_the_same_refusal_group_after_group_stops_the_job(
    jobs: JobFactory, fake_sleep: FakeClock
) -> None:
    """Five groups in a row refused (422) with one error that names no member stop the job
    (exit 1, RefusedRepeatedly): the rest of the list is not failed, and a rerun with the job
    fixed sends it."""
    jobs.people(80)
    job = jobs.job(extra="group_size = 1")
    bad_from = ApiError("40305", "Invalid 'from' address", "not a number on this account")
    refusing = FakeClient(lambda g, n: Rejected("refused", status=422, errors=[bad_from]))
    s = await run_job(job, replace(FAST, concurrency=1), refusing, clock=fake_sleep)
    assert isinstance(s.error, RefusedRepeatedly)
    assert s.error.exit_code == 1
    assert "40305" in str(s.error)
    assert "--failed-csv" in str(s.error)
    assert s.stopped == "refused"
    assert (s.failed_groups, len(refusing.calls)) == (5, 5)
    back = FakeClient()
    await run_job(job, FAST, back)
    assert len(back.sent_numbers()) == 75


async def test_refusals_that_differ_or_name_a_member_do_not_stop_the_job(
    jobs: JobFactory, fake_sleep: FakeClock
) -> None:
    """Refusals that change from group to group, and ones the error policy handles (a 40300
    opt-out), are the recipients', not the job's: every group is tried."""
    jobs.people(12)
    job = jobs.job(extra="group_size = 1")

    def answer(g: Group, n: int) -> SendError:
        if g.seq % 2:
            return Rejected("blocked", status=409, errors=[ApiError("40300", "STOP", "")])
        return Rejected(f"bad number {g.seq}", status=422)

    refusing = FakeClient(answer)
    s = await run_job(job, replace(FAST, concurrency=1), refusing, clock=fake_sleep)
    assert s.error is None
    assert len(refusing.calls) == 12


async def test_refusals_that_point_at_a_member_do_not_stop_the_job(
    jobs: JobFactory, fake_sleep: FakeClock
) -> None:
    """Refusals whose error points at one of the group's members (``/to/1``, or its number in
    the detail), as the real client words them (one message, one code), are that member's
    fault, not the job's: a run of such groups is each failed and every group is tried."""
    jobs.people(24)
    job = jobs.job(extra="group_size = 3")

    def answer(g: Group, n: int) -> SendError:
        if g.seq % 2:
            bad = ApiError("40310", "Invalid 'to' address", "not a mobile number", "/to/1")
        else:
            bad = ApiError("40310", "Invalid 'to' address", f"{g.to[2]} is not a mobile number")
        return Rejected("the API refused the request", status=422, errors=[bad])

    refusing = FakeClient(answer)
    s = await run_job(job, replace(FAST, concurrency=1), refusing, clock=fake_sleep)
    assert s.error is None
    assert len(refusing.calls) == 8
    assert s.failed_groups == 8


async def test_unknown_template_column_is_a_config_error(jobs: JobFactory) -> None:
    """A placeholder naming a column the file lacks stops the job before sending."""
    jobs.people(3)
    job = jobs.job(message='text = "Hi {nickname}"')
    client = FakeClient()
    with pytest.raises(ConfigError, match="'nickname' is not a column"):
        await run_job(job, FAST, client)
    assert client.calls == []
    assert not job.ledger.exists()


async def test_missing_input_is_an_input_error(jobs: JobFactory) -> None:
    """A job whose input file is missing raises InputError naming the file."""
    job = jobs.job("nowhere.csv")
    with pytest.raises(InputError, match=r"nowhere\.csv: no such file"):
        await run_job(job, FAST, FakeClient())


async def run_with_failing_writes(
    job: JobConfig,
    fails: Callable[[list[bytes]], bool],
    client: FakeClient | None = None,
    concurrency: int = FAST.concurrency,
) -> tuple[JobSummary, FakeClient]:
    """Run ``job`` with every ledger write for which ``fails(lines)`` is true a disk-full."""
    real = JsonlStore._write_lines

    def failing(self: JsonlStore, lines: list[bytes]) -> None:
        if fails(lines):
            raise LedgerError(self.path, "cannot write: disk full")
        real(self, lines)

    client = client or FakeClient()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(JsonlStore, "_write_lines", failing)
        s = await run_job(job, replace(FAST, concurrency=concurrency), client)
    return s, client


async def test_ledger_write_failure_stops_sending(jobs: JobFactory, tmp_path: Path) -> None:
    """If the ledger cannot be written, sending stops at once and the error is reported."""
    jobs.people(40)
    job = jobs.job(extra="group_size = 1")
    writes = itertools.count(1)
    s, client = await run_with_failing_writes(job, lambda _lines: next(writes) > 3)
    assert s.error is not None
    assert "disk full" in str(s.error)
    assert s.stopped == "ledger"
    assert len(client.calls) < 10
    # every request that left has its attempt in the ledger
    attempted = {e["group"] for e in events(job, "attempt")}
    assert {g.id for g in client.calls} <= attempted


async def test_an_unwritable_sent_event_still_fails_the_run(jobs: JobFactory) -> None:
    """The outcome of a send is not waited for, but a commit of it that fails is still the
    run's error (stopped "ledger"), and the attempt before it is on disk: a resume holds the
    group in doubt rather than taking it for unsent."""
    jobs.people(8)
    job = jobs.job()
    s, client = await run_with_failing_writes(
        job, lambda lines: any(b'"event":"sent"' in line for line in lines)
    )
    assert len(client.calls) == 1
    assert s.error is not None
    assert "disk full" in str(s.error)
    assert s.stopped == "ledger"
    assert [e["group"] for e in events(job, "attempt")] == [client.calls[0].id]
    assert events(job, "sent") == []


async def test_a_pace_change_after_the_ledger_failed_still_ends_in_a_summary(
    jobs: JobFactory,
) -> None:
    """An answer that changes the pace after a commit failed (its pace event cannot be
    written) does not crash the worker: the run ends with its summary, stopped "ledger"."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 1")
    failed = asyncio.Event()

    def sent_fails(lines: list[bytes]) -> bool:
        if any(b'"event":"sent"' in line for line in lines):
            failed.set()
        return failed.is_set()

    second = asyncio.Event()

    async def answer(group: Group, n: int) -> SendReceipt:
        # the first answer waits until the second request has left (its attempt is on disk);
        # the second comes once the first's sent commit failed. Without the first wait, the
        # second attempt could share the failing commit and never leave.
        if n:
            second.set()
            await asyncio.wait_for(failed.wait(), 10)  # a guard: set within milliseconds
        else:
            await asyncio.wait_for(second.wait(), 10)
        return ok_receipt(group, n, wait=20.0 if n else 0.0)  # a queue: the pace changes

    s, client = await run_with_failing_writes(job, sent_fails, FakeClient(answer), concurrency=2)
    assert len(client.calls) == 2
    assert s.stopped == "ledger"
    assert s.error is not None
    assert "disk full" in str(s.error)


async def test_dry_run_sends_and_writes_nothing(jobs: JobFactory) -> None:
    """A dry run counts groups and rejections and leaves no ledger."""
    jobs.csv([{"phone": p, "first": "x"} for p in [*numbers(10), "bad"]])
    job = jobs.job(extra="max_rejected_share = 0.5")
    s = await dry_run(job, FAST)
    assert (s.sent_groups, s.sent_recipients, s.rejected_rows) == (2, 10, 1)
    assert [len(g.to) for g in s.preview] == [8, 2]
    assert not job.ledger.exists()


async def test_a_one_pass_dry_run_finds_what_the_scan_finds(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A job without group_by is scanned and planned in one pass: its summary's input is the
    scan's, and its --rejected-csv holds the scan's rows (a suppressed member is not one)."""
    job, settings, excluded = left_out_job(jobs, 20)
    s = await dry_run(job, settings, excluded=excluded, rejected_csv=tmp_path / "one.csv")
    scanned = scan_input(job, excluded=excluded, rejected_csv=tmp_path / "scan.csv")
    assert s.input == scanned
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "scan.csv").read_text()
    assert (tmp_path / "one.csv").read_text().count("\n") == 4  # header, bad, duplicate, excluded
    counts = (s.sent_recipients, s.rejected_rows, s.duplicate_rows, s.excluded_rows)
    assert counts == (18, 1, 1, 1)  # rejected: the bad row alone
    assert s.suppressed_rows == 1  # the suppressed member: left out on purpose, no loss


async def test_a_dry_run_refuses_the_input_before_a_ledger_it_cannot_use(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An input that loses too many rows is refused (InputError) even when the ledger is
    another input's: the input's refusal comes first, as in a run."""
    jobs.people(8)
    job = jobs.job()
    await crash_mid_send(job, monkeypatch)
    jobs.csv([{"phone": p, "first": "x"} for p in [*numbers(3), "bad", "worse"]])
    with pytest.raises(InputError, match="max_rejected_share"):
        await dry_run(job, FAST)
    with pytest.raises(LedgerMismatch):
        await dry_run(replace(job, max_rejected_share=0.9), FAST)


async def test_ledger_lines_are_json_with_an_event(jobs: JobFactory) -> None:
    """Every ledger line parses with orjson and carries an event field."""
    jobs.people(9)
    job = jobs.job()
    await run_job(job, FAST, FakeClient())
    for line in job.ledger.read_bytes().splitlines():
        assert "event" in orjson.loads(line)


async def test_sender_pool_spreads_groups_and_keeps_senders_on_resume(
    jobs: JobFactory,
) -> None:
    """Groups spread over the pool; a group retried on a later run keeps its first sender."""
    jobs.people(48)
    job = jobs.job(
        extra="group_size = 2",
        sender='["+13125550001", "+13125550002", "+13125550003"]',
    )
    first_try: dict[str, str] = {}

    def handler(group: Group, n: int) -> SendReceipt | SendError:
        first_try.setdefault(group.id, group.message.from_)
        if group.seq % 4 == 0:
            return ServerError("down", status=503)
        return ok_receipt(group, n)

    settings = replace(FAST, retry=replace(FAST.retry, attempts=1))
    client = FakeClient(handler)
    await run_job(job, settings, client)
    used = {g.message.from_ for g in client.calls}
    assert used == {"+13125550001", "+13125550002", "+13125550003"}
    again = FakeClient()
    await run_job(job, settings, again)
    assert len(again.calls) == 6  # the groups that failed transiently
    for group in again.calls:
        assert group.message.from_ == first_try[group.id]


async def test_dry_run_decides_in_doubt_groups_as_a_real_run_would(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group in doubt inside its key window counts as 'would send' in a dry run (a real run
    resends it); with keys not trusted it counts as held, unless --resend-in-doubt."""
    jobs.people(8)
    job = jobs.job()
    await crash_mid_send(job, monkeypatch)
    trusted = await dry_run(job, FAST)
    assert (trusted.sent_groups, trusted.held_groups) == (1, 0)
    untrusted = await dry_run(job, NO_KEYS)
    assert (untrusted.sent_groups, untrusted.held_groups) == (0, 1)
    forced = await dry_run(job, NO_KEYS, resend_in_doubt=True)
    assert (forced.sent_groups, forced.held_groups) == (1, 0)


async def test_after_a_crash_the_recipient_counts_add_up_to_the_whole_input(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed on its first send (before it grouped the whole input) leaves a ledger
    whose recipient counts still add up to every valid recipient of the input."""
    jobs.csv([{"phone": p, "first": "x"} for p in [*numbers(40), "bad"]])
    job = jobs.job(extra="max_rejected_share = 0.5")
    await crash_mid_send(job, monkeypatch)
    r = load(job.ledger).recipients()
    assert (r.valid, r.input_read) == (40, True)
    assert r.sent + r.failed + r.retry_pending + r.in_doubt + r.not_attempted == 40
    assert r.not_attempted > 0  # some groups were never made: counted all the same


async def test_a_clock_step_mid_run_does_not_distort_the_time_spent_sending(
    jobs: JobFactory,
) -> None:
    """The wall clock jumps an hour back mid-run (NTP): the ledger's time spent sending, and so
    the report's achieved rate, are the monotonic span, not an hour off."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4")
    clock = FakeClock()

    def answer(g: Group, n: int) -> SendReceipt:
        clock.advance(1.0)
        if n == 1:
            clock.step_wall(-3600)
        return ok_receipt(g, n)

    await run_job(job, replace(FAST, concurrency=1), FakeClient(answer), clock=clock)
    view = load(job.ledger)
    assert 3.0 <= view.sending_seconds <= 5.0


async def test_a_resume_that_groups_the_input_otherwise_texts_nobody_twice(
    jobs: JobFactory,
) -> None:
    """A ledger resumed by a pass that groups its input otherwise (here another --exclude-sent
    takes its first row out and every later group shifts; a bulk-mms or phonenumbers that
    reads one row otherwise does the same) is refused, naming the first line sent before,
    and its dry run says so: nobody is texted again. Resumed as it began, it sends the rest."""
    jobs.people(16)
    job = jobs.job(extra="group_size = 4")
    first = FakeClient()
    await run_job(job, FAST, first, clock=FakeClock(), limit=2)
    assert len(first.sent_numbers()) == 8
    excluded = {int(first.calls[0].to[0][1:])}  # line 2's number, sent in the first group
    again = FakeClient()
    refused = await run_job(job, FAST, again, clock=FakeClock(), excluded=excluded)
    assert isinstance(refused.error, LedgerMismatch)
    assert "line 3's number was sent in another group" in str(refused.error)
    assert exit_for(refused.error) == 2
    assert again.calls == []
    with pytest.raises(LedgerMismatch, match="groups the input otherwise"):
        await dry_run(job, FAST, excluded=excluded)
    rest = FakeClient()
    s = await run_job(job, FAST, rest, clock=FakeClock())
    assert s.error is None
    assert not set(rest.sent_numbers()) & set(first.sent_numbers())
    assert len(rest.sent_numbers()) == 8


_POOL = st.sampled_from([f"+1212555{i:04d}" for i in range(12)] + ["+442079460000", ""])


@given(st.lists(_POOL), st.lists(_POOL))
def test_the_sent_numbers_a_resume_checks_answer_as_a_set_of_them_would(
    held: list[str], asked: list[str]
) -> None:
    """SortedNumbers (a resume's numbers sent before) says of any number and any group
    whether it holds it, as a set of the same numbers says."""
    numbers, exact = SortedNumbers(held), set(held)
    assert [p in numbers for p in asked + held] == [p in exact for p in asked + held]
    assert numbers.isdisjoint(asked) == exact.isdisjoint(asked)
    assert (bool(numbers), len(numbers)) == (bool(held), len(held))
