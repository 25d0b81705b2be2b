"""The writer every exported file goes through, and the rule for where it may go: never
over a file to keep or a bulk-mms ledger."""

from __future__ import annotations

import codecs
import csv
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulk_mms.csvfile import check_output, is_ledger, read_cell, safe_cell, write_csv
from bulk_mms.errors import ConfigError


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ('=HYPERLINK("x")', '\'=HYPERLINK("x")'),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("+14155550100", "+14155550100"),
        ("Ann", "Ann"),
        (None, ""),
        (3, "3"),
    ],
)
def test_safe_cell(cell: object, written: str) -> None:
    """Formula starts get a quote; E.164 numbers and plain text are written as they are."""
    assert safe_cell(cell) == written


def test_write_csv_whole_file(tmp_path: Path) -> None:
    """Rows are written through safe_cell and counted; no temporary file is left behind."""
    out = tmp_path / "sub" / "out.csv"
    n = write_csv(out, ["phone", "note"], [["+14155550100", "=1+1"], ["+14155550101", "ok"]])
    assert n == 2
    with out.open(encoding="utf-8-sig", newline="") as f:
        assert list(csv.reader(f)) == [
            ["phone", "note"],
            ["+14155550100", "'=1+1"],
            ["+14155550101", "ok"],
        ]
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.csv"]


def test_write_csv_failure_leaves_old_file(tmp_path: Path) -> None:
    """A failure while writing leaves the earlier file untouched and no temporary file."""
    out = tmp_path / "out.csv"
    out.write_text("old\n", encoding="utf-8")

    def rows() -> Iterator[list[str]]:
        yield ["new"]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_csv(out, ["a"], rows())
    assert out.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_is_ledger_reads_the_first_line_only(tmp_path: Path) -> None:
    """A file is a ledger when it begins with the job header: not a CSV, an empty file, a
    folder, or a file that is not there."""
    ledger = tmp_path / "l.jsonl"
    ledger.write_bytes(b'{"event":"job","job":"j"}\n' + b"x" * 1_000_000)
    (tmp_path / "a.csv").write_text("phone\n", encoding="utf-8")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "other.jsonl").write_bytes(b'{"event":"sent"}\n')
    names = ["l.jsonl", "a.csv", "empty.jsonl", "other.jsonl", ".", "none"]
    assert [is_ledger(tmp_path / n) for n in names] == [True, False, False, False, False, False]


def test_check_output_passes_a_new_file(tmp_path: Path) -> None:
    """A path that is none of the kept files and no ledger passes."""
    kept = tmp_path / "in.csv"
    kept.write_text("phone\n", encoding="utf-8")
    check_output("--x", tmp_path / "new.csv", [("the input", kept)])
    with pytest.raises(ConfigError, match=r"^--x: .*in\.csv is the input: "):
        check_output("--x", tmp_path / "sub" / ".." / "in.csv", [("the input", kept)])


def test_write_csv_never_replaces_a_ledger(tmp_path: Path) -> None:
    """write_csv refuses a ledger on its own (an OSError naming why), and leaves it as it was
    with no temporary file beside it."""
    ledger = tmp_path / "l.jsonl"
    ledger.write_bytes(b'{"event":"job","job":"j"}\n')
    with pytest.raises(FileExistsError, match="is a bulk-mms ledger"):
        write_csv(ledger, ["a"], [["1"]])
    assert ledger.read_bytes() == b'{"event":"job","job":"j"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["l.jsonl"]


def test_write_csv_never_writes_through_a_file_left_at_its_temporary_name(tmp_path: Path) -> None:
    """A symlink left where the temporary file goes is replaced, not written through: the file
    it points to keeps its bytes."""
    precious = tmp_path / "precious.csv"
    precious.write_bytes(b"keep\n")
    (tmp_path / ".out.csv.tmp").symlink_to(precious)
    assert write_csv(tmp_path / "out.csv", ["a"], [["1"]]) == 1
    assert precious.read_bytes() == b"keep\n"
    assert (tmp_path / "out.csv").read_bytes() == codecs.BOM_UTF8 + b"a\r\n1\r\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "precious.csv"]


@given(st.text())
def test_read_cell_gives_back_every_value_safe_cell_wrote(value: str) -> None:
    """Every value reads back as it was from the cell safe_cell writes for it (itself, or
    with one quote in front), quotes and formula starts included."""
    cell = safe_cell(value)
    assert cell in (value, "'" + value)
    assert read_cell(cell) == value


def test_write_whole_writes_through_a_pipe_and_never_replaces_it(tmp_path: Path) -> None:
    """A pipe (or a device: /dev/null, /dev/stdout) given as the file to write is written
    through and stays a pipe: renaming a file over it would replace /dev/null for every
    program on a machine whose cron runs as root."""
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_csv(fifo, ["phone"], [["+12125550100"]])
    reader.join(timeout=10)
    assert got == [codecs.BOM_UTF8 + b"phone\r\n+12125550100\r\n"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_whole_writes_a_symlinks_target_and_keeps_the_link(tmp_path: Path) -> None:
    """A symlink given as the file to write keeps being the link; its target is the new file,
    written whole."""
    target = tmp_path / "real" / "failed.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "failed.csv"
    link.symlink_to(target)
    write_csv(link, ["phone"], [["+12125550100"]])
    assert link.is_symlink()
    assert target.read_bytes() == codecs.BOM_UTF8 + b"phone\r\n+12125550100\r\n"


def test_write_whole_refuses_a_folder(tmp_path: Path) -> None:
    """A folder given as the file to write is refused, and stays as it was."""
    with pytest.raises(IsADirectoryError):
        write_csv(tmp_path, ["phone"], [])
    assert tmp_path.is_dir()
