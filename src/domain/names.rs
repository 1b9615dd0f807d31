//! Validation of the names a caller chooses: tenants, projects, artifact types, artifact
//! names, tags and metadata. Every rejection names the field and quotes the value.

use super::error::{Error, Result};
use std::collections::BTreeMap;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

pub const MAX_IDENTIFIER_LEN: usize = 63;
pub const MAX_NAME_LEN: usize = 255;
pub const MAX_DESCRIPTION_LEN: usize = 4096;
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_LEN: usize = 64;
pub const MAX_METADATA_ENTRIES: usize = 128;
pub const MAX_METADATA_KEY_LEN: usize = 128;
pub const MAX_METADATA_VALUE_LEN: usize = 4096;
pub const MAX_CHANGE_MESSAGE_LEN: usize = 4096;

/// Shows a caller-supplied value inside an error message without letting control
/// characters or huge values through.
pub fn quoted(value: &str) -> String {
    const SHOWN: usize = 80;
    let mut shown: String = value.chars().take(SHOWN).collect();
    if value.chars().count() > SHOWN {
        shown.push('…');
    }
    format!("{shown:?}")
}

/// Tenants, projects and artifact types: short identifiers made of ASCII letters, digits,
/// `-`, `_` and `.`, starting with a letter or digit.
pub fn validate_identifier(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_IDENTIFIER_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "{} is {} bytes long; the limit is {MAX_IDENTIFIER_LEN}",
                quoted(value),
                value.len()
            ),
        ));
    }
    let first_is_alphanumeric = value.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let all_allowed = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !first_is_alphanumeric || !all_allowed || value.contains("..") {
        return Err(Error::invalid(
            field,
            format!(
                "{} is not a valid identifier: use ASCII letters, digits, '-', '_' and '.', starting with a letter or digit",
                quoted(value)
            ),
        ));
    }
    Ok(())
}

/// Artifact names: relative paths such as `docs/stories/1.1.story.md`. Segments are joined
/// by `/`; none may be empty, `.` or `..`, or start or end with whitespace; no leading or
/// trailing `/`, no `\`. Printable text without control or invisible formatting
/// characters, up to [`MAX_NAME_LEN`] bytes.
pub fn validate_artifact_name(value: &str) -> Result<()> {
    const FIELD: &str = "name";
    if value.is_empty() {
        return Err(Error::invalid(FIELD, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            FIELD,
            format!(
                "{} is {} bytes long; the limit is {MAX_NAME_LEN}",
                quoted(value),
                value.len()
            ),
        ));
    }
    if value.contains('\\') {
        return Err(Error::invalid(
            FIELD,
            format!(
                "{} must not contain '\\'; paths are separated by '/'",
                quoted(value)
            ),
        ));
    }
    if value.starts_with('/') {
        return Err(Error::invalid(
            FIELD,
            format!("{} must be a relative path, without a leading '/'", quoted(value)),
        ));
    }
    for segment in value.split('/') {
        let problem = match segment {
            "" => Some("an empty segment ('//' or a trailing '/')"),
            "." | ".." => Some("a '.' or '..' segment"),
            s if s.trim() != s => Some("a segment that starts or ends with whitespace"),
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(Error::invalid(FIELD, format!("{} has {problem}", quoted(value))));
        }
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(
            FIELD,
            format!("{} must not contain control characters", quoted(value)),
        ));
    }
    if let Some(invisible) = value.chars().find(|c| is_format_character(*c)) {
        return Err(Error::invalid(
            FIELD,
            format!(
                "{} must not contain invisible formatting characters such as U+{:04X} (bidirectional overrides, zero-width characters): they make a name display as something else",
                quoted(value),
                u32::from(invisible)
            ),
        ));
    }
    Ok(())
}

/// A new artifact's name must also be in Unicode normal form C, so that one name has one
/// spelling. (Lookups do not ask it: names stored before the rule stay reachable.)
pub fn validate_new_artifact_name(value: &str) -> Result<()> {
    const FIELD: &str = "name";
    validate_artifact_name(value)?;
    if !unicode_normalization::is_nfc(value) {
        use unicode_normalization::UnicodeNormalization;
        return Err(Error::invalid(
            FIELD,
            format!(
                "{} is not in Unicode normal form C; send it as {}",
                quoted(value),
                quoted(&value.nfc().collect::<String>())
            ),
        ));
    }
    Ok(())
}

/// A folder of artifact names to list or search under: a valid name followed by `/`.
pub fn validate_path_prefix(field: &'static str, value: &str) -> Result<()> {
    let Some(folder) = value.strip_suffix('/') else {
        return Err(Error::invalid(
            field,
            format!(
                "{} must be a folder path ending in '/', such as \"docs/stories/\"",
                quoted(value)
            ),
        ));
    };
    validate_artifact_name(folder).map_err(|error| match error {
        Error::InvalidArgument { message, .. } => Error::InvalidArgument { field, message },
        other => other,
    })
}

/// Unicode format characters (general category Cf: bidirectional controls such as U+202E,
/// zero-width spaces and joiners, the byte-order mark, tag characters) change how a name is
/// displayed without being visible themselves: `invoice\u{202E}txt.exe` shows as
/// `invoiceexe.txt`.
fn is_format_character(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

fn validate_free_text(field: &'static str, value: &str, max_len: usize) -> Result<()> {
    if value.len() > max_len {
        return Err(Error::invalid(
            field,
            format!("is {} bytes long; the limit is {max_len}", value.len()),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(Error::invalid(
            field,
            format!("{} must not contain control characters", quoted(value)),
        ));
    }
    Ok(())
}

pub fn validate_description(value: &str) -> Result<()> {
    validate_free_text("description", value, MAX_DESCRIPTION_LEN)
}

pub fn validate_change_message(value: &str) -> Result<()> {
    validate_free_text("change_message", value, MAX_CHANGE_MESSAGE_LEN)
}

/// Tags are deduplicated and sorted so that equal sets compare equal.
pub fn normalize_tags(tags: &[String]) -> Result<Vec<String>> {
    normalize_labels("tags", tags)
}

/// Tags and categories: at most [`MAX_TAGS`] labels of 1 to [`MAX_TAG_LEN`] bytes, without
/// control characters or commas, deduplicated and sorted.
pub fn normalize_labels(field: &'static str, tags: &[String]) -> Result<Vec<String>> {
    if tags.len() > MAX_TAGS {
        return Err(Error::invalid(
            field,
            format!("{} labels given; the limit is {MAX_TAGS}", tags.len()),
        ));
    }
    let mut normalized = Vec::with_capacity(tags.len());
    for tag in tags {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(Error::invalid(
                field,
                format!("{} must be 1 to {MAX_TAG_LEN} bytes long", quoted(tag)),
            ));
        }
        if tag.chars().any(|c| c.is_control() || c == ',') || tag.trim() != tag {
            return Err(Error::invalid(
                field,
                format!(
                    "{} must not contain control characters or commas, nor start or end with whitespace",
                    quoted(tag)
                ),
            ));
        }
        normalized.push(tag.clone());
    }
    normalized.sort();
    normalized.dedup();
    Ok(normalized)
}

pub fn validate_metadata_key(field: &'static str, key: &str) -> Result<()> {
    let allowed = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'));
    if key.is_empty() || key.len() > MAX_METADATA_KEY_LEN || !allowed {
        return Err(Error::invalid(
            field,
            format!(
                "metadata key {} must be 1 to {MAX_METADATA_KEY_LEN} bytes of ASCII letters, digits, '-', '_', '.', ':' or '/'",
                quoted(key)
            ),
        ));
    }
    Ok(())
}

pub fn validate_metadata(field: &'static str, metadata: &BTreeMap<String, String>) -> Result<()> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid(
            field,
            format!(
                "{} entries given; the limit is {MAX_METADATA_ENTRIES}",
                metadata.len()
            ),
        ));
    }
    for (key, value) in metadata {
        validate_metadata_key(field, key)?;
        if value.len() > MAX_METADATA_VALUE_LEN {
            return Err(Error::invalid(
                field,
                format!(
                    "value of {} is {} bytes long; the limit is {MAX_METADATA_VALUE_LEN}",
                    quoted(key),
                    value.len()
                ),
            ));
        }
        if value.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\t')) {
            return Err(Error::invalid(
                field,
                format!("value of {} contains control characters", quoted(key)),
            ));
        }
    }
    Ok(())
}

/// Parses a lowercase or uppercase hex blake3 digest supplied by a caller.
pub fn parse_blake3_hex(field: &'static str, value: &str) -> Result<blake3::Hash> {
    blake3::Hash::from_hex(value).map_err(|_| {
        Error::invalid(
            field,
            format!("{} is not a 64-digit hex blake3 digest", quoted(value)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_path_tricks_are_rejected() {
        for bad in [
            "/abs.md",
            "..",
            "docs/../secrets",
            "docs//x.md",
            "docs/./x.md",
            "docs/",
            "a\\b",
            "tab\there",
            "",
            " lead",
            "trail ",
            "docs/ x.md",
        ] {
            let error = validate_artifact_name(bad).unwrap_err();
            assert!(error.to_string().starts_with("name:"), "{bad:?} gave {error}");
        }
        let too_long = "n".repeat(MAX_NAME_LEN + 1);
        assert!(
            validate_artifact_name(&too_long)
                .unwrap_err()
                .to_string()
                .contains("the limit is 255")
        );
        validate_artifact_name("PRD — Payments v2.md").unwrap();
        validate_artifact_name("docs/stories/1.1.story.md").unwrap();
        validate_artifact_name("x..y").unwrap();
        validate_artifact_name("caf\u{e9}.md").unwrap();
        validate_artifact_name("cafe\u{301}.md").unwrap();
        let nfd = validate_new_artifact_name("cafe\u{301}.md")
            .unwrap_err()
            .to_string();
        assert!(nfd.contains("normal form C"), "{nfd}");
        validate_path_prefix("path_prefix", "docs/stories/").unwrap();
        for bad in ["docs", "/docs/", "docs//", "../"] {
            let error = validate_path_prefix("path_prefix", bad).unwrap_err().to_string();
            assert!(error.starts_with("path_prefix:"), "{bad:?} gave {error}");
        }
    }

    #[test]
    fn names_with_invisible_formatting_are_rejected() {
        for (bad, code_point) in [
            ("invoice\u{202E}txt.exe", "U+202E"),
            ("a\u{200B}b", "U+200B"),
            ("\u{FEFF}bom.md", "U+FEFF"),
            ("x\u{2066}y\u{2069}", "U+2066"),
            ("tag\u{E0041}", "U+E0041"),
        ] {
            let error = validate_artifact_name(bad).unwrap_err().to_string();
            assert!(
                error.starts_with("name:") && error.contains(code_point),
                "{bad:?} gave {error}"
            );
        }
        // Visible non-ASCII text is fine.
        validate_artifact_name("设计文档 — ünïcode.md").unwrap();
    }

    #[test]
    fn identifiers_are_restricted() {
        validate_identifier("tenant", "acme-corp_1.eu").unwrap();
        for bad in ["-x", "a b", "a/b", "ü", "a..b", ""] {
            assert!(validate_identifier("tenant", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags_are_sorted_and_deduplicated() {
        let tags = normalize_tags(&["b".into(), "a".into(), "b".into()]).unwrap();
        assert_eq!(tags, vec!["a", "b"]);
        assert!(normalize_tags(&["bad,tag".into()]).is_err());
    }
}
