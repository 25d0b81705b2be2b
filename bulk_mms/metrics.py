"""``--metrics-file``: what a cron run tells its monitoring, in the Prometheus textfile format.

node_exporter's textfile collector reads every ``*.prom`` file of a directory; a run given
``--metrics-file /var/lib/node_exporter/textfile/bulk_mms.prom`` leaves there, once it ends
(whatever its exit code), its exit code, start and end times, recipients by state (and of the
failed, those who opted out), rate, the 95th percentile of ``wait_seconds``, 429s and cost.
prometheus_client writes it (a temporary file renamed over the old one: the collector never
reads half a file).

``bulk_mms_last_success_timestamp_seconds`` is the one an alert needs ("the nightly job has not
succeeded in 26 h"): a run that fails carries the last success over from the file it replaces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import msgspec
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bulk_mms.clock import Clock, SystemClock
from bulk_mms.csvfile import write_whole
from bulk_mms.errors import ConfigError
from bulk_mms.summary import JobSummary
from bulk_mms.track import TrackResult

PREFIX = "bulk_mms"
LAST_SUCCESS = f"{PREFIX}_last_success_timestamp_seconds"


class CommandMetrics(msgspec.Struct):
    """One command's metrics, filled as it runs and written when it ends (:meth:`write`)."""

    path: Path
    command: str
    clock: Clock = msgspec.field(default_factory=SystemClock)
    #: The job (or ledger) the command worked on: the ``name`` label.
    name: str = ""
    started: float = 0.0
    summary: JobSummary | None = None
    track: TrackResult | None = None

    def __post_init__(self) -> None:
        self.started = self.clock.wall()

    def write(self, exit_code: int) -> None:
        """Write the file for a command that ended with ``exit_code``.

        Raises:
            ConfigError: the file cannot be written (naming ``--metrics-file``).
        """
        ended = self.clock.wall()
        out = _Gauges({"command": self.command, "name": self.name})
        out.set("last_exit_code", "Exit code of the last run (0: done; see the README).", exit_code)
        out.set("last_start_timestamp_seconds", "When the last run started.", self.started)
        out.set("last_end_timestamp_seconds", "When the last run ended.", ended)
        success = ended if exit_code == 0 else _previous(self.path, out.labels)
        if success is not None:
            out.set("last_success_timestamp_seconds", "When a run last ended with exit 0.", success)
        if (s := self.summary) is not None:
            out.run(s)
        if (t := self.track) is not None:
            for status, n in sorted(t.statuses.items()):
                out.set("delivery_recipients", "Recipients by delivery status.", n, status=status)
            out.set("delivery_pending", "Recipients not in a final status yet.", t.pending)
        page = generate_latest(out.registry).decode()
        try:
            write_whole(self.path, lambda f: f.write(page))  # whole, or as it was
        except OSError as exc:
            raise ConfigError(
                "--metrics-file", f"cannot write {self.path}: {exc.strerror or exc}"
            ) from None


class _Gauges:
    """A registry of gauges that share the command's labels. Private."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.registry = CollectorRegistry()
        self.labels = labels
        self._made: dict[str, Gauge] = {}

    def set(self, name: str, doc: str, value: float, **extra: str) -> None:
        gauge = self._made.get(name)
        if gauge is None:
            names = [*self.labels, *extra]
            gauge = Gauge(f"{PREFIX}_{name}", doc, names, registry=self.registry)
            self._made[name] = gauge
        gauge.labels(**self.labels, **extra).set(value)

    def run(self, s: JobSummary) -> None:
        """What a ``run`` did, and where its ledger stands."""
        if (r := s.recipients) is not None:
            for state, n in r.as_dict().items():
                self.set(
                    "recipients", "The ledger's recipients by state (valid: all).", n, state=state
                )
            self.set(
                "recipients_opted_out",
                "Of the ledger's failed recipients, those who opted out (STOP): not a failure "
                "of the run.",
                r.opted_out,
            )
        self.set("groups_sent", "Groups the last run sent.", s.sent_groups)
        self.set("recipients_sent", "Recipients the last run sent.", s.sent_recipients)
        self.set("groups_failed", "Groups the last run recorded failed.", s.failed_groups)
        self.set("rows_rejected", "Input rows rejected: a bad number, a broken row.", s.lost_rows)
        self.set(
            "send_rate_groups_per_second",
            "Requests per second while sending.",
            s.achieved_rate or 0.0,
        )
        self.set("wait_seconds_p95", "95th percentile of wait_seconds.", s.wait_seconds_p95 or 0.0)
        self.set("rate_limited_responses", "429 answers in the last run.", s.rate_limited)
        self.set("duration_seconds", "How long the last run took.", s.duration_s)
        for currency, amount in sorted(s.cost.items()):
            self.set("cost", "What the last run's sends cost.", float(amount), currency=currency)


def _previous(path: Path, labels: Mapping[str, str]) -> float | None:
    """The last success the file being replaced recorded for these labels, if any."""
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        text = path.read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
    return None
