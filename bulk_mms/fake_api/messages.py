"""The documented message object (``OutboundMessagePayload``) as the fake renders it, and the
two lookups that answer with it: ``GET /messages/group/{message_id}`` and ``GET /messages/{id}``."""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from bulk_mms.fake_api.records import Accepted
from bulk_mms.fake_api.rules import (
    CC_STATUSES,
    FINAL_STATUSES,
    ORGANIZATION_ID,
    PROFILE_ID,
    ZERO,
    cost_of,
    money,
    report_errors,
)
from bulk_mms.fake_api.state import FakeState
from bulk_mms.fake_api.wire import auth_refusal, errors_answer, json_answer


class MessageViews(FakeState):
    """Messages as the API shows them: the send's answer, the GETs' and the webhooks' payload."""

    def _record(
        self,
        msg: Accepted,
        *,
        only: int | None = None,
        live: bool = False,
        status: str | None = None,
        send: bool = False,
    ) -> dict[str, Any]:
        """The documented message object (OutboundMessagePayload), for the whole group or for
        recipient ``only``.

        ``live``: statuses as they stand now (the GETs), else ``queued`` (the send);
        ``status`` overrides it (a webhook's); ``send``: the send's answer (its amounts
        strings whatever :attr:`numeric_amounts` says). Money is a string amount: the
        estimate until a recipient is final, then its final cost (null for one that never
        left Telnyx).
        """
        indexes = list(range(len(msg.to))) if only is None else [only]
        if status is not None:
            statuses = [status] * len(indexes)
        else:
            statuses = [self._observe(msg, i) if live else "queued" for i in indexes]
        keys = [(msg.id, i) for i in indexes]
        costs = [cost_of(s) for s in statuses]
        rates = [c[0] for c in costs if c is not None]
        fees = [c[1] for c in costs if c is not None]
        sent = [self._sent_at[k] for k in keys if k in self._sent_at]
        final = [self._final_at[k] for k in keys if k in self._final_at]
        all_final = live and all(s in FINAL_STATUSES for s in statuses)
        errors = [
            error
            for i, s in zip(indexes, statuses, strict=True)
            if s in ("delivery_failed", "sending_failed")
            for error in report_errors(self.report_code(msg.to[i]))
        ]
        body = msg.body
        text = body.get("text")
        listed = [
            {
                "phone_number": msg.to[i],
                "status": s,
                "carrier": "T-MOBILE USA, INC.",
                "line_type": "Wireless",
            }
            for i, s in zip(indexes, statuses, strict=True)
        ]
        in_cc = self.statuses_in_cc and only is None
        if in_cc:  # cc's status enum has neither expired nor unknown: no status, then
            for entry in listed[1:]:
                if entry["status"] not in CC_STATUSES:
                    del entry["status"]
        # a recipient's own message shows the group's other participants (Telnyx: group
        # webhooks "will show all participants"), with no status of theirs; the group's own
        # message, with statuses_in_cc, its members past the first, with theirs
        cc = (
            listed[1:]
            if in_cc
            else [
                {"phone_number": p, "carrier": "T-MOBILE USA, INC.", "line_type": "Wireless"}
                for j, p in enumerate(msg.to)
                if only is not None and j != only
            ]
        )
        if self.sender_in_cc:  # the sender too, a participant with no status of its own
            cc.append({"phone_number": msg.from_, "carrier": "TELNYX LLC", "line_type": "VoIP"})
        record: dict[str, Any] = {
            "record_type": "message",
            "direction": "outbound",
            "id": msg.id if only is None else msg.recipient_ids[only],
            "type": "MMS",
            "messaging_profile_id": PROFILE_ID,
            "organization_id": ORGANIZATION_ID,
            "from": {"phone_number": msg.from_, "carrier": "TELNYX LLC", "line_type": "VoIP"},
            "to": listed[:1] if in_cc else listed,
            "cc": cc,
            "text": text,
            "subject": body.get("subject"),
            "media": [
                {"url": u, "content_type": None, "sha256": None, "size": None}
                for u in body.get("media_urls") or []
            ],
            "webhook_url": body.get("webhook_url"),
            "webhook_failover_url": body.get("webhook_failover_url"),
            "encoding": "GSM-7",
            "parts": 1,
            "tags": [],
            "cost": money(sum(rates, ZERO) + sum(fees, ZERO)) if rates else None,
            "cost_breakdown": (
                {"carrier_fee": money(sum(fees, ZERO)), "rate": money(sum(rates, ZERO))}
                if rates
                else None
            ),
            "received_at": msg.received_at,
            "sent_at": self.stamp(min(sent)) if sent else None,
            "completed_at": self.stamp(max(final)) if all_final and final else None,
            "valid_until": None,
            "errors": errors,
            "wait_seconds": msg.wait_seconds,
        }
        if (
            self.numeric_amounts and live and not send
        ):  # the GET page's example: amounts as JSON numbers
            _numeric(record.get("cost"))
            for part in (record.get("cost_breakdown") or {}).values():
                _numeric(part)
        if text is None:
            del record["text"]  # the schema's text is a string, not nullable: absent, not null
        else:
            record["num_chars"] = len(text)
        out = sparse(record) if self.sparse_answers else record
        if self.names_group_messages:  # undeclared, so beside even the least the spec promises
            out["group_message_id"] = msg.id
        if send and self.member_id_answers:
            out["id"] = msg.recipient_ids[0]
        return out

    async def get_group(self, request: web.Request) -> web.Response:
        """``GET /messages/group/{message_id}``: one message per recipient, as they stand."""
        if (denied := auth_refusal(request, self.api_key)) is not None:
            return denied
        msg = self.by_id.get(request.match_info["message_id"])
        if msg is None or not self.servable(msg):
            return errors_answer(404, "10005", "Resource not found", "No such group message.")
        if self.statuses_in_cc:
            return json_answer(200, {"data": [self._record(msg, live=True)]})
        data = [self._record(msg, only=i, live=True) for i in range(len(msg.to))]
        if self.group_message_listed:  # the conversation's messages: the group's own too
            data.insert(0, self._record(msg, live=True))
        return json_answer(200, {"data": data})

    async def get_message(self, request: web.Request) -> web.Response:
        """``GET /messages/{id}``: a group message (every recipient) or one recipient's."""
        if (denied := auth_refusal(request, self.api_key)) is not None:
            return denied
        mid = request.match_info["id"]
        msg, only = self.by_id.get(mid), None
        if msg is None and mid in self.by_recipient_id:
            msg, only = self.by_recipient_id[mid]
        if msg is None or not self.servable(msg):
            return errors_answer(404, "10005", "Resource not found", "No such message.")
        data = self._record(msg, only=only, live=True)
        return json_answer(200, {"data": data})


def _numeric(money: dict[str, Any] | None) -> None:
    """A money object's ``amount`` as a JSON number instead of a string (in place)."""
    if money is not None:
        money["amount"] = float(money["amount"])


#: The fields of a message object the spec gives ``null`` as a value.
NULLABLE: Final = frozenset(
    {"completed_at", "cost", "cost_breakdown", "sent_at", "subject", "valid_until",
     "wait_seconds", "webhook_failover_url", "webhook_url"}
)  # fmt: skip
#: Fields the spec does not declare, as a newer API may add them beside its own.
UNDECLARED: Final[dict[str, Any]] = {
    "delivery_channel": "mms",
    "routing": {"hops": [1, "two", None], "region": None},
}


def sparse(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as little as the spec allows (:attr:`FakeState.sparse_answers`): its
    :data:`NULLABLE` fields null; of the others only ``id``, ``to``, a ``cc`` that lists
    anyone (each entry its number and status alone) and the ``errors`` of a failed delivery
    (each its ``code`` and ``title``, the two the spec requires); and :data:`UNDECLARED`."""
    out: dict[str, Any] = dict.fromkeys(NULLABLE & record.keys())
    out["id"] = record["id"]
    for key in ("to", "cc"):  # an empty cc is left out
        if key == "to" or record[key]:
            out[key] = [
                {k: v for k, v in entry.items() if k in ("phone_number", "status")}
                for entry in record[key]
            ]
    if record["errors"]:
        out["errors"] = [{"code": e["code"], "title": e["title"]} for e in record["errors"]]
    return {**out, **UNDECLARED}
