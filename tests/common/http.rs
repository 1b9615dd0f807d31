//! A plain HTTP/1.1 client, as a browser or a CDN would fetch download links.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::HeaderMap;

pub struct Fetched {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One HTTP/1.1 request with a plain client, as a browser or a CDN would make it.
pub async fn fetch(method: &str, url: &str, headers: &[(&str, &str)]) -> Fetched {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(http_body_util::Empty::new()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the whole body")
        .to_bytes();
    Fetched {
        status,
        headers,
        body,
    }
}
