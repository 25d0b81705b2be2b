"""Phone normalisation and de-duplication."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk_mms.models import Recipient, RejectedRow, Rejection
from bulk_mms.reader import Row
from bulk_mms.scan import checked_rows, scan_input
from bulk_mms.validate import (
    _FLOAT,
    PhoneError,
    Printable,
    _canonical_in,
    _canonical_us,
    _formatted,
    _parsed,
    normalize_phone,
    recipient_rows,
)
from tests.conftest import JobFactory

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
        ("12125550100.0", "+12125550100"),  # a float column (pandas, a spreadsheet)
        (" 2125550100.00", "+12125550100"),
        ("+12125550100.0", "+12125550100"),
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
        ("212-555-0100 x12", "has an extension"),
        ("(212) 555-0100 ext. 12", "has an extension"),
        ("+1 212 555 0100 Extension 4", "has an extension"),
        ("212-555-0100 cell", "letters"),
        ("555-0100 x12", "letters"),  # an extension follows a whole number: ten digits
        ("000\u00a0000x\u00a00000", "letters"),
        ("+44 20 7946 0958", "a +44 number, not a US or Canadian one"),
        ("+1 876 555 0101", "outside the US and Canada"),  # Jamaica shares +1
        ("555-12", "not a valid"),
        ("310-1521", "a 7-digit service number, not a phone (310-1521)"),  # Canada's 310-XXXX
        ("+1 310 1521", "a 7-digit service number"),
        ("+1 555 555 0100", "not a valid"),  # 555 is not an area code
        ("212#5550100", "character '#'"),
        ("1.21255E+10", "scientific notation (1.21255E+10): a spreadsheet wrote it so"),
        ("1,21255E+10", "scientific notation (1,21255E+10)"),  # where the decimal mark is a comma
        ("2.1255501e9", "format the phone column as Text"),
        ("2125550100.5", "not a valid"),
        ("212.555.01.0", "not a valid"),
    ],
)
def test_unreachable_or_malformed_numbers_are_refused(raw: str, reason: str) -> None:
    """Letters, extensions, other countries, +1 outside US/Canada and invalid numbers raise
    with a reason."""
    with pytest.raises(PhoneError, match=None) as info:
        normalize_phone(raw)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        '="+12125550100"',  # Excel's text formula, as programs write it for Excel
        ' = "(212) 555-0100" ',
        '="2125550100"',
        "tel:+12125550100",  # a tel: URI (vCard, a CRM's export)
        "TEL:212-555-0100",
        "\uff0b\uff11 \uff08\uff12\uff11\uff12\uff09 \uff15\uff15\uff15\uff0d0100",  # full-width
        "212/555-0100",  # the area code parted by a slash
        "1 (212) 555-0100",
        "+1212 555 0100",
    ],
)
def test_marks_around_a_number_and_full_width_forms_read_as_the_number(value: str) -> None:
    """Excel's text formula, a tel: URI, full-width characters (an East Asian input method's)
    and separators where a number's parts meet are the number as written."""
    assert normalize_phone(value) == "+12125550100"


@pytest.mark.parametrize(
    "value",
    [
        "867-5309/212",  # a seven-digit number, then an extension or an area code
        "867-5309 212",
        "867.5309.212",
        "21255 50100",
        "+1 212 555 01 00",
        "2.125550100",
        "1 2125 550 100",
    ],
)
def test_digits_parted_as_no_nanp_number_is_are_refused_never_joined(value: str) -> None:
    """Ten digits (or 1 and ten) parted anywhere but between a +1 number's parts are refused
    saying so: joined, they would text a number nobody wrote (867-530-9212)."""
    with pytest.raises(PhoneError, match="parted as no US or Canadian number is written"):
        normalize_phone(value)


@pytest.mark.parametrize(
    "value",
    [
        "212-555-0100 / 415-555-0199",
        "212-555-0100/415-555-0199",
        "212-555-0100, 415-555-0199",
        "212-555-0100; 415-555-0199",
        "212-555-0100 or 415-555-0199",
        "212-555-0100 & 415-555-0199",
        "212-555-0100\n415-555-0199",
        "2125550100 4155550199",
        # each number written with spaces between its parts
        "+1 212 555 0100 / +1 415 555 0199",
        "+1 212 555 0100, +1 415 555 0199",
        "212 555 0100 or 415 555 0199",
        "(212) 555 0100; (415) 555 0199",
    ],
)
def test_two_numbers_in_one_cell_are_refused_saying_so(value: str) -> None:
    """A cell holding two numbers, whatever parts them, is refused as two numbers in one cell
    (not as letters, a character, or a number too long)."""
    with pytest.raises(PhoneError, match="two phone numbers in one cell"):
        normalize_phone(value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("#N/A", "a spreadsheet's error value (#N/A), not a phone number"),
        ("#VALUE!", "a spreadsheet's error value (#VALUE!)"),
        ("#ref!", "a spreadsheet's error value (#ref!)"),
        ("=12125550100", "a spreadsheet formula (=12125550100), not a phone number"),
        ("=A2", "a spreadsheet formula"),
    ],
)
def test_a_spreadsheets_error_value_or_formula_is_refused_as_such(value: str, reason: str) -> None:
    """An exported formula's error value or a formula's text is refused as what it is, not as a
    number holding a stray character."""
    with pytest.raises(PhoneError) as info:
        normalize_phone(value)
    assert reason in str(info.value)


def test_duplicates_are_rejected_after_the_first() -> None:
    """The first row with a number wins; the same number spelled differently later is rejected."""
    rows = [
        Row(2, {"phone": "+12125550100"}),
        Row(3, {"phone": "bad"}),
        Row(4, {"phone": "(212) 555-0100"}),
        Row(5, {"phone": "+12125550101"}),
    ]
    out = list(recipient_rows(rows, "phone"))
    assert out[0] == Recipient("+12125550100", 2, {})
    assert isinstance(out[1], RejectedRow)
    assert out[1].line == 3
    assert isinstance(out[2], RejectedRow)
    assert (out[2].line, out[2].value) == (4, "(212) 555-0100")
    assert out[2].reason.startswith("duplicate")
    assert out[3] == Recipient("+12125550101", 5, {})


@pytest.mark.parametrize("names", [("a",), ("a", "b")])
def test_a_printable_first_check_is_called_for_the_rows_it_may_change_only(
    names: tuple[str, ...],
) -> None:
    """As recipient_rows' first check, a Printable one is called only for the rows some of
    whose values are not printable, and every row comes out as calling it on each would make
    it (rejected by it, changed by it, or passed to the next check)."""
    called: list[int] = []

    def check(r: Recipient) -> Recipient | RejectedRow:
        called.append(r.line)
        if "\x01" in "".join(r.fields.values()):
            return RejectedRow(r.line, r.phone, "control", Rejection.ROW)
        return Recipient(r.phone, r.line, {k: v.replace("\r", "") for k, v in r.fields.items()})

    def after(r: Recipient) -> Recipient | RejectedRow:
        return RejectedRow(r.line, r.phone, "empty", Rejection.ROW) if not r.fields["a"] else r

    values = ["Ann", "", "A\x01", "B\r\nC", "Zo\u00eb", "tab\t"]
    rows = [Row(n, {"phone": f"+1212555010{n}", "a": v, "b": "x"}) for n, v in enumerate(values)]
    printable = Printable(names, check)
    out = list(recipient_rows(rows, "phone", checks=[printable, after]))
    assert called == [2, 3, 5]
    one_by_one = []
    for row in rows:
        r = printable(Recipient(row.fields["phone"], row.line, row.fields))
        one_by_one.append(r if type(r) is RejectedRow else after(r))
    assert [(type(o), o.line) for o in out] == [(type(o), o.line) for o in one_by_one]
    assert [o.fields for o in out if type(o) is Recipient] == [
        o.fields for o in one_by_one if type(o) is Recipient
    ]
    changed = out[3]
    assert type(changed) is Recipient
    assert changed.fields["a"] == "B\nC"


@pytest.mark.parametrize("names", [("a",), ("a", "b")])
def test_a_row_without_a_printable_checks_value_is_left_to_its_check(
    names: tuple[str, ...],
) -> None:
    """A row whose fields lack a value a first Printable check names (a row not from
    RowReader) is handed to that check, as calling it would: no KeyError."""
    seen: list[int] = []

    def check(r: Recipient) -> Recipient | RejectedRow:
        seen.append(r.line)
        return RejectedRow(r.line, r.phone, "missing", Rejection.ROW) if "a" not in r.fields else r

    rows = [
        Row(2, {"phone": "+12125550102"}),
        Row(3, {"phone": "+12125550103", "a": "x", "b": "y"}),
    ]
    out = list(recipient_rows(rows, "phone", checks=[Printable(names, check)]))
    assert seen == [2]
    assert [(type(o), o.line) for o in out] == [(RejectedRow, 2), (Recipient, 3)]


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


#: A number as people write it: any area code (000 to 999, and those of every +1 region),
#: exchange and line, in one of :data:`LAYOUTS`.
WRITTEN = st.builds(
    lambda layout, a, e, line: layout.format(a=a, e=e, l=line),
    st.sampled_from(LAYOUTS),
    st.one_of(st.integers(0, 999).map(lambda n: f"{n:03d}"), st.sampled_from(AREAS)),
    st.integers(0, 999).map(lambda n: f"{n:03d}"),
    st.integers(0, 9999).map(lambda n: f"{n:04d}"),
)


def formatted_verdicts(value: str, region: str) -> tuple[str, str]:
    """The verdicts of :func:`normalize_phone` (fast paths) and of the parser alone; a value
    written as a float (``2125550100.0``) is its digits to both (the parser would read the
    ``.0`` as more digits)."""
    digits = whole[1] if (whole := _FLOAT.fullmatch(value)) is not None else value
    return verdict(lambda: normalize_phone(value, region)), verdict(lambda: _parsed(digits, region))


@pytest.mark.parametrize(
    "value", ["0.00000000", "2125550100.0", "12125550100.00", "1.0", "2012.000000"]
)
def test_a_float_written_value_gets_the_verdict_of_its_digits(value: str) -> None:
    """A value written as a float, a number or not, gets the parser's verdict on its digits
    (the property tests below found ``0.00000000``, whose reason was the digits', not the
    parser's on the value as written, which the oracle asked for)."""
    fast, parsed = formatted_verdicts(value, "US")
    assert fast == parsed


@settings(max_examples=4000, deadline=None)
@given(
    value=WRITTEN,
    region=st.sampled_from(["US", "US", "CA", "GB", "JM"]),
    letter=st.one_of(st.none(), st.tuples(st.integers(0, 20), st.sampled_from("aOlx"))),
)
def test_formatted_numbers_get_the_parsers_verdict(
    value: str, region: str, letter: tuple[int, str] | None
) -> None:
    """A number written as people write it (or nearly: extensions, letters, a wrong count of
    digits, an 001 prefix, two +) gets the parser's verdict, the number or the same reason."""
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


#: The separators word processors and spreadsheets put between digits, and the ASCII each
#: stands for (written out here, apart from the code's table, so the two are checked).
TYPOGRAPHIC = {
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
    **dict.fromkeys("\u00a0\u2007\u2009\u202f", " "),
    **dict.fromkeys("\u00ad\u200b\u200c\u200d\u2060\ufeff", ""),
    # the direction marks and embeddings Windows wraps a copied number in
    **dict.fromkeys("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069", ""),
}
#: Those of them phonenumbers itself reads as punctuation.
PHONENUMBERS_READS = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u00a0\u00ad\u200b\u2060"


def parted_as_nanp(value: str) -> bool:
    """Whether the separators between ``value``'s digits (its ASCII spelling's: invisible
    characters are none) stand only where a +1 number's parts meet: after the 1, the area
    code, the exchange. Other counts of digits than ten, or eleven starting with 1: True."""
    text = ascii_spelling(value)
    digits = [ch for ch in text if ch.isdecimal()]
    cuts, seen, gap = set(), 0, False
    for ch in text:
        if ch.isdecimal():
            if gap and seen:
                cuts.add(seen)
            seen, gap = seen + 1, False
        else:
            gap = True
    if len(digits) == 10:
        return cuts <= {3, 6}
    if len(digits) == 11 and digits[0] == "1":
        return cuts <= {1, 4, 7}
    return True


def ascii_spelling(value: str) -> str:
    """``value`` with each typographic separator as the ASCII it stands for."""
    return "".join(TYPOGRAPHIC.get(ch, ch) for ch in value)


def phonenumbers_verdict(value: str) -> str:
    """phonenumbers' own verdict: the E.164 number when it parses ``value`` as a valid US or
    Canadian number, else ``refused``."""
    try:
        number = phonenumbers.parse(value, "US")
    except phonenumbers.NumberParseException:
        return "refused"
    ok = phonenumbers.is_valid_number(number) and len(str(number.national_number)) == 10
    if not ok or phonenumbers.region_code_for_number(number) not in ("US", "CA"):
        return "refused"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@pytest.mark.parametrize("separator", sorted(TYPOGRAPHIC))
def test_a_typographic_separator_reads_as_the_ascii_one(separator: str) -> None:
    """415-847-5640 with its hyphens an en dash (autocorrect's), or any dash, space or
    invisible character a word processor puts between digits, is the number."""
    for layout in ("{a}{s}{e}{s}{l}", "({a}){s}{e}{s}{l}", "+1{s}{a}{s}{e}{s}{l}", "{s}{a}{e}{l}"):
        value = layout.format(a="415", e="847", l="5640", s=separator)
        assert normalize_phone(value) == "+14158475640", repr(value)


@pytest.mark.parametrize(
    "value", ["\u202a+1 (212) 555-0100\u202c", "\u200e+12125550100", "\u2066212-555-0100\u2069"]
)
def test_a_number_copied_with_direction_marks_is_the_number(value: str) -> None:
    """A number copied from Windows' contacts or an email (wrapped in the invisible
    left-to-right embedding and its end, or a left-to-right mark) is the number, not a row
    rejected for a stray character."""
    assert normalize_phone(value) == "+12125550100"


def test_the_en_dash_of_a_cp1252_file_reads_as_a_hyphen() -> None:
    """Byte 0x96 of a cp1252 export, decoded, is an en dash: the row is a recipient."""
    raw = b"415\x96847\x965640".decode("cp1252")
    out = list(recipient_rows([Row(2, {"phone": raw})], "phone"))
    assert out == [Recipient("+14158475640", 2, {})]


@pytest.mark.parametrize(
    "value", ["'+12065713909", "'(206) 571-3909", " '206.571.3909", "'12065713909"]
)
def test_a_spreadsheets_leading_apostrophe_is_no_part_of_the_number(value: str) -> None:
    """The apostrophe a spreadsheet or a CSV-safe export (Shopify's, a Text cell's) puts in
    front of a number to keep it text is not read as a stray character: the row is a
    recipient."""
    assert normalize_phone(value) == "+12065713909"


@pytest.mark.parametrize("value", ["''+12065713909", "+12065713909'", "206'571'3909"])
def test_an_apostrophe_anywhere_else_is_still_refused(value: str) -> None:
    """Only one apostrophe, first, is the text mark: any other is refused by name."""
    with pytest.raises(PhoneError, match='character "\'"'):
        normalize_phone(value)


def test_other_stray_characters_are_still_refused_by_name() -> None:
    """A bullet or a letter between digits is no separator: refused, the character named."""
    with pytest.raises(PhoneError, match="character '•'"):
        normalize_phone("415•847•5640")
    with pytest.raises(PhoneError, match="letters"):
        normalize_phone("415\u2013847\u2013564O")


#: For an ASCII separator, the typographic characters that stand for it.
TYPOGRAPHIC_FOR = {
    ascii_: [ch for ch, a in TYPOGRAPHIC.items() if a == ascii_] for ascii_ in ("-", " ")
}


@settings(max_examples=3000, deadline=None)
@given(
    written=WRITTEN,
    picks=st.lists(st.integers(0, 99), min_size=1, max_size=8),
    inserts=st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(sorted(TYPOGRAPHIC))), max_size=3
    ),
)
def test_typographic_separators_get_the_verdict_of_the_ascii_spelling(
    written: str, picks: list[int], inserts: list[tuple[int, str]]
) -> None:
    """A number written as people write it, its dashes and spaces swapped for typographic ones
    and typographic separators put anywhere, gets the parser's verdict on its ASCII spelling
    (the number, or the same reason)."""
    swapped = []
    for ch in written:
        options = TYPOGRAPHIC_FOR.get(ch)
        swapped.append(options[picks.pop() % len(options)] if options and picks else ch)
    value = "".join(swapped)
    for at, ch in inserts:
        cut = at % (len(value) + 1)
        value = value[:cut] + ch + value[cut:]
    assert verdict(lambda: normalize_phone(value)) == verdict(
        lambda: _parsed(ascii_spelling(value), "US")
    ), repr(value)


@settings(max_examples=2000, deadline=None)
@given(
    digits=st.text(alphabet="0123456789", min_size=9, max_size=13),
    punctuation=st.lists(
        st.tuples(st.integers(0, 13), st.sampled_from(f" -.()+{PHONENUMBERS_READS}")),
        max_size=5,
    ),
)
def test_separators_phonenumbers_reads_get_its_own_verdict(
    digits: str, punctuation: list[tuple[int, str]]
) -> None:
    """Digits with punctuation anywhere, typographic separators phonenumbers reads among it:
    the number phonenumbers finds valid in the US or Canada, or a refusal when it finds none;
    a value that reads as a float (``2012.000000``) is its digits before the point, never
    the parser's longer number (hypothesis found the parser texting 201-200-0000 for it)."""
    value = digits
    for at, ch in punctuation:
        value = value[:at] + ch + value[at:]
    ours = verdict(lambda: normalize_phone(value))
    number = whole[1] if (whole := _FLOAT.fullmatch(value)) is not None else value
    expected = phonenumbers_verdict(number) if parted_as_nanp(number) else "refused"
    assert (ours if not ours.startswith("refused") else "refused") == expected, repr(value)


def test_checked_rows_leave_a_rejected_rows_number_to_a_later_valid_row(jobs: JobFactory) -> None:
    """A row rejected for its group_by value or its text is no first sighting of its number:
    the person's later valid row is a recipient, and only a valid row makes duplicates."""
    jobs.csv("phone,household,first\n")
    job = jobs.job(extra='group_by = "household"', message='text = "{first}"')
    rows: list[Row | RejectedRow] = [
        Row(2, {"phone": "+12125550101", "household": " ", "first": "Ann"}),
        Row(3, {"phone": "212-555-0101", "household": "H1", "first": "Ann"}),
        Row(4, {"phone": "+12125550102", "household": "H2", "first": ""}),
        Row(5, {"phone": "+12125550102", "household": "H2", "first": "Bob"}),
        Row(6, {"phone": "(212) 555-0102", "household": "H2", "first": "Bob"}),
    ]
    out = list(checked_rows(job, rows))
    assert [(type(x).__name__, x.line) for x in out] == [
        ("RejectedRow", 2), ("Recipient", 3), ("RejectedRow", 4), ("Recipient", 5),
        ("RejectedRow", 6),
    ]  # fmt: skip
    last = out[-1]
    assert isinstance(last, RejectedRow)
    assert (last.kind, last.value) == (Rejection.DUPLICATE, "(212) 555-0102")


def test_a_header_repeated_mid_file_is_rejected_as_such() -> None:
    """A row whose number is the phone column's name (files joined into one) is rejected as
    the header again, a row not a number, also with the byte order mark each joined Excel
    export began with; any other word is letters."""
    rows = [Row(5, {"phone": " phone"}), Row(6, {"phone": "tel"}), Row(7, {"phone": "\ufeffphone"})]
    out = list(recipient_rows(rows, "phone"))
    assert [
        (r.line, r.reason.split(" (")[0], r.kind) for r in out if isinstance(r, RejectedRow)
    ] == [
        (5, "the header row again", Rejection.ROW),
        (6, "phone number contains letters", Rejection.INVALID),
        (7, "the header row again", Rejection.ROW),
    ]


def test_a_row_whose_number_is_one_of_the_jobs_senders_is_rejected_as_a_loss(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A recipient whose number is one of the job's senders (the pool's second, written as
    people write it; the first, canonical) is rejected with a reason that says so, a loss in
    the scan's counts and in --rejected-csv, never a recipient; the rest are recipients."""
    jobs.csv("phone,first\n+12125550101,Ann\n(212) 555-0199,Bob\n+12125550198,Cy\n")
    job = jobs.job(sender='["+12125550198", "+12125550199"]')
    scan = scan_input(job, rejected_csv=tmp_path / "rejected.csv")
    assert (scan.recipients, scan.lost_rows) == (1, 2)
    reason = "is in message.from): a number never texts itself, and the API's answer lists it "
    reason += "as the sender, not a recipient"
    assert (tmp_path / "rejected.csv").read_text(encoding="utf-8-sig").splitlines() == [
        "line,value,reason",
        f'3,(212) 555-0199,"the job\'s own sender (+12125550199 {reason}"',
        f'4,+12125550198,"the job\'s own sender (+12125550198 {reason}"',
    ]
    assert scan.lost == {"the job's own sender": 2}
    rows: list[Row | RejectedRow] = [Row(2, {"phone": "+12125550198", "first": "A"})]
    [out] = checked_rows(job, rows)
    assert isinstance(out, RejectedRow)
    assert out.kind == Rejection.INVALID
