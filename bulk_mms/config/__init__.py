"""Job files and account settings, loaded from TOML into frozen records.

A *job* (``jobs/*.toml``, :mod:`~bulk_mms.config.job`) says what to send to whom. The
*settings* (``config.toml``, :mod:`~bulk_mms.config.settings`) say how to talk to the API.
Every key is checked (:mod:`~bulk_mms.config._toml`): an unknown key, a wrong type or a value
out of range is a :class:`~bulk_mms.errors.ConfigError` naming the file and the setting. The API
key is never read from a file, only from ``TELNYX_API_KEY``.
"""

from bulk_mms.config.job import (
    GROUPING_CHOICE,
    MAX_GROUP_SIZE,
    MIXING_CONSEQUENCE,
    JobConfig,
    MessageConfig,
    SendWindow,
    Template,
    load_job,
    parse_template,
)
from bulk_mms.config.settings import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    RetryConfig,
    Settings,
    TrackConfig,
    cap_concurrency,
    check_base_url,
    check_settings,
    load_settings,
    sends_key_in_clear,
)

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "GROUPING_CHOICE",
    "MAX_GROUP_SIZE",
    "MIXING_CONSEQUENCE",
    "JobConfig",
    "MessageConfig",
    "RetryConfig",
    "SendWindow",
    "Settings",
    "Template",
    "TrackConfig",
    "cap_concurrency",
    "check_base_url",
    "check_settings",
    "load_job",
    "load_settings",
    "parse_template",
    "sends_key_in_clear",
]
