//! A tower layer around every gRPC call: a tracing span with a request id, the method, the
//! caller's tenant and project (recorded by the handlers once they have read them), the
//! status code and the duration; the request id returned in the response metadata; and the
//! RED metrics (`artifactd_grpc_requests_total{method,code}` and a latency histogram per
//! method).
//!
//! A gRPC status travels in the response trailers (or, for an immediate error, in the
//! headers of a trailers-only response), so a call is counted when its response body ends,
//! which for a download stream is after its last message. A body dropped before its end is
//! a call the client abandoned, counted as CANCELLED.

use crate::audit::patterns::AccessPatterns;
use crate::audit::{AuditSink, CallNote};
use crate::telemetry::names;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::Instrument;

/// The metadata key that carries a request's id, in the request (chosen by the caller) and
/// in the response (always).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest caller-chosen request id kept; a longer or non-printable one is replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// With an audit sink, every call leaves a [`CallNote`] for the layers and handlers inside to
/// fill in, and what the audit trail keeps of finished calls is recorded when they end.
#[derive(Debug, Clone, Default)]
pub struct RequestLayer {
    audit: Option<Audit>,
}

/// Where finished calls go: the audit trail, and the analysis of access patterns.
#[derive(Debug, Clone)]
struct Audit {
    sink: Arc<dyn AuditSink>,
    patterns: Arc<AccessPatterns>,
}

impl RequestLayer {
    pub fn with_audit(sink: Arc<dyn AuditSink>, patterns: Arc<AccessPatterns>) -> Self {
        Self {
            audit: Some(Audit { sink, patterns }),
        }
    }
}

impl<S> tower::Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestService {
            inner,
            audit: self.audit.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequestService<S> {
    inner: S,
    audit: Option<Audit>,
}

/// The caller's id when it is usable, otherwise a new one.
fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// The gRPC status code carried by headers or trailers, if any.
fn grpc_code(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

impl<S, RequestBody, ResponseBody> tower::Service<Request<RequestBody>> for RequestService<S>
where
    S: tower::Service<Request<RequestBody>, Response = Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResponseBody: Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = Response<ObservedBody<ResponseBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let started = Instant::now();
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let request_id = request_id_of(request.headers());
        let audit = self.audit.clone().map(|audit| {
            let note = Arc::new(CallNote::new(&request_id));
            request.extensions_mut().insert(note.clone());
            (audit, note)
        });
        let span = tracing::info_span!(
            "rpc",
            request_id = %request_id,
            method = %method,
            tenant = tracing::field::Empty,
            project = tracing::field::Empty,
            code = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        // Owned by the call from here on: dropped before the response ends, it counts the
        // call as cancelled.
        let mut observer = CallObserver {
            span: span.clone(),
            method,
            started,
            finished: false,
            audit,
        };
        Box::pin(
            async move {
                let mut response = response.await?;
                if let Ok(value) = HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert(REQUEST_ID_HEADER, value);
                }
                // A trailers-only response (every error before the first message) carries
                // its status in the headers and has an empty body, which the server may
                // never poll: the call ends here.
                if let Some(code) = grpc_code(response.headers()) {
                    observer.finish(code);
                }
                Ok(response.map(|body| ObservedBody { body, observer }))
            }
            .instrument(span),
        )
    }
}

/// Records the end of one call, exactly once.
struct CallObserver {
    span: tracing::Span,
    method: String,
    started: Instant,
    finished: bool,
    audit: Option<(Audit, Arc<CallNote>)>,
}

impl CallObserver {
    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let code_name = format!("{code:?}");
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        self.span.record("code", code_name.as_str());
        self.span.record("duration_ms", duration_ms);
        // A path the server does not serve is answered UNIMPLEMENTED; labelling metrics with
        // whatever paths clients send would let them create series without bound.
        let method = if code == tonic::Code::Unimplemented {
            "unknown".to_owned()
        } else {
            self.method.clone()
        };
        metrics::counter!(names::GRPC_REQUESTS_TOTAL, "method" => method.clone(), "code" => code_name.clone())
            .increment(1);
        metrics::histogram!(names::GRPC_REQUEST_DURATION_SECONDS, "method" => method)
            .record(elapsed.as_secs_f64());
        if let Some((audit, note)) = &self.audit
            && code != tonic::Code::Unimplemented
        {
            let record = note.record(&self.method, code);
            audit.patterns.observe(&record);
            if crate::identity::policy::audited(&format!("/{}", self.method), code, note.was_recorded()) {
                metrics::counter!(names::AUDIT_ENTRIES_TOTAL, "outcome" => record.outcome.clone())
                    .increment(1);
                audit.sink.record(record);
            }
        }
        let _entered = self.span.enter();
        match code {
            tonic::Code::Ok => tracing::info!(code = %code_name, duration_ms, "rpc finished"),
            tonic::Code::Internal
            | tonic::Code::DataLoss
            | tonic::Code::Unavailable
            | tonic::Code::Unknown => {
                tracing::warn!(code = %code_name, duration_ms, "rpc failed")
            }
            _ => tracing::info!(code = %code_name, duration_ms, "rpc refused"),
        }
    }
}

impl Drop for CallObserver {
    fn drop(&mut self) {
        // The client went away before the response ended.
        self.finish(tonic::Code::Cancelled);
    }
}

/// A response body that reports the call's status when it ends.
pub struct ObservedBody<B> {
    body: B,
    observer: CallObserver,
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        // Work done while the body is produced (a download's reads) belongs to the call.
        let _entered = this.observer.span.clone().entered();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    this.observer.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.observer.finish(tonic::Code::Unknown),
            // A body that ends without trailers carries no status: the stream was cut.
            Poll::Ready(None) => this.observer.finish(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Records the caller's tenant and project on the current call's span.
pub fn record_scope(tenant: &str, project: &str) {
    let span = tracing::Span::current();
    span.record("tenant", tenant);
    span.record("project", project);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_request_ids_are_kept_only_when_printable_and_short() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("job-42/step-3"));
        assert_eq!(request_id_of(&headers), "job-42/step-3");
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        assert_ne!(request_id_of(&headers), "has space");
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_str(&long).unwrap());
        assert_ne!(request_id_of(&headers), long);
        assert_eq!(request_id_of(&HeaderMap::new()).len(), 36, "a generated UUID");
    }
}
