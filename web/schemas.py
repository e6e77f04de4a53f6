"""Request and response schemas (pydantic); they also feed /openapi.json."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator

from shared.models import MAX_PAYMENT_WINDOW_SECONDS


class Strict(BaseModel):
    """Base of request bodies: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid", str_strip_whitespace=True)


class SignupIn(Strict):
    """Body of POST /api/auth/signup."""

    email: EmailStr = Field(max_length=254)
    password: str = Field(min_length=8, max_length=128)
    name: str = Field(min_length=1, max_length=100)

    @field_validator("password")
    @classmethod
    def _strong(cls, value: str) -> str:
        if not any(c.isalpha() for c in value) or not any(not c.isalpha() for c in value):
            raise ValueError("password must mix letters with digits or symbols")
        if len(set(value)) < 5:
            raise ValueError("password is too repetitive")
        return value


class LoginIn(Strict):
    """Body of POST /api/auth/login."""

    email: EmailStr = Field(max_length=254)
    password: str = Field(min_length=1, max_length=128)


class UserOut(BaseModel):
    """A user as the API shows it."""

    id: int
    email: str
    name: str
    role: Literal["buyer", "admin"]


class ErrorBody(BaseModel):
    """The error object."""

    code: str
    message: str


class ErrorOut(BaseModel):
    """Every error response."""

    error: ErrorBody


class HealthOut(BaseModel):
    """Liveness and readiness answers."""

    status: str
    checks: dict[str, str] = {}


class DealIn(Strict):
    """Body of POST /api/admin/deals."""

    title: str = Field(min_length=1, max_length=200)
    product_name: str | None = Field(default=None, min_length=1, max_length=200)
    product_id: int | None = Field(default=None, ge=1)
    description: str = Field(default="", max_length=2000)
    price: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    stock: int = Field(ge=1, le=10_000_000)
    per_user_limit: int = Field(ge=1, le=1000)
    starts_at: datetime
    ends_at: datetime
    # 0: no payment step; N: an accepted order must be paid within N seconds or its units go back.
    payment_window_seconds: int = Field(default=0, ge=0, le=MAX_PAYMENT_WINDOW_SECONDS)

    model_config = ConfigDict(strict=False, extra="forbid", str_strip_whitespace=True)

    @field_validator("price", mode="before")
    @classmethod
    def _price_type(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("price must be a number or a decimal string")
        return value

    @field_validator("stock", "per_user_limit", "product_id", "payment_window_seconds", mode="before")
    @classmethod
    def _int_type(cls, value: object) -> object:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("must be an integer")
        return value

    @field_validator("starts_at", "ends_at", mode="before")
    @classmethod
    def _iso_with_zone(cls, value: object) -> object:
        if not isinstance(value, str):
            raise ValueError("must be an ISO 8601 string with a time zone, e.g. 2026-12-01T10:00:00Z")
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("must be an ISO 8601 date-time, e.g. 2026-12-01T10:00:00Z") from None
        if parsed.tzinfo is None:
            raise ValueError("must carry a time zone (Z or +hh:mm)")
        return parsed

    @model_validator(mode="after")
    def _window(self) -> DealIn:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        if self.product_id is None and self.product_name is None:
            self.product_name = self.title
        return self


class DealOut(BaseModel):
    """A deal as buyers see it; remaining_stock is live."""

    id: int
    title: str
    product: str
    description: str
    price: str
    total_stock: int
    per_user_limit: int
    remaining_stock: int
    status: Literal["scheduled", "open", "sold_out", "ended"]
    starts_at: datetime
    ends_at: datetime
    payment_window_seconds: int


class DealPage(BaseModel):
    """One page of deals."""

    items: list[DealOut]
    page: int
    per_page: int
    total: int


class DealListQuery(BaseModel):
    """Query of GET /api/deals."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["all", "scheduled", "open", "sold_out", "ended", "active"] = "all"
    page: int = Field(default=1, ge=1, le=10_000)
    per_page: int = Field(default=20, ge=1, le=100)


class DealStatsOut(BaseModel):
    """Admin view of a deal's sale."""

    id: int
    title: str
    status: str
    total_stock: int
    remaining_stock: int
    accepted: int
    confirmed: int
    canceled: int
    pending: int
    failed: int
    paid: int
    expired: int


class OrderIn(Strict):
    """Body of POST /api/deals/{id}/orders."""

    quantity: int = Field(ge=1, le=1000)


class OrderAccepted(BaseModel):
    """Answer of an accepted order."""

    order_id: str
    status: Literal["accepted"]
    deal_id: int
    quantity: int


class OrderOut(BaseModel):
    """An order."""

    order_id: str
    deal_id: int
    user_id: int
    quantity: int
    unit_price: str
    status: Literal["accepted", "confirmed", "paid", "expired", "canceled", "failed"]
    admitted_at: datetime
    pay_by: datetime | None = None  # deals with a payment window: unpaid at this moment, the order expires


class OrderList(BaseModel):
    """The user's orders."""

    items: list[OrderOut]


class PaymentOut(BaseModel):
    """Answer of POST /api/orders/{id}/pay: the same payment for every call on one order."""

    provider: Literal["dev", "stripe"]
    payment_id: str
    checkout_url: str | None
    client_secret: str | None = None  # stripe: what Stripe.js confirms the PaymentIntent with
    pay_by: datetime


class WebhookOut(BaseModel):
    """Answer to the payment provider."""

    received: bool
    outcome: str


class CheckoutIn(Strict):
    """Body of the dev provider's checkout: a test card number."""

    card: str = Field(min_length=12, max_length=23, pattern=r"^[0-9 ]+$")


class CheckoutOut(BaseModel):
    """What the dev checkout did: the payment's result and the order's state after its webhook."""

    result: Literal["paid", "declined"]
    order_status: str
