"""Job files and account settings, loaded from TOML into frozen dataclasses.

A *job* (``jobs/*.toml``) says what to send to whom. The *settings* (``config.toml``, see
``config.example.toml``) say how to talk to the API. Every key is checked: an unknown key, a
wrong type or a value out of range is a :class:`ConfigError` naming the file and the setting.
The API key is never read from a file, only from ``TELNYX_API_KEY``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import os
import re
import string
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yarl

from bulk_mms.errors import ConfigError

DEFAULT_BASE_URL = "https://api.telnyx.com/v2"
API_KEY_ENV = "TELNYX_API_KEY"
BASE_URL_ENV = "TELNYX_BASE_URL"
MAX_GROUP_SIZE = 8  # the API's limit on `to`

#: What putting unrelated people in one group MMS does, said wherever a job chooses it.
MIXING_CONSEQUENCE = "each member sees the others' numbers, and every reply goes to all of them"
GROUPING_CHOICE = (
    'say how groups form: group_by = "COLUMN" (people who already share a thread: a '
    "household, a team) or mix_unrelated = true (unrelated recipients in one group MMS: "
    f"{MIXING_CONSEQUENCE}); or group_size = 1 for a message each"
)

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SHORT_CODE = re.compile(r"^\d{3,8}$")
_ALPHANUMERIC = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
_URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Template:
    """A ``text`` or ``subject`` with ``{column}`` placeholders (plain names only)."""

    source: str
    #: Column names the template needs, in order of first use.
    fields: tuple[str, ...]

    def render(self, row: Mapping[str, str]) -> str:
        """Fill the placeholders from ``row`` (which must hold every name in ``fields``)."""
        if not self.fields:
            return self.source
        return self.source.format_map(row)


@dataclass(frozen=True, slots=True)
class MessageConfig:
    """The ``[message]`` table of a job."""

    #: The sender pool: one ``from`` or several. A group keeps the sender it was first sent from.
    senders: tuple[str, ...]
    text: Template | None = None
    subject: Template | None = None
    media_urls: tuple[str, ...] = ()
    webhook_url: str | None = None
    webhook_failover_url: str | None = None
    use_profile_webhooks: bool | None = None
    #: Placeholders filled with every member's value, joined ("Ann, Bob and Cy"), instead of
    #: the group's first row's.
    join: tuple[str, ...] = ()
    #: What an empty value becomes, per placeholder (``[message.defaults]``).
    defaults: Mapping[str, str] = field(default_factory=dict)

    @property
    def from_(self) -> str:
        """The first sender: the one used when the pool has a single number."""
        return self.senders[0]

    @property
    def fields(self) -> tuple[str, ...]:
        """Every column the templates need."""
        names: list[str] = []
        for tpl in (self.text, self.subject):
            if tpl is not None:
                names.extend(n for n in tpl.fields if n not in names)
        return tuple(names)


@dataclass(frozen=True, slots=True)
class SendWindow:
    """``send_window = "09:00-20:00"``: the local times a job may send at.

    ``end`` before ``start`` is a window across midnight (``"22:00-06:00"``).
    """

    start: dt.time
    end: dt.time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, t: dt.time) -> bool:
        t = t.replace(tzinfo=None)
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


@dataclass(frozen=True, slots=True)
class JobConfig:
    """One job file: what to send to whom."""

    name: str
    path: Path
    input: Path
    ledger: Path
    message: MessageConfig
    phone_column: str = "phone"
    group_size: int = MAX_GROUP_SIZE
    group_by: str | None = None
    #: Unrelated recipients may share a group MMS (each sees the others' numbers, and replies
    #: go to all): the job's explicit choice when it has no ``group_by``.
    mix_unrelated: bool = False
    default_region: str = "US"
    #: IANA zone for ``{date}`` in the ledger path and for ``send_window``.
    timezone: str = "UTC"
    send_window: SendWindow | None = None

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def grouping(self) -> str:
        """How groups form, in words, for the run's start line and the dry run."""
        if self.group_size == 1:
            return "one recipient per message"
        if self.group_by is not None:
            return f"by {self.group_by!r}: people who share it share a message"
        return f"unrelated recipients, up to {self.group_size} a message: {MIXING_CONSEQUENCE}"


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """``[retry]``: how often and how patiently a retryable failure is tried again."""

    #: Total tries per group, the first included.
    attempts: int = 5
    #: First backoff in seconds; doubles each retry, with full jitter.
    backoff_initial: float = 0.5
    #: Longest backoff between two tries, in seconds.
    backoff_max: float = 30.0
    #: Longest Retry-After hint honoured as given; longer hints are capped to this.
    max_retry_after: float = 300.0
    #: Retry an outcome we cannot know (dropped after sending, read timeout) with the same
    #: Idempotency-Key while the key is inside its window. Off for a server or proxy that
    #: ignores the key: such groups are then held in doubt.
    retry_ambiguous: bool = True
    #: How long after a group's first attempt its key is trusted: a safe margin under the
    #: 24 hours Telnyx keeps a key.
    idempotency_window_s: float = 23 * 3600.0


@dataclass(frozen=True, slots=True)
class TrackConfig:
    """``[track]``: how ``bulk-mms track`` polls delivery statuses."""

    #: GET requests per second: its own budget, apart from sending.
    rate: float = 10.0
    #: Seconds between passes with ``--follow``; a group whose status did not change is asked
    #: again after twice as long each time, up to ``max_interval``.
    interval: float = 30.0
    max_interval: float = 900.0
    #: Stop asking about a group this many seconds after it was sent.
    max_age: float = 72 * 3600.0


@dataclass(frozen=True, slots=True)
class Settings:
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
    #: Per-sender ceilings, by number and by number type; see :mod:`bulk_mms.pacing`.
    sender_limits: dict[str, float] = field(default_factory=dict)
    type_limits: dict[str, float] = field(default_factory=dict)
    retry: RetryConfig = field(default_factory=RetryConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    #: ``[pricing] per_recipient``: what one recipient costs, for the dry run's estimate only
    #: (what Telnyx reports after sending is what the ledger and report use).
    price_per_recipient: Decimal | None = None
    currency: str = "USD"


# --------------------------------------------------------------------------------------------
# TOML helpers


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a one-line :class:`ConfigError`."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("file", "not found", source=path) from None
    except IsADirectoryError:
        raise ConfigError("file", "is a directory, not a TOML file", source=path) from None
    except PermissionError:
        raise ConfigError("file", "permission denied", source=path) from None
    except UnicodeDecodeError:
        raise ConfigError("file", "is not UTF-8 text", source=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("syntax", str(exc), source=path) from None
    except OSError as exc:
        raise ConfigError("file", exc.strerror or str(exc), source=path) from None


class _Table:
    """Typed, checked access to one TOML table. Private."""

    def __init__(self, data: Mapping[str, Any], source: Path, prefix: str = "") -> None:
        self._data = data
        self._source = source
        self._prefix = prefix
        self._used: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self._prefix}{key}"

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self._name(key), message, source=self._source)

    def _get(self, key: str) -> Any:
        self._used.add(key)
        return self._data.get(key)

    def str_(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._get(key)
        if value is None:
            if required:
                raise self.error(key, "is required")
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {type(value).__name__}")
        return value

    def decimal(self, key: str) -> Decimal | None:
        """A non-negative amount, written as a string (exact) or a number."""
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(key, f'must be an amount like "0.0150", not {value!r}')
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            raise self.error(key, f"{value!r} is not a decimal amount") from None
        if not amount.is_finite() or amount < 0:
            raise self.error(key, f"must be a non-negative amount, not {value!r}")
        return amount

    def int_(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a whole number, not {value!r}")
        if not lo <= value <= hi:
            raise self.error(key, f"must be from {lo} to {hi}, not {value}")
        return value

    def float_(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, not {value!r}")
        if not lo <= value <= hi:
            raise self.error(key, f"must be from {lo:g} to {hi:g}, not {value:g}")
        return float(value)

    def bool_(self, key: str) -> bool | None:
        value = self._get(key)
        if value is None or isinstance(value, bool):
            return value
        raise self.error(key, f"must be true or false, not {value!r}")

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings")
        return tuple(value)

    def rate_table(self, key: str, allowed: tuple[str, ...] | None = None) -> dict[str, float]:
        """A table of name = rate (> 0), e.g. ``[limits.senders]``."""
        sub = self.table(key)
        out: dict[str, float] = {}
        for name in list(sub._data):
            if allowed is not None and name not in allowed:
                raise sub.error(name, f"unknown; use one of {', '.join(allowed)}")
            out[name] = sub.float_(name, 0.0, 1e-6, 1e6)
        sub.finish()
        return out

    def table(self, key: str) -> _Table:
        value = self._get(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(key, "must be a table")
        return _Table(value, self._source, prefix=f"{self._name(key)}.")

    def finish(self) -> None:
        """Refuse keys nobody asked for: a typo must not be silently ignored."""
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            near = difflib.get_close_matches(unknown[0], sorted(self._used), n=1, cutoff=0.6)
            hint = f"; did you mean {self._name(near[0])!r}?" if near else ""
            raise self.error(unknown[0], f"unknown setting{hint}")


# --------------------------------------------------------------------------------------------
# Jobs


def parse_template(value: str, setting: str, source: Path) -> Template:
    """Check a ``{column}`` template: plain names only, no attribute or index access."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ConfigError(setting, f"bad template: {exc}", source=source) from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or name.isdigit() or any(c in name for c in ".[]"):
            raise ConfigError(
                setting,
                f"placeholder {{{name}}} must be a plain column name "
                "(no attribute, index or positional access)",
                source=source,
            )
        if spec or conversion:
            raise ConfigError(
                setting,
                f"placeholder {{{name}}} must not have a conversion or format spec",
                source=source,
            )
        if name not in names:
            names.append(name)
    return Template(value, tuple(names))


def _check_sender(value: str, source: Path) -> str:
    if _E164.match(value) or _SHORT_CODE.match(value) or _ALPHANUMERIC.match(value):
        return value
    raise ConfigError(
        "message.from",
        f"{value!r} is not an E.164 number (+15551234567), a short code or an alphanumeric "
        "sender id",
        source=source,
    )


def _check_url(value: str | None, setting: str, source: Path) -> str | None:
    if value is not None and not _URL.match(value):
        raise ConfigError(setting, f"{value!r} is not an http(s) URL", source=source)
    return value


def load_job(
    path: str | Path,
    *,
    name: str | None = None,
    input_file: str | Path | None = None,
    now: dt.datetime | None = None,
) -> JobConfig:
    """Load and check a job file.

    Args:
        path: the job's TOML file; ``input`` and ``ledger`` are relative to its folder.
        name: use this job name instead of the file's (``run --name``).
        input_file: use this input file instead of the file's (``run --input``), relative to the
            current directory.
        now: the moment ``{date}`` in the ledger path stands for (default: now).

    Raises:
        ConfigError: the file is missing, not TOML, or any setting is wrong.
    """
    path = Path(path)
    top = _Table(read_toml(path), path)
    file_name = top.str_("name", required=name is None)
    name = name or file_name
    assert name is not None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise top.error("name", "use letters, digits, '.', '_' and '-' only (it names the ledger)")
    input_ = top.str_("input", required=input_file is None)
    input_path = Path(input_file) if input_file is not None else path.parent / str(input_)
    timezone = top.str_("timezone", "UTC") or "UTC"
    try:
        zone = zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise top.error(
            "timezone", f"{timezone!r} is not an IANA time zone, e.g. 'America/Chicago'"
        ) from None
    window_text = top.str_("send_window")
    window = _parse_window(window_text, top) if window_text is not None else None
    today = (now or dt.datetime.now(dt.UTC)).astimezone(zone).date()
    ledger = _ledger_path(top.str_("ledger") or "ledgers/{name}.jsonl", name, today, top)
    phone_column = top.str_("phone_column", "phone") or "phone"
    group_size = top.int_("group_size", MAX_GROUP_SIZE, 1, MAX_GROUP_SIZE)
    group_by = top.str_("group_by")
    mix_unrelated = top.bool_("mix_unrelated") or False
    region = (top.str_("default_region", "US") or "US").upper()
    if region not in ("US", "CA"):
        raise top.error("default_region", "group MMS reaches the US and Canada only: US or CA")

    message = _load_message(top.table("message"), path)
    top.finish()  # a misspelt key first: "group_bye" must not read as a missing choice
    if group_by is not None and mix_unrelated:
        raise top.error(
            "mix_unrelated", "contradicts group_by: groups form by group_by's column; drop one"
        )
    if group_by is None and not mix_unrelated and group_size > 1:
        raise top.error("group_by", GROUPING_CHOICE)
    base = path.parent
    return JobConfig(
        name=name,
        path=path,
        input=input_path,
        ledger=base / ledger,
        timezone=timezone,
        send_window=window,
        message=message,
        phone_column=phone_column,
        group_size=group_size,
        group_by=group_by,
        mix_unrelated=mix_unrelated,
        default_region=region,
    )


def _load_message(msg: _Table, path: Path) -> MessageConfig:
    """The ``[message]`` table, checked."""
    senders = msg.str_list("from")
    if not senders:
        raise msg.error("from", "is required (a number, or a list of numbers for a pool)")
    if len(set(senders)) != len(senders):
        raise msg.error("from", "lists a sender twice")
    text = msg.str_("text")
    subject = msg.str_("subject")
    if text is not None and not text.strip():
        raise msg.error("text", "must not be empty (leave it out to send media only)")
    media = msg.str_list("media_urls")
    for i, url in enumerate(media):
        _check_url(url, f"message.media_urls[{i}]", path)
    if text is None and not media:
        raise msg.error("text", "a message needs text or media_urls")
    message = MessageConfig(
        senders=tuple(_check_sender(s, path) for s in senders),
        text=parse_template(text, "message.text", path) if text is not None else None,
        subject=parse_template(subject, "message.subject", path) if subject is not None else None,
        media_urls=media,
        webhook_url=_check_url(msg.str_("webhook_url"), "message.webhook_url", path),
        webhook_failover_url=_check_url(
            msg.str_("webhook_failover_url"), "message.webhook_failover_url", path
        ),
        use_profile_webhooks=msg.bool_("use_profile_webhooks"),
        join=msg.str_list("join"),
        defaults=_defaults(msg.table("defaults")),
    )
    for i, name in enumerate(message.join):
        if name not in message.fields:
            raise msg.error(f"join[{i}]", f"{name!r} is not a placeholder of text or subject")
    for name in message.defaults:
        if name not in message.fields:
            raise msg.error(f"defaults.{name}", "is not a placeholder of text or subject")
    msg.finish()
    return message


def _defaults(table: _Table) -> dict[str, str]:
    """``[message.defaults]``: placeholder = text for an empty value."""
    out = {name: table.str_(name) or "" for name in list(table._data)}
    table.finish()
    return out


def _ledger_path(template: str, name: str, today: dt.date, top: _Table) -> str:
    """``ledger`` with ``{name}`` and ``{date}`` (YYYY-MM-DD in the job's timezone) filled in."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise top.error("ledger", f"bad placeholder: {exc}") from None
    unknown = fields - {"name", "date"}
    if unknown:
        raise top.error(
            "ledger", f"unknown placeholder {{{sorted(unknown)[0]}}}: use {{name}} or {{date}}"
        )
    return template.format(name=name, date=today.isoformat())


def _parse_window(text: str, top: _Table) -> SendWindow:
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if m is None:
        raise top.error("send_window", f"{text!r} is not HH:MM-HH:MM (e.g. '09:00-20:00')")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        raise top.error("send_window", f"{text!r} has a time that does not exist")
    start = dt.time(h1, m1)
    end = dt.time.max if h2 == 24 else dt.time(h2, m2)
    if start == end:
        raise top.error("send_window", "start and end are the same: the window would be empty")
    return SendWindow(start, end)


# --------------------------------------------------------------------------------------------
# Settings


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
        top = _Table(read_toml(path), path)
        api = top.table("api")
        limits = top.table("limits")
        retry = top.table("retry")
        track = top.table("track")
        pricing = top.table("pricing")
        tdflt = TrackConfig()
        settings = Settings(
            base_url=api.str_("base_url", DEFAULT_BASE_URL) or DEFAULT_BASE_URL,
            connect_timeout=api.float_("connect_timeout", settings.connect_timeout, 0.1, 600),
            request_timeout=api.float_("request_timeout", settings.request_timeout, 0.1, 3600),
            rate=limits.float_("rate", settings.rate, 0.001, 10_000),
            concurrency=limits.int_("concurrency", settings.concurrency, 1, 1000),
            cost=_choice(limits, "cost", ("request", "recipient")),
            max_queue_wait_s=limits.float_(
                "max_queue_wait_s", settings.max_queue_wait_s, 1, 14_400
            ),
            max_job_duration_s=limits.float_("max_job_duration_s", 0.0, 0, 30 * 86_400),
            max_group_age_s=limits.float_(
                "max_group_age_s", settings.max_group_age_s, 0, 30 * 86_400
            ),
            sender_limits=limits.rate_table("senders"),
            type_limits=limits.rate_table(
                "sender_types", ("long_code", "toll_free", "short_code", "alphanumeric")
            ),
            retry=RetryConfig(
                attempts=retry.int_("attempts", dflt.attempts, 1, 100),
                backoff_initial=retry.float_("backoff_initial", dflt.backoff_initial, 0, 3600),
                backoff_max=retry.float_("backoff_max", dflt.backoff_max, 0, 86_400),
                max_retry_after=retry.float_("max_retry_after", dflt.max_retry_after, 0, 86_400),
                retry_ambiguous=_bool(retry, "retry_ambiguous", dflt.retry_ambiguous),
                idempotency_window_s=retry.float_(
                    "idempotency_window_s", dflt.idempotency_window_s, 0, 86_400
                ),
            ),
            track=TrackConfig(
                rate=track.float_("rate", tdflt.rate, 0.01, 1000),
                interval=track.float_("interval", tdflt.interval, 1, 86_400),
                max_interval=track.float_("max_interval", tdflt.max_interval, 1, 86_400),
                max_age=track.float_("max_age", tdflt.max_age, 60, 30 * 86_400),
            ),
        )
        settings = replace(
            settings,
            price_per_recipient=pricing.decimal("per_recipient"),
            currency=(pricing.str_("currency", "USD") or "USD").upper(),
        )
        for table in (api, limits, retry, track, pricing, top):
            table.finish()
    if env.get(BASE_URL_ENV):
        settings = replace(settings, base_url=env[BASE_URL_ENV])
    return check_settings(settings)


def _bool(table: _Table, key: str, default: bool) -> bool:
    value = table.bool_(key)
    return default if value is None else value


def _choice(table: _Table, key: str, choices: tuple[str, ...]) -> str:
    value = table.str_(key, choices[0]) or choices[0]
    if value not in choices:
        raise table.error(key, f"must be one of {', '.join(map(repr, choices))}, not {value!r}")
    return value


def check_base_url(url: str) -> str:
    """The API base URL, checked before any request: http(s), a host, no credentials.

    The message never repeats a URL that carries credentials. The API key comes from
    ``TELNYX_API_KEY`` only, so ``user:password@`` in the URL is a mistake either way.

    Raises:
        ConfigError: the URL cannot be used.
    """
    shown = repr(url) if "@" not in url and len(url) <= 200 else "the URL"
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
    if not _URL.match(url) or parsed.scheme not in ("http", "https") or not parsed.host:
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
    """Check values that may also come from the command line."""
    base_url = check_base_url(settings.base_url)
    if not 0 < settings.rate <= 10_000:
        raise ConfigError(
            "rate", f"must be greater than 0 and at most 10000, not {settings.rate:g}"
        )
    if not 1 <= settings.concurrency <= 1000:
        raise ConfigError("concurrency", f"must be from 1 to 1000, not {settings.concurrency}")
    return replace(settings, base_url=base_url)
