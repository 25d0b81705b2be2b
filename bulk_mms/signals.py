"""Stopping: one :class:`Stop` per command, and the one path from SIGINT/SIGTERM to it.

Every long command (``run``, ``track``, ``webhooks``) runs inside :func:`stopping_on_signals`:
the first signal asks the command to stop (waits end at once, requests in flight finish and are
recorded) and forces the stop after a grace period; a second forces it now; a third cancels
everything. The command exits with the code the signal gives (130 or 143).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from enum import StrEnum

import structlog

log = structlog.get_logger(__name__)


class StopReason(StrEnum):
    """Why a run (or ``track``) stopped before the end of its work: the one table of the
    words :attr:`~bulk_mms.summary.JobSummary.stopped` and the ``job.stopped`` line's
    ``reason`` carry. How each is told, and its exit code, is the console's
    (:func:`~bulk_mms.console.run_outcome`)."""

    #: The ``send_window`` closed (or the run began outside it): the next run inside resumes.
    WINDOW = "window"
    #: Everyone left is held for their quiet hours.
    QUIET_HOURS = "quiet_hours"
    #: The window it is outside (its ``send_window``, or every held recipient's quiet hours)
    #: opens again only after the job's deadline: nobody left can be sent in time (exit 1,
    #: not 4: no later run sends them).
    AFTER_DEADLINE = "after_deadline"
    #: ``max_job_duration_s`` came (or a wait would pass it).
    DEADLINE = "deadline"
    #: The run sent its ``--limit`` of groups (a cap's stop is :attr:`CAP`).
    LIMIT = "limit"
    #: A signal (the stop's reason is the signal's name).
    SIGINT = "SIGINT"
    SIGTERM = "SIGTERM"
    #: ``--dry-run``: nothing was to be sent.
    DRY_RUN = "dry-run"
    #: The errors that stop a job (:func:`~bulk_mms.stopping.stop_reason`): a refused key, a
    #: burst of spam filtering, any other cap (a carrier's, ``daily_recipients``,
    #: ``max_cost``), the account or every sender refused, no file descriptors left, an
    #: endpoint that answers nothing usable, an API that stopped answering, the ledger, groups
    #: refused the same way in a row (:class:`~bulk_mms.errors.RefusedRepeatedly`).
    AUTH = "auth"
    SPAM = "spam"
    CAP = "cap"
    ACCOUNT = "account"
    DESCRIPTORS = "descriptors"
    ENDPOINT = "endpoint"
    UNAVAILABLE = "unavailable"
    LEDGER = "ledger"
    REFUSED = "refused"
    #: An error no table names stopped the work; a second request to stop forced it.
    ERROR = "error"
    FORCED = "forced"


class Stop(asyncio.Event):
    """A stop request with its reason (a :class:`StopReason`).

    A stop is graceful: no new request leaves, every wait ends at once, the requests in flight
    finish and are recorded. :meth:`force` (a second Ctrl-C) also cancels those in flight:
    their attempts stay on record, in doubt, and every line already written stays written.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reason: StopReason | None = None
        self.forced = False
        self._on_force: list[Callable[[], None]] = []
        self._children: list[Stop] = []

    def request(self, reason: StopReason) -> None:
        if not self.is_set():
            self.reason = reason
            self.set()
            for child in self._children:
                child.request(reason)

    def force(self, reason: StopReason | None = None) -> None:
        """Stop now: a stop (if none was asked yet), and cancel the work in flight."""
        self.request(reason or StopReason.FORCED)
        if not self.forced:
            self.forced = True
            for callback in self._on_force:
                callback()
            for child in self._children:
                child.force(reason)

    def child(self) -> Stop:
        """A stop of part of the work: this one's request and force are the child's too (at
        once if made already), but the child's own request stops that part alone (a run's
        delivery watch, which a fatal answer to its GETs ends, while the sends go on)."""
        child = Stop()
        self._children.append(child)
        if self.reason is not None:
            child.request(self.reason)
        if self.forced:
            child.force(self.reason)
        return child

    def on_force(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the stop is forced (at once if it already is)."""
        self._on_force.append(callback)
        if self.forced:
            callback()


@contextlib.contextmanager
def stopping_on_signals(
    stop: Stop, grace: float, *, cancel_on_force: bool = False
) -> Iterator[None]:
    """SIGINT/SIGTERM: the first asks ``stop`` (waits end at once, requests in flight finish)
    and forces it after ``grace`` s; a second forces it now (requests in flight are cancelled,
    every written line kept); a third cancels everything. ``cancel_on_force``: for work that
    has nothing in flight worth finishing (tracking), forcing cancels the task."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    signals: list[str] = []

    def force(name: StopReason) -> None:
        stop.force(name)
        if cancel_on_force:
            task.cancel()

    def on_signal(name: StopReason) -> None:
        signals.append(name)
        if len(signals) == 1:
            log.warning("job.stopping", signal=name)
            stop.request(name)
            loop.call_later(grace, force, name)
        elif len(signals) == 2:
            log.warning("job.cancelled", signal=name)
            force(name)
        else:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, StopReason(sig.name))
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            if signals:
                # already on the way out with the code a signal gives: another Ctrl-C must not
                # turn the clean exit into a KeyboardInterrupt
                signal.signal(sig, signal.SIG_IGN)
