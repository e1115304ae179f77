//! The reconcile table of the design, as one pure function.
//!
//! [`plan`] first reduces what was observed of one cluster to a [`Desire`] and a stack
//! phase, then matches every combination, one arm per row of the table. Each arm says what
//! to do to the stack and what the user should find in their folder; [`render`] turns the
//! latter into writes, leaving out every write whose content is already there.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::admission::{Admitted, Refusal};
use crate::identity::{
    Identity, Md5Writer, TAG_ADOPTED, TAG_EXPIRES, create_token, delete_token, etag_is_md5,
    update_token,
};
use crate::key::{ClusterKey, Mistake, Suffix, check_owner_name, mistake_report_key};
use crate::orphan::OrphanVerdict;
use crate::report::{
    Message, Phase, Rfc3339, StatusDoc, created_body, deleted_body, failed_body, rfc3339,
    write_created_body,
};
use crate::request::{Request, RequestRules};
use crate::stack::{StackPhase, StackView};

/// The request side of one cluster, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestState {
    /// No `.cf-create`.
    Absent,
    /// A `.cf-create` that parsed and passed the checks.
    Valid {
        /// The checked request.
        request: Request,
        /// Its ETag.
        etag: String,
        /// Its last-modified time, in seconds since the epoch.
        modified: i64,
    },
    /// A `.cf-create` that was refused; the reason is the user's to read.
    Invalid {
        /// Why, naming the key, the value and the rule.
        reason: String,
        /// Its ETag.
        etag: String,
    },
}

/// Everything observed of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Which cluster.
    pub key: ClusterKey,
    /// The request.
    pub request: RequestState,
    /// Whether `.cf-delete` exists.
    pub delete_requested: bool,
    /// flightdeck's markers that exist, with their ETags.
    pub markers: BTreeMap<Suffix, String>,
    /// The stack of ours for this cluster, if any.
    pub stack: Option<StackView>,
    /// A live stack of the older design for this cluster that flightdeck does not manage
    /// ([`crate::adopt::unmanaged_key`]): never touched, and never duplicated. It matters
    /// only while there is no stack of ours.
    pub unmanaged: Option<StackView>,
    /// Whether the user is enrolled (their customizer folder exists, or enrolment is not
    /// required).
    pub enrolled: bool,
    /// The orphan guard's verdict (meaningful only with a stack and no request).
    pub orphan: OrphanVerdict,
    /// Admission of a valid request under the policy and the user's other clusters; `None`
    /// when there is nothing to admit or no policy to admit by.
    pub admission: Option<Result<Admitted, Refusal>>,
    /// How long a cluster created now may live, when the policy or the request says; its
    /// end is fixed in a tag at create time.
    pub lifetime: Option<std::time::Duration>,
    /// When the running stack's lifetime ends, and whether it may be deleted for it now.
    pub expiry: Option<Expiry>,
    /// The id of this cluster's stack that flightdeck saw and has since seen deleted: the
    /// only ground for a "deleted" notice (markers in the user's folder are the user's to
    /// write, and prove nothing).
    pub vanished: Option<String>,
    /// When this was observed, seconds since the epoch.
    pub now: i64,
}

/// The end of a running stack's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// When it ends, seconds since the epoch ([`crate::admission::lifetime_end`]).
    pub end: i64,
    /// Whether a cluster past its end may be deleted in this look: only in a full pass
    /// that would not expire more clusters than allowed at once, with a clock that agrees
    /// with AWS's. Otherwise it keeps running until one that may.
    pub may_delete: bool,
}

/// What the planner needs besides the observation: the install's settings.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Stack prefix and owner.
    pub identity: &'a Identity,
    /// Which parameters users may set and which are fixed.
    pub rules: &'a RequestRules,
    /// The users' home prefix, e.g. `home/`.
    pub home_prefix: &'a str,
    /// Parameters that may change on a running cluster (UpdateStack).
    pub updatable: &'a BTreeSet<String>,
    /// How long before a cluster's lifetime ends its user is warned.
    pub lifetime_warning: std::time::Duration,
}

/// A stack to create or update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSpec {
    /// Stack name.
    pub name: String,
    /// CloudFormation parameters: the values to set.
    pub parameters: BTreeMap<String, String>,
    /// Stack tags: the whole set the stack ends with.
    pub tags: BTreeMap<String, String>,
    /// ClientRequestToken.
    pub token: String,
    /// Which template an update runs with.
    pub template: TemplateChoice,
}

/// The template a CreateStack or UpdateStack runs with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TemplateChoice {
    /// The install's template (`stacks.template`): every create, and every update of a
    /// stack flightdeck created. Parameters not in the spec take the template's default.
    #[default]
    Install,
    /// The stack's own template, unchanged (`UsePreviousTemplate`): an adopted stack runs
    /// the older design's template, which flightdeck's would replace, cluster and disks.
    Previous {
        /// The stack's parameters that keep their value (`UsePreviousValue`): every one the
        /// spec does not set, so nothing falls back to a default unasked.
        keep: BTreeSet<String>,
    },
}

/// Why flightdeck tells the operator (and perhaps the user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeEvent {
    /// The cluster is ready.
    Ready,
    /// The stack failed.
    Failed,
    /// The cluster is deleted.
    Deleted,
    /// The cluster's lifetime ends soon.
    LifetimeWarning,
}

/// A notification to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Identifies this notice: the same event of the same request gives the same id, so it
    /// is delivered at most once, also across restarts.
    pub id: String,
    /// What happened.
    pub event: NoticeEvent,
    /// To which cluster.
    pub key: ClusterKey,
    /// The stack's name.
    pub stack: String,
    /// The login address (ready) or the reason (failed).
    pub detail: String,
}

/// One thing to do. Plain data: the executor carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// CreateStack.
    CreateStack(StackSpec),
    /// UpdateStack.
    UpdateStack(StackSpec),
    /// DeleteStack of a stack of ours belonging to the key's user.
    DeleteStack {
        /// Whose stack (the executor checks its tags again before deleting).
        key: ClusterKey,
        /// Stack name.
        name: String,
        /// Stack id.
        id: String,
        /// ClientRequestToken.
        token: String,
        /// The delete is for an orphan (no request): the executor lists the cluster's
        /// files again right before it, and deletes nothing if a request came back.
        orphan: bool,
    },
    /// Write an object (a marker or the status) with this body.
    Put {
        /// Object key.
        key: String,
        /// Body.
        body: String,
    },
    /// Remove an object.
    Remove {
        /// Object key.
        key: String,
        /// Only while its ETag is still this one: a request the user wrote again since it
        /// was read is never removed.
        if_etag: Option<String>,
    },
    /// Send a notification.
    Notify(Notice),
    /// Something is in progress: look at this cluster again soon.
    LookAgainSoon,
}

/// What a row wants one marker to be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want<'a> {
    /// Leave it as it is.
    Keep,
    /// It should not exist.
    Absent,
    /// It should hold this body.
    Body(Body<'a>),
}

impl Want<'_> {
    fn text(body: String) -> Self {
        Want::Body(Body::Text(body))
    }
}

/// What a marker should hold, kept as its parts: most looks find it already written, and
/// only hash it to see that.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body<'a> {
    /// Text as it is.
    Text(String),
    /// [`created_body`].
    Created {
        key: &'a ClusterKey,
        ip: &'a str,
        stack: &'a str,
    },
    /// The status document.
    Status(&'a StatusDoc<'a>),
}

impl Body<'_> {
    /// Whether an object with `etag` already holds this body (see [`holds`]).
    fn held_by(&self, etag: &str) -> bool {
        use std::fmt::Write;
        let mut md5 = Md5Writer::default();
        // Writing to a hash cannot fail.
        let _ = match self {
            Body::Text(text) => md5.write_str(text),
            Body::Created { key, ip, stack } => write_created_body(&mut md5, key, ip, stack),
            Body::Status(doc) => doc.write_json(&mut md5).map_err(|_| std::fmt::Error),
        };
        md5.matches(etag)
    }

    /// The body as written.
    fn text(&self) -> String {
        match self {
            Body::Text(text) => text.clone(),
            Body::Created { key, ip, stack } => created_body(key, ip, stack),
            Body::Status(doc) => doc.to_json(),
        }
    }
}

/// What a row wants the status to be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Report<'a> {
    /// Leave it as it is.
    Keep,
    /// It should say this.
    Set(StatusDoc<'a>),
}

/// What one row of the table decides.
#[derive(Debug)]
struct Decision<'a> {
    stack: Option<Action>,
    status: Report<'a>,
    created: Want<'a>,
    deleted: Want<'a>,
    failed: Want<'a>,
    remove_requests: bool,
    /// Write `.cf-delete` as if the user had (the lifetime ended).
    request_delete: bool,
    notify: Option<Draft<'a>>,
    /// A notice with no marker of its own; delivery is once per id.
    warn: Option<Draft<'a>>,
    soon: bool,
}

impl<'a> Decision<'a> {
    fn report(status: Report<'a>) -> Self {
        Decision {
            stack: None,
            status,
            created: Want::Keep,
            deleted: Want::Keep,
            failed: Want::Keep,
            remove_requests: false,
            request_delete: false,
            notify: None,
            warn: None,
            soon: false,
        }
    }
}

/// The desired state, reduced.
enum Desire<'a> {
    /// `.cf-delete` exists: delete wins.
    Delete,
    /// A valid, admitted request.
    Exist {
        request: &'a Request,
        etag: &'a str,
        modified: i64,
    },
    /// A request that is refused.
    Refused { reason: String, etag: &'a str },
    /// No request at all.
    Nothing,
}

/// A plan for one cluster: the actions, and the phase its status shows afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// The phase `.cf-status` shows once done; `None` when there is no cluster to speak of
    /// or the status is left as it is.
    pub phase: Option<Phase>,
}

/// The actions that bring one cluster closer to what its files ask for.
pub fn plan(obs: &Observed, ctx: &Context<'_>) -> Vec<Action> {
    plan_with_phase(obs, ctx).actions
}

/// [`plan`], with the phase the cluster's status shows afterwards.
pub fn plan_with_phase(obs: &Observed, ctx: &Context<'_>) -> Planned {
    let stack = obs
        .stack
        .as_ref()
        .filter(|s| s.phase() != StackPhase::Deleted);
    let desire = match (&obs.request, obs.delete_requested) {
        (_, true) => Desire::Delete,
        (RequestState::Absent, false) => Desire::Nothing,
        (RequestState::Invalid { reason, etag }, false) => Desire::Refused {
            reason: reason.clone(),
            etag,
        },
        // Nothing will be created beside a cluster of the older design, so neither
        // enrolment nor limits are asked: the row for it says what to do.
        (
            RequestState::Valid {
                request,
                etag,
                modified,
            },
            false,
        ) if stack.is_none() && obs.unmanaged.is_some() => Desire::Exist {
            request,
            etag,
            modified: *modified,
        },
        (RequestState::Valid { etag, .. }, false)
            if stack.is_none() && check_owner_name(&obs.key.user).is_err() =>
        {
            Desire::Refused {
                reason: check_owner_name(&obs.key.user)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
                etag,
            }
        }
        (RequestState::Valid { etag, .. }, false) if stack.is_none() && !obs.enrolled => {
            Desire::Refused {
                reason: format!(
                    "you are not enrolled for clusters yet: ask your HPC administrators to enrol user `{}`",
                    obs.key.user
                ),
                etag,
            }
        }
        (RequestState::Valid { etag, .. }, false) if stack.is_none() => match &obs.admission {
            Some(Err(refusal)) => Desire::Refused {
                reason: refusal.message.clone(),
                etag,
            },
            _ => match &obs.request {
                RequestState::Valid {
                    request, modified, ..
                } => Desire::Exist {
                    request,
                    etag,
                    modified: *modified,
                },
                _ => Desire::Nothing,
            },
        },
        (
            RequestState::Valid {
                request,
                etag,
                modified,
            },
            false,
        ) => Desire::Exist {
            request,
            etag,
            modified: *modified,
        },
    };
    let decision = decide(obs, ctx, &desire, stack);
    let phase = match &decision.status {
        Report::Set(st) => Some(st.phase),
        Report::Keep => None,
    };
    Planned {
        actions: render(obs, ctx, decision),
        phase,
    }
}

fn decide<'a>(
    obs: &'a Observed,
    ctx: &Context<'_>,
    desire: &'a Desire<'a>,
    stack: Option<&'a StackView>,
) -> Decision<'a> {
    let key = &obs.key;
    // Most rows never name the stack, and naming it may take a hash.
    let name = || ctx.identity.stack_name(key);
    // A lifetime that ended comes before anything the files say: a request made invalid,
    // refused or removed since must not keep a cluster alive.
    if let (Some(s), Some(expiry)) = (stack, obs.expiry)
        && expiry.may_delete
        && obs.now >= expiry.end
        && !matches!(desire, Desire::Delete)
        && !matches!(s.phase(), StackPhase::Deleting)
    {
        // Deleted exactly as if the user had written .cf-delete.
        return Decision {
            request_delete: true,
            soon: true,
            ..Decision::report(status(
                key,
                Phase::Deleting,
                format!(
                    "the cluster's lifetime ended at {}: deleting it",
                    rfc3339(expiry.end)
                ),
                Some(s),
                None,
            ))
        };
    }
    match (desire, stack.map(|s| (s, s.phase()))) {
        // .cf-delete present, no stack of ours, but the older design's stack for this
        // cluster runs: it is not flightdeck's to delete, and saying "deleted" would be a
        // lie that costs money. The user is told; the .cf-delete stays, to be carried out
        // once the stack is adopted.
        (Desire::Delete, None) if obs.unmanaged.is_some() => {
            unmanaged(key, obs.unmanaged.as_ref(), None, true)
        }
        // A valid request, no stack of ours, but the older design's stack for this cluster
        // runs: a second cluster of the same name is not made.
        (Desire::Exist { etag, .. }, None) if obs.unmanaged.is_some() => {
            unmanaged(key, obs.unmanaged.as_ref(), Some(etag), false)
        }
        // No request, no stack of ours, the older design's stack runs (its Lambda removed
        // the request once it was made): nothing to say, its own markers stay true.
        (Desire::Nothing, None) if obs.unmanaged.is_some() => Decision::report(Report::Keep),
        // .cf-delete present, no stack: report deleted, remove the request files.
        (Desire::Delete, None) => Decision {
            deleted: Want::text(deleted_body(key)),
            created: Want::Absent,
            failed: Want::Absent,
            remove_requests: true,
            notify: deleted_notice(obs, name),
            ..Decision::report(Report::Set(deleted_status(key)))
        },
        // .cf-delete present, stack deleting: wait.
        (Desire::Delete, Some((s, StackPhase::Deleting))) => Decision {
            soon: true,
            ..Decision::report(status(
                key,
                Phase::Deleting,
                "deleting the cluster",
                Some(s),
                None,
            ))
        },
        // .cf-delete present, stack busy with an update: wait for it, then delete.
        (Desire::Delete, Some((s, StackPhase::Busy))) => Decision {
            soon: true,
            ..Decision::report(status(
                key,
                Phase::Deleting,
                "waiting for the stack's current operation to finish before deleting",
                Some(s),
                None,
            ))
        },
        // .cf-delete present, stack exists (same USER by construction): delete it.
        (Desire::Delete, Some((s, phase))) => {
            let message = if phase == StackPhase::DeleteFailed {
                format!("the last delete failed ({}); trying again", s.failure())
            } else {
                "deleting the cluster".to_owned()
            };
            Decision {
                stack: Some(delete_action(key, s, false)),
                soon: true,
                ..Decision::report(status(key, Phase::Deleting, message, Some(s), None))
            }
        }
        // Refused request, no stack: say why; nothing is touched.
        (Desire::Refused { reason, etag }, None) => Decision {
            failed: Want::text(failed_body(
                reason,
                "Fix the request file and write it again; nothing was created.",
            )),
            created: Want::Absent,
            deleted: Want::Absent,
            ..Decision::report(status(
                key,
                Phase::Failed,
                reason.as_str(),
                None,
                Some(etag),
            ))
        },
        // Refused request with a stack: say why; the stack is left as it is, and a running
        // cluster is still reported ready (its address is still the user's to use).
        (Desire::Refused { reason, etag }, Some((s, phase))) => {
            let message = format!("request refused, cluster left as it was: {reason}");
            let base = if matches!(phase, StackPhase::Stable | StackPhase::UpdateRolledBack) {
                ready(obs, ctx, s, etag)
            } else {
                Decision::report(status(key, running_phase(phase), "", Some(s), Some(etag)))
            };
            let status = match base.status {
                Report::Set(mut st) => {
                    st.message = message.into();
                    Report::Set(st)
                }
                other => other,
            };
            Decision {
                failed: Want::text(failed_body(
                    reason,
                    "Your cluster is left as it was. Fix the request file and write it again.",
                )),
                status,
                ..base
            }
        }
        // A DELETE_COMPLETE stack is filtered out as no stack before this match.
        (_, Some((_, StackPhase::Deleted))) => Decision::report(Report::Keep),
        // Valid request, no stack: create it.
        (
            Desire::Exist {
                request,
                etag,
                modified,
            },
            None,
        ) => {
            let name = name();
            let mut tags = ctx.identity.tags(key, &request.hash);
            if let Some(lifetime) = obs.lifetime {
                let end = obs
                    .now
                    .saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));
                tags.insert(TAG_EXPIRES.to_owned(), end.to_string());
            }
            let spec = StackSpec {
                parameters: ctx.rules.stack_parameters(request, key),
                tags,
                token: create_token(&name, &request.hash, &modified.to_string()),
                name: name.clone(),
                template: TemplateChoice::Install,
            };
            let mut st = StatusDoc::new(key, Phase::Creating, "creating the cluster");
            st.stack = Some(Cow::Owned(name));
            st.request_etag = Some(unquote(etag));
            Decision {
                stack: Some(Action::CreateStack(spec)),
                created: Want::Absent,
                deleted: Want::Absent,
                failed: Want::Absent,
                soon: true,
                ..Decision::report(Report::Set(st))
            }
        }
        // Valid request, stack creating: wait.
        (Desire::Exist { etag, .. }, Some((s, StackPhase::Creating))) => Decision {
            soon: true,
            ..Decision::report(status(
                key,
                Phase::Creating,
                "creating the cluster",
                Some(s),
                Some(etag),
            ))
        },
        // Valid request, stack busy (update, rollback): wait.
        (Desire::Exist { etag, .. }, Some((s, StackPhase::Busy))) => Decision {
            soon: true,
            ..Decision::report(status(
                key,
                Phase::Updating,
                format!("stack is {}", s.status),
                Some(s),
                Some(etag),
            ))
        },
        // Valid request, old stack still deleting (replacing a failed one): wait.
        (Desire::Exist { etag, .. }, Some((s, StackPhase::Deleting))) => Decision {
            soon: true,
            ..Decision::report(status(
                key,
                Phase::Creating,
                "waiting for the previous stack to be deleted",
                Some(s),
                Some(etag),
            ))
        },
        // Valid request, stack running with the same request: ready.
        (
            Desire::Exist { request, etag, .. },
            Some((s, StackPhase::Stable | StackPhase::UpdateRolledBack)),
        ) if tag_hash(s) == Some(request.hash.as_str()) => ready(obs, ctx, s, etag),
        // Valid request changed after a failed update rolled back, not written since: report.
        (Desire::Exist { etag, modified, .. }, Some((s, StackPhase::UpdateRolledBack)))
            if *modified <= s.last_change =>
        {
            let reason = format!(
                "your change could not be applied and was rolled back: {}",
                s.failure()
            );
            Decision {
                failed: Want::text(failed_body(
                    &reason,
                    "The cluster runs on its previous settings. Fix the request and write it again.",
                )),
                notify: Some(notice(NoticeEvent::Failed, s, reason)),
                ..ready(obs, ctx, s, etag)
            }
        }
        // Valid request, stack running with another request: update in place, or refuse.
        (
            Desire::Exist {
                request,
                etag,
                modified,
            },
            Some((s, StackPhase::Stable | StackPhase::UpdateRolledBack)),
        ) => {
            let wanted = ctx.rules.stack_parameters(request, key);
            let changed = ctx.rules.changes(request, &s.parameters);
            let adopted = s.tags.contains_key(TAG_ADOPTED);
            // An adopted stack keeps its own template: a setting it does not have cannot
            // be given to it.
            let foreign = changed
                .iter()
                .find(|k| adopted && !s.parameters.contains_key(*k));
            let refusal = match changed.iter().find(|k| !ctx.updatable.contains(*k)) {
                Some(fixed) => Some((
                    format!(
                        "`{fixed}` cannot change on a running cluster (it is `{}`, {})",
                        s.parameters
                            .get(fixed)
                            .map(String::as_str)
                            .or(ctx.rules.default_of(fixed))
                            .unwrap_or("unset"),
                        match wanted.get(fixed) {
                            Some(v) => format!("the request asks for `{v}`"),
                            None => format!(
                                "the request leaves it out, which means the default `{}`",
                                ctx.rules.default_of(fixed).unwrap_or("")
                            ),
                        }
                    ),
                    format!(
                        "The cluster is left as it was. To change it, write {c}.cf-delete, wait for {c}.cf-deleted, then write {c}.cf-create again; or put the old value back.",
                        c = key.cluster
                    ),
                )),
                None => match (foreign, &obs.admission) {
                    (Some(foreign), _) => Some((
                        format!(
                            "`{foreign}` is not a setting of this cluster: it was started by the older setup, whose template has no such parameter"
                        ),
                        format!(
                            "The cluster is left as it was. Remove `{foreign}` from the request; to have it, write {c}.cf-delete, wait for {c}.cf-deleted, then write {c}.cf-create again for a new cluster.",
                            c = key.cluster
                        ),
                    )),
                    (None, Some(Err(refusal))) => Some((
                        refusal.message.clone(),
                        "The cluster is left as it was. Change the request to fit, or put the old values back.".to_owned(),
                    )),
                    _ => None,
                },
            };
            match refusal {
                Some((reason, advice)) => Decision {
                    failed: Want::text(failed_body(&reason, &advice)),
                    ..Decision::report(status(
                        key,
                        Phase::Ready,
                        format!("change refused: {reason}"),
                        Some(s),
                        Some(etag),
                    ))
                },
                None => Decision {
                    stack: Some(Action::UpdateStack(StackSpec {
                        name: s.name.clone(),
                        parameters: if adopted {
                            wanted
                                .into_iter()
                                .filter(|(k, _)| changed.contains(k))
                                .collect()
                        } else {
                            wanted
                        },
                        template: if adopted {
                            // A changed setting the request leaves out is in neither set:
                            // it takes the stack's own template's default.
                            TemplateChoice::Previous {
                                keep: s
                                    .parameters
                                    .keys()
                                    .filter(|k| !changed.contains(*k))
                                    .cloned()
                                    .collect(),
                            }
                        } else {
                            TemplateChoice::Install
                        },
                        tags: kept_tags(ctx.identity.tags(key, &request.hash), s),
                        token: update_token(&s.id, &request.hash, &modified.to_string()),
                    })),
                    failed: Want::Absent,
                    soon: true,
                    ..Decision::report(status(
                        key,
                        Phase::Updating,
                        "updating the cluster",
                        Some(s),
                        Some(etag),
                    ))
                },
            }
        }
        // Valid request, failed create, request unchanged and not written again: report.
        (
            Desire::Exist {
                request,
                etag,
                modified,
            },
            Some((s, StackPhase::CreateFailed)),
        ) if tag_hash(s) == Some(request.hash.as_str()) && *modified <= s.last_change => {
            let reason = format!("the cluster could not be created: {}", s.failure());
            Decision {
                failed: Want::text(failed_body(
                    &reason,
                    "Change the request (or write it again unchanged to retry); flightdeck will replace the failed stack.",
                )),
                created: Want::Absent,
                notify: Some(notice(NoticeEvent::Failed, s, reason.clone())),
                ..Decision::report(status(key, Phase::Failed, reason, Some(s), Some(etag)))
            }
        }
        // Valid request changed (or written again) after a failed create: delete, then recreate.
        (Desire::Exist { etag, .. }, Some((s, StackPhase::CreateFailed))) => Decision {
            stack: Some(delete_action(key, s, false)),
            soon: true,
            failed: Want::Absent,
            ..Decision::report(status(
                key,
                Phase::Creating,
                "replacing the failed stack",
                Some(s),
                Some(etag),
            ))
        },
        // Valid request, stack stuck after a failed update rollback: an operator must act.
        (Desire::Exist { etag, .. }, Some((s, StackPhase::Stuck))) => {
            let reason = format!(
                "the stack is stuck in {} ({}); your HPC administrators have been told",
                s.status,
                s.failure()
            );
            Decision {
                failed: Want::text(failed_body(&reason, "")),
                notify: Some(notice(NoticeEvent::Failed, s, reason.clone())),
                ..Decision::report(status(key, Phase::Failed, reason, Some(s), Some(etag)))
            }
        }
        // Valid request, replacing a failed stack whose delete failed: retry the delete.
        (Desire::Exist { etag, .. }, Some((s, StackPhase::DeleteFailed))) => Decision {
            stack: Some(delete_action(key, s, false)),
            soon: true,
            ..Decision::report(status(
                key,
                Phase::Failed,
                format!(
                    "the failed stack could not be deleted ({}); trying again",
                    s.failure()
                ),
                Some(s),
                Some(etag),
            ))
        },
        // No request, no stack: whatever was there is gone, so say so (as a `.cf-delete`
        // would have); stale markers go. The notice goes out for a cluster that was ready.
        (Desire::Nothing, None) => {
            if obs.markers.is_empty() {
                Decision::report(Report::Keep)
            } else {
                Decision {
                    deleted: Want::text(deleted_body(key)),
                    created: Want::Absent,
                    failed: Want::Absent,
                    notify: deleted_notice(obs, name),
                    ..Decision::report(Report::Set(deleted_status(key)))
                }
            }
        }
        // No request, stack deleting: wait.
        (Desire::Nothing, Some((s, StackPhase::Deleting))) => Decision {
            soon: true,
            ..Decision::report(status(
                key,
                Phase::Deleting,
                "deleting the cluster",
                Some(s),
                None,
            ))
        },
        // No request, stack of ours: an orphan, handled by the guard's verdict.
        (Desire::Nothing, Some((s, phase))) => orphan(key, s, phase, obs.orphan),
    }
}

/// What the user reads when their `.cf-delete` (`deleting`) or `.cf-create` meets a stack of the older design that flightdeck does not manage. Its
/// login address in `.cf-created`, if the older design wrote one, stays: it is still true.
fn unmanaged<'a>(
    key: &'a ClusterKey,
    stack: Option<&StackView>,
    etag: Option<&'a str>,
    deleting: bool,
) -> Decision<'a> {
    let name = stack.map_or(key.cluster.as_str(), |s| s.name.as_str());
    let (reason, advice) = if deleting {
        (
            format!(
                "flightdeck does not manage the stack `{name}` that runs this cluster (the older setup started it), so it cannot delete it; nothing was deleted"
            ),
            format!(
                "Ask your HPC administrators to adopt it (`flightdeck adopt`). Your {}.cf-delete is kept: once the cluster is adopted, flightdeck deletes it.",
                key.cluster
            ),
        )
    } else {
        (
            format!(
                "a cluster named `{}` already runs for you outside flightdeck (the stack `{name}`, started by the older setup); flightdeck will not start a second one",
                key.cluster
            ),
            format!(
                "Ask your HPC administrators to adopt it (`flightdeck adopt`): flightdeck then manages it from {c}.cf-create. Or choose another cluster name.",
                c = key.cluster
            ),
        )
    };
    Decision {
        failed: Want::text(failed_body(&reason, &advice)),
        deleted: Want::Absent,
        ..Decision::report(status(key, Phase::Failed, reason, None, etag))
    }
}

fn orphan<'a>(
    key: &'a ClusterKey,
    s: &'a StackView,
    phase: StackPhase,
    verdict: OrphanVerdict,
) -> Decision<'a> {
    let c = &key.cluster;
    let waiting = |message: String| {
        Decision::report(status(key, running_phase(phase), message, Some(s), None))
    };
    match verdict {
        OrphanVerdict::NotJudged => Decision::report(Report::Keep),
        OrphanVerdict::Delete if phase != StackPhase::Busy => Decision {
            stack: Some(delete_action(key, s, true)),
            soon: true,
            ..Decision::report(status(
                key,
                Phase::Deleting,
                format!("{c}.cf-create is gone: deleting the cluster"),
                Some(s),
                None,
            ))
        },
        OrphanVerdict::Delete => Decision {
            soon: true,
            ..waiting(format!(
                "{c}.cf-create is gone: the cluster will be deleted when its current operation ends"
            ))
        },
        OrphanVerdict::Waiting => waiting(format!(
            "{c}.cf-create is gone: the cluster will be deleted after a grace period unless the file is written again"
        )),
        OrphanVerdict::ReportOnly => waiting(format!(
            "{c}.cf-create is gone: your HPC administrators will remove the cluster (write {c}.cf-delete to delete it now)"
        )),
        OrphanVerdict::HeldBack => waiting(format!(
            "{c}.cf-create is gone, but deletion is held back because many requests vanished at once; your HPC administrators have been alerted (write {c}.cf-delete to delete it now)"
        )),
    }
}

/// The tags of an update: the stack's own (the end of the lifetime fixed at create time,
/// the mark of an adopted stack, an operator's cost tags), with flightdeck's for the new
/// request over them. UpdateStack replaces the whole set, so a tag left out would be lost.
fn kept_tags(ours: BTreeMap<String, String>, s: &StackView) -> BTreeMap<String, String> {
    let mut tags = s.tags.clone();
    tags.extend(ours);
    tags
}

fn ready<'a>(
    obs: &'a Observed,
    ctx: &Context<'_>,
    s: &'a StackView,
    etag: &'a str,
) -> Decision<'a> {
    let key = &obs.key;
    let expiry = obs.expiry.map(|e| e.end);
    let warn = expiry
        .filter(|end| {
            obs.now
                >= end.saturating_sub(i64::try_from(ctx.lifetime_warning.as_secs()).unwrap_or(0))
        })
        .map(|end| notice(NoticeEvent::LifetimeWarning, s, rfc3339(end)));
    match &s.login_ip {
        Some(ip) => {
            let mut st = StatusDoc::new(
                key,
                Phase::Ready,
                Message::Ready {
                    user: &key.user,
                    ip,
                },
            );
            fill(&mut st, Some(s), Some(etag));
            st.lifetime_end = expiry.map(Rfc3339);
            Decision {
                created: Want::Body(Body::Created {
                    key,
                    ip,
                    stack: &s.name,
                }),
                deleted: Want::Absent,
                failed: Want::Absent,
                notify: Some(notice(NoticeEvent::Ready, s, ip.as_str())),
                warn,
                ..Decision::report(Report::Set(st))
            }
        }
        None => Decision {
            soon: true,
            ..Decision::report(status(
                key,
                Phase::Creating,
                "the stack is complete; waiting for the login address",
                Some(s),
                Some(etag),
            ))
        },
    }
}

/// The phase to show while a stack exists and nothing is being done to it.
fn running_phase(phase: StackPhase) -> Phase {
    match phase {
        StackPhase::Creating => Phase::Creating,
        StackPhase::Busy => Phase::Updating,
        StackPhase::Deleting | StackPhase::DeleteFailed => Phase::Deleting,
        StackPhase::Stable | StackPhase::UpdateRolledBack => Phase::Ready,
        StackPhase::CreateFailed | StackPhase::Stuck | StackPhase::Deleted => Phase::Failed,
    }
}

fn delete_action(key: &ClusterKey, s: &StackView, orphan: bool) -> Action {
    Action::DeleteStack {
        key: key.clone(),
        name: s.name.clone(),
        id: s.id.clone(),
        token: delete_token(&s.id, &s.status, &s.last_change.to_string()),
        orphan,
    }
}

/// A notice about `s`. Its id comes from the stack's identity and the event (for a failure,
/// the failed operation; for readiness, the request it runs): never from the user's files,
/// which anyone with write access to the folder can rewrite at will. The same event of the
/// same stack is delivered once, across restarts.
fn notice<'a>(event: NoticeEvent, s: &'a StackView, detail: impl Into<Cow<'a, str>>) -> Draft<'a> {
    Draft {
        event,
        stack: Cow::Borrowed(&s.name),
        basis: Basis::Stack(s),
        detail: detail.into(),
    }
}

/// The "deleted" notice, when flightdeck saw this cluster's stack and then saw it deleted.
fn deleted_notice(obs: &Observed, stack_name: impl FnOnce() -> String) -> Option<Draft<'_>> {
    let id = obs.vanished.as_deref()?;
    Some(Draft {
        event: NoticeEvent::Deleted,
        stack: Cow::Owned(stack_name()),
        basis: Basis::Vanished(id),
        detail: Cow::Borrowed(""),
    })
}

/// A notice a row may send, before its id is worked out: most are not sent (their
/// marker already says the same), and the id takes a hash.
#[derive(Debug)]
struct Draft<'a> {
    event: NoticeEvent,
    stack: Cow<'a, str>,
    basis: Basis<'a>,
    detail: Cow<'a, str>,
}

/// What identifies a notice's event besides the cluster and its kind.
#[derive(Debug)]
enum Basis<'a> {
    /// The stack it is about: its id, and for readiness the request it runs, for a
    /// failure the failed operation.
    Stack(&'a StackView),
    /// The id of the stack seen deleted.
    Vanished(&'a str),
}

impl Draft<'_> {
    fn notice(self, key: &ClusterKey) -> Notice {
        let Draft {
            event,
            stack,
            basis,
            detail,
        } = self;
        let basis = match (basis, event) {
            (Basis::Stack(s), NoticeEvent::Ready) => {
                format!("{}\u{0}{}", s.id, tag_hash(s).unwrap_or(""))
            }
            (Basis::Stack(s), NoticeEvent::Failed) => {
                format!("{}\u{0}{}\u{0}{}", s.id, s.status, s.last_change)
            }
            (Basis::Stack(s), NoticeEvent::LifetimeWarning | NoticeEvent::Deleted) => s.id.clone(),
            (Basis::Vanished(id), _) => id.to_owned(),
        };
        let id = crate::identity::hex_sha256(
            format!("{}\u{0}{}\u{0}{event:?}\u{0}{basis}", key.user, key.cluster).as_bytes(),
        )[..24]
            .to_owned();
        Notice {
            id,
            event,
            key: key.clone(),
            stack: stack.into_owned(),
            detail: detail.into_owned(),
        }
    }
}

fn tag_hash(s: &StackView) -> Option<&str> {
    s.tags.get(crate::identity::TAG_REQUEST).map(String::as_str)
}

fn status<'a>(
    key: &'a ClusterKey,
    phase: Phase,
    message: impl Into<Message<'a>>,
    s: Option<&'a StackView>,
    etag: Option<&'a str>,
) -> Report<'a> {
    let mut st = StatusDoc::new(key, phase, message);
    fill(&mut st, s, etag);
    Report::Set(st)
}

fn fill<'a>(st: &mut StatusDoc<'a>, s: Option<&'a StackView>, etag: Option<&'a str>) {
    if let Some(s) = s {
        st.stack = Some(Cow::Borrowed(&s.name));
        st.stack_id = Some(s.id.as_str()).filter(|id| !id.is_empty());
        st.login_ip = s.login_ip.as_deref();
        st.outputs = Some(&s.outputs);
        st.since = (s.last_change > 0).then_some(Rfc3339(s.last_change));
    }
    st.request_etag = etag.map(unquote);
}

fn deleted_status(key: &ClusterKey) -> StatusDoc<'_> {
    StatusDoc::new(key, Phase::Deleted, "the cluster is deleted")
}

fn unquote(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// Whether an object with `etag` already holds `body` (S3's ETag of a single-part upload
/// is the MD5 of its content).
pub fn holds(etag: &str, body: &str) -> bool {
    use md5::Digest;
    etag_is_md5(etag, &md5::Md5::digest(body.as_bytes()))
}

/// Turns a decision into actions: the stack action first, then the notice (only when its
/// marker is newly written, so it goes out once), writes of markers whose content differs,
/// removals of markers that should not exist, and a look-again.
fn render(obs: &Observed, ctx: &Context<'_>, d: Decision<'_>) -> Vec<Action> {
    let mut writes = Vec::new();
    let mut written = BTreeSet::new();
    let status = match &d.status {
        Report::Keep => Want::Keep,
        Report::Set(st) => Want::Body(Body::Status(st)),
    };
    for (suffix, want) in [
        (Suffix::Failed, &d.failed),
        (Suffix::Created, &d.created),
        (Suffix::Deleted, &d.deleted),
        (Suffix::Status, &status),
    ] {
        let object = || obs.key.object_key(ctx.home_prefix, suffix);
        let present = obs.markers.get(&suffix);
        match (want, present) {
            (Want::Body(body), Some(etag)) if body.held_by(etag) => {}
            (Want::Body(body), _) => {
                written.insert(suffix);
                writes.push(Action::Put {
                    key: object(),
                    body: body.text(),
                });
            }
            (Want::Absent, Some(_)) => writes.push(Action::Remove {
                key: object(),
                if_etag: None,
            }),
            (Want::Absent, None) | (Want::Keep, _) => {}
        }
    }
    // Notices go before the writes that announce the same thing: should a write fail, the
    // next look plans the notice again and its id keeps it from going out twice; the
    // other way round, a crash between the two could lose it.
    let mut actions: Vec<Action> = d.stack.into_iter().collect();
    if let Some(n) = d.warn {
        actions.push(Action::Notify(n.notice(&obs.key)));
    }
    if let Some(n) = d.notify {
        let marker = match n.event {
            NoticeEvent::Ready => Suffix::Created,
            NoticeEvent::Failed => Suffix::Failed,
            NoticeEvent::Deleted | NoticeEvent::LifetimeWarning => Suffix::Deleted,
        };
        if written.contains(&marker) {
            actions.push(Action::Notify(n.notice(&obs.key)));
        }
    }
    actions.extend(writes);
    if d.remove_requests {
        if let RequestState::Valid { etag, .. } | RequestState::Invalid { etag, .. } = &obs.request
        {
            actions.push(Action::Remove {
                key: obs.key.object_key(ctx.home_prefix, Suffix::Create),
                if_etag: Some(etag.clone()),
            });
        }
        if obs.delete_requested {
            actions.push(Action::Remove {
                key: obs.key.object_key(ctx.home_prefix, Suffix::Delete),
                if_etag: None,
            });
        }
    }
    if d.request_delete && !obs.delete_requested {
        actions.push(Action::Put {
            key: obs.key.object_key(ctx.home_prefix, Suffix::Delete),
            body: "written by flightdeck: the cluster's lifetime ended\n".into(),
        });
    }
    if d.soon {
        actions.push(Action::LookAgainSoon);
    }
    actions
}

/// Reports for requests the user got wrong: each mistaken file gets its explanation next
/// to it (written only when the text differs); an explanation whose file is gone is removed.
/// At most `per_user` writes and removals for one user's folder: a user with thousands of
/// such files gets the rest on later passes, and cannot make a pass slow for everyone.
///
/// `mistaken` maps a mistaken file's key to what is wrong with it; `reports` maps each
/// existing explanation's key to its ETag; both keys are under `home_prefix`.
pub fn plan_mistakes(
    mistaken: &BTreeMap<String, Mistake>,
    reports: &BTreeMap<String, String>,
    home_prefix: &str,
    per_user: usize,
) -> Vec<Action> {
    let mut work: BTreeMap<String, usize> = BTreeMap::new();
    let mut within_budget = |object: &str| {
        let user = object
            .strip_prefix(home_prefix)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("");
        let done = work.entry(user.to_owned()).or_default();
        *done += 1;
        *done <= per_user
    };
    let mut actions = Vec::new();
    for (source, mistake) in mistaken {
        let report = mistake_report_key(source);
        let body = failed_body(
            &format!("flightdeck did not read `{source}`: {mistake}."),
            "Nothing was created or changed.",
        );
        if !reports.get(&report).is_some_and(|etag| holds(etag, &body)) && within_budget(source) {
            actions.push(Action::Put { key: report, body });
        }
    }
    for report in reports.keys() {
        let source = report.strip_suffix(".cf-failed").unwrap_or(report);
        if !mistaken.contains_key(source) && within_budget(report) {
            actions.push(Action::Remove {
                key: report.clone(),
                if_etag: None,
            });
        }
    }
    actions
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
