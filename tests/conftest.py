"""Shared fixtures: a fake client behind the MmsClient seam, job factories, the fake API
server, the real client and webhook receiver served against it, a database of the test's
own; and which clock each test runs on, virtual or real (:func:`pytest_collection_modifyitems`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import inspect
import os
import secrets
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn, ParamSpec, TypeVar

import hypothesis
import orjson
import psycopg
import psycopg.waiting
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from msgspec.structs import replace

from bulk_mms.client import AiohttpMmsClient
from bulk_mms.config import JobConfig, RetryConfig, Settings, load_job
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.ledger import LedgerView, jsonl, open_store
from bulk_mms.models import Group, SendReceipt
from bulk_mms.recorder import Recorder
from bulk_mms.runner import run_job
from bulk_mms.signals import Stop, StopReason
from bulk_mms.summary import JobSummary
from bulk_mms.testing import FakeClient, FakeClock, ledger_events, ok_receipt
from bulk_mms.track import track_ledger
from bulk_mms.webhooks import JobReceiver, WebhookReceiver

__all__ = ["FakeClient", "FakeClock", "ok_receipt"]  # the tests import them from here too

pytest_plugins = ("pytest_aiohttp",)

P = ParamSpec("P")
T = TypeVar("T")

# CI (`--hypothesis-profile=ci`, which .ci/run passes) draws the property tests' examples from
# a fixed seed, so a landing never fails on an example nobody ran before; a developer's
# `make test` draws new ones each time, and keeps any that failed in .hypothesis/ to run first.
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)


#: The virtual clock's options (looptime's mark; a mark of the test's own overrides them).
VIRTUAL: Final = pytest.mark.looptime(idle_step=0.001, resolution=1e-9)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test runs on a virtual loop clock (looptime): sleeps, timers and rate-limiter
    waits take no real time, and FakeClock reads that clock. While a thread works (an fsync
    off the loop) the virtual clock moves in 1 ms steps of real time, so it never runs ahead of
    the thread by more than that. Its resolution is asyncio's own (1 ns): with a coarser one,
    a timer due in less than half a tick never comes and the loop spins. ``pytest
    --no-looptime`` runs them on the real clock, and so does a test marked ``looptime(False)``.

    A test that takes the :func:`database` fixture (as an argument, or through another
    fixture) runs on the real clock: while the loop waits on a socket, the virtual clock jumps
    from timer to timer, so a database call's 30 s bound would run out after about 50 ms of
    real time, which a loaded server takes (and a claim's lease runs on the database's clock,
    which a virtual one would outrun). One whose own timers need the virtual clock (a
    deadline to reach, a lease to outlast) is marked ``looptime(True)``: it keeps it, and
    the fixture holds every wait on the server to real time (:func:`_on_real_time`), as it
    does for a test that gets the fixture mid-test (``request.getfixturevalue``). While a
    wait is pending its clock goes no faster than real time, and a run polls its ledger
    every second or so: such a test spans seconds of its clock, not minutes, or a server
    slow to answer makes it take as long in real time."""
    for item in items:
        takes_database = isinstance(item, pytest.Function) and "database" in item.fixturenames
        if takes_database and item.get_closest_marker("looptime") is None:
            item.add_marker(pytest.mark.looptime(False))
        item.add_marker(VIRTUAL)  # under the test's own mark, which decides whether it is on


@pytest.fixture(autouse=True)
def _no_stray_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """A plain (not async) test leaves no event loop open: looptime's plugin asks the policy
    for a loop around every test, which makes one for a plain test that nobody closes; this
    gives it one to find, closed afterwards."""
    if inspect.iscoroutinefunction(request.function):
        yield
        return
    policy = asyncio.get_event_loop_policy()
    loop = policy.new_event_loop()
    policy.set_event_loop(loop)
    try:
        yield
    finally:
        loop.close()
        policy.set_event_loop(None)


@pytest.fixture(autouse=True)
def _own_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default suppression list (in the user's data folder) and the cache folder are the
    test's own."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(autouse=True)
def _fsyncs_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JSONL store's fsync, on the store's own thread, is work under way off the loop as
    the loop sees it (:class:`_UnderWay`, until its future is done), as a thread pool's job
    is: while it runs, looptime moves its virtual clock in real-time steps, not from timer to
    timer, so a bound around a commit does not run out while the disk works."""
    sync = jsonl._Syncer.sync

    def seen(self: jsonl._Syncer, owner: object, fsync: Callable[[], None]) -> asyncio.Future[None]:
        fut = sync(self, owner, fsync)
        under_way = _UnderWay()
        fut.add_done_callback(lambda _: under_way.end())
        return fut

    monkeypatch.setattr(jsonl._Syncer, "sync", seen)


@pytest.fixture
def off_loop_work_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The work a run hands to threads (a JSONL store's fsyncs, ``asyncio.to_thread``: the
    input's scan, the ledger's fold, the run's start written) runs on the loop's own thread,
    done before it returns: the virtual clock stands still while the disk works, where it
    otherwise moves in real time (:func:`_fsyncs_under_way`). For a test of what a run does
    as a close nears on that clock: its outcome is then the same however slow a loaded
    machine's fsync is. (Nothing then runs beside that work: not for a test of a stop while
    the disk works.)"""

    def settled(
        self: jsonl._Syncer, owner: object, fsync: Callable[[], None]
    ) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            fsync()
        except BaseException as exc:  # as the store's thread hands it on
            fut.set_exception(exc)
        else:
            fut.set_result(None)
        return fut

    async def at_once(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return func(*args, **kwargs)

    monkeypatch.setattr(jsonl._Syncer, "sync", settled)
    monkeypatch.setattr(asyncio, "to_thread", at_once)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts with structlog's defaults (the CLI reconfigures it)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def fake_sleep() -> FakeClock:
    return FakeClock()


#: Quick settings for a server that replays Idempotency-Keys (the fake client's answers are
#: the test's own): the tests of the default, where keys are not trusted, say so.
FAST = Settings(
    rate=10_000.0,
    concurrency=4,
    retry=RetryConfig(attempts=3, backoff_initial=0.01, backoff_max=0.02, retry_ambiguous=True),
)


def numbers(n: int, start: int = 0) -> list[str]:
    """``n`` distinct valid US numbers in E.164."""
    return [f"+1212555{i:04d}" for i in range(start, start + n)]


def zone_at(hour: int) -> str:
    """A fixed-offset zone (Etc/GMT...) where the local time now is from ``hour``:00 to
    ``hour``:59, whatever the hour of the day in UTC: a window around that hour, in that
    zone, is open (or shut) for a run now, and the hour it is now in UTC never moves it."""
    offset = (hour - dt.datetime.now(dt.UTC).hour) % 24
    offset = offset - 24 if offset > 14 else offset
    return f"Etc/GMT{-offset:+d}" if offset else "Etc/UTC"


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

    def jsonl(self, records: Sequence[Mapping[str, object]], name: str = "people.jsonl") -> Path:
        """A JSONL input of ``records``, one a line."""
        path = self.root / name
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
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


def groups_counted(s: JobSummary) -> int:
    """The groups a run's summary counts, each in one of its counts: sent, failed, expired
    unsent, in doubt, already done or held in doubt. A run that took every group of a job
    (none made anew without members) counts every one of them, once."""
    return (
        s.sent_groups
        + s.failed_groups
        + s.expired_groups
        + s.in_doubt_groups
        + s.skipped_groups
        + s.held_groups
    )


async def sent_ledger(jobs: JobFactory, n: int) -> tuple[Path, FakeClient]:
    """A ledger with ``n`` recipients sent in groups of 4 through a fake client."""
    jobs.people(n)
    job = jobs.job(extra="group_size = 4")
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    return job.ledger, client


def left_out_job(jobs: JobFactory, n: int) -> tuple[JobConfig, Settings, frozenset[int]]:
    """A job of ``n`` people (at least 8) and every kind of row not sent, one each: a bad
    number and a repeat of the first person after the third, the sixth on the settings'
    suppression list, the eighth excluded (the numbers ``--exclude-sent`` gives)."""
    people = numbers(n)
    rows = [{"phone": p, "first": "x"} for p in people]
    rows[3:3] = [{"phone": "bad", "first": "y"}, {"phone": people[0], "first": "z"}]
    jobs.csv(rows)
    job = jobs.job(extra="max_rejected_share = 0.5")
    (jobs.root / "list.txt").write_text(people[5] + "\n")
    settings = replace(FAST, suppression_file=jobs.root / "list.txt")
    return job, settings, frozenset({int(people[7][1:])})


@pytest.fixture
def jobs(tmp_path: Path) -> JobFactory:
    return JobFactory(tmp_path)


@dataclass
class ArrivalsFake(FakeTelnyx):
    """The fake API, keeping the time by ``arrival_clock`` (the test's wall clock) at which
    each ``POST /messages/group_mms`` reached it: what no request may reach it after."""

    arrival_clock: Callable[[], float] = time.time
    arrivals: list[float] = field(default_factory=list)

    async def send_group_mms(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(self.arrival_clock())
        return await super().send_group_mms(request)


@pytest.fixture
async def fake_api() -> AsyncIterator[tuple[FakeTelnyx, str]]:
    """The fake Telnyx API on 127.0.0.1, port 0; yields the fake and its base URL."""
    fake = FakeTelnyx(api_key="test-key-123")
    async with TestServer(fake.app(), host="127.0.0.1", port=0) as server:
        yield fake, str(server.make_url("/v2"))


@contextlib.asynccontextmanager
async def real_client(fake: FakeTelnyx) -> AsyncIterator[AiohttpMmsClient]:
    """The real client, with ``fake``'s API key, on ``fake`` served on 127.0.0.1, port 0."""
    async with (
        TestServer(fake.app(), host="127.0.0.1", port=0) as server,
        AiohttpMmsClient(str(server.make_url("/v2")), fake.api_key or "any-key") as client,
    ):
        yield client


async def sent_and_tracked(
    jobs: JobFactory, fake: FakeTelnyx, clock: FakeClock, after: float = 4
) -> JobConfig:
    """A job of four people (``+12125550000`` on) in one group, run on ``fake`` (port 0),
    then tracked one pass ``after`` seconds on (``fake``'s timeline on ``clock``)."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    async with real_client(fake) as client:
        await run_job(job, FAST, client, clock=FakeClock())
        clock.advance(after)
        await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    return job


@contextlib.asynccontextmanager
async def posting_to(
    fake: FakeTelnyx, receiver: WebhookReceiver | JobReceiver
) -> AsyncIterator[None]:
    """``receiver`` served on 127.0.0.1, port 0, as ``fake``'s webhook URL, so that the
    webhooks ``fake`` posts reach it; the receiver is closed after."""
    try:
        async with TestServer(receiver.app(), host="127.0.0.1", port=0) as hooks:
            fake.webhook_url = str(hooks.make_url("/hooks"))
            yield
    finally:
        await receiver.close()


@contextlib.asynccontextmanager
async def receiving(
    fake: FakeTelnyx, ledger: Path, signer: Ed25519PrivateKey
) -> AsyncIterator[WebhookReceiver]:
    """The real receiver on ``ledger`` (opened to append, what it holds taken in), checking
    ``signer``'s signatures, posted ``fake``'s webhooks (:func:`posting_to`); the ledger is
    closed after."""
    store = open_store(ledger, "append")
    try:
        receiver = WebhookReceiver(LedgerView(), store, signer.public_key())
        async with posting_to(fake, receiver):
            await receiver.take_in_new()
            yield receiver
    finally:
        await store.close()


def _all_recorded(job: JobConfig, client: FakeClient, hang: Callable[[Group], bool]) -> bool:
    """Whether every group ``client`` answered has its ``sent`` line in the ledger."""
    if not job.ledger.exists():
        return False
    sent = {e["group"] for e in ledger_events(job.ledger) if e["event"] == "sent"}
    return all(g.id in sent for g in client.calls if not hang(g))


async def crash_mid_send(
    job: JobConfig,
    monkeypatch: pytest.MonkeyPatch,
    *,
    hanging: int = 1,
    hang: Callable[[Group], bool] = lambda g: True,
    settings: Settings = FAST,
) -> FakeClient:
    """Run ``job`` until ``hanging`` groups that ``hang`` picks have their request out (the
    others are answered), then die as a SIGKILL would: attempts on record, no outcome for the
    hanging ones. The client, with its calls, is returned."""
    stop = Stop()
    out: set[str] = set()
    all_out = asyncio.Event()

    async def answer(g: Group, n: int) -> SendReceipt:
        if not hang(g):
            return ok_receipt(g, n)
        out.add(g.id)
        if len(out) >= hanging:
            all_out.set()
        await asyncio.Event().wait()  # the answer never comes
        raise AssertionError

    client = FakeClient(answer)
    with monkeypatch.context() as m:
        m.setattr(Recorder, "cut_off", lambda self, group, last: None)  # dies recording nothing
        task = asyncio.create_task(run_job(job, settings, client, clock=FakeClock(), stop=stop))
        await asyncio.wait_for(all_out.wait(), 10)
        # let the other workers send and have every answer recorded: on the virtual clock,
        # until the calls have stood still for a second with every answer on record (a busy
        # machine's fsync is slow: a real minute at most)
        calls, still, give_up = -1, 0, time.monotonic() + 60
        while still < 20 and time.monotonic() < give_up:
            await asyncio.sleep(0.05)
            recorded = len(client.calls) == calls and _all_recorded(job, client, hang)
            still = still + 1 if recorded else 0
            calls = len(client.calls)
        stop.force(StopReason.FORCED)
        await task
    return client


def wait_for(what: str, done: Callable[[], object], timeout: float = 60.0) -> None:
    """Poll ``done()`` until it holds: a state of real processes or of a server, on real time,
    waited on rather than guessed from a sleep; fail after ``timeout`` s saying ``what``
    never came."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not come within {timeout:g} s", pytrace=False)
        time.sleep(0.05)


def held_for(seconds: float, since: float) -> None:
    """Sleep until ``seconds`` have passed ``since`` (a ``time.monotonic()``): a fault that
    lasts that long by design, held on after the state it needs was waited on."""
    time.sleep(max(0.0, since + seconds - time.monotonic()))


#: The PostgreSQL server the database tests use (each makes its own database there).
SERVER = os.environ.get("BULK_MMS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


#: Debian's libfaketime (the faketime package), for this machine's architecture: a
#: ``bulk-mms`` subprocess whose wall clock is set (``LD_PRELOAD``, ``FAKETIME``).
FAKETIME: Final = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)


def missing(reason: str) -> NoReturn:
    """Skip the test for want of a service or a tool, saying which in one line; where CI
    requires every one (``BULK_MMS_REQUIRE_SERVICES``, set by ``.ci/run``), fail it."""
    if os.environ.get("BULK_MMS_REQUIRE_SERVICES"):
        pytest.fail(reason)
    pytest.skip(reason)


#: psycopg's waits on the server that :func:`database` holds to real time. Not psycopg's
#: documented API (its docs have no ``psycopg.waiting``, nor any hook around a connection's
#: waits), so the fixture fails a test, saying why in one line, once they are gone or unused.
PSYCOPG_WAITS: Final = ("wait_async", "wait_conn_async")
_PSYCOPG: Final = f"psycopg {psycopg.__version__}"
_UPDATE: Final = "the virtual clock is not held to real time (tests/conftest.py, _on_real_time)"


@pytest.fixture
def database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database of its own on the project's PostgreSQL, dropped afterwards; the test is
    skipped, with the reason in one line, when there is no server. While the test runs, every
    wait of psycopg's on the server (connecting, each statement's answer) holds looptime's
    clock to real time (:func:`_on_real_time`); a test marked ``looptime(True)`` none of whose
    waits came through there fails: psycopg waits some other way, and its clock ran free."""
    held: Counter[str] = Counter()
    for name in PSYCOPG_WAITS:
        if (wait := getattr(psycopg.waiting, name, None)) is None:
            pytest.fail(f"{_PSYCOPG} has no psycopg.waiting.{name}: {_UPDATE}", pytrace=False)
        monkeypatch.setattr(psycopg.waiting, name, _on_real_time(wait, held, name))
    with _own_database() as url:
        yield url
    marker = request.node.get_closest_marker("looptime")
    if marker is not None and marker.args[:1] == (True,) and not held:
        waits = "/".join(PSYCOPG_WAITS)
        pytest.fail(f"{_PSYCOPG} never waited in psycopg.waiting.{waits}: {_UPDATE}", pytrace=False)


def query(database: str, sql: str, *params: object) -> Any:
    """The first column of the first row ``sql`` (with ``params``, if any) answers on
    ``database``, on a connection of its own; None when there is no row."""
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute(sql, params or None).fetchone()
    return row[0] if row else None


def waits_on_a_lock(database: str, pid: int | None = None) -> bool:
    """Whether a session of the process ``pid`` (this one by default; a process's sessions
    are named ``bulk-mms pid N``) waits for a lock on ``database`` now."""
    return bool(
        query(
            database,
            "SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND a.application_name = %s",
            f"bulk-mms pid {pid or os.getpid()}",
        )
    )


def live_claims(database: str, pid: int) -> int:
    """How many claims the process ``pid`` holds on ``database`` that have not run out by the
    database's clock: none once its lease has ended (it died, or is paused)."""
    try:
        return int(
            query(
                database,
                "SELECT count(*) FROM bulk_mms_claims WHERE split_part(owner, ':', 2) = %s "
                "AND expires >= now()",
                str(pid),
            )
        )
    except psycopg.errors.UndefinedTable:
        return 0


@pytest.fixture
def another_database(database: str) -> Iterator[str]:
    """A second database of its own on the same server (:func:`database`), dropped afterwards."""
    with _own_database() as url:
        yield url


@contextlib.contextmanager
def _own_database() -> Iterator[str]:
    name = f"bulk_mms_test_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        missing(f"no PostgreSQL at {SERVER}: {str(exc).splitlines()[0]}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{SERVER}/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


class _UnderWay(concurrent.futures.Executor):
    """Work under way off the running loop until :meth:`end`, as the loop sees it: an
    executor that runs nothing, handed its one job at once, whose future is done at
    :meth:`end`."""

    def __init__(self) -> None:
        self._job: concurrent.futures.Future[Any] = concurrent.futures.Future()
        # the loop's future for the job, held here: looptime keeps it in a weak set
        self._seen = asyncio.get_running_loop().run_in_executor(self, int)

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        return self._job

    def end(self) -> None:
        self._job.set_result(None)


def _on_real_time(
    wait: Callable[P, Awaitable[T]], held: Counter[str], name: str
) -> Callable[P, Awaitable[T]]:
    """``wait`` (psycopg's on a server's answer), counted by the loop as work under way off
    the loop until it ends: while such work is pending, looptime moves its virtual clock in
    real-time steps (``idle_step``), never from timer to timer, so a 30 s bound around the
    wait runs out after 30 s of real time. On the real clock it changes nothing. Each wait is
    counted in ``held`` under ``name``."""

    async def on_hold(*args: P.args, **kwargs: P.kwargs) -> T:
        held[name] += 1
        under_way = _UnderWay()
        try:
            return await wait(*args, **kwargs)
        finally:
            under_way.end()

    return on_hold
