"""Payment providers behind one interface (``PAYMENT_PROVIDER``): the built-in ``dev`` one and ``stripe``."""

from __future__ import annotations

from shared.payments.base import (
    BadEvent,
    Payment,
    PaymentEvent,
    PaymentProvider,
    ProviderError,
    minor_units,
    verify_event,
)
from shared.settings import ConfigError, Settings

__all__ = [
    "BadEvent",
    "Payment",
    "PaymentEvent",
    "PaymentProvider",
    "ProviderError",
    "build_provider",
    "minor_units",
    "verify_event",
]


def build_provider(settings: Settings) -> PaymentProvider:
    """The provider named by ``PAYMENT_PROVIDER``; raises ConfigError when its settings are missing."""
    if settings.payment_provider == "stripe":
        from shared.payments.stripe_provider import StripeProvider

        if not settings.stripe_secret_key or not settings.stripe_webhook_secret:
            raise ConfigError("PAYMENT_PROVIDER=stripe needs STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET")
        return StripeProvider(settings)
    from shared.payments.dev import DevProvider

    return DevProvider(settings)
