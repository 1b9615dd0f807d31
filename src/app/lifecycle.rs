//! Lifecycle use cases: transitions, aliases, change history and diffs between versions.

use super::{Artifacts, Page, decode_position, encode_token, page_size, validate_scope};
use crate::domain::lifecycle::{LATEST_APPROVED, validate_alias_name};
use crate::domain::version::parse_version;
use crate::domain::{
    Alias, ArtifactVersion, Error, LifecycleState, Result, Scope, Transition, VersionRef, now_micros,
};
use similar::{ChangeTag, TextDiff};
use std::time::Duration;

/// Longest reason a transition may record.
pub const MAX_REASON_LEN: usize = 4096;
/// Largest version a diff reads, per side.
pub const MAX_DIFF_INPUT_BYTES: u64 = 4 * 1024 * 1024;
/// Longest diff returned; longer ones are cut at a line and flagged.
pub const MAX_DIFF_OUTPUT_BYTES: usize = 1024 * 1024;
const DEFAULT_CONTEXT_LINES: u32 = 3;
const MAX_CONTEXT_LINES: u32 = 100;

/// What one version changed, for the change history.
#[derive(Debug, Clone)]
pub struct VersionChange {
    pub version: ArtifactVersion,
    /// The version before, if any.
    pub previous: Option<String>,
    /// Logical bytes against the previous version.
    pub size_change: i64,
    /// Stored bytes shared with content stored before.
    pub reused_bytes: u64,
    /// Every transition, oldest first; the first is the state it was created in.
    pub transitions: Vec<Transition>,
}

/// A unified diff between two versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDiff {
    pub diff: String,
    pub truncated: bool,
    pub lines_added: u64,
    pub lines_removed: u64,
}

/// Longest a diff may search for the smallest edit before settling for a larger one.
const DIFF_DEADLINE: Duration = Duration::from_secs(2);

fn unified_diff(old: &str, new: &str, headers: &(String, String), context: u32) -> VersionDiff {
    let diff = TextDiff::configure().timeout(DIFF_DEADLINE).diff_lines(old, new);
    let (mut lines_added, mut lines_removed) = (0, 0);
    for change in diff.iter_all_changes() {
        match change.tag() {
            ChangeTag::Insert => lines_added += 1,
            ChangeTag::Delete => lines_removed += 1,
            ChangeTag::Equal => {}
        }
    }
    let mut text = diff
        .unified_diff()
        .context_radius(context as usize)
        .header(&headers.0, &headers.1)
        .to_string();
    let truncated = text.len() > MAX_DIFF_OUTPUT_BYTES;
    if truncated {
        // At the last line end within the limit: a newline is one byte, so this is always a
        // character boundary.
        let cut = text.as_bytes()[..MAX_DIFF_OUTPUT_BYTES]
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |end| end + 1);
        text.truncate(cut);
    }
    VersionDiff {
        diff: text,
        truncated,
        lines_added,
        lines_removed,
    }
}

impl Artifacts {
    /// Moves a version (named by version or alias) to `target`.
    #[allow(clippy::too_many_arguments)]
    pub async fn transition(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        target: LifecycleState,
        expected: Option<LifecycleState>,
        reason: &str,
        actor: &str,
    ) -> Result<(ArtifactVersion, Transition)> {
        validate_scope(scope)?;
        if reason.len() > MAX_REASON_LEN {
            return Err(Error::invalid(
                "reason",
                format!("is {} bytes long; the limit is {MAX_REASON_LEN}", reason.len()),
            ));
        }
        let artifact = self.require_own_artifact(scope, artifact_id).await?;
        let normalized;
        let requested = match VersionRef::of(version) {
            VersionRef::Version(text) => {
                normalized = parse_version("version", text)?.to_string();
                VersionRef::Version(&normalized)
            }
            VersionRef::Alias(name) if name != LATEST_APPROVED => {
                validate_alias_name("version", name)?;
                VersionRef::Alias(name)
            }
            other => other,
        };
        self.inner
            .catalog
            .transition(
                scope,
                &artifact.id,
                requested,
                expected,
                target,
                actor,
                reason,
                now_micros(),
            )
            .await
    }

    /// Points an alias at a version. `version` must be a version, not another alias, so that
    /// an alias never follows another one's later moves by surprise.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_alias(
        &self,
        scope: &Scope,
        artifact_id: &str,
        alias: &str,
        version: &str,
        expected: Option<&str>,
        actor: &str,
    ) -> Result<Alias> {
        validate_scope(scope)?;
        validate_alias_name("alias", alias)?;
        let version = parse_version("version", version)?.to_string();
        let expected = expected
            .map(|text| match text {
                "" => Ok(String::new()),
                text => parse_version("expected_version", text).map(|v| v.to_string()),
            })
            .transpose()?;
        let artifact = self.require_own_artifact(scope, artifact_id).await?;
        self.inner
            .catalog
            .set_alias(
                scope,
                &artifact.id,
                alias,
                &version,
                expected.as_deref(),
                actor,
                now_micros(),
            )
            .await
    }

    pub async fn delete_alias(
        &self,
        scope: &Scope,
        artifact_id: &str,
        alias: &str,
        expected: Option<&str>,
    ) -> Result<()> {
        validate_scope(scope)?;
        validate_alias_name("alias", alias)?;
        let expected = expected
            .map(|text| parse_version("expected_version", text).map(|v| v.to_string()))
            .transpose()?;
        let artifact = self.require_own_artifact(scope, artifact_id).await?;
        self.inner
            .catalog
            .delete_alias(scope, &artifact.id, alias, expected.as_deref(), now_micros())
            .await
    }

    pub async fn aliases(&self, scope: &Scope, artifact_id: &str) -> Result<Vec<Alias>> {
        validate_scope(scope)?;
        let artifact = self.require_artifact(scope, artifact_id).await?;
        self.inner.catalog.aliases(&artifact.id).await
    }

    /// Each version's change record, newest first, every state included.
    pub async fn change_history(
        &self,
        scope: &Scope,
        artifact_id: &str,
        requested_page_size: u32,
        page_token: &str,
    ) -> Result<Page<VersionChange>> {
        validate_scope(scope)?;
        let artifact = self.require_artifact(scope, artifact_id).await?;
        let before_seq = decode_position(page_token, "h")?;
        let limit = page_size(requested_page_size) as usize;
        // One more than the page tells whether there is a next page; one more again is the
        // version before the page's last one.
        let versions = self
            .inner
            .catalog
            .list_versions(&artifact.id, &LifecycleState::ALL, before_seq, limit as u32 + 2)
            .await?;
        let shown = versions.len().min(limit);
        let names: Vec<String> = versions[..shown].iter().map(|v| v.version.clone()).collect();
        let mut transitions = self.inner.catalog.transitions(&artifact.id, &names).await?;
        let items: Vec<VersionChange> = (0..shown)
            .map(|i| {
                let version = versions[i].clone();
                let previous = versions.get(i + 1);
                VersionChange {
                    previous: previous.map(|p| p.version.clone()),
                    size_change: version.size as i64 - previous.map_or(0, |p| p.size as i64),
                    reused_bytes: version.stored_size.saturating_sub(version.new_stored_size),
                    transitions: transitions.remove(&version.version).unwrap_or_default(),
                    version,
                }
            })
            .collect();
        let next_page_token = if versions.len() > limit {
            encode_token(&["h", &items.last().expect("a full page").version.seq.to_string()])
        } else {
            String::new()
        };
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// A unified diff between two text versions (each named by version or alias).
    pub async fn diff(
        &self,
        scope: &Scope,
        artifact_id: &str,
        from: &str,
        to: &str,
        context_lines: Option<u32>,
    ) -> Result<VersionDiff> {
        validate_scope(scope)?;
        let context = context_lines.unwrap_or(DEFAULT_CONTEXT_LINES);
        if context > MAX_CONTEXT_LINES {
            return Err(Error::invalid(
                "context_lines",
                format!("{context} is more than {MAX_CONTEXT_LINES}"),
            ));
        }
        let artifact = self.require_artifact(scope, artifact_id).await?;
        let old = self.require_version_in("from_version", &artifact, from).await?;
        let new = self.require_version_in("to_version", &artifact, to).await?;
        let old_text = self.diffable_text("from_version", scope, &old).await?;
        let new_text = self.diffable_text("to_version", scope, &new).await?;
        let headers = (
            format!("{}@{}", artifact.name, old.version),
            format!("{}@{}", artifact.name, new.version),
        );
        // Diffing is CPU work of up to quadratic cost: off the async workers, and bounded in
        // time (past the deadline the diff is still correct, only less minimal).
        tokio::task::spawn_blocking(move || unified_diff(&old_text, &new_text, &headers, context))
            .await
            .map_err(|e| Error::internal(format!("the diff task failed: {e}")))
    }

    async fn diffable_text(
        &self,
        field: &'static str,
        scope: &Scope,
        version: &ArtifactVersion,
    ) -> Result<String> {
        if !version.extracted.is_text {
            return Err(Error::invalid(
                field,
                format!(
                    "version {} is not text ({}): only text versions can be diffed",
                    version.version, version.content_type
                ),
            ));
        }
        if version.size > MAX_DIFF_INPUT_BYTES {
            return Err(Error::invalid(
                field,
                format!(
                    "version {} is {} bytes; diffs read at most {MAX_DIFF_INPUT_BYTES} bytes per version",
                    version.version, version.size
                ),
            ));
        }
        use crate::search::ContentReader;
        let bytes = self
            .read_prefix(scope, &version.artifact_id, &version.version, version.size)
            .await?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            Error::invalid(
                field,
                format!(
                    "version {} is not UTF-8 text: only text versions can be diffed",
                    version.version
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_diff_is_cut_at_a_line_end_even_among_multibyte_characters() {
        let new: String = (0..40_000).map(|i| format!("ligne {i} — déjà vu\n")).collect();
        let headers = ("a@1.0.0".to_owned(), "a@2.0.0".to_owned());
        let diff = unified_diff("", &new, &headers, 3);
        assert!(diff.truncated);
        assert!(diff.diff.len() <= MAX_DIFF_OUTPUT_BYTES && diff.diff.len() > MAX_DIFF_OUTPUT_BYTES / 2);
        assert!(diff.diff.ends_with('\n'));
        assert_eq!(diff.lines_added, 40_000);
        let whole = unified_diff("a\nb\n", "a\nc\n", &headers, 3);
        assert_eq!(
            whole.diff,
            "--- a@1.0.0\n+++ a@2.0.0\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
        );
        assert!(!whole.truncated);
    }
}
