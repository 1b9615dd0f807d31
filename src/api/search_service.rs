//! `artifactd.v1.SearchService`.

use super::status::to_status;
use crate::domain::Error;
use crate::domain::names::validate_identifier;
use crate::proto::search_service_server::SearchService;
use crate::proto::{
    self, SearchByTagsRequest, SearchByTagsResponse, SearchRequest, SearchResponse, TagMatch,
};
use crate::search::{self, SearchHit, SearchIndex};
use std::sync::Arc;
use tonic::{Request, Response, Status};

const DEFAULT_PAGE_SIZE: u32 = 20;

pub struct SearchApi {
    index: Arc<SearchIndex>,
}

impl SearchApi {
    pub fn new(index: Arc<SearchIndex>) -> Self {
        Self { index }
    }
}

fn hit(hit: SearchHit) -> proto::SearchHit {
    proto::SearchHit {
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
    }
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
        .map_err(|e| to_status(Error::internal(format!("search task failed: {e}"))))?
        .map_err(to_status)
}

#[tonic::async_trait]
impl SearchService for SearchApi {
    async fn search(&self, request: Request<SearchRequest>) -> Result<Response<SearchResponse>, Status> {
        let request = request.into_inner();
        validate_identifier("tenant", &request.tenant).map_err(to_status)?;
        validate_identifier("project", &request.project).map_err(to_status)?;
        let query = search::SearchRequest {
            tenant: request.tenant,
            project: request.project,
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

    async fn search_by_tags(
        &self,
        request: Request<SearchByTagsRequest>,
    ) -> Result<Response<SearchByTagsResponse>, Status> {
        let request = request.into_inner();
        validate_identifier("tenant", &request.tenant).map_err(to_status)?;
        validate_identifier("project", &request.project).map_err(to_status)?;
        let matching = match TagMatch::try_from(request.r#match) {
            Ok(TagMatch::Any) => search::TagMatch::Any,
            Ok(TagMatch::All | TagMatch::Unspecified) => search::TagMatch::All,
            Err(_) => {
                return Err(to_status(Error::invalid(
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
