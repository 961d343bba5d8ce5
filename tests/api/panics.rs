//! A handler that panics: the caller gets INTERNAL with an error id, the connection lives on.
//!
//! Our service cannot be made to panic on demand through its API, so the test gives the real
//! application (started as every other test starts it) a clock that panics once when armed: the
//! token service reads the clock in its handler, so one Issue panics inside the real server,
//! behind the layers `startup` puts around it. If startup ever dropped the panic layer, this test
//! would see a reset stream instead of INTERNAL and fail.
//!
//! Where it runs: on SQLite; the panic comes before the store is asked anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ratchet::clock::Clock;
use ratchet::grpc::pb::IssueRequest;
use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use time::OffsetDateTime;
use tonic::Code;

use crate::support::{Db, TestApp, counting_channel};

/// A fixed time, until [`Self::arm`]ed: then the next reading panics, as a bug in a handler would.
struct PanickingClock {
    armed: AtomicBool,
}

impl PanickingClock {
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

impl Clock for PanickingClock {
    fn now(&self) -> OffsetDateTime {
        // Once only: the server's other readings (and the call after the panic) see a clock.
        assert!(!self.armed.swap(false, Ordering::SeqCst), "a bug in a handler");
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }
}

fn alice() -> IssueRequest {
    IssueRequest {
        subject: "alice".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_panicking_handler_answers_internal_with_an_error_id_and_the_connection_lives_on() {
    let clock = Arc::new(PanickingClock {
        armed: AtomicBool::new(false),
    });
    let server_clock = clock.clone();
    let app = TestApp::builder(Db::Sqlite)
        .adjust(|parts| parts.clock = server_clock)
        .spawn()
        .await;
    let (channel, opened) = counting_channel(app.addr).await;
    let mut client = TokenServiceClient::new(channel);

    clock.arm();
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), client.issue(alice()))
        .await
        .expect("a panic must not leave the call hanging")
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let id = status
        .message()
        .strip_prefix("internal error (id ")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no error id in {:?}", status.message()));
    assert!(id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");

    client.issue(alice()).await.expect("the next call is served");
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "the panic must not cost the connection"
    );
    app.stop().await;
}
