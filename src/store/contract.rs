//! The store contract: what every [`FamilyStore`] must do, written once and run against each
//! implementation by [`contract!`] (one line per backend, at the bottom).
//!
//! Each test is a generic `async fn(&S)` over the trait alone, so it says what the trait
//! promises and nothing about how a backend keeps it; time is a parameter (`now`), so expiry
//! needs no sleeps. The caching decorator runs the same suite over a real backend: a cache that
//! answered a stale "live" after a revocation it saw would fail here like a backend would.
//!
//! Why here (the library's unit-test binary) and not a `tests/` binary of its own: the style
//! guide asks for few test binaries (each one is another link of the whole crate), this binary
//! already runs `#[sqlx::test]`s on private databases, and from inside the crate a backend can
//! join before it is public.
//!
//! What it leaves out: what a row looks like (the backends' own tests) and everything above the
//! store (the API tests).
//!
//! Why one file past 500 lines: it is test code only, and the contract is easiest to review, and
//! hardest to weaken by accident, when every promise of the trait sits in one place.

use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration as StdDuration;

use futures::future::join_all;
use serde_json::Map;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use time::{Duration, OffsetDateTime};

use super::cached::CachedStore;
use super::postgres::{PgStore, PoolSettings, pool};
use super::sqlite::{SqliteSettings, SqliteStore, SqliteTarget};
use super::{
    AuditEvent, Backend, EventFilter, EventKind, FamilyRecord, FamilyStore, IdleWindow, NewFamily, NewRefreshToken,
    Purged, Revocation, RevokeReason, SessionCursor, SpendOutcome, SpendRequest, TargetKind,
};
use crate::domain::{Actor, FamilyId, RotateLimit, Seal, TokenHash};

/// Runs every contract test against the store `$open` builds, in module `$backend`. `$harness`
/// is the test attribute that makes a private database and hands the test `$args`; `$open` may
/// use them.
macro_rules! contract {
    ($backend:ident, #[$harness:meta], $args:tt => $open:expr) => {
        contract!(@tests $backend, #[$harness], $args => $open;
            a_token_is_spent_exactly_once_however_many_spend_it_at_once,
            a_spent_token_presented_again_revokes_its_family_in_the_same_call,
            the_same_spend_delivered_twice_is_done_once_and_is_not_reuse,
            within_the_grace_window_a_spent_token_is_a_retry_and_after_it_reuse,
            once_its_successor_is_spent_a_retry_is_reuse,
            a_token_past_its_idle_expiry_is_refused_without_revoking_its_family,
            a_successor_never_outlives_its_family_and_nothing_is_spent_after_its_end,
            revoking_a_family_says_what_it_found_and_stops_its_tokens,
            a_familys_subject_is_found_by_its_id_whatever_its_state,
            revoking_a_subject_goes_in_batches_and_spares_others_and_ended_families,
            beyond_max_live_a_new_family_evicts_the_oldest_of_its_subject_and_client,
            live_sessions_are_paged_newest_first_without_gaps_or_repeats,
            cleanup_finds_ended_families_and_purges_them_with_every_token,
            seals_go_when_their_token_is_spent_or_cleared_and_without_one_a_retry_is_reuse,
            a_family_never_branches_however_its_tokens_are_raced,
            a_family_takes_its_rotate_burst_at_once_then_waits_for_its_bucket_and_replays_are_still_caught,
            on_a_shared_store_one_holds_the_sweep_lock_at_a_time_until_it_lets_go,
            every_change_is_recorded_with_who_made_it_and_nothing_for_a_refused_one,
            a_replay_is_recorded_once_as_reuse_detected_with_its_revocation,
            rotations_are_recorded_only_when_asked_and_once_per_spend,
            an_eviction_is_recorded_with_the_issue_that_caused_it,
            events_are_read_newest_first_by_each_filter,
            retention_deletes_only_events_older_than_its_cutoff_in_batches,
        );
    };
    (@tests $backend:ident, #[$harness:meta], $args:tt => $open:expr; $($test:ident,)*) => {
        mod $backend {
            use super::*;
            $(
                #[$harness]
                async fn $test $args {
                    let store = $open;
                    super::$test(&store).await;
                    Fixture::close(&store).await;
                }
            )*
        }
    };
}

// One line per backend, and one per backend behind the cache (the runtime store, through the
// `Backend` enum, so that its delegation is covered too).
contract!(postgres, #[sqlx::test(migrator = "crate::store::postgres::MIGRATOR")],
    (_pool: PgPoolOptions, options: PgConnectOptions) => pg(options));
contract!(cached_postgres, #[sqlx::test(migrator = "crate::store::postgres::MIGRATOR")],
    (_pool: PgPoolOptions, options: PgConnectOptions) => cached(Backend::Postgres(pg(options))));

// SQLite: a fresh database file per test, removed by `Fixture::close`.
contract!(sqlite, #[tokio::test], () => sqlite_store().await);
contract!(cached_sqlite, #[tokio::test], () => cached(Backend::Sqlite(sqlite_store().await)));

fn pg(options: PgConnectOptions) -> PgStore {
    let settings = PoolSettings::default();
    PgStore::new(pool(options, &settings), &settings)
}

/// A migrated SQLite database in a file of its own under the temporary directory.
async fn sqlite_store() -> SqliteStore {
    let name = format!("ratchet-contract-{}.db", uuid::Uuid::new_v4().simple());
    let target = SqliteTarget {
        path: std::env::temp_dir().join(name),
        settings: SqliteSettings::default(),
    };
    crate::store::sqlite::migrate(&target).await.unwrap();
    SqliteStore::open(&target)
}

/// Removes a test's SQLite database with its WAL and shared-memory files.
fn remove_sqlite_files(database: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut path = database.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
}

/// A cache that trusts "live" far longer than any test: a stale answer cannot hide behind it.
fn cached<S: FamilyStore>(store: S) -> CachedStore<S> {
    CachedStore::new(store, 1024, StdDuration::from_secs(3600))
}

/// What a test needs of a store beyond the trait: to let go of its connections, so that the
/// private database can be dropped.
trait Fixture: FamilyStore {
    fn close(&self) -> impl Future<Output = ()>;

    /// Whether other servers can run on the same database at once (and so must take turns at
    /// cleanup); a store one process owns does not.
    fn shared(&self) -> bool;
}

impl Fixture for PgStore {
    async fn close(&self) {
        self.pool().close().await;
    }

    fn shared(&self) -> bool {
        true
    }
}

impl Fixture for SqliteStore {
    async fn close(&self) {
        SqliteStore::close(self).await;
        remove_sqlite_files(self.path());
    }

    fn shared(&self) -> bool {
        false
    }
}

impl Fixture for Backend {
    async fn close(&self) {
        Backend::close(self).await;
        if let Backend::Sqlite(store) = self {
            remove_sqlite_files(store.path());
        }
    }

    fn shared(&self) -> bool {
        match self {
            Self::Postgres(store) => store.shared(),
            Self::Sqlite(store) => store.shared(),
        }
    }
}

impl<S: Fixture> Fixture for CachedStore<S> {
    async fn close(&self) {
        self.inner().close().await;
    }

    fn shared(&self) -> bool {
        self.inner().shared()
    }
}

/// Idle lifetime of a refresh token in these tests.
const IDLE: Duration = Duration::hours(1);
/// Absolute lifetime of a family.
const LIFE: Duration = Duration::days(1);
const GRACE: Duration = Duration::minutes(1);
/// A Rotate limit no test reaches by accident: a million at once, a million a second.
pub(super) const LOOSE: RotateLimit = RotateLimit {
    per_second: NonZeroU32::new(1_000_000).unwrap(),
    burst: NonZeroU32::new(1_000_000).unwrap(),
};

/// A fixed, whole-second start.
fn start() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn new_token() -> TokenHash {
    TokenHash(random_bytes())
}

/// 32 random bytes, from the service's one random source (aws-lc's generator).
pub(super) fn random_bytes() -> [u8; 32] {
    aws_lc_rs::rand::generate(&aws_lc_rs::rand::SystemRandom::new())
        .unwrap()
        .expose()
}

/// A family of `subject` for client `app` created at `now`, its first token good for [`IDLE`].
pub(super) fn new_family(subject: &str, now: OffsetDateTime) -> NewFamily {
    NewFamily {
        family: FamilyRecord {
            id: FamilyId::new_random(),
            subject: subject.into(),
            client_id: "app".into(),
            scopes: vec!["read".into(), "write".into()],
            audiences: vec!["api".into()],
            claims: Map::new(),
            created_at: now,
            last_rotated_at: now,
            refresh_expires_at: now + IDLE,
            expires_at: now + LIFE,
            revoked_at: None,
        },
        first: NewRefreshToken {
            hash: new_token(),
            expires_at: now + IDLE,
        },
        max_live: 100,
    }
}

/// Stores `new`; returns its id and first token.
async fn create<S: FamilyStore>(store: &S, new: NewFamily) -> (FamilyId, TokenHash) {
    store.create_family(&new, &Actor::NOBODY).await.unwrap();
    (new.family.id, new.first.hash)
}

async fn issue<S: FamilyStore>(store: &S, subject: &str, now: OffsetDateTime) -> (FamilyId, TokenHash) {
    create(store, new_family(subject, now)).await
}

/// Spend `presented` at `now` into a fresh successor good for [`IDLE`], strictly (no grace).
fn spend_of(presented: TokenHash, now: OffsetDateTime) -> SpendRequest {
    SpendRequest {
        presented,
        successor: NewRefreshToken {
            hash: new_token(),
            expires_at: now + IDLE,
        },
        successor_seal: None,
        now,
        retry_after: now,
        audit_rotation: false,
        rotate_limit: LOOSE,
    }
}

/// As [`spend_of`], on a server with a [`GRACE`] window: the successor is sealed.
fn graceful(presented: TokenHash, now: OffsetDateTime) -> SpendRequest {
    SpendRequest {
        successor_seal: Some(Seal(random_bytes())),
        retry_after: now - GRACE,
        ..spend_of(presented, now)
    }
}

async fn spent<S: FamilyStore>(store: &S, request: &SpendRequest) -> OffsetDateTime {
    match store.spend(request, &Actor::NOBODY).await.unwrap() {
        SpendOutcome::Spent {
            successor_expires_at, ..
        } => successor_expires_at,
        other => panic!("not spent: {other:?}"),
    }
}

/// Asserts the spend is refused and whether it revoked the family; returns the token as it was.
#[track_caller]
fn refused(outcome: SpendOutcome, revoked: bool) -> super::RefreshTokenRecord {
    match outcome {
        SpendOutcome::Refused {
            token: Some(token),
            revoked_for_reuse,
        } if revoked_for_reuse == revoked => token,
        other => panic!("expected a refusal that revoked_for_reuse={revoked}: {other:?}"),
    }
}

async fn revoked<S: FamilyStore>(store: &S, id: FamilyId) -> bool {
    store.family_status(id).await.unwrap().expect("a known family").revoked
}

async fn a_token_is_spent_exactly_once_however_many_spend_it_at_once<S: FamilyStore>(store: &S) {
    let now = start();
    let (family, first) = issue(store, "alice", now).await;
    let requests: Vec<SpendRequest> = (0..32).map(|_| spend_of(first, now)).collect();
    let outcomes: Vec<SpendOutcome> = join_all(requests.iter().map(|request| store.spend(request, &Actor::NOBODY)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let winners: Vec<usize> = (0..outcomes.len())
        .filter(|&i| matches!(outcomes[i], SpendOutcome::Spent { .. }))
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:#?}");
    let winner = &requests[winners[0]];
    // Every loser presented a spent token (strictly: reuse), and the first to see that revoked
    // the family; the others found it revoked.
    let revokers = outcomes
        .iter()
        .filter(|outcome| {
            matches!(
                outcome,
                SpendOutcome::Refused {
                    revoked_for_reuse: true,
                    ..
                }
            )
        })
        .count();
    assert_eq!(revokers, 1, "{outcomes:#?}");
    assert!(revoked(store, family).await);
    assert_eq!(
        kinds(&events_of(store, family).await),
        [EventKind::ReuseDetected, EventKind::Issued],
        "one detection, however many replays raced"
    );

    let token = store.refresh_token(&first).await.unwrap().unwrap();
    assert_eq!(token.spent_at, Some(now));
    assert_eq!(token.successor.map(|s| s.hash), Some(winner.successor.hash));
    for (i, request) in requests.iter().enumerate() {
        let stored = store.refresh_token(&request.successor.hash).await.unwrap();
        assert_eq!(stored.is_some(), i == winners[0], "successor {i}");
    }
}

async fn a_spent_token_presented_again_revokes_its_family_in_the_same_call<S: FamilyStore>(store: &S) {
    let now = start();
    let (family, first) = issue(store, "alice", now).await;
    let rotation = spend_of(first, now);
    spent(store, &rotation).await;
    // Seen live first, so that a cache in front has something to get wrong.
    assert!(!revoked(store, family).await);

    let later = now + Duration::minutes(5);
    let token = refused(
        store.spend(&spend_of(first, later), &Actor::NOBODY).await.unwrap(),
        true,
    );
    assert_eq!(token.family.id, family);
    assert_eq!(token.spent_at, Some(now));
    assert!(revoked(store, family).await, "revoked by the replay itself");

    // The thief's or the client's successor: dead either way.
    let token = refused(
        store
            .spend(&spend_of(rotation.successor.hash, later), &Actor::NOBODY)
            .await
            .unwrap(),
        false,
    );
    assert_eq!(token.family.revoked_at, Some(later));
    assert_eq!(token.spent_at, None);
    // Once revoked, a replay revokes nothing more.
    refused(
        store
            .spend(&spend_of(first, later + Duration::SECOND), &Actor::NOBODY)
            .await
            .unwrap(),
        false,
    );
    assert_eq!(
        store
            .revoke_family(family, later, RevokeReason::Revoke(TargetKind::Family), &Actor::NOBODY)
            .await
            .unwrap(),
        Revocation::AlreadyRevoked
    );
}

async fn the_same_spend_delivered_twice_is_done_once_and_is_not_reuse<S: FamilyStore>(store: &S) {
    let now = start();
    let (family, first) = issue(store, "alice", now).await;
    let request = spend_of(first, now + Duration::MINUTE);
    let (first_answer, second_answer) = (
        store.spend(&request, &Actor::NOBODY).await.unwrap(),
        store.spend(&request, &Actor::NOBODY).await.unwrap(),
    );
    let expiry = |outcome: &SpendOutcome| match outcome {
        SpendOutcome::Spent {
            successor_expires_at, ..
        } => *successor_expires_at,
        other => panic!("not spent: {other:?}"),
    };
    assert_eq!(expiry(&first_answer), request.successor.expires_at);
    assert_eq!(expiry(&second_answer), request.successor.expires_at);
    if let SpendOutcome::Spent { family: record, .. } = &first_answer {
        assert_eq!(record.id, family);
        assert_eq!(record.last_rotated_at, request.now);
        assert_eq!(record.refresh_expires_at, request.successor.expires_at);
    }
    assert!(!revoked(store, family).await);
    spent(store, &spend_of(request.successor.hash, request.now)).await;
}

async fn within_the_grace_window_a_spent_token_is_a_retry_and_after_it_reuse<S: FamilyStore>(store: &S) {
    let now = start();
    let (family, first) = issue(store, "alice", now).await;
    let rotation = graceful(first, now);
    spent(store, &rotation).await;

    let retry = graceful(first, now + GRACE - Duration::SECOND);
    let token = refused(store.spend(&retry, &Actor::NOBODY).await.unwrap(), false);
    let successor = token.successor.expect("a spent token knows its successor");
    assert_eq!(successor.hash, rotation.successor.hash);
    assert_eq!(
        successor.seal, rotation.successor_seal,
        "the retry gets the same successor"
    );
    assert!(!successor.spent);
    assert!(store.refresh_token(&retry.successor.hash).await.unwrap().is_none());
    assert!(!revoked(store, family).await);

    let late = graceful(first, now + GRACE + Duration::SECOND);
    refused(store.spend(&late, &Actor::NOBODY).await.unwrap(), true);
    assert!(revoked(store, family).await);
}

async fn once_its_successor_is_spent_a_retry_is_reuse<S: FamilyStore>(store: &S) {
    let now = start();
    let (family, first) = issue(store, "alice", now).await;
    let rotation = graceful(first, now);
    spent(store, &rotation).await;
    spent(store, &graceful(rotation.successor.hash, now + Duration::SECOND)).await;
    // Well within the window, but the successor has moved on: only a thief replays now.
    refused(
        store
            .spend(&graceful(first, now + Duration::seconds(2)), &Actor::NOBODY)
            .await
            .unwrap(),
        true,
    );
    assert!(revoked(store, family).await);
}

async fn a_token_past_its_idle_expiry_is_refused_without_revoking_its_family<S: FamilyStore>(store: &S) {
    let now = start();
    let (family, first) = issue(store, "alice", now).await;
    let end = now + IDLE;
    let live = |at| async move { store.live_families("alice", at, None, 10).await.unwrap().len() };
    assert_eq!(live(end - Duration::SECOND).await, 1);
    assert_eq!(live(end).await, 0, "idle-expired families are not sessions");

    let token = refused(store.spend(&spend_of(first, end), &Actor::NOBODY).await.unwrap(), false);
    assert_eq!(token.spent_at, None);
    assert_eq!(token.expires_at, end);
    assert!(!revoked(store, family).await);
    // A second before its end it would have been spent: the boundary is `now < expires_at`.
    spent(store, &spend_of(first, end - Duration::SECOND)).await;
}

async fn a_successor_never_outlives_its_family_and_nothing_is_spent_after_its_end<S: FamilyStore>(store: &S) {
    let now = start();
    let mut new = new_family("alice", now);
    // A first token that lasts as long as the family, so that it can be spent near the end.
    new.first.expires_at = new.family.expires_at;
    new.family.refresh_expires_at = new.family.expires_at;
    let end = new.family.expires_at;
    let (family, first) = create(store, new).await;

    let rotation = spend_of(first, end - Duration::minutes(30));
    assert_eq!(spent(store, &rotation).await, end, "capped at the family's end");
    let token = refused(
        store
            .spend(&spend_of(rotation.successor.hash, end), &Actor::NOBODY)
            .await
            .unwrap(),
        false,
    );
    assert_eq!(token.expires_at, end);
    // Not even a replay revokes a family that has ended: there is nothing left to protect.
    refused(store.spend(&spend_of(first, end), &Actor::NOBODY).await.unwrap(), false);
    assert!(!revoked(store, family).await);
    assert_eq!(store.family_status(family).await.unwrap().unwrap().expires_at, end);
}

async fn revoking_a_family_says_what_it_found_and_stops_its_tokens<S: FamilyStore>(store: &S) {
    let now = start();
    let (family, first) = issue(store, "alice", now).await;
    let (other, _) = issue(store, "alice", now).await;
    assert!(!revoked(store, family).await);

    let at = now + Duration::MINUTE;
    let revoke = |id| store.revoke_family(id, at, RevokeReason::Revoke(TargetKind::Family), &Actor::NOBODY);
    assert_eq!(revoke(family).await.unwrap(), Revocation::Revoked);
    assert_eq!(revoke(family).await.unwrap(), Revocation::AlreadyRevoked);
    assert_eq!(revoke(FamilyId::new_random()).await.unwrap(), Revocation::Unknown);
    assert!(store.family_status(FamilyId::new_random()).await.unwrap().is_none());
    assert!(revoked(store, family).await);
    assert!(!revoked(store, other).await);

    let token = refused(store.spend(&spend_of(first, at), &Actor::NOBODY).await.unwrap(), false);
    assert_eq!(token.family.revoked_at, Some(at));
    assert_eq!(store.revoked_families(at, 10).await.unwrap(), vec![family]);
    assert!(
        store
            .revoked_families(at - Duration::SECOND, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_familys_subject_is_found_by_its_id_whatever_its_state<S: FamilyStore>(store: &S) {
    let now = start();
    let (alice, _) = issue(store, "alice", now).await;
    let (bob, _) = issue(store, "bob", now).await;
    assert_eq!(store.family_subject(alice).await.unwrap().as_deref(), Some("alice"));
    assert_eq!(store.family_subject(bob).await.unwrap().as_deref(), Some("bob"));
    assert_eq!(store.family_subject(FamilyId::new_random()).await.unwrap(), None);
    store
        .revoke_family(alice, now, RevokeReason::Revoke(TargetKind::Family), &Actor::NOBODY)
        .await
        .unwrap();
    assert_eq!(
        store.family_subject(alice).await.unwrap().as_deref(),
        Some("alice"),
        "revoked, still there"
    );
}

async fn revoking_a_subject_goes_in_batches_and_spares_others_and_ended_families<S: FamilyStore>(store: &S) {
    let now = start();
    let mut alice = Vec::new();
    for _ in 0..5 {
        alice.push(issue(store, "alice", now).await.0);
    }
    let (bob, _) = issue(store, "bob", now).await;
    let mut short = new_family("alice", now);
    short.family.expires_at = now + Duration::seconds(30);
    short.family.refresh_expires_at = short.family.expires_at;
    short.first.expires_at = short.family.expires_at;
    let (ended, _) = create(store, short).await;
    for &id in alice.iter().chain([&bob, &ended]) {
        assert!(!revoked(store, id).await);
    }

    let at = now + Duration::MINUTE;
    let mut batches = Vec::new();
    loop {
        let batch = store.revoke_subject("alice", at, 2, &Actor::NOBODY).await.unwrap();
        batches.push(batch.len());
        if batch.len() < 2 {
            break;
        }
    }
    assert_eq!(batches, [2, 2, 1]);
    for &id in &alice {
        assert!(revoked(store, id).await);
    }
    assert!(!revoked(store, bob).await, "another subject");
    assert!(!revoked(store, ended).await, "an ended family is left as it ended");
    assert!(
        store
            .revoke_subject("alice", at, 2, &Actor::NOBODY)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn beyond_max_live_a_new_family_evicts_the_oldest_of_its_subject_and_client<S: FamilyStore>(store: &S) {
    let now = start();
    let capped = |at| NewFamily {
        max_live: 2,
        ..new_family("alice", at)
    };
    let (oldest, _) = create(store, capped(now)).await;
    let (middle, _) = create(store, capped(now + Duration::SECOND)).await;
    let mut elsewhere = capped(now);
    elsewhere.family.client_id = "other-app".into();
    let (other_client, _) = create(store, elsewhere).await;
    assert!(!revoked(store, oldest).await);

    let newest = capped(now + Duration::seconds(2));
    assert_eq!(
        store.create_family(&newest, &Actor::NOBODY).await.unwrap(),
        vec![oldest]
    );
    assert!(revoked(store, oldest).await);
    assert!(!revoked(store, middle).await);
    assert!(!revoked(store, newest.family.id).await);
    assert!(
        !revoked(store, other_client).await,
        "another client's sessions count apart"
    );
}

async fn live_sessions_are_paged_newest_first_without_gaps_or_repeats<S: FamilyStore>(store: &S) {
    let now = start();
    let mut expected = Vec::new();
    for i in 0..5 {
        expected.push(issue(store, "alice", now + Duration::seconds(i)).await.0);
    }
    // Two created in the same instant: the id breaks the tie, and paging must not lose one.
    for _ in 0..2 {
        expected.push(issue(store, "alice", now + Duration::seconds(5)).await.0);
    }
    let (gone, _) = issue(store, "alice", now + Duration::seconds(6)).await;
    store
        .revoke_family(gone, now, RevokeReason::Revoke(TargetKind::Family), &Actor::NOBODY)
        .await
        .unwrap();
    let mut idle = new_family("alice", now);
    idle.family.refresh_expires_at = now + Duration::seconds(9);
    idle.first.expires_at = idle.family.refresh_expires_at;
    create(store, idle).await;
    issue(store, "bob", now).await;
    // Newest first: created_at descending, then id descending.
    let created = |id: FamilyId| now + Duration::seconds(expected.iter().position(|&e| e == id).unwrap().min(5) as i64);
    let mut order = expected.clone();
    order.sort_by_key(|&id| std::cmp::Reverse((created(id), id.as_uuid())));

    let at = now + Duration::seconds(10);
    let mut listed = Vec::new();
    let mut after: Option<SessionCursor> = None;
    for _ in 0..10 {
        let page = store.live_families("alice", at, after, 3).await.unwrap();
        for session in &page {
            assert_eq!(session.client_id, "app");
            assert_eq!(session.scopes, ["read", "write"]);
            assert_eq!(session.created_at, created(session.id));
            assert_eq!(session.expires_at, session.created_at + LIFE);
            assert_eq!(session.refresh_expires_at, session.created_at + IDLE);
        }
        listed.extend(page.iter().map(|session| session.id));
        match page.last() {
            Some(last) if page.len() == 3 => {
                after = Some(SessionCursor {
                    created_at: last.created_at,
                    id: last.id,
                })
            }
            _ => break,
        }
    }
    assert_eq!(listed, order);
}

async fn cleanup_finds_ended_families_and_purges_them_with_every_token<S: FamilyStore>(store: &S) {
    let now = start();
    // A family rotated three times, then revoked: four tokens.
    let (revoked_family, first) = issue(store, "alice", now).await;
    let mut chain = vec![first];
    for i in 1..=3 {
        let rotation = spend_of(*chain.last().unwrap(), now + Duration::seconds(i));
        spent(store, &rotation).await;
        chain.push(rotation.successor.hash);
    }
    let revoked_at = now + Duration::minutes(1);
    store
        .revoke_family(
            revoked_family,
            revoked_at,
            RevokeReason::Revoke(TargetKind::Family),
            &Actor::NOBODY,
        )
        .await
        .unwrap();
    // One that went idle, and one that is live.
    let mut idle = new_family("bob", now);
    idle.family.refresh_expires_at = now + Duration::minutes(2);
    idle.first.expires_at = idle.family.refresh_expires_at;
    let (idle_family, idle_token) = create(store, idle).await;
    let (live_family, live_token) = issue(store, "carol", now).await;

    let at = now + Duration::minutes(3);
    assert_eq!(store.revoked_families(at, 10).await.unwrap(), vec![revoked_family]);
    // The sweep, two families a window, from the start until it says it is done.
    let mut ended = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let IdleWindow { ended: window, last } = store.idle_window(after, 2, at).await.unwrap();
        ended.extend(window);
        after = last;
        if after.is_none() {
            break;
        }
    }
    assert!(after.is_none(), "the sweep never ended");
    assert_eq!(ended, vec![idle_family]);

    // Batches of one token: the chain goes in several statements.
    let purged = store.purge_families(&[revoked_family, idle_family], 1).await.unwrap();
    assert_eq!(purged, Purged { families: 2, tokens: 5 });
    for hash in chain.iter().chain([&idle_token]) {
        assert!(store.refresh_token(hash).await.unwrap().is_none());
    }
    assert!(store.refresh_token(&live_token).await.unwrap().is_some());
    assert!(!revoked(store, live_family).await);
    assert_eq!(
        store.purge_families(&[revoked_family, idle_family], 1).await.unwrap(),
        Purged::default(),
        "purging again finds nothing"
    );
    assert!(store.revoked_families(at, 10).await.unwrap().is_empty());
}

/// Each `sweep_lock` call stands for another server (on PostgreSQL it is a session of its own),
/// so a second call while the first holds it is refused on a shared store, and granted where
/// there is no one to take turns with.
async fn on_a_shared_store_one_holds_the_sweep_lock_at_a_time_until_it_lets_go<S: Fixture>(store: &S) {
    let first = store.sweep_lock().await.unwrap();
    assert!(first.is_some(), "nobody else holds it");
    let second = store.sweep_lock().await.unwrap();
    if store.shared() {
        assert!(second.is_none(), "held by another: this one skips its round");
    } else {
        assert!(second.is_some(), "a store of one process's own always sweeps");
    }
    drop(second);
    drop(first);
    // Given back with the guard, also one dropped without ceremony (a pass that failed or was
    // cancelled). PostgreSQL releases it when it sees the session end: a moment later.
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(5);
    loop {
        if store.sweep_lock().await.unwrap().is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the lock was never given back");
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
}

async fn seals_go_when_their_token_is_spent_or_cleared_and_without_one_a_retry_is_reuse<S: FamilyStore>(store: &S) {
    let now = start();
    let (_, first) = issue(store, "alice", now).await;
    let rotation = graceful(first, now);
    spent(store, &rotation).await;
    // Spending the successor drops its seal; only the newest token's remains.
    spent(store, &graceful(rotation.successor.hash, now + Duration::SECOND)).await;
    assert_eq!(
        store.clear_seals(now, 10).await.unwrap(),
        0,
        "none made before the cutoff"
    );
    assert_eq!(store.clear_seals(now + Duration::SECOND, 10).await.unwrap(), 1);
    assert_eq!(store.clear_seals(now + Duration::SECOND, 10).await.unwrap(), 0);

    let (family, first) = issue(store, "bob", now).await;
    let rotation = graceful(first, now);
    spent(store, &rotation).await;
    assert_eq!(store.clear_seals(now, 10).await.unwrap(), 1);
    // Within the window, but with no seal the retry cannot be answered: it is reuse.
    refused(
        store
            .spend(&graceful(first, now + Duration::SECOND), &Actor::NOBODY)
            .await
            .unwrap(),
        true,
    );
    assert!(revoked(store, family).await);
}

async fn a_family_never_branches_however_its_tokens_are_raced<S: FamilyStore>(store: &S) {
    let now = start();
    let (family, first) = issue(store, "alice", now).await;
    let mut chain = vec![first];
    let mut losers = Vec::new();
    // Each round, eight spends of the newest token at once: one moves the chain on, the others
    // are retries within the grace window (answered, not stored, not reuse).
    for round in 1..=8 {
        let at = now + Duration::seconds(round);
        let requests: Vec<SpendRequest> = (0..8).map(|_| graceful(*chain.last().unwrap(), at)).collect();
        let outcomes: Vec<SpendOutcome> = join_all(requests.iter().map(|request| store.spend(request, &Actor::NOBODY)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let mut winner = None;
        for (request, outcome) in requests.iter().zip(outcomes) {
            match outcome {
                SpendOutcome::Spent { .. } => {
                    assert!(winner.is_none(), "round {round}: a second winner");
                    winner = Some(request.successor.hash);
                }
                outcome => {
                    refused(outcome, false);
                    losers.push(request.successor.hash);
                }
            }
        }
        chain.push(winner.unwrap_or_else(|| panic!("round {round}: no winner")));
    }
    assert!(!revoked(store, family).await);

    // Then the newest token and the first (long spent, its successor too: reuse) at once.
    let at = now + Duration::seconds(20);
    let newest = *chain.last().unwrap();
    let requests: Vec<SpendRequest> = (0..16)
        .map(|i| graceful(if i % 2 == 0 { newest } else { first }, at))
        .collect();
    let outcomes: Vec<SpendOutcome> = join_all(requests.iter().map(|request| store.spend(request, &Actor::NOBODY)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut revokers = 0;
    for (request, outcome) in requests.iter().zip(&outcomes) {
        match outcome {
            SpendOutcome::Spent { .. } => chain.push(request.successor.hash),
            SpendOutcome::Refused { revoked_for_reuse, .. } => {
                revokers += usize::from(*revoked_for_reuse);
                losers.push(request.successor.hash);
            }
            SpendOutcome::Limited { .. } => panic!("no Rotate limit in play: {outcome:?}"),
        }
    }
    assert_eq!(revokers, 1, "{outcomes:#?}");
    assert!(chain.len() <= 10, "the newest token was spent twice: {outcomes:#?}");
    assert!(revoked(store, family).await);

    // One chain: each token's successor is the next, only the last is unspent, and no losing
    // successor was ever stored.
    for pair in chain.windows(2) {
        let token = store.refresh_token(&pair[0]).await.unwrap().unwrap();
        assert_eq!(token.successor.map(|s| s.hash), Some(pair[1]));
    }
    let last = store.refresh_token(chain.last().unwrap()).await.unwrap().unwrap();
    assert_eq!(last.spent_at, None);
    for loser in &losers {
        assert!(store.refresh_token(loser).await.unwrap().is_none());
    }
}

/// Someone with a caller name and a request id, as the gRPC handlers pass down.
fn actor(caller: &str, request_id: &str) -> Actor {
    Actor {
        caller: Some(caller.into()),
        request_id: Some(request_id.into()),
    }
}

/// The family's Rotate limit is kept by the store (issue 19), so it holds for every replica: a
/// family takes `burst` rotations at once, then the next is refused without spending anything
/// until its bucket has room again, whichever of its tokens is presented; and a replay is caught
/// (the family revoked) whatever the bucket says.
async fn a_family_takes_its_rotate_burst_at_once_then_waits_for_its_bucket_and_replays_are_still_caught<
    S: FamilyStore,
>(
    store: &S,
) {
    // Bursts of 3; one rotation more each 500 ms.
    let limit = RotateLimit {
        per_second: NonZeroU32::new(2).unwrap(),
        burst: NonZeroU32::new(3).unwrap(),
    };
    let at = start();
    let limited = |presented, now| SpendRequest {
        rotate_limit: limit,
        ..spend_of(presented, now)
    };
    let (family, first) = issue(store, "alice", at).await;
    let mut token = first;
    for _ in 0..3 {
        let request = limited(token, at);
        spent(store, &request).await;
        token = request.successor.hash;
    }
    let refused = |now| {
        let request = limited(token, now);
        async move { store.spend(&request, &Actor::NOBODY).await.unwrap() }
    };
    let expected = SpendOutcome::Limited {
        family,
        retry_at: at + Duration::milliseconds(500),
    };
    assert_eq!(refused(at).await, expected);
    assert_eq!(
        refused(at + Duration::milliseconds(499)).await,
        expected,
        "not a microsecond early"
    );
    let record = store.refresh_token(&token).await.unwrap().unwrap();
    assert_eq!(record.spent_at, None, "a refused rotation spends nothing");
    assert_eq!(record.family.revoked_at, None);

    // Room for one at 500 ms, and for none again right after.
    let request = limited(token, at + Duration::milliseconds(500));
    spent(store, &request).await;
    let next = limited(request.successor.hash, at + Duration::milliseconds(500));
    assert!(matches!(
        store.spend(&next, &Actor::NOBODY).await.unwrap(),
        SpendOutcome::Limited { .. }
    ));

    // Over the limit, a spent token presented again is still reuse: the family is revoked.
    match store
        .spend(&limited(first, at + Duration::milliseconds(600)), &Actor::NOBODY)
        .await
        .unwrap()
    {
        SpendOutcome::Refused {
            revoked_for_reuse: true,
            ..
        } => {}
        other => panic!("a replay over the limit must revoke the family: {other:?}"),
    }
    assert!(revoked(store, family).await);

    // Another family's bucket is its own.
    let (_, other) = issue(store, "bob", at).await;
    spent(store, &limited(other, at + Duration::milliseconds(600))).await;
}

/// Every event of `family`, newest first.
async fn events_of<S: FamilyStore>(store: &S, family: FamilyId) -> Vec<AuditEvent> {
    store
        .events(&EventFilter {
            family: Some(family),
            ..EventFilter::latest(1000)
        })
        .await
        .unwrap()
}

async fn all_events<S: FamilyStore>(store: &S) -> Vec<AuditEvent> {
    store.events(&EventFilter::latest(10_000)).await.unwrap()
}

fn kinds(events: &[AuditEvent]) -> Vec<EventKind> {
    events.iter().map(|event| event.kind).collect()
}

/// Asserts `event` is `kind` of `family` at `at` by `by`, with `detail`.
#[track_caller]
fn assert_event(
    event: &AuditEvent,
    kind: EventKind,
    family: FamilyId,
    at: OffsetDateTime,
    by: &Actor,
    detail: Option<&str>,
) {
    assert_eq!(
        (
            event.kind,
            event.family_id,
            event.at,
            &event.caller,
            &event.request_id,
            event.detail.as_deref()
        ),
        (kind, family, at, &by.caller, &by.request_id, detail),
        "{event:#?}"
    );
}

async fn every_change_is_recorded_with_who_made_it_and_nothing_for_a_refused_one<S: FamilyStore>(store: &S) {
    let now = start();
    let backend = actor("backend", "req-issue");
    let new = new_family("alice", now);
    let (family, first) = (new.family.id, new.first.hash);
    store.create_family(&new, &backend).await.unwrap();
    let issued = events_of(store, family).await;
    assert_eq!(issued.len(), 1, "{issued:#?}");
    assert_event(&issued[0], EventKind::Issued, family, now, &backend, None);
    assert_eq!(
        (issued[0].subject.as_str(), issued[0].client_id.as_str()),
        ("alice", "app")
    );

    // Rotations are not recorded by default; refused spends never are.
    let rotation = spend_of(first, now + Duration::SECOND);
    spent(store, &rotation).await;
    store.spend(&spend_of(new_token(), now), &backend).await.unwrap();
    let expired = spend_of(rotation.successor.hash, now + IDLE + Duration::MINUTE);
    refused(store.spend(&expired, &backend).await.unwrap(), false);
    assert_eq!(all_events(store).await.len(), 1);

    // Revoked by token; then nothing for a second revocation, nor for an unknown family.
    let admin = actor("admin-console", "req-revoke");
    let at = now + Duration::MINUTE;
    let revocation = store
        .revoke_family(family, at, RevokeReason::Revoke(TargetKind::Token), &admin)
        .await
        .unwrap();
    assert_eq!(revocation, Revocation::Revoked);
    for id in [family, FamilyId::new_random()] {
        store
            .revoke_family(
                id,
                at + Duration::SECOND,
                RevokeReason::Revoke(TargetKind::Family),
                &admin,
            )
            .await
            .unwrap();
    }
    let events = events_of(store, family).await;
    assert_eq!(kinds(&events), [EventKind::Revoked, EventKind::Issued]);
    assert_event(&events[0], EventKind::Revoked, family, at, &admin, Some("token"));

    // By subject: one event per family, with what the call named; none for one that ended.
    let (bob_1, _) = issue(store, "bob", now).await;
    let (bob_2, _) = issue(store, "bob", now).await;
    let mut ended = new_family("bob", now);
    ended.family.expires_at = now + Duration::seconds(30);
    ended.family.refresh_expires_at = ended.family.expires_at;
    ended.first.expires_at = ended.family.expires_at;
    let (bob_ended, _) = create(store, ended).await;
    let revoked = store.revoke_subject("bob", at, 10, &admin).await.unwrap();
    assert_eq!(revoked.len(), 2);
    for id in [bob_1, bob_2] {
        let events = events_of(store, id).await;
        assert_eq!(kinds(&events), [EventKind::Revoked, EventKind::Issued]);
        assert_event(&events[0], EventKind::Revoked, id, at, &admin, Some("subject"));
        assert_eq!(events[0].subject, "bob");
    }
    assert_eq!(kinds(&events_of(store, bob_ended).await), [EventKind::Issued]);
    assert!(store.revoke_subject("bob", at, 10, &admin).await.unwrap().is_empty());
    assert_eq!(
        all_events(store).await.len(),
        2 + 3 + 2,
        "nothing more for revoking nothing"
    );
}

async fn a_replay_is_recorded_once_as_reuse_detected_with_its_revocation<S: FamilyStore>(store: &S) {
    let now = start();
    let (family, first) = issue(store, "alice", now).await;
    let rotation = spend_of(first, now);
    let client = actor("mobile-bff", "req-1");
    spent(store, &rotation).await;
    // The same spend delivered again (a lost answer resolved) is not a replay.
    store.spend(&rotation, &client).await.unwrap();
    assert_eq!(kinds(&events_of(store, family).await), [EventKind::Issued]);

    let thief = actor("mobile-bff", "req-2");
    let later = now + Duration::minutes(5);
    refused(store.spend(&spend_of(first, later), &thief).await.unwrap(), true);
    let events = events_of(store, family).await;
    assert_eq!(kinds(&events), [EventKind::ReuseDetected, EventKind::Issued]);
    assert_event(&events[0], EventKind::ReuseDetected, family, later, &thief, None);
    assert!(
        revoked(store, family).await,
        "recorded with the revocation, not instead of it"
    );

    // Replays of a revoked family revoke nothing more, and record nothing more.
    refused(
        store
            .spend(&spend_of(first, later + Duration::SECOND), &thief)
            .await
            .unwrap(),
        false,
    );
    refused(
        store
            .spend(&spend_of(rotation.successor.hash, later + Duration::SECOND), &thief)
            .await
            .unwrap(),
        false,
    );
    assert_eq!(events_of(store, family).await.len(), 2);

    // Within the grace window a retry is not reuse, and is not recorded.
    let (calm, first) = issue(store, "bob", now).await;
    spent(store, &graceful(first, now)).await;
    refused(
        store
            .spend(&graceful(first, now + Duration::SECOND), &client)
            .await
            .unwrap(),
        false,
    );
    assert_eq!(kinds(&events_of(store, calm).await), [EventKind::Issued]);
}

async fn rotations_are_recorded_only_when_asked_and_once_per_spend<S: FamilyStore>(store: &S) {
    let now = start();
    let (family, first) = issue(store, "alice", now).await;
    let quiet = spend_of(first, now + Duration::SECOND);
    spent(store, &quiet).await;
    assert_eq!(kinds(&events_of(store, family).await), [EventKind::Issued]);

    let client = actor("web", "req-rotate");
    let audited = SpendRequest {
        audit_rotation: true,
        ..spend_of(quiet.successor.hash, now + Duration::seconds(2))
    };
    for delivery in [
        "first",
        "again (a lost answer resolved): already spent, not recorded twice",
    ] {
        match store.spend(&audited, &client).await.unwrap() {
            SpendOutcome::Spent { .. } => {}
            other => panic!("{delivery}: not spent: {other:?}"),
        }
    }
    let events = events_of(store, family).await;
    assert_eq!(kinds(&events), [EventKind::Rotated, EventKind::Issued]);
    assert_event(&events[0], EventKind::Rotated, family, audited.now, &client, None);
    // A refused spend is not a rotation, asked or not.
    let stale = SpendRequest {
        audit_rotation: true,
        ..spend_of(new_token(), now + Duration::seconds(3))
    };
    store.spend(&stale, &client).await.unwrap();
    assert_eq!(events_of(store, family).await.len(), 2);
    assert_eq!(all_events(store).await.len(), 2);
}

async fn an_eviction_is_recorded_with_the_issue_that_caused_it<S: FamilyStore>(store: &S) {
    let now = start();
    let capped = |at| NewFamily {
        max_live: 1,
        ..new_family("alice", at)
    };
    let (oldest, _) = create(store, capped(now)).await;
    let newest = capped(now + Duration::SECOND);
    let login = actor("login", "req-login");
    assert_eq!(store.create_family(&newest, &login).await.unwrap(), vec![oldest]);
    let events = events_of(store, oldest).await;
    assert_eq!(kinds(&events), [EventKind::Evicted, EventKind::Issued]);
    assert_event(
        &events[0],
        EventKind::Evicted,
        oldest,
        newest.family.created_at,
        &login,
        None,
    );
    let events = events_of(store, newest.family.id).await;
    assert_eq!(kinds(&events), [EventKind::Issued]);
    assert_event(
        &events[0],
        EventKind::Issued,
        newest.family.id,
        newest.family.created_at,
        &login,
        None,
    );
}

async fn events_are_read_newest_first_by_each_filter<S: FamilyStore>(store: &S) {
    let now = start();
    let (alice_1, first) = issue(store, "alice", now).await;
    let (alice_2, _) = issue(store, "alice", now + Duration::SECOND).await;
    let (bob, _) = issue(store, "bob", now + Duration::seconds(2)).await;
    spent(store, &spend_of(first, now + Duration::seconds(3))).await;
    refused(
        store
            .spend(&spend_of(first, now + Duration::seconds(4)), &Actor::NOBODY)
            .await
            .unwrap(),
        true,
    );
    store
        .revoke_family(
            bob,
            now + Duration::seconds(4),
            RevokeReason::Revoke(TargetKind::Family),
            &Actor::NOBODY,
        )
        .await
        .unwrap();

    // Newest first; two events of one instant in the order they were made, newest first.
    let all = all_events(store).await;
    let seen: Vec<(EventKind, FamilyId)> = all.iter().map(|e| (e.kind, e.family_id)).collect();
    assert_eq!(
        seen,
        [
            (EventKind::Revoked, bob),
            (EventKind::ReuseDetected, alice_1),
            (EventKind::Issued, bob),
            (EventKind::Issued, alice_2),
            (EventKind::Issued, alice_1),
        ]
    );
    assert!(all.windows(2).all(|pair| pair[0].id > pair[1].id), "ids grow with time");

    let read = |filter: EventFilter| async move { kinds(&store.events(&filter).await.unwrap()) };
    let latest = EventFilter::latest(100);
    let by_subject = read(EventFilter {
        subject: Some("alice".into()),
        ..latest.clone()
    });
    assert_eq!(
        by_subject.await,
        [EventKind::ReuseDetected, EventKind::Issued, EventKind::Issued]
    );
    let by_kind = store
        .events(&EventFilter {
            kind: Some(EventKind::Issued),
            ..latest.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        by_kind.iter().map(|e| e.family_id).collect::<Vec<_>>(),
        [bob, alice_2, alice_1]
    );
    let since = read(EventFilter {
        since: Some(now + Duration::seconds(2)),
        ..latest.clone()
    });
    assert_eq!(
        since.await,
        [EventKind::Revoked, EventKind::ReuseDetected, EventKind::Issued]
    );
    let combined = read(EventFilter {
        subject: Some("alice".into()),
        kind: Some(EventKind::Issued),
        since: Some(now + Duration::SECOND),
        family: Some(alice_2),
        limit: 100,
    });
    assert_eq!(combined.await, [EventKind::Issued]);
    let nothing = read(EventFilter {
        family: Some(FamilyId::new_random()),
        ..latest.clone()
    });
    assert!(nothing.await.is_empty());
    let newest_two = read(EventFilter::latest(2));
    assert_eq!(newest_two.await, [EventKind::Revoked, EventKind::ReuseDetected]);
}

async fn retention_deletes_only_events_older_than_its_cutoff_in_batches<S: FamilyStore>(store: &S) {
    let now = start();
    let mut old = Vec::new();
    for i in 0..5 {
        old.push(issue(store, "alice", now + Duration::seconds(i)).await.0);
    }
    let cutoff = now + Duration::seconds(5);
    let (at_cutoff, _) = issue(store, "alice", cutoff).await;
    let (recent, _) = issue(store, "alice", cutoff + Duration::DAY).await;

    let mut batches = Vec::new();
    loop {
        let deleted = store.purge_events(cutoff, 2).await.unwrap();
        batches.push(deleted);
        if deleted < 2 {
            break;
        }
    }
    assert_eq!(batches, [2, 2, 1]);
    let left: Vec<FamilyId> = all_events(store).await.iter().map(|e| e.family_id).collect();
    assert_eq!(left, [recent, at_cutoff], "the cutoff itself is kept");
    assert_eq!(store.purge_events(cutoff, 2).await.unwrap(), 0);
    // Families are not the events' to delete, nor the other way round.
    for id in old {
        assert!(store.family_status(id).await.unwrap().is_some());
    }
}
