"""bulk_mms: send group MMS in bulk through the Telnyx Messaging API.

Read → validate → group → pace → send/retry → ledger. The public surface is below; every other
module is internal.
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
    InputError,
    LedgerCorrupt,
    LedgerError,
    LedgerMismatch,
    NetworkError,
    RateLimited,
    Rejected,
    RetryableSendError,
    SendError,
    ServerError,
    UsageError,
)
from bulk_mms.models import Group, MessageBody, Money, Outcome, RecipientStatus, SendReceipt
from bulk_mms.runner import JobSummary, Stop, dry_run, run_job

__all__ = [
    "AiohttpMmsClient",
    "AmbiguousSendError",
    "ApiError",
    "ApiUnavailable",
    "AuthError",
    "BulkMmsError",
    "ConfigError",
    "Group",
    "InputError",
    "JobConfig",
    "JobSummary",
    "LedgerCorrupt",
    "LedgerError",
    "LedgerMismatch",
    "MessageBody",
    "MmsClient",
    "Money",
    "NetworkError",
    "Outcome",
    "RateLimited",
    "RecipientStatus",
    "Rejected",
    "RetryableSendError",
    "SendError",
    "SendReceipt",
    "ServerError",
    "Settings",
    "Stop",
    "UsageError",
    "__version__",
    "dry_run",
    "load_job",
    "load_settings",
    "run_job",
]
