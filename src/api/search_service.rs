//! `artifactd.v1.SearchService`.

use super::request_layer::record_scope;
use crate::app::{Artifacts, DependencyFilter, DependencyRelation};
use crate::domain::dependency::DependencyTarget;
use crate::domain::names::validate_identifier;
use crate::domain::{Error, Scope};
use crate::proto::search_service_server::SearchService;
use crate::proto::{
    self, MetadataSort, SearchByDependenciesRequest, SearchByDependenciesResponse, SearchByMetadataRequest,
    SearchByMetadataResponse, SearchByTagsRequest, SearchByTagsResponse, SearchRequest, SearchResponse,
    TagMatch, metadata_filter, search_by_dependencies_request,
};
use crate::search::{self, SearchHit, SearchIndex};
use std::sync::Arc;
use tonic::{Request, Response, Status};

const DEFAULT_PAGE_SIZE: u32 = 20;

pub struct SearchApi {
    index: Arc<SearchIndex>,
    /// Dependency searches read the catalog, not the index.
    artifacts: Artifacts,
}

impl SearchApi {
    pub fn new(index: Arc<SearchIndex>, artifacts: Artifacts) -> Self {
        Self { index, artifacts }
    }
}

fn artifact_ref(field: &'static str, reference: proto::ArtifactRef) -> Result<DependencyTarget, Error> {
    match reference.target {
        Some(proto::artifact_ref::Target::ArtifactId(id)) => Ok(DependencyTarget::Id(id)),
        Some(proto::artifact_ref::Target::Coordinates(c)) => Ok(super::convert::coordinates(c)),
        None => Err(Error::invalid(field, "set artifact_id or coordinates")),
    }
}

/// An optional folder to search under.
fn check_path_prefix(value: &str) -> Result<String, Status> {
    if !value.is_empty() {
        crate::domain::names::validate_path_prefix("path_prefix", value)?;
    }
    Ok(value.to_owned())
}

fn hit(hit: SearchHit) -> proto::SearchHit {
    proto::SearchHit {
        project: hit.project.clone(),
        snippet_text: hit.snippet_text.clone(),
        highlights: hit
            .highlights
            .iter()
            .map(|h| proto::Highlight {
                start: h.start,
                end: h.end,
            })
            .collect(),
        artifact_id: hit.artifact_id,
        name: hit.name,
        artifact_type: hit.artifact_type,
        state: hit.state,
        tags: hit.tags,
        categories: hit.categories,
        version: hit.version,
        title: hit.title,
        score: hit.score,
        snippet: hit.snippet,
        size: hit.size,
        created_at: Some(super::convert::timestamp(crate::domain::Timestamp(
            hit.created_at,
        ))),
        updated_at: Some(super::convert::timestamp(crate::domain::Timestamp(
            hit.updated_at,
        ))),
    }
}

/// A time bound in whole microseconds, rounded up: stored times are whole microseconds, and
/// for both `from` (inclusive) and `until` (exclusive) a stored time is inside the bound
/// exactly when it is inside the rounded-up bound.
fn micros(index: usize, bound: &str, timestamp: &prost_types::Timestamp) -> Result<i64, Error> {
    let invalid = |message: String| {
        Error::invalid(
            "filters",
            format!("filters[{index}].time_range.{bound}: {message}"),
        )
    };
    if !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err(invalid(format!(
            "nanos {} is outside 0..999999999",
            timestamp.nanos
        )));
    }
    timestamp
        .seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from((timestamp.nanos as u32).div_ceil(1000))))
        .ok_or_else(|| invalid(format!("{} seconds is out of range", timestamp.seconds)))
}

fn metadata_filter(index: usize, filter: proto::MetadataFilter) -> Result<search::MetadataFilter, Error> {
    use metadata_filter::Condition as Wire;
    let condition = match filter.condition {
        None => None,
        Some(Wire::Equals(value)) => Some(search::Condition::Equals(value)),
        Some(Wire::Prefix(value)) => Some(search::Condition::Prefix(value)),
        Some(Wire::Exists(present)) => Some(search::Condition::Exists(present)),
        Some(Wire::NumberRange(range)) => Some(search::Condition::NumberRange {
            min: range.min,
            max: range.max,
        }),
        Some(Wire::TimeRange(range)) => Some(search::Condition::TimeRange {
            from: range
                .from
                .as_ref()
                .map(|t| micros(index, "from", t))
                .transpose()?,
            until: range
                .until
                .as_ref()
                .map(|t| micros(index, "until", t))
                .transpose()?,
        }),
    };
    Ok(search::MetadataFilter {
        field: filter.field,
        condition,
    })
}

fn page_size(requested: u32) -> usize {
    if requested == 0 {
        DEFAULT_PAGE_SIZE as usize
    } else {
        requested.min(1000) as usize
    }
}

/// Searching is CPU work on the index; keep it off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::from(Error::internal(format!("search task failed: {e}"))))?
        .map_err(Status::from)
}

#[tonic::async_trait]
impl SearchService for SearchApi {
    async fn search_by_dependencies(
        &self,
        request: Request<SearchByDependenciesRequest>,
    ) -> Result<Response<SearchByDependenciesResponse>, Status> {
        let caller = super::caller(&request)?;
        let request = request.into_inner();
        record_scope(&request.tenant, &request.project);
        caller.authorize_in(&request.tenant, Some(&request.project))?;
        let scope = Scope::new(request.tenant, request.project);
        let relation = match request.relation {
            Some(search_by_dependencies_request::Relation::DependsOn(target)) => {
                DependencyRelation::DependsOn(artifact_ref("depends_on", target)?)
            }
            Some(search_by_dependencies_request::Relation::DependedOnBy(source)) => {
                DependencyRelation::DependedOnBy(artifact_ref("depended_on_by", source)?, request.version)
            }
            None => {
                return Err(Status::from(Error::invalid(
                    "relation",
                    "set depends_on or depended_on_by",
                )));
            }
        };
        match &relation {
            DependencyRelation::DependsOn(target) | DependencyRelation::DependedOnBy(target, _) => {
                super::check_target(&caller, &scope.tenant, target)?;
            }
        }
        let filter = DependencyFilter {
            artifact_type: (!request.artifact_type.is_empty()).then_some(request.artifact_type),
            states: super::convert::lifecycle_states_from("states", &request.states)?,
            kinds: request.kinds.into_iter().collect(),
            accepts_version: (!request.accepts_version.is_empty()).then_some(request.accepts_version),
            transitive: request.transitive,
        };
        let (page, truncated) = self
            .artifacts
            .search_by_dependencies(&scope, &relation, &filter, request.page_size, &request.page_token)
            .await?;
        Ok(Response::new(SearchByDependenciesResponse {
            hits: page
                .items
                .iter()
                .filter(|hit| super::can_read(&caller, &scope.tenant, &hit.artifact.scope.project))
                .map(|hit| proto::DependencyHit {
                    artifact_id: hit.artifact.id.to_string(),
                    project: hit.artifact.scope.project.clone(),
                    artifact_type: hit.artifact.artifact_type.clone(),
                    name: hit.artifact.name.clone(),
                    version: hit.version.clone(),
                    state: hit.state.map_or(
                        proto::LifecycleState::Unspecified,
                        super::convert::lifecycle_state,
                    ) as i32,
                    requirement: hit.requirement.clone(),
                    kind: hit.kind.clone(),
                    depth: hit.depth,
                })
                .collect(),
            next_page_token: page.next_page_token,
            truncated: truncated.is_some(),
            truncated_reason: truncated.unwrap_or_default(),
        }))
    }

    async fn search(&self, request: Request<SearchRequest>) -> Result<Response<SearchResponse>, Status> {
        let caller = super::caller(&request)?;
        let request = request.into_inner();
        record_scope(&request.tenant, &request.project);
        caller.authorize_in(&request.tenant, Some(&request.project))?;
        validate_identifier("tenant", &request.tenant)?;
        validate_identifier("project", &request.project)?;
        let query = search::SearchRequest {
            tenant: request.tenant,
            project: request.project,
            syntax: match proto::QuerySyntax::try_from(request.syntax) {
                Ok(proto::QuerySyntax::Operators) => search::QuerySyntax::Operators,
                Ok(proto::QuerySyntax::Natural | proto::QuerySyntax::Unspecified) => {
                    search::QuerySyntax::Natural
                }
                Err(_) => {
                    return Err(Status::from(Error::invalid(
                        "syntax",
                        format!("{} is not a query syntax (0 to 2)", request.syntax),
                    )));
                }
            },
            path_prefix: check_path_prefix(&request.path_prefix)?,
            query: request.query,
            artifact_type: request.artifact_type,
            state: request.state,
            tags: request.tags,
            categories: request.categories,
            page_size: page_size(request.page_size),
            page_token: request.page_token,
        };
        let index = self.index.clone();
        let page = blocking(move || index.search(&query)).await?;
        Ok(Response::new(SearchResponse {
            hits: page.hits.into_iter().map(hit).collect(),
            total_hits: page.total_hits,
            next_page_token: page.next_page_token,
        }))
    }

    async fn search_by_metadata(
        &self,
        request: Request<SearchByMetadataRequest>,
    ) -> Result<Response<SearchByMetadataResponse>, Status> {
        let caller = super::caller(&request)?;
        let request = request.into_inner();
        record_scope(&request.tenant, &request.project);
        caller.authorize_in(&request.tenant, Some(&request.project))?;
        validate_identifier("tenant", &request.tenant)?;
        validate_identifier("project", &request.project)?;
        let sort = match MetadataSort::try_from(request.sort) {
            Ok(MetadataSort::Created) => search::MetadataSort::Created,
            Ok(MetadataSort::Updated | MetadataSort::Unspecified) => search::MetadataSort::Updated,
            Ok(MetadataSort::Name) => search::MetadataSort::Name,
            Ok(MetadataSort::Size) => search::MetadataSort::Size,
            Ok(MetadataSort::Version) => search::MetadataSort::Version,
            Err(_) => {
                return Err(Status::from(Error::invalid(
                    "sort",
                    format!(
                        "{} is not a sort; use METADATA_SORT_CREATED, _UPDATED, _NAME, _SIZE or _VERSION",
                        request.sort
                    ),
                )));
            }
        };
        let filters = request
            .filters
            .into_iter()
            .enumerate()
            .map(|(index, filter)| metadata_filter(index, filter))
            .collect::<Result<Vec<_>, _>>()?;
        let query = search::MetadataSearchRequest {
            tenant: request.tenant,
            project: request.project,
            filters,
            sort,
            descending: request.descending,
            page_size: page_size(request.page_size),
            page_token: request.page_token,
        };
        let index = self.index.clone();
        let page = blocking(move || index.search_metadata(&query)).await?;
        Ok(Response::new(SearchByMetadataResponse {
            hits: page.hits.into_iter().map(hit).collect(),
            total_hits: page.total_hits,
            next_page_token: page.next_page_token,
        }))
    }

    async fn search_by_tags(
        &self,
        request: Request<SearchByTagsRequest>,
    ) -> Result<Response<SearchByTagsResponse>, Status> {
        let caller = super::caller(&request)?;
        let request = request.into_inner();
        record_scope(&request.tenant, &request.project);
        caller.authorize_in(&request.tenant, Some(&request.project))?;
        validate_identifier("tenant", &request.tenant)?;
        validate_identifier("project", &request.project)?;
        let matching = match TagMatch::try_from(request.r#match) {
            Ok(TagMatch::Any) => search::TagMatch::Any,
            Ok(TagMatch::All | TagMatch::Unspecified) => search::TagMatch::All,
            Err(_) => {
                return Err(Status::from(Error::invalid(
                    "match",
                    format!(
                        "{} is not a tag match; use TAG_MATCH_ALL or TAG_MATCH_ANY",
                        request.r#match
                    ),
                )));
            }
        };
        let query = search::TagSearchRequest {
            tenant: request.tenant,
            project: request.project,
            tags: request.tags,
            categories: request.categories,
            matching,
            page_size: page_size(request.page_size),
            page_token: request.page_token,
        };
        let index = self.index.clone();
        let (page, facets, category_facets) = blocking(move || index.search_tags(&query)).await?;
        let counts = |facets: Vec<search::FacetCount>| {
            facets
                .into_iter()
                .map(|f| proto::TagCount {
                    tag: f.tag,
                    count: f.count,
                })
                .collect()
        };
        Ok(Response::new(SearchByTagsResponse {
            hits: page.hits.into_iter().map(hit).collect(),
            total_hits: page.total_hits,
            next_page_token: page.next_page_token,
            facets: counts(facets),
            category_facets: counts(category_facets),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_round_up_to_whole_microseconds() {
        let at = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(micros(0, "from", &at(1, 0)).unwrap(), 1_000_000);
        assert_eq!(micros(0, "from", &at(1, 1)).unwrap(), 1_000_001);
        assert_eq!(micros(0, "until", &at(1, 999_999_999)).unwrap(), 2_000_000);
        assert_eq!(micros(0, "until", &at(-1, 500)).unwrap(), -999_999);
        let error = micros(3, "until", &at(1, -1)).unwrap_err().to_string();
        assert!(error.contains("filters[3].time_range.until"), "{error}");
    }
}
