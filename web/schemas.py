"""Request and response schemas (pydantic); they also feed /openapi.json."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from email_validator import SPECIAL_USE_DOMAIN_NAMES
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from shared.bounds import (
    MAX_ID,
    MAX_PRICE,
    NAME_MAX,
    PASSWORD_MAX,
    PASSWORD_MIN,
    PASSWORD_RULE,
    check_text,
    password_problem,
    utc_in_range,
)
from shared.models import (
    MAX_PAYMENT_WINDOW_SECONDS,
    MAX_QUEUE_OPENS_BEFORE_SECONDS,
    MAX_QUEUE_POW_BITS,
    MAX_QUEUE_RATE,
)
from shared.queue import QueueStats

# JSON Schema patterns of the text rules in shared/bounds.py (what the validators below enforce),
# so /openapi.json tells clients, and Schemathesis, which strings are accepted.
_NO_CONTROL = "\\x00-\\x1f\\x7f-\\x9f"
LINE_PATTERN = f"^[^{_NO_CONTROL}]*$"
# Surrounding whitespace is stripped before the length checks: at least one other character.
NONBLANK_LINE_PATTERN = f"^[^{_NO_CONTROL}]*[^\\s{_NO_CONTROL}][^{_NO_CONTROL}]*$"
# password_problem's rule as a pattern: some letter and some character that is neither a letter
# nor a control character, in either order (the length is the field's min/maxLength).
_LETTER, _OTHER = "[^\\W\\d_]", f"(?:[\\d_]|[^\\w{_NO_CONTROL}])"
_ANY = f"[^{_NO_CONTROL}]*"
PASSWORD_PATTERN = f"^{_ANY}(?:{_LETTER}{_ANY}{_OTHER}|{_OTHER}{_ANY}{_LETTER}){_ANY}$"
# The addresses email-validator accepts (behind EmailStr): no quoted local part, no IP literal, a
# dotted domain that is not special-use (.test, .local, …). format "email" alone allows all three.
_NOT_SPECIAL = "|".join("".join(f"[{c.lower()}{c.upper()}]" for c in n) for n in SPECIAL_USE_DOMAIN_NAMES)
EMAIL_PATTERN = f'^[^\\s"@\\[\\]]+@(?:[^\\s@.\\[\\]]+\\.)+(?!(?:{_NOT_SPECIAL})$)[^\\s@.\\[\\]]+$'
TEXT_PATTERN = "^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]*$"


def _line(value: str) -> str:
    return check_text(value)


def _text(value: str) -> str:
    return check_text(value, multiline=True)


Line = Annotated[str, AfterValidator(_line)]  # one line of text: no control characters
Text = Annotated[str, AfterValidator(_text)]  # may hold line breaks and tabs, no other control character
# A password is a secret taken as typed: never stripped (the models strip other strings).
Password = Annotated[str, StringConstraints(strip_whitespace=False), AfterValidator(_line)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]  # a bigint id


class Strict(BaseModel):
    """Base of request bodies: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid", str_strip_whitespace=True)


class SignupIn(Strict):
    """Body of POST /api/auth/signup."""

    email: EmailStr = Field(max_length=254, json_schema_extra={"pattern": EMAIL_PATTERN})
    password: Password = Field(
        min_length=PASSWORD_MIN,
        max_length=PASSWORD_MAX,
        description=f"{PASSWORD_RULE}; taken as typed",
        json_schema_extra={"pattern": PASSWORD_PATTERN},
    )
    name: Line = Field(min_length=1, max_length=NAME_MAX, json_schema_extra={"pattern": NONBLANK_LINE_PATTERN})

    @field_validator("password")
    @classmethod
    def _strong(cls, value: str) -> str:
        problem = password_problem(value)
        if problem is not None:
            raise ValueError(f"password {problem}")
        return value


class LoginIn(Strict):
    """Body of POST /api/auth/login."""

    # Any bounded text: an address that could never have signed up is just wrong credentials (401).
    email: Line = Field(min_length=1, max_length=254, json_schema_extra={"pattern": NONBLANK_LINE_PATTERN})
    password: Password = Field(min_length=1, max_length=PASSWORD_MAX, json_schema_extra={"pattern": LINE_PATTERN})


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


class QueueIn(Strict):
    """The waiting room of a new deal (``queue`` in POST /api/admin/deals)."""

    rate: int = Field(ge=1, le=MAX_QUEUE_RATE, description="buyers let in per second")
    opens_before_seconds: int = Field(default=900, ge=0, le=MAX_QUEUE_OPENS_BEFORE_SECONDS)
    pow_bits: int = Field(default=0, ge=0, le=MAX_QUEUE_POW_BITS, description="proof-of-work difficulty; 0: none")
    max_live_passes: int | None = Field(default=None, ge=1, le=10_000_000, description="default: 60 s of rate")


class QueueControlIn(Strict):
    """Body of POST /api/admin/deals/{id}/queue: a new rate, or pause / resume."""

    rate: int | None = Field(default=None, ge=1, le=MAX_QUEUE_RATE)
    paused: bool | None = None


class QueueJoinIn(Strict):
    """Body of POST /api/deals/{id}/queue: ``{}``, or a solved proof-of-work challenge."""

    challenge: str | None = Field(default=None, min_length=1, max_length=200)
    nonce: str | None = Field(default=None, min_length=1, max_length=64, pattern="^[\\x21-\\x7e]+$")


class QueueOut(BaseModel):
    """A buyer's place in a deal's waiting room (status poll and join)."""

    state: Literal["not_joined", "waiting", "admitted", "expired", "sold_out", "closed"]
    position: int | None
    ahead: int | None
    eta_seconds: int | None
    poll_after_ms: int
    # The pass: send it as the Queue-Pass header of the order (set only when state is admitted).
    queue_pass: str | None = Field(default=None, alias="pass")
    pass_expires_at: datetime | None


class ChallengeOut(BaseModel):
    """A proof-of-work challenge: find a nonce with sha256(challenge + nonce) starting with ``bits`` zero bits."""

    challenge: str
    bits: int


class DealIn(Strict):
    """Body of POST /api/admin/deals."""

    title: Line = Field(min_length=1, max_length=200, json_schema_extra={"pattern": NONBLANK_LINE_PATTERN})
    product_name: Line | None = Field(
        default=None, min_length=1, max_length=200, json_schema_extra={"pattern": NONBLANK_LINE_PATTERN}
    )
    product_id: Id | None = None
    description: Text = Field(default="", max_length=2000, json_schema_extra={"pattern": TEXT_PATTERN})
    price: Decimal = Field(gt=0, le=MAX_PRICE, max_digits=12, decimal_places=2)
    stock: int = Field(ge=1, le=10_000_000)
    per_user_limit: int = Field(ge=1, le=1000)
    starts_at: datetime
    ends_at: datetime
    # 0: no payment step; N: an accepted order must be paid within N seconds or its units go back.
    payment_window_seconds: int = Field(default=0, ge=0, le=MAX_PAYMENT_WINDOW_SECONDS)
    # The product's price outside the deal: shown beside the deal price with the discount. Not below the price.
    regular_price: Decimal | None = Field(default=None, gt=0, le=MAX_PRICE, max_digits=12, decimal_places=2)
    queue: QueueIn | None = None  # a waiting room in front of the gate; absent: none

    model_config = ConfigDict(strict=False, extra="forbid", str_strip_whitespace=True)

    @field_validator("price", "regular_price", mode="before")
    @classmethod
    def _price_type(cls, value: object) -> object:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
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
        return utc_in_range(parsed)  # stored and compared in UTC, within years PostgreSQL and Python both read

    @model_validator(mode="after")
    def _window(self) -> DealIn:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        if self.regular_price is not None and self.regular_price < self.price:
            raise ValueError("regular_price must not be below price")
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
    currency: str  # ISO 4217, upper case (PAYMENT_CURRENCY): every price in this answer is in it
    regular_price: str | None = None  # the product's price outside the deal, when known
    discount_percent: int | None = None  # (regular − price) / regular, rounded; with regular_price only
    total_stock: int
    per_user_limit: int
    remaining_stock: int
    status: Literal["scheduled", "open", "sold_out", "ended"]
    starts_at: datetime
    ends_at: datetime
    payment_window_seconds: int
    queued: bool = False  # a waiting room in front of the gate: join it, then order with its pass


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
    queue: QueueStats | None = None  # only for a queued deal (pydantic reads the dataclass's fields)


class OrderIn(Strict):
    """Body of POST /api/deals/{id}/orders."""

    quantity: int = Field(ge=1, le=1000)


# Every state an order can be in (a replay answers the current one, paid and expired included).
OrderStatus = Literal["accepted", "confirmed", "paid", "expired", "canceled", "failed"]


class OrderAccepted(BaseModel):
    """Answer of an order attempt: 202 accepted now, or 200 for a replayed Idempotency-Key (current status)."""

    order_id: str
    status: OrderStatus
    deal_id: int
    quantity: int


class OrderOut(BaseModel):
    """An order."""

    order_id: str
    deal_id: int
    user_id: int
    quantity: int
    unit_price: str
    currency: str  # ISO 4217, upper case: the unit price's currency
    status: OrderStatus
    admitted_at: datetime
    pay_by: datetime | None = None  # deals with a payment window: unpaid at this moment, the order expires
    # True while the order waits for its payment (a payment window, neither paid nor expired nor canceled yet).
    awaiting_payment: bool = False


class OrderDetail(OrderOut):
    """One order (GET /api/orders/{id}): an unpaid one whose card was declined also says when."""

    payment_declined_at: datetime | None = None  # present only then: the buyer may try again while time remains


class OrderList(BaseModel):
    """The user's orders."""

    items: list[OrderOut]


class PaymentOut(BaseModel):
    """Answer of POST /api/orders/{id}/pay: the same payment for every call on one order."""

    provider: str  # PAYMENT_PROVIDER's name
    payment_id: str
    checkout_url: str | None  # where the buyer pays: a hosted page (Stripe Checkout) or the dev checkout
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
