"""What ``webhooks`` and ``track --follow`` read a PostgreSQL ledger through
(:meth:`~bulk_mms.ledger.pgread.PostgresReads.new_events`), and the full read they, a run's
resume and ``report`` start with (:meth:`~bulk_mms.ledger.pgread.PostgresReads.events`), when
the database misbehaves: a network gone silent, a server that stalls, a hot standby, a
transaction left open on the events table."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import yarl
from structlog.testing import capture_logs

from bulk_mms.cli import main
from bulk_mms.errors import LedgerError, LedgerUnavailable
from bulk_mms.ledger import events, open_store, pgconnect, pgread, postgres
from bulk_mms.ledger.store import Mode
from tests.conftest import SERVER
from tests.test_pg_faults import HEADER, _counted_connects, _insert_run, _ran

#: A read's bound in these tests, and libpq's least connect timeout (seconds).
_READ_S = 0.5
_CONNECT_S = 2


class _Proxy:
    """A TCP proxy to the test server, in a thread and loop of its own, that stops forwarding
    when told (:attr:`forwarding`), or once a client sends bytes holding :attr:`silent_on`
    (a statement's text): both ways, on every connection, those made meanwhile too, with no
    socket closed: a network gone silent. What comes meanwhile is dropped."""

    def __init__(self) -> None:
        self.forwarding = True
        self.silent_on: bytes | None = None
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.silent_on is not None and self.silent_on in data:
                    self.forwarding = False
                if self.forwarding:
                    writer.write(data)
                    await writer.drain()
        writer.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server = yarl.URL(SERVER)
        self._writers.add(client_w)
        try:
            up_r, up_w = await asyncio.open_connection(server.host, server.port)
        except OSError:
            client_w.close()
            return
        self._writers.add(up_w)
        await asyncio.gather(self._pump(client_r, up_w), self._pump(up_r, client_w))

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Serve on 127.0.0.1 (:attr:`port`) until the block ends; then close every socket."""
        started, done = threading.Event(), asyncio.Event()

        async def main() -> None:
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            await done.wait()
            server.close()
            for writer in self._writers:
                writer.close()
            pumping = asyncio.all_tasks() - {asyncio.current_task()}
            for task in pumping:
                task.cancel()
            await asyncio.gather(*pumping, return_exceptions=True)

        thread = threading.Thread(target=self._loop.run_until_complete, args=(main(),))
        thread.start()
        assert started.wait(10)
        try:
            yield
        finally:
            self._loop.call_soon_threadsafe(done.set)
            thread.join(10)
            self._loop.close()


@pytest.fixture
def proxy() -> Iterator[_Proxy]:
    proxy = _Proxy()
    with proxy.running():
        yield proxy


def _through(database: str, proxy: _Proxy) -> str:
    """``database``'s URL by way of ``proxy``."""
    return str(yarl.URL(database).with_host("127.0.0.1").with_port(proxy.port))


def test_a_read_on_a_network_gone_silent_fails_in_one_line_within_its_bounds(
    database: str, proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network that stops answering, no socket closed: the read gives its connection up
    after its bound, the one made again gets no answer within the connect timeout either,
    and the read fails in one line (LedgerUnavailable, exit 7) within both bounds; once the
    network answers again, the next read connects and gives what was appended meanwhile."""
    monkeypatch.setattr(pgconnect, "DB_TIMEOUT_S", _READ_S)
    monkeypatch.setattr(pgconnect, "CONNECT_TIMEOUT_S", _CONNECT_S)
    writer = open_store(f"{database}?ledger=follow", "run")
    reader = open_store(f"{_through(database, proxy)}?ledger=follow", "append")
    try:
        writer.append_now(HEADER)
        assert list(reader.new_events()) == [HEADER]
        proxy.forwarding = False
        writer.append_now(later := events.RunStarted(1, "t"))
        started = time.monotonic()
        with (
            capture_logs() as logs,
            pytest.raises(LedgerUnavailable, match=r"^\S+: cannot connect: [^\n]*$") as failed,
        ):
            list(reader.new_events())
        took = time.monotonic() - started
        assert _READ_S + _CONNECT_S - 0.1 < took < _READ_S + _CONNECT_S + 2
        assert failed.value.exit_code == 7
        assert [(e["event"], e["error"]) for e in logs] == [
            ("ledger.reconnecting", f"cannot read: no answer within {_READ_S:g} s")
        ]
        proxy.forwarding = True
        assert list(reader.new_events()) == [later]
    finally:
        reader.close_sync()
        writer.close_sync()


def test_a_read_on_a_server_that_stalls_fails_in_one_line_within_its_bound(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that takes connections but answers no read (the events table locked): each
    of the read's two tries gives up after its bound, and it fails in one line
    (LedgerUnavailable); once the server answers, the next read gives what is new."""
    monkeypatch.setattr(pgconnect, "DB_TIMEOUT_S", _READ_S)
    where = f"{database}?ledger=follow"
    writer, reader = open_store(where, "run"), open_store(where, "append")
    made = _counted_connects(monkeypatch)
    try:
        writer.append_now(HEADER)
        with psycopg.connect(database) as locker:
            locker.execute("LOCK TABLE bulk_mms_events IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(
                LedgerUnavailable, match=rf"^\S+: cannot read: no answer within {_READ_S:g} s$"
            ):
                list(reader.new_events())
            took = time.monotonic() - started
        assert 2 * _READ_S - 0.1 < took < 2 * _READ_S + 2
        assert len(made) == 2  # the first, and the one made again once
        assert list(reader.new_events()) == [HEADER]
    finally:
        reader.close_sync()
        writer.close_sync()


def test_a_store_refuses_a_standby_in_one_line(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server in recovery (a hot standby: read-only, its pg_locks without the primary's
    writers) is refused as a store opens, in one line naming the setting to point at the
    primary (exit 2), its connection closed and nothing created; the server here, a primary,
    says it is not one."""
    with psycopg.connect(database) as conn:
        assert conn.execute(postgres._IN_RECOVERY).fetchone() == (False,)
    monkeypatch.setattr(postgres, "_IN_RECOVERY", "SELECT true")  # what a standby answers
    made = _counted_connects(monkeypatch)
    standby = r"a read-only standby \(pg_is_in_recovery\): point BULK_MMS_LEDGER_URL"
    with pytest.raises(LedgerError, match=rf"^\S+: {standby} [^\n]* at the primary$") as refused:
        open_store(f"{database}?ledger=follow", "append")
    assert refused.value.exit_code == 2
    assert [conn.closed for conn in made] == [True]
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT to_regclass('bulk_mms_events')").fetchone() == (None,)


def test_a_transaction_left_open_on_the_events_table_is_logged_once_past_a_minute(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction left open after writing to bulk_mms_events (an operator's psql) holds
    up what the reads settle: once the looks have named it for over HELD_UP_S, one warning
    names its pid and how long, not one each read after; one that ended sooner is never
    named."""
    now = [1000.0]
    monkeypatch.setattr(pgread, "since_boot", lambda: now[0])
    where = f"{database}?ledger=follow"
    writer, reader = open_store(where, "run"), open_store(where, "append")
    try:
        writer.append_now(HEADER)
        with capture_logs() as logs:
            with psycopg.connect(database) as quick:  # committed as it closes
                _insert_run(quick, 1)
                assert list(reader.new_events()) == [HEADER]
            with psycopg.connect(database) as psql:
                _insert_run(psql, 2)
                for at in (1010.0, 1040.0, 1070.0, 1071.0, 1100.0, 1200.0):
                    now[0] = at
                    list(reader.new_events())
                pid = psql.info.backend_pid
        held = [e for e in logs if e["event"] == "ledger.follow_held_up"]
        assert [(e["pid"], e["held_s"], e["log_level"]) for e in held] == [(pid, 61, "warning")]
    finally:
        reader.close_sync()
        writer.close_sync()


def test_a_full_read_on_a_network_gone_silent_fails_in_one_line_within_its_bound(
    database: str, proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network that stops answering between two pages of a full read (track's, webhooks',
    a resume's, a report's), no socket closed: the next page gets no answer within its bound
    and the read fails in one line (LedgerUnavailable, exit 7), its connection closed and
    none made again (a full read is not resumed); once the network answers, a new read gives
    the whole ledger."""
    monkeypatch.setattr(pgconnect, "DB_TIMEOUT_S", _READ_S)
    monkeypatch.setattr(pgread, "READ_PAGE", 2)
    writer = open_store(f"{database}?ledger=follow", "run")
    reader = open_store(f"{_through(database, proxy)}?ledger=follow", "append")
    made = _counted_connects(monkeypatch)
    try:
        writer.append_now(HEADER)
        for ev in (ran := _ran(4)):
            writer.append_now(ev)
        read = reader.events()
        assert [next(read), next(read)] == [HEADER, ran[0]]  # the first page
        proxy.forwarding = False
        started = time.monotonic()
        with pytest.raises(
            LedgerUnavailable, match=rf"^\S+: cannot read: no answer within {_READ_S:g} s$"
        ) as failed:
            next(read)
        took = time.monotonic() - started
        assert _READ_S - 0.1 < took < _READ_S + 2
        assert failed.value.exit_code == 7
        assert [conn.closed for conn in made] == [True]
        proxy.forwarding = True
        assert list(reader.events()) == [HEADER, *ran]
    finally:
        reader.close_sync()
        writer.close_sync()


#: A full read's query that reads the ledgers' table too, so that a lock on it stalls the
#: cursor's opening, not the look at the writers before it.
_READ_JOINED = (
    "SELECT e.seq, e.body::text FROM bulk_mms_events e JOIN bulk_mms_ledgers l "
    "ON l.id = e.ledger WHERE e.ledger = %s ORDER BY e.seq"
)


@pytest.mark.parametrize(
    ("locked", "mode"),
    [
        ("bulk_mms_events", "append"),  # track's, webhooks': the look at the writers stalls
        ("bulk_mms_events", "read"),  # a report's, a resume's: their one look stalls
        ("bulk_mms_ledgers", "read"),  # the cursor's opening stalls
    ],
)
def test_a_full_read_on_a_server_that_stalls_fails_in_one_line_within_its_bound(
    database: str, monkeypatch: pytest.MonkeyPatch, locked: str, mode: Mode
) -> None:
    """A server that answers no statement of a full read (a table it reads locked), whether
    at its look at the writers or at its cursor's opening: the read fails in one line
    (LedgerUnavailable, exit 7) after its bound, not the lock timeout's 10 s; once the
    server answers, it reads the ledger."""
    monkeypatch.setattr(pgconnect, "DB_TIMEOUT_S", _READ_S)
    monkeypatch.setattr(pgread, "_READ", _READ_JOINED)
    where = f"{database}?ledger=follow"
    writer = open_store(where, "run")
    writer.append_now(HEADER)
    reader = open_store(where, mode)
    try:
        with psycopg.connect(database) as locker:
            locker.execute(f"LOCK TABLE {locked} IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(
                LedgerUnavailable, match=rf"^\S+: cannot read: no answer within {_READ_S:g} s$"
            ) as failed:
                list(reader.events())
            took = time.monotonic() - started
        assert _READ_S - 0.1 < took < _READ_S + 2
        assert failed.value.exit_code == 7
        assert list(reader.events()) == [HEADER]
    finally:
        reader.close_sync()
        writer.close_sync()


def test_a_report_whose_read_stalls_ends_with_exit_7_in_one_line(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``report`` on a ledger whose events table stays locked ends after the read's bound
    with exit 7 and one line saying so, no traceback."""
    monkeypatch.setattr(pgconnect, "DB_TIMEOUT_S", _READ_S)
    where = f"{database}?ledger=follow"
    writer = open_store(where, "run")
    try:
        writer.append_now(HEADER)
        with psycopg.connect(database) as locker:
            locker.execute("LOCK TABLE bulk_mms_events IN ACCESS EXCLUSIVE MODE")
            assert main(["report", where]) == 7
    finally:
        writer.close_sync()
    err = capsys.readouterr().err
    assert f"cannot read: no answer within {_READ_S:g} s" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_full_read_whose_connection_the_server_ends_fails_as_unavailable(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full read whose connection the server ends between two pages (a restart, an
    operator's ``pg_terminate_backend``) fails in one line as the database's fault
    (LedgerUnavailable, exit 7: run it again), not as a fault of the ledger (exit 2)."""
    monkeypatch.setattr(pgread, "READ_PAGE", 2)
    where = f"{database}?ledger=follow"
    writer = open_store(where, "run")
    writer.append_now(HEADER)
    for ev in (ran := _ran(4)):
        writer.append_now(ev)
    writer.close_sync()
    reader = open_store(where, "read")
    try:
        read = reader.events()
        assert [next(read), next(read)] == [HEADER, ran[0]]  # the first page
        with psycopg.connect(database, autocommit=True) as killer:
            killer.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(LedgerUnavailable, match=r"^\S+: cannot read: ") as failed:
            list(read)
        assert failed.value.exit_code == 7
        assert "\n" not in str(failed.value)
    finally:
        with contextlib.suppress(LedgerError):
            reader.close_sync()


def test_a_statement_under_way_while_the_process_was_stopped_is_not_cut_off(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement under way while the process did not run (SIGSTOP, a paused VM) for far
    longer than its bound is not cut off when the process runs again: the bound counts time
    the process ran, as every other database bound does, so the answer that came meanwhile
    is read; a statement that outruns its bound while the process runs still is cut off, its
    connection closed."""
    looks = itertools.count()

    def clock() -> float:  # leaps 100 s (stopped) just after each statement began
        return time.monotonic() + (100.0 if next(looks) % 1000 else 0.0)

    monkeypatch.setattr(pgconnect._Bounded, "clock", staticmethod(clock))
    monkeypatch.setattr(pgconnect, "DB_TIMEOUT_S", 1.5)
    with pgconnect.sync_connect(database) as conn:
        assert conn.execute("SELECT pg_sleep(1), 7").fetchone() == ("", 7)
        monkeypatch.setattr(pgconnect, "DB_TIMEOUT_S", 0.5)
        started = time.monotonic()
        with pytest.raises(pgconnect.NoAnswer, match=r"^no answer within 0\.5 s$"):
            conn.execute("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 2
        assert conn.closed


def test_a_store_statement_on_a_network_gone_silent_fails_in_one_line_within_its_bound(
    database: str, proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement on a store's own synchronous connection (the header a run writes, a write
    of ``ledger copy``) on a network that stops answering, no socket closed, fails in one line
    naming the database (LedgerUnavailable, exit 7) within its bound, not never."""
    monkeypatch.setattr(pgconnect, "DB_TIMEOUT_S", _READ_S)
    open_store(f"{database}?ledger=follow", "run").close_sync()
    store = open_store(f"{_through(database, proxy)}?ledger=follow", "append")
    failed: list[BaseException] = []

    def write() -> None:
        try:
            store.append_now(HEADER)
        except BaseException as exc:  # handed to the test's thread
            failed.append(exc)

    try:
        proxy.forwarding = False
        started = time.monotonic()
        writing = threading.Thread(target=write, daemon=True)
        writing.start()
        writing.join(_READ_S + 10)  # a statement never bounded would hang here forever
        took = time.monotonic() - started
        assert not writing.is_alive()
        assert _READ_S - 0.1 < took < _READ_S + 2
        [exc] = failed
        assert isinstance(exc, LedgerUnavailable)
        assert exc.exit_code == 7
        assert str(exc) == (
            f"{_through(database, proxy)}?ledger=follow: cannot write: "
            f"no answer within {_READ_S:g} s"
        )
    finally:
        store.close_sync()


def test_every_connection_asks_for_keepalives_and_a_tcp_bound_keeping_the_urls_own(
    database: str,
) -> None:
    """Every connection, synchronous or a run's, asks libpq for TCP keepalives, a bound on
    data left unacknowledged and a connect timeout (a network gone silent is found on an idle
    connection too), and one the URL sets itself is kept, not replaced."""

    def given(conn: psycopg.BaseConnection[Any]) -> dict[str, str]:
        return {o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info}

    ours = {
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
        "tcp_user_timeout": "30000",
        "connect_timeout": "5",
    }
    with pgconnect.sync_connect(database) as conn:
        assert given(conn).items() >= ours.items()
    own = f"{database}?keepalives_idle=99&connect_timeout=7&tcp_user_timeout=45000"
    kept = {**ours, "keepalives_idle": "99", "connect_timeout": "7", "tcp_user_timeout": "45000"}
    with pgconnect.sync_connect(own) as conn:
        assert given(conn).items() >= kept.items()

    async def linked() -> dict[str, str]:
        link = pgconnect.Link(own, "shown")
        try:
            return await link.run(lambda conn: asyncio.sleep(0, given(conn)), "look")
        finally:
            await link.close()

    assert asyncio.run(linked()).items() >= kept.items()


@pytest.mark.parametrize(
    ("command", "statement"),
    [
        (["db", "migrate"], b"bulk_mms_schema"),
        (["report"], b"pg_is_in_recovery"),
        (["status"], b"bulk_mms_ledgers"),
    ],
)
def test_a_command_on_a_network_gone_silent_mid_statement_exits_7_in_one_line(
    database: str,
    proxy: _Proxy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    statement: bytes,
) -> None:
    """A command whose network goes silent (no socket closed) once its connection is made,
    as it sends one of its first statements, exits 7 within its bound with one line naming
    the database without its password, not never."""
    monkeypatch.setattr(pgconnect, "DB_TIMEOUT_S", _READ_S)
    open_store(f"{database}?ledger=follow", "run").close_sync()
    secret = yarl.URL(_through(database, proxy)).with_password("s3cret")  # trust: not asked
    where = f"{secret}?ledger=follow"
    proxy.silent_on = statement
    code: list[int | None] = []
    started = time.monotonic()
    running = threading.Thread(target=lambda: code.append(main([*command, where])), daemon=True)
    running.start()
    running.join(_READ_S + 10)  # a statement never bounded would hang here forever
    took = time.monotonic() - started
    assert not running.is_alive()
    assert not proxy.forwarding  # it did go silent under the command
    assert code == [7]
    assert took < 2 * _READ_S + 3
    err = capsys.readouterr().err
    shown = f"{secret.with_password(None)}?ledger=follow"
    assert err == f"bulk-mms: error: {shown}: no answer within {_READ_S:g} s\n"
