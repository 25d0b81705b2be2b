"""When what a run meets stops the job: :class:`JobStops`, the sender's one place for it.

A group's outcome is the ledger's (:mod:`bulk_mms.recorder`); whether the job goes on after it
is decided here, across groups: an error that no other group can get past (a bad key, a cap,
every sender refused), the API failing group after group, the same refusal of the job's
message group after group, spam filtering meeting a share of the latest tries or delivery
reports, the job's ``send_window`` closing, ``max_job_duration_s`` coming, the ledger failing.
Each sets the job's :class:`~bulk_mms.signals.Stop` once, with its reason, and keeps the first
error in the run's summary (the exit code's source: :mod:`bulk_mms.console`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import structlog

from bulk_mms.codes import Action
from bulk_mms.config import JobConfig, Settings
from bulk_mms.errors import (
    AccountRefused,
    AmbiguousSendError,
    ApiUnavailable,
    AuthError,
    DescriptorsExhausted,
    FatalSendError,
    LedgerError,
    LimitReached,
    RefusedRepeatedly,
    Rejected,
    RetryableSendError,
    SendError,
    SpamFiltered,
    WindowClosed,
)
from bulk_mms.signals import Stop, StopReason
from bulk_mms.summary import JobSummary

log = structlog.get_logger(__name__)

#: After this many groups in a row end without a usable answer (a transient error with their
#: retries used up, or in doubt), the API is taken to be down and the job stops (a rerun
#: resumes) instead of going through every group.
STOP_AFTER_UNANSWERED = 3
#: After this many groups in a row are refused (400/422) with one and the same error that
#: names no member, the job's message or sender is what the API refuses, and the job stops
#: instead of failing every group (:class:`~bulk_mms.errors.RefusedRepeatedly`).
STOP_AFTER_REFUSED = 5
#: Why a fatal error stopped the job, by its class, the nearest first (the stop's reason,
#: :attr:`~bulk_mms.summary.JobSummary.stopped`, and its log event): ``spam`` for a burst of
#: spam filtering, ``cap`` for any other cap (a carrier's, ``daily_recipients``,
#: ``max_cost``), never ``limit``, which is ``--limit``'s.
_STOP_REASONS: dict[type[FatalSendError], StopReason] = {
    AuthError: StopReason.AUTH,
    SpamFiltered: StopReason.SPAM,
    LimitReached: StopReason.CAP,
    AccountRefused: StopReason.ACCOUNT,
    DescriptorsExhausted: StopReason.DESCRIPTORS,
}


def stop_reason(err: FatalSendError) -> StopReason:
    """Why ``err`` stops the job (:data:`_STOP_REASONS`), by its class or the nearest it
    derives from (a :class:`~bulk_mms.errors.MaxCostReached` stops as a cap);
    ``"endpoint"`` for any other."""
    return next(
        (r for cls, r in _STOP_REASONS.items() if isinstance(err, cls)), StopReason.ENDPOINT
    )


class SpamWatch:
    """Whether spam filtering met ``share`` of the last ``window`` verdicts. Private."""

    __slots__ = ("count", "recent", "share", "window")

    def __init__(self, window: int, share: float) -> None:
        self.window = window
        self.share = share
        self.recent: deque[bool] = deque(maxlen=window)
        #: How many of ``recent`` are spam, kept as it moves.
        self.count = 0

    def note(self, spam: bool) -> bool:
        """One more verdict; whether the window is full and spam meets the share."""
        if len(self.recent) == self.window:
            self.count -= self.recent[0]  # leaving the window
        self.recent.append(spam)
        self.count += spam
        return len(self.recent) >= self.window and self.count >= self.share * self.window


def _unanswered(err: SendError, *, tried: bool) -> str:
    """Why the job stops after :data:`STOP_AFTER_UNANSWERED` groups in a row ended without an
    answer, the last with ``err``: the API failing them (``tried``), or a last group that never
    left (its sender paused past ``max_group_age_s``): no request failed, so none is blamed."""
    n = STOP_AFTER_UNANSWERED
    if not tried:
        return f"stopped after {n} groups in a row could not leave: {err}"
    return (
        f"the API keeps failing ({err}); stopped after {n} groups in a row got no usable "
        "answer. Nothing is lost: rerun to resume"
    )


class JobStops:
    """Stops the job when what its groups meet says to, once, keeping the first error.

    Args:
        job: the job (its ``send_window``, named when it closes).
        settings: the error policy, the spam window and share, ``max_job_duration_s``.
        stop: the job's stop, set here with its reason.
        summary: the run's summary, whose ``error`` keeps the first error that stopped it.
    """

    def __init__(self, job: JobConfig, settings: Settings, stop: Stop, summary: JobSummary) -> None:
        self.job = job
        self.settings = settings
        self.stop = stop
        self.summary = summary
        #: Groups in a row that got no usable answer (:data:`STOP_AFTER_UNANSWERED`).
        self.unanswered = 0
        #: The error of the last group refused naming no member, and how many groups in a
        #: row met it (:data:`STOP_AFTER_REFUSED`).
        self.refusals: tuple[str, int] = ("", 0)
        #: Spam filtering in the answers to this run's tries (a server that says so at once).
        self.spam_tries = SpamWatch(settings.spam_window, settings.spam_share)
        #: Spam filtering in the final delivery reports of this run's recipients (Telnyx:
        #: carrier codes arrive only there).
        self.spam_reports = SpamWatch(settings.spam_window, settings.spam_share)

    def sent(self) -> None:
        """A group was accepted: every streak ends, and the try counts as no spam."""
        self.unanswered = 0
        self.refusals = ("", 0)
        self.tried(None)

    def fatal(self, err: FatalSendError) -> None:
        """A group's tries ended with an error no other group can get past (a bad key, a
        cap, an endpoint refused): stop the job; a rerun with it fixed sends the group."""
        reason = stop_reason(err)
        log.error(f"job.{reason}_refused", status=err.status, code=err.code, error=str(err))
        self.fail(err, reason)

    def count(self, err: SendError) -> None:
        """A group's tries ended with ``err``: one more in a row without a usable answer
        (retries used up, or in doubt), or the streak ends. A group its window held back
        asked the API nothing: it says nothing of it."""
        if not isinstance(err, WindowClosed):
            answerless = isinstance(err, RetryableSendError | AmbiguousSendError)
            self.unanswered = self.unanswered + 1 if answerless else 0

    def judge(self, err: SendError, refused: Sequence[str], *, tried: bool) -> None:
        """Once the group ended with ``err`` is recorded (``refused``: the members it names,
        by pointer or number; ``tried``: a request of it left): stop the job when groups in
        a row got no usable answer (the API is down or broken) or met one refusal of the
        job's message."""
        self._count_refusal(err, refused)
        if self.unanswered >= STOP_AFTER_UNANSWERED and not self.stop.is_set():
            self.fail(ApiUnavailable(_unanswered(err, tried=tried)), StopReason.UNAVAILABLE)

    def _count_refusal(self, err: SendError, refused: Sequence[str]) -> None:
        """One more group ended with ``err``: at :data:`STOP_AFTER_REFUSED` groups in a row
        refused with the same error, one the error policy has no action for (an opt-out, a
        sender retired, a cap: each is handled on its own) and naming no member, stop the
        job: it is the job the API refuses."""
        if type(err) is not Rejected or refused or err.code in self.settings.error_policy:
            self.refusals = ("", 0)
            return
        said = f"{err.status}:{err.code}:{err.message}"
        last, count = self.refusals
        count = count + 1 if said == last else 1
        self.refusals = (said, count)
        if count >= STOP_AFTER_REFUSED and not self.stop.is_set():
            self.fail(
                RefusedRepeatedly(
                    f"the API refused {count} groups in a row the same way ({err}): the job's "
                    "message or sender is refused, not its recipients. Fix the job and rerun "
                    "to send the rest; report --failed-csv lists the refused groups"
                ),
                StopReason.REFUSED,
            )

    def tried(self, err: SendError | None) -> None:
        """Note how a try ended (a failed try, or a send) among the latest tries."""
        spam = err is not None and self.settings.error_policy.get(err.code) == Action.SLOW
        self._spam_stop(self.spam_tries, spam, "tries")

    def reported(self, spam: bool) -> None:
        """Note a final delivery report (``spam``: filtered) among the latest reports."""
        self._spam_stop(self.spam_reports, spam, "delivery reports")

    def _spam_stop(self, watch: SpamWatch, spam: bool, what: str) -> None:
        """Stop (resumably, exit 5) when spam filtering met a large share of the last tries or
        delivery reports, instead of burning the list while carriers block it."""
        if watch.note(spam) and not self.stop.is_set():
            err = SpamFiltered(
                f"spam filtering met {watch.count} of the last {watch.window} {what} "
                f"(spam_share {watch.share:g})"
            )
            self.fail(err, stop_reason(err))

    def no_senders(self, retired: set[str]) -> None:
        """Every sender of the job (``retired``) was refused: stop (exit 6, resumable with a
        sender fixed)."""
        self.fail(
            AccountRefused(
                f"the API refused every sender of the job ({', '.join(sorted(retired))}: "
                "blocked or unhealthy, 40003/40315); add a healthy number to message.from, "
                "then rerun",
                status=None,
            ),
            StopReason.ACCOUNT,
        )

    def fail(self, error: BaseException, reason: StopReason) -> None:
        """Stop the job for ``reason``, keeping ``error`` unless an earlier one stopped it."""
        if self.summary.error is None:
            self.summary.error = error
        self.stop.request(reason)

    def ledger_failed(self, exc: LedgerError) -> None:
        """The ledger failed: stop (exit 7; nothing is lost, a rerun resumes)."""
        self.fail(exc, StopReason.LEDGER)

    def window_closed(self) -> None:
        """The job's ``send_window`` has closed: stop the job (exit 4; the next run inside the
        window resumes), once."""
        if not self.stop.is_set():
            log.warning("job.window_closed", send_window=str(self.job.send_window))
            self.stop.request(StopReason.WINDOW)

    def run_deadline_reached(self) -> None:
        """``max_job_duration_s`` has come (or a wait would pass it): stop the job, once."""
        if not self.stop.is_set():
            log.warning("job.deadline", max_job_duration_s=self.settings.max_job_duration_s)
            self.stop.request(StopReason.DEADLINE)
