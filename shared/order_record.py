"""The gate's order record: the value of a deal's ``orders`` hash, built and parsed only here.

Format: ``user|qty|price|admitted_ms|status[|pay_by_ms]`` (``pay_by_ms`` only for deals with a payment
window). The Lua scripts cannot import this module: they spell the same format, named once in
``shared/lua/admit.lua`` ("ORDER RECORD"), and tests/integration/test_gate.py checks that what they write parses here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from shared.clock import ms_to_dt

SEPARATOR = "|"


@dataclass(frozen=True)
class LiveOrder:
    """An order as the gate remembers it (before or after it is persisted)."""

    order_id: str
    deal_id: int
    user_id: int
    quantity: int
    unit_price: Decimal
    admitted_at: datetime
    canceled: bool
    state: str = "accepted"  # accepted | canceled | paid | expired (the gate's record)
    pay_by: datetime | None = None  # deals with a payment window only


def order_record(
    user_id: int, quantity: int, unit_price: Decimal | str, admitted_ms: int, state: str, pay_by_ms: int | None = None
) -> str:
    """The record ``admit.lua`` (and cancel, settle, load_deal) writes for an order."""
    fields = [str(user_id), str(quantity), str(unit_price), str(admitted_ms), state]
    if pay_by_ms is not None:
        fields.append(str(pay_by_ms))
    return SEPARATOR.join(fields)


def parse_order_record(order_id: str, deal_id: int, rec: str) -> LiveOrder:
    """The order a record describes (ValueError when it is not a record)."""
    user, qty, price, ts, state, *rest = rec.split(SEPARATOR)
    return LiveOrder(
        order_id=order_id,
        deal_id=deal_id,
        user_id=int(user),
        quantity=int(qty),
        unit_price=Decimal(price),
        admitted_at=ms_to_dt(int(ts)),
        canceled=state == "canceled",
        state=state,
        pay_by=ms_to_dt(int(rest[0])) if rest else None,
    )
