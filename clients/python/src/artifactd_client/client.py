"""A thin, typed layer over the generated artifactd stubs: connecting, streaming uploads and
downloads (resumable and verified), paging, and retrying calls that are safe to repeat."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar, Union

import blake3
import grpc
import grpc.aio

if sys.platform != "win32":
    import fcntl

from artifactd_client._generated.artifactd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    artifact_pb2,
    backup_pb2,
    backup_pb2_grpc,
    artifact_pb2_grpc,
    fallback_pb2,
    fallback_pb2_grpc,
    retention_pb2,
    retention_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)

#: Content to upload: bytes, a path to a file, an open binary file, or an iterable of pieces.
Content = Union[bytes, str, "os.PathLike[str]", BinaryIO, Iterable[bytes]]
#: Called with the bytes sent or received so far.
Progress = Callable[[int], None]

#: Size of the data messages an upload sends (the server accepts up to 256 KiB).
PIECE_BYTES = 256 * 1024

T = TypeVar("T")


class ArtifactdError(Exception):
    """A call the server refused or could not serve, with its gRPC status code and message
    exactly as the server sent them."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class IntegrityError(ArtifactdError):
    """Downloaded bytes do not match the blake3 digest the server announced."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.DATA_LOSS, message)


class DownloadInProgress(ArtifactdError):
    """Another download into the same path holds its `<path>.part`: this one left it alone
    and can be tried again once that one has finished."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, message)


def _error(error: grpc.RpcError) -> ArtifactdError:
    """The status of a failed call, from a synchronous call or a `grpc.aio` one."""
    if isinstance(error, (grpc.Call, grpc.aio.AioRpcError)):
        return ArtifactdError(error.code(), error.details() or "")
    return ArtifactdError(grpc.StatusCode.UNKNOWN, str(error))


@dataclass(frozen=True)
class Downloaded:
    """What a download to a file wrote."""

    path: Path
    version: str
    size: int
    blake3: str
    resumed_from: int


def _pieces(content: Content, piece: int) -> Iterator[bytes]:
    if isinstance(content, bytes):
        for start in range(0, len(content), piece):
            yield content[start : start + piece]
        return
    if isinstance(content, (str, os.PathLike)):
        with open(content, "rb") as file:
            yield from _pieces(file, piece)
        return
    if hasattr(content, "read"):
        reader: BinaryIO = content  # type: ignore[assignment]
        while chunk := reader.read(piece):
            yield chunk
        return
    for chunk in content:  # an iterable of byte strings, re-cut to the message size
        for start in range(0, len(chunk), piece):
            yield chunk[start : start + piece]


def create_header(
    tenant: str,
    project: str,
    artifact_type: str,
    name: str,
    *,
    description: str = "",
    tags: Sequence[str] = (),
    categories: Sequence[str] = (),
    metadata: Mapping[str, str] | None = None,
    initial_version: str = "",
    change_message: str = "",
    expected_size: int | None = None,
    expected_blake3: str = "",
) -> artifact_pb2.CreateArtifactHeader:
    return artifact_pb2.CreateArtifactHeader(
        tenant=tenant,
        project=project,
        artifact_type=artifact_type,
        name=name,
        description=description,
        tags=list(tags),
        categories=list(categories),
        metadata=dict(metadata or {}),
        initial_version=initial_version,
        change_message=change_message,
        expected_size=expected_size,
        expected_blake3=expected_blake3,
    )


def update_header(
    tenant: str,
    project: str,
    artifact_id: str,
    *,
    bump: str = "patch",
    explicit_version: str = "",
    expected_current_version: str = "",
    change_message: str = "",
    metadata_set: Mapping[str, str] | None = None,
    metadata_remove: Sequence[str] = (),
) -> artifact_pb2.UpdateArtifactHeader:
    header = artifact_pb2.UpdateArtifactHeader(
        tenant=tenant,
        project=project,
        artifact_id=artifact_id,
        expected_current_version=expected_current_version,
        change_message=change_message,
        metadata_set=dict(metadata_set or {}),
        metadata_remove=list(metadata_remove),
    )
    if explicit_version:
        header.explicit_version = explicit_version
        return header
    kinds = {
        "major": artifact_pb2.BUMP_KIND_MAJOR,
        "minor": artifact_pb2.BUMP_KIND_MINOR,
        "patch": artifact_pb2.BUMP_KIND_PATCH,
    }
    if bump not in kinds:
        raise ValueError(f"bump: {bump!r} is not one of major, minor, patch")
    header.bump = kinds[bump]
    return header


def upload_parts(
    content: Content, progress: Progress | None
) -> Iterator[tuple[bytes, artifact_pb2.UploadFinish | None]]:
    """The data pieces of an upload, then its finish (size and blake3 of everything sent)."""
    hasher = blake3.blake3()
    sent = 0
    for piece in _pieces(content, PIECE_BYTES):
        if not piece:
            continue
        hasher.update(piece)
        sent += len(piece)
        yield piece, None
        if progress is not None:
            progress(sent)
    yield b"", artifact_pb2.UploadFinish(size=sent, blake3=hasher.hexdigest())


R = TypeVar("R")


def upload_requests(
    request: Callable[..., R], header: object, content: Content, progress: Progress | None
) -> Iterator[R]:
    """The messages of an upload: the header, the data, and the finish that proves it complete.
    `request` is `CreateArtifactRequest` or `UpdateArtifactRequest`."""
    yield request(header=header)
    for piece, finish in upload_parts(content, progress):
        yield request(data=piece) if finish is None else request(finish=finish)


def channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ]


def call_metadata(token: str | None, api_key: str | None) -> tuple[tuple[str, str | bytes], ...]:
    """The credential sent with every call: `token` (an API key or an OIDC token), `api_key`,
    or else the `ARTIFACTD_TOKEN` environment variable."""
    metadata: list[tuple[str, str | bytes]] = []
    if not token and not api_key:
        token = os.environ.get("ARTIFACTD_TOKEN") or None
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    if api_key:
        metadata.append(("x-api-key", api_key))
    return tuple(metadata)


def whole_download_mismatch(
    artifact_id: str, header: artifact_pb2.DownloadHeader | None, offset: int, digest: str
) -> IntegrityError | None:
    """The error for a whole download whose bytes do not hash to the announced digest."""
    if header is None or offset != 0 or header.length != header.size or digest == header.blake3:
        return None
    return IntegrityError(
        f"artifact {artifact_id} version {header.version}: received bytes hash to {digest}, "
        f"the server announced {header.blake3}"
    )


def lock_partial(partial: Path, target: Path) -> BinaryIO:
    """Opens `partial` (made when missing) for appending, holding an exclusive lock on it
    (on POSIX systems) until it is closed: two downloads into one path would otherwise append
    to the same part. Raises DownloadInProgress, leaving the part alone, when another
    download holds it. A part the download that held it renamed or removed between this one
    opening and locking it is not the file at that path any more: it is let go and the path
    opened again. The part is emptied, never removed, while the download goes on: a file made
    anew in its place would not be locked."""
    while True:
        file = open(partial, "a+b")
        if sys.platform != "win32":
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.close()
                raise DownloadInProgress(
                    f"{target}: another download into this path is running (it holds {partial}); "
                    "try again when it has finished"
                ) from None
        try:
            if os.path.samestat(os.fstat(file.fileno()), os.stat(partial)):
                return file
        except FileNotFoundError:
            pass
        file.close()


def finish_part(
    partial: Path, target: Path, digest: str, expected: artifact_pb2.ArtifactVersion, resumed_from: int
) -> Downloaded:
    """Gives a part that hashes to the version's blake3 its final name; removes one that does
    not and raises IntegrityError."""
    if digest != expected.blake3:
        partial.unlink()
        raise IntegrityError(
            f"{target}: the downloaded file hashes to {digest}, version "
            f"{expected.version} has {expected.blake3}; the partial file was removed"
        )
    os.replace(partial, target)
    return Downloaded(target, expected.version, expected.size, expected.blake3, resumed_from)


def part_hasher(path: Path, size: int) -> blake3.blake3:
    """A hasher that has seen the first `size` bytes of the file at `path` (the part an
    earlier download left), read a MiB at a time whatever its size."""
    hasher = blake3.blake3()
    if size > 0:
        with open(path, "rb") as file:
            while size > 0 and (chunk := file.read(min(size, 1024 * 1024))):
                hasher.update(chunk)
                size -= len(chunk)
    return hasher


class Client:
    """A connection to one artifactd server.

    >>> with Client("127.0.0.1:50051") as client:
    ...     created = client.create("acme", "web", "prd", "payments.md", b"# Payments\\n")
    """

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
        options = channel_options()
        if tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata = call_metadata(token, api_key)
        self._retries = retries
        self._timeout = timeout
        self.artifacts = artifact_pb2_grpc.ArtifactServiceStub(self._channel)
        self.search_service = search_pb2_grpc.SearchServiceStub(self._channel)
        self.fallback = fallback_pb2_grpc.FallbackServiceStub(self._channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self._channel)
        self.retention = retention_pb2_grpc.RetentionServiceStub(self._channel)
        self.backups = backup_pb2_grpc.BackupServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- calls ---------------------------------------------------------------------------

    def _idempotent(self, call: Callable[[], T]) -> T:
        """Runs a call that is safe to repeat, retrying UNAVAILABLE with backoff."""
        delay = 0.1
        for attempt in range(self._retries + 1):
            try:
                return call()
            except grpc.RpcError as error:
                failure = _error(error)
                if failure.code != grpc.StatusCode.UNAVAILABLE or attempt == self._retries:
                    raise failure from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _once(self, call: Callable[[], T]) -> T:
        """Runs a call that must not be repeated blindly (it creates something)."""
        try:
            return call()
        except grpc.RpcError as error:
            raise _error(error) from None

    # ---- uploads -------------------------------------------------------------------------

    def create(
        self,
        tenant: str,
        project: str,
        artifact_type: str,
        name: str,
        content: Content,
        *,
        description: str = "",
        tags: Sequence[str] = (),
        categories: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        initial_version: str = "",
        change_message: str = "",
        expected_size: int | None = None,
        expected_blake3: str = "",
        progress: Progress | None = None,
    ) -> artifact_pb2.CreateArtifactResponse:
        """Creates an artifact with its first version. The content streams up in data
        messages; the stream ends with a finish message carrying its size and blake3, so a
        cut-short upload can never be committed."""
        header = create_header(
            tenant,
            project,
            artifact_type,
            name,
            description=description,
            tags=tags,
            categories=categories,
            metadata=metadata,
            initial_version=initial_version,
            change_message=change_message,
            expected_size=expected_size,
            expected_blake3=expected_blake3,
        )

        messages = upload_requests(artifact_pb2.CreateArtifactRequest, header, content, progress)
        return self._once(
            lambda: self.artifacts.CreateArtifact(messages, metadata=self._metadata, timeout=self._timeout)
        )

    def update(
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
        metadata_set: Mapping[str, str] | None = None,
        metadata_remove: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> artifact_pb2.UpdateArtifactResponse:
        """Adds a version: `bump` is "major", "minor" or "patch" unless `explicit_version`
        is given. With `expected_current_version`, the update is refused (FAILED_PRECONDITION)
        when another version was added first."""
        header = update_header(
            tenant,
            project,
            artifact_id,
            bump=bump,
            explicit_version=explicit_version,
            expected_current_version=expected_current_version,
            change_message=change_message,
            metadata_set=metadata_set,
            metadata_remove=metadata_remove,
        )

        messages = upload_requests(artifact_pb2.UpdateArtifactRequest, header, content, progress)
        return self._once(
            lambda: self.artifacts.UpdateArtifact(messages, metadata=self._metadata, timeout=self._timeout)
        )

    # ---- downloads -----------------------------------------------------------------------

    def download(
        self,
        tenant: str,
        project: str,
        artifact_id: str,
        *,
        version: str = "",
        offset: int = 0,
        length: int = 0,
    ) -> Iterator[bytes]:
        """Yields the content (or a range of it) as it arrives. A whole download is verified
        against the version's blake3 at its end (IntegrityError when it differs)."""
        return self._download(tenant, project, artifact_id, version, offset, length, verify=offset == 0)

    def _download(
        self, tenant: str, project: str, artifact_id: str, version: str, offset: int, length: int, *, verify: bool
    ) -> Iterator[bytes]:
        request = artifact_pb2.DownloadArtifactRequest(
            tenant=tenant, project=project, artifact_id=artifact_id, version=version, offset=offset, length=length
        )
        responses = self._idempotent(
            lambda: self.artifacts.DownloadArtifact(request, metadata=self._metadata, timeout=self._timeout)
        )
        hasher = blake3.blake3() if verify else None
        header: artifact_pb2.DownloadHeader | None = None
        try:
            for response in responses:
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

    def download_to(
        self,
        path: str | os.PathLike[str],
        tenant: str,
        project: str,
        artifact_id: str,
        *,
        version: str = "",
        progress: Progress | None = None,
    ) -> Downloaded:
        """Downloads into `path`, resuming from a partial `<path>.part` a previous attempt
        left, and verifying the whole file's blake3 before it takes its final name. A resumed
        file that fails verification began with other content (a part left by another version
        under the same path, or damaged since): it is removed and the version fetched whole,
        once. A whole download that fails verification is removed and raises IntegrityError;
        nothing partial ever carries the final name."""
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        # Asked before the part is opened, so that a version that is not there leaves no file.
        expected = self.get(tenant, project, artifact_id=artifact_id, version=version).version
        with lock_partial(partial, target) as part:
            resumed_from = os.fstat(part.fileno()).st_size
            if resumed_from > expected.size:
                part.truncate(0)
                resumed_from = 0

            def fetch(start: int) -> str:
                # The file's hash: the part already there, then every byte as it is written
                # (hashed once, never read back).
                hasher = part_hasher(partial, start)
                written = start
                if written < expected.size:
                    for piece in self._download(
                        tenant, project, artifact_id, expected.version, written, 0, verify=False
                    ):
                        part.write(piece)
                        hasher.update(piece)
                        written += len(piece)
                        if progress is not None:
                            progress(written)
                part.flush()
                os.fsync(part.fileno())
                return hasher.hexdigest()

            digest = fetch(resumed_from)
            if digest != expected.blake3 and resumed_from > 0:
                part.truncate(0)
                resumed_from = 0
                digest = fetch(0)
            return finish_part(partial, target, digest, expected, resumed_from)

    # ---- reads ---------------------------------------------------------------------------

    def get(
        self,
        tenant: str,
        project: str,
        *,
        artifact_id: str = "",
        artifact_type: str = "",
        name: str = "",
        version: str = "",
    ) -> artifact_pb2.GetArtifactResponse:
        """An artifact and one version (the latest unless named), by id or by type and name."""
        request = artifact_pb2.GetArtifactRequest(tenant=tenant, project=project, version=version)
        if artifact_id:
            request.artifact_id = artifact_id
        else:
            request.coordinates.CopyFrom(artifact_pb2.ArtifactCoordinates(artifact_type=artifact_type, name=name))
        return self._idempotent(
            lambda: self.artifacts.GetArtifact(request, metadata=self._metadata, timeout=self._timeout)
        )

    def download_link(
        self,
        tenant: str,
        project: str,
        artifact_id: str,
        *,
        version: str = "",
        ttl_seconds: int = 0,
        inline: bool = False,
    ) -> artifact_pb2.CreateDownloadLinkResponse:
        """A link that downloads one version over plain HTTP (with ranges and ETags) until it
        expires, for browsers and CDNs; the latest version unless one is named."""
        request = artifact_pb2.CreateDownloadLinkRequest(
            tenant=tenant,
            project=project,
            artifact_id=artifact_id,
            version=version,
            ttl_seconds=ttl_seconds,
            inline=inline,
        )
        return self._idempotent(
            lambda: self.artifacts.CreateDownloadLink(request, metadata=self._metadata, timeout=self._timeout)
        )

    def get_metadata(
        self, tenant: str, project: str, artifact_id: str, *, version: str = ""
    ) -> artifact_pb2.GetMetadataResponse:
        request = artifact_pb2.GetMetadataRequest(
            tenant=tenant, project=project, artifact_id=artifact_id, version=version
        )
        return self._idempotent(
            lambda: self.artifacts.GetMetadata(request, metadata=self._metadata, timeout=self._timeout)
        )

    def storage_stats(self, tenant: str, project: str, *, artifact_id: str = "") -> artifact_pb2.StorageStats:
        """What a project's versions (or one artifact's) hold, store and saved."""
        request = artifact_pb2.GetStorageStatsRequest(tenant=tenant, project=project, artifact_id=artifact_id)
        response = self._idempotent(
            lambda: self.artifacts.GetStorageStats(request, metadata=self._metadata, timeout=self._timeout)
        )
        return response.stats

    def list_artifacts(
        self, tenant: str, project: str, *, artifact_type: str = "", page_size: int = 100
    ) -> Iterator[artifact_pb2.Artifact]:
        """Every live artifact of a project, by name, fetched a page at a time."""
        token = ""
        while True:
            request = artifact_pb2.ListArtifactsRequest(
                tenant=tenant, project=project, artifact_type=artifact_type, page_size=page_size, page_token=token
            )
            page = self._idempotent(
                lambda: self.artifacts.ListArtifacts(request, metadata=self._metadata, timeout=self._timeout)
            )
            yield from page.artifacts
            token = page.next_page_token
            if not token:
                return

    def list_versions(
        self, tenant: str, project: str, artifact_id: str, *, page_size: int = 100
    ) -> Iterator[artifact_pb2.ArtifactVersion]:
        """Every version of an artifact, newest first."""
        token = ""
        while True:
            request = artifact_pb2.ListVersionsRequest(
                tenant=tenant, project=project, artifact_id=artifact_id, page_size=page_size, page_token=token
            )
            page = self._idempotent(
                lambda: self.artifacts.ListVersions(request, metadata=self._metadata, timeout=self._timeout)
            )
            yield from page.versions
            token = page.next_page_token
            if not token:
                return

    def search(
        self,
        tenant: str,
        project: str,
        query: str,
        *,
        artifact_type: str = "",
        tags: Sequence[str] = (),
        page_size: int = 20,
    ) -> Iterator[search_pb2.SearchHit]:
        """Every hit of a full-text query, best first, fetched a page at a time (page tokens
        belong to the server that issued them: keep one client per search)."""
        token = ""
        while True:
            request = search_pb2.SearchRequest(
                tenant=tenant,
                project=project,
                query=query,
                artifact_type=artifact_type,
                tags=list(tags),
                page_size=page_size,
                page_token=token,
            )
            page = self._idempotent(
                lambda: self.search_service.Search(request, metadata=self._metadata, timeout=self._timeout)
            )
            yield from page.hits
            token = page.next_page_token
            if not token:
                return

    def search_by_metadata(
        self, request: search_pb2.SearchByMetadataRequest
    ) -> Iterator[search_pb2.SearchHit]:
        """Every artifact matching metadata filters, in the requested order."""
        while True:
            page = self._idempotent(
                lambda: self.search_service.SearchByMetadata(request, metadata=self._metadata, timeout=self._timeout)
            )
            yield from page.hits
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def search_by_tags(self, request: search_pb2.SearchByTagsRequest) -> search_pb2.SearchByTagsResponse:
        return self._idempotent(
            lambda: self.search_service.SearchByTags(request, metadata=self._metadata, timeout=self._timeout)
        )

    # ---- changes -------------------------------------------------------------------------

    def update_labels(
        self, tenant: str, project: str, artifact_id: str, *, tags: Sequence[str], categories: Sequence[str] = ()
    ) -> artifact_pb2.UpdateArtifactLabelsResponse:
        request = artifact_pb2.UpdateArtifactLabelsRequest(
            tenant=tenant,
            project=project,
            artifact_id=artifact_id,
            labels=artifact_pb2.Labels(tags=list(tags), categories=list(categories)),
        )
        return self._idempotent(
            lambda: self.artifacts.UpdateArtifactLabels(request, metadata=self._metadata, timeout=self._timeout)
        )

    def delete(self, tenant: str, project: str, artifact_id: str) -> artifact_pb2.DeleteArtifactResponse:
        request = artifact_pb2.DeleteArtifactRequest(tenant=tenant, project=project, artifact_id=artifact_id)
        return self._once(
            lambda: self.artifacts.DeleteArtifact(request, metadata=self._metadata, timeout=self._timeout)
        )

    def undelete(self, tenant: str, project: str, artifact_id: str) -> artifact_pb2.UndeleteArtifactResponse:
        request = artifact_pb2.UndeleteArtifactRequest(tenant=tenant, project=project, artifact_id=artifact_id)
        return self._once(
            lambda: self.artifacts.UndeleteArtifact(request, metadata=self._metadata, timeout=self._timeout)
        )

    def delete_version(
        self, tenant: str, project: str, artifact_id: str, version: str
    ) -> artifact_pb2.DeleteVersionResponse:
        """Moves one version to the trash (not the latest, an approved, aliased or held one)."""
        request = artifact_pb2.DeleteVersionRequest(
            tenant=tenant, project=project, artifact_id=artifact_id, version=version
        )
        return self._once(
            lambda: self.artifacts.DeleteVersion(request, metadata=self._metadata, timeout=self._timeout)
        )

    def undelete_version(
        self, tenant: str, project: str, artifact_id: str, version: str
    ) -> artifact_pb2.UndeleteVersionResponse:
        request = artifact_pb2.UndeleteVersionRequest(
            tenant=tenant, project=project, artifact_id=artifact_id, version=version
        )
        return self._once(
            lambda: self.artifacts.UndeleteVersion(request, metadata=self._metadata, timeout=self._timeout)
        )

    # ---- retention, the trash and collection -----------------------------------------------

    def list_trash(self, tenant: str, project: str, *, page_size: int = 100) -> Iterator[retention_pb2.TrashItem]:
        """What a project's trash holds, most recently deleted first."""
        token = ""
        while True:
            request = retention_pb2.ListTrashRequest(
                tenant=tenant, project=project, page_size=page_size, page_token=token
            )
            page = self._idempotent(
                lambda: self.retention.ListTrash(request, metadata=self._metadata, timeout=self._timeout)
            )
            yield from page.items
            token = page.next_page_token
            if not token:
                return

    def purge(self, tenant: str, project: str, artifact_id: str, version: str = "") -> None:
        """Removes an artifact (no version) or a version from the trash for good."""
        request = retention_pb2.PurgeTrashRequest(
            tenant=tenant, project=project, artifact_id=artifact_id, version=version
        )
        self._once(lambda: self.retention.PurgeTrash(request, metadata=self._metadata, timeout=self._timeout))

    def create_retention_policy(
        self, tenant: str, project: str, name: str, document: str
    ) -> retention_pb2.RetentionPolicy:
        """A policy from a YAML or JSON document (unknown fields are refused by name)."""
        request = retention_pb2.CreateRetentionPolicyRequest(
            tenant=tenant, project=project, name=name, document=document
        )
        return self._once(
            lambda: self.retention.CreateRetentionPolicy(request, metadata=self._metadata, timeout=self._timeout)
        ).policy

    def evaluate_retention_policy(self, tenant: str, project: str, policy_id: str) -> retention_pb2.RetentionRun:
        """A dry run: every version the policy would change, with the rule and the reason."""
        request = retention_pb2.EvaluateRetentionPolicyRequest(tenant=tenant, project=project, policy_id=policy_id)
        return self._once(
            lambda: self.retention.EvaluateRetentionPolicy(request, metadata=self._metadata, timeout=self._timeout)
        ).run

    def execute_retention_policy(
        self, tenant: str, project: str, policy_id: str, *, expected_plan: str = ""
    ) -> retention_pb2.RetentionRun:
        """Executes a policy; with a dry run's `plan`, exactly that plan or nothing (ABORTED)."""
        request = retention_pb2.ExecuteRetentionPolicyRequest(
            tenant=tenant, project=project, policy_id=policy_id, expected_plan=expected_plan
        )
        return self._once(
            lambda: self.retention.ExecuteRetentionPolicy(request, metadata=self._metadata, timeout=self._timeout)
        ).run

    def collect_garbage(self, *, dry_run: bool = False) -> admin_pb2.GarbageCollection:
        """One garbage collection run (server admin); FAILED_PRECONDITION while another runs."""
        request = admin_pb2.CollectGarbageRequest(dry_run=dry_run)
        return self._once(
            lambda: self.admin.CollectGarbage(request, metadata=self._metadata, timeout=self._timeout)
        ).report

    # ---- backups and restores --------------------------------------------------------------

    def backup(
        self,
        tenant: str,
        project: str = "",
        *,
        artifact_id: str = "",
        on_progress: Callable[[backup_pb2.BackupProgress], None] | None = None,
    ) -> backup_pb2.Backup:
        """Backs up a project (a tenant when `project` is empty, one artifact with
        `artifact_id`); the backup once it is written to every store and verified."""
        request = backup_pb2.CreateBackupRequest(tenant=tenant, project=project, artifact_id=artifact_id)

        def call() -> backup_pb2.Backup:
            for message in self.backups.CreateBackup(request, metadata=self._metadata, timeout=self._timeout):
                if message.HasField("backup"):
                    return message.backup
                if on_progress is not None:
                    on_progress(message.progress)
            raise ArtifactdError(grpc.StatusCode.UNKNOWN, "the backup stream ended without its result")

        return self._once(call)

    def list_backups(self, tenant: str, project: str = "", *, page_size: int = 100) -> Iterator[backup_pb2.Backup]:
        """A project's backups (a tenant's when `project` is empty), newest first."""
        token = ""
        while True:
            request = backup_pb2.ListBackupsRequest(
                tenant=tenant, project=project, page_size=page_size, page_token=token
            )
            page = self._idempotent(
                lambda: self.backups.ListBackups(request, metadata=self._metadata, timeout=self._timeout)
            )
            yield from page.backups
            token = page.next_page_token
            if not token:
                return

    def restore(
        self,
        tenant: str,
        project: str,
        *,
        backup_id: str = "",
        at: float | None = None,
        artifact_id: str = "",
        new_project: str = "",
        new_artifact_name: str = "",
        overwrite: bool = False,
        dry_run: bool = False,
        on_progress: Callable[[backup_pb2.BackupProgress], None] | None = None,
    ) -> backup_pb2.RestoreResult:
        """Restores from `backup_id`, or as of `at` (seconds since the epoch) within the
        recovery window: into the same place (existing artifacts change only with
        `overwrite`), into `new_project`, or as a new artifact named `new_artifact_name`."""
        if (backup_id == "") == (at is None):
            raise ValueError("give exactly one of backup_id and at")
        target = backup_pb2.RestoreTarget(same_place=True)
        if new_project:
            target = backup_pb2.RestoreTarget(new_project=new_project)
        elif new_artifact_name:
            target = backup_pb2.RestoreTarget(new_artifact=backup_pb2.NewArtifact(name=new_artifact_name))
        request = backup_pb2.RestoreBackupRequest(
            tenant=tenant,
            project=project,
            artifact_id=artifact_id,
            target=target,
            overwrite=overwrite,
            dry_run=dry_run,
        )
        if backup_id:
            request.backup_id = backup_id
        else:
            assert at is not None
            request.point_in_time.artifact_id = artifact_id
            request.point_in_time.at.FromNanoseconds(int(at * 1e9))

        def call() -> backup_pb2.RestoreResult:
            for message in self.backups.RestoreBackup(request, metadata=self._metadata, timeout=self._timeout):
                if message.HasField("result"):
                    return message.result
                if on_progress is not None:
                    on_progress(message.progress)
            raise ArtifactdError(grpc.StatusCode.UNKNOWN, "the restore stream ended without its result")

        return self._once(call)

    def fallback_status(self) -> fallback_pb2.GetFallbackStatusResponse:
        return self._idempotent(
            lambda: self.fallback.GetFallbackStatus(
                fallback_pb2.GetFallbackStatusRequest(), metadata=self._metadata, timeout=self._timeout
            )
        )

    def export_audit_log(self, tenant: str) -> list[audit_pb2.ExportAuditLogResponse]:
        """A tenant's whole audit trail with its hashes and signed checkpoints, for
        `artifactd_client.audit.verify_export` (needs the tenant admin role)."""
        return self._idempotent(
            lambda: list(
                self.audit.ExportAuditLog(
                    audit_pb2.ExportAuditLogRequest(tenant=tenant), metadata=self._metadata, timeout=self._timeout
                )
            )
        )

    def server_status(self) -> admin_pb2.GetServerStatusResponse:
        """The server's version, its background jobs (state, restarts, last error) and the
        health of each service it reports."""
        return self._idempotent(
            lambda: self.admin.GetServerStatus(
                admin_pb2.GetServerStatusRequest(), metadata=self._metadata, timeout=self._timeout
            )
        )
