//! Values that must never appear in logs, debug output or printed configuration.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a masked value shows instead of itself.
pub const MASK: &str = "********";

/// A secret string (an access key's secret, a password). `Debug` and `Display` show
/// [`MASK`]; only [`Secret::expose`] gives the value, so every use of it is visible in the
/// code. Serialization is transparent because configuration is merged through serde; code
/// that prints configuration uses its `redacted` form.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same secret shown as [`MASK`] (empty stays empty, so "not set" stays visible).
    pub fn redacted(&self) -> Self {
        if self.0.is_empty() {
            Self::default()
        } else {
            Self(MASK.to_owned())
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(\"\")")
        } else {
            write!(f, "Secret({MASK:?})")
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "" } else { MASK })
    }
}

/// A connection URL with its password masked, whether it sits in the user information
/// (`postgres://user:password@host/db`) or in a `password=` query parameter.
pub fn redact_url(url: &str) -> String {
    let mut redacted = url.to_owned();
    if let Some(scheme_end) = redacted.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = redacted[authority_start..]
            .find(['/', '?', '#'])
            .map_or(redacted.len(), |end| authority_start + end);
        if let Some(at) = redacted[authority_start..authority_end].rfind('@') {
            let user_info = &redacted[authority_start..authority_start + at];
            if let Some(colon) = user_info.find(':') {
                let password_start = authority_start + colon + 1;
                redacted.replace_range(password_start..authority_start + at, MASK);
            }
        }
    }
    if let Some(query_start) = redacted.find('?') {
        let (base, query) = redacted.split_at(query_start + 1);
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}={MASK}"),
                _ => pair.to_owned(),
            })
            .collect();
        redacted = format!("{base}{}", masked.join("&"));
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?} {secret}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(secret.redacted().expose(), MASK);
        assert!(Secret::default().redacted().is_empty());
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            redact_url("postgres://app:p%40ss:w@db.internal:5432/artifacts?sslmode=require"),
            "postgres://app:********@db.internal:5432/artifacts?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/artifacts?user=app&password=sekrit&sslmode=disable"),
            "postgres://db/artifacts?user=app&password=********&sslmode=disable"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(
            redact_url("sqlite://./data/catalog.db"),
            "sqlite://./data/catalog.db"
        );
    }
}
