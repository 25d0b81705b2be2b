"""Ledger events: what a job records, one frozen record per kind, one encoder, one decoder.

Every store writes and reads these and nothing else. On the wire (a JSONL line, a database
row's document) an event is a JSON object whose first key is ``event``, its kind::

    job       Header      the first event: the job, its input's fingerprint, grouping, campaign
    run       RunStarted  a run (or a process sharing the job) began, under the job's deadline
    planned   Planned     a run read its whole input: how many recipients, groups and rows not sent
    attempt   Attempt     a request is about to leave (durable before it does)
    sent      Sent        the API accepted the group
    failed    Failed      the API refused it (``retryable``: a plain rerun sends it again)
    in_doubt  InDoubt     the request may have been accepted: held unless the key still holds
    rejected  Rejected    an input row that is never sent, and why
    remade    Remade      a group never sent is made anew without suppressed members
    moved     Moved       members of a sent group go again from another sender (theirs blocked)
    reached   Reached     members moved out of a sent group that its message reached after all
    pace      Paced       a sender's pace changed (the pacer's answer to waits and 429s)
    status    Status      a recipient's delivery status, from ``track`` or ``webhooks``

:func:`encode` turns an event into its JSON bytes (orjson); :func:`decode` turns a parsed object
back into an event, accepting every older format (missing fields take their defaults). An
object that is not an event raises :class:`Malformed`, which the store turns into
:class:`~bulk_mms.errors.LedgerCorrupt` naming the line; an unknown kind (written by a newer
bulk-mms) decodes to None and is passed over.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final

import msgspec
import msgspec.structs
import orjson

from bulk_mms.codes import Action
from bulk_mms.errors import ApiError
from bulk_mms.models import Money, RecipientStatus, parse_money

#: Ledger format version, in the header. Bumped when the meaning of a field changes.
#: 2: the header carries ``campaign``, which every Idempotency-Key includes (a format-1 ledger
#: still resumes, under the keys it was started with). 3: ``planned`` events.
FORMAT: Final = 3


class Malformed(ValueError):
    """A JSON object that is not a ledger event (the store names the line)."""


class Header(msgspec.Struct, frozen=True):
    """The job a ledger belongs to; a resume must match it (:func:`check_header`)."""

    job: str
    fingerprint: str | None
    phone_column: str = "phone"
    group_size: int = 8
    group_by: str | None = None
    input: str | None = None
    from_: str | None = None
    #: The ledger's identity, part of every Idempotency-Key; None for a format-1 ledger.
    campaign: str | None = None
    #: The input columns (besides the phone) that outcome events record rows in.
    columns: tuple[str, ...] = ()
    #: Quiet hours split groups by time zone: a ledger keeps the grouping it began with.
    recipient_window: str | None = None
    #: With quiet hours, where each recipient's zone comes from (:func:`zones_source`): the
    #: grouping depends on it too. None: no quiet hours, or a ledger begun before it was kept.
    zones: str | None = None
    #: With ``group_by`` and quiet hours: begun by a bulk-mms that sends a person whose group
    #: shares no hour of the window with their next group (:attr:`bulk_mms.scan.Apart.released`).
    #: False: without them, or a ledger begun before, which took their later rows for duplicates.
    rejoins: bool = False
    #: The input's text encoding, as the job read it (:attr:`~bulk_mms.config.JobConfig.
    #: encoding`): ``report --failed-csv`` reads the input so. None: a ledger begun before
    #: it was kept.
    encoding: str | None = None
    #: What separated the input's columns, as the job read it (:attr:`~bulk_mms.config.
    #: JobConfig.delimiter`): whatever reads the input again reads it so, ``report
    #: --failed-csv`` writes with it, and a resume must have the same. ``","`` for a JSONL
    #: input (it has none) and for a ledger begun before it was kept.
    delimiter: str = ","
    format: int = FORMAT
    version: str = ""
    time: str = ""
    kind: ClassVar[str] = "job"

    def mismatch(self, expected: Header, ledger: str = "LEDGER") -> str | None:
        """Why a run for ``expected`` must not resume this ledger (found at ``ledger``, which
        the advice names), or None when it may."""
        if self.format > FORMAT:
            return f"written by a newer bulk-mms (format {self.format})"
        for name, label, hint in _MATCHED:
            was, now = getattr(self, name), getattr(expected, name)
            if was != now and not (name == "recipient_window" and _same_window(was, now)):
                why = f"belongs to a different run: {label} was {was!r}, now {now!r}"
                return why + hint.format(go_on=_GO_ON.format(ledger=ledger))
        if self.zones is not None and self.zones != expected.zones:
            return (
                f"belongs to a different run: recipients' zones came from {self.zones}, now "
                f"from {expected.zones}" + _REGROUP.format(go_on=_GO_ON.format(ledger=ledger))
            )
        return None

    def input_changed(self, now: str, ledger: str = "LEDGER") -> str | None:
        """What a run whose input's fingerprint is ``now`` says when that is not the file
        this ledger was begun on (found at ``ledger``, which the advice names): the input
        changed since, and how to go on (one of :meth:`mismatch`'s reasons, in its words);
        None when it is that file."""
        if self.fingerprint == now:
            return None
        return _INPUT_CHANGED.format(go_on=_GO_ON.format(ledger=ledger))


def _same_window(was: str | None, now: str | None) -> bool:
    """Whether a header's ``recipient_window`` and a job's are one window as headers write it:
    bulk-mms 0.3 and earlier wrote a window to midnight (``24:00``) as ending ``23:59``, so
    those two ends are taken for the same one (a minute's change regroups nobody)."""
    return was is not None and now is not None and _to_midnight(was) == _to_midnight(now)


def _to_midnight(window: str) -> str:
    """``window`` with an end at ``23:59`` written ``24:00``."""
    return window.removesuffix("23:59") + "24:00" if window.endswith("-23:59") else window


def zones_source(recipient_window: object, timezone_column: str | None) -> str | None:
    """Where a job's recipients' zones come from, for its ledger's header: ``"the number"``
    or ``"column 'tz'"``; None without quiet hours (no zones are looked up)."""
    if recipient_window is None:
        return None
    return "the number" if timezone_column is None else f"column {timezone_column!r}"


#: How to go on after a change a ledger refuses, texting nobody it sent a second time (a
#: new ledger alone would text them all again).
_GO_ON = "run under a new --name with --exclude-sent {ledger}"
_REGROUP = " (regrouping would resend people already sent; {go_on})"
_INPUT_CHANGED = (
    "the input file changed since this ledger was started; to send the new one, {go_on}"
)
#: What a resume must find unchanged: (field, label, hint).
_MATCHED: Final = (
    ("job", "job name", ""),
    (
        "fingerprint",
        "input file contents",
        f" ({_INPUT_CHANGED})",
    ),
    ("group_size", "group_size", _REGROUP),
    ("group_by", "group_by", _REGROUP),
    ("phone_column", "phone_column", ""),
    (
        "delimiter",
        "delimiter",
        " (the same file split at another separator is other rows: set it back to resume, or "
        "{go_on})",
    ),
    ("recipient_window", "recipient_window", _REGROUP),
)


class RunStarted(msgspec.Struct, frozen=True):
    pid: int = 0
    time: str = ""
    #: Another process may be running the ledger too (a database): an attempt left open is
    #: then not taken for a crash's (its owner's claim says whether it is alive).
    shared: bool = False
    #: The job's deadline this run sent under (:func:`~bulk_mms.gates.job_deadline`), as an
    #: event's ``time`` is written; None when the job has none, and in a ledger written
    #: before it was kept. Not in the :class:`Header`: a user may move it between runs, and
    #: the latest run's is the one that counts (:attr:`LedgerView.deadline
    #: <bulk_mms.ledger.LedgerView.deadline>`).
    deadline: str | None = None
    #: The ledgers ``--exclude-sent`` named for this run (:func:`~bulk_mms.prepare.ledger_names`):
    #: whom they count sent is left out. Not written when none.
    excluded_from: tuple[str, ...] = ()
    #: The campaign of each of :attr:`excluded_from`, in its order ("" for a ledger without
    #: one): another ledger begun at one's path since is not the one named. Not written when
    #: none (a ledger written before they were kept: its names alone).
    excluded_campaigns: tuple[str, ...] = ()
    #: The ``[pricing] currency`` this run counted costs in: a cost the API gave without a
    #: currency (recorded with ``"currency": null``) is in it (:attr:`LedgerView.currency
    #: <bulk_mms.ledger.LedgerView.currency>`). None in a ledger written before it was kept.
    currency: str | None = None
    kind: ClassVar[str] = "run"


class Planned(msgspec.Struct, frozen=True):
    """How much of the input is valid: so many recipients in so many groups, so many rows
    not sent (``rejected``: every such row but the duplicates, each recorded by a
    ``rejected`` event as a run reads past it) and so many duplicates (rows whose number
    appears earlier in the input: counted here only, never a line each).

    Of the ``rejected`` rows, ``suppressed`` are on the suppression list and ``excluded`` are
    left out by ``--exclude-sent``: rows left out on purpose; the rest are losses (a bad
    number, a broken row). Both 0 in a ledger written before they were kept: its rows not
    recorded yet all read as losses (:meth:`~bulk_mms.ledger.LedgerView.input_rows`).

    A run writes one before its first send, from its scan of the whole input (``groups`` is 0
    there: groups are not counted until they are made), and one when it has grouped the whole
    input; the latest stands."""

    recipients: int
    groups: int
    rejected: int
    time: str = ""
    duplicates: int = 0
    suppressed: int = 0
    excluded: int = 0
    kind: ClassVar[str] = "planned"


class Attempt(msgspec.Struct, frozen=True):
    """A request for ``group`` is about to leave; written durably before it does."""

    group: str
    to: tuple[str, ...] = ()
    seq: int = 0
    from_: str | None = None
    attempt: int = 1
    key: str | None = None
    #: Wall-clock seconds of the group's first attempt: its Idempotency-Key's age.
    t0: float | None = None
    time: str = ""
    kind: ClassVar[str] = "attempt"


class _Outcome(msgspec.Struct, frozen=True):
    """What every outcome of a group records."""

    group: str
    to: tuple[str, ...] = ()
    seq: int = 0
    #: The members' input rows, values in the header's ``columns`` order.
    rows: tuple[tuple[str, ...], ...] = ()
    attempts: int = 0
    rate_limited: int = 0
    time: str = ""


class Sent(_Outcome, frozen=True):
    message_id: str = ""
    from_: str | None = None
    #: Each recipient's status in the API's answer (``queued`` and so on).
    statuses: Mapping[str, str] = msgspec.field(default_factory=dict)
    wait_seconds: float | None = None
    cost: Money | None = None
    #: Until when Telnyx tries to deliver it, as the API said.
    valid_until: str | None = None
    kind: ClassVar[str] = "sent"


class Failed(_Outcome, frozen=True):
    status: int | None = None
    code: str | None = None
    title: str = ""
    detail: str = ""
    #: True: nothing was accepted and a plain rerun sends the group again (retries ran out on a
    #: transient error). False: the API refused it for good.
    retryable: bool = False
    #: The members the API refused by name (opted out, 40300): only they failed; the others
    #: go on in a group made without them (a new id and key: this one was never accepted).
    refused: tuple[str, ...] = ()
    #: The sender the API refused (40003, 40315): it leaves the pool for the rest of the job,
    #: and the group (retryable) goes out from another sender under a new key.
    retired: str | None = None
    #: What the run's error policy (``[errors]`` over the built-in table) did about it:
    #: ``suppress`` for members refused as opted out (``refused``), else its action for the
    #: answer's code that decides, the one recorded as ``code``
    #: (:func:`~bulk_mms.policy.judged_error`); None when it has none (and in a ledger
    #: written before it was kept: the fold reads the built-in table then).
    action: Action | None = None
    #: When the cap that refused it at the send lifts (40016's next daily reset: ``resumes_at``
    #: of the :class:`~bulk_mms.errors.LimitReached` the error policy made of the refusal; or
    #: the account's ``daily_recipients``' next day), wall-clock seconds: when a rerun sends
    #: it (a carrier's: not before; the account's own is asked again by each run, and sends
    #: it sooner once raised). 0: no cap held it (and in a ledger written before it was kept).
    resets: float = 0.0
    kind: ClassVar[str] = "failed"


class InDoubt(_Outcome, frozen=True):
    reason: str = ""
    kind: ClassVar[str] = "in_doubt"


class Remade(msgspec.Struct, frozen=True):
    """A group that was never attempted goes out without ``without`` (numbers the suppression
    list had when a run planned it): every later run follows this to the same new group,
    whatever the list says by then."""

    group: str
    without: tuple[str, ...] = ()
    time: str = ""
    kind: ClassVar[str] = "remade"


class Moved(msgspec.Struct, frozen=True):
    """Members of a sent group whose delivery failed for a reason that is not theirs: their
    sender is blocked (40003, 40315; ``sender`` names it, and it leaves the job's pool), or a
    carrier refused them for now (40002, 40011, 40014, 40016, 40018; ``after``: not before
    the carrier's reset, wall-clock seconds). They go out again in a group of their own
    (:func:`bulk_mms.grouping.moved`)."""

    group: str
    members: tuple[str, ...] = ()
    sender: str = ""
    code: str = ""
    time: str = ""
    after: float = 0.0
    kind: ClassVar[str] = "moved"


class Reached(msgspec.Struct, frozen=True):
    """Members moved out of a sent group (:class:`Moved`) whom a later delivery report of that
    group's message says it reached (``delivered``): written by whoever records that report
    (a run's delivery watch, ``track``, the webhook receiver; :func:`~bulk_mms.policy.
    delivery_action`).

    While no group has been tried with them since, their move is undone: they count sent by
    this group, a rerun does not text them, and the move does not count against
    :data:`~bulk_mms.policy.MAX_RESENDS`. Once a group was tried with them (a run sent it
    before the report came, or sends it still unaware of this event: another process, a run
    under way), the move stands, the one group that is tried is never changed: they count in
    that group, once, and where it was sent they were texted twice, which the report says
    (:meth:`~bulk_mms.ledger.LedgerView.texted_twice`) rather than hides. A :class:`Moved`
    for them out of the same group written after it (a process that had not read it) changes
    nothing: a member reached stays so."""

    group: str
    members: tuple[str, ...] = ()
    time: str = ""
    kind: ClassVar[str] = "reached"


class Paced(msgspec.Struct, frozen=True):
    """The pacer set a sender's pace: at its first send of a run (``"start"``), and at each
    change it logs (``pace.changed``), for the report's timeline. Folds into nothing."""

    sender: str
    #: The pace now, and before (0 at a start), in the pacer's units per second.
    rate: float
    was: float = 0.0
    #: ``"request"`` or ``"recipient"``: what the rate counts.
    per: str = "request"
    reason: str = ""
    time: str = ""
    kind: ClassVar[str] = "pace"


class Rejected(msgspec.Struct, frozen=True):
    line: int
    value: str = ""
    reason: str = ""
    time: str = ""
    kind: ClassVar[str] = "rejected"


class Status(msgspec.Struct, frozen=True):
    """One recipient's delivery status, reported by ``track`` or a webhook."""

    group: str
    recipient: str
    status: str
    message_id: str | None = None
    errors: tuple[ApiError, ...] = ()
    #: When the API says the status was reached (ISO 8601), if it said.
    at: str | None = None
    source: str = ""
    webhook_id: str | None = None
    time: str = ""
    #: The recipient's final cost, when the report carried one with a final status (written
    #: only then: a status line without it has no ``cost`` key).
    cost: Money | None = None
    #: The action the error policy of whoever recorded it (a run, ``track``, the webhook
    #: receiver) has for its code (:func:`~bulk_mms.policy.report_action`): what was done
    #: about it, and so what kind of miss the fold makes of it. None when it has none (and in
    #: a ledger written before it was kept: the fold reads the built-in table then).
    action: Action | None = None
    kind: ClassVar[str] = "status"

    @property
    def report(self) -> RecipientStatus:
        return RecipientStatus(
            self.recipient,
            self.status,
            message_id=self.message_id,
            errors=self.errors,
            at=self.at,
            cost=self.cost,
        )


def status_event(
    group: str,
    st: RecipientStatus,
    *,
    source: str,
    time: str,
    webhook_id: str | None = None,
    action: Action | None = None,
) -> Status:
    """The event for one recipient's new status, as ``track`` or a webhook reported it
    (``action``: the error policy's for its code, :func:`~bulk_mms.policy.report_action`)."""
    return Status(
        group,
        st.phone,
        st.status,
        message_id=st.message_id,
        errors=st.errors[:5],
        at=st.at,
        source=source,
        webhook_id=webhook_id,
        time=time,
        cost=st.cost,
        action=action,
    )


Event = (
    Header
    | RunStarted
    | Planned
    | Attempt
    | Sent
    | Failed
    | InDoubt
    | Remade
    | Moved
    | Reached
    | Paced
    | Rejected
    | Status
)
#: The events that settle (for now) where a group stands.
Outcome = Sent | Failed | InDoubt

# --------------------------------------------------------------------------------------------
# Encoding


def _money(cost: Money | None) -> dict[str, str | None] | None:
    return None if cost is None else {"amount": str(cost.amount), "currency": cost.currency}


#: How :func:`to_json` writes a field other than as it is (by the field's name).
_COST, _ERRORS, _UNLESS_EMPTY, _COST_IF_ANY = 1, 2, 3, 4
_HOW = {
    "cost": _COST,
    "errors": _ERRORS,
    "refused": _UNLESS_EMPTY,
    "retired": _UNLESS_EMPTY,
    "action": _UNLESS_EMPTY,
    "rejoins": _UNLESS_EMPTY,
    "deadline": _UNLESS_EMPTY,
    "resets": _UNLESS_EMPTY,
    "excluded_from": _UNLESS_EMPTY,
    "excluded_campaigns": _UNLESS_EMPTY,
    "currency": _UNLESS_EMPTY,
}
#: Fields written otherwise in one class only: a status line's cost is left out when none.
_HOW_IN = {("Status", "cost"): _COST_IF_ANY}
#: Each event class's JSON keys in field order, and its fields written otherwise, as
#: (key, how): worked out once per class.
_PLANS: dict[type, tuple[tuple[str, ...], tuple[tuple[str, int], ...]]] = {}


def _plan_of(cls: type[Event]) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    plan = _PLANS.get(cls)
    if plan is None:
        names = cls.__struct_fields__
        plan = _PLANS[cls] = (
            tuple("from" if name == "from_" else name for name in names),
            tuple(
                (name, _HOW_IN.get((cls.__name__, name), _HOW[name]))
                for name in names
                if name in _HOW
            ),
        )
    return plan


def to_json(ev: Event) -> dict[str, Any]:
    """The event as the JSON object a store writes (``event`` first; ``from_`` as ``from``)."""
    keys, special = _plan_of(type(ev))
    out: dict[str, Any] = {"event": ev.kind}
    out.update(zip(keys, msgspec.structs.astuple(ev), strict=True))  # in C, field by field
    for key, how in special:
        if how == _COST:
            out[key] = _money(out[key])
        elif how == _COST_IF_ANY:
            if out[key] is None:
                del out[key]
            else:
                out[key] = _money(out[key])
        elif how == _ERRORS:
            out[key] = [{"code": e.code, "title": e.title, "detail": e.detail} for e in out[key]]
        elif not out[key]:
            del out[key]  # refused, retired, action, rejoins, deadline, ...: the common case
    return out


def encode(ev: Event) -> bytes:
    """One line of JSON, newline included."""
    return orjson.dumps(to_json(ev), option=orjson.OPT_APPEND_NEWLINE)


# --------------------------------------------------------------------------------------------
# Decoding


def _str(d: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = d.get(key, default)
    if not isinstance(value, str):
        raise Malformed(f"{key!r} is missing or not text")
    return value


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    value = d.get(key)
    return value if isinstance(value, str) else None


def _int(d: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = d.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise Malformed(f"{key!r} is not a whole number")
    return value


def _time(d: Mapping[str, Any]) -> str:
    return _opt_str(d, "time") or ""


def _num(d: Mapping[str, Any], key: str) -> float | None:
    value = d.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _numbers(d: Mapping[str, Any], key: str = "to") -> tuple[str, ...]:
    return _strings(d, key, "numbers")


def _strings(d: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    value = d.get(key, ())
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        raise Malformed(f"{key!r} is not a list of {what}")
    return tuple(value)


def _rows(d: Mapping[str, Any]) -> tuple[tuple[str, ...], ...]:
    value = d.get("rows")
    if not isinstance(value, list):
        return ()
    return tuple(tuple(map(str, r)) for r in value if isinstance(r, list))


#: Every action by its name: an action a newer bulk-mms wrote that this one does not know
#: reads as none.
_ACTIONS: Final = {a.value: a for a in Action}


def _action(d: Mapping[str, Any]) -> Action | None:
    value = d.get("action")
    return _ACTIONS.get(value) if isinstance(value, str) else None


def _errors(value: object) -> tuple[ApiError, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        ApiError(str(e.get("code") or ""), str(e.get("title") or ""), str(e.get("detail") or ""))
        for e in value[:5]
        if isinstance(e, dict)
    )


def _header(d: Mapping[str, Any]) -> Header:
    columns = d.get("columns")
    return Header(
        job=_str(d, "job"),
        fingerprint=_opt_str(d, "fingerprint"),
        phone_column=_opt_str(d, "phone_column") or "phone",
        group_size=_int(d, "group_size", 8),
        group_by=_opt_str(d, "group_by"),
        input=_opt_str(d, "input"),
        from_=_opt_str(d, "from"),
        campaign=_opt_str(d, "campaign") or None,
        columns=tuple(map(str, columns)) if isinstance(columns, list) else (),
        recipient_window=_opt_str(d, "recipient_window"),
        zones=_opt_str(d, "zones"),
        rejoins=d.get("rejoins") is True,
        encoding=_opt_str(d, "encoding"),
        delimiter=_opt_str(d, "delimiter") or ",",
        format=_int(d, "format", 1),
        version=_opt_str(d, "version") or "",
        time=_time(d),
    )


def _attempt(d: Mapping[str, Any]) -> Attempt:
    return Attempt(
        group=_str(d, "group"),
        to=_numbers(d),
        seq=_int(d, "seq"),
        from_=_opt_str(d, "from"),
        attempt=_int(d, "attempt", 1),
        key=_opt_str(d, "key"),
        t0=_num(d, "t0"),
        time=_time(d),
    )


def _members(d: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every outcome has."""
    return {
        "group": _str(d, "group"),
        "to": _numbers(d),
        "seq": _int(d, "seq"),
        "rows": _rows(d),
        "attempts": _int(d, "attempts"),
        "rate_limited": _int(d, "rate_limited"),
        "time": _time(d),
    }


def _sent(d: Mapping[str, Any]) -> Sent:
    statuses = d.get("statuses")
    return Sent(
        **_members(d),
        message_id=_str(d, "message_id"),
        from_=_opt_str(d, "from"),
        statuses=(
            {str(k): str(v) for k, v in statuses.items()} if isinstance(statuses, dict) else {}
        ),
        wait_seconds=_num(d, "wait_seconds"),
        cost=parse_money(d.get("cost")),  # the bounds it was received under
        valid_until=_opt_str(d, "valid_until"),
    )


def _failed(d: Mapping[str, Any]) -> Failed:
    status, code = d.get("status"), d.get("code")
    return Failed(
        **_members(d),
        status=status if isinstance(status, int) else None,
        code=str(code) if code is not None else None,
        title=_opt_str(d, "title") or "",
        detail=_opt_str(d, "detail") or "",
        retryable=bool(d.get("retryable")),
        refused=_numbers(d, "refused"),
        retired=_opt_str(d, "retired"),
        action=_action(d),
        resets=_num(d, "resets") or 0.0,
    )


def _status(d: Mapping[str, Any]) -> Status:
    return Status(
        group=_str(d, "group"),
        recipient=_str(d, "recipient"),
        status=_str(d, "status"),
        message_id=_opt_str(d, "message_id"),
        errors=_errors(d.get("errors")),
        at=_opt_str(d, "at"),
        source=_opt_str(d, "source") or "",
        webhook_id=_opt_str(d, "webhook_id"),
        time=_time(d),
        cost=parse_money(d.get("cost")),
        action=_action(d),
    )


_DECODERS: Final[dict[str, Callable[[Mapping[str, Any]], Event]]] = {
    "job": _header,
    "run": lambda d: RunStarted(
        _int(d, "pid"),
        _time(d),
        bool(d.get("shared")),
        _opt_str(d, "deadline"),
        _strings(d, "excluded_from", "ledgers"),
        _strings(d, "excluded_campaigns", "campaigns"),
        _opt_str(d, "currency"),
    ),
    "planned": lambda d: Planned(
        _int(d, "recipients"),
        _int(d, "groups"),
        _int(d, "rejected"),
        _time(d),
        _int(d, "duplicates"),
        _int(d, "suppressed"),
        _int(d, "excluded"),
    ),
    "attempt": _attempt,
    "sent": _sent,
    "failed": _failed,
    "in_doubt": lambda d: InDoubt(**_members(d), reason=_opt_str(d, "reason") or ""),
    "remade": lambda d: Remade(_str(d, "group"), _numbers(d, "without"), _time(d)),
    "moved": lambda d: Moved(
        _str(d, "group"),
        _numbers(d, "members"),
        _str(d, "sender", ""),
        _str(d, "code", ""),
        _time(d),
        _num(d, "after") or 0.0,
    ),
    "reached": lambda d: Reached(_str(d, "group"), _numbers(d, "members"), _time(d)),
    "pace": lambda d: Paced(
        _str(d, "sender"),
        _num(d, "rate") or 0.0,
        _num(d, "was") or 0.0,
        _str(d, "per", "request"),
        _str(d, "reason", ""),
        _time(d),
    ),
    "rejected": lambda d: Rejected(
        _int(d, "line"), str(d.get("value") or ""), str(d.get("reason") or ""), _time(d)
    ),
    "status": _status,
}


def decode(obj: object) -> Event | None:
    """The event a parsed JSON object holds; None for a kind this version does not know.

    Raises:
        Malformed: it is not a ledger event, or a field it must have is missing or mistyped.
    """
    if not isinstance(obj, dict) or not isinstance(kind := obj.get("event"), str):
        raise Malformed("not a ledger event")
    decoder = _DECODERS.get(kind)
    if decoder is None:
        return None
    try:
        return decoder(obj)
    except (TypeError, ValueError, AttributeError) as exc:
        raise Malformed(f"{kind} event: {exc}") from None
