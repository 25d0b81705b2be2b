"""The run's side of the ledger: every event a run writes is built, stored and folded here.

:class:`Recorder` turns what happened to a group (an attempt about to leave, a receipt, the
error that ended its tries, a rejected row) into one typed event, appends it to the store, and
applies it to the run's :class:`~bulk_mms.ledger.LedgerView` and :class:`JobSummary`. So the
state a run acts on is the state any later reader folds from the same events, and the events
are built in one place.

Where a group ends after an error (:meth:`Recorder.outcome`)::

    an earlier try (this run or one before) may have been accepted ──► in_doubt
    ambiguous (the request left, no usable answer) ──────────────────► in_doubt
    retryable (429/5xx/network before sending; retries ran out) ─────► failed, retryable
    refused for good (4xx) ──────────────────────────────────────────► failed
"""

from __future__ import annotations

import contextlib
import operator
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from bulk_mms.clock import Clock, iso
from bulk_mms.codes import DEFAULT_POLICY, EXPIRED_UNSENT, Action
from bulk_mms.coordination import Coordinator, Fence, LocalCoordinator
from bulk_mms.delivery import FINAL
from bulk_mms.errors import (
    AmbiguousSendError,
    EndpointError,
    FatalSendError,
    LedgerError,
    LimitReached,
    RetryableSendError,
    SenderRefused,
    SendError,
    WindowClosed,
)
from bulk_mms.errors import (
    Rejected as Refused,
)
from bulk_mms.ledger import (
    Attempt,
    Event,
    Failed,
    InDoubt,
    LedgerStore,
    LedgerView,
    Moved,
    Paced,
    Planned,
    Reached,
    Rejected,
    Remade,
    Sent,
)
from bulk_mms.ledger.events import status_event
from bulk_mms.ledger.fold import IN_DOUBT
from bulk_mms.models import Group, RecipientStatus, RejectedRow, Rejection, SendReceipt
from bulk_mms.policy import judged, judged_error
from bulk_mms.settle import Finding, never_accepted, own_ids
from bulk_mms.summary import JobSummary

log = structlog.get_logger(__name__)

CRASHED = "attempted before a crash; the outcome is unknown"
#: Why a group is in doubt that a forced stop cancelled while its request was out.
STOPPED_IN_FLIGHT = "cut off in flight by a forced stop; the outcome is unknown"


def _values_in(columns: Sequence[str]) -> Callable[[Mapping[str, str]], tuple[str, ...]]:
    """A function from a row holding every one of ``columns`` to its values in their order
    (:class:`KeyError` for a row that lacks one)."""
    if len(columns) == 1:
        (only,) = columns
        return lambda row: (row[only],)
    if not columns:
        return lambda row: ()
    return operator.itemgetter(*columns)


class Recorder:
    """Writes a run's events; keeps its view and summary in step with them."""

    def __init__(
        self,
        store: LedgerStore,
        view: LedgerView,
        summary: JobSummary,
        clock: Clock,
        *,
        coordinator: Coordinator | None = None,
        policy: Mapping[str, Action] = DEFAULT_POLICY,
    ) -> None:
        self.store = store
        #: The run's error policy (the settings' ``error_policy``): the outcome and status
        #: events record what it did about their codes, which is what the report counts.
        self.policy = policy
        #: Whose fences the write-ahead attempts are written under (a shared ledger).
        self.coordinator: Coordinator = coordinator or LocalCoordinator()
        self.view = view
        self.summary = summary
        self.clock = clock
        #: The input columns outcome events record each member's row in (the header's).
        self.columns: Sequence[str] = view.header.columns if view.header else ()
        self._values_of = _values_in(self.columns)
        self.errors: Counter[str] = Counter()
        self.waits: list[float] = []
        #: The module's logger bound once for the run: the lazy proxy would build a logger
        #: anew for every line, even one filtered out (a per-group debug line cost 6 µs).
        self.log = log.bind()
        # stamps are the run's start on the wall clock plus monotonic time since: a clock
        # step mid-run (NTP, a VM resumed) never makes a span between two stamps of one run
        # (the report's time spent sending, its achieved rate) negative or hours long
        self._mono0, self._wall0 = clock.monotonic(), clock.wall()

    def _now(self) -> str:
        """The stamp of an event written now (see ``__init__``)."""
        return iso(self._wall0 + (self.clock.monotonic() - self._mono0))

    async def _write(self, ev: Event, fence: Fence | None = None) -> None:
        await self.store.append(ev, fence=fence)
        self.view.apply(ev)

    def _queue(self, ev: Event, fence: Fence | None = None) -> None:
        self.store.append_nowait(ev, fence=fence)
        self.view.apply(ev)

    def _members(self, group: Group) -> dict[str, Any]:
        """What every outcome of a group records: its members and, with the header's
        ``columns``, their input rows (what --failed-csv writes)."""
        return {"group": group.id, "seq": group.seq, "to": group.to, "rows": self._rows(group)}

    def _rows(self, group: Group) -> tuple[tuple[str, ...], ...]:
        """The members' input rows, values in the header's ``columns`` order (none without)."""
        if not (columns := self.columns) or not group.rows:
            return ()
        try:  # the usual rows: every column there
            return tuple(map(self._values_of, group.rows))
        except KeyError:  # a row without some (a JSONL object may leave keys out): "" there
            return tuple([tuple([row.get(c, "") for c in columns]) for row in group.rows])

    # -- before sending ---------------------------------------------------------------------

    def rejected(self, item: RejectedRow) -> None:
        """An input row that is never sent: recorded once, however many runs read it. A
        duplicate is counted, never recorded (:class:`~bulk_mms.ledger.Planned` has the
        count): a file of one row repeated makes a ledger of one row."""
        self.summary.note_rejected(item.kind)
        if item.kind is Rejection.DUPLICATE:
            return
        view = self.view
        if (
            item.line not in view.suppressed_lines
            if item.kind is Rejection.SUPPRESSED
            else item.line > view.rejected_through
        ):
            self._queue(Rejected(item.line, item.value, item.reason, self._now()))
        self.log.debug("row.rejected", line=item.line, value=item.value, reason=item.reason)

    def remade(self, group: Group) -> None:
        """``group`` goes out in place of ``group.origin``, without its suppressed members."""
        self._queue(Remade(group.origin, group.suppressed, self._now()))
        log.info("group.remade", group=group.origin, now=group.id, without=len(group.suppressed))

    def paced(self, per: str, sender: str, was: float, rate: float, reason: str) -> None:
        """The pacer set ``sender``'s pace (for the report's timeline). A picture for the
        report: a ledger that no longer takes writes does not make it an error here (the
        writes that matter report that)."""
        with contextlib.suppress(LedgerError):
            self._queue(Paced(sender, round(rate, 4), round(was, 4), per, reason, self._now()))

    def planned(
        self,
        recipients: int,
        groups: int,
        rejected: int,
        duplicates: int,
        *,
        suppressed: int,
        excluded: int,
    ) -> None:
        """How much of the input is valid, and how many rows are not sent, by kind
        (:class:`~bulk_mms.ledger.Planned`: ``suppressed`` and ``excluded`` are of
        ``rejected``)."""
        self._queue(
            Planned(recipients, groups, rejected, self._now(), duplicates, suppressed, excluded)
        )

    def held(self, group: Group) -> None:
        """A group held in doubt; an open attempt left by a crash is said so, once."""
        self.summary.held_groups += 1
        rec = self.view.groups.get(group.id)
        if rec is not None and not rec.doubt_recorded:
            self._queue(InDoubt(**self._members(group), reason=CRASHED, time=self._now()))

    def expired(self, group: Group, deadline: str) -> None:
        """A group never sent because the job's deadline passed: final, never sent later.
        Queued, unfenced: for a group found unsent past the deadline, before any try of this
        run, as the ledger has it once this process holds its claim (no process writes an
        attempt past the deadline, so none that it would close can come after that look)."""
        self.summary.expired_groups += 1
        self._queue(self._expiry(group, deadline))

    async def expire(self, group: Group, deadline: str, fence: Fence | None) -> None:
        """As :meth:`expired`, for a group whose tries the deadline ended, written only while
        this process still holds the group's claim under ``fence`` (a shared ledger).

        Raises:
            ClaimLost: another process took the group over: nothing was written.
            LedgerError: it could not be made durable.
        """
        await self._write(self._expiry(group, deadline), fence)
        self.summary.expired_groups += 1

    def _expiry(self, group: Group, deadline: str) -> Failed:
        """The ``expired_unsent`` event of ``group``, the job's ``deadline`` passed."""
        return Failed(
            **self._members(group),
            code=EXPIRED_UNSENT,
            title="not sent before the job's deadline",
            detail=f"the deadline was {deadline}; a late message is worse than none",
            time=self._now(),
        )

    def moved(
        self, group: str, members: tuple[str, ...], sender: str, code: str, after: float = 0.0
    ) -> None:
        """Members of a sent group go again in a group of their own: from another sender
        (``sender`` blocked), or not before ``after`` (a carrier's temporary refusal)."""
        self._queue(Moved(group, members, sender, code, self._now(), after))
        self.log.info("group.moved", group=group, members=len(members), sender=sender, code=code)

    def reached(self, group: str, members: tuple[str, ...]) -> None:
        """Members moved out of a sent group whom a later report says its message reached
        after all (:class:`~bulk_mms.ledger.events.Reached`): no rerun sends them again."""
        self._queue(Reached(group, members, self._now()))
        self.log.info("group.reached", group=group, members=len(members))

    def accepted_by_records(self, group: Group, finding: Finding, *, earlier: bool = False) -> None:
        """A group in doubt that the API's records show accepted (``finding``): ``sent``,
        under the record's id (its cost and statuses come with tracking), and, when the
        records name no group message, each member's own message id beside it
        (:func:`~bulk_mms.settle.own_ids`). ``earlier``: its request left in an earlier run,
        so this run's summary does not count it sent (the caller counts it already done)."""
        record = finding.record
        assert record is not None  # an accepted finding has one
        receipt = SendReceipt(record.id, (), cost=record.cost)
        self.log.info("group.settled", group=group.id, as_="sent", record=record.id)
        if earlier:
            self._queue(self._sent_event(group, receipt, 0, 0))
        else:
            self.sent(group, receipt, 0, 0)
        for ev in own_ids(group.id, group.to, finding, self._now()):
            self._queue(ev)

    async def not_accepted(self, group: Group, lag: float, fence: Fence | None) -> None:
        """A group in doubt that the API's records, complete, show never accepted: retryable,
        and sent again under a new key; written only while this process still holds the
        group's claim under ``fence`` (a shared ledger).

        Raises:
            ClaimLost: another process took the group over: nothing was written.
            LedgerError: it could not be made durable.
        """
        await self._write(never_accepted(lag, self._now(), **self._members(group)), fence)
        self.log.info("group.settled", group=group.id, as_="not_accepted")

    async def attempt(self, group: Group, number: int, key: str, t0: float) -> None:
        """Write-ahead: durable before the request can leave, and (a shared ledger) only
        while this process still holds the group's claim.

        Raises:
            ClaimLost: another process took the group over: the request must not leave.
            LedgerError: the attempt could not be made durable.
        """
        ev = Attempt(
            group.id,
            group.to,
            group.seq,
            group.message.from_,
            number,
            key,
            t0,
            self._now(),
        )
        await self.store.append(ev, fence=self.coordinator.fence(group.id))
        self.view.apply(ev)

    # -- after ------------------------------------------------------------------------------

    def sent(
        self, group: Group, r: SendReceipt, attempts: int, throttled: int
    ) -> list[RecipientStatus]:
        """The API accepted ``group``. Queued for the next group commit, not waited for: the
        attempt before it is durable, so a crash before this is too leaves the group in doubt,
        as a crash during the request does: settled by the API's records, never resent blindly
        (a key that replays the answer only where the job says the API replays keys). The worker
        goes on meanwhile; a commit that fails stops the run at once (the store's
        ``on_failure``). Returns the final statuses the answer gives (a member it did not
        reach), each recorded as a ``status`` event, for the error policy."""
        self.summary.note_sent(group, r.cost, self.view.unstated_currency)
        if r.wait_seconds is not None:
            self.waits.append(r.wait_seconds)
        self._queue(self._sent_event(group, r, attempts, throttled))
        self.log.debug("group.sent", group=group.id, message_id=r.message_id, to=len(group.to))
        # the answer is a message object, whose errors may point at members it did not reach:
        # a final status there is a delivery report like any other (no GET or webhook brings
        # it again), recorded with its errors so its code is kept
        final = [st for st in r.statuses if st.status in FINAL]
        for st in final:
            report, action = judged(st, self.policy)
            self._queue(
                status_event(group.id, report, source="send", time=self._now(), action=action)
            )
        return final

    def _sent_event(self, group: Group, r: SendReceipt, attempts: int, throttled: int) -> Sent:
        return Sent(  # its members named here, not splatted from _members: once a group
            group=group.id,
            to=group.to,
            seq=group.seq,
            rows=self._rows(group),
            message_id=r.message_id,
            from_=group.message.from_,
            statuses={st.phone: st.status for st in r.statuses if st.status not in FINAL},
            wait_seconds=r.wait_seconds,
            cost=r.cost,
            valid_until=r.valid_until,
            attempts=attempts,
            rate_limited=throttled,
            time=self._now(),
        )

    async def outcome(
        self,
        group: Group,
        err: SendError,
        attempts: int,
        throttled: int,
        refused: tuple[str, ...] = (),
        *,
        resets: float = 0.0,
        fence: Fence | None = None,
    ) -> Event:
        """Record where ``group`` stands after the error that ended its tries (``refused``:
        the members the API refused by name, who failed; any others go on without them;
        ``resets``: when the carrier's cap that refused it lifts, 0 for none); the event
        recorded. A failure that does not leave the group in doubt is written only while
        this process still holds the group's claim under ``fence`` (a shared ledger): it
        would close whatever attempt is open on the group, another process's too.

        Raises:
            ClaimLost: another process took the group over: no failure was written.
            LedgerError: it could not be made durable.
        """
        err, action = judged_error(err, self.policy, group.to)  # its code is the one that decides
        self.errors[err.code] += 1
        doubt = self.in_doubt_after(group, err)
        if doubt and not isinstance(err, AmbiguousSendError):
            err = AmbiguousSendError(
                f"in doubt since an earlier run; this run's tries ended with {err}",
                status=err.status,
            )
        if doubt:
            self.summary.in_doubt_groups += 1
            ev: Event = InDoubt(
                **self._members(group),
                reason=str(err),
                attempts=attempts,
                rate_limited=throttled,
                time=self._now(),
            )
            log.warning("group.in_doubt", group=group.id, reason=str(err))
            await self._write(ev)
            return ev
        failed = self._failed(group, err, action, (attempts, throttled), refused, resets=resets)
        await self._write(failed, fence)
        self._count_failed(group, err, failed)
        return failed

    def in_doubt_after(self, group: Group, err: SendError) -> bool:
        """Whether :meth:`outcome` records ``group`` in doubt after ``err`` ended its tries:
        a try may have been accepted (``err`` is ambiguous), or the group was in doubt
        before this run, and a later failure does not undo what that try may have done."""
        rec = self.view.groups.get(group.id)
        return isinstance(err, AmbiguousSendError) or (rec is not None and rec.outcome == IN_DOUBT)

    def _failed(
        self,
        group: Group,
        err: SendError,
        action: Action | None,
        tries: tuple[int, int],
        refused: tuple[str, ...] = (),
        *,
        resets: float = 0.0,
    ) -> Failed:
        """The ``failed`` event for ``err`` after ``tries`` (tries made, of those rate limited),
        ``err`` and ``action`` as :func:`~bulk_mms.policy.judged_error` gives them, with what
        the error policy did about it: ``suppress`` for the ``refused`` members (the callers
        name only members refused as opted out), else ``action``, the code's; and
        ``resets``, when the carrier's cap that refused it lifts (0: none did). A group with
        members refused is not pending a rerun after a transient error: they failed for good,
        and the rest go on at once in a group made without them (a cap stops the job first: a
        rerun sends the group after its reset, as the ledger has it)."""
        attempts, throttled = tries
        retired = err.sender if isinstance(err, SenderRefused) else None
        retryable = (
            retired is not None
            or isinstance(err, LimitReached)
            or (isinstance(err, RetryableSendError) and not refused)
        )
        first = err.errors[0] if err.errors else None
        return Failed(
            **self._members(group),
            status=err.status,
            code=err.code,
            title=first.title if first else type(err).__name__,
            detail=first.detail if first and first.detail else str(err),
            attempts=attempts,
            rate_limited=throttled,
            retryable=retryable,
            refused=refused,
            retired=retired,
            time=self._now(),
            action=Action.SUPPRESS if refused else action,
            resets=resets,
        )

    def _count_failed(self, group: Group, err: SendError, ev: Failed) -> None:
        """Count and say ``ev``, the ``failed`` event :meth:`_failed` made of ``err``, once
        it is recorded."""
        if ev.retired is not None:  # not the group's failure: it goes out from another sender
            log.warning("group.rerouted", group=group.id, code=err.code, sender=ev.retired)
            return
        if not ev.refused:  # the members refused by name opted out: not the run's failure
            self.summary.failed_groups += 1
            self.summary.failed_recipients += len(group.to)
        self.summary.retry_later_groups += ev.retryable
        log.warning(
            "group.failed",
            group=group.id,
            code=err.code,
            error=str(err),
            retryable=ev.retryable,
            refused=len(ev.refused) or None,
        )

    def cut_off(self, group: Group, last: SendError | None) -> None:
        """A forced stop cancelled ``group`` after its attempt: in doubt when a request was
        out (``last`` is None), else failed with its last try's error (retryable), written
        only while this process still holds the group's claim (a shared ledger: under its
        fence, :meth:`~bulk_mms.coordination.Coordinator.fence`); left out otherwise, the
        group then another's."""
        fence = None
        if last is None:
            self.summary.in_doubt_groups += 1
            ev: Event = InDoubt(**self._members(group), reason=STOPPED_IN_FLIGHT, time=self._now())
        else:
            last, action = judged_error(last, self.policy, group.to)
            ev, fence = self._failed(group, last, action, (0, 0)), self.coordinator.fence(group.id)
            self._count_failed(group, last, ev)
        # if the store already failed, the attempt on record leaves the group in doubt
        with contextlib.suppress(LedgerError):
            self._queue(ev, fence)


def settled(err: FatalSendError) -> SendError:
    """Where a group stands after the error that stopped the job: a redirect that may follow a
    processed POST (301/302/303, "see the result there") leaves it in doubt; a refused key or
    a 307/308 ("send it there instead") left it unsent, for a rerun to send; a cap
    (:class:`~bulk_mms.errors.LimitReached`: a carrier's, the account's daily_recipients, the
    job's max_cost) stands as it is, unsent and pending a rerun once it lifts (its ``failed``
    event keeps the reset, :func:`reset_of`) or is raised."""
    if isinstance(err, LimitReached):
        return err
    if isinstance(err, EndpointError) and err.status in (301, 302, 303):
        return AmbiguousSendError(
            f"{err.message}; the server may have acted on it first", status=err.status
        )
    return RetryableSendError(err.message, status=err.status, errors=err.errors)


def reset_of(err: SendError) -> float:
    """When the cap that refused a group lifts by itself, as the error that says so has it
    (:class:`~bulk_mms.errors.LimitReached`'s ``resumes_at``: a carrier's daily cap, its
    reset from :func:`~bulk_mms.policy.carrier_reset`; the account's ``daily_recipients``,
    the next day's start), for its ``failed`` event; 0 for any other error."""
    return (err.resumes_at or 0.0) if isinstance(err, LimitReached) else 0.0


def never_left() -> RetryableSendError:
    """The outcome of a try whose ``attempt`` is on record but whose request never left (the job
    was stopped in the last moment before it): nothing was sent, so a rerun sends it."""
    return RetryableSendError("stopped before the request left; nothing was sent")


def closed_before_leaving() -> WindowClosed:
    """The outcome of a try whose ``attempt`` is on record but whose request never left because
    its window (the ``send_window``, its recipients' ``recipient_window``) closed first:
    nothing was sent, so a run inside the window sends it."""
    return WindowClosed("its window closed before the request left; nothing was sent")


def key_conflict(err: Refused) -> AmbiguousSendError:
    """A 422 on a repeat under the same Idempotency-Key: the request body changed under the key.

    bulk_mms builds the same body for the same group every time, so this is a bug (or the job's
    message was edited while a group was in doubt). It is logged at error level and the group
    is recorded in doubt, with the reason spelled out: the first request may have gone out.
    """
    log.error("idempotency.conflict", error=str(err))
    return AmbiguousSendError(
        "idempotency conflict: the request body changed under the same Idempotency-Key "
        "(was the message edited while this group was in doubt?); the first request may "
        "have been delivered",
        status=err.status,
    )
