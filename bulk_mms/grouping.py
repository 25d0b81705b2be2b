"""Split the recipient stream into groups of at most eight, each with a stable id.

Without ``group_by``, consecutive recipients fill groups of ``group_size`` (with a
``recipient_window``, one open group per time zone). With ``group_by = "COLUMN"``, rows sharing
a key form one group wherever they stand in the file (split into chunks of ``group_size`` when
the key has more): a chunk goes out when it is full, the last one when the key's last row is
read. The scan before a run (:mod:`bulk_mms.scan`) says where each key's last row is, so only
groups still waiting for rows are held in memory; without it, a key's last chunk waits for the
end of the input.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence

from msgspec.structs import replace

from bulk_mms.config import JobConfig, MessageConfig, SendWindow
from bulk_mms.config.job import blank
from bulk_mms.models import Group, MessageBody, Recipient, RejectedRow, Rejection
from bulk_mms.quiet import hours_problem, never_open, zone_problem, zones_for
from bulk_mms.validate import Check, Printable


def group_id(job_name: str, to: Sequence[str]) -> str:
    """A deterministic id from the job name and the recipients, stable across runs.

    The message text is deliberately left out: fixing a typo in the text and rerunning must not
    make already-sent groups look new and text them twice.
    """
    # the name, then each number after a unit separator, hashed as one string
    return hashlib.blake2b("\x1f".join((job_name, *to)).encode(), digest_size=12).hexdigest()


def join_names(values: Sequence[str]) -> str:
    """``"Ann"``, ``"Ann and Bob"``, ``"Ann, Bob and Cy"``: distinct non-empty values, in order."""
    seen = list(dict.fromkeys(v for v in values if v))
    if len(seen) <= 1:
        return seen[0] if seen else ""
    return f"{', '.join(seen[:-1])} and {seen[-1]}"


def template_values(
    message: MessageConfig, members: Sequence[Recipient]
) -> tuple[dict[str, str], tuple[str, ...], tuple[str, ...]]:
    """The values a group's placeholders take, and which of them do not fit the group.

    A placeholder takes the first member's value, or every member's joined when the job says
    ``join``; an empty value takes the job's default for it, if any.

    Returns:
        (values, placeholders whose value differs between members and is not joined,
        placeholders left empty).
    """
    values: dict[str, str] = {}
    differs: list[str] = []
    empty: list[str] = []
    for name in message.fields:
        if name in message.join:
            value = join_names([m.fields.get(name, "").strip() for m in members])
        else:
            value = members[0].fields.get(name, "").strip()
            for m in members:  # a loop of its own frame's, left at the first other value
                if m.fields.get(name, "").strip() != value:
                    differs.append(name)
                    break
        if not value:
            value = message.defaults.get(name, "")
            if not value:
                empty.append(name)
        values[name] = value
    return values, tuple(differs), tuple(empty)


def render_message(
    message: MessageConfig, members: Sequence[Recipient]
) -> tuple[MessageBody, tuple[str, ...], tuple[str, ...]]:
    """The request body for a group, with its placeholders filled (:func:`template_values`),
    and the placeholders that differ between members or are empty.

    The API takes a text only as a non-empty string: a text that fills to blanks goes out as
    none when the job has ``media_urls`` (the media are the message). Without media, no
    group's text is blank once its rows have passed :func:`text_check`."""
    values, differs, empty = template_values(message, members)
    text = message.text.render(values) if message.text else None
    if text is not None and message.media_urls and blank(text):
        text = None
    body = MessageBody(
        from_=message.from_,
        text=text,
        subject=message.subject.render(values) if message.subject else None,
        media_urls=message.media_urls,
        webhook_url=message.webhook_url,
        webhook_failover_url=message.webhook_failover_url,
        use_profile_webhooks=message.use_profile_webhooks,
    )
    return body, differs, empty


def group_zones(members: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """A group's zones: every zone of its members', sorted (each member's from
    :func:`~bulk_mms.quiet.zones_for`). The group may be texted when the window is open in all
    of them."""
    return tuple(sorted({z for zones in members for z in zones}))


class _Grouper:
    """Builds groups from a recipient stream. Private: use :func:`make_groups`."""

    def __init__(self, job: JobConfig) -> None:
        self.job = job
        self.seq = 0

    def zones_of(self, r: Recipient) -> tuple[str, ...]:
        return zones_for(r.phone, r.fields, self.job.timezone_column)

    def make(self, members: Sequence[Recipient], seq: int | None = None) -> Group:
        to = tuple([r.phone for r in members])
        zones: tuple[str, ...] = ()
        if self.job.recipient_window is not None:
            zones = group_zones(self.zones_of(r) for r in members)
        body, differs, empty = render_message(self.job.message, members)
        group = Group(
            id=group_id(self.job.name, to),
            seq=self.seq if seq is None else seq,
            to=to,
            lines=tuple([r.line for r in members]),
            message=body,
            differs=differs,
            empty=empty,
            rows=tuple([r.fields for r in members]),
            zones=zones,
        )
        if seq is None:
            self.seq += 1
        return group


def without(group: Group, drop: Container[str], job: JobConfig) -> Group | None:
    """The group made anew without the members in ``drop`` (opted out, suppressed): its own
    id (so its own Idempotency-Key: the first was never accepted), its message filled for the
    members left, its place in the job kept. None when nobody is left."""
    return _regroup(group, lambda phone: phone not in drop, job)


def _regroup(group: Group, keeps: Callable[[str], bool], job: JobConfig) -> Group | None:
    """``group`` made anew of the members ``keeps`` keeps, its message filled for them, its
    place in the job kept; None when it keeps nobody."""
    rows = group.rows or ({},) * len(group.to)
    keep = [
        Recipient(phone, line, fields)
        for phone, line, fields in zip(group.to, group.lines, rows, strict=True)
        if keeps(phone)
    ]
    return _Grouper(job).make(keep, group.seq) if keep else None


def text_check(message: MessageConfig) -> Check | None:
    """The check that rejects a recipient (a loss) whose own values leave the message's text
    blank: a text of placeholders only, every one empty in the row
    (:func:`~bulk_mms.config.job.blank`: blanks and invisible characters only) and without
    a default, and no ``media_urls`` to send instead. The API refuses an empty text, and a
    group's text takes its first member's values (or every member's, joined): when every
    member's own values fill it, every group's text says something.

    None when no row can leave it blank (text around the placeholders, a default for one of
    them, media, or no text): nothing is added to the row loop."""
    text = message.text
    if text is None or message.media_urls or _says_something(text.source):
        return None
    names = [n for n in text.fields if blank(message.defaults.get(n, ""))]
    if len(names) < len(text.fields):
        return None  # a placeholder with a default is never blank
    placeholders = ", ".join(f"{{{n}}}" for n in names)
    reason = (
        f"empty message: the text is only {placeholders}, empty in this row; fill it, give it "
        "a default in [message.defaults], or send media_urls"
    )
    return _rejecting(
        lambda r: None if any(not blank(r.fields.get(n, "")) for n in names) else reason
    )


def plain_check(message: MessageConfig) -> Check | None:
    """The check that makes the values the message's placeholders take text a phone shows:
    the line breaks of other systems in them made ``\\n`` (FileMaker writes one inside a
    field as a vertical tab, ``\\v``; Windows as ``\\r\\n``, an old Mac as ``\\r``), and a
    recipient whose value holds any other control character (a C0 one but the tab, DEL, a C1
    one: a JSONL ``"\\u0000"``, a byte of another encoding) rejected (a loss), naming the
    field and the character: what it would do on a phone is anyone's guess.

    None when the message has no placeholders. A recipient whose values are all printable
    (``str.isprintable``, in C) is not looked at further (:class:`~bulk_mms.validate.Printable`):
    the usual row costs no Python call of the check."""
    names = message.fields
    if not names:
        return None
    return Printable(names, lambda r: _plain(r, names))


#: The line breaks of other systems, as a message writes one (:func:`plain_check`).
_BREAKS = re.compile("\r\n?|\v")
#: The control characters a value sent must not hold, once its line breaks are ``\\n``: the
#: C0 ones but the tab and the line feed, DEL and the C1 ones (:func:`plain_check`).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _plain(r: Recipient, names: Sequence[str]) -> Recipient | RejectedRow:
    """:func:`plain_check` of one recipient, some of whose ``names`` are not all printable."""
    fields = dict(r.fields)
    for name in names:
        value = fields.get(name, "")
        if value.isprintable():
            continue
        value = _BREAKS.sub("\n", value)
        if (bad := _CONTROL.search(value)) is not None:
            reason = (
                f"control character in field {name!r} (U+{ord(bad[0]):04X}): a phone shows "
                "no such character; remove it from the row"
            )
            return RejectedRow(r.line, r.phone, reason, Rejection.ROW)
        fields[name] = value
    return Recipient(r.phone, r.line, fields)


def _says_something(source: str) -> bool:
    """Whether a template's text outside its placeholders shows something
    (:func:`~bulk_mms.config.job.blank`)."""
    return any(not blank(literal) for literal, *_ in string.Formatter().parse(source))


def _rejecting(problem: Callable[[Recipient], str | None]) -> Check:
    """The check that rejects each recipient ``problem`` gives a reason for, with it (a loss:
    :attr:`~bulk_mms.models.Rejection.ROW`)."""

    def check(r: Recipient) -> Recipient | RejectedRow:
        reason = problem(r)
        return r if reason is None else RejectedRow(r.line, r.phone, reason, Rejection.ROW)

    return check


def zone_check(job: JobConfig) -> Check | None:
    """The check that rejects a recipient (a loss) whose quiet hours cannot be kept: its
    ``timezone_column`` names no time zone (the number's zone may be the wrong one,
    :func:`~bulk_mms.quiet.zone_problem`), or its zones share no open time of the window
    (:func:`~bulk_mms.quiet.hours_problem`). None without quiet hours (``recipient_window``)."""
    window, column = job.recipient_window, job.timezone_column
    if window is None:
        return None

    def unkept(r: Recipient) -> str | None:
        if column is not None and (problem := zone_problem(r.fields, column)) is not None:
            return problem
        return hours_problem(window, r.phone, r.fields, column)

    return _rejecting(unkept)


def key_check(column: str) -> Check:
    """The check that rejects a recipient whose ``column`` is blank
    (:func:`~bulk_mms.config.job.blank`): it has no group; such cells are empty ones to
    whoever reads the file, so rows holding them are no household, however many there are."""
    reason = f"empty {column!r} value"
    return _rejecting(lambda r: reason if blank(r.fields[column]) else None)


#: The first words of the reason a ``group_by`` group's rows are rejected for when its
#: members' zones share no time of the ``recipient_window`` (:class:`Households`).
APART = "no common hours in its group"


class _Chunk:
    """The rows of one ``group_by`` group as a scan meets them (what :func:`_by_key` will
    make of them): their lines, numbers and zones. Private to :class:`Households`."""

    __slots__ = ("key", "lines", "listed", "phones", "zoned")

    def __init__(self, key: str) -> None:
        self.key = key
        self.lines: list[int] = []
        self.phones: list[str] = []
        #: The zones of each member not on the suppression list (the group is made without
        #: the listed ones, so their hours are not its).
        self.zoned: list[tuple[str, ...]] = []
        self.listed = 0  # members on the suppression list


class Households:
    """Which ``group_by`` groups cannot be sent in any season: their members each have open
    hours in the ``recipient_window``, but together (a group is sent only when the window is
    open for every member) share none in winter or in summer (:func:`never_open`): one
    member in Guam, one in New York. Every run would hold such a group (exit 4) forever, so
    the scan finds them, and every pass rejects their rows (:data:`APART`, a loss) as it reads
    them, in input order, before it looks for duplicates (:func:`apart_check`): a member's
    later row, in another group, is theirs (:func:`~bulk_mms.scan.scan_input`).

    Fed each recipient the checked rows keep (:func:`~bulk_mms.scan.checked_rows`), in input
    order, it forms the groups as :func:`make_groups` does (a key's rows in chunks of
    ``group_size``: which rows a chunk holds does not depend on where the key ends), and
    holds the lines and numbers of each key's open chunk. A rejected chunk is a whole chunk:
    the key's other chunks keep their rows, so their groups (and ids) are the same.
    """

    def __init__(self, job: JobConfig, window: SendWindow, column: str) -> None:
        self.window = window
        self.column = column
        self.job_name = job.name
        self.size = job.group_size
        self.timezone_column = job.timezone_column
        self._open: dict[str, _Chunk] = {}
        #: Rejected rows: each line → the first line of its group.
        self.apart: dict[int, int] = {}
        #: Each rejected group's first line → the reason its rows are rejected for.
        self.reasons: dict[int, str] = {}
        #: Each rejected group's first line → its id (:func:`group_id`: a ledger knows it by it).
        self.ids: dict[int, str] = {}
        #: Each rejected row's line → its number.
        self.phones: dict[int, str] = {}
        #: Rejected rows on the suppression list (counted there by a scan, until now).
        self.listed = 0
        #: Each key's last line outside rejected groups (where its last group is complete).
        self.last_ok: dict[str, int] = {}

    def add(self, r: Recipient, *, listed: bool = False) -> None:
        """One more recipient of the input, in order."""
        key = r.fields[self.column].strip()
        chunk = self._open.get(key)
        if chunk is None:
            chunk = self._open[key] = _Chunk(key)
        chunk.lines.append(r.line)
        chunk.phones.append(r.phone)
        if listed:
            chunk.listed += 1
        else:
            chunk.zoned.append(zones_for(r.phone, r.fields, self.timezone_column))
        if len(chunk.lines) == self.size:
            del self._open[key]
            self._close(chunk)

    def finish(self) -> None:
        """The input has ended: its keys' last groups are complete."""
        chunks, self._open = self._open, {}
        for chunk in chunks.values():
            self._close(chunk)

    def _close(self, chunk: _Chunk) -> None:
        zones = group_zones(chunk.zoned)
        # one member's zones alone are open in every season (else its row was rejected),
        # and so are one zone's
        if len(chunk.zoned) < 2 or len(zones) < 2 or not never_open(self.window, zones):
            self.last_ok[chunk.key] = chunk.lines[-1]
            return
        first = chunk.lines[0]
        for line, phone in zip(chunk.lines, chunk.phones, strict=True):
            self.apart[line] = first
            self.phones[line] = phone
        self.reasons[first] = self._reason(chunk, zones)
        self.ids[first] = group_id(self.job_name, chunk.phones)
        self.listed += chunk.listed

    def _reason(self, chunk: _Chunk, zones: tuple[str, ...]) -> str:
        lines = join_names([str(n) for n in chunk.lines])
        named = join_names(list(zones)) if len(zones) <= 4 else f"{zones[0]} to {zones[-1]}"
        return (
            f"{APART}: its {self.column!r} value {chunk.key!r} puts lines {lines} in one "
            f"group, whose time zones ({named}) share no time of the recipient_window "
            f"{self.window} in winter or in summer, so no run could send it; give them "
            f"different {self.column!r} values, correct a wrong time zone, or widen the window"
        )


def apart_check(
    apart: Mapping[int, int],
    reasons: Mapping[int, str],
    ids: Mapping[int, str],
    known: Container[str] = (),
) -> Check:
    """The check that rejects, as losses, the rows of the groups :class:`Households` found
    apart (``apart``: each line → its group's first line; ``reasons`` and ``ids``: by first
    line). A group whose id is in ``known`` (a ledger's groups: an earlier bulk-mms tried it,
    in a season when it was open) is passed through whole: the ledger decides it, as it
    decides every group it knows. Given a pass's recipients in input order (a group's first
    line first)."""
    kept: set[int] = set()

    def check(r: Recipient) -> Recipient | RejectedRow:
        first = apart.get(r.line)
        if first is None:
            return r
        if r.line == first and ids[first] in known:
            kept.add(first)
        if first in kept:
            return r
        return RejectedRow(r.line, r.phone, reasons[first], Rejection.ROW)

    return check


def moved(group: Group, members: Container[str], sender: str, job: JobConfig) -> Group | None:
    """The group in which ``group``'s ``members`` go again, from another sender than the
    blocked ``sender`` (a :class:`~bulk_mms.ledger.Moved` event): its message filled for them,
    its place in the job kept, and an id of its own (so its own Idempotency-Key), derived from
    the first group's and the blocked sender's. None when none of them is a member."""
    made = _regroup(group, lambda phone: phone in members, job)
    return replace(made, id=group_id(job.name, (group.id, sender))) if made else None


def make_groups(
    items: Iterable[Recipient | RejectedRow],
    job: JobConfig,
    last_lines: Mapping[str, int] | None = None,
) -> Iterator[Group | RejectedRow]:
    """Group recipients as the job says, passing rejected rows through in order. ``items``
    are checked rows (:func:`~bulk_mms.scan.checked_rows`): with ``group_by``, none has a
    blank value (:func:`key_check`).

    ``last_lines``: with ``group_by``, the line of each key's last row (the scan's): its last
    chunk goes out as that row is read, not at the end of the input.
    """
    grouper = _Grouper(job)
    size = job.group_size
    if job.group_by is not None:
        yield from _by_key(items, grouper, size, job.group_by, last_lines)
        return
    if job.recipient_window is not None:
        yield from _by_zone(items, grouper, size)
        return
    buffer: list[Recipient] = []
    for item in items:
        if type(item) is RejectedRow:
            yield item
            continue
        buffer.append(item)
        if len(buffer) == size:
            yield grouper.make(buffer)
            buffer = []
    if buffer:
        yield grouper.make(buffer)


def _by_key(
    items: Iterable[Recipient | RejectedRow],
    grouper: _Grouper,
    size: int,
    column: str,
    last_lines: Mapping[str, int] | None,
) -> Iterator[Group | RejectedRow]:
    """Groups of the rows that share ``column``'s value, wherever they are in the input."""
    waiting: dict[str, list[Recipient]] = {}
    for item in items:
        if type(item) is RejectedRow:
            yield item
            continue
        key = item.fields[column].strip()
        buffer = waiting.setdefault(key, [])
        buffer.append(item)
        last = last_lines is not None and last_lines.get(key) == item.line
        if len(buffer) == size or last:
            yield grouper.make(buffer)
            del waiting[key]
    for buffer in waiting.values():  # without last_lines (or a file changed since the scan)
        yield grouper.make(buffer)


def _by_zone(
    items: Iterable[Recipient | RejectedRow], grouper: _Grouper, size: int
) -> Iterator[Group | RejectedRow]:
    """Groups that never mix time zones (quiet hours are the recipient's): one open group per
    zone, so memory stays bounded by the number of zones."""
    open_groups: dict[tuple[str, ...], list[Recipient]] = {}
    for item in items:
        if type(item) is RejectedRow:
            yield item
            continue
        buffer = open_groups.setdefault(grouper.zones_of(item), [])
        buffer.append(item)
        if len(buffer) == size:
            yield grouper.make(buffer)
            buffer.clear()
    for buffer in open_groups.values():
        if buffer:
            yield grouper.make(buffer)
