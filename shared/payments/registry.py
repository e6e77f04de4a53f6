"""Providers by name: ``PAYMENT_PROVIDER=NAME`` is the module ``shared/payments/providers/NAME.py``.

Each module names its class ``PROVIDER``, built as ``PROVIDER(settings, redis)``; nothing else lists the
providers, so adding one touches its module, its settings and its tests.
"""

from __future__ import annotations

import importlib
import pkgutil

from shared.payments import providers
from shared.payments.base import PaymentProvider
from shared.settings import ConfigError, Settings


def provider_names() -> list[str]:
    """The providers this installation has."""
    return sorted(m.name for m in pkgutil.iter_modules(providers.__path__) if not m.name.startswith("_"))


def build_provider(settings: Settings, redis: object) -> PaymentProvider:
    """The provider named by ``PAYMENT_PROVIDER``; ConfigError when it is unknown or its settings are missing."""
    name = settings.payment_provider or "dev"
    if name not in provider_names():
        raise ConfigError(f"PAYMENT_PROVIDER={name!r} is not one of {', '.join(provider_names())}")
    module = importlib.import_module(f"{providers.__name__}.{name}")
    return module.PROVIDER(settings, redis)
