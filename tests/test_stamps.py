"""Event stamps: the memoised ``iso`` always gives what datetime gives."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from bulk_mms.clock import instant, iso, parse_time


def reference(seconds: float) -> str:
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


@settings(max_examples=2000, deadline=None)
@given(
    st.floats(min_value=0, max_value=4_102_444_800),  # to 2100
    st.lists(st.floats(min_value=0, max_value=0.002), min_size=1, max_size=5),
)
def test_iso_matches_datetime_for_runs_of_close_stamps(start: float, steps: list[float]) -> None:
    """Stamps taken close together (the memo's case) equal datetime's, millisecond edges too."""
    t = start
    for step in steps:
        t += step
        assert iso(t) == reference(t)


@settings(max_examples=2000, deadline=None)
@given(st.floats(min_value=0, max_value=4_102_444_800))
def test_a_fresh_stamp_reads_back_as_parsing_reads_it(t: float) -> None:
    """The instant iso leaves for its own stamp is the one parse_time gives it."""
    stamp = iso(t)
    assert instant(stamp) == parse_time(stamp)


def test_iso_at_millisecond_edges() -> None:
    """Times a hair either side of a millisecond boundary get datetime's millisecond."""
    base = 1_796_024_211.0
    for ms in (0, 411, 412, 413, 999, 1000):
        for delta in (-1e-7, -4e-7, 0.0, 4e-7, 1e-7, 5e-7, 6e-7):
            t = base + ms / 1000 + delta
            assert iso(t) == reference(t)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=4_102_444_800), min_size=1, max_size=8))
def test_iso_matches_datetime_for_stamps_in_any_order(times: list[float]) -> None:
    """Stamps seconds or years apart, back and forth (the second's memo replaced each time),
    equal datetime's."""
    for t in times:
        assert iso(t) == reference(t)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["2026-11-30T10:00:00.001Z", "2026-11-30T10:00:00.002Z", "x", ""])))
def test_instant_memo_gives_what_parsing_gives(stamps: list[str]) -> None:
    """Read in any order, repeated or not, a stamp's instant is its own (bad ones are None)."""
    for stamp in stamps:
        expected = parse_time(stamp) if stamp.startswith("2026") else None
        assert instant(stamp) == expected
