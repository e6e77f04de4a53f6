"""A slice of the fault matrix (make faults runs all of it): real processes, two nemeses, the history checked."""

from __future__ import annotations

import pytest

from faults.matrix import run, table

pytestmark = pytest.mark.slow


def test_no_acknowledged_order_lost_nor_unit_oversold_through_a_killed_and_a_paused_primary(settings, db) -> None:
    results = run(settings, ["kill-primary", "pause-primary"], warmup=2.0, after=2.0, size=(1, 1, 8))
    for res in results:
        r = res.report
        assert r.ops[("order", "ok")] > 50 and r.ops[("cancel", "ok")] > 0 and r.ops[("pay", "ok")] > 0, table([res])
        assert res.drained, table([res])
        assert r.ok, f"{table([res])}\n" + "\n".join(f"{v.kind}: {v.detail}" for v in r.violations[:20])
