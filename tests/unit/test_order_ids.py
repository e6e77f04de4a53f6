"""Order ids (shared/order_ids.py): UUIDv8 carrying the deal, random bits drawn in batches, never shared."""

from __future__ import annotations

import os
import threading
import uuid

from shared.order_ids import deal_of, new_order_id


def test_ids_are_uuid8_naming_their_deal_and_unique() -> None:
    ids = [new_order_id(42) for _ in range(3000)]  # several batches of random bytes
    assert len(set(ids)) == len(ids)
    for oid in ids:
        u = uuid.UUID(oid)
        assert str(u) == oid and u.version == 8 and u.variant == uuid.RFC_4122 and deal_of(oid) == 42
    assert uuid.UUID(new_order_id(1 << 48)).version == 4  # too large for 48 bits: a plain random UUID


def test_threads_and_a_forked_child_never_share_random_bytes() -> None:
    new_order_id(7)  # this thread's batch is drawn
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.extend(new_order_id(7) for _ in range(50))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what would be the parent's next ids, were the batch inherited
        os.write(write, "\n".join(new_order_id(7) for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        child = f.read().split("\n")
    mine = [new_order_id(7) for _ in range(50)]
    rand = {oid.replace("-", "")[13:] for oid in seen + child + mine}  # the random part only
    assert len(rand) == len(seen) + len(child) + len(mine) == 300
