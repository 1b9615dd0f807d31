//! Workflow runs: recording what a run read, a run's inputs and outputs, and a version's
//! provenance (the run that produced it, what that run read, and so on back).

use super::{Artifacts, validate_scope};
use crate::domain::run::{InputSource, validate_run_id};
use crate::domain::{Artifact, ArtifactVersion, Error, Result, Scope, Timestamp, now_micros};
use std::collections::HashSet;

pub const DEFAULT_PROVENANCE_DEPTH: u32 = 32;
pub const MAX_PROVENANCE_DEPTH: u32 = 256;
/// Most inputs one RecordRunInputs call may name.
pub const MAX_INPUTS_PER_CALL: usize = 1000;
/// Most versions a provenance walk reports.
pub const MAX_PROVENANCE_STEPS: usize = 10_000;

/// A version a run read or produced.
#[derive(Debug, Clone)]
pub struct RunVersion {
    pub artifact: Artifact,
    pub version: ArtifactVersion,
    /// For inputs: "explicit" or "download".
    pub how: String,
    pub at: Timestamp,
}

/// One version on the way back, and what the run that produced it read.
#[derive(Debug, Clone)]
pub struct ProvenanceStep {
    pub version: RunVersion,
    pub depth: u32,
    pub read: Vec<RunVersion>,
}

impl Artifacts {
    /// Records that `run_id` read the version a download sends.
    pub async fn record_download(
        &self,
        scope: &Scope,
        run_id: &str,
        artifact_id: &str,
        version: &str,
    ) -> Result<()> {
        validate_run_id("x-artifactd-run", run_id)?;
        self.inner
            .catalog
            .record_run_input(
                &scope.tenant,
                run_id,
                artifact_id,
                version,
                InputSource::Download,
                now_micros(),
            )
            .await?;
        self.warm_after_run_read(&scope.tenant, run_id, artifact_id);
        Ok(())
    }

    /// Records what a run read: each input a version or alias of an artifact in `scope`.
    pub async fn record_run_inputs(
        &self,
        scope: &Scope,
        run_id: &str,
        inputs: &[(String, String)],
    ) -> Result<Vec<RunVersion>> {
        validate_scope(scope)?;
        validate_run_id("run_id", run_id)?;
        if inputs.is_empty() || inputs.len() > MAX_INPUTS_PER_CALL {
            return Err(Error::invalid(
                "inputs",
                format!("give 1 to {MAX_INPUTS_PER_CALL} inputs, not {}", inputs.len()),
            ));
        }
        // Every input is checked before anything is recorded.
        let mut resolved = Vec::with_capacity(inputs.len());
        for (index, (artifact_id, version)) in inputs.iter().enumerate() {
            let named = |error: Error| match error {
                Error::InvalidArgument { field, message } => {
                    Error::invalid("inputs", format!("inputs[{index}].{field}: {message}"))
                }
                Error::NotFound(message) => Error::NotFound(format!("inputs[{index}]: {message}")),
                other => other,
            };
            let artifact = self.require_artifact(scope, artifact_id).await.map_err(named)?;
            let version = self.require_version(&artifact, version).await.map_err(named)?;
            resolved.push((artifact, version));
        }
        let now = now_micros();
        let mut recorded = Vec::with_capacity(resolved.len());
        for (artifact, version) in resolved {
            self.inner
                .catalog
                .record_run_input(
                    &scope.tenant,
                    run_id,
                    &artifact.id,
                    &version.version,
                    InputSource::Explicit,
                    now,
                )
                .await?;
            recorded.push(RunVersion {
                artifact,
                version,
                how: InputSource::Explicit.as_str().to_owned(),
                at: Timestamp(now),
            });
        }
        Ok(recorded)
    }

    /// A run's inputs and outputs in the tenant; NOT_FOUND when it has neither.
    pub async fn run(&self, tenant: &str, run_id: &str) -> Result<(Vec<RunVersion>, Vec<RunVersion>)> {
        crate::domain::names::validate_identifier("tenant", tenant)?;
        validate_run_id("run_id", run_id)?;
        let inputs = self.run_inputs(tenant, run_id).await?;
        let mut outputs = Vec::new();
        for (artifact_id, version) in self.inner.catalog.run_outputs(tenant, run_id).await? {
            if let Some(found) = self
                .version_view(tenant, &artifact_id, &version, String::new(), None)
                .await?
            {
                outputs.push(found);
            }
        }
        if inputs.is_empty() && outputs.is_empty() {
            return Err(Error::not_found(format!(
                "no run {run_id:?} in tenant {tenant}: nothing records reading or producing with it"
            )));
        }
        Ok((inputs, outputs))
    }

    async fn run_inputs(&self, tenant: &str, run_id: &str) -> Result<Vec<RunVersion>> {
        let mut inputs = Vec::new();
        for input in self.inner.catalog.run_inputs(tenant, run_id).await? {
            if let Some(found) = self
                .version_view(
                    tenant,
                    &input.artifact_id,
                    &input.version,
                    input.how,
                    Some(Timestamp(input.at)),
                )
                .await?
            {
                inputs.push(found);
            }
        }
        Ok(inputs)
    }

    /// A version of an artifact of the tenant (deleted ones included: history stays true).
    async fn version_view(
        &self,
        tenant: &str,
        artifact_id: &str,
        version: &str,
        how: String,
        at: Option<Timestamp>,
    ) -> Result<Option<RunVersion>> {
        let Some(artifact) = self
            .inner
            .catalog
            .tenant_artifacts(tenant, &[artifact_id.to_owned()], true)
            .await?
            .remove(artifact_id)
        else {
            return Ok(None);
        };
        let Some(version) = self.inner.catalog.version(artifact_id, version).await? else {
            return Ok(None);
        };
        let at = at.unwrap_or(version.created_at);
        Ok(Some(RunVersion {
            artifact,
            version,
            how,
            at,
        }))
    }

    /// Where a version came from: its producing run and what that run read, then the runs
    /// that produced those, up to `max_depth` runs back. Returns the steps and whether it
    /// stopped at the depth limit.
    pub async fn provenance(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        max_depth: u32,
    ) -> Result<(Vec<ProvenanceStep>, bool)> {
        validate_scope(scope)?;
        if max_depth > MAX_PROVENANCE_DEPTH {
            return Err(Error::invalid(
                "max_depth",
                format!("{max_depth} is more than {MAX_PROVENANCE_DEPTH}"),
            ));
        }
        let max_depth = if max_depth == 0 {
            DEFAULT_PROVENANCE_DEPTH
        } else {
            max_depth
        };
        let artifact = self.require_artifact(scope, artifact_id).await?;
        let version = self.require_version(&artifact, version).await?;
        let mut steps = Vec::new();
        let mut truncated = false;
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let start = RunVersion {
            at: version.created_at,
            artifact,
            version,
            how: String::new(),
        };
        let mut frontier = vec![start];
        let mut depth = 0;
        // A run's inputs are read once per walk, however many of its outputs it meets.
        let mut inputs_of: std::collections::HashMap<String, Vec<RunVersion>> =
            std::collections::HashMap::new();
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for current in frontier {
                if !seen.insert((current.artifact.id.to_string(), current.version.version.clone())) {
                    continue;
                }
                if steps.len() >= MAX_PROVENANCE_STEPS {
                    truncated = true;
                    break;
                }
                let read = match &current.version.produced_by {
                    Some(run) if depth < max_depth => match inputs_of.get(&run.run_id) {
                        Some(read) => read.clone(),
                        None => {
                            let read = self.run_inputs(&scope.tenant, &run.run_id).await?;
                            inputs_of.insert(run.run_id.clone(), read.clone());
                            read
                        }
                    },
                    Some(_) => {
                        truncated = true;
                        Vec::new()
                    }
                    None => Vec::new(),
                };
                next.extend(read.iter().cloned());
                steps.push(ProvenanceStep {
                    version: current,
                    depth,
                    read,
                });
            }
            frontier = next;
            depth += 1;
        }
        Ok((steps, truncated))
    }
}
