"""Every error bulk_mms raises on purpose, in one tree.

::

    BulkMmsError                      exit code (cli.py)
     ├── UsageError                    2  bad job, config or input: nothing was sent (an
     │                                    input written or replaced mid-run stops it there)
     │    ├── ConfigError(setting)        a setting is missing, unknown or out of range
     │    ├── InputError(path, line)      the recipient file cannot be read
     │    ├── MediaError(url)             a media URL fails the preflight check
     │    └── MissingExtra(extra)         a feature's optional package is not installed
     ├── ApiUnavailable               1  transient failures on group after group: the job stops
     ├── RefusedRepeatedly            1  group after group refused with one error: the job stops
     ├── ResetAfterDeadline           1  a cap stopped the job that lifts only after its deadline
     ├── OutputLost                   2  stdout refused what the command printed (a full disk,
     │                                    an I/O error); a failing command keeps its own code
     ├── LedgerError(path, line)       2  the ledger cannot be used
     │    ├── LedgerCorrupt               a line in the middle is not a ledger event
     │    ├── LedgerMismatch              the ledger belongs to another input or job
     │    ├── LedgerLocked(pid)       75    another run holds it: try again later
     │    ├── LedgerUnavailable        7    the ledger cannot be reached or written (a
     │    │                                 database down or lost, a lock or a timeout, a full
     │    │                                 disk): stopped, resumable
     │    └── ClaimLost(group)            another process took the group over: never sent
     │                                      here (the sender skips it; never an exit)
     └── SendError                        one request failed; the runner decides
          ├── FatalSendError              no group can succeed as configured; the job stops
          │    ├── AuthError(status)   3    401/403: the key is refused
          │    ├── LimitReached        5    a carrier's cap (40016), daily_recipients, a burst
          │    │    │                       of spam filtering: resumable
          │    │    ├── SpamFiltered          a burst of spam filtering: resumable once the
          │    │    │                         content or sender is fixed (nobody left: 0/1)
          │    │    └── MaxCostReached        the job's max_cost: resumable once it is raised
          │    │         └── ForeignCost      a cost in another currency than [pricing]
          │    │                              currency: resumable once that is set right
          │    ├── AccountRefused      6    no funds (20100, or a 402 with no code), spend
          │    │                            limit (40333), every sender refused (40003/40315)
          │    ├── EndpointError       2    a 3xx (never followed), a 404/405 to the send, or a
          │    │                            URL the client cannot use
          │    └── DescriptorsExhausted 2   EMFILE/ENFILE: this machine ran out of file
          │                                 descriptors (ulimit -n, --concurrency), not the API
          ├── Rejected(status)            400/422: the API refuses this group; never retried
          │    ├── NotFound                 404 on a GET: the API does not know the message id
          │    └── SenderRefused(sender)    40003/40315: the number leaves the pool, the group
          │                                 goes out from another
          ├── RetryableSendError          nothing was delivered; retry is safe
          │    ├── RateLimited(retry_after) 429
          │    ├── ServerError(status)      5xx on a GET; 408, 409, 501, 503, 505
          │    ├── NetworkError             failed before the request left (DNS, refused, TLS)
          │    └── WindowClosed             its window closed before the request left
          └── AmbiguousSendError          sent, but the outcome is unknown (dropped, timed
               │                          out, a 5xx but 501/503/505 answering the send)
               └── RecordsUnread(records)   the API's records cannot be read whole: those
                                            read can show a group accepted, never absent

The exit codes are the classes' own ``exit_code`` (the column above): the CLI reads them, so
this tree is the one table, with :class:`Exit` for the codes that are not an error's: 0 done,
1 finished with groups failed, pending a rerun or in doubt (or the prompt answered no), 4
outside the send window or the recipients' (resumable; a window that opens again only after
the job's deadline: 1, and past the deadline a run records what is left expired: 1),
130/143 stopped by SIGINT/SIGTERM (resumable). The README's table says the same for users.

Every message is one line and names the file and line, or the setting, that is wrong. No
message ever contains the API key: the client never puts headers into an error.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from bulk_mms.models import MessageRecord


class ApiError(msgspec.Struct, frozen=True):
    """One entry of a Telnyx ``errors`` array."""

    #: Telnyx error code, e.g. ``"40318"``; empty when the body had none.
    code: str
    title: str
    detail: str
    #: ``source.pointer``: a JSON pointer (RFC 6901) into the request, e.g. ``"/to/2"``.
    pointer: str = ""

    def __str__(self) -> str:
        parts = [p for p in (self.code, self.title, self.detail) if p]
        return " ".join(parts) if parts else "no detail"


class Exit(enum.IntEnum):
    """The exit codes that are not an error's own (those are on the classes above)."""

    OK = 0
    INCOMPLETE = 1
    USAGE = 2
    WINDOW = 4
    SIGINT = 130
    SIGTERM = 143


class BulkMmsError(Exception):
    """Root of every error bulk_mms raises on purpose."""

    #: The exit code when this error ends a command (see the tree above).
    exit_code = 2


class UsageError(BulkMmsError):
    """The job cannot start as configured. Nothing has been sent."""


class ConfigError(UsageError):
    """A setting in a job or config file (or on the command line) is wrong."""

    def __init__(self, setting: str, message: str, *, source: str | Path | None = None) -> None:
        self.setting = setting
        self.message = message
        self.source = str(source) if source is not None else None
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.setting}: {self.message}"


class _Located(Exception):
    """An error about a file, and optionally a line of it. Private: shared by two branches."""

    def __init__(self, path: str | Path, message: str, *, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


class InputError(_Located, UsageError):
    """The recipient file as a whole cannot be used (missing, unreadable, no phone column)."""


class MissingExtra(UsageError):
    """A feature needs an optional package that is not installed: the message names the
    extra that brings it (``pip install 'bulk-mms[html]'``)."""

    def __init__(self, feature: str, extra: str, package: str) -> None:
        self.feature = feature
        self.extra = extra
        self.package = package
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"{self.feature} needs {self.package}, which is not installed: "
            f"pip install 'bulk-mms[{self.extra}]'"
        )


class MediaError(UsageError):
    """A media URL of the message fails the preflight check (unreachable, no type, too big)."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        super().__init__(f"media {url}: {message}")


class ApiUnavailable(BulkMmsError):
    """Group after group used up its retries on transient errors: the API is down or unreachable.

    The job stops instead of failing every remaining group; those groups are resent by a rerun.
    """

    exit_code = 1


class ResetAfterDeadline(BulkMmsError):
    """A cap stopped the job (:class:`LimitReached`) that lifts only at or after the job's
    deadline: no later run can send what is left (the first run past the deadline records it
    expired), rather than 5's resumable stop."""

    exit_code = 1


class RefusedRepeatedly(BulkMmsError):
    """Group after group was refused (400/422) with one and the same error naming no member:
    the job's message, sender or profile is what the API refuses, not its recipients.

    The job stops instead of failing every remaining group. The refused groups are failed
    (``report --failed-csv`` lists them); a rerun, with the job fixed, sends the rest.
    """

    exit_code = 1


class OutputLost(BulkMmsError):
    """What the command printed on stdout could not be written (``> file`` on a full disk, an
    I/O error): its report, table or summary is lost, whatever else it did stands."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(f"stdout: cannot write: {exc.strerror or exc}")


class LedgerError(_Located, BulkMmsError):
    """The ledger file cannot be used."""


class LedgerCorrupt(LedgerError):
    """A complete line of the ledger is not a valid event."""


class LedgerMismatch(LedgerError):
    """The ledger was written for a different job or input file."""


class LedgerUnavailable(LedgerError):
    """The ledger cannot be reached or written: a database not answering (at the start, or a
    connection lost and not won back), a statement that outlived its timeout, a disk that
    refused a write. Every event written before stays written; what was in flight is in
    doubt; a rerun resumes."""

    exit_code = 7


class ClaimLost(LedgerError):
    """A shared ledger refused a group's write-ahead attempt: this process no longer holds
    the group's claim (another took it over while this one was paused or cut off). The
    request must not leave; the group is the other process's now."""

    def __init__(self, path: str | Path, group: str) -> None:
        self.group = group
        super().__init__(path, f"group {group}: claimed by another process; not sent here")


class LedgerLocked(LedgerError):
    """Another run holds this ledger (EX_TEMPFAIL: try again later)."""

    exit_code = 75

    def __init__(self, path: str | Path, pid: str) -> None:
        self.pid = pid
        super().__init__(path, f"another bulk-mms run (PID {pid or 'unknown'}) is using it")


class SendError(BulkMmsError):
    """Sending one group failed. Subclasses say whether retrying is safe."""

    def __init__(
        self, message: str, *, status: int | None = None, errors: Sequence[ApiError] = ()
    ) -> None:
        self.message = message
        self.status = status
        self.errors = tuple(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"HTTP {self.status}: " if self.status is not None else ""
        tail = f" ({'; '.join(map(str, self.errors))})" if self.errors else ""
        return f"{head}{self.message}{tail}"

    @property
    def code(self) -> str:
        """The first Telnyx error code, or the HTTP status, or the error class name. Of an
        answer's several codes, the error policy puts the one that decides first
        (:func:`~bulk_mms.policy.judged_error`)."""
        for err in self.errors:
            if err.code:
                return err.code
        if self.status is not None:
            return str(self.status)
        return type(self).__name__


class FatalSendError(SendError):
    """No request can succeed as things are configured: the whole job stops at once.

    Not a verdict on the group that met it: nothing was accepted, and a rerun (with the cause
    fixed) sends it.
    """


class AuthError(FatalSendError):
    """The API refused the key (401/403). Retrying cannot help; the whole job stops."""

    exit_code = 3


class LimitReached(FatalSendError):
    """A limit the account or the job is under was reached (a carrier's daily cap): stop,
    resumable once it resets or is raised. ``resumes_at``: when it resets (seconds since the
    epoch: a daily cap's next day), if it does by itself."""

    exit_code = 5

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        errors: Sequence[ApiError] = (),
        resumes_at: float | None = None,
    ) -> None:
        self.resumes_at = resumes_at
        super().__init__(message, status=status, errors=errors)


class SpamFiltered(LimitReached):
    """Spam filtering met ``[limits] spam_share`` of the run's latest tries or final delivery
    reports: the job stops before the rest of the list is burnt, resumable once the content or
    the sender is fixed. ``finding``: what was met, without what to do about it (the words of
    a run that met it with nobody left to send, where a rerun has nothing to do)."""

    def __init__(self, finding: str) -> None:
        self.finding = finding
        super().__init__(
            f"{finding}: paused before the list is burnt; check the content and the sender's "
            "reputation, then rerun",
            status=None,
        )


class MaxCostReached(LimitReached):
    """The job's ``max_cost`` would be passed by the next group, or can no longer be kept (a
    send's cost came back in another currency than ``[pricing] currency``): stop, resumable
    once it is raised, or the currency set right (it never lifts by itself)."""


class ForeignCost(MaxCostReached):
    """A send's cost came back in another currency than ``[pricing] currency``, which the
    job's ``max_cost`` is counted in: the ceiling can no longer be kept, so the run stops
    (exit 5, whether or not anything was left to send), resumable once the currency is set
    right (or ``max_cost`` dropped); raising ``max_cost`` does not lift it."""


class AccountRefused(FatalSendError):
    """The account refused to send at all (insufficient funds, the profile's spend limit):
    stop at once, resumable once it is fixed."""

    exit_code = 6


class EndpointError(FatalSendError):
    """The base URL does not lead to the API: it answered with a redirect, or cannot be used.

    bulk_mms never follows a redirect: a POST turned into a GET would be read as an answer to
    the send, and a 307 would post the body (and the key) wherever the ``Location`` points.
    """


class DescriptorsExhausted(FatalSendError):
    """No socket could be opened: the process or the system is out of file descriptors
    (EMFILE, ENFILE). A local fault, not the API's: the job stops at once, leaving the group
    unsent for a rerun, with a message naming ``ulimit -n`` and ``--concurrency``."""


class Rejected(SendError):
    """The API refused this group (400/404/422 ...). Permanent: never retried."""


class NotFound(Rejected):
    """HTTP 404 on ``GET /messages/...``: the API does not know this message id."""


class SenderRefused(Rejected):
    """The API refused the sending number (blocked as spam, unhealthy: 40003, 40315). Not a
    verdict on the group: the number leaves the job's pool and the group goes out from another
    (under a new Idempotency-Key: this request was never accepted)."""

    def __init__(
        self,
        message: str,
        *,
        sender: str,
        status: int | None = None,
        errors: Sequence[ApiError] = (),
    ) -> None:
        self.sender = sender
        super().__init__(message, status=status, errors=errors)


class RetryableSendError(SendError):
    """The group was certainly not delivered; sending it again is safe."""


class RateLimited(RetryableSendError):
    """HTTP 429. ``retry_after`` is the server's hint in seconds, when it gave one."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = 429,
        errors: Sequence[ApiError] = (),
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, errors=errors)


class ServerError(RetryableSendError):
    """The server failed without acting: a 5xx answering a read (a GET); a 408, 409, 501, 503
    or 505. Any other 5xx answering a send may follow a request the server acted on: that is
    an :class:`AmbiguousSendError`. ``retry_after``: when to try again, in seconds, if the
    answer said (a 503's ``Retry-After``)."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        errors: Sequence[ApiError] = (),
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, errors=errors)


class NetworkError(RetryableSendError):
    """The request never left: DNS failure, connection refused, TLS failure, connect timeout."""


class WindowClosed(RetryableSendError):
    """The request never left: a window the group is sent in (the job's ``send_window``, its
    recipients' ``recipient_window``) closed after its attempt was on record, before it left;
    or its sender is paused past the ``send_window``'s close while another may send. A run
    inside the window sends it."""


class AmbiguousSendError(SendError):
    """The request left but no usable answer came back: it may or may not have been accepted."""


class RecordsUnread(AmbiguousSendError):
    """The API's message detail records cannot be read whole (paging it does not state, a
    page it does not serve): ``records`` are those it listed, which can show a group accepted
    (a record is proof on any page) but never that it was not."""

    def __init__(self, message: str, records: Sequence[MessageRecord] = ()) -> None:
        super().__init__(message)
        #: The records of the pages read before the answer proved incomplete.
        self.records = tuple(records)
