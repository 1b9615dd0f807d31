//! Dependencies between versions: what a version declares when it is created (a target
//! artifact, a semantic version requirement and a kind), and the rules they follow.

use super::names::{MAX_IDENTIFIER_LEN, quoted};
use super::{Error, Result};

/// Most dependencies one version may declare.
pub const MAX_DEPENDENCIES: usize = 64;

/// The artifact a declared dependency points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DependencyTarget {
    Id(String),
    /// By type and name, in `project` (the declaring version's own project when `None`) of
    /// the same tenant.
    Coordinates {
        project: Option<String>,
        artifact_type: String,
        name: String,
    },
}

/// A dependency as a caller declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencySpec {
    pub target: DependencyTarget,
    pub requirement: String,
    pub kind: String,
}

/// A dependency as stored: the target resolved to its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub target_id: String,
    pub requirement: String,
    pub kind: String,
}

/// Parses a requirement (`^1.2`, `~1.4`, `>=2, <3`, `=1.4.0`, `*`), naming the dependency
/// and what is wrong where.
pub fn parse_requirement(position: usize, text: &str) -> Result<semver::VersionReq> {
    if text.trim().is_empty() {
        return Err(Error::invalid(
            "dependencies",
            format!("dependencies[{position}].requirement is empty; use \"*\" for any version"),
        ));
    }
    semver::VersionReq::parse(text).map_err(|error| {
        Error::invalid(
            "dependencies",
            format!(
                "dependencies[{position}].requirement {} is not a version requirement: {error} (examples: ^1.2, ~1.4, >=2, <3, =1.4.0, *)",
                quoted(text)
            ),
        )
    })
}

/// Kinds: lowercase words joined by '-' (derived-from, implements, references).
pub fn validate_kind(position: usize, kind: &str) -> Result<()> {
    let valid = !kind.is_empty()
        && kind.len() <= MAX_IDENTIFIER_LEN
        && kind.starts_with(|c: char| c.is_ascii_lowercase())
        && kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            "dependencies",
            format!(
                "dependencies[{position}].kind {} is not a kind: use lowercase words joined by '-', such as derived-from, implements or references",
                quoted(kind)
            ),
        ))
    }
}

/// Whether `version` is one a resolution may choose under the policy: matching the
/// requirement, and a prerelease only when admitted (or when the requirement names a
/// prerelease of the same version, as semver's own matching allows).
pub fn admits(requirement: &semver::VersionReq, version: &semver::Version, prereleases: bool) -> bool {
    if requirement.matches(version) {
        return true;
    }
    if prereleases && !version.pre.is_empty() {
        // A prerelease precedes its release: it is admitted where its release is, but never
        // below a requirement's lower bound (`=1.4.0` does not take 1.4.0-rc.1).
        let release = semver::Version::new(version.major, version.minor, version.patch);
        return requirement.matches(&release)
            && requirement.comparators.iter().all(|c| match lower_bound(c) {
                Some(bound) => *version >= bound,
                None => true,
            });
    }
    false
}

/// The least version a comparator admits, for those that have one.
fn lower_bound(comparator: &semver::Comparator) -> Option<semver::Version> {
    use semver::Op;
    match comparator.op {
        Op::Exact | Op::Greater | Op::GreaterEq | Op::Tilde | Op::Caret | Op::Wildcard => {
            Some(semver::Version {
                major: comparator.major,
                minor: comparator.minor.unwrap_or(0),
                patch: comparator.patch.unwrap_or(0),
                pre: comparator.pre.clone(),
                build: semver::BuildMetadata::EMPTY,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_parse_or_say_where_they_are_wrong() {
        for good in ["^1.2", "~1.4", ">=2, <3", "=1.4.0", "*", "1"] {
            parse_requirement(0, good).unwrap();
        }
        let error = parse_requirement(2, ">=2, <x").unwrap_err().to_string();
        assert!(
            error.starts_with("dependencies: dependencies[2].requirement \">=2, <x\""),
            "{error}"
        );
        assert!(
            parse_requirement(0, " ")
                .unwrap_err()
                .to_string()
                .contains("use \"*\"")
        );
        validate_kind(0, "derived-from").unwrap();
        assert!(
            validate_kind(1, "Derived From")
                .unwrap_err()
                .to_string()
                .contains("dependencies[1].kind")
        );
    }

    #[test]
    fn prereleases_are_chosen_only_when_admitted() {
        let caret = semver::VersionReq::parse("^1.2").unwrap();
        let beta = semver::Version::parse("1.3.0-beta.1").unwrap();
        assert!(!admits(&caret, &beta, false));
        assert!(admits(&caret, &beta, true));
        assert!(admits(&caret, &semver::Version::parse("1.9.0").unwrap(), false));
        assert!(!admits(
            &caret,
            &semver::Version::parse("2.0.0-rc.1").unwrap(),
            true
        ));
        // Never below a lower bound.
        let exact = semver::VersionReq::parse("=1.4.0").unwrap();
        assert!(!admits(
            &exact,
            &semver::Version::parse("1.4.0-rc.1").unwrap(),
            true
        ));
        assert!(!admits(
            &caret,
            &semver::Version::parse("1.2.0-alpha").unwrap(),
            true
        ));
        let at_least = semver::VersionReq::parse(">=1.2.3").unwrap();
        assert!(!admits(
            &at_least,
            &semver::Version::parse("1.2.3-rc").unwrap(),
            true
        ));
        assert!(admits(
            &at_least,
            &semver::Version::parse("1.2.4-rc").unwrap(),
            true
        ));
    }
}
