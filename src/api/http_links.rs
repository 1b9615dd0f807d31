//! Download links on the HTTP listener: GET and HEAD of one version by a signed link, with
//! byte ranges, a strong entity tag and conditional requests, so that browsers and CDNs can
//! serve artifacts without gRPC. The link is the credential: it was issued by
//! `CreateDownloadLink` to a caller who could read the artifact.

use crate::app::{Artifacts, etag_of};
use crate::domain::delivery::{
    Answer, Conditions, Disposition, LINK_PREFIX, LinkRefusal, Representation, answer, content_disposition,
    served_content_type, verify_link,
};
use crate::domain::{Error, now_micros};
use crate::telemetry::names;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use futures::StreamExt;
use std::time::{Duration, UNIX_EPOCH};
use tower_http::cors::{Any, CorsLayer};

/// The routes of download links, to merge into the HTTP listener's router.
pub fn routes(artifacts: Artifacts) -> axum::Router {
    axum::Router::new()
        .route(
            &format!("{LINK_PREFIX}/{{tenant}}/{{project}}/{{artifact_id}}/{{version}}"),
            axum::routing::get(serve),
        )
        .layer(cross_origin())
        .with_state(artifacts)
}

/// Scripts on any origin may read what a link serves: the link itself is the credential (no
/// cookie or header is ever needed, so credentialed requests are not allowed). A preflight
/// is answered for the range and conditional headers a reader sends, and a script may read
/// the headers it needs to resume, validate and name a download.
fn cross_origin() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::HEAD])
        .allow_headers([
            header::RANGE,
            header::IF_RANGE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_UNMODIFIED_SINCE,
        ])
        .expose_headers([
            header::ETAG,
            header::CONTENT_RANGE,
            header::CONTENT_DISPOSITION,
            header::ACCEPT_RANGES,
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(24 * 3600))
        // Every answer is the same whatever the origin or the preflight asked: no `Vary`,
        // which would keep CDNs from caching the content or split it per origin.
        .vary(Vec::<header::HeaderName>::new())
}

type Segments = (String, String, String, String);

/// Refusals logged a second at most. Anyone can send links that were never issued, and each
/// would otherwise write a line to the log; the rest are counted in
/// `artifactd_http_downloads_total{status="403"}` as every refusal is, and the next line
/// logged says how many were left out (`suppressed`).
const REFUSALS_LOGGED_PER_SECOND: u32 = 10;

struct RefusalLog {
    second: Option<std::time::Instant>,
    logged: u32,
    suppressed: u64,
}

static REFUSAL_LOG: std::sync::Mutex<RefusalLog> = std::sync::Mutex::new(RefusalLog {
    second: None,
    logged: 0,
    suppressed: 0,
});

/// Whether a refusal may be logged now, with how many were not since the last one that was.
fn refusal_logged() -> Option<u64> {
    let mut log = REFUSAL_LOG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let now = std::time::Instant::now();
    if log
        .second
        .is_none_or(|second| now.duration_since(second) >= Duration::from_secs(1))
    {
        log.second = Some(now);
        log.logged = 0;
    }
    if log.logged < REFUSALS_LOGGED_PER_SECOND {
        log.logged += 1;
        Some(std::mem::take(&mut log.suppressed))
    } else {
        log.suppressed += 1;
        None
    }
}

/// What a refused link is told, whatever was wrong with it but its age.
const NOT_VALID: &str = "this download link is not valid; ask for a new one";

async fn serve(
    State(artifacts): State<Artifacts>,
    segments: Result<Path<Segments>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let response = answer_link(&artifacts, segments, &method, &uri, &headers).await;
    metrics::counter!(names::HTTP_DOWNLOADS_TOTAL, "status" => response.status().as_str().to_owned())
        .increment(1);
    response
}

async fn answer_link(
    artifacts: &Artifacts,
    segments: Result<Path<Segments>, PathRejection>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let now = now_micros() / 1_000_000;
    let query = uri.query().unwrap_or_default();
    // A path that does not decode (percent-encoded bytes that are not UTF-8) was never
    // issued: refused like any other link that was tampered with.
    let Ok(Path((tenant, project, artifact_id, version))) = segments else {
        if let Some(suppressed) = refusal_logged() {
            tracing::info!(path = ?uri.path(), suppressed, "download link refused: its path does not decode");
        }
        return plain(StatusCode::FORBIDDEN, NOT_VALID);
    };
    match verify_link(
        &artifacts.link_keys(),
        &tenant,
        &project,
        &artifact_id,
        &version,
        query,
        now,
    ) {
        Err(refusal) => {
            // The reason, never the signature: the query is not logged.
            // Debug-formatted: the segments are whatever the requester sent.
            if let Some(suppressed) = refusal_logged() {
                tracing::info!(?tenant, ?project, ?artifact_id, ?version, reason = %refusal, suppressed, "download link refused");
            }
            let message = match refusal {
                LinkRefusal::Expired { .. } => "this download link has expired; ask for a new one",
                LinkRefusal::Malformed(_) | LinkRefusal::BadSignature => NOT_VALID,
            };
            plain(StatusCode::FORBIDDEN, message)
        }
        Ok(grant) => match deliver(artifacts, &grant, method, headers, now).await {
            Ok(response) => response,
            Err(error) => {
                tracing::info!(?tenant, ?project, ?artifact_id, ?version, %error, "download link could not be served");
                error_response(&error)
            }
        },
    }
}

async fn deliver(
    artifacts: &Artifacts,
    grant: &crate::domain::delivery::DownloadGrant,
    method: &Method,
    headers: &HeaderMap,
    now: i64,
) -> crate::domain::Result<Response> {
    let mut plan = artifacts.open_link(grant).await?;
    let version = &plan.version;
    let representation = Representation {
        size: version.size,
        etag: etag_of(&version.blake3),
        last_modified: version.created_at.as_micros().div_euclid(1_000_000),
    };
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let date = |name: header::HeaderName| text(name).and_then(http_date_seconds);
    // A list field sent on several lines is one list (RFC 9110 §5.3), as proxies may split it.
    let if_match = list(headers, &header::IF_MATCH);
    let if_none_match = list(headers, &header::IF_NONE_MATCH);
    // Range (and so If-Range) means something for GET only (RFC 9110 §14.2): a HEAD is
    // answered as the GET without a Range would be.
    let get = *method == Method::GET;
    let if_range = text(header::IF_RANGE).filter(|_| get);
    let conditions = Conditions {
        if_match: if_match.as_deref(),
        if_none_match: if_none_match.as_deref(),
        if_modified_since: date(header::IF_MODIFIED_SINCE),
        if_unmodified_since: date(header::IF_UNMODIFIED_SINCE),
        if_range,
        if_range_date: if_range.and_then(http_date_seconds),
        range: text(header::RANGE).filter(|_| get),
    };
    let decided = answer(&representation, &conditions);
    let mut response = Response::builder()
        .header(header::ETAG, &representation.etag)
        .header(
            header::LAST_MODIFIED,
            httpdate::fmt_http_date(
                UNIX_EPOCH + Duration::from_secs(representation.last_modified.max(0) as u64),
            ),
        )
        .header(header::ACCEPT_RANGES, "bytes")
        // Stored content is whatever was uploaded: a browser must neither guess another
        // type nor run it with this origin's rights (an inline HTML or SVG upload). A PDF
        // shown inline is exempt: browsers' PDF viewers refuse sandboxed documents, and
        // they run a PDF's scripts in a sandbox of their own.
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if !(grant.disposition == Disposition::Inline && is_pdf(&version.content_type)) {
        response = response.header(header::CONTENT_SECURITY_POLICY, "sandbox");
    }
    // The link serves one version for its whole life: caches may keep what it serves until
    // the link expires, never longer; refusals of a request's conditions are not kept (a
    // cache keyed by the URL would hand them to requests without those conditions).
    let cacheable = format!("public, max-age={}, immutable", (grant.expires - now).max(0));
    let range = match decided {
        Answer::NotModified => {
            // The length a 200 would have: without it, an empty 304 to a HEAD would say 0
            // (RFC 9110 §8.6 allows only the 200's length).
            return Ok(response
                .status(StatusCode::NOT_MODIFIED)
                .header(header::CACHE_CONTROL, cacheable)
                .header(header::CONTENT_LENGTH, representation.size)
                .body(Body::empty())
                .expect("a valid response"));
        }
        Answer::PreconditionFailed => {
            return Ok(response
                .status(StatusCode::PRECONDITION_FAILED)
                .header(header::CACHE_CONTROL, "no-store")
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::from(
                    "the version's entity tag or date does not meet the request's precondition",
                ))
                .expect("a valid response"));
        }
        Answer::Unsatisfiable(reason) => {
            return Ok(response
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CACHE_CONTROL, "no-store")
                .header(header::CONTENT_RANGE, format!("bytes */{}", representation.size))
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::from(reason))
                .expect("a valid response"));
        }
        Answer::Whole => {
            response = response.status(StatusCode::OK);
            0..representation.size
        }
        Answer::Part(range) => {
            response = response.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", range.start, range.end - 1, representation.size),
            );
            range
        }
    };
    let content_type = HeaderValue::from_str(&served_content_type(
        &version.content_type,
        version.extracted.is_text,
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    let disposition = HeaderValue::from_str(&content_disposition(grant.disposition, &plan.artifact.name))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    response = response
        .header(header::CACHE_CONTROL, cacheable)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_DISPOSITION, disposition)
        .header(header::CONTENT_LENGTH, range.end - range.start);
    if *method == Method::HEAD || range.is_empty() {
        return Ok(response.body(Body::empty()).expect("a valid response"));
    }
    plan.offset = range.start;
    plan.length = range.end - range.start;
    let content = artifacts.download(&plan).await?;
    artifacts
        .note_read(plan.artifact.id.as_str(), &plan.version.version)
        .await;
    let artifact_id = plan.artifact.id.to_string();
    // A failure after the headers went out can only cut the body short: the client sees
    // fewer bytes than Content-Length said, and the connection is closed.
    let body = content.map(move |piece| {
        piece.map_err(|error| {
            tracing::warn!(%artifact_id, %error, "a download by link failed part-way");
            std::io::Error::other(error.to_string())
        })
    });
    Ok(response.body(Body::from_stream(body)).expect("a valid response"))
}

/// Whether a media type is PDF, whatever its parameters and case.
fn is_pdf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/pdf"))
}

/// Every line of a list field, joined into one list; `None` when none was sent (a line that
/// is not visible ASCII is left out).
fn list(headers: &HeaderMap, name: &header::HeaderName) -> Option<String> {
    let lines: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

fn http_date_seconds(text: &str) -> Option<i64> {
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

fn plain(status: StatusCode, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(message.to_owned()))
        .expect("a valid response")
}

/// The HTTP answer to a failure, with the message a gRPC caller would get.
fn error_response(error: &Error) -> Response {
    let status = match error {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
        Error::FailedPrecondition(_) | Error::AlreadyExists(_) | Error::Aborted(_) => StatusCode::CONFLICT,
        Error::OutOfRange(_) => StatusCode::RANGE_NOT_SATISFIABLE,
        Error::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Unauthenticated(_) | Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::Cancelled(_) | Error::DataLoss(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = plain(status, &error.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
