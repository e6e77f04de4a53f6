"""Signed passes (shared/passes.py): bound to a buyer, a deal and a kind; forged, foreign or expired ones refused."""

from __future__ import annotations

import pytest

from shared.passes import PassSigner

SECRET = "s" * 32
NOW = 1_800_000_000


def test_a_pass_is_bound_to_its_buyer_deal_and_kind() -> None:
    queue = PassSigner(SECRET, "queue")
    token = queue.issue(7, 42, NOW + 60)
    assert queue.verify_for(token, 7, 42, NOW) is not None
    assert queue.verify_for(token, 8, 42, NOW) is None  # another account
    assert queue.verify_for(token, 7, 43, NOW) is None  # another deal
    assert PassSigner(SECRET, "order").verify(token, NOW) is None  # another kind
    assert PassSigner("t" * 32, "queue").verify(token, NOW) is None  # another secret


def test_an_order_token_holds_for_every_deal_until_it_expires() -> None:
    order = PassSigner(SECRET, "order")
    token = order.issue(7, None, NOW + 300)
    found = order.verify_for(token, 7, 99, NOW)
    assert found is not None and found.user_id == 7 and found.deal_id is None
    assert order.verify(token, NOW + 300) is None


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature changed
        lambda t: t.replace("order.7.", "order.8.", 1),  # buyer changed
        lambda t: "",
        lambda t: t + "x" * 300,
        lambda t: "order.7.-.99999999999.sig",
        lambda t: "\udcff" + t,
    ],
)
def test_forged_tokens_are_refused(mutate) -> None:
    order = PassSigner(SECRET, "order")
    assert order.verify(mutate(order.issue(7, None, NOW + 300)), NOW) is None
