//! Metadata search. Each artifact's metadata is flattened into terms of the form
//! `path \0 value` in three keyword fields (text, numbers, times), plus the list of paths
//! present; filters become term and term-range queries over them. Numbers and times are
//! written in encodings whose byte order is their numeric order, so a range of values is a
//! range of terms.

use crate::domain::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// At most this many filters per request.
pub const MAX_FILTERS: usize = 32;
/// Text values up to this length compare for equality; longer ones only by prefix.
pub const MAX_EQUAL_BYTES: usize = 512;
/// How deep front matter is flattened.
const MAX_DEPTH: usize = 8;
/// Separates the path from the value in a term; paths never contain it.
const SEP: char = '\u{0}';
/// Marks a long text value, indexed only by its first `MAX_EQUAL_BYTES` bytes.
const SEP_LONG: char = '\u{1}';

/// The built-in fields and their kinds.
const BUILT_IN: [(&str, Kind); 10] = [
    ("name", Kind::Text),
    ("state", Kind::Text),
    ("type", Kind::Text),
    ("title", Kind::Text),
    ("content_type", Kind::Text),
    ("version", Kind::Text),
    ("size", Kind::Number),
    ("line_count", Kind::Number),
    ("created", Kind::Time),
    ("updated", Kind::Time),
];
const METADATA_ROOT: &str = "metadata.";
const FRONT_MATTER_ROOT: &str = "front_matter.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Time,
    /// Caller metadata and front matter: text, and also a number or a time when it reads as one.
    Open,
}

/// What a metadata filter asks of its field.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Equals(String),
    Prefix(String),
    NumberRange {
        min: Option<f64>,
        max: Option<f64>,
    },
    /// Microseconds since the epoch; `from` inclusive, `until` exclusive.
    TimeRange {
        from: Option<i64>,
        until: Option<i64>,
    },
    Exists(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetadataFilter {
    pub field: String,
    pub condition: Option<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetadataSort {
    Created,
    #[default]
    Updated,
    Name,
    Size,
    Version,
}

#[derive(Debug, Clone, Default)]
pub struct MetadataSearchRequest {
    pub tenant: String,
    pub project: String,
    pub filters: Vec<MetadataFilter>,
    pub sort: MetadataSort,
    pub descending: bool,
    pub page_size: usize,
    pub page_token: String,
}

/// The metadata of one artifact as the index sees it.
#[derive(Debug, Clone, Default)]
pub struct ArtifactMetadata {
    pub name: String,
    pub artifact_type: String,
    pub title: String,
    pub content_type: String,
    pub version: String,
    pub size: u64,
    pub line_count: u64,
    /// Microseconds since the epoch.
    pub created_at: i64,
    pub updated_at: i64,
    pub metadata: BTreeMap<String, String>,
    pub front_matter: serde_json::Map<String, Value>,
}

/// The terms one artifact contributes to each metadata field.
#[derive(Debug, Default, PartialEq)]
pub struct MetadataTerms {
    pub text: Vec<String>,
    pub numbers: Vec<String>,
    pub times: Vec<String>,
    pub paths: Vec<String>,
}

impl MetadataTerms {
    /// The terms of an artifact's metadata and of its latest version's lifecycle `state`.
    pub fn of(meta: &ArtifactMetadata, state: &str) -> Self {
        let mut terms = Self::default();
        for (path, value) in [
            ("name", &meta.name),
            ("state", &state.to_owned()),
            ("type", &meta.artifact_type),
            ("title", &meta.title),
            ("content_type", &meta.content_type),
            ("version", &meta.version),
        ] {
            if !value.is_empty() {
                terms.add_text(path, value);
                terms.paths.push(path.to_owned());
            }
        }
        for (path, value) in [("size", meta.size), ("line_count", meta.line_count)] {
            terms.numbers.push(term(path, &number_key(value as f64)));
            terms.paths.push(path.to_owned());
        }
        for (path, value) in [("created", meta.created_at), ("updated", meta.updated_at)] {
            terms.times.push(term(path, &time_key(value)));
            terms.paths.push(path.to_owned());
        }
        for (key, value) in &meta.metadata {
            let path = format!("{METADATA_ROOT}{key}");
            terms.add_open_text(&path, value);
            terms.paths.push(path);
        }
        let mut path = FRONT_MATTER_ROOT.trim_end_matches('.').to_owned();
        for (key, value) in &meta.front_matter {
            terms.add_front_matter(&mut path, key, value, 1);
        }
        terms.paths.sort();
        terms.paths.dedup();
        terms
    }

    fn add_text(&mut self, path: &str, value: &str) {
        if value.len() <= MAX_EQUAL_BYTES {
            self.text.push(term(path, value));
        } else {
            let cut = floor_char_boundary(value, MAX_EQUAL_BYTES);
            self.text.push(format!("{path}{SEP_LONG}{}", &value[..cut]));
        }
    }

    /// Text that also counts as a number or a time when it reads as one.
    fn add_open_text(&mut self, path: &str, value: &str) {
        self.add_text(path, value);
        if let Some(number) = parse_number(value) {
            self.numbers.push(term(path, &number_key(number)));
        }
        if let Some(micros) = parse_time(value) {
            self.times.push(term(path, &time_key(micros)));
        }
    }

    fn add_front_matter(&mut self, path: &mut String, key: &str, value: &Value, depth: usize) {
        if key.is_empty() || key.contains([SEP, SEP_LONG]) || depth > MAX_DEPTH {
            return;
        }
        let parent_len = path.len();
        path.push('.');
        path.push_str(key);
        self.add_front_matter_value(path, value, depth);
        path.truncate(parent_len);
    }

    fn add_front_matter_value(&mut self, path: &mut String, value: &Value, depth: usize) {
        match value {
            Value::Null => {}
            Value::Bool(b) => self.text.push(term(path, if *b { "true" } else { "false" })),
            Value::Number(n) => {
                self.text.push(term(path, &n.to_string()));
                if let Some(number) = n.as_f64().filter(|f| f.is_finite()) {
                    self.numbers.push(term(path, &number_key(number)));
                }
            }
            Value::String(s) => self.add_open_text(path, s),
            Value::Array(items) => {
                for item in items {
                    self.add_front_matter_value(path, item, depth + 1);
                }
            }
            Value::Object(map) => {
                for (key, value) in map {
                    self.add_front_matter(path, key, value, depth + 1);
                }
            }
        }
        self.paths.push(path.clone());
    }
}

fn term(path: &str, value: &str) -> String {
    let mut term = String::with_capacity(path.len() + 1 + value.len());
    term.push_str(path);
    term.push(SEP);
    term.push_str(value);
    term
}

fn floor_char_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

fn parse_number(text: &str) -> Option<f64> {
    let trimmed = text.trim();
    // Only plain decimal notation: "inf", "NaN" and hex are words here, not numbers.
    let plain = !trimmed.is_empty()
        && trimmed
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'))
        && trimmed.chars().any(|c| c.is_ascii_digit());
    if !plain {
        return None;
    }
    trimmed.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// A date (`2026-04-02`, midnight UTC) or an RFC 3339 time, as microseconds since the epoch.
pub fn parse_time(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let text = text.trim();
    if text.len() < 10 || !text.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    let moment = if text.len() == 10 {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(text, format).ok()?.midnight().assume_utc()
    } else {
        time::OffsetDateTime::parse(text, &Rfc3339).ok()?
    };
    i64::try_from(moment.unix_timestamp_nanos() / 1000).ok()
}

/// A number as 16 hex digits whose order is the numbers' order.
fn number_key(value: f64) -> String {
    let value = if value == 0.0 { 0.0 } else { value };
    let bits = value.to_bits();
    let ordered = if bits >> 63 == 1 { !bits } else { bits | 1 << 63 };
    format!("{ordered:016x}")
}

/// A time as 16 hex digits whose order is the times' order.
fn time_key(micros: i64) -> String {
    format!("{:016x}", (micros as u64) ^ (1 << 63))
}

/// A key whose byte order is semver precedence: numeric parts zero-padded, a pre-release
/// before its release, numeric pre-release identifiers before alphanumeric ones.
pub fn version_key(version: &str) -> String {
    let Ok(parsed) = semver::Version::parse(version) else {
        return format!("~{version}");
    };
    let mut key = format!("{:020}.{:020}.{:020}", parsed.major, parsed.minor, parsed.patch);
    if parsed.pre.is_empty() {
        key.push('~');
    } else {
        key.push('-');
        for (i, identifier) in parsed.pre.as_str().split('.').enumerate() {
            if i > 0 {
                key.push('\u{1}');
            }
            match identifier.parse::<u64>() {
                Ok(n) => write!(key, "0{n:020}").expect("writing to a string"),
                Err(_) => write!(key, "1{identifier}").expect("writing to a string"),
            }
        }
    }
    key
}

/// The exclusive upper bound of all byte strings starting with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A filter turned into what the index looks up.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Any of these terms of the text, number or time field.
    AnyTerm(Vec<(TermField, String)>),
    /// Any term in `[start, end)` of a field (bytes: range ends need not be valid UTF-8).
    Ranges(Vec<(TermField, Vec<u8>, Vec<u8>)>),
    /// The path is present (or, with `false`, absent).
    Path(String, bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermField {
    Text,
    Number,
    Time,
}

fn filter_error(index: usize, filter: &MetadataFilter, message: impl std::fmt::Display) -> Error {
    Error::invalid(
        "filters",
        format!("filters[{index}] on {:?}: {message}", filter.field),
    )
}

fn kind_of(index: usize, filter: &MetadataFilter) -> Result<Kind> {
    let field = filter.field.as_str();
    if let Some((_, kind)) = BUILT_IN.iter().find(|(name, _)| *name == field) {
        return Ok(*kind);
    }
    let open_key = field
        .strip_prefix(METADATA_ROOT)
        .or_else(|| field.strip_prefix(FRONT_MATTER_ROOT));
    match open_key {
        Some(key) if !key.is_empty() && !key.contains([SEP, SEP_LONG]) => Ok(Kind::Open),
        _ => Err(filter_error(
            index,
            filter,
            "not a metadata field; use name, state, type, title, content_type, version, size, \
             line_count, created, updated, metadata.<key> or front_matter.<path>",
        )),
    }
}

/// Turns the filters of a request into lookups, rejecting what cannot apply.
pub fn compile(filters: &[MetadataFilter]) -> Result<Vec<Lookup>> {
    if filters.len() > MAX_FILTERS {
        return Err(Error::invalid(
            "filters",
            format!("{} filters given; the limit is {MAX_FILTERS}", filters.len()),
        ));
    }
    filters
        .iter()
        .enumerate()
        .map(|(index, filter)| compile_one(index, filter))
        .collect()
}

fn compile_one(index: usize, filter: &MetadataFilter) -> Result<Lookup> {
    let kind = kind_of(index, filter)?;
    let path = filter.field.as_str();
    let error = |message: &str| filter_error(index, filter, message);
    let Some(condition) = &filter.condition else {
        return Err(error(
            "no condition; set one of equals, prefix, number_range, time_range or exists",
        ));
    };
    let range = |field, start: Option<String>, end: Option<(String, bool)>| {
        let start = start.map_or_else(|| format!("{path}{SEP}"), |value| term(path, &value));
        let end = match end {
            Some((value, inclusive)) => {
                let end = term(path, &value);
                if inclusive {
                    prefix_end(end.as_bytes()).expect("a term ends below 0xFF")
                } else {
                    end.into_bytes()
                }
            }
            None => prefix_end(format!("{path}{SEP}").as_bytes()).expect("a path ends below 0xFF"),
        };
        (field, start.into_bytes(), end)
    };
    match condition {
        Condition::Equals(value) => {
            let number = parse_number(value);
            match kind {
                Kind::Time => Err(error("a time cannot be compared for equality; use time_range")),
                Kind::Number => {
                    let number = number.ok_or_else(|| error("the field holds numbers; equals needs one"))?;
                    Ok(Lookup::AnyTerm(vec![(
                        TermField::Number,
                        term(path, &number_key(number)),
                    )]))
                }
                Kind::Text | Kind::Open => {
                    if value.len() > MAX_EQUAL_BYTES {
                        return Err(error(&format!(
                            "equals is {} bytes; values are compared for equality up to \
                             {MAX_EQUAL_BYTES} bytes (use prefix for longer ones)",
                            value.len()
                        )));
                    }
                    let mut terms = vec![(TermField::Text, term(path, value))];
                    if let (Kind::Open, Some(number)) = (kind, number) {
                        terms.push((TermField::Number, term(path, &number_key(number))));
                    }
                    Ok(Lookup::AnyTerm(terms))
                }
            }
        }
        Condition::Prefix(prefix) => {
            if !matches!(kind, Kind::Text | Kind::Open) {
                return Err(error("prefix applies to text; use number_range or time_range"));
            }
            if prefix.is_empty() {
                return Err(error("prefix must not be empty; use exists to ask for presence"));
            }
            if prefix.len() > MAX_EQUAL_BYTES {
                return Err(error(&format!(
                    "prefix is {} bytes; values are indexed up to their first {MAX_EQUAL_BYTES} bytes",
                    prefix.len()
                )));
            }
            let mut ranges = Vec::new();
            for sep in [SEP, SEP_LONG] {
                let start = format!("{path}{sep}{prefix}").into_bytes();
                let Some(end) = prefix_end(&start) else { continue };
                ranges.push((TermField::Text, start, end));
            }
            Ok(Lookup::Ranges(ranges))
        }
        Condition::NumberRange { min, max } => {
            if !matches!(kind, Kind::Number | Kind::Open) {
                return Err(error(
                    "number_range applies to size, line_count, metadata.* and front_matter.*",
                ));
            }
            if min.is_none() && max.is_none() {
                return Err(error("number_range needs min, max or both"));
            }
            if min.is_some_and(|v| !v.is_finite()) || max.is_some_and(|v| !v.is_finite()) {
                return Err(error("number_range bounds must be finite numbers"));
            }
            if let (Some(min), Some(max)) = (min, max)
                && min > max
            {
                return Err(error(&format!("number_range min {min} is above max {max}")));
            }
            Ok(Lookup::Ranges(vec![range(
                TermField::Number,
                min.map(number_key),
                max.map(|v| (number_key(v), true)),
            )]))
        }
        Condition::TimeRange { from, until } => {
            if !matches!(kind, Kind::Time | Kind::Open) {
                return Err(error(
                    "time_range applies to created, updated, metadata.* and front_matter.*",
                ));
            }
            if from.is_none() && until.is_none() {
                return Err(error("time_range needs from, until or both"));
            }
            if let (Some(from), Some(until)) = (from, until)
                && from >= until
            {
                return Err(error("time_range from must be before until"));
            }
            Ok(Lookup::Ranges(vec![range(
                TermField::Time,
                from.map(time_key),
                until.map(|v| (time_key(v), false)),
            )]))
        }
        Condition::Exists(present) => Ok(Lookup::Path(path.to_owned(), *present)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_keys_sort_like_numbers() {
        let numbers = [-1e300, -2.5, -1.0, -0.0, 0.0, 1e-9, 1.0, 2.0, 10.0, 1e300];
        let keys: Vec<String> = numbers.iter().map(|n| number_key(*n)).collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{keys:?}");
        assert_eq!(number_key(-0.0), number_key(0.0));
    }

    #[test]
    fn time_keys_sort_like_times() {
        let times = [i64::MIN, -1, 0, 1, 1_700_000_000_000_000, i64::MAX];
        let keys: Vec<String> = times.iter().map(|t| time_key(*t)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    }

    #[test]
    fn version_keys_sort_in_semver_precedence() {
        let mut versions = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.2.0",
            "1.10.0",
            "2.0.0",
            "10.0.0",
        ]
        .map(|v| semver::Version::parse(v).unwrap());
        versions.sort();
        let mut by_key = versions.clone();
        by_key.sort_by_key(|v| version_key(&v.to_string()));
        assert_eq!(by_key, versions);
    }

    #[test]
    fn times_parse_from_dates_and_rfc3339() {
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000_000));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_time("2026-13-01"), None);
        assert_eq!(parse_time("tomorrow"), None);
    }

    #[test]
    fn front_matter_flattens_into_paths_and_typed_terms() {
        let front_matter: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"title":"T","sidebar":{"order":3},"tags":["a","b"],"updated":"2026-04-02","draft":false}"#,
        )
        .unwrap();
        let terms = MetadataTerms::of(
            &ArtifactMetadata {
                name: "prd".into(),
                front_matter,
                ..Default::default()
            },
            "review",
        );
        assert!(terms.text.contains(&term("state", "review")));
        for path in [
            "front_matter.sidebar",
            "front_matter.sidebar.order",
            "front_matter.tags",
            "name",
        ] {
            assert!(
                terms.paths.contains(&path.to_owned()),
                "{path} missing from {:?}",
                terms.paths
            );
        }
        assert!(terms.text.contains(&term("front_matter.tags", "b")));
        assert!(terms.text.contains(&term("front_matter.draft", "false")));
        assert!(
            terms
                .numbers
                .contains(&term("front_matter.sidebar.order", &number_key(3.0)))
        );
        assert!(terms.times.contains(&term(
            "front_matter.updated",
            &time_key(parse_time("2026-04-02").unwrap())
        )));
    }

    #[test]
    fn bad_filters_name_the_problem() {
        let filter = |field: &str, condition| MetadataFilter {
            field: field.to_owned(),
            condition,
        };
        let cases = [
            (
                filter("colour", Some(Condition::Exists(true))),
                "not a metadata field",
            ),
            (
                filter("metadata.", Some(Condition::Exists(true))),
                "not a metadata field",
            ),
            (filter("name", None), "no condition"),
            (
                filter(
                    "name",
                    Some(Condition::NumberRange {
                        min: Some(1.0),
                        max: None,
                    }),
                ),
                "number_range applies",
            ),
            (filter("size", Some(Condition::Equals("big".into()))), "needs one"),
            (
                filter("created", Some(Condition::Prefix("2026".into()))),
                "prefix applies",
            ),
            (
                filter(
                    "size",
                    Some(Condition::NumberRange {
                        min: Some(2.0),
                        max: Some(1.0),
                    }),
                ),
                "above max",
            ),
            (
                filter(
                    "updated",
                    Some(Condition::TimeRange {
                        from: None,
                        until: None,
                    }),
                ),
                "needs from",
            ),
            (
                filter("title", Some(Condition::Prefix(String::new()))),
                "must not be empty",
            ),
            (
                filter("title", Some(Condition::Prefix("x".repeat(513)))),
                "first 512 bytes",
            ),
        ];
        for (filter, expected) in cases {
            let message = compile(std::slice::from_ref(&filter)).unwrap_err().to_string();
            assert!(message.contains(expected), "{filter:?}: {message}");
        }
    }
}
