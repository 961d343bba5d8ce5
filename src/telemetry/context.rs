//! The call a log line is written in: its RPC, request id, caller and family, on every line the
//! call logs, at no cost to a call that logs nothing.
//!
//! A `tracing` span would carry the same fields, but every call would pay for it whether a line
//! is written or not: the registry's slot, the fields formatted into a string at once, the
//! close. At the default level a successful call writes no line, and that span was Introspect's
//! largest cost after the gRPC round trip itself (BENCHMARKS.md, "Logging at info"). So a call
//! is a [`CallContext`] instead, held in a thread-local while the call's future is polled
//! ([`CallContext::enter`], [`InCall`] for the tasks a call spawns), and read only when a line is
//! formatted ([`CallFormat`]): `rpc{rpc=Issue request_id=... caller=... family=...}:` before the
//! line's own spans and target in text, a `call` object in JSON.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::request_id::RequestId;

/// One call, as its log lines name it.
#[derive(Debug)]
pub struct CallContext {
    rpc: Cow<'static, str>,
    request_id: RequestId,
    /// The policy's name for the caller, once the access layer knows it.
    caller: OnceLock<String>,
    /// The family the call acts on, once known (Issue, Rotate, Revoke by family).
    family: OnceLock<String>,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<CallContext>>> = const { RefCell::new(None) };
}

impl CallContext {
    pub fn new(rpc: Cow<'static, str>, request_id: RequestId) -> Arc<Self> {
        Arc::new(Self {
            rpc,
            request_id,
            caller: OnceLock::new(),
            family: OnceLock::new(),
        })
    }

    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    /// Makes this the current call on this thread until the guard is dropped (then the one
    /// before it is current again).
    pub fn enter(self: &Arc<Self>) -> Entered {
        Entered {
            previous: CURRENT
                .try_with(|current| current.replace(Some(self.clone())))
                .ok()
                .flatten(),
        }
    }

    fn write_text(&self, out: &mut impl fmt::Write) -> fmt::Result {
        write!(out, "rpc{{rpc={} request_id={}", self.rpc, self.request_id)?;
        if let Some(caller) = self.caller.get() {
            write!(out, " caller={caller}")?;
        }
        if let Some(family) = self.family.get() {
            write!(out, " family={family}")?;
        }
        out.write_str("}: ")
    }

    fn write_json(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let fields = [
            ("rpc", Some(self.rpc.as_ref())),
            ("request_id", Some(self.request_id.as_str())),
            ("caller", self.caller.get().map(String::as_str)),
            ("family", self.family.get().map(String::as_str)),
        ];
        out.write_char('{')?;
        let mut first = true;
        for (name, value) in fields {
            let Some(value) = value else { continue };
            if !first {
                out.write_char(',')?;
            }
            first = false;
            // serde_json escapes what a caller's request id or a policy's caller name may hold.
            let value = serde_json::to_string(value).map_err(|_| fmt::Error)?;
            write!(out, "\"{name}\":{value}")?;
        }
        out.write_char('}')
    }
}

/// See [`CallContext::enter`].
#[must_use = "the call is current only while this guard lives"]
pub struct Entered {
    previous: Option<Arc<CallContext>>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let _ = CURRENT.try_with(|current| *current.borrow_mut() = previous);
    }
}

fn with_current<T>(f: impl FnOnce(&CallContext) -> T) -> Option<T> {
    CURRENT
        .try_with(|current| current.borrow().as_deref().map(f))
        .ok()
        .flatten()
}

/// Names the current call's caller on its later lines (the first name given stays).
pub fn record_caller(name: &str) {
    with_current(|call| call.caller.set(name.to_owned()));
}

/// Names the family the current call acts on, on its later lines (the first one given stays).
pub fn record_family(family: impl fmt::Display) {
    with_current(|call| call.family.set(family.to_string()));
}

/// `future`, in the current call when it is polled (for work a call spawns onto a task of its
/// own).
pub fn in_current_call<F: Future>(future: F) -> InCall<F> {
    InCall {
        inner: future,
        call: CURRENT.try_with(|current| current.borrow().clone()).ok().flatten(),
    }
}

pin_project_lite::pin_project! {
    /// See [`in_current_call`].
    pub struct InCall<F> {
        #[pin]
        inner: F,
        call: Option<Arc<CallContext>>,
    }
}

impl<F: Future> Future for InCall<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.call.as_ref().map(CallContext::enter);
        this.inner.poll(cx)
    }
}

/// The log line format: tracing-subscriber's own (`inner`), with the current call added.
pub struct CallFormat<E> {
    inner: E,
    json: bool,
}

impl CallFormat<tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, ()>> {
    /// `2026-12-07T17:38:19.123456Z  INFO rpc{rpc=Issue request_id=...}: target: message k=v`:
    /// the time and level written here, the rest (spans, target, fields) by tracing-subscriber.
    pub fn text() -> Self {
        Self {
            inner: tracing_subscriber::fmt::format().without_time().with_level(false),
            json: false,
        }
    }
}

impl CallFormat<tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>> {
    /// tracing-subscriber's JSON object, with a `call` object when the line is a call's.
    pub fn json() -> Self {
        Self {
            inner: tracing_subscriber::fmt::format().json(),
            json: true,
        }
    }
}

impl<S, N, E> FormatEvent<S, N> for CallFormat<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let call = CURRENT.try_with(|current| current.borrow().clone()).ok().flatten();
        if self.json {
            let Some(call) = call else {
                return self.inner.format_event(ctx, writer, event);
            };
            let mut line = String::new();
            self.inner.format_event(ctx, Writer::new(&mut line), event)?;
            // `{...}\n`: the call goes in before the closing brace.
            let object = line.trim_end().strip_suffix('}').ok_or(fmt::Error)?;
            writer.write_str(object)?;
            writer.write_str(",\"call\":")?;
            call.write_json(&mut writer)?;
            return writer.write_str("}\n");
        }
        SystemTime.format_time(&mut writer)?;
        write!(writer, " {:>5} ", event.metadata().level())?;
        if let Some(call) = call {
            call.write_text(&mut writer)?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> Arc<CallContext> {
        CallContext::new(
            Cow::Borrowed("Issue"),
            RequestId::from_caller(Some(&http::HeaderValue::from_str(id).unwrap())),
        )
    }

    fn text(call: &CallContext) -> String {
        let mut out = String::new();
        call.write_text(&mut out).unwrap();
        out
    }

    #[test]
    fn a_call_is_current_while_entered_and_the_one_before_after() {
        assert!(with_current(|_| ()).is_none());
        let (outer, inner) = (call("outer"), call("inner"));
        let entered = outer.enter();
        record_caller("login-svc");
        {
            let _inner = inner.enter();
            record_family("f-1");
            assert_eq!(
                with_current(text).unwrap(),
                "rpc{rpc=Issue request_id=inner family=f-1}: "
            );
        }
        record_caller("someone-else");
        assert_eq!(
            with_current(text).unwrap(),
            "rpc{rpc=Issue request_id=outer caller=login-svc}: ",
            "the first caller named stays"
        );
        drop(entered);
        assert!(with_current(|_| ()).is_none());
    }

    #[test]
    fn json_escapes_what_a_caller_sent() {
        let call = call("a\"b\\c");
        call.caller.set("svc".into()).unwrap();
        let mut out = String::new();
        call.write_json(&mut out).unwrap();
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["request_id"], "a\"b\\c");
        assert_eq!(value["caller"], "svc");
        assert!(value.get("family").is_none());
    }

    #[tokio::test]
    async fn work_spawned_in_a_call_runs_in_it() {
        let call = call("spawned");
        let work = {
            let _entered = call.enter();
            in_current_call(async { with_current(|call| call.request_id.as_str().to_owned()) })
        };
        assert_eq!(tokio::spawn(work).await.unwrap().as_deref(), Some("spawned"));
    }
}
