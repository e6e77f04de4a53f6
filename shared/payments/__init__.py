"""Payments: the provider interface (base), one module per provider (providers/), the registry that picks
one by ``PAYMENT_PROVIDER``, and the decision logic web nodes and workers share (decision, check)."""

from __future__ import annotations

from shared.payments.base import (
    BadEvent,
    Kind,
    PayableOrder,
    Payment,
    PaymentEvent,
    PaymentProvider,
    ProviderError,
    minor_units,
)
from shared.payments.registry import build_provider

__all__ = [
    "BadEvent",
    "Kind",
    "PayableOrder",
    "Payment",
    "PaymentEvent",
    "PaymentProvider",
    "ProviderError",
    "build_provider",
    "minor_units",
]
