"""A number put on the suppression list while a run goes on (an inbound STOP the webhook
receiver took, ``suppress add``) is seen by that run before it reaches the number: its file,
or the database's table, is read again for what was added, every few seconds of the run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from msgspec.structs import replace
from psycopg import sql
from structlog.testing import capture_logs

from bulk_mms import suppression as suppression_module
from bulk_mms.console import run_outcome
from bulk_mms.errors import AmbiguousSendError, ConfigError, ServerError
from bulk_mms.ledger.fold import Miss
from bulk_mms.ledger.pgsuppression import _ADDED_SINCE, _COMMIT_SLACK_S
from bulk_mms.models import Group, SendReceipt
from bulk_mms.report import summarize
from bulk_mms.runner import SUPPRESSION_LOOK_S, run_job
from bulk_mms.suppression import default_list, suppression_for
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers, ok_receipt

#: The numbers of the job, one a group; the one that texts STOP once the run has begun.
PEOPLE = 40
LATE_STOP = numbers(PEOPLE)[30]


@pytest.mark.parametrize(
    "kind",
    # the database's shared pacing is real time: 2 s of sending
    ["file", pytest.param("database", marks=pytest.mark.looptime(False))],
)
async def test_a_stop_texted_mid_run_is_seen_before_the_run_reaches_that_number(
    jobs: JobFactory, kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A STOP recorded on the list after the run began, before the run reached that number:
    the number is not sent, and the run's summary and the report count it suppressed."""
    monkeypatch.setattr("bulk_mms.runner.SUPPRESSION_LOOK_S", 0.2)  # a look between sends
    jobs.people(PEOPLE)
    job = jobs.job(extra="group_size = 1")
    where: object = None
    if kind == "database":
        where = f"{request.getfixturevalue('database')}?ledger=midrun"
        job = replace(job, database=where)
    the_list = suppression_for(None, where)  # what `bulk-mms webhooks` writes a STOP to
    settings = replace(FAST, rate=20.0, concurrency=1)  # 2 s of sending: several looks

    def handler(group: Group, n: int) -> SendReceipt:
        if n == 2:
            the_list.add([LATE_STOP], "texted STOP (webhook)")
        return ok_receipt(group, n)

    client = FakeClient(handler)
    s = await run_job(job, settings, client, clock=FakeClock())
    assert LATE_STOP not in client.sent_numbers()
    assert len(client.calls) == PEOPLE - 1
    assert (s.sent_groups, s.failed_groups, s.suppressed_rows) == (PEOPLE - 1, 0, 1)
    report = summarize(job.where)
    assert report.rows.suppressed == 1
    assert report.recipient_states.sent == PEOPLE - 1
    assert report.recipient_states.failed == 0


async def test_a_file_list_is_read_again_only_once_it_changed(tmp_path: Path) -> None:
    """`look_again` reads the file only when it changed, takes in what was added, and keeps a
    number taken off meanwhile (a lift is the next run's)."""
    path = tmp_path / "suppressed.txt"
    path.write_text("+12125550001\n+12125550002\n", encoding="utf-8")
    listed = suppression_for(path)
    assert listed.look_again() == []
    path.write_text("+12125550001\n+12125550003  # texted STOP\n", encoding="utf-8")
    assert listed.look_again() == ["+12125550003"]
    assert listed.numbers() == ["+12125550001", "+12125550002", "+12125550003"]
    assert listed.look_again() == []
    assert SUPPRESSION_LOOK_S <= 10  # an opt-out is seen within seconds


async def test_a_list_that_cannot_be_read_mid_run_is_logged_and_the_run_goes_on(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list file broken mid-run (a line that is not a number) stops no run: each look logs
    `suppression.unread`, naming the file and line, and the run sends by the list it read."""
    monkeypatch.setattr("bulk_mms.runner.SUPPRESSION_LOOK_S", 0.2)
    jobs.people(PEOPLE)
    job = jobs.job(extra="group_size = 1")
    the_list = default_list()
    the_list.parent.mkdir(parents=True, exist_ok=True)
    the_list.write_text("+19175550000\n", encoding="utf-8")

    def handler(group: Group, n: int) -> SendReceipt:
        if n == 2:
            the_list.write_text(f"+19175550000\n{LATE_STOP} oops\n", encoding="utf-8")
        return ok_receipt(group, n)

    client = FakeClient(handler)
    with capture_logs() as logs:
        s = await run_job(job, replace(FAST, rate=2.0, concurrency=1), client, clock=FakeClock())
    assert (s.sent_groups, s.failed_groups, s.stopped) == (PEOPLE, 0, None)
    unread = [e for e in logs if e["event"] == "suppression.unread"]
    assert len(unread) > 1  # each look, not only the first after the change
    assert f"{the_list}:2" in unread[0]["error"]


async def test_a_look_that_could_not_read_the_file_reads_it_at_the_next_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look whose read of a changed file fails (an I/O error, the file not changed since)
    takes the STOP in at the next look: the failed read does not pass for the file read."""
    path = tmp_path / "suppressed.txt"
    path.write_text("+12125550001\n", encoding="utf-8")
    listed = suppression_for(path)
    path.write_text("+12125550001\n+12125550003  # texted STOP\n", encoding="utf-8")
    real = suppression_module._read

    def failing(p: Path) -> list[str]:
        raise ConfigError("suppression.file", f"cannot read {p}: [Errno 5] Input/output error")

    monkeypatch.setattr(suppression_module, "_read", failing)
    with pytest.raises(ConfigError, match="Input/output error"):
        listed.look_again()
    monkeypatch.setattr(suppression_module, "_read", real)
    assert listed.look_again() == ["+12125550003"]
    assert "+12125550003" in listed


@pytest.mark.parametrize("look", ["prompt", "slow to return"])
async def test_a_stop_texted_mid_run_counts_once_when_the_run_ends_before_its_input(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, look: str
) -> None:
    """A run that stops before its input's end (here ``--limit``) after leaving out a number
    put on the list mid-run counts it suppressed and not valid: in its summary's rows, its
    recipients and the report alike, the input's rows add up once; so too when the planner
    leaves the number out as soon as the look's thread has taken it in, before the look
    itself resumes on the loop (the count does not depend on which of the two runs first)."""
    monkeypatch.setattr("bulk_mms.runner.SUPPRESSION_LOOK_S", 0.2)
    handed_back = threading.Event()
    if look == "slow to return":
        real = suppression_module.Suppressed.look_again

        def slow_to_return(self: suppression_module.Suppressed) -> list[str]:
            new = real(self)
            if new:  # the thread hands its answer back only once later groups were planned
                handed_back.wait(timeout=10)
            return new

        monkeypatch.setattr(suppression_module.Suppressed, "look_again", slow_to_return)
    jobs.people(PEOPLE)
    job = jobs.job(extra="group_size = 1")
    the_list = default_list()
    early_stop = numbers(PEOPLE)[10]

    def handler(group: Group, n: int) -> SendReceipt:
        if n == 2:
            suppression_for(None).add([early_stop], "texted STOP (webhook)")
        if n == 15:
            handed_back.set()
        return ok_receipt(group, n)

    client = FakeClient(handler)
    settings = replace(FAST, rate=20.0, concurrency=1)
    s = await run_job(job, settings, client, clock=FakeClock(), limit=20)
    assert the_list.exists()
    assert early_stop not in client.sent_numbers()
    assert s.recipients is not None
    assert (s.recipients.valid, s.recipients.sent, s.recipients.not_attempted) == (39, 20, 19)
    assert "1 suppressed" in s.rows_text()
    report = summarize(job.where)
    assert (report.rows.valid, report.rows.suppressed) == (PEOPLE - 1, 1)
    assert report.recipient_states.not_attempted == 19


async def test_a_number_put_on_the_list_after_its_group_failed_for_now_is_not_texted(
    jobs: JobFactory,
) -> None:
    """A group left pending a rerun (503) whose member is then put on the list (a complaint by
    email: Telnyx knows nothing of it) goes out without that member on the rerun, as the docs
    promise of a group not yet sent; the member is refused as Telnyx refuses a number that
    texted STOP (40300), and the report names them opted out: the run exits 0."""
    people = numbers(8)
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")

    def down_for_one(group: Group, n: int) -> SendReceipt:
        if people[5] in group.to:
            raise ServerError("down", status=503)
        return ok_receipt(group, n)

    first = await run_job(job, FAST, FakeClient(down_for_one), clock=FakeClock())
    assert first.retry_later_groups == 1
    suppression_for(None).add([people[5]], "complaint by email")
    client = FakeClient()
    again = await run_job(job, FAST, client, clock=FakeClock())
    assert people[5] not in client.sent_numbers()
    assert sorted(client.sent_numbers()) == sorted(set(people[4:]) - {people[5]})
    assert run_outcome(again) == 0  # refused as Telnyx refuses a STOP (40300): not a failure
    report = summarize(job.where)
    assert (report.recipient_states.sent, report.misses[Miss.OPTED_OUT]) == (7, 1)
    assert report.recipient_states.opted_out == 1


async def test_a_stop_taken_after_a_group_was_planned_keeps_that_number_out_of_it(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A STOP put on the list after its group was planned (every group is planned before
    the first leaves) is honoured as the group leaves, once the run's look has taken it in:
    the number is never texted, the rest of its group goes without it, and it is recorded
    opted out, as Telnyx's own 40300 refusal is: the run exits 0."""
    monkeypatch.setattr("bulk_mms.runner.SUPPRESSION_LOOK_S", 0.2)  # a look between sends
    people = numbers(6)
    jobs.people(6)
    job = jobs.job(extra="group_size = 2\nmix_unrelated = true")
    late = people[3]

    def stop_after_first(g: Group, n: int) -> SendReceipt:
        if n == 0:  # the receiver, a process of its own, takes the STOP after the first send
            suppression_for(None).add([late], "texted STOP (webhook)")
        return ok_receipt(g, n)

    client = FakeClient(stop_after_first)
    one_a_second = replace(FAST, rate=1.0, concurrency=1)  # every group planned at once
    summary = await run_job(job, one_a_second, client, clock=FakeClock())
    texted = client.sent_numbers()
    assert late not in texted
    assert sorted(texted) == sorted(set(people) - {late})
    assert run_outcome(summary) == 0  # refused as Telnyx refuses a STOP (40300): not a failure
    assert summarize(job.where).misses[Miss.OPTED_OUT] == 1


async def test_a_number_put_on_the_list_after_its_group_went_in_doubt_is_not_resent_to(
    jobs: JobFactory,
) -> None:
    """A group left in doubt (keys not trusted) whose member is then put on the list is not
    resent with --resend-in-doubt (its request would go out as it was, to them too): it is
    held in doubt, saying why, and nobody of it is texted."""
    people = numbers(4)
    jobs.people(4)
    job = jobs.job()
    no_keys = replace(FAST, retry=replace(FAST.retry, retry_ambiguous=False))
    first = await run_job(
        job, no_keys, FakeClient(lambda g, n: AmbiguousSendError("dropped")), clock=FakeClock()
    )
    assert first.in_doubt_groups == 1
    suppression_for(None).add([people[1]], "texted STOP (webhook)")
    resend = FakeClient()
    with capture_logs() as logs:
        again = await run_job(job, no_keys, resend, clock=FakeClock(), resend_in_doubt=True)
    assert resend.sent_numbers() == []
    assert again.held_groups == 1
    [held] = [e for e in logs if e["event"] == "group.held_for_opt_out"]
    assert held["members"] == [people[1]]


async def test_a_number_another_process_added_is_late_however_this_one_read_it(
    tmp_path: Path,
) -> None:
    """A number another process put on the list is noted late when this process's own
    addition (a 40300's) reads it in, though no look then reports it new."""
    path = tmp_path / "suppressed.txt"
    path.write_text("+12125550001\n", encoding="utf-8")
    listed = suppression_for(path)
    with path.open("a", encoding="utf-8") as f:  # the webhook receiver takes a STOP
        f.write("+12125550003  # texted STOP\n")
    listed.add(["+12125550004"], "opted out (40300)")
    assert listed.look_again() == []  # read in by the addition already
    assert (listed.late("+12125550003"), listed.late("+12125550001")) == (True, False)


def _scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an ``EXPLAIN (FORMAT JSON)`` plan, this one first."""
    yield plan
    for child in plan.get("Plans", []):
        yield from _scans(child)


def test_a_look_reads_the_rows_added_since_through_the_index(database: str) -> None:
    """The look's query (what every run on every host asks every few seconds) reads a list of
    thousands of numbers, none added lately, by the index on ``added``, not by a scan of the
    table, in the plan made for its values and in the generic plan alike; and takes in a
    number added since."""
    listed = suppression_for(None, database)  # the schema made
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO bulk_mms_suppressions (number, reason, added) "
            "SELECT '+1212' || (5000000 + i)::text, 'imported', now() - interval '30 days' "
            "FROM generate_series(1, 10000) i"
        )
        conn.execute("ANALYZE bulk_mms_suppressions")
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        plans = [conn.execute(f"EXPLAIN (FORMAT JSON) {_ADDED_SINCE}", (row[0], _COMMIT_SLACK_S))]
        # the generic plan a connection that reuses the query may switch to (psycopg
        # prepares a query run five times on one connection)
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE look AS {_ADDED_SINCE.replace('%s', '$1', 1).replace('%s', '$2')}")
        values = sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE look({}, {})").format(row[0], 60.0)
        plans.append(conn.execute(values))
        found = [cur.fetchone() for cur in plans]
    for plan in found:
        assert plan is not None
        nodes = list(_scans(plan[0][0]["Plan"]))
        assert [n["Node Type"] for n in nodes if n["Node Type"] == "Seq Scan"] == []
        assert "bulk_mms_suppressions_added" in {n.get("Index Name") for n in nodes}
    listed.add(["+12125550100"], "texted STOP (webhook)")
    other = suppression_for(None, database)
    listed.add(["+12125550101"], "texted STOP (webhook)")
    assert other.look_again() == ["+12125550101"]
