"""``report --html``: the morning report, one self-contained page (no network needed to open it).

The numbers are :func:`~bulk_mms.report.summarize`'s (the one fold); the page adds what only a
picture shows: the campaign's timeline (groups sent per second, each sender's pace as the
pacer set it, ``wait_seconds``, 429s and the runs' starts), the outcomes and the delivery
funnel, and each sender's share. The charts are matplotlib's, drawn to SVG with text as paths
(no font to fetch) and put inline; matplotlib rather than hand-drawn SVG because axes, ticks,
scales and legends are its job and not ours. Every value from the ledger is HTML-escaped: a
ledger's text is data, never markup. Errors and reasons are said in words
(:mod:`bulk_mms.words`), and every count names its unit.
"""

from __future__ import annotations

import datetime as dt
import html
import io
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from bulk_mms.clock import instant
from bulk_mms.codes import MEANINGS
from bulk_mms.csvfile import write_whole
from bulk_mms.ledger import Event, Location, display, read_events
from bulk_mms.ledger.events import Failed, InDoubt, Paced, RunStarted, Sent
from bulk_mms.report import (
    LedgerSummary,
    cost_words,
    not_attempted_reasons,
    summarize,
    texted_twice_words,
)
from bulk_mms.words import count, error_words

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The series' colours (matplotlib's default cycle, named for the test that looks for them).
SENT_COLOUR = "#1f77b4"
WAIT_COLOUR = "#ff7f0e"
LIMITED_COLOUR = "#d62728"
PACE_COLOUR = "#2ca02c"
#: At most this many bars on the timeline: a long campaign's seconds are binned.
MAX_BINS = 600


class Timeline(msgspec.Struct):
    """What happened when: read from the ledger's outcome events in one pass."""

    #: (time, groups sent) per sent event; (time, wait_seconds) where the API said.
    sent: list[float] = msgspec.field(default_factory=list)
    waits: list[tuple[float, float]] = msgspec.field(default_factory=list)
    #: (time, 429s) for every outcome that met any.
    limited: list[tuple[float, int]] = msgspec.field(default_factory=list)
    runs: list[float] = msgspec.field(default_factory=list)
    #: Each sender's pace as the pacer set it: (time, rate) steps, and what the rate counts.
    pace: dict[str, list[tuple[float, float]]] = msgspec.field(default_factory=dict)
    pace_per: str = "request"
    #: Groups sent by each sender.
    senders: Counter[str] = msgspec.field(default_factory=Counter)

    @classmethod
    def read(cls, stream: Iterable[Event]) -> Timeline:
        t = cls()
        for ev in stream:
            match ev:
                case Sent():
                    at = instant(ev.time)
                    if at is None:
                        continue
                    t.sent.append(at)
                    t.senders[ev.from_ or "?"] += 1
                    if ev.wait_seconds is not None:
                        t.waits.append((at, ev.wait_seconds))
                    if ev.rate_limited:
                        t.limited.append((at, ev.rate_limited))
                case Failed() | InDoubt():
                    if ev.rate_limited and (at := instant(ev.time)) is not None:
                        t.limited.append((at, ev.rate_limited))
                case RunStarted():
                    if (at := instant(ev.time)) is not None:
                        t.runs.append(at)
                case Paced():
                    if (at := instant(ev.time)) is not None:
                        t.pace.setdefault(ev.sender, []).append((at, ev.rate))
                        t.pace_per = ev.per
        return t


def write_html(location: Location, path: Path, summary: LedgerSummary | None = None) -> None:
    """Write the report of the ledger at ``location`` (already ``summary``-ed, or not) to
    ``path``, whole or not at all (:func:`~bulk_mms.csvfile.write_whole`).

    Raises:
        LedgerError: the ledger cannot be read. OSError: the page cannot be written, or
            ``path`` is a ledger.
    """
    summary = summary if summary is not None else summarize(location)
    timeline = Timeline.read(read_events(location, skip_status=True))
    page = render(summary, timeline, display(location))
    write_whole(path, lambda f: f.write(page))


def render(s: LedgerSummary, t: Timeline, name: str) -> str:
    """The whole page."""
    r = s.recipient_states
    delivered = s.delivery.get("delivered", 0)
    tiles = [
        ("valid recipients", f"{r.valid:,}"),
        ("recipients sent", f"{r.sent:,}"),
        ("recipients delivered", f"{delivered:,}"),
        ("recipients failed for good", f"{r.failed - r.opted_out:,}"),
        ("recipients who opted out (STOP)", f"{r.opted_out:,}"),
        ("recipients who did not get it", f"{len(s.undelivered):,}"),
        ("recipients in doubt", f"{r.in_doubt:,}"),
        ("cost", ", ".join(f"{v:.4f} {k}" for k, v in sorted(s.cost.items())) or "none"),
    ]
    span = f"{_when(s.first_time)} to {_when(s.last_time)}" if s.first_time else "no events"
    body = [
        f"<h1>{_e(s.job or 'bulk-mms')}: the morning report</h1>",
        f"<p class=meta>ledger {_e(name)} &middot; {count(s.runs, 'run')} &middot; {_e(span)}</p>",
        "<div class=tiles>"
        + "".join(f"<div><b>{_e(v)}</b><span>{_e(k)}</span></div>" for k, v in tiles)
        + "</div>",
        "<h2>Timeline</h2>",
        _figure(
            _timeline_chart(t),
            "timeline",
            "groups sent per second, each sender's pace, wait_seconds and 429s",
        ),
        "<h2>Outcomes and delivery</h2>",
        _figure(_outcomes_chart(s), "outcomes", "recipients by state, and the delivery funnel"),
        f"<p>{_e(texted_twice_words(s))}</p>" if s.texted_twice else "",
        "<h2>Senders</h2>",
        _figure(_senders_chart(t), "senders", "groups sent by each number"),
        "<h2>Cost</h2>",
        _table(
            ("currency", "amount", "final", "estimated"),
            [
                (k, f"{final + est:.4f}", f"{final:.4f}", f"{est:.4f}")
                for k, (final, est) in sorted(s.cost_parts.items())
            ],
        ),
        f"<p>{_e(cost_words(s))}</p>",
        "<h2>Not sent, and why</h2>",
        _table(
            ("state", "groups", "recipients", "why"),
            [
                *(
                    (state.replace("_", " "), f"{g:,}", f"{n:,}", why)
                    for (state, why), (g, n) in s.unsent.items()
                ),
                *(("not attempted", "", f"{n:,}", why) for n, why in not_attempted_reasons(s)),
            ],
        ),
        "<h2>Errors</h2>",
        _codes_table("groups whose tries ended on it", s.error_codes, s.error_actions),
        "<p>Carriers' codes, in the delivery reports of those who did not get it:</p>",
        _codes_table("recipients", s.delivery_codes, s.delivery_actions),
        "<h2>Rejected rows</h2>",
        _table(("reason", "rows"), [(k, f"{n:,}") for k, n in s.rejected_reasons.most_common()]),
        f"<p class=meta>Left out on purpose, not losses: "
        f"{_e(count(s.duplicate_rows, 'duplicate row'))} (numbers in the job already: counted "
        f"by the latest run, nobody sent twice), {_e(count(s.rows.suppressed, 'row'))} on the "
        f"suppression list, {_e(count(s.rows.excluded, 'row'))} already sent "
        "(--exclude-sent)</p>",
    ]
    return _PAGE.format(title=_e(f"bulk-mms report: {s.job or name}"), body="\n".join(body))


# -- charts ----------------------------------------------------------------------------------


def _new(height: float = 3.2) -> Figure:
    from matplotlib.figure import Figure  # noqa: PLC0415 - only the HTML report needs it

    return Figure(figsize=(10, height), layout="constrained")


def _svg(fig: Figure) -> str:
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None})
    text = out.getvalue()
    return text[text.index("<svg") :]  # the page has its own doctype


def _timeline_chart(t: Timeline) -> Figure | None:
    if not t.sent:
        return None
    fig = _new(3.6)
    ax = fig.add_subplot()
    start = min(t.sent)
    end = max(t.sent)
    width = max(1.0, (end - start + 1) / MAX_BINS)
    bins = [0] * (int((end - start) / width) + 1)
    for at in t.sent:
        bins[int((at - start) / width)] += 1
    xs = [i * width for i in range(len(bins))]
    rates = [b / width for b in bins]
    ax.bar(xs, rates, width=width, align="edge", color=SENT_COLOUR, label="groups sent/s")
    ax.set_xlabel(f"seconds since {_when_epoch(start)}")
    ax.set_ylabel("per second")
    for i, (sender, steps) in enumerate(sorted(t.pace.items())):
        # each step holds until the next, and the last until the campaign's end (or its own
        # time, when the pace last changed after the last send)
        xs_p = [at - start for at, _ in steps] + [max(end, steps[-1][0]) - start]
        ys_p = [rate for _, rate in steps] + [steps[-1][1]]
        ax.step(
            xs_p,
            ys_p,
            where="post",
            color=PACE_COLOUR,
            linewidth=1.5,
            alpha=1.0 if i == 0 else 0.6,
            zorder=3,
            label=f"pace of {sender} ({t.pace_per}s/s)" if i < 3 else None,
        )
    for run in t.runs:
        if start <= run <= end:
            ax.axvline(run - start, color="#888888", linestyle=":", linewidth=1)
    if t.limited:
        limited_at, _ = _most_per_bin(t.limited, start, width)
        ax.scatter(
            limited_at,
            [0] * len(limited_at),
            marker="v",
            color=LIMITED_COLOUR,
            label="429s",
            zorder=3,
        )
    handles, labels = ax.get_legend_handles_labels()
    if t.waits:
        ax2 = ax.twinx()
        ax2.plot(
            *_most_per_bin(t.waits, start, width),
            ".",
            color=WAIT_COLOUR,
            markersize=3,
            label="wait_seconds",
        )
        ax2.set_ylabel("wait_seconds")
        ax2.set_ylim(bottom=0, top=max(1.0, *(w for _, w in t.waits)) * 1.1)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right")
    return fig


def _most_per_bin(
    points: Iterable[tuple[float, float]], start: float, width: float
) -> tuple[list[float], list[float]]:
    """The largest value of ``points`` (time, value) in each bar's span of the timeline
    (``width`` seconds from ``start``) that has one, at the span's middle: a point a bar, at
    most :data:`MAX_BINS` a series however many groups went (one marker a send made a
    million-recipient page 9 MB of SVG), and a spike never averaged away."""
    top: dict[int, float] = {}
    for at, value in points:
        i = int((at - start) / width)
        if i not in top or value > top[i]:
            top[i] = value
    bins = sorted(top)
    return [(i + 0.5) * width for i in bins], [top[i] for i in bins]


def _outcomes_chart(s: LedgerSummary) -> Figure | None:
    r = s.recipient_states
    if not r.valid:
        return None
    fig = _new()
    left, right = fig.subplots(1, 2)
    states = [(k, v) for k, v in r.as_dict().items() if k != "valid"]
    left.barh([k.replace("_", " ") for k, _ in states], [v for _, v in states], color=SENT_COLOUR)
    left.invert_yaxis()
    left.set_title("recipients by state")
    delivered = s.delivery.get("delivered", 0)
    funnel = [("valid", r.valid), ("sent", r.sent), ("delivered", delivered)]
    right.bar([k for k, _ in funnel], [v for _, v in funnel], color=SENT_COLOUR)
    for i, (_, v) in enumerate(funnel):
        right.annotate(f"{v:,}", (i, v), ha="center", va="bottom")
    right.set_title("delivery funnel")
    return fig


def _senders_chart(t: Timeline) -> Figure | None:
    if not t.senders:
        return None
    fig = _new(max(1.6, 0.4 * len(t.senders) + 1))
    ax = fig.add_subplot()
    top = t.senders.most_common(20)
    total = sum(t.senders.values())
    ax.barh([s for s, _ in top], [n for _, n in top], color=SENT_COLOUR)
    ax.invert_yaxis()
    for i, (_, n) in enumerate(top):
        ax.annotate(f" {n / total:.0%}", (n, i), va="center")
    ax.set_xlabel("groups sent")
    return fig


# -- page ------------------------------------------------------------------------------------


def _figure(fig: Figure | None, name: str, caption: str) -> str:
    if fig is None:
        return f"<p class=empty>nothing to draw yet ({_e(caption)})</p>"
    return f"<figure id={name}>{_svg(fig)}<figcaption>{_e(caption)}</figcaption></figure>"


def _codes_table(counted: str, codes: Counter[str], actions: Mapping[str, set[str]]) -> str:
    """Error codes, most frequent first: each in words, how many it ``counted``, the code and
    what the error policy did about it."""
    head = ("what happened", counted, "code", "bulk-mms does")
    rows: list[tuple[str, ...]] = [
        (error_words(code), f"{n:,}", _code(code), ", ".join(sorted(actions.get(code, ()))))
        for code, n in codes.most_common()
    ]
    return _table(head, rows)


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    if not rows:
        return "<p class=empty>none</p>"
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _code(code: str) -> str:
    """A code as the table shows it: Telnyx's and HTTP's; bulk-mms's own kinds are words only."""
    return code if code.isdigit() or code in MEANINGS else ""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _when(iso_time: str | None) -> str:
    at = instant(iso_time) if iso_time else None
    return _when_epoch(at) if at is not None else "?"


def _when_epoch(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8>
<meta name=viewport content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.6em; margin-bottom: 0.2em; }}
h2 {{ font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }}
.meta {{ color: #666; margin-top: 0; }}
.tiles {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr));
          gap: 0.6em; }}
.tiles div {{ background: #f4f6f8; border-radius: 6px; padding: 0.7em; }}
.tiles b {{ display: block; font-size: 1.4em; }}
.tiles span {{ color: #666; font-size: 0.9em; }}
figure {{ margin: 0; }} figure svg {{ width: 100%; height: auto; }}
figcaption, .empty {{ color: #666; font-size: 0.9em; }}
table {{ border-collapse: collapse; }}
td, th {{ border-bottom: 1px solid #eee; padding: 0.25em 1em 0.25em 0; text-align: left; }}
</style></head>
<body>
{body}
</body></html>
"""
