//! Semantic versions of artifacts: parsing with field-naming errors and the bump rules.

use super::error::{Error, Result};
use super::names::quoted;
use semver::{Prerelease, Version};

/// Which part of the version a bump increments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bump {
    Major,
    Minor,
    Patch,
}

pub fn parse_version(field: &'static str, value: &str) -> Result<Version> {
    Version::parse(value).map_err(|error| {
        Error::invalid(
            field,
            format!("{} is not a semantic version ({error})", quoted(value)),
        )
    })
}

/// The next version after `current`. A prerelease is released by the bump that matches it
/// (`2.0.0-rc.1` bumped major is `2.0.0`), following the usual npm and cargo rules.
pub fn bump(current: &Version, kind: Bump) -> Version {
    let is_prerelease = !current.pre.is_empty();
    let next = match kind {
        Bump::Major if is_prerelease && current.minor == 0 && current.patch == 0 => {
            Version::new(current.major, 0, 0)
        }
        Bump::Major => Version::new(current.major + 1, 0, 0),
        Bump::Minor if is_prerelease && current.patch == 0 => Version::new(current.major, current.minor, 0),
        Bump::Minor => Version::new(current.major, current.minor + 1, 0),
        Bump::Patch if is_prerelease => Version::new(current.major, current.minor, current.patch),
        Bump::Patch => Version::new(current.major, current.minor, current.patch + 1),
    };
    debug_assert!(next.pre == Prerelease::EMPTY && next > *current);
    next
}

/// Versions are immutable and ordered: a new version must have higher precedence than the
/// latest one. Precedence ignores build metadata (semver §10): `1.2.3+b` is not newer than
/// `1.2.3+a`, although `semver::Version`'s `Ord` sorts them apart.
pub fn ensure_greater(field: &'static str, candidate: &Version, latest: &Version) -> Result<()> {
    if candidate.cmp_precedence(latest) != std::cmp::Ordering::Greater {
        let hint = if candidate.cmp_precedence(latest) == std::cmp::Ordering::Equal {
            " (build metadata does not make a version newer)"
        } else {
            ""
        };
        return Err(Error::FailedPrecondition(format!(
            "{field}: version {candidate} is not greater than the latest version {latest}{hint}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn bumps_follow_semver() {
        assert_eq!(bump(&v("1.2.3"), Bump::Patch), v("1.2.4"));
        assert_eq!(bump(&v("1.2.3"), Bump::Minor), v("1.3.0"));
        assert_eq!(bump(&v("1.2.3"), Bump::Major), v("2.0.0"));
        assert_eq!(bump(&v("6.0.0-Beta.8"), Bump::Patch), v("6.0.0"));
        assert_eq!(bump(&v("6.0.0-Beta.8"), Bump::Major), v("6.0.0"));
        assert_eq!(bump(&v("6.1.0-rc.1"), Bump::Minor), v("6.1.0"));
        assert_eq!(bump(&v("6.1.1-rc.1"), Bump::Minor), v("6.2.0"));
    }

    #[test]
    fn prereleases_order_before_releases() {
        assert!(v("6.0.0-Beta.4") < v("6.0.0-Beta.8"));
        assert!(v("6.0.0-Beta.8") < v("6.0.0"));
        assert!(ensure_greater("explicit_version", &v("6.0.0"), &v("6.0.0")).is_err());
        assert!(parse_version("initial_version", "1.0").is_err());
    }

    #[test]
    fn build_metadata_does_not_make_a_version_newer() {
        let error = ensure_greater("explicit_version", &v("1.2.3+b"), &v("1.2.3+a")).unwrap_err();
        assert!(error.to_string().contains("build metadata"), "{error}");
        assert!(ensure_greater("explicit_version", &v("1.2.3"), &v("1.2.3+a")).is_err());
        assert!(ensure_greater("explicit_version", &v("1.2.4+a"), &v("1.2.3+b")).is_ok());
        assert!(ensure_greater("explicit_version", &v("1.2.3-rc.1+z"), &v("1.2.3-rc.1+a")).is_err());
    }
}
