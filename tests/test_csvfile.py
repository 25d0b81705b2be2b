"""The CSV writer every exported file goes through."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulk_mms.csvfile import safe_cell, write_csv


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
    with out.open(encoding="utf-8", newline="") as f:
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
