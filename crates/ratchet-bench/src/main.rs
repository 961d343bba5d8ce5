//! `ratchet-bench`: drives a running ratchet over real gRPC and reports throughput, latency,
//! errors, and the CPU the server (and optionally the database) spent per operation.
//!
//! Output: a human table on stderr and one JSON line on stdout. Exits non-zero when any call
//! failed or any correctness check did (every rotation returns a new token; a sample of spent
//! tokens replayed is refused as reuse; pooled access tokens introspect active).

mod authz;
mod ceiling;
mod connect;
mod h2;
mod load;
mod pgbench;
mod procfs;
mod sqlite_ceiling;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum as _};
use h2::{Client, Clients};
use load::{Mix, Plan, Scenario, Tally};
use procfs::Processes;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "ratchet-bench",
    about = "Load generator and benchmark for a running ratchet server"
)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[arg(long, value_enum, default_value_t = Scenario::Rotate)]
    scenario: Scenario,
    /// Concurrent clients (K).
    #[arg(long, short = 'k', default_value_t = 16)]
    concurrency: usize,
    /// Measured duration, after the warm-up [default: 10s, or up to an hour with --count].
    #[arg(long)]
    duration: Option<humantime::Duration>,
    /// Stop after this many measured operations (0: run for --duration).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Warm-up before measuring: connections, pools and caches settle.
    #[arg(long, default_value = "2s")]
    warmup: humantime::Duration,
    /// HTTP/2 connections the clients share (default: min(K, 4)).
    #[arg(long)]
    connections: Option<usize>,
    /// Valid access tokens issued up front for introspection.
    #[arg(long, default_value_t = 256)]
    pool: usize,
    /// Mixed scenario: percent introspect,rotate (issue gets the rest).
    #[arg(long, default_value = "90,9", value_parser = parse_mix)]
    mix: (u32, u32),
    /// Replay every n-th spent refresh token and expect TOKEN_REUSED (0: never).
    #[arg(long, default_value_t = 100)]
    replay_every: u64,
    /// Server PID: report its CPU time per operation and its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Database PIDs (comma-separated), or `postgres` for every postgres process on this
    /// machine: report their CPU time per operation.
    #[arg(long, value_parser = Processes::parse)]
    db_pids: Option<Processes>,
    /// Print the total CPU time (µs) of these processes (`postgres` or PIDs) and exit: lets a
    /// script measure what pgbench cost the database.
    #[arg(long, value_parser = Processes::parse)]
    print_cpu: Option<Processes>,
    /// Print the pgbench script of the given statement and exit: `rotate` (`SPEND_LIVE`, what a
    /// rotation runs), `spend` (`SPEND`, the refusal path's statement, run as a rotation), `issue`.
    #[arg(long, value_parser = ["rotate", "spend", "issue"])]
    print_pgbench: Option<String>,
    /// Send this API key (`x-api-key`) with every call: for a server run with a caller policy.
    #[arg(long)]
    api_key: Option<String>,
    /// Loop Rotate's or Issue's own SQLite transaction in this process on a new database file
    /// (`--sqlite-path`), with -k tasks, --warmup and --duration, instead of calling a server:
    /// the SQLite ceiling (src/sqlite_ceiling.rs).
    #[arg(long, value_parser = ["rotate", "issue"], requires = "sqlite_path")]
    sqlite_ceiling: Option<String>,
    /// The database file for --sqlite-ceiling (created; must not exist).
    #[arg(long)]
    sqlite_path: Option<std::path::PathBuf>,
    /// The connect scenario over TLS: the CA (PEM) that issued the server's certificate.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// The connect scenario over mutual TLS: the client certificate (PEM) to present.
    #[arg(long, requires_all = ["tls_ca", "tls_client_key"])]
    tls_client_cert: Option<std::path::PathBuf>,
    /// The key (PEM) of --tls-client-cert.
    #[arg(long, requires = "tls_client_cert")]
    tls_client_key: Option<std::path::PathBuf>,
    /// The name the server's certificate must have.
    #[arg(long, default_value = "localhost")]
    tls_server_name: String,
    /// The connect scenario over TLS: keep the sessions the server offers and resume them on the
    /// next connection (without: every handshake is full).
    #[arg(long, requires = "tls_ca")]
    tls_resume: bool,
    /// A label for this run in the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    /// The scenario's name in the JSON line (default: the scenario's own): a ceiling's run is
    /// reported apart from ratchet's.
    #[arg(long)]
    report_as: Option<String>,
    /// Serve the Introspect ceiling (a bare tonic server answering from a HashMap,
    /// src/ceiling.rs) on this address until killed, instead of calling a server.
    #[arg(long)]
    serve_ceiling: Option<std::net::SocketAddr>,
}

fn parse_mix(spec: &str) -> Result<(u32, u32), String> {
    let (a, b) = spec.split_once(',').ok_or("expected INTROSPECT,ROTATE")?;
    let (a, b): (u32, u32) = (
        a.trim().parse().map_err(|_| "bad percent")?,
        b.trim().parse().map_err(|_| "bad percent")?,
    );
    if a + b > 100 {
        return Err("percentages add up to more than 100".into());
    }
    Ok((a, b))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(processes) = &args.print_cpu {
        return print(&format!("{}\n", processes.cpu_micros()));
    }
    match args.print_pgbench.as_deref() {
        Some("rotate") => return print(&pgbench::rotation()),
        Some("spend") => return print(&pgbench::full_spend()),
        Some(_) => return print(&pgbench::issue()),
        None => {}
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = args.serve_ceiling {
        return match runtime.block_on(ceiling::serve(addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let (Some(transaction), Some(path)) = (args.sqlite_ceiling.as_deref(), args.sqlite_path.clone()) {
        let transaction = if transaction == "rotate" {
            sqlite_ceiling::Transaction::Rotate
        } else {
            sqlite_ceiling::Transaction::Issue
        };
        let duration = args.duration.map_or(Duration::from_secs(10), |d| *d);
        let ceiling = sqlite_ceiling::run(transaction, path, args.concurrency.max(1), *args.warmup, duration);
        return match runtime.block_on(ceiling) {
            Ok(line) => print(&format!("{line}\n")),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match runtime.block_on(bench(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn print(text: &str) -> ExitCode {
    print!("{text}");
    ExitCode::SUCCESS
}

async fn connect(addr: &str, n: usize, api_key: Option<&str>) -> anyhow::Result<Vec<Clients>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(h2::connect(addr, api_key).await?);
    }
    Ok(clients)
}

async fn access_token_pool(client: &mut Client, size: usize) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::with_capacity(size);
    for n in 0..size {
        tokens.push(
            client
                .issue(load::issue_request(usize::MAX, n as u64))
                .await?
                .into_inner()
                .access_token,
        );
    }
    Ok(tokens)
}

/// Runs the benchmark; `Ok(false)` when calls failed or checks did.
async fn bench(args: Args) -> anyhow::Result<bool> {
    let k = args.concurrency.max(1);
    let connects = args.scenario == Scenario::Connect;
    // The connect scenario opens its own connections, one per operation.
    let clients = if connects {
        vec![]
    } else {
        connect(
            &args.addr,
            args.connections.unwrap_or(k.min(4)).max(1),
            args.api_key.as_deref(),
        )
        .await?
    };
    let target = if connects {
        let tls = args.tls_ca.as_deref().map(|ca| connect::TlsOptions {
            ca,
            client: args.tls_client_cert.as_deref().zip(args.tls_client_key.as_deref()),
            server_name: &args.tls_server_name,
            resume: args.tls_resume,
        });
        Some(Arc::new(connect::Target::new(&args.addr, tls)?))
    } else {
        None
    };
    let access_tokens = if matches!(args.scenario, Scenario::IntrospectHot | Scenario::Check) {
        access_token_pool(&mut clients[0].tokens.clone(), 1).await?
    } else if matches!(args.scenario, Scenario::Introspect | Scenario::Mixed) {
        access_token_pool(&mut clients[0].tokens.clone(), args.pool.max(1)).await?
    } else {
        vec![]
    };

    // What a ceiling must match (src/ceiling.rs): the length of the tokens introspected.
    let access_token_bytes = access_tokens.first().map(String::len);
    let start = Instant::now();
    let measure_from = start + *args.warmup;
    let default_duration = if args.count > 0 {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(10)
    };
    let until = measure_from + args.duration.map_or(default_duration, Into::into);
    let plan = Arc::new(Plan {
        scenario: args.scenario,
        mix: Mix {
            introspect: args.mix.0,
            rotate: args.mix.1,
        },
        measure_from,
        until,
        count: args.count,
        done: AtomicU64::new(0),
        replay_every: args.replay_every,
        access_tokens,
    });
    let workers: Vec<_> = (0..k)
        .map(|id| match &target {
            Some(target) => tokio::spawn(connect::run(target.clone(), plan.clone())),
            None => tokio::spawn(load::run(id, clients[id % clients.len()].clone(), plan.clone())),
        })
        .collect();

    tokio::time::sleep_until(measure_from.into()).await;
    let server = args.server_pid.map(|pid| Processes::Pids(vec![pid]));
    // The load generator shares the machine: what it costs is part of the picture.
    let client = Processes::Pids(vec![std::process::id()]);
    let client_before = client.cpu_micros();
    let cpu_before = (
        server.as_ref().map(Processes::cpu_micros),
        args.db_pids.as_ref().map(Processes::cpu_micros),
    );
    let mut tally: Option<Tally> = None;
    for worker in workers {
        let result = worker.await?;
        match &mut tally {
            Some(total) => total.merge(result),
            None => tally = Some(result),
        }
    }
    let ended = Instant::now().min(until);
    let client_after = client.cpu_micros();
    let cpu_after = (
        server.as_ref().map(Processes::cpu_micros),
        args.db_pids.as_ref().map(Processes::cpu_micros),
    );
    let tally = tally.ok_or_else(|| anyhow::anyhow!("no workers ran"))?;
    let rss = args.server_pid.and_then(procfs::rss_kib);

    let seconds = (ended - measure_from).as_secs_f64().max(1e-9);
    let ops = tally.ops.max(1) as f64;
    let per_op = |before: Option<u64>, after: Option<u64>| Some((after? - before?) as f64 / ops);
    let h = &tally.latency_us;
    let report = json!({
        "label": args.label,
        "scenario": args.report_as.clone().unwrap_or_else(|| {
            args.scenario.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
        }),
        "concurrency": k,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "ops": tally.ops,
        "ops_per_s": (tally.ops as f64 / seconds).round(),
        "latency_us": {
            "p50": h.value_at_quantile(0.50),
            "p90": h.value_at_quantile(0.90),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "max": h.max(),
        },
        "errors": tally.errors,
        "checks_passed": tally.checks_passed,
        "checks_failed": tally.check_failures.len(),
        "server_cpu_us_per_op": per_op(cpu_before.0, cpu_after.0).map(|v| (v * 10.0).round() / 10.0),
        "db_cpu_us_per_op": per_op(cpu_before.1, cpu_after.1).map(|v| (v * 10.0).round() / 10.0),
        "client_cpu_us_per_op": per_op(Some(client_before), Some(client_after)).map(|v| (v * 10.0).round() / 10.0),
        "tls_handshakes": connects.then(|| json!({
            "full": tally.full_handshakes,
            "resumed": tally.resumed_handshakes,
        })),
        "access_token_bytes": access_token_bytes,
        "server_rss_kib": rss.map(|r| r.0),
        "server_peak_rss_kib": rss.map(|r| r.1),
    });

    eprintln!(
        "{:<10} K={:<3} {:>9.0} ops/s  p50 {:>7} µs  p90 {:>7} µs  p99 {:>7} µs  p99.9 {:>7} µs  max {:>7} µs  errors {}  checks {}/{}  server CPU/op {}  db CPU/op {}  client CPU/op {}  RSS {}",
        report["scenario"].as_str().unwrap_or_default(),
        k,
        tally.ops as f64 / seconds,
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.90),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        tally.errors.values().sum::<u64>(),
        tally.checks_passed,
        tally.checks_passed + tally.check_failures.len() as u64,
        fmt_micros(&report["server_cpu_us_per_op"]),
        fmt_micros(&report["db_cpu_us_per_op"]),
        fmt_micros(&report["client_cpu_us_per_op"]),
        rss.map(|(now, peak)| format!("{} MiB (peak {} MiB)", now / 1024, peak / 1024))
            .unwrap_or_else(|| "-".into()),
    );
    if connects && args.tls_ca.is_some() {
        eprintln!(
            "TLS handshakes measured: {} full, {} resumed",
            tally.full_handshakes, tally.resumed_handshakes
        );
    }
    for failure in tally.check_failures.iter().filter(|f| !f.is_empty()).take(5) {
        eprintln!("check failed: {failure}");
    }
    println!("{report}");
    Ok(tally.errors.is_empty() && tally.check_failures.is_empty() && tally.ops > 0)
}

fn fmt_micros(value: &serde_json::Value) -> String {
    value
        .as_f64()
        .map(|v| format!("{v:.1} µs"))
        .unwrap_or_else(|| "-".into())
}
