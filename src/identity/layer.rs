//! The tower layer that proves every caller before its request reaches a service: health and
//! reflection pass untouched; a method without a policy is refused to everyone; a request
//! without an accepted credential ends here with UNAUTHENTICATED.

use super::{Authenticator, Caller, Proof, policy};
use crate::audit::CallNote;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for AuthService<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RequestBody: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        // The service that was polled ready serves this request; its clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path().to_owned();
        if policy::is_open(&path) {
            return Box::pin(inner.call(request));
        }
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let Some(policy) = policy::of(&path) else {
                return Ok(tonic::Status::permission_denied(format!(
                    "{path} has no access policy, so nobody may call it"
                ))
                .into_http());
            };
            let extensions = request.extensions();
            let peer = extensions
                .get::<TcpConnectInfo>()
                .or_else(|| {
                    extensions
                        .get::<TlsConnectInfo<TcpConnectInfo>>()
                        .map(|tls| tls.get_ref())
                })
                .and_then(|info| info.remote_addr())
                .map(|address| address.ip());
            let note = request.extensions().get::<Arc<CallNote>>().cloned();
            if let Some(note) = &note {
                note.peer(peer);
            }
            match authenticator.authenticate(request.headers(), peer).await {
                Ok(principal) => {
                    if let Some(note) = &note {
                        note.caller(&principal.subject, principal.kind.as_str());
                    }
                    let proof = policy::is_lasting(&path).then(|| {
                        Arc::new(Proof::new(authenticator.clone(), request.headers().clone(), peer))
                    });
                    request.extensions_mut().insert(Caller {
                        principal: Arc::new(principal),
                        policy,
                        note: note.clone(),
                        proof,
                    });
                    // The handler's changes find who made them through the call's note.
                    crate::audit::within(note, inner.call(request)).await
                }
                Err(error) => Ok(tonic::Status::from(error).into_http()),
            }
        })
    }
}
