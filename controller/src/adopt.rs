//! `flightdeck adopt`: takes over the older design's stacks (af-user), so that their users
//! can change and delete them through the bucket like any cluster flightdeck made.
//!
//! Which stacks, and what an adopted stack's tags are, is decided in
//! [`flightdeck_core::adopt`]. This module lists the stacks, looks at each cluster's files,
//! and (with `apply`) carries the adoption out, one stack at a time:
//!
//! 1. the user's request is written back, if it is missing, rebuilt from the stack's
//!    parameters, as a new object only (`If-None-Match: *`): a request the user wrote is
//!    never overwritten;
//! 2. the audit ledger gets its line ahead of the stack action, as for every stack action;
//! 3. UpdateStack on the stack's own template, every parameter its previous value, and
//!    the tags: only the tags change;
//! 4. the stack is described again, and counts as adopted only when its tags say so.
//!
//! The request comes first: once tagged, the stack is flightdeck's, and a stack of
//! flightdeck's without a request is an orphan, which a pass deletes after
//! `reconcile.orphan_grace`. Written first, a failure in between leaves a request beside a
//! stack flightdeck does not manage yet: the controller answers that with a `.cf-failed`
//! (never a second cluster), and running `adopt --apply` again finishes the work.

use std::collections::BTreeMap;
use std::fmt;

use flightdeck_core::adopt::{Adoption, Skip, is_candidate, judge, lifetime_from_adoption};
use flightdeck_core::key::{ClusterKey, Suffix};
use flightdeck_core::policy::format_duration;
use tracing::{info, warn};

use crate::ports::{CallError, ErrorKind, Instances, Mailer, ObjectStore, StackService};
use crate::reconcile::{Reconciler, unix_now};

/// One stack of the older design, and what was (or would be) done with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The stack's name.
    pub stack: String,
    /// The decision: adopt, or skip and why.
    pub decision: Result<Adoption, Skip>,
    /// The cluster's `.cf-create` existed when looked at.
    pub request_exists: bool,
    /// A `.cf-delete` waits for the cluster: the first pass after adoption deletes it.
    pub delete_waiting: bool,
    /// Relative to `now`: how long the adopted cluster may live, when the policy says.
    pub lifetime: Option<std::time::Duration>,
    /// With `apply`: what became of it.
    pub outcome: Option<Outcome>,
}

/// What `--apply` did with a stack to adopt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Adopted: the request is there and the stack carries flightdeck's tags.
    Adopted {
        /// The request was written by this run (not the user's own).
        wrote_request: bool,
    },
    /// Not adopted, or not entirely: what failed. Running again finishes the work.
    Failed(String),
}

impl Line {
    /// Whether this stack was to be adopted and was not.
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Some(Outcome::Failed(_)))
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = match &self.decision {
            Err(skip) => return write!(f, "skip {}: {skip}", self.stack),
            Ok(a) => a,
        };
        let create = format!("{}.cf-create", a.key.cluster);
        let verb = match &self.outcome {
            None => "adopt",
            Some(Outcome::Adopted { .. }) => "adopted",
            Some(Outcome::Failed(why)) => {
                return write!(f, "failed {} ({}): {why}", self.stack, a.key);
            }
        };
        let request = match (&self.outcome, self.request_exists) {
            (
                Some(Outcome::Adopted {
                    wrote_request: true,
                }),
                _,
            ) => {
                format!("wrote {create} from its parameters")
            }
            (None, false) => format!("writes {create} from its parameters"),
            _ => format!("keeps the user's {create}"),
        };
        write!(f, "{verb} {} as {}: {request}", self.stack, a.key)?;
        match self.lifetime {
            Some(l) => write!(f, "; lifetime {} from now", format_duration(l))?,
            None => write!(f, "; no lifetime")?,
        }
        if self.delete_waiting {
            write!(
                f,
                "; its user's {}.cf-delete waits: the next pass deletes the cluster",
                a.key.cluster
            )?;
        }
        Ok(())
    }
}

/// Looks at every live stack with a `project` tag and decides, for each, whether to adopt
/// it; with `apply`, adopts those it may. A stack that fails is reported in its line and
/// the others go on.
///
/// # Errors
/// The listing of the stacks, or of a cluster's files, that failed: nothing was changed
/// for the stacks not yet reached.
pub async fn adopt<S, C, E, M>(
    rec: &Reconciler<S, C, E, M>,
    apply: bool,
) -> Result<Vec<Line>, CallError>
where
    S: ObjectStore,
    C: StackService,
    E: Instances,
    M: Mailer,
{
    let settings = rec.settings();
    let stacks = rec.cloud().stacks.list().await?;
    let mut managed: BTreeMap<ClusterKey, String> = stacks
        .iter()
        .filter_map(|s| Some((settings.identity.owned_key(&s.tags)?, s.name.clone())))
        .collect();
    let mut candidates: Vec<_> = stacks.iter().filter(|s| is_candidate(s)).collect();
    candidates.sort_by(|a, b| a.name.cmp(&b.name));
    let now = unix_now();
    let mut lines = Vec::new();
    for stack in candidates {
        let decision = judge(
            stack,
            &settings.identity,
            &rec.rules,
            &settings.policy,
            &managed,
            now,
        );
        let mut line = Line {
            stack: stack.name.clone(),
            lifetime: decision
                .as_ref()
                .ok()
                .and_then(|a| lifetime_from_adoption(a, now)),
            decision,
            request_exists: false,
            delete_waiting: false,
            outcome: None,
        };
        if let Ok(a) = &line.decision {
            let files = rec
                .cloud()
                .store
                .list(&a.key.object_prefix(&settings.home_prefix))
                .await?;
            let has = |suffix| {
                let object = a.key.object_key(&settings.home_prefix, suffix);
                files.iter().any(|o| o.key == object)
            };
            line.request_exists = has(Suffix::Create);
            line.delete_waiting = has(Suffix::Delete);
            if apply {
                let outcome = carry_out(rec, stack.id.as_str(), a).await;
                if matches!(outcome, Outcome::Adopted { .. }) {
                    managed.insert(a.key.clone(), stack.name.clone());
                }
                line.outcome = Some(outcome);
            }
        }
        lines.push(line);
    }
    Ok(lines)
}

/// Writes the request if missing, then tags the stack, then checks the tags took.
async fn carry_out<S, C, E, M>(rec: &Reconciler<S, C, E, M>, id: &str, a: &Adoption) -> Outcome
where
    S: ObjectStore,
    C: StackService,
    E: Instances,
    M: Mailer,
{
    let settings = rec.settings();
    let key = &a.key;
    let object = key.object_key(&settings.home_prefix, Suffix::Create);
    // First the request: see the module's documentation for why.
    let wrote_request = match rec.cloud().store.put_new(&object, &a.request_body).await {
        Ok(()) => {
            info!(user = %key.user, cluster = %key.cluster, object = %object, "wrote the adopted cluster's request");
            true
        }
        Err(e) if e.kind == ErrorKind::AlreadyExists => false,
        Err(e) => {
            return Outcome::Failed(format!(
                "could not write {object}, so the stack was not tagged: {e}"
            ));
        }
    };
    if let Err(e) = rec.ahead(key, "adopt_stack", &a.spec.name).await {
        return Outcome::Failed(e.to_string());
    }
    let result = async {
        rec.cloud()
            .stacks
            .update(&a.spec, &settings.template)
            .await?;
        rec.cloud().stacks.describe(id).await
    }
    .await;
    let outcome = match result {
        Ok(Some(s)) if settings.identity.owned_key(&s.tags).as_ref() == Some(key) => {
            info!(user = %key.user, cluster = %key.cluster, stack = %a.spec.name, "adopted the stack");
            Outcome::Adopted { wrote_request }
        }
        Ok(Some(_)) => Outcome::Failed(
            "CloudFormation answered, but the stack does not carry flightdeck's tags".into(),
        ),
        Ok(None) => Outcome::Failed("the stack is gone".into()),
        Err(e) => Outcome::Failed(format!("could not tag the stack: {e}")),
    };
    let (label, message) = match &outcome {
        Outcome::Adopted { .. } => ("ok", a.spec.name.clone()),
        Outcome::Failed(why) => {
            warn!(user = %key.user, cluster = %key.cluster, stack = %a.spec.name, error = %why, "adoption failed");
            ("error", why.clone())
        }
    };
    rec.audit(key, "adopt_stack", label, &message);
    rec.flush_ledger().await;
    outcome
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use flightdeck_core::identity::{TAG_ADOPTED, TAG_OWNER};
    use flightdeck_core::key::ClusterKey;
    use flightdeck_core::stack::StackView;

    use super::*;
    use crate::reconcile::tests::{Rec, phase, rec_with, settings};

    /// A stack as the older design's Lambda made it for `user`'s cluster `name`.
    fn seed_stack(name: &str, user: &str) -> StackView {
        StackView {
            name: name.into(),
            id: format!("arn:aws:cloudformation:eu-west-2:123456789012:stack/{name}/1"),
            status: "CREATE_COMPLETE".into(),
            tags: BTreeMap::from([("project".into(), user.into())]),
            parameters: [
                ("ComputeInstanceType", "other"),
                ("ComputeInstanceTypeOther", "r4.large-2C-15.25GB"),
                ("MasterInstanceType", "other"),
                ("MasterInstanceTypeOther", "r4.large-2C-15.25GB"),
                ("ComputeMaxNodes", "4"),
                ("AccessUsername", user),
                ("FlightProfiles", user),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            outputs: BTreeMap::from([("LoginIp".into(), "198.51.100.9".into())]),
            ..StackView::default()
        }
    }

    fn rec() -> Rec {
        rec_with(settings(Duration::from_secs(600), 5))
    }

    #[tokio::test]
    async fn a_dry_run_changes_nothing_and_says_what_it_would_do() {
        let rec = rec();
        rec.cloud().stacks.insert(seed_stack("x", "alice"));
        rec.cloud().stacks.insert(seed_stack("my_c", "alice"));
        rec.cloud().store.insert("home/alice/x.cf-delete", "");
        let lines = adopt(&rec, false).await.unwrap();
        let text: Vec<String> = lines.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with("skip my_c: `my_c` is not a valid cluster name"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("adopt x as alice/x: writes x.cf-create from its parameters"),
            "{text:?}"
        );
        assert!(text[1].contains("x.cf-delete waits"), "{text:?}");
        assert!(rec.cloud().stacks.mutations().is_empty());
        assert!(rec.cloud().store.writes().is_empty());
    }

    #[tokio::test]
    async fn apply_writes_the_request_then_tags_the_stack() {
        let rec = rec();
        rec.cloud().stacks.insert(seed_stack("x", "alice"));
        let lines = adopt(&rec, true).await.unwrap();
        assert_eq!(
            lines[0].outcome,
            Some(Outcome::Adopted {
                wrote_request: true
            })
        );
        let stack = rec.cloud().stacks.get("x").unwrap();
        assert_eq!(
            rec.settings().identity.owned_key(&stack.tags),
            ClusterKey::new("alice", "x").ok()
        );
        assert!(stack.tags.contains_key(TAG_ADOPTED));
        assert_eq!(
            stack.parameters,
            seed_stack("x", "alice").parameters,
            "only tags change"
        );
        let request = rec.cloud().store.text("home/alice/x.cf-create").unwrap();
        assert!(request.contains("\"ComputeMaxNodes\": \"4\""), "{request}");
        // The request, then the ledger's line ahead of the stack action, then its outcome.
        let writes = rec.cloud().store.writes();
        assert_eq!(writes[0], "PutObject home/alice/x.cf-create");
        assert_eq!(writes.len(), 3, "{writes:?}");
        assert!(writes[1..].iter().all(|w| w.contains("flightdeck/ledger/")));
        assert_eq!(rec.cloud().stacks.mutations(), ["UpdateStack x"]);

        // Adopted once: a second run leaves it alone.
        let again = adopt(&rec, true).await.unwrap();
        assert!(
            again[0]
                .to_string()
                .starts_with("skip x: already managed by this flightdeck"),
            "{}",
            again[0]
        );
        assert_eq!(rec.cloud().stacks.mutations(), ["UpdateStack x"]);
    }

    #[tokio::test]
    async fn the_users_own_request_is_never_overwritten() {
        let rec = rec();
        rec.cloud().stacks.insert(seed_stack("x", "alice"));
        rec.cloud()
            .store
            .insert("home/alice/x.cf-create", "{\"ComputeMaxNodes\": \"8\"}");
        let lines = adopt(&rec, true).await.unwrap();
        assert_eq!(
            lines[0].outcome,
            Some(Outcome::Adopted {
                wrote_request: false
            })
        );
        assert!(
            lines[0]
                .to_string()
                .contains("keeps the user's x.cf-create")
        );
        assert_eq!(
            rec.cloud().store.text("home/alice/x.cf-create").unwrap(),
            "{\"ComputeMaxNodes\": \"8\"}"
        );
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_written_leaves_the_stack_untagged() {
        let rec = rec();
        rec.cloud().stacks.insert(seed_stack("x", "alice"));
        rec.cloud().store.fail("PutObject", ErrorKind::Denied, 1);
        let lines = adopt(&rec, true).await.unwrap();
        assert!(lines[0].failed(), "{}", lines[0]);
        assert!(
            rec.cloud().stacks.mutations().is_empty(),
            "never tagged without a request"
        );
        assert!(
            !rec.cloud()
                .stacks
                .get("x")
                .unwrap()
                .tags
                .contains_key(TAG_OWNER)
        );
    }

    #[tokio::test]
    async fn a_delete_for_a_stack_not_yet_adopted_is_refused_and_the_stack_untouched() {
        let rec = rec();
        rec.cloud().stacks.insert(seed_stack("x", "alice"));
        rec.cloud()
            .store
            .insert("home/alice/x.cf-created", "198.51.100.9\n");
        rec.cloud().store.insert("home/alice/x.cf-delete", "");
        rec.resync(false, None).await.unwrap();
        rec.reconcile_key(&ClusterKey::new("alice", "x").unwrap())
            .await;
        let failed = rec.cloud().store.text("home/alice/x.cf-failed").unwrap();
        assert!(failed.contains("does not manage the stack `x`"), "{failed}");
        assert!(rec.cloud().store.text("home/alice/x.cf-deleted").is_none());
        assert!(
            rec.cloud().store.text("home/alice/x.cf-delete").is_some(),
            "kept"
        );
        assert!(
            rec.cloud().store.text("home/alice/x.cf-created").is_some(),
            "still true"
        );
        assert!(rec.cloud().stacks.mutations().is_empty(), "never touched");

        // Once adopted, the waiting .cf-delete is carried out.
        adopt(&rec, true).await.unwrap();
        rec.resync(false, None).await.unwrap();
        assert_eq!(
            rec.cloud().stacks.mutations().last().unwrap(),
            &format!("DeleteStack {}", seed_stack("x", "alice").id)
        );
        assert!(rec.cloud().stacks.names().is_empty());
    }

    #[tokio::test]
    async fn an_adopted_stack_is_found_by_a_single_look_and_never_duplicated() {
        let rec = rec();
        rec.cloud().stacks.insert(seed_stack("x", "alice"));
        adopt(&rec, true).await.unwrap();
        rec.resync(false, None).await.unwrap();
        let key = ClusterKey::new("alice", "x").unwrap();
        let outcome = rec.reconcile_key(&key).await;
        assert!(outcome.error.is_none(), "{outcome:?}");
        assert_eq!(rec.cloud().stacks.names(), ["x"], "no second stack");
        assert_eq!(phase(&rec, "home/alice/x.cf-status"), "Ready");

        // A change goes to the adopted stack, under its own name.
        rec.cloud().store.insert(
            "home/alice/x.cf-create",
            rec.cloud()
                .store
                .text("home/alice/x.cf-create")
                .unwrap()
                .replace("\"4\"", "\"6\""),
        );
        rec.reconcile_key(&key).await;
        assert_eq!(
            rec.cloud().stacks.mutations().last().unwrap(),
            "UpdateStack x"
        );
        let stack = rec.cloud().stacks.get("x").unwrap();
        assert_eq!(stack.parameters["ComputeMaxNodes"], "6");
        assert_eq!(
            stack.parameters["ComputeInstanceType"], "other",
            "kept as it was"
        );
        assert_eq!(stack.parameters["AccessUsername"], "alice");
    }

    #[tokio::test]
    async fn a_cluster_flightdeck_already_runs_is_not_given_a_second_stack() {
        let rec = rec();
        rec.cloud().stacks.insert(seed_stack("x", "alice"));
        let key = ClusterKey::new("alice", "x").unwrap();
        rec.cloud().stacks.insert(StackView {
            name: "fd-alice-x".into(),
            status: "CREATE_COMPLETE".into(),
            tags: rec.settings().identity.tags(&key, "h"),
            ..StackView::default()
        });
        let lines = adopt(&rec, true).await.unwrap();
        let line = lines.iter().find(|l| l.stack == "x").unwrap();
        assert!(
            line.to_string()
                .contains("flightdeck already manages stack `fd-alice-x` for alice/x"),
            "{line}"
        );
        assert!(rec.cloud().stacks.mutations().is_empty());
    }
}
