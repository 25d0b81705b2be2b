"""Run a job: read → validate → group → skip what the ledger has → pace → send/retry → record.

The reader feeds a queue, at most :data:`QUEUE_DEPTH_PER_WORKER` groups per worker ahead
(backpressure: the file is read only as fast as groups go out), drained by ``concurrency``
worker tasks; what goes out in a sent group's place (another sender, the members not refused)
goes back on the same queue, ahead of the reader's groups. Before each request leaves, an
``attempt`` event is made durable in the ledger; the outcome follows
(:class:`~bulk_mms.recorder.Recorder`). A stop (signal, refused key, ledger failure) stops the
reader and lets requests in flight finish and be recorded; what was never attempted is simply
sent by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
from collections import Counter
from collections.abc import AsyncIterator, Container
from pathlib import Path
from typing import NamedTuple

import structlog
from msgspec.structs import replace

from bulk_mms.client import MmsClient
from bulk_mms.clock import Clock, SystemClock, utc
from bulk_mms.config import JobConfig, Settings
from bulk_mms.coordination import coordinator_for
from bulk_mms.ending import drain, final_summary, let_go
from bulk_mms.errors import BulkMmsError, ConfigError, LedgerError
from bulk_mms.gates import Gates, past
from bulk_mms.ledger import keep_database_time, open_store
from bulk_mms.ledger.fold import (
    IN_DOUBT,
    RETRY_PENDING,
    SENT,
    ExcludedLedger,
    GroupRecord,
)
from bulk_mms.ledger.store import is_database
from bulk_mms.leftover import Leftover
from bulk_mms.models import Group, RejectedRow, Rejection
from bulk_mms.prepare import disposition, not_before, plan, remade_from, suppressed_as_planned
from bulk_mms.progress import Progress, Snapshot
from bulk_mms.quiet import closes_in
from bulk_mms.reader import RowReader
from bulk_mms.scan import InputScan, open_reader
from bulk_mms.sending import GroupSender
from bulk_mms.settle import SETTLED_SLACK_S, Verdict
from bulk_mms.sharing import Sharing
from bulk_mms.signals import Stop, StopReason
from bulk_mms.startup import (
    begin,
    build_recorder,
    build_sender,
    outside_window,
    planned_by_scan,
    scan_whole_input,
)
from bulk_mms.summary import JobSummary
from bulk_mms.suppression import put_back_opted_out, suppression_for
from bulk_mms.track import Tracker

log = structlog.get_logger(__name__)

#: The longest a run waits, before it ends, for the API's records of its groups in doubt to
#: be complete (``[api] records_lag_s`` set low); past it, a later run looks.
SETTLE_WAIT_S = 60.0
#: While a run sends, the share of the account rate its delivery polling may use, and how long
#: after a group is sent it is first asked about (``watch_delivery``).
DELIVERY_SHARE = 0.1
DELIVERY_FIRST_S = 10.0
#: How long a run that found a sender blocked waits, before it ends, for the final statuses of
#: the groups that sender sent, and how often it asks meanwhile (``watch_blocked``).
BLOCKED_WAIT_S = 60.0
BLOCKED_POLL_S = 2.0
#: How often a run reads what was added to the suppression list since its last look (an
#: inbound STOP mid-run): one read per period (:meth:`Runner.watch_suppression`).
SUPPRESSION_LOOK_S = 5.0
#: Seconds between progress snapshots.
PROGRESS_PERIOD_S = 0.5
#: How many of the reader's groups may wait in the queue per worker: enough to keep workers
#: busy, small enough that the reader never runs far ahead of the sending.
QUEUE_DEPTH_PER_WORKER = 2

#: The ranks of what waits on a run's queue, taken in this order: a group that goes out in
#: another's place, a group the reader fed, the end of the work.
_RESEND, _FED, _END = 0, 1, 2


class _Item(NamedTuple):
    """What waits on a run's queue: ``group`` (None: the end), of rank :data:`_RESEND`,
    :data:`_FED` or :data:`_END`; ``seq`` keeps each rank first in, first out (and is never
    equal, so groups are never compared)."""

    rank: int
    seq: int
    group: Group | None


class Runner:
    """One run of one job. Private: use :func:`run_job` (:func:`runner_parts` makes what it is
    handed beside the sender)."""

    def __init__(
        self,
        job: JobConfig,
        settings: Settings,
        client: MmsClient,
        sender: GroupSender,
        *,
        sharing: Sharing,
        gates: Gates,
        clock: Clock,
        stop: Stop,
        resend_in_doubt: bool = False,
        limit: int | None = None,
        scan: InputScan | None = None,
        excluded: Container[int] = (),
    ) -> None:
        self.job = job
        #: The scan of the whole input before this run (where each group_by key ends).
        self.scan = scan
        #: Numbers ``--exclude-sent`` leaves out (E.164 digits).
        self.excluded = excluded
        self.settings = settings
        self.client = client
        self.sender = sender
        #: The room the limits hold that no run settled (:mod:`bulk_mms.leftover`).
        self.leftover = Leftover(sender.limits, sharing)
        sender.leftover = self.leftover.give_back_ended
        self.recorder = recorder = sender.recorder
        self.view = recorder.view
        self.summary = recorder.summary
        self.clock = clock
        self.stop = stop
        self.resend_in_doubt = resend_in_doubt
        #: Send at most this many groups in this run (``run --limit``); the next run goes on.
        self.limit = limit
        self.queued = 0
        #: The groups to send (:meth:`work`). Unbounded: a worker never waits to put a resend.
        self.queue: asyncio.PriorityQueue[_Item] = asyncio.PriorityQueue()
        #: The reader's bound: it takes a place before it puts a group, a worker gives it
        #: back as it takes the group off.
        self.room = asyncio.Semaphore(settings.concurrency * QUEUE_DEPTH_PER_WORKER)
        self._seq = itertools.count()
        self.in_flight = 0
        self.store = recorder.store
        #: Several processes on a shared ledger (:mod:`bulk_mms.sharing`).
        self.sharing = sharing
        #: Quiet hours and the deadline (:mod:`bulk_mms.gates`).
        self.gates = gates
        #: Recipients of the groups a stop left unsent (queued, or between tries), by zones.
        self.left: Counter[tuple[str, ...]] = Counter()
        #: Input rows dealt with, for progress; of those, the rows that needed no request.
        self.rows_done = 0
        self.rows_free = 0
        #: Groups lost to another process's takeover: their rows are counted already.
        self._counted: set[str] = set()
        #: Groups held in doubt since an earlier run, counted so (``held_groups``): settled
        #: by the records as sent (here or by another process), they are not this run's sends.
        self._held: set[str] = set()

    def log_start(self, ledger: str) -> None:
        job, settings = self.job, self.settings
        log.info(
            "job.started",
            job=job.name,
            input=str(job.input),
            ledger=ledger,
            campaign=self.view.campaign,
            grouping=job.grouping,
            rate=settings.rate,
            concurrency=settings.concurrency,
        )

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<Runner {self.job.name} sent={s.sent_groups} failed={s.failed_groups} "
            f"in_doubt={s.in_doubt_groups} in_flight={self.in_flight}>"
        )

    # -- reading ----------------------------------------------------------------------------

    async def produce(self, reader: RowReader) -> None:
        """Feed groups to the workers; record rejected rows; skip what is done; say how much
        of the input is valid once it has all been read."""
        recipients = groups = 0
        left_out: Counter[Rejection] = Counter()  # every row not sent but the duplicates
        suppressed, gates = self.sender.suppressed, self.sender.gates
        items = plan(
            self.job, reader, suppressed, self.view, scan=self.scan, excluded=self.excluded
        )
        for n, item in enumerate(items):
            if self.stop.is_set():
                return
            if gates.run_over():
                self.sender.stops.run_deadline_reached()
                return
            if n % 512 == 511:
                await asyncio.sleep(0)  # let workers and the flusher run on long skip streaks
            if isinstance(item, RejectedRow):
                if item.kind is not Rejection.DUPLICATE:
                    left_out[item.kind] += 1
                self.rows_done += 1
                self.rows_free += 1
                self.recorder.rejected(item)
                if item.kind is Rejection.SUPPRESSED and suppressed.late(item.value):
                    self._left_out_late()
                continue
            recipients += len(item.to) + len(item.refused) + len(item.stayed)
            groups += 1
            if not await self._dispatch(item):
                return
        self.recorder.planned(
            recipients,
            groups,
            left_out.total(),
            self.summary.duplicate_rows,
            suppressed=left_out[Rejection.SUPPRESSED],
            excluded=left_out[Rejection.EXCLUDED],
        )
        self.summary.read_whole_input = True
        await self.sharing.settle_others(self._dispatch, self.stop.is_set)

    async def look_again(self) -> None:
        """Take in the numbers put on the suppression list since the run last read it (an
        inbound STOP mid-run), off the loop: every group planned from then on goes without
        them (recorded ``suppressed``), and every try refuses them in a group planned before
        (recorded opted out). A list that cannot be read now is logged (``suppression.unread``)
        and read again at the next look: the run goes on with what it read."""
        suppressed = self.sender.suppressed
        try:
            new = await suppressed.off_loop(suppressed.look_again)
        except (ConfigError, LedgerError) as exc:
            log.warning("suppression.unread", error=str(exc))
            return
        if new:
            log.info("suppression.added", new=len(new))

    def _left_out_late(self) -> None:
        """A row the scan counted valid was left out as suppressed (its number put on the list
        mid-run): the scan's counts, and the ledger's count of valid recipients taken from
        them, say so at once, so that a run ending before its input's end (whose valid
        recipients stay the scan's) counts it suppressed, not also not attempted."""
        if (scan := self.summary.input) is not None:
            self.summary.input = scan = replace(scan, suppressed=scan.suppressed + 1)
            planned_by_scan(self.recorder, scan)

    async def _dispatch(self, group: Group) -> bool:
        """Skip, hold or queue one group; False once ``--limit`` groups are queued."""
        if (admitted := await self._admit(group)) is None:
            return True
        group = admitted
        self.summary.note_template(group)
        await self.room.acquire()
        self._put(_FED, group)
        self.queued += 1
        if self.limit is not None and self.queued >= self.limit:
            log.info("job.limit_reached", limit=self.limit)
            return False
        return True

    async def _admit(self, group: Group, *, rows: bool = True) -> Group | None:
        """The group this process sends now for ``group``, if any: not held for quiet hours
        or a carrier's reset, claimed (a shared ledger), and neither done nor in doubt (else
        it is skipped or held here); made without the members another process had refused
        since this one planned it, and held if another process met a carrier's cap with it
        since. ``rows``: count its rows as dealt with when it is not sent (not for a group
        made in place of one already counted)."""
        free = len(group.to) if rows else 0
        if await self._held_back(group, free):
            return None
        if group.suppressed:  # made in this plan without suppressed members: say so, once
            if not await self.sharing.remakes(group):
                return None
            self._remade(group)
        if not await self.sharing.take(group):
            return None  # another live process has it
        if (remade := remade_from(group, self.view, self.job)) is not None:
            # another process had members refused (or suppressed) since this one planned it
            return await self._admit(remade, rows=rows)
        action = self._decision(group)
        if action == "hold":
            verdict = await self._settle(group, earlier=True)  # in doubt since an earlier run
            if verdict == Verdict.ABSENT:
                action = "send"  # never accepted, by the API's records: sent again, a new key
        if action == "send":
            return group
        self.rows_done += free
        self.rows_free += free
        if action == "skip" or self.view.state(group.id) == SENT:
            self.summary.skipped_groups += 1
        elif action == "hold":
            self._hold(group)
        return None

    def _decision(self, group: Group) -> str:
        """:func:`~bulk_mms.prepare.disposition` of ``group``, which this process holds now;
        but ``"hold"`` for one in doubt whose resend would text members on the suppression
        list (:meth:`_listed_in`), and ``"wait"`` for one a carrier's cap holds until its
        reset (:meth:`_waits_for_reset`: another process met it since this one planned it)."""
        action = disposition(
            self.view,
            self.settings.retry,
            group.id,
            self.clock.wall(),
            resend_in_doubt=self.resend_in_doubt,
        )
        if action != "send":
            return action
        if self.view.in_doubt(group.id) and self._listed_in(group):
            return "hold"  # resent as it was (its key), it would text them: settled, or held
        return "wait" if self._waits_for_reset(group) else action

    def _hold(self, group: Group) -> None:
        """Hold ``group``, in doubt since an earlier run, for the records to settle before the
        run ends (:meth:`settle_doubts`), and count it held: once (one taken back from another
        process that took it over is counted already, in :attr:`GroupSender.doubts`)."""
        if group.id in self.sender.doubts:
            return
        self.sender.doubts[group.id] = group
        self.recorder.held(group)
        self._held.add(group.id)

    def _listed_in(self, group: Group) -> bool:
        """Whether members of ``group`` (in doubt since an earlier run) are on the suppression
        list now: a resend repeats the request as it was, so ``--resend-in-doubt`` holds it
        instead (the API's records may still settle it; one found never accepted goes out
        anew, without them), and says so."""
        if not (listed := self.sender.suppressed.among(group.to)):
            return False
        log.warning(
            "group.held_for_opt_out",
            group=group.id,
            members=[group.to[i] for i in listed],
            why="on the suppression list since the group went in doubt: "
            "--resend-in-doubt does not resend it to them",
        )
        return True

    async def _held_back(self, group: Group, free: int) -> bool:
        """Whether ``group`` is held back now, before any claim: by the deadline (recorded
        expired) or its recipients' quiet hours (:class:`~bulk_mms.gates.Gates`), or until a
        carrier's reset (:meth:`_waits_for_reset`); its ``free`` rows are then dealt with.
        Past the deadline on a shared ledger, only the process that holds the group's claim
        records it expired (with the ledger as it is now): once, not once a process; another's
        is held here and counted there."""
        shared = self.sharing.shared
        if shared and self.gates.past_deadline() and not await self.sharing.take(group):
            return True  # another live process has it
        if not (self.gates.hold(group) or self._waits_for_reset(group)):
            return False
        # (members a carrier refused for now, or a group its cap refused at the send, wait for
        # its reset: a later run sends them; a group held here is neither claimed nor
        # watched, nor its origin's claim taken)
        if group.suppressed and not self.sharing.shared:
            self._remade(group)  # alone on the ledger: later runs follow it
        self.rows_done += free
        self.rows_free += free
        return True

    def _waits_for_reset(self, group: Group) -> bool:
        """Whether ``group`` waits for a carrier's reset still to come, as this process's view
        of the ledger has it (:func:`~bulk_mms.prepare.not_before`): not sent before it."""
        return not_before(group, self.view) > self.clock.wall()

    def _remade(self, group: Group) -> None:
        """Record that ``group`` goes out in place of its origin, once (its maker may have
        recorded it, then died)."""
        if not ((origin := self.view.groups.get(group.origin)) and origin.refused):
            self.recorder.remade(group)

    async def _settle(self, group: Group, *, earlier: bool) -> Verdict:
        """Look a group in doubt up in the API's records (:mod:`bulk_mms.settle`) and record
        what they show: accepted (``sent``), or never accepted (sent again); else nothing.
        ``earlier``: its request left before this run (accepted, it is not this run's send).
        Never accepted is recorded only while this process holds the group's claim under
        the fence it looked under (:meth:`Claims.record_held
        <bulk_mms.claims.Claims.record_held>`): once another process
        took it over meanwhile (this one paused past its lease in the look, or its commit
        stalled past it), that one's attempt may be open, its request out, and the failure
        would close it pending a rerun; the group is then the taker's (watched,
        :attr:`Claims.lost <bulk_mms.claims.Claims.lost>`), unknown here."""
        rec = self.view.groups.get(group.id)
        if rec is None:
            return Verdict.UNKNOWN
        fence = self.recorder.coordinator.fence(group.id)
        finding = await self.sender.settler.settle(rec, self.view)
        if finding.verdict == Verdict.ACCEPTED and finding.record is not None:
            self.recorder.accepted_by_records(group, finding, earlier=earlier)
        elif finding.verdict == Verdict.ABSENT:
            write = functools.partial(
                self.recorder.not_accepted, group, self.settings.records_lag_s
            )
            if not await self.sender.claims.record_held(group.id, fence, write):
                self.sender.claims.lose(group)
                return Verdict.UNKNOWN
        return finding.verdict

    async def settle(self) -> None:
        """After the run: settle its own doubts, then wait for what others left undecided. A
        ledger that fails meanwhile stops the run as it would during it."""
        try:
            await self.settle_doubts()
            await self.settle_later()
        except LedgerError as exc:
            self.sender.stops.ledger_failed(exc)

    async def settle_doubts(self) -> None:
        """Before the run ends, the groups it left in doubt are looked up in the API's records:
        at once, and once more when they will be complete within :data:`SETTLE_WAIT_S`
        (``[api] records_lag_s`` set low); one never accepted is sent again. The rest stay in
        doubt for a later run, ``track`` or ``report``'s next look."""
        for gid, group in list(self.sender.doubts.items()):
            await self._settle_doubt(gid, group)

    async def _settle_doubt(self, gid: str, group: Group) -> None:
        """:meth:`settle_doubts` for one group, while this process still holds it in doubt
        (:meth:`_still_in_doubt`). A look begun before its records are complete cannot show
        it never accepted, even one that ends after: it is looked at again once they are."""
        if (rec := await self._still_in_doubt(gid, group)) is None:
            return
        earlier = gid in self._held  # held since the start: no request of this run's
        settler = self.sender.settler
        wait = settler.complete_in(rec)  # before the look, which takes its time
        verdict = await self._settle(group, earlier=earlier)
        if verdict == Verdict.UNKNOWN and 0 < wait <= SETTLE_WAIT_S:
            await self.clock.sleep(settler.complete_in(rec))  # none left: complete meanwhile
            if await self._still_in_doubt(gid, group) is None:
                return
            verdict = await self._settle(group, earlier=earlier)
        if verdict != Verdict.UNKNOWN:
            self._decided(gid, verdict)
        if verdict == Verdict.ABSENT and not self.stop.is_set():
            await self._send_here(group)

    async def _still_in_doubt(self, gid: str, group: Group) -> GroupRecord | None:
        """The record of ``group`` if this process still holds it (claimed again, and read
        as the ledger has it now) in doubt; else None. Another process may have taken it
        over meanwhile (this one paused past its lease): one it holds is watched
        (:meth:`settle_later`); one it decided is counted here no more; one it found never
        accepted and lost back unsent (paused in turn) is sent here, as a rerun would."""
        if self.stop.is_set() or not await self.sharing.take(group):
            return None
        rec = self.view.groups.get(gid)
        if rec is None or rec.state == IN_DOUBT:
            return rec
        self._decided(gid, None)
        if (
            rec.state == RETRY_PENDING
            and (admitted := await self._admit(group, rows=False)) is not None
        ):
            await self._send_here(admitted)
        return None

    def _decided(self, gid: str, verdict: Verdict | None) -> None:
        """A group this run's summary counts in doubt (held from an earlier run, or left so
        by this one; :attr:`GroupSender.doubts`) that is decided now: counted as what it is
        instead, once. ``verdict``: what the records showed here: accepted, it is sent by
        this run (:meth:`Recorder.accepted_by_records
        <bulk_mms.recorder.Recorder.accepted_by_records>` counts it), or already done when
        held; never accepted, it is counted as it goes out again. None: another process
        decided it (:meth:`_decided_elsewhere`)."""
        if (group := self.sender.doubts.pop(gid, None)) is None:
            return  # counted as decided already
        tried = self.sender.tried.pop(gid, None)
        s = self.summary
        if gid in self._held:
            self._held.discard(gid)
            s.held_groups -= 1
            s.skipped_groups += verdict == Verdict.ACCEPTED
        else:
            s.in_doubt_groups -= 1
        if verdict is None:
            self._decided_elsewhere(group, tried)

    def _decided_elsewhere(self, group: Group, tried: float | None) -> None:
        """Count a group another process decided while this run had it in doubt, as the
        ledger has it now: sent by this run when it is sent with no request since this
        run's last (at ``tried``; None: held, no request of this run's), so the records
        showed that one accepted; else done, or failed for good, there: already done, as a
        group found so before it is sent. One pending a retry is counted as it goes out
        again here."""
        rec = self.view.groups.get(group.id)
        if rec is None or not self.view.is_done(group.id):
            return
        if rec.state == SENT and rec.last_try == tried:
            self.summary.note_sent(group, rec.cost, self.view.unstated_currency)
        else:
            self.summary.skipped_groups += 1

    async def _send_here(self, group: Group) -> None:
        """Send ``group``, and what goes out in its place, in this task: the workers are gone."""
        current: Group | None = group
        while current is not None:
            current = await self._send(current)

    async def settle_later(self) -> None:
        """Once its own groups are settled, wait for the groups other processes left
        undecided, and for those they took over from this one (:meth:`Sharing.settle_later
        <bulk_mms.sharing.Sharing.settle_later>`): as long as their holders may take to
        settle theirs, and a lease more."""
        self._watch_lost()
        within = SETTLE_WAIT_S + SETTLED_SLACK_S + self.sharing.coordinator.lease_s
        await self.sharing.settle_later(self._take_over_late, self.stop.is_set, within)
        for gid in [g for g in self.sender.doubts if self.view.is_done(g)]:
            self._decided(gid, None)  # lost to another process, which decided it

    def _watch_lost(self) -> None:
        """Watch the groups another process took over from this one since the last look
        (:attr:`Claims.lost <bulk_mms.claims.Claims.lost>`); their rows were counted as dealt
        with when they were."""
        lost = self.sender.claims.lost
        while lost:
            gid, group = lost.popitem()
            self._counted.add(gid)
            self.sharing.watch_later(group)

    async def _take_over_late(self, group: Group) -> None:
        """A group whose holder died undecided: decided here as a rerun would (skipped, held
        and settled, or sent), in this task."""
        fresh = group.id not in self._counted and group.id not in self.sender.doubts
        if (admitted := await self._admit(group, rows=fresh)) is not None:
            await self._send_here(admitted)
            if fresh:
                self.rows_done += len(admitted.to)  # dealt with, as a worker counts a fed group
        elif group.id in self.sender.doubts:
            await self._settle_doubt(group.id, group)
        self._watch_lost()  # taken over from this one in turn (paused past its lease)

    async def feed(self, reader: RowReader) -> None:
        """Produce; once every group on the queue is done, those sent in another's place
        too (:meth:`work`), tell the workers the work has ended (one end marker, passed on).

        The end of the input is not the end of the work: a group a worker still sends may
        yet put one in its place. ``queue.join()`` returns only when every group put on the
        queue has been marked done, and a worker puts a group's replacement before it marks
        that group done; so when it returns, nothing is queued or being sent, and nothing
        can be put any more (only this feeder and workers busy with a group put groups)."""
        try:
            await self.produce(reader)
        except LedgerError as exc:
            self.sender.stops.ledger_failed(exc)
        # not in a finally: a cancelled feeder must not wait on a queue nobody drains
        await self.queue.join()
        self._put(_END, None)

    # -- sending ----------------------------------------------------------------------------

    def _put(self, rank: int, group: Group | None) -> None:
        """Put ``group`` on the queue, never waiting (the reader waits for :attr:`room`
        first)."""
        self.queue.put_nowait(_Item(rank, next(self._seq), group))

    async def work(self) -> None:
        """Take groups off the queue and send them until the end marker, then pass it on.

        Contract, for :meth:`feed`'s ``join()``: every item taken is marked done exactly once,
        and a group's replacement is put on the queue before the group is marked done.
        Replacements never wait for room (the queue is unbounded; only the reader waits, for
        :attr:`room`, which a worker gives back as it takes a fed group), so workers never
        wait on each other, whatever the concurrency, and they go first, ahead of the
        reader's groups. After a stop, what is taken is drained without sending (the next
        run sends it)."""
        while (item := await self.queue.get()).group is not None:
            try:
                if item.rank == _FED:
                    self.room.release()
                if not self.stop.is_set():
                    await self._take(item.group, fed=item.rank == _FED)
                else:
                    self.left[item.group.zones] += len(item.group.to)
            finally:
                self.queue.task_done()
        self.queue.task_done()
        self._put(_END, None)  # pass the end on to the next worker

    async def _take(self, group: Group, *, fed: bool) -> None:
        """Send a group taken off the queue and put what goes out in its place back on it.
        ``fed``: it came from the reader, and its rows are dealt with once it is sent (a
        replacement's were, with the group it replaces)."""
        self.in_flight += 1
        try:
            after = await self._send(group)
        finally:
            self.in_flight -= 1
            if fed:
                self.rows_done += len(group.to)
        if after is not None:
            self._put(_RESEND, after)

    async def _send(self, group: Group) -> Group | None:
        """Send ``group``; return what goes out in its place, admitted (:meth:`_admit`), if
        anything: the same group from another sender, or a new group without the members
        the API refused by name (:meth:`GroupSender.send`). It leaves with no attempt open,
        so a forced stop before it is sent has nothing to record for it; a forced stop
        while ``group`` is sent records where ``group`` stands (:meth:`GroupSender.cut_off`)."""
        try:
            after = await self.sender.send(group)
        except asyncio.CancelledError:
            self.sender.cut_off(group)
            raise
        if self.stop.is_set() and self.view.state(group.id) in (None, RETRY_PENDING):
            self.left[group.zones] += len(group.to)  # the stop came before it left
        if after is not None and after.id != group.id:
            after = await self._admit(after, rows=False)
        return after

    async def run(self, reader: RowReader) -> None:
        tasks = [asyncio.create_task(self.feed(reader), name="bulk-mms-reader")]
        tasks += [
            asyncio.create_task(self.work(), name=f"bulk-mms-worker-{i}")
            for i in range(self.settings.concurrency)
        ]

        def cancel_all() -> None:
            for task in tasks:
                task.cancel()

        self.stop.on_force(cancel_all)
        watchers = [
            asyncio.create_task(self.watch_delivery(), name="bulk-mms-delivery"),
            asyncio.create_task(self.watch_window(), name="bulk-mms-window"),
            asyncio.create_task(self.watch_suppression(), name="bulk-mms-suppression"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:  # cancelled from outside: take the children along
            cancel_all()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            for watcher in watchers:
                watcher.cancel()
        broken = [e for t in done if not t.cancelled() and (e := t.exception()) is not None]
        if broken:
            # a bug, not a send error (those are all recorded): stop everything rather than
            # let the reader wait for workers that are gone, and let it be seen
            self.stop.force(StopReason.ERROR)
            await asyncio.gather(*tasks, return_exceptions=True)
            raise broken[0]

    @contextlib.asynccontextmanager
    async def keeping_claims(self) -> AsyncIterator[None]:
        """Renew this process's claims (a shared ledger) until the block ends: the run, the
        settling of its doubts and the wait for what others left undecided. A live process's
        groups never pass to another while it may still decide them."""
        claims = (
            asyncio.create_task(self.sharing.keep_claims(self.sender.stops.ledger_failed))
            if self.sharing.shared
            else None
        )
        try:
            yield
        finally:
            if claims is not None:  # ended before the claims are given back: none renewed after
                claims.cancel()
                await asyncio.gather(claims, return_exceptions=True)

    @functools.cached_property
    def delivery(self) -> Tracker:
        """The tracker of this run's own delivery statuses (:meth:`watch_delivery`)."""
        share = self.settings.rate * DELIVERY_SHARE
        track = replace(
            self.settings.track,
            rate=max(0.1, min(self.settings.track.rate, share)),
            interval=DELIVERY_FIRST_S,
            max_interval=DELIVERY_FIRST_S * 8,
        )
        return Tracker(
            self.view,
            self.store,
            self.client,
            replace(self.settings, track=track),
            clock=self.clock,  # the run's: its groups' ages, by the clock that stamped them
            # its own stop: an answer that ends tracking ends the watch, not the run
            stop=self.stop.child(),
            on_status=self.sender.on_delivery,
        )

    async def watch_blocked(self) -> None:
        """Before the run ends: when a delivery report showed a sender blocked, the groups it
        sent are asked about until their statuses are final (for at most
        :data:`BLOCKED_WAIT_S`), so every member it failed is moved and a rerun sends them all
        from another sender."""
        blocked = self.sender.retired_by_delivery
        deadline = asyncio.get_running_loop().time() + BLOCKED_WAIT_S
        while blocked and not self.delivery.stop.is_set():
            pending = [
                g for g in self.view.sent_groups() if g.sender in blocked and self.view.pending(g)
            ]
            if not pending or asyncio.get_running_loop().time() >= deadline:
                return
            for g in pending:
                self.delivery.backoff[g.id] = (0, 0.0)  # due now
            try:
                await self.delivery.one_pass()
            except BulkMmsError as exc:
                log.warning("delivery.watch_stopped", error=str(exc))
                return
            await asyncio.sleep(BLOCKED_POLL_S)

    async def watch_delivery(self) -> None:
        """While the run sends, poll the delivery statuses of the groups it has sent (a
        :class:`~bulk_mms.track.Tracker` on the run's own ledger, at
        :data:`DELIVERY_SHARE` of the account rate, each group first asked
        :data:`DELIVERY_FIRST_S` after it was sent), so carrier codes, which arrive only in
        delivery reports, reach the error policy within seconds
        (:meth:`GroupSender.on_delivery`). Works from cron with no public URL. Real time: the
        API's carriers keep it, not the run's clock. An answer that ends tracking (a refused
        key, a redirect, an API that cannot be reached) ends this watch alone, logged
        (``delivery.watch_stopped``): the run's sends judge the API by their own answers."""
        tracker = self.delivery
        while not tracker.stop.is_set():  # the run's stop, or an answer that ended the watch
            await asyncio.sleep(DELIVERY_FIRST_S)
            for g in self.view.sent_groups():
                tracker.backoff.setdefault(g.id, (0, tracker.clock.monotonic() + DELIVERY_FIRST_S))
            try:
                await tracker.one_pass()
            except BulkMmsError as exc:  # the sending path will meet the same trouble
                log.warning("delivery.watch_stopped", error=str(exc))
                return
            if tracker.result.error is not None:  # the API cannot be reached: the sends judge it
                log.warning("delivery.watch_stopped", error=str(tracker.result.error))
                return

    async def watch_suppression(self) -> None:
        """While the run sends, take in what was put on the suppression list every
        :data:`SUPPRESSION_LOOK_S` (:meth:`look_again`): the planner leaves those numbers out
        of the groups it makes from then on, and every try refuses them in a group made
        before (:meth:`~bulk_mms.sending.GroupSender._check_optouts`)."""
        while not self.stop.is_set():
            await self.clock.sleep(SUPPRESSION_LOOK_S)
            await self.look_again()

    async def watch_window(self) -> None:
        """While the run sends, stop it as the job's ``send_window`` closes, so that every
        wait (a pause after a 429, a backoff, the pacing) ends then instead of running its
        course (each try checks the window as well). Asked again as each sleep ends: a wall
        clock stepped meanwhile moves the close. Past the job's deadline the window stops
        nothing: no request leaves then anyway, and the run records every group left
        ``expired_unsent`` (exit 1), not a stop for a later run that cannot send them either
        (exit 4)."""
        window = self.job.send_window
        if window is None:
            return
        expires = self.sender.gates.expires_at
        while not self.stop.is_set():
            if past(expires, self.clock):
                return
            now = utc(self.clock)
            left = closes_in(window, (self.job.timezone,), now)
            if math.isinf(left):
                return  # open all day (00:00-24:00): it never closes
            if left <= 0:
                self.sender.stops.window_closed()
                return
            if expires is not None:  # woken at the deadline too: from then, no stop
                left = min(left, (expires - now).total_seconds())
            await self.clock.sleep(left)

    # -- telling ----------------------------------------------------------------------------

    def snapshot(self, total: int | None) -> Snapshot:
        s = self.summary
        waits = self.recorder.waits
        stats = self.sender.stats()
        return Snapshot(
            rows_done=self.rows_done,
            rows_free=self.rows_free,
            rows_total=total,
            groups_sent=s.sent_groups,
            groups_failed=s.failed_groups,
            groups_in_doubt=s.in_doubt_groups,
            rate_limited=stats.rate_limited,
            wait_seconds=waits[-1] if waits else None,
            elapsed_s=stats.elapsed_s,
        )

    async def report_progress(self, progress: Progress, total: int | None) -> None:
        """Hand a snapshot to ``progress`` twice a second (real time: it is for display)."""
        while True:
            progress.update(self.snapshot(total))
            await asyncio.sleep(PROGRESS_PERIOD_S)

    def finish(self) -> JobSummary:
        """The run's summary, with where the whole ledger stands now
        (:func:`~bulk_mms.ending.final_summary`)."""
        limited = self.limit is not None and self.queued >= self.limit
        stopped = self.stop.reason or (StopReason.LIMIT if limited else None)
        return final_summary(self.sender, self.job, self.clock, stopped=stopped, left=self.left)


def runner_parts(job: JobConfig, sender: GroupSender, clock: Clock) -> tuple[Sharing, Gates]:
    """What a :class:`Runner` is handed beside ``sender``, made from its recorder: the
    :class:`~bulk_mms.sharing.Sharing` of a shared ledger, through the recorder's coordinator
    (the one its attempts are fenced by), and the :class:`~bulk_mms.gates.Gates` of quiet
    hours and the deadline (the sender's count of recipients left for their window, and its
    deadline)."""
    recorder = sender.recorder
    view = recorder.view
    sharing = Sharing(
        recorder.store,
        recorder.coordinator,
        view,
        clock,
        successor=lambda group: remade_from(group, view, job),
    )
    return sharing, Gates(job, recorder, clock, sender.gates.quiet, sender.gates.expires_at)


async def run_job(
    job: JobConfig,
    settings: Settings,
    client: MmsClient,
    *,
    resend_in_doubt: bool = False,
    clock: Clock | None = None,
    stop: Stop | None = None,
    progress: Progress | None = None,
    limit: int | None = None,
    excluded: Container[int] = (),
    excluded_from: tuple[ExcludedLedger, ...] = (),
    rejected_csv: Path | None = None,
) -> JobSummary:
    """Run a job to the end of its input, or until stopped.

    The whole input is scanned first (:func:`~bulk_mms.scan.scan_input`): an input that cannot
    be read to its end, or that loses more than ``max_rejected_share`` of its rows, stops the
    run before the ledger is opened, with nothing sent.

    Args:
        job: what to send to whom.
        settings: rate, concurrency, retries.
        client: the API seam; an :class:`~bulk_mms.client.AiohttpMmsClient` with a pool of
            ``settings.concurrency`` connections (``max_connections``), as the CLI makes it: a
            request that waits for a connection past its time to leave in is not sent.
        resend_in_doubt: also send groups an earlier run left in doubt.
        clock: the one clock (pacing, backoff, deadlines, the ``send_window``, event stamps);
            by default the system's, with sleeps that a stop ends. Tests pass a fake.
            Outside the window nothing is sent (``summary.stopped == "window"``); when it
            closes mid-run, requests not yet sent stay for the next run.
        stop: set it to stop early (the CLI sets it on SIGINT/SIGTERM).
        progress: where to show progress (a bar, or ``job.progress`` events); None: nowhere.
        limit: send at most this many groups (``run --limit``, a rehearsal); the rest stay
            for the next run (``summary.stopped == "limit"``).
        excluded: numbers (E.164 digits) not to send to (``run --exclude-sent``).
        excluded_from: the ledgers ``excluded`` was counted from
            (:func:`~bulk_mms.prepare.ledger_names`), recorded in the ledger: a resume
            naming them all is not refused for leaving out fewer.
        rejected_csv: where to write every rejected row of the input, with its line and why.

    Returns:
        The run's :class:`JobSummary`. ``summary.error`` holds the :class:`FatalSendError`,
        :class:`ApiUnavailable` or :class:`LedgerError` that stopped the run, if one did.

    Raises:
        InputError, ConfigError: the input cannot be used; nothing was sent. Or (InputError)
            the input was written or replaced while the run sent from it: what was sent and
            recorded stands, nothing more is sent.
        LedgerError: the ledger is locked, corrupt or belongs to another input; nothing was sent.
    """
    stop = stop or Stop()
    clock = clock or SystemClock(stop)
    if is_database(job.where) and isinstance(clock, SystemClock):
        await keep_database_time(clock, str(job.where))  # before the window's check
    if (closed := outside_window(job, clock)) is not None:
        return closed
    suppressed = suppression_for(settings.suppression_file, job.where)
    if (scan := await scan_whole_input(job, suppressed, excluded, rejected_csv, stop)) is None:
        return JobSummary(job.name, stopped=stop.reason)
    with open_reader(job, keep_all=True, expect=scan.stamp, columns=scan.columns) as reader:
        store = open_store(job.where, "run")
        coordinator = coordinator_for(store, settings.lease_s)
        sender: GroupSender | None = None
        try:
            view = await begin(
                store,
                job,
                scan,
                reader.columns,
                clock,
                excluded_from=excluded_from,
                currency=settings.currency,
            )
            await put_back_opted_out(view, suppressed)
            # off the loop too: a look at every member of a long ledger
            scan = await asyncio.to_thread(suppressed_as_planned, scan, view, suppressed, excluded)
            recorder = build_recorder(
                job, settings, store, view, coordinator=coordinator, scan=scan, clock=clock
            )
            sender = build_sender(
                job, settings, client, recorder, clock=clock, stop=stop, suppressed=suppressed
            )
            sharing, gates = runner_parts(job, sender, clock)
            runner = Runner(
                job, settings, client, sender, sharing=sharing, gates=gates, clock=clock,
                stop=stop, limit=limit, resend_in_doubt=resend_in_doubt, scan=scan,
                excluded=excluded,
            )  # fmt: skip
            runner.log_start(store.name)
            await _run_to_end(runner, reader, progress)
            await drain(store, sender, stop)
        finally:
            await let_go(sender, store, coordinator, stop)
    return runner.finish()


async def _run_to_end(runner: Runner, reader: RowReader, progress: Progress | None) -> None:
    """Send, settle what is in doubt and watch a blocked sender's groups, keeping this
    process's claims meanwhile and showing progress throughout."""
    async with _showing(runner, progress):
        async with runner.keeping_claims():
            await runner.leftover.reconcile()
            await runner.run(reader)
            await runner.settle()
        await runner.watch_blocked()


@contextlib.asynccontextmanager
async def _showing(runner: Runner, progress: Progress | None) -> AsyncIterator[None]:
    """Show the runner's progress while the block runs, and a last snapshot after it."""
    if progress is None:
        yield
        return
    total = runner.scan.rows if runner.scan is not None else None
    shower = asyncio.create_task(runner.report_progress(progress, total))
    try:
        yield
    finally:
        shower.cancel()
        progress.update(runner.snapshot(total))
        progress.close()
