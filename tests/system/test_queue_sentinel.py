"""The waiting room on a real Sentinel topology, through a failover: what the replicas held is kept.

Three buyers wait behind one live pass; once the replicas hold the line, the primary is SIGKILLed. On the
promoted replica the admitted buyer still orders with the pass, the others keep their places, a buyer
without a pass is refused and a new buyer queues behind them (docs/waiting-room.md, "Faults").
"""

from __future__ import annotations

import pytest
import redis

from harness.waits import wait_for, wait_until
from shared.deals import deal_stats
from shared.gate import Admission, Gate
from shared.queue import QueueGate, QueueRules
from shared.redis import text_client
from tests.fixtures.topologies import SentinelSetup
from tests.helpers import make_deal, through_failover

pytestmark = pytest.mark.slow


def _replicas_caught_up(setup: SentinelSetup, primary: int) -> bool:
    """Every replica of ``primary`` has acknowledged all of its replication stream."""
    info = redis.Redis("127.0.0.1", primary, socket_timeout=1).info("replication")
    links = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    return len(links) == len(setup.topology.ports.data) - 1 and all(
        int(v["offset"]) >= int(info["master_repl_offset"]) for v in links
    )


def test_the_waiting_room_keeps_its_replicated_line_through_a_failover(db, sentinel_setup: SentinelSetup) -> None:
    client = text_client(sentinel_setup.settings)
    gate = Gate.from_settings(client, sentinel_setup.settings)
    queue = QueueGate(gate.redis, gate.keys, 60_000, gate.direct)
    deal = make_deal(db, gate, stock=5, limit=1, queue=QueueRules(rate=1000, max_live_passes=1))
    for buyer in (1, 2, 3):
        assert queue.join(deal.id, buyer).state in ("waiting", "admitted")
    assert wait_until(lambda: queue.status(deal.id, 1).state == "admitted", 10)
    places = {buyer: queue.status(deal.id, buyer).ahead for buyer in (2, 3)}
    assert places == {2: 0, 3: 1}  # one live pass at a time: the others wait in arrival order

    old = sentinel_setup.topology.primary()
    wait_for(lambda: _replicas_caught_up(sentinel_setup, old), 10, "replicas holding the line")
    sentinel_setup.topology.kill(old)
    assert wait_until(lambda: sentinel_setup.topology.primary() != old, 30, 0.05), "no failover"

    # The promoted replica has the line: the admitted buyer is still admitted and orders with the pass.
    assert through_failover(lambda: queue.status(deal.id, 1)).state == "admitted"
    assert through_failover(lambda: gate.admit(deal.id, 99, 1, "no-pass")).outcome is Admission.QUEUE_PASS_REQUIRED
    assert through_failover(lambda: gate.admit(deal.id, 1, 1, "with-pass", queue_pass=True)).outcome is (
        Admission.ACCEPTED
    )
    # The used pass frees its slot: the next in line is let in, the one behind keeps its place.
    assert wait_until(lambda: queue.status(deal.id, 2).state == "admitted", 10)
    assert queue.status(deal.id, 3).ahead == 0
    assert queue.join(deal.id, 4).state == "waiting" and queue.status(deal.id, 4).ahead == 1
    stats = deal_stats(db, gate, deal.id).queue
    assert stats is not None and stats["passes_used"] == 1 and stats["admitted"] == 2 and stats["waiting"] == 2
    client.close()
