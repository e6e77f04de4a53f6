"""Settings and client builders of the cluster topology (no processes)."""

from __future__ import annotations

import pytest
from redis._parsers.base import BaseParser

from shared.redis import (
    celery_result_backend,
    is_unavailable_reply,
    limits_storage_options,
    limits_storage_uri,
)
from shared.settings import DEFAULT_AMQP_URL, ConfigError, Settings


def test_cluster_topology_settings() -> None:
    s = Settings.from_env({"FLASHDEAL_REDIS_TOPOLOGY": "cluster", "REDIS_CLUSTER_NODES": "h1:7001, h2:7002",
                           "REDIS_URL": "redis://:p%40ss@127.0.0.1:6379/0"})  # fmt: skip
    assert s.redis_cluster_nodes == (("h1", 7001), ("h2", 7002))
    # WAIT for one replica, RabbitMQ as the broker (kombu has no Redis Cluster transport), results over it.
    assert s.order_ack_replicas == 1 and s.celery_broker_url == DEFAULT_AMQP_URL
    assert celery_result_backend(s) == "rpc://"
    assert limits_storage_uri(s) == "redis+cluster://h1:7001,h2:7002"
    # The credentials travel as options, decoded: limits would take "p%40ss" from a URI as typed.
    assert limits_storage_options(s)["password"] == "p@ss" and "username" not in limits_storage_options(s)
    acl = s.with_(redis_url="redis://shop:p%40ss@127.0.0.1:6379/0")
    assert (limits_storage_options(acl)["username"], limits_storage_options(acl)["password"]) == ("shop", "p@ss")
    sentinel = acl.with_(redis_topology="sentinel", redis_sentinels=(("h1", 26391),))
    assert limits_storage_uri(sentinel) == "redis+sentinel://h1:26391/flashdeal"
    opts = limits_storage_options(sentinel)
    # The primary gets the credentials; the sentinels (asked for the primary's address) do not, as in _connect.
    assert (opts["username"], opts["password"]) == ("shop", "p@ss")
    assert (opts["sentinel_kwargs"]["username"], opts["sentinel_kwargs"]["password"]) == (None, None)
    default = Settings.from_env({"FLASHDEAL_REDIS_TOPOLOGY": "cluster"})  # the nodes `make up` starts
    assert default.redis_cluster_nodes == tuple(("127.0.0.1", p) for p in range(7001, 7007))
    assert Settings.from_env({}).redis_cluster_nodes == ()
    with pytest.raises(ConfigError, match="REDIS_CLUSTER_NODES"):
        Settings.from_env({"FLASHDEAL_REDIS_TOPOLOGY": "cluster", "REDIS_CLUSTER_NODES": "h1"})


@pytest.mark.parametrize(
    "reply", ["READONLY You can't write against a read only replica.",
              "TRYAGAIN Multiple keys request during rehashing of slot", "CLUSTERDOWN The cluster is down",
              "NOREPLICAS Not enough good replicas to write.", "MASTERDOWN Link with MASTER is down"],
)  # fmt: skip
def test_replies_of_a_node_that_cannot_take_the_write_now_are_unavailable(reply: str) -> None:
    # redis-py moves the code of the replies it has a class for into status_code: the check must see it there.
    # (LOADING is not here: redis-py raises it as a ConnectionError, answered 503 on that path.)
    assert is_unavailable_reply(BaseParser.parse_error(reply))
    assert not is_unavailable_reply(BaseParser.parse_error("ERR wrong number of arguments"))
