"""Phone normalisation and de-duplication."""

from __future__ import annotations

from collections.abc import Callable

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk_mms.models import Recipient, RejectedRow
from bulk_mms.reader import Row
from bulk_mms.validate import (
    PhoneError,
    _canonical_in,
    _canonical_us,
    _formatted,
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


#: How people write a number's three parts (area, exchange, line), and ways they get it wrong.
LAYOUTS = (
    "{a}{e}{l}",
    "({a}) {e}-{l}",
    "({a}){e}-{l}",
    "{a}-{e}-{l}",
    "{a}.{e}.{l}",
    "{a} {e} {l}",
    "1{a}{e}{l}",
    "1-{a}-{e}-{l}",
    "1 ({a}) {e}-{l}",
    "+1{a}{e}{l}",
    "+1 {a} {e} {l}",
    "+1 ({a}) {e}-{l}",
    "+1-{a}-{e}-{l}",
    "+1.{a}.{e}.{l}",
    " ( {a} ) {e} - {l} ",
    "{a})-({e}..{l}",
    "+ 1 {a} {e} {l}",
    # near-misses: the parser decides each
    "{a}-{e}-{l} x12",
    "{a}-{e}-{l} ext. 5",
    "{a}-{e}-{l}#",
    "{a}-{e}-{l}x",
    "++1 {a} {e} {l}",
    "+1+{a}{e}{l}",
    "001 {a} {e} {l}",
    "011 1 {a} {e} {l}",
    "+{a}{e}{l}",
    "+11{a}{e}{l}",
    "11{a}{e}{l}",
    "2{a}{e}{l}",
    "{a}{e}{l}0",
    "{a}{e}",
    "{a}-{e}-{l}\t",
    "{a}\u00a0{e}\u00a0{l}",
    "{a}/{e}-{l}",
    "(+1) {a} {e} {l}",
    "1+{a}{e}{l}",
    "{a}-{e}-{l}+",
    "\uff11{a}{e}{l}",
)


def formatted_verdicts(value: str, region: str) -> tuple[str, str]:
    """The verdicts of :func:`normalize_phone` (fast paths) and of the parser alone."""
    return verdict(lambda: normalize_phone(value, region)), verdict(lambda: _parsed(value, region))


@settings(max_examples=4000, deadline=None)
@given(
    area=st.one_of(st.integers(0, 999).map(lambda n: f"{n:03d}"), st.sampled_from(AREAS)),
    exchange=st.integers(0, 999).map(lambda n: f"{n:03d}"),
    line=st.integers(0, 9999).map(lambda n: f"{n:04d}"),
    layout=st.sampled_from(LAYOUTS),
    region=st.sampled_from(["US", "US", "CA", "GB", "JM"]),
    letter=st.one_of(st.none(), st.tuples(st.integers(0, 20), st.sampled_from("aOlx"))),
)
def test_formatted_numbers_get_the_parsers_verdict(
    area: str, exchange: str, line: str, layout: str, region: str, letter: tuple[int, str] | None
) -> None:
    """A number written as people write it (or nearly: extensions, letters, a wrong count of
    digits, an 001 prefix, two +) gets the parser's verdict, the number or the same reason."""
    value = layout.format(a=area, e=exchange, l=line)
    if letter is not None:
        at = letter[0] % (len(value) + 1)
        value = value[:at] + letter[1] + value[at:]
    fast, parsed = formatted_verdicts(value, region)
    assert fast == parsed, value


@settings(max_examples=1000, deadline=None)
@given(
    digits=st.text(alphabet="0123456789", min_size=9, max_size=13),
    punctuation=st.lists(st.tuples(st.integers(0, 13), st.sampled_from(" -.()+")), max_size=5),
)
def test_digits_and_punctuation_anywhere_get_the_parsers_verdict(
    digits: str, punctuation: list[tuple[int, str]]
) -> None:
    """Any digits with the usual punctuation (a + too) anywhere among them: the parser's
    verdict, whichever path decides."""
    value = digits
    for at, ch in punctuation:
        value = value[:at] + ch + value[at:]
    fast, parsed = formatted_verdicts(value, "US")
    assert fast == parsed, value


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("(646) 991-6750", "+16469916750"),
        ("415-847-5622", "+14158475622"),
        ("14152981157", "+14152981157"),
        ("+1 206 571 3909", "+12065713909"),
        ("646.991.6750", "+16469916750"),
        ("(555) 555-0100", "+15555550100"),  # canonical form; refused as that (not valid)
        ("212-555-0100 x12", None),
        ("212-555-0100 ext. 5", None),
        ("212-555-0100#", None),
        ("++1 212 555 0100", None),
        ("001 212 555 0100", None),
        ("(112) 555-0100", None),
        ("1 012 555 0100", None),
        ("212-555-010", None),
        ("+2125550100", None),
        ("2125550100", "+12125550100"),
    ],
)
def test_the_formatted_fast_path_takes_only_plain_nanp_spellings(
    raw: str, canonical: str | None
) -> None:
    """Digits with the usual punctuation become the canonical form; anything else is left to
    the parser (None)."""
    assert _formatted(raw, "US") == canonical


def test_the_formatted_fast_path_leaves_national_numbers_of_other_regions_to_the_parser() -> None:
    """Without +, a number belongs to the job's region: outside the US and Canada, the parser."""
    assert _formatted("020 7946 0958", "GB") is None
    assert _formatted("2125550100", "GB") is None
    assert _formatted("+1 212 555 0100", "GB") == "+12125550100"


def test_formatted_numbers_agree_on_a_sweep_of_every_area_code() -> None:
    """Every area code 000-999, exchanges across the range, in five spellings people use: the
    parser's verdicts."""
    layouts = ("({a}) {e}-{l}", "{a}-{e}-{l}", "1{a}{e}{l}", "+1 {a} {e} {l}", "{a}.{e}.{l}")
    for area in range(1000):
        for rest in ("2015550", "5550100", "9999999", "2345678", "8675309", "0000000"):
            for layout in layouts:
                value = layout.format(a=f"{area:03d}", e=rest[:3], l=rest[3:])
                fast, parsed = formatted_verdicts(value, "US")
                assert fast == parsed, value
