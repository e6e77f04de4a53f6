"""DirectCalls: the per-thread connection the hot paths use stays in step through errors and drops."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis

from shared.redis import DirectCalls, text_client


@pytest.fixture()
def direct(settings) -> DirectCalls:
    return DirectCalls(text_client(settings))


def test_error_replies_keep_the_connection_in_step(direct, settings) -> None:
    key = f"{settings.key_prefix}direct:{uuid.uuid4().hex}"
    direct.call("SET", key, "not a number")
    with pytest.raises(redis.ResponseError):
        direct.call("INCR", key)
    assert direct.call("GET", key) == "not a number"
    replies = direct.pipeline(("GET", key), ("INCR", key), ("STRLEN", key))
    assert replies[0] == "not a number" and isinstance(replies[1], redis.ResponseError) and replies[2] == 12
    assert direct.call("ECHO", "next") == "next"


def test_a_killed_connection_is_reopened(direct, settings) -> None:
    admin = text_client(settings)
    key = f"{settings.key_prefix}direct:{uuid.uuid4().hex}"
    direct.call("SET", key, "1")
    assert admin.client_kill_filter(_id=direct.call("CLIENT", "ID")) == 1
    assert direct.call("GET", key) == "1"
    assert admin.client_kill_filter(_id=direct.call("CLIENT", "ID")) == 1
    assert direct.pipeline(("GET", key), ("EXISTS", key)) == ["1", 1]
    with pytest.raises(redis.ConnectionError):
        admin.client_kill_filter(_id=direct.call("CLIENT", "ID"))
        direct.call("GET", key, retry=False)


def test_each_thread_has_its_own_connection(direct) -> None:
    ids: list[int] = []
    threads = [threading.Thread(target=lambda: ids.append(direct.call("CLIENT", "ID"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 4
