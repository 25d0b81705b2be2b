"""The sandbox account's rules: its identities, the codes it refuses a send with, the carriers'
verdicts after acceptance and their delivery timeline, and what a recipient costs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Final

from bulk_mms import delivery
from bulk_mms.codes import MEANINGS

#: The estimate the POST gives per recipient (the spec's example: rate + carrier fee).
COST_PER_RECIPIENT = "0.0051"
ZERO: Final = Decimal(0)
#: Per recipient: the rate, the estimated carrier fee, and the final one (a carrier's
#: pass-through fee, known once the message is final: the POST's cost is an estimate).
RATE: Final = Decimal("0.00205")
CARRIER_FEE_ESTIMATE: Final = Decimal("0.00305")
CARRIER_FEE_FINAL: Final = Decimal("0.00400")
#: The sandbox account's identities, as the spec's examples give them.
SANDBOX_FROM: Final = "+18445550001"
PROFILE_ID: Final = "4000eba1-a0c0-4563-9925-b25e842a7cb6"
PROFILE_NAME: Final = "sandbox"
ORGANIZATION_ID: Final = "b448f9cc-a842-4784-98e9-03c1a5872950"

#: The sandbox's carrier rules for ``run --sandbox`` and ``track --sandbox`` (and so
#: ``make demo``): a number ending in 0300 has opted out (40300: its group is refused with 409),
#: one ending in 0016 is reported past T-Mobile's daily cap (40016: a delivery status after
#: acceptance, resendable).
SANDBOX_REFUSE: Final = {"*0300": "40300"}
SANDBOX_REPORT: Final = {"*0016": "40016"}

#: The codes the API answers a POST with, and their HTTP status (FACTS 3): the only refusals
#: the fake gives synchronously by default. Carrier codes (40001-40018...) are not here: they
#: come after acceptance, in delivery statuses, records and webhooks.
REFUSALS: Final[Mapping[str, tuple[int, str]]] = {
    "40300": (409, MEANINGS["40300"]),
    "40318": (429, MEANINGS["40318"]),
    "40333": (429, MEANINGS["40333"]),
    "20100": (402, MEANINGS["20100"]),
    "10009": (401, "Authentication failed"),
    "10011": (429, "Too many requests"),
}
#: The delivery status a reported code ends in; any other reported code: ``delivery_failed``.
#: (The spec: a message not out of the queue in time "will be discarded and marked as
#: 'sending_failed'".)
REPORT_STATUS: Final[Mapping[str, str]] = {"40014": "sending_failed"}

#: Every delivery status a recipient of a group message can have (the spec's eight, and
#: ``unknown``: final and unconfirmed, for recipients not on Telnyx's network, FACTS 4).
STATUSES: Final = delivery.STATUSES
FINAL_STATUSES: Final = delivery.FINAL
#: The statuses the spec allows a ``cc[]`` entry (no ``expired``, no ``unknown``).
CC_STATUSES: Final = frozenset(STATUSES) - {"expired", "unknown"}
#: Final statuses of messages that never left Telnyx: no ``message.sent``, no charge.
NEVER_SENT: Final = frozenset({"sending_failed", "expired"})
#: The MDR status each final delivery status is recorded as (MdrDetailResponse.status).
MDR_STATUS: Final[Mapping[str, str]] = {
    "delivered": "DELIVERED",
    "delivery_failed": "FAILED",
    "sending_failed": "GW_REJECT",
    "expired": "GW_TIMEOUT",
    "delivery_unconfirmed": "DLR_UNCONFIRMED",
    "unknown": "DLR_UNCONFIRMED",
}


def rule(table: dict[str, str], phone: str) -> str | None:
    """The code a rule table gives ``phone``: its own entry, or ``*`` and its last four digits."""
    return table.get(phone) or table.get(f"*{phone[-4:]}")


def carrier_timeline(
    fail_every: int = 5,
    sent_after: float = 1.0,
    final_after: float = 3.0,
    *,
    outcomes: Mapping[str, str] | None = None,
) -> Callable[[str, float], str]:
    """A delivery timeline for :attr:`FakeTelnyx.delivery_status`, like a carrier's.

    Every recipient is ``queued``, ``sending`` from half of ``sent_after``, ``sent`` after
    ``sent_after`` seconds, then final after ``final_after``. The final status is the one
    ``outcomes`` gives the number (a rule table: number, or ``*`` and its last four digits →
    any status of :data:`FINAL_STATUSES`, ``unknown`` included), else ``delivery_failed`` for
    numbers whose last four digits are a multiple of ``fail_every`` (0: none), else
    ``delivered``. A final status of a message that never left Telnyx (``sending_failed``,
    ``expired``) comes at ``sent_after``, in place of ``sent``. Deterministic, so a test can
    predict it.

    Raises:
        ValueError: ``outcomes`` names a status that is not final.
    """
    table = dict(outcomes or {})
    if bad := sorted(set(table.values()) - FINAL_STATUSES):
        raise ValueError(f"not final statuses: {', '.join(bad)}")

    def status(phone: str, age: float) -> str:
        final = rule(table, phone) or (
            "delivery_failed" if will_fail(phone, fail_every) else "delivered"
        )
        if age < sent_after / 2:
            return "queued"
        if age < sent_after:
            return "sending"
        if final in NEVER_SENT:
            return final
        return "sent" if age < final_after else final

    return status


def will_fail(phone: str, fail_every: int) -> bool:
    """Whether :func:`carrier_timeline` ends ``phone`` in ``delivery_failed``."""
    return fail_every > 0 and int(phone[-4:]) % fail_every == 0


def amount(value: Decimal) -> str:
    """A decimal amount as the API writes it: a string, no trailing zeros (``"0.0102"``)."""
    text = format(value.normalize(), "f")
    return text if value else "0"


def money(value: Decimal) -> dict[str, str]:
    return {"amount": amount(value), "currency": "USD"}


def cost_of(status: str) -> tuple[Decimal, Decimal] | None:
    """One recipient's (rate, carrier fee): estimated until final, final after, and None
    (no charge) for a message that never left Telnyx."""
    if status in NEVER_SENT:
        return None
    if status in FINAL_STATUSES:
        return RATE, CARRIER_FEE_FINAL
    return RATE, CARRIER_FEE_ESTIMATE


def report_errors(rule: str | None) -> list[dict[str, str]]:
    """The ``errors`` entries of a failed delivery: one per code of the rule (several, comma
    separated, in that order: Telnyx's ``errors`` is a list), else a plain 40008."""
    if rule is None:
        return [{"code": "40008", "title": "Undeliverable", "detail": "The carrier refused it."}]
    return [
        {
            "code": code,
            "title": MEANINGS.get(code, "Refused"),
            "detail": f"Reported by the carrier ({code}).",
        }
        for code in rule.split(",")
    ]
