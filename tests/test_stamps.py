"""Event stamps: ``iso`` writes them, ``instant`` and ``parse_time`` read them back."""

from __future__ import annotations

import pytest

from bulk_mms.clock import instant, iso, parse_time


def test_iso_writes_utc_with_milliseconds() -> None:
    """A time is stamped in UTC to the millisecond, with a Z."""
    assert iso(1_796_024_211.4129) == "2026-11-30T07:36:51.412Z"
    assert iso(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso(-0.5) == "1969-12-31T23:59:59.500Z"


def test_a_stamp_reads_back_as_its_millisecond() -> None:
    """``instant`` and ``parse_time`` read a stamp back as the millisecond it shows."""
    stamp = iso(1_796_024_211.4129)
    assert instant(stamp) == parse_time(stamp) == 1_796_024_211.412


def test_a_stamp_without_an_offset_is_utc() -> None:
    """A stamp with no offset is read as UTC, never as this machine's zone."""
    assert parse_time("2026-11-30T07:36:51.412") == 1_796_024_211.412


@pytest.mark.parametrize("bad", [None, 17, "", "x", "2026-13-40T99:00:00Z"])
def test_instant_gives_none_for_what_is_not_a_stamp(bad: object) -> None:
    """Something that is not a string, or does not parse, has no instant."""
    assert instant(bad) is None
