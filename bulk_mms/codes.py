"""Telnyx's codes: its error codes and what they call for, the one table
(:data:`DEFAULT_POLICY`), and the inbound keywords on which it blocks a number
(:data:`OPT_OUT_WORDS`, read as :func:`keyword` reads them).

A plain table, with no client behind it: :mod:`bulk_mms.policy` applies it to sends and
delivery reports, with the settings' ``[errors]`` over it, and the ledger's events record the
action it took; the fold reads this table only for an event written before they did
(:func:`bulk_mms.ledger.fold.action_of`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Final


class Action(enum.StrEnum):
    FAIL = "fail"
    RETRY = "retry"
    SLOW = "slow"
    DEFER = "defer"
    HALT = "halt"
    SUPPRESS = "suppress"
    RETIRE_SENDER = "retire_sender"


#: The built-in table (Telnyx docs and support articles, read 2026-11-23).
DEFAULT_POLICY: Final[Mapping[str, Action]] = {
    "40300": Action.SUPPRESS,  # the recipient texted STOP: blocked for the messaging profile
    "40016": Action.DEFER,  # T-Mobile's daily 10DLC brand cap: until [limits] daily_reset
    "40018": Action.DEFER,  # AT&T's per-minute campaign limit: until the next minute
    "40002": Action.SLOW,  # blocked as spam (temporary)
    "40011": Action.SLOW,  # too many messages: spam filtering (temporary)
    "40003": Action.RETIRE_SENDER,  # the sending number is blocked
    "40315": Action.RETIRE_SENDER,  # unhealthy sender
    "20100": Action.HALT,  # insufficient funds
    "40333": Action.HALT,  # the messaging profile's daily spend limit
    "40014": Action.RETRY,  # expired in Telnyx's queue: nothing was delivered
}
#: Actions that say nothing was wrong with the recipient: a later send may reach them.
RESENDABLE: Final = frozenset({Action.RETRY, Action.SLOW, Action.DEFER})
#: How the codes of one delivery report are weighed when it carries several (Telnyx's
#: ``errors`` is a list): by their actions in the table, the one listed first here decides
#: (:func:`deciding`), whatever order the report gives them in. What says the number must not
#: be texted again comes first (``suppress``: it opted out), then what says the account can
#: send nothing (``halt``: no funds, the spend limit; every further send is refused, so the
#: job stops whatever else the answer lists), then what says no send can reach the number
#: (``fail``, and a code the table has no action for: 40001 not routable, 40008
#: undeliverable), then the sender's (``retire_sender``: another sender may reach it), then a
#: carrier's refusal for now, the longest wait first (``defer``, ``slow``, ``retry``): so a
#: report that says "blocked, STOP" beside "too many messages" never sends the number again,
#: a send refused with "insufficient funds" beside an unknown code stops the job rather than
#: failing group after group, and one that says "undeliverable" beside a spam filter's code
#: does not move it for a resend after the reset.
PRECEDENCE: Final[tuple[Action | None, ...]] = (
    Action.SUPPRESS,
    Action.HALT,
    Action.FAIL,
    None,
    Action.RETIRE_SENDER,
    Action.DEFER,
    Action.SLOW,
    Action.RETRY,
)


def deciding(codes: Iterable[str], policy: Mapping[str, Action]) -> str | None:
    """Of the codes one report carries, the one that decides what is done about it: the
    first whose action under ``policy`` comes first in :data:`PRECEDENCE` (of those alike, the
    first given); None when it carries none."""
    best, rank = None, len(PRECEDENCE)
    for code in codes:
        if (r := PRECEDENCE.index(policy.get(code))) < rank:
            best, rank = code, r
    return best


#: The code bulk-mms records for a group the job's deadline left unsent (failed: no rerun
#: sends it). Its own, never a Telnyx code.
EXPIRED_UNSENT: Final = "expired_unsent"

#: Telnyx's code for a number that texted STOP (a send refused, or a delivery report).
OPTED_OUT: Final = "40300"

#: Each code's title, in Telnyx's words (its error-code pages): the report's legend, and the
#: sandbox's answers.
MEANINGS: Final[Mapping[str, str]] = {
    "10015": "Bad request",
    "20100": "Insufficient funds",
    "40001": "Not routable",
    "40002": "Blocked as spam - temporary",
    "40003": "Blocked as spam - permanent",
    "40004": "Rejected by destination",
    "40005": "Message expired",
    "40006": "Recipient unavailable",
    "40008": "Undeliverable",
    "40009": "Invalid message body",
    "40011": "Too many requests",
    "40012": "Invalid destination number",
    "40013": "Invalid source number",
    "40014": "Message expired in queue",
    "40015": "Internal spam filter",
    "40016": "T-Mobile daily message limit reached",
    "40018": "AT&T campaign rate limit reached",
    "40300": "Blocked due to STOP message",
    "40315": "Unhealthy from number",
    "40318": "Message queue full",
    "40333": "Messaging profile spend limit reached",
    EXPIRED_UNSENT: "Not sent before the job's deadline (bulk-mms)",
}


#: Inbound texts that opt out: exactly the keywords on which Telnyx makes a block rule by
#: default (developers.telnyx.com, "Advanced Opt-In/Out", default behaviour; support article
#: 1270091), no more (a number Telnyx still texts is not left out) and no fewer.
OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
#: Inbound texts that opt back in: the keywords on which Telnyx removes its block rule.
OPT_IN_WORDS = frozenset({"START", "UNSTOP"})
#: Inbound texts Telnyx answers with the profile's help text: no opt-out, no opt-in.
HELP_WORDS = frozenset({"HELP", "INFO"})


def keyword(text: str) -> str:
    """An inbound text as Telnyx reads a keyword: the whole message, case aside, spaces
    around it and repeated between words aside (``" stop  all "`` is ``STOP ALL``); a space
    inside a word is kept (``"un stop"`` is not ``UNSTOP``), and any other word makes it no
    keyword (Telnyx: keywords "are only recognized if they are the only words in the
    message"). Bounded: a long text is no keyword."""
    return " ".join(text.split()).upper() if len(text) <= 64 else ""
