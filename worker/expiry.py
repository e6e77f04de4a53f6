"""The expiry sweep: unpaid orders past their pay_by give their units back (shared/lua/settle.lua, mode 'expire')."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.gate import Gate
from shared.settings import default_of

# Due orders per script call (EXPIRY_SWEEP_BATCH): one call stays well under a millisecond per hundred orders.
SWEEP_BATCH = default_of("expiry_sweep_batch")


@dataclass
class SweepReport:
    """What one sweep expired, by deal; ``kicked`` lists deals whose outbox now needs a drain."""

    expired: dict[int, int] = field(default_factory=dict)
    kicked: list[int] = field(default_factory=list)
    more: list[int] = field(default_factory=list)  # the budget ran out with due orders left


def sweep_deal(gate: Gate, deal_id: int, deadline: float, report: SweepReport, batch: int = SWEEP_BATCH) -> None:
    """Expire the deal's due orders, one batch per atomic script call, until none is due or time is up.

    Why in batches of whole script calls: each call expires its batch completely or not at all, and the due
    index loses an order only in the call that decides it, so a sweeper killed between calls (or while one
    runs: Redis finishes the script) leaves nothing half-done and nothing forgotten.
    """
    while True:
        r = gate.expire_due(deal_id, batch)
        if r.expired:
            report.expired[deal_id] = report.expired.get(deal_id, 0) + r.expired
        if r.kick and deal_id not in report.kicked:
            report.kicked.append(deal_id)
        if r.seen < batch or not r.expired:
            # A full batch that expired nothing holds orders with an open payment only (shared/lua/settle.lua keeps
            # them for the check job): reading it again in this pass would find the same ones.
            return
        if time.monotonic() >= deadline:
            report.more.append(deal_id)
            return


def sweep(
    gate: Gate, deal_ids: list[int] | None = None, budget_s: float = 0.8, batch: int = SWEEP_BATCH
) -> SweepReport:
    """Sweep the given deals, or every deal loaded in the gate."""
    report = SweepReport()
    deadline = time.monotonic() + budget_s
    for deal_id in gate.live_deal_ids() if deal_ids is None else deal_ids:
        sweep_deal(gate, deal_id, deadline, report, batch)
    return report
