"""Job files (``jobs/*.toml``): what to send to whom, loaded into frozen records."""

from __future__ import annotations

import codecs
import datetime as dt
import re
import string
import unicodedata
import zoneinfo
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import msgspec
import msgspec.structs

from bulk_mms.config._toml import URL, Table, read_toml
from bulk_mms.csvfile import DELIMITERS, toml_string
from bulk_mms.errors import ConfigError
from bulk_mms.ledger.store import Location, is_database, location, named, refuse_folder

MAX_GROUP_SIZE = 8  # the API's limit on `to`

#: What putting unrelated people in one group MMS does, said wherever a job chooses it.
MIXING_CONSEQUENCE = "each member sees the others' numbers, and every reply goes to all of them"
GROUPING_CHOICE = (
    'say how groups form: group_by = "COLUMN" (people who already share a thread: a '
    "household, a team) or mix_unrelated = true (unrelated recipients in one group MMS: "
    f"{MIXING_CONSEQUENCE}); or group_size = 1 for a message each"
)

#: What a sender may be, each matched whole and in ASCII digits (``\d`` takes any script's,
#: ``$`` a trailing line end): an E.164 number, a short code, an alphanumeric sender id.
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_SHORT_CODE = re.compile(r"[0-9]{3,8}")
_ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
#: What a sender may be, in words.
SENDER_FORMS = "an E.164 number (+15551234567), a short code or an alphanumeric sender id"


class Template(msgspec.Struct, frozen=True):
    """A ``text`` or ``subject`` with ``{column}`` placeholders (plain names only)."""

    source: str
    #: Column names the template needs, in order of first use.
    fields: tuple[str, ...]

    def render(self, row: Mapping[str, str]) -> str:
        """Fill the placeholders from ``row`` (which must hold every name in ``fields``)."""
        if not self.fields:
            return self.source
        return self.source.format_map(row)


class MessageConfig(msgspec.Struct, frozen=True):
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
    defaults: Mapping[str, str] = msgspec.field(default_factory=dict)

    @property
    def from_(self) -> str:
        """The first sender: the one used when the pool has a single number."""
        return self.senders[0]

    #: Every column the templates need: worked out from them once, whatever is passed (every
    #: group asks).
    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names: list[str] = []
        for tpl in (self.text, self.subject):
            if tpl is not None:
                names.extend(n for n in tpl.fields if n not in names)
        msgspec.structs.force_setattr(self, "fields", tuple(names))


class SendWindow(msgspec.Struct, frozen=True):
    """``send_window = "09:00-20:00"``: the local times a job may send at.

    ``end`` before ``start`` is a window across midnight (``"22:00-06:00"``).
    """

    start: dt.time
    end: dt.time

    def __str__(self) -> str:
        """As written: ``"09:00-20:00"``; an end at midnight (:attr:`dt.time.max`) as ``24:00``."""
        end = "24:00" if self.end == dt.time.max else f"{self.end:%H:%M}"
        return f"{self.start:%H:%M}-{end}"

    @property
    def crosses_midnight(self) -> bool:
        """Whether it is a night's window (``"22:00-06:00"``): its end before its start."""
        return self.end < self.start

    def contains(self, t: dt.time) -> bool:
        t = t.replace(tzinfo=None)
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


class JobConfig(msgspec.Struct, frozen=True):
    """One job file: what to send to whom."""

    name: str
    path: Path
    input: Path
    #: The JSONL ledger file (unused when ``database`` is set).
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
    #: The local times a recipient may be texted at, in *their* time zone (TCPA quiet hours):
    #: ``recipient_window = "08:00-21:00"``; None: any time.
    recipient_window: SendWindow | None = None
    #: A column naming each recipient's IANA zone; by default the zone comes from the number.
    timezone_column: str | None = None
    #: After this moment (aware) nothing more is sent: what is left is recorded
    #: ``expired_unsent`` (a reminder that arrives after the event is worse than none).
    deadline: dt.datetime | None = None
    #: Or: seconds after the campaign began (its ledger's first run) when the same happens.
    max_age_s: float | None = None
    #: The most this job may spend, in the settings' ``[pricing] currency``
    #: (``max_cost = "250.00"``): no send starts that could take the ledger's spend past it
    #: (:mod:`bulk_mms.caps`, which also says what a cost in another currency does).
    max_cost: Decimal | None = None
    #: A ``postgresql://`` URL naming the ledger (``?ledger=``, by default the job's name),
    #: from the job's ``ledger``, ``--ledger`` or ``BULK_MMS_LEDGER_URL``; None: the file.
    database: str | None = None
    #: The input's text encoding (``encoding = "cp1252"`` for Excel's CSV on Windows); a UTF-8
    #: byte-order mark makes the file UTF-8, whatever this says.
    encoding: str = "utf-8"
    #: What separates a CSV input's columns (:data:`~bulk_mms.csvfile.DELIMITERS`): ``";"``
    #: for Excel's CSV where the decimal mark is a comma, ``"\t"`` for its "Text". A JSONL
    #: input has no columns to separate: it takes no notice of this.
    delimiter: str = ","
    #: The largest share of the input's rows that may be rejected (bad numbers, broken rows;
    #: not duplicates, suppressed or excluded numbers) before the run refuses to send anything.
    max_rejected_share: float = 0.05
    #: Whether the ledger's name holds ``{date}`` (a new ledger, so a new campaign, each day).
    dated_ledger: bool = False
    #: The job file's ``ledger`` as written (``{name}`` and ``{date}`` unfilled), which
    #: :meth:`ledger_on` fills for any day; None: the job's ledger is ``where`` every day.
    ledger_template: str | None = None

    @property
    def where(self) -> Location:
        """Where the job's ledger is: the database when one is named, else the file."""
        return self.database if self.database is not None else self.ledger

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def ledger_on(self, day: dt.date) -> Location:
        """The job file's ledger for ``day`` (its ``{date}``, a date in the job's
        ``timezone``): the one that day's run begins; ``where`` itself when the job was given
        one ledger for every day (no template)."""
        if self.ledger_template is None:
            return self.where
        text = self.ledger_template.format(name=self.name, date=day.isoformat())
        return _where(text, self.name, self.path.parent)

    @property
    def grouping(self) -> str:
        """How groups form, in words, for the run's start line and the dry run."""
        if self.group_size == 1:
            return "one recipient per message"
        if self.group_by is not None:
            return f"by {self.group_by!r}: people who share it share a message"
        return f"unrelated recipients, up to {self.group_size} a message: {MIXING_CONSEQUENCE}"


def blank(value: str) -> bool:
    """Whether ``value`` shows nothing: whitespace and invisible format characters only (a
    zero-width space, a byte order mark, a direction mark: Unicode's category Cf), as a cell
    or a text pasted from a web page can hold. A phone shows such a text as an empty one."""
    if value.isascii():
        return not value.strip()
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in value)


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


def is_sender(value: str) -> bool:
    """Whether ``value`` is a sender as the API takes it (:data:`SENDER_FORMS`)."""
    return bool(
        _E164.fullmatch(value) or _SHORT_CODE.fullmatch(value) or _ALPHANUMERIC.fullmatch(value)
    )


def _check_sender(value: str, source: Path) -> str:
    if is_sender(value):
        return value
    raise ConfigError("message.from", f"{value!r} is not {SENDER_FORMS}", source=source)


def iana_zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone ``name`` names: :class:`zoneinfo.ZoneInfo`'s, save that a folder of zones
    (``America``, a folder among tzdata's files) is no zone either, not an OSError.

    Raises:
        ZoneInfoNotFoundError, ValueError: ``name`` names no zone.
    """
    try:
        return zoneinfo.ZoneInfo(name)
    except OSError:  # IsADirectoryError: read as a zone's file
        raise zoneinfo.ZoneInfoNotFoundError(f"No time zone found with key {name}") from None


def _check_url(value: str | None, setting: str, source: Path) -> str | None:
    if value is not None and not URL.match(value):
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
        now: the moment ``{date}`` in the ledger path stands for (default: now): its date in
            the job's ``timezone``; with a ``send_window`` across midnight, the date its night
            began on (a moment after midnight and before the window's end is the date before).

    Raises:
        ConfigError: the file is missing, not TOML, or any setting is wrong.
    """
    path = Path(path)
    top = Table(read_toml(path, "job file"), path)
    file_name = top.str_("name", required=name is None)
    name = name or file_name
    assert name is not None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise top.error("name", "use letters, digits, '.', '_' and '-' only (it names the ledger)")
    input_ = top.file_name("input", required=input_file is None)
    input_path = Path(input_file) if input_file is not None else path.parent / str(input_)
    timezone = top.str_("timezone", "UTC") or ""
    if not timezone.strip():  # a template left blank: UTC would move every window by hours
        raise top.error(
            "timezone",
            "is empty: name an IANA time zone (e.g. 'America/Chicago'), or leave "
            "the setting out for UTC",
        )
    try:
        zone = iana_zone(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise top.error(
            "timezone", f"{timezone!r} is not an IANA time zone, e.g. 'America/Chicago'"
        ) from None
    max_cost = top.decimal("max_cost")
    deadline = _deadline(top.moment("deadline"), zone, top)
    max_age_s = top.float_("max_age_s", 0.0, 0.0, 365 * 86_400) or None
    recipient_text = top.str_("recipient_window")
    recipient_window = (
        _parse_window(recipient_text, top, "recipient_window")
        if recipient_text is not None
        else None
    )
    timezone_column = top.column("timezone_column")
    window_text = top.str_("send_window")
    window = _parse_window(window_text, top) if window_text is not None else None
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(zone)
    today = moment.date()
    if window is not None and window.crosses_midnight and moment.time() < window.end:
        today -= dt.timedelta(days=1)  # a night across midnight is the date it began on
    ledger_template = top.str_("ledger", "ledgers/{name}.jsonl") or ""
    ledger = _ledger_path(ledger_template, name, today, top)
    phone_column = top.column("phone_column", "phone") or "phone"
    group_size = top.int_("group_size", MAX_GROUP_SIZE, 1, MAX_GROUP_SIZE)
    group_by = top.column("group_by")
    mix_unrelated = top.bool_("mix_unrelated") or False
    region = (top.str_("default_region", "US") or "US").upper()
    encoding = _encoding(top.str_("encoding", "utf-8") or "", top)
    delimiter = _delimiter(top.str_("delimiter", ",") or "", top)
    max_rejected_share = top.float_("max_rejected_share", 0.05, 0.0, 1.0)
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
    where = _job_where(ledger, name, path.parent, top)
    return JobConfig(
        name=name,
        path=path,
        input=input_path,
        ledger=path.parent / (f"ledgers/{name}.jsonl" if is_database(ledger) else ledger),
        database=where if isinstance(where, str) else None,
        timezone=timezone,
        send_window=window,
        max_cost=max_cost,
        deadline=deadline,
        max_age_s=max_age_s,
        recipient_window=recipient_window,
        timezone_column=timezone_column,
        message=message,
        phone_column=phone_column,
        group_size=group_size,
        group_by=group_by,
        mix_unrelated=mix_unrelated,
        default_region=region,
        encoding=encoding,
        delimiter=delimiter,
        max_rejected_share=max_rejected_share,
        dated_ledger="{date}" in ledger_template,
        ledger_template=ledger_template,
    )


def _load_message(msg: Table, path: Path) -> MessageConfig:
    """The ``[message]`` table, checked."""
    senders = msg.str_list("from")
    if not senders:
        raise msg.error("from", "is required (a number, or a list of numbers for a pool)")
    if len(set(senders)) != len(senders):
        raise msg.error("from", "lists a sender twice")
    text = msg.str_("text")
    subject = msg.str_("subject")
    if text is not None and blank(text):
        raise msg.error("text", "must not be empty (leave it out to send media only)")
    media = msg.str_list("media_urls")
    for i, url in enumerate(media):
        _check_url(url, f"message.media_urls[{i}]", path)
        if url in media[:i]:  # fetched and attached twice, its bytes twice under the 1 MB
            raise msg.error(
                f"media_urls[{i}]",
                f"{url!r} is media_urls[{media.index(url)}] again: list each media file once",
            )
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


def _defaults(table: Table) -> dict[str, str]:
    """``[message.defaults]``: placeholder = text for an empty value."""
    out = {name: table.str_(name) or "" for name in list(table._data)}
    table.finish()
    return out


def _ledger_path(template: str, name: str, today: dt.date, top: Table) -> str:
    """``ledger`` with ``{name}`` and ``{date}`` (YYYY-MM-DD in the job's timezone) filled in.
    The template itself is never repeated in an error: a database URL may hold a password."""
    if blank(template):  # a template left blank: no file, and the default is not what was meant
        raise top.error(
            "ledger",
            "is empty: name a file or a database, or leave the setting out for "
            "ledgers/{name}.jsonl",
        )
    try:
        parsed = [
            (field, spec, conversion)
            for _, field, spec, conversion in string.Formatter().parse(template)
            if field is not None
        ]
    except ValueError as exc:
        raise top.error("ledger", f"bad placeholder: {exc}") from None
    unknown = {field for field, _, _ in parsed} - {"name", "date"}
    if unknown:
        raise top.error(
            "ledger", f"unknown placeholder {{{sorted(unknown)[0]}}}: use {{name}} or {{date}}"
        )
    for field, spec, conversion in parsed:
        if spec or conversion:  # the date is YYYY-MM-DD as it stands, the name as written
            raise top.error(
                "ledger",
                f"placeholder {{{field}}} takes no format spec or conversion: write {{{field}}}",
            )
    ledger = template.format(name=name, date=today.isoformat())
    try:
        location(ledger)
    except ValueError as exc:
        raise top.error("ledger", str(exc)) from None
    return ledger


def _where(ledger: str, name: str, base: Path) -> Location:
    """A filled-in ``ledger`` setting as a location: the database's ledger (named after the
    job unless the URL names one), else the file, relative to the job's folder ``base``."""
    return str(named(ledger, name)) if is_database(ledger) else base / ledger


def _job_where(ledger: str, name: str, base: Path, top: Table) -> Location:
    """:func:`_where` of the job's ``ledger`` setting, refused (naming the setting) when it
    is a folder already (one ending in ``/`` is refused as a location before)."""
    where = _where(ledger, name, base)
    if isinstance(where, Path):
        try:
            refuse_folder(ledger, where)
        except ValueError as exc:
            raise top.error("ledger", str(exc)) from None
    return where


def _encoding(name: str, top: Table) -> str:
    """``encoding``, as Python's codec name: one that writes newline, comma and quote as
    ASCII does (UTF-8, cp1252, Latin-1...), so lines and fields split as they do in UTF-8."""
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise top.error(
            "encoding", f"{name!r} is not a known encoding (e.g. 'utf-8', 'cp1252', 'latin-1')"
        ) from None
    try:
        ascii_like = '\n,"'.encode(codec, "replace") == b'\n,"'
    except (LookupError, UnicodeError):  # rot13, hex: no text codec; idna, undefined: no file's
        raise top.error(
            "encoding", f"{name!r} cannot read a text file: save the file as UTF-8 or cp1252"
        ) from None
    if not ascii_like or codec.startswith("utf-16"):
        raise top.error(
            "encoding", f"{name!r} is not ASCII-compatible: save the file as UTF-8 or cp1252"
        )
    return "utf-8" if codec == "utf-8" else codec


def _delimiter(value: str, top: Table) -> str:
    """``delimiter``: one of :data:`~bulk_mms.csvfile.DELIMITERS`; ``"tab"`` is the tab."""
    value = "\t" if value.lower() == "tab" else value
    if value not in DELIMITERS:
        choices = ", ".join(toml_string(d) for d in DELIMITERS)
        raise top.error(
            "delimiter", f'{value!r} is not a column separator: use one of {choices} (or "tab")'
        )
    return value


def _deadline(text: str | None, zone: dt.tzinfo, top: Table) -> dt.datetime | None:
    """``deadline = "2026-11-24T12:00"`` (or unquoted, TOML's own), in the job's timezone
    unless it names an offset."""
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise top.error(
            "deadline", f"{text!r} is not a date and time like '2026-11-24T12:00'"
        ) from None
    if _is_date(text.strip()):
        raise top.error(
            "deadline",
            f"{text!r} is a day, not a time: write '{text.strip()}T00:00' for its start or "
            f"'{text.strip()}T23:59' for its end",
        )
    if when.tzinfo is not None:
        return when
    problem = local_time_problem(when, zone)
    if problem is not None:
        raise top.error("deadline", problem)
    return when.replace(tzinfo=zone)


def _is_date(text: str) -> bool:
    """Whether ``text`` is a date alone (``2026-11-24``), no time of day."""
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def local_time_problem(when: dt.datetime, zone: dt.tzinfo) -> str | None:
    """Why the naive local time ``when`` cannot stand for one instant in ``zone``, or None.

    A wall time inside a spring-forward gap never happens; one inside a fall-back overlap
    happens twice. Either way the message names both readings as times with an offset, so the
    user can write the one they mean.
    """
    first = when.replace(tzinfo=zone, fold=0)
    second = when.replace(tzinfo=zone, fold=1)
    off_first, off_second = first.utcoffset(), second.utcoffset()
    if off_first == off_second or off_first is None or off_second is None:
        return None
    shown = _minutes(when)
    place = getattr(zone, "key", str(zone))
    if first.astimezone(dt.UTC).astimezone(zone).replace(tzinfo=None) == when:
        # Both folds survive the round trip: the wall time exists twice.
        return (
            f"{shown} happens twice in {place} ({_offset(off_first)} and "
            f"{_offset(off_second)}): write the offset, e.g. {shown}{_offset(off_first)} "
            f"(the first) or {shown}{_offset(off_second)} (the second)"
        )
    # A gap: fold=0 reads the time with the offset before the change, fold=1 with the one
    # after; each lands on a wall time that does exist, on the other side of the jump.
    readings = [
        first.astimezone(dt.UTC).astimezone(zone),
        second.astimezone(dt.UTC).astimezone(zone),
    ]
    jump = transition(second.astimezone(dt.UTC), first.astimezone(dt.UTC), zone, off_second)
    return (
        f"{shown} does not exist in {place} (the clocks go from "
        f"{(jump + off_first):%H:%M} to {(jump + off_second):%H:%M}): read with either offset "
        f"it is {' or '.join(_minutes(r) + _offset(r.utcoffset()) for r in readings)}; write "
        "the one you mean"
    )


def transition(
    low: dt.datetime, high: dt.datetime, zone: dt.tzinfo, after: dt.timedelta
) -> dt.datetime:
    """The first UTC second in ``[low, high]`` (aware) at which ``zone`` is at offset
    ``after``, as a naive UTC datetime: the moment its clocks change, when ``zone`` changes
    offset once in that span and is at ``after`` at ``high``."""
    lo, hi = int(low.timestamp()), int(high.timestamp())
    while lo < hi:
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid + 1
    return dt.datetime.fromtimestamp(lo, dt.UTC).replace(tzinfo=None)


def _minutes(when: dt.datetime) -> str:
    """``when`` as ``YYYY-MM-DDTHH:MM`` (with seconds only when it has them), no offset."""
    spec = "seconds" if when.second or when.microsecond else "minutes"
    return when.replace(tzinfo=None).isoformat(timespec=spec)


def _offset(offset: dt.timedelta | None) -> str:
    """A UTC offset as ``-05:00``."""
    total = int((offset or dt.timedelta()).total_seconds()) // 60
    sign = "-" if total < 0 else "+"
    hours, minutes = divmod(abs(total), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def _parse_window(text: str, top: Table, setting: str = "send_window") -> SendWindow:
    if blank(text):  # a template left blank: no window is not what it meant
        raise top.error(
            setting, "is empty: give HH:MM-HH:MM (e.g. '09:00-20:00'), or leave the setting out"
        )
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if m is None:
        raise top.error(setting, f"{text!r} is not HH:MM-HH:MM (e.g. '09:00-20:00')")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        raise top.error(setting, f"{text!r} has a time that does not exist")
    start = dt.time(h1, m1)
    end = dt.time.max if h2 == 24 else dt.time(h2, m2)
    if start == end:
        raise top.error(setting, "start and end are the same: the window would be empty")
    return SendWindow(start, end)


# --------------------------------------------------------------------------------------------
# Settings
