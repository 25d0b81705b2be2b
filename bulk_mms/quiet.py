"""Quiet hours in the recipient's time zone: ``recipient_window = "08:00-21:00"``.

The TCPA's quiet hours are the *recipient's* local time. Each recipient's zone comes from a
``timezone_column`` if the job names one and the row fills it (a value that names no zone
rejects the row: the number's zone may not be where they are), else from the number
(phonenumbers' time zone data, by the number's prefix). A number whose prefix spans several
zones (a toll-free range, Alaska's two) gets all of them, and may be texted only when the
window is open in every one: the overlap. A recipient whose zones share no time of the window
in winter or in summer (a toll-free number's 42 zones, a narrow window) is rejected as its row
is read (:func:`never_open`): no run could send it that season. Groups never mix zones
(:func:`bulk_mms.grouping.make_groups` keeps one open group per zone; with ``group_by`` a
group holds every member's zones), so a group is sent exactly when its members may be texted.
A ``group_by`` group whose members' zones together are :func:`never_open` has its rows
rejected by every pass (:class:`bulk_mms.grouping.Households`), not held by every run.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Iterable, Mapping

from bulk_mms.config import SendWindow
from bulk_mms.config.job import iana_zone, transition

#: phonenumbers' answer for a number it cannot place.
_UNKNOWN = "Etc/Unknown"
#: How finely :func:`next_opening` looks ahead (then back, to the minute), and how far.
_STEP = dt.timedelta(minutes=5)
_MINUTE = dt.timedelta(minutes=1)
_DAY = dt.timedelta(days=1)
_NEVER = float("inf")
_HORIZON = dt.timedelta(days=2)
#: Other windows that must be open at the same time, each with its zones (the job's
#: ``send_window`` in its ``timezone``, for recipients held for their quiet hours).
Also = Iterable[tuple[SendWindow, tuple[str, ...]]]


@functools.lru_cache(maxsize=4096)
def _zones_of_prefix(prefix: str) -> tuple[str, ...]:
    import phonenumbers  # noqa: PLC0415 - loaded only for quiet hours
    from phonenumbers import timezone  # noqa: PLC0415

    zones = timezone.time_zones_for_number(phonenumbers.parse(prefix + "0" * 4))
    return tuple(sorted(z for z in zones if z != _UNKNOWN)) or ("UTC",)


#: The first words of the reason a row whose ``timezone_column`` names no zone is rejected
#: for (its :func:`~bulk_mms.models.reason_kind`).
UNKNOWN_ZONE = "unknown time zone"


@functools.lru_cache(maxsize=1024)
def zone_named(value: str) -> str | None:
    """The IANA zone ``value`` names (blanks around it aside), or None."""
    name = value.strip()
    try:
        iana_zone(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None
    return name


def zone_problem(fields: Mapping[str, str], column: str) -> str | None:
    """Why a row's ``column`` cannot say where its recipient is (a value that names no IANA
    zone: a Windows name, a typo), or None (a zone, or blank: the number says)."""
    value = fields.get(column, "").strip()
    if not value or zone_named(value) is not None:
        return None
    return (
        f"{UNKNOWN_ZONE}: {column!r} is {value!r}, not an IANA zone like "
        "'America/New_York'; fix it, or leave it blank to go by the number"
    )


#: The first words of the reason a row is rejected for when its zones share no open time.
NO_COMMON_HOURS = "no common hours"
#: A winter's and a summer's day: the two sets of offsets :func:`never_open` tries.
_SEASONS = (dt.datetime(2025, 1, 15, tzinfo=dt.UTC), dt.datetime(2025, 7, 15, tzinfo=dt.UTC))


@functools.lru_cache(maxsize=256)
def never_open(window: SendWindow, zones: tuple[str, ...]) -> bool:
    """Whether some season (a winter's day, a summer's) has no moment when ``window`` is open
    in every one of ``zones``."""
    return any(next_opening(window, zones, day) is None for day in _SEASONS)


def hours_problem(
    window: SendWindow, phone: str, fields: Mapping[str, str], column: str | None
) -> str | None:
    """Why a recipient cannot be texted inside ``window`` in any season: its zones
    (:func:`zones_for`) share no open time then; or None."""
    zones = zones_for(phone, fields, column)
    if len(zones) < 2 or not never_open(window, zones):
        return None
    hint = f"give it a {column!r} value" if column else "name its zone in a timezone_column"
    return (
        f"{NO_COMMON_HOURS}: its {len(zones)} time zones ({zones[0]} to {zones[-1]}) share "
        f"no time of the window {window} in winter or in summer; {hint}"
    )


#: Fixed-offset zones that people write meaning a US zone that keeps daylight time ("EST" in
#: July means New York's 09:00 at 08:00 EST): a row naming one is read as both.
_ALSO_MEANT = {"EST": "America/New_York", "MST": "America/Denver"}


def zones_for(phone: str, fields: Mapping[str, str], column: str | None) -> tuple[str, ...]:
    """A recipient's zones: the column's when it names one, else the number's (a row whose
    value names none is rejected as it is read: :func:`zone_problem`). ``EST`` and ``MST``
    are read as themselves and as the daylight-keeping zone people mean by them
    (:data:`_ALSO_MEANT`), so the window must be open by both clocks."""
    if column is not None and (name := zone_named(fields.get(column, ""))) is not None:
        also = _ALSO_MEANT.get(name)
        return (name,) if also is None else tuple(sorted((name, also)))
    return _zones_of_prefix(phone[:8])  # +1 NPA NXX: the finest prefix the data uses


def open_for(window: SendWindow, zones: Iterable[str], now: dt.datetime, also: Also = ()) -> bool:
    """Whether ``now`` (aware) is inside the window in every one of ``zones``, and inside
    every window of ``also`` in its zones."""
    inside = all(window.contains(now.astimezone(zoneinfo.ZoneInfo(z)).time()) for z in zones)
    return inside and (not also or all(open_for(w, z, now) for w, z in also))


def closes_in(window: SendWindow, zones: Iterable[str], now: dt.datetime) -> float:
    """Seconds from ``now`` (aware) until the window is closed in the first of ``zones``: 0
    when it is closed in one now; infinite for a window open all day (``00:00-24:00``), which
    never closes. Else when the local time next reaches its ``end`` (``24:00``: midnight), or
    sooner, when the clocks change on the way to a time outside the window (a jump past
    ``end`` in spring, back to before ``start`` in the fall)."""
    return min((_open_for_s(window, zoneinfo.ZoneInfo(z), now) for z in zones), default=_NEVER)


def _open_for_s(window: SendWindow, zone: zoneinfo.ZoneInfo, now: dt.datetime) -> float:
    """:func:`closes_in` for one zone."""
    if window.start == dt.time() and window.end == dt.time.max:
        return _NEVER  # 00:00-24:00: midnight ends one day's window as it opens the next's
    local = now.astimezone(zone)
    if not window.contains(local.time()):
        return 0.0
    if window.end == dt.time.max:  # "24:00": open to the end of the day
        wall = dt.datetime.combine(local.date() + _DAY, dt.time(), zone)
    else:
        wall = local.replace(
            hour=window.end.hour, minute=window.end.minute, second=0, microsecond=0
        )
        if wall <= local:
            wall += _DAY  # wall-clock arithmetic: the same local time tomorrow
    end = wall.astimezone(dt.UTC)  # in a skipped hour: as far past the jump as it falls in it
    before, after = local.utcoffset(), end.astimezone(zone).utcoffset()
    if after is not None and after != before:  # the clocks change before the end
        jump = transition(now, end, zone, after).replace(tzinfo=dt.UTC)
        if not window.contains(jump.astimezone(zone).time()):
            end = jump
    return max((end - now).total_seconds(), 0.0)


def opens_before(
    window: SendWindow,
    zones: Iterable[str],
    now: dt.datetime,
    deadline: dt.datetime | None,
    also: Also = (),
) -> bool:
    """Whether the window opens again in all ``zones`` (and every window of ``also`` with
    it) after ``now`` and before ``deadline`` (aware): always without a deadline, and when
    it cannot tell (no opening within two days, the deadline further off). An opening at the
    deadline is not before it: nothing is sent from then."""
    if deadline is None:
        return True
    at = next_opening(window, zones, now, also)
    if at is None:  # none within two days: surely none before a deadline within them
        return deadline - now > _HORIZON
    return at < deadline


def next_opening(
    window: SendWindow, zones: Iterable[str], now: dt.datetime, also: Also = ()
) -> dt.datetime | None:
    """The first moment after ``now`` when the window is open in all ``zones`` and every
    window of ``also`` is open in its zones (the job's ``send_window``, in its timezone: a
    recipient is sent only when both are), to the minute (a window's ends are minutes, and so
    are the zones' offsets); or None when they never overlap within two days. Looks ahead in
    five-minute steps, then back over the minutes the last step passed."""
    zones, also = tuple(zones), tuple(also)
    t = now.replace(second=0, microsecond=0) + _STEP
    while t - now <= _HORIZON:
        if open_for(window, zones, t, also):
            passed = (t - k * _MINUTE for k in range(4, 0, -1))
            return next((m for m in passed if m > now and open_for(window, zones, m, also)), t)
        t += _STEP
    return None
