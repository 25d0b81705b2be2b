"""``bulk-mms track``: poll delivery statuses of sent groups into the ledger.

For every sent group with a recipient not yet final, :class:`Tracker` asks
``GET /messages/group/{message_id}`` (or ``GET /messages/{id}`` when a single recipient is left
and its own id is known; and after a 404 on the group, with each recipient's own id, or failing
that with the group's id, which some servers answer there too), under
its own token bucket (``[track] rate``) and with the send path's backoff. Each change becomes a
``status`` event, judged news by the ledger's own fold (:class:`~bulk_mms.ledger.LedgerView`).

One pass by default; ``follow`` repeats passes until every recipient is final or its group is
older than ``max_age``, and no run of the ledger is live (:meth:`LedgerStore.live_run
<bulk_mms.ledger.store.LedgerStore.live_run>`): a run between groups, pacing slowly, may
send more after everything it sent so far is final. A group whose statuses did not change is
asked again after twice the interval each time (up to ``max_interval``), so a long tail of slow
carriers costs few requests.

A 404 (the API does not know the id) and a recipient the API does not list are counted and
named in the result, never fatal. A refused key or a redirect stops tracking
(:class:`FatalSendError`), and so does an API that cannot be reached:
:data:`STOP_AFTER_UNREACHABLE` connection failures in a row (:class:`ApiUnavailable`, exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import structlog

from bulk_mms.client import MmsClient
from bulk_mms.clock import DUE_SLACK_S, Clock, SystemClock, iso
from bulk_mms.codes import Action
from bulk_mms.config import Settings
from bulk_mms.coordination import Coordinator, coordinator_for
from bulk_mms.errors import (
    ApiUnavailable,
    ClaimLost,
    ConfigError,
    FatalSendError,
    LedgerError,
    MissingExtra,
    NetworkError,
    NotFound,
    RateLimited,
    SendError,
)
from bulk_mms.extras import needs
from bulk_mms.ledger import (
    GroupRecord,
    LedgerStore,
    LedgerView,
    Location,
    keep_database_time,
    open_store,
)
from bulk_mms.ledger.events import Event, Failed, Sent, status_event
from bulk_mms.ledger.fold import IN_DOUBT
from bulk_mms.models import RecipientStatus
from bulk_mms.policy import delivery_action, judged, report_code
from bulk_mms.rate import FixedRate, PaceAborted
from bulk_mms.recipient_lists import Originals
from bulk_mms.retry import fetch_with_retry
from bulk_mms.settle import Settler, Verdict, never_accepted, own_ids
from bulk_mms.signals import Stop, StopReason
from bulk_mms.suppression import Suppressed, suppress_opted_out, suppression_for
from bulk_mms.words import escaped

log = structlog.get_logger(__name__)

#: Tries in a row that could not connect to the API (refused, DNS, TLS, connect timeout:
#: :class:`NetworkError`) after which tracking stops with :class:`ApiUnavailable` (exit 1):
#: at the default backoff that is under a minute, not every group through every retry. Any
#: answer from the API, an error status included, starts the count again.
STOP_AFTER_UNREACHABLE = 5
#: A 404 for a group sent less than this long ago says "not yet", not "never": Telnyx's
#: message records may lag the send's answer, so such a group is asked again (backed off like
#: one whose statuses did not change) instead of being given up as not found.
NOT_FOUND_GRACE_S = 600.0


class TrackResult(msgspec.Struct):
    """What tracking found, over all passes."""

    requests: int = 0
    #: ``status`` lines written.
    changes: int = 0
    passes: int = 0
    #: Recipients of tracked groups by latest status, after the last pass.
    statuses: Counter[str] = msgspec.field(default_factory=Counter)
    #: Recipients still not final, and of those, in groups past ``max_age``.
    pending: int = 0
    too_old: int = 0
    #: Groups whose message id the API does not know (404).
    not_found: list[str] = msgspec.field(default_factory=list)
    #: (group, phone) the API's answer did not list, of those still not final.
    unlisted: list[tuple[str, str]] = msgspec.field(default_factory=list)
    #: Groups whose GET failed after retries, by error code, in the last pass.
    errors: Counter[str] = msgspec.field(default_factory=Counter)
    stopped: str | None = None
    #: The error that ended tracking (a refused key, an unreachable API), if one did.
    error: BaseException | None = None
    #: The job the ledger belongs to (its header), once the ledger was read.
    job: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "changes": self.changes,
            "passes": self.passes,
            "statuses": dict(self.statuses.most_common()),
            "pending": self.pending,
            "too_old": self.too_old,
            "not_found": self.not_found,
            "unlisted": [{"group": g, "recipient": p} for g, p in self.unlisted],
            "errors": dict(self.errors),
            "stopped": self.stopped,
        }


class Tracker:
    """Polls one ledger's sent groups. Create it, then ``await run(follow=...)``."""

    def __init__(
        self,
        view: LedgerView,
        store: LedgerStore,
        client: MmsClient,
        settings: Settings,
        *,
        clock: Clock | None = None,
        stop: Stop | None = None,
        result: TrackResult | None = None,
        on_status: Callable[[GroupRecord, RecipientStatus], Awaitable[None] | None] | None = None,
        originals: Originals | None = None,
    ) -> None:
        #: The ledgers whose failed file this one sends, for :meth:`settle_doubts`
        #: (:class:`~bulk_mms.settle.Settler`'s ``originals``).
        self.originals = originals
        #: Told of every status that is news, after it is recorded (a run's error policy),
        #: and awaited when it returns an awaitable (an opt-out written to the list).
        self.on_status = on_status
        self.view = view
        self.store = store
        self.client = client
        self.settings = settings
        self.cfg = settings.track
        #: Ends tracking, and is requested by an answer after which no GET can succeed (a
        #: refused key, a redirect, an unreachable API: :meth:`poll`). A run's delivery
        #: watch is given a stop of its own (:meth:`Stop.child <bulk_mms.signals.Stop.child>`).
        self.stop = stop or Stop()
        self.clock: Clock = clock or SystemClock(self.stop)
        self.gets = FixedRate(self.cfg.rate, self.clock, stopped=self.stop.is_set)
        #: What tracking found: the caller's, when given, so it keeps the job's name and what
        #: was found even if tracking is cut short.
        self.result = result if result is not None else TrackResult()
        #: Group id → (passes without change, monotonic time of the next ask).
        self.backoff: dict[str, tuple[int, float]] = {}
        self._not_found: set[str] = set()
        #: (group, phone) the last answer about its group did not list (in the order first
        #: seen): a member listed since, or final, is taken out (:meth:`_sync_unlisted`).
        self._unlisted: dict[tuple[str, str], None] = {}
        #: Tries in a row that could not connect (:data:`STOP_AFTER_UNREACHABLE`).
        self.connect_failures = 0
        #: The live run ``follow`` waits on with nothing left to ask (None: not waiting on
        #: one): ``track.waiting`` is logged when it changes, not every pass.
        self.waiting_on: str | None = None

    def __repr__(self) -> str:
        return f"<Tracker {self.store.name} groups={len(self.view.groups)}>"

    # -- choosing what to ask ---------------------------------------------------------------

    def due(self) -> list[GroupRecord]:
        """Groups with a recipient not final, inside ``max_age``, whose backoff has passed (or
        passes within :data:`~bulk_mms.clock.DUE_SLACK_S`: not worth a second sleep of
        :meth:`run`'s one-second floor)."""
        now, wall = self.clock.monotonic() + DUE_SLACK_S, self.clock.wall()
        return [
            g
            for g in self.view.sent_groups()
            if self._trackable(g, wall)
            and self.backoff.get(g.id, (0, 0.0))[1] <= now
            and self.view.pending(g)
        ]

    def _too_old(self, g: GroupRecord, wall: float) -> bool:
        return wall - g.sent_at > self.cfg.max_age

    def _trackable(self, g: GroupRecord, wall: float) -> bool:
        """Known to the API and inside ``max_age``."""
        return g.id not in self._not_found and not self._too_old(g, wall)

    # -- asking -----------------------------------------------------------------------------

    async def _limited(self) -> None:
        """Wait for the tracking rate (``[track] rate``, an aiolimiter bucket on the clock)."""
        await self.gets.acquire()
        self.result.requests += 1

    async def _get(self, what: str, message_id: str) -> tuple[RecipientStatus, ...]:
        fetch = self.client.fetch_group if what == "group" else self.client.fetch_message

        async def call() -> tuple[RecipientStatus, ...]:
            await self._limited()
            try:
                found = await fetch(message_id)
            except NetworkError as exc:
                self._unreachable(exc)
                raise
            except SendError as exc:
                if exc.status is not None:  # the API answered: it can be reached
                    self.connect_failures = 0
                raise
            self.connect_failures = 0
            return found

        def on_error(exc: SendError) -> None:
            if isinstance(exc, RateLimited):
                # the API asks for less: halve this tracker's own rate for the rest of the run
                rate = max(0.1, self.gets.rate / 2)
                self.gets = FixedRate(rate, self.clock, stopped=self.stop.is_set)

        return await fetch_with_retry(
            call,
            self.settings.retry,
            what=f"{what} {message_id}",
            clock=self.clock,
            on_error=on_error,
        )

    def _unreachable(self, exc: NetworkError) -> None:
        """One more try could not connect; at :data:`STOP_AFTER_UNREACHABLE` in a row, give up.

        Raises:
            ApiUnavailable: that many tries in a row could not connect (not retried).
        """
        self.connect_failures += 1
        if self.connect_failures >= STOP_AFTER_UNREACHABLE:
            raise ApiUnavailable(
                f"the API cannot be reached: {self.connect_failures} tries in a row could not "
                f"connect ({exc}); check base_url and the network, then run track again"
            )

    async def ask(self, g: GroupRecord) -> tuple[RecipientStatus, ...] | None:
        """The API's statuses for a group's pending recipients; None when it cannot say.

        A group with no group id on record (settled by detail records that name no group
        message: :meth:`~bulk_mms.ledger.LedgerView.group_message_id`) is asked member by
        member, each by its own message id."""
        pending = self.view.pending(g)
        known = self.view.known
        own = {p: k.message_id for p in pending if (k := known.get(p)) and k.message_id}
        ids = list(own.values())
        assert g.message_id is not None  # a sent group has one
        group_id = self.view.group_message_id(g)
        alone = len(pending) == 1 and len(ids) == 1
        if group_id is None:  # no group id on record: each member by its own
            return await self._each(own) or self._gone(g)
        try:
            if alone:  # one left: the smaller answer, else the group's
                with contextlib.suppress(NotFound):
                    return await self._get("message", ids[0])
            return await self._get("group", group_id)
        except NotFound:
            if not ids:
                # no recipient ids yet: some servers answer for the group's id here too
                with contextlib.suppress(NotFound):
                    return await self._get("message", g.message_id)
            if ids and len(ids) == len(pending) and not alone:
                # the group id is gone but each recipient's own id is known: ask one by one
                return await self._each(own) or self._gone(g)
            return self._gone(g)

    def _gone(self, g: GroupRecord) -> tuple[RecipientStatus, ...] | None:
        """The API knows none of the group's messages (404): counted, never asked again; the
        answer :meth:`ask` gives (None: it cannot say). A group sent within
        :data:`NOT_FOUND_GRACE_S` is not given up: it is asked again after the backoff."""
        if self.clock.wall() - g.sent_at < NOT_FOUND_GRACE_S:
            log.info("track.not_found_yet", group=g.id, message_id=g.message_id)
            self._back_off(g, changed=False)
            return None
        self._not_found.add(g.id)
        self.result.not_found.append(g.id)
        log.warning("track.not_found", group=g.id, message_id=g.message_id)
        return None

    async def _each(self, own: dict[str, str]) -> tuple[RecipientStatus, ...]:
        """Each recipient's report from its own message (``GET /messages/{id}``), by phone →
        own id; one the API does not know (404) is left out. A recipient's own message may
        list the group's other participants (``cc``): only its own report is taken from it."""
        found: list[RecipientStatus] = []
        for phone, mid in own.items():
            try:
                answer = await self._get("message", mid)
            except NotFound:
                continue
            found.extend(st for st in answer if st.phone == phone)
        return tuple(found)

    async def poll(self, g: GroupRecord) -> None:
        try:
            statuses = await self.ask(g)
        except FatalSendError as exc:  # a refused key, or a redirect: no GET can succeed
            self.result.error = exc
            self.stop.request(StopReason.AUTH if exc.status in (401, 403) else StopReason.ENDPOINT)
            return
        except ApiUnavailable as exc:  # nothing can be asked: stop every worker
            self.result.error = self.result.error or exc
            self.stop.request(StopReason.UNAVAILABLE)
            return
        except PaceAborted:  # stopping while this group waited for the rate: left as it is
            return
        except SendError as exc:
            self.result.errors[exc.code] += 1
            log.warning("track.failed", group=g.id, error=str(exc))
            return
        if statuses is None:
            return
        listed = self._listed(g, statuses)
        changed = False
        # and the members moved out of it, when listed: a report that it reached them after
        # all keeps them from being sent again (LedgerView.apply_status: News.REACHED)
        moved = [p for p in g.moved if p in listed]
        for phone in (*self.view.pending(g), *moved):
            if phone in listed and listed[phone] is None:
                continue  # listed, but under other messages' ids too (logged)
            st = listed.get(phone)
            if st is None:
                if (g.id, phone) not in self._unlisted:
                    self._unlisted[g.id, phone] = None
                    log.warning("track.recipient_unlisted", group=g.id, recipient=phone)
                continue
            self._unlisted.pop((g.id, phone), None)  # listed now
            st, action = judged(st, self.settings.error_policy)
            if self.view.apply_status(st, g.id, action=action):
                now = iso(self.clock.wall())
                ev = status_event(g.id, st, source="track", time=now, action=action)
                await self.store.append(ev)
                self.result.changes += 1
                changed = True
                if self.on_status is not None and (told := self.on_status(g, st)) is not None:
                    await told
                log.debug("track.status", group=g.id, recipient=phone, status=st.status)
        self._back_off(g, changed=changed)

    def _back_off(self, g: GroupRecord, *, changed: bool) -> None:
        """When to ask about ``g`` next: after the interval, doubled for each pass in a row
        that brought no change (up to ``max_interval``)."""
        unchanged = 0 if changed else self.backoff.get(g.id, (0, 0.0))[0] + 1
        delay = min(self.cfg.max_interval, self.cfg.interval * (2 ** max(0, unchanged - 1)))
        self.backoff[g.id] = (unchanged, self.clock.monotonic() + delay)

    def _listed(
        self, g: GroupRecord, statuses: tuple[RecipientStatus, ...]
    ) -> dict[str, RecipientStatus | None]:
        """Each recipient's report in an answer. A recipient listed under more than one
        message id (the group endpoint returns "all messages in a group MMS conversation",
        and the same people may be texted again) takes the report under its own id of this
        group's message, once known (:meth:`~bulk_mms.ledger.LedgerView.own_id`: a member
        moved out and sent again keeps it); until then, the report under the one message id
        that lists it alone of the group's members (a member's own message: :func:`_alone`),
        when there is exactly one such id, else None: another message's status is never
        recorded as this one's. A report whose message names another group of this ledger
        (:meth:`~bulk_mms.ledger.LedgerView.names_another`), or, when another report of the
        answer names this group's own id (so the field is seen to hold it), names any other
        group message (another send in the same conversation), is left out, logged: its
        recipient is listed by its own report, or not at all. A report of a number that is
        not a member of the group is not read at all: an answer may list any number of them
        (bounded only by its size), and none is logged or looked at twice."""
        members = set(g.to)
        statuses = tuple(st for st in statuses if st.phone in members)
        own_id = self.view.group_message_id(g)
        vouched = own_id is not None and any(st.group_message_id == own_id for st in statuses)
        ours: list[RecipientStatus] = []
        theirs: list[RecipientStatus] = []
        for st in statuses:
            other = self.view.names_another(g, st.group_message_id) or (
                vouched and st.group_message_id not in (None, own_id)
            )
            (theirs if other else ours).append(st)
        if theirs:
            log.warning(
                "track.other_group_message",
                group=g.id,
                reports=len(theirs),
                named=theirs[0].group_message_id,
            )
            statuses = tuple(ours)
        listed: dict[str, RecipientStatus | None] = {}
        doubled: set[str] = set()
        for st in statuses:
            have = listed.setdefault(st.phone, st)
            if have is not None and have.message_id != st.message_id:
                doubled.add(st.phone)
        alone = _alone(statuses, own_id) if doubled else {}
        for phone in doubled:
            own = self.view.own_id(g, phone)
            reports = [st for st in statuses if st.phone == phone]
            if own:
                mine = [st for st in reports if st.message_id == own]
            else:  # not learnt yet: the one member's own message listing it
                mine = [st for st in reports if alone.get(st.message_id) == phone]
                mine = mine if len({st.message_id for st in mine}) == 1 else []
            listed[phone] = mine[-1] if mine else None
            if not mine:
                log.warning("track.recipient_ambiguous", group=g.id, recipient=phone)
        return listed

    async def one_pass(self) -> None:
        self.result.errors.clear()
        queue: asyncio.Queue[GroupRecord] = asyncio.Queue()
        for g in self.due():
            queue.put_nowait(g)

        async def worker() -> None:
            while not self.stop.is_set():
                try:
                    g = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await self.poll(g)

        workers = min(self.settings.concurrency, queue.qsize())
        await asyncio.gather(*(worker() for _ in range(workers)))
        self.result.passes += 1
        self._sync_unlisted()
        if isinstance(self.result.error, FatalSendError):
            raise self.result.error

    def _sync_unlisted(self) -> None:
        """The result's :attr:`~TrackResult.unlisted`: the members no answer listed since,
        and not final (a webhook, or a run, may have recorded them since)."""
        groups = self.view.groups
        for key in list(self._unlisted):
            gid, phone = key
            if (g := groups.get(gid)) is None or phone not in self.view.pending(g):
                del self._unlisted[key]
        self.result.unlisted = list(self._unlisted)

    def refresh(self) -> None:
        """Take in what has been written to the ledger since it was read (a run may still be
        sending, on this host or another)."""
        for ev in self.store.new_events():
            self.view.apply(ev)

    def remaining(self) -> int:
        """Recipients not final in groups still inside ``max_age`` and known to the API."""
        wall = self.clock.wall()
        return sum(
            len(self.view.pending(g)) for g in self.view.sent_groups() if self._trackable(g, wall)
        )

    async def settle_doubts(self) -> int:
        """Look the ledger's groups in doubt up in the API's records (:mod:`bulk_mms.settle`)
        and record what they show (:meth:`_record`), for each still in doubt as it was once
        the look is over: accepted (``sent``, then tracked like any other), or, the records
        complete, never accepted (retryable: the next run sends them, under a new key). How
        many were settled."""
        settler = Settler(
            self.client,
            self.settings.records_lag_s,
            self.settings.request_timeout,
            self.clock,
            retry=self.settings.retry,
            originals=self.originals,
        )
        settled = 0
        coordinator = coordinator_for(self.store, self.settings.lease_s)
        try:
            for rec in [g for g in self.view.groups.values() if g.state == IN_DOUBT]:
                if self.stop.is_set():
                    break
                tried = (rec.last_try, rec.resends)
                finding = await settler.settle(rec, self.view)
                now = iso(self.clock.wall())
                found: list[Event]
                if finding.verdict == Verdict.ACCEPTED and finding.record is not None:
                    record = finding.record
                    found = [
                        Sent(
                            rec.id, rec.to, message_id=record.id, from_=rec.sender,
                            cost=record.cost, time=now,
                        ),
                        *own_ids(rec.id, rec.to, finding, now),  # no group id: each member's own
                    ]  # fmt: skip
                elif finding.verdict == Verdict.ABSENT:
                    lag = self.settings.records_lag_s
                    found = [never_accepted(lag, now, group=rec.id, to=rec.to)]
                else:
                    continue
                settled += await self._record(coordinator, rec.id, tried, found)
        finally:
            await coordinator.close()
        if settled:
            log.info("track.settled", groups=settled)
        return settled

    async def _record(
        self, coordinator: Coordinator, gid: str, tried: tuple[float, int], found: list[Event]
    ) -> bool:
        """Write ``found``, what the API's records show of group ``gid`` (in doubt after its
        try ``tried`` when they were looked up), as a run would: under the group's claim,
        taken first (a live run that holds it settles it itself: nothing is written), and
        only if the group is still in doubt as the ledger then stands
        (:meth:`_still_in_doubt`), so no run on another host can claim and send it between
        that look and the write. A finding that closes the group's attempt (never accepted)
        is written under the claim's fence, as a run's failure is (a ``track`` paused past
        the lease meanwhile writes nothing); an acceptance is the truth, written as it is.
        The claim is given back after. Whether ``found`` was written."""
        if not await coordinator.claim(gid):
            return False
        try:
            if not self._still_in_doubt(gid, tried):
                return False  # a run beside it settled it, or sent it again, while it looked
            fence = coordinator.fence(gid)
            for ev in found:
                await self.store.append(ev, fence=fence if isinstance(ev, Failed) else None)
                self.view.apply(ev)
        except ClaimLost:
            return False
        finally:
            await coordinator.release()
        return True

    def _still_in_doubt(self, gid: str, tried: tuple[float, int]) -> bool:
        """Whether group ``gid``, in doubt after its latest try and settled sends ``tried``
        (its ``last_try`` and ``resends``) when its records were looked up, still is so as
        the ledger now stands (read again: a run beside ``track`` settles its own, and may
        have sent it again meanwhile, its attempt open, which an outcome written on the old
        look would close)."""
        self.refresh()
        rec = self.view.groups.get(gid)
        return rec is not None and rec.state == IN_DOUBT and (rec.last_try, rec.resends) == tried

    async def run(self, *, follow: bool = False) -> TrackResult:
        """Settle what the API's records can settle, then one pass, or with ``follow``
        passes until nothing is left to ask of the ledger as it stands after the pass and no
        run of it is live (the groups runs still sending wrote meanwhile taken in, so they
        are asked about too). With nothing left but a live run, it looks again every
        ``interval``.

        Raises:
            LedgerError: the store could not say whether a run is live.
        """
        await self.settle_doubts()
        while True:
            await self.one_pass()
            live = None
            if follow:
                # asked before the ledger is read again: all a run wrote before it ended is read
                live = await self.store.live_run(self.settings.lease_s)
                self.refresh()
            left = self.remaining()
            log.info(
                "track.pass",
                number=self.result.passes,
                changes=self.result.changes,
                pending=left,
                requests=self.result.requests,
            )
            if not follow or self.stop.is_set() or not (left or live):
                break
            self._waiting(None if left else live)
            if left:
                waits = [at for _, at in self.backoff.values()]
                next_at = min(waits, default=self.clock.monotonic() + self.cfg.interval)
                await self.clock.sleep(max(1.0, next_at - self.clock.monotonic()))
            else:  # only a run to wait on: what it sends next is asked about an interval on
                await self.clock.sleep(self.cfg.interval)
            if self.stop.is_set():
                break
        self.result.stopped = self.stop.reason
        self._tally()
        return self.result

    def _waiting(self, run: str | None) -> None:
        """``follow`` waits on ``run`` (a live run of the ledger, which may send more) with
        nothing left to ask, or on nothing but the API (None): ``track.waiting`` is logged
        when it starts waiting on a run, or on another one."""
        if run is not None and run != self.waiting_on:
            log.info("track.waiting", reason="nothing is pending, but a run is live", run=run)
        self.waiting_on = run

    def _tally(self) -> None:
        """The result's counts, as the fold keeps them (the report's): each recipient once,
        by its latest send (a member moved out of a group and sent again is its new group's)."""
        r = self.result
        wall = self.clock.wall()
        self._sync_unlisted()
        r.statuses = self.view.delivery()
        r.pending = r.too_old = 0
        for g in self.view.sent_groups():
            left = len(self.view.pending(g))
            r.pending += left
            r.too_old += left if left and self._too_old(g, wall) else 0


async def track_ledger(
    location: Location,
    settings: Settings,
    client: MmsClient,
    *,
    follow: bool = False,
    clock: Clock | None = None,
    stop: Stop | None = None,
    result: TrackResult | None = None,
) -> TrackResult:
    """Track a ledger's sent groups: one pass, or until done with ``follow``, into ``result``
    when given (a new one by default); its ``job`` is set as soon as the ledger is read.

    Works beside a run that is still sending (status events need no run lock).

    An API that cannot be reached ends tracking with the result's ``error`` an
    :class:`ApiUnavailable` (see :data:`STOP_AFTER_UNREACHABLE`).

    Raises:
        LedgerError: the ledger is missing, empty, corrupt or cannot be written.
        FatalSendError: the API refused the key, or the base URL redirects.
    """
    store = open_store(location, "append")
    try:
        view = store.fold()
        store.on_kept_back(view.kept_back)  # a move the shared ledger did not write
        if clock is None:
            clock = SystemClock(stop)
            if store.shared:  # a database's: its time, as every run of the job keeps it
                await keep_database_time(clock, str(location))

        listed: list[Suppressed] = []  # opened at the first opt-out (a database's table)

        async def on_status(rec: GroupRecord, st: RecipientStatus) -> None:
            # a member failed by its blocked sender, or refused for now, goes again (a rerun)
            action, found = delivery_action(rec, st, settings, clock.wall(), view.moves)
            if found is not None:
                store.append_nowait(found)  # durable when the store closes
                view.apply(found)
            if action == Action.SUPPRESS and (got := await suppressions()) is not None:
                # it opted out after the group was accepted: as the send's 409 would have
                await suppress_opted_out(
                    got, (st.phone,), report_code(st, settings.error_policy) or "", source="track"
                )

        async def suppressions() -> Suppressed | None:
            if not listed:
                try:  # read off the loop: a file, or a database's table
                    found = await asyncio.to_thread(
                        suppression_for, settings.suppression_file, location
                    )
                except (ConfigError, LedgerError) as exc:
                    log.warning("suppression.unreadable", error=str(exc))
                    return None
                listed.append(found)
            return listed[0]

        tracker = Tracker(
            view, store, client, settings, clock=clock, stop=stop, result=result,
            on_status=on_status, originals=Originals(location),
        )  # fmt: skip
        tracker.result.job = view.header.job if view.header is not None else None
        groups = sum(1 for _ in view.sent_groups())
        log.info("track.started", ledger=store.name, groups=groups, follow=follow)
        tracker.result.changes += await _held(tracker, location, suppressions)
        return await tracker.run(follow=follow)
    finally:
        await store.close()


async def _held(
    tracker: Tracker, location: Location, suppressed: Callable[[], Awaitable[Suppressed | None]]
) -> int:
    """The reports the webhook receiver of the ledger at ``location`` holds whose message the
    ledger now knows, recorded into ``tracker``'s (:func:`~bulk_mms.webhooks.receiver.
    apply_held`): how many. None are held where the ``webhooks`` extra is not installed (no
    receiver runs without it)."""
    try:
        with needs("webhooks", "the webhook reports held"):
            from bulk_mms.webhooks.receiver import apply_held  # noqa: PLC0415 - cryptography
    except MissingExtra:
        return 0
    t = tracker
    n = await apply_held(
        location, t.view, t.store, t.settings, clock=t.clock, suppressed=suppressed
    )
    if n:
        log.info("track.held_recorded", changes=n)
    return n


def _alone(statuses: Sequence[RecipientStatus], group_id: str | None) -> dict[str | None, str]:
    """The message ids of ``statuses`` (a group's members' reports) that list one member
    alone, each with that member: a member's own message. The group's own id (``group_id``)
    and one listing several members (the group's own message, or another send's to the same
    people in its conversation) are not; nor is a report without an id."""
    listing: dict[str, set[str]] = {}
    for st in statuses:
        if st.message_id is not None and st.message_id != group_id:
            listing.setdefault(st.message_id, set()).add(st.phone)
    return {mid: next(iter(phones)) for mid, phones in listing.items() if len(phones) == 1}


def format_track(r: TrackResult, path: Location) -> str:
    """What a pass found, for a person: what the API said (statuses, codes, message ids)
    with its control characters escaped (:func:`~bulk_mms.words.escaped`)."""
    total = sum(r.statuses.values())
    counts = ", ".join(f"{k} {v}" for k, v in r.statuses.most_common()) or "none"
    lines = [
        f"{path}: {total} recipients: {counts}",
        f"  not final {r.pending} (past max_age: {r.too_old}); "
        f"{r.changes} changes recorded; {r.requests} requests in {r.passes} pass(es)",
    ]
    if r.not_found:
        more = f" (+{len(r.not_found) - 5} more)" if len(r.not_found) > 5 else ""
        lines.append(f"  unknown to the API (404): {', '.join(r.not_found[:5])}{more}")
    if r.unlisted:
        shown = ", ".join(f"{p} in {g}" for g, p in r.unlisted[:5])
        more = f" (+{len(r.unlisted) - 5} more)" if len(r.unlisted) > 5 else ""
        lines.append(f"  not listed by the API: {shown}{more}")
    if r.errors:
        lines.append(
            "  could not ask (will retry next pass): "
            + ", ".join(f"{k or 'network'} x{v}" for k, v in r.errors.items())
        )
    return "\n".join(escaped(line) for line in lines)
