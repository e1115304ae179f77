//! A cluster's instances, and what must happen to them before its stack is deleted.
//!
//! The cluster's scheduler launches compute nodes itself (EC2 RunInstances from a launch
//! template), so they are not stack resources: DeleteStack would leave them running, and
//! the stack's security group would then fail to delete. Every instance of a cluster, the
//! master included, carries the tag [`TAG_STACK`] naming its stack. Before DeleteStack,
//! flightdeck terminates every such instance and waits until none is alive;
//! [`plan_teardown`] decides which of the three steps comes next.

/// The tag every instance of a cluster carries: its value is the stack's name.
pub const TAG_STACK: &str = "flightdeck:stack";

/// An instance's state, as EC2 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstanceState {
    /// `pending`: launching.
    Pending,
    /// `running`.
    Running,
    /// `shutting-down`: terminating; nothing more to ask.
    ShuttingDown,
    /// `stopping`.
    Stopping,
    /// `stopped`: not running, but its volumes and network interfaces still exist.
    Stopped,
    /// `terminated`: gone.
    Terminated,
    /// A state this code does not know.
    Other,
}

impl InstanceState {
    /// The state EC2 names `name` (`pending`, `running`, `shutting-down`, `stopping`,
    /// `stopped`, `terminated`); any other name is [`InstanceState::Other`].
    pub fn from_name(name: &str) -> InstanceState {
        match name {
            "pending" => InstanceState::Pending,
            "running" => InstanceState::Running,
            "shutting-down" => InstanceState::ShuttingDown,
            "stopping" => InstanceState::Stopping,
            "stopped" => InstanceState::Stopped,
            "terminated" => InstanceState::Terminated,
            _ => InstanceState::Other,
        }
    }
}

/// One instance of a cluster: the master or a compute node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instance {
    /// The instance id, e.g. `i-0123456789abcdef0`.
    pub id: String,
    /// Its state when it was listed.
    pub state: InstanceState,
}

/// What comes next for a cluster's instances before its stack may be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Teardown {
    /// Terminate these instances (sorted, each once), then look again soon; the stack is
    /// not deleted yet.
    Terminate {
        /// The ids to terminate.
        ids: Vec<String>,
    },
    /// Every instance left is already shutting down: nothing to ask, look again soon; the
    /// stack is not deleted yet.
    Wait {
        /// How many are still shutting down.
        shutting_down: usize,
    },
    /// No instance is alive: DeleteStack may go ahead.
    DeleteStack,
}

/// The next step, given the instances found with the stack's tag.
///
/// Pending, running, stopping and stopped instances are terminated (a stopped instance
/// still holds the security group). An instance in a state this code does not know may be
/// alive, so it is terminated too: asking EC2 to terminate is harmless when it is not
/// needed, while a live instance left behind is what this step exists to prevent.
/// Terminated instances are ignored; shutting-down ones are waited for.
pub fn plan_teardown(instances: &[Instance]) -> Teardown {
    let mut ids: Vec<String> = instances
        .iter()
        .filter(|i| {
            !matches!(
                i.state,
                InstanceState::ShuttingDown | InstanceState::Terminated
            )
        })
        .map(|i| i.id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    if !ids.is_empty() {
        return Teardown::Terminate { ids };
    }
    let mut shutting_down: Vec<&str> = instances
        .iter()
        .filter(|i| i.state == InstanceState::ShuttingDown)
        .map(|i| i.id.as_str())
        .collect();
    shutting_down.sort_unstable();
    shutting_down.dedup();
    if shutting_down.is_empty() {
        Teardown::DeleteStack
    } else {
        Teardown::Wait {
            shutting_down: shutting_down.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::InstanceState::{
        Other, Pending, Running, ShuttingDown, Stopped, Stopping, Terminated,
    };
    use super::*;

    fn found(instances: &[(&str, InstanceState)]) -> Vec<Instance> {
        instances
            .iter()
            .map(|(id, state)| Instance {
                id: (*id).to_owned(),
                state: *state,
            })
            .collect()
    }

    /// One row: the case, the instances found, the step expected.
    type Row = (
        &'static str,
        &'static [(&'static str, InstanceState)],
        Teardown,
    );

    fn terminate(ids: &[&str]) -> Teardown {
        Teardown::Terminate {
            ids: ids.iter().map(|i| (*i).to_owned()).collect(),
        }
    }

    #[test]
    fn every_instance_that_may_be_alive_is_terminated_before_the_stack_is_deleted() {
        let rows: &[Row] = &[
            ("no instance", &[], Teardown::DeleteStack),
            (
                "only terminated",
                &[("i-1", Terminated), ("i-2", Terminated)],
                Teardown::DeleteStack,
            ),
            (
                "master and two compute nodes running",
                &[("i-m", Running), ("i-2", Running), ("i-1", Pending)],
                terminate(&["i-1", "i-2", "i-m"]),
            ),
            (
                "stopping and stopped still hold the security group",
                &[("i-1", Stopping), ("i-2", Stopped)],
                terminate(&["i-1", "i-2"]),
            ),
            (
                "an unknown state may be alive",
                &[("i-1", Other)],
                terminate(&["i-1"]),
            ),
            (
                "shutting-down ones need nothing more",
                &[("i-1", ShuttingDown), ("i-2", Running), ("i-3", Terminated)],
                terminate(&["i-2"]),
            ),
            (
                "only shutting down left",
                &[
                    ("i-1", ShuttingDown),
                    ("i-2", ShuttingDown),
                    ("i-3", Terminated),
                ],
                Teardown::Wait { shutting_down: 2 },
            ),
            (
                "an instance listed twice counts once",
                &[("i-1", Running), ("i-1", Running)],
                terminate(&["i-1"]),
            ),
            (
                "a shutting-down instance listed twice counts once",
                &[("i-1", ShuttingDown), ("i-1", ShuttingDown)],
                Teardown::Wait { shutting_down: 1 },
            ),
        ];
        for (case, instances, expected) in rows {
            assert_eq!(&plan_teardown(&found(instances)), expected, "{case}");
        }
    }

    #[test]
    fn state_names_are_read_as_ec2_spells_them() {
        let rows = [
            ("pending", Pending),
            ("running", Running),
            ("shutting-down", ShuttingDown),
            ("stopping", Stopping),
            ("stopped", Stopped),
            ("terminated", Terminated),
            ("Running", Other),
            ("", Other),
            ("hibernating", Other),
        ];
        for (name, state) in rows {
            assert_eq!(InstanceState::from_name(name), state, "{name:?}");
        }
    }
}
