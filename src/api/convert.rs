//! Domain values to wire messages.

use crate::app::{DependentVersion, RequiredBy, Resolution, Resolved, RunVersion};
use crate::domain::dependency::{Dependency, DependencySpec, DependencyTarget};
use crate::domain::event::{ChangeEvent, EventKind};
use crate::domain::run::WorkflowRun;
use crate::domain::{Alias, Artifact, ArtifactVersion, Error, LifecycleState, Result, Timestamp, Transition};
use crate::ingest::extract::Extracted;
use crate::proto;

pub fn timestamp(at: Timestamp) -> prost_types::Timestamp {
    let micros = at.as_micros();
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

pub fn artifact(artifact: &Artifact) -> proto::Artifact {
    proto::Artifact {
        id: artifact.id.to_string(),
        tenant: artifact.scope.tenant.clone(),
        project: artifact.scope.project.clone(),
        artifact_type: artifact.artifact_type.clone(),
        name: artifact.name.clone(),
        description: artifact.description.clone(),
        tags: artifact.tags.clone(),
        categories: artifact.categories.clone(),
        metadata: artifact.metadata.clone().into_iter().collect(),
        latest_version: artifact.latest_version.clone(),
        version_count: artifact.version_count,
        created_at: Some(timestamp(artifact.created_at)),
        updated_at: Some(timestamp(artifact.updated_at)),
        deleted_at: artifact.deleted_at.map(timestamp),
        created_by: artifact.created_by.clone(),
        link: artifact.linked.as_ref().map(|link| proto::ArtifactLink {
            project: link.scope.project.clone(),
            linked_by: link.linked_by.clone(),
            linked_at: Some(timestamp(link.linked_at)),
        }),
    }
}

pub fn version(record: &ArtifactVersion) -> proto::ArtifactVersion {
    proto::ArtifactVersion {
        artifact_id: record.artifact_id.to_string(),
        version: record.version.clone(),
        size: record.size,
        stored_size: record.stored_size,
        new_stored_size: record.new_stored_size,
        blake3: record.blake3.clone(),
        chunk_count: record.chunk_count,
        created_by: record.created_by.clone(),
        created_at: Some(timestamp(record.created_at)),
        change_message: record.change_message.clone(),
        state: lifecycle_state(record.state) as i32,
        produced_by: record.produced_by.as_ref().map(workflow_run),
        dedup_saved_bytes: record.dedup_saved_bytes,
        delta_saved_bytes: record.delta_saved_bytes,
    }
}

pub fn storage_stats(stats: &crate::domain::StorageStats) -> proto::StorageStats {
    proto::StorageStats {
        versions: stats.versions,
        logical_bytes: stats.logical_bytes,
        stored_bytes: stats.stored_bytes,
        dedup_saved_bytes: stats.dedup_saved_bytes,
        delta_saved_bytes: stats.delta_saved_bytes,
        compression_saved_bytes: stats.compression_saved_bytes(),
    }
}

pub fn workflow_run(run: &WorkflowRun) -> proto::WorkflowRun {
    proto::WorkflowRun {
        run_id: run.run_id.clone(),
        workflow: run.workflow.clone(),
        step: run.step.clone(),
        agent: run.agent.clone(),
    }
}

/// A run a version declares; absent or with an empty run id means none.
pub fn workflow_run_from(run: Option<proto::WorkflowRun>) -> Option<WorkflowRun> {
    run.filter(|r| !(r.run_id.is_empty() && r.workflow.is_empty() && r.step.is_empty() && r.agent.is_empty()))
        .map(|r| WorkflowRun {
            run_id: r.run_id,
            workflow: r.workflow,
            step: r.step,
            agent: r.agent,
        })
}

pub fn run_version(v: &RunVersion) -> proto::RunVersion {
    proto::RunVersion {
        artifact_id: v.artifact.id.to_string(),
        project: v.artifact.scope.project.clone(),
        artifact_type: v.artifact.artifact_type.clone(),
        name: v.artifact.name.clone(),
        version: v.version.version.clone(),
        how: v.how.clone(),
        at: Some(timestamp(v.at)),
        produced_by: v.version.produced_by.as_ref().map(workflow_run),
    }
}

pub fn lifecycle_state(state: LifecycleState) -> proto::LifecycleState {
    match state {
        LifecycleState::Draft => proto::LifecycleState::Draft,
        LifecycleState::Review => proto::LifecycleState::Review,
        LifecycleState::Approved => proto::LifecycleState::Approved,
        LifecycleState::Archived => proto::LifecycleState::Archived,
    }
}

/// A state a caller named; UNSPECIFIED (0) is `None`, numbers outside the enum are refused.
pub fn lifecycle_state_from(field: &'static str, value: i32) -> Result<Option<LifecycleState>> {
    match proto::LifecycleState::try_from(value) {
        Ok(proto::LifecycleState::Unspecified) => Ok(None),
        Ok(proto::LifecycleState::Draft) => Ok(Some(LifecycleState::Draft)),
        Ok(proto::LifecycleState::Review) => Ok(Some(LifecycleState::Review)),
        Ok(proto::LifecycleState::Approved) => Ok(Some(LifecycleState::Approved)),
        Ok(proto::LifecycleState::Archived) => Ok(Some(LifecycleState::Archived)),
        Err(_) => Err(Error::invalid(
            field,
            format!("{value} is not a lifecycle state (1 draft, 2 review, 3 approved, 4 archived)"),
        )),
    }
}

/// States a caller listed, for a filter; an UNSPECIFIED among them is refused.
pub fn lifecycle_states_from(field: &'static str, values: &[i32]) -> Result<Vec<LifecycleState>> {
    values
        .iter()
        .map(|value| {
            lifecycle_state_from(field, *value)?.ok_or_else(|| {
                Error::invalid(field, "LIFECYCLE_STATE_UNSPECIFIED is not a state to filter by")
            })
        })
        .collect()
}

pub fn transition(transition: &Transition) -> proto::Transition {
    proto::Transition {
        from_state: transition
            .from
            .map_or(proto::LifecycleState::Unspecified, lifecycle_state) as i32,
        to_state: lifecycle_state(transition.to) as i32,
        actor: transition.actor.clone(),
        reason: transition.reason.clone(),
        at: Some(timestamp(transition.at)),
    }
}

pub fn event_kind(kind: EventKind) -> proto::EventKind {
    match kind {
        EventKind::ArtifactCreated => proto::EventKind::ArtifactCreated,
        EventKind::VersionAdded => proto::EventKind::VersionAdded,
        EventKind::VersionTransitioned => proto::EventKind::VersionTransitioned,
        EventKind::LabelsChanged => proto::EventKind::LabelsChanged,
        EventKind::AliasMoved => proto::EventKind::AliasMoved,
        EventKind::ArtifactDeleted => proto::EventKind::ArtifactDeleted,
        EventKind::ArtifactRestored => proto::EventKind::ArtifactRestored,
        EventKind::ArtifactPurged => proto::EventKind::ArtifactPurged,
        EventKind::VersionDeleted => proto::EventKind::VersionDeleted,
        EventKind::VersionRestored => proto::EventKind::VersionRestored,
        EventKind::VersionPurged => proto::EventKind::VersionPurged,
        EventKind::ArtifactRecovered => proto::EventKind::ArtifactRecovered,
        EventKind::ArtifactLinked => proto::EventKind::ArtifactLinked,
        EventKind::ArtifactUnlinked => proto::EventKind::ArtifactUnlinked,
        EventKind::ContentDestroyed => proto::EventKind::ContentDestroyed,
    }
}

/// An event kind a caller named; UNSPECIFIED and unknown numbers are refused.
pub fn event_kind_from(field: &'static str, value: i32) -> Result<EventKind> {
    EventKind::ALL
        .into_iter()
        .find(|kind| event_kind(*kind) as i32 == value)
        .ok_or_else(|| {
            Error::invalid(
                field,
                format!("{value} is not an event kind (1 to {})", EventKind::ALL.len()),
            )
        })
}

pub fn event(event: &ChangeEvent) -> proto::ArtifactEvent {
    let (from_state, to_state, reason) = match &event.transition {
        Some((from, to, reason)) => (
            lifecycle_state(*from) as i32,
            lifecycle_state(*to) as i32,
            reason.clone(),
        ),
        None => (0, 0, String::new()),
    };
    let (alias, previous_version) = match &event.alias {
        Some((alias, previous)) => (alias.clone(), previous.clone().unwrap_or_default()),
        None => (String::new(), String::new()),
    };
    proto::ArtifactEvent {
        cursor: crate::app::cursor_of(event.position),
        kind: event_kind(event.kind) as i32,
        artifact_id: event.artifact_id.clone(),
        artifact_type: event.artifact_type.clone(),
        name: event.name.clone(),
        version: event.version.clone(),
        at: Some(timestamp(event.at)),
        from_state,
        to_state,
        reason,
        alias,
        previous_version,
        origin_project: event.origin_project.clone().unwrap_or_default(),
    }
}

/// An artifact named by type and name; an empty project is the request's own.
pub fn coordinates(c: proto::DependencyCoordinates) -> DependencyTarget {
    DependencyTarget::Coordinates {
        project: (!c.project.is_empty()).then_some(c.project),
        artifact_type: c.artifact_type,
        name: c.name,
    }
}

/// Declared dependencies from the wire; a missing target is refused naming its position.
pub fn dependency_specs(specs: Vec<proto::DependencySpec>) -> Result<Vec<DependencySpec>> {
    specs
        .into_iter()
        .enumerate()
        .map(|(position, spec)| {
            let target = match spec.target {
                Some(proto::dependency_spec::Target::ArtifactId(id)) => DependencyTarget::Id(id),
                Some(proto::dependency_spec::Target::Coordinates(c)) => coordinates(c),
                None => {
                    return Err(Error::invalid(
                        "dependencies",
                        format!("dependencies[{position}]: set artifact_id or coordinates"),
                    ));
                }
            };
            Ok(DependencySpec {
                target,
                requirement: spec.requirement,
                kind: spec.kind,
            })
        })
        .collect()
}

pub fn dependency(dependency: &Dependency, target: &Artifact) -> proto::Dependency {
    proto::Dependency {
        artifact_id: dependency.target_id.clone(),
        project: target.scope.project.clone(),
        artifact_type: target.artifact_type.clone(),
        name: target.name.clone(),
        requirement: dependency.requirement.clone(),
        kind: dependency.kind.clone(),
    }
}

fn requirement(r: &RequiredBy) -> proto::Requirement {
    proto::Requirement {
        artifact_id: r.artifact_id.clone(),
        name: r.name.clone(),
        version: r.version.clone(),
        requirement: r.requirement.clone(),
        kind: r.kind.clone(),
    }
}

fn resolved(r: &Resolved) -> proto::ResolvedArtifact {
    proto::ResolvedArtifact {
        artifact_id: r.artifact.id.to_string(),
        project: r.artifact.scope.project.clone(),
        artifact_type: r.artifact.artifact_type.clone(),
        name: r.artifact.name.clone(),
        version: r.version.clone(),
        state: lifecycle_state(r.state) as i32,
        depth: r.depth,
        required_by: r.required_by.iter().map(requirement).collect(),
    }
}

pub fn resolution(resolution: &Resolution) -> proto::ResolveDependenciesResponse {
    proto::ResolveDependenciesResponse {
        root: Some(resolved(&resolution.root)),
        resolved: resolution.resolved.iter().map(resolved).collect(),
        unsatisfied: resolution
            .unsatisfied
            .iter()
            .map(|u| proto::Unsatisfied {
                artifact_id: u.artifact.id.to_string(),
                project: u.artifact.scope.project.clone(),
                artifact_type: u.artifact.artifact_type.clone(),
                name: u.artifact.name.clone(),
                requirements: u.requirements.iter().map(requirement).collect(),
                available: u
                    .available
                    .iter()
                    .map(|b| proto::AvailableVersion {
                        version: b.version.clone(),
                        state: lifecycle_state(b.state) as i32,
                    })
                    .collect(),
                explanation: u.explanation.clone(),
            })
            .collect(),
        cycles: resolution
            .cycles
            .iter()
            .map(|path| proto::DependencyCycle { path: path.clone() })
            .collect(),
        truncated: resolution.truncated.is_some(),
        truncated_reason: resolution.truncated.clone().unwrap_or_default(),
    }
}

pub fn dependent(d: &DependentVersion) -> proto::Dependent {
    proto::Dependent {
        artifact_id: d.artifact.id.to_string(),
        project: d.artifact.scope.project.clone(),
        artifact_type: d.artifact.artifact_type.clone(),
        name: d.artifact.name.clone(),
        version: d.version.clone(),
        state: lifecycle_state(d.state) as i32,
        requirement: d.requirement.clone(),
        kind: d.kind.clone(),
        depth: d.depth,
        depends_on_artifact_id: d.depends_on.clone(),
    }
}

pub fn alias(alias: &Alias) -> proto::Alias {
    proto::Alias {
        name: alias.name.clone(),
        version: alias.version.clone(),
        updated_by: alias.updated_by.clone(),
        updated_at: Some(timestamp(alias.updated_at)),
        maintained: alias.maintained,
    }
}

/// JSON values as protobuf `Value`s (the well-known `Struct` family).
pub fn json_value(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(json_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn json_struct(map: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
    }
}

pub fn extracted(extracted: &Extracted) -> proto::ExtractedMetadata {
    proto::ExtractedMetadata {
        is_text: extracted.is_text,
        line_count: extracted.line_count,
        title: extracted.title.clone().unwrap_or_default(),
        headings: extracted.headings.clone(),
        front_matter: Some(json_struct(&extracted.front_matter)),
        top_level_keys: extracted.top_level_keys.clone(),
        truncated: extracted.truncated,
    }
}
