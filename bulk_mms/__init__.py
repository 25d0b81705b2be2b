"""bulk_mms: send group MMS in bulk through the Telnyx Messaging API.

Read → validate → group → pace → send/retry → ledger; then track → report. The public surface
is below; every other module is internal.
"""

from bulk_mms._version import __version__
from bulk_mms.client import AiohttpMmsClient, MmsClient
from bulk_mms.config import JobConfig, Settings, load_job, load_settings
from bulk_mms.errors import (
    AmbiguousSendError,
    ApiError,
    ApiUnavailable,
    AuthError,
    BulkMmsError,
    ConfigError,
    EndpointError,
    FatalSendError,
    InputError,
    LedgerCorrupt,
    LedgerError,
    LedgerMismatch,
    MediaError,
    MissingExtra,
    NetworkError,
    NotFound,
    RateLimited,
    RefusedRepeatedly,
    Rejected,
    RetryableSendError,
    SendError,
    ServerError,
    UsageError,
)
from bulk_mms.models import Group, MessageBody, Money, Outcome, RecipientStatus, SendReceipt
from bulk_mms.prepare import dry_run
from bulk_mms.recipient_lists import write_failed_csv
from bulk_mms.report import LedgerSummary, summarize
from bulk_mms.runner import run_job
from bulk_mms.signals import Stop
from bulk_mms.summary import JobSummary
from bulk_mms.track import TrackResult, track_ledger

__all__ = [
    "AiohttpMmsClient",
    "AmbiguousSendError",
    "ApiError",
    "ApiUnavailable",
    "AuthError",
    "BulkMmsError",
    "ConfigError",
    "EndpointError",
    "FatalSendError",
    "Group",
    "InputError",
    "JobConfig",
    "JobSummary",
    "LedgerCorrupt",
    "LedgerError",
    "LedgerMismatch",
    "LedgerSummary",
    "MediaError",
    "MessageBody",
    "MissingExtra",
    "MmsClient",
    "Money",
    "NetworkError",
    "NotFound",
    "Outcome",
    "RateLimited",
    "RecipientStatus",
    "RefusedRepeatedly",
    "Rejected",
    "RetryableSendError",
    "SendError",
    "SendReceipt",
    "ServerError",
    "Settings",
    "Stop",
    "TrackResult",
    "UsageError",
    "__version__",
    "dry_run",
    "load_job",
    "load_settings",
    "run_job",
    "summarize",
    "track_ledger",
    "write_failed_csv",
]
