//! Dependencies: checking what a new version declares, resolving a version's closure with
//! one chosen version per artifact, and finding who depends on an artifact.

use super::{Artifacts, Page, decode_position, encode_token, page_size, validate_scope};
use crate::catalog::VersionBrief;
use crate::domain::dependency::{
    Dependency, DependencySpec, DependencyTarget, MAX_DEPENDENCIES, admits, parse_requirement, validate_kind,
};
use crate::domain::names::{validate_artifact_name, validate_identifier};
use crate::domain::{Artifact, Error, LifecycleState, Result, Scope};
use std::collections::{BTreeMap, HashMap, HashSet};

pub const DEFAULT_MAX_DEPTH: u32 = 32;
pub const MAX_MAX_DEPTH: u32 = 256;
pub const DEFAULT_MAX_ARTIFACTS: u32 = 10_000;
pub const MAX_MAX_ARTIFACTS: u32 = 100_000;
/// Rounds of choosing versions before the choice is declared settled; each round can only
/// add requirements that the previous choice brought in.
const MAX_ROUNDS: usize = 16;
/// Cycles reported at most.
const MAX_CYCLES: usize = 100;

/// How a resolution chooses.
#[derive(Debug, Clone)]
pub struct ResolvePolicy {
    /// States a chosen version may be in.
    pub states: Vec<LifecycleState>,
    pub prereleases: bool,
    pub max_depth: u32,
    pub max_artifacts: u32,
}

impl Default for ResolvePolicy {
    fn default() -> Self {
        Self {
            states: vec![LifecycleState::Approved],
            prereleases: false,
            max_depth: DEFAULT_MAX_DEPTH,
            max_artifacts: DEFAULT_MAX_ARTIFACTS,
        }
    }
}

/// A requirement on an artifact and the version that declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredBy {
    pub artifact_id: String,
    pub name: String,
    pub version: String,
    pub requirement: String,
    pub kind: String,
}

#[derive(Debug, Clone)]
pub struct Resolved {
    pub artifact: Artifact,
    pub version: String,
    pub state: LifecycleState,
    pub depth: u32,
    pub required_by: Vec<RequiredBy>,
}

#[derive(Debug, Clone)]
pub struct Unsatisfied {
    pub artifact: Artifact,
    pub requirements: Vec<RequiredBy>,
    pub available: Vec<VersionBrief>,
    pub explanation: String,
}

#[derive(Debug, Clone)]
pub struct Resolution {
    pub root: Resolved,
    pub resolved: Vec<Resolved>,
    pub unsatisfied: Vec<Unsatisfied>,
    /// Paths of "type/name@version", the first repeated at the end.
    pub cycles: Vec<Vec<String>>,
    pub truncated: Option<String>,
}

/// A version that depends on the artifact asked about.
#[derive(Debug, Clone)]
pub struct DependentVersion {
    pub artifact: Artifact,
    pub version: String,
    pub state: LifecycleState,
    pub requirement: String,
    pub kind: String,
    pub depth: u32,
    pub depends_on: String,
}

/// The artifacts, versions and dependencies a traversal has read, read in batches.
#[derive(Default)]
struct Graph {
    artifacts: HashMap<String, Artifact>,
    /// Versions newest last, with parsed versions.
    versions: HashMap<String, Vec<(semver::Version, VersionBrief)>>,
    dependencies: HashMap<(String, String), Vec<Dependency>>,
    /// Soft-deleted artifacts: known, so they can be named, but never chosen.
    deleted: HashSet<String>,
    loaded: HashSet<String>,
}

impl Graph {
    async fn load(&mut self, app: &Artifacts, tenant: &str, ids: &[String]) -> Result<()> {
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !self.loaded.contains(*id))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let catalog = &app.inner.catalog;
        for (id, artifact) in catalog.tenant_artifacts(tenant, &missing, true).await? {
            if artifact.deleted_at.is_some() {
                self.deleted.insert(id.clone());
            }
            self.artifacts.insert(id, artifact);
        }
        for (id, briefs) in catalog.version_briefs(&missing).await? {
            let parsed = briefs
                .into_iter()
                .filter_map(|brief| Some((semver::Version::parse(&brief.version).ok()?, brief)))
                .collect();
            self.versions.insert(id, parsed);
        }
        self.dependencies
            .extend(catalog.dependencies_of_artifacts(&missing).await?);
        self.loaded.extend(missing);
        Ok(())
    }

    /// The highest version admitted by the policy that meets every requirement.
    fn choose(&self, id: &str, requirements: &[RequiredBy], policy: &ResolvePolicy) -> Option<&VersionBrief> {
        if self.deleted.contains(id) || !self.artifacts.contains_key(id) {
            return None;
        }
        let parsed: Vec<semver::VersionReq> = requirements
            .iter()
            .filter_map(|r| semver::VersionReq::parse(&r.requirement).ok())
            .collect();
        self.versions.get(id)?.iter().rev().find_map(|(version, brief)| {
            (policy.states.contains(&brief.state)
                && (policy.prereleases || version.pre.is_empty())
                && parsed.iter().all(|req| admits(req, version, policy.prereleases)))
            .then_some(brief)
        })
    }

    fn label(&self, id: &str, version: &str) -> String {
        match self.artifacts.get(id) {
            Some(a) => format!("{}/{}@{version}", a.artifact_type, a.name),
            None => format!("{id}@{version}"),
        }
    }
}

impl Artifacts {
    /// Checks what a new version declares and identifies each target. `own` is the declaring
    /// artifact (its id, or its type and name before it exists), for the self-dependency
    /// check. Nothing is written here.
    pub(super) async fn check_dependencies(
        &self,
        scope: &Scope,
        own: (&str, &str, &str),
        specs: &[DependencySpec],
    ) -> Result<Vec<Dependency>> {
        if specs.len() > MAX_DEPENDENCIES {
            return Err(Error::invalid(
                "dependencies",
                format!(
                    "{} dependencies; a version may declare at most {MAX_DEPENDENCIES}",
                    specs.len()
                ),
            ));
        }
        let (own_id, own_type, own_name) = own;
        let mut checked: Vec<Dependency> = Vec::with_capacity(specs.len());
        for (position, spec) in specs.iter().enumerate() {
            let requirement = parse_requirement(position, &spec.requirement)?;
            validate_kind(position, &spec.kind)?;
            // Refusals of the target's parts name the dependency and the part.
            let at = |part: &str, error: Error| match error {
                Error::InvalidArgument { message, .. } => Error::invalid(
                    "dependencies",
                    format!("dependencies[{position}].{part}: {message}"),
                ),
                other => other,
            };
            let target = match &spec.target {
                DependencyTarget::Id(id) => {
                    crate::domain::ArtifactId::parse("dependencies", id).map_err(|e| at("artifact_id", e))?;
                    self.inner
                        .catalog
                        .tenant_artifacts(&scope.tenant, std::slice::from_ref(id), false)
                        .await?
                        .remove(id)
                        .ok_or_else(|| {
                            Error::not_found(format!(
                                "dependencies[{position}]: artifact {id:?} not found in tenant {}",
                                scope.tenant
                            ))
                        })?
                }
                DependencyTarget::Coordinates {
                    project,
                    artifact_type,
                    name,
                } => {
                    let project = project.clone().unwrap_or_else(|| scope.project.clone());
                    validate_identifier("dependencies", &project).map_err(|e| at("project", e))?;
                    validate_identifier("dependencies", artifact_type).map_err(|e| at("artifact_type", e))?;
                    validate_artifact_name(name).map_err(|e| at("name", e))?;
                    let in_scope = Scope::new(scope.tenant.clone(), project.clone());
                    if own_id.is_empty()
                        && project == scope.project
                        && artifact_type == own_type
                        && name == own_name
                    {
                        return Err(Error::invalid(
                            "dependencies",
                            format!("dependencies[{position}]: a version cannot depend on its own artifact"),
                        ));
                    }
                    self.inner
                        .catalog
                        .artifact_by_name(&in_scope, artifact_type, name)
                        .await?
                        .ok_or_else(|| {
                            Error::not_found(format!(
                                "dependencies[{position}]: no artifact of type {artifact_type:?} named {name:?} in {}/{project}",
                                scope.tenant
                            ))
                        })?
                }
            };
            if target.id == own_id {
                return Err(Error::invalid(
                    "dependencies",
                    format!("dependencies[{position}]: a version cannot depend on its own artifact"),
                ));
            }
            if checked.iter().any(|d| d.target_id == target.id.as_str()) {
                return Err(Error::invalid(
                    "dependencies",
                    format!(
                        "dependencies[{position}]: {}/{} is declared twice; combine the requirements into one",
                        target.artifact_type, target.name
                    ),
                ));
            }
            let versions = self
                .inner
                .catalog
                .version_briefs(std::slice::from_ref(&target.id.to_string()))
                .await?
                .remove(target.id.as_str())
                .unwrap_or_default();
            let matching = versions
                .iter()
                .filter_map(|brief| semver::Version::parse(&brief.version).ok())
                .any(|version| admits(&requirement, &version, true));
            if !matching {
                return Err(Error::not_found(format!(
                    "dependencies[{position}]: no version of {}/{} matches {} (it has {})",
                    target.artifact_type,
                    target.name,
                    spec.requirement,
                    versions
                        .iter()
                        .map(|b| b.version.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            checked.push(Dependency {
                target_id: target.id.to_string(),
                requirement: spec.requirement.clone(),
                kind: spec.kind.clone(),
            });
        }
        Ok(checked)
    }

    /// What a version declared, with each target as it is now (gone targets left out).
    pub async fn declared_dependencies(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
    ) -> Result<Vec<(Dependency, Artifact)>> {
        let dependencies = self.inner.catalog.dependencies_of(artifact_id, version).await?;
        let ids: Vec<String> = dependencies.iter().map(|d| d.target_id.clone()).collect();
        let mut targets = self
            .inner
            .catalog
            .tenant_artifacts(&scope.tenant, &ids, false)
            .await?;
        Ok(dependencies
            .into_iter()
            .filter_map(|d| {
                let target = targets.remove(&d.target_id)?;
                Some((d, target))
            })
            .collect())
    }

    /// The closure of a version's dependencies with one chosen version per artifact.
    pub async fn resolve_dependencies(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        policy: ResolvePolicy,
    ) -> Result<Resolution> {
        validate_scope(scope)?;
        if policy.max_depth > MAX_MAX_DEPTH {
            return Err(Error::invalid(
                "max_depth",
                format!("{} is more than {MAX_MAX_DEPTH}", policy.max_depth),
            ));
        }
        if policy.max_artifacts > MAX_MAX_ARTIFACTS {
            return Err(Error::invalid(
                "max_artifacts",
                format!("{} is more than {MAX_MAX_ARTIFACTS}", policy.max_artifacts),
            ));
        }
        let root_artifact = self.require_artifact(scope, artifact_id).await?;
        let root_version = self.require_version(&root_artifact, version).await?;
        let root_id = root_artifact.id.to_string();
        let mut graph = Graph::default();
        graph
            .load(self, &scope.tenant, std::slice::from_ref(&root_id))
            .await?;

        let mut chosen: HashMap<String, String> =
            HashMap::from([(root_id.clone(), root_version.version.clone())]);
        let mut outcome;
        let mut rounds = 0;
        let settled = loop {
            outcome = self
                .traverse(scope, &mut graph, &root_id, &chosen, &policy)
                .await?;
            let mut next: HashMap<String, String> =
                HashMap::from([(root_id.clone(), root_version.version.clone())]);
            for (id, requirements) in &outcome.requirements {
                if *id == root_id {
                    continue;
                }
                if let Some(brief) = graph.choose(id, requirements, &policy) {
                    next.insert(id.clone(), brief.version.clone());
                }
            }
            rounds += 1;
            if next == chosen {
                break true;
            }
            if rounds >= MAX_ROUNDS {
                break false;
            }
            chosen = next;
        };
        if !settled {
            outcome.truncated = Some(format!(
                "the versions chosen did not settle after {MAX_ROUNDS} rounds: requirements conflict across versions; those the last choice breaks are listed as unsatisfied"
            ));
        }

        let state_of = |graph: &Graph, id: &str, version: &str| {
            graph
                .versions
                .get(id)
                .and_then(|versions| versions.iter().find(|(_, b)| b.version == version))
                .map_or(LifecycleState::Draft, |(_, b)| b.state)
        };
        let root = Resolved {
            artifact: root_artifact.clone(),
            version: root_version.version.clone(),
            state: root_version.state,
            depth: 0,
            required_by: outcome.requirements.get(&root_id).cloned().unwrap_or_default(),
        };
        let mut resolved = Vec::new();
        let mut unsatisfied = Vec::new();
        for (id, requirements) in &outcome.requirements {
            if *id == root_id {
                continue;
            }
            let Some(artifact) = graph.artifacts.get(id).cloned() else {
                continue;
            };
            let meets_all = |version: &str| {
                let Ok(version) = semver::Version::parse(version) else {
                    return false;
                };
                requirements.iter().all(|r| {
                    semver::VersionReq::parse(&r.requirement).is_ok_and(|req| admits(&req, &version, true))
                })
            };
            match chosen.get(id).filter(|version| meets_all(version)) {
                Some(version) => resolved.push(Resolved {
                    state: state_of(&graph, id, version),
                    version: version.clone(),
                    depth: outcome.depth.get(id).copied().unwrap_or(0),
                    required_by: requirements.clone(),
                    artifact,
                }),
                None => {
                    let available: Vec<VersionBrief> = graph
                        .versions
                        .get(id)
                        .map(|v| v.iter().map(|(_, b)| b.clone()).collect())
                        .unwrap_or_default();
                    let explanation = if graph.deleted.contains(id) {
                        format!(
                            "{}/{} is deleted (restore it, or change the versions that require it)",
                            artifact.artifact_type, artifact.name
                        )
                    } else {
                        explain(&artifact, requirements, &available, &policy)
                    };
                    unsatisfied.push(Unsatisfied {
                        artifact,
                        requirements: requirements.clone(),
                        available,
                        explanation,
                    });
                }
            }
        }
        // Requirements that come back to the root through a cycle: it is pinned, so one it
        // does not meet cannot be resolved.
        if let Some(on_root) = outcome.requirements.get(&root_id) {
            let pinned = semver::Version::parse(&root_version.version).ok();
            let unmet: Vec<RequiredBy> = on_root
                .iter()
                .filter(|r| {
                    !matches!((&pinned, semver::VersionReq::parse(&r.requirement)), (Some(v), Ok(req)) if admits(&req, v, true))
                })
                .cloned()
                .collect();
            if !unmet.is_empty() {
                let wanted: Vec<String> = unmet
                    .iter()
                    .map(|r| format!("{} from {}@{}", r.requirement, r.name, r.version))
                    .collect();
                unsatisfied.push(Unsatisfied {
                    explanation: format!(
                        "{}/{} is resolved at {} (the version asked for), which does not meet {}",
                        root_artifact.artifact_type,
                        root_artifact.name,
                        root_version.version,
                        wanted.join(" and ")
                    ),
                    artifact: root_artifact.clone(),
                    requirements: unmet,
                    available: Vec::new(),
                });
            }
        }
        resolved.sort_by(|a, b| {
            (a.depth, &a.artifact.name, &a.artifact.id).cmp(&(b.depth, &b.artifact.name, &b.artifact.id))
        });
        unsatisfied.sort_by(|a, b| a.artifact.name.cmp(&b.artifact.name));
        let cycles = find_cycles(&graph, &root_id, &chosen);
        Ok(Resolution {
            root,
            resolved,
            unsatisfied,
            cycles,
            truncated: outcome.truncated,
        })
    }

    /// One breadth-first pass from the root through the current choices, collecting every
    /// requirement on every artifact reached.
    async fn traverse(
        &self,
        scope: &Scope,
        graph: &mut Graph,
        root_id: &str,
        chosen: &HashMap<String, String>,
        policy: &ResolvePolicy,
    ) -> Result<Traversal> {
        let mut outcome = Traversal::default();
        let mut seen: HashSet<String> = HashSet::from([root_id.to_owned()]);
        let mut frontier: Vec<(String, String)> = vec![(root_id.to_owned(), chosen[root_id].clone())];
        outcome.depth.insert(root_id.to_owned(), 0);
        let mut depth = 0;
        while !frontier.is_empty() {
            if depth >= policy.max_depth {
                outcome.truncated = Some(format!(
                    "dependencies deeper than max_depth {} were not followed",
                    policy.max_depth
                ));
                break;
            }
            let ids: Vec<String> = frontier.iter().map(|(id, _)| id.clone()).collect();
            graph.load(self, &scope.tenant, &ids).await?;
            let mut reached = Vec::new();
            for (id, version) in &frontier {
                let declared = graph
                    .dependencies
                    .get(&(id.clone(), version.clone()))
                    .cloned()
                    .unwrap_or_default();
                for dependency in declared {
                    outcome
                        .requirements
                        .entry(dependency.target_id.clone())
                        .or_default()
                        .push(RequiredBy {
                            artifact_id: id.clone(),
                            name: graph
                                .artifacts
                                .get(id)
                                .map(|a| a.name.clone())
                                .unwrap_or_default(),
                            version: version.clone(),
                            requirement: dependency.requirement.clone(),
                            kind: dependency.kind.clone(),
                        });
                    if seen.insert(dependency.target_id.clone()) {
                        if seen.len() > policy.max_artifacts as usize {
                            outcome.truncated = Some(format!(
                                "the closure reached max_artifacts {}",
                                policy.max_artifacts
                            ));
                            outcome.requirements.remove(&dependency.target_id);
                            return Ok(outcome);
                        }
                        outcome.depth.insert(dependency.target_id.clone(), depth + 1);
                        reached.push(dependency.target_id.clone());
                    }
                }
            }
            graph.load(self, &scope.tenant, &reached).await?;
            frontier = reached
                .into_iter()
                .filter_map(|id| {
                    // The previous round's choice, or the best for what is known so far.
                    let version = match chosen.get(&id) {
                        Some(version) => version.clone(),
                        None => graph
                            .choose(&id, &outcome.requirements[&id], policy)?
                            .version
                            .clone(),
                    };
                    Some((id, version))
                })
                .collect();
            depth += 1;
        }
        Ok(outcome)
    }

    /// Versions that depend on an artifact: directly, or (transitive) through the versions
    /// that do. With `candidate`, only requirements that accept it count, and the direct
    /// dependents that would not accept it come back separately.
    pub async fn dependents(
        &self,
        scope: &Scope,
        artifact_id: &str,
        candidate: Option<&str>,
        transitive: bool,
        max_depth: u32,
    ) -> Result<(Vec<DependentVersion>, Vec<DependentVersion>)> {
        validate_scope(scope)?;
        if max_depth > MAX_MAX_DEPTH {
            return Err(Error::invalid(
                "max_depth",
                format!("{max_depth} is more than {MAX_MAX_DEPTH}"),
            ));
        }
        let target = self.require_artifact(scope, artifact_id).await?;
        let candidate = candidate
            .map(|text| crate::domain::version::parse_version("version", text))
            .transpose()?;
        let max_depth = if transitive { max_depth.max(1) } else { 1 };
        let mut graph = Graph::default();
        let mut accepted: Vec<DependentVersion> = Vec::new();
        let mut rejecting: Vec<DependentVersion> = Vec::new();
        let mut seen: HashSet<(String, String)> = HashSet::new();
        // The versions of each artifact reached: what a dependent's requirement must accept.
        let mut frontier: BTreeMap<String, Vec<Option<semver::Version>>> =
            BTreeMap::from([(target.id.to_string(), vec![candidate])]);
        let mut depth = 1;
        while !frontier.is_empty() && depth <= max_depth {
            let ids: Vec<String> = frontier.keys().cloned().collect();
            let rows = self.inner.catalog.dependents_of(&ids).await?;
            let dependent_ids: Vec<String> = rows.iter().map(|r| r.artifact_id.clone()).collect();
            graph.load(self, &scope.tenant, &dependent_ids).await?;
            let mut next: BTreeMap<String, Vec<Option<semver::Version>>> = BTreeMap::new();
            for row in rows {
                if graph.deleted.contains(&row.artifact_id) {
                    continue;
                }
                let Some(artifact) = graph.artifacts.get(&row.artifact_id).cloned() else {
                    continue; // in another tenant
                };
                let requirement = semver::VersionReq::parse(&row.requirement).ok();
                let accepts = frontier[&row.target_id]
                    .iter()
                    .any(|version| match (version, &requirement) {
                        (None, _) => true,
                        (Some(version), Some(req)) => admits(req, version, true),
                        (Some(_), None) => false,
                    });
                let state = graph
                    .versions
                    .get(&row.artifact_id)
                    .and_then(|v| v.iter().find(|(_, b)| b.version == row.version))
                    .map_or(LifecycleState::Draft, |(_, b)| b.state);
                let found = DependentVersion {
                    artifact,
                    version: row.version.clone(),
                    state,
                    requirement: row.requirement.clone(),
                    kind: row.kind.clone(),
                    depth,
                    depends_on: row.target_id.clone(),
                };
                if !accepts {
                    if depth == 1 {
                        rejecting.push(found);
                    }
                    continue;
                }
                if seen.insert((row.artifact_id.clone(), row.version.clone())) {
                    next.entry(row.artifact_id.clone())
                        .or_default()
                        .push(semver::Version::parse(&row.version).ok());
                    accepted.push(found);
                }
            }
            frontier = next;
            depth += 1;
        }
        Ok((accepted, rejecting))
    }
}

#[derive(Default)]
struct Traversal {
    requirements: HashMap<String, Vec<RequiredBy>>,
    depth: HashMap<String, u32>,
    truncated: Option<String>,
}

/// Why no version of `artifact` can be chosen, in words.
fn explain(
    artifact: &Artifact,
    requirements: &[RequiredBy],
    available: &[VersionBrief],
    policy: &ResolvePolicy,
) -> String {
    let wanted: Vec<String> = requirements
        .iter()
        .map(|r| format!("{} from {}@{} ({})", r.requirement, r.name, r.version, r.kind))
        .collect();
    let parsed: Vec<(semver::Version, &VersionBrief)> = available
        .iter()
        .filter_map(|b| Some((semver::Version::parse(&b.version).ok()?, b)))
        .collect();
    let reqs: Vec<semver::VersionReq> = requirements
        .iter()
        .filter_map(|r| semver::VersionReq::parse(&r.requirement).ok())
        .collect();
    let matching: Vec<&(semver::Version, &VersionBrief)> = parsed
        .iter()
        .filter(|(v, _)| reqs.iter().all(|req| admits(req, v, true)))
        .collect();
    let states: Vec<&str> = policy.states.iter().map(|s| s.as_str()).collect();
    let why = if available.is_empty() {
        "it has no versions".to_owned()
    } else if matching.is_empty() {
        let each: Vec<String> = reqs
            .iter()
            .zip(requirements)
            .map(|(req, r)| {
                let meets: Vec<&str> = parsed
                    .iter()
                    .filter(|(v, _)| admits(req, v, true))
                    .map(|(_, b)| b.version.as_str())
                    .collect();
                format!("{} is met by [{}]", r.requirement, meets.join(", "))
            })
            .collect();
        format!("no version meets them all ({})", each.join("; "))
    } else {
        let seen: Vec<String> = matching
            .iter()
            .map(|(_, b)| format!("{} is {}", b.version, b.state))
            .collect();
        format!(
            "versions that match are not admitted by the policy (states {}{}): {}",
            states.join(", "),
            if policy.prereleases {
                ""
            } else {
                ", no prereleases"
            },
            seen.join(", ")
        )
    };
    format!(
        "{}/{} cannot meet {}: {why}; it has {}",
        artifact.artifact_type,
        artifact.name,
        wanted.join(" and "),
        if available.is_empty() {
            "nothing".to_owned()
        } else {
            available
                .iter()
                .map(|b| format!("{} ({})", b.version, b.state))
                .collect::<Vec<_>>()
                .join(", ")
        }
    )
}

/// Every cycle among the chosen versions, each as a path closed on its first entry (a
/// depth-first walk with its own stack: closures can be far deeper than a thread's).
fn find_cycles(graph: &Graph, root_id: &str, chosen: &HashMap<String, String>) -> Vec<Vec<String>> {
    let declared = |id: &str| -> &[Dependency] {
        chosen
            .get(id)
            .and_then(|version| graph.dependencies.get(&(id.to_owned(), version.clone())))
            .map_or(&[], Vec::as_slice)
    };
    let label = |id: &str| graph.label(id, chosen.get(id).map_or("", String::as_str));
    let mut cycles: Vec<Vec<String>> = Vec::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut on_path: HashSet<String> = HashSet::from([root_id.to_owned()]);
    let mut path: Vec<(String, usize)> = vec![(root_id.to_owned(), 0)];
    while let Some((id, next)) = path.last_mut() {
        let dependencies = declared(id);
        if *next >= dependencies.len() || cycles.len() >= MAX_CYCLES {
            let (id, _) = path.pop().expect("a frame");
            on_path.remove(&id);
            done.insert(id);
            continue;
        }
        let target = dependencies[*next].target_id.clone();
        *next += 1;
        if on_path.contains(&target) {
            let start = path.iter().position(|(id, _)| *id == target).unwrap_or(0);
            let mut cycle: Vec<String> = path[start..].iter().map(|(id, _)| label(id)).collect();
            cycle.push(label(&target));
            cycles.push(cycle);
        } else if !done.contains(&target) && chosen.contains_key(&target) {
            on_path.insert(target.clone());
            path.push((target, 0));
        }
    }
    cycles
}

/// What a dependency search looks for.
#[derive(Debug, Clone)]
pub enum DependencyRelation {
    /// Versions that depend on this artifact.
    DependsOn(DependencyTarget),
    /// What a version of this artifact depends on.
    DependedOnBy(DependencyTarget, String),
}

/// A dependency search's filters.
#[derive(Debug, Clone, Default)]
pub struct DependencyFilter {
    pub artifact_type: Option<String>,
    pub states: Vec<LifecycleState>,
    pub kinds: HashSet<String>,
    pub accepts_version: Option<String>,
    pub transitive: bool,
}

/// One artifact found by its dependencies.
#[derive(Debug, Clone)]
pub struct DependencyHit {
    pub artifact: Artifact,
    /// Empty (and no state) for a dependency no version of which can be resolved.
    pub version: String,
    pub state: Option<LifecycleState>,
    pub requirement: String,
    pub kind: String,
    pub depth: u32,
}

impl Artifacts {
    /// The artifact a reference names, in the tenant.
    async fn find_target(
        &self,
        scope: &Scope,
        field: &'static str,
        target: &DependencyTarget,
    ) -> Result<Artifact> {
        match target {
            DependencyTarget::Id(id) => self.require_artifact(scope, id).await,
            DependencyTarget::Coordinates {
                project,
                artifact_type,
                name,
            } => {
                let in_scope = Scope::new(
                    scope.tenant.clone(),
                    project.clone().unwrap_or_else(|| scope.project.clone()),
                );
                let at = |part: &str, error: Error| match error {
                    Error::InvalidArgument { message, .. } => {
                        Error::invalid(field, format!("{field}.coordinates.{part}: {message}"))
                    }
                    other => other,
                };
                validate_identifier(field, &in_scope.project).map_err(|e| at("project", e))?;
                validate_identifier(field, artifact_type).map_err(|e| at("artifact_type", e))?;
                validate_artifact_name(name).map_err(|e| at("name", e))?;
                self.inner
                    .catalog
                    .artifact_by_name(&in_scope, artifact_type, name)
                    .await?
                    .ok_or_else(|| {
                        Error::not_found(format!(
                            "{field}: no artifact of type {artifact_type:?} named {name:?} in {}/{}",
                            in_scope.tenant, in_scope.project
                        ))
                    })
            }
        }
    }

    /// Artifacts found by their dependencies, filtered, in a stable order (depth, project,
    /// name, version), a page at a time.
    pub async fn search_by_dependencies(
        &self,
        scope: &Scope,
        relation: &DependencyRelation,
        filter: &DependencyFilter,
        requested_page_size: u32,
        page_token: &str,
    ) -> Result<(Page<DependencyHit>, Option<String>)> {
        let offset = decode_position(page_token, "d")?.map_or(0, |position| position as usize);
        validate_scope(scope)?;
        let mut truncated = None;
        let mut hits: Vec<DependencyHit> = match relation {
            DependencyRelation::DependsOn(target) => {
                let target = self.find_target(scope, "depends_on", target).await?;
                let target_scope = target.scope.clone();
                let (found, _) = self
                    .dependents(
                        &target_scope,
                        &target.id,
                        filter.accepts_version.as_deref(),
                        filter.transitive,
                        DEFAULT_MAX_DEPTH,
                    )
                    .await
                    .map_err(|error| match error {
                        Error::InvalidArgument { message, .. } => Error::invalid("accepts_version", message),
                        other => other,
                    })?;
                found
                    .into_iter()
                    .map(|d| DependencyHit {
                        artifact: d.artifact,
                        version: d.version,
                        state: Some(d.state),
                        requirement: d.requirement,
                        kind: d.kind,
                        depth: d.depth,
                    })
                    .collect()
            }
            DependencyRelation::DependedOnBy(source, version) => {
                if filter.accepts_version.is_some() {
                    return Err(Error::invalid("accepts_version", "applies to depends_on only"));
                }
                let source = self.find_target(scope, "depended_on_by", source).await?;
                let policy = ResolvePolicy {
                    states: LifecycleState::ALL.to_vec(),
                    prereleases: true,
                    max_depth: if filter.transitive { DEFAULT_MAX_DEPTH } else { 1 },
                    max_artifacts: DEFAULT_MAX_ARTIFACTS,
                };
                let resolution = self
                    .resolve_dependencies(&source.scope.clone(), &source.id, version, policy)
                    .await?;
                truncated = resolution.truncated.clone();
                // What cannot be resolved is still depended on: a hit without a version.
                let unresolved: Vec<DependencyHit> = resolution
                    .unsatisfied
                    .iter()
                    .filter(|u| u.artifact.id != source.id)
                    .flat_map(|u| {
                        u.requirements.iter().map(|by| DependencyHit {
                            artifact: u.artifact.clone(),
                            version: String::new(),
                            state: None,
                            requirement: by.requirement.clone(),
                            kind: by.kind.clone(),
                            depth: u32::from(by.artifact_id != source.id.as_str()) + 1,
                        })
                    })
                    .collect();
                resolution
                    .resolved
                    .into_iter()
                    .flat_map(|r| {
                        // One hit per requirement that reached it, so kinds filter per edge.
                        r.required_by
                            .iter()
                            .map(|by| DependencyHit {
                                artifact: r.artifact.clone(),
                                version: r.version.clone(),
                                state: Some(r.state),
                                requirement: by.requirement.clone(),
                                kind: by.kind.clone(),
                                depth: r.depth,
                            })
                            .collect::<Vec<_>>()
                    })
                    .chain(unresolved)
                    .collect()
            }
        };
        hits.retain(|hit| {
            filter
                .artifact_type
                .as_ref()
                .is_none_or(|t| *t == hit.artifact.artifact_type)
                && (filter.states.is_empty() || hit.state.is_some_and(|state| filter.states.contains(&state)))
                && (filter.kinds.is_empty() || filter.kinds.contains(&hit.kind))
        });
        hits.sort_by(|a, b| {
            (
                a.depth,
                &a.artifact.scope.project,
                &a.artifact.name,
                &a.version,
                &a.kind,
            )
                .cmp(&(
                    b.depth,
                    &b.artifact.scope.project,
                    &b.artifact.name,
                    &b.version,
                    &b.kind,
                ))
        });
        hits.dedup_by(|a, b| a.artifact.id == b.artifact.id && a.version == b.version && a.kind == b.kind);
        let limit = page_size(requested_page_size) as usize;
        let end = offset.saturating_add(limit).min(hits.len());
        let next_page_token = if end < hits.len() {
            encode_token(&["d", &end.to_string()])
        } else {
            String::new()
        };
        let items = hits.into_iter().skip(offset).take(limit).collect();
        Ok((
            Page {
                items,
                next_page_token,
            },
            truncated,
        ))
    }
}
