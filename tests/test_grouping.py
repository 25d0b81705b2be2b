"""Grouping: sizes, group_by contiguity, stable ids; and properties over any input."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bulk_mms.config import JobConfig, MessageConfig, parse_template
from bulk_mms.grouping import group_id, make_groups
from bulk_mms.models import Group, Recipient, RejectedRow


def job(group_size: int = 8, group_by: str | None = None) -> JobConfig:
    return JobConfig(
        name="j",
        path=Path("j.toml"),
        input=Path("in.csv"),
        ledger=Path("l.jsonl"),
        message=MessageConfig(
            senders=("+18445550001",), text=parse_template("Hi {n}", "t", Path())
        ),
        group_size=group_size,
        group_by=group_by,
    )


def people(keys: list[str]) -> list[Recipient]:
    return [
        Recipient(f"+1212555{i:04d}", i + 2, {"n": f"N{i}", "hh": k}) for i, k in enumerate(keys)
    ]


def groups(items: list[Group | RejectedRow]) -> list[Group]:
    return [g for g in items if isinstance(g, Group)]


def test_consecutive_recipients_fill_groups_of_group_size() -> None:
    """Twenty recipients with group_size 8 make groups of 8, 8 and 4, in order."""
    out = groups(list(make_groups(people(["x"] * 20), job())))
    assert [len(g.to) for g in out] == [8, 8, 4]
    assert [g.seq for g in out] == [0, 1, 2]
    assert out[0].to[0] == "+12125550000"
    assert out[2].lines == (18, 19, 20, 21)


def test_template_filled_from_first_row_of_each_group() -> None:
    """Placeholders take their values from the group's first row."""
    out = groups(list(make_groups(people(["x"] * 3), job(group_size=2))))
    assert [g.message.text for g in out] == ["Hi N0", "Hi N2"]


def test_group_by_keeps_households_together_and_splits_large_ones() -> None:
    """Rows sharing a key form one group; a key with more rows than group_size is chunked."""
    keys = ["a", "a", "b", "c", "c", "c", "c", "c"]
    out = groups(list(make_groups(people(keys), job(group_size=3, group_by="hh"))))
    assert [len(g.to) for g in out] == [2, 1, 3, 2]


def test_returning_key_is_rejected_row_by_row() -> None:
    """A key that comes back after its group closed is rejected, naming the column."""
    out = list(make_groups(people(["a", "b", "a", "b", "c"]), job(group_by="hh")))
    rejected = [r for r in out if isinstance(r, RejectedRow)]
    assert [r.line for r in rejected] == [4, 5]
    assert "hh 'a' appeared earlier" in rejected[0].reason
    assert [g.to for g in groups(out)] == [("+12125550000",), ("+12125550001",), ("+12125550004",)]


def test_group_ids_are_deterministic_and_ignore_the_text() -> None:
    """The same job and recipients give the same id; another job or recipients do not."""
    a = group_id("job", ["+12125550100", "+12125550101"])
    assert a == group_id("job", ["+12125550100", "+12125550101"])
    assert a != group_id("job2", ["+12125550100", "+12125550101"])
    assert a != group_id("job", ["+12125550101", "+12125550100"])
    first = groups(list(make_groups(people(["x"] * 4), job())))
    again = groups(list(make_groups(people(["x"] * 4), job())))
    assert [g.id for g in first] == [g.id for g in again]


@given(
    keys=st.lists(st.sampled_from("abcde"), max_size=60),
    size=st.integers(1, 8),
    by=st.booleans(),
)
def test_every_recipient_lands_exactly_once_in_a_bounded_group(
    keys: list[str], size: int, by: bool
) -> None:
    """Any input: each recipient is grouped once or rejected; every group holds 1..size."""
    recipients = people(keys)
    out = list(make_groups(recipients, job(group_size=size, group_by="hh" if by else None)))
    placed = [p for g in groups(out) for p in g.to]
    rejected = [r.value for r in out if isinstance(r, RejectedRow)]
    assert sorted(placed + rejected) == sorted(r.phone for r in recipients)
    assert len(set(placed)) == len(placed)
    assert all(1 <= len(g.to) <= size for g in groups(out))
    if by:
        for g in groups(out):
            assert len({recipients[line - 2].fields["hh"] for line in g.lines}) == 1
