//! Retention policies: which artifacts of a project a policy covers, which of their versions
//! it keeps and why, and what happens to the rest. Evaluation is a pure function of the
//! policy, the versions and the moment, so a dry run and an execution at the same moment
//! decide exactly the same set.

use super::names::quoted;
use super::{Error, LifecycleState, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest a policy's or hold's free text may be.
pub const MAX_TEXT_LEN: usize = 1024;
/// The longest a pattern may be; compiled patterns are also bounded in size.
pub const MAX_PATTERN_LEN: usize = 512;
const MAX_DAYS: i64 = 100 * 366;
const MAX_KEEP_LATEST: i64 = 1_000_000;
const DAY_MICROS: i64 = 86_400 * 1_000_000;

/// What a policy does to the versions no rule keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionAction {
    /// Move them to `archived` (a lifecycle transition).
    Archive,
    /// Move them to the trash, restorable until the deletion retention period ends.
    Delete,
}

impl RetentionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Archive => "archive",
            Self::Delete => "delete",
        }
    }
}

/// Rules that keep versions; a version any rule keeps is kept (Harbor's model).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepRules {
    /// Keep the newest N versions of each artifact (versions in the trash not counted).
    pub latest: Option<i64>,
    /// Keep versions created within this many days.
    pub created_within_days: Option<i64>,
    /// Keep versions read (downloaded) within this many days.
    pub read_within_days: Option<i64>,
    /// Keep versions whose version string matches this regular expression.
    pub version_pattern: Option<String>,
}

/// A policy as a caller writes it: what it covers, what it keeps, what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The artifact types covered; empty covers every type.
    #[serde(default)]
    pub artifact_types: Vec<String>,
    /// A regular expression over artifact names; absent covers every artifact.
    #[serde(default)]
    pub name_pattern: Option<String>,
    #[serde(default)]
    pub keep: KeepRules,
    pub action: RetentionAction,
    /// The states the policy may act on. Empty means draft, review and archived: approved
    /// versions are kept unless named here.
    #[serde(default, with = "states_text")]
    pub states: Vec<LifecycleState>,
    /// Required to delete approved versions: naming `approved` in `states` is not enough.
    #[serde(default)]
    pub allow_approved: bool,
    /// Seconds between scheduled executions; 0 runs the policy only when asked.
    #[serde(default)]
    pub schedule_seconds: i64,
}

mod states_text {
    use super::LifecycleState;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(states: &[LifecycleState], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(states.iter().map(|state| state.as_str()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<LifecycleState>, D::Error> {
        let names = Vec::<String>::deserialize(deserializer)?;
        names
            .iter()
            .map(|name| LifecycleState::parse("states", name).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// A policy whose patterns compiled: what evaluation works with.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub spec: PolicySpec,
    name_pattern: Option<regex::Regex>,
    version_pattern: Option<regex::Regex>,
}

fn compile(field: &'static str, pattern: &str) -> Result<regex::Regex> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "the pattern is {} bytes; at most {MAX_PATTERN_LEN}",
                pattern.len()
            ),
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|error| Error::invalid(field, format!("{} does not compile: {error}", quoted(pattern))))
}

fn check_count(field: &'static str, value: Option<i64>, max: i64) -> Result<()> {
    match value {
        Some(count) if count < 0 => Err(Error::invalid(field, format!("{count} is negative"))),
        Some(count) if count > max => Err(Error::invalid(
            field,
            format!("{count} is over the limit of {max}"),
        )),
        _ => Ok(()),
    }
}

impl PolicySpec {
    /// Reads a policy written as YAML or JSON; unknown fields are refused by name.
    pub fn from_document(text: &str) -> Result<Self> {
        let spec: PolicySpec = serde_norway::from_str(text)
            .map_err(|error| Error::invalid("document", format!("is not a retention policy: {error}")))?;
        Ok(spec)
    }

    /// The states acted on, with the default applied.
    pub fn acted_on(&self) -> Vec<LifecycleState> {
        if self.states.is_empty() {
            vec![
                LifecycleState::Draft,
                LifecycleState::Review,
                LifecycleState::Archived,
            ]
        } else {
            self.states.clone()
        }
    }

    /// Checks every field; the error names the first one that is wrong.
    pub fn compile(&self) -> Result<CompiledPolicy> {
        for (i, kind) in self.artifact_types.iter().enumerate() {
            if kind.is_empty() {
                return Err(Error::invalid(
                    "policy.artifact_types",
                    format!("entry {i} is empty"),
                ));
            }
            super::names::validate_identifier("policy.artifact_types", kind)?;
        }
        check_count("policy.keep.latest", self.keep.latest, MAX_KEEP_LATEST)?;
        check_count(
            "policy.keep.created_within_days",
            self.keep.created_within_days,
            MAX_DAYS,
        )?;
        check_count(
            "policy.keep.read_within_days",
            self.keep.read_within_days,
            MAX_DAYS,
        )?;
        if self.schedule_seconds < 0 {
            return Err(Error::invalid(
                "policy.schedule_seconds",
                format!("{} is negative", self.schedule_seconds),
            ));
        }
        if self.schedule_seconds > 0 && self.schedule_seconds < 60 {
            return Err(Error::invalid(
                "policy.schedule_seconds",
                format!(
                    "{} is too often; schedule at least 60 seconds apart, or 0 for on request",
                    self.schedule_seconds
                ),
            ));
        }
        let mut seen = Vec::new();
        for state in &self.states {
            if seen.contains(state) {
                return Err(Error::invalid("policy.states", format!("{state} is named twice")));
            }
            seen.push(*state);
        }
        let acted_on = self.acted_on();
        if self.action == RetentionAction::Delete
            && acted_on.contains(&LifecycleState::Approved)
            && !self.allow_approved
        {
            return Err(Error::invalid(
                "policy.allow_approved",
                "the policy would delete approved versions; set allow_approved to say so explicitly, or leave approved out of states",
            ));
        }
        if self.action == RetentionAction::Archive && acted_on == [LifecycleState::Archived] {
            return Err(Error::invalid(
                "policy.states",
                "an archive policy acting only on archived versions does nothing",
            ));
        }
        let name_pattern = match self.name_pattern.as_deref() {
            None | Some("") => None,
            Some(pattern) => Some(compile("policy.name_pattern", pattern)?),
        };
        let version_pattern = match self.keep.version_pattern.as_deref() {
            None | Some("") => None,
            Some(pattern) => Some(compile("policy.keep.version_pattern", pattern)?),
        };
        Ok(CompiledPolicy {
            spec: self.clone(),
            name_pattern,
            version_pattern,
        })
    }
}

/// What evaluation knows about one version.
#[derive(Debug, Clone)]
pub struct VersionFacts {
    pub version: String,
    pub seq: i64,
    pub state: LifecycleState,
    pub created_at: i64,
    pub last_read_at: Option<i64>,
    pub aliases: Vec<String>,
    /// A legal hold on this version.
    pub held: bool,
}

/// What evaluation knows about one artifact and its versions outside the trash.
#[derive(Debug, Clone)]
pub struct ArtifactFacts {
    pub artifact_id: String,
    pub artifact_type: String,
    pub name: String,
    pub latest_version: String,
    /// A legal hold on the whole artifact.
    pub held: bool,
    pub versions: Vec<VersionFacts>,
}

/// What a policy does to one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Keep,
    Archive,
    Delete,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keep => "keep",
            Self::Archive => "archive",
            Self::Delete => "delete",
        }
    }
}

/// One version's fate and the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub artifact_id: String,
    pub artifact_name: String,
    pub version: String,
    pub state: String,
    pub verdict: Verdict,
    /// A stable name: `legal_hold`, `latest_version`, `alias`, `state`, `keep.latest`,
    /// `keep.created_within_days`, `keep.read_within_days`, `keep.version_pattern`, or
    /// `no_keep_rule` for versions the action applies to.
    pub rule: String,
    pub reason: String,
}

impl Decision {
    pub fn affects(&self) -> bool {
        self.verdict != Verdict::Keep
    }
}

impl CompiledPolicy {
    /// Whether the policy covers an artifact of this type and name.
    pub fn covers(&self, artifact_type: &str, name: &str) -> bool {
        (self.spec.artifact_types.is_empty() || self.spec.artifact_types.iter().any(|t| t == artifact_type))
            && self
                .name_pattern
                .as_ref()
                .is_none_or(|pattern| pattern.is_match(name))
    }

    /// Decides every version of a covered artifact, newest first. `now` is in microseconds.
    pub fn evaluate(&self, artifact: &ArtifactFacts, now: i64) -> Vec<Decision> {
        let mut versions: Vec<&VersionFacts> = artifact.versions.iter().collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.seq));
        let acted_on = self.spec.acted_on();
        let keep = &self.spec.keep;
        versions
            .iter()
            .enumerate()
            .map(|(rank, version)| {
                let decide = |verdict: Verdict, rule: &str, reason: String| Decision {
                    artifact_id: artifact.artifact_id.clone(),
                    artifact_name: artifact.name.clone(),
                    version: version.version.clone(),
                    state: version.state.as_str().to_owned(),
                    verdict,
                    rule: rule.to_owned(),
                    reason,
                };
                let kept = |rule: &str, reason: String| decide(Verdict::Keep, rule, reason);
                if artifact.held {
                    return kept("legal_hold", "the artifact is under a legal hold".into());
                }
                if version.held {
                    return kept("legal_hold", "the version is under a legal hold".into());
                }
                if version.version == artifact.latest_version {
                    return kept(
                        "latest_version",
                        "the artifact's latest version is always kept".into(),
                    );
                }
                if let Some(alias) = version.aliases.first() {
                    return kept("alias", format!("alias {} points to it", quoted(alias)));
                }
                if !acted_on.contains(&version.state) {
                    return kept(
                        "state",
                        format!("the policy does not act on {} versions", version.state),
                    );
                }
                if let Some(latest) = keep.latest
                    && (rank as i64) < latest
                {
                    return kept(
                        "keep.latest",
                        format!("one of the newest {latest} versions (number {})", rank + 1),
                    );
                }
                if let Some(days) = keep.created_within_days
                    && version.created_at >= now - days.saturating_mul(DAY_MICROS)
                {
                    return kept("keep.created_within_days", format!("created within {days} days"));
                }
                if let Some(days) = keep.read_within_days
                    && version
                        .last_read_at
                        .is_some_and(|read| read >= now - days.saturating_mul(DAY_MICROS))
                {
                    return kept("keep.read_within_days", format!("read within {days} days"));
                }
                if let Some(pattern) = &self.version_pattern
                    && pattern.is_match(&version.version)
                {
                    return kept(
                        "keep.version_pattern",
                        format!("matches {}", quoted(pattern.as_str())),
                    );
                }
                match self.spec.action {
                    RetentionAction::Archive if version.state == LifecycleState::Archived => {
                        kept("state", "already archived".into())
                    }
                    RetentionAction::Archive => decide(
                        Verdict::Archive,
                        "no_keep_rule",
                        format!("no rule keeps it; {} → archived", version.state),
                    ),
                    RetentionAction::Delete => decide(
                        Verdict::Delete,
                        "no_keep_rule",
                        "no rule keeps it; moved to the trash".into(),
                    ),
                }
            })
            .collect()
    }
}

/// A fingerprint of what a plan affects: an execution given it refuses to act when its own
/// plan differs (the catalog changed since the dry run).
pub fn plan_fingerprint(revision: i64, decisions: &[Decision]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&revision.to_le_bytes());
    for decision in decisions.iter().filter(|d| d.affects()) {
        for part in [
            &decision.artifact_id,
            &decision.version,
            decision.verdict.as_str(),
        ] {
            hasher.update(part.as_bytes());
            hasher.update(&[0]);
        }
    }
    hasher.finalize().to_hex()[..32].to_owned()
}

/// A policy as stored.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    pub id: String,
    pub tenant: String,
    pub project: String,
    pub name: String,
    pub spec: PolicySpec,
    pub revision: i64,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_run_at: Option<i64>,
}

/// How a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunTrigger {
    Request,
    Schedule,
}

impl RunTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Schedule => "schedule",
        }
    }
}

impl fmt::Display for RunTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One evaluation or execution of a policy, kept in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetentionRun {
    pub id: String,
    pub policy_id: String,
    pub policy_name: String,
    pub policy_revision: i64,
    pub trigger: RunTrigger,
    pub dry_run: bool,
    pub started_at: i64,
    pub finished_at: i64,
    pub plan: String,
    pub examined: u64,
    /// The versions the plan affects (every one, kept versions are only counted).
    pub affected: Vec<Decision>,
    pub kept: u64,
    /// Of the affected, those executed.
    pub applied: u64,
    /// Affected versions not executed, each with why (the catalog changed in between).
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub artifact_id: String,
    pub version: String,
    pub reason: String,
}

/// A hold on an artifact or one of its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalHold {
    pub artifact_id: String,
    /// Empty for the whole artifact.
    pub version: String,
    pub reason: String,
    pub held_by: String,
    pub held_at: i64,
}

/// Something in the trash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashItem {
    pub artifact_id: String,
    pub artifact_type: String,
    pub name: String,
    /// Empty when the whole artifact is in the trash.
    pub version: String,
    pub size: u64,
    pub deleted_at: i64,
    pub deleted_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(action: RetentionAction) -> PolicySpec {
        PolicySpec {
            artifact_types: vec![],
            name_pattern: None,
            keep: KeepRules::default(),
            action,
            states: vec![],
            allow_approved: false,
            schedule_seconds: 0,
        }
    }

    fn version(n: i64, state: LifecycleState) -> VersionFacts {
        VersionFacts {
            version: format!("1.0.{n}"),
            seq: n,
            state,
            created_at: n * DAY_MICROS,
            last_read_at: None,
            aliases: vec![],
            held: false,
        }
    }

    fn artifact(versions: Vec<VersionFacts>) -> ArtifactFacts {
        let latest = versions.iter().max_by_key(|v| v.seq).unwrap().version.clone();
        ArtifactFacts {
            artifact_id: "a".into(),
            artifact_type: "prd".into(),
            name: "payments-prd".into(),
            latest_version: latest,
            held: false,
            versions,
        }
    }

    #[test]
    fn documents_with_unknown_fields_or_bad_values_are_refused_by_name() {
        let error = PolicySpec::from_document("action: delete\nkeep:\n  lattest: 3\n").unwrap_err();
        assert!(
            error.to_string().starts_with("document:") && error.to_string().contains("lattest"),
            "{error}"
        );
        let negative = PolicySpec::from_document("action: delete\nkeep:\n  latest: -2\n").unwrap();
        let error = negative.compile().unwrap_err().to_string();
        assert!(
            error.starts_with("policy.keep.latest:") && error.contains("-2"),
            "{error}"
        );
        let mut bad = spec(RetentionAction::Delete);
        bad.name_pattern = Some("prd-(".into());
        let error = bad.compile().unwrap_err().to_string();
        assert!(error.starts_with("policy.name_pattern:"), "{error}");
        let error = PolicySpec::from_document("action: delete\nstates: [approved]\n")
            .unwrap()
            .compile()
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("policy.allow_approved:"), "{error}");
        assert!(
            PolicySpec::from_document("action: delete\nstates: [approved]\nallow_approved: true\n")
                .unwrap()
                .compile()
                .is_ok()
        );
    }

    #[test]
    fn every_version_gets_the_first_rule_that_decides_it() {
        let mut policy = spec(RetentionAction::Delete);
        policy.keep.latest = Some(2);
        policy.keep.version_pattern = Some(r"^1\.0\.1$".into());
        let compiled = policy.compile().unwrap();
        let mut versions: Vec<VersionFacts> = (1..=6).map(|n| version(n, LifecycleState::Draft)).collect();
        versions[1].state = LifecycleState::Approved; // 1.0.2
        versions[2].aliases = vec!["stable".into()]; // 1.0.3
        let decisions = compiled.evaluate(&artifact(versions), 10 * DAY_MICROS);
        let rules: Vec<(&str, &str)> = decisions
            .iter()
            .map(|d| (d.version.as_str(), d.rule.as_str()))
            .collect();
        assert_eq!(
            rules,
            vec![
                ("1.0.6", "latest_version"),
                ("1.0.5", "keep.latest"),
                ("1.0.4", "no_keep_rule"),
                ("1.0.3", "alias"),
                ("1.0.2", "state"),
                ("1.0.1", "keep.version_pattern"),
            ]
        );
        assert_eq!(decisions[2].verdict, Verdict::Delete);
    }
}
