"""Reading TOML into checked values: every key known, every type and range checked, every
error naming the file and the setting (with a near-miss suggestion for an unknown key)."""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

from bulk_mms.errors import ConfigError
from bulk_mms.filenames import file_name_problem

#: What a URL setting must look like.
URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)


#: The largest amount a setting may give (``max_cost``, ``[pricing] per_recipient``): far
#: above any campaign's, far below where a cost times a count leaves Decimal's range.
MAX_AMOUNT = 10**12


class Bounds(NamedTuple):
    """The range a setting's number must be in, both ends included: for a setting a flag
    also gives, the one place its limit is kept (:func:`~bulk_mms.config.check_settings`)."""

    lo: float
    hi: float

    def check(self, setting: str, value: float) -> None:
        """Refuse ``value`` outside the range (:class:`ConfigError` naming ``setting``)."""
        if not self.lo <= value <= self.hi:
            raise ConfigError(setting, self.refusal(value))

    def refusal(self, value: float) -> str:
        """Why ``value`` is refused: ``must be from 0.01 to 1000, not 2000``."""
        return f"must be from {_shown(self.lo)} to {_shown(self.hi)}, not {_shown(value)}"


class _NotToml(ConfigError):
    """A file given as TOML that is not (a CSV where the job belongs). Private."""

    def __str__(self) -> str:
        return f"{self.source} {self.message}"


def read_toml(path: Path, kind: str = "TOML file") -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a one-line :class:`ConfigError`.

    A file whose name does not end in ``.toml`` and does not parse is said to be no ``kind``
    (``jobs/x.csv is not a job file (TOML): ...``): most likely another file was given in
    its place. A ``.toml`` file that does not parse has a syntax error, said with its line.
    """
    if (problem := file_name_problem(path)) is not None:
        raise ConfigError("file", problem, source=path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("file", "not found", source=path) from None
    except IsADirectoryError:
        raise ConfigError("file", "is a directory, not a TOML file", source=path) from None
    except PermissionError:
        raise ConfigError("file", "permission denied", source=path) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        if path.suffix.lower() != ".toml":
            raise _NotToml("file", f"is not a {kind} (TOML): {why}", source=path) from None
        if isinstance(exc, UnicodeDecodeError):
            raise ConfigError("file", "is not UTF-8 text", source=path) from None
        raise ConfigError("syntax", why, source=path) from None
    except OSError as exc:
        raise ConfigError("file", exc.strerror or str(exc), source=path) from None


class Table:
    """Typed, checked access to one TOML table. Private."""

    def __init__(self, data: Mapping[str, Any], source: Path, prefix: str = "") -> None:
        self._data = data
        self._source = source
        self._prefix = prefix
        self._used: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self._prefix}{key}"

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self._name(key), message, source=self._source)

    def _get(self, key: str) -> Any:
        self._used.add(key)
        return self._data.get(key)

    def str_(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._get(key)
        if value is None:
            if required:
                raise self.error(key, "is required")
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {type(value).__name__}")
        if "\0" in value:  # no path, encoding, name or text holds one (the OS refuses it)
            raise self.error(key, "contains a NUL character (\\u0000)")
        return value

    def file_name(self, key: str, *, required: bool = False) -> str | None:
        """A file's path (relative to the file's folder, which the caller joins): refused
        when it cannot be a file name here (:func:`~bulk_mms.filenames.file_name_problem`)."""
        value = self.str_(key, required=required)
        if value is not None and (problem := file_name_problem(value)) is not None:
            raise self.error(key, problem)
        return value

    def moment(self, key: str) -> str | None:
        """A date and time, written as a string or as TOML's own (``2026-11-24T12:00:00Z``,
        unquoted), as the string's text: one reading for both forms."""
        value = self._get(key)
        if isinstance(value, dt.date | dt.time):  # a datetime is a date
            return value.isoformat()
        return self.str_(key)

    def column(self, key: str, default: str | None = None) -> str | None:
        """A setting that names an input column: ``default`` when absent; refused when empty
        or blank (it would name no column)."""
        value = self.str_(key, default)
        if value is not None and not value.strip():
            raise self.error(
                key, f"{value!r} names no column: give a column's name, or leave the setting out"
            )
        return value

    def decimal(self, key: str) -> Decimal | None:
        """A non-negative amount up to :data:`MAX_AMOUNT`, written as a string (exact) or a
        number: ``"1e999999999"`` is a Decimal, but the cost sums would overflow on it."""
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(key, f'must be an amount like "0.0150", not {value!r}')
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            raise self.error(key, f"{value!r} is not a decimal amount") from None
        if not amount.is_finite() or not 0 <= amount <= MAX_AMOUNT:
            raise self.error(
                key, f"must be a non-negative amount up to {MAX_AMOUNT:,}, not {value!r}"
            )
        return amount

    def int_(self, key: str, default: int, lo: float = -math.inf, hi: float = math.inf) -> int:
        """A whole number from ``lo`` to ``hi`` (no range: a setting whose
        :class:`Bounds` a later check applies)."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a whole number, not {value!r}")
        if not lo <= value <= hi:
            raise self.error(key, Bounds(lo, hi).refusal(value))
        return value

    def float_(
        self, key: str, default: float, lo: float = -math.inf, hi: float = math.inf
    ) -> float:
        """A number from ``lo`` to ``hi`` (no range: a setting whose :class:`Bounds` a later
        check applies)."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, not {value!r}")
        if not lo <= value <= hi and (lo, hi) != (-math.inf, math.inf):  # nan: the later check's
            raise self.error(key, Bounds(lo, hi).refusal(value))
        return float(value)

    def bool_(self, key: str) -> bool | None:
        value = self._get(key)
        if value is None or isinstance(value, bool):
            return value
        raise self.error(key, f"must be true or false, not {value!r}")

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings")
        return tuple(value)

    def rate_table(self, key: str, allowed: tuple[str, ...] | None = None) -> dict[str, float]:
        """A table of name = rate (> 0), e.g. ``[limits.senders]``."""
        sub = self.table(key)
        out: dict[str, float] = {}
        for name in list(sub._data):
            if allowed is not None and name not in allowed:
                raise sub.error(name, f"unknown; use one of {', '.join(allowed)}")
            out[name] = sub.float_(name, 0.0, 1e-6, 1e6)
        sub.finish()
        return out

    def strings(self) -> dict[str, str]:
        """Every key of a free-form table (``[errors]``: code = "action"), as text."""
        return {key: self.str_(key, required=True) or "" for key in list(self._data)}

    def table(self, key: str) -> Table:
        value = self._get(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(key, "must be a table")
        return Table(value, self._source, prefix=f"{self._name(key)}.")

    def finish(self) -> None:
        """Refuse keys nobody asked for: a typo must not be silently ignored."""
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            near = difflib.get_close_matches(unknown[0], sorted(self._used), n=1, cutoff=0.6)
            hint = f"; did you mean {self._name(near[0])!r}?" if near else ""
            raise self.error(unknown[0], f"unknown setting{hint}")


def _shown(number: float) -> str:
    """A bound or value as a person writes it: ``2592000``, ``0.001``, not ``2.592e+06``."""
    return f"{number:.15g}" if abs(number) < 1e15 else f"{number:g}"


# --------------------------------------------------------------------------------------------
# Jobs


def read_choice(table: Table, key: str, choices: tuple[str, ...]) -> str:
    value = table.str_(key, choices[0]) or choices[0]
    if value not in choices:
        raise table.error(key, f"must be one of {', '.join(map(repr, choices))}, not {value!r}")
    return value
