"""Admin commands as a Celery sub-command: ``celery -A worker flashdeal ...``.

Registered through the ``celery.commands`` entry point in pyproject.toml. Every command uses
the same shared functions as the admin API, so the CLI and the API cannot disagree. Errors
are one line and an exit code (2: bad arguments, 1: the operation was refused or failed),
never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import TYPE_CHECKING, Any

import click

from shared.bounds import PASSWORD_RULE, name_problem, password_problem, text_problem, utc_in_range
from shared.settings import ConfigError, Settings

if TYPE_CHECKING:
    from shared.wiring import Stores

# With --open-now and no --ends-at, the sale runs this long.
DEFAULT_OPEN_DURATION = timedelta(hours=1)


class Ops:
    """Connections the commands need, opened on first use (``--help`` touches nothing)."""

    @cached_property
    def settings(self) -> Settings:
        """Settings from the environment, as every other process reads them."""
        return Settings.from_env()

    @cached_property
    def stores(self) -> Stores:
        """Database, Redis, keys and gate, wired as in every other process (small pools: one command)."""
        from shared.wiring import build

        return build(self.settings, db_options={"pool_size": 1, "max_overflow": 2})

    @property
    def db(self) -> Any:
        """The database."""
        return self.stores.db

    @property
    def redis(self) -> Any:
        """Text Redis client."""
        return self.stores.redis

    @property
    def keys(self) -> Any:
        """Key builder with the configured prefix."""
        return self.stores.keys

    @property
    def gate(self) -> Any:
        """The stock gate."""
        return self.stores.gate

    def close(self) -> None:
        """Release the connections this command opened."""
        if "stores" in self.__dict__:
            self.stores.close()

    def invalidate(self, deal_id: int) -> None:
        """Drop the deal's cached JSON and bump the list version: web nodes show the change at once."""
        from shared.cache import invalidate_deal

        invalidate_deal(self.redis, self.keys, deal_id)


def ops() -> Ops:
    """The Ops object of the current command (one per invocation)."""
    ctx = click.get_current_context()
    root = ctx.find_root()
    found = root.meta.get("flashdeal.ops")
    if found is None:
        found = root.meta["flashdeal.ops"] = Ops()
        root.call_on_close(found.close)
    return found


class FlashdealGroup(click.Group):
    """A group that turns the expected failures (services down, bad config) into one-line errors."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; connection and configuration errors exit 1 with a message."""
        import redis
        from sqlalchemy.exc import OperationalError

        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException(f"configuration: {exc}") from None
        except redis.exceptions.ConnectionError as exc:
            raise click.ClickException(f"cannot reach Redis ({exc}); check REDIS_URL") from None
        except OperationalError as exc:
            first = str(exc.orig or exc).strip().splitlines()[0]
            raise click.ClickException(f"cannot reach PostgreSQL ({first}); check DATABASE_URL") from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            # Anything else is a bug or an outage we did not foresee: one line, exit 1; the
            # traceback only on request, for whoever debugs it.
            if _debug(ctx):
                raise
            raise click.ClickException(f"{type(exc).__name__}: {exc} (FLASHDEAL_DEBUG=1 shows the traceback)") from None


def _debug(ctx: click.Context) -> bool:
    """FLASHDEAL_DEBUG: show tracebacks (False when the settings themselves are what failed)."""
    try:
        return (ctx.find_root().meta.get("flashdeal.ops") or Ops()).settings.debug
    except ConfigError:
        return False


def emit(data: Any, as_json: bool, human: Callable[[], str]) -> None:
    """Print JSON (one object or list, machine-readable) or the human form."""
    if as_json:
        click.echo(json.dumps(data, default=str))
    else:
        click.echo(human())


def parse_when(value: str | None, param: str) -> datetime | None:
    """Parse an ISO 8601 date-time; a value without a zone is taken as UTC."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date-time (e.g. 2026-11-25T18:00:00Z)", param_hint=param
        ) from None
    try:
        return utc_in_range(when.replace(tzinfo=UTC) if when.tzinfo is None else when)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None


def parse_price(value: str, hint: str = "--price") -> Decimal:
    """A positive amount with at most two decimals."""
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not a number", param_hint=hint) from None
    if not price.is_finite() or price <= 0:
        raise click.BadParameter("must be greater than 0", param_hint=hint)
    if price.as_tuple().exponent < -2 or price >= Decimal("1e10"):  # type: ignore[operator]
        raise click.BadParameter("at most 10 digits before the point and 2 after it", param_hint=hint)
    return price


@click.group(name="flashdeal", cls=FlashdealGroup)
def flashdeal() -> None:
    """flashdeal administration: admins, deals, reconcile, dead letters."""


# ---------------------------------------------------------------------------------------------
# admin


@flashdeal.group(cls=FlashdealGroup)
def admin() -> None:
    """Admin accounts."""


def read_password() -> str:
    """The new admin's password: a hidden prompt asked twice on a terminal, else one line of stdin.

    Never an argument: argv is readable by every user through ``ps`` and lands in shell history.
    From a pipe the first line is the password and a second line, if any, must repeat it
    (what ``printf 'pw\\npw\\n' |`` and answers piped to the prompt both send).
    """
    import getpass
    import sys

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat the password: ") != password:
            raise click.ClickException("the two passwords differ")
        return password
    lines = sys.stdin.read(64 * 1024).splitlines()
    if not lines:
        raise click.ClickException("no password on standard input (one line, optionally repeated on a second)")
    if len(lines) > 1 and lines[1] != lines[0]:
        raise click.ClickException("the two password lines on standard input differ")
    return lines[0]


ADMIN_CREATE_HELP = (
    "Create an admin account. The password is asked for twice at a hidden prompt, or read as one line of "
    "standard input when it is not a terminal (a second, identical line is taken as the confirmation). "
    f"{PASSWORD_RULE}."
)


@admin.command("create", help=ADMIN_CREATE_HELP)
@click.option("--email", required=True, help="Login email of the new admin.")
@click.option("--name", default="Admin", show_default=True, help="Display name.")
def admin_create(email: str, name: str) -> None:
    """Create an admin account (the admin API and role need one)."""
    from email_validator import EmailNotValidError, validate_email

    from shared.accounts import EmailTaken, create_user

    try:
        email = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise click.BadParameter(str(exc), param_hint="--email") from None
    problem = name_problem(name)
    if problem is not None:
        raise click.BadParameter(problem, param_hint="--name")
    password = read_password()
    # The rules of signup (shared/bounds.py, also behind web/schemas.py SignupIn).
    problem = password_problem(password)
    if problem is not None:
        raise click.ClickException(f"password: {problem}")
    o = ops()
    try:
        with o.db.transaction() as s:
            user = create_user(s, email, password, name.strip(), role="admin")
    except EmailTaken:
        raise click.ClickException(f"{email} is already registered") from None
    click.echo(f"admin {user.id} created: {user.email}")


# ---------------------------------------------------------------------------------------------
# deal


@flashdeal.group(cls=FlashdealGroup)
def deal() -> None:
    """Create, open, close and inspect deals."""


def _deal_view(o: Ops, deal_id: int) -> dict[str, Any]:
    """Stats plus the deal's rules: what `deal create/open/close --json` print."""
    from shared.deals import deal_row, deal_stats

    with o.db.read() as s:
        d = deal_row(s, deal_id)
        regular = d.product.regular_price
        rules = {
            "price": str(d.price),
            "currency": o.settings.payment_currency.upper(),
            "regular_price": str(regular) if regular is not None else None,
            "per_user_limit": d.per_user_limit,
            "starts_at": d.starts_at.astimezone(UTC).isoformat(),
            "ends_at": d.ends_at.astimezone(UTC).isoformat(),
            "payment_window_seconds": d.payment_window_seconds,
        }
    return {**deal_stats(o.db, o.gate, deal_id).as_dict(), **rules}


def _human(view: dict[str, Any]) -> str:
    return (
        f"deal {view['id']} {view['title']!r}: {view['status']}, {view['remaining_stock']}/{view['total_stock']} left, "
        f"price {view['price']} {view['currency']}"
        + (f" (regular {view['regular_price']})" if view.get("regular_price") else "")
        + f", limit {view['per_user_limit']} per buyer, "
        f"{view['starts_at']} .. {view['ends_at']}"
    )


@deal.command("create")
@click.option("--title", required=True, help="Deal title shown to buyers.")
@click.option("--price", required=True, help="Unit price, e.g. 49.90.")
@click.option("--regular-price", help="The product's price outside the deal (shown with the discount).")
@click.option("--stock", required=True, type=click.IntRange(1, 10_000_000), help="Units for sale.")
@click.option("--limit", "per_user_limit", required=True, type=click.IntRange(1, 1000), help="Units per buyer.")
@click.option("--open-now", is_flag=True, help="Open at once (ends after --ends-at or one hour).")
@click.option("--starts-at", help="ISO 8601 start, e.g. 2026-11-25T18:00:00Z (UTC when no zone).")
@click.option("--ends-at", help="ISO 8601 end.")
@click.option("--product", "product_name", help="Product name (default: the title).")
@click.option(
    "--payment-window",
    "payment_window",
    type=click.IntRange(0, 86_400),
    default=0,
    show_default=True,
    help="Seconds a buyer has to pay an accepted order before its units go back (0: no payment step).",
)
@click.option(
    "--queue-rate", type=click.IntRange(1, 100_000), help="Put a waiting room in front: buyers let in per second."
)
@click.option(
    "--queue-opens-before",
    type=click.IntRange(0, 7 * 86_400),
    default=900,
    show_default=True,
    help="Seconds before the start from which buyers may join the waiting room.",
)
@click.option(
    "--queue-pow-bits",
    type=click.IntRange(0, 32),
    default=0,
    show_default=True,
    help="Proof of work to join the waiting room, in leading zero bits (0: none).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the deal as one JSON object.")
def deal_create(
    title: str,
    price: str,
    regular_price: str | None,
    stock: int,
    per_user_limit: int,
    open_now: bool,
    starts_at: str | None,
    ends_at: str | None,
    product_name: str | None,
    payment_window: int,
    queue_rate: int | None,
    queue_opens_before: int,
    queue_pow_bits: int,
    as_json: bool,
) -> None:
    """Create a deal, either open now or scheduled between --starts-at and --ends-at."""
    from shared.deals import NewDeal, publish_deal
    from shared.queue import QueueRules

    title = title.strip()
    if not 1 <= len(title) <= 200:
        raise click.BadParameter("must be 1 to 200 characters", param_hint="--title")
    for value, hint in ((title, "--title"), (product_name or "", "--product")):
        problem = text_problem(value)
        if problem is not None:
            raise click.BadParameter(problem, param_hint=hint)
    unit_price = parse_price(price)
    regular = parse_price(regular_price, "--regular-price") if regular_price is not None else None
    if regular is not None and regular < unit_price:
        raise click.BadParameter("must not be below --price", param_hint="--regular-price")
    start, end = parse_when(starts_at, "--starts-at"), parse_when(ends_at, "--ends-at")
    now = datetime.now(UTC)
    if open_now:
        if start is not None:
            raise click.UsageError("--open-now and --starts-at exclude each other")
        start, end = now, end or now + DEFAULT_OPEN_DURATION
    elif start is None or end is None:
        raise click.UsageError("give either --open-now, or both --starts-at and --ends-at")
    if end <= start:
        raise click.BadParameter("must be after the start", param_hint="--ends-at")
    if end <= now:
        raise click.BadParameter("must be in the future", param_hint="--ends-at")
    o = ops()
    spec = NewDeal(
        title,
        unit_price,
        stock,
        per_user_limit,
        start,
        end,
        product_name=product_name,
        payment_window_seconds=payment_window,
        regular_price=regular,
        queue=None if queue_rate is None else QueueRules(queue_rate, queue_opens_before, queue_pow_bits),
    )
    # As the admin API creates one: loaded into the gate at once when it starts soon, caches dropped.
    deal_id = publish_deal(o.db, o.gate, spec, o.settings.deal_load_ahead_seconds, open_now=open_now).id
    view = _deal_view(o, deal_id)
    emit(view, as_json, lambda: "created " + _human(view))


def _move(deal_id: int, move: Callable[..., Any], as_json: bool, verb: str) -> None:
    from shared.deals import DealNotFound, DealStateError

    o = ops()
    try:
        move(o.db, o.gate, deal_id)
    except DealNotFound:
        raise click.ClickException(f"deal {deal_id} does not exist") from None
    except DealStateError as exc:
        raise click.ClickException(str(exc)) from None
    o.invalidate(deal_id)
    view = _deal_view(o, deal_id)
    emit(view, as_json, lambda: f"{verb} " + _human(view))


@deal.command("open")
@click.argument("deal_id", type=click.IntRange(min=1), metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the deal as one JSON object.")
def deal_open(deal_id: int, as_json: bool) -> None:
    """Open a deal now: every web node admits orders at once."""
    from shared.deals import open_now

    _move(deal_id, open_now, as_json, "opened")


@deal.command("close")
@click.argument("deal_id", type=click.IntRange(min=1), metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the deal as one JSON object.")
def deal_close(deal_id: int, as_json: bool) -> None:
    """Close a deal now: every web node refuses orders at once."""
    from shared.deals import close_now

    _move(deal_id, close_now, as_json, "closed")


@deal.command("queue")
@click.argument("deal_id", type=click.IntRange(min=1), metavar="ID")
@click.option("--rate", type=click.IntRange(1, 100_000), help="Buyers let in per second, from now on.")
@click.option("--pause", "paused", flag_value=True, default=None, help="Stop letting buyers in.")
@click.option("--resume", "paused", flag_value=False, help="Let buyers in again.")
@click.option("--json", "as_json", is_flag=True, help="Print the deal as one JSON object.")
def deal_queue(deal_id: int, rate: int | None, paused: bool | None, as_json: bool) -> None:
    """Change a queued deal's waiting room at once: --rate N, --pause or --resume."""
    from shared.deals import set_queue

    if rate is None and paused is None:
        raise click.UsageError("give --rate N, --pause or --resume")
    _move(deal_id, lambda db, gate, d: set_queue(db, gate, d, rate=rate, paused=paused), as_json, "queue set for")


@deal.command("stats")
@click.argument("deal_id", type=click.IntRange(min=1), metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the admin stats fields plus id and title.")
def deal_stats_cmd(deal_id: int, as_json: bool) -> None:
    """Sale progress: stock, orders by state, outbox backlog."""
    from shared.deals import DealNotFound, deal_stats

    o = ops()
    try:
        stats = deal_stats(o.db, o.gate, deal_id).as_dict()
    except DealNotFound:
        raise click.ClickException(f"deal {deal_id} does not exist") from None
    emit(stats, as_json, lambda: "\n".join(f"{k:>16}  {v}" for k, v in stats.items()))


# ---------------------------------------------------------------------------------------------
# reconcile


@flashdeal.command("reconcile")
@click.argument("deal_id", required=False, type=click.IntRange(min=1), metavar="[ID]")
@click.option("--repair", is_flag=True, help="Rewrite Redis stock and buyer totals from PostgreSQL + the outbox.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: {deals: [...], drifted: [...]}.")
def reconcile_cmd(deal_id: int | None, repair: bool, as_json: bool) -> None:
    """Compare Redis stock with PostgreSQL + outbox, for one deal or every deal loaded in Redis."""
    from worker.reconcile import ReconcileBusy, ReconcileReport, reconcile_deal

    o = ops()
    # Deal by deal through reconcile_deal: one deal, or every deal whose gate is loaded in Redis.
    ids = [deal_id] if deal_id is not None else sorted(o.gate.live_deal_ids())
    found = []
    try:
        for one_id in ids:
            one = reconcile_deal(o.db, o.redis, o.keys, one_id, repair=repair)
            if one is None and deal_id is not None:
                raise click.ClickException(f"deal {deal_id} does not exist or has retired (PostgreSQL alone holds it)")
            if one is not None:
                found.append(one)
    except ReconcileBusy as exc:
        raise click.ClickException(f"{exc}; run it again when the sale is quieter") from None
    report = ReconcileReport(found)
    for d in report.deals:
        if d.repaired:
            o.invalidate(d.deal_id)
    emit(report.as_dict(), as_json, lambda: "\n".join(_reconcile_line(d) for d in report.deals) or "no deals in Redis")


def _reconcile_line(d: Any) -> str:
    """One human line per deal."""
    if d.ok:
        state = "ok"
    elif d.drift is None:
        state = "STOCK MISSING in Redis"
    else:
        state = f"DRIFT {d.drift:+d}" + (f", {d.buyers_mismatched} buyer total(s) off" if d.buyers_mismatched else "")
    if d.repaired:
        state += " -> repaired"
    return (
        f"deal {d.deal_id}: {state} (redis {d.redis_remaining}, expected {d.expected_remaining} = total {d.total}"
        f" - persisted {d.persisted_qty} - outbox {d.outbox_qty} - dead letters {d.dead_letter_qty}){d.rebuilt_note}"
    )


# ---------------------------------------------------------------------------------------------
# dlq


@flashdeal.group(cls=FlashdealGroup)
def dlq() -> None:
    """Dead-lettered orders: rows the database refused after retries."""


@dlq.command("list")
@click.option("--deal", "deal_id", type=click.IntRange(min=1), help="Only this deal's letters.")
@click.option(
    "--limit", "max_rows", type=click.IntRange(1, 10_000), default=100, show_default=True, help="At most this many."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def dlq_list(deal_id: int | None, max_rows: int, as_json: bool) -> None:
    """List dead-lettered orders, oldest first, with the database's reason."""
    from worker.dlq import list_dead_letters

    rows = [r.as_dict() for r in list_dead_letters(ops().db, deal_id, max_rows)]

    def human() -> str:
        if not rows:
            return "no dead letters"
        return "\n".join(
            f"{r['order_id']}  deal {r['deal_id']}  {r['kind']}  attempts {r['attempts']}  {r['reason']}" for r in rows
        )

    emit(rows, as_json, human)


@dlq.command("retry")
@click.option("--deal", "deal_id", type=click.IntRange(min=1), help="Only this deal's letters.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def dlq_retry(deal_id: int | None, as_json: bool) -> None:
    """Write dead-lettered orders to PostgreSQL again; those that now succeed leave the store."""
    from worker.dlq import retry_dead_letters

    r = retry_dead_letters(ops().db, deal_id)
    data = {"retried": r.retried, "persisted": r.persisted, "still_failing": r.still_failing}

    def human() -> str:
        lines = [f"retried {r.retried}: {len(r.persisted)} persisted, {len(r.still_failing)} still failing"]
        lines += [f"  {oid}  {reason}" for oid, reason in r.still_failing.items()]
        return "\n".join(lines)

    emit(data, as_json, human)


@dlq.command("drop")
@click.argument("order_id", metavar="ORDER_ID")
def dlq_drop(order_id: str) -> None:
    """Give up on one dead-lettered order: its stock returns to the deal and the letter is deleted."""
    import uuid

    from worker.dlq import drop_dead_letter

    try:
        uuid.UUID(order_id)
    except ValueError:
        raise click.BadParameter(f"{order_id!r} is not an order id (a UUID)", param_hint="ORDER_ID") from None
    o = ops()
    r = drop_dead_letter(o.db, o.gate, order_id)
    if not r.found:
        raise click.ClickException(f"no dead letter for order {order_id}")
    if r.kept:
        raise click.ClickException(f"dead letter {order_id} kept: {r.kept}")
    click.echo(f"dead letter {order_id} dropped" + (", stock returned" if r.stock_returned else ""))
