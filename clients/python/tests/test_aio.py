"""The asyncio client against a live server."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import grpc
import pytest

from artifactd_client import ArtifactdError, Downloaded, DownloadInProgress
from artifactd_client._generated.artifactd.v1 import search_pb2
from artifactd_client.aio import AsyncClient


def test_the_async_client_round_trips_resumes_pages_and_reports_errors(server: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        p = "a" + uuid.uuid4().hex[:12]
        content = os.urandom(700 * 1024)
        async with AsyncClient(server) as client:
            created = await client.create("acme", p, "bundle", "async.bin", content, tags=["asyncio"])
            artifact_id = created.artifact.id
            updated = await client.update("acme", p, artifact_id, b"second", bump="major")
            assert updated.version.version == "2.0.0"
            pieces = [piece async for piece in client.download("acme", p, artifact_id, version="1.0.0")]
            assert b"".join(pieces) == content

            target = tmp_path / "async.bin"
            (tmp_path / "async.bin.part").write_bytes(content[:100_000])
            done = await client.download_to(target, "acme", p, artifact_id, version="1.0.0")
            assert done.resumed_from == 100_000 and target.read_bytes() == content
            # A part of other content is thrown away once it fails verification.
            (tmp_path / "async.bin.part").write_bytes(b"second")
            again = await client.download_to(target, "acme", p, artifact_id, version="1.0.0")
            assert again.resumed_from == 0 and target.read_bytes() == content
            # Downloads into one path at once: one holds the part, the others stop.
            outcomes = await asyncio.gather(
                *(client.download_to(tmp_path / "once.bin", "acme", p, artifact_id, version="1.0.0") for _ in range(6)),
                return_exceptions=True,
            )
            assert all(isinstance(o, (Downloaded, DownloadInProgress)) for o in outcomes), outcomes
            assert sum(isinstance(o, Downloaded) for o in outcomes) >= 1, outcomes
            assert (tmp_path / "once.bin").read_bytes() == content
            assert not (tmp_path / "once.bin.part").exists()

            for n in range(3):
                await client.create("acme", p, "doc", f"note-{n}.md", f"# Quokka note {n}\n".encode())
            names = [a.name async for a in client.list_artifacts("acme", p, page_size=2)]
            assert names == ["async.bin", "note-0.md", "note-1.md", "note-2.md"]
            deadline = time.monotonic() + 15
            while True:
                hits = [h.name async for h in client.search("acme", p, "quokka", page_size=1)]
                if len(hits) == 3 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert sorted(hits) == ["note-0.md", "note-1.md", "note-2.md"]

            versions = [v.version async for v in client.list_versions("acme", p, artifact_id, page_size=1)]
            assert versions == ["2.0.0", "1.0.0"]
            await client.update_labels("acme", p, artifact_id, tags=["relabelled"])
            tagged = await client.search_by_tags(
                search_pb2.SearchByTagsRequest(tenant="acme", project=p, tags=["relabelled"])
            )
            assert tagged.total_hits in (0, 1), "the index follows a moment later"
            by_name = search_pb2.SearchByMetadataRequest(
                tenant="acme",
                project=p,
                filters=[search_pb2.MetadataFilter(field="name", prefix="note-")],
                sort=search_pb2.METADATA_SORT_NAME,
                page_size=2,
            )
            assert [h.name async for h in client.search_by_metadata(by_name)] == ["note-0.md", "note-1.md", "note-2.md"]
            described = await client.get_metadata("acme", p, artifact_id, version="2.0.0")
            assert described.version.size == len(b"second")

            await client.delete("acme", p, artifact_id)
            with pytest.raises(ArtifactdError) as gone:
                await client.get("acme", p, artifact_id=artifact_id)
            assert gone.value.code == grpc.StatusCode.NOT_FOUND
            await client.undelete("acme", p, artifact_id)
            assert (await client.get("acme", p, artifact_id=artifact_id)).version.version == "2.0.0"
            with pytest.raises(ArtifactdError) as no_fallback:
                await client.fallback_status()
            assert no_fallback.value.code == grpc.StatusCode.FAILED_PRECONDITION
            status = await client.server_status()
            assert "indexer" in {job.name for job in status.jobs}

    asyncio.run(scenario())
