"""Sending one group: pace, write the attempt ahead, send with retries, record the outcome.

:class:`GroupSender` is the runner's per-group path, shared by its workers. It keeps what spans
groups: the pacer, the caps, the retry digest, the attempts on record whose outcome is not yet
(for a forced stop), and when what the groups meet stops the job (:class:`~bulk_mms.stopping.
JobStops`). It asks two parts of its own: the gates on time every try must pass
(:class:`~bulk_mms.send_gates.SendGates`), and whether it still holds a group's claim on a
shared ledger (:class:`~bulk_mms.claims.Claims`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import structlog
from msgspec.structs import replace

from bulk_mms.caps import Limit
from bulk_mms.claims import Claims, before_stop
from bulk_mms.client import MmsClient, idempotency_key
from bulk_mms.clock import Clock
from bulk_mms.codes import MEANINGS, OPTED_OUT, Action
from bulk_mms.config import JobConfig, Settings
from bulk_mms.coordination import Fence
from bulk_mms.delivery import FINAL
from bulk_mms.errors import (
    AmbiguousSendError,
    ApiError,
    ClaimLost,
    FatalSendError,
    LedgerError,
    RateLimited,
    Rejected,
    RetryableSendError,
    SenderRefused,
    SendError,
)
from bulk_mms.grouping import without
from bulk_mms.ledger import Failed, InDoubt, Reached
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
from bulk_mms.prepare import key_valid_until
from bulk_mms.recorder import (
    Recorder,
    key_conflict,
    never_left,
    reset_of,
    settled,
)
from bulk_mms.retry import Attempted, Retrier, RetryDigest, StopRetrying
from bulk_mms.send_gates import SendGates, Tries, unsent
from bulk_mms.settle import Settler
from bulk_mms.signals import Stop
from bulk_mms.stopping import JobStops, stop_reason
from bulk_mms.suppression import Suppressed, suppress_opted_out

log = structlog.get_logger(__name__)
T = TypeVar("T")


async def _nothing() -> None:
    """No room to give back: a sender without a runner's (a test's)."""


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
    behind it), the money and count caps, the gates on time (:attr:`gates`: the deadlines,
    the windows), the claims it keeps to (:attr:`claims`) and the retry digest. The runner
    reads what it counted
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
        #: What gives back the room in :attr:`limits` that no group will use (the run's
        #: :meth:`~bulk_mms.leftover.Leftover.give_back_ended`), looked at once more before a
        #: limit stops the job.
        self.leftover: Callable[[], Awaitable[None]] = _nothing
        self.started = clock.monotonic()
        #: Retries told one line per cause now and then, not one line each.
        self.retries = RetryDigest(now=clock.monotonic)
        #: Retriers not sending a group now: each group in flight takes one (the workers'
        #: tenacity machinery, built once each and reused group after group).
        self._retriers: list[Retrier] = []
        #: When what the groups meet stops the job.
        self.stops = JobStops(job, settings, stop, recorder.summary)
        #: The gates on time every try must pass: the deadlines (``max_job_duration_s`` from
        #: :attr:`started`, the job's), the windows, the groups held for them.
        self.gates = SendGates(
            job,
            settings,
            self.view,
            clock=clock,
            stop=stop,
            stops=self.stops,
            pacer=pacer,
            started=self.started,
        )
        #: Whether this process still holds a group's claim (a shared ledger), and the groups
        #: another process took over from it.
        self.claims = Claims(recorder, stop, self.stops)
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
        #: Groups this run left in doubt, for the API's records to settle before it ends.
        self.doubts: dict[str, Group] = {}
        #: Of those, the ones its own requests left in doubt: when the last of them left (the
        #: ledger's ``last_try`` then). A group another process finds sent with no request
        #: since was accepted from here (:meth:`Runner._decided
        #: <bulk_mms.runner.Runner._decided>`).
        self.tried: dict[str, float] = {}
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
        if self.claims.surely_held(group):
            self.recorder.cut_off(group, last)

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
        tries = Tries(
            group,
            key,
            self.gates.group_deadline(),
            t0=rec.t0 if rec is not None and rec.key in (None, key) else None,
            ambiguous=was_in_doubt,
            fence=self.recorder.coordinator.fence(group.id),
            window_closes_at=self.gates.windows_close(group),
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
                deadline=self.gates.waits_end(tries),
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
        result = self.gates.after(tries, result)
        if tries.expired:  # its deadline passed between tries
            await self._end_expired(tries)
            return None
        if result.receipt is None and not await self.claims.still_held(
            group.id, tries.fence, result.error
        ):
            await self._lose(group)
            return None
        if tries.rerouted and result.receipt is None and not tries.ambiguous:
            # its sender was retired while it waited to retry: nothing was accepted, and it
            # goes on from another sender (its open attempt is closed by what comes of that)
            await self._release(group, None)
            return None if self.stop.is_set() else group
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

    async def _gave_up_first(self, tries: Tries) -> Group | None:
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
        and this process surely still holds its claim (:meth:`Claims.surely_held
        <bulk_mms.claims.Claims.surely_held>`); else it stays
        held, for a taker that may send the group in it, or the next run's reconcile."""
        kept = maybe_sent or not self.claims.surely_held(group)
        await self._settle_limits(group, None, maybe_sent=kept)

    async def _lose(self, group: Group) -> None:
        """``group`` is another process's now (it took the claim over): watched, not decided
        here (:attr:`Claims.lost <bulk_mms.claims.Claims.lost>`). Its room in the shared
        limits is the group's, which the taker sends it in: kept."""
        self.claims.lose(group)
        await self._release(group, None, maybe_sent=True)

    async def _try(self, tries: Tries, number: int) -> SendReceipt:
        """Try ``number`` of the group, top to bottom: near a close, while its sender's queue
        at Telnyx is unknown, it waits for the answer of the one try of that sender out
        (:meth:`SendGates.first_answer <bulk_mms.send_gates.SendGates.first_answer>`); the
        pacer admits it, the gates and the caps let it through, its attempt is written ahead,
        it takes its send slot, and the request leaves; its answer, the wait it reported
        taken in by the pacer, or the error that ended it."""
        waiting = self.gates.first_answer(tries)
        tries.learning = None if waiting is None else await waiting
        try:
            ticket = await self._pace(tries)
            await self._reserve(tries)
            await self._write_attempt(tries, number)
            within = await self._take_slot(tries, ticket)
            try:
                receipt = self._own_answer(
                    tries.group,
                    await self.client.send(tries.group, tries.key, leave_within=within),
                )
            except SendError as exc:
                self._on_error(tries, exc)
                raise
            # the wait as the pacer took it (clamped), for the ledger and the percentiles too
            wait = self.pacer.observe(ticket, receipt.wait_seconds)
            return receipt if wait == receipt.wait_seconds else replace(receipt, wait_seconds=wait)
        finally:
            if tries.learning is not None:  # its answer (if any) set the queue: the others go on
                tries.learning.release()
                tries.learning = None

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

    async def _pace(self, tries: Tries) -> Ticket:
        """Wait for the pacer to admit the group's sender; its ticket (kept in ``tries``)."""
        group = tries.group
        try:
            ticket = await self._unless_stopped(
                self.pacer.acquire(group.message.from_, len(group.to), self.gates.waits_end(tries))
            )
        except PaceAborted as exc:
            tries.rerouted = exc.reason == "retired"
            raise self.gates.gave_up(exc, tries) from None
        tries.ticket = ticket
        return ticket

    async def _reserve(self, tries: Tries) -> None:
        """Every gate is open now, no member is on the suppression list as it now stands, and
        every cap (money, count) has room for the group: else, once the room no group will
        use is given back (:attr:`leftover`) and the cap still has none, the group's tries
        end on the cap's :class:`LimitReached` (recorded pending a rerun, with the reset of a
        daily cap, as a carrier's is: :meth:`conclude`), and the job stops. On a shared
        ledger the room is taken under the group's claim, as its attempt is written next: a
        claim another process took over meanwhile (this one paused past its lease) raises
        :class:`~bulk_mms.errors.ClaimLost` and takes no room, which its taker, done with the
        group already, would never settle."""
        self.gates.check(tries)
        self._check_optouts(tries)
        fence = self.recorder.coordinator.fence(tries.group.id)  # as the attempt's
        for limit in self.limits:
            over = await self._unless_stopped(limit.reserve(tries.group, fence))
            if over is not None:  # room another process left, killed since this run began?
                await self._unless_stopped(self.leftover())
                over = await self._unless_stopped(limit.reserve(tries.group, fence))
            if over is not None:  # stop at once: no other group takes room meanwhile
                self.stops.fail(over, stop_reason(over))
                # its tries end on the cap, as on a carrier's; one in doubt since an earlier
                # run stays so, unrecorded (the cap says nothing of whether it was sent)
                raise StopRetrying(None if tries.ambiguous else over)

    async def _take_slot(self, tries: Tries, ticket: Ticket) -> float | None:
        """The attempt is on record: wait for the moment the request may leave (the pacer's
        send slot), and check the gates again at that moment. Returns the seconds the
        request has left to leave in: before a gate closes (:meth:`SendGates.leave_within
        <bulk_mms.send_gates.SendGates.leave_within>`) or the group's claim may pass to
        another process (:meth:`Claims.hold <bulk_mms.claims.Claims.hold>`).

        Raises:
            ClaimLost: another process took the group over.
        """
        try:
            await self.pacer.send_slot(ticket, tries.group_deadline)
        except PaceAborted as exc:
            # on record, but the request never left: a resume must not take it for one that
            # may have been accepted. A stale admission taken again past a deadline: the job's
            # expires the group, max_job_duration_s stops the job (as in the pacer's wait)
            self.gates.gave_up(exc, tries)
            raise StopRetrying(None if tries.expired else never_left()) from None
        try:
            held = await self.claims.hold(tries.group.id, tries.fence)
        except StopRetrying:  # stopped while claiming again
            raise StopRetrying(unsent(tries, on_record=True)) from None
        if tries.learning is None and (waiting := self.gates.first_answer(tries)) is not None:
            # a 429 said its sender's queue is full since the try began (40318): near a close
            # it goes only as the one try out, and the gates then judge the queue it learned
            asked = self.clock.monotonic()
            tries.learning = await waiting
            held = None if held is None else held - (self.clock.monotonic() - asked)
        self.gates.check(tries, on_record=True)
        now = self.clock.monotonic()
        ends = [t for t in (self.gates.leave_within(tries, now), held) if t is not None]
        within = min(ends, default=None)
        if within is not None and within <= 0:  # no time to leave in: it never does
            raise StopRetrying(unsent(tries, on_record=True))
        self.times.left(now)  # the request leaves now
        return within

    async def _unless_stopped(self, work: Awaitable[T]) -> T:
        """A round trip to the shared database before the attempt (the account budget's
        admission, a shared limit's reservation), given up on when the job stops meanwhile
        (:func:`~bulk_mms.claims.before_stop`: a locked or unreachable table must not hold a
        SIGTERM). Once
        stopped, or on a ledger nobody shares, ``work`` is awaited as it is (it ends at once
        on a stop, or never waits on a database). A reservation given up on may still land:
        its room stays taken (a cap is never passed, only reached sooner)."""
        if not self.recorder.store.shared or self.stop.is_set():
            return await work
        return await before_stop(self.stop, work)

    async def _write_attempt(self, tries: Tries, number: int) -> None:
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
            await before_stop(self.stop, write)
        except StopRetrying:
            self.open_attempts.pop(group.id, None)
            raise

    def _check_optouts(self, tries: Tries) -> None:
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

    async def _end_expired(self, tries: Tries) -> None:
        """Record ``tries.group`` ``expired_unsent`` (final: never sent later) while this
        process holds its claim under the fence its tries began with (:meth:`Claims.
        record_held <bulk_mms.claims.Claims.record_held>`, the write fenced by it:
        :meth:`~bulk_mms.recorder.Recorder.expire`), then give its room
        back. Else it is another's (:meth:`_lose`), whose attempt may be open, its request
        out before the deadline: an outcome written here would close that attempt as never
        sent. A ledger that fails here stops the run."""
        group = tries.group
        expires_at = self.gates.expires_at
        assert expires_at is not None  # tries expire only against a deadline
        deadline = expires_at.isoformat(timespec="minutes")
        write = functools.partial(self.recorder.expire, group, deadline)
        try:
            if not await self.claims.record_held(group.id, tries.fence, write):
                await self._lose(group)
                return
        except LedgerError as exc:
            self.stops.ledger_failed(exc)
            await self._give_back_if_held(group, maybe_sent=False)
            return
        await self._release(group, None)

    def _on_error(self, tries: Tries, exc: SendError) -> None:
        """Learn from a failed try (the pacer from a 429); keep what a forced stop records."""
        tries.ambiguous = tries.ambiguous or isinstance(exc, AmbiguousSendError)
        if not tries.ambiguous and isinstance(exc, RetryableSendError):
            self.open_attempts[tries.group.id] = exc  # nothing is out until the next try
        if isinstance(exc, RateLimited):
            self.pacer.on_rate_limited(tries.group.message.from_, exc.retry_after, exc.code)
            tries.throttled += 1
        self.stops.tried(exc)

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
        # as recorded: a redirect settled in doubt, a group in doubt since an earlier run
        # (whose room its reservation here is: one a group) keep their room
        maybe_sent = self.recorder.in_doubt_after(group, err)
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
        if isinstance(moved, Reached):  # moved earlier, reached after all: not sent again
            self.recorder.reached(moved.group, moved.members)
            return
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
        """The limits learn what the group's tries took (:meth:`~bulk_mms.caps.Limit.settle`);
        one that can no longer be kept after it stops the job, even after its last group (a
        run that could not keep ``max_cost`` never exits 0)."""
        for limit in self.limits:
            if (stop := await limit.settle(group, receipt, maybe_sent=maybe_sent)) is not None:
                self.stops.fatal(stop)

    async def _suppress(self, group: Group, err: SendError, refused: tuple[str, ...]) -> None:
        """The members the API refused as opted out (40300) go on the suppression list, so no
        later job texts them, written off the loop (:meth:`Suppressed.off_loop`). A refusal
        that names no member of a larger group is logged, not guessed at."""
        if not refused:
            if self.settings.error_policy.get(err.code) == Action.SUPPRESS:
                log.warning("group.opted_out", group=group.id, code=err.code, members=len(group.to))
            return
        await suppress_opted_out(self.suppressed, refused, err.code, source="send")

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
