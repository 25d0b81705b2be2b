"""The account's housekeeping: ``db migrate``, ``ledger copy``, ``suppress`` and
``optouts sync``."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
from dataclasses import dataclass

from bulk_mms.answers import OPTOUT_PAGE_MAX, OPTOUT_SYNC_PAGES
from bulk_mms.commands.common import (
    LEDGER_URL_ENV,
    api_key,
    check_ledger_file,
    client_for,
    find_config,
    sealed,
    settings_for,
)
from bulk_mms.commands.sandbox import endpoint
from bulk_mms.config import Settings, load_settings
from bulk_mms.console import say
from bulk_mms.errors import (
    AmbiguousSendError,
    ApiUnavailable,
    ConfigError,
    Exit,
    RetryableSendError,
)
from bulk_mms.ledger import copy_ledger, display, migrate_database
from bulk_mms.models import OptOut
from bulk_mms.retry import fetch_with_retry
from bulk_mms.suppression import parse_numbers, suppression_for
from bulk_mms.words import count


def cmd_db(args: argparse.Namespace) -> int:
    """``db migrate [URL]``: create or upgrade the ledger schema (a run does it on first use)."""
    url = args.url or os.environ.get(LEDGER_URL_ENV)
    if not url:
        raise ConfigError(
            "URL", f"name the database: bulk-mms db migrate URL (or ${LEDGER_URL_ENV})"
        )
    before, after = migrate_database(url)
    say(
        "db.migrated",
        f"bulk-mms: {display(url)}: schema version {before} -> {after}",
        database=display(url),
        before=before,
        after=after,
    )
    return Exit.OK


def cmd_ledger(args: argparse.Namespace) -> int:
    """``ledger copy SOURCE TARGET``: every event, in order, into a new ledger."""
    check_ledger_file("TARGET", args.target)
    n = asyncio.run(copy_ledger(args.source, args.target))
    say(
        "ledger.copied",
        f"bulk-mms: copied {n} events to {display(args.target)}",
        events=n,
        target=display(args.target),
    )
    return Exit.OK


def cmd_suppress(args: argparse.Namespace) -> int:
    """``suppress add|remove|list [NUMBER ...]``: the account's suppression list.

    Each given value that is not a phone number is named on a line of its own, the valid ones
    are still added (or removed), and the exit code is then 1.
    """
    path = find_config(args.config)
    listed = suppression_for(load_settings(path).suppression_file if path else None, args.ledger)
    if args.action == "list":
        for number in listed.numbers():
            print(number)
        return Exit.OK
    numbers, bad = parse_numbers(args.numbers)
    if not numbers and not bad:
        raise ConfigError("NUMBER", f"name the numbers to {args.action}")
    done_word = "added" if args.action == "add" else "removed"
    for given, why in bad:  # each named; the good ones are still done
        say(
            "suppress.not_a_number",
            f"bulk-mms: {given!r} is not a phone number ({why}): not {done_word}",
            level="error",
            number=given,
            reason=why,
        )
    if numbers:
        done = listed.add(numbers, args.reason) if args.action == "add" else listed.remove(numbers)
        where = "to" if args.action == "add" else "from"
        unit = "number" if len(done) == 1 else "numbers"
        say(
            f"suppress.{done_word}",
            f"bulk-mms: {len(done)} {unit} {done_word} {where} {listed.path}",
            numbers=done,
            list=str(listed.path),
        )
    return Exit.INCOMPLETE if bad else Exit.OK


def cmd_optouts(args: argparse.Namespace) -> int:
    """``optouts sync``: every number that opted out of the profile (``[api]
    messaging_profile_id``; else of any profile of the account) goes on the list, read
    unredacted. A block the API lists redacted all the same (``+447766****``) names nobody:
    it is counted, not added, and the sync exits 1 saying so. A list that goes on past
    :data:`~bulk_mms.answers.OPTOUT_SYNC_PAGES` pages is read no further: the numbers read
    are added, and the sync exits 1 saying so in one error line."""
    settings = sealed(settings_for(args)) if args.sandbox else settings_for(args)
    listed = suppression_for(settings.suppression_file, args.ledger)
    key = api_key(args)
    pulled = asyncio.run(_pull_optouts(settings, key, sandbox=args.sandbox))
    numbers, hidden = pulled.numbers, pulled.hidden
    added = listed.add(numbers, "opted out (messaging_optouts)")
    where = "with full numbers" if hidden else "on the profile"
    synced = f"{count(len(numbers), 'opt-out')} {where}, {len(added)} new on {listed.path}"
    if hidden:
        synced = (
            f"{count(hidden, 'opt-out')} listed with the number redacted (+447766****) though "
            "full numbers were asked for (redaction_enabled=false): not added, as they name "
            f"nobody; {synced}"
        )
    if pulled.cut:
        synced = (
            f"error: the opt-out list claims more than the {OPTOUT_SYNC_PAGES} pages (of "
            f"{OPTOUT_PAGE_MAX} opt-outs each) optouts sync reads: the rest is not synced; "
            f"{synced}"
        )
    event = "optouts.cut" if pulled.cut else "optouts.redacted" if hidden else "optouts.synced"
    say(
        event,
        f"bulk-mms: {synced}",
        level="error" if pulled.cut else "warning" if hidden else "info",
        optouts=len(numbers),
        redacted=hidden,
        added=len(added),
        list=str(listed.path),
        cut=pulled.cut,
    )
    return Exit.INCOMPLETE if hidden or pulled.cut else Exit.OK


@dataclass(frozen=True, slots=True)
class _Pulled:
    """What :func:`_pull_optouts` read of the opt-out list."""

    #: Every opted-out number, each once, in the order read.
    numbers: list[str]
    #: The blocks listed redacted (:attr:`~bulk_mms.models.OptOut.redacted`).
    hidden: int
    #: Whether the list claimed more pages than the :data:`OPTOUT_SYNC_PAGES` read (each
    #: bringing news): it was not read to its end.
    cut: bool


async def _pull_optouts(settings: Settings, key: str, *, sandbox: bool) -> _Pulled:
    """Every opted-out number of the profile, each once, page by page to ``meta.total_pages``
    or the first page that brings no new block (an empty page, or one that repeats: no
    answer makes it read on to a count of pages it claims), and never past
    :data:`OPTOUT_SYNC_PAGES` pages (what it holds is bounded, whatever the list claims). A
    block is a sender → number pair: a page of other senders' blocks of numbers already read
    is news, not a repeat. With them, the blocks listed redacted on the pages that brought
    news, and whether the bound stopped the reading."""
    async with (
        endpoint(settings, sandbox) as base_url,
        client_for(settings, base_url, key) as client,
    ):
        blocks: dict[OptOut, None] = {}  # in the order read
        hidden = 0
        page, pages = 1, 1
        while page <= min(pages, OPTOUT_SYNC_PAGES):
            try:
                found, pages = await fetch_with_retry(
                    functools.partial(
                        client.fetch_optouts, page, profile=settings.messaging_profile_id
                    ),
                    settings.retry,
                    what="optouts",
                )
            except (RetryableSendError, AmbiguousSendError) as exc:  # the network's, not ours
                raise ApiUnavailable(
                    f"the API cannot be reached ({exc}); nothing was changed: check base_url "
                    "and the network, then run optouts sync again"
                ) from None
            before = len(blocks)
            blocks.update(dict.fromkeys(found))
            if len(blocks) == before:
                break
            hidden += sum(block.redacted for block in found)
            page += 1
        named = (block.to for block in blocks if not block.redacted)
        cut = page > OPTOUT_SYNC_PAGES < pages
        return _Pulled(list(dict.fromkeys(named)), hidden, cut)
