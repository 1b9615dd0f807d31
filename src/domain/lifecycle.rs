//! A version's life: draft → review → approved → archived, the table of allowed moves, the
//! record of each move, and aliases (named pointers to versions).

use super::names::{MAX_IDENTIFIER_LEN, quoted};
use super::{Error, Result, Timestamp};
use std::fmt;

/// Where a version is in its life.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LifecycleState {
    #[default]
    Draft,
    Review,
    Approved,
    Archived,
}

impl LifecycleState {
    pub const ALL: [LifecycleState; 4] = [Self::Draft, Self::Review, Self::Approved, Self::Archived];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Review => "review",
            Self::Approved => "approved",
            Self::Archived => "archived",
        }
    }

    /// The state stored under `text` in the catalog or named by a caller.
    pub fn parse(field: &'static str, text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| {
                Error::invalid(
                    field,
                    format!(
                        "{} is not a lifecycle state; the states are {}",
                        quoted(text),
                        list(&Self::ALL)
                    ),
                )
            })
    }

    /// The table of allowed moves. Review goes back to draft when changes are requested;
    /// approval is withdrawn only by archiving; an archived version may be reopened for
    /// review, never straight back to approved.
    pub fn allowed_targets(self) -> &'static [LifecycleState] {
        match self {
            Self::Draft => &[Self::Review, Self::Archived],
            Self::Review => &[Self::Draft, Self::Approved, Self::Archived],
            Self::Approved => &[Self::Archived],
            Self::Archived => &[Self::Review],
        }
    }

    pub fn may_move_to(self, target: LifecycleState) -> bool {
        self.allowed_targets().contains(&target)
    }

    /// A version is created in draft, or directly in review.
    pub fn validate_initial(field: &'static str, state: LifecycleState) -> Result<LifecycleState> {
        match state {
            Self::Draft | Self::Review => Ok(state),
            other => Err(Error::invalid(
                field,
                format!("a version is created in draft or review, not {other}"),
            )),
        }
    }

    /// Whether versions in this state appear in listings that name no states.
    pub fn listed_by_default(self) -> bool {
        self != Self::Archived
    }

    /// The states a listing covers: those asked for, or every state listed by default.
    pub fn or_default_listing(states: &[LifecycleState]) -> Vec<LifecycleState> {
        if states.is_empty() {
            Self::ALL.into_iter().filter(|s| s.listed_by_default()).collect()
        } else {
            let mut states = states.to_vec();
            states.sort();
            states.dedup();
            states
        }
    }

    /// The refusal of a move from `self` (the current state) to `target`, naming both and
    /// where `self` may go.
    pub fn refusal(self, subject: &str, target: LifecycleState) -> Error {
        let allowed = self.allowed_targets();
        let onward = if allowed.is_empty() {
            "it can move nowhere".to_owned()
        } else {
            format!("from {self} it may move to {}", list(allowed))
        };
        Error::FailedPrecondition(format!(
            "{subject} is {self} and cannot move to {target}: {onward}"
        ))
    }
}

impl fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn list(states: &[LifecycleState]) -> String {
    states.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// One move of a version's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// `None` for the state the version was created in.
    pub from: Option<LifecycleState>,
    pub to: LifecycleState,
    pub actor: String,
    pub reason: String,
    pub at: Timestamp,
}

/// The alias the service keeps on the highest approved version.
pub const LATEST_APPROVED: &str = "latest-approved";
/// Aliases nobody may set: they would shadow what an empty version means.
const RESERVED_ALIASES: [&str; 2] = [LATEST_APPROVED, "latest"];

/// A named pointer to a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub name: String,
    pub version: String,
    pub updated_by: String,
    pub updated_at: Timestamp,
    /// Kept by the service (`latest-approved`), not set by callers.
    pub maintained: bool,
}

/// Alias names: lowercase letters, digits, `.`, `_` and `-`, starting with a letter, so that
/// no alias can be read as a version; `latest` and `latest-approved` are the service's.
pub fn validate_alias_name(field: &'static str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if name.len() > MAX_IDENTIFIER_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "{} is {} bytes long; the limit is {MAX_IDENTIFIER_LEN}",
                quoted(name),
                name.len()
            ),
        ));
    }
    let starts_with_letter = name.starts_with(|c: char| c.is_ascii_lowercase());
    let allowed = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !starts_with_letter || !allowed {
        return Err(Error::invalid(
            field,
            format!(
                "{} is not a valid alias: use lowercase letters, digits, '.', '_' and '-', starting with a letter",
                quoted(name)
            ),
        ));
    }
    if RESERVED_ALIASES.contains(&name) {
        return Err(Error::invalid(
            field,
            format!("{} is kept by the service and cannot be set", quoted(name)),
        ));
    }
    Ok(())
}

/// What a caller's version text names: nothing (the latest), a version, or an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRef<'a> {
    Latest,
    Version(&'a str),
    Alias(&'a str),
}

impl<'a> VersionRef<'a> {
    /// Versions begin with a digit (semantic versions, "1.4.0"); aliases with a letter;
    /// nothing, or `latest`, is the latest version.
    pub fn of(text: &'a str) -> Self {
        if text.is_empty() || text == "latest" {
            Self::Latest
        } else if text.starts_with(|c: char| c.is_ascii_digit()) {
            Self::Version(text)
        } else {
            Self::Alias(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LifecycleState::*;

    #[test]
    fn the_transition_table_is_what_the_readme_says() {
        let mut moves = Vec::new();
        for from in LifecycleState::ALL {
            for to in LifecycleState::ALL {
                if from.may_move_to(to) {
                    moves.push(format!("{from}->{to}"));
                }
            }
        }
        assert_eq!(
            moves,
            [
                "draft->review",
                "draft->archived",
                "review->draft",
                "review->approved",
                "review->archived",
                "approved->archived",
                "archived->review"
            ]
        );
        for state in LifecycleState::ALL {
            assert!(!state.may_move_to(state), "{state} to itself is not a move");
            assert_eq!(LifecycleState::parse("state", state.as_str()).unwrap(), state);
        }
    }

    #[test]
    fn refusals_name_the_current_state_and_where_it_may_go() {
        let message = Approved.refusal("version 1.0.0", Draft).to_string();
        assert_eq!(
            message,
            "version 1.0.0 is approved and cannot move to draft: from approved it may move to archived"
        );
        let unknown = LifecycleState::parse("target_state", "published")
            .unwrap_err()
            .to_string();
        assert!(
            unknown.starts_with("target_state:") && unknown.contains("draft, review, approved, archived"),
            "{unknown}"
        );
        assert!(LifecycleState::validate_initial("initial_state", Approved).is_err());
        assert_eq!(
            LifecycleState::validate_initial("initial_state", Review).unwrap(),
            Review
        );
    }

    #[test]
    fn alias_names_cannot_be_read_as_versions_or_shadow_the_services_own() {
        for good in ["prod", "sprint-12", "release.candidate", "a"] {
            validate_alias_name("alias", good).unwrap();
            assert_eq!(VersionRef::of(good), VersionRef::Alias(good));
        }
        for bad in [
            "",
            "1.0.0",
            "Prod",
            "-x",
            "a/b",
            "latest",
            "latest-approved",
            &"a".repeat(64),
        ] {
            let error = validate_alias_name("alias", bad).unwrap_err().to_string();
            assert!(error.starts_with("alias:"), "{bad}: {error}");
        }
        assert_eq!(VersionRef::of("1.4.0-rc.1"), VersionRef::Version("1.4.0-rc.1"));
        assert_eq!(VersionRef::of(""), VersionRef::Latest);
    }
}
