"""JobStops: when what the groups meet stops the job, once, with the first error kept."""

from __future__ import annotations

from bulk_mms.config import load_job
from bulk_mms.errors import (
    ApiUnavailable,
    AuthError,
    NetworkError,
    RefusedRepeatedly,
    Rejected,
    WindowClosed,
)
from bulk_mms.signals import Stop, StopReason
from bulk_mms.stopping import STOP_AFTER_REFUSED, STOP_AFTER_UNANSWERED, JobStops
from bulk_mms.summary import JobSummary
from tests.conftest import FAST, JobFactory


def _stops(jobs: JobFactory) -> tuple[JobStops, Stop, JobSummary]:
    jobs.people(2)
    stop, summary = Stop(), JobSummary("j")
    return JobStops(load_job(jobs.job().path), FAST, stop, summary), stop, summary


def _refused(message: str = "bad body") -> Rejected:
    return Rejected(message, status=400)


def test_groups_in_a_row_without_an_answer_stop_the_job_and_a_send_ends_the_streak(
    jobs: JobFactory,
) -> None:
    """STOP_AFTER_UNANSWERED groups in a row without an answer stop the job as unavailable; a
    group sent in between starts the count again, and one its window held back counts for
    nothing either way."""
    stops, stop, summary = _stops(jobs)
    for _ in range(STOP_AFTER_UNANSWERED - 1):
        stops.count(NetworkError("down"))
        stops.judge(NetworkError("down"), (), tried=True)
    stops.sent()
    for _ in range(STOP_AFTER_UNANSWERED - 1):
        stops.count(NetworkError("down"))
        stops.judge(NetworkError("down"), (), tried=True)
    stops.count(WindowClosed("closed"))
    assert not stop.is_set()
    stops.count(NetworkError("down"))
    stops.judge(NetworkError("down"), (), tried=True)
    assert (stop.reason, type(summary.error)) == ("unavailable", ApiUnavailable)
    assert "the API keeps failing" in str(summary.error)


def test_the_same_refusal_naming_no_member_group_after_group_stops_the_job(
    jobs: JobFactory,
) -> None:
    """STOP_AFTER_REFUSED groups in a row refused the same way, naming no member, stop the job
    (RefusedRepeatedly); a refusal that names a member, or says something else, starts the
    count again."""
    stops, stop, summary = _stops(jobs)
    for _ in range(STOP_AFTER_REFUSED - 1):
        stops.judge(_refused(), (), tried=True)
    stops.judge(_refused(), ("+12125550000",), tried=True)
    stops.judge(_refused("other"), (), tried=True)
    for _ in range(STOP_AFTER_REFUSED - 1):
        stops.judge(_refused(), (), tried=True)
    assert not stop.is_set()
    stops.judge(_refused(), (), tried=True)
    assert (stop.reason, type(summary.error)) == ("refused", RefusedRepeatedly)


def test_the_refusal_stop_carries_a_word_of_the_stop_reason_table(jobs: JobFactory) -> None:
    """The stop for groups refused the same way in a row carries a StopReason (the one table
    of the words a stop says), not a word of its own."""
    stops, stop, _ = _stops(jobs)
    for _ in range(STOP_AFTER_REFUSED):
        stops.judge(_refused(), (), tried=True)
    assert isinstance(stop.reason, StopReason)
    assert stop.reason == "refused"


def test_the_first_error_that_stops_the_job_is_the_one_kept(jobs: JobFactory) -> None:
    """A fatal error stops the job with its reason; a later failure (the ledger's) neither
    replaces the error kept for the exit code nor the stop's reason."""
    stops, stop, summary = _stops(jobs)
    auth = AuthError("bad key", status=401)
    stops.fatal(auth)
    stops.fail(ApiUnavailable("later"), StopReason.UNAVAILABLE)
    assert (stop.reason, summary.error) == ("auth", auth)


def test_a_closed_window_and_the_run_deadline_stop_the_job_once(jobs: JobFactory) -> None:
    """The send_window closing stops the job with reason "window" and keeps no error; the run
    deadline coming after it does not change the reason."""
    stops, stop, summary = _stops(jobs)
    stops.window_closed()
    stops.run_deadline_reached()
    assert (stop.reason, summary.error) == ("window", None)


def test_a_child_stop_ends_with_its_parent_but_never_ends_it() -> None:
    """A child's own request stops it alone; the parent's request and force reach every
    child, one made before or after them."""
    parent = Stop()
    early = parent.child()
    early.request(StopReason.ENDPOINT)
    assert (parent.is_set(), early.reason) == (False, "endpoint")
    other = parent.child()
    parent.request(StopReason.SIGINT)
    assert (other.reason, early.reason) == ("SIGINT", "endpoint")
    parent.force()
    late = parent.child()
    assert (other.forced, early.forced, late.forced, late.reason) == (True, True, True, "SIGINT")
