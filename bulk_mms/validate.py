"""Turn raw rows into recipients: normalise numbers to E.164, refuse what group MMS cannot reach,
and drop numbers already seen in this job.

Group MMS reaches the US and Canada only, so a number is accepted only if phonenumbers says it is
a valid number of one of those two regions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import phonenumbers

from bulk_mms.models import Recipient, RejectedRow
from bulk_mms.reader import Row

_ALLOWED_PUNCTUATION = frozenset(" \t+-().\u00a0/")
_REACHABLE_REGIONS = frozenset({"US", "CA"})


class PhoneError(ValueError):
    """A value is not a number group MMS can reach. The message is the reason. Private."""


def normalize_phone(value: str, region: str = "US") -> str:
    """Return ``value`` as E.164 (``+14155550100``).

    Args:
        value: what the input file holds, in any common national or international format.
        region: the region assumed for numbers written without ``+``.

    Raises:
        PhoneError: empty, has letters or stray characters, is not a valid number, or is not
            in the US or Canada.
    """
    text = value.strip()
    if not text:
        raise PhoneError("empty phone number")
    for ch in text:
        if not ch.isdigit() and ch not in _ALLOWED_PUNCTUATION:
            # phonenumbers would read letters as a vanity number (1-800-FLOWERS); in a
            # recipient list they are far more likely a typo or an extension
            kind = "letters" if ch.isalpha() else f"the character {ch!r}"
            raise PhoneError(f"phone number contains {kind}")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise PhoneError(f"not a phone number ({exc._msg})") from None
    if number.country_code != 1:
        raise PhoneError(
            f"+{number.country_code} is not a US or Canadian number "
            "(group MMS reaches the US and Canada only)"
        )
    # is_valid_number would search the +1 regions for this number's region itself; asking for
    # the region once and checking validity there does that search only once.
    where = phonenumbers.region_code_for_number(number)
    if where is None or not phonenumbers.is_valid_number_for_region(number, where):
        raise PhoneError("not a valid US or Canadian phone number")
    if where not in _REACHABLE_REGIONS:
        raise PhoneError(
            f"+1 number outside the US and Canada ({where}); group MMS reaches the US and "
            "Canada only"
        )
    return f"+{number.country_code}{number.national_number}"


def validate_rows(
    rows: Iterable[Row | RejectedRow],
    phone_column: str,
    region: str = "US",
) -> Iterator[Recipient | RejectedRow]:
    """Validate and de-duplicate rows in one pass, in input order.

    The first row with a number wins; later rows with the same number are rejected as
    duplicates. (The suppression list applies to groups, not rows: see
    :func:`bulk_mms.prepare.members_left`.)
    Seen numbers are kept as ints (E.164 digits), about 70 bytes each, so a million-row file
    stays well inside the memory budget.
    """
    seen: set[int] = set()
    for row in rows:
        if isinstance(row, RejectedRow):
            yield row
            continue
        raw = row.fields[phone_column]
        try:
            phone = normalize_phone(raw, region)
        except PhoneError as exc:
            yield RejectedRow(row.line, raw, str(exc))
            continue
        key = int(phone[1:])
        if key in seen:
            yield RejectedRow(row.line, raw, f"duplicate: {phone} appears earlier in the input")
            continue
        seen.add(key)
        yield Recipient(phone, row.line, row.fields)
