//! Tests of what only SQLite does (two processes on one file, another process holding the write
//! lock, the lock file, file modes). What every store must do is in the contract suite
//! (`store::contract`), run on every backend.

use std::fs;

use super::*;
use crate::store::NewRefreshToken;

/// A fresh, migrated database under the temporary directory; removed when dropped.
struct Scratch(SqliteTarget);

impl Scratch {
    async fn new(timeout: Duration) -> Self {
        let name = format!("ratchet-sqlite-{}.db", Uuid::new_v4().simple());
        let target = SqliteTarget {
            path: std::env::temp_dir().join(name),
            settings: SqliteSettings { readers: 2, timeout },
        };
        migrate(&target).await.unwrap();
        Self(target)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let mut path = self.0.path.clone().into_os_string();
            path.push(suffix);
            let _ = fs::remove_file(path);
        }
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn new_family() -> NewFamily {
    crate::store::contract::new_family("alice", now())
}

fn spend_of(presented: TokenHash) -> SpendRequest {
    SpendRequest {
        presented,
        successor: NewRefreshToken {
            hash: TokenHash(crate::store::contract::random_bytes()),
            expires_at: now() + time::Duration::hours(1),
        },
        successor_seal: None,
        now: now(),
        retry_after: now(),
        audit_rotation: false,
        rotate_limit: crate::store::contract::LOOSE,
    }
}

#[tokio::test]
async fn writers_in_two_processes_wait_for_each_other_instead_of_failing() {
    // Two stores on one file have a writer each, as the server and a `ratchet gc` run by
    // hand do. With a deferred BEGIN both would read "unspent" and one would fail to upgrade
    // its lock (SQLITE_BUSY, which the busy timeout cannot wait out); BEGIN IMMEDIATE makes
    // the second wait, then read the spend, then revoke.
    let scratch = Scratch::new(Duration::from_secs(5)).await;
    let (a, b) = (SqliteStore::open(&scratch.0), SqliteStore::open(&scratch.0));
    let (a, b) = (&a, &b);
    let new = new_family();
    a.create_family(&new, &Actor::NOBODY).await.unwrap();
    let requests: Vec<SpendRequest> = (0..16).map(|_| spend_of(new.first.hash)).collect();
    let outcomes = futures::future::join_all(requests.iter().enumerate().map(|(i, request)| async move {
        if i % 2 == 0 {
            a.spend(request, &Actor::NOBODY).await
        } else {
            b.spend(request, &Actor::NOBODY).await
        }
    }))
    .await;
    let outcomes: Vec<SpendOutcome> = outcomes.into_iter().map(Result::unwrap).collect();
    let spent = outcomes
        .iter()
        .filter(|o| matches!(o, SpendOutcome::Spent { .. }))
        .count();
    let revokers = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o,
                SpendOutcome::Refused {
                    revoked_for_reuse: true,
                    ..
                }
            )
        })
        .count();
    assert_eq!((spent, revokers), (1, 1), "{outcomes:#?}");
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn a_write_lock_held_past_the_timeout_is_unavailable_and_nothing_happens() {
    let scratch = Scratch::new(Duration::from_millis(200)).await;
    let store = SqliteStore::open(&scratch.0);
    let new = new_family();
    store.create_family(&new, &Actor::NOBODY).await.unwrap();
    // Another process (the sqlite3 shell, say) holds the write lock.
    let mut other = SqliteConnection::connect_with(&scratch.0.options()).await.unwrap();
    let held = other.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let started = std::time::Instant::now();
    let error = store
        .spend(&spend_of(new.first.hash), &Actor::NOBODY)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the store's timeout"
    );
    held.rollback().await.unwrap();
    assert_eq!(
        store.refresh_token(&new.first.hash).await.unwrap().unwrap().spent_at,
        None,
        "nothing was spent"
    );
    assert!(matches!(
        store.spend(&spend_of(new.first.hash), &Actor::NOBODY).await.unwrap(),
        SpendOutcome::Spent { .. }
    ));
    other.close().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn one_process_at_a_time_holds_the_lock_file() {
    let scratch = Scratch::new(Duration::from_secs(1)).await;
    let lock = scratch.0.lock().unwrap();
    assert_eq!(lock.path(), scratch.0.lock_path());
    let error = scratch.0.lock().unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, LockError::InUse { .. }), "{error:?}");
    assert!(
        message.contains(&format!("process {}", std::process::id())) && message.contains("PostgreSQL"),
        "{message}"
    );
    drop(lock);
    scratch.0.lock().unwrap();
}

#[tokio::test]
async fn the_database_and_its_lock_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::temp_dir().join(format!("ratchet-mode-{}", Uuid::new_v4().simple()));
    let target = SqliteTarget {
        path: path.join("ratchet.db"),
        settings: SqliteSettings::default(),
    };
    let lock = target.lock().unwrap();
    for file in [target.path.clone(), target.lock_path()] {
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    drop(lock);
    fs::remove_dir_all(path).unwrap();
}
