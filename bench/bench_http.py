"""Web benchmark: deal detail and order admission against /healthz of the same server, same run.

Usage: .venv/bin/python -m bench.bench_http [--seconds 10] [--connections 300] [--few 32]
One granian instance (2 workers) on 127.0.0.1; wrk as the load generator on the same machine.
"""

from __future__ import annotations

import argparse

from bench.common import Context, WrkResult, open_sale, paced, save, wrk
from bench.users import login_all, make_users
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
      {["Content-Type"] = "application/json", ["Cookie"] = "flashdeal_session=" .. c}, '{"quantity": 1}')
  end
end
request = function()
  n = n + 1
  return reqs[(n %% #reqs) + 1]
end
"""


def orders_lua(cookies: list[str], deal_id: int) -> str:
    """wrk script: POST an order for the deal, rotating over the buyers' session cookies."""
    return ORDER_LUA % (", ".join(f'"{c}"' for c in cookies), deal_id)


def _on_instance(
    ctx: Context, deal_id: int, emails: list[str], env: dict[str, str], runs: dict[str, str], **load: int
) -> list[WrkResult]:
    """Start one more instance with ``env`` changes and run each named scenario ("orders" or "detail") on it."""
    port = free_port()
    proc = start_granian({**ctx.env, **env}, port)
    try:
        base = f"http://127.0.0.1:{port}"
        lua = orders_lua(login_all(base, emails), deal_id) if "orders" in runs.values() else None
        return [
            wrk(name, base, lua=lua, **load) if what == "orders" else wrk(name, f"{base}/api/deals/{deal_id}", **load)
            for name, what in runs.items()
        ]
    finally:
        stop_process(proc)


def main() -> None:
    """Run the scenarios and print the table with ratios to /healthz."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--few", type=int, default=32, help="connections of the low-concurrency latency run")
    ap.add_argument("--users", type=int, default=200)
    args = ap.parse_args()

    ctx = Context.create()
    deal_id = open_sale(ctx, "bench deal")
    emails = [email for _id, email in make_users(ctx.db, args.users)]
    port = free_port()
    proc = start_granian(ctx.env, port)
    base = f"http://127.0.0.1:{port}"
    common = {"connections": args.connections, "seconds": args.seconds}
    try:
        lua = orders_lua(login_all(base, emails), deal_id)
        wrk("warmup", f"{base}/api/deals/{deal_id}", connections=50, seconds=2)
        health = wrk("GET /healthz", f"{base}/healthz", **common)
        detail = wrk("GET /api/deals/{id}", f"{base}/api/deals/{deal_id}", **common)
        orders = wrk("POST /api/deals/{id}/orders", base, lua=lua, **common)
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
        orders_few = wrk(
            f"POST /api/deals/{{id}}/orders, {args.few} connections",
            base,
            lua=lua,
            connections=args.few,
            seconds=args.seconds,
        )
    finally:
        stop_process(proc)
    try:
        # The same requests through Flask's full request cycle: the fast path turned off, then
        # Flask-Limiter turned on (which also takes orders through Flask).
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
            {"POST /api/deals/{id}/orders, Flask-Limiter on": "orders"},
            **common,
        )
        accepted = ctx.gate.redis.hlen(ctx.gate.keys.deal(deal_id).orders)
    finally:
        ctx.cleanup()
    runs = (health, detail, orders, detail_paced, orders_paced, orders_few, detail_flask, orders_flask, orders_limited)
    rows = [r.row(health) for r in runs]
    save(
        "http",
        rows,
        {
            "server": "granian wsgi, 2 workers, 8 blocking threads",
            "connections": args.connections,
            "seconds": args.seconds,
            "logged_in_users": args.users,
            "orders_accepted": accepted,
            "fast_path_over_flask": round(orders.requests_per_s / orders_flask.requests_per_s, 2),
            "detail_fast_path_over_flask": round(detail.requests_per_s / detail_flask.requests_per_s, 2),
        },
    )
    print(f"\norders accepted by the gate during the run: {accepted} (every 202 is in the outbox)")
    print(
        f"detail: {detail.requests_per_s / health.requests_per_s:.0%} of /healthz (target >= 40%), "
        f"p99 {detail.p99_ms:.1f} ms saturated / {detail_paced.p99_ms:.1f} ms paced (target < 20 ms)\n"
        f"orders: {orders.requests_per_s:.0f}/s (target >= 5000), {orders.requests_per_s / health.requests_per_s:.0%} "
        f"of /healthz (target >= 30%), p99 {orders.p99_ms:.1f} ms saturated / {orders_paced.p99_ms:.1f} ms paced / "
        f"{orders_few.p99_ms:.1f} ms at {args.few} connections (target < 25 ms)\n"
        f"fast path: orders {orders.requests_per_s / orders_flask.requests_per_s:.1f}x the Flask view "
        f"({orders_flask.requests_per_s:.0f}/s), detail {detail.requests_per_s / detail_flask.requests_per_s:.1f}x "
        f"({detail_flask.requests_per_s:.0f}/s); with Flask-Limiter on {orders_limited.requests_per_s:.0f}/s"
    )


if __name__ == "__main__":
    main()
