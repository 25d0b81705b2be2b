"""A host paused past its lease after the API accepted its request writes that group's
``sent`` late, once another host has taken the claim over. The late line is not fenced: it is
the truth (the message went out), and the taker, which never sends a group whose attempt is
open, may not know it yet. These tests show the path texts nobody twice and the ledger's fold
stays right whichever host writes first."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from bulk_mms.errors import AmbiguousSendError, SendError
from bulk_mms.ledger import events, load, open_store, read_events
from bulk_mms.ledger.store import named
from bulk_mms.models import Group, MessageRecord, SendReceipt
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, ok_receipt


@pytest.mark.parametrize("records", [True, False], ids=["taker-settles", "taker-holds"])
async def test_a_late_sent_after_a_takeover_texts_nobody_twice_and_folds_once(
    jobs: JobFactory, database: str, records: bool
) -> None:
    """The first host's request for a group is accepted, then it stops before recording it
    (its attempt open); the second host takes the group over and never sends it (it settles
    it by the API's records, or holds it in doubt while they say nothing); then the first
    host's late ``sent`` lands: everyone was texted once, and the ledger counts the group
    sent once, by the first ``sent`` it holds."""
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    job = replace(job, database=str(named(database, job.name)))
    no_retry = replace(FAST, retry=replace(FAST.retry, retry_ambiguous=False))
    server: list[MessageRecord] = []  # the API's records, as the taker reads them
    paused: list[tuple[Group, SendReceipt]] = []

    def first_host(g: Group, n: int) -> SendReceipt | SendError:
        receipt = ok_receipt(g, n)
        if g.seq != 0:
            return receipt
        now = FakeClock().wall()
        server.extend(
            MessageRecord(f"{receipt.message_id}/{p}", g.message.from_, p, now, "DELIVERED")
            for p in g.to
        )
        paused.append((g, receipt))  # accepted; the host stops before it records that
        return AmbiguousSendError("paused", status=None)  # its run records no outcome: below

    first = FakeClient(first_host)
    await run_job(job, no_retry, first, clock=FakeClock())
    ((group, receipt),) = paused
    _drop_outcome(database, group.id)  # as the paused host left it: its attempt open
    second = FakeClient(records=server if records else [])
    s2 = await run_job(job, no_retry, second, clock=FakeClock())
    assert second.calls == []  # an open attempt is never sent again blindly
    assert (s2.skipped_groups, s2.held_groups) == ((2, 0) if records else (1, 1))

    late = open_store(job.where, "append")  # the first host, woken: its sent, unfenced
    try:
        await late.append(
            events.Sent(
                group=group.id,
                to=group.to,
                seq=group.seq,
                message_id=receipt.message_id,
                from_=group.message.from_,
                time="2026-01-01T00:00:00Z",
            )
        )
    finally:
        await late.close()

    texted = [p for g in first.calls for p in g.to]
    assert sorted(texted) == sorted(set(texted))  # each once
    assert len(texted) == 8
    report = summarize(job.where)
    assert report.recipient_states.sent == 8
    assert report.recipient_states.in_doubt == 0
    view = load(job.where)
    assert view.groups[group.id].state == "sent"
    assert view.sent_events == 2  # one group each: the late line counted no second send
    sent_lines = [e for e in read_events(job.where) if isinstance(e, events.Sent)]
    assert sum(e.group == group.id for e in sent_lines) == (2 if records else 1)


def _drop_outcome(database: str, group: str) -> None:
    """Take the group's outcome out of the ledger, leaving its attempt open: what a host
    paused between its request's answer and its ``sent`` leaves behind."""
    import psycopg  # noqa: PLC0415 - this helper's alone

    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM bulk_mms_events WHERE grp = %s AND kind IN ('in_doubt', 'failed')",
            (group,),
        )
