#!/usr/bin/env python3
"""Turns one bench/run.sh results file (JSON lines) into the table BENCHMARKS.md quotes."""
import json
import sys


def main(path):
    runs = [json.loads(line) for line in open(path) if line.strip()]
    ceiling = {(r["scenario"].removeprefix("pgbench-"), r["concurrency"]): r["ops_per_s"]
               for r in runs if r["scenario"].startswith("pgbench-")}
    idle = next((r["server_rss_kib"] for r in runs if r["scenario"] == "idle"), None)
    print(f"idle server RSS: {idle / 1024:.1f} MiB" if idle else "idle server RSS: -")
    head = ["scenario", "K", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors",
            "srv CPU/op µs", "db CPU/op µs", "client CPU/op µs", "peak RSS MiB", "pgbench tps", "% of ceiling"]
    rows = []
    for r in runs:
        if r["scenario"] == "idle" or r["scenario"].startswith("pgbench-"):
            continue
        lat = r["latency_us"]
        top = ceiling.get((r["scenario"], r["concurrency"]))
        rows.append([
            r["scenario"], r["concurrency"], f'{r["ops_per_s"]:.0f}',
            *(f"{lat[q] / 1000:.2f}" for q in ("p50", "p90", "p99", "p999", "max")),
            sum(r["errors"].values()) + r.get("checks_failed", 0),
            fmt(r.get("server_cpu_us_per_op")), fmt(r.get("db_cpu_us_per_op")), fmt(r.get("client_cpu_us_per_op")),
            fmt(r["server_peak_rss_kib"] / 1024 if r.get("server_peak_rss_kib") else None),
            f"{top:.0f}" if top else "-",
            f"{100 * r['ops_per_s'] / top:.0f}%" if top else "-",
        ])
    for r in runs:
        if r["scenario"].startswith("pgbench-"):
            rows.append([r["scenario"], r["concurrency"], f'{r["ops_per_s"]:.0f}', *["-"] * 5,
                         r["errors"].get("failed", 0), "-", fmt(r.get("db_cpu_us_per_op")), *["-"] * 4])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def fmt(value):
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    main(sys.argv[1])
