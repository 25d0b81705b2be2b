"""Who got the message, as ``report`` and a resend (``--failed-csv``) tell it, when delivery
reports contradict one another: a correction, several error codes in one report or in the
answer refusing a send."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from msgspec.structs import replace

from bulk_mms.client import error_for_status
from bulk_mms.codes import DEFAULT_POLICY, deciding
from bulk_mms.errors import AccountRefused, ApiError, RateLimited, Rejected, SendError
from bulk_mms.fake_api import FakeTelnyx, Fault, carrier_timeline
from bulk_mms.ledger import LedgerView, Sent
from bulk_mms.ledger.events import decode, status_event, to_json
from bulk_mms.ledger.fold import Miss
from bulk_mms.models import Group, MessageBody, RecipientStatus
from bulk_mms.policy import apply_policy, deciding_first, judged, judged_error, load_policy
from bulk_mms.recipient_lists import left_to_resend
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.testing import ledger_events
from tests.conftest import FAST, FakeClock, JobFactory, real_client, receiving, sent_and_tracked

PEOPLE = [f"+1212555000{i}" for i in range(4)]


async def test_a_webhooks_correction_replaces_a_failure_a_get_gave_without_a_time(
    jobs: JobFactory,
) -> None:
    """``track`` reads a ``delivery_failed`` with neither ``completed_at`` nor ``sent_at``
    (the least answer the spec allows); the carrier then corrects it, and ``message.finalized``
    says ``delivered`` (stamped): the report counts everyone delivered and a resend takes
    nobody."""
    clock = FakeClock()
    signer = Ed25519PrivateKey.generate()
    fake = FakeTelnyx(api_key="test-key-123", clock=clock.monotonic, signing_key=signer)
    fake.sparse_answers = True
    fake.delivery_status = carrier_timeline(0, 1, 3, outcomes={"*0002": "delivery_failed"})
    job = await sent_and_tracked(jobs, fake, clock)
    failed = [e for e in ledger_events(job.ledger) if e.get("status") == "delivery_failed"]
    assert [(e["recipient"], e.get("at")) for e in failed] == [(PEOPLE[2], None)]
    assert [p for p, _ in summarize(job.ledger).undelivered] == [PEOPLE[2]]
    # the carrier's correction, posted as Telnyx does (stamped with occurred_at)
    fake.sparse_answers = False
    fake.delivery_status = carrier_timeline(0, 1, 3)
    async with receiving(fake, job.ledger, signer):
        assert await fake.pump_webhooks() == 8
    s = summarize(job.ledger)
    assert s.undelivered == []
    assert left_to_resend(s) == {}
    assert s.delivery == {"delivered": 4}


async def test_a_report_that_says_opted_out_beside_a_spam_filter_is_judged_opted_out(
    jobs: JobFactory,
) -> None:
    """A delivery report carrying 40011 (spam filter: resend after the reset) and then 40300
    (the recipient opted out): ``track`` moves nobody for a resend, the report counts the
    member opted out, and a resend (``--failed-csv``) leaves them out."""
    clock = FakeClock()
    fake = FakeTelnyx(api_key="test-key-123", clock=clock.monotonic)
    fake.delivery_status = carrier_timeline(0, 1, 3)
    fake.report["*0002"] = "40011,40300"
    job = await sent_and_tracked(jobs, fake, clock)
    lines = ledger_events(job.ledger)
    failed = [e for e in lines if e.get("status") == "delivery_failed"]
    assert [(e["recipient"], e["action"]) for e in failed] == [(PEOPLE[2], "suppress")]
    assert [e for e in lines if e["event"] == "moved"] == []
    s = summarize(job.ledger)
    assert [(p, m.kind) for p, m in s.undelivered] == [(PEOPLE[2], Miss.OPTED_OUT)]
    assert s.delivery_codes == {"40300": 1}
    assert left_to_resend(s) == {}
    assert s.opted_out_left_out == 1


@pytest.mark.parametrize(
    ("codes", "decides"),
    [
        (["40011", "40300"], "40300"),  # an opt-out over a spam filter's "later"
        (["40016", "40008"], "40008"),  # undeliverable (no action) over a carrier's cap
        (["40014", "40003"], "40003"),  # the sender blocked over an expiry in the queue
        (["40002", "40016"], "40016"),  # the longer wait: the cap's reset over a slow-down
        (["40008", "20100"], "20100"),  # the account cannot pay over any one number's fault
        (["20100", "40300"], "40300"),  # an opt-out over the account's stop
        ([], None),
    ],
)
def test_a_reports_codes_are_weighed_by_their_actions_not_their_order(
    codes: list[str], decides: str | None
) -> None:
    """Of several codes in one delivery report, the one whose action the table puts first
    decides, whatever order the report lists them in."""
    assert deciding(codes, DEFAULT_POLICY) == decides
    assert deciding(reversed(codes), DEFAULT_POLICY) == decides
    assert deciding(["40008", "40001"], DEFAULT_POLICY) == "40008"  # alike: the first given


def test_report_and_resend_judge_a_several_code_report_as_its_recorder_did() -> None:
    """A report of 40002 and 40300 recorded as a run records it (:func:`judged`) folds to the
    same miss live and on replay (opted out, not resent); one written before reports kept an
    action is judged by the built-in table the same way."""
    phone = "+13125550001"
    report = RecipientStatus(
        phone,
        "delivery_failed",
        errors=(ApiError("40002", "spam", ""), ApiError("40300", "STOP", "")),
        at="2026-11-23T10:00:00Z",
    )
    recorded, action = judged(report, load_policy({"40002": "retry"}))
    assert (recorded.errors[0].code, action) == ("40300", "suppress")
    sent = Sent("g", (phone,), 0, message_id="m")
    live = LedgerView.fold([sent])
    live.apply_status(recorded, "g", action=action)
    line = status_event("g", recorded, source="track", time="t", action=action)
    back = decode(to_json(line))
    assert back is not None
    replayed = LedgerView.fold([sent, back])
    old = LedgerView.fold([sent, status_event("g", report, source="track", time="t")])
    for view in (live, replayed, old):
        assert view.known[phone].code == "40300"
        assert [m.kind for m in view.not_received().values()] == [Miss.OPTED_OUT]


@pytest.mark.parametrize(("code", "kind"), [("40300", Miss.OPTED_OUT), ("40016", Miss.RESENDABLE)])
def test_a_final_status_the_send_answered_keeps_the_code_its_status_line_carries(
    code: str, kind: Miss
) -> None:
    """The send's answer gives a member a final status (on the ``sent`` line) and its errors
    (on the ``status`` line after it): the same status again, but the code is news, so the
    report tells an opt-out or a carrier's cap, not a plain failure, and a resend agrees."""
    phone = "+13125550001"
    sent = Sent("g", (phone,), 0, message_id="m", statuses={phone: "delivery_failed"})
    report = RecipientStatus(phone, "delivery_failed", errors=(ApiError(code, "", ""),))
    recorded, action = judged(report, DEFAULT_POLICY)
    line = status_event("g", recorded, source="send", time="t", action=action)
    view = LedgerView.fold([sent, line])
    assert view.known[phone].code == code
    assert [m.kind for m in view.not_received().values()] == [kind]
    assert view.delivery() == {"delivery_failed": 1}
    assert not view.apply_status(recorded, "g", action=action)  # told once


@pytest.mark.parametrize(
    ("codes", "status", "kind", "decides", "action"),
    [
        (["40011", "40300"], 400, Rejected, "40300", "suppress"),  # opted out: never retried
        (["40002", "40008"], 400, Rejected, "40008", None),  # undeliverable: not retried
        (["40002", "40008"], 403, Rejected, "40008", None),  # a carrier's 403: no bad key
        (["40008", "40011"], 429, RateLimited, "40008", None),  # a 429 is retried as one
        (["", "40016", "40002"], 400, SendError, "40016", "defer"),  # the longer wait
        (["12345", "20100"], 402, AccountRefused, "20100", "halt"),  # no funds: stop the job
        (["40008", "40333"], 400, AccountRefused, "40333", "halt"),  # the spend limit too
        (["20100", "40300"], 409, Rejected, "40300", "suppress"),  # an opt-out still first
    ],
)
def test_a_sends_refusal_is_acted_on_and_recorded_by_the_code_that_decides(
    codes: list[str], status: int, kind: type[SendError], decides: str, action: str | None
) -> None:
    """An answer refusing a send with several codes is acted on by the one the table weighs
    first (:func:`~bulk_mms.codes.deciding`, as a delivery report's), whatever their order,
    and the error the runner sees names it first, with the action a ``failed`` event records."""
    body = {"errors": [{"code": code, "title": f"title {code}"} for code in codes]}
    err = error_for_status(status, body, {}, now=0.0, method="POST")
    now = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
    alone = Group("g", 0, (PEOPLE[0],), (1,), MessageBody("+13125550000", "hi"))
    acted = apply_policy(err, DEFAULT_POLICY, alone, now, "00:00 America/Los_Angeles")
    assert isinstance(acted, kind)
    assert (acted.code, acted.errors[0].title) == (decides, f"title {decides}")
    assert sorted(e.code for e in acted.errors) == sorted(codes)
    assert judged_error(acted, DEFAULT_POLICY, alone.to)[1] == action
    told = str(acted)
    assert all(told.index(decides) < told.index(c) for c in codes if c not in ("", decides))


@pytest.mark.parametrize(
    ("pointer", "to", "beside", "decides"),
    [
        ("", PEOPLE[:2], "20100", "20100"),  # names nobody of two: the account's stop decides
        ("/to/1", PEOPLE[:2], "20100", "40300"),  # names a member: the opt-out decides
        ("", PEOPLE[:1], "20100", "40300"),  # a group of one: its member is the one refused
        ("", PEOPLE[:2], "40008", "40300"),  # over a failure: the opt-out list may name them
    ],
)
def test_an_opt_out_naming_nobody_of_a_group_weighs_under_the_accounts_stop(
    pointer: str, to: list[str], beside: str, decides: str
) -> None:
    """A send's 40300 beside 20100 decides only when it names a member (a group of one names
    its own): one naming nobody of several suppresses nobody, and the job's halt decides;
    beside any other code the opt-out still decides."""
    errors = (ApiError(beside, "t", ""), ApiError("40300", "STOP", "", pointer))
    assert deciding_first(errors, DEFAULT_POLICY, to)[1] == decides


@pytest.mark.parametrize(
    ("codes", "kind", "action", "left_out"),
    [
        ("40011,40300", Miss.OPTED_OUT, "suppress", True),
        ("40002,40008", Miss.FAILED, None, False),
    ],
)
async def test_a_send_refused_with_several_codes_is_judged_by_the_deciding_one_end_to_end(
    jobs: JobFactory, codes: str, kind: Miss, action: str | None, left_out: bool
) -> None:
    """The fake API (port 0) refuses a group of one with a spam filter's code first and an
    opt-out (or undeliverable) after it: the group is not retried nor sent, its ``failed``
    line records the deciding code and its action, and the report and ``--failed-csv`` agree."""
    fake = FakeTelnyx(api_key="test-key-123")
    fake.faults.append(Fault("status", 400, code=codes))
    jobs.people(2)
    job = jobs.job(extra="group_size = 1")
    async with real_client(fake) as client:
        await run_job(job, replace(FAST, concurrency=1), client, clock=FakeClock())
    refused = fake.requests[0]["to"][0]
    assert [r["to"] for r in fake.requests].count([refused]) == 1  # never sent again
    failed = [e for e in ledger_events(job.ledger) if e["event"] == "failed"]
    decides = codes.split(",")[1]
    assert [(e["code"], e.get("action"), e["retryable"]) for e in failed] == [
        (decides, action, False)
    ]
    report = summarize(job.ledger)
    assert [(p, m.kind) for p, m in report.undelivered] == [(refused, kind)]
    assert report.error_codes == {decides: 1}
    assert (refused in left_to_resend(report)) is not left_out
