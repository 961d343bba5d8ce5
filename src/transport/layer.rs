//! Puts the caller's [`PeerIdentity`] into every request's extensions, the contract with the
//! caller policy (`grpc::access`): from the connection's client certificate ([`PeerInfo`]), or, on
//! a trusted plaintext loopback listener only, from the sidecar's `x-forwarded-client-cert`
//! header. Never otherwise: an untrusted XFCC header is ignored entirely.
//!
//! It decides nothing: a request without an identity goes on, and the policy decides. A trusted
//! XFCC header that is not as Envoy writes it is marked ([`MalformedXfcc`] in the extensions, and
//! no identity), so that the policy can refuse it instead of taking it for an unnamed caller.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::accept::PeerInfo;
use super::identity::PeerIdentity;
use super::xfcc::{self, MalformedXfcc};

/// Called with the identity each request carries, after this layer: a seam for tests (which
/// have no policy to observe it through yet); `None` in a real server.
pub type PeerProbe = Arc<dyn Fn(Option<&PeerIdentity>) + Send + Sync>;

/// See the module docs.
#[derive(Clone, Default)]
pub struct PeerIdentityLayer {
    trust_xfcc: bool,
    probe: Option<PeerProbe>,
}

impl fmt::Debug for PeerIdentityLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerIdentityLayer")
            .field("trust_xfcc", &self.trust_xfcc)
            .finish_non_exhaustive()
    }
}

impl PeerIdentityLayer {
    /// `trust_xfcc`: read the XFCC header (only ever set for a plaintext loopback listener; see
    /// `config`).
    pub fn new(trust_xfcc: bool, probe: Option<PeerProbe>) -> Self {
        Self { trust_xfcc, probe }
    }
}

impl<S> Layer<S> for PeerIdentityLayer {
    type Service = PeerIdentityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerIdentityService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`PeerIdentityLayer`].
#[derive(Clone, Debug)]
pub struct PeerIdentityService<S> {
    inner: S,
    layer: PeerIdentityLayer,
}

/// The identity `request` arrived with, by the rules in the module docs: `Ok(None)` when it names
/// nobody (no certificate, no trusted header).
///
/// # Errors
/// A trusted XFCC header that is not as Envoy writes it, or not text.
pub fn identify<B>(request: &http::Request<B>, trust_xfcc: bool) -> Result<Option<PeerIdentity>, MalformedXfcc> {
    if let Some(identity) = request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|info| info.identity.clone())
    {
        return Ok(Some(identity));
    }
    if !trust_xfcc {
        return Ok(None);
    }
    // Several header lines read as one list, in order: the last line holds the nearest element.
    let Some(nearest) = request.headers().get_all(xfcc::HEADER).iter().next_back() else {
        return Ok(None);
    };
    let text = nearest
        .to_str()
        .map_err(|_| MalformedXfcc("the header is not printable ASCII"))?;
    xfcc::identity(text)
}

impl<S, B> Service<http::Request<B>> for PeerIdentityService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let identity = identify(&request, self.layer.trust_xfcc);
        // Only this layer says who is calling.
        let extensions = request.extensions_mut();
        extensions.remove::<PeerIdentity>();
        extensions.remove::<MalformedXfcc>();
        match identity {
            Ok(Some(identity)) => {
                extensions.insert(identity);
            }
            Ok(None) => {}
            Err(malformed) => {
                extensions.insert(malformed);
            }
        }
        if let Some(probe) = &self.layer.probe {
            probe(request.extensions().get::<PeerIdentity>());
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(info: Option<PeerInfo>, xfcc: &[&str]) -> http::Request<()> {
        let mut builder = http::Request::builder();
        for value in xfcc {
            builder = builder.header(xfcc::HEADER, *value);
        }
        let mut request = builder.body(()).unwrap();
        if let Some(info) = info {
            request.extensions_mut().insert(info);
        }
        request
    }

    const HASH: &str = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688";

    fn spiffe(id: &str) -> PeerIdentity {
        PeerIdentity::Spiffe(crate::transport::identity::SpiffeId::parse(id).unwrap())
    }

    fn tls_peer(identity: &str) -> PeerInfo {
        PeerInfo {
            remote_addr: None,
            identity: Some(spiffe(identity)),
            activity: None,
        }
    }

    #[test]
    fn the_client_certificate_names_the_caller() {
        let found = identify(&request(Some(tls_peer("spiffe://td/a")), &[]), false);
        assert_eq!(found, Ok(Some(spiffe("spiffe://td/a"))));
    }

    #[test]
    fn an_untrusted_xfcc_header_is_ignored() {
        assert_eq!(identify(&request(None, &["URI=spiffe://td/forged"]), false), Ok(None));
        assert_eq!(identify(&request(None, &["garbage"]), false), Ok(None));
    }

    #[test]
    fn a_trusted_xfcc_header_names_the_caller_from_its_last_line() {
        let near = format!("By=spiffe://b;Hash={HASH};URI=spiffe://td/near");
        let found = identify(&request(None, &["URI=spiffe://td/far", &near]), true);
        assert_eq!(found, Ok(Some(spiffe("spiffe://td/near"))));
        assert!(identify(&request(None, &["URI=spiffe://td/no-hash"]), true).is_err());
    }

    #[test]
    fn the_layer_inserts_the_identity_and_nothing_else_can() {
        use futures_util::FutureExt as _;
        use tower_service::Service as _;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let probe: PeerProbe = Arc::new(move |identity| record.lock().unwrap().push(identity.cloned()));
        let mut service = PeerIdentityLayer::new(false, Some(probe)).layer(tower_service_fn());
        service
            .call(request(Some(tls_peer("spiffe://td/a")), &[]))
            .now_or_never()
            .unwrap()
            .unwrap();
        let mut smuggled = request(None, &[]);
        smuggled.extensions_mut().insert(spiffe("spiffe://td/smuggled"));
        service.call(smuggled).now_or_never().unwrap().unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![Some(spiffe("spiffe://td/a")), None]);
    }

    /// A service that answers at once.
    fn tower_service_fn() -> impl Service<http::Request<()>, Response = (), Error = ()> {
        struct Done;
        impl Service<http::Request<()>> for Done {
            type Response = ();
            type Error = ();
            type Future = std::future::Ready<Result<(), ()>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: http::Request<()>) -> Self::Future {
                std::future::ready(Ok(()))
            }
        }
        Done
    }
}
