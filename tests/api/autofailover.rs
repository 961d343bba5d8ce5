//! Failovers performed by a real failover manager, pg_auto_failover, under a Rotate load through
//! the real binary (issue 19): a monitor, a primary and its synchronous standby
//! ([`Formation`]), ratchet's `DATABASE_URL` naming both data nodes.
//!
//! Three faults, each repeated for `RATCHET_FAILOVER_ROUNDS` rounds in a row under one continuous
//! load (default 2: the primary moves to node 2, then back to node 1 once the old primary has
//! rejoined as standby):
//! - a planned failover, `pg_autoctl perform failover`: the primary is drained, stopped, rewound
//!   and rejoins as standby while the standby is promoted;
//! - the primary node lost: its keeper, postmaster and backends SIGKILLed at once; the monitor's
//!   health checks give up on it and promote the standby; the node is then started again and
//!   rejoins;
//! - the primary's postmaster alone SIGKILLed: its keeper restarts it after crash recovery, or
//!   the monitor fails it over first; either way nothing acknowledged may be lost. (Ignored for
//!   now: it finds a loss; see the test.)
//!
//! After each round: ratchet served an Issue within 10 s of the new primary accepting writes,
//! without a restart. At the end: every chain still rotates, the invariants of `support::load`
//! hold on the last primary, and `ratchet-history`'s checker finds that the history of every
//! Issue and Rotate the clients made fits the store (no refresh token accepted twice, every
//! acknowledged rotation durable, no branch, no effect from a definite failure).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use tonic::transport::Channel;

use crate::support::{
    CHAIN_LOAD_ENV, Formation, SERVING_AGAIN_WITHIN, Server, Shared, free_port, judge, migrate, serving_again,
    serving_again_within, start_chains_while,
};

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `pg_autoctl perform failover`.
    Planned,
    /// The primary node's processes SIGKILLed; the monitor fails it over.
    PrimaryLost,
    /// The primary's postmaster SIGKILLed; its keeper restarts it (crash recovery), or the
    /// monitor fails it over, whichever comes first.
    PostmasterKilled,
}

/// `RATCHET_FAILOVER_ROUNDS` (default 2): `RATCHET_FAILOVER_ROUNDS=5 bash scripts/test -E
/// 'test(/autofailover::/)'` is the long run.
fn rounds() -> usize {
    std::env::var("RATCHET_FAILOVER_ROUNDS").map_or(2, |rounds| {
        rounds.parse().expect("RATCHET_FAILOVER_ROUNDS is a number of rounds")
    })
}

/// When node `standby` first accepted writes, and how long after that ratchet served again.
async fn recovered(
    formation: &Formation,
    standby: usize,
    client: &TokenServiceClient<Channel>,
    observed: &Shared,
) -> (Instant, Duration) {
    let writable = formation.wait_writable(standby).await;
    (writable, serving_again(client, observed, writable).await)
}

async fn failovers_under_rotate_load(fault: Fault) {
    let mut formation = Formation::start().await;
    let url = formation.url("ratchet");
    migrate(&url);
    let scratch = formation.dir().join("ratchet");
    std::fs::create_dir_all(&scratch).unwrap();
    let log = scratch.join("server.log");
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server = Server::start_with(&url, &scratch.join("data"), &log, addr, &CHAIN_LOAD_ENV);
    let client = server.client().await;
    let observed = Shared::default();
    let stop = Arc::new(AtomicBool::new(false));
    let go_on = {
        let stop = stop.clone();
        move || !stop.load(Ordering::Relaxed)
    };
    let chains = start_chains_while(&client, &observed, go_on).await;

    let mut primary = 0;
    for round in 1..=rounds() {
        // Load on a steady formation first.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rotations_before = observed.lock().unwrap().answers.len();
        let standby = 1 - primary;
        let started = Instant::now();
        let (writable, serving) = match fault {
            // Timed while the failover goes on: `pg_autoctl perform failover` returns seconds
            // after the promotion, once the old primary has rejoined.
            Fault::Planned => {
                tokio::join!(
                    formation.perform_failover(),
                    recovered(&formation, standby, &client, &observed)
                )
                .1
            }
            Fault::PrimaryLost => {
                formation.kill(primary).await;
                recovered(&formation, standby, &client, &observed).await
            }
            // The killed node may come back writable and then be failed over all the same: time
            // ratchet from the last moment before it served that a node turned writable.
            Fault::PostmasterKilled => {
                formation.kill_postmaster(primary).await;
                let done = AtomicBool::new(false);
                let (turned, served) = tokio::join!(formation.writable_since(&done), async {
                    // Bounded below, from the node's last turn to writable.
                    let within = Duration::from_secs(60);
                    let served = started + serving_again_within(&client, &observed, started, within).await;
                    done.store(true, Ordering::Relaxed);
                    served
                });
                let writable = turned.into_iter().filter(|at| *at <= served).max().unwrap_or(started);
                let serving = served - writable;
                assert!(
                    serving < SERVING_AGAIN_WITHIN,
                    "round {round}: served {serving:?} after a node last turned writable"
                );
                (writable, serving)
            }
        };
        // Load on the new primary, before the old one rejoins.
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Fault::PrimaryLost = fault {
            formation.restart(primary);
        }
        let before = primary;
        primary = formation.wait_steady().await;
        if !matches!(fault, Fault::PostmasterKilled) {
            assert_eq!(primary, standby, "round {round}: the standby became the primary");
        }
        let rotations = observed.lock().unwrap().answers.len() - rotations_before;
        eprintln!(
            "round {round} ({fault:?}): node {} -> node {}, writable {:?} after the fault began, ratchet serving \
             {serving:?} after that; {rotations} rotations during the round",
            before + 1,
            primary + 1,
            writable - started,
        );
        assert!(rotations > 0, "round {round}: the load stopped");
    }

    stop.store(true, Ordering::Relaxed);
    judge(
        &client,
        chains,
        &observed,
        formation.options(primary).database("ratchet"),
        true,
    )
    .await;
    server.terminate().await;
}

#[tokio::test]
async fn pg_autoctl_perform_failover_under_rotate_load_loses_nothing_and_ratchet_follows_without_a_restart() {
    failovers_under_rotate_load(Fault::Planned).await;
}

/// Not in the suite yet: it finds a loss. In about one run in four, a chain's last token, handed
/// out by an OK Rotate, is TOKEN_INVALID at the end (acknowledged rotation lost), after a round
/// in which the killed primary was restarted by its keeper and then failed over. Suspected:
/// crash recovery makes commits visible that were still waiting for the standby, ratchet
/// resolves a lost answer (or answers a grace-window retry) by *reading* such a commit and
/// acknowledges it without waiting for the standby, and the failover then discards it. Run with
/// `cargo nextest run --test api --run-ignored all -E 'test(/postmaster_killed/)'`.
#[tokio::test]
#[ignore = "finds an acknowledged rotation lost (about one run in four): see the doc comment"]
async fn the_primarys_postmaster_killed_under_rotate_load_loses_nothing_whether_restarted_or_failed_over() {
    failovers_under_rotate_load(Fault::PostmasterKilled).await;
}

#[tokio::test]
async fn the_primary_node_lost_under_rotate_load_is_failed_over_by_the_monitor_and_no_acknowledged_rotation_is_lost() {
    failovers_under_rotate_load(Fault::PrimaryLost).await;
}
