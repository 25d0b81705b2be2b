"""What every command needs: its settings and API key, the client and its endpoint's
warnings, the files it must not overwrite, and its JSON answer."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

import orjson
import structlog
from msgspec.structs import replace

from bulk_mms.client import AiohttpMmsClient
from bulk_mms.config import (
    API_KEY_ENV,
    JobConfig,
    Settings,
    cap_concurrency,
    check_settings,
    load_settings,
    sends_key_in_clear,
)
from bulk_mms.config.folders import sandbox_list, user_folder
from bulk_mms.csvfile import check_output, is_ledger
from bulk_mms.errors import ConfigError
from bulk_mms.ledger import Location, named
from bulk_mms.ledger.jsonl import NOT_A_FILE

#: A database for the ledger of every run that names none on the command line.
LEDGER_URL_ENV = "BULK_MMS_LEDGER_URL"


#: Seconds given to requests in flight after the first signal, beyond the request timeout.
DRAIN_GRACE_S = 5.0


def sealed(settings: Settings) -> Settings:
    """The settings for a sandbox command: the sandbox's own suppression list (its opt-out
    rule refuses numbers ending in 0300), never the account's, whatever the settings name."""
    return replace(settings, suppression_file=sandbox_list())


def with_ledger(job: JobConfig, where: Location) -> JobConfig:
    """The job with its ledger somewhere else (``--ledger``, ``BULK_MMS_LEDGER_URL``): that
    one every day (:meth:`~bulk_mms.config.job.JobConfig.ledger_on`)."""
    if isinstance(where, Path):
        return replace(job, ledger=where, database=None, ledger_template=None)
    return replace(job, database=str(named(where, job.name)), ledger_template=None)


def refuse_undated_database(job: JobConfig, where: Location, setting: str) -> None:
    """A job whose ledger is a new one each day (``{date}``) refuses a database ledger given
    without a name (``--ledger``, ``BULK_MMS_LEDGER_URL``): it would be named after the job
    alone, so the second day would find the first day's campaign (another input: refused; the
    same input: nothing left, exit 0, and nobody texted that day).

    Raises:
        ConfigError: naming ``setting`` and what to write instead (exit 2).
    """
    if not job.dated_ledger or not isinstance(where, str) or named(where, job.name) == where:
        return
    raise ConfigError(
        setting,
        "names a database ledger with no date, and the job's ledger holds {date} (a new "
        "campaign each day): put the database in the job, ledger = "
        '"postgresql://...?ledger={name}-{date}", or name one ledger for every day with '
        "?ledger=NAME",
        source=job.path,
    )


#: The options that name a file a command writes: (option, its attribute on the arguments).
OUTPUT_OPTIONS: Final = (
    ("--rejected-csv", "rejected_csv"),
    ("--failed-csv", "failed_csv"),
    ("--recipients-csv", "recipients_csv"),
    ("--html", "html"),
    ("--metrics-file", "metrics_file"),
)


#: The files a command line names that no output may replace: (attribute, what it is).
_NAMED_FILES: Final = (
    ("job", "the job file"),
    ("input", "the input given to --input"),
    ("ledger", "the ledger given on the command line"),
    ("exclude_sent", "a ledger given to --exclude-sent"),
)


def refuse_overwrites(
    args: argparse.Namespace,
    keep: Iterable[tuple[str, Location | None]] = (),
    *,
    writes: Iterable[tuple[str, Path | None]] = (),
) -> None:
    """Refuse, before anything is read, sent or written, every file the command would write
    (its output options, and ``writes``: (setting, path) of the settings' files it writes)
    when it is a file to keep: one the command line names (the job file, the settings, a
    ledger, ``--input``), one of ``keep`` ((what it is, where): the job's input and ledger),
    another output's file, or any bulk-mms ledger (:func:`~bulk_mms.csvfile.check_output`).

    Raises:
        ConfigError: naming the option or setting and the path (exit 2). A refused
            ``--metrics-file`` is then not written either (``args.metrics`` is dropped).
    """
    kept = [(what, p) for what, p in [*_named_files(args), *keep] if isinstance(p, Path)]
    outputs = [(flag, getattr(args, attr, None)) for flag, attr in OUTPUT_OPTIONS]
    for option, path in [*writes, *outputs]:
        if path is None:
            continue
        try:
            check_output(option, path, kept)
        except ConfigError:
            if option == "--metrics-file":
                args.metrics = None
            raise
        kept.append((f"the file {option} names", path))  # one file, two outputs: one lost


def _named_files(args: argparse.Namespace) -> list[tuple[str, Location | None]]:
    """The files the command line names, and the settings file (:func:`find_config`)."""
    named_: list[tuple[str, Location | None]] = []
    for attr, what in _NAMED_FILES:
        value = getattr(args, attr, None)
        named_ += [(what, v) for v in (value if isinstance(value, list) else [value])]
    if hasattr(args, "config"):
        named_.append(("the settings file", find_config(args.config)))
    return named_


def check_ledger_file(setting: str, where: Location, *, source: str | Path | None = None) -> None:
    """Refuse a ledger file to write into that holds something else: it must be new, empty
    or a bulk-mms ledger (opening one cuts an unfinished last line, the mark of a crash), never
    a folder, a device or a pipe (a dry run is refused as the run would be).

    Raises:
        ConfigError: naming ``setting`` (with ``source``, the file that holds it: a job's
            ``ledger``) and the file (exit 2); nothing is written.
    """
    if not isinstance(where, Path):
        return
    try:
        if where.exists() and not where.is_file():
            raise ConfigError(setting, f"{where} {NOT_A_FILE}", source=source)
        holds = where.is_file() and where.stat().st_size > 0
        if holds:
            where.open("rb").close()  # one it may not read is not another file
    except OSError:
        return  # opening it says why
    if holds and not is_ledger(where):
        raise ConfigError(
            setting,
            f"{where} is not a bulk-mms ledger: it would be written into; name a new file",
            source=source,
        )


def warn_cleartext(base_url: str) -> None:
    """Warn when the API key would cross the network unencrypted (a run, and its dry run)."""
    if sends_key_in_clear(base_url):
        structlog.get_logger(__name__).warning(
            "config.cleartext_base_url",
            base_url=base_url,
            hint="plain http to a host that is not this machine: the API key would cross the "
            "network unencrypted; use https",
        )


def client_for(settings: Settings, base_url: str, key: str) -> AiohttpMmsClient:
    warn_cleartext(base_url)
    return AiohttpMmsClient(
        base_url,
        key,
        connect_timeout=settings.connect_timeout,
        request_timeout=settings.request_timeout,
        max_connections=settings.concurrency,
    )


def json_text(data: dict[str, object], note: tuple[str, str] | None = None) -> str:
    """A command's JSON answer: indented for a person; under ``--log-json`` (``note`` given as
    its event and message) one line that is also a note, the answer's keys beside them."""
    if note is None:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    event, message = note
    return (
        orjson.dumps({"event": event, "level": "info", "message": message, **data}).decode() + "\n"
    )


#: Where the settings are looked for, first found wins (documented in the README).
CONFIG_ENV = "BULK_MMS_CONFIG"


CONFIG_HELP = (
    f"account settings (TOML; see config.example.toml). Default: ${CONFIG_ENV}, else "
    "./config.toml, else ~/.config/bulk-mms/config.toml, if there"
)


def find_config(given: Path | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The settings file: ``--config``, else ``$BULK_MMS_CONFIG``, else ``./config.toml``, else
    ``$XDG_CONFIG_HOME/bulk-mms/config.toml`` (``~/.config/...``), whichever comes first.

    A path given explicitly must exist (the loader says so); the defaults only if they do.
    """
    env = os.environ if env is None else env
    if given is not None:
        return given
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    for candidate in (Path("config.toml"), user_folder("config", env) / "config.toml"):
        if candidate.is_file():
            return candidate
    return None


def settings_for(args: argparse.Namespace) -> Settings:
    path = find_config(args.config)
    settings = load_settings(path)
    if path is not None and args.config is None:  # found, and read
        structlog.get_logger(__name__).info("config.found", path=str(path))
    if args.base_url is not None:  # "" too: a variable left unset must not mean the live API
        settings = replace(settings, base_url=args.base_url)
    if getattr(args, "rate", None) is not None:
        if args.command == "track":
            settings = replace(settings, track=replace(settings.track, rate=args.rate))
        else:
            settings = replace(settings, rate=args.rate)
    if getattr(args, "concurrency", None) is not None:
        settings = replace(settings, concurrency=args.concurrency)
    try:  # the one check of each bound (config.settings: RATE, TRACK_RATE, CONCURRENCY)
        checked = check_settings(settings)
    except ConfigError as exc:  # a value from the command line is named as it was given
        name = exc.setting.rsplit(".", 1)[-1]  # limits.rate, track.rate: --rate
        if getattr(args, name, None) is not None:
            raise ConfigError(f"--{name.replace('_', '-')}", exc.message) from None
        raise
    return cap_concurrency(checked)


def api_key(args: argparse.Namespace) -> str:
    if args.sandbox:
        return "sandbox-key"
    key = os.environ.get(API_KEY_ENV, "")
    if not key.strip():
        raise ConfigError(API_KEY_ENV, "is not set: export your Telnyx API key (or use --sandbox)")
    if key != key.strip() or any(ch in key for ch in "\r\n\t "):
        raise ConfigError(API_KEY_ENV, "contains whitespace; check how it was exported")
    if not (key.isascii() and key.isprintable()):  # no header could carry it
        raise ConfigError(
            API_KEY_ENV,
            "holds a character that is not printable ASCII; check how it was exported",
        )
    return key
