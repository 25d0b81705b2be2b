"""Delivery tracking: the status rules, the tracker on a fake client and on the fake API."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from msgspec.structs import replace
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from bulk_mms.cli import main
from bulk_mms.client import AiohttpMmsClient
from bulk_mms.config import TrackConfig
from bulk_mms.config.folders import sandbox_ledger
from bulk_mms.delivery import Known, supersedes
from bulk_mms.errors import (
    ApiError,
    ApiUnavailable,
    AuthError,
    EndpointError,
    NetworkError,
    NotFound,
    ServerError,
)
from bulk_mms.fake_api import (
    CARRIER_FEE_FINAL,
    RATE,
    FakeTelnyx,
    carrier_timeline,
    will_fail,
)
from bulk_mms.ledger import load, open_store
from bulk_mms.models import Group, RecipientStatus
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.signals import Stop, StopReason
from bulk_mms.testing import ledger_events
from bulk_mms.track import (
    NOT_FOUND_GRACE_S,
    STOP_AFTER_UNREACHABLE,
    TrackResult,
    format_track,
    track_ledger,
)
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers, sent_ledger, wait_for
from tests.threaded import fake_api_thread

API = tuple[FakeTelnyx, str]
KEY = "test-key-123"


class ServerClock:
    """The fake server's clock, moved by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@contextlib.asynccontextmanager
async def sent_by_fake(
    url: str, jobs: JobFactory, people: int, group_size: int
) -> AsyncIterator[tuple[Path, Callable[[], Awaitable[TrackResult]]]]:
    """A job of ``people`` in groups of ``group_size`` run against the fake API at ``url``:
    its ledger, and one tracking pass of it through the same client (open until the block
    ends), each asked as often as the test likes."""
    jobs.people(people)
    job = jobs.job(extra=f"group_size = {group_size}")
    async with AiohttpMmsClient(url, KEY) as client:
        await run_job(job, FAST, client, clock=FakeClock())
        yield job.ledger, lambda: track_ledger(job.ledger, FAST, client, clock=FakeClock())


def status_lines(path: Path) -> list[dict[str, object]]:
    return [e for e in ledger_events(path) if e["event"] == "status"]


@pytest.mark.parametrize(
    ("new", "new_at", "old", "news"),
    [
        ("sent", None, None, True),
        ("sent", None, Known("queued"), True),
        ("queued", None, Known("sent"), False),
        ("sent", None, Known("delivered"), False),
        ("delivered", None, Known("delivered"), False),
        ("delivered", None, Known("sent"), True),
        (
            "delivered",
            "2026-01-02T00:00:00Z",
            Known("delivery_unconfirmed", "2026-01-01T00:00:00Z"),
            True,
        ),
        # delivered is never taken back, so it takes back any other: the same in either order
        (
            "delivered",
            "2026-01-01T00:00:00Z",
            Known("delivery_failed", "2026-01-02T00:00:00Z"),
            True,
        ),
        ("delivered", None, Known("delivery_failed", "2026-01-02T00:00:00Z"), True),
        ("delivery_unconfirmed", None, Known("delivery_failed", "2026-01-02T00:00:00Z"), False),
        # an unstamped failure is not known to be the later report: a stamped one corrects it
        ("delivered", "2026-01-02T00:00:00Z", Known("delivery_failed"), True),
        ("delivery_unconfirmed", "2026-01-02T00:00:00Z", Known("expired"), True),
        # neither stamped: no order is known, and delivered wins (a failure never resends it)
        ("delivered", None, Known("delivery_failed"), True),
        ("delivery_failed", None, Known("delivered"), False),
        ("delivery_failed", None, Known("expired"), False),
        ("delivery_failed", "2026-01-02T00:00:00Z", Known("delivered"), False),
        # instants, not strings: half a second later wins though it sorts lower as text
        (
            "delivery_unconfirmed",
            "2026-01-01T10:00:00.500+00:00",
            Known("delivery_failed", "2026-01-01T10:00:00Z"),
            True,
        ),
        # 09:00-05:00 is 14:00 UTC: later than 12:00Z, though "09" sorts before "12"
        (
            "delivery_unconfirmed",
            "2026-01-01T09:00:00-05:00",
            Known("delivery_failed", "2026-01-01T12:00:00Z"),
            True,
        ),
        # 13:00+05:00 is 08:00 UTC: earlier than 12:00Z, though "13" sorts after "12"
        (
            "delivery_unconfirmed",
            "2026-01-01T13:00:00+05:00",
            Known("delivery_failed", "2026-01-01T12:00:00Z"),
            False,
        ),
        (
            "delivery_unconfirmed",
            "not a time",
            Known("delivery_failed", "2026-01-01T12:00:00Z"),
            False,
        ),
        # delivered is never taken back: a later failure would text the recipient again
        (
            "delivery_failed",
            "2026-01-02T00:00:00Z",
            Known("delivered", "2026-01-01T00:00:00Z"),
            False,
        ),
        (
            "delivery_unconfirmed",
            "2026-01-02T00:00:00Z",
            Known("delivered", "2026-01-01T00:00:00Z"),
            False,
        ),
        (
            "delivery_failed",
            "2026-01-02T00:00:00Z",
            Known("delivery_unconfirmed", "2026-01-01T00:00:00Z"),
            True,
        ),
        ("", None, None, False),
    ],
)
def test_supersedes_orders_reports(
    new: str, new_at: str | None, old: Known | None, news: bool
) -> None:
    """Non-final statuses only move forward; a final one yields to delivered, else only to a
    final one stamped later (or stamped where it was not), and delivered to none."""
    assert supersedes(new, new_at, old) is news


async def test_one_pass_records_each_change_once(jobs: JobFactory) -> None:
    """A pass writes one status line per recipient whose status changed, and none on a repeat."""
    ledger, client = await sent_ledger(jobs, 16)
    for i, g in enumerate(client.calls):
        client.delivery[f"msg-{g.id}-{i}"] = tuple(
            RecipientStatus(p, "delivered", message_id=f"r-{p}") for p in g.to
        )
    r = await track_ledger(ledger, FAST, client, clock=FakeClock())
    assert r.changes == 16
    assert r.statuses == {"delivered": 16}
    assert r.pending == 0
    again = await track_ledger(ledger, FAST, client, clock=FakeClock())
    assert (again.changes, again.requests) == (0, 0)
    assert len(status_lines(ledger)) == 16


async def test_not_found_and_unlisted_are_reported(jobs: JobFactory) -> None:
    """A 404 group and a recipient the API leaves out are named in the result, not fatal."""
    ledger, client = await sent_ledger(jobs, 8)
    g0, g1 = client.calls
    client.delivery[f"msg-{g1.id}-1"] = tuple(RecipientStatus(p, "sent") for p in g1.to[1:])
    later = FakeClock(wall=time.time() + NOT_FOUND_GRACE_S + 1)  # past "not yet"
    r = await track_ledger(ledger, FAST, client, clock=later)
    assert r.not_found == [g0.id]
    assert r.unlisted == [(g1.id, g1.to[0])]
    assert r.changes == 3


async def test_a_404_just_after_the_send_is_asked_again(jobs: JobFactory) -> None:
    """A group the API does not find yet (its records lag the send's answer: 404) within
    NOT_FOUND_GRACE_S of the send is asked again after the interval, and its statuses are
    recorded once the API finds it; it is never reported not found."""
    ledger, client = await sent_ledger(jobs, 4)
    (g,) = client.calls
    mid = f"msg-{g.id}-0"

    async def fetch(message_id: str) -> tuple[RecipientStatus, ...]:
        client.fetches.append(message_id)
        if len(client.fetches) <= 2:  # the first pass: by the group's id, both ways
            raise NotFound("unknown", status=404)
        return tuple(RecipientStatus(p, "delivered") for p in g.to)

    client.fetch_group = client.fetch_message = fetch  # type: ignore[method-assign]
    r = await track_ledger(ledger, FAST, client, follow=True, clock=FakeClock())
    assert client.fetches == [mid] * 3
    assert (r.statuses, r.not_found, r.pending) == ({"delivered": 4}, [], 0)


async def test_messages_the_fake_api_has_not_yet_listed_are_tracked_once_it_does(
    fake_api: API, jobs: JobFactory
) -> None:
    """Against the fake API whose lookups lag the send (404 for a young message), a follow
    right after the run keeps asking and records every status once the records appear."""
    fake, url = fake_api
    server_clock = ServerClock()
    fake.clock = server_clock
    fake.lookup_lag_s = 30.0
    async with sent_by_fake(url, jobs, 8, 4) as (_, track):
        early = await track()
        assert (early.not_found, early.pending) == ([], 8)
        server_clock.t = 31
        later = await track()
    assert (later.statuses, later.not_found, later.pending) == ({"delivered": 8}, [], 0)


async def test_costs_the_api_writes_as_json_numbers_are_recorded_exactly(
    fake_api: API, jobs: JobFactory
) -> None:
    """An API that writes money amounts as JSON numbers (the API reference's example for
    GET /messages/{id}) has each recipient's final cost recorded as the exact decimal it
    wrote, as for a string amount."""
    fake, url = fake_api
    fake.numeric_amounts = True
    async with sent_by_fake(url, jobs, 4, 4) as (ledger, track):
        await track()
    costs = [e["cost"] for e in status_lines(ledger)]
    assert costs == [{"amount": str(RATE + CARRIER_FEE_FINAL), "currency": "USD"}] * 4


async def one_left(jobs: JobFactory) -> tuple[Path, FakeClient, Group, str]:
    """A sent group of four tracked once, three delivered and the first one left with its own
    id (``r0``) known: the ledger, the client, the group and the group's message id."""
    ledger, client = await sent_ledger(jobs, 4)
    (g,) = client.calls
    gid = f"msg-{g.id}-0"
    client.delivery[gid] = tuple(
        RecipientStatus(p, "delivered" if i else "sent", message_id=f"r{i}")
        for i, p in enumerate(g.to)
    )
    await track_ledger(ledger, FAST, client, clock=FakeClock())
    return ledger, client, g, gid


async def test_a_lone_pending_recipient_is_asked_by_its_own_id(jobs: JobFactory) -> None:
    """With one recipient left and its own id known, the tracker uses GET /messages/{id}."""
    ledger, client, g, gid = await one_left(jobs)
    client.delivery["r0"] = (RecipientStatus(g.to[0], "delivery_failed", message_id="r0"),)
    r = await track_ledger(ledger, FAST, client, clock=FakeClock())
    assert client.fetches == [gid, "r0"]
    assert r.statuses == {"delivered": 3, "delivery_failed": 1}


async def test_a_lone_recipient_its_own_id_does_not_find_is_asked_through_the_group(
    jobs: JobFactory,
) -> None:
    """One recipient left whose own id the API no longer finds (404): the tracker asks the
    group's id instead of giving the group up as not found."""
    ledger, client, g, gid = await one_left(jobs)
    client.delivery[gid] = (RecipientStatus(g.to[0], "delivered", message_id="r0"),)
    r = await track_ledger(ledger, FAST, client, clock=FakeClock())
    assert client.fetches == [gid, "r0", gid]
    assert (r.statuses, r.not_found) == ({"delivered": 4}, [])


async def test_follow_backs_off_and_stops_when_final(jobs: JobFactory) -> None:
    """--follow asks again after the interval, doubling it while nothing changes, until final."""
    ledger, client = await sent_ledger(jobs, 4)
    (g,) = client.calls
    mid = f"msg-{g.id}-0"
    answers = iter(["sent", "sent", "sent", "delivered"])

    async def fetch(message_id: str) -> tuple[RecipientStatus, ...]:
        client.fetches.append(message_id)
        return tuple(RecipientStatus(p, next(answers)) for p in g.to[:1]) + tuple(
            RecipientStatus(p, "delivered") for p in g.to[1:]
        )

    client.fetch_group = fetch  # type: ignore[method-assign]
    clock = FakeClock()
    settings = replace(FAST, track=TrackConfig(interval=10, max_interval=25))
    r = await track_ledger(ledger, settings, client, follow=True, clock=clock)
    assert client.fetches == [mid] * 4
    assert [round(s) for s in clock.calls if s >= 1] == [10, 10, 20]
    assert r.pending == 0
    assert r.statuses["delivered"] == 4


def held_back(ledger: Path, group: Group) -> bytes:
    """Take ``group``'s lines (its attempt and sent) out of ``ledger`` and return them: what
    a run still sending writes later."""
    lines = ledger.read_bytes().splitlines(keepends=True)
    later = [line for line in lines if group.id.encode() in line]
    ledger.write_bytes(b"".join(line for line in lines if line not in later))
    return b"".join(later)


async def test_follow_tracks_the_groups_other_runs_send_meanwhile(jobs: JobFactory) -> None:
    """--follow beside a run still sending takes in the groups the run sends after tracking
    began, and stops only once those are final too."""
    ledger, client = await sent_ledger(jobs, 8)
    first, second = client.calls
    later = held_back(ledger, second)
    answers = iter(["sent", "delivered"])

    async def fetch(message_id: str) -> tuple[RecipientStatus, ...]:
        client.fetches.append(message_id)
        if message_id == f"msg-{first.id}-0":
            status = next(answers)
            if status == "sent":  # the run sends the second group meanwhile
                with ledger.open("ab") as f:
                    f.write(later)
            return tuple(RecipientStatus(p, status) for p in first.to)
        return tuple(RecipientStatus(p, "delivered") for p in second.to)

    client.fetch_group = fetch  # type: ignore[method-assign]
    r = await track_ledger(ledger, FAST, client, follow=True, clock=FakeClock())
    assert f"msg-{second.id}-1" in client.fetches
    assert (r.statuses, r.pending) == ({"delivered": 8}, 0)


def all_delivered(client: FakeClient) -> None:
    """Have the API answer every group ``client`` sent: each member delivered."""
    for n, g in enumerate(client.calls):
        client.delivery[f"msg-{g.id}-{n}"] = tuple(RecipientStatus(p, "delivered") for p in g.to)


async def test_follow_waits_while_a_run_holds_the_ledger_and_stops_once_it_ends(
    jobs: JobFactory,
) -> None:
    """--follow with every recipient sent so far final, beside a run that still holds the
    ledger (between two groups): it goes on, looking every interval and logging
    ``track.waiting`` once, takes in the group the run sends next, and stops once that is
    final and the run has ended."""
    ledger, client = await sent_ledger(jobs, 8)
    _, second = client.calls
    later = held_back(ledger, second)
    all_delivered(client)
    run = open_store(ledger, "run")  # the run, between its groups
    clock = FakeClock()
    interval = FAST.track.interval
    with capture_logs() as logs:
        tracking = asyncio.create_task(track_ledger(ledger, FAST, client, follow=True, clock=clock))
        await asyncio.sleep(interval * 3.5)
        assert not tracking.done()
        assert [s for s in clock.calls if s >= 1] == [interval] * 4
        with ledger.open("ab") as f:
            f.write(later)  # the run sends its next group
        run.close_sync()  # and ends
        r = await asyncio.wait_for(tracking, interval * 3)
    assert f"msg-{second.id}-1" in client.fetches
    assert (r.statuses, r.pending, r.stopped) == ({"delivered": 8}, 0, None)
    waiting = [e for e in logs if e["event"] == "track.waiting"]
    assert [e["run"] for e in waiting] == [str(os.getpid())]


async def test_follow_waiting_on_a_live_run_ends_at_a_stop(jobs: JobFactory) -> None:
    """--follow waiting on a live run, with nothing pending, ends at once on a stop signal."""
    ledger, client = await sent_ledger(jobs, 4)
    all_delivered(client)
    run = open_store(ledger, "run")
    stop = Stop()
    clock = FakeClock(stopping=stop)
    try:
        tracking = asyncio.create_task(
            track_ledger(ledger, FAST, client, follow=True, clock=clock, stop=stop)
        )
        await asyncio.sleep(FAST.track.interval * 2.5)
        assert not tracking.done()
        stop.request(StopReason.SIGTERM)
        r = await asyncio.wait_for(tracking, 1)
    finally:
        run.close_sync()
    assert (r.stopped, r.statuses) == ("SIGTERM", {"delivered": 4})


def bulk_mms(*args: str) -> subprocess.Popen[bytes]:
    """A real ``bulk-mms`` process with the test's key, its output piped."""
    env = {**os.environ, "TELNYX_API_KEY": KEY}
    env.pop("TELNYX_BASE_URL", None)
    cmd = [sys.executable, "-m", "bulk_mms", "-q", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_track_follow_beside_a_slow_run_ends_after_the_run_with_every_group(
    jobs: JobFactory,
) -> None:
    """Real ``bulk-mms run`` sending a group every two seconds, and ``bulk-mms track --follow``
    started once its first group is sent (and at once delivered): track does not stop while
    the run holds the ledger, though all it has seen is final, and exits 0 after the run
    ends, with every group the run sent delivered."""
    fake = FakeTelnyx(api_key=KEY)
    jobs.people(8)
    job = jobs.job(extra="group_size = 2")
    config = jobs.root / "config.toml"
    config.write_text("[limits]\nrate = 0.5\n[track]\ninterval = 1\n")
    with fake_api_thread(fake) as url:
        run = bulk_mms("run", str(job.path), "--base-url", url, "--config", str(config))

        def sent_or_ended() -> bool:
            ledger = job.ledger.read_bytes() if job.ledger.exists() else b""
            return b'"event":"sent"' in ledger or run.poll() is not None

        wait_for("the run's first group sent", sent_or_ended)
        assert run.poll() is None, run.stderr
        track = bulk_mms("track", str(job.ledger), "--follow", "--format", "json",
                         "--config", str(config), "--base-url", url)  # fmt: skip
        run_out, run_err = run.communicate(timeout=60)
        out, err = track.communicate(timeout=60)
    assert run.returncode == 0, (run_out + run_err).decode()[-1000:]
    assert track.returncode == 0, (out + err).decode()[-1000:]
    result = orjson.loads(out)
    assert (result["statuses"], result["pending"]) == ({"delivered": 8}, 0)
    assert len(fake.recipient_counts()) == 8


async def test_follow_gives_up_past_max_age(jobs: JobFactory) -> None:
    """Groups older than max_age are no longer asked about and count as too old."""
    ledger, client = await sent_ledger(jobs, 4)
    (g,) = client.calls
    client.delivery[f"msg-{g.id}-0"] = tuple(RecipientStatus(p, "sent") for p in g.to)
    settings = replace(FAST, track=TrackConfig(max_age=3600))
    r = await track_ledger(
        ledger,
        settings,
        client,
        follow=True,
        clock=FakeClock(wall=time.time() + 7200),
    )
    assert r.requests == 0
    assert (r.pending, r.too_old) == (4, 4)


async def test_errors_are_retried_then_left_for_next_pass(jobs: JobFactory) -> None:
    """A GET that keeps failing with 5xx is retried, counted, and leaves the ledger untouched."""
    ledger, client = await sent_ledger(jobs, 4)
    (g,) = client.calls
    client.delivery[f"msg-{g.id}-0"] = ServerError("down", status=503)
    r = await track_ledger(ledger, FAST, client, clock=FakeClock())
    assert r.errors == {"503": 1}
    assert client.fetches == [f"msg-{g.id}-0"] * FAST.retry.attempts
    assert status_lines(ledger) == []


async def test_refused_key_stops_tracking(jobs: JobFactory) -> None:
    """A 401 on a GET is raised to the caller instead of being counted per group."""
    ledger, client = await sent_ledger(jobs, 4)
    (g,) = client.calls
    client.delivery[f"msg-{g.id}-0"] = AuthError("no", status=401)
    with pytest.raises(AuthError):
        await track_ledger(ledger, FAST, client, clock=FakeClock())


async def test_a_redirect_on_a_get_stops_tracking(jobs: JobFactory) -> None:
    """A 3xx on a GET (the base URL is wrong) stops tracking like a refused key: no GET can
    succeed, so no group is counted as failed one by one."""
    ledger, client = await sent_ledger(jobs, 8)
    for n, g in enumerate(client.calls):
        client.delivery[f"msg-{g.id}-{n}"] = EndpointError("redirect", status=302)
    with pytest.raises(EndpointError):
        await track_ledger(ledger, FAST, client, clock=FakeClock())
    assert len(client.fetches) <= FAST.concurrency


async def test_track_agrees_with_the_server_recipient_by_recipient(
    fake_api: API, jobs: JobFactory
) -> None:
    """Against the fake API with a carrier timeline, tracked statuses equal the server's."""
    fake, url = fake_api
    server_clock = ServerClock()
    fake.clock = server_clock
    fake.delivery_status = carrier_timeline(fail_every=3, sent_after=1, final_after=5)
    async with sent_by_fake(url, jobs, 40, 8) as (ledger, track):
        server_clock.t = 2
        first = await track()
        assert first.statuses == {"sent": 40}
        server_clock.t = 10
        second = await track()
    expected = {p: "delivery_failed" if will_fail(p, 3) else "delivered" for p in numbers(40)}
    assert {p: k.status for p, k in load(ledger).known.items()} == expected
    assert second.pending == 0
    failed_lines = [e for e in status_lines(ledger) if e["status"] == "delivery_failed"]
    assert failed_lines
    assert all(e["errors"] and e["source"] == "track" for e in failed_lines)
    assert all(orjson.dumps(e).startswith(b'{"event":"status"') for e in failed_lines)


async def test_an_unreachable_api_stops_tracking_after_a_run_of_failures(
    jobs: JobFactory,
) -> None:
    """Tries that cannot connect, STOP_AFTER_UNREACHABLE in a row, end tracking with ApiUnavailable
    instead of every group going through every retry."""
    ledger, client = await sent_ledger(jobs, 40)
    for n, g in enumerate(client.calls):
        client.delivery[f"msg-{g.id}-{n}"] = NetworkError("cannot connect: refused")
    r = await track_ledger(ledger, FAST, client, clock=FakeClock(), follow=True)
    assert isinstance(r.error, ApiUnavailable)
    assert f"{STOP_AFTER_UNREACHABLE} tries in a row could not connect" in str(r.error)
    assert r.stopped == "unavailable"
    assert (
        len(client.fetches) < STOP_AFTER_UNREACHABLE + FAST.concurrency
    )  # not 10 groups x 3 tries


async def test_an_answer_breaks_the_run_of_connection_failures(jobs: JobFactory) -> None:
    """Connection failures with answers between them never add up to an unreachable API."""
    ledger, client = await sent_ledger(jobs, 40)
    for n, g in enumerate(client.calls):
        refused = NetworkError("cannot connect: refused")
        client.delivery[f"msg-{g.id}-{n}"] = refused if n % 2 else ServerError("x", status=503)
    r = await track_ledger(ledger, replace(FAST, concurrency=1), client, clock=FakeClock())
    assert r.error is None
    assert sum(r.errors.values()) == 10  # each group asked, and left for the next pass


def test_track_against_a_closed_port_exits_1_in_one_line(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """track with nothing listening at the base URL: exit 1, one line saying so; the metrics
    file labels its series with the job's name, not the ledger's path."""
    monkeypatch.setenv("TELNYX_API_KEY", KEY)
    jobs.people(20)
    job = jobs.job(extra="group_size = 2", name="nightly-news")
    assert main(["-q", "run", str(job.path), "--sandbox", "--rate", "1000"]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    cfg = jobs.root / "config.toml"
    cfg.write_text("[retry]\nbackoff_initial = 0.001\nbackoff_max = 0.002\n")
    prom = jobs.root / "track.prom"
    capsys.readouterr()
    closed = f"http://127.0.0.1:{port}/v2"
    ledger = str(sandbox_ledger(job.ledger))
    code = main(["-q", "track", ledger, "--follow", "--config", str(cfg),
                 "--base-url", closed, "--metrics-file", str(prom)])  # fmt: skip
    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("bulk-mms: error: the API cannot be reached: 5 tries in a row")
    names = {
        s.labels["name"]
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
    }
    assert names == {"nightly-news"}


async def test_a_member_listed_under_two_messages_takes_only_its_own(jobs: JobFactory) -> None:
    """A group's answer that lists a member under two message ids (the endpoint returns "all
    messages in a group MMS conversation": another message to the same people) records
    neither until the member's own id is known, then only that id's status, in any order."""
    ledger, client = await sent_ledger(jobs, 4)
    (g,) = client.calls
    gid, p = f"msg-{g.id}-0", g.to[0]
    rest = tuple(RecipientStatus(q, "sent", message_id=f"r{i}") for i, q in enumerate(g.to) if i)
    other = RecipientStatus(p, "delivery_failed", message_id="r-other")
    client.delivery[gid] = (RecipientStatus(p, "sent", message_id="r0"), other, *rest)
    r = await track_ledger(ledger, FAST, client, clock=FakeClock())
    assert sorted(str(e["recipient"]) for e in status_lines(ledger)) == sorted(g.to[1:])
    assert r.unlisted == []  # listed, if twice: not "left out"
    client.delivery[gid] = (RecipientStatus(p, "sent", message_id="r0"), *rest)
    await track_ledger(ledger, FAST, client, clock=FakeClock())
    client.delivery[gid] = (RecipientStatus(p, "delivered", message_id="r0"), other, *rest)
    await track_ledger(ledger, FAST, client, clock=FakeClock())
    mine = [(e["status"], e["message_id"]) for e in status_lines(ledger) if e["recipient"] == p]
    assert mine == [("sent", "r0"), ("delivered", "r0")]


async def test_a_lone_recipient_s_answer_naming_an_unknown_group_message_is_taken(
    jobs: JobFactory,
) -> None:
    """One recipient left, asked by its own id: an answer whose message names a group message
    this ledger does not know is recorded (the spec declares no such field: an id it does
    not know proves nothing), as is one naming the group's."""
    ledger, client, g, gid = await one_left(jobs)
    client.delivery["r0"] = (
        RecipientStatus(g.to[0], "delivered", message_id="r0", group_message_id="x"),
    )
    with capture_logs() as logs:
        r = await track_ledger(ledger, FAST, client, clock=FakeClock())
    assert (r.unlisted, r.statuses) == ([], {"delivered": 4})
    assert not [e for e in logs if e["event"] == "track.other_group_message"]
    assert client.fetches == [gid, "r0"]


async def test_a_member_listed_under_two_group_messages_takes_its_group_s(
    jobs: JobFactory,
) -> None:
    """A group's answer that lists a member under two messages, each naming its group message
    (the other another send's in the same conversation): the member's report under its own
    group's is recorded at once, before its own id is known; the other never is."""
    ledger, client = await sent_ledger(jobs, 4)
    (g,) = client.calls
    gid, p = f"msg-{g.id}-0", g.to[0]
    rest = tuple(
        RecipientStatus(q, "sent", message_id=f"r{i}", group_message_id=gid)
        for i, q in enumerate(g.to)
        if i
    )
    other = RecipientStatus(p, "delivery_failed", message_id="r-x", group_message_id="other-send")
    mine = RecipientStatus(p, "sent", message_id="r0", group_message_id=gid)
    client.delivery[gid] = (other, mine, *rest)
    r = await track_ledger(ledger, FAST, client, clock=FakeClock())
    assert r.unlisted == []
    lines = {e["recipient"]: (e["status"], e["message_id"]) for e in status_lines(ledger)}
    assert lines == {p: ("sent", "r0"), **{st.phone: ("sent", st.message_id) for st in rest}}


async def test_an_answer_flooded_with_other_numbers_reads_only_the_members(
    jobs: JobFactory,
) -> None:
    """A group's answer that also lists thousands of other numbers, each under two messages
    and another group message, records the members' reports and logs none of the others."""
    ledger, client = await sent_ledger(jobs, 4)
    (g,) = client.calls
    gid = f"msg-{g.id}-0"
    mine = tuple(
        RecipientStatus(q, "delivered", message_id=f"r{i}", group_message_id=gid)
        for i, q in enumerate(g.to)
    )
    flood = tuple(
        RecipientStatus(f"+1202555{i // 2:04d}", "sent", message_id=f"x{i}", group_message_id="o")
        for i in range(4000)
    )
    client.delivery[gid] = (*flood, *mine)
    with capture_logs() as logs:
        r = await track_ledger(ledger, FAST, client, clock=FakeClock())
    assert r.statuses == {"delivered": 4}
    flooded = [
        e for e in logs if e["event"] in ("track.recipient_ambiguous", "track.other_group_message")
    ]
    assert flooded == []


@pytest.mark.parametrize("variant", [None, "statuses_in_cc", "sparse_answers"])
async def test_track_reads_answers_naming_their_group_message_as_before(
    fake_api: API, jobs: JobFactory, variant: str | None
) -> None:
    """Against GET answers whose every message names its group message (group_message_id,
    as Telnyx's support article says; with members under cc, or the least the spec allows
    beside it): track records every member's status through the group's GET, and the last
    one left through its own id's, each to its final status, none left unlisted."""
    fake, url = fake_api
    fake.group_message_ids = True
    if variant is not None:
        setattr(fake, variant, True)
    server_clock = ServerClock()
    fake.clock = server_clock
    slow = numbers(1)[0]
    fake.delivery_status = lambda phone, age: "sent" if phone == slow and age < 10 else "delivered"
    async with sent_by_fake(url, jobs, 4, 4) as (ledger, track):
        server_clock.t = 2
        first = await track()
        server_clock.t = 11
        last = await track()
    (msg,) = fake.accepted
    gets = [r.path.removeprefix("/v2/messages/") for r in fake.http_log if r.method == "GET"]
    assert (first.statuses, first.unlisted) == ({"sent": 1, "delivered": 3}, [])
    assert (last.statuses, last.unlisted, last.pending) == ({"delivered": 4}, [], 0)
    # with members under cc, the first's own message is the group's (the one under its to)
    own = msg.id if variant == "statuses_in_cc" else msg.recipient_ids[0]
    assert gets == [f"group/{msg.id}", own]
    assert [e["status"] for e in status_lines(ledger) if e["recipient"] == slow] == [
        "sent",
        "delivered",
    ]


async def test_members_the_api_reports_under_cc_are_tracked(
    fake_api: API, jobs: JobFactory
) -> None:
    """A server that lists a group's members past the first under cc, with their statuses
    (the spec allows it), in the send's answer and the group's GET: every member is tracked
    to its final status, none left unlisted or pending."""
    fake, url = fake_api
    fake.statuses_in_cc = True
    async with sent_by_fake(url, jobs, 16, 8) as (ledger, track):
        result = await track()
    assert (result.unlisted, result.pending) == ([], 0)
    assert {p: k.status for p, k in load(ledger).known.items()} == dict.fromkeys(
        numbers(16), "delivered"
    )


async def test_track_counts_a_member_sent_again_once_as_the_report_does(
    jobs: JobFactory,
) -> None:
    """A member a carrier's per-minute cap (40018) moved out of its sent group, then sent
    again in a group of its own: track counts each recipient once, by its latest send, as
    the report does (its statuses and what is not final yet are the fold's), not once for
    each group it was in."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 2")
    start = dt.datetime(2026, 11, 24, 10, 0, tzinfo=dt.UTC)
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock(wall=start.timestamp()))
    (g,) = client.calls
    cap = ApiError("40018", "AT&T per-minute cap", "")
    client.delivery[f"msg-{g.id}-0"] = (
        RecipientStatus(g.to[0], "delivery_failed", errors=(cap,)),
        RecipientStatus(g.to[1], "delivered"),
    )
    later = start + dt.timedelta(minutes=5)
    await track_ledger(job.ledger, FAST, client, clock=FakeClock(wall=later.timestamp()))
    again = start + dt.timedelta(minutes=10)
    await run_job(job, FAST, client, clock=FakeClock(wall=again.timestamp()))
    assert [c.to for c in client.calls[1:]] == [(g.to[0],)]
    result = await track_ledger(job.ledger, FAST, client, clock=FakeClock(wall=again.timestamp()))
    report = summarize(job.ledger)
    assert result.statuses == report.delivery == {"delivered": 1, "queued": 1}
    assert result.pending == report.as_dict()["delivery_pending"] == 1


def test_the_track_summary_escapes_what_the_api_said() -> None:
    """A status or an error code from the API with control characters (an escape sequence)
    reaches the terminal escaped, never as it came."""
    result = TrackResult(statuses=Counter({"deliv\x1b[2Jered": 2}), errors=Counter({"4\n0": 1}))
    text = format_track(result, Path("l.jsonl"))
    assert "\x1b" not in text
    assert "deliv\\x1b[2Jered 2" in text
    assert "4\\n0 x1" in text


async def test_a_member_listed_only_on_a_later_pass_is_not_left_unlisted(
    jobs: JobFactory,
) -> None:
    """--follow: a member the first answer leaves out (its message not served yet) and a
    later one lists as delivered is no longer named unlisted (which makes track exit 1):
    every recipient is final, and the result says so."""
    ledger, client = await sent_ledger(jobs, 4)
    (g,) = client.calls
    answers = iter([g.to[1:], g.to])

    async def fetch(message_id: str) -> tuple[RecipientStatus, ...]:
        client.fetches.append(message_id)
        return tuple(RecipientStatus(p, "delivered") for p in next(answers))

    client.fetch_group = fetch  # type: ignore[method-assign]
    r = await track_ledger(ledger, FAST, client, follow=True, clock=FakeClock())
    assert (r.statuses, r.pending) == ({"delivered": 4}, 0)
    assert (r.unlisted, r.as_dict()["unlisted"]) == ([], [])
    assert "not listed" not in format_track(r, ledger)


async def test_a_send_answered_with_a_members_own_message_is_tracked_by_its_group_message(
    fake_api: API, jobs: JobFactory
) -> None:
    """A send answered with its first member's own message, the group's id only in
    group_message_id (member_id_answers): the group is recorded under the group message, and
    track follows every member through its GET to its final status, none left unlisted."""
    fake, url = fake_api
    fake.member_id_answers = True
    async with sent_by_fake(url, jobs, 4, 4) as (ledger, track):
        result = await track()
    (msg,) = fake.accepted
    assert [e["message_id"] for e in ledger_events(ledger) if e["event"] == "sent"] == [msg.id]
    assert (result.statuses, result.unlisted, result.pending) == ({"delivered": 4}, [], 0)


@pytest.mark.parametrize("named", [False, True])
async def test_a_group_get_listing_the_groups_own_message_beside_each_members_is_tracked(
    fake_api: API, jobs: JobFactory, named: bool
) -> None:
    """A group's GET that lists the group's own message (every member under to) beside each
    member's own (group_message_listed), naming its group message or not: each member is
    tracked to its final status by its own message, none left unlisted or pending."""
    fake, url = fake_api
    fake.group_message_listed = True
    fake.group_message_ids = named
    async with sent_by_fake(url, jobs, 4, 4) as (ledger, track):
        result = await track()
    (msg,) = fake.accepted
    assert (result.statuses, result.unlisted, result.pending) == ({"delivered": 4}, [], 0)
    assert {p: k.message_id for p, k in load(ledger).known.items()} == dict(
        zip(msg.to, msg.recipient_ids, strict=True)
    )


async def test_a_member_listed_beside_its_group_message_only_by_another_send_is_not_its_own(
    jobs: JobFactory,
) -> None:
    """A group's GET listing the group's own message and, for the same members, another
    send's group message in the conversation (both listing every member), no member's own
    id known: that other send's statuses are not recorded as the group's members'."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 2")
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    (g,) = client.calls
    mid = f"msg-{g.id}-0"
    client.delivery[mid] = (
        RecipientStatus(g.to[0], "sent", message_id=mid),
        RecipientStatus(g.to[1], "sent", message_id=mid),
        RecipientStatus(g.to[0], "delivery_failed", message_id="msg-another-send"),
        RecipientStatus(g.to[1], "delivery_failed", message_id="msg-another-send"),
    )
    with capture_logs() as logs:
        result = await track_ledger(job.ledger, FAST, client, clock=FakeClock())
    assert "delivery_failed" not in result.statuses
    assert {k.status for k in load(job.ledger).known.values()} != {"delivery_failed"}
    ambiguous = [e["recipient"] for e in logs if e["event"] == "track.recipient_ambiguous"]
    assert sorted(ambiguous) == sorted(g.to)
