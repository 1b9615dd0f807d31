"""Offline verification of an exported audit trail (`AuditService.ExportAuditLog`).

The export holds the chain's head and the key that signs checkpoints, every entry with its
hashes, and every signed checkpoint. `verify_export` recomputes each entry's blake3 hash,
follows the chain, and checks the head and each checkpoint's Ed25519 signature with the key
you trust (pass it; the one in the export is used only when you do not).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from artifactd_client._generated.artifactd.v1 import audit_pb2


@dataclass(frozen=True)
class Problem:
    """Where the chain shows tampering, and what."""

    seq: int
    message: str


def _field(hasher: blake3.blake3, data: bytes) -> None:
    hasher.update(struct.pack("<Q", len(data)))
    hasher.update(data)


def entry_hash(entry: audit_pb2.AuditEntry, prev_hash: str) -> str:
    """The hash the server gives `entry` after `prev_hash` (see `domain/audit.rs`)."""
    hasher = blake3.blake3()
    _field(hasher, b"artifactd-audit-v1")
    _field(hasher, prev_hash.encode())
    _field(hasher, struct.pack("<q", entry.seq))
    _field(hasher, entry.tenant.encode())
    _field(hasher, struct.pack("<q", entry.at_micros))
    for text in (
        entry.actor,
        entry.principal_kind,
        entry.project,
        entry.target,
        entry.action,
        entry.outcome,
        entry.code,
        entry.request_id,
        entry.peer,
    ):
        _field(hasher, text.encode())
    return hasher.hexdigest()


def checkpoint_message(checkpoint: audit_pb2.AuditCheckpoint) -> bytes:
    return (
        f"artifactd-audit-checkpoint-v1\n{checkpoint.tenant}\n{checkpoint.seq}\n"
        f"{checkpoint.hash}\n{checkpoint.at_micros}"
    ).encode()


def verify_export(
    messages: Iterable[audit_pb2.ExportAuditLogResponse], public_key: bytes | None = None
) -> list[Problem]:
    """Every problem the export shows; empty when the chain is intact."""
    head: audit_pb2.AuditHead | None = None
    entries: list[audit_pb2.AuditEntry] = []
    checkpoints: list[audit_pb2.AuditCheckpoint] = []
    for message in messages:
        kind = message.WhichOneof("item")
        if kind == "head":
            head = message.head
        elif kind == "entry":
            entries.append(message.entry)
        elif kind == "checkpoint":
            checkpoints.append(message.checkpoint)
    problems: list[Problem] = []
    if head is None:
        return [Problem(0, "the export has no head")]
    key = Ed25519PublicKey.from_public_bytes(public_key if public_key is not None else head.public_key)
    prev = ""
    hashes: dict[int, str] = {}
    for index, entry in enumerate(entries):
        if entry.seq != index + 1:
            problems.append(Problem(entry.seq, f"entry {entry.seq} stands where entry {index + 1} belongs"))
        if entry.prev_hash != prev:
            problems.append(Problem(entry.seq, "its previous hash is not the hash of the entry before it"))
        if entry_hash(entry, entry.prev_hash) != entry.hash:
            problems.append(Problem(entry.seq, "its content does not match its hash"))
        hashes[entry.seq] = entry.hash
        prev = entry.hash
    last = (entries[-1].seq, entries[-1].hash) if entries else (0, "")
    if (head.seq, head.hash) != last:
        problems.append(Problem(head.seq, f"the chain's head is entry {head.seq} but the entries end at {last[0]}"))
    for checkpoint in checkpoints:
        try:
            key.verify(bytes.fromhex(checkpoint.signature), checkpoint_message(checkpoint))
        except (InvalidSignature, ValueError):
            problems.append(Problem(checkpoint.seq, f"checkpoint at {checkpoint.seq} has a bad signature"))
        stored = hashes.get(checkpoint.seq)
        if stored is None:
            problems.append(Problem(checkpoint.seq, f"entry {checkpoint.seq} was signed in a checkpoint and is gone"))
        elif stored != checkpoint.hash:
            problems.append(Problem(checkpoint.seq, f"entry {checkpoint.seq} differs from its signed checkpoint"))
    return problems
