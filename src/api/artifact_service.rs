//! `artifactd.v1.ArtifactService`.

use super::status::from_stream_status;
use super::{caller, can_read, check_target, convert};
use crate::app::{
    Artifacts, ContentExpectations, CreateArtifact, NextVersion, ResolvePolicy, Selector, StartAt,
    UpdateArtifact, UploadPart, WatchFilter, WatchItem, parse_expected_blake3,
};
use crate::catalog::{Labels, Scope};
use crate::domain::access::Permission;
use crate::domain::names::validate_identifier;
use crate::domain::version::Bump;
use crate::domain::{Error, LifecycleState, Result};
use crate::identity::Caller;
use crate::proto::artifact_service_server::ArtifactService;
use crate::proto::{
    self, BumpKind, CreateArtifactRequest, CreateArtifactResponse, DeleteAliasRequest, DeleteAliasResponse,
    DeleteArtifactRequest, DeleteArtifactResponse, DeleteVersionRequest, DeleteVersionResponse,
    DiffVersionsRequest, DiffVersionsResponse, DownloadArtifactRequest, DownloadArtifactResponse,
    GetArtifactRequest, GetArtifactResponse, GetChangeHistoryRequest, GetChangeHistoryResponse,
    GetMetadataRequest, GetMetadataResponse, GetProvenanceRequest, GetProvenanceResponse, GetRunRequest,
    GetRunResponse, GetStorageStatsRequest, GetStorageStatsResponse, LinkArtifactRequest,
    LinkArtifactResponse, ListAliasesRequest, ListAliasesResponse, ListArtifactsRequest,
    ListArtifactsResponse, ListDependentsRequest, ListDependentsResponse, ListVersionsRequest,
    ListVersionsResponse, RecordRunInputsRequest, RecordRunInputsResponse, ResolveDependenciesRequest,
    ResolveDependenciesResponse, SetAliasRequest, SetAliasResponse, TransitionVersionRequest,
    TransitionVersionResponse, UndeleteArtifactRequest, UndeleteArtifactResponse, UndeleteVersionRequest,
    UndeleteVersionResponse, UnlinkArtifactRequest, UnlinkArtifactResponse, UpdateArtifactLabelsRequest,
    UpdateArtifactLabelsResponse, UpdateArtifactRequest, UpdateArtifactResponse, WatchEventsRequest,
    WatchEventsResponse, create_artifact_request, download_artifact_response, get_artifact_request,
    update_artifact_header, update_artifact_request, watch_events_response,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

pub struct ArtifactApi {
    artifacts: Artifacts,
    /// Ends change streams when the server shuts down.
    shutdown: CancellationToken,
}

impl ArtifactApi {
    pub fn new(artifacts: Artifacts, shutdown: CancellationToken) -> Self {
        Self { artifacts, shutdown }
    }
}

/// The request's scope once the caller may act in it (recorded on the call's span as well).
fn authorized(caller: &Caller, tenant: String, project: String) -> Result<Scope, Status> {
    super::request_layer::record_scope(&tenant, &project);
    caller.authorize_in(&tenant, Some(&project))?;
    Ok(Scope::new(tenant, project))
}

/// How the caller reaches the artifact a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Through its roles in the request's scope.
    Scope,
    /// Only through a grant on the artifact itself: nothing else of the project is its.
    Grant,
}

impl ArtifactApi {
    /// The request's scope once the caller may act on the artifact it names: by its roles in
    /// the scope or, where those do not reach, by a grant on the artifact itself. Without
    /// such a grant the refusal is the scope's, so a hidden artifact stays hidden.
    async fn authorized_on(
        &self,
        caller: &Caller,
        tenant: String,
        project: String,
        artifact: &Selector,
    ) -> Result<(Scope, Reach), Status> {
        super::request_layer::record_scope(&tenant, &project);
        let scope = Scope::new(tenant, project);
        match caller.authorize(&scope) {
            Ok(()) => Ok((scope, Reach::Scope)),
            Err(refused @ (Error::NotFound(_) | Error::PermissionDenied(_))) => {
                let grants = self.artifacts.grants_for(&scope, artifact).await?;
                if grants.is_empty() {
                    return Err(refused.into());
                }
                caller.authorize_on_artifact(&scope, &grants)?;
                Ok((scope, Reach::Grant))
            }
            Err(other) => Err(other.into()),
        }
    }

    /// [`ArtifactApi::authorized_on`] for a request that names its artifact by id.
    async fn authorized_on_id(
        &self,
        caller: &Caller,
        tenant: String,
        project: String,
        artifact_id: &str,
    ) -> Result<Scope, Status> {
        let selector = Selector::Id(artifact_id.to_owned());
        let (scope, _) = self.authorized_on(caller, tenant, project, &selector).await?;
        Ok(scope)
    }

    /// A check beyond the method's own (approving, recording a run's input), reaching the
    /// artifact the same two ways.
    async fn require_on(
        &self,
        caller: &Caller,
        permission: Permission,
        scope: &Scope,
        artifact: &Selector,
    ) -> Result<(), Status> {
        match caller.require(permission, &scope.tenant, Some(&scope.project)) {
            Ok(()) => Ok(()),
            Err(refused @ (Error::NotFound(_) | Error::PermissionDenied(_))) => {
                let grants = self.artifacts.grants_for(scope, artifact).await?;
                if grants.is_empty() {
                    return Err(refused.into());
                }
                Ok(caller.principal.require_on_artifact(
                    permission,
                    &scope.tenant,
                    &scope.project,
                    &grants,
                )?)
            }
            Err(other) => Err(other.into()),
        }
    }
}

fn expectations(size: Option<u64>, blake3: &str) -> Result<ContentExpectations> {
    Ok(ContentExpectations {
        size,
        blake3: parse_expected_blake3("expected_blake3", blake3)?,
    })
}

/// What a message after the header carries.
enum UploadMessage {
    Data(Bytes),
    Finish(proto::UploadFinish),
    Header,
}

impl From<Option<create_artifact_request::Message>> for UploadMessage {
    fn from(message: Option<create_artifact_request::Message>) -> Self {
        match message {
            Some(create_artifact_request::Message::Data(data)) => UploadMessage::Data(data),
            Some(create_artifact_request::Message::Finish(finish)) => UploadMessage::Finish(finish),
            Some(create_artifact_request::Message::Header(_)) | None => UploadMessage::Header,
        }
    }
}

impl From<Option<update_artifact_request::Message>> for UploadMessage {
    fn from(message: Option<update_artifact_request::Message>) -> Self {
        match message {
            Some(update_artifact_request::Message::Data(data)) => UploadMessage::Data(data),
            Some(update_artifact_request::Message::Finish(finish)) => UploadMessage::Finish(finish),
            Some(update_artifact_request::Message::Header(_)) | None => UploadMessage::Header,
        }
    }
}

/// Runs an upload in its own task so that a client disconnecting mid-stream ends the upload
/// through its error path (which marks written packs for garbage collection) instead of
/// dropping it half-way. The task learns that the caller is gone through the token, which is
/// cancelled when this handler's future is dropped (hyper drops it on a reset stream).
async fn run_upload<T, F, Fut>(upload: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let caller_gone = CancellationToken::new();
    let _cancel_on_drop = caller_gone.clone().drop_guard();
    // The upload's own task still belongs to the call: its change is recorded as the caller's.
    let note = crate::audit::current();
    tokio::spawn(crate::audit::within(note, upload(caller_gone)).in_current_span())
        .await
        .map_err(|e| Error::internal(format!("upload task failed: {e}")))?
}

/// Turns the messages after the header into upload parts; a second header is an error.
fn content_stream<M, F>(
    stream: Streaming<M>,
    message_of: F,
) -> impl Stream<Item = Result<UploadPart>> + Send + Unpin
where
    M: Send + 'static,
    F: Fn(M) -> UploadMessage + Send + 'static,
{
    stream.map(move |message| match message.map(&message_of) {
        Ok(UploadMessage::Data(data)) => Ok(UploadPart::Data(data)),
        Ok(UploadMessage::Finish(finish)) => Ok(UploadPart::Finish(ContentExpectations {
            size: finish.size,
            blake3: parse_expected_blake3("finish.blake3", &finish.blake3)?,
        })),
        Ok(UploadMessage::Header) => Err(Error::invalid(
            "header",
            "only the first message may be a header; later messages carry data or finish",
        )),
        Err(status) => Err(from_stream_status("data", status)),
    })
}

fn labels(labels: proto::Labels) -> Labels {
    Labels {
        tags: labels.tags,
        categories: labels.categories,
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<DownloadArtifactResponse, Status>> + Send>>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ArtifactService for ArtifactApi {
    async fn create_artifact(
        &self,
        request: Request<Streaming<CreateArtifactRequest>>,
    ) -> Result<Response<CreateArtifactResponse>, Status> {
        let caller = caller(&request)?;
        let actor = caller.actor();
        let mut stream = request.into_inner();
        let header = match stream.message().await {
            Ok(Some(CreateArtifactRequest {
                message: Some(create_artifact_request::Message::Header(header)),
            })) => header,
            Ok(Some(_)) => {
                return Err(Status::from(Error::invalid(
                    "header",
                    "the first message must be a header",
                )));
            }
            Ok(None) => {
                return Err(Status::from(Error::invalid(
                    "header",
                    "the stream ended before a header arrived",
                )));
            }
            Err(status) => return Err(Status::from(from_stream_status("header", status))),
        };
        let create = CreateArtifact {
            scope: authorized(&caller, header.tenant, header.project)?,
            artifact_type: header.artifact_type,
            name: header.name,
            description: header.description,
            tags: header.tags,
            categories: header.categories,
            metadata: header.metadata.into_iter().collect(),
            initial_version: header.initial_version,
            change_message: header.change_message,
            expectations: expectations(header.expected_size, &header.expected_blake3)?,
            actor,
            initial_state: convert::lifecycle_state_from("initial_state", header.initial_state)?
                .unwrap_or_default(),
            dependencies: convert::dependency_specs(header.dependencies)?,
            produced_by: convert::workflow_run_from(header.produced_by),
        };
        for dependency in &create.dependencies {
            check_target(&caller, &create.scope.tenant, &dependency.target)?;
        }
        let content = content_stream(stream, |message: CreateArtifactRequest| message.message.into());
        let artifacts = self.artifacts.clone();
        let (artifact, version) =
            run_upload(|caller_gone| async move { artifacts.create(create, content, &caller_gone).await })
                .await?;
        Ok(Response::new(CreateArtifactResponse {
            artifact: Some(convert::artifact(&artifact)),
            version: Some(convert::version(&version)),
        }))
    }

    async fn update_artifact(
        &self,
        request: Request<Streaming<UpdateArtifactRequest>>,
    ) -> Result<Response<UpdateArtifactResponse>, Status> {
        let caller = caller(&request)?;
        let actor = caller.actor();
        let mut stream = request.into_inner();
        let header = match stream.message().await {
            Ok(Some(UpdateArtifactRequest {
                message: Some(update_artifact_request::Message::Header(header)),
            })) => header,
            Ok(Some(_)) => {
                return Err(Status::from(Error::invalid(
                    "header",
                    "the first message must be a header",
                )));
            }
            Ok(None) => {
                return Err(Status::from(Error::invalid(
                    "header",
                    "the stream ended before a header arrived",
                )));
            }
            Err(status) => return Err(Status::from(from_stream_status("header", status))),
        };
        let next_version = match header.next_version {
            Some(update_artifact_header::NextVersion::Bump(kind)) => match BumpKind::try_from(kind) {
                Ok(BumpKind::Major) => NextVersion::Bump(Bump::Major),
                Ok(BumpKind::Minor) => NextVersion::Bump(Bump::Minor),
                Ok(BumpKind::Patch) => NextVersion::Bump(Bump::Patch),
                _ => {
                    return Err(Status::from(Error::invalid(
                        "bump",
                        format!(
                            "{kind} is not a bump kind; use BUMP_KIND_MAJOR, BUMP_KIND_MINOR or BUMP_KIND_PATCH"
                        ),
                    )));
                }
            },
            Some(update_artifact_header::NextVersion::ExplicitVersion(version)) => {
                NextVersion::Explicit(version)
            }
            None => {
                return Err(Status::from(Error::invalid(
                    "next_version",
                    "set either bump or explicit_version",
                )));
            }
        };
        caller.target(&header.artifact_id);
        let (scope, reach) = self
            .authorized_on(
                &caller,
                header.tenant,
                header.project,
                &Selector::Id(header.artifact_id.clone()),
            )
            .await?;
        let update = UpdateArtifact {
            scope,
            artifact_id: header.artifact_id,
            next_version,
            expected_current_version: header.expected_current_version,
            change_message: header.change_message,
            metadata_set: header.metadata_set.into_iter().collect(),
            metadata_remove: header.metadata_remove,
            labels: header.labels.map(labels),
            expectations: expectations(header.expected_size, &header.expected_blake3)?,
            actor,
            initial_state: convert::lifecycle_state_from("initial_state", header.initial_state)?
                .unwrap_or_default(),
            dependencies: convert::dependency_specs(header.dependencies)?,
            produced_by: convert::workflow_run_from(header.produced_by),
        };
        if reach == Reach::Grant && !update.dependencies.is_empty() {
            return Err(Status::from(Error::PermissionDenied(format!(
                "{} reaches this artifact by a grant on it alone; declaring dependencies needs a role in {}",
                caller.principal.subject, update.scope
            ))));
        }
        for dependency in &update.dependencies {
            check_target(&caller, &update.scope.tenant, &dependency.target)?;
        }
        let content = content_stream(stream, |message: UpdateArtifactRequest| message.message.into());
        let artifacts = self.artifacts.clone();
        let (artifact, version) =
            run_upload(|caller_gone| async move { artifacts.update(update, content, &caller_gone).await })
                .await?;
        Ok(Response::new(UpdateArtifactResponse {
            artifact: Some(convert::artifact(&artifact)),
            version: Some(convert::version(&version)),
        }))
    }

    async fn get_artifact(
        &self,
        request: Request<GetArtifactRequest>,
    ) -> Result<Response<GetArtifactResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let selector = match request.selector {
            Some(get_artifact_request::Selector::ArtifactId(id)) => Selector::Id(id),
            Some(get_artifact_request::Selector::Coordinates(coordinates)) => Selector::Name {
                artifact_type: coordinates.artifact_type,
                name: coordinates.name,
            },
            None => {
                return Err(Status::from(Error::invalid(
                    "selector",
                    "set either artifact_id or coordinates",
                )));
            }
        };
        let (scope, _) = self
            .authorized_on(&caller, request.tenant, request.project, &selector)
            .await?;
        let (artifact, version) = self.artifacts.get(&scope, &selector, &request.version).await?;
        let dependencies = self
            .artifacts
            .declared_dependencies(&scope, &artifact.id, &version.version)
            .await?;
        Ok(Response::new(GetArtifactResponse {
            artifact: Some(convert::artifact(&artifact)),
            version: Some(convert::version(&version)),
            dependencies: dependencies
                .iter()
                .filter(|(_, target)| can_read(&caller, &scope.tenant, &target.scope.project))
                .map(|(dependency, target)| convert::dependency(dependency, target))
                .collect(),
        }))
    }

    type DownloadArtifactStream = DownloadStream;

    async fn download_artifact(
        &self,
        request: Request<DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let run = request
            .metadata()
            .get(super::RUN_HEADER)
            .map(|value| value.to_str().map(str::to_owned))
            .transpose()
            .map_err(|_| Error::invalid("x-artifactd-run", "the run header is not ASCII text"))?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        // Recording the download as a run's input writes to the run: that takes a writer.
        if run.is_some() {
            self.require_on(
                &caller,
                Permission::Write,
                &scope,
                &Selector::Id(request.artifact_id.clone()),
            )
            .await?;
        }
        let plan = self
            .artifacts
            .plan_download(
                &scope,
                &request.artifact_id,
                &request.version,
                request.offset,
                request.length,
            )
            .await?;
        let data = self.artifacts.download(&plan).await?;
        self.artifacts
            .note_read(plan.artifact.id.as_str(), &plan.version.version)
            .await;
        // A download made by a workflow run is one of its inputs: recorded once the download
        // can start and before any byte is sent, so a run never read something it has no
        // record of, and a refused download records nothing.
        if let Some(run) = run {
            self.artifacts
                .record_download(&scope, &run, &plan.artifact.id, &plan.version.version)
                .await?;
        }
        let header = DownloadArtifactResponse {
            message: Some(download_artifact_response::Message::Header(
                proto::DownloadHeader {
                    artifact_id: plan.artifact.id.to_string(),
                    version: plan.version.version.clone(),
                    size: plan.version.size as u64,
                    blake3: plan.version.blake3.clone(),
                    offset: plan.offset,
                    length: plan.length,
                },
            )),
        };
        let data = data
            .filter(|piece| futures::future::ready(!matches!(piece, Ok(bytes) if bytes.is_empty())))
            .map(|piece| {
                piece
                    .map(|bytes| DownloadArtifactResponse {
                        message: Some(download_artifact_response::Message::Data(bytes)),
                    })
                    .map_err(Status::from)
            });
        let stream = futures::stream::once(async move { Ok(header) }).chain(data);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_download_link(
        &self,
        request: Request<proto::CreateDownloadLinkRequest>,
    ) -> Result<Response<proto::CreateDownloadLinkResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        let link = self
            .artifacts
            .create_download_link(
                &scope,
                &request.artifact_id,
                &request.version,
                request.ttl_seconds,
                request.inline,
            )
            .await?;
        Ok(Response::new(proto::CreateDownloadLinkResponse {
            url: link.url,
            version: link.version,
            expires_at: Some(convert::timestamp(link.expires_at)),
            etag: link.etag,
            size: link.size,
        }))
    }

    async fn list_versions(
        &self,
        request: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        let page = self
            .artifacts
            .list_versions(
                &scope,
                &request.artifact_id,
                &convert::lifecycle_states_from("states", &request.states)?,
                request.page_size,
                &request.page_token,
            )
            .await?;
        Ok(Response::new(ListVersionsResponse {
            versions: page.items.iter().map(convert::version).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_storage_stats(
        &self,
        request: Request<GetStorageStatsRequest>,
    ) -> Result<Response<GetStorageStatsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let scope = if request.artifact_id.is_empty() {
            authorized(&caller, request.tenant, request.project)?
        } else {
            caller.target(&request.artifact_id);
            self.authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
                .await?
        };
        let stats = self.artifacts.storage_stats(&scope, &request.artifact_id).await?;
        Ok(Response::new(GetStorageStatsResponse {
            stats: Some(convert::storage_stats(&stats)),
        }))
    }

    async fn get_metadata(
        &self,
        request: Request<GetMetadataRequest>,
    ) -> Result<Response<GetMetadataResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        let (_, version) = self
            .artifacts
            .get(&scope, &Selector::Id(request.artifact_id), &request.version)
            .await?;
        Ok(Response::new(GetMetadataResponse {
            version: Some(convert::version(&version)),
            metadata: version.metadata.clone().into_iter().collect(),
            content_type: version.content_type.clone(),
            extracted: Some(convert::extracted(&version.extracted)),
        }))
    }

    async fn list_artifacts(
        &self,
        request: Request<ListArtifactsRequest>,
    ) -> Result<Response<ListArtifactsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let scope = authorized(&caller, request.tenant, request.project)?;
        let page = self
            .artifacts
            .list_artifacts(
                &scope,
                &request.artifact_type,
                &request.path_prefix,
                &convert::lifecycle_states_from("states", &request.states)?,
                request.page_size,
                &request.page_token,
            )
            .await?;
        Ok(Response::new(ListArtifactsResponse {
            artifacts: page.items.iter().map(convert::artifact).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_artifact(
        &self,
        request: Request<DeleteArtifactRequest>,
    ) -> Result<Response<DeleteArtifactResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        let (artifact, restorable_until) = self
            .artifacts
            .delete(&scope, &request.artifact_id, &caller.actor())
            .await?;
        Ok(Response::new(DeleteArtifactResponse {
            artifact: Some(convert::artifact(&artifact)),
            restorable_until: Some(convert::timestamp(restorable_until)),
        }))
    }

    async fn undelete_artifact(
        &self,
        request: Request<UndeleteArtifactRequest>,
    ) -> Result<Response<UndeleteArtifactResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        let artifact = self.artifacts.undelete(&scope, &request.artifact_id).await?;
        Ok(Response::new(UndeleteArtifactResponse {
            artifact: Some(convert::artifact(&artifact)),
        }))
    }

    async fn delete_version(
        &self,
        request: Request<DeleteVersionRequest>,
    ) -> Result<Response<DeleteVersionResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&format!("{}@{}", request.artifact_id, request.version));
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        let (version, restorable_until) = self
            .artifacts
            .delete_version(&scope, &request.artifact_id, &request.version, &caller.actor())
            .await?;
        Ok(Response::new(DeleteVersionResponse {
            version: Some(convert::version(&version)),
            restorable_until: Some(convert::timestamp(restorable_until)),
        }))
    }

    async fn undelete_version(
        &self,
        request: Request<UndeleteVersionRequest>,
    ) -> Result<Response<UndeleteVersionResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&format!("{}@{}", request.artifact_id, request.version));
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        let version = self
            .artifacts
            .undelete_version(&scope, &request.artifact_id, &request.version)
            .await?;
        Ok(Response::new(UndeleteVersionResponse {
            version: Some(convert::version(&version)),
        }))
    }

    async fn update_artifact_labels(
        &self,
        request: Request<UpdateArtifactLabelsRequest>,
    ) -> Result<Response<UpdateArtifactLabelsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        let Some(new_labels) = request.labels else {
            return Err(Status::from(Error::invalid(
                "labels",
                "set the tags and categories to keep",
            )));
        };
        let artifact = self
            .artifacts
            .update_labels(&scope, &request.artifact_id, &labels(new_labels))
            .await?;
        Ok(Response::new(UpdateArtifactLabelsResponse {
            artifact: Some(convert::artifact(&artifact)),
        }))
    }

    async fn transition_version(
        &self,
        request: Request<TransitionVersionRequest>,
    ) -> Result<Response<TransitionVersionResponse>, Status> {
        let caller = caller(&request)?;
        let actor = caller.actor();
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        let target = convert::lifecycle_state_from("target_state", request.target_state)?
            .ok_or_else(|| Error::invalid("target_state", "name the state to move to"))?;
        // Approving and archiving, and undoing either, take a maintainer.
        let maintained =
            |state: LifecycleState| matches!(state, LifecycleState::Approved | LifecycleState::Archived);
        let needs_maintainer = maintained(target) || {
            let (_, version) = self
                .artifacts
                .get(
                    &scope,
                    &Selector::Id(request.artifact_id.clone()),
                    &request.version,
                )
                .await?;
            maintained(version.state)
        };
        if needs_maintainer {
            self.require_on(
                &caller,
                Permission::Maintain,
                &scope,
                &Selector::Id(request.artifact_id.clone()),
            )
            .await?;
        }
        let expected = convert::lifecycle_state_from("expected_state", request.expected_state)?;
        let (version, transition) = self
            .artifacts
            .transition(
                &scope,
                &request.artifact_id,
                &request.version,
                target,
                expected,
                &request.reason,
                &actor,
            )
            .await?;
        Ok(Response::new(TransitionVersionResponse {
            version: Some(convert::version(&version)),
            transition: Some(convert::transition(&transition)),
        }))
    }

    async fn set_alias(
        &self,
        request: Request<SetAliasRequest>,
    ) -> Result<Response<SetAliasResponse>, Status> {
        let caller = caller(&request)?;
        let actor = caller.actor();
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        let alias = self
            .artifacts
            .set_alias(
                &scope,
                &request.artifact_id,
                &request.alias,
                &request.version,
                request.expected_version.as_deref(),
                &actor,
            )
            .await?;
        Ok(Response::new(SetAliasResponse {
            alias: Some(convert::alias(&alias)),
        }))
    }

    async fn delete_alias(
        &self,
        request: Request<DeleteAliasRequest>,
    ) -> Result<Response<DeleteAliasResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        self.artifacts
            .delete_alias(
                &scope,
                &request.artifact_id,
                &request.alias,
                request.expected_version.as_deref(),
            )
            .await?;
        Ok(Response::new(DeleteAliasResponse {}))
    }

    async fn list_aliases(
        &self,
        request: Request<ListAliasesRequest>,
    ) -> Result<Response<ListAliasesResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        let aliases = self.artifacts.aliases(&scope, &request.artifact_id).await?;
        Ok(Response::new(ListAliasesResponse {
            aliases: aliases.iter().map(convert::alias).collect(),
        }))
    }

    async fn get_change_history(
        &self,
        request: Request<GetChangeHistoryRequest>,
    ) -> Result<Response<GetChangeHistoryResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        let page = self
            .artifacts
            .change_history(
                &scope,
                &request.artifact_id,
                request.page_size,
                &request.page_token,
            )
            .await?;
        Ok(Response::new(GetChangeHistoryResponse {
            changes: page
                .items
                .iter()
                .map(|change| proto::VersionChange {
                    version: Some(convert::version(&change.version)),
                    size_change: change.size_change,
                    reused_bytes: change.reused_bytes,
                    new_bytes: change.version.new_stored_size,
                    transitions: change.transitions.iter().map(convert::transition).collect(),
                    previous_version: change.previous.clone().unwrap_or_default(),
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn resolve_dependencies(
        &self,
        request: Request<ResolveDependenciesRequest>,
    ) -> Result<Response<ResolveDependenciesResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = authorized(&caller, request.tenant, request.project)?;
        let mut policy = ResolvePolicy::default();
        let states = convert::lifecycle_states_from("admit_states", &request.admit_states)?;
        if !states.is_empty() {
            policy.states = states;
        }
        policy.prereleases = request.admit_prereleases;
        if request.max_depth > 0 {
            policy.max_depth = request.max_depth;
        }
        if request.max_artifacts > 0 {
            policy.max_artifacts = request.max_artifacts;
        }
        let resolution = self
            .artifacts
            .resolve_dependencies(&scope, &request.artifact_id, &request.version, policy)
            .await?;
        let mut response = convert::resolution(&resolution);
        let readable = |project: &str| can_read(&caller, &scope.tenant, project);
        response.resolved.retain(|r| readable(&r.project));
        response.unsatisfied.retain(|u| readable(&u.project));
        Ok(Response::new(response))
    }

    async fn list_dependents(
        &self,
        request: Request<ListDependentsRequest>,
    ) -> Result<Response<ListDependentsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = authorized(&caller, request.tenant, request.project)?;
        let candidate = (!request.version.is_empty()).then_some(request.version.as_str());
        let max_depth = if request.max_depth == 0 {
            crate::app::DEFAULT_DEPENDENCY_DEPTH
        } else {
            request.max_depth
        };
        let (dependents, rejecting) = self
            .artifacts
            .dependents(
                &scope,
                &request.artifact_id,
                candidate,
                request.transitive,
                max_depth,
            )
            .await?;
        let readable =
            |d: &&crate::app::DependentVersion| can_read(&caller, &scope.tenant, &d.artifact.scope.project);
        Ok(Response::new(ListDependentsResponse {
            dependents: dependents
                .iter()
                .filter(readable)
                .map(convert::dependent)
                .collect(),
            rejecting: rejecting
                .iter()
                .filter(readable)
                .map(convert::dependent)
                .collect(),
        }))
    }

    async fn record_run_inputs(
        &self,
        request: Request<RecordRunInputsRequest>,
    ) -> Result<Response<RecordRunInputsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let scope = authorized(&caller, request.tenant, request.project)?;
        let inputs: Vec<(String, String)> = request
            .inputs
            .into_iter()
            .map(|input| (input.artifact_id, input.version))
            .collect();
        let recorded = self
            .artifacts
            .record_run_inputs(&scope, &request.run_id, &inputs)
            .await?;
        Ok(Response::new(RecordRunInputsResponse {
            inputs: recorded.iter().map(convert::run_version).collect(),
        }))
    }

    async fn get_run(&self, request: Request<GetRunRequest>) -> Result<Response<GetRunResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        super::request_layer::record_scope(&request.tenant, "");
        // A run reads and writes across the tenant's projects: any member of the tenant may
        // ask, and sees the versions of the projects it can read.
        if let Err(error) = caller.authorize_in(&request.tenant, None)
            && !matches!(error, Error::PermissionDenied(_))
        {
            return Err(error.into());
        }
        let (inputs, outputs) = self.artifacts.run(&request.tenant, &request.run_id).await?;
        let readable =
            |v: &&crate::app::RunVersion| can_read(&caller, &request.tenant, &v.artifact.scope.project);
        Ok(Response::new(GetRunResponse {
            inputs: inputs.iter().filter(readable).map(convert::run_version).collect(),
            outputs: outputs
                .iter()
                .filter(readable)
                .map(convert::run_version)
                .collect(),
            run_id: request.run_id,
        }))
    }

    async fn get_provenance(
        &self,
        request: Request<GetProvenanceRequest>,
    ) -> Result<Response<GetProvenanceResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = authorized(&caller, request.tenant, request.project)?;
        let (steps, truncated) = self
            .artifacts
            .provenance(&scope, &request.artifact_id, &request.version, request.max_depth)
            .await?;
        let readable =
            |v: &&crate::app::RunVersion| can_read(&caller, &scope.tenant, &v.artifact.scope.project);
        Ok(Response::new(GetProvenanceResponse {
            steps: steps
                .iter()
                .filter(|step| readable(&&step.version))
                .map(|step| proto::ProvenanceStep {
                    version: Some(convert::run_version(&step.version)),
                    depth: step.depth,
                    read: step
                        .read
                        .iter()
                        .filter(readable)
                        .map(convert::run_version)
                        .collect(),
                })
                .collect(),
            truncated,
        }))
    }

    async fn link_artifact(
        &self,
        request: Request<LinkArtifactRequest>,
    ) -> Result<Response<LinkArtifactResponse>, Status> {
        let caller = caller(&request)?;
        let actor = caller.actor();
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = authorized(&caller, request.tenant, request.project)?;
        // The link changes the target project as much as the origin; an artifact seen through
        // a link is shared on only by who may maintain it where it lives.
        validate_identifier("target_project", &request.target_project)?;
        caller.authorize_in(&scope.tenant, Some(&request.target_project))?;
        let (origin, _) = self
            .artifacts
            .get(&scope, &Selector::Id(request.artifact_id.clone()), "")
            .await?;
        if origin.scope.project != scope.project {
            caller.require(Permission::Maintain, &scope.tenant, Some(&origin.scope.project))?;
        }
        let artifact = self
            .artifacts
            .link(&scope, &request.artifact_id, &request.target_project, &actor)
            .await?;
        Ok(Response::new(LinkArtifactResponse {
            artifact: Some(convert::artifact(&artifact)),
        }))
    }

    async fn unlink_artifact(
        &self,
        request: Request<UnlinkArtifactRequest>,
    ) -> Result<Response<UnlinkArtifactResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = authorized(&caller, request.tenant, request.project)?;
        let origin_project = self.artifacts.unlink(&scope, &request.artifact_id).await?;
        Ok(Response::new(UnlinkArtifactResponse { origin_project }))
    }

    type WatchEventsStream = WatchStream;

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let scope = authorized(&caller, request.tenant, request.project)?;
        let start = match (request.after_cursor.is_empty(), request.from_oldest) {
            (false, true) => {
                return Err(Status::from(Error::invalid(
                    "from_oldest",
                    "give either after_cursor or from_oldest, not both",
                )));
            }
            (false, false) => StartAt::After(request.after_cursor),
            (true, true) => StartAt::Oldest,
            (true, false) => StartAt::Now,
        };
        let filter = WatchFilter {
            artifact_types: request.artifact_types.into_iter().collect(),
            names: request.names.into_iter().collect(),
            kinds: request
                .kinds
                .iter()
                .map(|kind| convert::event_kind_from("kinds", *kind))
                .collect::<Result<_>>()?,
        };
        let items = self
            .artifacts
            .watch(scope.clone(), start, filter, self.shutdown.clone())
            .await?;
        // The stream may outlive the caller's right to it: it proves the caller again from
        // time to time and ends with that refusal once it fails.
        let every = caller.proof.as_ref().map(|proof| proof.every());
        let proven_at = std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
        let stream = items.then(move |item| {
            let (caller, scope, proven_at) = (caller.clone(), scope.clone(), proven_at.clone());
            async move {
                let due =
                    every.is_some_and(|every| proven_at.lock().expect("proof clock").elapsed() >= every);
                if due {
                    match caller.reprove(&scope).await {
                        Ok(()) => *proven_at.lock().expect("proof clock") = std::time::Instant::now(),
                        // The caller is no longer who may watch: the stream ends so.
                        Err(
                            refused @ (Error::Unauthenticated(_)
                            | Error::PermissionDenied(_)
                            | Error::NotFound(_)),
                        ) => return Err(Status::from(refused)),
                        // The proof could not be checked (catalog or issuer unreachable): the
                        // stream goes on and tries again with the next message.
                        Err(error) => {
                            tracing::warn!(%error, "could not prove a watcher again; trying again shortly")
                        }
                    }
                }
                item.map_err(Status::from)
            }
        });
        let stream = stream.map(|item| {
            let message = match item? {
                WatchItem::Event(event) => watch_events_response::Message::Event(convert::event(&event)),
                WatchItem::Heartbeat { cursor, at } => {
                    watch_events_response::Message::Heartbeat(proto::Heartbeat {
                        cursor,
                        at: Some(convert::timestamp(at)),
                    })
                }
            };
            Ok(WatchEventsResponse {
                message: Some(message),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn diff_versions(
        &self,
        request: Request<DiffVersionsRequest>,
    ) -> Result<Response<DiffVersionsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.target(&request.artifact_id);
        let scope = self
            .authorized_on_id(&caller, request.tenant, request.project, &request.artifact_id)
            .await?;
        let diff = self
            .artifacts
            .diff(
                &scope,
                &request.artifact_id,
                &request.from_version,
                &request.to_version,
                request.context_lines,
            )
            .await?;
        Ok(Response::new(DiffVersionsResponse {
            diff: diff.diff,
            truncated: diff.truncated,
            lines_added: diff.lines_added,
            lines_removed: diff.lines_removed,
        }))
    }
}
