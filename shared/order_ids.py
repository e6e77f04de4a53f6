"""Order ids that name their deal: a lookup goes straight to one deal's keys instead of every live deal's."""

from __future__ import annotations

import os
import threading
import uuid

DEAL_BITS = 48  # the deal id fills the first 48 bits of the UUID (RFC 9562 version 8 "custom" layout)
_VERSION = 8
_BATCH = 256  # ids per getrandom call
_local = threading.local()


def _random74() -> int:
    """74 bits from the OS's CSPRNG, drawn 256 ids at a time per thread.

    Why batched: ``secrets.randbits`` is one ``getrandom`` system call per order; reading 2,560 bytes
    once serves 256 orders from the same source. Per thread, and reset after a fork (another pid),
    so no two threads or processes ever share bytes.
    """
    pool = getattr(_local, "pool", None)
    if pool is None or pool[2] != os.getpid() or pool[1] >= _BATCH * 10:
        pool = [os.urandom(_BATCH * 10), 0, os.getpid()]
        _local.pool = pool
    buf, i, _pid = pool
    pool[1] = i + 10
    return int.from_bytes(buf[i : i + 10], "big") >> 6  # 80 bits read, 74 kept


def new_order_id(deal_id: int) -> str:
    """A fresh order id for deal_id: UUIDv8 = 48-bit deal id | version | 74 random bits | variant.

    74 random bits keep ids unguessable (an id alone never grants access: lookups check the owner) and
    collision-free within a deal (birthday bound at ~2^37 orders). A deal id too large for 48 bits gets
    a plain random UUID, which still works; its lookups fall back to PostgreSQL's deal_id.
    """
    if not 0 < deal_id < 1 << DEAL_BITS:
        return str(uuid.uuid4())
    rand = _random74()
    value = (deal_id << 80) | (_VERSION << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    # What str(uuid.UUID(int=value)) gives, without the UUID object (its checks cost more than the rest).
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def deal_of(order_id: str) -> int | None:
    """The deal id a version-8 order id carries, or None (ids made before, or for very large deal ids)."""
    u = uuid.UUID(order_id)
    if u.version != _VERSION:
        return None
    deal_id = u.int >> 80
    return deal_id or None
