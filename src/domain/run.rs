//! Workflow runs: the run that produced a version, and what runs read.

use super::names::quoted;
use super::{Error, Result};

/// Longest run id, workflow, step or agent.
pub const MAX_RUN_FIELD_LEN: usize = 128;

/// A workflow run, as a version records the one that produced it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkflowRun {
    pub run_id: String,
    pub workflow: String,
    pub step: String,
    pub agent: String,
}

/// How a run's input came to be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSource {
    /// Named by RecordRunInputs.
    Explicit,
    /// A download that carried the run header.
    Download,
}

impl InputSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Explicit => "explicit",
            Self::Download => "download",
        }
    }
}

/// Run ids: 1 to 128 ASCII letters, digits, '-', '_', '.' and ':'.
pub fn validate_run_id(field: &'static str, run_id: &str) -> Result<()> {
    let valid = !run_id.is_empty()
        && run_id.len() <= MAX_RUN_FIELD_LEN
        && run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{} is not a run id: use 1 to {MAX_RUN_FIELD_LEN} ASCII letters, digits, '-', '_', '.' and ':'",
                quoted(run_id)
            ),
        ))
    }
}

impl WorkflowRun {
    /// A run a version declares: a valid id, and the other fields printable and short.
    pub fn validate(&self) -> Result<()> {
        validate_run_id("produced_by.run_id", &self.run_id)?;
        for (field, value) in [
            ("produced_by.workflow", &self.workflow),
            ("produced_by.step", &self.step),
            ("produced_by.agent", &self.agent),
        ] {
            if value.len() > MAX_RUN_FIELD_LEN || value.chars().any(char::is_control) {
                return Err(Error::invalid(
                    field,
                    format!(
                        "{} must be printable and at most {MAX_RUN_FIELD_LEN} bytes",
                        quoted(value)
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_and_fields_are_checked() {
        validate_run_id("run_id", "bmad:sprint-12.run_7").unwrap();
        for bad in ["", "has space", "ü", &"x".repeat(129)] {
            assert!(
                validate_run_id("run_id", bad)
                    .unwrap_err()
                    .to_string()
                    .starts_with("run_id:")
            );
        }
        let mut run = WorkflowRun {
            run_id: "r1".into(),
            workflow: "create-prd".into(),
            ..Default::default()
        };
        run.validate().unwrap();
        run.agent = "pm\n".into();
        assert!(
            run.validate()
                .unwrap_err()
                .to_string()
                .starts_with("produced_by.agent:")
        );
    }
}
