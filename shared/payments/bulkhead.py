"""A bulkhead around a provider: at most N calls at once per process, the rest refused after a short wait."""

from __future__ import annotations

import threading
from typing import Any

from shared.payments.base import ProviderError

# What a buyer's click starts (opening a payment, the dev checkout's delivery): as many as buyers click. A
# refund is started by the provider's own event (at the provider's pace, rare: late or wrong payments) and
# look-ups run in workers; both keep their short timeouts. Guarding refunds too turned a burst of late
# payments into 503s the provider had to resend (tests/system/test_payment_workers.py's race, 16 at once).
GUARDED = ("create_payment", "deliver")
# How long a click waits for a slot before its 503: a burst of buyers pressing "Pay" at once (each call takes
# milliseconds with a healthy provider) gets through; a provider that hangs holds at most this long per thread.
SLOT_WAIT_S = 0.25


class ProviderBusy(ProviderError):
    """Every slot for provider calls stayed taken: answered 503 instead of queueing a thread for the provider."""


class Bulkhead:
    """Wraps a provider; the GUARDED methods take a slot, or raise ProviderBusy after at most SLOT_WAIT_S.

    Why not only timeouts: a timeout bounds one call, not how many threads wait on a slow provider at once.
    With N web threads and a provider that answers after the timeout, every buyer who presses "Pay" holds a
    thread for that long; the slots keep the remaining threads for the order path (tests/system/
    test_payment_isolation.py).
    """

    def __init__(self, provider: Any, slots: int) -> None:
        self._provider = provider
        self._slots = threading.BoundedSemaphore(slots)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._provider, name)
        if name not in GUARDED:
            return attr

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if not self._slots.acquire(timeout=SLOT_WAIT_S):
                raise ProviderBusy(f"{self._provider.name}: every provider slot of this process is busy")
            try:
                return attr(*args, **kwargs)
            finally:
                self._slots.release()

        return guarded
