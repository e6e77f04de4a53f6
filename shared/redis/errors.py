"""Error replies that mean "this node cannot take the write now", whatever the topology."""

from __future__ import annotations

import redis

# Error replies that mean "this node cannot take writes now", not "this command is wrong": a
# primary without enough replicas (min-replicas-to-write), a replica (a demoted primary), a
# primary that lost its master link. Answered like a dropped connection: 503, try again.
# On a cluster: a slot whose keys are being migrated (TRYAGAIN), a cluster that lost a slot's
# primary and has not promoted its replica yet (CLUSTERDOWN).
UNAVAILABLE_REPLIES = ("NOREPLICAS", "READONLY", "MASTERDOWN", "LOADING", "TRYAGAIN", "CLUSTERDOWN")


class PrimaryUnavailable(redis.ConnectionError):
    """The node refused a write because it is not (or not yet) a primary that may take it."""


def is_unavailable_reply(exc: BaseException) -> bool:
    """True for an error reply that a failover or a missing replica explains (see UNAVAILABLE_REPLIES)."""
    # redis-py strips the code of the replies it has a class for (READONLY, LOADING, TRYAGAIN, ...) from
    # the message and keeps it in status_code; NOREPLICAS has no class and keeps it in the message.
    if not isinstance(exc, redis.ResponseError):
        return False
    return (exc.status_code or str(exc).partition(" ")[0]) in UNAVAILABLE_REPLIES
