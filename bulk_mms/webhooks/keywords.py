"""Inbound keywords onto the account's suppression list, as Telnyx keeps its block rules: a
``message.received`` that is only an opt-out keyword (STOP and its synonyms, or one the
settings add) puts its sender on the list; an opt-in keyword (START, UNSTOP, or one the
settings add) lifts a suppression that a STOP added, never one added by hand; any other text
changes nothing. Keywords are taken in the order they were texted (:func:`take_keywords`),
under the list's lock. A list that cannot be written raises, and nothing of the keyword is
recorded, so the receiver answers 503 and Telnyx delivers it again. Each function here
blocks on the list: a receiver calls it off the event loop
(:meth:`~bulk_mms.suppression.Suppressed.off_loop`)."""

from __future__ import annotations

from collections.abc import Container

import structlog

from bulk_mms.answers import address
from bulk_mms.codes import keyword
from bulk_mms.config import Settings
from bulk_mms.suppression import Suppressed, added_by_stop, listable, texted_at
from bulk_mms.webhooks.events import FIELD_MAX

log = structlog.get_logger(__name__)

#: The reason an inbound STOP is recorded under on the suppression list (with when it was
#: texted: :func:`~bulk_mms.suppression.texted_at`).
STOP_REASON = "texted STOP (webhook)"
#: What an inbound START's record on the suppression list says (a comment line, no number).
START_REASON = "texted START (webhook)"


def take_keywords(
    suppressed: Suppressed, settings: Settings, payload: object, texted: float | None, now: float
) -> tuple[bool, bool]:
    """An inbound message's STOP or START applied, in the order its sender texted them
    (``texted``: the event's ``occurred_at``): one older than the latest the suppression
    list records for that sender (:meth:`Suppressed.keyword_at`, read under the list's
    lock, as every receiver on it left it, whenever it started) changes nothing (Telnyx
    redelivers an event up to three times; a STOP redelivered after a START must not undo
    it). One that fails to be taken in (the list cannot be written) is not recorded, so
    its redelivery is taken. ``now``: the receiver's wall time, which the list records a
    number added or taken off at. (suppressed, lifted).

    Raises:
        ConfigError, LedgerError: the suppression list cannot be written.
    """
    words = settings.opt_out_words | settings.opt_in_words
    phone = _keyword_sender(suppressed, payload, words)
    if phone is None:
        return False, False
    with suppressed.held():
        latest = suppressed.keyword_at(phone)
        if texted is not None and latest is not None and texted < latest:
            log.info("webhook.keyword_stale", recipient=phone)
            return False, False
        # may raise: no 2xx, so Telnyx redelivers and it is taken again
        return (
            opt_out(suppressed, settings.opt_out_words, payload, texted, now=now),
            opt_in(suppressed, settings.opt_in_words, payload, texted, now=now),
        )


def opt_out(
    suppressed: Suppressed,
    words: Container[str],
    payload: object,
    texted: float | None = None,
    *,
    now: float,
) -> bool:
    """An inbound message that opts out (one of ``words``: STOP and its synonyms): its sender
    goes on the suppression list, so no later job texts them, with when it was texted
    (``texted``, if known) in its reason; a sender listed already gets that time recorded
    instead (:meth:`Suppressed.record_keyword`). True when it was added."""
    phone = _keyword_sender(suppressed, payload, words)
    if phone is None:
        return False
    reason = STOP_REASON if texted is None else texted_at(STOP_REASON, texted)
    added = suppressed.add([phone], reason, now)
    if not added and texted is not None:
        suppressed.record_keyword(phone, STOP_REASON, texted)
    log.info("webhook.opt_out", recipient=phone, new=bool(added))
    return bool(added)


def opt_in(
    suppressed: Suppressed,
    words: Container[str],
    payload: object,
    texted: float | None = None,
    *,
    now: float,
) -> bool:
    """An inbound START (one of ``words``: START, UNSTOP; case and surrounding spaces aside)
    lifts its sender's suppression, but only one a STOP added
    (:func:`~bulk_mms.suppression.added_by_stop`): a number suppressed by hand stays
    suppressed. When it was texted (``texted``, if known) is recorded on the list first,
    lifted or not, so a STOP texted before it and delivered after it changes nothing (a crash
    between the two leaves the number suppressed, and the redelivered START lifts it). The
    request is verified before this runs (signed by Telnyx), so nobody can lift a block by
    posting. True when it was lifted."""
    phone = _keyword_sender(suppressed, payload, words)
    if phone is None:
        return False
    if texted is not None:
        suppressed.record_keyword(phone, START_REASON, texted)
    if phone not in suppressed:
        return False
    reason = suppressed.reason(phone)
    if not added_by_stop(reason):
        log.info("webhook.opt_in_kept", recipient=phone, reason=reason)
        return False
    lifted = bool(suppressed.remove([phone], now))
    log.info("webhook.opt_in", recipient=phone, lifted=lifted)
    return lifted


def _keyword_sender(suppressed: Suppressed, payload: object, words: Container[str]) -> str | None:
    """The sender of an inbound message that is one of ``words`` (case and spaces aside), in
    E.164, when the suppression list is kept somewhere (:attr:`Suppressed.path`) and the
    sender is a number it can hold (:func:`~bulk_mms.suppression.listable`); else None."""
    if suppressed.path is None:
        return None
    if not isinstance(payload, dict):
        return None
    text, phone = payload.get("text"), address(payload.get("from"))
    if not isinstance(text, str) or keyword(text) not in words:
        return None
    if not isinstance(phone, str) or len(phone) > FIELD_MAX:
        return None
    return next(iter(listable([phone])), None)
