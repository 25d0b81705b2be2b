"""Shared fixtures: a fake client behind the MmsClient seam, job factories, the fake API server."""

from __future__ import annotations

import asyncio
import itertools
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestServer

from bulk_mms.config import JobConfig, RetryConfig, Settings, load_job
from bulk_mms.errors import NotFound, SendError
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.models import Group, Money, RecipientStatus, SendReceipt
from bulk_mms.runner import run_job

pytest_plugins = ("pytest_aiohttp",)

Handler = Callable[[Group, int], Awaitable[SendReceipt] | SendReceipt | SendError]


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts with structlog's defaults (the CLI reconfigures it)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def ok_receipt(group: Group, n: int = 0, *, wait: float = 0.0) -> SendReceipt:
    """What a successful send of ``group`` returns."""
    return SendReceipt(
        message_id=f"msg-{group.id}-{n}",
        statuses=tuple(RecipientStatus(p, "queued") for p in group.to),
        wait_seconds=wait,
        cost=Money(Decimal("0.0051") * len(group.to), "USD"),
    )


@dataclass
class FakeClient:
    """An MmsClient whose answers come from ``handler(group, call_number)``.

    The handler returns a receipt or an error to raise; by default every send succeeds.
    """

    handler: Handler | None = None
    calls: list[Group] = field(default_factory=list)
    #: The Idempotency-Key of each call, same order as ``calls``.
    keys: list[str] = field(default_factory=list)
    #: What the GETs answer, by message id: statuses, or an error to raise; unknown ids 404.
    delivery: dict[str, tuple[RecipientStatus, ...] | SendError] = field(default_factory=dict)
    fetches: list[str] = field(default_factory=list)
    _counter: Iterator[int] = field(default_factory=itertools.count)

    async def send(self, group: Group, key: str) -> SendReceipt:
        n = next(self._counter)
        self.calls.append(group)
        self.keys.append(key)
        if self.handler is None:
            return ok_receipt(group, n)
        result = self.handler(group, n)
        if isinstance(result, SendError):
            raise result
        if isinstance(result, SendReceipt):
            return result
        out = await result
        if isinstance(out, SendError):
            raise out
        return out

    async def fetch_group(self, message_id: str) -> tuple[RecipientStatus, ...]:
        return self._fetch(message_id)

    async def fetch_message(self, message_id: str) -> tuple[RecipientStatus, ...]:
        return self._fetch(message_id)

    def _fetch(self, message_id: str) -> tuple[RecipientStatus, ...]:
        self.fetches.append(message_id)
        answer = self.delivery.get(message_id)
        if answer is None:
            raise NotFound("unknown", status=404)
        if isinstance(answer, SendError):
            raise answer
        return answer

    def sent_numbers(self) -> list[str]:
        return [p for g in self.calls for p in g.to]


class FakeSleep:
    """A fake clock: sleeping records the request and moves the clock on at once.

    Usable as the retry ``sleep`` (call it) and as the runner's ``clock`` (``now``/``sleep``).
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.calls: list[float] = []
        self.time = start

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.time += max(0.0, seconds)
        await asyncio.sleep(0)

    async def __call__(self, seconds: float) -> None:
        await self.sleep(seconds)


@pytest.fixture
def fake_sleep() -> FakeSleep:
    return FakeSleep()


FAST = Settings(
    rate=10_000.0,
    concurrency=4,
    retry=RetryConfig(attempts=3, backoff_initial=0.01, backoff_max=0.02),
)


def numbers(n: int, start: int = 0) -> list[str]:
    """``n`` distinct valid US numbers in E.164."""
    return [f"+1212555{i:04d}" for i in range(start, start + n)]


@dataclass
class JobFactory:
    """Writes a job file and its input into a temporary folder."""

    root: Path

    def csv(self, rows: list[dict[str, str]] | str, name: str = "people.csv") -> Path:
        path = self.root / name
        if isinstance(rows, str):
            path.write_text(rows, encoding="utf-8")
            return path
        cols = list(rows[0]) if rows else ["phone"]
        lines = [",".join(cols)] + [",".join(r.get(c, "") for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def job(
        self,
        input_name: str = "people.csv",
        *,
        extra: str = "",
        message: str = 'text = "Hello {first}"',
        name: str = "test-job",
        sender: str = '"+18445550001"',
    ) -> JobConfig:
        path = self.root / "job.toml"
        # mixing unrelated recipients is the tests' usual choice; a job must make one
        grouping = "" if "group_by" in extra or "mix_unrelated" in extra else "mix_unrelated = true"
        path.write_text(
            textwrap.dedent(
                f"""\
                name = "{name}"
                input = "{input_name}"
                {grouping}
                {extra}

                [message]
                from = {sender}
                {message}
                """
            ),
            encoding="utf-8",
        )
        return load_job(path)

    def people(self, n: int, start: int = 0, **cols: Any) -> Path:
        rows = [{"phone": p, "first": f"P{i}"} for i, p in enumerate(numbers(n, start))]
        for r in rows:
            r.update(cols)
        return self.csv(rows)


async def sent_ledger(jobs: JobFactory, n: int) -> tuple[Path, FakeClient]:
    """A ledger with ``n`` recipients sent in groups of 4 through a fake client."""
    jobs.people(n)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeSleep())
    return job.ledger, client


@pytest.fixture
def jobs(tmp_path: Path) -> JobFactory:
    return JobFactory(tmp_path)


@pytest.fixture
async def fake_api() -> AsyncIterator[tuple[FakeTelnyx, str]]:
    """The fake Telnyx API on 127.0.0.1, port 0; yields the fake and its base URL."""
    fake = FakeTelnyx(api_key="test-key-123")
    async with TestServer(fake.app(), host="127.0.0.1", port=0) as server:
        yield fake, str(server.make_url("/v2"))
