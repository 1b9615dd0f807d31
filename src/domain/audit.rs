//! The audit trail's entries and the hash chain that makes them tamper-evident: each entry's
//! hash covers its fields and the hash of the entry before it in its tenant's chain, so any
//! edit, deletion, insertion or reordering breaks the chain where it happened; the chain's
//! head and signed checkpoints reveal a cut-off end.

use super::Timestamp;

/// How a recorded request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused for want of a credential or a role.
    Denied,
    /// Any other error.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Failed => "failed",
        }
    }
}

/// One entry before it takes its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Empty for requests that named no tenant (refused before one was read).
    pub tenant: String,
    pub at: Timestamp,
    pub actor: String,
    pub principal_kind: String,
    pub project: String,
    /// What was touched: an artifact id (with `@version`), a key id, a binding; or empty.
    pub target: String,
    /// The change (`artifact.created`, …) or the method (`artifactd.v1.SearchService/Search`).
    pub action: String,
    pub outcome: String,
    pub code: String,
    pub request_id: String,
    pub peer: String,
}

/// An entry in its tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: i64,
    pub record: AuditRecord,
    pub prev_hash: String,
    pub hash: String,
}

/// The chain's start: the "previous hash" of a tenant's first entry.
pub const GENESIS: &str = "";

/// The hash of an entry at `seq` after `prev_hash`: blake3 over every field, each preceded by
/// its length, so no two different entries encode alike.
pub fn entry_hash(seq: i64, record: &AuditRecord, prev_hash: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    let mut field = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(b"artifactd-audit-v1");
    field(prev_hash.as_bytes());
    field(&seq.to_le_bytes());
    field(record.tenant.as_bytes());
    field(&record.at.0.to_le_bytes());
    for text in [
        &record.actor,
        &record.principal_kind,
        &record.project,
        &record.target,
        &record.action,
        &record.outcome,
        &record.code,
        &record.request_id,
        &record.peer,
    ] {
        field(text.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// A signed statement that a tenant's chain had `seq` entries ending in `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub tenant: String,
    pub seq: i64,
    pub hash: String,
    pub at: Timestamp,
    pub key_id: String,
    /// Ed25519 over [`Checkpoint::message`], hex.
    pub signature: String,
}

impl Checkpoint {
    /// The bytes a checkpoint's signature covers.
    pub fn message(tenant: &str, seq: i64, hash: &str, at: Timestamp) -> Vec<u8> {
        format!("artifactd-audit-checkpoint-v1\n{tenant}\n{seq}\n{hash}\n{}", at.0).into_bytes()
    }
}

/// What verifying a chain found wrong, at the first entry where it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub seq: i64,
    pub message: String,
}

/// Checks a tenant's entries (read in `seq` order), the head the catalog keeps, and the
/// checkpoints, whose signatures `verify_signature` checks. Every edit, deletion, insertion,
/// reordering or truncation shows as at least one problem.
pub fn verify_chain(
    entries: &[AuditEntry],
    head: Option<(i64, String)>,
    checkpoints: &[Checkpoint],
    verify_signature: impl Fn(&Checkpoint) -> bool,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut prev = GENESIS.to_owned();
    let mut hashes = std::collections::HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let expected_seq = index as i64 + 1;
        if entry.seq != expected_seq {
            problems.push(Problem {
                seq: entry.seq,
                message: format!("entry {} stands where entry {expected_seq} belongs", entry.seq),
            });
        }
        if entry.prev_hash != prev {
            problems.push(Problem {
                seq: entry.seq,
                message: "its previous hash is not the hash of the entry before it".to_owned(),
            });
        }
        if entry_hash(entry.seq, &entry.record, &entry.prev_hash) != entry.hash {
            problems.push(Problem {
                seq: entry.seq,
                message: "its content does not match its hash".to_owned(),
            });
        }
        hashes.insert(entry.seq, entry.hash.clone());
        prev = entry.hash.clone();
    }
    let last = entries.last().map(|e| (e.seq, e.hash.clone()));
    match (&head, &last) {
        (Some(head), Some(last)) if head != last => problems.push(Problem {
            seq: head.0,
            message: format!(
                "the chain's head is entry {} but the entries end at {}",
                head.0, last.0
            ),
        }),
        (Some(head), None) if head.0 > 0 => problems.push(Problem {
            seq: head.0,
            message: "the chain's head names entries that are gone".to_owned(),
        }),
        (None, Some(last)) => problems.push(Problem {
            seq: last.0,
            message: "entries exist without a chain head".to_owned(),
        }),
        _ => {}
    }
    for checkpoint in checkpoints {
        if !verify_signature(checkpoint) {
            problems.push(Problem {
                seq: checkpoint.seq,
                message: format!("checkpoint at {} has a bad signature", checkpoint.seq),
            });
        }
        match hashes.get(&checkpoint.seq) {
            Some(hash) if *hash == checkpoint.hash => {}
            Some(_) => problems.push(Problem {
                seq: checkpoint.seq,
                message: format!("entry {} differs from its signed checkpoint", checkpoint.seq),
            }),
            None => problems.push(Problem {
                seq: checkpoint.seq,
                message: format!("entry {} was signed in a checkpoint and is gone", checkpoint.seq),
            }),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn record(i: usize) -> AuditRecord {
        AuditRecord {
            tenant: "acme".into(),
            at: Timestamp(1_000 + i as i64),
            actor: format!("key:{i}"),
            principal_kind: "api_key".into(),
            project: "web".into(),
            target: format!("artifact-{}", i % 7),
            action: if i.is_multiple_of(2) {
                "artifact.created"
            } else {
                "artifactd.v1.SearchService/Search"
            }
            .into(),
            outcome: "ok".into(),
            code: "Ok".into(),
            request_id: format!("req-{i}"),
            peer: "127.0.0.1".into(),
        }
    }

    fn chain(n: usize) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_owned();
        (0..n)
            .map(|i| {
                let seq = i as i64 + 1;
                let record = record(i);
                let hash = entry_hash(seq, &record, &prev);
                let entry = AuditEntry {
                    seq,
                    record,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                entry
            })
            .collect()
    }

    /// Random edits, deletions, insertions, reorderings and truncations of a stored chain
    /// (as someone with write access to the catalog would make them): each is found.
    #[test]
    fn every_kind_of_tampering_is_found() {
        let original = chain(40);
        let head = |entries: &[AuditEntry]| entries.last().map(|e| (e.seq, e.hash.clone()));
        let checkpoint = |entries: &[AuditEntry], at: usize| Checkpoint {
            tenant: "acme".into(),
            seq: entries[at].seq,
            hash: entries[at].hash.clone(),
            at: Timestamp(0),
            key_id: "k".into(),
            signature: "ok".into(),
        };
        let checkpoints = vec![checkpoint(&original, 29)];
        let signed = |c: &Checkpoint| c.signature == "ok";
        assert!(verify_chain(&original, head(&original), &checkpoints, signed).is_empty());
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for round in 0..2000 {
            let mut entries = original.clone();
            let mut stored_head = head(&original);
            let kind = round % 6;
            let at = rng.random_range(0..entries.len());
            match kind {
                // Edit one field, with or without recomputing that entry's own hash.
                0 => {
                    let entry = &mut entries[at];
                    match rng.random_range(0..4) {
                        0 => entry.record.actor.push('x'),
                        1 => entry.record.outcome = "denied".into(),
                        2 => entry.record.at.0 += 1,
                        _ => entry.record.target = "elsewhere".into(),
                    }
                    if rng.random_bool(0.5) {
                        entry.hash = entry_hash(entry.seq, &entry.record, &entry.prev_hash);
                    }
                }
                // Delete one entry.
                1 => {
                    entries.remove(at);
                }
                // Insert a forged entry, chained to its predecessor.
                2 => {
                    let seq = at as i64 + 1;
                    let prev = if at == 0 {
                        GENESIS.to_owned()
                    } else {
                        entries[at - 1].hash.clone()
                    };
                    let record = record(999);
                    let hash = entry_hash(seq, &record, &prev);
                    entries.insert(
                        at,
                        AuditEntry {
                            seq,
                            record,
                            prev_hash: prev,
                            hash,
                        },
                    );
                }
                // Swap two entries.
                3 => {
                    let other = (at + rng.random_range(1..entries.len())) % entries.len();
                    entries.swap(at, other);
                }
                // Cut the end off, leaving or moving the head. A cut past the last checkpoint
                // with the head moved to match shows only against a later checkpoint.
                4 => {
                    let keep = rng.random_range(0..entries.len());
                    entries.truncate(keep);
                    if rng.random_bool(0.5) {
                        stored_head = head(&entries);
                        let late = vec![checkpoints[0].clone(), checkpoint(&original, original.len() - 1)];
                        assert!(
                            !verify_chain(&entries, stored_head.clone(), &late, signed).is_empty(),
                            "round {round}: a cut with the head moved"
                        );
                        continue;
                    }
                }
                // Rewrite the tail consistently from some point, head and all.
                _ => {
                    let mut prev = if at == 0 {
                        GENESIS.to_owned()
                    } else {
                        entries[at - 1].hash.clone()
                    };
                    for entry in entries.iter_mut().skip(at) {
                        entry.record.actor = "mallory".into();
                        entry.prev_hash = prev.clone();
                        entry.hash = entry_hash(entry.seq, &entry.record, &prev);
                        prev = entry.hash.clone();
                    }
                    stored_head = head(&entries);
                    if at > 29 {
                        // Past the last checkpoint a consistent rewrite is invisible until
                        // the next one is signed: sign it now, as the checkpointer would
                        // have before the rewrite, over the original.
                        let late = vec![checkpoints[0].clone(), checkpoint(&original, original.len() - 1)];
                        assert!(
                            !verify_chain(&entries, stored_head.clone(), &late, signed).is_empty(),
                            "round {round}: a rewrite after the last checkpoint"
                        );
                        continue;
                    }
                }
            }
            let problems = verify_chain(&entries, stored_head, &checkpoints, signed);
            assert!(
                !problems.is_empty(),
                "round {round} (kind {kind}, at {at}) went unnoticed"
            );
        }
        // A forged checkpoint signature is found too.
        let mut forged = checkpoints.clone();
        forged[0].signature = "forged".into();
        assert!(!verify_chain(&original, head(&original), &forged, signed).is_empty());
    }
}
