//! Changes as the outbox records them and the change stream delivers them.

use super::{LifecycleState, Timestamp};

/// What a committed change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    ArtifactCreated,
    VersionAdded,
    VersionTransitioned,
    LabelsChanged,
    AliasMoved,
    ArtifactDeleted,
    ArtifactRestored,
    ArtifactPurged,
    /// Linked read-only into the event's project from another project.
    ArtifactLinked,
    ArtifactUnlinked,
    /// The tenant's encryption keys were destroyed: the content and what was extracted from
    /// it are gone.
    ContentDestroyed,
    /// One version moved to the trash (by a caller or a retention policy).
    VersionDeleted,
    /// A version taken back out of the trash.
    VersionRestored,
    /// A version removed from the trash for good.
    VersionPurged,
    /// Restored from a backup or to a point in time.
    ArtifactRecovered,
}

impl EventKind {
    pub const ALL: [EventKind; 15] = [
        Self::ArtifactCreated,
        Self::VersionAdded,
        Self::VersionTransitioned,
        Self::LabelsChanged,
        Self::AliasMoved,
        Self::ArtifactDeleted,
        Self::ArtifactRestored,
        Self::ArtifactPurged,
        Self::ArtifactLinked,
        Self::ArtifactUnlinked,
        Self::ContentDestroyed,
        Self::VersionDeleted,
        Self::VersionRestored,
        Self::VersionPurged,
        Self::ArtifactRecovered,
    ];

    /// The outbox's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ArtifactCreated => "artifact.created",
            Self::VersionAdded => "version.created",
            Self::VersionTransitioned => "version.transitioned",
            Self::LabelsChanged => "artifact.labels_changed",
            Self::AliasMoved => "alias.moved",
            Self::ArtifactDeleted => "artifact.deleted",
            Self::ArtifactRestored => "artifact.undeleted",
            Self::ArtifactPurged => "artifact.purged",
            Self::ArtifactLinked => "artifact.linked",
            Self::ArtifactUnlinked => "artifact.unlinked",
            Self::ContentDestroyed => "artifact.content_destroyed",
            Self::VersionDeleted => "version.deleted",
            Self::VersionRestored => "version.undeleted",
            Self::VersionPurged => "version.purged",
            Self::ArtifactRecovered => "artifact.recovered",
        }
    }

    /// Whether a change of this kind can change what the artifact journal records (labels,
    /// metadata, latest version, deletion, aliases, the trash). Transitions are kept in
    /// their own history; links and key destruction change none of it.
    pub fn changes_journaled_state(self) -> bool {
        !matches!(
            self,
            Self::VersionTransitioned
                | Self::ArtifactLinked
                | Self::ArtifactUnlinked
                | Self::ContentDestroyed
        )
    }

    pub fn from_outbox(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// One committed change of a project, at its place in commit order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// The outbox position: commit order, and the stream's cursor.
    pub position: i64,
    pub kind: EventKind,
    pub artifact_id: String,
    /// Empty when the artifact is gone (purged).
    pub artifact_type: String,
    pub name: String,
    pub version: String,
    pub at: Timestamp,
    /// Transitions: from and to, and the reason.
    pub transition: Option<(LifecycleState, LifecycleState, String)>,
    /// Alias moves: the alias and its previous target.
    pub alias: Option<(String, Option<String>)>,
    /// Links and unlinks: the project the artifact lives in.
    pub origin_project: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_outbox_name() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_outbox(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::from_outbox("artifact.renamed"), None);
    }
}
