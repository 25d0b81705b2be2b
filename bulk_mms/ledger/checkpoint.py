"""Checkpoints of the fold beside a JSONL ledger, like a database's: the view at a byte offset,
so a reader folds only the tail after it.

The ledger stays the one truth, append-only; a checkpoint is a cache of its fold. A fold that
replayed at least :data:`EVERY` lines leaves one (atomically: a temporary file renamed), and the
next fold starts from it. Two kinds, because a resume needs no delivery statuses and a report
needs all of them: ``.LEDGER.resume.fold`` (statuses skipped) and ``.LEDGER.report.fold``.

A checkpoint holds the SHA-256 of every byte of the ledger it summarises (the prefix up to its
offset), and is used only when the ledger's prefix, hashed anew as it is loaded, has that same
hash: a ledger edited anywhere before the offset, even to the same length, is replayed from its
first line. The checkpoint's first line is the SHA-256 of the rest of it, so a damaged
checkpoint is told from a sound one. Anything else that is off (another format, a file that
cannot be read or does not parse, a view that does not load) and the checkpoint is ignored, as
if there were none: the fold replays. Writing one is best effort: a read-only folder only means
the next fold replays too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

import msgspec.structs
import orjson
import structlog

from bulk_mms.delivery import Known
from bulk_mms.ledger import events
from bulk_mms.ledger.delivery_fold import BARE
from bulk_mms.ledger.fold import ExcludedLedger, GroupRecord, LedgerView, Miss
from bulk_mms.models import Money, parse_money

log = structlog.get_logger(__name__)

#: A fold that replayed at least this many lines leaves a checkpoint.
EVERY: Final = 20_000
#: The checkpoint's own format; another is ignored.
VERSION: Final = 22
_CHUNK: Final = 1 << 20


class Saved(NamedTuple):
    """A checkpoint that still describes its ledger."""

    #: The fold of the ledger's first ``offset`` bytes, mid-stream (its run not closed).
    view: LedgerView
    #: Where the lines after it start, and how many lines it covers.
    offset: int
    lineno: int
    #: SHA-256 of those bytes, ready to take the lines after them (:func:`write`'s ``prefix``).
    prefix: hashlib._Hash


def path_for(ledger: Path, statuses: bool) -> Path:
    kind = "report" if statuses else "resume"
    return ledger.with_name(f".{ledger.name}.{kind}.fold")


def _hash_prefix(ledger: Path, offset: int) -> hashlib._Hash | None:
    """SHA-256 of the ledger's first ``offset`` bytes; None if it has fewer or cannot be read."""
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    left = offset
    try:
        with ledger.open("rb", buffering=0) as f:
            while left > 0:
                n = f.readinto(view[: min(left, _CHUNK)])
                if not n:
                    return None  # shorter than the checkpoint: truncated or replaced
                digest.update(view[:n])
                left -= n
    except OSError:
        return None
    return digest


def _sealed(path: Path) -> memoryview | None:
    """The checkpoint's body, if it has one and its first line is the body's SHA-256."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    end = raw.find(b"\n")
    body = memoryview(raw)[end + 1 :]  # not a copy: a million recipients' is tens of MB
    if end < 0 or raw[:end] != hashlib.sha256(body).hexdigest().encode():
        if raw:
            log.info("checkpoint.damaged", checkpoint=str(path))
        return None
    return body


def read(ledger: Path, *, statuses: bool) -> Saved | None:
    """The checkpoint beside ``ledger``, if it is sound and its hash is the ledger prefix's."""
    path = path_for(ledger, statuses)
    body = _sealed(path)
    if body is None:
        return None
    try:
        try:
            data = orjson.loads(body)
        finally:
            body.release()  # the file's bytes go before the view is made of what they say
            del body
        if data["version"] != VERSION:
            return None
        offset, lineno, expected = int(data["offset"]), int(data["lineno"]), data["sha256"]
        prefix = _hash_prefix(ledger, offset)
        if prefix is None or prefix.hexdigest() != expected:
            log.info("checkpoint.stale", checkpoint=str(path))
            return None
        return Saved(from_state(data["view"]), offset, lineno, prefix)
    except Exception as exc:  # a cache that does not load, however it fails: replay
        log.info("checkpoint.unreadable", checkpoint=str(path), error=repr(exc))
        return None


def write(
    ledger: Path,
    view: LedgerView,
    offset: int,
    lineno: int,
    prefix: hashlib._Hash,
    *,
    statuses: bool,
) -> None:
    """Save ``view`` (mid-stream, before its run is closed) as the fold of the ledger's first
    ``offset`` bytes, whose SHA-256 ``prefix`` holds."""
    path = path_for(ledger, statuses)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    body = orjson.dumps(
        {
            "version": VERSION,
            "offset": offset,
            "lineno": lineno,
            "sha256": prefix.hexdigest(),
            "view": to_state(view),
        }
    )
    try:
        with tmp.open("wb") as f:
            f.write(hashlib.sha256(body).hexdigest().encode() + b"\n")
            f.write(body)
        tmp.replace(path)
    except OSError as exc:
        log.debug("checkpoint.unwritable", checkpoint=str(path), error=exc.strerror)
        with contextlib.suppress(OSError):
            tmp.unlink()


# -- the view as a checkpoint saves it: the whole of the fold's state, its private fields too --


def to_state(view: LedgerView) -> dict[str, Any]:
    """Everything the fold holds, as plain JSON values, mid-stream (a run not yet closed):
    :func:`from_state` of it, then the events that follow, equals a full replay. Groups and
    statuses are kept in columns: a million recipients load in one orjson pass, and the
    statuses name no number (they go with the groups' members, in order)."""
    recs = list(view.groups.values())
    return {
        "statuses": view.statuses,
        "header": events.to_json(view.header) if view.header is not None else None,
        "planned": events.to_json(view.planned) if view.planned is not None else None,
        "sent_excluded": view.sent_excluded,
        "excluded_from": [
            [list(w) for w in view.sent_excluded_from],
            [list(w) for w in view._excluding],
        ],
        "counts": [view.runs, view.attempts, view.rate_limited, view.sent_events],
        "deadline": view.deadline,
        "currency": view.currency,
        "times": [
            view.first_time,
            view.last_time,
            view.sending_seconds,
            view._run_first,
            view._run_last,
        ],
        "groups": {name: [_cell(getattr(r, name)) for r in recs] for name in _GROUP_FIELDS},
        "open": sorted(view._open),
        "rejected": [dict(view.rejected), view.rejected_through, sorted(view.suppressed_lines)],
        "known": _SavedKnown.state(view.known, recs),
        "by_message_id": _message_ids_state(view.by_message_id, recs),
        "webhook_ids": sorted(view.webhook_ids),
        "final_cost": {p: _cell(c) for p, c in view.final_cost.items()},
        "delivery": dict(view._delivery),
        "waits": view.waits,
        "queued_until": view.queued_until,
        "error_codes": dict(view.error_codes),
        "error_actions": {code: sorted(a) for code, a in view.error_actions.items()},
        "retired": sorted(view.retired),
    }


def _ledgers(pairs: list[Any]) -> tuple[ExcludedLedger, ...]:
    """``--exclude-sent`` ledgers as a checkpoint keeps them: (name, campaign) pairs."""
    out = tuple((name, campaign) for name, campaign in pairs)
    if not all(isinstance(w, str) for pair in out for w in pair):
        raise TypeError("a ledger's name or campaign that is not a string")
    return out


def from_state(d: dict[str, Any]) -> LedgerView:
    """The view :func:`to_state` saved.

    Raises:
        ValueError, KeyError, TypeError: it is not one (the caller replays instead).
    """
    view = LedgerView(statuses=bool(d["statuses"]))
    view.header = _event(d["header"], events.Header, "a header")
    view.planned = _event(d["planned"], events.Planned, "a planned event")
    if not isinstance(sent_excluded := d["sent_excluded"], int):
        raise TypeError("a count that is not one")
    view.sent_excluded = sent_excluded
    left_out, excluding = d["excluded_from"]
    view.sent_excluded_from, view._excluding = _ledgers(left_out), _ledgers(excluding)
    view.runs, view.attempts, view.rate_limited, view.sent_events = d["counts"]
    deadline = d["deadline"]
    if deadline is not None and not isinstance(deadline, str):
        raise TypeError("a deadline that is not a stamp")
    view.deadline = deadline
    if (currency := d["currency"]) is not None and not isinstance(currency, str):
        raise TypeError("a currency that is not text")
    view.currency = currency
    (view.first_time, view.last_time, view.sending_seconds,
     view._run_first, view._run_last) = d["times"]  # fmt: skip
    columns = d["groups"]
    groups = view.groups
    # each price read as a replay reads a sent line's cost, once: a campaign pays a few;
    # each state, sender and why kept once, as a replay's constants are
    prices: dict[tuple[str, str], Money] = {}
    words: dict[str, str] = {}
    for values in zip(*(columns[name] for name in _GROUP_FIELDS), strict=True):
        rec = _record(values, prices, words)
        groups[rec.id] = rec
    view._open = set(d["open"])
    reasons, view.rejected_through, lines = d["rejected"]
    view.rejected, view.suppressed_lines = (
        Counter({str(k): int(n) for k, n in reasons.items()}),
        {int(n) for n in lines},
    )
    view._known, view._known_columns = None, _SavedKnown.load(d["known"], groups)
    view.by_message_id = _own_ids(groups.values())
    named, unnamed = d["by_message_id"]
    view.by_message_id.update((str(m), str(g)) for m, g in named.items())
    for mid in unnamed:
        del view.by_message_id[mid]
    view.webhook_ids = set(d["webhook_ids"])
    for phone, (amount, currency) in d["final_cost"].items():
        view.final_cost[phone] = _money(amount, currency, "a final cost")
    view._delivery = Counter(d["delivery"])
    view.waits = [float(w) for w in d["waits"]]
    view.queued_until = {str(s): float(t) for s, t in d["queued_until"].items()}
    view.error_codes = Counter(d["error_codes"])
    view.error_actions = {str(code): set(a) for code, a in d["error_actions"].items()}
    view.retired = set(d["retired"])
    view._any_moved = any(rec.moved for rec in groups.values())
    view._any_reached = any(rec.reached for rec in groups.values())
    return view


_E = TypeVar("_E", bound=events.Event)


def _event(saved: object, kind: type[_E], what: str) -> _E | None:
    """The event of ``kind`` :func:`to_state` saved (None: it saved none).

    Raises:
        TypeError: it is not one.
    """
    if saved is None:
        return None
    ev = events.decode(saved)
    if not isinstance(ev, kind):
        raise TypeError(f"not {what}")
    return ev


def _money(amount: object, currency: object, what: str) -> Money:
    """The cost :func:`_cell` saved as its amount and currency.

    Raises:
        ValueError: it is not an amount.
    """
    money = parse_money({"amount": amount, "currency": currency})
    if money is None:
        raise ValueError(f"{what} is not an amount: {amount!r:.60}")
    return money


def _message_ids_state(by_message_id: dict[str, str], recs: list[GroupRecord]) -> list[Any]:
    """:attr:`LedgerView.by_message_id` as a checkpoint keeps it: what the groups' own message
    ids do not say (:func:`_own_ids`), and the ids they name that it does not hold."""
    own = _own_ids(recs)
    return [
        {mid: gid for mid, gid in by_message_id.items() if own.get(mid) != gid},
        [mid for mid in own if mid not in by_message_id],
    ]


#: A :class:`Known`'s fields after its status, as a checkpoint keeps them.
_KNOWN_EXTRA: Final = ("at", "message_id", "code", "action")
_NOTHING_MORE: Final = (None,) * len(_KNOWN_EXTRA)


class _SavedKnown(NamedTuple):
    """:attr:`LedgerView.known` as a checkpoint saves it, until it is asked for: the statuses
    go with the groups' members in order (``phones``: the same strings as the groups', so a
    number is kept once), then the numbers known that are no group's member.

    ``codes`` holds, for each of ``phones``, 0 (no status known) or 1 + its status's index in
    ``statuses``; it ends at the last number with a status, and ``phones`` with it. ``extra``
    holds the rows (indices into ``phones``) whose status says more than its name, with
    :data:`_KNOWN_EXTRA`'s values, a list each. A number in two groups has a row for each,
    with the same values."""

    phones: list[str]
    codes: list[int]
    statuses: list[str]
    extra: tuple[list[Any], ...]

    @staticmethod
    def state(known: dict[str, Known], recs: list[GroupRecord]) -> dict[str, Any]:
        """``known`` as plain JSON values, aligned with the members of ``recs`` in order."""
        index: dict[str, int] = {}
        codes: list[int] = []
        extra: tuple[list[Any], ...] = tuple([] for _ in range(1 + len(_KNOWN_EXTRA)))
        rows, *values = extra
        rest = dict.fromkeys(known)  # the numbers that are no group's member: named
        get, forget = known.get, rest.pop

        def put(phone: str) -> None:
            k = get(phone)
            if k is None:
                codes.append(0)
                return
            forget(phone, None)
            code = index.get(k.status)
            if code is None:
                code = index[k.status] = len(index) + 1
            codes.append(code)
            if k[1:] != _NOTHING_MORE:
                rows.append(len(codes) - 1)
                for column, value in zip(values, k[1:], strict=True):
                    column.append(value)

        for p in _members(recs):
            put(p)
        others = list(rest)
        for p in others:
            put(p)
        while codes and not codes[-1]:
            codes.pop()  # the members after the last one with a status: none (a resume's: all)
        return {
            "statuses": list(index),
            "codes": codes,
            "others": others,
            "extra": dict(zip(("row", *_KNOWN_EXTRA), extra, strict=True)),
        }

    @classmethod
    def load(cls, d: dict[str, Any], groups: dict[str, GroupRecord]) -> _SavedKnown:
        """What :meth:`state` saved, with the members of ``groups`` (the view's, as loaded).

        Raises:
            ValueError, KeyError, TypeError: it is not what :meth:`state` writes.
        """
        codes, statuses = d["codes"], [str(s) for s in d["statuses"]]
        others = [str(p) for p in d["others"]]
        phones = list(islice(chain(_members(groups.values()), others), len(codes)))
        extra = tuple(d["extra"][name] for name in ("row", *_KNOWN_EXTRA))
        if len(codes) != len(phones) or any(len(c) != len(extra[0]) for c in extra):
            raise ValueError("the known columns differ in length")
        if codes and not 0 <= min(codes) <= max(codes) <= len(statuses):
            raise ValueError("a status code is not one of the statuses")
        if any(not (0 <= r < len(codes) and codes[r]) for r in extra[0]):
            raise ValueError("a status's values without its status")
        return cls(phones, codes, statuses, extra)

    def select(self, only: frozenset[str] | None = None) -> dict[str, Known]:
        """The latest status of every number (``only``: of those in one of these statuses)."""
        bare = [None] + [BARE[s] if only is None or s in only else None for s in self.statuses]
        out = {p: k for p, c in zip(self.phones, self.codes, strict=True) if (k := bare[c])}
        rows, *values = self.extra
        for row, *more in zip(rows, *values, strict=True):
            if (k := bare[self.codes[row]]) is not None:
                out[self.phones[row]] = Known(k.status, *more)
        return out


#: A group's fields, in the order a checkpoint's columns keep them.
_GROUP_FIELDS: Final = tuple(f.name for f in msgspec.structs.fields(GroupRecord))
#: A group's text fields that few values fill, among many groups.
_SHARED_CELLS: Final = ("outcome", "sender", "why", "refused_sender")


def _record(
    values: tuple[Any, ...], prices: dict[tuple[str, str], Money], words: dict[str, str]
) -> GroupRecord:
    """A group from its checkpoint cells (:func:`_cell`), each price read once (``prices``:
    a campaign pays a few), and each state, sender and why kept once (``words``).

    Raises:
        ValueError: a cell is not what :func:`_cell` writes.
    """
    rec = GroupRecord(*values)
    rec.to = tuple(rec.to.split(",")) if rec.to else ()  # type: ignore[attr-defined]
    rec.refused = tuple(rec.refused.split(",")) if rec.refused else ()  # type: ignore[attr-defined]
    rec.moved = tuple(rec.moved.split(",")) if rec.moved else ()  # type: ignore[attr-defined]
    rec.reached = tuple(rec.reached.split(",")) if rec.reached else ()  # type: ignore[attr-defined]
    rec.miss = Miss(rec.miss) if rec.miss is not None else None
    if rec.moved_ids is not None and not isinstance(rec.moved_ids, dict):
        raise ValueError("a group's moved members' ids that are not a mapping")
    for name in _SHARED_CELLS:
        if isinstance(value := getattr(rec, name), str):
            setattr(rec, name, words.setdefault(value, value))
    if rec.cost is not None:
        cell: list[str] = rec.cost  # type: ignore[assignment]
        key = (cell[0], cell[1])
        price = prices.get(key)
        if price is None:
            price = prices[key] = _money(*key, "a group's cost")
        rec.cost = price
    return rec


def _members(recs: Iterable[GroupRecord]) -> Iterator[str]:
    """The members of ``recs``, group by group: the order the known columns follow."""
    return chain.from_iterable(rec.to for rec in recs)


def _own_ids(recs: Iterable[GroupRecord]) -> dict[str, str]:
    """Each sent group's message id → its id (a later group's, for an id two have): most of
    :attr:`LedgerView.by_message_id`, which a checkpoint keeps only where it says more."""
    return {rec.message_id: rec.id for rec in recs if rec.message_id is not None}


def _cell(value: object) -> object:
    """A group field as JSON: numbers joined by commas (one string, not eight, to parse back),
    money as its amount and currency, the rest (a mapping of numbers to ids too) as it is."""
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, Money):
        return [str(value.amount), value.currency]
    return value
