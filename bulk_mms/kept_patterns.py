"""The +1 fast path's patterns, kept between runs: a run whose numbers they decide never
imports phonenumbers (:class:`KeptPatterns`). :mod:`bulk_mms.validate` derives them; this
module decides when a kept one may be trusted, and keeps them."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import orjson

from bulk_mms.config.folders import user_folder

#: Makes a region's pattern from phonenumbers' metadata; tells its second argument, when one is
#: given, each region before that region's metadata is loaded.
Derive = Callable[[str, Callable[[str], None] | None], str]


def in_cache_folder(derive: Derive, code: tuple[str, str | None]) -> KeptPatterns:
    """The patterns kept in the user's cache folder (a file for each Python environment: each
    has its own phonenumbers); see :class:`KeptPatterns` for the arguments."""
    env = hashlib.blake2b(sys.prefix.encode(), digest_size=6).hexdigest()
    try:
        path: Path | None = user_folder("cache") / f"nanp-patterns-{env}.json"
    except RuntimeError:  # no home folder: derive them every run
        path = None
    return KeptPatterns(path, derive, code)


class KeptPatterns:
    """The one-regex steps' patterns, kept between runs in the user's cache folder
    (``~/.cache/bulk-mms/nanp-patterns-*.json``), so a run whose numbers they decide never
    imports phonenumbers: its import compiles dozens of patterns, some 20 ms of every start.

    A kept pattern is used only while every file it was derived from holds the same bytes
    (a digest of each): the module that derives them (``code``, as it was loaded),
    phonenumbers' package, metadata code and list of regions as this process would import
    them, and the data of each region consulted. Each file's digest is taken before
    phonenumbers loads it, and the patterns are written only if every file still holds those
    bytes after the derivation, so a pattern is never written beside bytes it was not made
    from. Anything else (phonenumbers upgraded or
    shadowed, this code changed, a file that cannot be read, a kept file whose own checksum
    fails, phonenumbers already imported when the patterns were first needed) and the
    patterns are derived from the metadata and not kept; a cache that cannot be read or
    written is no error, only a derivation.

    Args:
        path: the kept file (None: keep nothing).
        derive: makes a region's pattern from the metadata (:data:`Derive`).
        code: the file of the module ``derive`` is in, and its digest as it was loaded.
    """

    FORMAT = 2

    def __init__(self, path: Path | None, derive: Derive, code: tuple[str, str | None]) -> None:
        self.path = path
        self._derive = derive
        self._code, self._code_digest = code
        self.first_region: str | None = None
        self.patterns: dict[str, str] = {}
        #: The digest of each file the patterns were derived from, by path, taken before
        #: phonenumbers loaded it (or read from a kept file whose files all still match).
        self.files: dict[str, str] = {}
        #: False once anything is off: nothing more is read from or written to the file.
        self.sound = False
        self._origin = self._package = ""
        base = _base_files(self._code)
        if path is None or base is None or "phonenumbers" in sys.modules:
            return  # the loaded phonenumbers' bytes are not known: derive, keep nothing
        self._origin, self._package = base[1], os.path.dirname(base[1])
        if not self._read(path, base):
            digests = {f: self._digest_now(f) for f in base}
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
            and all(self._digest_now(f) == kept_digest for f, kept_digest in files.items())
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
            source = self._derive(code, self._loading if self.sound else None)
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
        found = digest(file)
        if found is None or f"phonenumbers.data.region_{region}" in sys.modules:
            self.sound = False  # loaded from elsewhere, or before its bytes were known
        else:
            self.files[file] = found

    def _digest_now(self, path: str) -> str | None:
        """:func:`digest`, but the deriving module's as it was loaded."""
        return self._code_digest if path == self._code else digest(path)

    def _keep(self) -> None:
        """Write what is known now (the first region too, once asked), if every file it came
        from still holds the bytes it had before phonenumbers loaded it."""
        import phonenumbers  # noqa: PLC0415 - only once derived (see the class doc)

        if self.first_region is None:
            self.first_region = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1][0]
        if not self.sound or self.path is None:
            return
        if phonenumbers.__file__ != self._origin:
            self.sound = False  # not the phonenumbers whose files were digested
            return
        if any(self._digest_now(f) != kept for f, kept in self.files.items()):
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


def digest(path: str) -> str | None:
    """A digest of a file's bytes, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.blake2b(f.read(), digest_size=16).hexdigest()
    except (OSError, ValueError):
        return None


def _base_files(code: str) -> list[str] | None:
    """The deriving module's file, and phonenumbers' package, metadata code and list of
    regions as this process would import them (found without importing them); None if not
    found."""
    try:
        spec = importlib.util.find_spec("phonenumbers")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    package = os.path.dirname(spec.origin)
    return [
        code,
        spec.origin,
        os.path.join(package, "phonemetadata.py"),
        os.path.join(package, "data", "__init__.py"),
    ]
