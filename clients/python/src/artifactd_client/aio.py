"""The asyncio (`grpc.aio`) variant of `Client`, with the same calls and the same guarantees:
finish-terminated uploads, verified downloads, paging iterators, retries of calls that are
safe to repeat."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import blake3
import grpc
import grpc.aio

from artifactd_client._generated.artifactd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    artifact_pb2,
    artifact_pb2_grpc,
    fallback_pb2,
    fallback_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from artifactd_client.client import (
    ArtifactdError,
    Content,
    Downloaded,
    Progress,
    _error,
    call_metadata,
    channel_options,
    create_header,
    finish_part,
    lock_partial,
    part_hasher,
    update_header,
    upload_requests,
    whole_download_mismatch,
)

T = TypeVar("T")


class AsyncClient:
    """A `grpc.aio` connection to one artifactd server; use `async with`."""

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        token: str | None = None,
        api_key: str | None = None,
        retries: int = 4,
        timeout: float | None = None,
    ) -> None:
        if tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.aio.secure_channel(target, credentials, options=channel_options())
        else:
            self._channel = grpc.aio.insecure_channel(target, options=channel_options())
        self._metadata = call_metadata(token, api_key)
        self._retries = retries
        self._timeout = timeout
        self.artifacts = artifact_pb2_grpc.ArtifactServiceStub(self._channel)
        self.search_service = search_pb2_grpc.SearchServiceStub(self._channel)
        self.fallback = fallback_pb2_grpc.FallbackServiceStub(self._channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _idempotent(self, call: Callable[[], Awaitable[T]]) -> T:
        """Runs a call that is safe to repeat, retrying UNAVAILABLE with backoff."""
        delay = 0.1
        for attempt in range(self._retries + 1):
            try:
                return await call()
            except grpc.RpcError as error:
                failure = _error(error)
                if failure.code != grpc.StatusCode.UNAVAILABLE or attempt == self._retries:
                    raise failure from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    async def _once(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except grpc.RpcError as error:
            raise _error(error) from None

    async def create(
        self,
        tenant: str,
        project: str,
        artifact_type: str,
        name: str,
        content: Content,
        *,
        tags: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        initial_version: str = "",
        change_message: str = "",
        progress: Progress | None = None,
    ) -> artifact_pb2.CreateArtifactResponse:
        header = create_header(
            tenant,
            project,
            artifact_type,
            name,
            tags=tags,
            metadata=metadata,
            initial_version=initial_version,
            change_message=change_message,
        )

        async def messages() -> AsyncIterator[artifact_pb2.CreateArtifactRequest]:
            for message in upload_requests(artifact_pb2.CreateArtifactRequest, header, content, progress):
                yield message

        return await self._once(
            lambda: self.artifacts.CreateArtifact(messages(), metadata=self._metadata, timeout=self._timeout)
        )

    async def update(
        self,
        tenant: str,
        project: str,
        artifact_id: str,
        content: Content,
        *,
        bump: str = "patch",
        explicit_version: str = "",
        expected_current_version: str = "",
        change_message: str = "",
        progress: Progress | None = None,
    ) -> artifact_pb2.UpdateArtifactResponse:
        header = update_header(
            tenant,
            project,
            artifact_id,
            bump=bump,
            explicit_version=explicit_version,
            expected_current_version=expected_current_version,
            change_message=change_message,
        )

        async def messages() -> AsyncIterator[artifact_pb2.UpdateArtifactRequest]:
            for message in upload_requests(artifact_pb2.UpdateArtifactRequest, header, content, progress):
                yield message

        return await self._once(
            lambda: self.artifacts.UpdateArtifact(messages(), metadata=self._metadata, timeout=self._timeout)
        )

    def download(
        self, tenant: str, project: str, artifact_id: str, *, version: str = "", offset: int = 0, length: int = 0
    ) -> AsyncIterator[bytes]:
        """Yields the content as it arrives; a whole download is verified at its end."""
        return self._download(tenant, project, artifact_id, version, offset, length, verify=offset == 0)

    async def _download(
        self, tenant: str, project: str, artifact_id: str, version: str, offset: int, length: int, *, verify: bool
    ) -> AsyncIterator[bytes]:
        request = artifact_pb2.DownloadArtifactRequest(
            tenant=tenant, project=project, artifact_id=artifact_id, version=version, offset=offset, length=length
        )
        call = self.artifacts.DownloadArtifact(request, metadata=self._metadata, timeout=self._timeout)
        hasher = blake3.blake3() if verify else None
        header: artifact_pb2.DownloadHeader | None = None
        try:
            async for response in call:
                if response.HasField("header"):
                    header = response.header
                    continue
                if hasher is not None:
                    hasher.update(response.data)
                yield response.data
        except grpc.RpcError as error:
            raise _error(error) from None
        if hasher is not None:
            mismatch = whole_download_mismatch(artifact_id, header, offset, hasher.hexdigest())
            if mismatch is not None:
                raise mismatch

    async def download_to(
        self, path: str | os.PathLike[str], tenant: str, project: str, artifact_id: str, *, version: str = ""
    ) -> Downloaded:
        """As `Client.download_to`: resumes from `<path>.part` (fetching the version whole,
        once, when the resumed file does not verify) and verifies the whole file before it
        takes its final name."""
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        # Asked before the part is opened, so that a version that is not there leaves no file.
        expected = (await self.get(tenant, project, artifact_id=artifact_id, version=version)).version
        with lock_partial(partial, target) as part:
            resumed_from = os.fstat(part.fileno()).st_size
            if resumed_from > expected.size:
                part.truncate(0)
                resumed_from = 0

            async def fetch(start: int) -> str:
                hasher = await asyncio.to_thread(part_hasher, partial, start)
                if start < expected.size:
                    async for piece in self._download(
                        tenant, project, artifact_id, expected.version, start, 0, verify=False
                    ):
                        part.write(piece)
                        hasher.update(piece)
                part.flush()
                await asyncio.to_thread(os.fsync, part.fileno())
                return hasher.hexdigest()

            digest = await fetch(resumed_from)
            if digest != expected.blake3 and resumed_from > 0:
                part.truncate(0)
                resumed_from = 0
                digest = await fetch(0)
            return finish_part(partial, target, digest, expected, resumed_from)

    async def get(
        self,
        tenant: str,
        project: str,
        *,
        artifact_id: str = "",
        artifact_type: str = "",
        name: str = "",
        version: str = "",
    ) -> artifact_pb2.GetArtifactResponse:
        request = artifact_pb2.GetArtifactRequest(tenant=tenant, project=project, version=version)
        if artifact_id:
            request.artifact_id = artifact_id
        else:
            request.coordinates.CopyFrom(artifact_pb2.ArtifactCoordinates(artifact_type=artifact_type, name=name))
        return await self._idempotent(
            lambda: self.artifacts.GetArtifact(request, metadata=self._metadata, timeout=self._timeout)
        )

    async def list_artifacts(
        self, tenant: str, project: str, *, artifact_type: str = "", page_size: int = 100
    ) -> AsyncIterator[artifact_pb2.Artifact]:
        token = ""
        while True:
            request = artifact_pb2.ListArtifactsRequest(
                tenant=tenant, project=project, artifact_type=artifact_type, page_size=page_size, page_token=token
            )
            page = await self._idempotent(
                lambda: self.artifacts.ListArtifacts(request, metadata=self._metadata, timeout=self._timeout)
            )
            for artifact in page.artifacts:
                yield artifact
            token = page.next_page_token
            if not token:
                return

    async def search(
        self, tenant: str, project: str, query: str, *, page_size: int = 20
    ) -> AsyncIterator[search_pb2.SearchHit]:
        token = ""
        while True:
            request = search_pb2.SearchRequest(
                tenant=tenant, project=project, query=query, page_size=page_size, page_token=token
            )
            page = await self._idempotent(
                lambda: self.search_service.Search(request, metadata=self._metadata, timeout=self._timeout)
            )
            for hit in page.hits:
                yield hit
            token = page.next_page_token
            if not token:
                return

    async def get_metadata(
        self, tenant: str, project: str, artifact_id: str, *, version: str = ""
    ) -> artifact_pb2.GetMetadataResponse:
        request = artifact_pb2.GetMetadataRequest(
            tenant=tenant, project=project, artifact_id=artifact_id, version=version
        )
        return await self._idempotent(
            lambda: self.artifacts.GetMetadata(request, metadata=self._metadata, timeout=self._timeout)
        )

    async def storage_stats(self, tenant: str, project: str, *, artifact_id: str = "") -> artifact_pb2.StorageStats:
        """What a project's versions (or one artifact's) hold, store and saved."""
        request = artifact_pb2.GetStorageStatsRequest(tenant=tenant, project=project, artifact_id=artifact_id)
        response = await self._idempotent(
            lambda: self.artifacts.GetStorageStats(request, metadata=self._metadata, timeout=self._timeout)
        )
        return response.stats

    async def list_versions(
        self, tenant: str, project: str, artifact_id: str, *, page_size: int = 100
    ) -> AsyncIterator[artifact_pb2.ArtifactVersion]:
        token = ""
        while True:
            request = artifact_pb2.ListVersionsRequest(
                tenant=tenant, project=project, artifact_id=artifact_id, page_size=page_size, page_token=token
            )
            page = await self._idempotent(
                lambda: self.artifacts.ListVersions(request, metadata=self._metadata, timeout=self._timeout)
            )
            for version in page.versions:
                yield version
            token = page.next_page_token
            if not token:
                return

    async def search_by_metadata(
        self, request: search_pb2.SearchByMetadataRequest
    ) -> AsyncIterator[search_pb2.SearchHit]:
        while True:
            page = await self._idempotent(
                lambda: self.search_service.SearchByMetadata(request, metadata=self._metadata, timeout=self._timeout)
            )
            for hit in page.hits:
                yield hit
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def search_by_tags(self, request: search_pb2.SearchByTagsRequest) -> search_pb2.SearchByTagsResponse:
        return await self._idempotent(
            lambda: self.search_service.SearchByTags(request, metadata=self._metadata, timeout=self._timeout)
        )

    async def update_labels(
        self, tenant: str, project: str, artifact_id: str, *, tags: Sequence[str], categories: Sequence[str] = ()
    ) -> artifact_pb2.UpdateArtifactLabelsResponse:
        request = artifact_pb2.UpdateArtifactLabelsRequest(
            tenant=tenant,
            project=project,
            artifact_id=artifact_id,
            labels=artifact_pb2.Labels(tags=list(tags), categories=list(categories)),
        )
        return await self._idempotent(
            lambda: self.artifacts.UpdateArtifactLabels(request, metadata=self._metadata, timeout=self._timeout)
        )

    async def undelete(self, tenant: str, project: str, artifact_id: str) -> artifact_pb2.UndeleteArtifactResponse:
        request = artifact_pb2.UndeleteArtifactRequest(tenant=tenant, project=project, artifact_id=artifact_id)
        return await self._once(
            lambda: self.artifacts.UndeleteArtifact(request, metadata=self._metadata, timeout=self._timeout)
        )

    async def delete(self, tenant: str, project: str, artifact_id: str) -> artifact_pb2.DeleteArtifactResponse:
        request = artifact_pb2.DeleteArtifactRequest(tenant=tenant, project=project, artifact_id=artifact_id)
        return await self._once(
            lambda: self.artifacts.DeleteArtifact(request, metadata=self._metadata, timeout=self._timeout)
        )

    async def fallback_status(self) -> fallback_pb2.GetFallbackStatusResponse:
        return await self._idempotent(
            lambda: self.fallback.GetFallbackStatus(
                fallback_pb2.GetFallbackStatusRequest(), metadata=self._metadata, timeout=self._timeout
            )
        )

    async def server_status(self) -> admin_pb2.GetServerStatusResponse:
        """The server's version, its background jobs and the health of each service."""
        return await self._idempotent(
            lambda: self.admin.GetServerStatus(
                admin_pb2.GetServerStatusRequest(), metadata=self._metadata, timeout=self._timeout
            )
        )


__all__ = ["ArtifactdError", "AsyncClient"]
