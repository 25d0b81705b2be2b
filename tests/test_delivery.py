"""Delivery statuses and costs as the API reports them: every status of the spec, ``unknown``
and ``delivery_unconfirmed`` final but unconfirmed, and final costs over the send's estimate."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from bulk_mms.answers import parse_statuses
from bulk_mms.delivery import FINAL, NOT_RECEIVED, STATUSES, UNCONFIRMED, Known, supersedes
from bulk_mms.errors import ApiError
from bulk_mms.ledger import LedgerView, Sent, checkpoint, load
from bulk_mms.ledger.events import status_event
from bulk_mms.models import Money, RecipientStatus
from bulk_mms.report import format_text, summarize
from bulk_mms.testing import ledger_events
from bulk_mms.track import track_ledger
from tests.conftest import FAST, FakeClock, JobFactory, sent_ledger

USD = "USD"


def test_every_status_of_the_spec_is_known_and_classified() -> None:
    """The spec's statuses (and ``unknown``) are each final or in progress; the failures and
    the unconfirmed ones are final; none is both a failure and unconfirmed."""
    assert set(STATUSES) == {
        "queued",
        "sending",
        "sent",
        "expired",
        "sending_failed",
        "delivery_unconfirmed",
        "delivered",
        "delivery_failed",
        "unknown",
    }
    assert set(STATUSES) - FINAL == {"queued", "sending", "sent"}
    assert {"expired", "sending_failed", "delivery_failed"} == NOT_RECEIVED
    assert {"delivery_unconfirmed", "unknown"} == UNCONFIRMED
    assert NOT_RECEIVED <= FINAL
    assert UNCONFIRMED <= FINAL
    assert not NOT_RECEIVED & UNCONFIRMED
    # every in-progress status moves forward, and any of them gives way to a final one
    for old in ("queued", "sending", "sent"):
        for new in FINAL:
            assert supersedes(new, None, Known(old))


def answer(group_to: tuple[str, ...], statuses: list[str], costs: list[str | None]) -> object:
    """``GET /messages/group/{id}``'s ``data``: one message per recipient, its own id and cost."""
    return [
        {
            "id": f"own-{phone[-4:]}",
            "to": [{"phone_number": phone, "status": status}],
            "cost": {"amount": cost, "currency": USD} if cost is not None else None,
            "errors": [],
            "completed_at": "2026-11-23T10:00:00Z",
        }
        for phone, status, cost in zip(group_to, statuses, costs, strict=True)
    ]


async def tracked(jobs: JobFactory, plan: list[tuple[list[str], list[str | None]]]) -> Path:
    """A ledger of 8 sent in groups of 4, tracked one pass against a fake whose GET answers
    each group with the statuses and costs of ``plan``."""
    path, client = await sent_ledger(jobs, 8)
    for (n, g), (statuses, costs) in zip(enumerate(client.calls), plan, strict=True):
        client.delivery[f"msg-{g.id}-{n}"] = parse_statuses(answer(g.to, statuses, costs))
    await track_ledger(path, FAST, client, clock=FakeClock())
    return path


async def test_follow_finishes_on_unknown_and_unconfirmed(jobs: JobFactory) -> None:
    """Recipients ``unknown`` (not on Telnyx) or ``delivery_unconfirmed`` are final: one pass
    of ``track --follow`` and nothing is pending; the report counts them "delivered?
    unconfirmed", neither failed nor pending."""
    path, client = await sent_ledger(jobs, 8)
    plan = [
        ["unknown", "unknown", "delivery_unconfirmed", "delivered"],
        ["unknown", "delivered", "delivered", "delivery_failed"],
    ]
    for (n, g), statuses in zip(enumerate(client.calls), plan, strict=True):
        client.delivery[f"msg-{g.id}-{n}"] = parse_statuses(answer(g.to, statuses, [None] * 4))
    result = await track_ledger(path, FAST, client, follow=True, clock=FakeClock())
    assert (result.passes, result.pending, result.requests) == (1, 0, 2)
    s = summarize(path)
    d = s.as_dict()
    assert (d["delivery_unconfirmed"], d["delivery_pending"]) == (4, 0)
    assert d["undelivered_recipients"] == 1  # only the delivery_failed one
    assert "delivered? unconfirmed: 4 recipients" in format_text(s, path)
    assert "not final yet" not in format_text(s, path)


def test_a_get_gives_a_recipient_its_own_cost_exactly_and_a_group_message_none() -> None:
    """A message naming one recipient gives them its cost as an exact Decimal (a string
    amount); a message naming several gives nobody a cost (it is not one recipient's)."""
    one = parse_statuses(answer(("+13125550001",), ["delivered"], ["0.00305"]))
    assert one[0].cost == Money(Decimal("0.00305"), USD)
    several = parse_statuses(
        {
            "id": "group-id",
            "cost": {"amount": "0.0102", "currency": USD},
            "to": [
                {"phone_number": "+13125550001", "status": "delivered"},
                {"phone_number": "+13125550002", "status": "delivered"},
            ],
        }
    )
    assert [st.cost for st in several] == [None, None]


async def test_report_shows_final_costs_where_known_and_says_which(jobs: JobFactory) -> None:
    """One group's recipients all report final costs, the other's half of them: the report
    totals final where known and the estimate's share elsewhere, and says how much is which."""
    path = await tracked(
        jobs,
        [
            (["delivered"] * 4, ["0.0060"] * 4),
            (["delivered", "unknown", "sent", "sent"], ["0.0050", "0.0050", None, None]),
        ],
    )
    s = summarize(path)
    # final: 4 x 0.0060 + 2 x 0.0050; estimated: half of the second group's 0.0204
    assert s.cost_parts == {USD: (Decimal("0.0340"), Decimal("0.01020000"))}
    assert s.total_cost == Decimal("0.0442")
    assert "cost         0.0442 USD: 0.034 final, 0.0102 estimated" in format_text(s, path)
    lines = [e for e in ledger_events(path) if e["event"] == "status" and "cost" in e]
    assert {e["cost"]["amount"] for e in lines} == {"0.0060", "0.0050"}  # strings, not floats


async def test_a_cost_with_a_status_not_final_is_not_taken_as_final(jobs: JobFactory) -> None:
    """A report still ``sent`` carries only an estimate: nothing final is kept, and the report
    says the whole cost is estimated."""
    path = await tracked(jobs, [(["sent"] * 4, ["0.0070"] * 4), (["queued"] * 4, [None] * 4)])
    view = load(path)
    assert view.final_cost == {}
    assert "0.0408 USD (estimated" in format_text(summarize(path), path)


async def test_final_costs_survive_replay_and_checkpoint(jobs: JobFactory) -> None:
    """The fold's final costs are the same after a replay from the ledger and after a
    checkpoint's state is read back."""
    path = await tracked(jobs, [(["delivered"] * 4, ["0.0060"] * 4), (["sent"] * 4, [None] * 4)])
    view = load(path)
    assert len(view.final_cost) == 4
    assert set(view.final_cost.values()) == {Money(Decimal("0.0060"), USD)}
    saved = orjson.loads(orjson.dumps(checkpoint.to_state(view)))  # as a checkpoint file holds it
    assert checkpoint.from_state(saved) == view


def test_a_late_final_cost_is_news_once_and_a_stale_one_changes_nothing() -> None:
    """A final cost for a recipient already final is news once (recorded); the same again, or
    a different one from a report that is not news, is not."""
    view = LedgerView()
    phone = "+13125550001"
    assert view.apply_status(RecipientStatus(phone, "delivered", at="2026-11-23T10:00:00Z"), "g")
    priced = RecipientStatus(
        phone, "delivered", at="2026-11-23T10:00:00Z", cost=Money(Decimal("0.004"), USD)
    )
    assert view.apply_status(priced, "g")
    assert not view.apply_status(priced, "g")
    stale = RecipientStatus(
        phone, "delivery_unconfirmed", at="2026-11-23T09:00:00Z", cost=Money(Decimal("9"), USD)
    )
    assert not view.apply_status(stale, "g")
    assert view.final_cost[phone] == Money(Decimal("0.004"), USD)


@pytest.mark.parametrize(
    ("delivered_at", "failed_at"),
    [
        (None, None),
        (None, "2026-01-02T00:00:00Z"),
        ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
    ],
)
def test_delivered_and_a_failure_fold_to_delivered_in_either_order(
    delivered_at: str | None, failed_at: str | None
) -> None:
    """Two final reports of one member, ``delivered`` and ``delivery_failed`` (a code that
    would resend it), neither stamped, or the failure stamped later: whichever is recorded
    first, live and on replay, the member is delivered, not among those who did not get it."""
    phone = "+13125550001"
    sent = Sent("g", (phone,), 0, message_id="m")
    spam = (ApiError("40002", "Blocked as spam - temporary", ""),)
    failed = RecipientStatus(phone, "delivery_failed", errors=spam, at=failed_at)
    delivered = RecipientStatus(phone, "delivered", at=delivered_at)
    for first, then in ((failed, delivered), (delivered, failed)):
        live = LedgerView.fold([sent])
        live.apply_status(first, "g")
        live.apply_status(then, "g")
        lines = [status_event("g", st, source="track", time="t") for st in (first, then)]
        replayed = LedgerView.fold([sent, *lines])
        for view in (live, replayed):
            assert view.status_of(phone) == "delivered"
            assert view.not_received() == {}
            assert view.delivery() == {"delivered": 1}


def test_a_stamped_correction_replaces_a_failure_reported_without_a_time() -> None:
    """A ``delivery_failed`` without ``completed_at``/``sent_at``, then a stamped ``delivered``
    for the same member: the fold keeps ``delivered``, so neither the report nor a resend
    counts the member among those who did not get the message."""
    phone, other = "+13125550001", "+13125550002"
    view = LedgerView.fold([Sent("g", (phone, other), 0, message_id="m")])
    assert view.apply_status(RecipientStatus(phone, "delivery_failed"), "g")
    assert set(view.not_received()) == {phone}
    assert view.apply_status(RecipientStatus(phone, "delivered", at="2026-11-23T10:05:00Z"), "g")
    assert view.not_received() == {}
    assert view.delivery() == {"delivered": 1, "queued": 1}
