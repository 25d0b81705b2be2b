"""Turn raw rows into recipients: normalise numbers to E.164, refuse what group MMS cannot reach,
and drop numbers already seen in this job.

Group MMS reaches the US and Canada only, so a number is accepted only if phonenumbers says it is
a valid number of one of those two regions, and has the ten digits of a phone there.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final, final

from bulk_mms.models import Recipient, RejectedRow, Rejection
from bulk_mms.reader import Row
from bulk_mms.spans import number_text
from bulk_mms.words import escaped

if TYPE_CHECKING:
    from phonenumbers import PhoneNumberDesc

_ALLOWED_PUNCTUATION = frozenset(" \t+-().\u00a0/")
_REACHABLE_REGIONS = frozenset({"US", "CA"})


class PhoneError(ValueError):
    """A value is not a number group MMS can reach. The message is the reason. Private."""


def normalize_phone(value: str, region: str = "US") -> str:
    """Return ``value`` as E.164 (``+14155550100``).

    A number already in canonical ``+1NXXNXXXXXX`` form (``+1`` and ten ASCII digits, the
    area code not starting with 0 or 1: a leading 1 would be taken for the national prefix by
    the parser, so that one takes the slow path) takes :func:`_nanp`, which asks
    phonenumbers' own metadata the same questions without parsing;
    its commonest answers, a valid US or Canadian number, are one regex call each
    (:func:`_canonical_in`). A +1 number written as people write it (``(646) 991-6750``,
    ``415-847-5622``, ``14152981157``, ``+1 206 571 3909``: :func:`_formatted`) is decided
    as its canonical form; one written as a float (``12125550100.0``) as its digits.
    Anything else is parsed. Every path gives the same verdict for
    every number (property tests hold them to it). The dashes, spaces and invisible
    characters that word processors put between digits (``415\u2013847\u20135640``) count as the
    ASCII separators they stand for (:data:`_SEPARATORS`). One apostrophe in front
    (``'+12065713909``) is a spreadsheet's mark that the cell is text, not part of the number,
    and so are Excel's text formula around it (``="+12065713909"``) and a ``tel:`` in front.
    Separators between digits must part them as a +1 number's parts are parted (1, area code,
    exchange, line: :func:`_grouped`): ``867-5309/212`` is a number and something else, never
    texted as 867-530-9212.

    Args:
        value: what the input file holds, in any common national or international format.
        region: the region assumed for numbers written without ``+``.

    Raises:
        PhoneError: empty, has letters or stray characters, is not a valid number, or is not
            in the US or Canada.
    """
    if (_CANONICAL_US or _canonical_us())(value) is not None:
        return value  # the common case, in one regex call: a valid US number, as written
    return _after_canonical_us(value, region)


def _after_canonical_us(value: str, region: str) -> str:
    """:func:`normalize_phone` for a value its one-regex step did not take: a valid Canadian
    number as written in one regex call too (:func:`_canonical_in`), other canonical numbers
    by :func:`_nanp` (which says why not); then, past a spreadsheet's text mark, text formula
    or a ``tel:`` (:func:`~bulk_mms.spans.number_text`), the typographic separators in a value
    that is not ASCII read as the ASCII ones (:data:`_SEPARATORS`), a +1 number written with
    the usual punctuation (:func:`_formatted`) as its canonical form, the rest parsed."""
    if (
        len(value) == 12
        and value[:2] == "+1"
        and "2" <= value[2] <= "9"
        and value.isascii()
        and value[2:].isdigit()
    ):
        if _canonical_in("CA")(value) is not None:
            return value
        return _nanp(value)
    if "'" in value and (marked := value.lstrip()).startswith("'"):
        value = marked[1:]  # the text mark of a spreadsheet, or of an export made CSV-safe
    elif "=" in value or ":" in value:
        value = number_text(value)  # ="+12065713909", tel:+12065713909: the number in it
    if not value.isascii():
        value = value.translate(_SEPARATORS)
    if "." in value and (whole := _FLOAT.fullmatch(value)) is not None:
        value = whole[1]  # a number a spreadsheet or a program wrote as a float: its digits
    if (phone := _formatted(value, region)) is not None:
        return normalize_phone(phone, region)  # canonical now: decided as written that way
    return _parsed(value, region)


#: The separators word processors and spreadsheets put between a number's digits (Excel's
#: and Word's autocorrect puts an en dash, U+2013, byte 0x96 in cp1252, for the hyphen of
#: ``415-847-5640``), as the ASCII the rest of the path reads: every dash and the minus sign
#: as ``-``, the no-break and narrow spaces as a space, and the invisible ones (zero-width
#: space and joiners, word joiner, byte-order mark, soft hyphen, the direction marks) deleted.
_SEPARATORS: Final = str.maketrans(
    dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-")
    | dict.fromkeys("\u00a0\u2007\u2009\u202f", " ")
    | dict.fromkeys("\u00ad\u200b\u200c\u200d\u2060\ufeff", None)
    # the full-width forms an East Asian input method types (its digits phonenumbers reads)
    | {"\uff0b": "+", "\uff0d": "-", "\uff08": "(", "\uff09": ")", "\u3000": " "}
    # the direction marks, embeddings and isolates Windows wraps a copied number in
    | dict.fromkeys("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069", None)
)


#: A number written as a float (``12125550100.0``: a spreadsheet's number column, pandas'
#: export of a column with gaps), its digits in the group: they are all there.
_FLOAT: Final = re.compile(r"\s*(\+?[0-9]+)\.0+\s*", re.ASCII)
#: A number in scientific notation (``1.21255E+10``, ``1,21255E+10`` where the decimal mark is
#: a comma): a spreadsheet showed it so and exported what it showed, its last digits gone.
_SCIENTIFIC: Final = re.compile(r"\s*\+?[0-9]+(?:[.,][0-9]*)?[eE]\+?[0-9]+\s*", re.ASCII)
#: An error value a spreadsheet's formula gives (``#N/A``, ``#VALUE!``), exported as the cell.
_SPREADSHEET_ERROR: Final = re.compile(
    r"\s*#(?:N/A|VALUE!|REF!|DIV/0!|NAME\?|NUM!|NULL!|SPILL!|CALC!|FIELD!|BLOCKED!|"
    r"CONNECT!|BUSY!|UNKNOWN!|GETTING_DATA)\s*",
    re.IGNORECASE,
)
#: What parts two numbers written in one cell (``415-555-0100 / 212-555-0199``,
#: ``+1 415 555 0100 or +1 212 555 0199``, one on each line of the cell); then, for numbers
#: parted by spaces alone (``4155550100 2125550199``), a space too, as no part of a number
#: written with them has seven digits (``+1 415 555 0100``).
_BETWEEN_NUMBERS: Final = re.compile(r"[,;/&|\r\n]|\b(?:or|and)\b", re.IGNORECASE)
_BETWEEN_NUMBERS_OR_SPACE: Final = re.compile(r"[,;/&|\s]|\b(?:or|and)\b", re.IGNORECASE)
#: A number's parts as a +1 number is written, separators (anything but a digit) only between
#: them: ``1``, the area code, the exchange, the line (:func:`_grouped`).
_GROUPING: Final = r"\D*(?:1\D*)?\d{3}\D*\d{3}\D*\d{4}\D*"
_NANP_GROUPING: Final = re.compile(_GROUPING)
#: A +1 number as people write it (:func:`_formatted`): ASCII digits parted only where its
#: parts meet by spaces, ``-``, ``.``, ``(`` and ``)``; ``+1``, ``1`` or nothing first (the
#: ``+`` group says which); the area code, the exchange and the line in groups 2 to 4.
_PUNCTUATION: Final = r"[ ().\-]*"
_WRITTEN_NANP: Final = re.compile(
    rf"{_PUNCTUATION}(?:(\+){_PUNCTUATION}1|1)?{_PUNCTUATION}([2-9]\d\d){_PUNCTUATION}(\d{{3}})"
    rf"{_PUNCTUATION}(\d{{4}}){_PUNCTUATION}",
    re.ASCII,
).fullmatch
#: A whole number (ten digits or more) followed by a desk phone's extension (``x123``,
#: ``ext. 12``, ``extension 4``, ``#5``): what ``contains letters`` would otherwise say of it.
#: (Read with the separators made ASCII: :data:`_SEPARATORS`.)
_EXTENSION: Final = re.compile(
    rf"(?P<number>[\d{re.escape(''.join(sorted(_ALLOWED_PUNCTUATION)))}]*\d)[ \t)]*"
    r"(?:x|ext\.?|extension|#)[ \t]*\d{1,6}",
    re.IGNORECASE,
)

#: Regions in which phonenumbers reads ten digits, or eleven starting with 1, as a +1
#: number with those ten digits (national prefix ``1``, nothing transformed).
_PLAIN_NANP: Final = frozenset({"US", "CA"})
#: Longer values go to the parser (it refuses any over 250 characters).
_FORMATTED_MAX_LENGTH: Final = 40


def _formatted(value: str, region: str) -> str | None:
    """``value`` as canonical ``+1NXXNXXXXXX`` when it is written as people write a +1
    number (:data:`_WRITTEN_NANP`): ASCII digits, spaces, ``-``, ``.``, ``(`` and ``)`` only,
    and either ``+1`` then ten digits, or (for a ``region`` in :data:`_PLAIN_NANP`) ten digits
    or ``1`` and ten; the area code not starting with 0 or 1; the punctuation only between
    the number's parts (as :func:`_grouped` has them). None for anything else: the parser's
    path decides it.

    The parser reads every value this returns a number for as that number (property tests
    and a sweep of every area code hold the two to the same verdicts)."""
    if len(value) > _FORMATTED_MAX_LENGTH or (parts := _WRITTEN_NANP(value)) is None:
        return None
    if parts[1] is None and region not in _PLAIN_NANP:
        return None  # without +1, a national number of the job's region: the parser's
    return "+1" + parts[2] + parts[3] + parts[4]


def _grouped(text: str) -> bool:
    """Whether the separators between ``text``'s digits part them where a +1 number's parts
    part: after the ``1``, the area code and the exchange (``1 (415) 555-0100``,
    ``415/555-0100``), or not at all. A value of ten digits, or of eleven starting with 1,
    parted anywhere else is a number and something else (``867-5309/212``: a seven-digit
    number and an extension or another number's area code), or two numbers' pieces: joined,
    its digits would be a number nobody wrote. Any other count of digits: True (the parser
    decides it)."""
    digits = [ch for ch in text if ch.isdecimal()]  # what the pattern's \\d reads
    n = len(digits)
    if n != _NSN_LENGTH and not (n == _NSN_LENGTH + 1 and digits[0] == "1"):
        return True
    return _NANP_GROUPING.fullmatch(text) is not None


def _misgrouped(text: str) -> str:
    """Why a value whose digits are parted as no +1 number is (:func:`_grouped`) is refused."""
    return (
        f"phone number's digits are parted as no US or Canadian number is written ({text}): "
        "a number and an extension, or two numbers, in one cell? Keep one number, written "
        "area code first (415-555-0100)"
    )


def _refused_value(text: str) -> str | None:
    """Why ``text`` is refused when it is a known thing that is no number: two numbers in
    one cell, a spreadsheet's error value or formula; None otherwise (its own reason stands).
    Asked only of values already refused."""
    if _two_numbers(text):
        return (
            f"two phone numbers in one cell ({text}): keep one in the cell (the other in a "
            "row of its own)"
        )
    if text.startswith("#") and _SPREADSHEET_ERROR.fullmatch(text) is not None:
        return (
            f"a spreadsheet's error value ({text.strip()}), not a phone number: fix the "
            "formula that gave it, or export the number itself"
        )
    if text.startswith("="):
        return (
            f"a spreadsheet formula ({text}), not a phone number: export the values, with the "
            "phone column formatted as Text"
        )
    return None


def _two_numbers(text: str) -> bool:
    """Whether ``text`` holds two numbers or more: parts of seven digits or more, between
    the marks that part numbers (:data:`_BETWEEN_NUMBERS`), or else between spaces too."""
    return any(
        sum(sum(map(str.isdigit, part)) >= 7 for part in between.split(text)) >= 2
        for between in (_BETWEEN_NUMBERS, _BETWEEN_NUMBERS_OR_SPACE)
    )


def _stray(text: str, ch: str) -> str:
    """Why ``text`` is refused for holding ``ch``, a character no number is written with:
    what it is when that is known (:func:`_refused_value`, scientific notation, an
    extension), else the character."""
    if (known := _refused_value(text)) is not None:
        return known
    if _SCIENTIFIC.fullmatch(text) is not None:
        return (
            f"phone number in scientific notation ({text}): a spreadsheet wrote it so, "
            "its last digits maybe lost; format the phone column as Text and export "
            "it again"
        )
    ext = _EXTENSION.fullmatch(text.translate(_SEPARATORS))  # as every path writes it
    if ext is not None and sum(map(str.isdigit, ext["number"])) >= 10:
        return "phone number has an extension: a text reaches no extension"
    kind = "letters" if ch.isalpha() else f"the character {ch!r}"
    return f"phone number contains {kind}"


def _parsed(value: str, region: str) -> str:
    """:func:`normalize_phone` by phonenumbers' parser: the path for every form of number."""
    text = value.strip()
    if not text:
        raise PhoneError("empty phone number")
    for ch in text:
        if not ch.isdigit() and ch not in _ALLOWED_PUNCTUATION:
            # phonenumbers would read letters as a vanity number (1-800-FLOWERS); in a
            # recipient list they are far more likely a typo or an extension
            raise PhoneError(_stray(text, ch))
    if not _grouped(text):
        raise PhoneError(_refused_value(text) or _misgrouped(text))
    import phonenumbers  # noqa: PLC0415 - a run of canonical numbers never loads it

    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise PhoneError(_refused_value(text) or f"not a phone number ({exc._msg})") from None
    if number.country_code != 1:
        raise PhoneError(
            f"a +{number.country_code} number, not a US or Canadian one "
            "(group MMS reaches the US and Canada only)"
        )
    # is_valid_number would search the +1 regions for this number's region itself; asking for
    # the region once and checking validity there does that search only once.
    where = phonenumbers.region_code_for_number(number)
    if where is None or not phonenumbers.is_valid_number_for_region(number, where):
        raise PhoneError(_refused_value(text) or _INVALID)
    if where not in _REACHABLE_REGIONS:
        raise PhoneError(
            f"a +1 number outside the US and Canada ({where}); group MMS reaches the US "
            "and Canada only"
        )
    national = str(number.national_number)
    if len(national) != _NSN_LENGTH:
        # phonenumbers' valid seven-digit service numbers (Canada's 310-XXXX): no phone
        # behind them takes a text, and the API refuses the whole group that holds one
        raise PhoneError(
            f"a {len(national)}-digit service number, not a phone ({text}): group MMS reaches "
            "ten-digit US and Canadian numbers only"
        )
    return f"+{number.country_code}{national}"


_INVALID: Final = "not a valid US or Canadian phone number"

#: The national number's length in the fast path: every pattern is compiled for it alone.
_NSN_LENGTH: Final = 10


def _alternatives(*descs: PhoneNumberDesc | None) -> str:
    """A pattern (source) that fully matches a 10-digit national number when any of ``descs``
    does (phonenumbers' ``_is_number_matching_desc``: its possible lengths, then its pattern);
    empty when none can."""
    return "|".join(
        f"(?:{d.national_number_pattern})"
        for d in descs
        if d is not None
        and d.national_number_pattern
        and (not d.possible_length or _NSN_LENGTH in d.possible_length)
    )


@functools.cache
def _validity(code: str) -> re.Pattern[str] | None:
    """One pattern that fully matches exactly a region's valid 10-digit national numbers
    (:func:`_validity_source`); None when no number can be valid. One regex call a number;
    compiled when a number first needs it, so a US list never pays for the other twenty-four
    regions."""
    source = _validity_source(code)
    return re.compile(source) if source is not None else None


def _validity_source(code: str) -> str | None:
    """:func:`_validity`'s pattern, as phonenumbers asks: the region's general pattern (a
    lookahead over the whole number), then any type that makes a number valid (mobile only
    where it differs from fixed-line; else it is never asked). None when none can match."""
    import phonenumbers  # noqa: PLC0415 - a run of canonical US numbers may never need it

    m = phonenumbers.PhoneMetadata.metadata_for_region(code, None)
    assert m is not None
    general = _alternatives(m.general_desc)
    # the commonest types first: which alternative matches never changes whether one does (a
    # full match with the general pattern's lookahead), and most numbers are fixed or mobile
    types = _alternatives(
        m.fixed_line, None if m.same_mobile_and_fixed_line_pattern else m.mobile,
        m.premium_rate, m.toll_free, m.shared_cost, m.voip, m.personal_number, m.pager, m.uan,
        m.voicemail,
    )  # fmt: skip
    if not general or not types:
        return None
    return f"(?=(?:{general})\\Z)(?:{types})"


@functools.cache
def _nanp_regions() -> tuple[tuple[str, re.Pattern[str] | None], ...]:
    """The +1 regions in phonenumbers' own order (the US first), each with its leading digits
    (what places a number in it before validity does), where it has them."""
    import phonenumbers  # noqa: PLC0415 - a run of canonical US numbers may never need it

    out = []
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1]:
        m = phonenumbers.PhoneMetadata.metadata_for_region(code, None)
        if m is not None:
            leading = m.leading_digits
            out.append((code, re.compile(leading) if leading is not None else None))
    return tuple(out)


#: ``fullmatch`` of :func:`_canonical_us`'s pattern, once made (the first number makes it).
_CANONICAL_US: Callable[[str], re.Match[str] | None] | None = None


def _canonical_us() -> Callable[[str], re.Match[str] | None]:
    """:func:`_canonical_in` the first +1 region (the US), kept where the row loop finds it
    without a call."""
    import phonenumbers  # noqa: PLC0415 - loaded when the first number needs it

    global _CANONICAL_US  # noqa: PLW0603 - made once, when the first number needs it
    _CANONICAL_US = _canonical_in(phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1][0])
    return _CANONICAL_US


@functools.cache
def _canonical_in(code: str) -> Callable[[str], re.Match[str] | None]:
    """What :func:`_nanp` decides for a reachable region, as one pattern over the whole value
    (:func:`_canonical_source`), derived in memory from phonenumbers' metadata when first
    needed. Its ``fullmatch``."""
    return re.compile(_canonical_source(code), re.ASCII).fullmatch


def _canonical_source(code: str) -> str:
    """:func:`_canonical_in`'s pattern: ``+1`` and ten ASCII digits, the area code not 0 or 1,
    claimed by no +1 region before ``code`` in phonenumbers' order (by its leading digits, or
    for one without them, by being valid there), in ``code``'s leading digits where it has
    them, and valid in ``code``; one that matches nothing for a region group MMS cannot reach.

    Only the metadata of ``code`` and the regions before it is loaded: a list of valid US
    numbers never loads the other twenty-four regions' nor compiles their patterns (what
    :func:`_nanp_regions` does for any other number)."""
    import phonenumbers  # noqa: PLC0415 - loaded when the first number needs it

    source = "(?!)"  # matches nothing: the full path decides every number
    claimed: list[str] = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1]:
        m = phonenumbers.PhoneMetadata.metadata_for_region(region, None)
        if m is None:
            continue
        if region == code:
            valid = _validity_source(code)
            if valid is not None and code in _REACHABLE_REGIONS:
                lead = f"(?=(?:{m.leading_digits}))" if m.leading_digits is not None else ""
                source = f"\\+1(?=[2-9][0-9]{{9}}\\Z){''.join(claimed)}{lead}(?:{valid})"
            break
        if m.leading_digits is not None:
            claimed.append(f"(?!(?:{m.leading_digits}))")
        elif (valid := _validity_source(region)) is not None:
            claimed.append(f"(?!(?:{valid})\\Z)")
    return source


def _nanp(phone: str) -> str:
    """:func:`normalize_phone` for a canonical ``+1`` number, from the metadata directly:
    ``region_code_for_number`` (leading digits where a region has them, else validity; the
    first region that claims it), then validity for that region: phonenumbers'
    ``_number_type_helper(nn, metadata) != UNKNOWN``, in one regex (:func:`_validity`).
    This runs once a row: it is kept to plain locals."""
    nn = phone[2:]
    for code, leading in _nanp_regions():
        if leading is not None and leading.match(nn) is None:
            continue
        valid = _validity(code)
        if valid is None or valid.fullmatch(nn) is None:
            if leading is None:
                continue  # not this region's: the next one may claim it
            raise PhoneError(_INVALID)
        if code not in _REACHABLE_REGIONS:
            raise PhoneError(
                f"a +1 number outside the US and Canada ({code}); group MMS reaches the "
                "US and Canada only"
            )
        return phone
    raise PhoneError(_INVALID)


#: A check of a recipient after its number and before duplicates (:func:`recipient_rows`): the
#: recipient (its values perhaps made anew), or its row rejected.
Check = Callable[[Recipient], Recipient | RejectedRow]


@final
class Printable:
    """A :data:`Check` that passes unchanged every recipient whose values under ``names`` are
    all printable (``str.isprintable``), and leaves the others to ``check``. As the first of
    :func:`recipient_rows`' checks, it is asked without a call of it (:attr:`printable` of
    :attr:`values`: in C for one name), so the usual row makes none."""

    __slots__ = ("check", "names", "printable", "values")

    def __init__(self, names: Sequence[str], check: Check) -> None:
        self.names = tuple(names)
        self.check = check
        #: A row's values under ``names``: the one value, or a tuple of them.
        self.values: Callable[[Mapping[str, str]], object] = itemgetter(*self.names)
        #: Whether such values are all printable.
        self.printable: Callable[[Any], bool] = (
            str.isprintable if len(self.names) == 1 else _all_printable
        )

    def clears(self, fields: Mapping[str, str]) -> bool:
        """Whether a row's ``fields`` pass unchanged (a value missing: ``check`` decides)."""
        try:
            return self.printable(self.values(fields))
        except KeyError:
            return False

    def __call__(self, r: Recipient) -> Recipient | RejectedRow:
        return r if self.clears(r.fields) else self.check(r)


def _all_printable(values: tuple[str, ...]) -> bool:
    return all(map(str.isprintable, values))


def recipient_rows(
    rows: Iterable[Row | RejectedRow],
    phone_column: str,
    region: str = "US",
    checks: Sequence[Check] = (),
    *,
    repeated: set[int] | None = None,
    excluded: Container[int] = (),
    senders: Container[str] = (),
) -> Iterator[Recipient | RejectedRow]:
    """Each row as a :class:`Recipient` with its number in E.164, or rejected, in input order;
    rejected rows pass through. A row is rejected for the first of these that applies (the
    checks are asked before the number's earlier rows are looked at):

    - for its number, with the reason it is not one group MMS can reach (or, for a number
      that is the phone column's name, that the row is the header again), or, when it is
      one of ``senders`` (the job's ``message.from``), that it is the job's own sender (a
      loss: a number never texts itself, and the send's answer lists the sender among the
      group's participants, where it is taken for the sender, not a member);
    - as a duplicate, when an earlier recipient has its number (the reason's value is the row's
      as written), whatever else is wrong with it: that person is in the job. Only recipients
      count: a row rejected for its values leaves its number free for a later, valid row of
      the same person, who is sent to, never called a duplicate of a row that was not sent.
      ``repeated``, if given, gets the number (as an int) of each;
    - as excluded, when its number (as an int) is in ``excluded`` (the numbers an
      ``--exclude-sent`` ledger sent), whatever else is wrong with it: that person was sent
      (a valid row's is still its number's first sighting);
    - by the first of ``checks`` that rejects it (each is given the recipient the one before
      it gave).

    One loop a row, the checks called in it: a pass over a million rows makes each step once.
    Seen numbers are kept as ints (E.164 digits), about 70 bytes each, so a million-row file
    stays well inside the memory budget.
    """
    # normalize_phone's first step, inline; what it does not take goes on to the rest
    canonical_us = _CANONICAL_US or _canonical_us()
    seen: set[int] = set()
    remember = seen.add
    # a first check of Printable values, asked without a call of it (as Printable.clears
    # asks, a value missing left to the check): most rows go on to the rest at once
    first = checks[0] if checks and type(checks[0]) is Printable else None
    rest = checks[1:] if first is not None else checks
    # without one, never asked
    printable: Callable[[Any], bool] = first.printable if first is not None else bool
    values: Callable[[Mapping[str, str]], object] = first.values if first is not None else id
    for row in rows:
        if type(row) is RejectedRow:
            yield row
            continue
        fields = row.fields
        raw = fields[phone_column]
        if canonical_us(raw) is not None:
            phone = raw
        else:
            try:
                phone = _after_canonical_us(raw, region)
            except PhoneError as exc:
                yield _not_a_number(row.line, raw, phone_column, exc)
                continue
        if phone in senders:
            yield _own_sender(row.line, raw, phone)
            continue
        recipient = Recipient(phone, row.line, fields)
        try:
            todo = rest if first is None or printable(values(fields)) else checks
        except KeyError:  # a value it names is missing (a row not RowReader's): it decides
            todo = checks
        for check in todo:
            checked = check(recipient)
            if type(checked) is RejectedRow:
                value = recipient.fields.get(phone_column, phone)
                yield _unless_sent(
                    checked, phone, value, seen=seen, excluded=excluded, repeated=repeated
                )
                break
            recipient = checked
        else:
            key = int(phone)  # the digits: int reads past the "+"
            if key in seen:
                value = recipient.fields.get(phone_column, phone)
                yield _duplicate(row.line, value, phone, repeated)
                continue
            remember(key)
            if key in excluded:
                yield _excluded(row.line, phone)
                continue
            yield recipient


def _duplicate(line: int, value: str, phone: str, repeated: set[int] | None) -> RejectedRow:
    """The row at ``line`` (its phone cell ``value``) rejected as a duplicate of an earlier
    recipient's ``phone``, which is added to ``repeated`` (as an int) if given."""
    if repeated is not None:
        repeated.add(int(phone))
    reason = f"duplicate: {phone} appears earlier in the input"
    return RejectedRow(line, value, reason, Rejection.DUPLICATE)


def _own_sender(line: int, raw: str, phone: str) -> RejectedRow:
    """The row at ``line`` (its phone cell ``raw``) rejected: ``phone`` is the job's own
    sender."""
    reason = (
        f"the job's own sender ({phone} is in message.from): a number never texts itself, "
        "and the API's answer lists it as the sender, not a recipient"
    )
    return RejectedRow(line, raw, reason, Rejection.INVALID)


def _excluded(line: int, phone: str) -> RejectedRow:
    """The row at ``line`` left out: an ``--exclude-sent`` ledger sent ``phone``."""
    return RejectedRow(line, phone, _EXCLUDED, Rejection.EXCLUDED)


def _unless_sent(
    rejected: RejectedRow,
    phone: str,
    value: str,
    *,
    seen: Container[int],
    excluded: Container[int],
    repeated: set[int] | None,
) -> RejectedRow:
    """A row a check rejected (its number ``phone``, its phone cell ``value``), as it is, but
    when its person is sent all the same, which makes it no loss: a duplicate when a
    recipient before it has the number (:func:`_duplicate`, in ``seen``), excluded when an
    ``--exclude-sent`` ledger sent it (in ``excluded``). It takes no number: a later, valid
    row of the same person is sent."""
    key = int(phone)
    if key in seen:
        return _duplicate(rejected.line, value, phone, repeated)
    if key in excluded:
        return _excluded(rejected.line, phone)
    return rejected


def _not_a_number(line: int, raw: str, phone_column: str, why: PhoneError) -> RejectedRow:
    """The row whose number ``raw`` is not one group MMS can reach, rejected for ``why``, in
    one line (a line break of the cell it quotes written ``\\n``: :func:`~bulk_mms.words.
    escaped`); or, when it is the phone column's name, as the header again (files joined into
    one, each begun with a byte order mark)."""
    if raw.strip().lstrip("\ufeff") == phone_column:
        return RejectedRow(line, raw, _HEADER_AGAIN, Rejection.ROW)
    return RejectedRow(line, raw, escaped(str(why)), Rejection.INVALID)


#: The reason a row whose number is the phone column's name is rejected.
_HEADER_AGAIN: Final = (
    "the header row again (were files joined into one?): a header, not a recipient"
)

#: The reason a row whose number an ``--exclude-sent`` ledger sent is left out.
_EXCLUDED: Final = "excluded: already sent by a ledger given to --exclude-sent"
