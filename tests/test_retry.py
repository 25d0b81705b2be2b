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
from bulk_mms.retry import Retrier, send_with_retry
from tests.conftest import FakeClient, FakeClock, ok_receipt

POLICY = RetryConfig(attempts=4, backoff_initial=1.0, backoff_max=8.0, max_retry_after=60.0)
KEY = "bulk-mms-c0ffee-g1"
GROUP = Group("g1", 0, ("+12125550100",), (2,), MessageBody(from_="+18445550001", text="x"))


def script(*answers: SendError | None) -> FakeClient:
    def handler(group: Group, n: int) -> SendReceipt | SendError:
        answer = answers[n] if n < len(answers) else None
        return answer if answer is not None else ok_receipt(group, n)

    return FakeClient(handler)


async def test_429_waits_for_the_server_hint(fake_sleep: FakeClock) -> None:
    """A 429 with Retry-After waits exactly that long, then the retry succeeds."""
    c = script(RateLimited("x", retry_after=7.0), None)
    result = await send_with_retry(c, GROUP, KEY, POLICY, clock=fake_sleep)
    assert result.receipt is not None
    assert result.attempts == 2
    assert fake_sleep.calls == [7.0]


async def test_huge_hint_is_capped(fake_sleep: FakeClock) -> None:
    """A Retry-After beyond max_retry_after is capped to it."""
    c = script(RateLimited("x", retry_after=10_000.0), None)
    await send_with_retry(c, GROUP, KEY, POLICY, clock=fake_sleep)
    assert fake_sleep.calls == [60.0]


async def test_5xx_and_network_errors_back_off_with_jitter(fake_sleep: FakeClock) -> None:
    """5xx and connect failures retry with waits within the exponential envelope."""
    c = script(ServerError("x", status=503), NetworkError("x"), ServerError("x", status=500), None)
    result = await send_with_retry(c, GROUP, KEY, POLICY, clock=fake_sleep)
    assert result.receipt is not None
    assert result.attempts == 4
    assert len(fake_sleep.calls) == 3
    for i, wait in enumerate(fake_sleep.calls, start=1):
        assert 0 <= wait <= min(8.0, 1.0 * 2**i)


async def test_gives_up_after_the_configured_attempts(fake_sleep: FakeClock) -> None:
    """When every try fails, the last error is returned with the number of tries."""
    c = script(*[ServerError("down", status=502)] * 10)
    result = await send_with_retry(c, GROUP, KEY, POLICY, clock=fake_sleep)
    assert isinstance(result.error, ServerError)
    assert result.attempts == 4
    assert len(c.calls) == 4


async def test_permanent_auth_and_ambiguous_are_never_retried(fake_sleep: FakeClock) -> None:
    """Rejected, AuthError and AmbiguousSendError end after a single try."""
    for err in (Rejected("no", status=422), AuthError("no", status=401), AmbiguousSendError("?")):
        c = script(err)
        result = await send_with_retry(c, GROUP, KEY, POLICY, clock=fake_sleep)
        assert result.error is err
        assert result.attempts == 1
        assert len(c.calls) == 1
    assert fake_sleep.calls == []


async def test_429s_do_not_use_up_attempts(fake_sleep: FakeClock) -> None:
    """Ten 429s in a row, then success: 429s are not failures, so attempts=4 is not exceeded."""
    c = script(*[RateLimited("x", retry_after=0.5)] * 10, None)
    result = await send_with_retry(c, GROUP, KEY, POLICY, clock=fake_sleep)
    assert result.receipt is not None
    assert result.attempts == 11


async def test_deadline_ends_a_run_of_429s(fake_sleep: FakeClock) -> None:
    """A group rate limited up to its deadline ends with the 429, without a wait past it."""
    c = script(*[RateLimited("x", retry_after=2.0)] * 100)
    deadline = fake_sleep.monotonic() + 9.0
    result = await send_with_retry(c, GROUP, KEY, POLICY, clock=fake_sleep, deadline=deadline)
    assert isinstance(result.error, RateLimited)
    assert result.attempts == 5  # tries at t=0, 2, 4, 6, 8: a wait to 10 would pass 9
    assert fake_sleep.monotonic() <= deadline


async def test_on_error_sees_every_failed_try(fake_sleep: FakeClock) -> None:
    """The on_error hook is called once per failed try, with that try's error."""
    seen: list[SendError] = []
    c = script(RateLimited("x", retry_after=1.0), ServerError("y", status=500), None)
    await send_with_retry(c, GROUP, KEY, POLICY, clock=fake_sleep, on_error=seen.append)
    assert [type(e) for e in seen] == [RateLimited, ServerError]


async def test_tries_are_numbered_across_the_first_and_the_retries(fake_sleep: FakeClock) -> None:
    """Every try, the first and each retry, is numbered 1, 2, 3 for ``before_attempt``."""
    numbers: list[int] = []

    async def before(n: int) -> None:
        numbers.append(n)

    c = script(ServerError("x", status=503), RateLimited("x", retry_after=3.0), None)
    result = await send_with_retry(c, GROUP, KEY, POLICY, clock=fake_sleep, before_attempt=before)
    assert numbers == [1, 2, 3]
    assert result.attempts == 3
    assert len(c.calls) == 3
    assert len(fake_sleep.calls) == 2
    assert 0 <= fake_sleep.calls[0] <= 2.0  # the 503's backoff: the first attempt's envelope
    assert fake_sleep.calls[1] == 3.0


async def test_a_refusal_on_the_first_try_is_not_retried(fake_sleep: FakeClock) -> None:
    """A permanent refusal on the first try ends the group at once, with one try counted."""
    c = script(Rejected("bad", status=400))
    result = await send_with_retry(c, GROUP, KEY, POLICY, clock=fake_sleep)
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
    first = await retrier.send(c, GROUP, KEY)
    assert isinstance(first.error, ServerError)
    assert first.attempts == 4
    second = await retrier.send(c, GROUP, KEY)  # its 4 failures are not carried over
    assert second.receipt is not None
    assert second.attempts == 1
    third = await retrier.send(c, GROUP, KEY, deadline=fake_sleep.monotonic() + 5.0)
    assert isinstance(third.error, RateLimited)
    assert third.attempts == 3  # tries at t=0, 2, 4: a wait to 6 would pass 5
    fourth = await retrier.send(c, GROUP, KEY)  # no deadline: the last 429s, then sent
    assert fourth.receipt is not None
    assert fourth.attempts == 7


async def test_a_retrier_retries_ambiguous_tries_by_its_call(fake_sleep: FakeClock) -> None:
    """``ambiguous_until`` is the call's own: a later call without it does not retry."""
    retrier = Retrier(POLICY, clock=fake_sleep)
    c = script(AmbiguousSendError("?"), None, AmbiguousSendError("?"))
    until = fake_sleep.wall() + 60.0
    first = await retrier.send(c, GROUP, KEY, ambiguous_until=until)
    assert first.receipt is not None
    assert first.attempts == 2
    second = await retrier.send(c, GROUP, KEY)
    assert isinstance(second.error, AmbiguousSendError)
    assert second.attempts == 1


async def test_a_retrier_sends_one_group_at_a_time(fake_sleep: FakeClock) -> None:
    """A second send on a Retrier whose group is out is refused; once it ends, it is free."""
    release = asyncio.Event()

    async def held(group: Group, n: int) -> SendReceipt:
        await release.wait()
        return ok_receipt(group, n)

    retrier = Retrier(POLICY, clock=fake_sleep)
    out = asyncio.ensure_future(retrier.send(FakeClient(held), GROUP, KEY))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one group at a time"):
        await retrier.send(FakeClient(), GROUP, KEY)
    release.set()
    assert (await out).receipt is not None
    assert (await retrier.send(FakeClient(), GROUP, KEY)).receipt is not None


async def test_attempts_pass_on_what_is_not_a_send_error(fake_sleep: FakeClock) -> None:
    """An error in a try that is no answer (a ledger's) is raised on from the loop, untried
    again, and the retrier is free for the next group."""
    retrier = Retrier(POLICY, clock=fake_sleep)
    tries = 0

    async def loop() -> None:
        nonlocal tries
        async for attempt in retrier.attempts(GROUP):
            with attempt:
                tries += 1
                raise LedgerError("ledger.jsonl", "disk full")

    with pytest.raises(LedgerError):
        await loop()
    assert tries == 1
    assert (await retrier.send(FakeClient(), GROUP, KEY)).receipt is not None


async def test_attempts_end_at_the_first_answer(fake_sleep: FakeClock) -> None:
    """The loop ends at the first try that answered, after a retried one: ``ended`` gives
    that answer and the number of tries."""
    retrier = Retrier(POLICY, clock=fake_sleep)
    c = script(ServerError("down", status=503), None)
    receipt = None
    async for attempt in retrier.attempts(GROUP):
        with attempt:
            receipt = await c.send(GROUP, KEY)
    result = retrier.ended(receipt)
    assert result.receipt is not None
    assert result.attempts == 2
    assert len(c.calls) == 2


async def test_a_released_retrier_is_free_after_a_loop_left_early(fake_sleep: FakeClock) -> None:
    """A loop over ``attempts`` left by an error outside a try leaves the retrier busy until
    ``release``; then it sends the next group."""
    retrier = Retrier(POLICY, clock=fake_sleep)

    async def loop() -> None:
        async for _attempt in retrier.attempts(GROUP):
            raise ValueError("outside the try")

    with pytest.raises(ValueError, match="outside the try"):
        await loop()
    with pytest.raises(RuntimeError, match="one group at a time"):
        retrier.attempts(GROUP)
    retrier.release()
    assert (await retrier.send(FakeClient(), GROUP, KEY)).receipt is not None
