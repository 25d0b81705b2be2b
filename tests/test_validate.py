"""Phone normalisation and de-duplication."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk_mms import kept_patterns, validate
from bulk_mms.kept_patterns import KeptPatterns
from bulk_mms.models import Recipient, RejectedRow
from bulk_mms.reader import Row
from bulk_mms.validate import (
    PhoneError,
    _canonical_in,
    _canonical_source,
    _canonical_us,
    _parsed,
    normalize_phone,
    validate_rows,
)

#: Area codes across the +1 regions: US, Canada, the Caribbean, Pacific, toll-free, premium.
AREAS = (
    "212",
    "415",
    "416",
    "604",
    "268",
    "787",
    "809",
    "876",
    "345",
    "671",
    "340",
    "800",
    "888",
    "900",
    "264",
    "441",
    "649",
    "684",
    "721",
    "758",
    "767",
    "784",
    "868",
    "869",
)


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+1 (212) 555-0100", "+12125550100"),
        ("212.555.0100", "+12125550100"),
        ("1 212 555 0100", "+12125550100"),
        ("  2125550100 ", "+12125550100"),
        ("+1 416 555 0100", "+14165550100"),  # Toronto
    ],
)
def test_common_formats_normalise_to_e164(raw: str, e164: str) -> None:
    """National and international spellings of a US or Canadian number become E.164."""
    assert normalize_phone(raw) == e164


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("+1212555010a", "letters"),
        ("212-555-0100 x12", "letters"),
        ("+44 20 7946 0958", "+44 is not a US or Canadian number"),
        ("+1 876 555 0101", "outside the US and Canada"),  # Jamaica shares +1
        ("555-12", "not a valid"),
        ("+1 555 555 0100", "not a valid"),  # 555 is not an area code
        ("212#5550100", "character '#'"),
    ],
)
def test_unreachable_or_malformed_numbers_are_refused(raw: str, reason: str) -> None:
    """Letters, other countries, +1 outside US/Canada and invalid numbers raise with a reason."""
    with pytest.raises(PhoneError, match=None) as info:
        normalize_phone(raw)
    assert reason in str(info.value)


def test_duplicates_are_rejected_after_the_first() -> None:
    """The first row with a number wins; the same number spelled differently later is rejected."""
    rows = [
        Row(2, {"phone": "+12125550100"}),
        Row(3, {"phone": "bad"}),
        Row(4, {"phone": "(212) 555-0100"}),
        Row(5, {"phone": "+12125550101"}),
    ]
    out = list(validate_rows(rows, "phone"))
    assert out[0] == Recipient("+12125550100", 2, {})
    assert isinstance(out[1], RejectedRow)
    assert out[1].line == 3
    assert isinstance(out[2], RejectedRow)
    assert (out[2].line, out[2].value) == (4, "(212) 555-0100")
    assert out[2].reason.startswith("duplicate")
    assert out[3] == Recipient("+12125550101", 5, {})


def verdict(fn: Callable[[], str]) -> str:
    """The number a path returns, or its refusal's reason."""
    try:
        return fn()
    except PhoneError as exc:
        return f"refused: {exc}"


@settings(max_examples=3000, deadline=None)
@given(
    area=st.one_of(st.integers(200, 999).map(str), st.sampled_from(AREAS)),
    rest=st.integers(0, 9_999_999).map(lambda n: f"{n:07d}"),
)
def test_the_canonical_fast_path_agrees_with_the_parser(area: str, rest: str) -> None:
    """For any +1 number in canonical form, the metadata fast path gives the parser's verdict
    (the number, or the same reason): valid, invalid, Caribbean, toll-free, premium."""
    phone = f"+1{area}{rest}"
    assert verdict(lambda: normalize_phone(phone)) == verdict(lambda: _parsed(phone, "US"))


def test_the_fast_path_agrees_on_a_sweep_of_every_area_code() -> None:
    """Every area code 200-999 with exchanges across the range: the same verdicts."""
    for area in range(200, 1000):
        for rest in ("2015550", "5550100", "9999999", "2345678", "8675309", "0000000"):
            phone = f"+1{area}{rest}"
            assert verdict(lambda: normalize_phone(phone)) == verdict(  # noqa: B023
                lambda: _parsed(phone, "US")  # noqa: B023
            ), phone


@settings(max_examples=2000, deadline=None)
@given(
    area=st.one_of(st.integers(0, 999).map(lambda n: f"{n:03d}"), st.sampled_from(AREAS)),
    rest=st.integers(0, 9_999_999).map(lambda n: f"{n:07d}"),
    form=st.sampled_from(["+1{}", "+1 {}", "1{}", "+1{}\n", "+\uff11{}", "{}"]),
)
def test_the_one_regex_steps_take_exactly_the_valid_us_or_canadian_numbers_as_written(
    area: str, rest: str, form: str
) -> None:
    """Each region's one-regex step matches a value exactly when it is canonical and the
    parser finds it a valid number of that region (so a step decides only what it may)."""
    value = form.format(area + rest)
    try:
        number = phonenumbers.parse(value, "US")
        canonical = value == f"+1{area}{rest}" and area[0] not in "01"
        where = phonenumbers.region_code_for_number(number)
        valid = canonical and phonenumbers.is_valid_number(number)
    except phonenumbers.NumberParseException:
        where, valid = None, False
    assert (_canonical_us()(value) is not None) == (valid and where == "US")
    assert (_canonical_in("CA")(value) is not None) == (valid and where == "CA")
    assert _canonical_in("AG")("+12684601234") is None  # a region group MMS cannot reach


def _kept(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


def _rewrite(path: Path, kept: dict[str, Any], *, sealed: bool = True) -> None:
    """Write ``kept`` back, with a checksum that fits it unless ``sealed`` is False."""
    if sealed:
        kept["sum"] = kept_patterns._checksum(kept)
    path.write_bytes(orjson.dumps(kept))


def _kept_at(path: Path) -> KeptPatterns:
    """The patterns kept at ``path``, as validate keeps them."""
    return KeptPatterns(path, _canonical_source, (validate.__file__, validate._OWN_DIGEST))


def _is_phonenumbers(name: str) -> bool:
    return name == "phonenumbers" or name.startswith("phonenumbers.")


@pytest.fixture
def unloaded() -> Iterator[None]:
    """The test runs as a process that has not imported phonenumbers yet (as a run does when
    it first needs a pattern); the modules are put back as they were afterwards."""
    saved = {k: v for k, v in sys.modules.items() if _is_phonenumbers(k)}
    for name in saved:
        del sys.modules[name]
    yield
    for name in [k for k in sys.modules if _is_phonenumbers(k)]:
        del sys.modules[name]
    sys.modules.update(saved)


def _made(path: Path, *codes: str) -> dict[str, Any]:
    """Derive and keep ``codes`` as a fresh process would; the kept file."""
    for name in [k for k in sys.modules if _is_phonenumbers(k)]:
        del sys.modules[name]
    patterns = _kept_at(path)
    for code in codes:
        patterns.source(code)
    return _kept(path)


@pytest.mark.usefixtures("unloaded")
def test_kept_patterns_are_read_back_while_their_files_are_as_they_were(tmp_path: Path) -> None:
    """Patterns derived once are kept with a digest of each file they came from (this module
    and phonenumbers' among them) and read back by a later process as they were kept."""
    path = tmp_path / "kept.json"
    kept = _made(path, "US")
    assert kept["patterns"] == {"US": _canonical_source("US")}
    assert validate.__file__ in kept["files"]
    assert any(f.endswith(os.path.join("data", "region_US.py")) for f in kept["files"])
    kept["patterns"]["US"] = "(?!kept)"
    _rewrite(path, kept)
    for name in [k for k in sys.modules if _is_phonenumbers(k)]:
        del sys.modules[name]
    assert _kept_at(path).source("US") == "(?!kept)"
    assert "phonenumbers" not in sys.modules


@pytest.mark.usefixtures("unloaded")
@pytest.mark.parametrize(
    "damage",
    ["stale", "unsealed", "garbage", "wrong shape", "not this module", "NUL", "unwritable"],
)
def test_kept_patterns_are_made_anew_when_they_cannot_be_trusted(
    tmp_path: Path, damage: str
) -> None:
    """A kept pattern whose files changed since (an upgraded or shadowed phonenumbers, this
    code), whose file fails its checksum or does not parse, or that does not name this module,
    is ignored and the pattern derived anew; nothing about the cache raises."""
    path = tmp_path / "kept.json"
    kept = _made(path, "US")
    kept["patterns"]["US"] = ".*"  # would take any value: it must never be used
    if damage == "stale":
        region = next(f for f in kept["files"] if f.endswith("region_US.py"))
        kept["files"][region] = "0" * 32
        _rewrite(path, kept)
    elif damage == "unsealed":
        _rewrite(path, kept, sealed=False)
    elif damage == "garbage":
        path.write_bytes(b"\x00{not json")
    elif damage == "wrong shape":
        _rewrite(path, {**kept, "patterns": ["US", ".*"]})
    elif damage == "not this module":
        del kept["files"][validate.__file__]
        _rewrite(path, kept)
    elif damage == "NUL":
        kept["files"]["bad\x00name"] = "0" * 32
        _rewrite(path, kept)
    else:
        path = tmp_path / "a-file" / "kept.json"
        path.parent.write_text("not a folder")
    for name in [k for k in sys.modules if _is_phonenumbers(k)]:
        del sys.modules[name]
    assert _kept_at(path).source("US") == _canonical_source("US")


def test_nothing_is_kept_or_read_once_phonenumbers_is_loaded(tmp_path: Path) -> None:
    """A process that imported phonenumbers before it first needed a pattern (an embedder,
    this test) cannot know the bytes it loaded: it derives, and neither reads nor writes."""
    assert "phonenumbers" in sys.modules
    path = tmp_path / "kept.json"
    patterns = _kept_at(path)
    assert patterns.source("US") == _canonical_source("US")
    assert not path.exists()


@pytest.mark.usefixtures("unloaded")
def test_a_file_that_changes_while_a_process_runs_is_never_kept_beside_its_old_pattern(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A region file replaced between its load and the write (phonenumbers upgraded under the
    process): its digest from before the load no longer matches, so nothing is written."""
    path = tmp_path / "kept.json"
    digest = kept_patterns.digest
    seen: list[str] = []

    def upgraded(f: str) -> str | None:
        if f.endswith("region_US.py"):
            seen.append(f)
            return "0" * 32 if len(seen) > 1 else digest(f)
        return digest(f)

    monkeypatch.setattr(kept_patterns, "digest", upgraded)
    patterns = _kept_at(path)
    assert patterns.source("US") == _canonical_source("US")
    assert len(seen) == 2  # before the load, and before the write
    assert not path.exists()
    assert not patterns.sound


@pytest.mark.usefixtures("unloaded")
@pytest.mark.parametrize("bad", ["(", "a{99999999999999999999}", "(?u)x", "(?:" * 5000])
def test_a_kept_pattern_that_does_not_compile_is_derived_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    """A kept pattern that is not a regex this module can compile, however it fails, is no
    error: the step is derived anew and no kept pattern is trusted after it."""
    path = tmp_path / "kept.json"
    kept = _made(path, "US", "CA")
    kept["patterns"]["US"] = bad
    _rewrite(path, kept)
    for name in [k for k in sys.modules if _is_phonenumbers(k)]:
        del sys.modules[name]
    patterns = _kept_at(path)
    monkeypatch.setattr(validate, "_kept_patterns", lambda: patterns)
    step = _canonical_in.__wrapped__("US")
    assert step("+12125550100") is not None
    assert step("+12120550100") is None
    assert patterns.patterns == {}
    assert not patterns.sound


def test_a_run_of_canonical_numbers_never_imports_phonenumbers(tmp_path: Path) -> None:
    """With the patterns kept by an earlier process, valid US and Canadian numbers as written
    are decided without loading phonenumbers (some 20 ms of a start); any other number loads
    it and is decided by it."""
    script = (
        "import sys\n"
        "from bulk_mms.validate import PhoneError, normalize_phone\n"
        "assert normalize_phone('+12125550100') == '+12125550100'\n"
        "assert normalize_phone('+14165550100') == '+14165550100'\n"
        "before = 'phonenumbers' in sys.modules\n"
        "try:\n"
        "    normalize_phone('+12120550100')\n"
        "except PhoneError:\n"
        "    pass\n"
        "print(before, 'phonenumbers' in sys.modules)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(2)
    ]
    assert runs == [["True", "True"], ["False", "True"]]
