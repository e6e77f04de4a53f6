"""The waiting room on a real six-node Redis Cluster: join, poll, inlet, the pass's order and the stats, on deals
whose slots sit on every shard (each deal's queue keys share its hash tag: one script, one slot)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from shared.deals import deal_stats
from shared.gate import Admission, Gate
from shared.queue import QueueGate, QueueRules
from shared.redis import text_client
from tests.fixtures.topologies import ClusterSetup
from tests.helpers import make_deal

pytestmark = pytest.mark.slow


@pytest.fixture()
def gate(cluster_setup: ClusterSetup) -> Iterator[Gate]:
    """A gate on the cluster, as every flashdeal process builds it."""
    client = text_client(cluster_setup.settings)
    yield Gate.from_settings(client, cluster_setup.settings)
    client.close()


def test_join_poll_inlet_and_the_pass_order_run_on_every_shard(db, gate, cluster_setup) -> None:
    queue = QueueGate(gate.redis, gate.keys, 60_000, gate.direct)
    deals: list[int] = []
    while {cluster_setup.topology.primary_of(key_slot(gate.keys.deal(d).queue.encode())) for d in deals} != set(
        cluster_setup.topology.primaries()
    ):
        deals.append(make_deal(db, gate, stock=5, queue=QueueRules(rate=1000)).id)
    for deal_id in deals:
        assert queue.join(deal_id, 7).state in ("waiting", "admitted")
        queue.join(deal_id, 8)
        deadline = time.monotonic() + 10
        while queue.status(deal_id, 7).state != "admitted" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queue.status(deal_id, 7).state == "admitted"
        assert gate.admit(deal_id, 9, 1, f"{deal_id}-x").outcome is Admission.QUEUE_PASS_REQUIRED
        assert gate.admit(deal_id, 7, 1, f"{deal_id}-y", queue_pass=True).outcome is Admission.ACCEPTED
        q = deal_stats(db, gate, deal_id).queue
        assert q is not None and q["passes_used"] == 1 and q["admitted"] >= 1
