//! Read-only links: an artifact shown in another project of its tenant without copying.
//! Reads through a link see the artifact as it is in the project it lives in; changes are
//! refused there and made at the origin.

use super::{Artifacts, validate_artifact_id, validate_scope};
use crate::domain::names::validate_identifier;
use crate::domain::{Artifact, Error, Result, Scope, now_micros};

impl Artifacts {
    /// Links the artifact `artifact_id`, visible in `scope`, into `target_project` of the same
    /// tenant; returns it as seen from there.
    pub async fn link(
        &self,
        scope: &Scope,
        artifact_id: &str,
        target_project: &str,
        actor: &str,
    ) -> Result<Artifact> {
        validate_scope(scope)?;
        validate_artifact_id(artifact_id)?;
        validate_identifier("target_project", target_project)?;
        let artifact = self.require_artifact(scope, artifact_id).await?;
        // A link of a link is a link of the artifact itself, wherever it was reached.
        let origin = Artifact {
            linked: None,
            ..artifact
        };
        if origin.scope.project == target_project {
            return Err(Error::invalid(
                "target_project",
                format!(
                    "artifact {artifact_id:?} lives in {}; link it into another project",
                    origin.scope
                ),
            ));
        }
        let into = Scope::new(origin.scope.tenant.clone(), target_project);
        self.inner
            .catalog
            .link_artifact(&into, &origin, actor, now_micros())
            .await?;
        self.require_artifact(&into, artifact_id).await
    }

    /// Removes the link of `artifact_id` into `scope`; returns the project it lives in.
    pub async fn unlink(&self, scope: &Scope, artifact_id: &str) -> Result<String> {
        validate_scope(scope)?;
        validate_artifact_id(artifact_id)?;
        self.inner
            .catalog
            .unlink_artifact(scope, artifact_id, now_micros())
            .await
            .map_err(|error| match error {
                Error::NotFound(message) => Error::NotFound(format!(
                    "{message} (only a link can be removed here; an artifact is deleted in its own project)"
                )),
                other => other,
            })
    }

    /// An artifact of `scope` that may be changed there: not one linked in from elsewhere.
    pub(super) async fn require_own_artifact(&self, scope: &Scope, artifact_id: &str) -> Result<Artifact> {
        let artifact = self.require_artifact(scope, artifact_id).await?;
        match &artifact.linked {
            None => Ok(artifact),
            Some(_) => Err(read_only(&artifact)),
        }
    }

    /// Why a change of `artifact_id` in `scope` found nothing: the artifact may be linked
    /// there read-only. Other errors pass unchanged.
    pub(super) async fn explain_missing(&self, scope: &Scope, artifact_id: &str, error: Error) -> Error {
        if !matches!(error, Error::NotFound(_)) {
            return error;
        }
        match self.inner.catalog.seen_artifact(scope, artifact_id).await {
            Ok(Some(artifact)) if artifact.linked.is_some() => read_only(&artifact),
            _ => error,
        }
    }
}

fn read_only(artifact: &Artifact) -> Error {
    Error::FailedPrecondition(format!(
        "artifact {:?} is linked read-only into {} from project {:?}; change it there",
        artifact.id.as_str(),
        artifact.seen_in(),
        artifact.scope.project
    ))
}
