"""Python client of artifactd: generated gRPC stubs (`artifactd_client._generated`) and a thin
typed layer (`Client`, and `artifactd_client.aio.AsyncClient` for asyncio) for uploads,
resumable verified downloads, paging and retries."""

from artifactd_client.client import ArtifactdError, Client, Downloaded, DownloadInProgress, IntegrityError

__all__ = ["ArtifactdError", "Client", "DownloadInProgress", "Downloaded", "IntegrityError"]
