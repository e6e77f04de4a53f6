"""An outbox stream entry as the Lua scripts XADD it: its kinds, and the one parser (drain, dead letters, web).

Fields: ``t`` (kind), ``id`` (order id), ``u`` (buyer), ``q`` (quantity), ``p`` (unit price), ``ts`` (admitted,
ms), ``ct`` (cancels and payment decisions: when, ms), ``pb`` (pay by, ms), ``pid`` (paid: the provider's payment).
A dead letter stores an entry's fields as its payload, so ``parse_payload`` reads one back the same way.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

ORDER, CANCEL = "o", "c"
# Decisions of shared/lua/settle.lua (deals with a payment window): the order was paid, or expired unpaid.
PAID, EXPIRED = "p", "x"
KINDS = (ORDER, CANCEL, PAID, EXPIRED)
# Kinds that give the order's units back (reconcile counts them like a cancel).
RELEASING = (CANCEL, EXPIRED)
_PAYMENT_ID = re.compile(r"[A-Za-z0-9_\-]{1,255}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PRICE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,12})?")


class OutboxRow(NamedTuple):
    """One parsed outbox entry: an order (``kind='o'``) or a cancel (``kind='c'``).

    A NamedTuple and validated strings rather than UUID and Decimal objects: a batch parses a thousand of
    these, and PostgreSQL parses the text again anyway.
    """

    entry_id: str
    kind: str
    order_id: str  # canonical lowercase UUID
    user_id: int
    quantity: int
    unit_price: str  # digits with an optional fraction
    admitted_ms: int
    canceled_ms: int | None  # cancels: when; payment decisions (paid, expired): when decided
    fields: dict[str, str]
    pay_by_ms: int | None = None  # orders of a deal with a payment window
    payment_id: str = ""  # paid: the provider's payment


@dataclass(frozen=True)
class Unparsable:
    """An entry that cannot become a row at all (hand-written or corrupted)."""

    entry_id: str
    fields: dict[str, str]
    reason: str


def synthetic_order_id(deal_id: int, entry_id: str) -> str:
    """A stable id for an entry without a usable order id, so it can still be dead-lettered once."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"flashdeal:outbox:{deal_id}:{entry_id}"))


def parse_entry(entry_id: str, fields: dict[str, str]) -> OutboxRow | Unparsable:
    """Turn stream fields (``t, id, u, q, p, ts[, ct][, pb][, pid]``) into a typed row."""
    try:
        kind = fields["t"]
        if kind not in KINDS:
            raise ValueError(f"unknown entry type {kind!r}")
        order_id = fields["id"].lower()
        if not _UUID.fullmatch(order_id):
            raise ValueError(f"order id {fields['id']!r} is not a UUID")
        price = fields["p"]
        if not _PRICE.fullmatch(price):
            raise ValueError(f"price {price!r} is not a positive decimal")
        payment_id = fields.get("pid", "")
        if payment_id and not _PAYMENT_ID.fullmatch(payment_id):
            raise ValueError(f"payment id {payment_id!r} is not a provider id")
        return OutboxRow(
            entry_id,
            kind,
            order_id,
            int(fields["u"]),
            int(fields["q"]),
            price,
            int(fields["ts"]),
            int(fields["ct"]) if kind != ORDER else None,
            fields,
            int(fields["pb"]) if fields.get("pb") else None,
            payment_id,
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        return Unparsable(entry_id, dict(fields), f"unparsable outbox entry: {type(exc).__name__}: {exc}")


def parse_payload(entry_id: str, payload: dict[str, Any]) -> OutboxRow | Unparsable:
    """Rebuild a row from a dead letter's stored payload (JSON: its values may have been stored as numbers)."""
    return parse_entry(entry_id, {k: str(v) for k, v in payload.items()})


def inflight_member(fields: dict[str, str]) -> str:
    """The member of the deal's in-flight index that stands for this outbox entry: ``order_id|kind``.

    The scripts that XADD an entry ZADD this member beside it (admit.lua, cancel.lua, settle.lua spell
    it ``order_id .. '|' .. kind``); the drain removes it in the step that acknowledges the entry.
    """
    return f"{fields.get('id', '')}|{fields.get('t', '')}"


def parse_inflight_member(member: str) -> tuple[str, str]:
    """``(order_id, kind)`` of an in-flight index member (see ``inflight_member``)."""
    order_id, _, kind = member.rpartition("|")
    return order_id, kind
