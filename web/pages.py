"""Server-rendered pages for buyers and admins (Jinja); page scripts call the JSON API for live state.

Pages take their data from the functions the API views use (web/deals.py, web/order_reads.py,
shared/deals.py), never from the views' JSON, so a page and the JSON it polls never disagree.
Nothing here is on the order path: buying is a fetch() to POST /api/deals/{id}/orders.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template, request, session, url_for
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from shared.accounts import EmailTaken, authenticate, create_user
from shared.clock import now_ms
from shared.deals import DealNotFound, deal_stats
from web.access import current_role, current_user_id, is_admin
from web.csrf import FIELD as CSRF_FIELD
from web.csrf import check_csrf, csrf_token, set_csrf_cookie
from web.deals import deal_detail, deal_list
from web.errors import ApiError, outage
from web.limits import SIGNUP_SCOPE, limiter, signup_ip_limit
from web.login_throttle import login_limits, remember_device
from web.order_reads import buyer_orders
from web.redirects import safe_next
from web.schemas import DealListQuery, LoginIn, SignupIn
from web.services import services
from web.sessions import login_session, logout_session
from web.validation import parse_query

bp = Blueprint("pages", __name__)

# Pages are per user and change every second: never cached, and scripts only from our origin.
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


@bp.before_request
def _csrf_protect() -> None:
    """Every page POST is a form post and must carry its CSRF token (web/csrf.py)."""
    if request.method == "POST":
        check_csrf()


@bp.after_request
def _headers(resp: Response) -> Response:
    """Add the page security headers, and the anonymous form token's cookie (web/csrf.py)."""
    for name, value in _SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)
    set_csrf_cookie(resp)
    return resp


@bp.context_processor
def _template_globals() -> dict[str, Any]:
    """Values every page template uses."""
    return {
        "csrf_token": csrf_token,
        "csrf_field": CSRF_FIELD,
        "user_id": current_user_id(),
        "user_name": session.get("name"),
        "is_admin": current_role() == "admin",
        "server_now_ms": now_ms(),
    }


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> tuple[str, int]:
    """API errors raised while building a page are shown as an HTML page."""
    return render_template("pages/error.html", status=exc.status, message=exc.message), exc.status


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Any:
    """HTTP errors (CSRF failure, rate limit, 404; Redis failing around the view) as an HTML page."""
    status = exc.code or 500
    message = exc.description or exc.name
    answer = outage(getattr(exc, "original_exception", None)) if status == 500 else None
    if answer is not None:  # Redis down or full while the session was opened or saved: 503, never 500
        status, body, headers = answer
        return render_template("pages/error.html", status=status, message=body["error"]["message"]), status, headers
    if status == 429:
        message = "Too many attempts. Wait a minute and try again."
    return render_template("pages/error.html", status=status, message=message), status


def _login_redirect() -> Response:
    """Send an anonymous visitor to the login form, coming back here afterwards."""
    return redirect(url_for("pages.login_form", next=request.full_path.rstrip("?")))  # type: ignore[return-value]


def countdown_text(deal: dict[str, Any], now: datetime | None = None) -> str:
    """The countdown line of a deal as first rendered (the page script keeps it ticking)."""
    now = now or datetime.now(UTC)
    status = deal["status"]
    if status == "ended":
        return ""  # the status badge says it
    target = datetime.fromisoformat(deal["starts_at" if status == "scheduled" else "ends_at"])
    seconds = max(0, int((target - now).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        span = f"{days}d {hours}h {minutes:02d}m"
    elif hours:
        span = f"{hours}h {minutes:02d}m {secs:02d}s"
    else:
        span = f"{minutes}m {secs:02d}s"
    return f"{'Starts' if status == 'scheduled' else 'Ends'} in {span}"


LIST_ARGS = ("status", "page", "per_page")


@bp.get("/")
def deals_page() -> Any:
    """The deal list with countdowns and live remaining stock; same filters as GET /api/deals."""
    known = {k: v for k, v in request.args.items() if k in LIST_ARGS}
    if len(known) != len(request.args):
        # Links carrying tracking parameters still land on the list (the API refuses unknown ones).
        return redirect(url_for("pages.deals_page", **known))
    # The API's own data function and query rules (a bad filter is the API's 422, shown as an error page).
    data = deal_list(services(), parse_query(DealListQuery))
    return render_template("pages/deals.html", page_data=data, countdown=countdown_text)


@bp.get("/deals/<int:deal_id>")
def deal_page(deal_id: int) -> str:
    """One deal with its buy button."""
    deal = deal_detail(services(), deal_id)
    return render_template("pages/deal.html", deal=deal, countdown=countdown_text)


@bp.get("/deals/<int:deal_id>/queue")
def queue_page(deal_id: int) -> Any:
    """The deal's waiting room: join (solving the proof of work), then position and wait, polled, until let in."""
    if current_user_id() is None:
        return _login_redirect()
    deal = deal_detail(services(), deal_id)
    return render_template("pages/queue.html", deal=deal)


@bp.get("/orders")
def my_orders_page() -> Any:
    """The buyer's orders, with cancel buttons."""
    user_id = current_user_id()
    if user_id is None:
        return _login_redirect()
    svc = services()
    items = buyer_orders(svc, user_id)
    titles: dict[int, str] = {}
    for deal_id in {o["deal_id"] for o in items}:
        try:
            titles[deal_id] = deal_detail(svc, deal_id)["title"]
        except ApiError:
            titles[deal_id] = f"Deal {deal_id}"
    return render_template("pages/orders.html", orders=items, titles=titles)


@bp.get("/payments/dev/checkout/<payment_id>")
def dev_checkout_page(payment_id: str) -> str:
    """The dev payment provider's checkout page (its POST, with a test card, is web/payments.py)."""
    from web.payments import dev_checkout_context

    return render_template("pages/dev_checkout.html", **dev_checkout_context(payment_id))


@bp.get("/admin/deals/<int:deal_id>")
def admin_deal_page(deal_id: int) -> Any:
    """Live sale progress of one deal, for admins."""
    if current_user_id() is None:
        return _login_redirect()
    if not is_admin():
        raise ApiError(403, "forbidden", "Only admins can see sale progress.")
    svc = services()
    try:
        stats = deal_stats(svc.db, svc.gate, deal_id).as_dict()
    except DealNotFound:
        raise ApiError(404, "not_found", f"Deal {deal_id} does not exist.") from None
    return render_template("pages/admin_deal.html", stats=stats)


@bp.get("/login")
def login_form() -> Any:
    """The login form."""
    if current_user_id() is not None:
        return redirect(safe_next(request.args.get("next")))
    return render_template("pages/login.html", next=request.args.get("next", ""), email="", error=None)


@bp.post("/login")
@login_limits  # the API login's windows (web/login_throttle.py)
def login_submit() -> Any:
    """Check the password and start a session under a new id."""
    email = request.form.get("email", "").strip()
    password = request.form.get("password", "")
    nxt = request.form.get("next", "")
    user = None
    try:
        # The API's login rules: a value PostgreSQL or the hasher would refuse never reaches them.
        creds = LoginIn.model_validate({"email": email, "password": password})
    except ValidationError:
        creds = None
    if creds is not None:
        with services().db.read() as s:
            user = authenticate(s, creds.email, creds.password)
    if user is None:
        html = render_template("pages/login.html", next=nxt, email=email, error="Wrong email or password.")
        return html, 401
    login_session(current_app, user.id, user.role)
    session["name"] = user.name
    resp = redirect(safe_next(nxt), code=303)
    remember_device(resp, user.email)
    return resp


@bp.get("/signup")
def signup_form() -> Any:
    """The signup form."""
    if current_user_id() is not None:
        return redirect(safe_next(request.args.get("next")))
    return render_template("pages/signup.html", form={}, errors={}, next=request.args.get("next", ""))


@bp.post("/signup")
@limiter.shared_limit(signup_ip_limit, scope=SIGNUP_SCOPE)
def signup_submit() -> Any:
    """Create a buyer account and log it in."""
    form = {k: request.form.get(k, "") for k in ("email", "password", "name")}
    nxt = request.form.get("next", "")
    errors: dict[str, str] = {}
    try:
        data = SignupIn.model_validate(form)
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False, include_context=False):
            field = str(err["loc"][0]) if err["loc"] else "form"
            errors.setdefault(field, str(err["msg"]).removeprefix("Value error, "))
    else:
        try:
            with services().db.transaction() as s:
                user = create_user(s, data.email, data.password, data.name)
                user_id, role, name = user.id, user.role, user.name
        except EmailTaken:
            errors["email"] = "An account with this email already exists. Log in instead."
    if errors:
        form["password"] = ""
        return render_template("pages/signup.html", form=form, errors=errors, next=nxt), 422
    login_session(current_app, user_id, role)
    session["name"] = name
    return redirect(safe_next(nxt), code=303)


@bp.post("/logout")
def logout_submit() -> Any:
    """End the session (the server-side record is deleted)."""
    logout_session()
    return redirect(url_for("pages.deals_page"), code=303)
