"""``python -m bulk_mms.fake_api``: run the fake alone, on a port, with its rules and faults."""

from __future__ import annotations

import argparse
import base64

from aiohttp import web

from bulk_mms.fake_api.app import FakeTelnyx
from bulk_mms.fake_api.faults import FAULT_PRESETS, parse_faults
from bulk_mms.fake_api.records import accept_log_writer
from bulk_mms.fake_api.rules import carrier_timeline


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - manual use
    parser = argparse.ArgumentParser(
        prog="python -m bulk_mms.fake_api", description="Run the fake Telnyx messaging API."
    )
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--key", help="require this API key (default: accept any)")
    parser.add_argument(
        "--fail-every",
        type=int,
        default=0,
        help="end numbers whose last 4 digits are a multiple of N in delivery_failed",
    )
    parser.add_argument(
        "--final-after", type=float, default=0.0, help="seconds until a recipient is final"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[*N]",
        help=f"misbehave on the next POSTs, in order (repeatable): {', '.join(FAULT_PRESETS)}",
    )
    for flag, what, codes in (
        ("--refuse", "refuse sends to", "CODE"),
        ("--report", "report delivery_failed for", "CODE[,CODE...]"),
    ):
        parser.add_argument(
            flag,
            action="append",
            default=[],
            metavar=f"NUMBER={codes}",
            help=f"{what} NUMBER (or *LAST4) with Telnyx error {codes} (repeatable)",
        )
    parser.add_argument(
        "--log",
        metavar="PATH",
        help="append each accepted message to PATH, one JSON line (id, from, to, key)",
    )
    parser.add_argument(
        "--replay-keys",
        action="store_true",
        help="replay a repeated Idempotency-Key's first success (Telnyx does not, for group MMS)",
    )
    parser.add_argument(
        "--number",
        action="append",
        default=[],
        metavar="NUMBER",
        help="a number of the account (repeatable): a send from any other is 400 / 40305",
    )
    parser.add_argument(
        "--lookup-lag",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="the GETs answer 404 for a message younger than this (Telnyx's records may lag)",
    )
    parser.add_argument(
        "--varied-stamps",
        action="store_true",
        help="write times in every form Telnyx uses (Z or offsets, 0-9 fraction digits)",
    )
    parser.add_argument(
        "--live-answers",
        action="store_true",
        help="the send's answer gives each recipient its status on the timeline, not queued",
    )
    parser.add_argument(
        "--webhook-url",
        metavar="URL",
        help="post signed delivery webhooks here (the key's public half is printed first)",
    )
    parser.add_argument(
        "--webhook-every",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="post the webhooks due this often (with --webhook-url)",
    )
    parser.add_argument(
        "--webhook-repeats",
        type=int,
        default=0,
        choices=range(3),
        metavar="N",
        help="take N 2xx answers to each webhook as lost: it comes again (0 to 2)",
    )
    parser.add_argument(
        "--webhooks-out-of-order",
        action="store_true",
        help="post webhooks latest first: a message.finalized before its message.sent",
    )
    parser.add_argument(
        "--webhooks-without-from",
        action="store_true",
        help="post webhooks whose payload names no sender (the spec requires no field)",
    )
    parser.add_argument(
        "--group-message-ids",
        action="store_true",
        help="name the group message (group_message_id) in every answer, webhook and record",
    )
    parser.add_argument(
        "--member-id-answers",
        action="store_true",
        help="answer a send with its first member's own id, the group's only in group_message_id",
    )
    args = parser.parse_args(argv)
    fake = FakeTelnyx(
        api_key=args.key,
        replay_keys=args.replay_keys,
        on_accept=accept_log_writer(args.log) if args.log else None,
        numbers=frozenset(args.number) if args.number else None,
        lookup_lag_s=args.lookup_lag,
        varied_stamps=args.varied_stamps,
        live_answers=args.live_answers,
        webhook_repeats=args.webhook_repeats,
        webhooks_out_of_order=args.webhooks_out_of_order,
        webhooks_without_from=args.webhooks_without_from,
        group_message_ids=args.group_message_ids,
        member_id_answers=args.member_id_answers,
    )
    if args.webhook_url:
        _sign_webhooks(fake, args.webhook_url, args.webhook_every)
    for table, items, several in (
        (fake.refuse, args.refuse, False),
        (fake.report, args.report, True),
    ):
        for item in items:
            number, sep, code = item.partition("=")
            given = code.split(",") if several else [code]
            if not sep or not all(c.isdigit() for c in given):
                parser.error(f"{item!r} is not NUMBER=CODE" + ("[,CODE...]" if several else ""))
            table[number] = code
    try:
        fake.faults.extend(parse_faults(",".join(args.fault)))
    except ValueError as exc:
        parser.error(str(exc))
    if args.fail_every or args.final_after:
        fake.delivery_status = carrier_timeline(
            args.fail_every, args.final_after / 3, args.final_after
        )
    web.run_app(fake.app(), host="127.0.0.1", port=args.port)


def _sign_webhooks(fake: FakeTelnyx, url: str, every: float) -> None:  # pragma: no cover
    """Post ``fake``'s webhooks to ``url`` every ``every`` seconds, signed by a key made now,
    whose public half is printed for the receiver (``TELNYX_PUBLIC_KEY``)."""
    # cryptography is the webhooks extra's: the fake runs without it unless it signs
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
        Encoding,
        PublicFormat,
    )

    fake.signing_key = Ed25519PrivateKey.generate()
    public = fake.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    print(f"TELNYX_PUBLIC_KEY={base64.b64encode(public).decode()}", flush=True)
    fake.webhook_url, fake.webhook_every_s = url, every


if __name__ == "__main__":  # pragma: no cover
    main()
