//! Download links for browsers and CDNs: what a signed link grants, how it is signed and
//! checked, and how an HTTP request for a version is answered (conditional requests and
//! byte ranges). Pure: the time and the request's headers are parameters.

use std::ops::Range;

/// Where download links live on the HTTP listener.
pub const LINK_PREFIX: &str = "/v1/download";

/// What a download link grants: reading one version of one artifact until `expires`
/// (Unix seconds). Everything here is covered by the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadGrant {
    pub tenant: String,
    pub project: String,
    pub artifact_id: String,
    pub version: String,
    /// The version's content hash (blake3, hex) when the link was made. Version numbers are
    /// never reused, except after the catalog is restored to a point before the version
    /// was made: other content under the same number, which caches told `immutable` must
    /// never get under this link. `None` in links made before links named their content,
    /// which are accepted until they expire.
    pub content: Option<String>,
    pub expires: i64,
    pub disposition: Disposition,
}

/// Whether a browser should save the content (`attachment`) or show it (`inline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Attachment,
    Inline,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Attachment => "attachment",
            Disposition::Inline => "inline",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "attachment" => Some(Disposition::Attachment),
            "inline" => Some(Disposition::Inline),
            _ => None,
        }
    }
}

/// A key download links are signed with; replicas that share it accept each other's links.
#[derive(Clone)]
pub struct LinkKey([u8; 32]);

impl LinkKey {
    /// Derives the key from configured key material (any length; at least 32 bytes of
    /// entropy is the operator's part) or from the service's own secret.
    pub fn derive(material: &[u8]) -> Self {
        Self(blake3::derive_key("artifactd download link v1", material))
    }

    fn mac(&self, grant: &DownloadGrant) -> blake3::Hash {
        let mut mac = blake3::Hasher::new_keyed(&self.0);
        // Length-prefixed, so that no two grants sign the same bytes. A link without its
        // content signs the four parts alone (as links did before they named it): the
        // bytes after the version then start with the expiry, where a content's length
        // would have to equal that expiry (about 2^31) to sign the same bytes.
        let parts = [&grant.tenant, &grant.project, &grant.artifact_id, &grant.version];
        for part in parts.into_iter().chain(grant.content.as_ref()) {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(&grant.expires.to_le_bytes());
        mac.update(grant.disposition.as_str().as_bytes());
        mac.finalize()
    }
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

/// Characters left as they are in a link's path segments and query values.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(text: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(text, SEGMENT)
}

impl DownloadGrant {
    /// The link's path and query, signed with `key`.
    pub fn signed_path(&self, key: &LinkKey) -> String {
        let content = self
            .content
            .as_ref()
            .map(|content| format!("content={}&", encode(content)))
            .unwrap_or_default();
        format!(
            "{LINK_PREFIX}/{}/{}/{}/{}?{content}expires={}&disposition={}&signature={}",
            encode(&self.tenant),
            encode(&self.project),
            encode(&self.artifact_id),
            encode(&self.version),
            self.expires,
            self.disposition.as_str(),
            self.signature(key),
        )
    }

    fn signature(&self, key: &LinkKey) -> String {
        key.mac(self).to_hex().to_string()
    }
}

/// Why a link is refused. The client gets 403 whatever the reason (so a forger learns
/// nothing); the reason is for logs, and never includes the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRefusal {
    /// A query parameter is missing or unreadable.
    Malformed(String),
    /// The signature does not match what the link names under any accepted key: tampered
    /// with, made for another version or tenant, or signed by another installation.
    BadSignature,
    /// Authentic, but its time is up.
    Expired { at: i64 },
}

impl std::fmt::Display for LinkRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkRefusal::Malformed(what) => write!(f, "the link is malformed: {what}"),
            LinkRefusal::BadSignature => f.write_str("the link's signature does not match what it names"),
            LinkRefusal::Expired { at } => write!(f, "the link expired at {at} (Unix seconds)"),
        }
    }
}

/// Checks a link: the path's (decoded) segments and its raw query, at `now` (Unix seconds).
/// Any of `keys` may have signed it (the first signs new links; the others are earlier
/// ones, accepted during a key change). The signature is checked before the expiry, so an
/// expired link is reported as such only when it is authentic.
pub fn verify_link(
    keys: &[LinkKey],
    tenant: &str,
    project: &str,
    artifact_id: &str,
    version: &str,
    query: &str,
    now: i64,
) -> Result<DownloadGrant, LinkRefusal> {
    let mut content = None;
    let mut expires = None;
    let mut disposition = None;
    let mut signature = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match name.as_ref() {
            "content" => &mut content,
            "expires" => &mut expires,
            "disposition" => &mut disposition,
            "signature" => &mut signature,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(LinkRefusal::Malformed(format!("{name} is given twice")));
        }
    }
    let expires = expires
        .ok_or_else(|| LinkRefusal::Malformed("expires is missing".into()))?
        .parse::<i64>()
        .map_err(|_| LinkRefusal::Malformed("expires is not a number".into()))?;
    let disposition = disposition.map_or(Some(Disposition::Attachment), |d| Disposition::parse(&d));
    let disposition = disposition
        .ok_or_else(|| LinkRefusal::Malformed("disposition is neither attachment nor inline".into()))?;
    let signature = signature.ok_or_else(|| LinkRefusal::Malformed("signature is missing".into()))?;
    let presented = blake3::Hash::from_hex(&signature)
        .map_err(|_| LinkRefusal::Malformed("signature is not 64 hex digits".into()))?;
    let grant = DownloadGrant {
        tenant: tenant.to_owned(),
        project: project.to_owned(),
        artifact_id: artifact_id.to_owned(),
        version: version.to_owned(),
        content,
        expires,
        disposition,
    };
    // blake3::Hash compares in constant time.
    if !keys.iter().any(|key| key.mac(&grant) == presented) {
        return Err(LinkRefusal::BadSignature);
    }
    if now >= expires {
        return Err(LinkRefusal::Expired { at: expires });
    }
    Ok(grant)
}

/// What is known of the version an HTTP request asks for.
#[derive(Debug, Clone)]
pub struct Representation {
    pub size: u64,
    /// The strong entity tag, quoted (`"<blake3 hex>"`).
    pub etag: String,
    /// Seconds since the Unix epoch.
    pub last_modified: i64,
}

/// The request headers that decide the answer.
#[derive(Debug, Clone, Default)]
pub struct Conditions<'a> {
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<i64>,
    pub if_unmodified_since: Option<i64>,
    pub if_range: Option<&'a str>,
    /// `If-Range` as a date, when it is one.
    pub if_range_date: Option<i64>,
    pub range: Option<&'a str>,
}

/// How to answer a GET or HEAD of a representation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 with the whole content.
    Whole,
    /// 206 with these bytes.
    Part(Range<u64>),
    /// 304.
    NotModified,
    /// 412.
    PreconditionFailed,
    /// 416, with what was wrong.
    Unsatisfiable(String),
}

/// Answers a request per RFC 9110 §13.2.2: `If-Match`, then `If-Unmodified-Since`, then
/// `If-None-Match`, then `If-Modified-Since`, then `Range` (honoured only when `If-Range`,
/// if present, still matches). Several ranges that do not merge into one are answered
/// with the whole content, as the RFC allows, rather than a multipart body.
pub fn answer(representation: &Representation, conditions: &Conditions<'_>) -> Answer {
    if let Some(tags) = conditions.if_match {
        if !tag_list_matches(tags, &representation.etag, true) {
            return Answer::PreconditionFailed;
        }
    } else if let Some(since) = conditions.if_unmodified_since
        && representation.last_modified > since
    {
        return Answer::PreconditionFailed;
    }
    if let Some(tags) = conditions.if_none_match {
        if tag_list_matches(tags, &representation.etag, false) {
            return Answer::NotModified;
        }
    } else if let Some(since) = conditions.if_modified_since
        && representation.last_modified <= since
    {
        return Answer::NotModified;
    }
    let Some(range) = conditions.range else {
        return Answer::Whole;
    };
    let range_still_applies = match (conditions.if_range, conditions.if_range_date) {
        (None, _) => true,
        (Some(_), Some(date)) => date == representation.last_modified,
        (Some(tag), None) => strong_match(tag.trim(), &representation.etag),
    };
    if !range_still_applies {
        return Answer::Whole;
    }
    let Some((unit, specifier)) = range.trim().split_once('=') else {
        return Answer::Unsatisfiable(format!("Range {range:?} is not of the form bytes=first-last"));
    };
    // Units are case-insensitive; one this server does not know is ignored (RFC 9110
    // §14.1, §14.2).
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Answer::Whole;
    }
    let specs = match parse_byte_ranges(specifier) {
        Ok(specs) => specs,
        Err(what) => return Answer::Unsatisfiable(format!("Range {range:?} is malformed: {what}")),
    };
    // RFC 9110 §14.1.3: a suffix longer than the content means all of it, a last position
    // past the end means the end, and the set is satisfiable when any range in it is.
    let size = representation.size;
    // Empty content has no byte to send, yet a suffix of it is satisfiable (RFC 9110
    // §14.1.1): it is answered with the (empty) whole.
    if size == 0
        && specs
            .iter()
            .any(|spec| matches!(spec, ByteRange::Suffix(length) if *length > 0))
    {
        return Answer::Whole;
    }
    let mut ranges: Vec<Range<u64>> = specs
        .into_iter()
        .filter_map(|spec| match spec {
            ByteRange::From { first, last } if first < size => {
                Some(first..last.map_or(size, |last| last.saturating_add(1).min(size)))
            }
            ByteRange::From { .. } => None,
            ByteRange::Suffix(length) if length > 0 && size > 0 => Some(size.saturating_sub(length)..size),
            ByteRange::Suffix(_) => None,
        })
        .collect();
    if ranges.is_empty() {
        return Answer::Unsatisfiable(format!("Range {range:?} lies outside the content's {size} bytes"));
    }
    ranges.sort_by_key(|r| r.start);
    let merged = ranges
        .into_iter()
        .fold(Vec::<Range<u64>>::new(), |mut merged, next| {
            match merged.last_mut() {
                Some(last) if next.start <= last.end => last.end = last.end.max(next.end),
                _ => merged.push(next),
            }
            merged
        });
    match merged.as_slice() {
        [only] => Answer::Part(only.clone()),
        _ => Answer::Whole,
    }
}

/// One range of a `bytes=` Range header, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// `first-last` or `first-`.
    From { first: u64, last: Option<u64> },
    /// `-length`: the last `length` bytes.
    Suffix(u64),
}

/// Parses the ranges after `bytes=` (RFC 9110 §14.1.1): `first-last`, `first-` and
/// `-suffix`, comma-separated, optional spaces around commas; at most 64 of them.
fn parse_byte_ranges(specifier: &str) -> Result<Vec<ByteRange>, String> {
    let number = |text: &str| -> Result<u64, String> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{text:?} is not a byte position"));
        }
        // Digits past what a u64 holds name a position past any content's end.
        Ok(text.parse().unwrap_or(u64::MAX))
    };
    let parts: Vec<&str> = specifier
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return Err("no range is given".to_owned());
    }
    if parts.len() > 64 {
        return Err(format!("{} ranges are more than the 64 answered", parts.len()));
    }
    parts
        .into_iter()
        .map(|part| {
            let (first, last) = part
                .split_once('-')
                .ok_or_else(|| format!("{part:?} has no '-'"))?;
            if first.is_empty() {
                return Ok(ByteRange::Suffix(number(last)?));
            }
            let first = number(first)?;
            let last = if last.is_empty() {
                None
            } else {
                Some(number(last)?)
            };
            if last.is_some_and(|last| last < first) {
                return Err(format!("{part:?} ends before it starts"));
            }
            Ok(ByteRange::From { first, last })
        })
        .collect()
}

/// Whether a comma-separated list of entity tags (or `*`) matches `etag`; `strong` asks
/// for the strong comparison (`If-Match`), otherwise weak tags match too (`If-None-Match`).
fn tag_list_matches(list: &str, etag: &str, strong: bool) -> bool {
    list.split(',').map(str::trim).any(|tag| {
        tag == "*"
            || if strong {
                strong_match(tag, etag)
            } else {
                tag.strip_prefix("W/").unwrap_or(tag) == etag
            }
    })
}

fn strong_match(tag: &str, etag: &str) -> bool {
    !tag.starts_with("W/") && tag == etag
}

/// The `Content-Type` a version is served with: its media type, with `charset=utf-8` added
/// to a text type whose content was found to be UTF-8 on upload. Without a charset a browser
/// decodes text in a legacy encoding, and a document's dashes, accents and emoji turn into
/// mojibake; text that is not UTF-8 is left for the browser to guess.
pub fn served_content_type(media_type: &str, utf8_text: bool) -> std::borrow::Cow<'_, str> {
    let mut parts = media_type.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    let text_type = essence
        .get(..5)
        .is_some_and(|top| top.eq_ignore_ascii_case("text/"));
    let has_charset = parts.any(|parameter| {
        parameter
            .split('=')
            .next()
            .is_some_and(|name| name.trim().eq_ignore_ascii_case("charset"))
    });
    if utf8_text && text_type && !has_charset {
        format!("{media_type}; charset=utf-8").into()
    } else {
        media_type.into()
    }
}

/// `Content-Disposition` for a file called `name`: an ASCII fallback and the exact name
/// (RFC 6266, RFC 8187).
pub fn content_disposition(disposition: Disposition, name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '/') || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{}; filename=\"{fallback}\"; filename*=UTF-8''{}",
        disposition.as_str(),
        encode(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> DownloadGrant {
        DownloadGrant {
            tenant: "acme".into(),
            project: "web".into(),
            artifact_id: "0190c0de-0000-7000-8000-000000000001".into(),
            version: "1.2.0+build.7".into(),
            content: Some(blake3::hash(b"the version's content").to_hex().to_string()),
            expires: 2_000,
            disposition: Disposition::Attachment,
        }
    }

    fn query(path: &str) -> &str {
        path.split_once('?').unwrap().1
    }

    fn check(
        keys: &[LinkKey],
        grant: &DownloadGrant,
        query: &str,
        now: i64,
    ) -> Result<DownloadGrant, LinkRefusal> {
        verify_link(
            keys,
            &grant.tenant,
            &grant.project,
            &grant.artifact_id,
            &grant.version,
            query,
            now,
        )
    }

    #[test]
    fn a_link_grants_exactly_what_it_names_until_it_expires() {
        let key = LinkKey::derive(b"a shared key of at least 32 bytes!!");
        let grant = grant();
        let path = grant.signed_path(&key);
        assert!(
            path.starts_with("/v1/download/acme/web/0190c0de-0000-7000-8000-000000000001/1.2.0%2Bbuild.7?"),
            "{path}"
        );
        assert_eq!(
            check(std::slice::from_ref(&key), &grant, query(&path), 1_999),
            Ok(grant.clone())
        );
        assert_eq!(
            check(std::slice::from_ref(&key), &grant, query(&path), 2_000),
            Err(LinkRefusal::Expired { at: 2_000 })
        );
        // Another version, tenant, project or artifact under the same signature.
        for other in [
            DownloadGrant {
                version: "1.2.1".into(),
                ..grant.clone()
            },
            DownloadGrant {
                tenant: "globex".into(),
                ..grant.clone()
            },
            DownloadGrant {
                project: "webx".into(),
                ..grant.clone()
            },
            DownloadGrant {
                artifact_id: "0190c0de-0000-7000-8000-000000000002".into(),
                ..grant.clone()
            },
        ] {
            assert_ne!(other, grant);
            assert_eq!(
                check(std::slice::from_ref(&key), &other, query(&path), 1_000),
                Err(LinkRefusal::BadSignature)
            );
        }
        // A later expiry, another disposition or other content in the query.
        let content = grant.content.as_deref().unwrap();
        let replaced = query(&path).replace(content, blake3::hash(b"other").to_hex().as_str());
        assert_ne!(replaced, query(&path));
        assert_eq!(
            check(std::slice::from_ref(&key), &grant, &replaced, 1_000),
            Err(LinkRefusal::BadSignature)
        );
        let later = query(&path).replace("expires=2000", "expires=9000");
        assert_eq!(
            check(std::slice::from_ref(&key), &grant, &later, 1_000),
            Err(LinkRefusal::BadSignature)
        );
        let inline = query(&path).replace("attachment", "inline");
        assert_eq!(
            check(std::slice::from_ref(&key), &grant, &inline, 1_000),
            Err(LinkRefusal::BadSignature)
        );
        // Signed by another installation; accepted again once its key is among the keys.
        let theirs = LinkKey::derive(b"another installation's key.......");
        assert_eq!(
            check(std::slice::from_ref(&theirs), &grant, query(&path), 1_000),
            Err(LinkRefusal::BadSignature)
        );
        assert!(check(&[theirs, key.clone()], &grant, query(&path), 1_000).is_ok());

        // A link made before links named their content is accepted as it was made; the
        // content cannot be taken off a link that names it, nor put on one that does not.
        let older = DownloadGrant {
            content: None,
            ..grant.clone()
        };
        let older_path = older.signed_path(&key);
        assert!(!older_path.contains("content="), "{older_path}");
        assert_eq!(
            check(std::slice::from_ref(&key), &older, query(&older_path), 1_000),
            Ok(older.clone())
        );
        let content = grant.content.as_deref().unwrap();
        let stripped = query(&path).replace(&format!("content={content}&"), "");
        assert_ne!(stripped, query(&path));
        assert_eq!(
            check(std::slice::from_ref(&key), &grant, &stripped, 1_000),
            Err(LinkRefusal::BadSignature)
        );
        let added = format!("content={content}&{}", query(&older_path));
        assert_eq!(
            check(std::slice::from_ref(&key), &grant, &added, 1_000),
            Err(LinkRefusal::BadSignature)
        );
    }

    #[test]
    fn malformed_links_say_what_is_wrong() {
        let key = LinkKey::derive(b"k");
        let grant = grant();
        for (query, what) in [
            ("content=ab&disposition=inline&signature=00", "expires is missing"),
            ("content=ab&expires=soon&signature=00", "expires is not a number"),
            ("content=ab&expires=5", "signature is missing"),
            (
                "content=ab&expires=5&signature=xyz",
                "signature is not 64 hex digits",
            ),
            (
                "content=ab&expires=5&expires=6&signature=00",
                "expires is given twice",
            ),
            (
                "content=ab&content=cd&expires=5&signature=00",
                "content is given twice",
            ),
            (
                "content=ab&expires=5&disposition=download&signature=00",
                "disposition is neither",
            ),
        ] {
            match check(std::slice::from_ref(&key), &grant, query, 0) {
                Err(LinkRefusal::Malformed(message)) => {
                    assert!(message.starts_with(what), "{query}: {message}")
                }
                other => panic!("{query}: {other:?}"),
            }
        }
    }

    fn representation() -> Representation {
        Representation {
            size: 1000,
            etag: "\"abc\"".into(),
            last_modified: 500,
        }
    }

    fn ask(conditions: Conditions<'_>) -> Answer {
        answer(&representation(), &conditions)
    }

    #[test]
    fn ranges() {
        let range = |r| {
            ask(Conditions {
                range: Some(r),
                ..Default::default()
            })
        };
        assert_eq!(range("bytes=0-99"), Answer::Part(0..100));
        assert_eq!(range("bytes=900-"), Answer::Part(900..1000));
        assert_eq!(range("bytes=-10"), Answer::Part(990..1000));
        assert_eq!(range("bytes=990-5000"), Answer::Part(990..1000));
        assert_eq!(range("bytes=0-"), Answer::Part(0..1000));
        assert_eq!(range("bytes=0-9,10-19"), Answer::Part(0..20));
        assert_eq!(range("bytes=0-9,500-509"), Answer::Whole);
        // A suffix longer than the content is all of it; overlaps merge; a set with one
        // satisfiable range is satisfiable.
        assert_eq!(range("bytes=-5000"), Answer::Part(0..1000));
        assert_eq!(range("bytes=0-50,40-99"), Answer::Part(0..100));
        assert_eq!(range("bytes=0-9,5000-"), Answer::Part(0..10));
        assert_eq!(range("bytes= 0-9 , 10-19"), Answer::Part(0..20));
        assert_eq!(range("items=0-9"), Answer::Whole);
        // Units are case-insensitive; positions too large for any content saturate.
        assert_eq!(range("Bytes=0-99"), Answer::Part(0..100));
        assert_eq!(range("BYTES=-10"), Answer::Part(990..1000));
        assert_eq!(range("bytes=10-99999999999999999999999"), Answer::Part(10..1000));
        assert_eq!(range("bytes=-99999999999999999999999"), Answer::Part(0..1000));
        assert!(matches!(
            range("bytes=99999999999999999999999-"),
            Answer::Unsatisfiable(_)
        ));
        for bad in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
            assert!(
                matches!(range(bad), Answer::Unsatisfiable(m) if m.contains(bad)),
                "{bad}"
            );
        }
        for malformed in ["bytes=abc", "bytes=9-3", "0-9", "bytes=1-2-3"] {
            assert!(
                matches!(range(malformed), Answer::Unsatisfiable(_)),
                "{malformed}"
            );
        }
        let empty = Representation {
            size: 0,
            ..representation()
        };
        let of_empty = |r| {
            answer(
                &empty,
                &Conditions {
                    range: Some(r),
                    ..Default::default()
                },
            )
        };
        assert!(matches!(of_empty("bytes=0-"), Answer::Unsatisfiable(_)));
        assert!(matches!(of_empty("bytes=-0"), Answer::Unsatisfiable(_)));
        // A suffix of nothing is satisfiable: the empty whole.
        assert_eq!(of_empty("bytes=-5"), Answer::Whole);
        assert_eq!(of_empty("bytes=0-9,-5"), Answer::Whole);
    }

    #[test]
    fn conditions_in_the_order_the_rfc_gives() {
        assert_eq!(
            ask(Conditions {
                if_none_match: Some("\"abc\""),
                ..Default::default()
            }),
            Answer::NotModified
        );
        assert_eq!(
            ask(Conditions {
                if_none_match: Some("W/\"abc\""),
                ..Default::default()
            }),
            Answer::NotModified
        );
        assert_eq!(
            ask(Conditions {
                if_none_match: Some("\"x\", \"abc\""),
                ..Default::default()
            }),
            Answer::NotModified
        );
        assert_eq!(
            ask(Conditions {
                if_none_match: Some("*"),
                ..Default::default()
            }),
            Answer::NotModified
        );
        assert_eq!(
            ask(Conditions {
                if_none_match: Some("\"old\""),
                ..Default::default()
            }),
            Answer::Whole
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            ask(Conditions {
                if_none_match: Some("\"old\""),
                if_modified_since: Some(900),
                ..Default::default()
            }),
            Answer::Whole
        );
        assert_eq!(
            ask(Conditions {
                if_modified_since: Some(500),
                ..Default::default()
            }),
            Answer::NotModified
        );
        assert_eq!(
            ask(Conditions {
                if_modified_since: Some(499),
                ..Default::default()
            }),
            Answer::Whole
        );
        assert_eq!(
            ask(Conditions {
                if_match: Some("\"old\""),
                ..Default::default()
            }),
            Answer::PreconditionFailed
        );
        assert_eq!(
            ask(Conditions {
                if_match: Some("W/\"abc\""),
                ..Default::default()
            }),
            Answer::PreconditionFailed
        );
        assert_eq!(
            ask(Conditions {
                if_match: Some("\"abc\""),
                range: Some("bytes=0-0"),
                ..Default::default()
            }),
            Answer::Part(0..1)
        );
        assert_eq!(
            ask(Conditions {
                if_unmodified_since: Some(499),
                ..Default::default()
            }),
            Answer::PreconditionFailed
        );
        // If-Range: the range only while the tag (or date) still matches.
        assert_eq!(
            ask(Conditions {
                if_range: Some("\"abc\""),
                range: Some("bytes=0-9"),
                ..Default::default()
            }),
            Answer::Part(0..10)
        );
        assert_eq!(
            ask(Conditions {
                if_range: Some("\"old\""),
                range: Some("bytes=0-9"),
                ..Default::default()
            }),
            Answer::Whole
        );
        assert_eq!(
            ask(Conditions {
                if_range: Some("W/\"abc\""),
                range: Some("bytes=0-9"),
                ..Default::default()
            }),
            Answer::Whole
        );
        assert_eq!(
            ask(Conditions {
                if_range: Some("date"),
                if_range_date: Some(500),
                range: Some("bytes=0-9"),
                ..Default::default()
            }),
            Answer::Part(0..10)
        );
        assert_eq!(
            ask(Conditions {
                if_range: Some("date"),
                if_range_date: Some(400),
                range: Some("bytes=0-9"),
                ..Default::default()
            }),
            Answer::Whole
        );
    }

    #[test]
    fn utf8_text_is_served_with_its_charset() {
        assert_eq!(
            served_content_type("text/markdown", true),
            "text/markdown; charset=utf-8"
        );
        assert_eq!(
            served_content_type("TEXT/plain", true),
            "TEXT/plain; charset=utf-8"
        );
        // Text that is not UTF-8 is left to the browser; a charset already named is kept.
        assert_eq!(served_content_type("text/plain", false), "text/plain");
        assert_eq!(
            served_content_type("text/plain; Charset=ISO-8859-1", true),
            "text/plain; Charset=ISO-8859-1"
        );
        // Other types carry their encoding themselves (JSON is UTF-8, XML says so, a
        // binary has none).
        for other in [
            "application/json",
            "application/octet-stream",
            "image/png",
            "text",
            "tex",
        ] {
            assert_eq!(served_content_type(other, true), other);
        }
    }

    #[test]
    fn dispositions_keep_the_name_and_stay_safe_in_a_header() {
        assert_eq!(
            content_disposition(Disposition::Attachment, "prd v1.md"),
            "attachment; filename=\"prd v1.md\"; filename*=UTF-8''prd%20v1.md"
        );
        let header = content_disposition(Disposition::Inline, "rés\"umé\r\n.md");
        assert!(
            header.starts_with(
                "inline; filename=\"r_s_um___.md\"; filename*=UTF-8''r%C3%A9s%22um%C3%A9%0D%0A.md"
            ),
            "{header}"
        );
        // A name below a folder keeps its path only in the exact form.
        assert_eq!(
            content_disposition(Disposition::Attachment, "docs/stories/1.md"),
            "attachment; filename=\"docs_stories_1.md\"; filename*=UTF-8''docs%2Fstories%2F1.md"
        );
    }
}
