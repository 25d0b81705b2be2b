"""Sending one group: pace, write the attempt ahead, send with retries, record the outcome.

:class:`GroupSender` is the runner's per-group path, shared by its workers. It keeps what spans
groups: the pacer, the caps, the retry digest, the attempts on record whose outcome is not yet
(for a forced stop), and when what the groups meet stops the job (:class:`~bulk_mms.stopping.
JobStops`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import structlog
from msgspec.structs import replace

from bulk_mms.caps import Limit
from bulk_mms.client import MmsClient, idempotency_key
from bulk_mms.clock import Clock, utc
from bulk_mms.codes import MEANINGS, OPTED_OUT, Action
from bulk_mms.config import JobConfig, Settings
from bulk_mms.coordination import Fence
from bulk_mms.delivery import FINAL
from bulk_mms.errors import (
    AmbiguousSendError,
    ApiError,
    ClaimLost,
    ConfigError,
    FatalSendError,
    LedgerError,
    NetworkError,
    RateLimited,
    Rejected,
    RetryableSendError,
    SenderRefused,
    SendError,
    WindowClosed,
)
from bulk_mms.gates import Held, job_deadline, past
from bulk_mms.grouping import without
from bulk_mms.ledger import Failed, InDoubt
from bulk_mms.ledger.fold import RETRY_PENDING, GroupRecord
from bulk_mms.models import Group, RecipientStatus, SendReceipt
from bulk_mms.pacing import PaceAborted, Pacer, Ticket
from bulk_mms.policy import (
    delivery_action,
    named_members,
    refused_by_optouts,
    refused_members,
    report_code,
)
from bulk_mms.prepare import (
    in_window,
    key_valid_until,
)
from bulk_mms.quiet import closes_in, open_for
from bulk_mms.recorder import (
    Recorder,
    closed_before_leaving,
    key_conflict,
    never_left,
    reset_of,
    settled,
)
from bulk_mms.retry import Attempted, Retrier, RetryDigest, StopRetrying
from bulk_mms.settle import Settler
from bulk_mms.signals import Stop
from bulk_mms.stopping import JobStops
from bulk_mms.suppression import Suppressed, suppress_opted_out

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: The least time a request keeps, before the claim on its group may pass to another process,
#: to leave in after its connection is ready (a quarter of the lease, when that is less).
HOLD_MARGIN_S = 1.0


def _quiet(task: asyncio.Future[Any]) -> None:
    """Take an abandoned write's outcome, so that its failure is not reported unhandled."""
    if not task.cancelled():
        task.exception()


class _Tries(msgspec.Struct):
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
    #: ``recipient_window``) closes (monotonic), as its tries began; None: neither is set.
    window_closes: float | None = None

    @property
    def waits_end(self) -> float | None:
        """No wait for its next try (the pacer's, a backoff) that ends after this is begun:
        its ``group_deadline`` or its first window's close, whichever comes first
        (:meth:`GroupSender._held_for_window` says what then)."""
        ends = [t for t in (self.group_deadline, self.window_closes) if t is not None]
        return min(ends, default=None)


def _unsent(
    tries: _Tries, on_record: bool, why: Callable[[], SendError] = never_left
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


class RequestTimes:
    """When this run's requests left, on the monotonic clock: the rate it achieved. Private.

    Every try counts (a retry is a request the pace admitted too), failed or not.
    """

    __slots__ = ("first", "last", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.first: float | None = None
        self.last: float | None = None

    def left(self, now: float) -> None:
        """A request leaves now."""
        self.requests += 1
        self.first = now if self.first is None else self.first
        self.last = now

    def rate(self) -> float | None:
        """Requests per second while sending: the gaps between departures over the time from
        the first request leaving to the last (``n`` requests paced at ``r`` per second leave
        ``(n - 1) / r`` seconds apart, so ``n - 1`` gaps, not ``n``: three requests at 10/s
        are 10/s, not 15). None with fewer than two requests, or all at one instant."""
        if self.first is None or self.last is None or self.last <= self.first:
            return None
        return (self.requests - 1) / (self.last - self.first)


class SenderStats(msgspec.Struct, frozen=True):
    """What a :class:`GroupSender` counted since it started."""

    #: Seconds since it started, on the monotonic clock.
    elapsed_s: float
    #: Requests per second while it was sending (:meth:`RequestTimes.rate`); None when it got
    #: nothing sent (the rate of tries that all failed says nothing of pace).
    achieved_rate: float | None
    #: 429s, and of them the queue-full ones (40318).
    rate_limited: int
    queue_full: int


class GroupSender:
    """Sends groups for one run. Private to the runner.

    It owns what a send must pass and what spans groups: the pacer (and the account budget
    behind it), the money and count caps, the deadlines (``run_deadline``, ``expires_at``,
    each group's ``group_deadline``) and the retry digest. The runner reads what it counted
    through :meth:`stats` and lets go of it all with :meth:`close`. What it is built from is
    built where the run is assembled (:func:`bulk_mms.startup.build_sender`), so a test can
    pass its own.

    Args:
        job: what to send to whom.
        settings: rate, retries, deadlines, the error policy.
        client: what every send goes through: the API seam with the error policy
            (``[errors]``) applied (:class:`~bulk_mms.policy.PolicyClient`).
        recorder: where each attempt and outcome is written.
        clock: the run's one clock.
        stop: the job's stop; the sender sets it too (a fatal error, a streak, a cap).
        pacer: admits each try, the account budget behind it (closed by :meth:`close`),
            without the senders the ledger had retired already.
        settler: looks groups in doubt up in the API's records (:mod:`bulk_mms.settle`).
        suppressed: the account's suppression list (the settings' file, or the table).
        limits: the caps a send must fit under (``max_cost``, the daily cap; closed by
            :meth:`close`).
    """

    def __init__(
        self,
        job: JobConfig,
        settings: Settings,
        client: MmsClient,
        recorder: Recorder,
        *,
        clock: Clock,
        stop: Stop,
        pacer: Pacer,
        settler: Settler,
        suppressed: Suppressed,
        limits: list[Limit] | None = None,
    ) -> None:
        self.job = job
        self.settings = settings
        self.client = client
        self.recorder = recorder
        self.view = recorder.view
        self.summary = recorder.summary
        self.clock = clock
        self.stop = stop
        self.pacer = pacer
        self.settler = settler
        self.suppressed = suppressed
        #: The limits a send must fit under, kept as groups go.
        self.limits: list[Limit] = limits or []
        self.started = clock.monotonic()
        #: ``max_job_duration_s`` from now, on the monotonic clock: the run stops there.
        self.run_deadline = (
            self.started + settings.max_job_duration_s if settings.max_job_duration_s else None
        )
        #: After this (aware) no request leaves: the job's ``deadline``, or ``max_age_s``
        #: after its campaign began. Checked as each request is about to leave, every try.
        self.expires_at = job_deadline(job, self.view)
        #: Retries told one line per cause now and then, not one line each.
        self.retries = RetryDigest(now=clock.monotonic)
        #: Retriers not sending a group now: each group in flight takes one (the workers'
        #: tenacity machinery, built once each and reused group after group).
        self._retriers: list[Retrier] = []
        #: When what the groups meet stops the job.
        self.stops = JobStops(job, settings, stop, recorder.summary)
        #: Groups whose attempt is on record and whose outcome is not yet, for a forced stop:
        #: None while a request is out (or a try may have been accepted); else the error of
        #: the last try, which certainly failed.
        self.open_attempts: dict[str, SendError | None] = {}
        #: When each request of this run left (the achieved rate).
        self.times = RequestTimes()
        #: The message id each answer named → the group it answered, from the answer until
        #: its ``sent`` is in the ledger's view (answers in flight together are not there
        #: yet): :meth:`_own_answer`.
        self._answered: dict[str, str] = {}
        #: Groups left for their recipients' window to open (quiet hours).
        self.quiet = Held()
        #: Groups whose next try would come only after the job's ``send_window`` closes (a
        #: backoff, their sender's pause): left for a run inside the window (the run stops
        #: ``window``, exit 4, while one of them is still left as it ends).
        self.window_left = Held()
        #: Groups this run left in doubt, for the API's records to settle before it ends.
        self.doubts: dict[str, Group] = {}
        #: Of those, the ones its own requests left in doubt: when the last of them left (the
        #: ledger's ``last_try`` then). A group another process finds sent with no request
        #: since was accepted from here (:meth:`Runner._decided
        #: <bulk_mms.runner.Runner._decided>`).
        self.tried: dict[str, float] = {}
        #: Groups another process took over before their request left here: theirs to decide,
        #: watched before the run ends (a shared ledger).
        self.lost: dict[str, Group] = {}
        #: Senders a delivery report showed blocked during this run.
        self.retired_by_delivery: set[str] = set()

    def cut_off(self, group: Group) -> None:
        """A forced stop cancelled ``group``: record where it stands if its attempt is on
        record, unless its claim may have run out (this process paused past its lease): the
        group may be another's then, with an attempt of its own open that an outcome written
        here would close; its attempt on record reads in doubt, for the API's records."""
        if group.id not in self.open_attempts:
            return
        last = self.open_attempts.pop(group.id)
        if self._surely_held(group):
            self.recorder.cut_off(group, last)

    def _surely_held(self, group: Group) -> bool:
        """Whether no other process can have taken ``group`` over: nothing is shared, or this
        process's claim on it surely still holds (:meth:`~bulk_mms.coordination.Coordinator.
        held_for`). Else the group may be another's, its request in flight: nothing of it is
        decided here (no outcome written, no room given back)."""
        held = self.recorder.coordinator.held_for(group.id)
        return held is None or held > 0

    def sender_for(self, group: Group) -> Group:
        """Give the group its sender: the one it had before (sticky), or the freest in the pool.

        Raises:
            PaceAborted: every sender of the job is retired.
        """
        rec = self.view.groups.get(group.id)
        sender = rec.sender if rec is not None else None
        if sender is not None and not self.pacer.usable(sender):
            log.warning("group.sender_gone", group=group.id, sender=sender)
            sender = None
        sender = sender or self.pacer.choose()
        if sender == group.message.from_:
            return group
        return replace(group, message=replace(group.message, from_=sender))

    def key_for(self, group: Group) -> str:
        """The group's Idempotency-Key: its latest attempt's, unless the API's last answer
        under it refused the group's sender (nothing was accepted: the request from another
        sender is a new one, under a new key). Any other group keeps its key whatever its
        sender (a 5xx may follow a request that was processed): a 422 then says the body
        changed, where a new key could send it twice."""
        rec = self.view.groups.get(group.id)
        if rec is not None and rec.key is None and rec.resends:
            # the API's records showed the earlier request never accepted: a new request
            return idempotency_key(self.view.campaign, f"{group.id}-r{rec.resends}")
        if rec is None or rec.key is None:
            return idempotency_key(self.view.campaign, group.id)
        moved = rec.refused_sender not in (None, group.message.from_)
        if moved and rec.state == RETRY_PENDING and not rec.open:
            return idempotency_key(self.view.campaign, f"{group.id}-{group.message.from_[1:]}")
        return rec.key  # the same request again, or one that may have been accepted

    def expires_mono(self) -> float | None:
        """The job's deadline (``expires_at``) on the monotonic clock, where waits (the
        pacer's, a backoff's) end, as the wall clock reads it now: a wall clock stepped since
        the run began (NTP) moves it."""
        if self.expires_at is None:
            return None
        return self.clock.monotonic() + (self.expires_at.timestamp() - self.clock.wall())

    def run_over(self) -> bool:
        """Whether ``max_job_duration_s`` has come: from then on no request leaves, and the
        run stops there (:meth:`~bulk_mms.stopping.JobStops.run_deadline_reached`). The one
        test of it, for the reader and every try."""
        ends = self.run_deadline
        return ends is not None and self.clock.monotonic() >= ends

    def _group_deadline(self) -> float | None:
        """When this group's waits and tries end (monotonic): the earliest of
        ``max_job_duration_s``, the job's deadline and this group's ``max_group_age_s``."""
        age_limit = self.settings.max_group_age_s
        own = self.clock.monotonic() + age_limit if age_limit else None
        ends = [t for t in (self.run_deadline, self.expires_mono(), own) if t is not None]
        return min(ends, default=None)

    async def send(self, group: Group) -> Group | None:  # noqa: PLR0911 - each way a group's tries end returns what goes out in its place
        """Send one group and record how it ended. Returns what goes out in its place, if
        anything: the same group from another sender (the API refused its sender), or the
        members the API did not refuse by name (opt-outs), made into a new group."""
        try:
            group = self.sender_for(group)
        except PaceAborted:
            self.stops.no_senders(self.pacer.retired)
            return None
        rec = self.view.groups.get(group.id)
        # An earlier run may have sent this group already (it was in doubt): any answer now
        # is a replay under the same key, and a 422 would mean the body changed under it.
        was_in_doubt = self.view.in_doubt(group.id)
        key = self.key_for(group)
        tries = _Tries(
            group,
            key,
            self._group_deadline(),
            t0=rec.t0 if rec is not None and rec.key in (None, key) else None,
            ambiguous=was_in_doubt,
            fence=self.recorder.coordinator.fence(group.id),
            window_closes=self._windows_close(group),
        )
        retriers = self._retriers
        retrier = (
            retriers.pop()
            if retriers
            else Retrier(self.settings.retry, clock=self.clock, digest=self.retries)
        )
        try:  # each try is _try; tenacity (the retrier) says whether another follows an error
            result = await retrier.run(
                group,
                functools.partial(self._try, tries),
                deadline=tries.waits_end,
                ambiguous_until=key_valid_until(
                    self.view, self.settings.retry, group.id, fresh=self.clock.wall()
                ),
            )
        except StopRetrying:  # it gave up before its first try
            return await self._gave_up_first(tries)
        except ClaimLost:  # another process took the group over: it is theirs, never sent here
            await self._lose(group)
            return None
        except LedgerError as exc:  # before its request left (a write ahead, a claim, a count)
            self.stops.ledger_failed(exc)
            await self._give_back_if_held(group, maybe_sent=tries.ambiguous)
            return None
        finally:
            retriers.append(retrier)  # free again: its tries are over, however they ended
        result = self._gates_after(tries, result)
        if tries.expired:  # its deadline passed between tries
            await self._end_expired(tries)
            return None
        if result.receipt is None and not await self._still_held(tries, result.error):
            await self._lose(group)
            return None
        if tries.rerouted and result.receipt is None and not tries.ambiguous:
            # its sender was retired while it waited to retry: nothing was accepted, and it
            # goes on from another sender (its open attempt is closed by what comes of that)
            await self._release(group, None)
            return None if self.stop.is_set() else group
        if result.receipt is not None and tries.ticket is not None:
            # the wait as the pacer took it (clamped), for the ledger and the percentiles too
            wait = self.pacer.observe(tries.ticket, result.receipt.wait_seconds)
            if wait != result.receipt.wait_seconds:
                result = replace(result, receipt=replace(result.receipt, wait_seconds=wait))
        if (
            isinstance(result.error, Rejected)
            and result.error.status == 422
            and (was_in_doubt or result.attempts > 1)
        ):
            result = replace(result, error=key_conflict(result.error))
        try:
            after = await self.conclude(
                group, result, tries.throttled, held=tries.held, fence=tries.fence
            )
        except LedgerError as exc:
            self.stops.ledger_failed(exc)
            return None
        return None if self.stop.is_set() else after

    async def _gave_up_first(self, tries: _Tries) -> Group | None:
        """The group's tries ended before the first: expired (:meth:`_end_expired`), or
        nothing of it left; the same group goes on from another sender if its own was
        retired while it waited (:meth:`send`)."""
        if tries.expired:
            await self._end_expired(tries)
            return None
        await self._release(tries.group, None, maybe_sent=tries.ambiguous)
        return tries.group if tries.rerouted and not self.stop.is_set() else None

    async def _give_back_if_held(self, group: Group, *, maybe_sent: bool) -> None:
        """The ledger failed before ``group``'s outcome was on record: its room in the shared
        limits is given back only when nothing of it may have been sent (not ``maybe_sent``)
        and this process surely still holds its claim (:meth:`_surely_held`); else it stays
        held, for a taker that may send the group in it, or the next run's reconcile."""
        kept = maybe_sent or not self._surely_held(group)
        await self._settle_limits(group, None, maybe_sent=kept)

    async def _lose(self, group: Group) -> None:
        """``group`` is another process's now (it took the claim over): watched, not decided
        here. Its room in the shared limits is the group's, which the taker sends it in:
        kept."""
        self.lost[group.id] = group
        await self._release(group, None, maybe_sent=True)

    async def _still_held(self, tries: _Tries, error: SendError | None) -> bool:
        """Whether the group's failure (``error``; None: a gate stopped it) may be recorded
        here: this process still holds its claim under the fence its tries began with, or
        its latest attempt was written under (:meth:`holds`, which claims it again if it may
        have run out), or the failure leaves the group in doubt. A failure closes whatever
        attempt is open on the group: one written once another process took the group over,
        and sent it again, would make its open attempt read pending a rerun (so too for a
        group with no attempt of its own here, given up before its first try). A ledger that
        fails here stops the run (False). Asked before the failure is made (its opt-outs
        looked up, its room settled); its write is fenced too (:meth:`conclude`), for a claim
        that passes on meanwhile."""
        if isinstance(error, AmbiguousSendError):
            return True
        return await self.holds(tries.group.id, tries.fence)

    async def holds(self, gid: str, fence: Fence | None) -> bool:
        """Whether this process still holds group ``gid``'s claim under ``fence`` (the one
        it decided under: :meth:`_hold`, which claims it again if it may have run out), so
        that an outcome of the group may be written here. A ledger that fails here stops
        the run (False)."""
        try:
            await self._hold(gid, fence)
        except ClaimLost:
            return False
        except StopRetrying:
            return True  # stopped while its claim surely holds
        except LedgerError as exc:
            self.stops.ledger_failed(exc)
            return False
        return True

    async def record_held(
        self, gid: str, fence: Fence | None, write: Callable[[Fence | None], Awaitable[None]]
    ) -> bool:
        """Whether ``write`` recorded an outcome of group ``gid`` that does not leave it in
        doubt (a failure: it closes whatever attempt is open on the group) while this process
        holds its claim under ``fence``: checked first (:meth:`holds`, which claims it again
        if it may have run out), then written under that fence, which a shared store keeps
        to (another process that took the group over meanwhile, this one's commit stalled
        past its lease, has it refused). False: nothing was written; the group is another's,
        or the ledger failed in the check (the run stops).

        Raises:
            LedgerError: the write could not be made durable.
        """
        if not await self.holds(gid, fence):
            return False
        try:
            await write(fence)
        except ClaimLost:
            return False
        return True

    async def _try(self, tries: _Tries, number: int) -> SendReceipt:
        """Try ``number`` of the group, top to bottom: the pacer admits it, the gates and the
        caps let it through, its attempt is written ahead, it takes its send slot, and the
        request leaves; its answer, or the error that ended it."""
        ticket = await self._pace(tries)
        await self._reserve(tries)
        await self._write_attempt(tries, number)
        within = await self._take_slot(tries, ticket)
        try:
            return self._own_answer(
                tries.group, await self.client.send(tries.group, tries.key, leave_within=within)
            )
        except SendError as exc:
            self._on_error(tries, exc)
            raise

    def _own_answer(self, group: Group, receipt: SendReceipt) -> SendReceipt:
        """``receipt``, when its message id is no other group's: an id that already answered
        another group (in this run, or in the ledger) is not an answer to this request (a
        caching proxy's copy, a server's confusion). Telnyx gives every message its own id.

        Raises:
            AmbiguousSendError: the id is another group's; the request may have been accepted.
        """
        mid = receipt.message_id
        owner = self._answered.setdefault(mid, group.id)
        if owner == group.id and (owner := self.view.by_message_id.get(mid, owner)) != group.id:
            del self._answered[mid]  # the ledger's answer: this one holds nothing
        if owner != group.id:
            raise AmbiguousSendError(
                "accepted, but the answer's message id is another group's: "
                "not an answer to this request"
            )
        return receipt

    async def _pace(self, tries: _Tries) -> Ticket:
        """Wait for the pacer to admit the group's sender; its ticket (kept in ``tries``)."""
        group = tries.group
        try:
            ticket = await self._unless_stopped(
                self.pacer.acquire(group.message.from_, len(group.to), tries.waits_end)
            )
        except PaceAborted as exc:
            tries.rerouted = exc.reason == "retired"
            raise self._gave_up(exc, tries) from None
        tries.ticket = ticket
        return ticket

    async def _reserve(self, tries: _Tries) -> None:
        """Every gate is open now, no member is on the suppression list as it now stands, and
        every cap (money, count) has room for the group: else the group's tries end on the
        cap's :class:`LimitReached` (recorded pending a rerun, with the reset of a daily cap,
        as a carrier's is: :meth:`conclude`), and the job stops."""
        self._check_gates(tries)
        self._check_optouts(tries)
        for limit in self.limits:
            if (over := await self._unless_stopped(limit.reserve(tries.group))) is not None:
                self.stops.fail(over, "limit")  # at once: no other group takes room meanwhile
                # its tries end on the cap, as on a carrier's; one in doubt since an earlier
                # run stays so, unrecorded (the cap says nothing of whether it was sent)
                raise StopRetrying(None if tries.ambiguous else over)

    async def _take_slot(self, tries: _Tries, ticket: Ticket) -> float | None:
        """The attempt is on record: wait for the moment the request may leave (the pacer's
        send slot), and check the gates again at that moment. Returns the seconds the
        request has left to leave in: before a gate closes (:meth:`_leave_within`) or the
        group's claim may pass to another process (:meth:`_hold`).

        Raises:
            ClaimLost: another process took the group over.
        """
        try:
            await self.pacer.send_slot(ticket, tries.group_deadline)
        except PaceAborted as exc:
            # on record, but the request never left: a resume must not take it for one that
            # may have been accepted. A stale admission taken again past a deadline: the job's
            # expires the group, max_job_duration_s stops the job (as in the pacer's wait)
            self._gave_up(exc, tries)
            raise StopRetrying(None if tries.expired else never_left()) from None
        try:
            held = await self._hold(tries.group.id, tries.fence)
        except StopRetrying:  # stopped while claiming again
            raise StopRetrying(_unsent(tries, on_record=True)) from None
        self._check_gates(tries, on_record=True)
        now = self.clock.monotonic()
        ends = [t for t in (self._leave_within(tries, now), held) if t is not None]
        within = min(ends, default=None)
        if within is not None and within <= 0:  # no time to leave in: it never does
            raise StopRetrying(_unsent(tries, on_record=True))
        self.times.left(now)  # the request leaves now
        return within

    async def _hold(self, gid: str, fence: Fence | None) -> float | None:
        """Seconds the request has to leave in before this process's claim on group ``gid``
        may pass to another (a shared ledger; None: nothing is shared). A claim that may have
        run out (this process was paused, its renewals late) is claimed again first. A claim
        no longer under ``fence`` (the one the group's tries began under, or its attempt was
        written with: another process took it meanwhile) raises :class:`ClaimLost`, and the
        request never leaves here (the other settles the attempt on record by the API's
        records). So does a stop that comes before a claim already run out is taken again:
        the group may be another's, with an attempt of its own open that an outcome written
        here would close."""
        coordinator = self.recorder.coordinator
        held = coordinator.held_for(gid)
        if held is None:
            return None
        margin = min(HOLD_MARGIN_S, coordinator.lease_s / 4)
        if held <= margin:
            try:
                still = await self._before_stop(coordinator.claim(gid))
            except StopRetrying:
                if held > 0:
                    raise  # still its own: recorded as never having left
                raise ClaimLost(self.recorder.store.name, gid) from None
            if not still:
                raise ClaimLost(self.recorder.store.name, gid)
            held = coordinator.held_for(gid) or 0.0
        if coordinator.fence(gid) != fence:
            raise ClaimLost(self.recorder.store.name, gid)
        return held - margin

    async def _unless_stopped(self, work: Awaitable[T]) -> T:
        """A round trip to the shared database before the attempt (the account budget's
        admission, a shared limit's reservation), given up on when the job stops meanwhile
        (:meth:`_before_stop`: a locked or unreachable table must not hold a SIGTERM). Once
        stopped, or on a ledger nobody shares, ``work`` is awaited as it is (it ends at once
        on a stop, or never waits on a database). A reservation given up on may still land:
        its room stays taken (a cap is never passed, only reached sooner)."""
        if not self.recorder.store.shared or self.stop.is_set():
            return await work
        return await self._before_stop(work)

    async def _before_stop(self, work: Awaitable[T]) -> T:
        """What ``work`` (a database call) comes to, unless the job is stopped first: then
        :class:`StopRetrying`, and ``work`` is never started, or, begun, goes on unwatched (a
        locked table must not hold a SIGTERM)."""
        if self.stop.is_set():
            if asyncio.iscoroutine(work):
                work.close()  # never started: nothing to write or take
            raise StopRetrying
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not task.done():  # stopped, or this wait cancelled: its outcome taken quietly
                task.add_done_callback(_quiet)
        if not task.done():
            raise StopRetrying
        return task.result()

    def _leave_within(self, tries: _Tries, now: float) -> float | None:
        """Seconds until the first gate that is open ``now`` closes: the group's deadline
        (``group_deadline``), the job's deadline as the wall clock reads it now, the job's
        ``send_window`` and the recipients' ``recipient_window``; None when none will. The
        client refuses to send once they are up (a connection still being made or waited
        for), so no request leaves late."""
        ends = [t - now for t in (tries.group_deadline, self.expires_mono()) if t is not None]
        if (windows := self._windows_left(tries.group)) is not None:
            ends.append(windows)
        return max(min(ends), 0.0) if ends else None

    async def _write_attempt(self, tries: _Tries, number: int) -> None:
        """Write the attempt ahead, durably (from here a forced stop records where the group
        stands). On a shared ledger a stop ends the wait for the database (a locked table must
        not hold a SIGTERM): the request then never leaves; an attempt that lands later reads,
        to the next run, as one whose outcome is unknown, and the API's records settle it."""
        group = tries.group
        tries.t0 = tries.t0 if tries.t0 is not None else self.clock.wall()
        self.open_attempts[group.id] = None
        tries.fence = self.recorder.coordinator.fence(group.id)  # as the attempt is written
        write = self.recorder.attempt(group, number, tries.key, tries.t0)
        if not self.recorder.store.shared:
            await write
            return
        try:
            await self._before_stop(write)
        except StopRetrying:
            self.open_attempts.pop(group.id, None)
            raise

    def _check_gates(self, tries: _Tries, *, on_record: bool = False) -> None:
        """Raise :class:`StopRetrying` unless every gate is open now: the stop, the job's
        ``send_window``, its deadline (``deadline``, ``max_age_s``), ``max_job_duration_s``
        (which stops the job) and the recipients' ``recipient_window``, on every try. A
        group the deadline closes on is recorded
        ``expired_unsent`` (unless a try may have been accepted: it stays in doubt); one its
        recipients' window closes on waits for it (a later run). ``on_record``: its attempt
        is written, so a stop records that the request never left."""
        stop = self.stop
        if past(self.expires_at, self.clock):
            self._expire(tries)  # first: past it, a closed window promises a later run nothing
            raise StopRetrying(None if tries.expired else _unsent(tries, on_record))
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
            why = closed_before_leaving if stop.reason == "window" else never_left
            raise StopRetrying(_unsent(tries, on_record, why))
        window = job.recipient_window
        if window is not None and not open_for(window, tries.group.zones, utc(self.clock)):
            self._hold_for_quiet_hours(tries)  # closed while it waited
            raise StopRetrying(_unsent(tries, on_record, closed_before_leaving))
        if (ahead := self.pacer.queue_ahead(tries.group.message.from_)) > 0:
            self._check_queue(tries, self.clock.monotonic() + ahead, on_record)

    def _check_queue(self, tries: _Tries, leaves: float, on_record: bool) -> None:
        """Raise :class:`StopRetrying` when the group's message, accepted now, would leave
        Telnyx's queue for its recipients only at ``leaves`` (monotonic: its sender's queue,
        :meth:`~bulk_mms.pacing.Pacer.queue_ahead`), at or past the job's deadline or one of
        its windows' close: it would reach them outside it. The group is then held as a
        pacer's wait past that moment holds it (:meth:`_outlasted`: expired; waiting for its
        recipients' window; the job stopped, or the group alone left, for the
        ``send_window``). Past the deadline it expires, unless its sender is paused too and
        another sender of the pool may send in time (:meth:`~bulk_mms.pacing.Pacer.others_first`):
        it alone then gives up pending a rerun. The queue is the one this process's answers
        reported (another host's messages from the same sender are not in it)."""
        expires, closes = self.expires_mono(), tries.window_closes
        if (expires is None or leaves < expires) and (closes is None or leaves < closes):
            return
        if self._outlasted(tries, leaves) or on_record:
            why = None if tries.expired else _unsent(tries, on_record, closed_before_leaving)
            raise StopRetrying(why)
        if closes is None or leaves < closes:  # past the deadline alone
            tries.held = True  # another sender sends on: the job goes on with it
        queued = "its sender's queue at Telnyx would hold it past it (wait_seconds)"
        raise self._alone_gives_up(tries, leaves, queued, self._before_deadline())

    def _check_optouts(self, tries: _Tries) -> None:
        """Refuse the members now on the suppression list, as Telnyx's 40300 refuses a number
        that texted STOP (:class:`Rejected`, naming each by its ``/to/{i}``): the rest of the
        group goes out without them, and they are recorded opted out. The list is the run's
        own, kept up to date by its looks (:meth:`~bulk_mms.runner.Runner.look_again`), so a
        group planned before a STOP (queued, retried, or pending since an earlier run) never
        texts that number. A group that may have been accepted already is left as it is.

        Raises:
            Rejected: members of the group are on the list.
        """
        if tries.ambiguous or not (listed := self.suppressed.among(to := tries.group.to)):
            return
        raise Rejected(
            "on the suppression list; not sent",
            errors=[
                ApiError(
                    OPTED_OUT,
                    MEANINGS[OPTED_OUT],
                    f"{to[i]} is on the suppression list",
                    f"/to/{i}",
                )
                for i in listed
            ],
        )

    def _expire(self, tries: _Tries) -> None:
        """The job's deadline passed before ``tries.group`` could leave: its tries end
        expired (:meth:`_end_expired`), unless a try may have been accepted."""
        if tries.ambiguous or tries.expired or self.expires_at is None:
            return
        tries.expired = True

    async def _end_expired(self, tries: _Tries) -> None:
        """Record ``tries.group`` ``expired_unsent`` (final: never sent later) while this
        process holds its claim under the fence its tries began with (:meth:`holds`, and the
        write fenced by it: :meth:`~bulk_mms.recorder.Recorder.expire`), then give its room
        back. Else it is another's (:meth:`_lose`), whose attempt may be open, its request
        out before the deadline: an outcome written here would close that attempt as never
        sent. A ledger that fails here stops the run."""
        group = tries.group
        assert self.expires_at is not None  # tries expire only against a deadline
        deadline = self.expires_at.isoformat(timespec="minutes")
        write = functools.partial(self.recorder.expire, group, deadline)
        try:
            if not await self.record_held(group.id, tries.fence, write):
                await self._lose(group)
                return
        except LedgerError as exc:
            self.stops.ledger_failed(exc)
            await self._give_back_if_held(group, maybe_sent=False)
            return
        await self._release(group, None)

    def _on_error(self, tries: _Tries, exc: SendError) -> None:
        """Learn from a failed try (the pacer from a 429); keep what a forced stop records."""
        tries.ambiguous = tries.ambiguous or isinstance(exc, AmbiguousSendError)
        if not tries.ambiguous and isinstance(exc, RetryableSendError):
            self.open_attempts[tries.group.id] = exc  # nothing is out until the next try
        if isinstance(exc, RateLimited):
            self.pacer.on_rate_limited(tries.group.message.from_, exc.retry_after, exc.code)
            tries.throttled += 1
        self.stops.tried(exc)

    def _gave_up(self, exc: PaceAborted, tries: _Tries) -> StopRetrying:
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
        ends = tries.waits_end
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

    @staticmethod
    def _alone_gives_up(tries: _Tries, until: float, why: str, limit: str) -> StopRetrying:
        """How the group alone gives up when it could leave only at ``until`` (monotonic),
        past a limit, for ``why``: left for a run inside the job's ``send_window`` when that
        is past its close (:class:`WindowClosed`), else past ``limit`` (the limit it misses,
        as said), pending a rerun (:class:`RateLimited`, with no status). Neither asks the
        API anything."""
        if tries.window_closes is not None and until >= tries.window_closes:
            return StopRetrying(
                WindowClosed(
                    f"not sent before its send_window closes: {why}; a run inside the "
                    "window sends it"
                )
            )
        return StopRetrying(RateLimited(f"not sent {limit}: {why}; a rerun sends it", status=None))

    def _gates_after(self, tries: _Tries, result: Attempted) -> Attempted:
        """The gates as the group's tries ended without an answer, and the tries' end as they
        have it: past the job's deadline its last try certainly never got through (a
        connection waited for until it passed, a backoff that would end after it), and it
        expires; a last try whose connection was not ready before one of its windows closed
        (closed now) is held as the closed gate holds it (:meth:`_check_gates`), its request
        never having left (:func:`~bulk_mms.recorder.closed_before_leaving`, not the API
        unreachable); past ``max_job_duration_s`` the run stops there; a wait for its next
        try that would outlast ``max_job_duration_s``, the job's deadline or one of its
        windows stops the job, expires the group or holds it as a pacer's wait past it does
        (:meth:`_outlasts_limits`)."""
        if isinstance(result.error, RetryableSendError) and past(self.expires_at, self.clock):
            self._expire(tries)
        elif isinstance(result.error, NetworkError) and self._windows_left(tries.group) == 0:
            with contextlib.suppress(StopRetrying):  # held as the closed gate holds it
                self._check_gates(tries, on_record=True)
            return replace(result, error=closed_before_leaving())
        elif isinstance(result.error, RetryableSendError) and self.run_over():
            self.stops.run_deadline_reached()  # it ran out with the run's time: stopped there
        elif result.next_try is not None:
            self._outlasts_limits(tries, result.next_try)
        return result

    def _windows_close(self, group: Group) -> float | None:
        """When the first of ``group``'s windows closes, on the monotonic clock
        (:meth:`_windows_left`; None: none will)."""
        left = self._windows_left(group)
        return None if left is None else self.clock.monotonic() + left

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

    def _outlasts_limits(self, tries: _Tries, until: float) -> bool:
        """Whether a wait for the group's next try that would end at ``until`` (monotonic:
        the pacer's, :meth:`_gave_up`; the retrier's after a 429, a 5xx or a connection
        error, :meth:`_gates_after`) outlasts a limit that holds more than the group:
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

    def _outlasted(self, tries: _Tries, until: float) -> bool:
        """Whether the pacer's wait for the group's sender that would end at ``until``
        (monotonic: its pause after a 429 or a long queue) outlasts a gate, so that no
        request of it could leave: then it is held at once, as the gate's closing holds it
        (:meth:`_check_gates`), not once the wait is over. Past the job's deadline, it is
        recorded ``expired_unsent`` (first: past it, a window promises nothing), unless
        another sender of the pool may send before it (the group then gives up pending a
        rerun: :meth:`_gave_up`); past one of its windows' close, see
        :meth:`_held_for_window`."""
        expires, sender = self.expires_mono(), tries.group.message.from_
        if (
            expires is not None
            and until >= expires
            and not self.pacer.others_first(sender, expires)
        ):
            self._expire(tries)  # no other sender of the pool may send before the deadline
            return True
        return self._held_for_window(tries, until)

    def _hold_for_quiet_hours(self, tries: _Tries) -> None:
        """The group waits for its recipients' window to open again (a later run sends it):
        its members counted among those left for their quiet hours, and its tries' end no
        word on the API (:attr:`_Tries.held`)."""
        self.quiet.add(tries.group)
        tries.held = True

    def _held_for_window(self, tries: _Tries, until: float) -> bool:
        """Whether the group is held because a wait for its next try that would end at
        ``until`` (monotonic: the pacer's, or the retrier's after a 429 or a backoff:
        :meth:`_outlasted`) outlasts one of its windows, as the window's closing
        holds it (:meth:`_check_gates`): for its recipients' ``recipient_window``, it waits
        for their window to open again (a later run sends it); for the job's
        ``send_window``, when no sender of the pool may send before it closes, the job stops
        (exit 4); else the group alone is left for a run inside the window
        (:attr:`window_left`: the run then stops ``window``, exit 4), its tries ending with
        their last error, and the job goes on (False). The one test of it, for both waits."""
        if tries.window_closes is None or until < tries.window_closes:
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

    async def conclude(
        self,
        group: Group,
        result: Attempted,
        throttled: int = 0,
        *,
        held: bool = False,
        fence: Fence | None = None,
    ) -> Group | None:
        """Record how the group's tries ended; stop the job when that is what it says (a
        group ``held`` for its recipients' window says nothing of the API: it is no group
        the API left unanswered). Returns the group that goes out in its place, if any (see
        :meth:`send`).

        An answer is recorded whatever the claim says (it is what the API did). A failure
        that does not leave the group in doubt is written only while this process still
        holds the claim under ``fence`` (the one its tries began under, or its latest
        attempt was written under): once another process took the group over (this one's
        commit stalled past its lease), the group is that one's (:meth:`_lose`). The group's
        room in the limits is given back only once its failure is on record.

        Raises:
            LedgerError: the outcome could not be made durable.
        """
        if result.receipt is not None:
            await self._conclude_sent(group, result.receipt, result.attempts, throttled)
            return None
        err = result.error
        assert err is not None
        resets = reset_of(err)  # before settled() says it as a plain retryable error
        if isinstance(err, FatalSendError):
            # Not a verdict on this group: stop the job, and record where the group stands so
            # a resume knows.
            self.stops.fatal(err)
            err = settled(err)
        if not held:
            self.stops.count(err)
        refused = refused_members(err, group.to, self.settings.error_policy)
        refused = refused or await refused_by_optouts(
            self.client, err, group, self.settings.error_policy
        )
        partial = refused if 0 < len(refused) < len(group.to) else ()
        maybe_sent = isinstance(result.error, AmbiguousSendError)
        self.open_attempts.pop(group.id, None)  # nothing of it is out any more
        try:  # every member refused by name (a group of one, say) is recorded so: opted out
            recorded = await self.recorder.outcome(
                group, err, result.attempts, throttled, refused, resets=resets, fence=fence
            )
        except ClaimLost:  # taken over while its failure was written: the taker's now
            await self._lose(group)
            return None
        except LedgerError:
            await self._give_back_if_held(group, maybe_sent=maybe_sent)
            raise
        await self._settle_limits(group, None, maybe_sent=maybe_sent)
        if isinstance(recorded, InDoubt):
            self.doubts[group.id] = group  # for the records to settle before the run ends
            self.tried[group.id] = self.view.groups[group.id].last_try
        await self._suppress(group, err, refused)
        self.stops.judge(err, refused or named_members(err, group.to), tried=result.attempts > 0)
        if isinstance(err, SenderRefused) and self.pacer.retire(err.sender) == 0:
            self.stops.no_senders(self.pacer.retired)
            return None
        if not isinstance(recorded, Failed):
            return None  # in doubt from an earlier try: nothing goes out in its place
        if isinstance(err, SenderRefused):
            return group  # the same members, from another sender
        return without(group, partial, self.job) if partial else None

    async def _conclude_sent(
        self, group: Group, receipt: SendReceipt, attempts: int, throttled: int
    ) -> None:
        """The API accepted ``group`` (``receipt``): the limits learn what it took, and it is
        recorded sent, with the answer's own delivery reports (:meth:`conclude`)."""
        await self._release(group, receipt)
        self.stops.sent()
        final = self.recorder.sent(group, receipt, attempts, throttled)
        self._answered.pop(receipt.message_id, None)  # the view has it now
        if (rec := self.view.groups.get(group.id)) is not None:
            for st in final:  # the answer's own delivery reports
                await self.on_delivery(rec, st)

    async def on_delivery(self, rec: GroupRecord, st: RecipientStatus) -> None:
        """The error policy applied to a delivery report that comes in while the run sends
        (carrier codes arrive there, never as an answer to the request): a sender blocked
        (40003, 40315) leaves the pool at once, and each member it failed is moved (a rerun
        sends them from another sender, :class:`~bulk_mms.ledger.Moved`); spam filtering
        (40002, 40011), an expiry in the queue (40014) and a carrier's cap (40016, 40018) slow
        that sender down, as a 429 does, and the member they failed goes again, in a group of
        its own, not before the carrier's reset (:func:`~bulk_mms.policy.carrier_reset`); a
        member that opted out (40300 reported after acceptance) goes on the suppression list,
        as one the send's 409 names does."""
        action, moved = delivery_action(rec, st, self.settings, self.clock.wall(), self.view.moves)
        if st.status in FINAL:
            self.stops.reported(action == Action.SLOW)
        if action is None or rec.sender is None:
            return
        if action == Action.SUPPRESS:
            code = report_code(st, self.settings.error_policy) or ""
            await suppress_opted_out(self.suppressed, (st.phone,), code, source="delivery")
            return
        sender = rec.sender
        if moved is not None:
            self.recorder.moved(moved.group, moved.members, moved.sender, moved.code, moved.after)
        if action == Action.RETIRE_SENDER:
            self.retired_by_delivery.add(sender)
            if self.pacer.retire(sender) == 0 and not self.stop.is_set():
                self.stops.no_senders(self.pacer.retired)
        elif action in (Action.SLOW, Action.RETRY, Action.DEFER):
            self.pacer.on_rate_limited(sender, None, moved.code if moved else "")

    async def _release(
        self, group: Group, receipt: SendReceipt | None, *, maybe_sent: bool = False
    ) -> None:
        """The group's tries are over: nothing of it is out any more, and the limits learn
        what it took (nothing, without a receipt, unless ``maybe_sent``: in doubt)."""
        self.open_attempts.pop(group.id, None)
        await self._settle_limits(group, receipt, maybe_sent=maybe_sent)

    async def _settle_limits(
        self, group: Group, receipt: SendReceipt | None, *, maybe_sent: bool
    ) -> None:
        """The limits learn what the group's tries took (:meth:`~bulk_mms.caps.Limit.settle`)."""
        for limit in self.limits:
            await limit.settle(group, receipt, maybe_sent=maybe_sent)

    async def _suppress(self, group: Group, err: SendError, refused: tuple[str, ...]) -> None:
        """The members the API refused as opted out (40300) go on the suppression list, so no
        later job texts them, written off the loop (:meth:`Suppressed.off_loop`). A refusal
        that names no member of a larger group is logged, not guessed at."""
        if not refused:
            if self.settings.error_policy.get(err.code) == Action.SUPPRESS:
                log.warning("group.opted_out", group=group.id, code=err.code, members=len(group.to))
            return
        try:
            added = await self.suppressed.off_loop(
                functools.partial(self.suppressed.add, refused, f"opted out ({err.code})")
            )
        except ConfigError as exc:  # the list cannot be written: the ledger still has it
            log.warning("suppression.unwritable", error=str(exc), recipients=list(refused))
            return
        log.info("recipient.suppressed", recipients=list(refused), code=err.code, new=len(added))

    def stats(self) -> SenderStats:
        """What it counted so far."""
        return SenderStats(
            elapsed_s=self.clock.monotonic() - self.started,
            achieved_rate=self.times.rate() if self.summary.sent_groups else None,
            rate_limited=self.pacer.rate_limited,
            queue_full=self.pacer.queue_full,
        )

    async def close(self) -> None:
        """The run is over: say the retries still counted, and let go of the account budget
        and the caps (a shared one holds a database connection)."""
        self.retries.flush()
        await self.pacer.budget.close()
        for limit in self.limits:
            await limit.close()
