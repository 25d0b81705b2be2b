"""What the report says for each error and reason a ledger records: sentences, not class names.

The ledger keeps what happened as it was recorded (a ``failed`` event's ``code``: a Telnyx error
code, the HTTP status, or the name of bulk_mms's error class when there was neither; a group's
``why``; a rejected row's reason); the report and the HTML page translate it here, when they
present it, through one table (:data:`BY_KIND`) and the rules around it:

=========================  ==========================================================
recorded                   said
=========================  ==========================================================
Telnyx code (``40300``)    Telnyx's title (:data:`~bulk_mms.codes.MEANINGS`) and the code
HTTP status (``503``)      what the status means for a send, and the status
class name, bulk_mms code  :data:`BY_KIND`
a group's in-doubt why     :data:`BY_KIND` (the fold's and the recorder's reasons)
a rejected row's reason    as recorded: it is already words (``not a valid number``)
=========================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from bulk_mms.codes import EXPIRED_UNSENT, MEANINGS
from bulk_mms.ledger.fold import ENDED_WITHOUT_OUTCOME, RECORDED_DOUBT

#: The why of a group with an attempt and no outcome after it, in a ledger no later run read.
OPEN: Final = "attempted; no outcome recorded"
_HELD: Final = "held: a plain rerun does not resend it (--resend-in-doubt does)"
#: The code of a ``failed`` event for the account's own cap (``daily_recipients``) met before
#: the request left (:class:`~bulk_mms.errors.LimitReached` without a Telnyx code); a
#: carrier's cap records its Telnyx code (40016).
OWN_CAP: Final = "LimitReached"
#: ... and of one the job's ``max_cost`` refused (:class:`~bulk_mms.errors.MaxCostReached`).
MAX_COST: Final = "MaxCostReached"
#: ... and of one refused after a send's cost came back in another currency than ``[pricing]
#: currency`` (:class:`~bulk_mms.errors.ForeignCost`): max_cost was not reached, it could not
#: be kept.
FOREIGN_COST: Final = "ForeignCost"

#: Each recorded kind of error or reason that is not a Telnyx code or an HTTP status, in words.
BY_KIND: Final[Mapping[str, str]] = {
    # a failed event's code when the error had no Telnyx code and no HTTP status
    "RetryableSendError": "not sent yet: the run was stopped (Ctrl-C, a signal, or a stop for "
    "another error) before its request left",
    "NetworkError": "API unreachable: no connection could be made, retries used up",
    "WindowClosed": "not sent yet: its window (the send_window, or its recipients' quiet "
    "hours) closed before its request left; a run inside the window sends it",
    "ServerError": "the API's server failed, retries used up",
    "RateLimited": "rate limited: its sender was held back by 429 answers past max_group_age_s",
    "AmbiguousSendError": "may have been sent: no usable answer came back",
    "Rejected": "refused by the API",
    "SenderRefused": "the API refused the sending number; the group goes out from another",
    "EndpointError": "the base URL does not lead to the API",
    "AuthError": "the API key was refused",
    "NotFound": "the API answered 404: not found",
    "FatalSendError": "the job stopped: no request could succeed as configured",
    OWN_CAP: "not sent yet: the account's daily cap ([limits] daily_recipients) was reached "
    "before its request left",
    MAX_COST: "not sent yet: the job's max_cost was reached before its request left",
    FOREIGN_COST: "not sent yet: a send's cost came back in another currency than [pricing] "
    "currency, so max_cost could not be kept; set [pricing] currency to the account's",
    "AccountRefused": "the account refused to send (funds or the profile's spend limit)",
    "SendError": "sending failed",
    EXPIRED_UNSENT: "not sent before the job's deadline: a late message is worse than none",
    # a group's why, as the fold keeps it, when it is in doubt
    ENDED_WITHOUT_OUTCOME: (
        f"may have been sent: a run ended (a crash or a kill) while its request was out; {_HELD}"
    ),
    RECORDED_DOUBT: f"may have been sent: no usable answer came back; {_HELD}",
    OPEN: "may have been sent: its request was out when the ledger was last written (a run "
    "still going, or one that crashed)",
}


def escaped(text: str) -> str:
    """``text`` for a terminal: each character that is not printable (a newline, an escape
    sequence a server's answer may carry) written as Python writes it, ``\\n``, ``\\x1b``."""
    return (
        text
        if text.isprintable()
        else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    )


def one_line(text: str) -> str:
    """``text`` in one line, for a log line, the ledger or a terminal: each run of white space
    (a line end among it) one space, and every other character that is not printable written
    as :func:`escaped` writes it (an escape sequence a server's answer may carry)."""
    return escaped(" ".join(text.split()))


def error_words(code: str) -> str:
    """What a ``failed`` event's ``code`` means, as a sentence for a person.

    Args:
        code: a Telnyx error code, an HTTP status, or a bulk_mms error kind (:data:`BY_KIND`).
    """
    if code in BY_KIND:
        return BY_KIND[code]
    if code in MEANINGS:
        return f"{MEANINGS[code]} (Telnyx error {code})"
    if code.isdigit() and len(code) == 3:
        return _status_words(int(code))
    if code.isdigit():
        return f"Telnyx error {code}"
    return code or "no reason recorded"


def _status_words(status: int) -> str:
    if status == 429:
        return "rate limited by the API (HTTP 429), retries used up"
    if status >= 500:
        return f"server error {status}: retries used up"
    if status in (401, 403):
        return f"the API key was refused (HTTP {status})"
    if status == 404:
        return "the API answered 404: not found"
    if 300 <= status < 400:
        return f"the base URL redirected (HTTP {status}); bulk-mms never follows a redirect"
    return f"refused by the API (HTTP {status})"


def why_words(why: str) -> str:
    """A group's ``why`` (:attr:`~bulk_mms.ledger.GroupRecord.why`) as a sentence.

    A failed group's why is ``failed: CODE TITLE``; it is said as :func:`error_words` of the
    code. Any other why is looked up in :data:`BY_KIND`, and said as it is when not there.
    """
    if why.startswith("failed: "):
        return error_words(why_code(why))
    return BY_KIND.get(why, why)


def why_code(why: str) -> str:
    """The code of a failed group's why (``failed: CODE TITLE``); "" for any other why."""
    return why.removeprefix("failed: ").split(" ", 1)[0] if why.startswith("failed: ") else ""


def count(n: int, unit: str) -> str:
    """``n`` and its unit, singular for one: ``1 row``, ``3 groups``, ``1,204 recipients``."""
    return f"{n:,} {unit if n == 1 else unit + 's'}"
