"""Retry policy for one group, in one place, on tenacity.

Only :class:`~bulk_mms.errors.RetryableSendError` is retried (429, a GET's 5xx, failures before the
request left). The wait honours the server's hint (``Retry-After`` and friends, capped at
``max_retry_after``) and otherwise backs off exponentially with full jitter. Permanent errors,
auth failures and ambiguous failures return at once. The clock is injected so tests never wait.

A 429 is not a failure of the group but a request to slow down: it never counts against
``attempts``. Only a deadline (the group's maximum age, or the job's) ends a run of 429s.

An :class:`~bulk_mms.errors.AmbiguousSendError` (the request left; no usable answer came back)
is retried only while ``ambiguous_until`` (wall-clock seconds) is in the future: the caller sets
it to the group's first attempt plus the idempotency window, when the server honours
``Idempotency-Key`` and so turns a repeat into a replay of the first answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import structlog
import tenacity

from bulk_mms.clock import Clock, SystemClock
from bulk_mms.config import RetryConfig
from bulk_mms.errors import (
    AmbiguousSendError,
    RateLimited,
    RetryableSendError,
    SendError,
    ServerError,
)
from bulk_mms.models import Group, SendReceipt

T = TypeVar("T")
log = structlog.get_logger(__name__)


class Attempted(msgspec.Struct, frozen=True):
    """The end of sending one group: a receipt or the last error, and how many tries it took."""

    receipt: SendReceipt | None
    error: SendError | None
    attempts: int
    #: When the next try would have begun (monotonic) had the deadline not ended the tries
    #: first (a 429's wait, a backoff, that ends past it); None when they ended otherwise.
    next_try: float | None = None


class StopRetrying(Exception):
    """Raised in a try, before its request leaves, to give up (the job is stopping, a gate
    closed, a deadline passed).

    When an earlier try failed, the tries end with that try's error (an ambiguous try stays in
    doubt); else with ``error``, if one is given; else it is raised on to the caller.
    """

    def __init__(self, error: SendError | None = None) -> None:
        self.error = error
        super().__init__(str(error) if error is not None else "stopped")


class _Stop(tenacity.stop.stop_base):
    """Stop after ``attempts`` failures (429s not counted unless ``count_limited``: a send
    waits them out to its deadline), or once past the deadline. Private.

    :meth:`begin` starts it anew for another call (a :class:`Retrier`'s next group).
    """

    def __init__(
        self,
        attempts: int,
        deadline: float | None,
        now: Callable[[], float],
        *,
        count_limited: bool = False,
    ) -> None:
        self.attempts = attempts
        self.deadline = deadline
        self.now = now
        self.count_limited = count_limited
        self.failures = 0
        #: When the wait the deadline stopped would have ended (None: it stopped none).
        self.cut_at: float | None = None

    def begin(self, deadline: float | None) -> None:
        """No failures yet, and ``deadline`` (monotonic) for the tries to come."""
        self.deadline = deadline
        self.failures = 0
        self.cut_at = None

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if self.count_limited or not isinstance(exc, RateLimited):
            self.failures += 1
        if self.failures >= self.attempts:
            return True
        # tenacity computes the wait before asking this: no wait that ends past the deadline
        # is begun (a 429's hint of an hour must not hold a group whose deadline is in a minute)
        ends = self.now() + retry_state.upcoming_sleep
        if self.deadline is not None and ends > self.deadline:
            self.cut_at = ends
            return True
        return False


class _Wait(tenacity.wait.wait_base):
    """Server hint first (a 429's, a 503's ``Retry-After``), bounded by
    ``max_retry_after``; else exponential backoff with full jitter. Private."""

    def __init__(self, policy: RetryConfig) -> None:
        self.policy = policy
        self.backoff = tenacity.wait_random_exponential(
            multiplier=policy.backoff_initial, max=policy.backoff_max
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, RateLimited | ServerError) and exc.retry_after is not None:
            return min(exc.retry_after, self.policy.max_retry_after)
        return float(self.backoff(retry_state))


class RetryDigest:
    """Retries of many groups for one cause, said once rather than once a retry.

    The first retry of each cause (the error's code: ``503``, ``NetworkError``...) is logged at
    once as ``send.retry_scheduled``; later ones are counted and logged as one
    ``send.retries`` line per cause every ``every`` seconds, and by :meth:`flush` at the end.
    Each retry is still logged at debug level (``-v``).
    """

    def __init__(self, every: float = 5.0, now: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.now = now
        self._pending: dict[str, int] = {}
        self._since: dict[str, float] = {}

    def note(self, group: Group, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        cause = exc.code if isinstance(exc, SendError) else type(exc).__name__
        wait = round(state.upcoming_sleep, 2)
        log.debug("send.retry", group=group.id, attempt=state.attempt_number, caused_by=str(exc))
        t = self.now()
        if cause not in self._since:
            self._since[cause] = t
            self._pending[cause] = 0
            log.warning(
                "send.retry_scheduled",
                group=group.id,
                attempt=state.attempt_number,
                cause=cause,
                caused_by=str(exc),
                wait_for=wait,
            )
            return
        self._pending[cause] += 1
        if t - self._since[cause] >= self.every:
            self._say(cause, t)

    def _say(self, cause: str, t: float) -> None:
        if self._pending.get(cause):
            log.warning(
                "send.retries",
                cause=cause,
                retries=self._pending[cause],
                seconds=round(t - self._since[cause], 1),
            )
        self._pending[cause] = 0
        self._since[cause] = t

    def flush(self) -> None:
        """Say what is still counted (at the end of a run)."""
        t = self.now()
        for cause in list(self._pending):
            self._say(cause, t)


async def _before_try(retry_state: tenacity.RetryCallState) -> None:
    """Nothing, before each try. Tenacity calls a ``before`` on every try, and a plain
    function (its default) it inspects and wraps in a coroutine each time; a coroutine
    function it takes as it is."""


class Retrier:
    """The tries of one group at a time, group after group: tenacity's machinery (its
    ``AsyncRetrying``, the stop, the wait, the retry predicate) is built once and reused.

    A caller hands :meth:`run` one try, written top to bottom, and gets how the tries ended::

        async def try_once(n: int) -> SendReceipt:
            ...  # pace, record try n ahead
            return await client.send(group, key)

        result = await retrier.run(group, try_once, deadline=..., ambiguous_until=...)

    A retrier is not for two groups at once (:meth:`run` raises :class:`RuntimeError`): a
    caller with several groups in flight keeps one ``Retrier`` for each. What a group's tries
    share (tenacity's ``RetryCallState``, the failures the stop counts, the group's deadline,
    until when an ambiguous try is retried, the last error) is begun anew for each group.

    Args:
        policy: attempts and backoff.
        clock: sleeps between tries, and tells the time for a group's ``deadline`` (monotonic)
            and ``ambiguous_until`` (wall); the system's by default, a fake in tests.
        digest: where retries are told; a digest of this retrier's own by default.
    """

    def __init__(
        self,
        policy: RetryConfig,
        *,
        clock: Clock | None = None,
        digest: RetryDigest | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self.digest = digest or RetryDigest()
        #: The group being sent, and until when its ambiguous tries are retried (wall).
        self._group: Group | None = None
        self._ambiguous_until: float | None = None
        self._stop = _Stop(policy.attempts, None, self.clock.monotonic)
        self._retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(self._retryable),
            stop=self._stop,
            wait=_Wait(policy),
            sleep=self.clock.sleep,
            before=_before_try,
            before_sleep=self._before_sleep,
            reraise=True,
        )

    def _retryable(self, exc: BaseException) -> bool:
        """Whether the try that raised ``exc`` may be made again (see the module)."""
        if isinstance(exc, RetryableSendError):
            return True
        until = self._ambiguous_until
        return (
            isinstance(exc, AmbiguousSendError) and until is not None and self.clock.wall() < until
        )

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        assert self._group is not None
        self.digest.note(self._group, state)

    async def run(
        self,
        group: Group,
        try_once: Callable[[int], Awaitable[SendReceipt]],
        *,
        deadline: float | None = None,
        ambiguous_until: float | None = None,
    ) -> Attempted:
        """Send one group, retrying what can be retried: the one try loop.

        ``try_once(n)`` makes try number ``n`` (1, 2, ...) top to bottom and returns its
        answer; an error it raises ends that try. Before its request leaves it may raise
        :class:`StopRetrying` to give up unsent. A :class:`~bulk_mms.errors.SendError` is
        retried or ends the tries (see the module); any other error is raised on, untried
        again. However the loop ends, the retrier is free for another group.

        Args:
            group: what is sent (for the retry digest).
            try_once: one try; given its number.
            deadline: no retry starts after this monotonic time.
            ambiguous_until: retry ambiguous failures until this wall-clock time (None: never).

        Returns:
            The receipt, or the error that ended the tries, with the number of tries. Once a
            try was ambiguous (it may have been accepted), the group can only end sent or
            ambiguous: a later 503, 429 or refusal does not undo what that try may have done.

        Raises:
            RuntimeError: this retrier is sending another group.
            StopRetrying: ``try_once`` gave up before the first try, naming no error.
            BaseException: whatever else ``try_once`` raised (a ledger's error, a cancel).
        """
        if self._group is not None:
            raise RuntimeError(f"a Retrier sends one group at a time ({self._group.id} is out)")
        self._group, self._ambiguous_until = group, ambiguous_until
        self._stop.begin(deadline)
        number = 0
        last: SendError | None = None
        doubt: AmbiguousSendError | None = None  # the first try that may have been accepted
        try:
            async for attempt in self._retrying:
                with attempt:  # tenacity's: an error in the block ends this try
                    number = attempt.retry_state.attempt_number
                    try:
                        receipt = await try_once(number)
                    except SendError as exc:
                        last = exc
                        if doubt is None and isinstance(exc, AmbiguousSendError):
                            doubt = exc
                        raise
                    return Attempted(receipt, None, number)  # an answer: tenacity is done
        except SendError as exc:
            return Attempted(None, _still_in_doubt(doubt, exc), number, self._stop.cut_at)
        except StopRetrying as stop:
            if last is not None:  # the tries made so far end it: the last one's error stands
                return Attempted(None, _still_in_doubt(doubt, last), number - 1)
            if stop.error is not None:
                return Attempted(None, stop.error, number - 1)
            raise
        finally:
            self._group = self._ambiguous_until = None
        raise AssertionError("unreachable: tenacity either returns or reraises")  # pragma: no cover


def _still_in_doubt(doubt: AmbiguousSendError | None, last: SendError) -> SendError:
    """The error a group ends with: ``last``, unless an earlier try may have been accepted."""
    if doubt is None or isinstance(last, AmbiguousSendError):
        return last
    return AmbiguousSendError(
        f"{doubt.message}; the tries after it ended with {last}", status=doubt.status
    )


async def fetch_with_retry(
    call: Callable[[], Awaitable[T]],
    policy: RetryConfig,
    *,
    what: str,
    clock: Clock | None = None,
    on_error: Callable[[SendError], None] | None = None,
    retry_on: tuple[type[SendError], ...] = (RetryableSendError, AmbiguousSendError),
) -> T:
    """Run a read (a GET) with the same backoff as sends, a 429's wait first.

    A read changes nothing, so an ambiguous failure is retried as freely as a transient one
    (``retry_on``: the errors asked again). A read has no deadline, so every failure, a 429
    too, counts against ``policy.attempts``: an API that answers 429 for ever (or a stopping
    job's clock, whose sleeps end at once) ends the tries there.

    Raises:
        SendError: the last error, once the tries are used up or the error is permanent.
    """

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if on_error is not None and isinstance(exc, SendError):
            on_error(exc)
        log.debug("fetch.retry_scheduled", what=what, caused_by=str(exc))

    clock = clock or SystemClock()
    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        stop=_Stop(policy.attempts, None, clock.monotonic, count_limited=True),
        wait=_Wait(policy),
        sleep=clock.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity either returns or reraises")  # pragma: no cover
