"""Retry policy with a fake client and a fake sleep: no real waiting."""

from __future__ import annotations

import asyncio

import pytest

from bulk_mms.config import RetryConfig
from bulk_mms.errors import (
    AmbiguousSendError,
    AuthError,
    LedgerError,
    NetworkError,
    RateLimited,
    Rejected,
    SendError,
    ServerError,
)
from bulk_mms.models import Group, MessageBody, SendReceipt
from bulk_mms.retry import Attempted, Retrier, StopRetrying, fetch_with_retry
from tests.conftest import FakeClient, FakeClock, ok_receipt

POLICY = RetryConfig(attempts=4, backoff_initial=1.0, backoff_max=8.0, max_retry_after=60.0)
KEY = "bulk-mms-c0ffee-g1"
GROUP = Group("g1", 0, ("+12125550100",), (2,), MessageBody(from_="+18445550001", text="x"))


async def send(
    c: FakeClient,
    clock: FakeClock,
    *,
    retrier: Retrier | None = None,
    deadline: float | None = None,
    ambiguous_until: float | None = None,
) -> Attempted:
    """GROUP through ``retrier`` (one of its own by default), each try a bare send."""
    retrier = retrier or Retrier(POLICY, clock=clock)
    return await retrier.run(
        GROUP, lambda n: c.send(GROUP, KEY), deadline=deadline, ambiguous_until=ambiguous_until
    )


def script(*answers: SendError | None) -> FakeClient:
    def handler(group: Group, n: int) -> SendReceipt | SendError:
        answer = answers[n] if n < len(answers) else None
        return answer if answer is not None else ok_receipt(group, n)

    return FakeClient(handler)


async def test_429_waits_for_the_server_hint(fake_sleep: FakeClock) -> None:
    """A 429 with Retry-After waits exactly that long, then the retry succeeds."""
    c = script(RateLimited("x", retry_after=7.0), None)
    result = await send(c, fake_sleep)
    assert result.receipt is not None
    assert result.attempts == 2
    assert fake_sleep.calls == [7.0]


async def test_huge_hint_is_capped(fake_sleep: FakeClock) -> None:
    """A Retry-After beyond max_retry_after is capped to it."""
    c = script(RateLimited("x", retry_after=10_000.0), None)
    await send(c, fake_sleep)
    assert fake_sleep.calls == [60.0]


async def test_5xx_and_network_errors_back_off_with_jitter(fake_sleep: FakeClock) -> None:
    """5xx and connect failures retry with waits within the exponential envelope."""
    c = script(ServerError("x", status=503), NetworkError("x"), ServerError("x", status=500), None)
    result = await send(c, fake_sleep)
    assert result.receipt is not None
    assert result.attempts == 4
    assert len(fake_sleep.calls) == 3
    for i, wait in enumerate(fake_sleep.calls, start=1):
        assert 0 <= wait <= min(8.0, 1.0 * 2**i)


async def test_gives_up_after_the_configured_attempts(fake_sleep: FakeClock) -> None:
    """When every try fails, the last error is returned with the number of tries."""
    c = script(*[ServerError("down", status=502)] * 10)
    result = await send(c, fake_sleep)
    assert isinstance(result.error, ServerError)
    assert result.attempts == 4
    assert len(c.calls) == 4


async def test_permanent_auth_and_ambiguous_are_never_retried(fake_sleep: FakeClock) -> None:
    """Rejected, AuthError and AmbiguousSendError end after a single try."""
    for err in (Rejected("no", status=422), AuthError("no", status=401), AmbiguousSendError("?")):
        c = script(err)
        result = await send(c, fake_sleep)
        assert result.error is err
        assert result.attempts == 1
        assert len(c.calls) == 1
    assert fake_sleep.calls == []


async def test_429s_do_not_use_up_attempts(fake_sleep: FakeClock) -> None:
    """Ten 429s in a row, then success: 429s are not failures, so attempts=4 is not exceeded."""
    c = script(*[RateLimited("x", retry_after=0.5)] * 10, None)
    result = await send(c, fake_sleep)
    assert result.receipt is not None
    assert result.attempts == 11


async def test_deadline_ends_a_run_of_429s(fake_sleep: FakeClock) -> None:
    """A group rate limited up to its deadline ends with the 429, without a wait past it."""
    c = script(*[RateLimited("x", retry_after=2.0)] * 100)
    deadline = fake_sleep.monotonic() + 9.0
    result = await send(c, fake_sleep, deadline=deadline)
    assert isinstance(result.error, RateLimited)
    assert result.attempts == 5  # tries at t=0, 2, 4, 6, 8: a wait to 10 would pass 9
    assert fake_sleep.monotonic() <= deadline


async def test_tries_are_numbered_and_each_failure_seen_in_its_try(fake_sleep: FakeClock) -> None:
    """Every try, the first and each retry, is numbered 1, 2, 3 for ``try_once``, which sees
    each failed try's own error as it ends."""
    numbers: list[int] = []
    seen: list[type[SendError]] = []
    c = script(ServerError("x", status=503), RateLimited("x", retry_after=3.0), None)

    async def try_once(n: int) -> SendReceipt:
        numbers.append(n)
        try:
            return await c.send(GROUP, KEY)
        except SendError as exc:
            seen.append(type(exc))
            raise

    result = await Retrier(POLICY, clock=fake_sleep).run(GROUP, try_once)
    assert (numbers, seen) == ([1, 2, 3], [ServerError, RateLimited])
    assert result.attempts == 3
    assert len(c.calls) == 3
    assert len(fake_sleep.calls) == 2
    assert 0 <= fake_sleep.calls[0] <= 2.0  # the 503's backoff: the first attempt's envelope
    assert fake_sleep.calls[1] == 3.0


async def test_giving_up_before_a_try_ends_with_what_came_before(fake_sleep: FakeClock) -> None:
    """``StopRetrying`` before the first request is raised on (nothing was tried); after a
    failed try, the tries end with that try's error and count only the tries made."""
    retrier = Retrier(POLICY, clock=fake_sleep)

    async def never(n: int) -> SendReceipt:
        raise StopRetrying

    with pytest.raises(StopRetrying):
        await retrier.run(GROUP, never)
    c = script(ServerError("x", status=503))

    async def once(n: int) -> SendReceipt:
        if n > 1:
            raise StopRetrying(Rejected("unused", status=400))
        return await c.send(GROUP, KEY)

    result = await retrier.run(GROUP, once)
    assert isinstance(result.error, ServerError)
    assert result.attempts == 1


async def test_a_refusal_on_the_first_try_is_not_retried(fake_sleep: FakeClock) -> None:
    """A permanent refusal on the first try ends the group at once, with one try counted."""
    c = script(Rejected("bad", status=400))
    result = await send(c, fake_sleep)
    assert isinstance(result.error, Rejected)
    assert result.attempts == 1
    assert len(c.calls) == 1
    assert fake_sleep.calls == []


async def test_a_retrier_begins_each_group_anew(fake_sleep: FakeClock) -> None:
    """A reused Retrier counts each group's failures and keeps each group's deadline apart."""
    retrier = Retrier(POLICY, clock=fake_sleep)
    c = script(
        *[ServerError("down", status=502)] * 4, None, *[RateLimited("x", retry_after=2.0)] * 9
    )
    first = await send(c, fake_sleep, retrier=retrier)
    assert isinstance(first.error, ServerError)
    assert first.attempts == 4
    second = await send(c, fake_sleep, retrier=retrier)  # its 4 failures are not carried over
    assert second.receipt is not None
    assert second.attempts == 1
    third = await send(c, fake_sleep, retrier=retrier, deadline=fake_sleep.monotonic() + 5.0)
    assert isinstance(third.error, RateLimited)
    assert third.attempts == 3  # tries at t=0, 2, 4: a wait to 6 would pass 5
    fourth = await send(c, fake_sleep, retrier=retrier)  # no deadline: the last 429s, then sent
    assert fourth.receipt is not None
    assert fourth.attempts == 7


async def test_a_retrier_retries_ambiguous_tries_by_its_call(fake_sleep: FakeClock) -> None:
    """``ambiguous_until`` is the call's own: a later call without it does not retry."""
    retrier = Retrier(POLICY, clock=fake_sleep)
    c = script(AmbiguousSendError("?"), None, AmbiguousSendError("?"))
    until = fake_sleep.wall() + 60.0
    first = await send(c, fake_sleep, retrier=retrier, ambiguous_until=until)
    assert first.receipt is not None
    assert first.attempts == 2
    second = await send(c, fake_sleep, retrier=retrier)
    assert isinstance(second.error, AmbiguousSendError)
    assert second.attempts == 1


async def test_a_retrier_sends_one_group_at_a_time(fake_sleep: FakeClock) -> None:
    """A second send on a Retrier whose group is out is refused; once it ends, it is free."""
    release = asyncio.Event()

    async def held(group: Group, n: int) -> SendReceipt:
        await release.wait()
        return ok_receipt(group, n)

    retrier = Retrier(POLICY, clock=fake_sleep)
    out = asyncio.ensure_future(send(FakeClient(held), fake_sleep, retrier=retrier))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one group at a time"):
        await send(FakeClient(), fake_sleep, retrier=retrier)
    release.set()
    assert (await out).receipt is not None
    assert (await send(FakeClient(), fake_sleep, retrier=retrier)).receipt is not None


async def test_an_error_that_is_no_answer_is_raised_on(fake_sleep: FakeClock) -> None:
    """An error in a try that is no answer (a ledger's) is raised on from ``run``, untried
    again, and the retrier is free for the next group."""
    retrier = Retrier(POLICY, clock=fake_sleep)
    tries = 0

    async def full(n: int) -> SendReceipt:
        nonlocal tries
        tries += 1
        raise LedgerError("ledger.jsonl", "disk full")

    with pytest.raises(LedgerError):
        await retrier.run(GROUP, full)
    assert tries == 1
    assert (await send(FakeClient(), fake_sleep, retrier=retrier)).receipt is not None


async def test_the_tries_end_at_the_first_answer(fake_sleep: FakeClock) -> None:
    """The loop ends at the first try that answered, after a retried one: that answer and
    the number of tries, and no try after it."""
    c = script(ServerError("down", status=503), None, None)
    result = await send(c, fake_sleep)
    assert result.receipt is not None
    assert result.attempts == 2
    assert len(c.calls) == 2


async def test_a_retrier_is_free_after_a_try_is_cancelled(fake_sleep: FakeClock) -> None:
    """A try cancelled while its request is out (the run stopping) raises the cancel on, and
    the retrier sends the next group."""
    retrier = Retrier(POLICY, clock=fake_sleep)
    started = asyncio.Event()

    async def hangs(group: Group, n: int) -> SendReceipt:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    out = asyncio.ensure_future(send(FakeClient(hangs), fake_sleep, retrier=retrier))
    await started.wait()
    out.cancel()
    with pytest.raises(asyncio.CancelledError):
        await out
    assert (await send(FakeClient(), fake_sleep, retrier=retrier)).receipt is not None


async def test_a_read_answered_429_for_ever_ends_after_its_attempts(fake_sleep: FakeClock) -> None:
    """A read has no deadline: its 429s count against the attempts, so it ends with the 429."""
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise RateLimited("x", retry_after=0.0)

    with pytest.raises(RateLimited):
        await fetch_with_retry(refused, POLICY, what="records", clock=fake_sleep)
    assert calls == POLICY.attempts


async def test_a_503_s_retry_after_is_waited_out(fake_sleep: FakeClock) -> None:
    """A 503 saying when to come back is tried again then, not after the backoff's jitter."""
    c = script(ServerError("down", status=503, retry_after=40.0), None)
    result = await send(c, fake_sleep)
    assert result.receipt is not None
    assert fake_sleep.calls == [40.0]
