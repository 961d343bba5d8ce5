#!/usr/bin/env python3
"""Turns bench/run.sh results files (JSON lines, one file per run) into the table BENCHMARKS.md
quotes.

ext_authz Check (issue 9) is compared with Introspect of the same hot token: "check /
introspect-hot" gives, per run and K, Check's throughput as a fraction of Introspect's measured in
that same run.

With several files, every cell is the median over the runs, except errors (summed: any error in
any run shows) and peak RSS (the highest). "% of ceiling" is computed within each run, against
that run's own ceiling, and only then the median is taken: the machine is noisy, and a ratio
within one run is what is comparable. The per-run percentages are listed under the table. The
ceiling is pgbench (PostgreSQL) or `ratchet-bench --sqlite-ceiling` (SQLite): rows named
`pgbench-<scenario>` or `sqlite-ceiling-<scenario>`.

Two more yardsticks (issue 18), printed under the table as per-run ratios: Introspect of a hot
token against the bare tonic server of `ratchet-bench --serve-ceiling` (`tonic-ceiling-
introspect-hot`: server CPU per call and throughput, with the token lengths of both, which must
match), and Rotate against pgbench's minimal rotation (`pgbench-minimal-rotate`,
bench/pgbench-minimal-rotation.sql: throughput).

    bench/report.py [--max-ceiling-cpu X] RESULTS.jsonl [MORE.jsonl ...]

--max-ceiling-cpu X: exit 1 if, in any run, Introspect's server CPU per call is more than X times
the tonic ceiling's at the same K (bench/run.sh --smoke's guard against gross regressions).
"""
import json
import statistics
import sys

HEAD = ["scenario", "K", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors",
        "srv CPU/op µs", "db CPU/op µs", "client CPU/op µs", "peak RSS MiB", "ceiling ops/s", "% of ceiling"]
CEILINGS = ("pgbench-minimal-", "pgbench-", "sqlite-ceiling-", "tonic-ceiling-")
# The ceilings "% of ceiling" is taken against: the scenario's exact statements.
EXACT = ("pgbench-", "sqlite-ceiling-")


def is_ceiling(scenario):
    return scenario.startswith(CEILINGS)


def is_exact_ceiling(scenario):
    """A ceiling running the scenario's own statements (what "% of ceiling" is against)."""
    return scenario.startswith(EXACT) and not scenario.startswith("pgbench-minimal-")


def measured(scenario):
    """The scenario a ceiling row bounds."""
    for prefix in CEILINGS:
        if scenario.startswith(prefix):
            return scenario.removeprefix(prefix)
    return scenario


def yardsticks(runs):
    """Per (what, K): this run's ratios against the tonic ceiling and the minimal rotation."""
    by = {(r["scenario"], r["concurrency"]): r for r in runs}
    out = {}
    for (scenario, k), ceiling in by.items():
        if scenario.startswith("tonic-ceiling-") and (measured(scenario), k) in by:
            ours = by[(measured(scenario), k)]
            cpu = (ours.get("server_cpu_us_per_op") or 0) / (ceiling.get("server_cpu_us_per_op") or float("inf"))
            # A ceiling whose tokens are shorter or longer than ours carries other bytes: no yardstick.
            if ours.get("access_token_bytes") != ceiling.get("access_token_bytes"):
                cpu = float("inf")
            out[(measured(scenario) + " / tonic ceiling", k)] = (
                f"server CPU {cpu:.2f}x ({ours.get('server_cpu_us_per_op')} / {ceiling.get('server_cpu_us_per_op')} µs), "
                f"ops/s {ours['ops_per_s'] / ceiling['ops_per_s']:.2f}x, token bytes "
                f"{ours.get('access_token_bytes')} / {ceiling.get('access_token_bytes')} (must be equal: "
                "ACCESS_TOKEN_BYTES in crates/ratchet-bench/src/ceiling.rs)", cpu)
        if scenario.startswith("pgbench-minimal-") and (measured(scenario), k) in by:
            ours = by[(measured(scenario), k)]
            ratio = ours["ops_per_s"] / ceiling["ops_per_s"]
            out[(measured(scenario) + " / minimal rotation", k)] = (
                f"ops/s {ratio:.2f}x ({ours['ops_per_s']:.0f} / {ceiling['ops_per_s']:.0f}), database CPU "
                f"{ours.get('db_cpu_us_per_op')} / {ceiling.get('db_cpu_us_per_op')} µs", ratio)
    return out


def load(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def ratios(runs):
    """(scenario, K) -> this run's ops/s as a percentage of this run's pgbench at the same K."""
    ceiling = {(measured(r["scenario"]), r["concurrency"]): r["ops_per_s"]
               for r in runs if is_exact_ceiling(r["scenario"])}
    return {(r["scenario"], r["concurrency"]): 100 * r["ops_per_s"] / ceiling[(r["scenario"], r["concurrency"])]
            for r in runs if (r["scenario"], r["concurrency"]) in ceiling and not is_ceiling(r["scenario"])}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def main(paths, max_ceiling_cpu=None):
    files = [load(path) for path in paths]
    per_run_ratio = [ratios(runs) for runs in files]
    keys = []  # (scenario, K) in the order of the first run, ceiling rows last
    for runs in files:
        for r in runs:
            key = (r["scenario"], r["concurrency"])
            if r["scenario"] != "idle" and key not in keys:
                keys.append(key)
    keys.sort(key=lambda k: is_ceiling(k[0]))
    rows = []
    for key in keys:
        same = [r for runs in files for r in runs if (r["scenario"], r["concurrency"]) == key]
        get = lambda field: median([r.get(field) for r in same])
        if is_ceiling(key[0]):
            rows.append([key[0], key[1], fmt(get("ops_per_s"), 0), *["-"] * 5,
                         sum(r["errors"].get("failed", 0) for r in same),
                         fmt(get("server_cpu_us_per_op")), fmt(get("db_cpu_us_per_op")),
                         *["-"] * 4])
            continue
        lat = lambda q: fmt(median([r["latency_us"][q] / 1000 for r in same]), 2)
        pgbench = median([r["ops_per_s"] for runs in files for r in runs
                          if is_exact_ceiling(r["scenario"]) and (measured(r["scenario"]), r["concurrency"]) == key])
        ratio = median([run.get(key) for run in per_run_ratio])
        peaks = [r["server_peak_rss_kib"] for r in same if r.get("server_peak_rss_kib")]
        rows.append([
            key[0], key[1], fmt(get("ops_per_s"), 0), *(lat(q) for q in ("p50", "p90", "p99", "p999", "max")),
            sum(sum(r["errors"].values()) + r.get("checks_failed", 0) for r in same),
            fmt(get("server_cpu_us_per_op")), fmt(get("db_cpu_us_per_op")), fmt(get("client_cpu_us_per_op")),
            fmt(max(peaks) / 1024 if peaks else None), fmt(pgbench, 0), f"{ratio:.0f}%" if ratio else "-",
        ])
    idle = median([r["server_rss_kib"] for runs in files for r in runs if r["scenario"] == "idle"])
    print(f"runs: {len(files)}" + (" (medians)" if len(files) > 1 else ""))
    print(f"idle server RSS: {idle / 1024:.1f} MiB" if idle else "idle server RSS: -")
    widths = [max(len(str(x)) for x in col) for col in zip(HEAD, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"
    print(line(HEAD))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    if len(files) > 1:
        for key in sorted({k for run in per_run_ratio for k in run}):
            print(f"% of ceiling, {key[0]} K={key[1]}, per run: "
                  + ", ".join(f"{run[key]:.0f}%" for run in per_run_ratio if key in run))
    per_run_yardsticks = [yardsticks(runs) for runs in files]
    for key in sorted({k for run in per_run_yardsticks for k in run}):
        for number, run in enumerate(per_run_yardsticks, 1):
            if key in run:
                print(f"{key[0]}, K={key[1]}" + (f", run {number}" if len(files) > 1 else "") + f": {run[key][0]}")
    for key_k in sorted({r["concurrency"] for runs in files for r in runs if r["scenario"] == "check"}):
        per_run = []
        for runs in files:
            ops = {r["scenario"]: r["ops_per_s"] for r in runs if r["concurrency"] == key_k}
            if "check" in ops and ops.get("introspect-hot"):
                per_run.append(ops["check"] / ops["introspect-hot"])
        if per_run:
            print(f"check / introspect-hot, K={key_k}, per run: " + ", ".join(f"{x:.2f}" for x in per_run))
    if max_ceiling_cpu is not None:
        over = [(key, run[key][1]) for run in per_run_yardsticks for key in run
                if key[0].endswith("/ tonic ceiling") and run[key][1] > max_ceiling_cpu]
        checked = sum(1 for run in per_run_yardsticks for key in run if key[0].endswith("/ tonic ceiling"))
        if over or not checked:
            for key, ratio in over:
                print(f"FAILED: {key[0]}, K={key[1]}: server CPU {ratio:.2f}x the ceiling's, over {max_ceiling_cpu}x",
                      file=sys.stderr)
            if not checked:
                print("FAILED: no run of introspect-hot beside the tonic ceiling to check", file=sys.stderr)
            return 1
        print(f"introspect-hot within {max_ceiling_cpu}x the tonic ceiling's server CPU per call")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    limit = None
    if args[:1] == ["--max-ceiling-cpu"] and len(args) >= 2:
        limit, args = float(args[1]), args[2:]
    if not args:
        sys.exit(__doc__)
    sys.exit(main(args, limit))
