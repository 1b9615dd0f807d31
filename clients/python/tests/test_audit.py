"""The exported audit trail, verified offline by the client: intact as exported, and every
kind of change to it shows."""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from artifactd_client import Client
from artifactd_client._generated.artifactd.v1 import audit_pb2
from artifactd_client.audit import verify_export


def export_with_checkpoint(client: Client, tenant: str) -> list[audit_pb2.ExportAuditLogResponse]:
    """The tenant's export once a checkpoint covers its newest entry."""
    deadline = time.monotonic() + 15
    while True:
        messages = client.export_audit_log(tenant)
        heads = [m.head for m in messages if m.WhichOneof("item") == "head"]
        signed = [m.checkpoint.seq for m in messages if m.WhichOneof("item") == "checkpoint"]
        if heads and signed and max(signed) == heads[0].seq:
            return messages
        assert time.monotonic() < deadline, "no checkpoint covered the chain"
        time.sleep(0.2)


def test_an_export_verifies_offline_and_tampering_shows(server: str) -> None:
    tenant = "audit" + str(int(time.time() * 1000) % 10**9)
    with Client(server) as client:
        for i in range(3):
            client.create(tenant, "web", "doc", f"d{i}.md", f"# {i}\n".encode())
        messages = export_with_checkpoint(client, tenant)
    entries = [i for i, m in enumerate(messages) if m.WhichOneof("item") == "entry"]
    assert len(entries) >= 3
    assert verify_export(messages) == []

    def changed(index: int, change: str) -> list[audit_pb2.ExportAuditLogResponse]:
        copy = [audit_pb2.ExportAuditLogResponse.FromString(m.SerializeToString()) for m in messages]
        if change == "edit":
            copy[index].entry.actor = "mallory"
        elif change == "delete":
            del copy[index]
        elif change == "swap":
            copy[index], copy[index + 1] = copy[index + 1], copy[index]
        elif change == "truncate":
            copy = [m for m in copy if not (m.WhichOneof("item") == "entry" and m.entry.seq >= copy[index].entry.seq)]
        elif change == "signature":
            for m in copy:
                if m.WhichOneof("item") == "checkpoint":
                    m.checkpoint.signature = "00" * 64
        return copy

    for change in ("edit", "delete", "swap", "truncate", "signature"):
        assert verify_export(changed(entries[1], change)), f"{change} went unnoticed"
    # Another key than the server's: its checkpoints do not verify.
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert verify_export(messages, public_key=stranger)
