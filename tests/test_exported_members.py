"""The public surface is pinned: adding or removing a name is a deliberate change."""

import bulk_mms


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted and every name in it exists."""
    assert bulk_mms.__all__ == sorted(bulk_mms.__all__)
    for name in bulk_mms.__all__:
        assert hasattr(bulk_mms, name), name


def test_public_names() -> None:
    """The exported names are exactly these."""
    assert set(bulk_mms.__all__) == {
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
        "RefusedRepeatedly",
        "RecipientStatus",
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
    }
