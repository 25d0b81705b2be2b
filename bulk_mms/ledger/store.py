"""The ledger store seam: where a job's events are kept, and the one way to open it.

A :class:`LedgerStore` appends events durably and gives them back in order. Nothing outside a
store knows where or how it keeps them: the runner, ``track``, ``webhooks`` and ``report`` see
:mod:`events <bulk_mms.ledger.events>` going in and a :class:`~bulk_mms.ledger.LedgerView`
coming out. The JSONL file (:class:`~bulk_mms.ledger.jsonl.JsonlStore`) is the store; a new
backend is one module implementing this protocol and one branch in :func:`open_store`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol

from bulk_mms.errors import LedgerError
from bulk_mms.ledger.events import Event
from bulk_mms.ledger.fold import LedgerView
from bulk_mms.ledger.jsonl import JsonlStore

#: ``run``: this process sends for the job (exclusive where the store needs it; created if
#: missing). ``append``: delivery statuses beside a run (the ledger must exist and hold a
#: header). ``read``: reports.
Mode = Literal["run", "append", "read"]
#: Where a ledger is: a file path (JSONL), or a URL naming another store.
Location = Path | str


class LedgerStore(Protocol):
    """An open ledger."""

    #: How to name it to a person (never with a password in it).
    name: str
    #: Set once an append failed: nothing more may be sent.
    failed: LedgerError | None
    events_written: int
    #: Durable commits made (group commit: one covers many events).
    commits: int

    def events(self, *, skip_status: bool = False) -> Iterator[Event]:
        """Every event in order; ``skip_status`` passes over delivery statuses (a resume)."""
        ...

    def new_events(self) -> Iterator[Event]:
        """The events appended since the last call, by anyone (``webhooks`` follows a run)."""
        ...

    def append_now(self, event: Event) -> None:
        """Append and make durable now, blocking (the header, a run's start)."""
        ...

    def append_nowait(self, event: Event) -> None:
        """Append; durable with the next commit."""
        ...

    async def append(self, event: Event) -> None:
        """Append and return once it is durable.

        Raises:
            LedgerError: it could not be made durable; the store takes no more events.
        """
        ...

    async def drain(self) -> None:
        """Wait until every appended event is durable."""
        ...

    async def close(self) -> None:
        """Make everything durable, release what the store holds and close."""
        ...

    def close_sync(self) -> None:
        """Release and close without waiting (queued events may be lost)."""
        ...


def open_store(location: Location, mode: Mode = "run") -> LedgerStore:
    """Open the ledger at ``location``.

    Raises:
        LedgerLocked: ``run``, and another run holds it.
        LedgerError: it cannot be opened as ``mode`` needs.
    """
    return JsonlStore.open(Path(location), mode)


def holder(location: Location) -> str | None:
    """Who runs the job at ``location`` now (a PID), or None: what a dry run warns about."""
    return JsonlStore.holder(Path(location))


def load(location: Location, *, statuses: bool = True) -> LedgerView:
    """Fold a whole ledger (read only). ``statuses=False`` skips delivery statuses (faster).

    Raises:
        LedgerError: it is missing or unreadable; LedgerCorrupt names a bad event.
    """
    return LedgerView.fold(open_store(location, "read").events(skip_status=not statuses))
