"""Order ids that name their deal: a lookup goes straight to one deal's keys instead of every live deal's."""

from __future__ import annotations

import secrets
import uuid

DEAL_BITS = 48  # the deal id fills the first 48 bits of the UUID (RFC 9562 version 8 "custom" layout)
_VERSION = 8


def new_order_id(deal_id: int) -> str:
    """A fresh order id for deal_id: UUIDv8 = 48-bit deal id | version | 74 random bits | variant.

    74 random bits keep ids unguessable (an id alone never grants access: lookups check the owner) and
    collision-free within a deal (birthday bound at ~2^37 orders). A deal id too large for 48 bits gets
    a plain random UUID, which still works; its lookups fall back to PostgreSQL's deal_id.
    """
    if not 0 < deal_id < 1 << DEAL_BITS:
        return str(uuid.uuid4())
    rand = secrets.randbits(74)
    value = (deal_id << 80) | (_VERSION << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def deal_of(order_id: str) -> int | None:
    """The deal id a version-8 order id carries, or None (ids made before, or for very large deal ids)."""
    u = uuid.UUID(order_id)
    if u.version != _VERSION:
        return None
    deal_id = u.int >> 80
    return deal_id or None
