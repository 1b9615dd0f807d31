//! The decisions of `FailoverStore` as typed values: what each side did with a call, and
//! what that means for the caller. Pure functions, unit-tested without any store.

use crate::storage::{Side, StoreError};

/// What one side did with one call.
#[derive(Debug)]
pub enum SideOutcome<T> {
    /// The side answered with the value.
    Done(T),
    /// The side answered that it does not hold the object.
    Missing,
    /// The side's copy failed verification or is shorter than the range asked for.
    Damaged(StoreError),
    /// The side did not answer properly: down, slow, refusing work.
    Fault(StoreError),
    /// The side was not asked: its breaker is open (or, for an asynchronous mirror's
    /// fallback, the write was left to the replicator).
    Skipped,
    /// The side answered that the request itself is wrong (a bad key): any side would.
    Rejected(StoreError),
}

impl<T> SideOutcome<T> {
    /// Classifies a store's answer; `Ok(None)` is "this side does not hold it".
    pub fn classify(result: Result<Option<T>, StoreError>) -> Self {
        match result {
            Ok(Some(value)) => SideOutcome::Done(value),
            Ok(None) => SideOutcome::Missing,
            Err(StoreError::NotFound { .. }) => SideOutcome::Missing,
            Err(error @ (StoreError::Corrupt { .. } | StoreError::InvalidRange { .. })) => {
                SideOutcome::Damaged(error)
            }
            Err(error) if error.is_store_fault() => SideOutcome::Fault(error),
            Err(error) => SideOutcome::Rejected(error),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, SideOutcome::Done(_))
    }

    fn describe(&self, side: Side) -> Option<String> {
        match self {
            SideOutcome::Done(_) => None,
            SideOutcome::Missing => Some(format!("{side}: not found")),
            SideOutcome::Damaged(error) | SideOutcome::Fault(error) | SideOutcome::Rejected(error) => {
                Some(format!("{side}: {error}"))
            }
            SideOutcome::Skipped => Some(format!("{side}: circuit open")),
        }
    }
}

/// What to do after a write reached (or did not reach) both sides.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteDecision {
    /// At least one side holds the object: acknowledge once the durable queue has a copy
    /// order for every side that does not.
    Acknowledge { copy_to: Vec<Side> },
    /// No side took the write, for reasons of their health.
    Unavailable { reasons: String },
    /// The request itself is wrong.
    Reject(StoreError),
}

pub fn decide_write(primary: &SideOutcome<()>, fallback: &SideOutcome<()>) -> WriteDecision {
    let outcomes = [(Side::Primary, primary), (Side::Fallback, fallback)];
    if let Some((_, SideOutcome::Rejected(error))) = outcomes
        .iter()
        .find(|(_, outcome)| matches!(outcome, SideOutcome::Rejected(_)))
    {
        return WriteDecision::Reject(error.clone());
    }
    if !outcomes.iter().any(|(_, outcome)| outcome.is_done()) {
        return WriteDecision::Unavailable {
            reasons: reasons(&outcomes),
        };
    }
    WriteDecision::Acknowledge {
        copy_to: outcomes
            .iter()
            .filter(|(_, outcome)| !outcome.is_done())
            .map(|(side, _)| *side)
            .collect(),
    }
}

/// What to answer after asking one or both sides for an object.
#[derive(Debug)]
pub enum ReadDecision<T> {
    /// Serve the value; the sides in `repair` lack the object or hold a damaged copy and
    /// get a good one copied to them.
    Serve { value: T, repair: Vec<Side> },
    /// Both sides answered that they do not hold it.
    NotFound,
    /// No side holds a good copy and none is merely unreachable: the damage is real.
    Damaged(StoreError),
    /// A side that might hold it could not be asked or did not answer.
    Unavailable { reasons: String },
    /// The request itself is wrong.
    Reject(StoreError),
}

/// Decides a read from the outcomes in the order the sides were asked; a side not asked
/// because the first served is absent.
pub fn decide_read<T>(outcomes: Vec<(Side, SideOutcome<T>)>) -> ReadDecision<T> {
    let repair: Vec<Side> = outcomes
        .iter()
        .filter(|(_, outcome)| matches!(outcome, SideOutcome::Missing | SideOutcome::Damaged(_)))
        .map(|(side, _)| *side)
        .collect();
    let described = reasons_of(&outcomes);
    let mut damaged = None;
    let mut rejected = None;
    let mut missing = 0;
    let mut unknown = 0;
    for (_, outcome) in outcomes {
        match outcome {
            SideOutcome::Done(value) => return ReadDecision::Serve { value, repair },
            SideOutcome::Missing => missing += 1,
            SideOutcome::Damaged(error) => damaged = Some(error),
            SideOutcome::Rejected(error) => rejected = Some(error),
            SideOutcome::Fault(_) | SideOutcome::Skipped => unknown += 1,
        }
    }
    if let Some(error) = rejected {
        return ReadDecision::Reject(error);
    }
    if unknown > 0 {
        return ReadDecision::Unavailable { reasons: described };
    }
    match damaged {
        Some(error) => ReadDecision::Damaged(error),
        None if missing > 0 => ReadDecision::NotFound,
        None => ReadDecision::Unavailable { reasons: described },
    }
}

fn reasons<T>(outcomes: &[(Side, &SideOutcome<T>)]) -> String {
    outcomes
        .iter()
        .filter_map(|(side, outcome)| outcome.describe(*side))
        .collect::<Vec<_>>()
        .join("; ")
}

fn reasons_of<T>(outcomes: &[(Side, SideOutcome<T>)]) -> String {
    outcomes
        .iter()
        .filter_map(|(side, outcome)| outcome.describe(*side))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault() -> StoreError {
        StoreError::Unavailable {
            store: "s".into(),
            message: "down".into(),
        }
    }

    fn corrupt() -> StoreError {
        StoreError::Corrupt {
            store: "s".into(),
            key: "k".into(),
            message: "bad".into(),
        }
    }

    #[test]
    fn a_write_is_acknowledged_when_one_side_holds_it_and_copied_to_the_other() {
        use SideOutcome::*;
        assert_eq!(
            decide_write(&Done(()), &Done(())),
            WriteDecision::Acknowledge { copy_to: vec![] }
        );
        assert_eq!(
            decide_write(&Fault(fault()), &Done(())),
            WriteDecision::Acknowledge {
                copy_to: vec![Side::Primary]
            }
        );
        assert_eq!(
            decide_write(&Done(()), &Skipped),
            WriteDecision::Acknowledge {
                copy_to: vec![Side::Fallback]
            }
        );
        assert!(matches!(
            decide_write(&Fault(fault()), &Skipped),
            WriteDecision::Unavailable { reasons } if reasons.contains("primary: ") && reasons.contains("fallback: circuit open")
        ));
        let bad_key = StoreError::InvalidKey {
            key: "/x".into(),
            reason: "no",
        };
        assert!(matches!(
            decide_write(&Rejected(bad_key), &Done(())),
            WriteDecision::Reject(StoreError::InvalidKey { .. })
        ));
    }

    #[test]
    fn a_read_serves_any_good_copy_and_repairs_the_sides_that_lacked_it() {
        use SideOutcome::*;
        match decide_read(vec![(Side::Primary, Missing), (Side::Fallback, Done(7))]) {
            ReadDecision::Serve { value, repair } => {
                assert_eq!(value, 7);
                assert_eq!(repair, vec![Side::Primary]);
            }
            other => panic!("{other:?}"),
        }
        match decide_read(vec![
            (Side::Fallback, Damaged(corrupt())),
            (Side::Primary, Done(1)),
        ]) {
            ReadDecision::Serve { repair, .. } => assert_eq!(repair, vec![Side::Fallback]),
            other => panic!("{other:?}"),
        }
        match decide_read(vec![(Side::Primary, Fault(fault())), (Side::Fallback, Done(1))]) {
            ReadDecision::Serve { repair, .. } => assert!(repair.is_empty(), "an outage is not repaired"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_read_nobody_can_serve_says_why() {
        use SideOutcome::*;
        assert!(matches!(
            decide_read::<()>(vec![(Side::Primary, Missing), (Side::Fallback, Missing)]),
            ReadDecision::NotFound
        ));
        // Missing on one side, unknown on the other: it may exist.
        assert!(matches!(
            decide_read::<()>(vec![(Side::Primary, Missing), (Side::Fallback, Skipped)]),
            ReadDecision::Unavailable { .. }
        ));
        assert!(matches!(
            decide_read::<()>(vec![
                (Side::Primary, Damaged(corrupt())),
                (Side::Fallback, Missing)
            ]),
            ReadDecision::Damaged(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decide_read::<()>(vec![
                (Side::Primary, Damaged(corrupt())),
                (Side::Fallback, Fault(fault()))
            ]),
            ReadDecision::Unavailable { .. }
        ));
    }
}
