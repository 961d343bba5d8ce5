//! Faults caused for real, each against a private PostgreSQL the test starts itself: the database
//! restarted under a Rotate load, the ratchet process SIGKILLed under a Rotate load and started
//! again, many clients rotating and replaying the same families at once, the primary killed and
//! its standby promoted, and two replicas whose links to the database are cut and slowed.
//!
//! After each, the same invariants (`support::load`): no refresh token was accepted into two
//! successors; every successor a client saw was rotated on, or still works (or its family was
//! revoked because a reuse was detected); every family is one chain with at most one unspent
//! token; every detected reuse revoked its family. And the history checker agrees.
//!
//! Where they run: PostgreSQL only, by nature: a private PostgreSQL restarted under load, and the
//! invariants read from its tables (no API answers "every family is one chain"). They are also
//! long load runs, which CI should not pay for twice.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratchet::grpc::pb::revoke_request::Target;
use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use ratchet::grpc::pb::{IntrospectRequest, RevokeRequest, TokenPair};
use ratchet::grpc::status::reason;
use ratchet::store::postgres::{self, PoolSettings};
use ratchet_history::Options;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{
    CHAIN_LOAD_ENV, PrivateCluster, Proxy, Server, Shared, TestApp, check_invariants, free_port, issue, judge,
    reason_of, replay_once, rotate_once, serving_again, start_chains, start_chains_across, test_policy,
    without_rotate_limit,
};

#[tokio::test]
async fn postgres_restarted_under_rotate_load_fails_fast_recovers_and_loses_nothing() {
    let cluster = PrivateCluster::start().await;
    let options = cluster.create_database("ratchet").await;
    let settings = PoolSettings {
        max_connections: 8,
        timeout: Duration::from_secs(2),
    };
    let policy = ratchet::issuer::Policy {
        reuse_grace: time::Duration::seconds(30),
        ..test_policy()
    };
    let app = TestApp::builder(options.clone())
        .pool(settings)
        .adjust(|parts| {
            parts.settings.policy = policy;
            without_rotate_limit(parts);
        })
        .spawn()
        .await;
    let observed = Shared::default();
    let until = Instant::now() + Duration::from_secs(6);
    let clients = start_chains(&app.client, until, &observed).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.stop_fast().await;
    app.wait_for_health(ServingStatus::NotServing).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.start_again().await;
    app.wait_for_health(ServingStatus::Serving).await;

    let observed = judge(&app.client, clients, &observed, options, true).await;
    assert!(observed.unavailable > 0, "the outage was never seen");
    // Fail fast: nothing was sent, or PostgreSQL said so; no call waits out more than its timeout.
    assert!(
        observed.slowest_unavailable < Duration::from_secs(3),
        "an UNAVAILABLE took {:?}",
        observed.slowest_unavailable
    );
    app.stop().await;
}

#[tokio::test]
async fn ratchet_killed_with_sigkill_under_rotate_load_comes_back_with_every_chain_intact() {
    let cluster = PrivateCluster::start().await;
    let options = cluster.create_database("ratchet").await;
    let url = cluster.url("ratchet");
    let scratch = cluster.dir().join("ratchet");
    std::fs::create_dir_all(&scratch).unwrap();
    let (data, log) = (scratch.join("data"), scratch.join("server.log"));
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let env = CHAIN_LOAD_ENV;
    let server = Server::start_with(&url, &data, &log, addr, &env);
    let client = server.client().await;
    let observed = Shared::default();
    let until = Instant::now() + Duration::from_secs(5);
    let clients = start_chains(&client, until, &observed).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = Server::start_with(&url, &data, &log, addr, &env);

    judge(&server.client().await, clients, &observed, options, true).await;
    server.kill();
}

/// Shared knowledge of the stress test's families: every token of each, oldest first.
struct Family {
    id: String,
    tokens: Vec<String>,
    dead: bool,
}

#[tokio::test]
async fn many_clients_rotating_and_replaying_the_same_families_never_spend_a_token_twice() {
    let cluster = PrivateCluster::start().await;
    let options = cluster.create_database("ratchet").await;
    let settings = PoolSettings {
        max_connections: 8,
        timeout: Duration::from_secs(5),
    };
    // Strict: any second acceptance of a token would show.
    let app = TestApp::builder(options)
        .pool(settings)
        .adjust(without_rotate_limit)
        .spawn()
        .await;
    let observed = Shared::default();
    let families = Arc::new(Mutex::new(Vec::new()));
    for i in 0..4 {
        let pair = issue_recorded(&app.client, &format!("user{i}"), &observed).await;
        families.lock().unwrap().push(Family {
            id: pair.family_id,
            tokens: vec![pair.refresh_token],
            dead: false,
        });
    }
    let until = Instant::now() + Duration::from_secs(4);
    let mut workers = Vec::new();
    for worker in 0..16u64 {
        let (client, families, observed) = (app.client.clone(), families.clone(), observed.clone());
        workers.push(tokio::spawn(async move {
            let mut next = xorshift(worker);
            let mut issued = 0;
            while Instant::now() < until {
                let picked = {
                    let families = families.lock().unwrap();
                    let live: Vec<usize> = (0..families.len()).filter(|&i| !families[i].dead).collect();
                    (!live.is_empty()).then(|| {
                        let index = live[next(live.len())];
                        let tokens = &families[index].tokens;
                        // Mostly the newest token (racing other workers for it), sometimes a
                        // replay of one known spent (it has a successor).
                        let pick = if next(4) == 0 {
                            next(tokens.len())
                        } else {
                            tokens.len() - 1
                        };
                        (index, tokens[pick].clone(), pick + 1 < tokens.len())
                    })
                };
                // Every family just fell to a detected reuse: replacements are on their way.
                let Some((index, token, spent)) = picked else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let result = if spent {
                    replay_once(&client, &token, &observed).await
                } else {
                    rotate_once(&client, &token, &observed).await
                };
                match result {
                    Ok(successor) => families.lock().unwrap()[index].tokens.push(successor),
                    Err(status) => match reason_of(&status).as_deref() {
                        Some(reason::TOKEN_REUSED | reason::TOKEN_REVOKED) => {
                            let id = {
                                let mut families = families.lock().unwrap();
                                families[index].dead = true;
                                families[index].id.clone()
                            };
                            if reason_of(&status).as_deref() == Some(reason::TOKEN_REUSED) {
                                observed.lock().unwrap().reused.push(id);
                            }
                            // Keep four families in play (a subject each: the sessions cap must
                            // not evict any).
                            issued += 1;
                            let subject = format!("user-w{worker}-{issued}");
                            let pair = issue_recorded(&client, &subject, &observed).await;
                            families.lock().unwrap().push(Family {
                                id: pair.family_id,
                                tokens: vec![pair.refresh_token],
                                dead: false,
                            });
                        }
                        _ => observed.lock().unwrap().unexpected.push(format!("{status:?}")),
                    },
                }
            }
        }));
    }
    // Meanwhile an auditor introspects families' newest tokens and now and then revokes a family.
    let auditor = {
        let (client, families, observed) = (app.client.clone(), families.clone(), observed.clone());
        tokio::spawn(async move {
            let mut next = xorshift(99);
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let picked = {
                    let families = families.lock().unwrap();
                    let family = &families[next(families.len())];
                    (family.id.clone(), family.tokens.last().cloned().unwrap_or_default())
                };
                let (family, token) = picked;
                let invoked = Instant::now();
                let request = IntrospectRequest {
                    token: token.clone(),
                    token_type_hint: String::new(),
                };
                let result = client
                    .clone()
                    .introspect(request)
                    .await
                    .map(tonic::Response::into_inner);
                observed.lock().unwrap().history.introspect(invoked, &token, &result);
                if next(25) == 0 {
                    let invoked = Instant::now();
                    let request = RevokeRequest {
                        target: Some(Target::FamilyId(family.clone())),
                    };
                    let result = client.clone().revoke(request).await.map(tonic::Response::into_inner);
                    observed
                        .lock()
                        .unwrap()
                        .history
                        .revoke_family(invoked, &family, &result);
                }
            }
        })
    };
    for worker in workers {
        worker.await.unwrap();
    }
    auditor.await.unwrap();
    let observed = std::mem::take(&mut *observed.lock().unwrap());
    assert!(observed.unexpected.is_empty(), "{:?}", observed.unexpected);
    assert!(!observed.reused.is_empty(), "the stress never replayed a token");
    for answers in observed.answers.values() {
        assert_eq!(answers.len(), 1, "a refresh token was accepted {} times", answers.len());
    }
    check_invariants(app.db(), &observed).await;
    observed.history.check(app.db(), &Options::default()).await;
    app.stop().await;
}

/// Issue for `subject`, recorded for the checker.
async fn issue_recorded(client: &TokenServiceClient<Channel>, subject: &str, observed: &Shared) -> TokenPair {
    let invoked = Instant::now();
    let pair = issue(client, subject).await;
    observed
        .lock()
        .unwrap()
        .history
        .issue(invoked, subject, &Ok(pair.clone()));
    pair
}

/// A reproducible pseudo-random `0..n` per seed (xorshift: no extra dependency).
fn xorshift(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % n as u64).unwrap()
    }
}

/// Issue 19's failover by hand, under load: the primary is SIGKILLed mid-burst, and its
/// synchronous standby promoted (what a failover manager does). The server, whose pool names
/// both hosts, follows without a restart; every rotation a client saw succeed is on the new
/// primary, and the invariants hold there.
#[tokio::test]
async fn the_primary_killed_under_rotate_load_and_its_synchronous_standby_promoted_loses_no_acknowledged_rotation() {
    let primary = PrivateCluster::start().await;
    let options = primary.create_database("ratchet").await;
    let standby = primary.start_standby().await;
    primary.replicate_synchronously().await;
    let hosts = primary.with_standby_hosts(&standby, "ratchet");
    let settings = PoolSettings {
        max_connections: 8,
        timeout: Duration::from_secs(2),
    };
    let app = TestApp::builder(options)
        .pool(settings.clone())
        .on_pool(postgres::pool(hosts, &settings))
        .adjust(without_rotate_limit)
        .spawn()
        .await;
    let observed = Shared::default();
    let until = Instant::now() + Duration::from_secs(7);
    let clients = start_chains(&app.client, until, &observed).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    primary.crash().await;
    standby.promote().await;
    // Serving writes again within 10 s of the new primary accepting them (issue 19).
    serving_again(&app.client, &observed, Instant::now()).await;

    judge(
        &app.client,
        clients,
        &observed,
        standby.options().database("ratchet"),
        false,
    )
    .await;
    app.stop().await;
}

/// Two replicas on one database (issue 19), each reaching it through a network of its own that
/// fails in turn: cut, slow, cut again. Every chain presents each token to the other replica than
/// the one that handed it out. Afterwards the invariants hold and the history checker finds that
/// what both replicas told their clients fits the store.
#[tokio::test]
async fn two_replicas_whose_database_links_are_cut_and_slowed_in_turn_never_spend_a_token_twice() {
    let cluster = PrivateCluster::start().await;
    let options = cluster.create_database("ratchet").await;
    let settings = PoolSettings {
        max_connections: 4,
        timeout: Duration::from_secs(2),
    };
    let mut links = Vec::new();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let link = Proxy::in_front_of(&options).await;
        let pool = postgres::pool(link.route(options.clone()), &settings);
        // A client retrying a call cut by the network gets the same pair within the grace window.
        let app = TestApp::builder(options.clone())
            .pool(settings.clone())
            .on_pool(pool)
            .reuse_grace(time::Duration::seconds(30))
            .adjust(without_rotate_limit)
            .spawn()
            .await;
        links.push(link);
        replicas.push(app);
    }
    let clients: Vec<_> = replicas.iter().map(|app| app.client.clone()).collect();
    let observed = Shared::default();
    let until = Instant::now() + Duration::from_secs(7);
    let chains = start_chains_across(&clients, &observed, move || Instant::now() < until).await;

    let pause = |millis| tokio::time::sleep(Duration::from_millis(millis));
    pause(1000).await;
    links[0].cut().await;
    pause(1000).await;
    links[0].restore().await;
    pause(500).await;
    links[1].delay_responses(Duration::from_millis(300));
    pause(1500).await;
    links[1].delay_responses(Duration::ZERO);
    links[1].cut().await;
    pause(1000).await;
    links[1].restore().await;

    let observed = judge(&clients[1], chains, &observed, options, true).await;
    assert!(observed.unavailable > 0, "the cuts were never seen");
    for app in replicas {
        app.stop().await;
    }
}
