"""Job and settings files: every mistake is a one-line ConfigError naming file and setting."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from bulk_mms.cli import main
from bulk_mms.codes import OPT_IN_WORDS, OPT_OUT_WORDS
from bulk_mms.config import (
    Settings,
    check_base_url,
    load_job,
    load_settings,
    sends_key_in_clear,
)
from bulk_mms.config._toml import Table
from bulk_mms.config.folders import user_folder
from bulk_mms.errors import ConfigError
from bulk_mms.ledger.store import location

GOOD_MESSAGE = '[message]\nfrom = "+18445550001"\ntext = "Hi {name}"\n'


def write(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_full_job_loads_with_paths_relative_to_the_job(tmp_path: Path) -> None:
    """Every documented job key loads; input and ledger resolve beside the job file."""
    p = write(
        tmp_path,
        'name = "n"\ninput = "in.csv"\nphone_column = "tel"\ngroup_size = 5\n'
        'group_by = "hh"\n[message]\nfrom = "ACME"\ntext = "Hi {name}"\nsubject = "S {hh}"\n'
        'media_urls = ["https://x.test/a.png"]\nwebhook_url = "https://h.test/w"\n'
        'webhook_failover_url = "https://h.test/f"\nuse_profile_webhooks = false\n',
    )
    job = load_job(p)
    assert job.input == tmp_path / "in.csv"
    assert job.ledger == tmp_path / "ledgers" / "n.jsonl"
    assert (job.phone_column, job.group_size, job.group_by) == ("tel", 5, "hh")
    assert job.message.fields == ("name", "hh")
    assert job.message.use_profile_webhooks is False


@pytest.mark.parametrize(
    ("text", "setting", "message"),
    [
        ('name = "n"\ninput = "a.csv"\ngroup_size = 9\n' + GOOD_MESSAGE, "group_size", "1 to 8"),
        ('name = "n"\ninput = "a.csv"\ngroup_size = 0\n' + GOOD_MESSAGE, "group_size", "1 to 8"),
        ('name = "n"\ninput = "a.csv"\ncolour = 1\n' + GOOD_MESSAGE, "colour", "unknown setting"),
        ('name = "n"\n' + GOOD_MESSAGE, "input", "is required"),
        ('name = "n"\ninput = "a.csv"\n[message]\nfrom = "+18445550001"\n', "text", "text or"),
        (
            'name = "n"\ninput = "a.csv"\n[message]\nfrom = "+18445550001"\ntext = "{a.b}"\n',
            "message.text",
            "plain column name",
        ),
        (
            'name = "n"\ninput = "a.csv"\n[message]\nfrom = "+18445550001"\ntext = "{0}"\n',
            "message.text",
            "plain column name",
        ),
        (
            'name = "n"\ninput = "a.csv"\n[message]\nfrom = "+18445550001"\ntext = "{x[0]}"\n',
            "message.text",
            "plain column name",
        ),
        ('name = "n"\ninput = "a.csv"\n[message]\nfrom = "12"\ntext = "x"\n', "from", "E.164"),
        (  # digits of another script, which the API would refuse at every send
            'name = "n"\ninput = "a.csv"\n[message]\nfrom = "+\u0661\u0662\u0661\u0662\u0665'
            '\u0665\u0665\u0660\u0661\u0660\u0660"\ntext = "x"\n',
            "from",
            "E.164",
        ),
        (
            'name = "n"\ninput = "a.csv"\n[message]\nfrom = "\u0661\u0662\u0663"\ntext = "x"\n',
            "from",
            "E.164",
        ),
        (
            'name = "n"\ninput = "a.csv"\n[message]\nfrom = "+18445550001\\n"\ntext = "x"\n',
            "from",
            "E.164",
        ),
        (
            'name = "n"\ninput = "a.csv"\n[message]\nfrom = "+18445550001"\ntext = "x"\n'
            'media_urls = ["ftp://x"]\n',
            "media_urls[0]",
            "http(s) URL",
        ),
        (  # a zero-width space and a direction mark show nothing on a phone
            'name = "n"\ninput = "a.csv"\ngroup_size = 1\n[message]\nfrom = "+18445550001"\n'
            'text = "\\u200b\\u200e "\n',
            "text",
            "must not be empty",
        ),
        ('name = "n"\ninput = "a.csv"\n[message\n', "syntax", "line 3"),
        ('name = "bad name!"\ninput = "a.csv"\n' + GOOD_MESSAGE, "name", "letters"),
        ('name = "n"\ninput = "a.csv"\ntimezone = ""\n' + GOOD_MESSAGE, "timezone", "is empty"),
        ('name = "n"\ninput = "a.csv"\ntimezone = " "\n' + GOOD_MESSAGE, "timezone", "is empty"),
        ('name = "n"\ninput = "a.csv"\nencoding = ""\n' + GOOD_MESSAGE, "encoding", "known"),
        # a codec that is no text encoding (bytes to bytes, str to str, or none at all)
        ('name = "n"\ninput = "a.csv"\nencoding = "rot13"\n' + GOOD_MESSAGE, "encoding", "text"),
        ('name = "n"\ninput = "a.csv"\nencoding = "hex"\n' + GOOD_MESSAGE, "encoding", "text"),
        ('name = "n"\ninput = "a.csv"\nencoding = "idna"\n' + GOOD_MESSAGE, "encoding", "text"),
        ('name = "n"\ninput = "a.csv"\nencoding = "undefined"\n' + GOOD_MESSAGE, "encoding", ""),
        # a folder of zones, not a zone
        ('name = "n"\ninput = "a.csv"\ntimezone = "America"\n' + GOOD_MESSAGE, "timezone", "IANA"),
        # a format spec or conversion in the ledger's name: the name is text, nothing to format
        (
            'name = "n"\ninput = "a.csv"\nledger = "{date:%Y}.jsonl"\n' + GOOD_MESSAGE,
            "ledger",
            "{date}",
        ),
        (
            'name = "n"\ninput = "a.csv"\nledger = "{name:d}.jsonl"\n' + GOOD_MESSAGE,
            "ledger",
            "{name}",
        ),
        (
            'name = "n"\ninput = "a.csv"\nledger = "{name!r}.jsonl"\n' + GOOD_MESSAGE,
            "ledger",
            "{name}",
        ),
        (
            'name = "n"\ninput = "a.csv"\nledger = "{date:>9999999999}"\n' + GOOD_MESSAGE,
            "ledger",
            "{date}",
        ),
        # a template left blank: no ledger named, no quiet hours kept
        ('name = "n"\ninput = "a.csv"\nledger = ""\n' + GOOD_MESSAGE, "ledger", "is empty"),
        (
            'name = "n"\ninput = "a.csv"\nrecipient_window = ""\n' + GOOD_MESSAGE,
            "recipient_window",
            "is empty",
        ),
        (
            'name = "n"\ninput = "a.csv"\nrecipient_window = " "\n' + GOOD_MESSAGE,
            "recipient_window",
            "is empty",
        ),
    ],
)
def test_bad_job_files_name_the_setting(
    tmp_path: Path, text: str, setting: str, message: str
) -> None:
    """Out-of-range, unknown, missing, empty (a template left blank: an empty timezone is
    not UTC) and malformed settings each give a one-line error."""
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_job(p)
    err = str(info.value)
    assert str(p) in err
    assert setting in err
    assert message in err
    assert "\n" not in err


def test_a_csv_given_as_the_job_says_it_is_not_a_job_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CSV where the job belongs: 'x.csv is not a job file (TOML): ...', exit 2, no
    'Invalid statement' or syntax talk without saying what the file is not."""
    people = write(tmp_path, "phone,first\n+12125550100,Ann\n", "people.csv")
    with pytest.raises(ConfigError) as info:
        load_job(people)
    assert str(info.value).startswith(f"{people} is not a job file (TOML): ")
    assert main(["run", str(people), "--dry-run"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"bulk-mms: error: {people} is not a job file (TOML): ")


def test_a_binary_file_given_as_settings_says_it_is_not_a_settings_file(tmp_path: Path) -> None:
    """A gzip where the settings belong: not a settings file (TOML), not UTF-8 text."""
    p = tmp_path / "people.csv.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    with pytest.raises(ConfigError) as info:
        load_settings(p)
    assert str(info.value) == f"{p} is not a settings file (TOML): not UTF-8 text"


def test_missing_job_file(tmp_path: Path) -> None:
    """A job file that does not exist is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="not found"):
        load_job(tmp_path / "nope.toml")


def test_settings_load_with_env_override(tmp_path: Path) -> None:
    """config.toml values load; TELNYX_BASE_URL overrides the file's base_url."""
    p = write(
        tmp_path,
        '[api]\nbase_url = "https://a.test/v2/"\nrequest_timeout = 5\n'
        "[limits]\nrate = 2.5\nconcurrency = 3\n[retry]\nattempts = 7\n",
        "config.toml",
    )
    s = load_settings(p, env={})
    assert (s.base_url, s.request_timeout, s.rate, s.concurrency) == (
        "https://a.test/v2",
        5.0,
        2.5,
        3,
    )
    assert s.retry.attempts == 7
    assert load_settings(p, env={"TELNYX_BASE_URL": "http://b.test/v2"}).base_url == (
        "http://b.test/v2"
    )


def test_an_empty_base_url_in_the_environment_is_refused(tmp_path: Path) -> None:
    """TELNYX_BASE_URL set but empty or blank (a variable it was copied from unset) is
    refused naming the variable, never read as unset and so as the live API."""
    for value in ("", "  "):
        with pytest.raises(ConfigError) as info:
            load_settings(None, env={"TELNYX_BASE_URL": value})
        assert str(info.value).startswith("TELNYX_BASE_URL: is set but empty")


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("[limits]\nrate = -1\n", "limits.rate"),
        ("[limits]\nconcurrency = 0\n", "limits.concurrency"),
        ("[limits]\nrate = 'fast'\n", "limits.rate"),
        ("[api]\nkey = 'secret'\n", "api.key"),
        ("[retry]\nattempts = 0\n", "retry.attempts"),
        ("[track]\nmax_age = 2592000\n", "track.max_age"),  # the API keeps 10 days
        ("[api]\nbase_url = ''\n", "api.base_url"),
        ("[suppression]\nopt_out_words = ['  ']\n", "suppression.opt_out_words"),
        ("[suppression]\nopt_out_words = ['help']\n", "suppression.opt_out_words"),
        ("[suppression]\nopt_in_words = ['Info']\n", "suppression.opt_in_words"),
        ("[suppression]\nopt_out_words = [1]\n", "suppression.opt_out_words"),
        ("[suppression]\nopt_in_words = ['stop']\n", "suppression.opt_in_words"),
        ("[suppression]\nopt_out_words = ['Alta']\nopt_in_words = ['ALTA']\n", "opt_in_words"),
        ("[limits]\ndaily_reset = '00:00 America'\n", "limits.daily_reset"),  # a folder of zones
    ],
)
def test_bad_settings_name_the_setting(tmp_path: Path, text: str, setting: str) -> None:
    """Negative rates, zero concurrency, wrong types, a key in the file, tracking past the
    10 days the API serves a message, an empty base_url (never the live API in its place),
    and a keyword no text can match, HELP, or one that would both opt out and in are
    refused."""
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text, "config.toml"), env={})
    assert setting in str(info.value)


def test_a_bad_value_is_said_as_written_with_its_file_and_section(tmp_path: Path) -> None:
    """A range names its bounds as a person writes them (2592000, not 2.592e+06), and a
    base_url from the file is named with the file and its section, one from the environment
    with its variable."""
    p = write(tmp_path, "[limits]\nmax_job_duration_s = 3000000\n", "config.toml")
    with pytest.raises(ConfigError) as info:
        load_settings(p, env={})
    assert str(info.value) == (
        f"{p}: limits.max_job_duration_s: must be from 0 to 2592000, not 3000000"
    )
    p = write(tmp_path, '[api]\nbase_url = "ftp://x.test"\n', "config.toml")
    with pytest.raises(ConfigError) as info:
        load_settings(p, env={})
    assert str(info.value).startswith(f"{p}: api.base_url: 'ftp://x.test' is not an http(s)")
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"TELNYX_BASE_URL": "ftp://y.test"})
    assert info.value.setting == "TELNYX_BASE_URL"


REPO = Path(__file__).parent.parent
#: The settings' tables whose own keys are free (a number, a type, an error code): each is one
#: setting, documented and exemplified as a whole.
FREE_TABLES = {"limits.senders", "limits.sender_types", "errors"}


def _keys_read(monkeypatch: pytest.MonkeyPatch, load: Callable[[], object]) -> set[str]:
    """Every key ``load`` asks a TOML table for (its dotted name: ``limits.rate``), whether the
    file has it or not: what the loader accepts, since it refuses any other."""
    asked: set[str] = set()
    real = Table._get

    def spy(self: Table, key: str) -> object:
        asked.add(self._name(key))
        return real(self, key)

    monkeypatch.setattr(Table, "_get", spy)
    load()
    return asked


def _settings_documented() -> set[str]:
    """The keys docs/settings.md's table names, each under its section's heading row."""
    page = (REPO / "docs" / "settings.md").read_text(encoding="utf-8")
    documented: set[str] = set()
    section = ""
    for row in page.splitlines():
        if not row.startswith("| "):
            continue
        cell = row.split("|")[1].strip()
        if heading := re.fullmatch(r"\*\*`\[([a-z_.]+)\]`\*\*", cell):
            section = heading[1]
            if section in FREE_TABLES:  # a whole table, [errors]
                documented.add(section)
            continue
        for name in re.findall(r"`([^`]+)`", cell):
            table = re.fullmatch(r"\[([a-z_.]+)\]", name)
            documented.add(table[1] if table else f"{section}.{name}")
    return documented


def _settings_exemplified() -> set[str]:
    """The keys config.example.toml sets or shows commented out (``# per_recipient = ...``)."""
    shown: set[str] = set()
    section = ""
    for line in (REPO / "config.example.toml").read_text(encoding="utf-8").splitlines():
        if header := re.fullmatch(r"\[([a-z_.]+)\]", line):
            section = header[1]
            if section in FREE_TABLES:
                shown.add(section)
        elif (key := re.match(r"#? ?([a-z_]+) = ", line)) and section not in FREE_TABLES:
            shown.add(f"{section}.{key[1]}")
    return shown


def test_example_config_loads_and_every_setting_is_documented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """config.example.toml is a valid settings file whose values are the code's defaults (it
    says so); and the settings the loader accepts, those docs/settings.md documents and those
    the example shows are the same, so none is missing from either, nor refused by the loader."""
    example = REPO / "config.example.toml"
    s = load_settings(example, env={})
    assert s.base_url == "https://api.telnyx.com/v2"
    assert s == Settings()
    read = _keys_read(monkeypatch, lambda: load_settings(example, env={}))
    sections = {name for name in read if "." not in name} - FREE_TABLES
    accepted = read - sections
    assert _settings_documented() == accepted
    assert _settings_exemplified() == accepted


def test_every_job_key_is_documented(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every key the job loader accepts is named in docs/jobs.md, every key of the page's
    sample job is one it accepts, and jobs/*.toml load."""
    job = write(tmp_path, 'name = "x"\ninput = "x.csv"\ngroup_size = 1\n' + GOOD_MESSAGE)
    read = _keys_read(monkeypatch, lambda: load_job(job))
    page = (REPO / "docs" / "jobs.md").read_text(encoding="utf-8")
    sample: set[str] = set()
    table = ""
    for line in page.split("```toml", 1)[1].split("```", 1)[0].splitlines():
        if header := re.fullmatch(r"\[([a-z_.]+)\]", line):
            table = header[1]
            sample.add(table)
        elif (key := re.match(r"#? ?([a-z_]+) +=", line)) and table != "message.defaults":
            sample.add(f"{table}.{key[1]}" if table else key[1])
    assert sample <= read
    named = set(re.findall(r"`\[?([a-z_.]+)", page)) | sample
    assert {key for key in read if key not in named and key.split(".")[-1] not in named} == set()
    for path in sorted((REPO / "jobs").glob("*.toml")):
        assert load_job(path).message.senders


def test_limits_table_with_sender_limits(tmp_path: Path) -> None:
    """[limits] takes cost, queue target, deadlines and per-type and per-number sender limits."""
    p = write(
        tmp_path,
        '[limits]\nrate = 15\ncost = "recipient"\nmax_queue_wait_s = 20\n'
        "max_job_duration_s = 3600\nmax_group_age_s = 600\n"
        "[limits.sender_types]\nlong_code = 0.1\ntoll_free = 20\n"
        '[limits.senders]\n"+13125551234" = 2.5\n',
        "config.toml",
    )
    s = load_settings(p, env={})
    assert (s.rate, s.cost, s.max_queue_wait_s) == (15.0, "recipient", 20.0)
    assert (s.max_job_duration_s, s.max_group_age_s) == (3600.0, 600.0)
    assert s.type_limits == {"long_code": 0.1, "toll_free": 20.0}
    assert s.sender_limits == {"+13125551234": 2.5}


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ('[limits]\ncost = "message"\n', "limits.cost"),
        ("[limits.sender_types]\nlandline = 1\n", "limits.sender_types.landline"),
        ('[limits.senders]\n"+13125551234" = 0\n', "limits.senders.+13125551234"),
        # a number as no job's from could be written: its ceiling would never apply
        ('[limits.senders]\n"13125551234" = 1\n', "limits.senders.13125551234"),
        ('[limits.senders]\n"+1 312 555 1234" = 1\n', "limits.senders.+1 312 555 1234"),
    ],
)
def test_bad_limits_name_the_setting(tmp_path: Path, text: str, setting: str) -> None:
    """An unknown cost model, sender type, or a zero sender limit is refused, naming it."""
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text, "config.toml"), env={})
    assert setting in str(info.value)


def test_from_may_be_a_pool(tmp_path: Path) -> None:
    """`from` takes a list of senders; a repeated sender is refused."""
    base = 'name = "n"\ninput = "a.csv"\nmix_unrelated = true\n[message]\ntext = "x"\n'
    job = load_job(write(tmp_path, base + 'from = ["+13125550001", "+13125550002"]\n'))
    assert job.message.senders == ("+13125550001", "+13125550002")
    with pytest.raises(ConfigError, match="twice"):
        load_job(write(tmp_path, base + 'from = ["+13125550001", "+13125550001"]\n'))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:hunter2@api.example.com/v2", "must not carry credentials"),
        ("https://:hunter2@api.example.com/v2", "must not carry credentials"),
        ("ftp://api.example.com/v2", "not an http(s) URL"),
        ("https:///v2", "not an http(s) URL"),
        ("https://api.example.com:99999/v2", "not a valid URL"),
        ("https://api.example.com/v2?x=1", "query"),
        ("https://api.example.com/v2?key=hunter2", "query"),
        ("https://api.example.com/v2#hunter2", "fragment"),
        ("http://[::1/v2", "not a valid URL"),
    ],
)
def test_a_base_url_that_cannot_be_used_is_refused_up_front(url: str, expected: str) -> None:
    """Credentials, other schemes, no host, a bad port or a query: a ConfigError naming
    where the URL came from (here TELNYX_BASE_URL), before any request, and the message never
    repeats a password or a query (a key put there)."""
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"TELNYX_BASE_URL": url})
    assert info.value.setting == "TELNYX_BASE_URL"
    assert expected in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "clear"),
    [
        ("http://api.example.com/v2", True),
        ("http://10.0.0.5:8080/v2", True),
        ("https://api.example.com/v2", False),
        ("http://127.0.0.1:8080/v2", False),
        ("http://[::1]:8080/v2", False),
        ("http://localhost:8080/v2", False),
    ],
)
def test_plain_http_is_flagged_only_off_this_machine(url: str, clear: bool) -> None:
    """The key would cross the network in clear text only over http to a non-loopback host."""
    assert sends_key_in_clear(check_base_url(url)) is clear


@pytest.mark.parametrize(
    ("grouping", "outcome"),
    [
        ("", "group_by: say how groups form"),
        ("mix_unrelated = false\n", "group_by: say how groups form"),
        ('group_by = "hh"\nmix_unrelated = true\n', "mix_unrelated: contradicts group_by"),
        ("group_size = 1\n", None),
        ("mix_unrelated = true\n", None),
        ('group_by = "hh"\n', None),
    ],
)
def test_grouping_is_an_explicit_choice(tmp_path: Path, grouping: str, outcome: str | None) -> None:
    """A job with neither group_by nor mix_unrelated (and groups of more than one) is refused
    with a message naming both choices and what mixing means; one of them, or group_size = 1,
    is enough."""
    text = 'name = "n"\ninput = "a.csv"\n' + grouping + '[message]\nfrom = "ACME"\ntext = "x"\n'
    if outcome is None:
        job = load_job(write(tmp_path, text))
        assert job.grouping
        return
    with pytest.raises(ConfigError) as info:
        load_job(write(tmp_path, text))
    assert outcome in str(info.value)
    if "say how" in outcome:
        assert 'group_by = "COLUMN"' in str(info.value)
        assert "mix_unrelated = true" in str(info.value)
        assert "sees the others' numbers" in str(info.value)


@pytest.mark.parametrize(
    "setting",
    ['group_by = ""', 'group_by = "  "', 'phone_column = ""', 'timezone_column = " "'],
)
def test_a_blank_column_name_is_refused(tmp_path: Path, setting: str) -> None:
    """A setting that names a column, given empty or blank, is a ConfigError naming it."""
    text = f'name = "n"\ninput = "a.csv"\nmix_unrelated = true\n{setting}\n' + GOOD_MESSAGE
    if setting.startswith("group_by"):
        text = text.replace("mix_unrelated = true\n", "")
    key = setting.partition(" ")[0]
    with pytest.raises(ConfigError) as info:
        load_job(write(tmp_path, text))
    assert info.value.setting == key
    assert str(info.value).startswith(f"{tmp_path / 'job.toml'}: {key}: ")
    assert "names no column" in str(info.value)


def test_a_blank_group_by_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run on a job with group_by = "" exits 2 with one line naming the setting, no traceback."""
    write(tmp_path, "phone,hh\n+12125550100,a\n", "a.csv")
    job = write(tmp_path, 'name = "n"\ninput = "a.csv"\ngroup_by = ""\n' + GOOD_MESSAGE)
    assert main(["run", str(job), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"bulk-mms: error: {job}: group_by: '' names no column: " + (
        "give a column's name, or leave the setting out\n"
    )


def test_the_suppression_file_is_never_a_ledger(tmp_path: Path) -> None:
    """A settings file whose [suppression] file is a ledger is refused, naming the setting."""
    ledger = tmp_path / "l.jsonl"
    ledger.write_text('{"event":"job","job":"j","fingerprint":null}\n', encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text('[suppression]\nfile = "l.jsonl"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"suppression\.file: .*l\.jsonl is a bulk-mms ledger"):
        load_settings(config)


def test_user_folders_follow_xdg_and_ignore_a_relative_or_empty_value(tmp_path: Path) -> None:
    """An absolute ``$XDG_*_HOME`` names the folder; an empty or relative one is ignored (the
    XDG spec), so a cron job's working folder never becomes its cache."""
    home = Path.home()
    assert user_folder("cache", {"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "bulk-mms"
    assert user_folder("cache", {"XDG_CACHE_HOME": "rel"}) == home / ".cache" / "bulk-mms"
    assert user_folder("data", {"XDG_DATA_HOME": ""}) == home / ".local/share" / "bulk-mms"
    assert user_folder("config", {}) == home / ".config" / "bulk-mms"


def _deadline_job(tmp_path: Path, deadline: str) -> Path:
    return write(
        tmp_path,
        f'name = "n"\ninput = "a.csv"\ngroup_size = 1\ntimezone = "America/Chicago"\n'
        f'deadline = "{deadline}"\n' + GOOD_MESSAGE,
    )


def test_a_deadline_in_the_skipped_hour_is_refused_with_both_readings(tmp_path: Path) -> None:
    """2026-03-08T02:30 never shows on Chicago's clocks: a one-line error says so and gives the
    instant each offset would make of it."""
    p = _deadline_job(tmp_path, "2026-03-08T02:30")
    with pytest.raises(ConfigError) as info:
        load_job(p)
    assert str(info.value) == (
        f"{p}: deadline: 2026-03-08T02:30 does not exist in America/Chicago (the clocks go "
        "from 02:00 to 03:00): read with either offset it is 2026-03-08T03:30-05:00 or "
        "2026-03-08T01:30-06:00; write the one you mean"
    )


def test_a_deadline_that_is_a_day_alone_is_refused_naming_both_readings(tmp_path: Path) -> None:
    """deadline = "2026-11-24" could mean that day's start or its end: a one-line error asks
    for the time, showing both."""
    p = _deadline_job(tmp_path, "2026-11-24")
    with pytest.raises(ConfigError) as info:
        load_job(p)
    assert str(info.value) == (
        f"{p}: deadline: '2026-11-24' is a day, not a time: write '2026-11-24T00:00' for its "
        "start or '2026-11-24T23:59' for its end"
    )


def test_a_deadline_in_the_repeated_hour_is_refused_with_both_offsets(tmp_path: Path) -> None:
    """2026-11-01T01:30 happens twice in Chicago: the error names -05:00 and -06:00 and shows
    how to write either."""
    p = _deadline_job(tmp_path, "2026-11-01T01:30")
    with pytest.raises(ConfigError) as info:
        load_job(p)
    assert str(info.value) == (
        f"{p}: deadline: 2026-11-01T01:30 happens twice in America/Chicago (-05:00 and "
        "-06:00): write the offset, e.g. 2026-11-01T01:30-05:00 (the first) or "
        "2026-11-01T01:30-06:00 (the second)"
    )


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("2026-11-24T12:00:00Z", None),
        ("2026-11-24T06:00:00-06:00", None),
        ("2026-11-24T06:00:00", None),  # a local date-time: the job's timezone
        ("2026-11-24", "'2026-11-24' is a day, not a time"),
        ("06:00:00", "'06:00:00' is not a date and time"),
    ],
)
def test_a_deadline_written_as_tomls_own_date_time_reads_as_the_string_would(
    tmp_path: Path, written: str, said: str | None
) -> None:
    """An unquoted TOML date-time (``deadline = 2026-11-24T12:00:00Z``) is the same deadline as
    the quoted string; a TOML date or time of day alone is refused as the string is."""
    p = write(
        tmp_path,
        f'name = "n"\ninput = "a.csv"\ngroup_size = 1\ntimezone = "America/Chicago"\n'
        f"deadline = {written}\n" + GOOD_MESSAGE,
    )
    if said is not None:
        with pytest.raises(ConfigError, match=said):
            load_job(p)
        return
    deadline = load_job(p).deadline
    assert deadline is not None
    assert deadline.astimezone(dt.UTC).isoformat() == "2026-11-24T12:00:00+00:00"


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-11-01T01:30-05:00", "2026-11-01T06:30:00+00:00"),
        ("2026-11-01T01:30-06:00", "2026-11-01T07:30:00+00:00"),
        ("2026-03-08T02:30-06:00", "2026-03-08T08:30:00+00:00"),
        ("2026-11-01T02:30", "2026-11-01T08:30:00+00:00"),
        ("2026-03-08T03:30", "2026-03-08T08:30:00+00:00"),
    ],
)
def test_a_deadline_with_an_offset_or_outside_a_change_is_taken_as_written(
    tmp_path: Path, text: str, utc: str
) -> None:
    """An explicit offset is taken as it is (even for a wall time the zone skips), and a local
    time next to a change reads as the one instant it names."""
    job = load_job(_deadline_job(tmp_path, text))
    assert job.deadline is not None
    assert job.deadline.astimezone(dt.UTC).isoformat() == utc


@pytest.mark.parametrize(
    ("where", "setting"),
    [
        ("job", "input"),
        ("job", "ledger"),
        ("job", "encoding"),
        ("job", "message.text"),
        ("settings", "suppression.file"),
    ],
)
def test_a_nul_character_in_a_setting_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, setting: str
) -> None:
    """A string setting holding "\\u0000" (no path, encoding or text can) exits 2 in one line
    naming its file and setting, with no traceback."""
    write(tmp_path, "phone,first\n+12125550100,Ann\n", "a.csv")
    section, _, key = setting.rpartition(".")
    line = f'{key} = "x\\u0000y"\n'
    top = 'name = "n"\ngroup_size = 1\n' + (line if key == "input" else 'input = "a.csv"\n')
    if where == "job" and key in ("ledger", "encoding"):
        top += line
    message = GOOD_MESSAGE.replace('text = "Hi {name}"\n', "" if key == "text" else "text = 'x'\n")
    if key == "text":
        message += line
    job = write(tmp_path, top + message)
    config = write(tmp_path, f"[{section}]\n{line}" if where == "settings" else "", "config.toml")
    assert main(["run", str(job), "--dry-run", "--config", str(config)]) == 2
    source = job if where == "job" else config
    expected = f"bulk-mms: error: {source}: {setting}: contains a NUL character (\\u0000)\n"
    assert capsys.readouterr().err == expected


def test_a_profiles_own_keywords_join_telnyxs(tmp_path: Path) -> None:
    """`[suppression] opt_out_words` and `opt_in_words` add to Telnyx's keywords, each read
    as an inbound text is (case and spaces aside); without them the keywords are Telnyx's."""
    text = "[suppression]\nopt_out_words = [' arret ', 'Baja  Ya']\nopt_in_words = 'alta'\n"
    s = load_settings(write(tmp_path, text, "config.toml"), env={})
    assert s.opt_out_words == OPT_OUT_WORDS | {"ARRET", "BAJA YA"}
    assert s.opt_in_words == OPT_IN_WORDS | {"ALTA"}
    assert load_settings(None, env={}).opt_out_words == OPT_OUT_WORDS


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[limits]\nrate = nan\n", "limits.rate: must be from 0.001 to 10000, not nan"),
        ("[track]\nrate = -inf\n", "track.rate: must be from 0.01 to 1000, not -inf"),
        (
            "[pricing]\nper_recipient = '1e999999999'\n",
            "pricing.per_recipient: must be a non-negative amount up to 1,000,000,000,000",
        ),
    ],
)
def test_a_number_out_of_any_range_is_said_with_the_settings_own(
    tmp_path: Path, text: str, said: str
) -> None:
    """A rate of nan is said with the rate's own range (not "-inf to inf"), and a price too
    large for a cost to be summed is refused, not an Overflow traceback in the dry run."""
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text, "config.toml"), env={})
    assert said in str(info.value)


NO_CODE = "is not an ISO 4217 currency code: three capital letters, e.g. 'USD' or 'EUR'"


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        ('""', f"'' {NO_CODE}"),
        ('"€"', f"'€' {NO_CODE}"),
        ('"US"', f"'US' {NO_CODE}"),
        ('"US DOLLAR"', f"'US DOLLAR' {NO_CODE}"),
        ('"\uff35\uff33\uff24"', f"'\uff35\uff33\uff24' {NO_CODE}"),  # full-width
        ('"usd"', "'usd' is not an ISO 4217 currency code as written: write 'USD'"),
    ],
)
def test_a_currency_that_is_no_iso_4217_code_is_refused(
    tmp_path: Path, written: str, reason: str
) -> None:
    """[pricing] currency empty, a symbol, two letters, words, full-width or lower-case
    letters is refused in one line naming the file and the setting (lower case with the code
    to write); three ASCII capitals are taken as written."""
    p = write(tmp_path, f"[pricing]\ncurrency = {written}\n", "config.toml")
    with pytest.raises(ConfigError) as info:
        load_settings(p, env={})
    assert str(info.value) == f"{p}: pricing.currency: {reason}"
    good = write(tmp_path, '[pricing]\ncurrency = "EUR"\n', "good.toml")
    assert load_settings(good, env={}).currency == "EUR"


def folder_ledger_refused(tmp_path: Path, ledger: str) -> tuple[Path, str]:
    """A job file whose ``ledger`` is ``ledger`` (beside a folder ``kept``), and the words
    its load is refused in."""
    (tmp_path / "kept").mkdir()
    p = write(
        tmp_path,
        f'name = "n"\ninput = "a.csv"\ngroup_size = 1\nledger = "{ledger}"\n' + GOOD_MESSAGE,
    )
    with pytest.raises(ConfigError) as info:
        load_job(p)
    return p, str(info.value)


@pytest.mark.parametrize("ledger", ["ledgers/", "kept"])
def test_a_ledger_folder_is_refused_in_the_words_of_every_place_a_ledger_is_given(
    tmp_path: Path, ledger: str
) -> None:
    """A job's ledger that is a folder, by its slash or as one already, is refused in the one
    message --ledger and BULK_MMS_LEDGER_URL give for a folder (the job file named first)."""
    p, refused = folder_ledger_refused(tmp_path, ledger)
    with pytest.raises(ValueError, match="names a folder") as given:
        location("kept/")
    said = str(given.value).replace("'kept/'", repr(ledger))
    assert refused == f"{p}: ledger: {said}"


@pytest.mark.parametrize("ledger", ["ledgers/", "ledgers/{date}/", "kept", "."])
def test_a_ledger_that_names_a_folder_is_refused_naming_the_job_file(
    tmp_path: Path, ledger: str
) -> None:
    """ledger = "ledgers/" (a trailing slash), or a path that is a folder already, is refused
    in one line naming the job file and the setting, never made into a file beside it."""
    p, refused = folder_ledger_refused(tmp_path, ledger)
    assert refused.startswith(f"{p}: ledger: ")
    assert "names a folder, not a file" in refused
    assert "\n" not in refused
    assert not (tmp_path / "ledgers").exists()


def test_a_media_url_given_twice_is_refused_naming_its_position(tmp_path: Path) -> None:
    """One media URL listed twice (the API would fetch and attach it twice, its bytes counted
    twice against the 1 MB) is refused in one line naming the setting and both positions."""
    p = write(
        tmp_path,
        'name = "n"\ninput = "a.csv"\ngroup_size = 1\n[message]\nfrom = "+18445550001"\n'
        'text = "x"\n'
        'media_urls = ["https://x.test/a.png", "https://x.test/b.png", "https://x.test/a.png"]\n',
    )
    with pytest.raises(ConfigError) as info:
        load_job(p)
    assert str(info.value) == (
        f"{p}: message.media_urls[2]: 'https://x.test/a.png' is media_urls[0] again: "
        "list each media file once"
    )
