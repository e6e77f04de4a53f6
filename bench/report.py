"""One command for the whole benchmark report: strategies, burst, reference scenario; CSV, Markdown and charts.

Usage: .venv/bin/python -m bench.report [--quick]   (or: make bench)
Writes bench/results/: strategies.csv|md|json, burst.csv|md|json, burst_timeline.csv, reference.csv|md|json,
REPORT.md (every table, the machine, the targets) and the charts strategies_throughput.png,
strategies_latency.png, burst_timeline.png, reference.png. About 6-8 minutes on 2 cores (--quick: ~2).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench import bench_strategies, burst, reference  # noqa: E402
from bench.common import RESULTS, ROOT, markdown_table  # noqa: E402


def machine() -> dict[str, str]:
    """nproc, memory and CPU model of this machine."""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.splitlines()[1].split()[1]
    load = os.getloadavg()
    return {"nproc": str(os.cpu_count()), "memory": mem, "cpu": cpu, "load average at start": f"{load[0]:.2f}"}


def write_csv(name: str, rows: list[dict]) -> None:
    """bench/results/<name>.csv."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with (RESULTS / f"{name}.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)


def chart_strategies(rows: list[dict], direct: list[dict]) -> None:
    """Orders/s per strategy (with the ratio to (1)) over HTTP and direct, and p50/p99 per strategy."""
    labels = [r["strategy"].replace(" + ", "\n+ ", 1) for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    series = [("through HTTP (tiny WSGI app, granian)", rows, -0.2, "#2a7")]
    if direct:
        series.append(("direct calls (2 processes x 16 threads)", direct, 0.2, "#36c"))
    width = 0.4 if direct else 0.6
    for name, data, off, color in series:
        xs = [i + (off if direct else 0) for i in range(len(data))]
        bars = ax.bar(xs, [r["orders/s"] for r in data], width, color=color, label=name)
        for b, r in zip(bars, data, strict=True):
            ax.annotate(f"{r['orders/s']}\n×{r['orders/s vs (1)']}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
    ceiling = _meta("strategies").get("http_ceiling_rps")
    if ceiling:
        ax.axhline(ceiling, color="#2a7", ls=":", lw=1, label=f"HTTP ceiling: the tiny app's /healthz, {ceiling}/s")
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel("orders accepted per second")
    ax.set_title("Admission strategies: throughput, same load, same run (×: ratio to (1))")
    ax.legend(fontsize=8, loc="upper left")
    ax.margins(y=0.2)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "strategies_throughput.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.8))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["p50 ms"] for r in rows], 0.4, label="p50")
    ax.bar([i + 0.2 for i in x], [r["p99 ms"] for r in rows], 0.4, label="p99")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("answer time, ms (log scale)")
    ax.set_title("Admission strategies: latency under the same load")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "strategies_latency.png", dpi=110)
    plt.close(fig)


def chart_burst(summary: dict) -> None:
    """Cumulative accepted and confirmed orders over time, and each answer's latency."""
    series: dict[str, list[tuple[float, float]]] = {"accepted": [], "confirmed": [], "latency_ms": [], "sent": []}
    with (RESULTS / "burst_timeline.csv").open() as f:
        for row in csv.DictReader(f):
            series[row["kind"]].append((float(row["t_s"]), float(row["value"])))
    fig, ax = plt.subplots(figsize=(9, 4.8))
    sent = sorted(t for t, _ in series["sent"])
    ax.plot(sent, range(1, len(sent) + 1), color="#bbb", label="buy presses (scheduled)")
    ax.step(*zip(*series["accepted"], strict=True), where="post", color="#2a7", label="accepted (202) answers")
    if series["confirmed"]:
        ax.step(*zip(*series["confirmed"], strict=True), where="post", color="#36c", label="confirmed in PostgreSQL")
    ax.axhline(summary["stock"], color="#c33", ls=":", lw=1, label=f"stock {summary['stock']}")
    ax.set_xlabel("seconds since the sale opened")
    ax.set_ylabel("count")
    ax2 = ax.twinx()
    ax2.scatter(*zip(*series["latency_ms"], strict=True), s=2, color="#e90", alpha=0.35, label="answer time (ms)")
    ax2.set_ylabel("answer time, ms")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="center right", fontsize=8)
    ax.set_title(f"Burst: {summary['buyers']} buyers within 1 s, stock {summary['stock']}")
    fig.tight_layout()
    fig.savefig(RESULTS / "burst_timeline.png", dpi=110)
    plt.close(fig)


def chart_reference(rows: list[dict], users: int) -> None:
    """Requests/s and p50/p95/p99 per endpoint of the Locust scenario."""
    rows = [r for r in rows if r["endpoint"] != "POST /api/auth/login"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5))
    names = [_short(r["endpoint"]) for r in rows]
    a1.bar(names, [r["req/s"] for r in rows], color="#2a7")
    a1.axhline(2000, color="#c33", ls=":", label="target 2,000 req/s (total)")
    a1.set_title(f"Reference loop, {users} users (Locust) or connections (wrk): requests/s")
    a1.legend(fontsize=8)
    a1.tick_params(axis="x", labelsize=7)
    x = range(len(rows))
    for off, key in ((-0.27, "p50 ms"), (0, "p95 ms"), (0.27, "p99 ms")):
        a2.bar([i + off for i in x], [r.get(key, 0) for r in rows], 0.27, label=key)
    a2.axhline(100, color="#c33", ls=":", label="target p99 100 ms")
    a2.set_xticks(list(x), names, fontsize=7)
    a2.set_title("answer time, ms")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "reference.png", dpi=110)
    plt.close(fig)


def _short(endpoint: str) -> str:
    """Chart label of a reference row."""
    if endpoint.startswith("calibration"):
        return "Locust alone\n(nginx /lb-healthz)"
    if endpoint.startswith("same loop with wrk"):
        return "same loop\nwith wrk"
    if endpoint.startswith("wrk: GET /healthz"):
        return "wrk /healthz\n(through the LB)"
    names = {"total (all requests)": "Locust\ntotal", "GET /api/deals": "GET\nlist"}
    names["GET /api/deals/{id}"] = "GET\ndetail"
    return names.get(endpoint, "POST\norder" if endpoint.startswith("POST /api/deals") else endpoint)


def targets(strat: list[dict], direct: list[dict], b: dict, ref: dict) -> list[dict]:
    """The issue's targets, met or not."""
    ratio = next(r["orders/s vs (1)"] for r in strat if r["key"] == "lua_outbox")
    dratio = next((r["orders/s vs (1)"] for r in direct if r["key"] == "lua_outbox"), None)
    total = ref["rows"][0]
    fast = next(r for r in ref["rows"] if r["endpoint"].startswith("same loop with wrk"))
    sold, conf = b["last 202 answered (s)"], b["all confirmed in PostgreSQL (s)"]
    burst_ok = isinstance(sold, float) and isinstance(conf, float) and max(sold, conf) < 2 and b["accepted == stock"]
    return [
        {"target": "strategy (4) >= 10x strategy (1), orders/s (HTTP)", "measured": f"x{ratio}", "met": ratio >= 10},
        {"target": "strategy (4) >= 10x strategy (1), orders/s (direct calls, no HTTP)", "measured": f"x{dratio}",
         "met": dratio is not None and dratio >= 10},
        {"target": "burst sold out and fully confirmed < 2 s, accepted == stock",
         "measured": f"stock gone in the gate {b['stock gone in the gate (s)']} s, last 202 answered {sold} s, "
                     f"all confirmed {conf} s, accepted {b['accepted (202)']}", "met": burst_ok},
        {"target": "reference >= 2,000 req/s total, p99 < 100 ms (Locust)",
         "measured": f"{total['req/s']} req/s, p99 {total['p99 ms']} ms",
         "met": total["req/s"] >= 2000 and total["p99 ms"] < 100},
        {"target": "reference >= 2,000 req/s total, p99 < 100 ms (same loop, wrk)",
         "measured": f"{fast['req/s']} req/s, p99 {fast['p99 ms']} ms",
         "met": fast["req/s"] >= 2000 and fast["p99 ms"] < 100},
        {"target": "no oversell, nothing lost (all runs)", "measured": _integrity(strat, direct, b, ref),
         "met": _integrity(strat, direct, b, ref) == "ok"},
    ]  # fmt: skip


def _integrity(strat: list[dict], direct: list[dict], b: dict, ref: dict) -> str:
    bad = [r["key"] for r in strat if r["oversold"] or not r["sell-out ok"]]
    bad += [f"{r['key']} (direct)" for r in direct if r["oversold"] or r["lost"]]
    if not b["accepted == stock"] or b["gate remaining"] != 0 or b["confirmed"] != b["stock"]:
        bad.append("burst")
    if not (
        ref["remaining + confirmed == total"]
        and ref["accepted == confirmed (nothing lost)"]
        and ref["after wrk: remaining + confirmed == total"]
    ):
        bad.append("reference")
    return "ok" if not bad else "failed: " + ", ".join(bad)


def _meta(name: str) -> dict:
    """What a part saved next to its rows."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text())["meta"] if path.exists() else {}


def _load(name: str) -> str:
    """The 1-minute load average a part saved with its results."""
    return str(_meta(name).get("load1", "?"))


HISTORY_COLS = [
    "when", "commit", "load at start", "load at end", "(4)/(1) HTTP", "(4)/(1) direct", "burst stock gone s",
    "burst all confirmed s", "burst p99 ms", "Locust req/s", "Locust p99 ms", "wrk loop req/s", "integrity",
]  # fmt: skip


def code_version() -> str:
    """The commit the run measured (``+dirty`` with uncommitted changes), so history rows compare like with like."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "web", "shared", "worker", "bench/*.py"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()  # fmt: skip
    except OSError:
        return "-"
    return (head.stdout.strip() or "-") + ("+dirty" if dirty else "")


def append_history(mach: dict[str, str], tgt: list[dict], strat: list[dict], direct: list[dict], b: dict,
                   ref: dict) -> list[dict]:  # fmt: skip
    """Add this run's key figures to bench/results/history.csv (one line a full run); returns every line."""
    four = next(r for r in strat if r["key"] == "lua_outbox")
    dfour = next((r for r in direct if r["key"] == "lua_outbox"), None)
    fast = next(r for r in ref["rows"] if r["endpoint"].startswith("same loop with wrk"))
    line = dict(zip(HISTORY_COLS, [
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), code_version(), mach["load average at start"],
        f"{os.getloadavg()[0]:.2f}", four["orders/s vs (1)"], dfour["orders/s vs (1)"] if dfour else "-",
        b["stock gone in the gate (s)"], b["all confirmed in PostgreSQL (s)"], b["p99 ms"], ref["rows"][0]["req/s"],
        ref["rows"][0]["p99 ms"], fast["req/s"], tgt[-1]["measured"],
    ], strict=True))  # fmt: skip
    path = RESULTS / "history.csv"
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    rows.append(line)
    write_csv("history", rows)
    return rows


def load_saved() -> tuple[list[dict], list[dict], dict, dict]:
    """The rows and summaries the last run saved as bench/results/<name>.json."""

    def read(name: str) -> dict:
        return json.loads((RESULTS / f"{name}.json").read_text())

    ref = read("reference")
    direct = read("strategies_direct")["rows"] if (RESULTS / "strategies_direct.json").exists() else []
    return read("strategies")["rows"], direct, read("burst")["rows"][0], {"rows": ref["rows"], **ref["meta"]}


def main() -> None:
    """Run everything, then write the tables and charts."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, for a dry run (~2 min)")
    ap.add_argument("--render", action="store_true", help="no run: rebuild tables and charts from the saved JSON")
    args = ap.parse_args()
    t0 = time.monotonic()
    mach = machine()
    if args.render:
        strat, direct, b, ref = load_saved()
        mach["load average at start"] = "unknown (re-rendered)"
    elif args.quick:
        both = bench_strategies.run(seconds=3, connections=50, direct_s=2)
        b = burst.run(buyers=1000, stock=200, connections=200)
        ref = reference.run(users=50, seconds=10)
    else:
        both = bench_strategies.run()
        b = burst.run()
        ref = reference.run()
    if not args.render:
        strat, direct = both["http"], both["direct"]
    write_csv("strategies", strat)
    write_csv("strategies_direct", direct)
    write_csv("burst", [b])
    write_csv("reference", ref["rows"])
    chart_strategies(strat, direct)
    chart_burst(b)
    chart_reference(ref["rows"], ref["users"])
    tgt = targets(strat, direct, b, ref)
    write_csv("targets", tgt)
    hist_path = RESULTS / "history.csv"
    if args.quick or args.render:
        history = list(csv.DictReader(hist_path.open())) if hist_path.exists() else []
    else:
        history = append_history(mach, tgt, strat, direct, b, ref)
    keep = ["strategy", "orders/s", "orders/s vs (1)", "p50 ms", "p99 ms", "p99 vs (1)", "errors",
            "persisted after (s)", "oversold", "sell-out: accepted/persisted/remaining of 500", "lost"]  # fmt: skip
    keep_direct = ["strategy", "orders/s", "orders/s vs (1)", "p50 ms", "p99 ms", "p99 vs (1)", "errors",
                   "persisted after (s)", "oversold", "lost"]  # fmt: skip
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.render:
        when = f"re-rendered from the run that ended {ref.get('when', '?')}"
    md = [
        f"# flashdeal benchmark report ({when}{', quick' if args.quick else ''})",
        "",
        f"Machine: {mach['nproc']} cores ({mach['cpu']}), {mach['memory']} RAM, load average "
        f"at start {mach['load average at start']} (shared with other work: compare ratios, not absolutes).",
        "",
        "## Targets",
        markdown_table(tgt),
        "",
        "## Admission strategies (same HTTP load, one run)",
        markdown_table([{k: r[k] for k in keep} for r in strat]),
        "",
        f"HTTP ceiling in the same run: the same tiny app answering GET /healthz (no strategy work) under the same"
        f" load: {_meta('strategies').get('http_ceiling_rps', '?')} req/s.",
        "",
        "## The same strategies called directly (no HTTP; 2 processes x 16 threads)",
        markdown_table([{k: r[k] for k in keep_direct} for r in direct]) if direct else "(not run)",
        "",
        "![throughput](strategies_throughput.png) ![latency](strategies_latency.png)",
        "",
        "## Burst",
        markdown_table([b]),
        "",
        "![burst](burst_timeline.png)",
        "",
        f"## Reference scenario (Locust, {ref['users']} users, {ref['seconds']} s, "
        f"{ref.get('locust processes', 1)} Locust processes, through the LB)",
        markdown_table(ref["rows"]),
        "",
        f"Expected 409s by code: {json.dumps(ref['expected 409s by code'])}; "
        f"after the drain ({ref['drained after (s)']} s): {json.dumps(ref['stats'])}.",
        "",
        "![reference](reference.png)",
        "",
        "## Full runs so far (the commit that ran; the machine is shared: the spread within one commit is noise)",
        markdown_table(history[-10:]) if history else "(none yet)",
        "",
        f"Load average (1 min) at the end of each part: strategies {_load('strategies')}, burst {_load('burst')}, "
        f"reference {_load('reference')}." + ("" if args.render else f" Whole run: {time.monotonic() - t0:.0f} s."),
    ]
    (RESULTS / "REPORT.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
