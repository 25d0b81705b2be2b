"""Kinds of miss: the fold says what kind each recipient who did not get the message is
(expired, opted out, resendable, failed), and the report and ``--failed-csv`` read that kind,
never the words of the why."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest
from msgspec.structs import replace

from bulk_mms.cli import main
from bulk_mms.codes import Action
from bulk_mms.csvfile import REASON_COLUMN
from bulk_mms.errors import ApiError, Rejected
from bulk_mms.ledger import (
    Attempt,
    Failed,
    Header,
    InDoubt,
    LedgerView,
    Miss,
    Missed,
    Moved,
    Sent,
    Status,
    checkpoint,
)
from bulk_mms.ledger import fold as fold_module
from bulk_mms.ledger.events import Event, decode, encode
from bulk_mms.models import Group, RecipientStatus, SendReceipt
from bulk_mms.policy import load_policy
from bulk_mms.recipient_lists import write_failed_csv
from bulk_mms.report import format_text, summarize
from bulk_mms.runner import run_job
from bulk_mms.suppression import Suppressed, default_list
from bulk_mms.testing import write_ledger
from bulk_mms.track import track_ledger
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers, ok_receipt

# who is who: each kind of miss, and who is not a miss at all
E1, E2, S1, F1, F2, D1, D2, D3, D4, C1, OK, R1 = numbers(12, start=300)
S2, S3 = numbers(2, start=320)
CAP = ApiError("40016", "T-Mobile daily cap", "")
STOP = ApiError("40300", "Blocked due to STOP message", "")
UNDELIVERABLE = ApiError("40008", "Undeliverable", "")
#: A sent group whose members' delivery reports follow.
G4 = Sent("g4", to=(D1, D2, D3, D4, C1), message_id="m4")
#: A 409 that names S1: only S1 failed (it opted out).
REFUSED = Failed("g2", to=(S1, OK), status=409, code="40300", title=STOP.title, refused=(S1,))


def report(group: str, phone: str, *errors: ApiError, at: str) -> Status:
    """A delivery report that ``phone`` of ``group`` was not delivered, for ``errors``."""
    return Status(group, phone, "delivery_failed", errors=errors, at=at)


def cap_then_stop() -> list[Event]:
    """C1 met a carrier's cap, was moved out of its group to go again after the reset, and
    its new group's delivery report says it opted out."""
    return [
        report("g4", C1, CAP, at="2026-01-01T00:00:01Z"),
        Moved("g4", (C1,), code="40016", after=1.0),
        Sent("g5", to=(C1,), message_id="m5"),
        report("g5", C1, STOP, at="2026-01-02T00:00:01Z"),
    ]


def every_kind() -> list[Event]:
    """A ledger with a recipient of each kind of miss, and some that are no miss."""
    return [
        Header("j", None),
        # the deadline left it unsent (what the recorder writes: no HTTP answer)
        Failed("g1", to=(E1, E2), code="expired_unsent", title="not sent before the deadline"),
        REFUSED,
        # a server's title may say anything, its code too: neither makes a kind
        Failed(
            "g3",
            to=(F1,),
            status=400,
            code="10002",
            title="resendable: opted out (STOP), not to be texted again",
        ),
        Failed("g7", to=(F2,), status=400, code="expired_unsent", title="x"),
        # a retryable failure is no miss: a plain rerun sends it
        Failed("g6", to=(R1,), status=503, code="", title="ServerError", retryable=True),
        G4,
        report("g4", D1, CAP, at="2026-01-01T00:00:01Z"),
        report("g4", D2, UNDELIVERABLE, at="2026-01-01T00:00:01Z"),
        report("g4", D3, at="2026-01-01T00:00:01Z"),
        report("g4", D4, STOP, at="2026-01-01T00:00:01Z"),
        *cap_then_stop(),
    ]


#: The kind the fold gives each recipient of :func:`every_kind` who did not get the message.
KINDS = {
    E1: Miss.EXPIRED,
    E2: Miss.EXPIRED,
    S1: Miss.OPTED_OUT,
    F1: Miss.FAILED,
    F2: Miss.FAILED,
    D1: Miss.RESENDABLE,
    D2: Miss.FAILED,
    D3: Miss.FAILED,
    D4: Miss.OPTED_OUT,
    C1: Miss.OPTED_OUT,
}
#: Who ``--failed-csv`` writes of :func:`every_kind`, in ledger order.
RESENT = [F1, F2, D1, D2, D3]


def ledger(path: Path, evs: list[Event]) -> Path:
    """``path``, holding ``evs``."""
    write_ledger(path, evs)
    return path


def failed_file(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def test_the_fold_gives_each_recipient_who_missed_its_kind() -> None:
    """Expired, opted out (at the send and in a delivery report), resendable (a cap) and
    failed (anything else, whatever a server's title or code says) each as the fold decided,
    next to the why; a retryable failure and a recipient not refused by name are no miss."""
    missed = LedgerView.fold(every_kind()).not_received()
    assert {p: m.kind for p, m in missed.items()} == KINDS
    assert missed[D1] == Missed(
        "delivery_failed 40016: resendable, nothing was wrong with the number", Miss.RESENDABLE
    )
    assert missed[D4] == Missed(
        "delivery_failed 40300: opted out (STOP), not to be texted again", Miss.OPTED_OUT
    )
    assert missed[E1].why == "failed: expired_unsent not sent before the deadline"
    assert missed[S1].why == (
        "failed: 40300 Blocked due to STOP message: opted out (STOP), not to be texted again"
    )


def test_a_recipient_moved_after_a_cap_that_then_opts_out_is_opted_out() -> None:
    """A member a carrier's cap moved out of its group is no miss while it waits to go
    again; when its new group's delivery report says 40300, it is opted out, not resendable."""
    capped, moved, *_ = events = cap_then_stop()
    assert LedgerView.fold([G4, capped]).not_received()[C1].kind == Miss.RESENDABLE
    assert C1 not in LedgerView.fold([G4, capped, moved]).not_received()
    assert LedgerView.fold([G4, *events]).not_received()[C1].kind == Miss.OPTED_OUT


def test_the_delivery_counts_say_which_failed_members_wait_to_go_again(tmp_path: Path) -> None:
    """A member a carrier's cap moved out of its sent group still counts under its group's
    latest status (delivery_failed), and the table says so beside the counts, so they add up
    against "did not get" (which leaves it out while it waits)."""
    capped, moved, *_ = cap_then_stop()
    path = ledger(tmp_path / "l.jsonl", [Header("j", None), G4, capped, moved])
    s = summarize(path)
    text = format_text(s, path)
    assert s.delivery["delivery_failed"] == 1
    assert C1 not in dict(s.undelivered)
    assert (
        '  of these, 1 recipient moved out of their group to go again (under "not sent, and '
        'why"), by the status that moved them'
    ) in text


def test_the_kinds_survive_a_checkpoint() -> None:
    """A view saved and loaded again (a checkpoint) says the same kinds, as kinds."""
    view = LedgerView.fold(every_kind())
    again = checkpoint.from_state(orjson.loads(orjson.dumps(checkpoint.to_state(view))))
    assert again.not_received() == view.not_received()
    assert all(isinstance(m.kind, Miss) for m in again.not_received().values())


def test_failed_csv_leaves_out_the_expired_and_the_opted_out_by_kind(tmp_path: Path) -> None:
    """--failed-csv writes the failed and the resendable, with their whys, and leaves out the
    expired and the opted out, counting each; the table counts the same kinds."""
    path = ledger(tmp_path / "l.jsonl", every_kind())
    s = summarize(path)
    n, _ = write_failed_csv(s, tmp_path / "failed.csv")
    rows = failed_file(tmp_path / "failed.csv")
    assert n == len(RESENT)
    assert [r["phone"] for r in rows] == RESENT
    assert rows[0][REASON_COLUMN] == (
        "failed: 10002 resendable: opted out (STOP), not to be texted again"
    )
    assert (s.expired_left_out, s.opted_out_left_out) == (2, 3)
    assert (
        "did not get  10 recipients (1 of them met a carrier's cap or filter: resendable); write "
        "them with --failed-csv (not the 2 past the job's deadline: a late message is worse than "
        "none; not the 3 who opted out (STOP): never to be texted again)"
    ) in format_text(s, path)


def test_the_opt_outs_refused_at_the_send_are_the_fold_s_without_delivery_reports() -> None:
    """refused_opted_out is what not_received counts opted out by the groups alone (not D4 nor
    C1, whose delivery reports said so), the latest failed group deciding (S2 failed since
    for another reason), each with the latest try of the group that refused it so."""
    evs = [
        *every_kind(),
        Attempt("g8", to=(S2, S3), time="2026-01-03T00:00:00Z"),
        Failed("g8", to=(S2, S3), status=409, code="40300", refused=(S2, S3)),
        Attempt("g9", to=(S2,), time="2026-01-04T00:00:00Z"),
        Failed("g9", to=(S2,), status=400, code="40008"),
        Attempt("g10", to=(S3,), time="2026-01-05T00:00:00Z"),
        Attempt("g10", to=(S3,), time="2026-01-05T00:01:00Z"),
        Failed("g10", to=(S3,), status=409, code="40300", refused=(S3,)),
    ]
    refused = {S1: 0.0, S3: 1_767_571_260.0}
    run = LedgerView.fold(evs, statuses=False)
    opted = {p for p, m in run.not_received().items() if m.kind is Miss.OPTED_OUT}
    assert (run.refused_opted_out(), set(refused)) == (refused, opted)
    assert LedgerView.fold(evs).refused_opted_out() == refused


def test_failed_csv_is_the_same_whatever_the_notes_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reworded notes change the whys (the reason column) and nothing about who is in the
    file or who is counted left out."""
    path = ledger(tmp_path / "l.jsonl", every_kind())
    monkeypatch.setattr(fold_module, "OPTED_OUT_NOTE", "said STOP")
    monkeypatch.setattr(fold_module, "RESENDABLE_NOTE", "a carrier's limit")
    s = summarize(path)
    assert "said STOP" in dict(s.undelivered)[D4].why
    n, _ = write_failed_csv(s, tmp_path / "failed.csv")
    rows = failed_file(tmp_path / "failed.csv")
    assert [r["phone"] for r in rows] == RESENT
    assert rows[2][REASON_COLUMN] == (
        "delivery_failed 40016: a carrier's limit, nothing was wrong with the number"
    )
    assert (n, s.expired_left_out, s.opted_out_left_out) == (5, 2, 3)
    assert "(1 of them met a carrier's cap" in format_text(s, path)


def test_the_failed_file_message_counts_who_opted_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """report --failed-csv says how many it left out for opting out, and when nobody is left
    says so (not that nobody failed); the JSON's count of who did not get it is unchanged."""
    path = ledger(tmp_path / "l.jsonl", [Header("j", None), REFUSED])
    out = tmp_path / "failed.csv"
    assert main(["-q", "report", str(path), "--json", "--failed-csv", str(out)]) == 0
    said = capsys.readouterr()
    assert orjson.loads(said.out)["undelivered_recipients"] == 1
    assert "wrote 0 recipients" in said.err
    assert "(nobody left to resend)" in said.err
    assert "1 opted out (STOP: never to be texted again)" in said.err
    assert failed_file(out) == []


def recorded_actions() -> list[Event]:
    """A ledger whose events record what the error policy did (``[errors]`` over the built-in
    table): a cap set to fail, an undeliverable number set to retry, a code set to
    suppress at the send, and a line written before actions were kept."""
    return [
        Header("j", None),
        Failed("g1", to=(S1,), status=400, code="40004", refused=(S1,), action=Action.SUPPRESS),
        Failed("g2", to=(F1,), status=400, code="40002", action=Action.FAIL),
        Failed("g3", to=(F2,), status=400, code="40011"),  # older: the table says slow
        G4,
        Status("g4", D1, "delivery_failed", errors=(CAP,), action=Action.FAIL),
        Status("g4", D2, "delivery_failed", errors=(UNDELIVERABLE,), action=Action.RETRY),
        report("g4", D3, CAP, at="2026-01-01T00:00:01Z"),  # older: the table says defer
    ]


def test_the_fold_reads_each_miss_by_the_action_its_event_recorded() -> None:
    """A miss is of the kind the recorded action makes it (a cap that [errors] set to fail
    is failed, an undeliverable number set to retry is resendable, members refused under a
    code set to suppress opted out); without one (an older ledger) the built-in table
    decides. The same after a checkpoint, and through a ledger line and back."""
    evs = recorded_actions()
    view = LedgerView.fold(evs)
    kinds = {p: m.kind for p, m in view.not_received().items()}
    assert kinds == {
        S1: Miss.OPTED_OUT,
        F1: Miss.FAILED,
        F2: Miss.FAILED,
        D1: Miss.FAILED,
        D2: Miss.RESENDABLE,
        D3: Miss.RESENDABLE,
    }
    assert view.error_actions == {"40004": {"suppress"}, "40002": {"fail"}, "40011": {"slow"}}
    again = checkpoint.from_state(orjson.loads(orjson.dumps(checkpoint.to_state(view))))
    assert again.not_received() == view.not_received()
    assert again.error_actions == view.error_actions
    assert [decode(orjson.loads(encode(ev))) for ev in evs] == evs


def test_a_line_without_an_action_has_no_action_key() -> None:
    """An event with no action recorded writes no ``action`` key (the common line stays as
    short as it was); one with an action the reader does not know reads as none."""
    assert b'"action"' not in encode(Status("g", D1, "delivered"))
    line = orjson.loads(encode(Status("g", D1, "delivery_failed", action=Action.RETRY)))
    assert line["action"] == "retry"
    line["action"] = "teleport"
    ev = decode(line)
    assert isinstance(ev, Status)
    assert ev.action is None


async def test_a_cap_the_errors_table_fails_is_counted_failed_not_resendable(
    jobs: JobFactory,
) -> None:
    """A run whose [errors] says ``fail`` for T-Mobile's cap (40016) did not send again the
    member its delivery report failed with it: the report counts that member failed, not
    resendable (the built-in table's ``defer``), and says nobody met a cap."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 2")
    settings = replace(FAST, error_policy=load_policy({"40016": "fail"}))
    client = FakeClient()
    await run_job(job, settings, client, clock=FakeClock())
    (g,) = client.calls
    capped, other = g.to
    client.delivery[f"msg-{g.id}-0"] = (
        RecipientStatus(capped, "delivery_failed", errors=(CAP,)),
        RecipientStatus(other, "delivered"),
    )
    await track_ledger(job.ledger, settings, client, clock=FakeClock())
    s = summarize(job.ledger)
    assert s.waiting.held == {}  # fail: nobody goes again
    assert dict(s.undelivered) == {capped: Missed("delivery_failed 40016", Miss.FAILED)}
    assert "(0 of them met a carrier's cap or filter" in format_text(s, job.ledger)


async def test_a_refusal_under_a_code_the_errors_table_suppresses_is_an_opt_out(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A run whose [errors] says ``suppress`` for a code (40004) puts the member a refusal
    under it names on the suppression list; the report says that member opted out and
    --failed-csv leaves it out, as the run did, not failed to be texted again."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 1")
    settings = replace(FAST, error_policy=load_policy({"40004": "suppress"}))
    refused = ApiError("40004", "Rejected by destination", "")
    stopped = numbers(2)[0]

    def answer(g: Group, n: int) -> SendReceipt | Rejected:
        if g.to == (stopped,):
            return Rejected("the API refused the request", status=400, errors=(refused,))
        return ok_receipt(g, n)

    await run_job(job, settings, FakeClient(answer), clock=FakeClock())
    assert stopped in Suppressed(default_list())
    s = summarize(job.ledger)
    assert dict(s.undelivered)[stopped].kind == Miss.OPTED_OUT
    n, _ = write_failed_csv(s, tmp_path / "failed.csv")
    assert (n, s.opted_out_left_out) == (0, 1)


@pytest.mark.parametrize("state", ["in doubt", "retry pending"])
def test_the_delivery_counts_say_a_moved_member_whose_new_group_is_unsent(
    tmp_path: Path, state: str
) -> None:
    """A member a carrier's cap moved out of its sent group, whose new group is in doubt or
    pending a rerun, still counts under the status that moved it: the table says so beside
    the counts (the delivery's 5 against 4 sent), as it does while it waits; once its new
    group is sent, it counts there, and the table says nothing of it."""
    capped, moved, sent_again, _ = cap_then_stop()
    tried = Attempt("g5", to=(C1,))
    unsent = (
        InDoubt("g5", to=(C1,))
        if state == "in doubt"
        else Failed("g5", to=(C1,), status=503, code="", title="x", retryable=True)
    )
    path = ledger(tmp_path / "l.jsonl", [Header("j", None), G4, capped, moved, tried, unsent])
    s = summarize(path)
    assert s.delivery["delivery_failed"] == 1
    assert not s.waiting.held
    assert "  of these, 1 recipient moved out of their group to go again" in format_text(s, path)
    again = ledger(tmp_path / "m.jsonl", [Header("j", None), G4, capped, moved, sent_again])
    assert "of these" not in format_text(summarize(again), again)
