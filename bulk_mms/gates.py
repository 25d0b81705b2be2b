"""What holds a group back before its request, besides the ledger: the recipients' quiet hours
(the group waits for its window: a later run sends it) and the job's deadline (past it, the
group is recorded ``expired_unsent`` and never sent)."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from bulk_mms.clock import Clock, instant, utc
from bulk_mms.config import JobConfig
from bulk_mms.ledger import LedgerView
from bulk_mms.ledger.fold import RETRY_PENDING
from bulk_mms.models import Group
from bulk_mms.quiet import open_for
from bulk_mms.recorder import Recorder


def job_deadline(job: JobConfig, view: LedgerView) -> dt.datetime | None:
    """The earlier of the job's ``deadline`` and ``max_age_s`` after its ledger began."""
    ends = [job.deadline] if job.deadline else []
    began = instant(view.header.time) if view.header is not None else None
    if job.max_age_s is not None and began is not None:
        ends.append(dt.datetime.fromtimestamp(began + job.max_age_s, dt.UTC))
    return min(ends, default=None)


def past(deadline: dt.datetime | None, clock: Clock) -> bool:
    """Whether ``deadline`` (:func:`job_deadline`) has passed by ``clock``: from then on no
    request leaves. The one test of it, for the runner, the gates and the sender."""
    return not before(deadline, clock.wall())


def before(deadline: dt.datetime | None, when: float) -> bool:
    """Whether ``when`` (seconds since the epoch: a cap's reset, a carrier's) comes before
    ``deadline`` (:func:`job_deadline`; None: there is none), so that a run then can still
    send. A moment at the deadline is not before it: from then on no request leaves."""
    return deadline is None or when < deadline.timestamp()


class Held:
    """Groups held back for a window (their recipients' quiet hours, the job's
    ``send_window``) for a later run, by id: counted by their zones only as the run ends
    (:meth:`left`), of those still not done then. A group held, then left in doubt and
    settled, or sent again while its window was still open, is left for no run; one held
    twice is counted once."""

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        self._groups: dict[str, Group] = {}

    def add(self, group: Group) -> None:
        """``group`` is held for a later run."""
        self._groups[group.id] = group

    def left(self, view: LedgerView) -> Counter[tuple[str, ...]]:
        """The recipients of the groups held that ``view`` has not done (sent, or failed for
        good), by their zones."""
        left: Counter[tuple[str, ...]] = Counter()
        for gid, group in self._groups.items():
            if not view.is_done(gid):
                left[group.zones] += len(group.to)
        return left


class Gates:
    """Quiet hours and the deadline, asked for each group the runner reads."""

    def __init__(
        self,
        job: JobConfig,
        recorder: Recorder,
        clock: Clock,
        quiet: Held,
        expires_at: dt.datetime | None,
    ) -> None:
        self.job = job
        self.recorder = recorder
        self.view = recorder.view
        self.clock = clock
        #: Groups left for their window to open (shared with the sender, which finds some
        #: closed only when their turn comes).
        self.quiet = quiet
        #: After this nothing is sent (``deadline``, or ``max_age_s`` after the campaign began:
        #: :func:`job_deadline`, as the sender keeps it).
        self.expires_at = expires_at

    def past_deadline(self) -> bool:
        """Whether the deadline has passed: from then on no group is sent."""
        return past(self.expires_at, self.clock)

    def hold(self, group: Group) -> bool:
        """Whether ``group`` is held back now (expired, or waiting for its window). Expiry is
        asked first: past the deadline no window opens for it again."""
        return self._expired(group) or self._quiet(group)

    def _expired(self, group: Group) -> bool:
        """Past the deadline, a group not yet sent is recorded ``expired_unsent`` (once) and
        never sent. A group in doubt stays in doubt."""
        deadline = self.expires_at
        if deadline is None or not self.past_deadline():
            return False
        if self.view.state(group.id) not in (None, RETRY_PENDING):
            return False  # sent or failed already, or in doubt: it stays as it is
        self.recorder.expired(group, deadline.isoformat(timespec="minutes"))
        return True

    def _quiet(self, group: Group) -> bool:
        window = self.job.recipient_window
        if window is None or self.view.is_done(group.id):
            return False
        if open_for(window, group.zones, utc(self.clock)):
            return False
        self.quiet.add(group)
        return True
