//! The SQLite ceiling: Rotate's and Issue's own transactions (`SqliteStore::spend` and
//! `create_family`, the very code the server runs), looped by K tasks in this process on a fresh
//! database file, with no server, no gRPC, no signing. What SQLite on this machine can do for
//! the same transaction, measured the same way as the server (ops/s over the same duration after
//! the same warm-up): the SQLite counterpart of pgbench's ceiling for PostgreSQL.
//!
//! Rotation chains per task, like the load generator's clients: each spend presents the token
//! the previous one created, without a grace window (no seal), as `bench/run.sh`'s server runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use ratchet::domain::{Actor, FamilyId, RotateLimit, TokenHash};
use ratchet::store::sqlite::{SqliteSettings, SqliteStore, SqliteTarget, migrate};
use ratchet::store::{FamilyRecord, FamilyStore, NewFamily, NewRefreshToken, SpendOutcome, SpendRequest};
use serde_json::json;
use time::OffsetDateTime;

use crate::load::latency_histogram;
use crate::procfs::Processes;

/// The server's default sessions cap (`--max-sessions`): Issue's eviction step runs with it.
const MAX_LIVE: u32 = 100;
/// `RATCHET_ROTATE_PER_SECOND` and `RATCHET_ROTATE_BURST` at 1000000, as bench/run.sh runs the
/// server.
const LIFTED: RotateLimit = RotateLimit {
    per_second: std::num::NonZeroU32::new(1_000_000).unwrap(),
    burst: std::num::NonZeroU32::new(1_000_000).unwrap(),
};

/// Which transaction to loop.
#[derive(Debug, Clone, Copy)]
pub enum Transaction {
    Rotate,
    Issue,
}

/// A token hash no other task draws: task, sequence number, and this run's start.
fn hash(task: usize, n: u64, run: u64) -> TokenHash {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(task as u64).to_le_bytes());
    bytes[8..16].copy_from_slice(&n.to_le_bytes());
    bytes[16..24].copy_from_slice(&run.to_le_bytes());
    TokenHash(bytes)
}

fn family(subject: String, now: OffsetDateTime) -> FamilyRecord {
    FamilyRecord {
        id: FamilyId::new_random(),
        subject,
        client_id: "ratchet-bench".into(),
        scopes: vec!["read".into(), "write".into()],
        audiences: vec![],
        claims: serde_json::Map::new(),
        created_at: now,
        last_rotated_at: now,
        refresh_expires_at: now + time::Duration::days(7),
        expires_at: now + time::Duration::days(30),
        revoked_at: None,
    }
}

fn new_family(task: usize, n: u64, run: u64) -> NewFamily {
    let now = OffsetDateTime::now_utc();
    NewFamily {
        family: family(format!("ceiling-{task}-{n}"), now),
        first: NewRefreshToken {
            hash: hash(task, n, run),
            expires_at: now + time::Duration::days(7),
        },
        max_live: MAX_LIVE,
    }
}

struct Tally {
    ops: u64,
    errors: u64,
    latency_us: Histogram<u64>,
}

/// Loops `transaction` on a new database at `path` with `k` tasks; prints one JSON line.
pub async fn run(
    transaction: Transaction,
    path: PathBuf,
    k: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<serde_json::Value> {
    let target = SqliteTarget {
        path,
        settings: SqliteSettings::default(),
    };
    migrate(&target).await.context("migrating the ceiling's database")?;
    let store = Arc::new(SqliteStore::open(&target));
    let run = OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + duration;
    let cpu = Processes::Pids(vec![std::process::id()]);
    let mut tasks = Vec::with_capacity(k);
    for task in 0..k {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally {
                ops: 0,
                errors: 0,
                latency_us: latency_histogram(),
            };
            let mut n = 0u64;
            let mut current = None;
            loop {
                if Instant::now() >= until {
                    break;
                }
                n += 1;
                let began = Instant::now();
                let ok = match (transaction, current) {
                    (Transaction::Issue, _) | (Transaction::Rotate, None) => {
                        let new = new_family(task, n, run);
                        let ok = store.create_family(&new, &Actor::NOBODY).await.is_ok();
                        if ok && matches!(transaction, Transaction::Rotate) {
                            // Starting a chain is set-up, not the transaction measured.
                            current = Some(new.first.hash);
                            continue;
                        }
                        ok
                    }
                    (Transaction::Rotate, Some(presented)) => {
                        let now = OffsetDateTime::now_utc();
                        let successor = hash(task, n, run);
                        let request = SpendRequest {
                            presented,
                            successor: NewRefreshToken {
                                hash: successor,
                                expires_at: now + time::Duration::days(7),
                            },
                            successor_seal: None,
                            now,
                            retry_after: now,
                            // As the server runs by default (`--audit-rotations` off).
                            audit_rotation: false,
                            // As bench/run.sh starts the server: the limit lifted.
                            rotate_limit: LIFTED,
                        };
                        match store.spend(&request, &Actor::NOBODY).await {
                            Ok(SpendOutcome::Spent { .. }) => {
                                current = Some(successor);
                                true
                            }
                            _ => {
                                current = None;
                                false
                            }
                        }
                    }
                };
                let end = Instant::now();
                if began >= measure_from && end <= until {
                    if ok {
                        tally.ops += 1;
                        let micros = u64::try_from((end - began).as_micros()).unwrap_or(u64::MAX).max(1);
                        let _ = tally.latency_us.record(micros.min(60_000_000));
                    } else {
                        tally.errors += 1;
                    }
                }
            }
            tally
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_at_start = cpu.cpu_micros();
    let mut ops = 0;
    let mut errors = 0;
    let mut latency = latency_histogram();
    for task in tasks {
        let tally = task.await?;
        ops += tally.ops;
        errors += tally.errors;
        latency.add(&tally.latency_us)?;
    }
    let cpu_us = cpu.cpu_micros().saturating_sub(cpu_at_start);
    store.close().await;
    let name = match transaction {
        Transaction::Rotate => "sqlite-ceiling-rotate",
        Transaction::Issue => "sqlite-ceiling-issue",
    };
    let line = json!({
        "scenario": name,
        "concurrency": k,
        "ops": ops,
        "ops_per_s": ops as f64 / duration.as_secs_f64(),
        "errors": if errors > 0 { json!({"failed": errors}) } else { json!({}) },
        "latency_us": {
            "p50": latency.value_at_quantile(0.50),
            "p90": latency.value_at_quantile(0.90),
            "p99": latency.value_at_quantile(0.99),
            "p999": latency.value_at_quantile(0.999),
            "max": latency.max(),
        },
        // The database is this process: its CPU is the database's, like pgbench's backends.
        "db_cpu_us_per_op": cpu_us as f64 / ops.max(1) as f64,
    });
    eprintln!(
        "{name} K={k}: {:.0} ops/s, p50 {} µs, p99 {} µs, {errors} failed, {:.1} µs CPU per op",
        ops as f64 / duration.as_secs_f64(),
        latency.value_at_quantile(0.50),
        latency.value_at_quantile(0.99),
        cpu_us as f64 / ops.max(1) as f64,
    );
    Ok(line)
}
