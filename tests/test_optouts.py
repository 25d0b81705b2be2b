"""The opt-out list (``GET /messaging_optouts``): who a 40300 that names nobody refused, and
``optouts sync`` by messaging profile with full numbers."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from msgspec.structs import replace
from structlog.testing import capture_logs

from bulk_mms.cli import main
from bulk_mms.client import AiohttpMmsClient
from bulk_mms.config import JobConfig, Settings, load_settings
from bulk_mms.console import run_outcome
from bulk_mms.errors import ApiError, ConfigError, Rejected, SendError, ServerError
from bulk_mms.fake_api import FakeTelnyx, Fault
from bulk_mms.fake_api import OptOut as Block
from bulk_mms.ledger import Miss
from bulk_mms.ledger.store import load
from bulk_mms.models import Group, MessageBody, OptOut, SendReceipt
from bulk_mms.policy import refused_by_optouts
from bulk_mms.runner import run_job
from bulk_mms.suppression import Suppressed, suppression_for
from bulk_mms.testing import groups_in
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers, ok_receipt
from tests.threaded import fake_api_thread

SENDER = "+18445550001"
OTHER_SENDER = "+18445550002"
POLICY = load_settings(None).error_policy


@dataclass
class OptOutFake(FakeTelnyx):
    """The fake API with an opt-out list of from→to pairs, filtered as the spec says
    (``filter[from]``, ``filter[messaging_profile_id]``), redacted unless asked not to be;
    every query it got is kept."""

    pairs: list[tuple[str, str, str]] = field(default_factory=list)  # (profile, from, to)
    queries: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/messaging_optouts", self.get_optouts)
        return app

    async def get_optouts(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.queries.append(query)
        page, size = int(query.get("page[number]", "1")), int(query.get("page[size]", "20"))
        found = [
            (f, t)
            for p, f, t in self.pairs
            if query.get("filter[from]", f) == f
            and query.get("filter[messaging_profile_id]", p) == p
        ]
        redact = query.get("redaction_enabled", "true") != "false"
        data = [
            {"from": f, "to": t[:-4] + "****" if redact else t, "keyword": "STOP"}
            for f, t in found[(page - 1) * size : page * size]
        ]
        pages = max(1, -(-len(found) // size))
        meta = {"page_number": page, "page_size": size, "total_pages": pages,
                "total_results": len(found)}  # fmt: skip
        return web.json_response({"data": data, "meta": meta})


def nobody_named() -> Rejected:
    """A 409 40300 that does not say which member opted out."""
    return Rejected(
        "refused", status=409, errors=(ApiError("40300", "Blocked due to STOP message", ""),)
    )


def group_of(to: list[str]) -> Group:
    """A group of ``to`` from :data:`SENDER`."""
    return Group("g1", 0, tuple(to), tuple(range(1, len(to) + 1)), MessageBody(SENDER, "hi"))


async def test_the_list_names_the_members_a_40300_did_not(tmp_path: Path) -> None:
    """Over two pages of the sender's opt-outs, read unredacted at 250 a page, the members that
    opted out of this sender are refused; an opt-out from another sender, or of someone not
    in the group, refuses nobody here."""
    to = numbers(4)
    fake = OptOutFake(api_key="k")
    fake.pairs = [("p", SENDER, n) for n in numbers(300, start=1000)]  # fills page 1
    fake.pairs += [("p", SENDER, to[2]), ("p", OTHER_SENDER, to[0])]
    async with (
        TestServer(fake.app(), host="127.0.0.1", port=0) as server,
        AiohttpMmsClient(str(server.make_url("/v2")), "k") as client,
    ):
        refused = await refused_by_optouts(client, nobody_named(), group_of(to), POLICY)
    assert refused == (to[2],)
    assert [q["page[number]"] for q in fake.queries] == ["1", "2"]
    assert all(
        q["filter[from]"] == SENDER
        and q["redaction_enabled"] == "false"
        and q["page[size]"] == "250"
        for q in fake.queries
    )


async def test_the_lookup_is_only_for_an_opt_out_that_names_nobody() -> None:
    """Another code, a group of one, a client without the list, or a list that cannot be read:
    no member is named, and nothing is guessed."""

    class Lists:
        def __init__(self, answer: list[OptOut] | SendError) -> None:
            self.answer = answer
            self.asked = 0

        async def fetch_optouts(
            self,
            page: int,
            size: int = 250,
            *,
            from_: str | None = None,
            profile: str | None = None,
        ) -> tuple[list[OptOut], int]:
            self.asked += 1
            if isinstance(self.answer, SendError):
                raise self.answer
            return self.answer, 1

    to = numbers(3)
    listed = Lists([OptOut(SENDER, to[1])])
    assert await refused_by_optouts(listed, nobody_named(), group_of(to), POLICY) == (to[1],)
    other = Rejected("x", status=400, errors=(ApiError("40310", "t", ""),))
    assert await refused_by_optouts(listed, other, group_of(to), POLICY) == ()
    assert await refused_by_optouts(listed, nobody_named(), group_of(to[:1]), POLICY) == ()
    assert await refused_by_optouts(FakeClient(), nobody_named(), group_of(to), POLICY) == ()
    broken = Lists(ServerError("down", status=503))
    assert await refused_by_optouts(broken, nobody_named(), group_of(to), POLICY) == ()
    assert (listed.asked, broken.asked) == (1, 1)


@dataclass
class ListingClient(FakeClient):
    """A fake client whose opt-out list holds ``blocks``."""

    blocks: list[OptOut] = field(default_factory=list)

    async def fetch_optouts(
        self, page: int, size: int = 250, *, from_: str | None = None, profile: str | None = None
    ) -> tuple[list[OptOut], int]:
        return [b for b in self.blocks if from_ in (None, b.from_)], 1


async def test_a_run_suppresses_the_listed_member_and_sends_the_rest_as_one(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A group of 4 refused with a 40300 naming nobody: the opt-out list names one member, who
    goes on the suppression list; the other three go out together as one message."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    settings = replace(load_settings(config), rate=FAST.rate, retry=FAST.retry)
    people = numbers(4)
    stop_sayer = people[1]

    def handler(g: Group, n: int) -> SendReceipt | Rejected:
        return nobody_named() if stop_sayer in g.to else ok_receipt(g, n)

    client = ListingClient(handler, blocks=[OptOut(job.message.from_, stop_sayer)])
    await run_job(job, settings, client, clock=FakeClock())
    assert [sorted(g.to) for g in client.calls] == [
        sorted(people),
        sorted(set(people) - {stop_sayer}),
    ]
    assert Suppressed(tmp_path / "suppressed.txt").numbers() == [stop_sayer]
    assert len(groups_in(job.ledger, "sent")) == 1


def test_optouts_sync_asks_for_the_profile_and_full_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``[api] messaging_profile_id``, sync reads only that profile's opt-outs, unredacted,
    and lists their full numbers; another profile's are left alone."""
    fake = OptOutFake(api_key="test-key-123")
    mine, theirs = numbers(2), numbers(1, start=50)
    fake.pairs = [("prof-1", SENDER, n) for n in mine] + [("prof-2", SENDER, theirs[0])]
    config = tmp_path / "config.toml"
    config.write_text(
        '[api]\nmessaging_profile_id = "prof-1"\n[suppression]\nfile = "suppressed.txt"\n'
    )
    monkeypatch.setenv("TELNYX_API_KEY", "test-key-123")
    with fake_api_thread(fake) as url:
        assert main(["-q", "optouts", "sync", "--config", str(config), "--base-url", url]) == 0
    assert "2 opt-outs on the profile, 2 new" in capsys.readouterr().err
    assert Suppressed(tmp_path / "suppressed.txt").numbers() == sorted(mine)
    query: dict[str, Any] = fake.queries[0]
    assert (query["filter[messaging_profile_id]"], query["redaction_enabled"]) == (
        "prof-1",
        "false",
    )
    assert "filter[from]" not in query


class EndlessOptOuts(OptOutFake):
    """An opt-out list that claims 100,000 pages and answers every page with the same two."""

    async def get_optouts(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        data = [{"from": SENDER, "to": t, "keyword": "STOP"} for _, _, t in self.pairs]
        return web.json_response({"data": data, "meta": {"total_pages": 100_000}})


def test_optouts_sync_stops_at_a_page_that_brings_no_new_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An answer is untrusted: a list that claims 100,000 pages and repeats itself is read
    to the first page that brings nobody new (two GETs, not 100,000), each number once."""
    fake = EndlessOptOuts(api_key="test-key-123")
    fake.pairs = [("p", SENDER, n) for n in numbers(2)]
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    monkeypatch.setenv("TELNYX_API_KEY", "test-key-123")
    with fake_api_thread(fake) as url:
        assert main(["-q", "optouts", "sync", "--config", str(config), "--base-url", url]) == 0
    assert "2 opt-outs on the profile, 2 new" in capsys.readouterr().err
    assert len(fake.queries) == 2
    assert Suppressed(tmp_path / "suppressed.txt").numbers() == sorted(numbers(2))


@dataclass
class EndlessNewOptOuts(OptOutFake):
    """An opt-out list that claims ``claimed`` pages and brings a new number on every page."""

    claimed: int = 100_000

    async def get_optouts(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        to = numbers(1, start=int(request.query["page[number]"]))[0]
        data = [{"from": SENDER, "to": to, "keyword": "STOP"}]
        return web.json_response({"data": data, "meta": {"total_pages": self.claimed}})


@pytest.mark.parametrize("claimed", [100_000, 10**9])
def test_optouts_sync_of_a_list_past_what_it_holds_stops_and_keeps_what_it_read(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    claimed: int,
) -> None:
    """A list that claims more pages than sync holds (OPTOUT_SYNC_PAGES of 250) and brings
    news on each is read no further than that bound: one line says so, exit 1, and the
    numbers read go on the list beside those it held already."""
    monkeypatch.setattr("bulk_mms.commands.admin.OPTOUT_SYNC_PAGES", 3)
    fake = EndlessNewOptOuts(api_key="test-key-123", claimed=claimed)
    held = numbers(1, start=500)
    Suppressed(tmp_path / "suppressed.txt").add(held, "by hand")
    assert sync_against(fake, tmp_path, monkeypatch) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("bulk-mms: error: the opt-out list claims more than the 3 pages")
    assert "3 opt-outs on the profile, 3 new" in line
    assert len(fake.queries) == 3
    assert Suppressed(tmp_path / "suppressed.txt").numbers() == sorted(
        [*held, *numbers(3, start=1)]
    )


def test_optouts_sync_reads_on_past_a_page_of_numbers_already_blocked_by_another_sender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The list holds a block per sender: a page of another sender's blocks of numbers
    already read is news, not a repeat, and the pages after it are read too (the number only
    that sender's block names is synced)."""
    fake = OptOutFake(api_key="test-key-123")
    people = numbers(251)
    fake.pairs = [("p", SENDER, n) for n in people[:250]]
    fake.pairs += [("p", OTHER_SENDER, n) for n in people]
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    monkeypatch.setenv("TELNYX_API_KEY", "test-key-123")
    with fake_api_thread(fake) as url:
        assert main(["-q", "optouts", "sync", "--config", str(config), "--base-url", url]) == 0
    assert len(fake.queries) == 3
    assert Suppressed(tmp_path / "suppressed.txt").numbers() == sorted(people)


def test_optouts_sync_with_the_api_unreachable_exits_1_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An API that cannot be reached is the network's, not a bad setting: optouts sync exits
    1 (run it again), as track does, saying so in one line, and the list is untouched."""
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n[retry]\nattempts = 1\n')
    monkeypatch.setenv("TELNYX_API_KEY", "test-key-123")
    argv = ["optouts", "sync", "--config", str(config), "--base-url", "http://127.0.0.1:9/v2"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "cannot be reached" in err
    assert "Traceback" not in err
    assert not (tmp_path / "suppressed.txt").exists()


async def test_a_group_of_one_refused_for_an_opt_out_is_an_opt_out_not_a_resend(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A group of one refused with a 40300 naming nobody: its only member opted out, so the
    ledger counts it opted out and ``--failed-csv`` leaves it out, as for a larger group."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 1")
    stop_sayer = numbers(2)[0]

    def handler(g: Group, n: int) -> SendReceipt | Rejected:
        return nobody_named() if stop_sayer in g.to else ok_receipt(g, n)

    await run_job(job, FAST, FakeClient(handler), clock=FakeClock())
    missed = load(job.ledger).not_received()
    assert {p: m.kind for p, m in missed.items()} == {stop_sayer: Miss.OPTED_OUT}
    failed = tmp_path / "failed.csv"
    assert main(["-q", "report", str(job.ledger), "--json", "--failed-csv", str(failed)]) == 0
    assert failed.read_text(encoding="utf-8-sig").splitlines()[1:] == []


@pytest.mark.parametrize("started", [False, True])
async def test_an_opt_out_the_list_could_not_take_goes_on_it_at_the_rerun(
    jobs: JobFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: bool
) -> None:
    """A run whose suppression list refused a write (a full disk) as the API said a member
    opted out keeps the opt-out in the ledger alone: the next run of the job puts it on the
    list, which every other job reads, and texts nobody; unless the list records a START
    of the number since, which lifted it."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 1")
    stop_sayer = numbers(2)[0]
    listed = tmp_path / "suppressed.txt"
    settings = replace(FAST, suppression_file=listed)

    def handler(g: Group, n: int) -> SendReceipt | Rejected:
        return nobody_named() if stop_sayer in g.to else ok_receipt(g, n)

    def full(self: Suppressed, phones: object, reason: str) -> list[str]:
        raise ConfigError("suppression.file", f"cannot write {listed}: No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Suppressed, "add", full)
        await run_job(job, settings, FakeClient(handler), clock=FakeClock())
    assert suppression_for(listed).numbers() == []
    if started:
        assert suppression_for(listed).record_keyword(stop_sayer, "texted START", time.time())
    rerun = FakeClient(handler)
    await run_job(job, settings, rerun, clock=FakeClock())
    assert rerun.calls == []
    assert suppression_for(listed).numbers() == ([] if started else [stop_sayer])


async def test_a_40300_taken_off_the_list_by_hand_is_not_put_back_by_the_next_run(
    jobs: JobFactory, tmp_path: Path
) -> None:
    """A member the API refused as opted out (40300: on the list) that `suppress remove`
    then took off, on purpose, stays off: the job's next run does not put it back."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 1")
    asked = numbers(2)[0]
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    settings = replace(load_settings(config), rate=FAST.rate, retry=FAST.retry)
    listed = settings.suppression_file

    def handler(g: Group, n: int) -> SendReceipt | Rejected:
        return nobody_named() if asked in g.to else ok_receipt(g, n)

    refused_then = FakeClock(wall=time.time() - 3600)  # the refusal an hour before the remove
    await run_job(job, settings, FakeClient(handler), clock=refused_then)
    assert suppression_for(listed).numbers() == [asked]
    assert main(["-q", "suppress", "remove", asked, "--config", str(config)]) == 0
    rerun = FakeClient(handler)
    await run_job(job, settings, rerun, clock=FakeClock())
    assert rerun.calls == []
    assert suppression_for(listed).numbers() == []
    assert load(job.ledger).not_received()[asked].kind is Miss.OPTED_OUT  # the ledger's word


async def test_an_opt_out_the_list_could_not_take_goes_on_it_though_removed_before(
    jobs: JobFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A number taken off the list by hand before a run whose list write failed as the API
    refused it (40300) is put back by the next run: only a removal after the refusal lifts
    it."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 1")
    stop_sayer = numbers(2)[0]
    listed = tmp_path / "suppressed.txt"
    settings = replace(FAST, suppression_file=listed)
    suppression_for(listed).add([stop_sayer], "added by hand")
    assert suppression_for(listed).remove([stop_sayer]) == [stop_sayer]

    def handler(g: Group, n: int) -> SendReceipt | Rejected:
        return nobody_named() if stop_sayer in g.to else ok_receipt(g, n)

    def full(self: Suppressed, phones: object, reason: str) -> list[str]:
        raise ConfigError("suppression.file", f"cannot write {listed}: No space left on device")

    refused_later = FakeClock(wall=time.time() + 3600)  # the refusal an hour after the remove
    with monkeypatch.context() as patch:
        patch.setattr(Suppressed, "add", full)
        await run_job(job, settings, FakeClient(handler), clock=refused_later)
    assert suppression_for(listed).numbers() == []
    rerun = FakeClient(handler)
    await run_job(job, settings, rerun, clock=FakeClock(wall=time.time() + 7200))
    assert rerun.calls == []
    assert suppression_for(listed).numbers() == [stop_sayer]
    reason = suppression_for(listed).reason(stop_sayer)
    assert reason is not None
    assert reason.startswith("opted out (40300)")


def test_optouts_sync_at_a_base_url_without_v2_names_the_base_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A base URL that answers 404 to GET /messaging_optouts (no /v2) exits 2 in one line
    saying to check the base URL, not that a message id is unknown; the list is untouched."""
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    monkeypatch.setenv("TELNYX_API_KEY", "test-key-123")
    with fake_api_thread(FakeTelnyx(api_key="test-key-123")) as url:
        bare = url.removesuffix("/v2")
        assert main(["optouts", "sync", "--config", str(config), "--base-url", bare]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("bulk-mms: error: HTTP 404: GET /messaging_optouts is not found here: ")
    assert "check the base URL" in line
    assert "message id" not in line
    assert not (tmp_path / "suppressed.txt").exists()


def test_optouts_sync_lists_only_numbers_the_list_can_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An opt-out from a number no job can text (a UK number: group MMS reaches the US and
    Canada only) is not written to the list: the list is read back with the same check
    (validate.normalize_phone) as every number it holds, and one such line would stop every
    later run and suppress command on it."""
    fake = OptOutFake(api_key="test-key-123")
    mine = numbers(1)
    fake.pairs = [("prof-1", SENDER, mine[0]), ("prof-1", SENDER, "+442079460958")]
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    monkeypatch.setenv("TELNYX_API_KEY", "test-key-123")
    with fake_api_thread(fake) as url:
        assert main(["-q", "optouts", "sync", "--config", str(config), "--base-url", url]) == 0
    assert Suppressed(tmp_path / "suppressed.txt").numbers() == mine
    capsys.readouterr()
    assert main(["-q", "suppress", "list", "--config", str(config)]) == 0
    assert capsys.readouterr().out.split() == mine


API = tuple[FakeTelnyx, str]


async def _run_and_report(
    job: JobConfig, settings: Settings, url: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, dict[str, Any], list[str]]:
    """Run ``job`` against the fake API at ``url`` and say how it ended; then its ledger's
    report: (exit code, the run's summary and the report's table, the report as JSON, the
    rows ``--failed-csv`` wrote)."""
    async with AiohttpMmsClient(url, "test-key-123") as client:
        s = await run_job(job, settings, client, clock=FakeClock())
    capsys.readouterr()
    code = run_outcome(s)
    assert main(["-q", "report", str(job.ledger), "--format", "table"]) == 0
    text = capsys.readouterr().out
    failed = job.ledger.parent / "failed.csv"
    assert main(["-q", "report", str(job.ledger), "--json", "--failed-csv", str(failed)]) == 0
    report = orjson.loads(capsys.readouterr().out)
    return code, text, report, failed.read_text(encoding="utf-8-sig").splitlines()[1:]


async def test_a_40300_from_the_api_is_not_the_run_s_failure(
    jobs: JobFactory, fake_api: API, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API refuses a group with 409 40300 for a member who opted out of the sender: the
    rest go without them, and the run exits 0, its summary and the report naming them opted
    out; --failed-csv leaves them out, and a rerun texts nobody."""
    fake, url = fake_api
    people = numbers(8)
    jobs.people(8)
    job = jobs.job(extra="group_size = 4")
    fake.optouts.append(Block(people[2], job.message.from_))
    code, text, report, failed = await _run_and_report(job, FAST, url, capsys)
    assert code == 0
    assert "1 opted out (STOP" in text
    assert "opted out (STOP), never to be texted again, not in --failed-csv" in text
    assert (report["opted_out_recipients"], report["sent_recipients"]) == (1, 7)
    assert failed == []
    assert fake.recipient_counts() == dict.fromkeys(set(people) - {people[2]}, 1)
    code, _, _, _ = await _run_and_report(job, FAST, url, capsys)
    assert code == 0
    assert fake.recipient_counts() == dict.fromkeys(set(people) - {people[2]}, 1)


@dataclass
class StopAfterFirst(FakeTelnyx):
    """The fake API; as it accepts the first message, ``late`` texts STOP and the webhook
    receiver (a process of its own) puts them on the default suppression list."""

    late: str = ""

    async def send_group_mms(self, request: web.Request) -> web.StreamResponse:
        answer = await super().send_group_mms(request)
        if len(self.accepted) == 1:
            suppression_for(None).add([self.late], "texted STOP (webhook)")
        return answer


async def test_a_stop_taken_between_planning_and_the_try_is_not_the_run_s_failure(
    jobs: JobFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A number put on the suppression list after its group was planned, before it left: the
    try refuses it (recorded opted out, as a 40300 would be), the run exits 0 naming it opted
    out in its summary and the report, --failed-csv leaves it out, and it is never texted."""
    monkeypatch.setattr("bulk_mms.runner.SUPPRESSION_LOOK_S", 0.2)  # a look between sends
    people = numbers(6)
    jobs.people(6)
    job = jobs.job(extra="group_size = 2")
    fake = StopAfterFirst(api_key="test-key-123", late=people[3])
    one_a_second = replace(FAST, rate=1.0, concurrency=1)  # every group planned at once
    async with TestServer(fake.app(), host="127.0.0.1", port=0) as server:
        url = str(server.make_url("/v2"))
        code, text, report, failed = await _run_and_report(job, one_a_second, url, capsys)
    assert code == 0
    assert "1 opted out (STOP" in text
    assert (report["opted_out_recipients"], report["sent_recipients"]) == (1, 5)
    assert report["suppressed_rows"] == 0  # planned before the STOP: opted out, not suppressed
    assert failed == []
    assert fake.recipient_counts() == dict.fromkeys(set(people) - {people[3]}, 1)


async def test_an_opt_out_beside_a_group_failed_for_good_still_exits_1(
    jobs: JobFactory, fake_api: API, capsys: pytest.CaptureFixture[str]
) -> None:
    """One member opted out (40300) and another group refused for good (400): the opt-out is
    not a failure, the other is, and the run exits 1, its summary telling them apart."""
    fake, url = fake_api
    people = numbers(4)
    jobs.people(4)
    job = jobs.job(extra="group_size = 1")
    fake.optouts.append(Block(people[3], job.message.from_))
    fake.faults.append(Fault("status", 400, code="40001"))  # the first request: people[0]'s
    one_at_a_time = replace(FAST, concurrency=1)
    code, text, report, failed = await _run_and_report(job, one_at_a_time, url, capsys)
    assert code == 1
    assert "1 failed, 1 opted out (STOP" in text
    assert (report["opted_out_recipients"], report["failed_recipients"]) == (1, 2)
    assert [row.split(",")[0] for row in failed] == [people[0]]


async def test_a_transient_refusal_naming_an_opt_out_is_not_left_to_a_rerun(
    jobs: JobFactory,
) -> None:
    """A 503 whose errors name a member opted out (40300, /to/0) after another code: the
    opt-out decides, so it is not retried, the rest go at once without them, and the refused
    group is not pending a rerun, so a later run (the member opted in again meanwhile) texts
    nobody twice, and the counts add up to the input."""
    people = numbers(4)
    jobs.people(4)
    job = jobs.job(extra="group_size = 4")
    blocked = ApiError("40300", "Blocked due to STOP message", "", pointer="/to/0")

    def answer(group: Group, n: int) -> SendReceipt | ServerError:
        if people[0] in group.to and n < 3:
            unexpected = ApiError("10007", "Unexpected error", "")
            return ServerError("down", status=503, errors=(unexpected, blocked))
        return ok_receipt(group, n)

    client = FakeClient(answer)
    s = await run_job(job, replace(FAST, concurrency=1), client, clock=FakeClock())
    assert run_outcome(s) == 0
    assert s.recipients is not None
    assert (s.recipients.valid, s.recipients.sent, s.recipients.opted_out) == (4, 3, 1)
    suppression_for(None).remove([people[0]])  # texted START
    await run_job(job, replace(FAST, concurrency=1), client, clock=FakeClock())
    assert [people[0] in g.to for g in client.calls] == [True, False]
    assert Counter(p for g in client.calls[1:] for p in g.to) == dict.fromkeys(people[1:], 1)


def sync_against(fake: FakeTelnyx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """``optouts sync`` against ``fake``, its list ``suppressed.txt`` in ``tmp_path``; its exit
    code."""
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "suppressed.txt"\n')
    monkeypatch.setenv("TELNYX_API_KEY", "test-key-123")
    with fake_api_thread(fake) as url:
        return main(["-q", "optouts", "sync", "--config", str(config), "--base-url", url])


@pytest.mark.parametrize("people", [1, 3])
def test_optouts_sync_of_a_list_the_api_redacts_says_so_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], people: int
) -> None:
    """A list the API shows redacted (``+1212555****``) though asked for full numbers is not
    "0 opt-outs": sync says how many came redacted, that none of them was added, and exits 1;
    the full numbers beside them are added."""
    fake = FakeTelnyx(api_key="test-key-123", always_redacted=True)
    fake.optouts = [Block(n, SENDER) for n in numbers(people)]
    assert sync_against(fake, tmp_path, monkeypatch) == 1
    [line] = capsys.readouterr().err.splitlines()
    redacted = "1 opt-out" if people == 1 else f"{people} opt-outs"
    assert f"{redacted} listed with the number redacted" in line
    assert "0 opt-outs on the profile" not in line
    assert Suppressed(tmp_path / "suppressed.txt").numbers() == []


def test_optouts_sync_of_one_opt_out_says_one_opt_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One opt-out on the profile is "1 opt-out", not "1 opt-outs"."""
    fake = FakeTelnyx(api_key="test-key-123")
    fake.optouts = [Block(numbers(1)[0], SENDER)]
    assert sync_against(fake, tmp_path, monkeypatch) == 0
    assert "1 opt-out on the profile, 1 new" in capsys.readouterr().err


async def test_a_lookup_in_a_list_the_api_redacts_names_nobody_and_says_why() -> None:
    """A 40300 naming nobody, looked up in a list the API shows redacted: no member is named
    (a redacted number is nobody), and the log says the list came redacted, not that nobody
    opted out."""
    to = numbers(3)
    fake = FakeTelnyx(api_key="k", always_redacted=True)
    fake.optouts = [Block(to[1], SENDER)]
    async with (
        TestServer(fake.app(), host="127.0.0.1", port=0) as server,
        AiohttpMmsClient(str(server.make_url("/v2")), "k") as client,
    ):
        with capture_logs() as logs:
            refused = await refused_by_optouts(client, nobody_named(), group_of(to), POLICY)
    assert refused == ()
    assert [(e["event"], e.get("redacted")) for e in logs if e["log_level"] == "warning"] == [
        ("optouts.redacted", 1)
    ]
