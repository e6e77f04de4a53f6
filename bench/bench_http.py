"""Web benchmark: deal detail and order admission against /healthz of the same server, same run.

Usage: .venv/bin/python -m bench.bench_http [--seconds 10] [--connections 300] [--few 32] [--rounds 3] [--no-lb]
One granian instance (2 workers) on 127.0.0.1; wrk as the load generator on the same machine. Order
attempts with the order token (docs/order-token.md) and with the session cookie only (the path
before it), then the same through the LB stack (nginx, 3 web nodes, workers), without a target.
"""

from __future__ import annotations

import argparse

from bench.common import Context, WrkResult, open_sale, paced, save, wrk
from bench.stack import Stack
from bench.users import login_cookies, make_users
from harness.granian import start_granian
from harness.ports import free_port
from harness.processes import stop_process

# The requests are formatted once per wrk thread (init), not per request: the load generator shares
# the 2 cores with the server, and every microsecond it spends is one the server does not get.
ORDER_LUA = """
local cookies = {%s}
local reqs = {}
local n = 0
init = function(args)
  for i, c in ipairs(cookies) do
    reqs[i] = wrk.format("POST", "/api/deals/%d/orders",
      {["Content-Type"] = "application/json", ["Cookie"] = c}, '{"quantity": 1}')
  end
end
request = function()
  n = n + 1
  return reqs[(n %% #reqs) + 1]
end
"""
SESSION = "flashdeal_session"
TOKEN = "flashdeal_order"


def orders_lua_headers(cookie_headers: list[str], deal_id: int) -> str:
    """wrk script: POST an order for the deal, rotating over the buyers' Cookie headers."""
    return ORDER_LUA % (", ".join(f'"{c}"' for c in cookie_headers), deal_id)


def orders_lua(cookies: list[str], deal_id: int) -> str:
    """wrk script: POST an order for the deal, rotating over the buyers' session cookies (the session path)."""
    return orders_lua_headers([f"{SESSION}={c}" for c in cookies], deal_id)


def buyer_scripts(base: str, emails: list[str], deal_id: int) -> tuple[str, str]:
    """(with the order token, with the session cookie only) wrk scripts for the same logged-in buyers.

    The first is what a browser sends after login (both cookies: the token proves the buyer, no
    session read); the second is today's order path, kept for the comparison (one session read).
    """
    cookies = login_cookies(base, emails)
    token = [f"{SESSION}={c[SESSION]}; {TOKEN}={c[TOKEN]}" for c in cookies]
    session = [f"{SESSION}={c[SESSION]}" for c in cookies]
    return orders_lua_headers(token, deal_id), orders_lua_headers(session, deal_id)


def _on_instance(
    ctx: Context, deal_id: int, emails: list[str], env: dict[str, str], runs: dict[str, str], **load: int
) -> list[WrkResult]:
    """Start one more instance with ``env`` changes and run each named scenario ("orders" or "detail") on it."""
    port = free_port()
    proc = start_granian({**ctx.env, **env}, port)
    try:
        base = f"http://127.0.0.1:{port}"
        lua = buyer_scripts(base, emails, deal_id)[0] if "orders" in runs.values() else None
        return [
            wrk(name, base, lua=lua, **load) if what == "orders" else wrk(name, f"{base}/api/deals/{deal_id}", **load)
            for name, what in runs.items()
        ]
    finally:
        stop_process(proc)


def interleaved(runs: dict[str, tuple[str, str | None]], rounds: int, **load: int) -> list[WrkResult]:
    """Each named (url, lua) run ``rounds`` times, interleaved (A B C A B C ...); per name the median round.

    Why interleaved: on a shared 2-core machine the load of other processes swings within a run;
    back-to-back runs of one scenario then another compare two different machines. Interleaving
    spreads the swings over every scenario alike, and the median drops the worst round.
    """
    seen: dict[str, list[WrkResult]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (url, lua) in runs.items():
            seen[name].append(wrk(name, url, lua=lua, **load))
    out = []
    for name, results in seen.items():
        ranked = sorted(results, key=lambda r: r.requests_per_s)
        mid = ranked[len(ranked) // 2]
        total = sum(r.requests for r in results)
        label = f"{name} (median of {rounds})" if rounds > 1 else name
        out.append(WrkResult(label, mid.requests_per_s, mid.p50_ms, mid.p99_ms, total, mid.non_2xx, mid.errors))
    return out


def _through_lb(ctx: Context, deal_id: int, emails: list[str], rounds: int, **load: int) -> list[WrkResult]:
    """/healthz and order attempts (token, session only) through nginx and 3 web nodes with their workers."""
    with Stack(ctx.env) as stack:
        token, session = buyer_scripts(stack.base, emails, deal_id)
        wrk("LB warmup", f"{stack.base}/api/deals/{deal_id}", connections=50, seconds=2)
        runs = {
            "LB: GET /healthz": (f"{stack.base}/healthz", None),
            "LB: POST orders, order token": (stack.base, token),
            "LB: POST orders, session only": (stack.base, session),
        }
        return interleaved(runs, rounds, **load)


def main() -> None:
    """Run the scenarios and print the table with ratios to /healthz."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--few", type=int, default=32, help="connections of the low-concurrency latency run")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--no-lb", action="store_true", help="skip the runs through the LB stack")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the /healthz-token-session runs")
    ap.add_argument("--database", default="flashdeal_bench", help="the bench database (created when missing)")
    args = ap.parse_args()

    ctx = Context.create(args.database)
    # The longest token lifetime: a long run must not fall back to the session path half-way.
    ctx.env["ORDER_TOKEN_SECONDS"] = "900"
    deal_id = open_sale(ctx, "bench deal")
    emails = [email for _id, email in make_users(ctx.db, args.users)]
    port = free_port()
    proc = start_granian(ctx.env, port)
    base = f"http://127.0.0.1:{port}"
    common = {"connections": args.connections, "seconds": args.seconds}
    few = {"connections": args.few, "seconds": args.seconds}
    try:
        lua, session_lua = buyer_scripts(base, emails, deal_id)
        wrk("warmup", f"{base}/api/deals/{deal_id}", connections=50, seconds=2)
        trio = {
            "GET /healthz": (f"{base}/healthz", None),
            "POST /api/deals/{id}/orders, order token": (base, lua),
            "POST /api/deals/{id}/orders, session only (before)": (base, session_lua),
        }
        health, orders, orders_session = interleaved(trio, args.rounds, **common)
        health_few, orders_few, session_few = interleaved(
            {f"{name}, {args.few} connections": run for name, run in trio.items()}, args.rounds, **few
        )
        detail = wrk("GET /api/deals/{id}", f"{base}/api/deals/{deal_id}", **common)
        # Latency below saturation: the same connections, paced to 80% of each path's own maximum.
        d_rate, o_rate = 0.8 * detail.requests_per_s, 0.8 * orders.requests_per_s
        detail_paced = wrk(
            f"GET /api/deals/{{id}} paced to {d_rate:.0f}/s",
            f"{base}/api/deals/{deal_id}",
            lua=paced(d_rate, args.connections),
            **common,
        )
        orders_paced = wrk(
            f"POST /api/deals/{{id}}/orders paced to {o_rate:.0f}/s",
            base,
            lua=paced(o_rate, args.connections, lua),
            **common,
        )
    finally:
        stop_process(proc)
    try:
        # The same requests through Flask's full request cycle: the fast path turned off, then
        # rate limits turned on (counted by the admission script, in the same round trip).
        detail_flask, orders_flask = _on_instance(
            ctx,
            deal_id,
            emails,
            {"FAST_PATH": "false"},
            {"GET /api/deals/{id}, fast path off": "detail", "POST /api/deals/{id}/orders, fast path off": "orders"},
            **common,
        )
        (orders_limited,) = _on_instance(
            ctx,
            deal_id,
            emails,
            {
                "RATELIMIT_ENABLED": "true",
                "RATELIMIT_ORDER": "100000/second",
                "RATELIMIT_ORDER_IP": "1000000/second",
                "RATELIMIT_LOGIN_IP": "100000/minute",  # the 200 buyers log in from one address
            },
            {"POST /api/deals/{id}/orders, order token, rate limits on": "orders"},
            **common,
        )
        lb = [] if args.no_lb else _through_lb(ctx, deal_id, emails, args.rounds, **common)
        accepted = ctx.gate.redis.hlen(ctx.gate.keys.deal(deal_id).orders)
    finally:
        ctx.cleanup()
    runs = (health, detail, orders, orders_session, orders_paced, detail_paced, detail_flask, orders_flask,
            orders_limited)  # fmt: skip
    rows = [r.row(health) for r in runs] + [r.row(health_few) for r in (health_few, orders_few, session_few)]
    if lb:
        rows += [r.row(lb[0]) for r in lb]
    extra: dict[str, object] = {
        "server": "granian wsgi, 2 workers, 8 blocking threads",
        "connections": args.connections,
        "seconds": args.seconds,
        "logged_in_users": args.users,
        "orders_accepted": accepted,
        "token_over_healthz": round(orders.requests_per_s / health.requests_per_s, 2),
        "token_over_session": round(orders.requests_per_s / orders_session.requests_per_s, 2),
        "session_over_healthz": round(orders_session.requests_per_s / health.requests_per_s, 2),
        "token_p99_ms_at_few": orders_few.p99_ms,
        "session_p99_ms_at_few": session_few.p99_ms,
        "fast_path_over_flask": round(orders.requests_per_s / orders_flask.requests_per_s, 2),
        "detail_fast_path_over_flask": round(detail.requests_per_s / detail_flask.requests_per_s, 2),
    }
    if lb:
        extra["lb_token_over_lb_healthz"] = round(lb[1].requests_per_s / lb[0].requests_per_s, 2)
        extra["lb_token_over_lb_session"] = round(lb[1].requests_per_s / lb[2].requests_per_s, 2)
    save("http", rows, extra)
    print(f"\norders accepted by the gate during the run: {accepted} (every 202 is in the outbox)")
    print(
        f"detail: {detail.requests_per_s / health.requests_per_s:.0%} of /healthz, "
        f"p99 {detail.p99_ms:.1f} ms saturated / {detail_paced.p99_ms:.1f} ms paced\n"
        f"orders with the token: {orders.requests_per_s:.0f}/s = {orders.requests_per_s / health.requests_per_s:.2f}x "
        f"/healthz (target >= 0.9x), {orders.requests_per_s / orders_session.requests_per_s:.2f}x the session path "
        f"({orders_session.requests_per_s:.0f}/s, {orders_session.requests_per_s / health.requests_per_s:.2f}x "
        f"/healthz; target >= 1.4x)\n"
        f"p99 at {args.few} connections: token {orders_few.p99_ms:.1f} ms, session {session_few.p99_ms:.1f} ms, "
        f"/healthz {health_few.p99_ms:.1f} ms; token {orders_few.requests_per_s / health_few.requests_per_s:.2f}x "
        f"/healthz there\n"
        f"fast path: orders {orders.requests_per_s / orders_flask.requests_per_s:.1f}x the Flask view "
        f"({orders_flask.requests_per_s:.0f}/s), detail {detail.requests_per_s / detail_flask.requests_per_s:.1f}x "
        f"({detail_flask.requests_per_s:.0f}/s); with rate limits on {orders_limited.requests_per_s:.0f}/s"
    )
    if lb:
        print(
            f"through the LB: /healthz {lb[0].requests_per_s:.0f}/s, "
            f"orders with the token {lb[1].requests_per_s:.0f}/s "
            f"({lb[1].requests_per_s / lb[0].requests_per_s:.2f}x), session only {lb[2].requests_per_s:.0f}/s "
            f"({lb[2].requests_per_s / lb[0].requests_per_s:.2f}x)"
        )


if __name__ == "__main__":
    main()
