//! The actual state of one cluster: its stack, as the controller observed it.

use std::collections::BTreeMap;

/// What a stack's CloudFormation status means for reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackPhase {
    /// CREATE_IN_PROGRESS.
    Creating,
    /// An update, rollback, import or review is running; wait for it.
    Busy,
    /// DELETE_IN_PROGRESS.
    Deleting,
    /// CREATE_COMPLETE, UPDATE_COMPLETE, IMPORT_COMPLETE: running as asked.
    Stable,
    /// UPDATE_ROLLBACK_COMPLETE: running on its previous parameters after a failed update.
    UpdateRolledBack,
    /// CREATE_FAILED, ROLLBACK_COMPLETE, ROLLBACK_FAILED: the create failed.
    CreateFailed,
    /// UPDATE_FAILED, UPDATE_ROLLBACK_FAILED, IMPORT_ROLLBACK_FAILED: needs an operator.
    Stuck,
    /// DELETE_FAILED: retry the delete.
    DeleteFailed,
    /// DELETE_COMPLETE: gone.
    Deleted,
}

impl StackPhase {
    /// The phase of a CloudFormation stack status string. Unknown statuses are `Busy`
    /// (wait and look again): a new status must never lead to a delete or a create.
    pub fn of(status: &str) -> StackPhase {
        match status {
            "CREATE_IN_PROGRESS" => StackPhase::Creating,
            "DELETE_IN_PROGRESS" => StackPhase::Deleting,
            "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "IMPORT_COMPLETE" => StackPhase::Stable,
            "UPDATE_ROLLBACK_COMPLETE" | "IMPORT_ROLLBACK_COMPLETE" => StackPhase::UpdateRolledBack,
            "CREATE_FAILED" | "ROLLBACK_COMPLETE" | "ROLLBACK_FAILED" => StackPhase::CreateFailed,
            "UPDATE_FAILED" | "UPDATE_ROLLBACK_FAILED" | "IMPORT_ROLLBACK_FAILED" => {
                StackPhase::Stuck
            }
            "DELETE_FAILED" => StackPhase::DeleteFailed,
            "DELETE_COMPLETE" => StackPhase::Deleted,
            _ => StackPhase::Busy,
        }
    }

    /// Whether the stack is changing and should be looked at again soon.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            StackPhase::Creating | StackPhase::Busy | StackPhase::Deleting
        )
    }
}

/// A stack of ours, as observed. Built by the controller's CloudFormation adapter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StackView {
    /// Stack name.
    pub name: String,
    /// Stack id (ARN).
    pub id: String,
    /// CloudFormation status, e.g. `CREATE_COMPLETE`.
    pub status: String,
    /// CloudFormation's status reason, if any.
    pub status_reason: Option<String>,
    /// When the stack last changed (creation or last update), seconds since the epoch.
    pub last_change: i64,
    /// When the stack was created, seconds since the epoch.
    pub created: i64,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Parameters as the stack holds them.
    pub parameters: BTreeMap<String, String>,
    /// Outputs.
    pub outputs: BTreeMap<String, String>,
    /// The first failure reason from the stack's events, for failed stacks.
    pub failure_reason: Option<String>,
    /// The login address: the login output, or the login instance's public address.
    pub login_ip: Option<String>,
}

impl StackView {
    /// The phase of this stack's status.
    pub fn phase(&self) -> StackPhase {
        StackPhase::of(&self.status)
    }

    /// The most specific reason known for a failure, for the user to read.
    pub fn failure(&self) -> String {
        self.failure_reason
            .clone()
            .or_else(|| self.status_reason.clone())
            .unwrap_or_else(|| format!("the stack ended in {}", self.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cloudformation_status_has_a_phase() {
        for (status, phase) in [
            ("CREATE_IN_PROGRESS", StackPhase::Creating),
            ("CREATE_FAILED", StackPhase::CreateFailed),
            ("CREATE_COMPLETE", StackPhase::Stable),
            ("ROLLBACK_IN_PROGRESS", StackPhase::Busy),
            ("ROLLBACK_FAILED", StackPhase::CreateFailed),
            ("ROLLBACK_COMPLETE", StackPhase::CreateFailed),
            ("DELETE_IN_PROGRESS", StackPhase::Deleting),
            ("DELETE_FAILED", StackPhase::DeleteFailed),
            ("DELETE_COMPLETE", StackPhase::Deleted),
            ("UPDATE_IN_PROGRESS", StackPhase::Busy),
            ("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", StackPhase::Busy),
            ("UPDATE_COMPLETE", StackPhase::Stable),
            ("UPDATE_FAILED", StackPhase::Stuck),
            ("UPDATE_ROLLBACK_IN_PROGRESS", StackPhase::Busy),
            ("UPDATE_ROLLBACK_FAILED", StackPhase::Stuck),
            (
                "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
                StackPhase::Busy,
            ),
            ("UPDATE_ROLLBACK_COMPLETE", StackPhase::UpdateRolledBack),
            ("REVIEW_IN_PROGRESS", StackPhase::Busy),
            ("IMPORT_IN_PROGRESS", StackPhase::Busy),
            ("IMPORT_COMPLETE", StackPhase::Stable),
            ("SOMETHING_NEW", StackPhase::Busy),
        ] {
            assert_eq!(StackPhase::of(status), phase, "{status}");
        }
    }

    #[test]
    fn failure_prefers_the_event_reason() {
        let mut s = StackView {
            status: "ROLLBACK_COMPLETE".into(),
            status_reason: Some("The following resource(s) failed to create: [Master]".into()),
            ..StackView::default()
        };
        assert!(s.failure().contains("[Master]"));
        s.failure_reason = Some("Master: insufficient capacity".into());
        assert_eq!(s.failure(), "Master: insufficient capacity");
    }
}
