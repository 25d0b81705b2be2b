"""The job's deadline in the ledger: each run records the one it sent under, and the report
says of the members a carrier holds until after it (moved out by a delivery report, or in a
group its cap refused at the send, whose failed line keeps the reset) what the run says (no
rerun of the job before its deadline sends them), counted apart, by the one reckoning both
share."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from msgspec.structs import replace

from bulk_mms.clock import iso
from bulk_mms.codes import Action
from bulk_mms.console import run_outcome
from bulk_mms.errors import ApiError, Exit, ResetAfterDeadline
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.html_report import Timeline, render
from bulk_mms.ledger import (
    Failed,
    Header,
    LedgerView,
    Moved,
    Planned,
    RunStarted,
    Sent,
    Status,
)
from bulk_mms.ledger import checkpoint as ckpt
from bulk_mms.ledger.events import Event, decode, encode
from bulk_mms.report import (
    Waiting,
    format_text,
    held_for_reset,
    not_attempted_reasons,
    past_deadline_words,
    summarize,
)
from bulk_mms.runner import run_job
from bulk_mms.testing import ledger_events, write_ledger
from bulk_mms.track import track_ledger
from tests.conftest import FAST, FakeClock, JobFactory, numbers, real_client

UTC = dt.UTC
#: 10:00 in Los Angeles: T-Mobile's daily cap (40016) resets at midnight there, RESET.
MORNING = dt.datetime(2026, 11, 25, 18, 0, tzinfo=UTC)
RESET = dt.datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
#: The job's deadline: before the reset.
DEADLINE = dt.datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
LATER = dt.datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
A, B, C, D = numbers(4, start=400)
CAP = ApiError("40016", "T-Mobile daily cap", "")


class Clock:
    """A wall clock standing at one time (all a report asks of its clock)."""

    def __init__(self, when: dt.datetime) -> None:
        self.when = when.timestamp()

    def monotonic(self) -> float:
        return self.when

    def wall(self) -> float:
        return self.when

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("a report never sleeps")


def run(deadline: dt.datetime | None) -> RunStarted:
    """A run's start, under ``deadline``."""
    stamp = iso(deadline.timestamp()) if deadline is not None else None
    return RunStarted(1, iso(MORNING.timestamp()), deadline=stamp)


def capped(*runs: RunStarted) -> list[Event]:
    """A ledger whose group of four was sent and whose member C met T-Mobile's daily cap,
    moved out to go again from RESET; ``runs`` started before the send."""
    return [
        Header("j", None),
        *runs,
        Planned(4, 1, 0),
        Sent("g1", to=(A, B, C, D), message_id="m1"),
        Status("g1", C, "delivery_failed", errors=(CAP,), at="2026-11-25T18:00:01Z"),
        Moved("g1", (C,), "", "40016", "2026-11-25T18:00:02Z", RESET.timestamp()),
    ]


@pytest.fixture(params=["jsonl", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new ledger: a JSONL file, or one of a database of the test's own (skipped when
    there is no PostgreSQL)."""
    if request.param == "jsonl":
        yield str(tmp_path / "l.jsonl")
    else:
        database: str = request.getfixturevalue("database")
        yield f"{database}?ledger=deadline"


def test_a_run_line_keeps_its_deadline_and_an_old_one_reads_without() -> None:
    """A run line carries the deadline it was written with and reads it back; one without
    a deadline leaves the key out, and a line written before it was kept reads as None."""
    started = run(DEADLINE)
    line = orjson.loads(encode(started))
    assert line["deadline"] == "2026-11-25T20:00:00.000Z"
    assert decode(line) == started
    assert "deadline" not in orjson.loads(encode(run(None)))
    assert decode({"event": "run", "pid": 7, "time": "2026-11-25T18:00:00Z"}) == RunStarted(
        7, "2026-11-25T18:00:00Z"
    )


def test_the_latest_runs_deadline_is_the_one_the_fold_keeps() -> None:
    """Each run's start replaces the deadline the fold holds, a run without one too; a
    checkpoint of the view keeps it."""
    view = LedgerView.fold(capped(run(DEADLINE), run(LATER)))
    assert view.deadline_at == LATER
    assert LedgerView.fold(capped(run(LATER), run(DEADLINE))).deadline_at == DEADLINE
    assert LedgerView.fold(capped(run(DEADLINE), run(None))).deadline_at is None
    again = ckpt.from_state(orjson.loads(orjson.dumps(ckpt.to_state(view))))
    assert again == view
    assert again.deadline_at == LATER


def test_a_reset_is_in_time_only_before_the_deadline_and_while_it_has_not_passed() -> None:
    """The one reckoning: a reset before the deadline is in time, one at or after it is not,
    none is late without a deadline, and once the deadline has passed no reset is in time."""
    waits = {
        "before": Waiting("g", "40016", DEADLINE.timestamp() - 1),
        "at": Waiting("g", "40016", DEADLINE.timestamp()),
        "after": Waiting("g", "40016", RESET.timestamp()),
        "now": Waiting("g", "40002", 0.0),
    }
    held = held_for_reset(waits, MORNING.timestamp(), DEADLINE)
    assert (sorted(held.in_time), sorted(held.past_deadline)) == (
        ["before", "now"],
        ["after", "at"],
    )
    assert not held_for_reset(waits, MORNING.timestamp(), None).past_deadline
    passed = held_for_reset(waits, DEADLINE.timestamp(), DEADLINE)
    assert (passed.in_time, len(passed.past_deadline)) == ({}, 4)


def test_the_report_counts_members_held_past_the_deadline_apart_and_names_it(
    where: str,
) -> None:
    """On either store, a member a carrier holds until after the latest run's deadline is
    counted apart from those a rerun sends; the table and the HTML page's reasons name the
    deadline and what to do, and promise no rerun from the reset."""
    path = write_ledger(where, capped(run(DEADLINE)))
    s = summarize(path, clock=Clock(MORNING))
    d = s.as_dict()
    assert (d["recipients"]["not_attempted"], d["waiting_recipients"]) == (1, 0)
    assert (d["waiting_past_deadline"], d["deadline"], d["waiting_not_before"]) == (
        1,
        "2026-11-25T20:00Z",
        None,
    )
    text = format_text(s, path)
    line = next(x for x in text.splitlines() if "T-Mobile" in x and "recipient" in x)
    assert line.endswith(
        "moved out of their sent group; no rerun of this job before its deadline "
        "(2026-11-25T20:00Z) sends them: move the deadline later, or send them in a new job"
    )
    assert "(1 wait past the job's deadline: see below)" in text
    assert "a rerun from" not in text
    assert [n for n, _ in not_attempted_reasons(s)] == [1]
    assert past_deadline_words(DEADLINE) in not_attempted_reasons(s)[0][1]


def test_a_deadline_moved_past_the_reset_makes_the_rerun_promise_again(tmp_path: Path) -> None:
    """A later run under a deadline after the reset is the one that counts: the report says
    again that a rerun from the reset sends the member, as the run would (exit 5)."""
    path = write_ledger(tmp_path / "l.jsonl", capped(run(DEADLINE), run(LATER)))
    s = summarize(path, clock=Clock(MORNING))
    assert (s.as_dict()["waiting_recipients"], len(s.waiting.past_deadline)) == (1, 0)
    assert "a rerun from 2026-11-26T08:00Z sends them" in format_text(s, path)


def test_a_ledger_written_before_runs_kept_their_deadline_reads_as_before(
    tmp_path: Path,
) -> None:
    """A ledger whose run lines carry no deadline (an older bulk-mms): none is known, the
    member is promised a rerun from the reset, as before."""
    old = RunStarted(1, iso(MORNING.timestamp()))
    path = write_ledger(tmp_path / "l.jsonl", capped(old))
    s = summarize(path, clock=Clock(MORNING))
    d = s.as_dict()
    assert (d["waiting_recipients"], d["waiting_past_deadline"], d["deadline"]) == (1, 0, None)
    assert "a rerun from 2026-11-26T08:00Z sends them" in format_text(s, path)
    assert "deadline" not in format_text(s, path)


def test_once_the_deadline_has_passed_no_member_waiting_is_promised_a_rerun(
    tmp_path: Path,
) -> None:
    """Read after the deadline, even a member whose reset came before it is said to be
    sent by no rerun before the deadline: the clock the report is given decides."""
    early = [*capped(run(DEADLINE))[:-1], Moved("g1", (C,), "", "40016", "t", 1.0)]
    path = write_ledger(tmp_path / "l.jsonl", early)
    assert summarize(path, clock=Clock(MORNING)).waiting.past_deadline == {}
    late = summarize(path, clock=Clock(LATER))
    assert list(late.waiting.past_deadline) == [C]
    assert past_deadline_words(DEADLINE) in format_text(late, path)


async def test_the_run_and_the_report_agree_on_a_carriers_cap_past_the_deadline(
    jobs: JobFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real client against the fake API, whose delivery report gives one member
    T-Mobile's daily cap (reset at midnight in Los Angeles, after the job's deadline): the
    run records its deadline, the rerun after tracking exits 1 saying no rerun before the
    deadline sends them, and the report of the ledger counts and says the same."""
    people = numbers(4)
    jobs.people(4)
    job = jobs.job(extra=f'group_size = 4\ndeadline = "{DEADLINE.isoformat()}"')
    clock = FakeClock(wall=MORNING.timestamp())
    fake = FakeTelnyx(report={people[2]: "40016"})
    async with real_client(fake) as client:
        first = await run_job(job, FAST, client, clock=clock)
        await track_ledger(job.ledger, FAST, client, clock=clock)
        rerun = await run_job(job, FAST, client, clock=clock)
    assert run_outcome(first) == Exit.OK
    capsys.readouterr()
    assert run_outcome(rerun) == Exit.INCOMPLETE
    said = capsys.readouterr().out
    runs = [e for e in ledger_events(job.ledger) if e["event"] == "run"]
    assert [e["deadline"] for e in runs] == ["2026-11-25T20:00:00.000Z"] * 2
    s = summarize(job.ledger, clock=clock)
    d = s.as_dict()
    assert (rerun.waiting_recipients, rerun.waiting_past_deadline) == (0, 1)
    assert (d["waiting_recipients"], d["waiting_past_deadline"]) == (0, 1)
    assert rerun.as_log()["deadline"] == d["deadline"] == "2026-11-25T20:00Z"
    words = past_deadline_words(DEADLINE)
    assert words in said
    assert words in format_text(s, job.ledger)
    assert fake.recipient_counts() == dict.fromkeys(people, 1)


# -- a carrier's cap answered to the send (40016 at the send, not in a delivery report) ------


def refused(resets: float) -> Failed:
    """The group of four, refused at the send with T-Mobile's daily cap, lifting at
    ``resets`` (0: a line written before the reset was kept)."""
    return Failed(
        "g1",
        to=(A, B, C, D),
        attempts=1,
        time="2026-11-25T18:00:01Z",
        status=400,
        code="40016",
        title="T-Mobile daily cap",
        retryable=True,
        action=Action.DEFER,
        resets=resets,
    )


def refused_at_send(*runs: RunStarted, resets: float = RESET.timestamp()) -> list[Event]:
    """A ledger whose one group a 40016 refused at the send, the cap lifting at ``resets``."""
    return [Header("j", None), *runs, Planned(4, 1, 0), refused(resets)]


def test_a_failed_line_keeps_its_reset_and_an_old_one_reads_without() -> None:
    """A failed line carries the reset of the cap that refused its group and reads it back;
    one no cap refused leaves the key out, and a line written before it was kept reads 0."""
    line = orjson.loads(encode(refused(RESET.timestamp())))
    assert line["resets"] == RESET.timestamp()
    assert decode(line) == refused(RESET.timestamp())
    assert "resets" not in orjson.loads(encode(refused(0.0)))
    del line["resets"]
    assert decode(line).resets == 0.0  # type: ignore[union-attr]


def test_the_fold_and_its_checkpoint_keep_a_refused_groups_reset() -> None:
    """The fold keeps the reset of the group a cap refused at the send while it is pending a
    rerun, a checkpoint of the view too; a later failure of another kind clears it."""
    view = LedgerView.fold(refused_at_send(run(DEADLINE)))
    assert view.groups["g1"].resets == RESET.timestamp()
    again = ckpt.from_state(orjson.loads(orjson.dumps(ckpt.to_state(view))))
    assert again == view
    assert again.groups["g1"].resets == RESET.timestamp()
    later = Failed("g1", to=(A, B, C, D), status=503, retryable=True)
    assert LedgerView.fold([*refused_at_send(run(DEADLINE)), later]).groups["g1"].resets == 0.0


def test_the_report_says_no_rerun_sends_a_group_capped_past_the_deadline(where: str) -> None:
    """On either store, a group a 40016 refused at the send whose reset comes after the
    latest run's deadline: the table, the JSON and the HTML page say no rerun of the job
    before its deadline sends it, and promise no plain rerun."""
    path = write_ledger(where, refused_at_send(run(DEADLINE)))
    s = summarize(path, clock=Clock(MORNING))
    d = s.as_dict()
    assert (d["retry_pending_recipients"], d["retry_pending_past_deadline"]) == (4, 4)
    assert (d["retry_pending_not_before"], d["deadline"]) == (None, "2026-11-25T20:00Z")
    text = format_text(s, path)
    words = past_deadline_words(DEADLINE)
    line = next(x for x in text.splitlines() if x.startswith("  retry pending"))
    assert line.endswith(f"(Telnyx error 40016); {words}")
    row = next(x for x in text.splitlines() if x.startswith("retry pending"))
    assert row.endswith("(4 wait past the job's deadline: see below)")
    assert "a plain rerun" not in row
    assert html.escape(words) in render(s, Timeline(), "ledger")


def test_the_report_says_from_when_a_rerun_sends_a_group_capped_before_the_deadline(
    tmp_path: Path,
) -> None:
    """With the reset before the latest run's deadline, the report says a rerun from the
    reset sends the group; read after the reset, a plain rerun does, as for any group
    pending a rerun; a line written before resets were kept reads as before."""
    path = write_ledger(tmp_path / "l.jsonl", refused_at_send(run(LATER + dt.timedelta(days=1))))
    s = summarize(path, clock=Clock(MORNING))
    d = s.as_dict()
    assert (d["retry_pending_not_before"], d["retry_pending_past_deadline"]) == (
        "2026-11-26T08:00Z",
        0,
    )
    text = format_text(s, path)
    assert "(Telnyx error 40016); a rerun from 2026-11-26T08:00Z sends them" in text
    assert "(4 wait for a carrier's reset: see below)" in text
    after = format_text(summarize(path, clock=Clock(LATER)), path)
    assert "(a plain rerun sends them)" in after
    assert "a rerun from" not in after
    old = tmp_path / "old.jsonl"
    write_ledger(old, refused_at_send(run(DEADLINE), resets=0.0))
    assert "(a plain rerun sends them)" in format_text(summarize(old, clock=Clock(MORNING)), old)


async def test_the_run_and_the_report_agree_on_a_cap_answered_to_the_send_past_the_deadline(
    jobs: JobFactory,
) -> None:
    """The real client against the fake API, whose answer to the first send is a 40016 (the
    carrier's daily cap, lifting at midnight in Los Angeles, after the job's deadline): the
    run exits 1 saying it lifts only after the deadline, its failed line keeps the reset the
    run worked out, and the report of the ledger says no rerun before the deadline sends the
    group, naming the same deadline."""
    jobs.people(8)
    job = jobs.job(extra=f'group_size = 4\ndeadline = "{DEADLINE.isoformat()}"')
    clock = FakeClock(wall=MORNING.timestamp())
    fake = FakeTelnyx()
    fake.faults.append(Fault("status", 400, code="40016"))
    async with real_client(fake) as client:
        s = await run_job(job, replace(FAST, concurrency=1), client, clock=clock)
    assert (run_outcome(s), type(s.error)) == (Exit.INCOMPLETE, ResetAfterDeadline)
    assert "lifts only after the job's deadline (2026-11-25T20:00Z)" in str(s.error)
    failed = [e for e in ledger_events(job.ledger) if e["event"] == "failed"]
    assert [(e["code"], e["resets"]) for e in failed] == [("40016", RESET.timestamp())]
    report = summarize(job.ledger, clock=clock)
    d = report.as_dict()
    assert (d["retry_pending_past_deadline"], d["retry_pending_not_before"]) == (4, None)
    assert d["deadline"] == s.as_log()["deadline"] == "2026-11-25T20:00Z"
    assert past_deadline_words(DEADLINE) in format_text(report, job.ledger)


def test_once_the_deadline_has_passed_nobody_left_is_promised_a_plain_rerun(
    tmp_path: Path,
) -> None:
    """Read after the latest run's deadline, a group pending a rerun (a 429) and the
    recipients never attempted are said to be sent by no rerun before the deadline, as the
    members waiting for a reset are (a run then records them expired and exits 1), in the
    table, the JSON and the HTML page's reasons; read before it, a plain rerun sends them."""
    evs: list[Event] = [
        Header("j", None),
        run(DEADLINE),
        Planned(12, 3, 0),
        Sent("g1", to=(A, B, C, D), message_id="m1"),
        Failed("g2", to=tuple(numbers(4, 100)), status=429, code="429", retryable=True),
    ]
    path = write_ledger(tmp_path / "l.jsonl", evs)
    before = summarize(path, clock=Clock(MORNING))
    assert before.as_dict()["deadline_passed"] is False
    assert "(a plain rerun sends them)" in format_text(before, path)
    s = summarize(path, clock=Clock(LATER))
    assert s.as_dict()["deadline_passed"] is True
    text = format_text(s, path)
    words = past_deadline_words(DEADLINE)
    assert "a plain rerun" not in text
    for label in ("retry pending", "not attempted"):
        row = next(x for x in text.splitlines() if x.startswith(label))
        assert row.endswith(f"{words})")
    assert [why for _, why in not_attempted_reasons(s)] == [f"not sent yet: {words}"]
