"""The ledger: every outcome of a job, as typed events, in a durable store, read by one fold.

* :mod:`~bulk_mms.ledger.events`: what is recorded (frozen records, one encoder/decoder);
* :mod:`~bulk_mms.ledger.fold`: :class:`LedgerView`, the only code that turns events into state;
* :mod:`~bulk_mms.ledger.store`: the :class:`LedgerStore` seam and :func:`open_store`;
* :mod:`~bulk_mms.ledger.jsonl`: the JSONL file store.
"""

from bulk_mms.ledger.events import (
    FORMAT,
    Attempt,
    Event,
    Failed,
    Header,
    InDoubt,
    Moved,
    Paced,
    Planned,
    Rejected,
    Remade,
    RunStarted,
    Sent,
    Status,
    to_json,
    zones_source,
)
from bulk_mms.ledger.fold import (
    STATES,
    GroupRecord,
    InputRows,
    LedgerView,
    Miss,
    Missed,
    RecipientCounts,
)
from bulk_mms.ledger.store import (
    LedgerStore,
    Location,
    copy_ledger,
    display,
    exists,
    holder,
    keep_database_time,
    load,
    location,
    migrate_database,
    named,
    open_store,
    read_events,
)

__all__ = [
    "FORMAT",
    "STATES",
    "Attempt",
    "Event",
    "Failed",
    "GroupRecord",
    "Header",
    "InDoubt",
    "InputRows",
    "LedgerStore",
    "LedgerView",
    "Location",
    "Miss",
    "Missed",
    "Moved",
    "Paced",
    "Planned",
    "RecipientCounts",
    "Rejected",
    "Remade",
    "RunStarted",
    "Sent",
    "Status",
    "copy_ledger",
    "display",
    "exists",
    "holder",
    "keep_database_time",
    "load",
    "location",
    "migrate_database",
    "named",
    "open_store",
    "read_events",
    "to_json",
    "zones_source",
]
