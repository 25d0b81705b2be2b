"""Turn raw rows into recipients: normalise numbers to E.164, refuse what group MMS cannot reach,
and drop numbers already seen in this job.

Group MMS reaches the US and Canada only, so a number is accepted only if phonenumbers says it is
a valid number of one of those two regions.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

import orjson

from bulk_mms.config.folders import user_folder
from bulk_mms.models import Recipient, RejectedRow
from bulk_mms.reader import Row

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
    phonenumbers' own metadata the same questions without parsing (about ten times faster);
    its commonest answers, a valid US or Canadian number, are one regex call each
    (:func:`_canonical_in`).
    Anything else is parsed. Every path gives the same verdict for every number (property
    tests hold them to it).

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
    by :func:`_nanp` (which says why not), the rest parsed."""
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
    return _parsed(value, region)


def _parsed(value: str, region: str) -> str:
    """:func:`normalize_phone` by phonenumbers' parser: the path for every form of number."""
    text = value.strip()
    if not text:
        raise PhoneError("empty phone number")
    for ch in text:
        if not ch.isdigit() and ch not in _ALLOWED_PUNCTUATION:
            # phonenumbers would read letters as a vanity number (1-800-FLOWERS); in a
            # recipient list they are far more likely a typo or an extension
            kind = "letters" if ch.isalpha() else f"the character {ch!r}"
            raise PhoneError(f"phone number contains {kind}")
    import phonenumbers  # noqa: PLC0415 - a run of canonical numbers never loads it

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
        raise PhoneError(_INVALID)
    if where not in _REACHABLE_REGIONS:
        raise PhoneError(
            f"+1 number outside the US and Canada ({where}); group MMS reaches the US and "
            "Canada only"
        )
    return f"+{number.country_code}{number.national_number}"


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
    import phonenumbers  # noqa: PLC0415 - see _KeptPatterns

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
    import phonenumbers  # noqa: PLC0415 - see _KeptPatterns

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
    global _CANONICAL_US  # noqa: PLW0603 - made once, when the first number needs it
    _CANONICAL_US = _canonical_in(_kept_patterns().first())
    return _CANONICAL_US


@functools.cache
def _canonical_in(code: str) -> Callable[[str], re.Match[str] | None]:
    """What :func:`_nanp` decides for a reachable region, as one pattern over the whole value
    (:func:`_canonical_source`), kept between runs (:class:`_KeptPatterns`). Its
    ``fullmatch``."""
    kept = _kept_patterns()
    source = kept.source(code)
    try:
        return re.compile(source, re.ASCII).fullmatch
    except Exception:  # a kept pattern that does not compile, however it fails
        kept.forget()
        return re.compile(_canonical_source(code), re.ASCII).fullmatch


def _canonical_source(code: str, loading: Callable[[str], None] | None = None) -> str:
    """:func:`_canonical_in`'s pattern: ``+1`` and ten ASCII digits, the area code not 0 or 1,
    claimed by no +1 region before ``code`` in phonenumbers' order (by its leading digits, or
    for one without them, by being valid there), in ``code``'s leading digits where it has
    them, and valid in ``code``; one that matches nothing for a region group MMS cannot reach.
    ``loading`` is told each region before its metadata is asked for (and so loaded).

    Only the metadata of ``code`` and the regions before it is loaded: a list of valid US
    numbers never loads the other twenty-four regions' nor compiles their patterns (what
    :func:`_nanp_regions` does for any other number)."""
    import phonenumbers  # noqa: PLC0415 - only to derive it (see _KeptPatterns)

    source = "(?!)"  # matches nothing: the full path decides every number
    claimed: list[str] = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1]:
        if loading is not None:
            loading(region)
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


class _KeptPatterns:
    """The one-regex steps' patterns, kept between runs in the user's cache folder
    (``~/.cache/bulk-mms/nanp-patterns-*.json``), so a run whose numbers they decide never
    imports phonenumbers: its import compiles dozens of patterns, some 20 ms of every start.

    A kept pattern is used only while every file it was derived from holds the same bytes
    (a digest of each): this module as it was loaded, phonenumbers' package, metadata code
    and list of regions as this process would import them, and the data of each region
    consulted. Each file's digest is taken before phonenumbers loads it, and the patterns are
    written only if every file still holds those bytes after the derivation, so a pattern is
    never written beside bytes it was not made from. Anything else (phonenumbers upgraded or
    shadowed, this code changed, a file that cannot be read, a kept file whose own checksum
    fails, phonenumbers already imported when the patterns were first needed) and the
    patterns are derived from the metadata and not kept; a cache that cannot be read or
    written is no error, only a derivation.
    """

    FORMAT = 2

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.first_region: str | None = None
        self.patterns: dict[str, str] = {}
        #: The digest of each file the patterns were derived from, by path, taken before
        #: phonenumbers loaded it (or read from a kept file whose files all still match).
        self.files: dict[str, str] = {}
        #: False once anything is off: nothing more is read from or written to the file.
        self.sound = False
        self._origin = self._package = ""
        base = _base_files()
        if path is None or base is None or "phonenumbers" in sys.modules:
            return  # the loaded phonenumbers' bytes are not known: derive, keep nothing
        self._origin, self._package = base[1], os.path.dirname(base[1])
        if not self._read(path, base):
            digests = {f: _digest_now(f) for f in base}
            if any(d is None for d in digests.values()):
                return
            self.files = {f: d for f, d in digests.items() if d is not None}
        self.sound = True

    def _read(self, path: Path, base: list[str]) -> bool:
        """Take the kept file's patterns if it can be trusted (see the class doc)."""
        try:
            kept = orjson.loads(path.read_bytes())
            first, patterns, files = kept["first"], kept["patterns"], kept["files"]
            whole = kept["format"] == self.FORMAT and kept["sum"] == _checksum(kept)
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return False
        if (
            whole
            and isinstance(first, str)
            and isinstance(patterns, dict)
            and all(isinstance(v, str) for v in patterns.values())
            and isinstance(files, dict)
            and all(f in files for f in base)
            and all(_digest_now(f) == digest for f, digest in files.items())
        ):
            self.first_region, self.patterns, self.files = first, patterns, files
            return True
        return False

    def first(self) -> str:
        """The first +1 region in phonenumbers' order (the US)."""
        if self.first_region is None:
            self._keep()
        assert self.first_region is not None
        return self.first_region

    def source(self, code: str) -> str:
        """``code``'s pattern, kept or derived (and then kept)."""
        if (source := self.patterns.get(code)) is None:
            source = _canonical_source(code, self._loading if self.sound else None)
            self.patterns[code] = source
            self._keep()
        return source

    def forget(self) -> None:
        """A kept pattern did not compile: trust none of them, and write nothing more."""
        self.patterns.clear()
        self.sound = False

    def _loading(self, region: str) -> None:
        """Take a region file's digest before phonenumbers loads it."""
        file = os.path.join(self._package, "data", f"region_{region}.py")
        if file in self.files:
            return  # digested before: by this process before loading it, or when kept
        digest = _digest(file)
        if digest is None or f"phonenumbers.data.region_{region}" in sys.modules:
            self.sound = False  # loaded from elsewhere, or before its bytes were known
        else:
            self.files[file] = digest

    def _keep(self) -> None:
        """Write what is known now (the first region too, once asked), if every file it came
        from still holds the bytes it had before phonenumbers loaded it."""
        import phonenumbers  # noqa: PLC0415 - see the class doc

        if self.first_region is None:
            self.first_region = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1][0]
        if not self.sound or self.path is None:
            return
        if phonenumbers.__file__ != self._origin:
            self.sound = False  # not the phonenumbers whose files were digested
            return
        if any(_digest_now(f) != digest for f, digest in self.files.items()):
            self.sound = False  # changed while this process ran: its patterns are not theirs
            return
        kept: dict[str, object] = {
            "format": self.FORMAT,
            "first": self.first_region,
            "patterns": self.patterns,
            "files": self.files,
        }
        kept["sum"] = _checksum(kept)
        part = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            part.write_bytes(orjson.dumps(kept))
            os.replace(part, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                part.unlink()


def _checksum(kept: Mapping[str, object]) -> str:
    """A digest of what a kept file says (all but its ``sum``)."""
    body = orjson.dumps({k: v for k, v in kept.items() if k != "sum"}, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def _digest(path: str) -> str | None:
    """A digest of a file's bytes, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.blake2b(f.read(), digest_size=16).hexdigest()
    except (OSError, ValueError):
        return None


#: This module's digest as it was loaded (a file replaced under a running process is not the
#: code that process runs).
_OWN_DIGEST = _digest(__file__)


def _digest_now(path: str) -> str | None:
    """:func:`_digest`, but this module's as it was loaded."""
    return _OWN_DIGEST if path == __file__ else _digest(path)


def _base_files() -> list[str] | None:
    """This module's file, and phonenumbers' package, metadata code and list of regions as
    this process would import them (found without importing them); None if not found."""
    try:
        spec = importlib.util.find_spec("phonenumbers")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    package = os.path.dirname(spec.origin)
    return [
        __file__,
        spec.origin,
        os.path.join(package, "phonemetadata.py"),
        os.path.join(package, "data", "__init__.py"),
    ]


@functools.cache
def _kept_patterns() -> _KeptPatterns:
    """The patterns this process uses, read from the cache folder when it first needs one (a
    file for each Python environment: each has its own phonenumbers)."""
    env = hashlib.blake2b(sys.prefix.encode(), digest_size=6).hexdigest()
    try:
        path: Path | None = user_folder("cache") / f"nanp-patterns-{env}.json"
    except RuntimeError:  # no home folder: derive them every run
        path = None
    return _KeptPatterns(path)


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
                f"+1 number outside the US and Canada ({code}); group MMS reaches the US "
                "and Canada only"
            )
        return phone
    raise PhoneError(_INVALID)


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
    remember = seen.add
    # normalize_phone's first step, inline; what it does not take goes on to the rest
    canonical_us = _CANONICAL_US or _canonical_us()
    for row in rows:
        if isinstance(row, RejectedRow):
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
                yield RejectedRow(row.line, raw, str(exc))
                continue
        key = int(phone[1:])
        if key in seen:
            yield RejectedRow(row.line, raw, f"duplicate: {phone} appears earlier in the input")
            continue
        remember(key)
        yield Recipient(phone, row.line, fields)
