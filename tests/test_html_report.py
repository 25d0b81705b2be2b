"""``report --html``: one self-contained page, looked at in a real (headless) browser."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from msgspec.structs import replace

from bulk_mms.cli import main
from bulk_mms.codes import MEANINGS
from bulk_mms.config import folders
from bulk_mms.errors import ApiError, Rejected
from bulk_mms.html_report import (
    MAX_BINS,
    PACE_COLOUR,
    SENT_COLOUR,
    Timeline,
    _most_per_bin,
    render,
)
from bulk_mms.ledger import Failed, open_store, read_events
from bulk_mms.ledger.events import status_event
from bulk_mms.ledger.fold import RecipientCounts
from bulk_mms.models import Group, RecipientStatus, SendReceipt
from bulk_mms.policy import load_policy
from bulk_mms.report import LedgerSummary, ResetHolds, Waiting, format_text, summarize
from bulk_mms.runner import run_job
from bulk_mms.words import error_words
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, missing, numbers, ok_receipt

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)  # fmt: skip


def chromium() -> str:
    """Debian's chromium, or a skip (a failure where CI requires it) saying it is missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        missing("no chromium on PATH (Debian's chromium package) to look at the page")
    return found


@pytest.fixture
def sandbox_ledger(jobs: JobFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ledger of a sandbox run: 40 recipients in groups of 4, one of them opted out."""
    monkeypatch.delenv("TELNYX_BASE_URL", raising=False)
    people = [*numbers(39), "+14155550300"]
    jobs.csv([{"phone": p, "first": "x"} for p in [*people, "oops"]])
    job = jobs.job(extra="group_size = 4")
    # the opt-out is not a failure (nobody may text them), the bad row not a valid recipient
    assert main(["-q", "run", str(jobs.root / "job.toml"), "--sandbox", "--rate", "20"]) == 0
    return folders.sandbox_ledger(job.ledger)


def test_the_page_is_self_contained_and_escapes_the_ledger(
    sandbox_ledger: Path, tmp_path: Path
) -> None:
    """The page has its charts inline (SVG), loads nothing from anywhere (no script, no
    external src or href), names the error code with Telnyx's meaning, and says the counts."""
    page = tmp_path / "report.html"
    assert main(["-q", "report", str(sandbox_ledger), "--html", str(page)]) == 0
    text = page.read_text()
    assert text.count("<svg") == 3
    assert "<script" not in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "Blocked due to STOP message" in text
    assert "<b>39</b><span>recipients sent</span>" in text
    assert "<b>0</b><span>recipients failed for good</span>" in text
    assert "<b>1</b><span>recipients who opted out (STOP)</span>" in text


def test_a_cache_matplotlib_cannot_write_adds_no_line(sandbox_ledger: Path, tmp_path: Path) -> None:
    """report --html where matplotlib cannot keep its cache (a full disk, a HOME cron may not
    write: here MPLCONFIGDIR under a file) says one line, the page's, and nothing of the
    cache; the page is written."""
    page = tmp_path / "report.html"
    argv = [sys.executable, "-m", "bulk_mms", "report", str(sandbox_ledger), "--html", str(page)]
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    env = {**os.environ, "MPLCONFIGDIR": str(not_a_folder / "matplotlib")}
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 0
    assert done.stderr == f"bulk-mms: wrote the report to {page.resolve().as_uri()}\n"
    assert "<svg" in page.read_text()


def test_the_timeline_draws_each_senders_pace_from_the_ledger(
    sandbox_ledger: Path, tmp_path: Path
) -> None:
    """The run recorded its sender's pace (a start at the configured rate), and the page's
    timeline draws it as a step line in the pace colour."""
    timeline = Timeline.read(read_events(sandbox_ledger))
    (sender, steps), *_ = timeline.pace.items()
    assert sender.startswith("+1")
    assert steps[0][1] == 20.0  # --rate 20: where the pacer starts
    page = tmp_path / "report.html"
    assert main(["-q", "report", str(sandbox_ledger), "--html", str(page)]) == 0
    text = page.read_text()
    assert PACE_COLOUR in text  # the step line (text is drawn as paths, so no label to find)


def test_ledger_text_is_escaped_never_markup() -> None:
    """A job name or error code with markup in it is shown as text."""
    s = LedgerSummary(job="<img src=x onerror=alert(1)>")
    s.error_codes["<b>1</b>"] += 1
    page = render(s, Timeline(), "ledger")
    assert "<img" not in page
    assert "<b>1</b>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_the_charts_render_in_headless_chromium(sandbox_ledger: Path, tmp_path: Path) -> None:
    """Chromium opens the page from disk with the network off and its screenshot shows the
    charts: thousands of pixels in the chart colour (text-only would have none)."""
    browser = chromium()
    page, shot = tmp_path / "report.html", tmp_path / "shot.png"
    assert main(["-q", "report", str(sandbox_ledger), "--html", str(page)]) == 0
    subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    import numpy as np  # noqa: PLC0415 - matplotlib's own dependency
    from matplotlib.image import imread  # noqa: PLC0415 - reads the PNG the browser wrote

    pixels = np.asarray(imread(str(shot)))[:, :, :3]
    want = np.array([int(SENT_COLOUR[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    close = np.all(np.abs(pixels - want) < 0.02, axis=2)
    assert int(close.sum()) > 20_000
    rows = np.flatnonzero(np.any(close, axis=1))
    assert int(rows.max() - rows.min()) > 800  # the charts run down the page, not one blob


def test_the_page_says_why_each_recipient_not_attempted_is_not_sent() -> None:
    """Recipients not attempted are in the page's "not sent, and why" with the table's words:
    those a carrier's daily cap moved out of their group with the code and when a rerun
    sends them, the rest as a plain rerun's; every valid recipient is accounted for."""
    waiting = {p: Waiting("g4", "40016", 1_796_544_000.0) for p in numbers(2)}
    states = RecipientCounts(10, 5, 0, 0, 0, 5, input_read=True)
    page = render(
        LedgerSummary(recipient_states=states, waiting=ResetHolds(waiting)), Timeline(), "ledger"
    )
    capped = (
        f"{error_words('40016')}: moved out of their sent group; a rerun from "
        "2026-12-06T08:00Z sends them"
    )
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    assert f"<td>not attempted</td><td></td><td>2</td><td>{html.escape(capped)}</td>" in rows
    plain = (
        "<td>not attempted</td><td></td><td>3</td><td>not sent yet: a plain rerun sends them</td>"
    )
    assert plain in rows


async def test_the_errors_table_says_what_the_runs_policy_did(jobs: JobFactory) -> None:
    """The errors table's "bulk-mms does" is what the run's error policy did about each code:
    40002 refused under an [errors] that says ``fail`` is ``fail`` (not the built-in
    ``slow``); a failed line written before actions were kept (40011) reads the built-in
    table's."""
    jobs.people(2)
    job = jobs.job(extra="group_size = 1")
    settings = replace(FAST, error_policy=load_policy({"40002": "fail"}))
    spam = ApiError("40002", "Blocked as spam - temporary", "")
    refused = numbers(2)[0]

    def answer(g: Group, n: int) -> SendReceipt | Rejected:
        if g.to == (refused,):
            return Rejected("the API refused the request", status=400, errors=(spam,))
        return ok_receipt(g, n)

    await run_job(job, settings, FakeClient(answer), clock=FakeClock())
    store = open_store(job.ledger, "append")
    store.append_now(Failed("older", to=("+12125559999",), status=400, code="40011"))
    store.close_sync()
    page = render(summarize(job.ledger), Timeline(), "ledger")
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    assert (
        f"<td>{html.escape(error_words('40002'))}</td><td>1</td><td>40002</td><td>fail</td>" in rows
    )
    assert (
        f"<td>{html.escape(error_words('40011'))}</td><td>1</td><td>40011</td><td>slow</td>" in rows
    )


def test_a_long_campaigns_waits_and_429s_are_drawn_a_point_a_bar() -> None:
    """20,000 sends, each with a wait_seconds and a 429: the timeline draws at most one
    marker a bar (MAX_BINS), not one a send, and a bar's point is its largest wait."""
    start = 1_796_544_000.0
    sent = [start + i * 0.05 for i in range(20_000)]
    waits = [(at, 900.0 if i == 7_777 else 0.5) for i, at in enumerate(sent)]
    timeline = Timeline(sent=sent, waits=waits, limited=[(at, 1) for at in sent])
    page = render(LedgerSummary(), timeline, "ledger")
    # a marker a bar for each series, and the ticks' and the text's glyphs (not 40,000)
    assert page.count("<use") < 2 * MAX_BINS + 500
    width = (sent[-1] - start + 1) / MAX_BINS
    xs, ys = _most_per_bin(waits, start, width)
    assert len(xs) == MAX_BINS
    assert max(ys) == 900.0
    assert ys.count(900.0) == 1


async def test_the_page_names_the_carriers_codes_of_those_who_did_not_get_it(
    jobs: JobFactory,
) -> None:
    """Carrier codes arrive in delivery reports, not in answers to the send: the page counts
    the recipients who did not get the message (as the text report's "did not get" does) and
    lists each code their delivery reports carried, with its meaning and what bulk-mms does;
    the JSON keeps them as ``delivery_error_codes``."""
    jobs.people(4)
    job = jobs.job(extra="group_size = 2")
    client = FakeClient()
    await run_job(job, FAST, client, clock=FakeClock())
    store = open_store(job.ledger, "append")
    reports = [
        ("delivery_failed", "40001"),
        ("delivery_failed", "40001"),
        ("sending_failed", "40014"),
    ]
    members = [(g.id, p) for g in client.calls for p in g.to]
    for (gid, phone), (status, code) in zip(members, reports, strict=False):
        err = ApiError(code, MEANINGS[code], "")
        report = RecipientStatus(phone, status, errors=(err,))
        store.append_now(status_event(gid, report, source="track", time=""))
    gid, phone = members[-1]
    store.append_now(
        status_event(gid, RecipientStatus(phone, "delivered"), source="track", time="")
    )
    store.close_sync()
    s = summarize(job.ledger)
    assert s.as_dict()["delivery_error_codes"] == {"40001": 2, "40014": 1}
    page = render(s, Timeline(), "ledger")
    assert "<div><b>3</b><span>recipients who did not get it</span></div>" in page
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    assert f"<td>{html.escape(error_words('40001'))}</td><td>2</td><td>40001</td><td></td>" in rows
    assert (
        f"<td>{html.escape(error_words('40014'))}</td><td>1</td><td>40014</td><td>retry</td>"
        in rows
    )


def test_the_page_says_how_many_were_texted_twice_as_the_table_does() -> None:
    """Recipients texted twice (moved, sent again, then reached by the first message) are
    named on the page in the table's words; a page with none says nothing of it."""
    s = LedgerSummary(recipient_states=RecipientCounts(4, 4, 0, 0, 0, 0, input_read=True))
    s.delivery["delivered"] = 4
    assert "texted twice" not in render(s, Timeline(), "ledger")
    s.texted_twice = 2
    (line,) = [ln.strip() for ln in format_text(s, "ledger").splitlines() if "texted twice" in ln]
    assert html.escape(line) in render(s, Timeline(), "ledger")
