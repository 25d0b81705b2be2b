"""The list endpoints: ``GET /messaging_optouts`` (the opt-out blocks) and ``GET /reports/mdrs``
(one detail record per recipient of each accepted message), filtered and paged."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bulk_mms.fake_api.records import OptOut
from bulk_mms.fake_api.rules import MDR_STATUS, PROFILE_NAME, ZERO, amount, cost_of
from bulk_mms.fake_api.state import FakeState
from bulk_mms.fake_api.wire import (
    MDR_STAMP,
    OPTOUT_STAMP,
    auth_refusal,
    error_object,
    errors_answer,
    json_answer,
    page_meta,
    paging,
    parse_flag,
    parse_when,
    redacted,
)


class ListEndpoints(FakeState):
    """The opt-out list and the message detail records."""

    async def get_optouts(self, request: web.Request) -> web.StreamResponse:
        """``GET /messaging_optouts``: the opt-out blocks (from→to pairs), a page at a time.

        Filters ``filter[messaging_profile_id]``, ``filter[from]``, ``created_at[gte]`` and
        ``created_at[lte]``; ``to`` is redacted (``+447766****``) unless
        ``redaction_enabled=false`` (or :attr:`redaction_default` is False and it is not
        given), and always with :attr:`always_redacted`. ``page[size]`` above 250 is a 400,
        as the spec bounds it.
        """
        # the spec answers this list's 400 and 401 with one bare messaging_Error, no errors[]
        if auth_refusal(request, self.api_key) is not None:
            return json_answer(
                401, error_object("10009", "Authentication failed", "The API key is not valid.")
            )
        q = request.query
        try:
            page, size = paging(q)
            gte = parse_when(q.get("created_at[gte]"))
            lte = parse_when(q.get("created_at[lte]"))
            redact = parse_flag(q.get("redaction_enabled"), self.redaction_default)
            redact = redact or self.always_redacted
        except ValueError as exc:
            return json_answer(400, error_object("10015", "Invalid parameter", str(exc)))
        items = [
            o if isinstance(o, OptOut) else OptOut(o, created_at=self._epoch) for o in self.optouts
        ]
        profile, sender = q.get("filter[messaging_profile_id]"), q.get("filter[from]")
        chosen = [
            o
            for o in items
            if (profile is None or o.messaging_profile_id == profile)
            and (sender is None or o.from_ == sender)
            and (gte is None or o.created_at >= gte)
            and (lte is None or o.created_at <= lte)
        ]
        data = [
            {
                "from": o.from_,
                "to": redacted(o.to) if redact else o.to,
                "keyword": o.keyword,
                "messaging_profile_id": o.messaging_profile_id,
                "created_at": self.stamp(o.created_at, OPTOUT_STAMP),
            }
            for o in chosen[(page - 1) * size : page * size]
        ]
        return json_answer(200, {"data": data, "meta": page_meta(page, size, len(chosen))})

    def mdrs(self, cld: str | None = None) -> list[dict[str, Any]]:
        """Every detail record listed now: one per recipient of each accepted message older
        than :attr:`records_lag_s`, oldest first, each stamped with its message's sent time
        (the spec's ``created_at``, "Message sent time": when the queue let it go, its
        ``wait_seconds`` after the API took it). With ``cld``, only that recipient's, the number
        as the spec writes it (+E.164: ``+15551237654``), read from :attr:`by_member`: a
        lookup, however many were sent."""
        cutoff = self.wall() - self.records_lag_s
        out = []
        messages = self.by_id.values() if cld is None else self.by_member.get(cld, [])
        for msg in sorted(messages, key=lambda m: m.received_wall):
            sent_on = msg.received_wall + msg.wait_seconds
            if sent_on > cutoff:
                continue
            for i, phone in enumerate(msg.to):
                if cld is not None and phone != cld:
                    continue
                status = self._observe(msg, i)
                cost = cost_of(status) or (ZERO, ZERO)
                price = cost_of("delivered") or (ZERO, ZERO)
                record: dict[str, Any] = {
                    "record_type": "mdr_report",
                    "id": msg.recipient_ids[i],
                    "cli": msg.from_,
                    "cld": phone,
                    "created_at": self.stamp(sent_on, MDR_STAMP),
                    "direction": "outbound",
                    "message_type": "MMS",
                    # an MDR's status is the final one; until then, no receipt yet
                    "status": MDR_STATUS.get(status, "DLR_UNCONFIRMED"),
                    "rate": amount(sum(price, ZERO)),
                    "parts": 1,
                    "cost": amount(sum(cost, ZERO)),
                    "currency": "USD",
                    "profile_name": PROFILE_NAME,
                }
                if self.names_group_messages:
                    record["group_message_id"] = msg.id
                out.append(record)
        return out

    async def get_mdrs(self, request: web.Request) -> web.StreamResponse:
        """``GET /reports/mdrs``: the detail records (:meth:`mdrs`), filtered and paged.

        Filters ``start_date`` and ``end_date`` (ISO 8601 date or time, both inclusive),
        ``id``, ``direction``, ``cli``, ``cld`` (numbers matched as given: the spec writes them
        +E.164), ``status``, ``message_type``. The spec names no
        page parameters for it but answers with ``meta``; the fake pages with ``page[number]``
        and ``page[size]`` (default 20, at most 250) like Telnyx's other lists, or, without
        :attr:`records_paging`, ignores them and serves the first 20.
        """
        if (denied := auth_refusal(request, self.api_key)) is not None:
            return denied
        q = request.query
        try:
            page, size = paging(q if self.records_paging else {})
            start, end = parse_when(q.get("start_date")), parse_when(q.get("end_date"))
        except ValueError as exc:
            return errors_answer(400, "10015", "Bad Request", str(exc))
        direction = q.get("direction")
        if direction is not None and direction.upper() not in ("INBOUND", "OUTBOUND"):
            return errors_answer(400, "10015", "Bad Request", "direction is INBOUND or OUTBOUND.")
        exact = {k: q[k] for k in ("id", "cli", "cld") if k in q}
        upper = {k: q[k].upper() for k in ("direction", "status", "message_type") if k in q}
        chosen = []
        for rec in self.mdrs(q.get("cld")):
            at = parse_when(rec["created_at"])
            assert at is not None
            if (start is not None and at < start) or (end is not None and at > end):
                continue
            if any(rec[k] != v for k, v in exact.items()):
                continue
            if any(rec[k].upper() != v for k, v in upper.items()):
                continue
            chosen.append(rec)
        data = chosen[(page - 1) * size : page * size]
        return json_answer(200, {"data": data, "meta": page_meta(page, size, len(chosen))})
