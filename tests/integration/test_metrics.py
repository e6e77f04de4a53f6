"""Prometheus metrics: web requests by URL rule, admissions, multiprocess correctness, worker figures."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import redis
from sqlalchemy import delete, func, select

from shared.db import Database
from shared.deals import NewDeal, create_deal, load_deal
from shared.gate import Gate
from shared.keys import Keys
from shared.models import DeadLetter
from shared.settings import Settings
from tests.helpers import metric_samples, metric_value
from web.metrics import record_admission
from worker import metrics as wm


def test_requests_counted_by_url_rule_not_path(client) -> None:
    before = client.get("/metrics").text
    rule = "/api/deals/<int:deal_id>"
    for deal_id in (987654, 987655, 987656):  # three paths, one rule, one series
        client.get(f"/api/deals/{deal_id}")
    client.get("/no/such/page")
    after = client.get("/metrics")
    assert after.status_code == 200 and after.content_type.startswith("text/plain")
    text = after.text
    delta = metric_value(
        text, "flashdeal_http_requests_total", endpoint=rule, method="GET", status="404"
    ) - metric_value(before, "flashdeal_http_requests_total", endpoint=rule, method="GET", status="404")
    assert delta == 3
    assert "/api/deals/987654" not in text
    assert metric_value(text, "flashdeal_http_requests_total", endpoint="unmatched", method="GET", status="404") >= 1
    hist = metric_value(text, "flashdeal_http_request_duration_seconds_count", endpoint=rule, method="GET")
    assert hist >= 3


def test_record_admission_counts_by_outcome(client) -> None:
    before = metric_value(client.get("/metrics").text, "flashdeal_admissions_total", outcome="sold_out")
    record_admission("sold_out")
    record_admission("sold_out")
    text = client.get("/metrics").text
    assert metric_value(text, "flashdeal_admissions_total", outcome="sold_out") == before + 2
    # Every outcome is pre-created, so dashboards see zeros rather than gaps.
    for outcome in ("accepted", "limit_exceeded", "deal_not_open"):
        assert ("flashdeal_admissions_total", (("outcome", outcome),)) in metric_samples(text)


def test_worker_records_drain_and_reconcile_results() -> None:
    def total(name: str, **labels: str) -> float:
        from prometheus_client import REGISTRY

        return REGISTRY.get_sample_value(name, labels) or 0.0

    orders0, cancels0 = (
        total("flashdeal_orders_persisted_total", kind="order"),
        total("flashdeal_orders_persisted_total", kind="cancel"),
    )
    batches0 = total("flashdeal_drain_batch_size_count")
    # drain_deal's return value, then drain_active's (one report per deal, empty when idle).
    wm.record_drain(
        "flashdeal.drain_deal",
        {"deal_id": 1, "persisted": 40, "canceled": 2, "dead_lettered": 0, "entries": 42, "batches": 1},
        0.01,
    )
    wm.record_drain("flashdeal.drain_active", {"deals": {"1": {"persisted": 5, "canceled": 0, "entries": 5}}}, 0.02)
    wm.record_drain("flashdeal.drain_active", {"deals": {}}, 0.001)
    unreplicated0 = total("flashdeal_drain_unreplicated_total")
    wm.record_drain("flashdeal.drain_active", {"deals": {"2": {"persisted": 0, "entries": 0, "unreplicated": 7}}}, 0.3)
    assert total("flashdeal_drain_unreplicated_total") == unreplicated0 + 7
    assert total("flashdeal_orders_persisted_total", kind="order") == orders0 + 45
    assert total("flashdeal_orders_persisted_total", kind="cancel") == cancels0 + 2
    assert total("flashdeal_drain_batch_size_count") == batches0 + 2  # the idle run adds no zero-size batch
    assert total("flashdeal_drain_duration_seconds_count", task="flashdeal.drain_active") >= 2
    wm.record_reconcile({"deals": [{"deal_id": 7, "drift": -3}, {"deal_id": 8, "drift": 0}], "drifted": [7]})
    assert total("flashdeal_reconcile_drift", deal="7") == -3
    assert total("flashdeal_reconcile_drift", deal="8") == 0


def test_worker_live_gauges_read_redis_and_postgres(settings: Settings, db: Database, rds: redis.Redis) -> None:
    keys = Keys(settings.key_prefix)
    gate = Gate(rds, keys)
    now = datetime.now(UTC)
    with db.transaction() as s:
        deal = create_deal(s, NewDeal("Gauges", Decimal("3.00"), 50, 5, now, now + timedelta(hours=1)))
        deal.status = "open"
        load_deal(s, gate, deal)
    k = keys.deal(deal.id)
    rds.set(k.stock, 47)
    oldest_ms = int(time.time() * 1000) - 4000
    rds.xadd(k.outbox, {"t": "o", "id": "x"}, id=f"{oldest_ms}-0")
    rds.xadd(k.outbox, {"t": "o", "id": "y"})
    with db.transaction() as s:
        letters_before = int(s.scalar(select(func.count()).select_from(DeadLetter)) or 0)
        for n in range(3):  # three letters of this deal: the gauge counts every row of the store
            s.add(DeadLetter(order_id=uuid.uuid4(), deal_id=deal.id, entry_id=f"0-{n}", payload={}, reason="test"))
    families = {f.name: f for f in wm.LiveCollector(settings).collect()}
    label = str(deal.id)

    def gauge(name: str) -> float:
        return next(s.value for s in families[name].samples if s.labels.get("deal") == label)

    assert gauge("flashdeal_stock_remaining") == 47
    assert gauge("flashdeal_outbox_pending") == 2
    assert 3.5 <= gauge("flashdeal_outbox_lag_seconds") < 60
    assert families["flashdeal_dead_letters"].samples[0].value == letters_before + 3
    up = {s.labels["source"]: s.value for s in families["flashdeal_metrics_source_up"].samples}
    assert up == {"redis": 1, "postgres": 1}
    rds.delete(k.outbox)
    with db.transaction() as s:
        s.execute(delete(DeadLetter).where(DeadLetter.deal_id == deal.id))
