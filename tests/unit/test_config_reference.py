"""docs/configuration.md is generated from the settings' own descriptions and must match them."""

from __future__ import annotations

from shared.settings import Settings
from shared.settings_doc import TARGET, render


def test_every_setting_is_described() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert not missing, f"settings without a description: {missing}"


def test_the_configuration_reference_is_what_the_settings_say() -> None:
    # Fails when a field, its default or its description changed without `python -m shared.settings_doc`.
    assert TARGET.read_text() == render(), "docs/configuration.md is out of date: run python -m shared.settings_doc"


def test_the_reference_gives_the_payment_provider_default_the_settings_choose() -> None:
    assert Settings.from_env({}).payment_provider == "dev"
    assert Settings.from_env({"FLASHDEAL_ENV": "production", "SECRET_KEY": "x" * 32}).payment_provider == "stripe"
    row = next(line for line in render().splitlines() if line.startswith("| `PAYMENT_PROVIDER`"))
    assert "`dev` in development and test, `stripe` anywhere else" in row
