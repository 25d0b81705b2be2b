"""What to do about a Telnyx error code: one table, built in and overridable (``[errors]``).

US messaging is governed by carriers as much as by the API, and each refusal says what it is
by its code. The client classifies an answer by its HTTP status; this table then decides by the
code, and :class:`PolicyClient` (a seam around the client) turns the error into the one the
runner already knows how to handle:

==============  ===========================================  ======================================
action          meaning                                      becomes
==============  ===========================================  ======================================
``fail``        permanent for this group                     Rejected: recorded failed
``retry``       transient                                    a retryable error: backoff, then
                                                             pending a rerun
``slow``        spam filtering (40002, 40011)                a 429: that sender's rate halves
``defer``       a carrier's limit until its reset: 40016     40016: LimitReached, the job stops
                (T-Mobile daily cap, until daily_reset),     (exit 5, resumable tomorrow);
                40018 (AT&T per-minute)                      40018: a 429 until the next minute
``halt``        the account cannot send: 20100 (funds),      AccountRefused: the job stops at once
                40333 (spend limit)                          (exit 6, resumable)
``suppress``    the number opted out (40300)                 Rejected; the refused members go on
                                                             the suppression list and the rest
                                                             are sent without them (one naming
                                                             nobody of a larger group weighs
                                                             under ``halt``:
                                                             :func:`deciding_first`)
``retire_sender`` the sending number is blocked or           SenderRefused: the number leaves the
                unhealthy (40003, 40315)                     pool, the group goes out from another
==============  ===========================================  ======================================

Telnyx itself reports carrier codes (40002 to 40018) only after accepting a message, in its
delivery reports: :func:`delivery_action` reads them there, by the same table. A ``suppress``
code there (a 40300 reported for one member after the group was accepted) puts that member on
the suppression list, as the send's 409 does.

Nothing a policy does makes a group that may have been accepted look refused: it only reads
errors whose answer said the request was not accepted (a non-2xx with an ``errors`` array).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Container, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

import msgspec.structs
import structlog

from bulk_mms.client import MmsClient
from bulk_mms.clock import Clock, iso, utc
from bulk_mms.codes import DEFAULT_POLICY, RESENDABLE, Action, deciding
from bulk_mms.delivery import NOT_RECEIVED
from bulk_mms.errors import (
    AccountRefused,
    AmbiguousSendError,
    ApiError,
    AuthError,
    ConfigError,
    FatalSendError,
    LimitReached,
    RateLimited,
    Rejected,
    SenderRefused,
    SendError,
    ServerError,
)
from bulk_mms.ledger.events import Moved, Reached
from bulk_mms.models import Group, OptOut, RecipientStatus, SendReceipt

if TYPE_CHECKING:
    from bulk_mms.config import Settings
    from bulk_mms.ledger.fold import GroupRecord

log = structlog.get_logger(__name__)


def load_policy(table: Mapping[str, object], source: str = "[errors]") -> dict[str, Action]:
    """The built-in table with ``[errors]`` (code = "action") over it.

    Raises:
        ConfigError: a code is not digits, or an action is not one of :class:`Action`.
    """
    policy = dict(DEFAULT_POLICY)
    for code, value in table.items():
        if not code.isdigit():
            raise ConfigError(f"{source}.{code}", "must be a Telnyx error code (digits)")
        try:
            policy[code] = Action(str(value))
        except ValueError:
            choices = ", ".join(a.value for a in Action)
            raise ConfigError(f"{source}.{code}", f"must be one of {choices}") from None
        if DEFAULT_POLICY.get(code) == Action.SUPPRESS and policy[code] != Action.SUPPRESS:
            raise ConfigError(
                f"{source}.{code}",
                "is an opt-out (the recipient texted STOP): its action stays suppress, so "
                "nobody who opted out is texted again, whatever the table says",
            )
    return policy


def judged_error(
    err: SendError, policy: Mapping[str, Action], to: Sequence[str]
) -> tuple[SendError, Action | None]:
    """A send's error (for the group of ``to``) as the policy acts on it and the ``failed``
    event records it: its ``errors`` with the one that decides first (:func:`deciding_first`,
    as :func:`judged` puts a delivery report's), so its ``code`` and what it says are that
    one's, and the action for it (:class:`~bulk_mms.ledger.Failed`'s ``action``). The error
    is put in that order where it is (an answer's errors are this send's own), and
    reordering it again changes nothing."""
    errors, code = deciding_first(err.errors, policy, to)
    if errors != err.errors:
        err.errors = errors
        err.args = (str(err),)
    return err, policy.get(code) if code is not None else None


def apply_policy(  # noqa: PLR0911 - one return per action of the policy table
    err: SendError,
    policy: Mapping[str, Action],
    group: Group,
    now: dt.datetime,
    daily_reset: str,
) -> SendError:
    """The error the runner should see for ``err``, the answer to a send of ``group``, under
    ``policy``; ``daily_reset`` (``[limits] daily_reset``) is when a carrier's daily cap
    lifts (:func:`carrier_reset`)."""
    sender = group.message.from_
    err, action = judged_error(err, policy, group.to)
    if isinstance(err, AuthError) and any(policy.get(e.code) for e in err.errors):
        # a carrier's code in a 403 (a server that says "forbidden" for an opt-out): judged
        # by the code that decides, which with none of its own fails the group (PRECEDENCE)
        action = action or Action.FAIL
    elif isinstance(err, AmbiguousSendError | FatalSendError) or not err.errors:
        return err  # the answer did not say "not accepted" with a code: leave it as it is
    if action is None:
        return err
    st, errors = err.status, err.errors
    match action:
        case Action.RETRY:
            return ServerError(err.message, status=st, errors=errors)
        case Action.SLOW:
            return RateLimited(
                f"{err.message}; slowing {sender}", retry_after=None, status=st, errors=errors
            )
        case Action.HALT:
            # its status and errors are told once, by the new error's own str()
            return AccountRefused("the account cannot send", status=st, errors=errors)
        case Action.DEFER:
            return _deferred(err, now, daily_reset)
        case Action.RETIRE_SENDER:
            log.warning("sender.refused", sender=sender, code=err.code)
            message = f"{err.message}; the sender {sender} is refused"
            return SenderRefused(message, sender=sender, status=st, errors=errors)
    if action == Action.SUPPRESS:
        return Rejected("refused: a recipient opted out (STOP)", status=st, errors=errors)
    return Rejected("the API refused the request", status=st, errors=errors)  # fail


#: A number in an error's text: Telnyx's 40300 detail names it ("... from {src} to {dst} ...").
_NUMBER = re.compile(r"\+?\d[\d\-(). ]{8,18}\d")


def named_members(
    err: SendError, to: Sequence[str], codes: Container[str] | None = None
) -> tuple[str, ...]:
    """The members of a group that the answer's errors name (under one of ``codes``, if
    given): each error's ``source.pointer`` (``/to/2``), else the members its detail or title
    names. Nothing is guessed: an answer that names no member gives none."""
    if isinstance(err, AmbiguousSendError):
        return ()
    found: dict[str, None] = {}
    for e in err.errors:
        if codes is None or e.code in codes:
            found.update(dict.fromkeys(_named_by(e, to)))
    return tuple(found)


def _named_by(e: ApiError, to: Sequence[str]) -> tuple[str, ...]:
    """The members of ``to`` one error names: its ``source.pointer`` (``/to/2``), else the
    members its detail or title names (:data:`_NUMBER`)."""
    if (m := re.fullmatch(r"/to/(\d{1,2})", e.pointer)) and int(m[1]) < len(to):
        return (to[int(m[1])],)
    found: dict[str, None] = {}
    for text in _NUMBER.findall(f"{e.detail} {e.title}"):
        digits = re.sub(r"\D", "", text)
        for phone in to:
            if phone[1:] == digits or (len(digits) == 10 and phone == f"+1{digits}"):
                found[phone] = None
    return tuple(found)


def refused_members(
    err: SendError, to: Sequence[str], policy: Mapping[str, Action]
) -> tuple[str, ...]:
    """The members of a group that the answer refuses by name under a ``suppress`` code (an
    opt-out): :func:`named_members` under those codes. A group of one is its only member.
    Nothing is guessed: a larger group whose answer names no member gives none."""
    suppress = {code for code, action in policy.items() if action == Action.SUPPRESS}
    found = named_members(err, to, suppress)
    if found or isinstance(err, AmbiguousSendError) or len(to) != 1:
        return found
    return tuple(to) if any(e.code in suppress for e in err.errors) else ()


@runtime_checkable
class OptOutLister(Protocol):
    """A client that can read the opt-out list (:meth:`AiohttpMmsClient.fetch_optouts
    <bulk_mms.client.AiohttpMmsClient.fetch_optouts>`)."""

    async def fetch_optouts(
        self, page: int, size: int = ..., *, from_: str | None = None, profile: str | None = None
    ) -> tuple[list[OptOut], int]: ...


#: The most opt-out pages one refusal reads (250 blocks each): past them the sender has more
#: opt-outs than a lookup per refused group should page through, and the group fails as it is.
OPTOUT_PAGES_MAX = 40


async def refused_by_optouts(
    client: object,
    err: SendError,
    group: Group,
    policy: Mapping[str, Action],
) -> tuple[str, ...]:
    """The members of ``group`` that the opt-out list says opted out of its sender, for a
    refusal under a ``suppress`` code (40300, a 409) that names none of them
    (:func:`refused_members` found none: the spec does not promise a group's 40300 says who).

    Reads ``GET /messaging_optouts`` filtered by ``filter[from]`` = the group's sender,
    unredacted, 250 blocks a page; each block is a from→to pair, and a member is refused when
    a block from the sender names it. Nothing is guessed: a refusal of another kind, a group
    of one (its member is the one refused), a client that cannot list opt-outs, or a list
    that cannot be read (one try per page; logged) gives none, and the group fails whole as
    before. Blocks listed redacted all the same (``+447766****``) name nobody: logged, counted.
    """
    if isinstance(err, AmbiguousSendError) or not err.errors or len(group.to) < 2:
        return ()
    if policy.get(deciding_first(err.errors, policy, group.to)[1] or "") != Action.SUPPRESS:
        return ()  # an opt-out did not decide: the account's stop did
    if not isinstance(client, OptOutLister):
        return ()
    sender, members = group.message.from_, set(group.to)
    found: set[str] = set()
    hidden = 0  # blocks listed redacted: they name nobody
    page, pages = 1, 1
    try:
        while page <= min(pages, OPTOUT_PAGES_MAX):
            blocks, pages = await client.fetch_optouts(page, 250, from_=sender)
            found.update(b.to for b in blocks if b.from_ == sender and b.to in members)
            hidden += sum(b.redacted for b in blocks)
            page += 1
    except SendError as exc:
        log.warning("optouts.lookup_failed", group=group.id, error=str(exc))
        return ()
    refused = tuple(p for p in group.to if p in found)
    if hidden:
        log.warning("optouts.redacted", group=group.id, sender=sender, redacted=hidden)
    log.info("optouts.lookup", group=group.id, sender=sender, refused=len(refused), pages=pages)
    return refused


def _deferred(err: SendError, now: dt.datetime, daily_reset: str) -> SendError:
    if err.code == "40018":  # a per-minute limit: wait for the next minute
        wait = 60.0 - now.second - now.microsecond / 1e6
        return RateLimited(err.message, retry_after=wait, status=err.status, errors=err.errors)
    resets = carrier_reset("40016", daily_reset, now.timestamp())
    until = dt.datetime.fromtimestamp(resets, dt.UTC)
    return LimitReached(
        f"a carrier's daily cap was reached ({err}); resumable after {until:%Y-%m-%d %H:%M} UTC",
        status=err.status,
        errors=err.errors,
        resumes_at=resets,
    )


class PolicyClient:
    """An :class:`~bulk_mms.client.MmsClient` that applies the error policy to every send."""

    def __init__(
        self, client: MmsClient, policy: Mapping[str, Action], clock: Clock, daily_reset: str
    ) -> None:
        self.client = client
        self.policy = policy
        self.clock = clock
        #: ``[limits] daily_reset``: when a carrier's daily cap lifts.
        self.daily_reset = daily_reset

    async def send(
        self, group: Group, key: str, *, leave_within: float | None = None
    ) -> SendReceipt:
        try:
            return await self.client.send(group, key, leave_within=leave_within)
        except SendError as exc:
            raise apply_policy(exc, self.policy, group, utc(self.clock), self.daily_reset) from exc

    async def fetch_group(self, message_id: str) -> tuple[RecipientStatus, ...]:
        return await self.client.fetch_group(message_id)

    async def fetch_message(self, message_id: str) -> tuple[RecipientStatus, ...]:
        return await self.client.fetch_message(message_id)

    async def fetch_optouts(
        self,
        page: int,
        size: int = 250,
        *,
        from_: str | None = None,
        profile: str | None = None,
    ) -> tuple[list[OptOut], int]:
        """The wrapped client's opt-out list (:class:`OptOutLister`); an empty one when it
        cannot list them."""
        if not isinstance(self.client, OptOutLister):
            return [], 1
        return await self.client.fetch_optouts(page, size, from_=from_, profile=profile)


def carrier_reset(code: str, daily_reset: str, now: float) -> float:
    """When a carrier that refused a message for now takes it again (wall clock): T-Mobile's
    daily brand cap (40016) at the next daily reset (``[limits] daily_reset``), AT&T's
    per-minute limit (40018) a minute on, the others (spam filtering, an expiry in the queue)
    at once."""
    if code == "40016":
        from bulk_mms.config.settings import next_day_start  # noqa: PLC0415 - settings import this

        return next_day_start(daily_reset, dt.datetime.fromtimestamp(now, dt.UTC)).timestamp()
    if code == "40018":
        return now + 60.0
    return 0.0


def deciding_first(
    errors: Sequence[ApiError], policy: Mapping[str, Action], to: Sequence[str] = ()
) -> tuple[tuple[ApiError, ...], str | None]:
    """An ``errors`` list (a delivery report's, a send's answer's) with the entry whose code
    decides (:func:`~bulk_mms.codes.deciding` under ``policy``: an opt-out over a carrier's
    refusal for now, whatever their order) moved first, the others in their order; and that
    code (None when none carries a code).

    ``to``: the members of the group a send's answer is for. An opt-out code (``suppress``)
    that names none of several members (:func:`refused_members` finds nobody by it) weighs
    under the account's stop (``halt``: 20100, no funds): it suppresses nobody by itself, so
    the halt beside it decides, and the group stays pending a rerun. Over every other code
    it still decides (the opt-out list may name whom it refused:
    :func:`refused_by_optouts`)."""
    weighed = policy
    if len(to) > 1 and any(policy.get(e.code) == Action.HALT for e in errors):
        opt_outs = {e.code for e in errors if policy.get(e.code) == Action.SUPPRESS}
        unnamed = opt_outs - {e.code for e in errors if _named_by(e, to)}
        weighed = {**policy, **dict.fromkeys(unnamed, Action.FAIL)}  # under halt, alone
    code = deciding((e.code for e in errors if e.code), weighed)
    if code is None or errors[0].code == code:
        return tuple(errors), code
    i = next(i for i, e in enumerate(errors) if e.code == code)
    return (errors[i], *errors[:i], *errors[i + 1 :]), code


def report_code(st: RecipientStatus, policy: Mapping[str, Action]) -> str | None:
    """The Telnyx error code that decides what a delivery report calls for, if it carries
    any: of several, the one :func:`deciding_first` finds."""
    return deciding_first(st.errors, policy)[1]


def report_action(st: RecipientStatus, policy: Mapping[str, Action]) -> Action | None:
    """The action ``policy`` has for the code a delivery report carries (:func:`report_code`),
    if any: the one reading of a report's code by the table, for :func:`delivery_action` and
    for the ``status`` event that records it (:class:`~bulk_mms.ledger.Status`'s ``action``)."""
    code = report_code(st, policy)
    return policy.get(code) if code is not None else None


def judged(
    st: RecipientStatus, policy: Mapping[str, Action]
) -> tuple[RecipientStatus, Action | None]:
    """A delivery report as a run, ``track`` and the webhook receiver record it and take it
    into their view: its errors with the one that decides first (:func:`deciding_first`), and
    the action for it (:func:`report_action`). The fold reads a recorded report's first
    code as the one its ``action`` is for, so ``report`` and a resend judge it as whoever
    recorded it did."""
    errors, code = deciding_first(st.errors, policy)
    if code is None:
        return st, None
    if errors != st.errors:
        st = msgspec.structs.replace(st, errors=errors)
    return st, policy.get(code)


def opted_out_in(st: RecipientStatus, policy: Mapping[str, Action]) -> str | None:
    """The code of a delivery report that says its member opted out (a ``suppress`` code,
    40300, for a member the message did not reach); None for any other report."""
    if st.status not in NOT_RECEIVED or report_action(st, policy) != Action.SUPPRESS:
        return None
    return report_code(st, policy)


#: How many times a delivery report may send one recipient again (:func:`delivery_action`):
#: after that, its failure stands (``report --failed-csv`` lists it), so a number a carrier
#: keeps refusing is not texted run after run, each time paid for.
MAX_RESENDS = 3
#: The actions whose delivery failure moves its member (:func:`delivery_action`): a blocked
#: sender's (from another sender), and a carrier's refusal for now (after its reset).
_MOVES: Final = frozenset({Action.RETIRE_SENDER, *RESENDABLE})


def delivery_action(
    rec: GroupRecord,
    st: RecipientStatus,
    settings: Settings,
    now: float,
    moves: Callable[[str], int],
) -> tuple[Action | None, Moved | Reached | None]:
    """What a delivery report calls for (the one reading of a carrier code after acceptance,
    for a run and for ``track``): the policy's action for its code, and the ``moved`` event
    for its member when it goes again (its status says the message did not reach them,
    :data:`~bulk_mms.delivery.NOT_RECEIVED`, and its sender is blocked: from another sender;
    or it was refused for now: after the carrier's reset), if any: not once it went again
    :data:`MAX_RESENDS` times (``moves``: how many times a number went again, asked only then:
    :meth:`~bulk_mms.ledger.LedgerView.moves`). ``(None, None)`` for a report with no code the
    policy knows, or a group with no sender on record. ``suppress`` (an opt-out, 40300) only
    for a member it failed: the caller puts that member on the suppression list.

    A report that the message reached (``delivered``) a member moved out of ``rec`` calls for
    the ``reached`` event that takes the move back (:class:`~bulk_mms.ledger.events.Reached`),
    whatever its code."""
    code = report_code(st, settings.error_policy)
    action = settings.error_policy.get(code) if code is not None else None
    if rec.reached_after_move(st.phone, st.status):
        log.warning("delivery.reached_after_move", group=rec.id)
        return action, Reached(rec.id, (st.phone,), iso(now))
    if action is None or rec.sender is None or code is None:
        return None, None
    if action == Action.SUPPRESS:
        return (action if opted_out_in(st, settings.error_policy) else None), None
    stamp = iso(now)
    if st.status not in NOT_RECEIVED or action not in _MOVES:
        return action, None  # it reached them, or may yet, or it is theirs: nobody goes again
    if action == Action.RETIRE_SENDER:
        sender, after = rec.sender, 0.0  # from another sender
    else:
        sender, after = "", carrier_reset(code, settings.daily_reset, now)
    if (resends := moves(st.phone)) >= MAX_RESENDS:
        log.warning("delivery.resends_spent", group=rec.id, code=code, resends=resends)
        return action, None
    log.warning("delivery.policy", group=rec.id, code=code, action=str(action))
    return action, Moved(rec.id, (st.phone,), sender, code, stamp, after)
