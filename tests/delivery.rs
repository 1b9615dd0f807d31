//! Delivery over real connections: download messages sized for the transport, and download
//! links served over HTTP to a plain client (ranges, entity tags, conditional requests,
//! refusals), across replicas and installations.

mod common;

use artifactd::proto::{CreateDownloadLinkRequest, DownloadArtifactRequest, download_artifact_response};
use common::binary::{ServerOptions, ServerProcess};
use common::client::{
    Client, assert_status, create_id, download, download_request, header, update, update_header,
};
use common::http::fetch;
use common::noise;
use hyper::header::{self, HeaderMap};
use std::time::Duration;
use tonic::Code;

const T: &str = "acme";
const P: &str = "delivery";

/// The next minor version of an artifact, with `content`.
async fn bump(client: &mut Client, id: &str, content: &[u8]) {
    let mut next = update_header(T, P, id);
    next.next_version = Some(artifactd::proto::update_artifact_header::NextVersion::Bump(
        artifactd::proto::BumpKind::Minor as i32,
    ));
    update(client, next, content).await.expect("a new version");
}

fn text(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(&name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

/// The `max-age` of a Cache-Control value, in seconds.
fn max_age_of(cache_control: &str) -> u64 {
    cache_control
        .split(", ")
        .find_map(|part| part.strip_prefix("max-age="))
        .unwrap_or_else(|| panic!("no max-age in {cache_control:?}"))
        .parse()
        .unwrap()
}

async fn link(
    client: &mut Client,
    id: &str,
    version: &str,
    ttl_seconds: u32,
) -> Result<artifactd::proto::CreateDownloadLinkResponse, tonic::Status> {
    client
        .create_download_link(CreateDownloadLinkRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: id.into(),
            version: version.into(),
            ttl_seconds,
            inline: false,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_messages_are_sized_for_the_transport_not_the_chunks() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let content = noise(5 * 1024 * 1024 + 12_345, 71);
    let id = create_id(&mut client, header(T, P, "bundle", "big.bin"), &content).await;
    for (offset, length) in [(0u64, 0u64), (17, 3 * 1024 * 1024 + 5), (4 * 1024 * 1024 + 1, 0)] {
        let mut request = download_request(T, P, &id, "");
        request.offset = offset;
        request.length = length;
        let mut stream = client.download_artifact(request).await.unwrap().into_inner();
        let mut sizes = Vec::new();
        let mut received = Vec::new();
        while let Some(message) = stream.message().await.unwrap() {
            if let Some(download_artifact_response::Message::Data(data)) = message.message {
                sizes.push(data.len());
                received.extend_from_slice(&data);
            }
        }
        let end = if length == 0 {
            content.len()
        } else {
            (offset + length) as usize
        };
        assert!(
            received == content[offset as usize..end],
            "bytes {offset}+{length} differ"
        );
        let (last, rest) = sizes.split_last().unwrap();
        // Messages of 124-248 KiB: under the server allocator's 256 KiB mmap threshold.
        assert!(
            rest.iter().all(|n| (124 * 1024..=248 * 1024).contains(n)),
            "message sizes {sizes:?}"
        );
        assert!(*last <= 248 * 1024, "{sizes:?}");
    }
    // A small file is one message.
    let id = create_id(&mut client, header(T, P, "doc", "small.md"), b"# small\n").await;
    let (_, body) = download(&mut client, download_request(T, P, &id, ""))
        .await
        .unwrap();
    assert_eq!(body, b"# small\n");
}

/// Content whose chunks alternate between stored as they are (noise) and compressed (text),
/// so that one read of a pack holds both kinds.
fn mixed_content(seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut next = move |bound: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % bound
    };
    let mut content = Vec::new();
    let mut part = 0u64;
    while content.len() < 3 * 1024 * 1024 {
        let len = 20_000 + next(130_000) as usize;
        if part.is_multiple_of(2) {
            content.extend_from_slice(&noise(len, seed * 1000 + part));
        } else {
            let mut text = String::new();
            let mut line = 0;
            while text.len() < len {
                text.push_str(&format!("line {line} of part {part}: the quick brown fox\n"));
                line += 1;
            }
            content.extend_from_slice(&text.as_bytes()[..len]);
        }
        part += 1;
    }
    content
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_content_reads_back_exactly_at_any_range_sealed_or_not() {
    let content = mixed_content(5);
    for sealed in [false, true] {
        // No chunk cache: every read decodes what it reads from the store.
        let mut options = ServerOptions::default().env("ARTIFACTD_DELIVERY__CACHE_MEMORY_BYTES", "0");
        if sealed {
            options = options.env("ARTIFACTD_ENCRYPTION__MASTER_KEY", "42".repeat(32));
        }
        let server = ServerProcess::start_with(options);
        let mut client = server.client().await;
        let id = create_id(&mut client, header(T, P, "bundle", "mixed.bin"), &content).await;
        let (_, whole) = download(&mut client, download_request(T, P, &id, ""))
            .await
            .unwrap();
        assert!(whole == content, "sealed {sealed}: the whole content differs");
        let mut state = 11u64;
        for _ in 0..24 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let offset = (state >> 20) % content.len() as u64;
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let length = (1 + (state >> 20) % 400_000).min(content.len() as u64 - offset);
            let mut request = download_request(T, P, &id, "");
            request.offset = offset;
            request.length = length;
            let (_, part) = download(&mut client, request).await.unwrap();
            let end = (offset + length) as usize;
            assert!(
                part == content[offset as usize..end],
                "sealed {sealed}: bytes {offset}+{length} differ"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_serves_its_version_with_ranges_and_conditions() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let content = noise(3 * 1024 * 1024 + 777, 72);
    let name = "release notes ü.bin";
    let id = create_id(&mut client, header(T, P, "bundle", name), &content).await;
    let issued = link(&mut client, &id, "", 600).await.unwrap();
    assert!(
        issued
            .url
            .starts_with(&format!("http://{}/v1/download/acme/delivery/{id}/", server.http)),
        "{}",
        issued.url
    );
    assert_eq!(issued.size, content.len() as u64);
    let etag = format!("\"{}\"", blake3::hash(&content).to_hex());
    assert_eq!(issued.etag, etag);

    let whole = fetch("GET", &issued.url, &[]).await;
    assert_eq!(whole.status, 200);
    assert!(whole.body == content, "the body is the content");
    assert_eq!(text(&whole.headers, header::ETAG), etag);
    assert_eq!(
        text(&whole.headers, header::CONTENT_LENGTH),
        content.len().to_string()
    );
    assert_eq!(text(&whole.headers, header::ACCEPT_RANGES), "bytes");
    assert_eq!(
        text(&whole.headers, header::CONTENT_TYPE),
        "application/octet-stream"
    );
    assert_eq!(
        text(&whole.headers, header::CONTENT_DISPOSITION),
        "attachment; filename=\"release notes _.bin\"; filename*=UTF-8''release%20notes%20%C3%BC.bin"
    );
    let cache_control = text(&whole.headers, header::CACHE_CONTROL);
    let max_age = max_age_of(cache_control);
    assert!(
        cache_control.contains("immutable") && (590..=601).contains(&max_age),
        "{cache_control}"
    );
    assert!(whole.headers.contains_key(header::LAST_MODIFIED));
    // Uploaded content never runs with this origin's rights in a browser.
    assert_eq!(text(&whole.headers, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(text(&whole.headers, header::CONTENT_SECURITY_POLICY), "sandbox");

    let size = content.len();
    for (range, expected, content_range) in [
        ("bytes=100-199", 100..200, format!("bytes 100-199/{size}")),
        (
            "bytes=-1000",
            size - 1000..size,
            format!("bytes {}-{}/{size}", size - 1000, size - 1),
        ),
        (
            "bytes=3000000-",
            3_000_000..size,
            format!("bytes 3000000-{}/{size}", size - 1),
        ),
        ("bytes=5-5", 5..6, format!("bytes 5-5/{size}")),
        // Units are case-insensitive.
        ("Bytes=10-19", 10..20, format!("bytes 10-19/{size}")),
        // A suffix longer than the content is all of it (RFC 9110 §14.1.3).
        ("bytes=-99999999", 0..size, format!("bytes 0-{}/{size}", size - 1)),
    ] {
        let part = fetch("GET", &issued.url, &[("range", range)]).await;
        assert_eq!(part.status, 206, "{range}");
        assert_eq!(
            text(&part.headers, header::CONTENT_RANGE),
            content_range,
            "{range}"
        );
        assert!(
            part.body == content[expected.clone()],
            "{range}: the bytes differ"
        );
        assert_eq!(
            text(&part.headers, header::CONTENT_LENGTH),
            expected.len().to_string()
        );
    }
    for range in [
        format!("bytes={size}-"),
        "bytes=9999999-99999999".to_owned(),
        "bytes=abc".to_owned(),
        "bytes=9-3".to_owned(),
    ] {
        let refused = fetch("GET", &issued.url, &[("range", &range)]).await;
        assert_eq!(refused.status, 416, "{range}");
        assert_eq!(
            text(&refused.headers, header::CONTENT_RANGE),
            format!("bytes */{size}")
        );
        assert!(
            String::from_utf8_lossy(&refused.body).contains(&range),
            "{range}: {:?}",
            refused.body
        );
        // A cache keyed by the URL must not hand this refusal to other requests.
        assert_eq!(text(&refused.headers, header::CACHE_CONTROL), "no-store");
    }

    let unchanged = fetch("GET", &issued.url, &[("if-none-match", &etag)]).await;
    assert_eq!(unchanged.status, 304);
    assert!(unchanged.body.is_empty());
    assert_eq!(text(&unchanged.headers, header::ETAG), etag);
    // The same policy, for what is left of the link's life (a second may have passed).
    let revalidated = text(&unchanged.headers, header::CACHE_CONTROL);
    assert!(
        revalidated.starts_with("public, max-age=")
            && revalidated.ends_with(", immutable")
            && (max_age - 30..=max_age).contains(&max_age_of(revalidated)),
        "{revalidated} after {cache_control}"
    );
    let stale_range = fetch(
        "GET",
        &issued.url,
        &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!(stale_range.status, 200);
    assert_eq!(stale_range.body.len(), size);
    let fresh_range = fetch("GET", &issued.url, &[("range", "bytes=0-9"), ("if-range", &etag)]).await;
    assert_eq!(fresh_range.status, 206);
    let precondition = fetch("GET", &issued.url, &[("if-match", "\"old\"")]).await;
    assert_eq!(precondition.status, 412);
    assert_eq!(text(&precondition.headers, header::CACHE_CONTROL), "no-store");
    // A list sent on two lines is one list (RFC 9110 §5.3): the tag on the second counts.
    let split_match = fetch(
        "GET",
        &issued.url,
        &[("if-match", "\"old\""), ("if-match", &etag)],
    )
    .await;
    assert_eq!(split_match.status, 200);
    let split_none_match = fetch(
        "GET",
        &issued.url,
        &[("if-none-match", "\"old\""), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(split_none_match.status, 304);
    // A 304 carries no length but the one a 200 would (RFC 9110 §8.6), for GET and HEAD.
    for method in ["GET", "HEAD"] {
        let revalidated = fetch(method, &issued.url, &[("if-none-match", &format!("W/{etag}"))]).await;
        assert_eq!(revalidated.status, 304, "{method}");
        assert!(
            revalidated
                .headers
                .get(header::CONTENT_LENGTH)
                .is_none_or(|length| length.to_str().unwrap() == size.to_string()),
            "{method}: {:?}",
            revalidated.headers.get(header::CONTENT_LENGTH)
        );
    }

    let head = fetch("HEAD", &issued.url, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(text(&head.headers, header::CONTENT_LENGTH), size.to_string());
    // Range applies to GET only: a HEAD with one describes the whole.
    let head_range = fetch("HEAD", &issued.url, &[("range", "bytes=0-9")]).await;
    assert_eq!(head_range.status, 200);
    assert_eq!(
        text(&head_range.headers, header::CONTENT_LENGTH),
        size.to_string()
    );
    assert!(!head_range.headers.contains_key(header::CONTENT_RANGE));

    // The link names a version: a new version does not change what it serves.
    let v1 = issued.version.clone();
    bump(&mut client, &id, b"the second version").await;
    let still = fetch("GET", &issued.url, &[]).await;
    assert!(
        still.status == 200 && still.body == content,
        "the link serves {v1}"
    );
    let latest = link(&mut client, &id, "", 0).await.unwrap();
    assert_ne!(latest.version, v1);
    assert_eq!(
        fetch("GET", &latest.url, &[]).await.body,
        &b"the second version"[..]
    );
    // The default lifetime applies when none is asked for.
    let expires = latest.expires_at.unwrap().seconds;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((3590..=3601).contains(&(expires - now)), "{}", expires - now);

    // Empty content: 200 with nothing; a range from a position is unsatisfiable, a suffix
    // is the (empty) whole.
    let empty_id = create_id(&mut client, header(T, P, "doc", "empty.md"), b"").await;
    let empty = link(&mut client, &empty_id, "", 60).await.unwrap();
    let got = fetch("GET", &empty.url, &[]).await;
    assert!(got.status == 200 && got.body.is_empty());
    assert_eq!(
        fetch("GET", &empty.url, &[("range", "bytes=0-")]).await.status,
        416
    );
    let suffix = fetch("GET", &empty.url, &[("range", "bytes=-5")]).await;
    assert!(
        suffix.status == 200 && suffix.body.is_empty(),
        "{}",
        suffix.status
    );

    // Deleting the artifact ends what its links serve.
    client
        .delete_artifact(artifactd::proto::DeleteArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(fetch("GET", &issued.url, &[]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_links_show_content_sandboxed_except_pdf() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let mut sandboxed = Vec::new();
    for (name, content) in [
        ("page.html", &b"<html><script>alert(1)</script></html>"[..]),
        ("notes.md", &b"# notes"[..]),
        ("spec.pdf", &b"%PDF-1.7\n1 0 obj <<>> endobj\n%%EOF\n"[..]),
        // Named as a page, but it is a PDF: served as one, never as HTML.
        (
            "trick.html",
            &b"%PDF-1.7\n<html><script>alert(1)</script></html>"[..],
        ),
    ] {
        let id = create_id(&mut client, header(T, P, "doc", name), content).await;
        let issue = |inline: bool| CreateDownloadLinkRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: id.clone(),
            version: String::new(),
            ttl_seconds: 60,
            inline,
        };
        for inline in [true, false] {
            let issued = client
                .create_download_link(issue(inline))
                .await
                .unwrap()
                .into_inner();
            let got = fetch("GET", &issued.url, &[]).await;
            assert_eq!(got.status, 200, "{name}");
            assert!(got.body == content, "{name}");
            assert_eq!(text(&got.headers, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            if !inline {
                // Saved rather than shown, everything stays sandboxed.
                assert_eq!(text(&got.headers, header::CONTENT_SECURITY_POLICY), "sandbox");
                continue;
            }
            assert!(
                text(&got.headers, header::CONTENT_DISPOSITION).starts_with("inline; "),
                "{name}"
            );
            if got.headers.get(header::CONTENT_SECURITY_POLICY).is_some() {
                assert_eq!(text(&got.headers, header::CONTENT_SECURITY_POLICY), "sandbox");
                sandboxed.push(name);
            } else {
                assert_eq!(
                    text(&got.headers, header::CONTENT_TYPE),
                    "application/pdf",
                    "{name}"
                );
            }
        }
    }
    // Browsers' PDF viewers refuse sandboxed documents; everything else stays sandboxed.
    assert_eq!(sandboxed, ["page.html", "notes.md"]);
}

/// Text found to be UTF-8 on upload is served with its charset, so a browser shows a
/// document's dashes and accents as they were written; other text is left to the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_text_is_served_with_its_charset() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    for (name, content, served) in [
        (
            "prd.md",
            "# PRD — café ✓\n".as_bytes(),
            "text/markdown; charset=utf-8",
        ),
        ("notes.txt", &b"plain ascii"[..], "text/plain; charset=utf-8"),
        ("latin1.txt", &b"caf\xe9 au lait"[..], "text/plain"),
        ("data.json", &b"{\"k\": \"\xc3\xa9\"}"[..], "application/json"),
    ] {
        let id = create_id(&mut client, header(T, P, "doc", name), content).await;
        let issued = link(&mut client, &id, "", 60).await.unwrap();
        for method in ["GET", "HEAD"] {
            let got = fetch(method, &issued.url, &[]).await;
            assert_eq!(got.status, 200, "{name}");
            assert_eq!(
                text(&got.headers, header::CONTENT_TYPE),
                served,
                "{method} {name}"
            );
        }
    }
}

/// A version number names other content only after the catalog went back to before the
/// version was made (a restore with overwrite puts it in the trash; purged, the number is
/// free again): a link made for the old content must not serve the new under `immutable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_never_serves_other_content_under_its_version_number() {
    use artifactd::proto::retention_service_client::RetentionServiceClient;
    use common::backup::{Backups, backup, from_backup, restore};
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let mut backups = Backups::new(server.channel().await);
    let mut retention = RetentionServiceClient::new(server.channel().await);
    let id = create_id(&mut client, header(T, P, "doc", "plan.md"), b"the first plan").await;
    let taken = backup(&mut backups, T, P, "").await.unwrap();
    bump(&mut client, &id, b"the plan the link was made for").await;
    let issued = link(&mut client, &id, "", 600).await.unwrap();
    assert_eq!(
        fetch("GET", &issued.url, &[]).await.body,
        &b"the plan the link was made for"[..]
    );

    let mut back = from_backup(T, P, &taken.id);
    back.overwrite = true;
    back.target = Some(artifactd::proto::RestoreTarget {
        target: Some(artifactd::proto::restore_target::Target::SamePlace(true)),
    });
    restore(&mut backups, back).await.unwrap();
    assert_eq!(
        fetch("GET", &issued.url, &[]).await.status,
        404,
        "the version is in the trash"
    );
    retention
        .purge_trash(artifactd::proto::PurgeTrashRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: id.clone(),
            version: issued.version.clone(),
        })
        .await
        .unwrap();
    let mut again = update_header(T, P, &id);
    again.next_version =
        Some(artifactd::proto::update_artifact_header::NextVersion::ExplicitVersion(issued.version.clone()));
    update(&mut client, again, b"another plan under the same number")
        .await
        .expect("the number is free again");

    let refused = fetch("GET", &issued.url, &[]).await;
    assert_eq!(refused.status, 404);
    assert!(
        String::from_utf8_lossy(&refused.body).contains("holds other content now"),
        "{:?}",
        String::from_utf8_lossy(&refused.body)
    );
    let fresh = link(&mut client, &id, &issued.version, 600).await.unwrap();
    assert_ne!(fresh.url, issued.url);
    assert_eq!(
        fetch("GET", &fresh.url, &[]).await.body,
        &b"another plan under the same number"[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_refuse_what_they_do_not_grant() {
    let server = ServerProcess::start_with(
        ServerOptions::default().env("ARTIFACTD_DELIVERY__LINK_MAX_TTL_SECONDS", "86400"),
    );
    let mut client = server.client().await;
    let id = create_id(&mut client, header(T, P, "doc", "secret.md"), b"v1 content").await;
    let v1 = link(&mut client, &id, "", 600).await.unwrap();
    bump(&mut client, &id, b"v2 content").await;
    let v2 = link(&mut client, &id, "", 600).await.unwrap();
    assert_eq!(fetch("GET", &v1.url, &[]).await.body, &b"v1 content"[..]);

    let (v1_path, v1_query) = v1.url.split_once('?').unwrap();
    let signature = v1_query
        .split('&')
        .find_map(|p| p.strip_prefix("signature="))
        .unwrap()
        .to_owned();
    let forgeries = [
        // v1's signature on v2's path, another tenant, another project.
        format!("{}?{v1_query}", v2.url.split_once('?').unwrap().0),
        format!("{}?{v1_query}", v1_path.replace("/acme/", "/globex/")),
        format!("{}?{v1_query}", v1_path.replace("/delivery/", "/other/")),
        // A longer life, another disposition, a flipped signature digit, no signature.
        format!("{v1_path}?{}", v1_query.replace("expires=", "expires=9")),
        format!("{v1_path}?{}", v1_query.replace("attachment", "inline")),
        // v1's signature over v2's content hash.
        format!(
            "{v1_path}?{}",
            v1_query.replace(
                &format!("content={}", blake3::hash(b"v1 content").to_hex()),
                &format!("content={}", blake3::hash(b"v2 content").to_hex())
            )
        ),
        format!(
            "{v1_path}?{}",
            v1_query.replace(
                &signature,
                &format!(
                    "{}{}",
                    if signature.starts_with('0') { "1" } else { "0" },
                    &signature[1..]
                )
            )
        ),
        format!("{v1_path}?{}", v1_query.split("&signature").next().unwrap()),
        v1_path.to_owned(),
        // A path that does not decode to text.
        format!("{}?{v1_query}", v1_path.replace("/acme/", "/acme%FF/")),
    ];
    for forged in &forgeries {
        let refused = fetch("GET", forged, &[]).await;
        assert_eq!(refused.status, 403, "{forged}");
        assert_eq!(
            String::from_utf8_lossy(&refused.body),
            "this download link is not valid; ask for a new one"
        );
    }

    // Another installation's link, on this server: its key is not this server's.
    let other = ServerProcess::start();
    let mut other_client = other.client().await;
    let their_id = create_id(&mut other_client, header(T, P, "doc", "theirs.md"), b"theirs").await;
    let theirs = link(&mut other_client, &their_id, "", 600).await.unwrap();
    let on_ours = theirs
        .url
        .replace(&other.http.to_string(), &server.http.to_string());
    assert_eq!(fetch("GET", &on_ours, &[]).await.status, 403);

    // An expired link.
    let short = link(&mut client, &id, "", 1).await.unwrap();
    assert_eq!(fetch("GET", &short.url, &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = fetch("GET", &short.url, &[]).await;
    assert_eq!(expired.status, 403);
    assert_eq!(
        String::from_utf8_lossy(&expired.body),
        "this download link has expired; ask for a new one"
    );

    // Issuing: lifetimes beyond the server's limit, unknown artifacts and versions.
    assert_status(
        link(&mut client, &id, "", 86_401).await,
        Code::InvalidArgument,
        &["ttl_seconds", "86400"],
    );
    assert_status(
        link(&mut client, &id, "9.9.9", 60).await,
        Code::NotFound,
        &["9.9.9"],
    );
    assert_status(
        link(&mut client, "0190c0de-0000-7000-8000-000000000001", "", 60).await,
        Code::NotFound,
        &[],
    );
    assert_status(
        link(&mut client, "not-an-id", "", 60).await,
        Code::InvalidArgument,
        &["artifact_id"],
    );

    // Nothing that would let someone else use a link reaches the log.
    let log = server.log();
    for url in [&v1.url, &v2.url, &short.url] {
        let signature = url.split("signature=").nth(1).unwrap();
        assert!(!log.contains(signature), "a link's signature is in the log");
    }
    assert!(log.contains("download link refused"), "refusals are logged");
}

/// Anyone can send links that were never issued: a flood of them writes a few log lines a
/// second, not one each, and the next line says how many were left out. Every one is
/// refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_links_writes_a_few_log_lines() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let id = create_id(&mut client, header(T, P, "doc", "flooded.md"), b"content").await;
    let issued = link(&mut client, &id, "", 600).await.unwrap();
    let forged = issued.url.replace("expires=", "expires=9");
    let started = std::time::Instant::now();
    for _ in 0..200 {
        assert_eq!(fetch("GET", &forged, &[]).await.status, 403);
    }
    let seconds = started.elapsed().as_secs() + 1;
    let lines = |log: &str| {
        log.lines()
            .filter(|line| line.contains("download link refused"))
            .count()
    };
    let logged = lines(&server.log());
    assert!(
        (1..=10 * seconds as usize).contains(&logged),
        "{logged} lines for 200 refusals in {seconds} s"
    );
    // A second later the next refusal is logged, with how many were not.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fetch("GET", &forged, &[]).await.status, 403);
    let log = server.log();
    assert_eq!(lines(&log), logged + 1);
    let last = log
        .lines()
        .rfind(|line| line.contains("download link refused"))
        .unwrap();
    let suppressed: u64 = last
        .split("suppressed=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of suppressed lines in {last}"));
    assert_eq!(suppressed as usize, 200 - logged, "{last}");
    assert_eq!(
        metric(&server, "artifactd_http_downloads_total{status=\"403\"}").await,
        201.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_one_configured_key_accept_each_others_links() {
    let key = "a link signing key shared by every replica, 48 chars";
    let with_key = |key: &str| ServerOptions::default().env("ARTIFACTD_DELIVERY__LINK_SIGNING_KEY", key);
    let a = ServerProcess::start_with(with_key(key));
    let b = ServerProcess::start_with(with_key(key));
    let c = ServerProcess::start_with(with_key("a different key, also long enough to be used ok"));
    let mut client = a.client().await;
    let id = create_id(&mut client, header(T, P, "doc", "shared.md"), b"shared").await;
    let issued = link(&mut client, &id, "", 600).await.unwrap();
    assert_eq!(fetch("GET", &issued.url, &[]).await.status, 200);
    // B accepts A's signature (these test servers do not share a catalog, so B then finds no
    // such artifact); C, with another key, refuses the link itself.
    let on = |server: &ServerProcess| issued.url.replace(&a.http.to_string(), &server.http.to_string());
    assert_eq!(fetch("GET", &on(&b), &[]).await.status, 404);
    assert_eq!(fetch("GET", &on(&c), &[]).await.status, 403);

    // A key too short to be a key is refused at start, naming the setting.
    let output = common::binary::command()
        .arg("serve")
        .env("ARTIFACTD_DATA_DIR", tempfile::tempdir().unwrap().path())
        .env("ARTIFACTD_DELIVERY__LINK_SIGNING_KEY", "short")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("delivery.link_signing_key") && stderr.contains("at least 32"),
        "{stderr}"
    );
}

async fn metric(server: &ServerProcess, name: &str) -> f64 {
    common::metric(server.http, name).await
}

/// Requests the server has made of its store for `operation`, whatever their outcome.
async fn store_operations(server: &ServerProcess, operation: &str) -> f64 {
    let label = format!("operation=\"{operation}\"");
    common::http_get(server.http, "/metrics")
        .await
        .lines()
        .filter(|line| line.starts_with("artifactd_store_operations_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum()
}

/// A download that needs a whole pack reads it with one request, not a range at a time:
/// S3 servers charge per request, and some read the whole object whatever the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_reads_each_pack_it_needs_whole_with_one_request() {
    let server = ServerProcess::start_with(
        ServerOptions::default().env("ARTIFACTD_DELIVERY__CACHE_MEMORY_BYTES", "0"),
    );
    let mut client = server.client().await;
    // Random content, stored as it is: packs of the 8 MiB target and a smaller last one.
    let content = noise(20 * 1024 * 1024 + 4321, 73);
    let puts = store_operations(&server, "put").await;
    let id = create_id(&mut client, header(T, P, "bundle", "packs.bin"), &content).await;
    let packs = store_operations(&server, "put").await - puts;
    assert!(packs >= 3.0, "the upload wrote {packs} packs");
    // Nothing else reads the store meanwhile (the indexer is done with the version).
    let mut gets = store_operations(&server, "get").await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = store_operations(&server, "get").await;
        if now == gets {
            break;
        }
        gets = now;
    }
    let (_, bytes) = download(&mut client, download_request(T, P, &id, ""))
        .await
        .unwrap();
    assert!(bytes == content, "the download returned different bytes");
    assert_eq!(
        store_operations(&server, "get").await - gets,
        packs,
        "one read per pack"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_downloads_are_served_from_the_chunk_cache() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let content = noise(2 * 1024 * 1024 + 99, 73);
    let id = create_id(&mut client, header(T, P, "bundle", "hot.bin"), &content).await;
    let hit_bytes = "artifactd_chunk_cache_hit_bytes_total";
    let (_, first) = download(&mut client, download_request(T, P, &id, ""))
        .await
        .unwrap();
    assert!(first == content);
    let before = metric(&server, hit_bytes).await;
    assert!(metric(&server, "artifactd_chunk_cache_misses_total").await > 0.0);
    let (_, second) = download(&mut client, download_request(T, P, &id, ""))
        .await
        .unwrap();
    assert!(second == content);
    let served = metric(&server, hit_bytes).await - before;
    assert_eq!(
        served,
        content.len() as f64,
        "the second download came from the cache"
    );

    // With the cache off, nothing is kept or served from memory.
    let uncached = ServerProcess::start_with(
        ServerOptions::default().env("ARTIFACTD_DELIVERY__CACHE_MEMORY_BYTES", "0"),
    );
    let mut client = uncached.client().await;
    let id = create_id(&mut client, header(T, P, "bundle", "cold.bin"), &content).await;
    for _ in 0..2 {
        let (_, read) = download(&mut client, download_request(T, P, &id, ""))
            .await
            .unwrap();
        assert!(read == content);
    }
    assert_eq!(metric(&uncached, hit_bytes).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_larger_than_the_cache_pass_through_it() {
    // A 1 MiB cache: a whole 3 MiB version does not fit, a 512 KiB range of it does.
    let server = ServerProcess::start_with(
        ServerOptions::default().env("ARTIFACTD_DELIVERY__CACHE_MEMORY_BYTES", (1u64 << 20).to_string()),
    );
    let mut client = server.client().await;
    let content = noise(3 * 1024 * 1024 + 5, 91);
    let id = create_id(&mut client, header(T, P, "bundle", "large.bin"), &content).await;
    let hit_bytes = "artifactd_chunk_cache_hit_bytes_total";
    for _ in 0..2 {
        let (_, read) = download(&mut client, download_request(T, P, &id, ""))
            .await
            .unwrap();
        assert!(read == content);
    }
    assert_eq!(
        metric(&server, "artifactd_chunk_cache_bypassed_reads_total").await,
        2.0
    );
    assert_eq!(
        metric(&server, hit_bytes).await,
        0.0,
        "nothing of the large reads was kept"
    );
    assert_eq!(common::cache_status(&server).await.memory_bytes, 0);

    let range = DownloadArtifactRequest {
        offset: 1024 * 1024,
        length: 512 * 1024,
        ..download_request(T, P, &id, "")
    };
    let wanted = &content[1024 * 1024..1536 * 1024];
    let (_, first) = download(&mut client, range.clone()).await.unwrap();
    assert!(first == wanted);
    assert!(
        common::cache_status(&server).await.memory_bytes > 0,
        "a small range is kept"
    );
    let (_, second) = download(&mut client, range).await.unwrap();
    assert!(second == wanted);
    assert_eq!(
        metric(&server, hit_bytes).await,
        wanted.len() as f64,
        "the range read again came from the cache"
    );
    assert_eq!(
        metric(&server, "artifactd_chunk_cache_bypassed_reads_total").await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_wait_for_small_memory_budgets_and_all_complete() {
    // Room for one pack and two read spans, and for received content less than one
    // message: eight uploads and then eight downloads at once must take turns. An upload
    // holding a part batch while another waits for received memory must pass the batch
    // on, or all of them would wait for each other.
    let server = std::sync::Arc::new(ServerProcess::start_with(
        ServerOptions::default()
            .env(
                "ARTIFACTD_INGEST__TRANSFER_MEMORY_BYTES",
                (16u64 << 20).to_string(),
            )
            .env("ARTIFACTD_INGEST__MAX_READ_SPAN_BYTES", (4u64 << 20).to_string())
            .env("ARTIFACTD_INGEST__RECEIVED_MEMORY_BYTES", "65536")
            .env("ARTIFACTD_DELIVERY__CACHE_MEMORY_BYTES", "0"),
    ));
    let streams = 8;
    let mut uploads = tokio::task::JoinSet::new();
    for n in 0..streams {
        let server = server.clone();
        uploads.spawn(async move {
            let mut client = server.client().await;
            let content = noise(6 * 1024 * 1024 + n * 1000, 200 + n as u64);
            let id = create_id(
                &mut client,
                header(T, P, "bundle", &format!("budget-{n}.bin")),
                &content,
            )
            .await;
            (id, content)
        });
    }
    let uploaded = uploads.join_all().await;
    let mut downloads = tokio::task::JoinSet::new();
    for (id, content) in uploaded {
        let server = server.clone();
        downloads.spawn(async move {
            let mut client = server.client().await;
            let (_, read) = download(&mut client, download_request(T, P, &id, ""))
                .await
                .unwrap();
            assert!(read == content, "artifact {id} came back different");
        });
    }
    downloads.join_all().await;
    assert!(
        metric(&server, "artifactd_transfer_memory_waits_total").await > 0.0,
        "the budget was never short, so this test proves nothing"
    );
    assert!(
        metric(&server, "artifactd_received_memory_waits_total").await > 0.0,
        "the received budget was never short, so this test proves nothing"
    );
    for reserved in [
        "artifactd_transfer_memory_reserved_bytes",
        "artifactd_received_memory_reserved_bytes",
    ] {
        assert_eq!(
            metric(&server, reserved).await,
            0.0,
            "{reserved}: everything reserved was given back"
        );
    }
    // Too small a budget to hold a pack and two spans, or a received budget under 64 KiB,
    // is refused at start.
    for (setting, name) in [
        (
            "ARTIFACTD_INGEST__TRANSFER_MEMORY_BYTES",
            "ingest.transfer_memory_bytes",
        ),
        (
            "ARTIFACTD_INGEST__RECEIVED_MEMORY_BYTES",
            "ingest.received_memory_bytes",
        ),
    ] {
        let output = common::binary::command()
            .arg("serve")
            .env("ARTIFACTD_DATA_DIR", tempfile::tempdir().unwrap().path())
            .env(setting, "1000")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(name), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_client_pauses_gives_its_received_memory_to_others() {
    // A received budget of one 64 KiB message. A's client sends part of its content and
    // pauses with its stream open; B, meanwhile, must get the memory A's cut content
    // held, and finish long before the 60 s a wait may last.
    let server = ServerProcess::start_with(
        ServerOptions::default().env("ARTIFACTD_INGEST__RECEIVED_MEMORY_BYTES", "65536"),
    );
    let first = noise(3 * 1024 * 1024, 301);
    let mut messages =
        common::client::create_messages(header(T, P, "bundle", "paused.bin"), &first, 64 * 1024);
    let rest = messages.split_off(5);
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    for message in messages {
        sender.send(message).await.unwrap();
    }
    let paused = tokio::spawn({
        let mut client = server.client().await;
        async move {
            client
                .create_artifact(tokio_stream::wrappers::ReceiverStream::new(receiver))
                .await
                .map(|response| response.into_inner().artifact.unwrap().id)
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let second = noise(2 * 1024 * 1024 + 17, 302);
    let started = std::time::Instant::now();
    let mut client = server.client().await;
    let second_id = create_id(&mut client, header(T, P, "bundle", "while-paused.bin"), &second).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the upload waited {:?} for memory a paused upload held",
        started.elapsed()
    );
    assert!(!paused.is_finished(), "the paused upload ended early");

    for message in rest {
        sender.send(message).await.unwrap();
    }
    drop(sender);
    let first_id = paused
        .await
        .unwrap()
        .expect("the paused upload completes once resumed");
    for (id, content) in [(first_id, first), (second_id, second)] {
        let (_, read) = download(&mut client, download_request(T, P, &id, ""))
            .await
            .unwrap();
        assert!(read == content, "{id} reads back different bytes");
    }
    assert_eq!(
        metric(&server, "artifactd_received_memory_reserved_bytes").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_that_stop_reading_are_ended_and_their_memory_goes_to_others() {
    // Room for one pack and two read spans, and readers that take nothing for 2 s are
    // ended. Stalled downloads hold the budget; a download that needs it can only finish
    // (well within the 60 s it would wait) once they are ended.
    let server = std::sync::Arc::new(ServerProcess::start_with(
        ServerOptions::default()
            .env(
                "ARTIFACTD_INGEST__TRANSFER_MEMORY_BYTES",
                (16u64 << 20).to_string(),
            )
            .env("ARTIFACTD_INGEST__MAX_READ_SPAN_BYTES", (4u64 << 20).to_string())
            .env("ARTIFACTD_INGEST__STALLED_DOWNLOAD_SECONDS", "2")
            .env("ARTIFACTD_DELIVERY__CACHE_MEMORY_BYTES", "0"),
    ));
    let size = 48 * 1024 * 1024;
    let content = noise(size, 77);
    let id = {
        let mut client = server.client().await;
        create_id(&mut client, header(T, P, "bundle", "stalled.bin"), &content).await
    };

    // Readers that take the header and one message, then nothing.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut client = server.client().await;
        let mut stream = client
            .download_artifact(download_request(T, P, &id, ""))
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().expect("a header");
        stream.message().await.unwrap().expect("a first data message");
        stalled.push((client, stream));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        metric(&server, "artifactd_transfer_memory_reserved_bytes").await > 0.0,
        "the stalled readers hold no memory, so this test proves nothing"
    );

    let started = std::time::Instant::now();
    let mut client = server.client().await;
    let (_, read) = download(&mut client, download_request(T, P, &id, ""))
        .await
        .expect("a reader that reads gets its download while others stall");
    assert!(read == content, "the download came back different");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "the download waited {:?}",
        started.elapsed()
    );
    assert!(metric(&server, "artifactd_downloads_stalled_total").await >= 1.0);

    // A stalled reader that comes back gets what was already sent, then UNAVAILABLE: never
    // a download that ends as if it were complete.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (_client, mut stream) in stalled {
        let mut received = 0;
        let ended = loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    if let Some(download_artifact_response::Message::Data(data)) = message.message {
                        received += data.len();
                    }
                }
                Ok(None) => break Ok(()),
                Err(status) => break Err(status),
            }
        };
        let status = ended.expect_err("a stalled download must not end as if complete");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("stalled_download_seconds"),
            "{status:?}"
        );
        assert!(received < size, "a stalled reader received everything");
    }
    assert_eq!(
        metric(&server, "artifactd_transfer_memory_reserved_bytes").await,
        0.0,
        "everything reserved was given back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_read_again_from_s3_come_from_the_disk_cache_and_a_broken_cache_only_costs_speed() {
    let s3 = common::s3::S3TestServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let cache_dir = data.path().join("cache");
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(s3.env("cached"))
            // The memory cache would answer repeated reads before the disk is asked.
            .env("ARTIFACTD_DELIVERY__CACHE_MEMORY_BYTES", "0")
            .env("ARTIFACTD_DELIVERY__CACHE_DIR", cache_dir.to_str().unwrap())
            .env("ARTIFACTD_INGEST__PACK_TARGET_BYTES", "262144"),
    );
    let mut client = server.client().await;
    let content = noise(1024 * 1024 + 5, 74);
    let id = create_id(&mut client, header(T, P, "bundle", "remote.bin"), &content).await;
    let read = |mut client: Client, id: String| async move {
        download(&mut client, download_request(T, P, &id, ""))
            .await
            .unwrap()
            .1
    };
    // Read once: nothing kept (one pass over the data is a scan). Read again: kept.
    assert!(read(client.clone(), id.clone()).await == content);
    assert_eq!(common::cache_status(&server).await.disk_bytes, 0);
    assert!(read(client.clone(), id.clone()).await == content);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while common::cache_status(&server).await.disk_bytes == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing reached the disk cache"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = common::cache_status(&server).await;
    assert!(read(client.clone(), id.clone()).await == content);
    let after = common::cache_status(&server).await;
    assert!(after.disk_hits > before.disk_hits, "{before:?} → {after:?}");
    assert_eq!(after.disk_capacity_bytes, 1 << 30);
    assert!(after.disk_problem.is_empty());

    // The directory turns into a file: copies fail, reads go on, and the status, the log
    // and the gauge say why.
    std::fs::remove_dir_all(&cache_dir).unwrap();
    std::fs::write(&cache_dir, b"in the way").unwrap();
    let other = noise(512 * 1024, 75);
    let other_id = create_id(&mut client, header(T, P, "bundle", "remote-2.bin"), &other).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(read(client.clone(), other_id.clone()).await == other);
        assert!(
            read(client.clone(), id.clone()).await == content,
            "cached copies that are gone are read from S3"
        );
        let status = common::cache_status(&server).await;
        if !status.disk_problem.is_empty() {
            // Whichever the cache met first: a cached copy it could not read, or a copy it
            // could not write.
            assert!(
                (status.disk_problem.contains("cannot read") || status.disk_problem.contains("cannot write"))
                    && status.disk_problem.contains(cache_dir.to_str().unwrap()),
                "{}",
                status.disk_problem
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broken cache was never reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&server, "artifactd_disk_cache_degraded").await, 1.0);
    assert!(server.log().contains("the disk cache cannot keep objects"));
    // Health says so for the cache alone: the server and its services still serve.
    use tonic_health::pb::health_check_response::ServingStatus;
    server
        .wait_for_health("disk-cache", ServingStatus::NotServing)
        .await;
    server.wait_for_health("", ServingStatus::Serving).await;
    server
        .wait_for_health("artifactd.v1.ArtifactService", ServingStatus::Serving)
        .await;
    // Until copies are tried again, content read again costs the store only its reads, not
    // whole copies that could not be kept.
    let third = noise(512 * 1024, 76);
    let third_id = create_id(&mut client, header(T, P, "bundle", "remote-3.bin"), &third).await;
    let gets = store_operations(&server, "get").await;
    assert!(read(client.clone(), third_id.clone()).await == third);
    let one_read = store_operations(&server, "get").await - gets;
    assert!(one_read >= 1.0);
    for _ in 0..2 {
        assert!(read(client.clone(), third_id.clone()).await == third);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store_operations(&server, "get").await - gets,
        3.0 * one_read,
        "three reads and no copies"
    );
    let _ = std::fs::remove_file(&cache_dir);

    // The embedded filesystem store has no disk cache: it is local already.
    let local = ServerProcess::start();
    assert_eq!(common::cache_status(&local).await.disk_capacity_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_read_in_order_warm_the_next_one() {
    for prefetch in [true, false] {
        let server = ServerProcess::start_with(
            ServerOptions::default().env("ARTIFACTD_DELIVERY__PREFETCH", prefetch.to_string()),
        );
        let mut client = server.client().await;
        let versions: Vec<Vec<u8>> = (0..3).map(|n| noise(700_000 + n * 1000, 80 + n as u64)).collect();
        let id = create_id(&mut client, header(T, P, "bundle", "series.bin"), &versions[0]).await;
        for content in &versions[1..] {
            bump(&mut client, &id, content).await;
        }
        let read = |client: &mut Client, version: &str| {
            let request = download_request(T, P, &id, version);
            let mut client = client.clone();
            async move { download(&mut client, request).await.unwrap().1 }
        };
        assert!(read(&mut client, "1.0.0").await == versions[0]);
        assert!(read(&mut client, "1.1.0").await == versions[1]);
        let warmed = "artifactd_prefetched_bytes_total";
        if prefetch {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while metric(&server, warmed).await < versions[2].len() as f64 {
                assert!(std::time::Instant::now() < deadline, "1.2.0 was never warmed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let hits = metric(&server, "artifactd_chunk_cache_hit_bytes_total").await;
            assert!(read(&mut client, "1.2.0").await == versions[2]);
            let served = metric(&server, "artifactd_chunk_cache_hit_bytes_total").await - hits;
            assert_eq!(served, versions[2].len() as f64, "1.2.0 came from the cache");
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(metric(&server, warmed).await, 0.0);
        }
        // Reading backwards or the same version again warms nothing new.
        let before = metric(&server, warmed).await;
        assert!(read(&mut client, "1.0.0").await == versions[0]);
        assert!(read(&mut client, "1.0.0").await == versions[0]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(metric(&server, warmed).await, before);
    }
}

/// Downloads the newest version as a workflow run does (with the run header).
async fn read_as_run(client: &mut Client, run_id: &str, id: &str) -> Vec<u8> {
    common::client::download_as_run(client, run_id, download_request(T, P, id, ""))
        .await
        .unwrap()
}

async fn a_run_reading_what_an_earlier_run_read_gets_its_next_inputs_warmed(postgres: bool) {
    for prefetch in [true, false] {
        let (server, _database) = common::binary::start_on_catalog_with(
            postgres,
            &[(
                "ARTIFACTD_DELIVERY__PREFETCH",
                if prefetch { "true" } else { "false" },
            )],
        )
        .await;
        let mut client = server.client().await;
        let mut ids = Vec::new();
        for (n, name) in ["brief.md", "prd.md", "architecture.md", "unrelated.md"]
            .iter()
            .enumerate()
        {
            let content = noise(500_000 + n * 1000, 300 + n as u64);
            ids.push(create_id(&mut client, header(T, P, "document", name), &content).await);
        }
        // An earlier run read the brief, then the PRD, then the architecture.
        for id in &ids[..3] {
            read_as_run(&mut client, "run-1", id).await;
        }
        // Since then the PRD and the architecture have changed.
        let newer: Vec<Vec<u8>> = (0..2)
            .map(|n| noise(520_000 + n * 1000, 400 + n as u64))
            .collect();
        bump(&mut client, &ids[1], &newer[0]).await;
        bump(&mut client, &ids[2], &newer[1]).await;
        let warmed = "artifactd_prefetched_bytes_total";
        let before = metric(&server, warmed).await;

        // The next run reads the brief: the newest PRD and architecture are warmed.
        read_as_run(&mut client, "run-2", &ids[0]).await;
        if prefetch {
            let expected = before + (newer[0].len() + newer[1].len()) as f64;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while metric(&server, warmed).await < expected {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the next inputs were never warmed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for (id, content) in ids[1..3].iter().zip(&newer) {
                let hits = metric(&server, "artifactd_chunk_cache_hit_bytes_total").await;
                assert!(read_as_run(&mut client, "run-2", id).await == *content);
                let served = metric(&server, "artifactd_chunk_cache_hit_bytes_total").await - hits;
                assert_eq!(served, content.len() as f64, "{id} came from the cache");
            }
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(metric(&server, warmed).await, before);
        }
        // What no earlier run read after it warms nothing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let settled = metric(&server, warmed).await;
        read_as_run(&mut client, "run-3", &ids[3]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(metric(&server, warmed).await, settled);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reading_what_an_earlier_run_read_gets_its_next_inputs_warmed_on_sqlite() {
    a_run_reading_what_an_earlier_run_read_gets_its_next_inputs_warmed(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reading_what_an_earlier_run_read_gets_its_next_inputs_warmed_on_postgres() {
    a_run_reading_what_an_earlier_run_read_gets_its_next_inputs_warmed(true).await;
}

/// With `server.links_addr` set, links are issued for and served by their own listener, and
/// the metrics listener serves no links, nor the links listener any metrics: the address
/// put behind a CDN exposes nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_can_have_a_listener_of_their_own_that_serves_nothing_else() {
    let server = ServerProcess::start_with(
        ServerOptions::default().env("ARTIFACTD_SERVER__LINKS_ADDR", "127.0.0.1:0"),
    );
    let links = server.links.expect("the ready line names the links listener");
    assert_ne!(links, server.http);
    let mut client = server.client().await;
    let content = noise(200 * 1024 + 5, 91);
    let id = create_id(&mut client, header(T, P, "bundle", "own-listener.bin"), &content).await;
    let issued = link(&mut client, &id, "", 600).await.unwrap();
    let path = format!("/v1/download/acme/delivery/{id}/");
    assert!(
        issued.url.starts_with(&format!("http://{links}{path}")),
        "{}",
        issued.url
    );
    let whole = fetch("GET", &issued.url, &[]).await;
    assert_eq!(whole.status, 200);
    assert!(whole.body == content, "the body is the content");
    let part = fetch("GET", &issued.url, &[("range", "bytes=10-19")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(&part.body[..], &content[10..20]);

    let on_metrics_listener = issued.url.replace(&links.to_string(), &server.http.to_string());
    assert_eq!(fetch("GET", &on_metrics_listener, &[]).await.status, 404);
    assert_eq!(
        fetch("GET", &format!("http://{links}/metrics"), &[]).await.status,
        404
    );
    let metrics = fetch("GET", &format!("http://{}/metrics", server.http), &[]).await;
    assert_eq!(metrics.status, 200);
    assert!(String::from_utf8_lossy(&metrics.body).contains("artifactd_"));
    assert_eq!(
        fetch("GET", &format!("http://{links}/healthz"), &[]).await.status,
        200
    );
}

/// A web page on another origin can fetch a link with `fetch()`: the preflight for a ranged,
/// conditional read is answered, every answer (refusals too) may be read by the script, and
/// nothing varies by origin, so a CDN keeps one copy for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_on_any_origin_can_read_links_and_their_refusals() {
    let server = ServerProcess::start();
    let mut client = server.client().await;
    let content = noise(64 * 1024, 93);
    let id = create_id(&mut client, header(T, P, "bundle", "cors.bin"), &content).await;
    let issued = link(&mut client, &id, "", 600).await.unwrap();
    let origin = ("origin", "https://dashboard.example");

    let preflight = fetch(
        "OPTIONS",
        &issued.url,
        &[
            origin,
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "range, if-none-match"),
        ],
    )
    .await;
    assert!(
        preflight.status / 100 == 2,
        "preflight answered {}",
        preflight.status
    );
    let listed = |fetched: &common::http::Fetched, name: &str| -> Vec<String> {
        text(
            &fetched.headers,
            header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        )
        .split(',')
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
    };
    assert_eq!(text(&preflight.headers, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
    let methods = listed(&preflight, "access-control-allow-methods");
    assert!(
        methods.contains(&"get".to_owned()) && methods.contains(&"head".to_owned()),
        "{methods:?}"
    );
    let allowed = listed(&preflight, "access-control-allow-headers");
    for name in ["range", "if-none-match", "if-range", "if-modified-since"] {
        assert!(allowed.contains(&name.to_owned()), "{name} not in {allowed:?}");
    }
    assert!(
        preflight
            .headers
            .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
            .is_none()
    );
    assert!(preflight.body.is_empty());

    let part = fetch("GET", &issued.url, &[origin, ("range", "bytes=100-199")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(&part.body[..], &content[100..200]);
    assert_eq!(text(&part.headers, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
    let exposed = listed(&part, "access-control-expose-headers");
    for name in ["etag", "content-range", "content-disposition", "accept-ranges"] {
        assert!(exposed.contains(&name.to_owned()), "{name} not in {exposed:?}");
    }
    assert!(part.headers.get(header::VARY).is_none(), "{:?}", part.headers);
    // Without an Origin (a CDN, curl) the answer is the same.
    let plain = fetch("GET", &issued.url, &[("range", "bytes=100-199")]).await;
    assert_eq!(text(&plain.headers, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
    assert_eq!(plain.body, part.body);

    let forged = issued.url.replace("attachment", "inline");
    let refused = fetch("GET", &forged, &[origin]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(text(&refused.headers, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
    assert!(String::from_utf8_lossy(&refused.body).contains("not valid"));
    // A link only reads: any other method is refused.
    let put = fetch("PUT", &issued.url, &[origin]).await;
    assert_eq!(put.status, 405);
}

/// A small upload holds about what its chunks take from the transfer budget, not a large
/// upload's step: 64 small creates at once fit in the smallest budget allowed (16 MiB, with
/// read spans of 4 MiB) without any of them waiting, and all commit and read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_small_uploads_at_once_fit_in_a_small_memory_budget() {
    let server = std::sync::Arc::new(ServerProcess::start_with(
        ServerOptions::default()
            .env(
                "ARTIFACTD_INGEST__TRANSFER_MEMORY_BYTES",
                (16u64 << 20).to_string(),
            )
            .env("ARTIFACTD_INGEST__MAX_READ_SPAN_BYTES", (4u64 << 20).to_string()),
    ));
    let mut uploads = tokio::task::JoinSet::new();
    for n in 0..64u64 {
        let server = server.clone();
        uploads.spawn(async move {
            let mut client = server.client().await;
            let mut made = Vec::new();
            for round in 0..3 {
                let content = noise(8 * 1024 + n as usize * 7, 1000 * round + n);
                let id = create_id(
                    &mut client,
                    header(T, P, "note", &format!("small-{n}-{round}.txt")),
                    &content,
                )
                .await;
                made.push((id, content));
            }
            made
        });
    }
    let made: Vec<(String, Vec<u8>)> = uploads.join_all().await.into_iter().flatten().collect();
    assert_eq!(made.len(), 192);
    let waits = common::metric(server.http, "artifactd_transfer_memory_waits_total").await;
    assert_eq!(
        waits, 0.0,
        "small uploads waited for transfer memory {waits} times in a 16 MiB budget"
    );
    let mut client = server.client().await;
    for (id, content) in &made {
        let (_, bytes) = download(&mut client, download_request(T, P, id, ""))
            .await
            .unwrap();
        assert!(bytes == *content, "{id} reads back different bytes");
    }
}
