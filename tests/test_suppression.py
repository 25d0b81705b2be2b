"""The suppression list's file shared by several writers: nothing one writes is lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Final

import pytest

from bulk_mms.clock import instant
from bulk_mms.errors import ConfigError
from bulk_mms.ledger.fold import FAILED, GroupRecord, LedgerView, Miss
from bulk_mms.suppression import Suppressed, Times, put_back_opted_out, texted_at
from tests.conftest import numbers


def test_two_writers_on_one_file_lose_no_line(tmp_path: Path) -> None:
    """One list object appends numbers while another (its own lock descriptor, as a second
    process has) removes and adds others, rewriting the file each time: every appended
    number, and every keyword record, is on the list at the end."""
    path = tmp_path / "suppressed.txt"
    mine, churn = numbers(150), numbers(5, start=500)
    first, second = Suppressed(path), Suppressed(path)

    def append() -> None:
        for i, phone in enumerate(mine):
            first.add([phone], "added by hand")
            if i % 10 == 0:
                first.record_keyword(phone, "texted START (webhook)", 1_000.0 + i)

    def rewrite() -> None:
        for _ in range(60):
            second.add(churn, "added by hand")
            second.remove(churn)

    threads = [threading.Thread(target=append), threading.Thread(target=rewrite)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Suppressed(path).numbers() == mine
    assert [first.keyword_at(p) for p in mine[::10]] == [1_000.0 + i for i in range(0, 150, 10)]


def test_a_keyword_time_is_read_from_its_line_and_its_records(tmp_path: Path) -> None:
    """The latest time a number's STOP line or its comment records carry is its keyword
    time; another number's, a hand-written comment or a line without a time say nothing."""
    path = tmp_path / "suppressed.txt"
    path.write_text(
        f"+12125550001  # {texted_at('texted STOP (webhook)', 100.0)} 2026-11-23\n"
        f"# +12125550001  {texted_at('texted START (webhook)', 200.0)}\n"
        f"# +12125550002  {texted_at('texted START (webhook)', 300.0)}\n"
        "# +12125550001 was texted at 2030-01-01T00:00:00Z by hand\n"
        "+12125550003  # texted STOP (webhook) 2026-11-20\n",
        encoding="utf-8",
    )
    listed = Suppressed(path)
    assert listed.numbers() == ["+12125550001", "+12125550003"]
    assert [listed.keyword_at(p) for p in numbers(4, start=1)] == [200.0, 300.0, None, None]


def test_a_removal_is_recorded_with_its_time_in_a_comment_line(tmp_path: Path) -> None:
    """Taking a number off a list written before removals were recorded (its last line
    without a newline) leaves one comment line saying when: the list's numbers, reasons and
    keyword times read as before, and a removal again records the later time."""
    path = tmp_path / "suppressed.txt"
    stop = texted_at("texted STOP (webhook)", 100.0)
    path.write_text(
        f"+12125550001  # {stop} 2026-11-23\n+12125550002  # opted out (40300) 2026-11-24",
        encoding="utf-8",
    )
    listed = Suppressed(path)
    assert [listed.removed_at(p) for p in numbers(2, start=1)] == [None, None]
    before = time.time()
    assert listed.remove(["+12125550002"]) == ["+12125550002"]
    first, record = path.read_text(encoding="utf-8").splitlines()
    assert (first, record[: record.index(" at ")]) == (
        f"+12125550001  # {stop} 2026-11-23",
        "# +12125550002  removed",
    )
    removed = Suppressed(path).removed_at("+12125550002")
    assert removed is not None
    assert before - 1e-6 <= removed <= time.time() + 1e-6
    again = Suppressed(path)
    assert again.numbers() == ["+12125550001"]
    assert (again.reason("+12125550001"), again.keyword_at("+12125550001")) == (
        f"{stop} 2026-11-23",
        100.0,
    )
    assert again.removed_at("+12125550001") is None
    again.add(["+12125550002"], "added by hand")
    again.remove(["+12125550002"])
    later = Suppressed(path).removed_at("+12125550002")
    assert later is not None
    assert later >= removed


def test_an_addition_to_a_list_whose_last_line_has_no_newline_is_kept(tmp_path: Path) -> None:
    """A number (and a keyword record) appended to a list edited by hand whose last line ends
    without a newline goes on a line of its own: on the list as read back, not swallowed by
    that line's comment."""
    path = tmp_path / "suppressed.txt"
    path.write_text("+12125550001  # added by hand", encoding="utf-8")
    assert Suppressed(path).add(["+12125550002"], "texted STOP (webhook)") == ["+12125550002"]
    assert Suppressed(path).numbers() == ["+12125550001", "+12125550002"]
    path.write_text("+12125550001  # added by hand", encoding="utf-8")
    assert Suppressed(path).record_keyword("+12125550001", "texted START (webhook)", 200.0)
    assert Suppressed(path).keyword_at("+12125550001") == 200.0


@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_a_list_behind_a_broken_symlink_is_refused_not_read_as_empty(
    tmp_path: Path, link: str
) -> None:
    """A list file that is a symlink to nothing (its volume not mounted) or to itself is a
    ConfigError naming the setting, never an empty list that would text every number on it."""
    path = tmp_path / "suppressed.txt"
    path.symlink_to(tmp_path / "unmounted" / "suppressed.txt" if link == "dangling" else path)
    with pytest.raises(ConfigError) as info:
        Suppressed(path)
    assert info.value.setting == "suppression.file"
    assert str(info.value).startswith(f"suppression.file: cannot read {path}: ")
    with pytest.raises(ConfigError):
        Suppressed(path).add(["+12125550100"], "test")


def test_a_list_that_is_a_device_is_refused_not_read_or_written(tmp_path: Path) -> None:
    """A suppression file that is a device (/dev/null: reads as empty, takes every write and
    keeps none; /dev/zero: a read that never ends) is refused, so no number added is lost."""
    with pytest.raises(ConfigError, match="not a file"):
        Suppressed(Path("/dev/null")).add(numbers(1), "test")
    with pytest.raises(ConfigError, match="not a file"):
        Suppressed(tmp_path)


def at(hh_mm: str) -> float:
    """``hh_mm`` (UTC) of the day :data:`REFUSED` and :data:`LIST_SAYS` are about."""
    when = instant(f"2026-11-23T{hh_mm}:00Z")
    assert when is not None
    return when


#: The failed groups of a ledger's run, in ledger order: each one's number, its latest try, and
#: whether it failed as opted out. The last number was refused as opted out in one group, then
#: failed otherwise in a later one: it is not an opt-out any more.
REFUSED: Final = (
    ("+12125550011", at("10:00"), True),  # lifted by START since
    ("+12125550012", at("10:00"), True),  # removed after the refusal
    ("+12125550013", at("10:00"), True),  # removed before the refusal
    ("+12125550014", at("10:00"), True),  # the list never took it
    ("+12125550015", at("10:00"), True),  # on the list already
    ("+12125550016", at("10:00"), False),  # failed, not opted out
    ("+12125550017", at("10:00"), True),
    ("+12125550017", at("10:10"), False),
)
#: Who of :data:`REFUSED` is added back to the list, as :data:`LIST_SAYS` has it (not
#: +12125550015: on it already).
PUT_BACK: Final = ["+12125550013", "+12125550014"]
#: What the list says of :data:`REFUSED` (its file's lines).
LIST_SAYS: Final = (
    "+12125550015  # added by hand 2026-11-22\n"
    f"# +12125550011  {texted_at('texted START (webhook)', at('10:30'))}\n"
    "# +12125550012  removed at 2026-11-23T11:00:00.000000Z\n"
    "# +12125550013  removed at 2026-11-23T09:00:00.000000Z\n"
)


def refusals() -> LedgerView:
    """A run's view of :data:`REFUSED`."""
    view = LedgerView(statuses=False)
    for i, (phone, tried, opted) in enumerate(REFUSED):
        miss = Miss.OPTED_OUT if opted else Miss.FAILED
        view.groups[f"g{i}"] = GroupRecord(
            f"g{i}", (phone,), outcome=FAILED, miss=miss, last_try=tried
        )
    return view


class CountedReads(Suppressed):
    """A file's list that counts its reads of the file's lines."""

    reads = 0

    def _lines(self) -> list[str]:
        self.reads += 1
        return super()._lines()


async def test_a_run_puts_back_the_opt_outs_its_list_lacks_in_one_read_of_the_list(
    tmp_path: Path,
) -> None:
    """The run's look for the opt-outs its ledger records that the list lacks reads the
    list's keyword and removal times once, however many there are: those a START lifted or a
    removal after the refusal took off stay off, the others go back on."""
    path = tmp_path / "suppressed.txt"
    path.write_text(LIST_SAYS, encoding="utf-8")
    listed = CountedReads(path)
    await put_back_opted_out(refusals(), listed)
    text = path.read_text(encoding="utf-8")
    assert text.startswith(LIST_SAYS)
    added = [line.split()[0] for line in text.removeprefix(LIST_SAYS).splitlines()]
    assert (listed.reads, added) == (1, PUT_BACK)


def test_the_times_read_at_once_are_those_read_one_number_at_a_time(tmp_path: Path) -> None:
    """A list's keyword and removal times read for many numbers at once are what
    keyword_at and removed_at read one number at a time: STOP lines, START records and
    removals, the latest of each, another number's lines and lines without a time passed
    over."""
    path = tmp_path / "suppressed.txt"
    path.write_text(
        LIST_SAYS
        + f"+12125550016  # {texted_at('texted STOP (webhook)', at('09:00'))} 2026-11-23\n"
        + f"# +12125550016  {texted_at('texted START (webhook)', at('09:30'))}\n"
        + "# +12125550013  removed at 2026-11-23T09:45:00.000000Z\n"
        + "# +121255500131  removed at 2026-11-23T12:00:00.000000Z\n"
        + "# +12125550014 was texted at 2030-01-01T00:00:00Z by hand\n",
        encoding="utf-8",
    )
    listed = Suppressed(path)
    phones = numbers(8, start=11)
    one_at_a_time = {p: Times(listed.keyword_at(p), listed.removed_at(p)) for p in phones}
    assert listed.times_of(phones) == {p: t for p, t in one_at_a_time.items() if t != Times()}
    assert listed.times_of(phones)["+12125550013"] == Times(None, at("09:45"))
