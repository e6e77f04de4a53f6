"""The ``stripe`` provider: PaymentIntents and refunds through the official ``stripe`` package."""

from __future__ import annotations

import stripe

from shared.payments.base import PayableOrder, Payment, ProviderError
from shared.settings import Settings

NETWORK_RETRIES = 2  # the package retries safely: every call carries an idempotency key


class StripeProvider:
    """PaymentIntents: the order id is the idempotency key, the amount is in the currency's smallest unit."""

    name = "stripe"

    def __init__(self, settings: Settings) -> None:
        kwargs: dict[str, object] = {"max_network_retries": NETWORK_RETRIES}
        if settings.stripe_api_base:
            # Tests point the client at a local HTTP server that records what was sent.
            kwargs["base_addresses"] = {"api": settings.stripe_api_base}
        # A client object, not the module's global api_key: nothing global to leak between settings.
        self.client = stripe.StripeClient(settings.stripe_secret_key, **kwargs)  # type: ignore[arg-type]

    def create_payment(self, order: PayableOrder) -> Payment:
        """Create the order's PaymentIntent, or get the same one back (Stripe replays an idempotent request)."""
        try:
            intent = self.client.v1.payment_intents.create(
                params={
                    "amount": order.amount_minor,
                    "currency": order.currency,
                    "automatic_payment_methods": {"enabled": True},
                    "metadata": {
                        "order_id": order.order_id,
                        "deal_id": str(order.deal_id),
                        "user_id": str(order.user_id),
                    },
                },
                options={"idempotency_key": order.order_id},
            )
        except stripe.StripeError as exc:
            raise ProviderError(f"stripe: {type(exc).__name__}: {exc}") from exc
        return Payment(self.name, str(intent.id), None, str(intent.client_secret or "") or None)

    def refund(self, payment_id: str, order_id: str, amount_minor: int, reason: str) -> str:
        """Refund the PaymentIntent in full; the idempotency key makes a repeated refund the same refund."""
        try:
            refund = self.client.v1.refunds.create(
                params={"payment_intent": payment_id, "metadata": {"order_id": order_id, "flashdeal_reason": reason}},
                options={"idempotency_key": f"refund-{payment_id}"},
            )
        except stripe.StripeError as exc:
            raise ProviderError(f"stripe: {type(exc).__name__}: {exc}") from exc
        return str(refund.id)
