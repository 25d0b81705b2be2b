"""Grouping: sizes, group_by contiguity, stable ids; and properties over any input."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace

from bulk_mms.client import AiohttpMmsClient
from bulk_mms.config import JobConfig, MessageConfig, parse_template
from bulk_mms.errors import ConfigError, InputError
from bulk_mms.fake_api import FakeTelnyx
from bulk_mms.grouping import (
    group_id,
    join_names,
    key_check,
    make_groups,
    plain_check,
    render_message,
    text_check,
)
from bulk_mms.models import Group, Recipient, RejectedRow, Rejection
from bulk_mms.prepare import dry_run
from bulk_mms.report import summarize
from bulk_mms.runner import run_job
from bulk_mms.validate import Check
from tests.conftest import FAST, FakeClient, FakeClock, JobFactory, numbers


def checked(
    items: Iterable[Recipient | RejectedRow], check: Check | None
) -> list[Recipient | RejectedRow]:
    """``items`` with ``check`` made of each recipient, as a pass over the input makes it."""
    assert check is not None
    return [check(i) if isinstance(i, Recipient) else i for i in items]


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


def last_lines(recipients: list[Recipient]) -> dict[str, int]:
    """Each key's last line, as the scan finds it."""
    return {r.fields["hh"]: r.line for r in recipients}


def test_group_by_keeps_households_together_and_splits_large_ones() -> None:
    """Rows sharing a key form one group; a key with more rows than group_size is chunked."""
    rows = people(["a", "a", "b", "c", "c", "c", "c", "c"])
    out = groups(list(make_groups(rows, job(group_size=3, group_by="hh"), last_lines(rows))))
    assert [len(g.to) for g in out] == [2, 1, 3, 2]


def test_an_unsorted_key_still_forms_one_group() -> None:
    """Rows of a key scattered through the file form one group, out when its last row is read;
    none is rejected for its position, and the result is the same without the scan's lines."""
    rows = people(["a", "b", "a", "c", "b", "a"])
    out = list(make_groups(rows, job(group_by="hh"), last_lines(rows)))
    assert not [r for r in out if isinstance(r, RejectedRow)]
    # c's only row is line 5, b's last is 6, a's last is 7: each group goes out at its last row
    assert [g.lines for g in groups(out)] == [(5,), (3, 6), (2, 4, 7)]
    unscanned = list(make_groups(rows, job(group_by="hh")))
    assert sorted(g.to for g in groups(unscanned)) == sorted(g.to for g in groups(out))


def test_an_empty_key_is_rejected_naming_the_column() -> None:
    """A row with a blank group_by value has no group: it is rejected, naming the column, and
    the rest are grouped."""
    rows = people(["a", " ", "a"])
    out = list(make_groups(checked(rows, key_check("hh")), job(group_by="hh"), last_lines(rows)))
    rejected = [r for r in out if isinstance(r, RejectedRow)]
    assert [(r.line, r.reason) for r in rejected] == [(3, "empty 'hh' value")]
    assert [g.lines for g in groups(out)] == [(2, 4)]


def test_an_invisible_key_is_empty_not_a_household() -> None:
    """Keys of zero-width spaces, byte order marks or direction marks (cells that look empty)
    are rejected as empty, never put unrelated people in one message."""
    rows = people(["\u200b", "a", "\u200b", "\ufeff \u200e", "\u00a0\u2060", "a\u200b"])
    out = list(make_groups(checked(rows, key_check("hh")), job(group_by="hh"), last_lines(rows)))
    rejected = [r for r in out if isinstance(r, RejectedRow)]
    assert [r.line for r in rejected] == [2, 4, 5, 6]
    assert {r.reason for r in rejected} == {"empty 'hh' value"}
    assert sorted(g.lines for g in groups(out)) == [(3,), (7,)]


def test_group_ids_never_change_between_versions() -> None:
    """Ids are pinned: a ledger written by an earlier version resumes onto the same groups."""
    assert group_id("job", ["+12125550100", "+12125550101"]) == "e67abf04488bc4c295e34cac"
    assert group_id("nightly-é", ["+12125550100"]) == "1e60e7d6a752bd77710bba77"


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


def test_join_names_reads_as_a_list() -> None:
    """Distinct non-empty values joined the way a greeting reads."""
    assert join_names([]) == ""
    assert join_names(["Ann", "", "Ann"]) == "Ann"
    assert join_names(["Ann", "Bob"]) == "Ann and Bob"
    assert join_names(["Ann", "Bob", "", "Cy", "Bob"]) == "Ann, Bob and Cy"


async def test_templates_are_counted_joined_and_defaulted(jobs: JobFactory) -> None:
    """A placeholder that differs within a group, or is empty, is counted per group; join
    greets every member, and a default fills an empty value instead of "Hi ,"."""
    rows = [
        {"phone": p, "first": f, "hh": h}
        for p, f, h in zip(numbers(6), ["Ann", "Bob", "", "", "Cy", "Cy"], "AABBCC", strict=True)
    ]
    jobs.csv(rows)
    plain = jobs.job(extra='group_by = "hh"', message='text = "Hi {first}!"')
    s = await dry_run(plain, FAST)
    assert s.template_differs == {"first": 1}  # household A: Ann and Bob
    assert s.template_empty == {"first": 1}  # household B: no name
    assert [g.message.text for g in s.preview] == ["Hi Ann!", "Hi !", "Hi Cy!"]
    fixed = jobs.job(
        extra='group_by = "hh"',
        message='text = "Hi {first}!"\njoin = ["first"]\n[message.defaults]\nfirst = "there"',
    )
    s = await dry_run(fixed, FAST)
    assert (s.template_differs, s.template_empty) == ({}, {})
    assert [g.message.text for g in s.preview] == ["Hi Ann and Bob!", "Hi there!", "Hi Cy!"]


def test_join_and_defaults_must_name_placeholders(jobs: JobFactory) -> None:
    """join or defaults naming something the templates do not use is a config error."""
    jobs.people(2)
    with pytest.raises(ConfigError, match=r"message\.join\[0\]"):
        jobs.job(message='text = "Hi {first}"\njoin = ["last"]')
    with pytest.raises(ConfigError, match=r"message\.defaults\.last"):
        jobs.job(message='text = "Hi {first}"\n[message.defaults]\nlast = "x"')


def test_records_are_equal_by_identity_and_keep_rows_out_of_their_repr() -> None:
    """A group or recipient equals (and hashes as) another with the same identity whatever
    rows and notes they carry, and neither repr shows a member's row (personal data)."""
    a, b = people(["hh-private", "hh-private"])
    (g,) = groups(list(make_groups([a, b], job())))
    same = replace(g, rows=({"n": "other"},) * 2, differs=("n",), zones=("America/Chicago",))
    assert same == g
    assert hash(same) == hash(g)
    assert len({g, same}) == 1
    assert replace(g, seq=g.seq + 1) != g
    assert Recipient(a.phone, a.line, {"n": "else"}) == a
    assert Recipient(a.phone, a.line + 1, a.fields) != a
    assert "hh-private" not in repr(a)
    assert "hh-private" not in repr(g)
    assert g.id in repr(g)
    with pytest.raises(AttributeError):
        g.seq = 5  # type: ignore[misc]


def message(text: str | None, *, media: bool = False, **more: object) -> MessageConfig:
    """A [message] with ``text`` (placeholders parsed), media_urls if asked, and ``more``."""
    return MessageConfig(
        senders=("+18445550001",),
        text=parse_template(text, "t", Path()) if text is not None else None,
        media_urls=("https://x.test/a.png",) if media else (),
        **more,  # type: ignore[arg-type]
    )


def rows_of(*names: str) -> list[Recipient]:
    return [Recipient(f"+1212555{i:04d}", i + 2, {"n": n, "m": ""}) for i, n in enumerate(names)]


def test_a_row_that_leaves_the_text_empty_is_rejected_as_a_loss() -> None:
    """With text = "{n}" and no media, a row whose {n} is empty or blanks is rejected, a loss,
    its reason naming the placeholder and the fixes; the rows with a value pass as they are."""
    people = rows_of("Ann", "", "  ", "Cy")
    out = checked(people, text_check(message("{n}")))
    assert out[0] is people[0]
    assert out[3] is people[3]
    for row, person in zip(out[1:3], people[1:3], strict=True):
        assert isinstance(row, RejectedRow)
        assert (row.line, row.value, row.kind) == (person.line, person.phone, Rejection.ROW)
        assert row.kind.loss
        assert row.reason.startswith("empty message: the text is only {n}, empty in this row")
        assert "[message.defaults]" in row.reason
        assert "media_urls" in row.reason


def test_a_row_whose_text_would_be_invisible_characters_only_is_rejected() -> None:
    """With text = "{n}", a row whose {n} holds only a zero-width space and a direction mark
    (as a cell pasted from a web page can) is rejected like an empty one: a phone shows nothing."""
    people = rows_of("\u200b\u200e ", "Ann")
    out = checked(people, text_check(message("{n}")))
    assert isinstance(out[0], RejectedRow)
    assert out[0].reason.startswith("empty message: the text is only {n}, empty in this row")
    assert out[1] is people[1]


def test_a_template_whose_words_are_invisible_characters_is_checked_row_by_row() -> None:
    """A text whose only words outside its placeholder are a zero-width space says nothing,
    so a row that leaves the placeholder empty is rejected."""
    people = rows_of("", "Ann")
    out = checked(people, text_check(message("\u200b{n}")))
    assert isinstance(out[0], RejectedRow)
    assert out[1] is people[1]


@pytest.mark.parametrize(
    "config",
    [
        message("Hi {n}"),  # text around the placeholder
        message("{n}", media=True),  # the media are the message
        message("{n}{m}", defaults={"m": "there"}),  # a default is never blank
        message(None, media=True),  # no text at all
    ],
)
def test_a_text_that_cannot_be_empty_adds_nothing_to_the_row_loop(config: MessageConfig) -> None:
    """When no row can leave the text blank, there is no check to make of a row."""
    assert text_check(config) is None


def test_an_empty_text_with_media_goes_out_as_none() -> None:
    """A group whose text fills to blanks, in a job with media_urls, has no text (the API
    refuses an empty one); one that says something keeps it."""
    config = message("{n}", media=True)
    blank, _, _ = render_message(config, rows_of(" "))
    said, _, _ = render_message(config, rows_of("Ann"))
    assert (blank.text, blank.media_urls) == (None, ("https://x.test/a.png",))
    assert said.text == "Ann"


def test_a_text_of_invisible_characters_with_media_goes_out_as_none() -> None:
    """A group whose text fills to a zero-width space, in a job with media_urls, has no
    text, as one that fills to blanks: the phone would show an empty text part."""
    invisible, _, _ = render_message(message("{n}", media=True), rows_of("\u200b"))
    assert invisible.text is None


@given(
    names=st.lists(st.sampled_from(["", " ", "Ann", "Bo"]), max_size=40),
    others=st.lists(st.sampled_from(["", "x"]), min_size=40, max_size=40),
    size=st.integers(1, 8),
    joined=st.booleans(),
)
def test_no_group_is_made_with_an_empty_text(
    names: list[str], others: list[str], size: int, joined: bool
) -> None:
    """Any rows, any group size, joined or not: once rows pass text_check, every group's text
    says something, and every row is in a group or rejected."""
    people = [
        Recipient(f"+1212555{i:04d}", i + 2, {"n": n, "m": m})
        for i, (n, m) in enumerate(zip(names, others, strict=False))
    ]
    config = message("{n} {m}", join=("n",) if joined else ())
    the_job = replace(job(group_size=size), message=config)
    out = list(make_groups(checked(people, text_check(config)), the_job))
    assert all(g.message.text and g.message.text.strip() for g in groups(out))
    placed = [p for g in groups(out) for p in g.to]
    rejected = [r.value for r in out if isinstance(r, RejectedRow)]
    assert sorted(placed + rejected) == sorted(p.phone for p in people)


async def test_a_run_never_sends_an_empty_text(
    jobs: JobFactory, fake_api: tuple[FakeTelnyx, str]
) -> None:
    """text = "{first}" and a row with no first name: the row is rejected before sending and
    recorded as a loss; the API gets no empty text and every other row is sent."""
    people = numbers(4)
    jobs.csv(
        [{"phone": p, "first": f} for p, f in zip(people, ["Ann", "", "Cy", "Di"], strict=True)]
    )
    job = jobs.job(extra="group_size = 1\nmax_rejected_share = 0.5", message='text = "{first}"')
    fake, url = fake_api
    async with AiohttpMmsClient(url, "test-key-123") as client:
        s = await run_job(job, FAST, client, clock=FakeClock())
    assert [r["text"] for r in fake.requests] == ["Ann", "Cy", "Di"]
    assert (s.failed_groups, s.rejected_rows) == (0, 1)
    report = summarize(job.ledger)
    assert report.rows.rows == 4
    assert list(report.rejected_reasons) == ["empty message"]


async def test_a_media_job_sends_an_empty_text_as_none(
    jobs: JobFactory, fake_api: tuple[FakeTelnyx, str]
) -> None:
    """With media_urls, the row with no first name is sent, its request without a text."""
    jobs.csv([{"phone": p, "first": f} for p, f in zip(numbers(2), ["Ann", ""], strict=True)])
    media = 'text = "{first}"\nmedia_urls = ["https://x.test/a.png"]'
    job = jobs.job(extra="group_size = 1", message=media)
    fake, url = fake_api
    async with AiohttpMmsClient(url, "test-key-123") as client:
        s = await run_job(job, FAST, client, clock=FakeClock())
    assert (s.sent_groups, s.failed_groups, s.rejected_rows) == (2, 0, 0)
    assert [r.get("text") for r in fake.requests] == ["Ann", None]
    assert all(r["media_urls"] == ["https://x.test/a.png"] for r in fake.requests)


async def test_a_dry_run_counts_rows_without_text_against_max_rejected_share(
    jobs: JobFactory,
) -> None:
    """Rows that would leave the text empty are losses: too many of them, and the dry run
    refuses the input as a run would."""
    jobs.csv(
        [{"phone": p, "first": f} for p, f in zip(numbers(4), ["Ann", "", "", "Di"], strict=True)]
    )
    job = jobs.job(message='text = "{first}"')
    with pytest.raises(InputError, match=r"2 of its 4 rows .*empty message: 2 rows"):
        await dry_run(job, FAST)


async def test_a_run_refuses_an_input_with_too_many_rows_without_text(jobs: JobFactory) -> None:
    """The run's scan counts rows that would leave the text empty as losses too: too many of
    them, and it sends nothing."""
    jobs.csv(
        [{"phone": p, "first": f} for p, f in zip(numbers(4), ["Ann", "", "", "Di"], strict=True)]
    )
    job = jobs.job(message='text = "{first}"')
    client = FakeClient()
    with pytest.raises(InputError, match=r"2 of its 4 rows .*empty message: 2 rows"):
        await run_job(job, FAST, client, clock=FakeClock())
    assert client.calls == []


@pytest.mark.parametrize(
    "value",
    ["A\tB", "Ann \U0001f600", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "Zo\u00eb\u00a0Li",
     "x\u00ady", "a\u200bb"],
    ids=["tab", "emoji", "zwj", "nbsp", "soft-hyphen", "zero-width-space"],
)  # fmt: skip
def test_a_name_with_a_tab_an_emoji_or_a_joiner_goes_out_as_it_is(value: str) -> None:
    """plain_check rejects control characters only: a tab, an emoji, a zero-width joiner (a
    family emoji), a no-break space or a soft hyphen, none printable to str.isprintable, pass
    unchanged."""
    out = checked(rows_of(value), plain_check(message("Hi {n}")))
    assert out == rows_of(value)
