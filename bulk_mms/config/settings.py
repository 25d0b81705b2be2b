"""Account settings (``config.toml``, see ``config.example.toml``): how to talk to the API. The
API key is never read from a file, only from ``TELNYX_API_KEY``."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import resource
import zoneinfo
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import msgspec
import structlog
import yarl
from msgspec.structs import replace

from bulk_mms.codes import (
    DEFAULT_POLICY,
    HELP_WORDS,
    OPT_IN_WORDS,
    OPT_OUT_WORDS,
    Action,
    keyword,
)
from bulk_mms.config._toml import URL, Bounds, Table, read_choice, read_toml
from bulk_mms.config.job import SENDER_FORMS, iana_zone, is_sender
from bulk_mms.csvfile import check_output
from bulk_mms.errors import ConfigError
from bulk_mms.models import is_currency
from bulk_mms.policy import load_policy

#: When a carrier's day starts: T-Mobile resets its daily caps at midnight US/Pacific.
DAILY_RESET = "00:00 America/Los_Angeles"
DEFAULT_BASE_URL = "https://api.telnyx.com/v2"
API_KEY_ENV = "TELNYX_API_KEY"
BASE_URL_ENV = "TELNYX_BASE_URL"
#: The bounds of each setting a command-line flag also gives, by the setting's name in the
#: settings file: the one place each limit is kept, checked by :func:`check_settings` alone,
#: whether the value came from the file (its error names the file and the setting) or a
#: flag (named as given: ``run --rate``, ``track --rate``, ``--concurrency``).
RATE = Bounds(0.001, 10_000)  # [limits] rate, run --rate: groups per second, account-wide
TRACK_RATE = Bounds(0.01, 1000)  # [track] rate, track --rate: GETs per second
CONCURRENCY = Bounds(1, 1000)  # [limits] concurrency, --concurrency: requests in flight
#: File descriptors kept back from ``concurrency`` for everything but the API's sockets: the
#: ledger and its lock, the input, logs, metrics, the event loop's own, a sandbox's server.
RESERVED_DESCRIPTORS = 32


class RetryConfig(msgspec.Struct, frozen=True):
    """``[retry]``: how often and how patiently a retryable failure is tried again."""

    #: Total tries per group, the first included.
    attempts: int = 5
    #: First backoff in seconds; doubles each retry, with full jitter.
    backoff_initial: float = 0.5
    #: Longest backoff between two tries, in seconds.
    backoff_max: float = 30.0
    #: Longest Retry-After hint honoured as given; longer hints are capped to this.
    max_retry_after: float = 300.0
    #: Whether the server replays an ``Idempotency-Key`` (``[api] idempotency =
    #: "replayed"``): then an outcome we cannot know (dropped after sending, read timeout) is
    #: retried under the same key while the key is inside its window. Telnyx declares no key
    #: for group MMS, so by default it is not trusted: such a group is in doubt until the
    #: API's records settle it (:mod:`bulk_mms.settle`).
    retry_ambiguous: bool = False
    #: How long after a group's first attempt its key is trusted: a safe margin under the
    #: 24 hours Telnyx keeps a key.
    idempotency_window_s: float = 23 * 3600.0


#: How long the API serves a message (``GET /messages/{id}``: "no older than 10 days"), so
#: the longest ``[track] max_age``.
API_KEEPS_S = 10 * 86_400


class TrackConfig(msgspec.Struct, frozen=True):
    """``[track]``: how ``bulk-mms track`` polls delivery statuses."""

    #: GET requests per second: its own budget, apart from sending.
    rate: float = 10.0
    #: Seconds between passes with ``--follow``; a group whose status did not change is asked
    #: again after twice as long each time, up to ``max_interval``.
    interval: float = 30.0
    max_interval: float = 900.0
    #: Stop asking about a group this many seconds after it was sent; at most
    #: :data:`API_KEEPS_S` (the API serves a message no longer).
    max_age: float = 72 * 3600.0


class Settings(msgspec.Struct, frozen=True):
    """Account-level settings: ``config.toml`` overlaid by the environment and the command line."""

    base_url: str = DEFAULT_BASE_URL
    connect_timeout: float = 10.0
    request_timeout: float = 30.0
    #: Groups per second, account-wide.
    rate: float = 10.0
    #: Requests in flight at once.
    concurrency: int = 8
    #: What one group costs against the rates: ``"request"`` (1) or ``"recipient"`` (its size).
    cost: str = "request"
    #: Target for the queue wait Telnyx reports; above it a sender slows down and pauses.
    max_queue_wait_s: float = 30.0
    #: Stop the job (resumably) after this many seconds; 0 means no limit.
    max_job_duration_s: float = 0.0
    #: Give up on a group still being rate limited this long after its first try (0: no limit).
    max_group_age_s: float = 3600.0
    #: With a shared (PostgreSQL) ledger: seconds without a heartbeat after which a process's
    #: claimed groups pass to the other processes running the job.
    lease_s: float = 30.0
    #: With a shared (PostgreSQL) ledger: processes naming the same account share its ``rate``
    #: (and each sender's pauses) through the database.
    account: str = "default"
    #: The account's suppression list (``[suppression] file``): numbers never texted.
    suppression_file: Path | None = None
    #: Inbound keywords that opt out, and that opt back in: Telnyx's own
    #: (:data:`~bulk_mms.codes.OPT_OUT_WORDS`), and ``[suppression] opt_out_words`` and
    #: ``opt_in_words``, the keywords a messaging profile's own auto-responses add, each as
    #: :func:`~bulk_mms.codes.keyword` reads a text.
    opt_out_words: frozenset[str] = OPT_OUT_WORDS
    opt_in_words: frozenset[str] = OPT_IN_WORDS
    #: Recipients every job on the account may send per day (a carrier's daily cap), and when
    #: the day starts (``"00:00 America/Los_Angeles"``: T-Mobile's reset); None: no cap.
    daily_recipients: int | None = None
    daily_reset: str = DAILY_RESET
    #: Stop (resumably) when at least this share of the last ``spam_window`` tries met spam
    #: filtering (the policy's ``slow`` codes): the list is not burnt while carriers block.
    spam_share: float = 0.5
    spam_window: int = 20
    #: Telnyx error code → what to do about it (:mod:`bulk_mms.policy`; ``[errors]``).
    error_policy: Mapping[str, Action] = msgspec.field(default_factory=lambda: dict(DEFAULT_POLICY))
    #: Per-sender ceilings, by number and by number type; see :mod:`bulk_mms.pacing`.
    sender_limits: dict[str, float] = msgspec.field(default_factory=dict)
    type_limits: dict[str, float] = msgspec.field(default_factory=dict)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    track: TrackConfig = msgspec.field(default_factory=TrackConfig)
    #: ``[pricing] per_recipient``: what one recipient costs, for the dry run's estimate only
    #: (what Telnyx reports after sending is what the ledger and report use).
    price_per_recipient: Decimal | None = None
    #: ``[pricing] currency``: an ISO 4217 code, that of ``price_per_recipient`` and of every
    #: job's ``max_cost``.
    currency: str = "USD"
    #: ``[api] records_lag_s``: how long after a request the API's message detail records
    #: may still lack it (Telnyx: the last 4 hours may be missing). A group in doubt is taken
    #: for never accepted only when no record of it is found this long after its last try.
    records_lag_s: float = 4 * 3600.0
    #: ``[api] messaging_profile_id``: the profile whose opt-outs ``optouts sync`` reads
    #: (``filter[messaging_profile_id]``); None reads the account's.
    messaging_profile_id: str | None = None


# --------------------------------------------------------------------------------------------
# TOML helpers


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load account settings: defaults, then the file (if any), then ``TELNYX_BASE_URL``.

    Raises:
        ConfigError: the file is missing or not TOML, or a setting is unknown or out of range.
    """
    env = os.environ if env is None else env
    settings = Settings()
    dflt = settings.retry
    if path is not None:
        path = Path(path)
        top = Table(read_toml(path, "settings file"), path)
        api = top.table("api")
        limits = top.table("limits")
        retry = top.table("retry")
        track = top.table("track")
        pricing = top.table("pricing")
        errors = top.table("errors")
        suppression = top.table("suppression")
        listed = suppression.file_name("file")
        listed_path = path.parent / listed if listed else None
        if listed_path is not None:  # appended to, rewritten: never a ledger
            check_output("suppression.file", listed_path, source=path)
        tdflt = TrackConfig()
        base_url = api.str_("base_url", DEFAULT_BASE_URL) or ""  # "": refused, not the live API
        try:  # said with the file and the section, as every other setting's error is
            check_base_url(base_url)
        except ConfigError as exc:
            raise api.error("base_url", exc.message) from None
        settings = Settings(
            base_url=base_url,
            connect_timeout=api.float_("connect_timeout", settings.connect_timeout, 0.1, 600),
            request_timeout=api.float_("request_timeout", settings.request_timeout, 0.1, 3600),
            rate=limits.float_("rate", settings.rate),  # RATE: check_settings
            concurrency=limits.int_("concurrency", settings.concurrency),  # CONCURRENCY
            cost=read_choice(limits, "cost", ("request", "recipient")),
            max_queue_wait_s=limits.float_(
                "max_queue_wait_s", settings.max_queue_wait_s, 1, 14_400
            ),
            max_job_duration_s=limits.float_(
                "max_job_duration_s", settings.max_job_duration_s, 0, 30 * 86_400
            ),
            max_group_age_s=limits.float_(
                "max_group_age_s", settings.max_group_age_s, 0, 30 * 86_400
            ),
            lease_s=limits.float_("lease_s", settings.lease_s, 1, 3600),
            account=limits.str_("account", settings.account) or settings.account,
            daily_recipients=limits.int_("daily_recipients", 0, 0, 10_000_000) or None,
            daily_reset=_daily_reset(limits),
            spam_share=limits.float_("spam_share", settings.spam_share, 0.01, 1.0),
            spam_window=limits.int_("spam_window", settings.spam_window, 2, 10_000),
            error_policy=load_policy(errors.strings(), source=f"{path}: errors"),
            suppression_file=listed_path,
            sender_limits=_sender_limits(limits),
            type_limits=limits.rate_table(
                "sender_types", ("long_code", "toll_free", "short_code", "alphanumeric")
            ),
            retry=RetryConfig(
                attempts=retry.int_("attempts", dflt.attempts, 1, 100),
                backoff_initial=retry.float_("backoff_initial", dflt.backoff_initial, 0, 3600),
                backoff_max=retry.float_("backoff_max", dflt.backoff_max, 0, 86_400),
                max_retry_after=retry.float_("max_retry_after", dflt.max_retry_after, 0, 86_400),
                retry_ambiguous=_key_replayed(api, retry),
                idempotency_window_s=retry.float_(
                    "idempotency_window_s", dflt.idempotency_window_s, 0, 86_400
                ),
            ),
            track=TrackConfig(
                rate=track.float_("rate", tdflt.rate),  # TRACK_RATE: check_settings
                interval=track.float_("interval", tdflt.interval, 1, 86_400),
                max_interval=track.float_("max_interval", tdflt.max_interval, 1, 86_400),
                max_age=track.float_("max_age", tdflt.max_age, 60, API_KEEPS_S),
            ),
        )
        settings = replace(
            settings,
            price_per_recipient=pricing.decimal("per_recipient"),
            records_lag_s=api.float_("records_lag_s", settings.records_lag_s, 0, 7 * 86_400),
            currency=_currency(pricing, settings.currency),
            messaging_profile_id=api.str_("messaging_profile_id") or None,
            opt_out_words=OPT_OUT_WORDS | _keywords(suppression, "opt_out_words"),
            opt_in_words=OPT_IN_WORDS | _keywords(suppression, "opt_in_words"),
        )
        if both := settings.opt_out_words & settings.opt_in_words:
            raise suppression.error(
                "opt_in_words", f"{min(both)!r} cannot both opt out and opt back in"
            )
        for table in (api, limits, retry, track, pricing, errors, suppression, top):
            table.finish()
    if BASE_URL_ENV in env:  # set but empty (``$STAGING`` unset) is never the live API
        if not env[BASE_URL_ENV].strip():
            raise ConfigError(BASE_URL_ENV, "is set but empty: unset it to use the live API")
        try:
            check_base_url(env[BASE_URL_ENV])
        except ConfigError as exc:
            raise ConfigError(BASE_URL_ENV, exc.message) from None
        settings = replace(settings, base_url=env[BASE_URL_ENV])
    try:
        return check_settings(settings)
    except ConfigError as exc:  # a value of the file's (the defaults are in bounds)
        raise ConfigError(exc.setting, exc.message, source=path) from None


def _currency(pricing: Table, default: str) -> str:
    """``[pricing] currency``: an ISO 4217 code as written (:func:`~bulk_mms.models.
    is_currency`), the currency ``max_cost`` is counted in; one in lower case is refused
    with the code to write, never taken for another."""
    code = pricing.str_("currency", default) or ""
    if is_currency(code):
        return code
    if is_currency(code.upper()):
        why = f"{code!r} is not an ISO 4217 currency code as written: write {code.upper()!r}"
    else:
        why = (
            f"{code!r} is not an ISO 4217 currency code: three capital letters, e.g. 'USD' or 'EUR'"
        )
    raise pricing.error("currency", why)


def _key_replayed(api: Table, retry: Table) -> bool:
    """``[api] idempotency``: ``"untrusted"`` (the default: Telnyx declares no
    Idempotency-Key for group MMS) or ``"replayed"`` (a server known to replay it). The older
    ``[retry] retry_ambiguous`` says the same; the two must agree."""
    choice = api.str_("idempotency")
    if choice is not None and choice not in ("untrusted", "replayed"):
        raise api.error("idempotency", f'must be "untrusted" or "replayed", not {choice!r}')
    older = retry.bool_("retry_ambiguous")
    if choice is not None and older is not None and older != (choice == "replayed"):
        raise retry.error(
            "retry_ambiguous", f'contradicts [api] idempotency = "{choice}": drop retry_ambiguous'
        )
    return choice == "replayed" if choice is not None else bool(older)


def _keywords(suppression: Table, key: str) -> frozenset[str]:
    """A list of inbound keywords, each as :func:`~bulk_mms.codes.keyword` reads a text
    (``"arret"`` is ``ARRET``), checked: one that no text could match (empty, over 64
    characters) is refused, and HELP or INFO, which Telnyx answers with its help text, is no
    opt-out or opt-in."""
    words = set()
    for text in suppression.str_list(key):
        word = keyword(text)
        if not word:
            raise suppression.error(key, f"{text[:70]!r} is no keyword: 1 to 64 characters")
        if word in HELP_WORDS:
            raise suppression.error(key, f"{word} is a help keyword: it opts nobody in or out")
        words.add(word)
    return frozenset(words)


def _sender_limits(limits: Table) -> dict[str, float]:
    """``[limits.senders]``: number = rate, each number written as a job's ``from`` writes it
    (another spelling, ``13125551234`` for ``+13125551234``, would never be matched)."""
    rates = limits.rate_table("senders")
    for number in rates:
        if not is_sender(number):
            raise limits.error(
                f"senders.{number}", f"{number!r} is not {SENDER_FORMS}, as a job's from names it"
            )
    return rates


def _daily_reset(limits: Table) -> str:
    """``daily_reset = "HH:MM Zone"``, checked."""
    text = limits.str_("daily_reset", DAILY_RESET) or DAILY_RESET
    try:
        day_start(text, dt.datetime.now(dt.UTC))
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise limits.error(
            "daily_reset", f"{text!r} is not 'HH:MM Zone', e.g. '00:00 America/Los_Angeles'"
        ) from None
    return text


def day_start(reset: str, now: dt.datetime) -> dt.datetime:
    """The start of the current day under ``reset`` (``"HH:MM Zone"``), as of ``now``: the
    latest instant at or before ``now`` that the reset's wall time first reads on its date (a
    wall time the clocks skip: as far past the jump as it falls in the skipped hour).

    Raises:
        ValueError, ZoneInfoNotFoundError: ``reset`` is not ``"HH:MM Zone"``.
    """
    clock, _, zone_name = reset.strip().partition(" ")
    hour, minute = (int(x) for x in clock.split(":"))
    zone = iana_zone(zone_name.strip())
    day = now.astimezone(zone).date()
    start = dt.datetime.combine(day, dt.time(hour, minute), zone)
    # by the instant, not the wall time (one zone's datetimes compare by wall time): in the
    # hour the clocks repeat, the reset's wall time comes round again after the day began
    if start.astimezone(dt.UTC) > now.astimezone(dt.UTC):
        start = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(hour, minute), zone)
    return start


def next_day_start(reset: str, now: dt.datetime) -> dt.datetime:
    """The start of the next day under ``reset`` (``"HH:MM Zone"``), as of ``now``: when a
    daily cap lifts (:func:`day_start`'s day, one day on).

    Raises:
        ValueError, ZoneInfoNotFoundError: ``reset`` is not ``"HH:MM Zone"``.
    """
    return day_start(reset, now) + dt.timedelta(days=1)


def check_base_url(url: str) -> str:
    """The API base URL, checked before any request: http(s), a host, no credentials.

    The message never repeats a URL that may carry a secret: credentials, a query or a
    fragment (a key put there by mistake). The API key comes from ``TELNYX_API_KEY`` only,
    so ``user:password@`` in the URL is a mistake either way.

    Raises:
        ConfigError: the URL cannot be used.
    """
    shown = repr(url) if not set("@?#") & set(url) and len(url) <= 200 else "the URL"
    try:
        parsed = yarl.URL(url)
        port = parsed.port
    except (ValueError, TypeError):
        raise ConfigError("base_url", f"{shown} is not a valid URL") from None
    if parsed.user is not None or parsed.password is not None:
        raise ConfigError(
            "base_url",
            "must not carry credentials (user:password@host): the API key is read from "
            f"{API_KEY_ENV} only",
        )
    if not URL.match(url) or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError("base_url", f"{shown} is not an http(s) URL with a host")
    if port is None or not 0 < port < 65536:
        raise ConfigError("base_url", f"{shown} has no usable port")
    if parsed.query_string or parsed.fragment:
        raise ConfigError("base_url", f"{shown} must not have a query or a fragment")
    return url.rstrip("/")


def sends_key_in_clear(url: str) -> bool:
    """Whether requests to ``url`` would carry the API key unencrypted across a network.

    Plain http is fine to a loopback address (the sandbox, a local proxy), nowhere else.
    """
    parsed = yarl.URL(url)
    if parsed.scheme != "http":
        return False
    host = (parsed.host or "").strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def check_settings(settings: Settings) -> Settings:
    """Check the values that may also come from the command line: the base URL, and each
    against its bounds (:data:`RATE`, :data:`TRACK_RATE`, :data:`CONCURRENCY`).

    Raises:
        ConfigError: naming the setting as the settings file names it (``limits.rate``,
            ``track.rate``, ``limits.concurrency``; ``base_url``).
    """
    base_url = check_base_url(settings.base_url)
    RATE.check("limits.rate", settings.rate)
    TRACK_RATE.check("track.rate", settings.track.rate)
    CONCURRENCY.check("limits.concurrency", settings.concurrency)
    return replace(settings, base_url=base_url)


def cap_concurrency(settings: Settings, nofile: int | None = None) -> Settings:
    """``settings`` with ``concurrency`` lowered to what the descriptor limit allows.

    Each request in flight holds a socket, so ``concurrency`` plus
    :data:`RESERVED_DESCRIPTORS` must fit under the soft ``RLIMIT_NOFILE`` (``ulimit -n``);
    when it does not, concurrency becomes what fits (at least 1) and ``config.concurrency_capped``
    is logged at warning level, instead of the run failing on its sockets.

    Args:
        settings: checked settings.
        nofile: the soft descriptor limit; by default the process's own.
    """
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY or nofile < 0:
        return settings
    fits = max(1, nofile - RESERVED_DESCRIPTORS)
    if settings.concurrency <= fits:
        return settings
    needed = settings.concurrency + RESERVED_DESCRIPTORS
    structlog.get_logger(__name__).warning(
        "config.concurrency_capped",
        concurrency=settings.concurrency,
        capped_to=fits,
        nofile_limit=nofile,
        reserved=RESERVED_DESCRIPTORS,
        hint=f"ulimit -n is {nofile}: raise it (ulimit -n {needed}) for --concurrency "
        f"{settings.concurrency}, or give a lower --concurrency",
    )
    return replace(settings, concurrency=fits)
