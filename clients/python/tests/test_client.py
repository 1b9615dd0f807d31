"""The Python client against a live server: every call it wraps, and errors as the server
sent them."""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import blake3
import grpc
import pytest

from artifactd_client import ArtifactdError, Client, DownloadInProgress
from artifactd_client._generated.artifactd.v1 import admin_pb2, backup_pb2, search_pb2

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[3]


def project() -> str:
    """A project of its own per test."""
    return "p" + uuid.uuid4().hex[:12]


def eventually(check: Callable[[], T | None], what: str, limit: float = 15.0) -> T:
    """The search index follows the catalog a moment later: wait for it."""
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_upload_update_and_a_resumed_verified_download(server: str, tmp_path: Path) -> None:
    p = project()
    content = os.urandom(1024 * 1024 + 123)
    seen: list[int] = []
    with Client(server) as client:
        created = client.create("acme", p, "bundle", "data.bin", content, progress=seen.append)
        assert seen[-1] == len(content)
        assert created.version.size == len(content)
        assert created.version.blake3 == blake3.blake3(content).hexdigest()
        assert created.artifact.created_by.startswith("key:"), "the author is the key"
        artifact_id = created.artifact.id

        updated = client.update(
            "acme", p, artifact_id, content[::-1], bump="minor", expected_current_version="1.0.0"
        )
        assert updated.version.version == "1.1.0"
        with pytest.raises(ArtifactdError) as stale:
            client.update("acme", p, artifact_id, b"late", expected_current_version="1.0.0")
        assert stale.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "1.1.0" in stale.value.message
        assert [v.version for v in client.list_versions("acme", p, artifact_id, page_size=1)] == ["1.1.0", "1.0.0"]

        # An interrupted download left 300 KiB; the next one resumes and verifies the whole.
        target = tmp_path / "data.bin"
        (tmp_path / "data.bin.part").write_bytes(content[:300 * 1024])
        done = client.download_to(target, "acme", p, artifact_id, version="1.0.0")
        assert done.resumed_from == 300 * 1024
        assert target.read_bytes() == content
        assert b"".join(client.download("acme", p, artifact_id, version="1.0.0", offset=10, length=5)) == content[10:15]

        # A part left by another version under the same path does not verify once resumed:
        # it is thrown away and the version fetched whole.
        other = tmp_path / "stale.bin"
        (tmp_path / "stale.bin.part").write_bytes(content[::-1][: len(content) // 2])
        seen.clear()
        again = client.download_to(other, "acme", p, artifact_id, version="1.0.0", progress=seen.append)
        assert again.resumed_from == 0 and other.read_bytes() == content
        assert seen[-1] == len(content)
        assert not (tmp_path / "stale.bin.part").exists()
        empty = client.create("acme", p, "bundle", "empty.bin", b"")
        assert client.download_to(tmp_path / "empty.bin", "acme", p, empty.artifact.id).size == 0
        assert (tmp_path / "empty.bin").read_bytes() == b""


def test_downloads_into_one_path_take_turns(server: str, tmp_path: Path) -> None:
    p = project()
    content = os.urandom(4 * 1024 * 1024 + 17)
    with Client(server) as client:
        artifact_id = client.create("acme", p, "bundle", "turns.bin", content).artifact.id

        # A version that is not there leaves no part behind.
        with pytest.raises(ArtifactdError) as missing:
            client.download_to(tmp_path / "missing.bin", "acme", project(), artifact_id)
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        assert not (tmp_path / "missing.bin.part").exists()

        # A part another download holds is left alone.
        part = tmp_path / "held.bin.part"
        part.write_bytes(content[:1000])
        with open(part, "rb") as holder:
            fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(DownloadInProgress) as running:
                client.download_to(tmp_path / "held.bin", "acme", p, artifact_id)
        assert running.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "another download into this path is running" in running.value.message
        assert str(part) in running.value.message
        assert part.read_bytes() == content[:1000] and not (tmp_path / "held.bin").exists()
        assert client.download_to(tmp_path / "held.bin", "acme", p, artifact_id).resumed_from == 1000
        assert (tmp_path / "held.bin").read_bytes() == content

        # Downloads started at once: each finishes or stops as above; the file ends whole.
        target = tmp_path / "same.bin"
        for round in range(4):
            outcomes: list[str] = []

            def download() -> None:
                try:
                    client.download_to(target, "acme", p, artifact_id)
                    outcomes.append("done")
                except DownloadInProgress:
                    outcomes.append("running")
                except Exception as error:
                    outcomes.append(repr(error))

            threads = [threading.Thread(target=download) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert set(outcomes) <= {"done", "running"} and "done" in outcomes, (round, outcomes)
            assert target.read_bytes() == content, round
            assert not (tmp_path / "same.bin.part").exists(), round


def test_an_edit_is_stored_as_a_delta_and_the_savings_add_up(server: str) -> None:
    p = project()
    document = b"".join(b"- requirement %d: the service keeps every version\n" % n for n in range(600))
    with Client(server) as client:
        created = client.create("acme", p, "doc", "prd.md", document)
        edited = document.replace(b"requirement 300:", b"requirement 300 (revised):")
        updated = client.update("acme", p, created.artifact.id, edited, bump="minor")
        version = updated.version
        assert version.delta_saved_bytes > 0, "the edit was not stored as a delta"
        assert version.new_stored_size < 1024, f"an edit stored {version.new_stored_size} bytes"
        stats = client.storage_stats("acme", p)
        assert stats.versions == 2
        assert stats.logical_bytes == len(document) + len(edited)
        assert (
            stats.stored_bytes + stats.dedup_saved_bytes + stats.delta_saved_bytes + stats.compression_saved_bytes
            == stats.logical_bytes
        )
        one = client.storage_stats("acme", p, artifact_id=created.artifact.id)
        assert one == stats
        assert b"".join(client.download("acme", p, created.artifact.id)) == edited


def test_a_download_link_serves_the_version_over_plain_http(server: str) -> None:
    p = project()
    content = os.urandom(300_000)
    with Client(server) as client:
        created = client.create("acme", p, "bundle", "linked.bin", content)
        link = client.download_link("acme", p, created.artifact.id, ttl_seconds=120)
        assert link.version == "1.0.0" and link.size == len(content)
        with urllib.request.urlopen(link.url) as response:
            assert response.status == 200
            assert response.headers["ETag"] == link.etag
            assert response.read() == content
        ranged = urllib.request.Request(link.url, headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(ranged) as response:
            assert response.status == 206
            assert response.read() == content[10:20]
        with pytest.raises(urllib.error.HTTPError) as forged:
            urllib.request.urlopen(link.url.replace("expires=", "expires=1"))
        assert forged.value.code == 403
        with pytest.raises(ArtifactdError) as too_long:
            client.download_link("acme", p, created.artifact.id, ttl_seconds=10**9)
        assert too_long.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "ttl_seconds" in too_long.value.message


def test_listing_searching_and_labels(server: str) -> None:
    p = project()
    with Client(server) as client:
        ids = []
        for n, owner in enumerate(["pm", "pm", "architect"]):
            created = client.create(
                "acme",
                p,
                "prd",
                f"plan-{n}.md",
                f"# Zephyr plan {n}\n\nThe zephyr rollout.\n".encode(),
                tags=["zephyr", f"n{n}"],
                metadata={"owner": owner},
            )
            ids.append(created.artifact.id)
        assert [a.name for a in client.list_artifacts("acme", p, page_size=2)] == ["plan-0.md", "plan-1.md", "plan-2.md"]

        def all_hits() -> list[str] | None:
            hits = [h.artifact_id for h in client.search("acme", p, "zephyr", page_size=1)]
            return hits if len(hits) == len(ids) else None

        hits = eventually(all_hits, "the index to hold every plan")
        assert sorted(hits) == sorted(ids), "paging walks every hit"
        by_owner = search_pb2.SearchByMetadataRequest(
            tenant="acme",
            project=p,
            filters=[search_pb2.MetadataFilter(field="metadata.owner", equals="pm")],
            sort=search_pb2.METADATA_SORT_NAME,
        )
        assert [h.name for h in client.search_by_metadata(by_owner)] == ["plan-0.md", "plan-1.md"]
        tagged = client.search_by_tags(search_pb2.SearchByTagsRequest(tenant="acme", project=p, tags=["zephyr"]))
        assert tagged.total_hits == 3
        assert {f.tag: f.count for f in tagged.facets}["zephyr"] == 3

        client.update_labels("acme", p, ids[0], tags=["archived-plan"])
        assert list(client.get("acme", p, artifact_id=ids[0]).artifact.tags) == ["archived-plan"]
        metadata = client.get_metadata("acme", p, ids[0])
        assert metadata.extracted.title == "Zephyr plan 0"


def test_delete_and_undelete(server: str) -> None:
    p = project()
    with Client(server) as client:
        artifact_id = client.create("acme", p, "story", "s.md", b"# story\n").artifact.id
        deleted = client.delete("acme", p, artifact_id)
        assert deleted.restorable_until.seconds > time.time()
        with pytest.raises(ArtifactdError) as gone:
            client.get("acme", p, artifact_id=artifact_id)
        assert gone.value.code == grpc.StatusCode.NOT_FOUND
        client.undelete("acme", p, artifact_id)
        assert client.get("acme", p, artifact_type="story", name="s.md").artifact.id == artifact_id


def test_the_trash_a_retention_policy_and_collection(server: str) -> None:
    p = project()
    with Client(server) as client:
        artifact_id = client.create("acme", p, "story", "s.md", b"# v1\n").artifact.id
        for body in (b"# v2\n", b"# v3\n", b"# v4\n"):
            client.update("acme", p, artifact_id, body, bump="patch")
        trashed = client.delete_version("acme", p, artifact_id, "1.0.0")
        assert trashed.restorable_until.seconds > time.time()
        items = list(client.list_trash("acme", p))
        assert [(i.artifact_id, i.version) for i in items] == [(artifact_id, "1.0.0")]
        client.undelete_version("acme", p, artifact_id, "1.0.0")
        assert not list(client.list_trash("acme", p))
        with pytest.raises(ArtifactdError) as latest:
            client.delete_version("acme", p, artifact_id, "1.0.3")
        assert latest.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "latest" in latest.value.message

        with pytest.raises(ArtifactdError) as unknown:
            client.create_retention_policy("acme", p, "bad", "action: delete\nkeep: {lastest: 2}\n")
        assert unknown.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert unknown.value.message.startswith("document:") and "lastest" in unknown.value.message
        policy = client.create_retention_policy("acme", p, "keep-two", "action: delete\nkeep: {latest: 2}\n")
        dry = client.evaluate_retention_policy("acme", p, policy.id)
        assert dry.dry_run
        assert sorted(d.version for d in dry.affected) == ["1.0.0", "1.0.1"]
        assert {d.rule for d in dry.affected} == {"no_keep_rule"}
        done = client.execute_retention_policy("acme", p, policy.id, expected_plan=dry.plan)
        assert done.applied == 2 and not done.skipped
        assert sorted(i.version for i in client.list_trash("acme", p)) == ["1.0.0", "1.0.1"]
        client.purge("acme", p, artifact_id, "1.0.0")
        assert [i.version for i in client.list_trash("acme", p)] == ["1.0.1"]

        report = client.collect_garbage(dry_run=True)
        assert report.dry_run and report.packs_examined > 0


def test_backup_and_restore(server: str) -> None:
    p = project()
    with Client(server) as client:
        artifact_id = client.create("acme", p, "prd", "plan.md", b"# v1\n").artifact.id
        phases: list[str] = []
        taken = client.backup("acme", p, on_progress=lambda progress: phases.append(progress.phase))
        assert phases and taken.artifacts == 1 and taken.versions == 1
        assert [b.id for b in client.list_backups("acme", p)] == [taken.id]
        moment = time.time()
        time.sleep(0.05)
        client.update("acme", p, artifact_id, b"# v2\n", bump="minor")
        with pytest.raises(ArtifactdError) as exists:
            client.restore("acme", p, backup_id=taken.id)
        assert exists.value.code == grpc.StatusCode.ALREADY_EXISTS and "overwrite" in exists.value.message
        dry = client.restore("acme", p, at=moment, dry_run=True)
        assert dry.dry_run
        assert [(c.version, c.kind) for c in dry.changes] == [
            ("", backup_pb2.RESTORE_CHANGE_KIND_SET_FIELDS),
            ("1.1.0", backup_pb2.RESTORE_CHANGE_KIND_TRASH_VERSION),
        ]
        copied = client.restore("acme", p, backup_id=taken.id, new_project=p + "-copy")
        new_id = copied.new_ids[artifact_id]
        assert b"".join(client.download("acme", p + "-copy", new_id)) == b"# v1\n"


def test_errors_reach_the_caller_as_the_server_sent_them(server: str) -> None:
    with Client(server) as client:
        missing = str(uuid.uuid4())
        with pytest.raises(ArtifactdError) as not_found:
            client.get("acme", project(), artifact_id=missing)
        assert not_found.value.code == grpc.StatusCode.NOT_FOUND
        assert missing in not_found.value.message
        with pytest.raises(ArtifactdError) as bad_name:
            client.create("acme", project(), "prd", "docs/../b.md", b"x")
        assert bad_name.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_name.value.message.startswith("name:")
        with pytest.raises(ArtifactdError) as no_fallback:
            client.fallback_status()
        assert no_fallback.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "no fallback store is configured" in no_fallback.value.message


def test_server_status_names_its_jobs_and_services(server: str) -> None:
    with Client(server) as client:
        status = client.server_status()
        assert status.version
        jobs = {job.name: job for job in status.jobs}
        assert "indexer" in jobs, jobs
        assert jobs["indexer"].state == admin_pb2.JOB_STATE_RUNNING
        services = {s.service: s.serving for s in status.services}
        assert services.get("artifactd.v1.ArtifactService") is True, services


def test_unavailable_is_retried_then_reported() -> None:
    started = time.monotonic()
    with Client("127.0.0.1:9", retries=2) as client, pytest.raises(ArtifactdError) as down:
        client.get("acme", "web", artifact_id=str(uuid.uuid4()))
    assert down.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started >= 0.3, "two retries with backoff (0.1 s, then 0.2 s)"


def test_the_readme_example_runs(server: str) -> None:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- python-example -->\s*```python\n(.*?)```", readme, re.S)
    assert match, "the README has a Python example"
    example = match.group(1)
    assert len(example.strip().splitlines()) <= 5
    exec(compile(example.replace("127.0.0.1:50051", server), "README.md", "exec"), {})
