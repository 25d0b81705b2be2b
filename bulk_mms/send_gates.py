"""The gates on time a group's every try must pass before its request leaves: the job's stop,
its deadline (``deadline``, ``max_age_s``), ``max_job_duration_s``, the job's ``send_window``,
the recipients' quiet hours (``recipient_window``) and its sender's queue at Telnyx.

:class:`SendGates` asks them for the sender (:class:`~bulk_mms.sending.GroupSender` owns
one), as each try is admitted and again as its request is about to leave, and judges a wait
for the next try (the pacer's, a backoff) against them as it begins: a group they close on is
expired (recorded ``expired_unsent`` by the sender), held for its recipients' window or the
job's (:attr:`SendGates.quiet`, :attr:`SendGates.window_left`), or its tries end pending a
rerun; ``max_job_duration_s`` and a closing ``send_window`` stop the job
(:class:`~bulk_mms.stopping.JobStops`). What they decide of a try is set on its
:class:`Tries`. The runner's own gates, for each group it reads, are
:class:`~bulk_mms.gates.Gates`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from msgspec.structs import replace

from bulk_mms.clock import Clock, mono_at, utc
from bulk_mms.config import JobConfig, Settings
from bulk_mms.coordination import Fence
from bulk_mms.errors import (
    AmbiguousSendError,
    NetworkError,
    RateLimited,
    RetryableSendError,
    SendError,
    WindowClosed,
)
from bulk_mms.gates import Held, job_deadline, past
from bulk_mms.ledger import LedgerView
from bulk_mms.models import Group
from bulk_mms.pacing import WAIT_CEILING_S, PaceAborted, Pacer, Ticket
from bulk_mms.prepare import in_window
from bulk_mms.quiet import closes_in, open_for
from bulk_mms.recorder import closed_before_leaving, never_left
from bulk_mms.retry import Attempted, StopRetrying
from bulk_mms.signals import Stop, StopReason
from bulk_mms.stopping import JobStops

log = structlog.get_logger(__name__)


class Tries(msgspec.Struct):
    """One group's tries in this run."""

    group: Group
    key: str
    #: No try starts after this (monotonic): the earliest of the run's deadline, the job's
    #: ``expires_at`` and the group's own age limit.
    group_deadline: float | None
    #: Wall-clock time of the group's first attempt ever: its key's age.
    t0: float | None = None
    #: A try (this run's, or an earlier run's) may have been accepted.
    ambiguous: bool = False
    ticket: Ticket | None = None
    throttled: int = 0
    #: Its sender was retired while it waited: it goes out from another.
    rerouted: bool = False
    #: The job's deadline passed before it could leave: recorded ``expired_unsent``.
    expired: bool = False
    #: Held before its next try, by a window (its recipients' quiet hours, the job's
    #: ``send_window``) or its sender's pause while another sender may send: how its tries
    #: ended says nothing of the API (no streak of unanswered groups counts it).
    held: bool = False
    #: The claim's fence its tries began under, then the one its latest attempt was written
    #: under (a shared ledger): a claim under another was taken over meanwhile.
    fence: Fence | None = None
    #: When the first of its windows (the job's ``send_window``, its recipients'
    #: ``recipient_window``) closes, as its tries began: a moment of the wall clock, which
    #: the windows are read by (:meth:`SendGates.window_closes` puts it on the monotonic
    #: clock as the wall clock reads it then); None: neither is set.
    window_closes_at: float | None = None
    #: Its sender's one try out while its queue at Telnyx is unknown near a close
    #: (:meth:`SendGates.first_answer`): held by this try, released as it ends.
    learning: asyncio.Lock | None = None


def unsent(
    tries: Tries, on_record: bool, why: Callable[[], SendError] = never_left
) -> SendError | None:
    """What a try that a gate stopped ends with: nothing before its attempt is on record;
    after, ``why`` its request never left (a stop, by default; its window closing), or, when
    an earlier try may have been accepted, that the group is still in doubt."""
    if not on_record:
        return None
    if tries.ambiguous:
        return AmbiguousSendError(
            "stopped before a repeat left; an earlier try may have been accepted"
        )
    return why()


class SendGates:
    """The gates on time for one run's sends. Private to the sender.

    It owns the deadlines (``run_deadline``, ``expires_at``, each group's ``group_deadline``)
    and the groups held back for a window for a later run (:attr:`quiet`,
    :attr:`window_left`), which the run's end counts.

    Args:
        job: its ``deadline``, ``max_age_s``, ``send_window`` and ``recipient_window``.
        settings: ``max_job_duration_s`` and ``max_group_age_s``.
        view: the ledger's view, for when the campaign began (``max_age_s``).
        clock: the run's one clock.
        stop: the job's stop.
        stops: when what the groups meet stops the job (``max_job_duration_s``, the window).
        pacer: each sender's pause and queue, and whether another sender may send first.
        started: when the run began, on the monotonic clock (``max_job_duration_s`` from it).
    """

    def __init__(
        self,
        job: JobConfig,
        settings: Settings,
        view: LedgerView,
        *,
        clock: Clock,
        stop: Stop,
        stops: JobStops,
        pacer: Pacer,
        started: float,
    ) -> None:
        self.job = job
        self.settings = settings
        self.clock = clock
        self.stop = stop
        self.stops = stops
        self.pacer = pacer
        #: ``max_job_duration_s`` from ``started``, on the monotonic clock: the run stops there.
        self.run_deadline = (
            started + settings.max_job_duration_s if settings.max_job_duration_s else None
        )
        #: After this (aware) no request leaves: the job's ``deadline``, or ``max_age_s``
        #: after its campaign began. Checked as each request is about to leave, every try.
        self.expires_at = job_deadline(job, view)
        #: Groups left for their recipients' window to open (quiet hours).
        self.quiet = Held()
        #: Groups whose next try would come only after the job's ``send_window`` closes (a
        #: backoff, their sender's pause): left for a run inside the window (the run stops
        #: ``window``, exit 4, while one of them is still left as it ends).
        self.window_left = Held()
        #: Per sender whose queue at Telnyx is unknown near a close: held by its one request
        #: out until an answer sets the queue (:meth:`first_answer`).
        self._learning: dict[str, asyncio.Lock] = {}

    def expires_mono(self) -> float | None:
        """The job's deadline (``expires_at``) on the monotonic clock, where waits (the
        pacer's, a backoff's) end, as the wall clock reads it now: a wall clock stepped since
        the run began (NTP) moves it."""
        return None if self.expires_at is None else mono_at(self.expires_at.timestamp(), self.clock)

    def window_closes(self, tries: Tries) -> float | None:
        """When the first of the group's windows closes (:attr:`Tries.window_closes_at`) on
        the monotonic clock, as the wall clock reads it now: a wall clock stepped while the
        group waits moves it, as it moves the deadline (:meth:`expires_mono`)."""
        at = tries.window_closes_at
        return None if at is None else mono_at(at, self.clock)

    def waits_end(self, tries: Tries) -> float | None:
        """No wait for the group's next try (the pacer's, a backoff) that ends after this
        (monotonic) is begun: its ``group_deadline`` or its first window's close, whichever
        comes first (:meth:`_held_for_window` says what then)."""
        return _earliest(tries.group_deadline, self.window_closes(tries))

    def run_over(self) -> bool:
        """Whether ``max_job_duration_s`` has come: from then on no request leaves, and the
        run stops there (:meth:`~bulk_mms.stopping.JobStops.run_deadline_reached`). The one
        test of it, for the reader and every try."""
        ends = self.run_deadline
        return ends is not None and self.clock.monotonic() >= ends

    def group_deadline(self) -> float | None:
        """When this group's waits and tries end (monotonic): the earliest of
        ``max_job_duration_s``, the job's deadline and this group's ``max_group_age_s``."""
        age_limit = self.settings.max_group_age_s
        own = self.clock.monotonic() + age_limit if age_limit else None
        return _earliest(self.run_deadline, self.expires_mono(), own)

    def leave_within(self, tries: Tries, now: float) -> float | None:
        """Seconds until the first gate that is open ``now`` closes: the group's deadline
        (``group_deadline``), the job's deadline as the wall clock reads it now, the job's
        ``send_window`` and the recipients' ``recipient_window``; None when none will. The
        client refuses to send once they are up (a connection still being made or waited
        for), so no request leaves late."""
        ends = [t - now for t in (tries.group_deadline, self.expires_mono()) if t is not None]
        if (windows := self._windows_left(tries.group)) is not None:
            ends.append(windows)
        return max(min(ends), 0.0) if ends else None

    def check(self, tries: Tries, *, on_record: bool = False) -> None:
        """Raise :class:`StopRetrying` unless every gate is open now: the stop, the job's
        ``send_window``, its deadline (``deadline``, ``max_age_s``), ``max_job_duration_s``
        (which stops the job) and the recipients' ``recipient_window``, on every try. A
        group the deadline closes on is recorded
        ``expired_unsent`` (unless a try may have been accepted: it stays in doubt); one its
        recipients' window closes on waits for it (a later run). ``on_record``: its attempt
        is written, so a stop records that the request never left."""
        stop = self.stop
        if past(self.expires_at, self.clock):
            self.expire(tries)  # first: past it, a closed window promises a later run nothing
            raise StopRetrying(None if tries.expired else unsent(tries, on_record))
        job = self.job  # the clock read as a datetime only for a window that is set
        if (
            job.send_window is not None
            and not stop.is_set()
            and not in_window(job, utc(self.clock))
        ):
            self.stops.window_closed()
        if not stop.is_set() and self.run_over():
            self.stops.run_deadline_reached()
        if stop.is_set():
            why = closed_before_leaving if stop.reason == StopReason.WINDOW else never_left
            raise StopRetrying(unsent(tries, on_record, why))
        window = job.recipient_window
        if window is not None and not open_for(window, tries.group.zones, utc(self.clock)):
            self._hold_for_quiet_hours(tries)  # closed while it waited
            raise StopRetrying(unsent(tries, on_record, closed_before_leaving))
        if (ahead := self.pacer.queue_ahead(tries.group.message.from_)) > 0:
            self._check_queue(tries, self.clock.monotonic() + ahead, on_record)

    def first_answer(self, tries: Tries) -> Awaitable[asyncio.Lock | None] | None:
        """What a try of ``tries.group`` waits for before it begins: None (the common case,
        nothing awaited) when its sender's queue at Telnyx is known
        (:meth:`~bulk_mms.pacing.Pacer.queue_known`: an answer of this run, or its ledger's,
        reported it) or neither the job's deadline nor the group's first window closes within
        :data:`~bulk_mms.pacing.WAIT_CEILING_S` (the longest queue an answer may report);
        else, as an unknown queue could outlast that close, the answer of the one try of that
        sender out: one try of it is out at a time until an answer sets its queue, and the
        others then pass :meth:`check` against it. Awaited, it gives the lock the caller then
        holds for its try, to release once the try is over (answered, failed or held), or
        None: the answer it waited for set the queue, and the try begins."""
        sender = tries.group.message.from_
        if self.pacer.queue_known(sender) or (ends := self._delivery_ends(tries)) is None:
            return None
        if (left := ends - self.clock.monotonic()) > WAIT_CEILING_S:
            return None
        lock = self._learning.get(sender)
        if lock is None:
            lock = self._learning[sender] = asyncio.Lock()
            log.info("sender.learning_queue", sender=sender, closes_in=round(left, 1))
        return self._learn(sender, lock)

    async def _learn(self, sender: str, lock: asyncio.Lock) -> asyncio.Lock | None:
        """Take ``lock`` (``sender``'s one try out): None, let go at once, when the answer it
        waited for set the queue (:meth:`first_answer`)."""
        await lock.acquire()
        if self.pacer.queue_known(sender):
            lock.release()
            return None
        return lock

    def _delivery_ends(self, tries: Tries) -> float | None:
        """By when (monotonic) the group's message must have left its sender's queue at Telnyx
        to reach its recipients in time: the job's deadline or its first window's close,
        whichever comes first; None when neither is set."""
        return _earliest(self.expires_mono(), self.window_closes(tries))

    def _check_queue(self, tries: Tries, leaves: float, on_record: bool) -> None:
        """Raise :class:`StopRetrying` when the group's message, accepted now, would leave
        Telnyx's queue for its recipients only at ``leaves`` (monotonic: its sender's queue,
        :meth:`~bulk_mms.pacing.Pacer.queue_ahead`), at or past the job's deadline or one of
        its windows' close: it would reach them outside it. The group is then held as a
        pacer's wait past that moment holds it (:meth:`_outlasted`: expired; waiting for its
        recipients' window; the job stopped, or the group alone left, for the
        ``send_window``). Past the deadline it expires, unless its sender is paused too and
        another sender of the pool may send in time (:meth:`~bulk_mms.pacing.Pacer.others_first`):
        it alone then gives up pending a rerun. The queue is the one this process's answers
        reported, and its ledger's earlier answers as it began (another host's messages from the
        same sender since are not in it); near a close, no try of a sender goes before an
        answer set its queue unless it is the one out (:meth:`first_answer`)."""
        closes = self.window_closes(tries)
        ends = _earliest(self.expires_mono(), closes)  # as _delivery_ends, the close read once
        if ends is None or leaves < ends:
            return
        if self._outlasted(tries, leaves) or on_record:
            why = None if tries.expired else unsent(tries, on_record, closed_before_leaving)
            raise StopRetrying(why)
        if closes is None or leaves < closes:  # past the deadline alone
            tries.held = True  # another sender sends on: the job goes on with it
        queued = "its sender's queue at Telnyx would hold it past it (wait_seconds)"
        raise self._alone_gives_up(tries, leaves, queued, self._before_deadline())

    def expire(self, tries: Tries) -> None:
        """The job's deadline passed before ``tries.group`` could leave: its tries end
        expired (:meth:`~bulk_mms.sending.GroupSender._end_expired`), unless a try may have
        been accepted."""
        if tries.ambiguous or tries.expired or self.expires_at is None:
            return
        tries.expired = True

    def gave_up(self, exc: PaceAborted, tries: Tries) -> StopRetrying:
        """Why a group stops waiting for the pacer: the job stops, ``max_job_duration_s``
        passes (the job stops too), the job's deadline passes (the group expires), or its own
        ``max_group_age_s`` or its ``send_window``'s close would pass first (the group alone
        gives up, recorded with its last error; when it never got a try, as rate limited, or
        as :class:`WindowClosed`, which asks the API nothing). While another sender of the
        pool may send before the limit its own sender's pause outlasts, the job goes on with
        it: the job does not stop, the group does not expire (it gives up pending a rerun),
        and no streak of unanswered groups counts it."""
        if exc.reason != "deadline" or self._outlasts_limits(tries, exc.earliest):
            return StopRetrying()
        alone = functools.partial(self.pacer.others_first, tries.group.message.from_)
        run_ends = self.run_deadline
        if run_ends is not None and exc.earliest > run_ends:
            limit = f"within max_job_duration_s ({self.settings.max_job_duration_s:g} s)"
        elif (expires := self.expires_mono()) is not None and exc.earliest >= expires:
            limit = self._before_deadline()
        else:
            limit = f"within max_group_age_s ({self.settings.max_group_age_s:g} s)"
        ends = self.waits_end(tries)
        if ends is not None and alone(ends):
            tries.held = True  # another sender sends on: the job goes on with it
        paused = "its sender is paused past it (429s or a long queue)"
        return self._alone_gives_up(tries, exc.earliest, paused, limit)

    def _before_deadline(self) -> str:
        """The job's deadline, as a group that misses it says it."""
        at = (
            "" if self.expires_at is None else f" ({self.expires_at.isoformat(timespec='minutes')})"
        )
        return f"before the job's deadline{at}"

    def _alone_gives_up(self, tries: Tries, until: float, why: str, limit: str) -> StopRetrying:
        """How the group alone gives up when it could leave only at ``until`` (monotonic),
        past a limit, for ``why``: left for a run inside the job's ``send_window`` when that
        is past its close (:class:`WindowClosed`), else past ``limit`` (the limit it misses,
        as said), pending a rerun (:class:`RateLimited`, with no status). Neither asks the
        API anything."""
        if (closes := self.window_closes(tries)) is not None and until >= closes:
            return StopRetrying(
                WindowClosed(
                    f"not sent before its send_window closes: {why}; a run inside the "
                    "window sends it"
                )
            )
        return StopRetrying(RateLimited(f"not sent {limit}: {why}; a rerun sends it", status=None))

    def after(self, tries: Tries, result: Attempted) -> Attempted:
        """The gates as the group's tries ended without an answer, and the tries' end as they
        have it: past the job's deadline its last try certainly never got through (a
        connection waited for until it passed, a backoff that would end after it), and it
        expires; a last try whose connection was not ready before one of its windows closed
        (closed now) is held as the closed gate holds it (:meth:`check`), its request
        never having left (:func:`~bulk_mms.recorder.closed_before_leaving`, not the API
        unreachable); past ``max_job_duration_s`` the run stops there; a wait for its next
        try that would outlast ``max_job_duration_s``, the job's deadline or one of its
        windows stops the job, expires the group or holds it as a pacer's wait past it does
        (:meth:`_outlasts_limits`)."""
        if isinstance(result.error, RetryableSendError) and past(self.expires_at, self.clock):
            self.expire(tries)
        elif isinstance(result.error, NetworkError) and self._windows_left(tries.group) == 0:
            with contextlib.suppress(StopRetrying):  # held as the closed gate holds it
                self.check(tries, on_record=True)
            return replace(result, error=closed_before_leaving())
        elif isinstance(result.error, RetryableSendError) and self.run_over():
            self.stops.run_deadline_reached()  # it ran out with the run's time: stopped there
        elif result.next_try is not None:
            self._outlasts_limits(tries, result.next_try)
        return result

    def windows_close(self, group: Group) -> float | None:
        """When the first of ``group``'s windows closes, on the wall clock
        (:meth:`_windows_left`; None: none will)."""
        left = self._windows_left(group)
        return None if left is None else self.clock.wall() + left

    def _windows_left(self, group: Group) -> float | None:
        """Seconds until the first of ``group``'s windows closes (0: one is closed now): the
        job's ``send_window`` and its recipients' ``recipient_window``, as
        :func:`~bulk_mms.quiet.closes_in` has them; None when neither is set, or neither
        ever closes (``00:00-24:00``)."""
        job = self.job
        if job.send_window is None and job.recipient_window is None:
            return None
        at, ends = utc(self.clock), []
        if job.send_window is not None:
            ends.append(closes_in(job.send_window, (job.timezone,), at))
        if job.recipient_window is not None:
            ends.append(closes_in(job.recipient_window, group.zones, at))
        left = min(ends)
        return None if math.isinf(left) else left

    def _outlasts_limits(self, tries: Tries, until: float) -> bool:
        """Whether a wait for the group's next try that would end at ``until`` (monotonic:
        the pacer's, :meth:`gave_up`; the retrier's after a 429, a 5xx or a connection
        error, :meth:`after`) outlasts a limit that holds more than the group:
        ``max_job_duration_s`` stops the job (resumable: the group is left pending a rerun),
        unless another sender of the pool may send before it; past the job's deadline or
        one of its windows, see :meth:`_outlasted`. False: the group alone gives up (its own
        ``max_group_age_s``, or another sender sends on). The one test of it, for both
        waits."""
        run_ends, sender = self.run_deadline, tries.group.message.from_
        if (
            run_ends is not None
            and until > run_ends
            and not self.pacer.others_first(sender, run_ends)
        ):
            self.stops.run_deadline_reached()
            return True
        return self._outlasted(tries, until)

    def _outlasted(self, tries: Tries, until: float) -> bool:
        """Whether the pacer's wait for the group's sender that would end at ``until``
        (monotonic: its pause after a 429 or a long queue) outlasts a gate, so that no
        request of it could leave: then it is held at once, as the gate's closing holds it
        (:meth:`check`), not once the wait is over. Past the job's deadline, it is
        recorded ``expired_unsent`` (first: past it, a window promises nothing), unless
        another sender of the pool may send before it (the group then gives up pending a
        rerun: :meth:`gave_up`); past one of its windows' close, see
        :meth:`_held_for_window`."""
        expires, sender = self.expires_mono(), tries.group.message.from_
        if (
            expires is not None
            and until >= expires
            and not self.pacer.others_first(sender, expires)
        ):
            self.expire(tries)  # no other sender of the pool may send before the deadline
            return True
        return self._held_for_window(tries, until)

    def _hold_for_quiet_hours(self, tries: Tries) -> None:
        """The group waits for its recipients' window to open again (a later run sends it):
        its members counted among those left for their quiet hours, and its tries' end no
        word on the API (:attr:`Tries.held`)."""
        self.quiet.add(tries.group)
        tries.held = True

    def _held_for_window(self, tries: Tries, until: float) -> bool:
        """Whether the group is held because a wait for its next try that would end at
        ``until`` (monotonic: the pacer's, or the retrier's after a 429 or a backoff:
        :meth:`_outlasted`) outlasts one of its windows, as the window's closing
        holds it (:meth:`check`): for its recipients' ``recipient_window``, it waits
        for their window to open again (a later run sends it); for the job's
        ``send_window``, when no sender of the pool may send before it closes, the job stops
        (exit 4); else the group alone is left for a run inside the window
        (:attr:`window_left`: the run then stops ``window``, exit 4), its tries ending with
        their last error, and the job goes on (False). The one test of it, for both waits."""
        if (first := self.window_closes(tries)) is None or until < first:
            return False
        job, group, now = self.job, tries.group, self.clock.monotonic()
        at = utc(self.clock)
        theirs = job.recipient_window
        if theirs is not None and closes_in(theirs, group.zones, at) <= until - now:
            self._hold_for_quiet_hours(tries)
            log.info("group.paused_past_window", group=group.id, window="recipient_window")
            return True
        window = job.send_window
        if window is None or (closes := closes_in(window, (job.timezone,), at)) > until - now:
            return False
        log.info("group.paused_past_window", group=group.id, window="send_window")
        if closes <= self.pacer.resumes() - now:
            self.stops.window_closed()
            return True
        self.window_left.add(group)  # a run inside the window sends it
        tries.held = True
        return False


def _earliest(*moments: float | None) -> float | None:
    """The first of ``moments`` that are set; None when none is."""
    return min((t for t in moments if t is not None), default=None)
