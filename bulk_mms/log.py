"""structlog configuration: readable lines on a terminal, one JSON object per line otherwise.

Events are dotted names with flat keys (``group.sent``, ``send.retry_scheduled``,
``job.finished``). A last processor scrubs the API key from every value, as a second line of
defence: no code path logs headers, but a key that slips into an exception text must still never
reach the log.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from contextlib import nullcontext
from typing import Any, TextIO

import orjson
import structlog

from bulk_mms.client import MIN_SECRET, REDACTED
from bulk_mms.config import API_KEY_ENV


def _scrubber(secret: str | None) -> structlog.types.Processor:
    def scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if secret and len(secret) >= MIN_SECRET:
            for key, value in event.items():
                if isinstance(value, str) and secret in value:
                    event[key] = value.replace(secret, REDACTED)
        return event

    return scrub


def scrub(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` with the API key (``TELNYX_API_KEY``) replaced in every string value, in
    place."""
    _scrubber(os.environ.get(API_KEY_ENV))(None, "", event)
    return event


def scrub_text(text: str) -> str:
    """``text`` with the API key (``TELNYX_API_KEY``) replaced, as :func:`scrub` does."""
    return str(scrub({"text": text})["text"])


def _with_message(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Give a JSON line its ``message``: the event's name and its fields, as a person reads
    them (``job.progress: rows_done=120 rows_total=400``)."""
    if "message" not in event:
        fields = " ".join(
            f"{k}={v}" for k, v in event.items() if k not in ("event", "level", "timestamp")
        )
        event["message"] = f"{event.get('event')}: {fields}" if fields else str(event.get("event"))
    return event


def json_dumps(obj: Any, **_: Any) -> str:
    """``obj`` as one JSON line. A string holding bytes the locale could not decode (a file
    name from the command line under ``LANG=C``, or one not in UTF-8), which orjson refuses,
    is written as the name those bytes spell in UTF-8, any byte that spells none escaped
    (``\\xff``): a log line never stops the command."""
    try:
        return orjson.dumps(obj, default=str).decode()
    except TypeError:  # orjson: "str is not valid UTF-8: surrogates not allowed"
        return orjson.dumps(_decoded(obj), default=str).decode()


def _decoded(obj: Any) -> Any:
    """``obj`` with every string's undecoded bytes decoded as UTF-8 (:func:`json_dumps`)."""
    if isinstance(obj, str):
        return obj.encode(errors="surrogateescape").decode(errors="backslashreplace")
    if isinstance(obj, dict):
        return {_decoded(k): _decoded(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_decoded(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return _decoded(os.fspath(obj))
    return obj


class BarSafeStream:
    """A text stream that lifts any progress bar on it while a log line is written.

    structlog's WriteLogger writes each line (newline included) in one call, so a line is
    never split by a redraw of the bar.
    """

    def __init__(self, inner: TextIO) -> None:
        self.inner = inner

    def write(self, text: str) -> int:
        bars = sys.modules.get("tqdm")  # no bar is up unless tqdm was loaded to draw one
        lifted = bars.tqdm.external_write_mode(file=self.inner) if bars else nullcontext()
        with lifted:
            n = self.inner.write(text)
            self.inner.flush()
        return n

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()


def use_color(stream: TextIO, *, no_color: bool = False) -> bool:
    """Color only on a terminal, never with ``--no-color`` or ``NO_COLOR`` set (no-color.org)."""
    return stream.isatty() and not no_color and not os.environ.get("NO_COLOR")


def configure(
    verbosity: int = 0,
    *,
    stream: TextIO | None = None,
    json: bool | None = None,
    no_color: bool = False,
) -> None:
    """Set up logging for the CLI.

    Args:
        verbosity: -1 quiet (warnings and errors), 0 normal (info), 1 verbose (debug).
        stream: where log lines go; stderr by default, so stdout stays for results.
        json: force JSON lines (True) or console lines (False); by default JSON unless the
            stream is a terminal. A JSON line has ``event``, ``level``, ``timestamp`` and
            ``message`` (the event and its fields in words, unless the call gave one).
        no_color: plain console lines even on a terminal (also when ``NO_COLOR`` is set).
    """
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=json_dumps)
        if json
        else structlog.dev.ConsoleRenderer(colors=use_color(stream, no_color=no_color))
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *([_with_message] if json else []),  # before the scrubber, which then scrubs it
            _scrubber(os.environ.get(API_KEY_ENV)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(BarSafeStream(stream)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
