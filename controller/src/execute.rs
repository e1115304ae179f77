//! The executor: carries out one cluster's planned actions, in order.
//!
//! It decides nothing the planner decides. What it adds is what only a call can tell:
//! CloudFormation refusing a request (reported to the user like any refusal), a stack name
//! already taken by a stack that is not ours (reported, never touched), a last check of a
//! stack's tags before it is deleted, and the cluster's instances that are not stack
//! resources (compute nodes its scheduler launched), terminated before DeleteStack.

use flightdeck_core::key::{ClusterKey, Suffix};
use flightdeck_core::nodes::{Teardown, plan_teardown};
use flightdeck_core::plan::{Action, StackSpec};
use flightdeck_core::watch::Waiting;
use tracing::{error, info, warn};

use crate::ports::{
    CallError, ErrorKind, Instances, Mailer, ObjectStore, StackService, UpdateOutcome,
};
use crate::reconcile::{KeyOutcome, Reconciler};

/// Whether the rest of a plan still holds after an action.
enum Flow {
    /// Carry on.
    Go,
    /// A call showed the plan was made on a wrong premise: stop and look again soon.
    Replan,
    /// The action must wait for something in progress (the cluster's instances shutting
    /// down): it was not done; the rest of the plan still holds; look again soon.
    Later,
}

impl<S, C, E, M> Reconciler<S, C, E, M>
where
    S: ObjectStore,
    C: StackService,
    E: Instances,
    M: Mailer,
{
    /// Runs `actions` for `key` in order; the first error stops the rest (they are planned
    /// again on the next look) and is returned in the outcome for a backoff requeue.
    ///
    /// `changing` is the cluster's stack and its status when it is in progress. A look
    /// again soon that waits only on the stack (the one it was in, or the one a create,
    /// update or delete started) says so in the outcome's `waits_on`: the watch polls it. One that waits on something else (instances shutting down, a refusal) is
    /// timed.
    pub(crate) async fn execute(
        &self,
        key: &ClusterKey,
        actions: Vec<Action>,
        changing: Option<Waiting>,
    ) -> KeyOutcome {
        let mut outcome = KeyOutcome {
            soon: actions.contains(&Action::LookAgainSoon),
            ..KeyOutcome::default()
        };
        let mut waits_on = changing;
        let mut timed = false;
        for action in &actions {
            let result = match action {
                Action::CreateStack(spec) => self.create(key, spec).await,
                Action::UpdateStack(spec) => self.update(key, spec).await,
                Action::DeleteStack {
                    key: owner,
                    name,
                    id,
                    token,
                    orphan,
                } => self.delete(owner, name, id, token, *orphan).await,
                Action::Notify(notice) => {
                    self.deliver(notice).await;
                    continue;
                }
                Action::Put { .. } | Action::Remove { .. } => {
                    self.execute_write(action).await.map(|()| Flow::Go)
                }
                Action::LookAgainSoon => continue,
            };
            let kind = action_label(action);
            if let Action::CreateStack(StackSpec { name, .. })
            | Action::UpdateStack(StackSpec { name, .. })
            | Action::DeleteStack { name, .. } = action
            {
                let audited = match &result {
                    Ok(Flow::Go) => Some(("ok", name.clone())),
                    Ok(Flow::Replan) => Some(("refused", name.clone())),
                    // Not done yet: what was done instead (terminate_nodes) is audited.
                    Ok(Flow::Later) => None,
                    Err(e) => Some(("error", e.to_string())),
                };
                if let Some((outcome, message)) = audited {
                    self.audit(key, kind, outcome, &message);
                    self.flush_ledger().await;
                }
            }
            match result {
                Ok(Flow::Go) => {
                    if !matches!(action, Action::Put { .. } | Action::Remove { .. }) {
                        self.metrics.action(kind, "ok");
                    }
                    let started = match action {
                        Action::CreateStack(spec) => Some((&spec.name, "CREATE_IN_PROGRESS")),
                        Action::UpdateStack(spec) => Some((&spec.name, "UPDATE_IN_PROGRESS")),
                        Action::DeleteStack { name, .. } => Some((name, "DELETE_IN_PROGRESS")),
                        _ => None,
                    };
                    if let Some((stack, status)) = started {
                        waits_on = Some(Waiting {
                            stack: stack.clone(),
                            status: status.to_owned(),
                        });
                    }
                }
                Ok(Flow::Later) => {
                    outcome.soon = true;
                    timed = true;
                }
                Ok(Flow::Replan) => {
                    timed = true;
                    // The request was refused by a call: the rest of this plan assumed it was
                    // not. The next look plans again and reports the refusal.
                    self.metrics.action(kind, "refused");
                    outcome.soon = true;
                    break;
                }
                Err(e) => {
                    self.metrics.action(kind, "error");
                    warn!(user = %key.user, cluster = %key.cluster, error = %e, "reconcile stopped; will retry");
                    outcome.error = Some(e);
                    break;
                }
            }
        }
        if outcome.soon && !timed && outcome.error.is_none() {
            outcome.waits_on = waits_on;
        }
        outcome.actions = actions;
        outcome
    }

    /// Carries out a `Put` or a `Remove`, and counts it.
    pub(crate) async fn execute_write(&self, action: &Action) -> Result<(), CallError> {
        let result = match action {
            Action::Put { key, body } => self.cloud.store.put(key, body).await.map(|etag| {
                self.wrote(key, body, etag);
                info!(object = %key, "wrote");
                if key.ends_with(".cf-delete") {
                    self.audit_object(key, "request_delete", "the cluster's lifetime ended");
                }
            }),
            Action::Remove { key, if_etag } => {
                let removed = match if_etag {
                    Some(etag) => self.cloud.store.delete_if(key, etag).await,
                    None => self.cloud.store.delete(key).await.map(|()| true),
                };
                removed.map(|removed| {
                    if !removed {
                        info!(object = %key, "not removed: written again since it was read");
                        return;
                    }
                    info!(object = %key, "removed");
                    if key.ends_with(".cf-create") || key.ends_with(".cf-delete") {
                        self.audit_object(key, "remove_request", key);
                    }
                })
            }
            _ => return Ok(()),
        };
        self.metrics.action(
            action_label(action),
            if result.is_ok() { "ok" } else { "error" },
        );
        result
    }

    async fn create(&self, key: &ClusterKey, spec: &StackSpec) -> Result<Flow, CallError> {
        self.ahead(key, "create_stack", &spec.name).await?;
        match self
            .cloud
            .stacks
            .create(spec, &self.settings.template)
            .await
        {
            Ok(id) => {
                info!(user = %key.user, cluster = %key.cluster, stack = %spec.name, stack_id = %id, "stack create started");
                self.lock_usage()
                    .set(key, &spec.parameters, &self.settings.policy.prices);
                Ok(Flow::Go)
            }
            Err(e) if e.kind == ErrorKind::AlreadyExists => {
                // A repeated create (the emulator ignores ClientRequestToken), or a name
                // taken by a stack that is not ours. Only tags tell which.
                let existing = self.cloud.stacks.describe(&spec.name).await?;
                match existing.and_then(|s| self.settings.identity.owned_key(&s.tags)) {
                    Some(owner) if &owner == key => {
                        info!(stack = %spec.name, "stack exists already; looking again");
                        Ok(Flow::Go)
                    }
                    _ => {
                        error!(stack = %spec.name, user = %key.user, "stack name taken by a stack flightdeck does not manage; not touching it");
                        Ok(self.refuse(
                            key,
                            "name_taken",
                            format!(
                                "a stack named {} already exists and is not managed by flightdeck for you; ask your HPC administrators, or choose another cluster name",
                                spec.name
                            ),
                        ))
                    }
                }
            }
            Err(e) if self.users_to_fix(&e) => Ok(self.refuse(
                key,
                "cloudformation",
                format!("CloudFormation refused the request: {}", e.message),
            )),
            Err(e) => Err(self.install_fault(key, e)),
        }
    }

    async fn update(&self, key: &ClusterKey, spec: &StackSpec) -> Result<Flow, CallError> {
        self.ahead(key, "update_stack", &spec.name).await?;
        match self
            .cloud
            .stacks
            .update(spec, &self.settings.template)
            .await
        {
            Ok(UpdateOutcome::Started) => {
                self.lock_usage()
                    .set(key, &spec.parameters, &self.settings.policy.prices);
                info!(user = %key.user, cluster = %key.cluster, stack = %spec.name, "stack update started");
                Ok(Flow::Go)
            }
            Ok(UpdateOutcome::NoChanges) => {
                info!(stack = %spec.name, "stack already as requested");
                Ok(Flow::Go)
            }
            Err(e) if self.users_to_fix(&e) => Ok(self.refuse(
                key,
                "cloudformation",
                format!("CloudFormation refused the change: {}", e.message),
            )),
            Err(e) => Err(self.install_fault(key, e)),
        }
    }

    /// Deletes by id after checking, once more, that the stack carries our owner tag and
    /// this user's tags. A stack that is not ours is never deleted, and its instances are
    /// never touched. Before DeleteStack, every instance tagged with the stack's name is
    /// terminated; while any is alive, the stack is left for a later look ([`Flow::Later`]).
    async fn delete(
        &self,
        key: &ClusterKey,
        name: &str,
        id: &str,
        token: &str,
        orphan: bool,
    ) -> Result<Flow, CallError> {
        if orphan {
            // The orphan was judged from a listing that may be minutes old: a request
            // written since keeps the cluster.
            let prefix = key.object_prefix(&self.settings.home_prefix);
            let create = key.object_key(&self.settings.home_prefix, Suffix::Create);
            if self
                .cloud
                .store
                .list(&prefix)
                .await?
                .iter()
                .any(|o| o.key == create)
            {
                info!(user = %key.user, cluster = %key.cluster, stack = %name, "not deleting the orphan: its request came back");
                return Ok(Flow::Replan);
            }
        }
        let current = self.cloud.stacks.describe(id).await?;
        let Some(stack) = current else {
            info!(stack = %name, "stack already gone");
            return Ok(Flow::Go);
        };
        if self.settings.identity.owned_key(&stack.tags).as_ref() != Some(key) {
            error!(stack = %name, user = %key.user, cluster = %key.cluster, "refusing to delete: the stack's tags do not name this user and this controller");
            return Ok(Flow::Go);
        }
        if !self.instances_gone(key, &stack.name).await? {
            return Ok(Flow::Later);
        }
        self.ahead(key, "delete_stack", name).await?;
        self.record_deletion(key, id).await?;
        self.cloud.stacks.delete(id, token).await?;
        self.lock_usage().remove(key);
        info!(user = %key.user, cluster = %key.cluster, stack = %name, "stack delete started");
        Ok(Flow::Go)
    }

    /// Whether no instance of stack `name` is alive; if some are, terminates those not
    /// already shutting down. Compute nodes the cluster's scheduler launched are not stack
    /// resources: DeleteStack would leave them running (and fail on the security group).
    async fn instances_gone(&self, key: &ClusterKey, name: &str) -> Result<bool, CallError> {
        let found = self.cloud.instances.stack_instances(name).await?;
        match plan_teardown(&found) {
            Teardown::DeleteStack => Ok(true),
            Teardown::Wait { shutting_down } => {
                info!(user = %key.user, cluster = %key.cluster, stack = %name, count = shutting_down, "waiting for the cluster's instances to terminate before deleting the stack");
                Ok(false)
            }
            Teardown::Terminate { ids } => {
                let message = format!("{name}: {}", ids.join(" "));
                self.ahead(key, TERMINATE_NODES, &message).await?;
                let result = self.cloud.instances.terminate(&ids).await;
                match &result {
                    Ok(()) => {
                        info!(user = %key.user, cluster = %key.cluster, stack = %name, count = ids.len(), "terminating the cluster's instances before deleting the stack");
                        self.metrics.action(TERMINATE_NODES, "ok");
                        self.audit(key, TERMINATE_NODES, "ok", &message);
                    }
                    Err(e) => {
                        warn!(user = %key.user, cluster = %key.cluster, stack = %name, count = ids.len(), error = %e, "could not terminate the cluster's instances; the stack is not deleted");
                        self.metrics.action(TERMINATE_NODES, "error");
                        self.audit(key, TERMINATE_NODES, "error", &format!("{message}: {e}"));
                    }
                }
                self.flush_ledger().await;
                result.map(|()| false)
            }
        }
    }

    /// Whether CloudFormation refused a create or update for a reason the user can fix: it
    /// refused the input and its words name a setting users choose. Anything else (a
    /// template error, a missing capability, a parameter only the administrators set) is
    /// the install's: retried with backoff and counted, never a sticky `.cf-failed`.
    fn users_to_fix(&self, e: &CallError) -> bool {
        e.kind == ErrorKind::Invalid && self.rules.named_in(&e.message)
    }

    /// Logs a refused create or update the user cannot fix, for the administrators.
    fn install_fault(&self, key: &ClusterKey, e: CallError) -> CallError {
        if e.kind == ErrorKind::Invalid || e.kind == ErrorKind::Denied {
            error!(user = %key.user, cluster = %key.cluster, error = %e, "CloudFormation refused a call for a reason the user cannot fix (template, stack role, capabilities or a fixed parameter); retrying with backoff");
        }
        e
    }

    /// Writes the ledger line of an action on `what` ahead of making it: an action the
    /// ledger cannot record is not made (it waits, as after a failed call).
    pub(crate) async fn ahead(
        &self,
        key: &ClusterKey,
        action: &str,
        what: &str,
    ) -> Result<(), CallError> {
        self.audit(key, action, "started", what);
        if self.flush_ledger().await {
            return Ok(());
        }
        Err(CallError {
            service: "s3",
            operation: "PutObject",
            kind: ErrorKind::Transient,
            code: None,
            message: format!("the audit ledger could not be written, so {action} of {what} waits"),
        })
    }

    /// Audits an action on a user's request file.
    fn audit_object(&self, object: &str, action: &str, message: &str) {
        if let flightdeck_core::key::KeyKind::Cluster { key, .. } =
            flightdeck_core::key::classify(&self.settings.home_prefix, object)
        {
            self.audit(&key, action, "ok", message);
        }
    }

    /// A refusal only a call could reveal: remembered against the request, so that the next
    /// look reports it like any other refusal and it is not sent again until the file changes.
    fn refuse(&self, key: &ClusterKey, rule: &'static str, reason: String) -> Flow {
        self.metrics.refused(key, rule, &reason);
        self.audit(key, "refuse", rule, &reason);
        self.refuse_request(key, reason);
        Flow::Replan
    }
}

/// The metric and ledger label of terminating a cluster's instances before its delete.
pub(crate) const TERMINATE_NODES: &str = "terminate_nodes";

/// The metric label of an action.
fn action_label(action: &Action) -> &'static str {
    match action {
        Action::CreateStack(_) => "create_stack",
        Action::UpdateStack(_) => "update_stack",
        Action::DeleteStack { .. } => "delete_stack",
        Action::Put { .. } => "put",
        Action::Remove { .. } => "remove",
        Action::Notify(_) => "notify",
        Action::LookAgainSoon => "look_again",
    }
}
