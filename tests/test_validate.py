"""Phone normalisation and de-duplication."""

from __future__ import annotations

import pytest

from bulk_mms.models import Recipient, RejectedRow
from bulk_mms.reader import Row
from bulk_mms.validate import PhoneError, normalize_phone, validate_rows


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
