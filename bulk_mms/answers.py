"""What the Telnyx API answers, read as untrusted input.

Every answer is bounded field by field: a field that fails its bound is dropped (and, where it
matters, logged), never allowed to crash the run or turn into a send that did not happen. The
only error these functions raise is :class:`~bulk_mms.errors.AmbiguousSendError`, for a 2xx
to a send whose body cannot be the answer to it (:func:`read_receipt`, :func:`parse_receipt`).

* a send's answer: :func:`read_receipt` of its body's bytes, :func:`parse_receipt` of its
  JSON (its message id, recipients' statuses, ``cost``, ``wait_seconds``, ``errors``);
* any body's JSON: :func:`parse_json`;
* a message's records, from a GET or a webhook: :func:`parse_statuses`, :func:`status_stamp`,
  :func:`address`, :func:`as_message_id`;
* the lists: :func:`parse_optouts`, :func:`parse_records` and :func:`page_meta`;
* an error's body and headers: :func:`parse_errors`, :func:`parse_retry_after`.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Final

import msgspec
import msgspec.structs
import orjson
import structlog

from bulk_mms.clock import instant
from bulk_mms.delivery import NOT_RECEIVED
from bulk_mms.errors import AmbiguousSendError, ApiError
from bulk_mms.models import (
    MessageRecord,
    OptOut,
    RecipientStatus,
    SendReceipt,
    money,
    parse_money,
)
from bulk_mms.words import escaped

log = structlog.get_logger(__name__)

#: Bounds on reading ``GET /reports/mdrs`` whole
#: (:meth:`~bulk_mms.client.AiohttpMmsClient.fetch_records`): the pages it asks for, the
#: records one page may list, and the records in all. An answer that claims more is not read
#: on: it is incomplete, and shows no group absent.
RECORDS_MAX_PAGES = 20
RECORDS_PAGE_MAX = 1000
RECORDS_MAX = 5000
#: The largest ``page[size]`` the opt-out list serves.
OPTOUT_PAGE_MAX = 250
#: The most pages of the opt-out list ``optouts sync`` reads, each at most
#: :data:`OPTOUT_PAGE_MAX` blocks: it holds at most 100,000 blocks, however many pages the
#: list's ``meta.total_pages`` claims (the spec bounds a page's size, not their number).
OPTOUT_SYNC_PAGES = 400
#: A number as the opt-out list gives it: whole, or redacted (``+447766****``, the spec's
#: example of ``redaction_enabled``).
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")  # whole (fullmatch), ASCII digits only
_REDACTED = re.compile(r"\+?[0-9]{0,15}\*{1,15}")  # whole (fullmatch)
#: Message ids are UUIDs; anything longer or stranger is not one.
_MESSAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # whole (fullmatch)
#: Bounds on the text we keep from an answer: statuses, error entries and their fields.
_STATUS_CHARS = 40
_MAX_ERRORS = 10
_ERROR_CHARS = 500
#: A group has at most 8 members and its sender, so its ``cc`` at most 9 entries (Telnyx
#: lists every participant, the sender too): more are not read.
_MAX_CC = 9


def as_message_id(value: object) -> str | None:
    """``value`` when it is a message id (:data:`_MESSAGE_ID`: a UUID, or an id no stranger
    and no longer), else None: the one check of an id the API or a webhook sends."""
    return value if isinstance(value, str) and _MESSAGE_ID.fullmatch(value) else None


def payload_message_id(payload: object) -> str | None:
    """The message id a webhook event's ``payload`` names (its ``id``), when it is one
    (:func:`as_message_id`); None for a payload that is not an object or names none: such
    an event is never matched by its id, nor learnt as a recipient's own."""
    return as_message_id(payload.get("id")) if isinstance(payload, dict) else None


def _text(value: object, limit: int) -> str:
    """A string field of an answer, cut to ``limit`` characters; anything else is empty."""
    return value[:limit] if isinstance(value, str) else ""


def _shown(value: object) -> str:
    """A field of an error (:func:`parse_errors`), as :func:`_text` reads it, each character
    that is not printable written escaped (:func:`~bulk_mms.words.escaped`): a line break or
    an escape sequence in an error's title is one line in a log, a report and the terminal."""
    return escaped(_text(value, _ERROR_CHARS))[:_ERROR_CHARS]


def parse_errors(body: object) -> tuple[ApiError, ...]:
    """The ``errors`` array of a Telnyx body (top level or inside ``data``), tolerantly; or
    the body itself when it is one bare ``messaging_Error`` (``code`` and ``title``, as the
    spec answers ``GET /messaging_optouts``' 400 and 401).

    Bounded: the first :data:`_MAX_ERRORS` entries, and past them the first entry of each
    code not kept yet, up to :data:`_MAX_ERRORS` more, so a code that decides what is done
    (an opt-out after a long list of another code: :func:`~bulk_mms.codes.deciding`) is not
    lost to the bound; each field cut to :data:`_ERROR_CHARS` characters. A code is a string
    or a whole number; anything else (null, an object, a boolean) is none.
    """
    if not isinstance(body, dict):
        return ()
    items = body.get("errors")
    if items is None and isinstance(body.get("data"), dict):
        items = body["data"].get("errors")
    if items is None and "code" in body and isinstance(body.get("title"), str):
        items = [body]
    if not isinstance(items, list):
        return ()
    out: list[ApiError] = []
    codes: set[str] = set()
    for item in items:
        if len(out) >= 2 * _MAX_ERRORS:
            break
        if not isinstance(item, dict):
            continue
        code = _code(item.get("code"))
        if len(out) >= _MAX_ERRORS and code in codes:
            continue
        source = item.get("source")
        out.append(
            ApiError(
                code=code,
                title=_shown(item.get("title")),
                detail=_shown(item.get("detail")),
                pointer=_shown(source.get("pointer")) if isinstance(source, dict) else "",
            )
        )
        codes.add(code)
    return tuple(out)


def _code(value: object) -> str:
    """An error's ``code`` (Telnyx's are strings of digits; a whole number is read as one),
    cut to :data:`_ERROR_CHARS` characters; empty for anything else."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return _shown(str(value))


def parse_seconds(value: object) -> float | None:
    """A non-negative number of seconds from an answer (``wait_seconds``), or None.

    Huge values stay as they are (the pacer clamps them to its ceilings and says so); what is
    not a number at all, or negative, is no value.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # a whole number beyond a double's range, as infinity is: no value
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


#: What :func:`parse_json` gives for a body that is not JSON.
NOT_JSON: Final = object()


def parse_json(raw: bytes) -> object:
    """A body's JSON (None for an empty body), or :data:`NOT_JSON`. orjson refuses a whole
    document for one number beyond a double (``"amount": 1e999``), or for one string escaping
    half a surrogate pair (``"\\ud800"``: no character); the standard parser reads the
    number as infinity (a whole number: as an int, or infinity past the digits Python makes
    an int of: :func:`_whole_number`), which the field's own bound then refuses, and the half
    pair is made U+FFFD (:func:`_whole_text`), so the rest of the answer is not lost, and no
    text that cannot be written as UTF-8 reaches the ledger or a log."""
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return _whole_text(json.loads(raw, parse_int=_whole_number))
    except (ValueError, RecursionError):
        return NOT_JSON


def _whole_number(text: str) -> int | float:
    """A JSON whole number: an int, or, past the digits Python turns into one
    (:func:`sys.get_int_max_str_digits`, which refuses it), the float it is: infinity."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _whole_text(value: object) -> object:
    """``value`` (parsed JSON) with each string's half surrogate pairs made U+FFFD."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if isinstance(value, list):
        return [_whole_text(v) for v in value]
    if isinstance(value, dict):
        return {_whole_text(k): _whole_text(v) for k, v in value.items()}
    return value


class _Member(msgspec.Struct):
    """A ``to[]`` or ``cc[]`` entry of a plain answer (:func:`_plain_receipt`)."""

    phone_number: Annotated[str, msgspec.Meta(max_length=32)]
    status: Annotated[str, msgspec.Meta(max_length=_STATUS_CHARS)] | None = None


class _Cost(msgspec.Struct):
    """A plain answer's ``cost``: the spec's, its amount a string."""

    amount: str
    currency: str | None = None


#: A group's participants (:data:`_MAX_CC`): no plain answer lists more under ``to`` or ``cc``.
_Members = Annotated[list[_Member], msgspec.Meta(max_length=_MAX_CC)]


class _Message(msgspec.Struct):
    """The ``data`` of a plain answer: the fields a receipt reads, each of the type the spec
    gives it, and ``errors`` present and empty (where it is absent, :func:`parse_errors`
    looks further). Other fields are skipped unread."""

    id: str
    errors: tuple[()]
    to: _Members = []
    cc: _Members = []
    direction: str | None = None
    group_message_id: str | None = None
    cost: _Cost | None = None
    wait_seconds: float | None = None
    valid_until: str | None = None


class _Answer(msgspec.Struct):
    data: _Message


_PLAIN: Final = msgspec.json.Decoder(_Answer)


def read_receipt(raw: bytes, to: Sequence[str], sender: str | None = None) -> SendReceipt:
    """The receipt of a 2xx answer's body to a send from ``sender`` for the numbers ``to``:
    what :func:`parse_receipt` reads of the body's JSON, for every body.

    A plain answer (:func:`_plain_receipt`), as the API gives one, is read in one typed pass;
    any other is parsed (:func:`parse_json`) and read field by field.

    Raises:
        AmbiguousSendError: the body is not JSON, or :func:`parse_receipt` raises.
    """
    receipt = _plain_receipt(raw, to, sender)
    if receipt is not None:
        return receipt
    body = parse_json(raw)
    if body is NOT_JSON:
        raise AmbiguousSendError("the answer's body is not JSON")
    return parse_receipt(body, to, sender)


def _plain_receipt(raw: bytes, to: Sequence[str], sender: str | None = None) -> SendReceipt | None:
    """The receipt :func:`parse_receipt` reads of ``raw``, when ``raw`` is a plain answer:
    UTF-8 JSON whose ``data`` decodes as a :class:`_Message` (its bounds included), with a
    message id that is one, not inbound, naming only numbers in ``to`` and a cost that is
    one (or none). None for any other body: :func:`parse_receipt` gives its verdict, its
    errors and its warnings."""
    try:
        msg = _PLAIN.decode(raw.decode()).data  # str: a byte that is not UTF-8 is not plain
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        return None
    mid = msg.id
    wanted = set(to)
    copies = [m for m in msg.cc if m.phone_number != sender]
    if (
        not _MESSAGE_ID.fullmatch(mid)
        or msg.direction == "inbound"
        or any(m.phone_number not in wanted for m in msg.to)
        or any(m.phone_number not in wanted for m in copies)
    ):
        return None
    cost = None if msg.cost is None else money(msg.cost.amount, msg.cost.currency)
    if cost is None and msg.cost is not None:
        return None  # parse_receipt says it cannot use it
    # as parse_statuses reads the message asked for, with no errors, stamps or costs
    group = as_message_id(msg.group_message_id)
    statuses = [
        RecipientStatus(m.phone_number, m.status or "", message_id=mid, group_message_id=group)
        for m in msg.to
    ]
    if copies:
        in_to = {m.phone_number for m in msg.to}
        statuses += [
            RecipientStatus(m.phone_number, m.status or "", group_message_id=group)
            for m in copies
            if m.phone_number not in in_to
        ]
    sent_as, reports = _group_message(mid, group, statuses)
    return SendReceipt(
        message_id=sent_as,
        statuses=_one_each(reports),
        wait_seconds=parse_seconds(msg.wait_seconds),
        cost=cost,
        valid_until=_stamp(msg.valid_until),
    )


def parse_receipt(
    body: object, to: Sequence[str] | None = None, sender: str | None = None
) -> SendReceipt:
    """Turn a 2xx body into a :class:`SendReceipt`.

    Args:
        body: the parsed JSON.
        to: the numbers the request was for; recipients the answer lists are checked against
            them (an answer about other numbers is not an answer to this request).
        sender: the number the request was sent from: a ``cc`` entry naming it is the
            sender, a participant of the group (Telnyx's group messaging guide), not a number
            the request did not send to, nor a member (:func:`parse_statuses`).

    Raises:
        AmbiguousSendError: the body has no usable message id, or names numbers the request
            did not: the API took the request but we cannot tell what became of it.
    """
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise AmbiguousSendError("accepted, but the response has no 'data' object")
    message_id = data.get("id")
    if not isinstance(message_id, str) or not message_id:
        raise AmbiguousSendError("accepted, but the response has no message id")
    if not _MESSAGE_ID.fullmatch(message_id):
        raise AmbiguousSendError("accepted, but the response's message id is not an id")
    if to is not None:
        wanted = set(to)
        for key in ("to", "cc"):  # a member may be listed in either (the spec gives cc statuses)
            listed = data.get(key)
            for item in listed if isinstance(listed, list) else ():
                phone = item.get("phone_number") if isinstance(item, dict) else None
                if key == "cc" and phone == sender:
                    continue
                if isinstance(phone, str) and phone not in wanted:
                    raise AmbiguousSendError(
                        "accepted, but the response lists a number this request did not send to"
                    )
    statuses = parse_statuses(data, asked=message_id, costs=False, sender=sender)
    sent_as, reports = _group_message(
        message_id, as_message_id(data.get("group_message_id")), statuses
    )
    raw_cost = data.get("cost")
    cost = parse_money(raw_cost)
    if cost is None and raw_cost is not None:
        amount = raw_cost.get("amount") if isinstance(raw_cost, dict) else raw_cost
        log.warning("response.cost_unusable", message_id=message_id, amount=repr(amount)[:60])
    return SendReceipt(
        message_id=sent_as,
        statuses=_one_each(reports),
        wait_seconds=parse_seconds(data.get("wait_seconds")),
        cost=cost,
        errors=parse_errors(data),
        valid_until=_stamp(data.get("valid_until")),
    )


def _group_message(
    mid: str, group: str | None, statuses: Sequence[RecipientStatus]
) -> tuple[str, Sequence[RecipientStatus]]:
    """The id a send's answer shows its group by, and its reports: the group message it
    names (``group_message_id``, an id: :func:`as_message_id`), which ``GET
    /messages/group/{message_id}`` takes and the group's webhooks and detail records name,
    else its own ``id``. An answer naming a group message other than its ``id`` is one
    recipient's own message: its ``id`` is the own id only of a lone member under ``to``,
    and of nobody when ``to`` lists several (it is not each one's own)."""
    if group is None or group == mid:
        return mid, statuses
    if sum(st.message_id == mid for st in statuses) == 1:
        return group, statuses
    return group, [
        msgspec.structs.replace(st, message_id=None) if st.message_id == mid else st
        for st in statuses
    ]


def _one_each(statuses: Sequence[RecipientStatus]) -> tuple[RecipientStatus, ...]:
    """The first report of each number in a send's answer, in order: the answer names each
    member once, and one that lists a member again (any number of times) says no more of
    them; each report becomes a ledger line."""
    first: dict[str, RecipientStatus] = {}
    for st in statuses:
        first.setdefault(st.phone, st)
    return tuple(first.values())


def _stamp(value: object) -> str | None:
    """An ISO 8601 time the API sent, if it is one (bounded, parsed): else None."""
    if not isinstance(value, str) or len(value) > 40 or instant(value) is None:
        return None
    return value


#: How far ahead of the reader's clock a status's stamp may be and still be a time.
_STAMP_AHEAD_S = 86_400.0


def status_stamp(value: object, now: float) -> str | None:
    """``value`` as the time a status was reached, when it is an ISO time (:func:`_stamp`) no
    more than :data:`_STAMP_AHEAD_S` ahead of ``now`` (the reader's wall time, by its job's
    clock), else None: a stamp in the year 9999 would outrank every later report of the
    recipient (:func:`~bulk_mms.delivery.supersedes`), and one that is no time is no stamp.
    Every status's stamp (an answer's, a webhook's), and a texted keyword's."""
    stamp = _stamp(value)
    when = instant(stamp)
    return stamp if when is not None and when <= now + _STAMP_AHEAD_S else None


def _reached_at(msg: Mapping[str, object], now: float) -> str | None:
    """When a message's status was reached: its ``completed_at``, else its ``sent_at``, the
    first that is a status's stamp as of ``now`` (:func:`status_stamp`)."""
    for key in ("completed_at", "sent_at"):
        if (stamp := status_stamp(msg.get(key), now)) is not None:
            return stamp
    return None


def address(value: object, limit: int = 32) -> str | None:
    """The number of an address field (``from``): the object's ``phone_number`` (the spec's
    shape), or a bare string (the shape Telnyx's group messaging page shows), cut to
    ``limit`` characters; None when it is neither."""
    if isinstance(value, dict):
        value = value.get("phone_number")
    return value[:limit] if isinstance(value, str) and value else None


def parse_statuses(
    data: object,
    asked: str | None = None,
    *,
    now: float | None = None,
    costs: bool = True,
    sender: str | None = None,
) -> tuple[RecipientStatus, ...]:
    """Recipients and statuses from a message object or a list of them (the GET endpoints).

    ``GET /messages/group/{id}`` lists one message per recipient, each with its own id, ``to``
    and ``errors``; ``GET /messages/{id}`` returns one. Entries that are not objects, or have no
    ``phone_number``, are skipped: a partial answer still yields what it does say. A message
    that names one recipient gives them its ``cost`` (:func:`~bulk_mms.models.parse_money`,
    exact: the spec sends the amount as a string); a message naming several gives none, as
    its cost is not one recipient's. An inbound message (``direction`` ``inbound``: a reply,
    which ``GET /messages/{id}`` may also serve) says nothing of a send, and is skipped.

    The spec gives ``cc[]`` entries a status too: a member of the group may be reported there
    rather than under ``to``. ``cc`` is read only from the message ``asked`` for (the group's
    own message: the send's answer, or the id a GET asked for), and only for a number no
    ``to`` of the answer lists: a recipient's own message lists the other participants in
    ``cc``, and their status there is not what their own message says. A ``cc`` report names
    no message of the recipient's own (``message_id`` None), and carries only the errors that
    point at it (``/cc/{i}``). A ``cc`` entry naming the message's sender (``sender``, else
    its own ``from``: :func:`address`) is no member: Telnyx lists a group's every
    participant, the sending number too.

    Each report keeps the group message its message names (``group_message_id``, when it is
    an id: :func:`as_message_id`), for the caller to tell another group's message from its
    own (:meth:`~bulk_mms.ledger.LedgerView.names_another`).

    ``now`` is the reader's wall time (its job's clock): each report's ``at`` is when its
    message says the status was reached (:func:`_reached_at`), judged as of then; None reads
    no stamps (a send's answer).
    """
    messages = [
        m
        for m in (data if isinstance(data, list) else [data])
        if isinstance(m, dict) and m.get("direction") != "inbound"
    ]
    out: list[RecipientStatus] = []
    copied: list[RecipientStatus] = []
    for msg in messages:
        mid = as_message_id(msg.get("id"))
        group = as_message_id(msg.get("group_message_id"))
        errors = parse_errors(msg)
        at = _reached_at(msg, now) if now is not None else None
        listed, cc = msg.get("to"), msg.get("cc")
        items = listed if isinstance(listed, list) else []
        copies = cc if asked is not None and mid == asked and isinstance(cc, list) else []
        own = (sender or address(msg.get("from"))) if copies else None
        # a group's own message with members in cc costs the group, not its one `to`
        alone = len(items) == 1 and all(address(c) == own for c in copies)
        cost = parse_money(msg.get("cost")) if alone and costs else None
        # every member takes the message's errors as they are, unless the message names several
        # and has some: then only those that point at the member
        shared = not errors or alone
        # a member under cc names no message of its own, and takes no cost
        for field, entries, into, own_id, own_cost in (
            ("to", items, out, mid, cost),
            ("cc", copies[:_MAX_CC], copied, None, None),
        ):
            for i, item in enumerate(entries):
                phone = item.get("phone_number") if isinstance(item, dict) else None
                if isinstance(phone, str) and not (into is copied and phone == own):
                    status = _text(item.get("status"), _STATUS_CHARS)
                    into.append(
                        RecipientStatus(
                            phone[:32],
                            status,
                            message_id=own_id,
                            errors=(
                                errors if shared else _errors_of(errors, f"/{field}/{i}", status)
                            ),
                            at=at,
                            cost=own_cost,
                            group_message_id=group,
                        )
                    )
    if not copied:
        return tuple(out)
    in_to = {st.phone for st in out}
    return (*out, *(st for st in copied if st.phone not in in_to))


def _errors_of(errors: tuple[ApiError, ...], pointer: str, status: str) -> tuple[ApiError, ...]:
    """A member's errors in a message naming several: those that point at it (``pointer``:
    ``/to/{i}``, ``/cc/{i}``), and those that point at nobody when its status says the message
    did not reach it (:data:`~bulk_mms.delivery.NOT_RECEIVED`): a member it reached never
    takes another's carrier code."""
    return tuple(
        e for e in errors if e.pointer == pointer or (not e.pointer and status in NOT_RECEIVED)
    )


def parse_optouts(body: object, size: int = OPTOUT_PAGE_MAX) -> tuple[list[OptOut], int]:
    """The blocks of an opt-out page (at most ``size``) and ``meta.total_pages`` as the page
    states it (1 when it is missing or no whole number from 0): the caller bounds how many it
    reads (:data:`OPTOUT_SYNC_PAGES`). A block whose ``to`` is an E.164 number, or one redacted
    (``+447766****``: :attr:`~bulk_mms.models.OptOut.redacted`, a block that names nobody
    but is counted), is kept; one whose ``to`` is anything else (missing, not a number) is
    left out. Its ``from`` is kept as given (bounded), empty when missing."""
    data = body.get("data") if isinstance(body, dict) else None
    blocks = [
        OptOut(from_[:32] if isinstance(from_ := item.get("from"), str) else "", to)
        for item in (data if isinstance(data, list) else [])[:size]
        if isinstance(item, dict)
        and isinstance(to := item.get("to"), str)
        and (_E164.fullmatch(to) or _REDACTED.fullmatch(to))
    ]
    pages = page_meta(body).total_pages
    return blocks, 1 if pages is None else pages


def parse_records(body: object, limit: int = RECORDS_PAGE_MAX) -> list[MessageRecord]:
    """The message detail records of an ``/reports/mdrs`` answer (at most ``limit``); one
    without numbers or a readable ``created_at`` is left out. One whose ``id`` is not an id
    (a line end, an escape sequence, too long) is kept with an empty id: it still shows its
    message was accepted, though it names no message. Its ``message_type``
    (``SMS``/``MMS``) is kept: an SMS record is not a group MMS's; so is its
    ``group_message_id`` when it is an id (Telnyx names a group's records by it)."""
    data = body.get("data") if isinstance(body, dict) else None
    out: list[MessageRecord] = []
    for item in (data if isinstance(data, list) else [])[:limit]:
        if not isinstance(item, dict):
            continue
        rid, cli, cld = item.get("id"), item.get("cli"), item.get("cld")
        created = instant(str(item.get("created_at") or ""))
        if not (isinstance(rid, str) and isinstance(cli, str) and isinstance(cld, str)):
            continue
        if created is None:
            continue
        amount, currency = item.get("cost"), item.get("currency")
        cost = parse_money({"amount": amount, "currency": currency}) if amount else None
        out.append(
            MessageRecord(
                as_message_id(rid) or "",
                _text(cli, 32),
                _text(cld, 32),
                created,
                _text(item.get("status"), 32),
                cost,
                _text(item.get("message_type"), 8),
                as_message_id(item.get("group_message_id")) or "",
            )
        )
    return out


class PageMeta(msgspec.Struct, frozen=True):
    """What a page of a list says of the whole answer (the spec's ``reporting_PaginationMeta``
    of the records, every field optional; ``messaging_PaginationMeta`` of the opt-outs): each
    a whole number from 0, or None."""

    page_number: int | None
    total_pages: int | None
    total_results: int | None
    #: The entries its ``data`` lists (read or not: one that is no record still counts).
    listed: int


def page_meta(body: object) -> PageMeta:
    """The paging a list's answer states (:class:`PageMeta`), read bounded: a count that is
    not a whole number (a bool, a string, a float), or is negative, is no count."""
    meta = body.get("meta") if isinstance(body, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    data = body.get("data") if isinstance(body, dict) else None

    def count(key: str) -> int | None:
        value = meta.get(key)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return value if ok else None

    return PageMeta(
        count("page_number"),
        count("total_pages"),
        count("total_results"),
        len(data) if isinstance(data, list) else 0,
    )


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``Retry-After`` or ``x-ratelimit-reset``, as
    of ``now`` (the reader's wall time, by its job's clock).

    ``Retry-After`` may be seconds or an HTTP date; ``x-ratelimit-reset`` may be seconds or a
    Unix time (taken as a time when it is larger than a year in seconds). The result is a
    non-negative number, possibly huge or infinite (``1e999``): the retry and the pacer clamp
    it to ``max_retry_after``. What does not parse is no hint (None).
    """
    value = headers.get("retry-after-ms")
    if value is not None and (ms := _seconds(value)) is not None:
        return ms / 1000
    value = headers.get("retry-after")
    if value is not None:
        if (seconds := _seconds(value)) is not None:
            return seconds
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
            when = email.utils.parsedate_to_datetime(value)
            # an HTTP date is GMT (RFC 9110 5.6.7); one in "-0000" parses with no zone
            when = when if when.tzinfo else when.replace(tzinfo=datetime.UTC)
            return max(0.0, when.timestamp() - now)
    value = headers.get("x-ratelimit-reset")
    if value is not None and (seconds := _seconds(value)) is not None:
        return max(0.0, seconds - now if seconds > 31_536_000 else seconds)
    return None


def _seconds(text: str) -> float | None:
    """A header's number: non-negative (a negative one is 0), not NaN; None if not a number."""
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else max(0.0, value)
