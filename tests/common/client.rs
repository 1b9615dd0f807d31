//! Client helpers: stream content up in data messages, collect downloads.

use artifactd::proto::artifact_service_client::ArtifactServiceClient;
use artifactd::proto::{
    CreateArtifactHeader, CreateArtifactRequest, CreateArtifactResponse, DownloadArtifactRequest,
    DownloadHeader, UpdateArtifactHeader, UpdateArtifactRequest, UpdateArtifactResponse, UploadFinish,
    create_artifact_request, download_artifact_response, update_artifact_request,
};
use bytes::Bytes;
use tonic::{Code, Status};

pub type Client = ArtifactServiceClient<super::binary::Authed>;

pub const PIECE: usize = 64 * 1024;

pub fn header(tenant: &str, project: &str, artifact_type: &str, name: &str) -> CreateArtifactHeader {
    CreateArtifactHeader {
        tenant: tenant.into(),
        project: project.into(),
        artifact_type: artifact_type.into(),
        name: name.into(),
        ..Default::default()
    }
}

/// The finish message that ends an upload of `content`, promising its size and hash.
pub fn finish(content: &[u8]) -> UploadFinish {
    UploadFinish {
        size: Some(content.len() as u64),
        blake3: blake3::hash(content).to_hex().to_string(),
    }
}

/// A whole create stream: the header, `content` in pieces of `piece` bytes, the finish.
pub fn create_messages(
    header: CreateArtifactHeader,
    content: &[u8],
    piece: usize,
) -> Vec<CreateArtifactRequest> {
    let mut messages = vec![CreateArtifactRequest {
        message: Some(create_artifact_request::Message::Header(header)),
    }];
    messages.extend(content.chunks(piece).map(|part| CreateArtifactRequest {
        message: Some(create_artifact_request::Message::Data(Bytes::copy_from_slice(
            part,
        ))),
    }));
    messages.push(CreateArtifactRequest {
        message: Some(create_artifact_request::Message::Finish(finish(content))),
    });
    messages
}

/// A whole update stream: the header, `content` in pieces of `piece` bytes, the finish.
pub fn update_messages(
    header: UpdateArtifactHeader,
    content: &[u8],
    piece: usize,
) -> Vec<UpdateArtifactRequest> {
    let mut messages = vec![UpdateArtifactRequest {
        message: Some(update_artifact_request::Message::Header(header)),
    }];
    messages.extend(content.chunks(piece).map(|part| UpdateArtifactRequest {
        message: Some(update_artifact_request::Message::Data(Bytes::copy_from_slice(
            part,
        ))),
    }));
    messages.push(UpdateArtifactRequest {
        message: Some(update_artifact_request::Message::Finish(finish(content))),
    });
    messages
}

pub async fn create(
    client: &mut Client,
    header: CreateArtifactHeader,
    content: &[u8],
) -> Result<CreateArtifactResponse, Status> {
    let messages = create_messages(header, content, PIECE);
    client
        .create_artifact(futures::stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

/// Creates an artifact and returns its id.
pub async fn create_id(client: &mut Client, header: CreateArtifactHeader, content: &[u8]) -> String {
    create(client, header, content)
        .await
        .expect("creating an artifact")
        .artifact
        .expect("the response carries the artifact")
        .id
}

pub fn update_header(tenant: &str, project: &str, artifact_id: &str) -> UpdateArtifactHeader {
    UpdateArtifactHeader {
        tenant: tenant.into(),
        project: project.into(),
        artifact_id: artifact_id.into(),
        ..Default::default()
    }
}

pub async fn update(
    client: &mut Client,
    header: UpdateArtifactHeader,
    content: &[u8],
) -> Result<UpdateArtifactResponse, Status> {
    let messages = update_messages(header, content, PIECE);
    client
        .update_artifact(futures::stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

pub fn download_request(
    tenant: &str,
    project: &str,
    artifact_id: &str,
    version: &str,
) -> DownloadArtifactRequest {
    DownloadArtifactRequest {
        tenant: tenant.into(),
        project: project.into(),
        artifact_id: artifact_id.into(),
        version: version.into(),
        ..Default::default()
    }
}

pub async fn download(
    client: &mut Client,
    request: DownloadArtifactRequest,
) -> Result<(DownloadHeader, Vec<u8>), Status> {
    let mut stream = client.download_artifact(request).await?.into_inner();
    let mut header = None;
    let mut content = Vec::new();
    while let Some(message) = stream.message().await? {
        match message.message {
            Some(download_artifact_response::Message::Header(h)) => {
                assert!(header.is_none(), "a second header arrived");
                header = Some(h);
            }
            Some(download_artifact_response::Message::Data(data)) => {
                assert!(header.is_some(), "data arrived before the header");
                content.extend_from_slice(&data);
            }
            None => panic!("empty download message"),
        }
    }
    Ok((header.expect("a header"), content))
}

/// Downloads as a workflow run does (with the run header); the content.
pub async fn download_as_run(
    client: &mut Client,
    run_id: &str,
    request: DownloadArtifactRequest,
) -> Result<Vec<u8>, Status> {
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "x-artifactd-run",
        run_id.parse().map_err(|_| Status::invalid_argument("run id"))?,
    );
    let mut stream = client.download_artifact(request).await?.into_inner();
    let mut content = Vec::new();
    while let Some(message) = stream.message().await? {
        if let Some(download_artifact_response::Message::Data(data)) = message.message {
            content.extend_from_slice(&data);
        }
    }
    Ok(content)
}

/// Asserts a status code and that the message mentions each of `needles`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needles: &[&str]) -> Status {
    let status = result.expect_err("the call should have failed");
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "message {:?} should mention {needle:?}",
            status.message()
        );
    }
    status
}
