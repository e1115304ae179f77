//! The older design's stacks (af-user), and taking them over: which stacks are its, which
//! of them flightdeck may adopt, the request file rebuilt from a stack, and the tags an
//! adopted stack gets.
//!
//! The older design's Lambda named a cluster's stack after the cluster alone, tagged it
//! `project=<user>` and set its `AccessUsername` and `FlightProfiles` parameters to the
//! user. [`seed_key`] is that rule: a stack is the older design's for `<user>/<cluster>`
//! when its name is `<cluster>`, its `project` tag is `<user>` and its `AccessUsername`
//! parameter is `<user>` too. The parameter is what tells such a stack from any other
//! stack of the account that happens to carry a `project` tag.
//!
//! Adopting a stack gives it this install's tags (see [`judge`]) with an UpdateStack that
//! keeps its template and every parameter's value, so only its tags change. From then on
//! flightdeck finds it by its tags, like any stack of its own, under the name it has.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::admission::lifetime_of;
use crate::identity::{Identity, TAG_ADOPTED, TAG_EXPIRES, TAG_OWNER, update_token};
use crate::key::{ClusterKey, check_owner_name};
use crate::plan::{StackSpec, TemplateChoice};
use crate::policy::Policy;
use crate::request::{Request, RequestRules, parse_request};
use crate::stack::{StackPhase, StackView};

/// The tag the older design put on a cluster's stack: the user's name.
pub const TAG_PROJECT: &str = "project";

/// The parameter the older design set to the user's name (so does flightdeck).
pub const ACCESS_USERNAME: &str = "AccessUsername";

/// The cluster a stack belongs to by the older design's rule, whoever manages it now:
/// named `<cluster>`, tagged `project=<user>`, with `AccessUsername=<user>`.
pub fn seed_key(stack: &StackView) -> Option<ClusterKey> {
    let user = stack.tags.get(TAG_PROJECT)?;
    if stack.parameters.get(ACCESS_USERNAME) != Some(user) {
        return None;
    }
    ClusterKey::new(user, &stack.name).ok()
}

/// Which clusters a look at one cluster alone must also describe by the older design's
/// stack name, `<cluster>`, as the last full pass saw them. A stack is ours by its tags,
/// whatever its name, so a look that describes only flightdeck's name would miss an
/// adopted stack (and create a second one) or one not yet adopted. Once every stack of the
/// older design is adopted or gone, only the adopted clusters cost the second call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OlderNames {
    /// Every cluster: no full pass has been seen yet, or the last one found stacks of the
    /// older design that are not adopted (while it runs, it may make more).
    #[default]
    All,
    /// Only these clusters, whose stack of ours has another name than flightdeck's.
    Only(BTreeSet<ClusterKey>),
}

impl OlderNames {
    /// What a full pass's stacks say: its stacks of ours by cluster, and whether it found
    /// any stack of the older design that no install manages.
    pub fn of(
        identity: &Identity,
        stacks: &BTreeMap<ClusterKey, StackView>,
        unmanaged_found: bool,
    ) -> OlderNames {
        if unmanaged_found {
            return OlderNames::All;
        }
        OlderNames::Only(
            stacks
                .iter()
                .filter(|(key, stack)| stack.name != identity.stack_name(key))
                .map(|(key, _)| key.clone())
                .collect(),
        )
    }

    /// Whether a look at `key` must also describe `<cluster>`.
    pub fn includes(&self, key: &ClusterKey) -> bool {
        match self {
            OlderNames::All => true,
            OlderNames::Only(keys) => keys.contains(key),
        }
    }
}

/// The cluster of a live stack of the older design that no flightdeck install manages (it
/// has no `flightdeck:owner` tag): such a stack is never touched, and a request for its
/// cluster is answered by saying so.
pub fn unmanaged_key(stack: &StackView) -> Option<ClusterKey> {
    if stack.phase() == StackPhase::Deleted || stack.tags.contains_key(TAG_OWNER) {
        return None;
    }
    seed_key(stack)
}

/// Whether `flightdeck adopt` lists a stack: a live stack with a `project` tag. Each one
/// gets a line, adopted or skipped with the reason.
pub fn is_candidate(stack: &StackView) -> bool {
    stack.phase() != StackPhase::Deleted && stack.tags.contains_key(TAG_PROJECT)
}

/// Why a stack is not adopted. The message completes "skip <stack>: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// It carries this install's owner tag already.
    #[error("already managed by this flightdeck (as {0})")]
    Ours(ClusterKey),
    /// Another install's owner tag.
    #[error("managed by another flightdeck install (owner `{0}`)")]
    OtherInstall(String),
    /// Its name or `project` tag is not a name flightdeck accepts.
    #[error("{0}")]
    Names(String),
    /// Its parameters do not say the same user as its tag.
    #[error(
        "ambiguous: its project tag says `{user}` but its AccessUsername parameter is {access}; not a stack the older design made for that user"
    )]
    Ambiguous {
        /// The `project` tag.
        user: String,
        /// The parameter, quoted, or "missing".
        access: String,
    },
    /// Not running as created or updated.
    #[error(
        "its status is {0}; only a running stack (CREATE_COMPLETE, UPDATE_COMPLETE, UPDATE_ROLLBACK_COMPLETE) is adopted: delete a failed one by hand, run again once a busy one settles"
    )]
    Status(String),
    /// The cluster has a stack of this install already.
    #[error(
        "flightdeck already manages stack `{stack}` for {key}; two stacks for one cluster are never made"
    )]
    Taken {
        /// The cluster.
        key: ClusterKey,
        /// flightdeck's stack.
        stack: String,
    },
    /// Its parameters do not make a request this install accepts.
    #[error(
        "its parameters do not make a valid request under this install's template: {0}; adjust the template or the policy, or delete the stack by hand"
    )]
    Request(String),
}

/// A stack to adopt, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// Whose cluster it is.
    pub key: ClusterKey,
    /// The request rebuilt from the stack's parameters.
    pub request: Request,
    /// That request as a `.cf-create` file, in the format users write.
    pub request_body: String,
    /// The UpdateStack that gives the stack flightdeck's tags and changes nothing else:
    /// its own template, every parameter's previous value.
    pub spec: StackSpec,
}

/// Whether (and how) to adopt `stack`: the older design's stack, running, of a user who may
/// own clusters, whose cluster has no stack of this install (`managed`: flightdeck's stacks
/// by cluster), and whose parameters make a valid request.
///
/// The adopted stack keeps every tag it has (`project` included) and gets:
/// - `USER`, `flightdeck:cluster`, `flightdeck:owner`: this install's, as on a stack it
///   creates, so it is found by its tags;
/// - `flightdeck:request`: the hash of the rebuilt request, so the rebuilt (or an equal)
///   `.cf-create` finds the cluster ready and a different one updates it;
/// - `flightdeck:adopted`: `now`, so that its updates keep its own template;
/// - `flightdeck:expires`: `now` plus the lifetime the policy gives the user's clusters,
///   when it gives one. Counted from the adoption, not the stack's creation: an older
///   cluster would otherwise end at once.
///
/// # Errors
/// [`Skip`] saying why not.
pub fn judge(
    stack: &StackView,
    identity: &Identity,
    rules: &RequestRules,
    policy: &Policy,
    managed: &BTreeMap<ClusterKey, String>,
    now: i64,
) -> Result<Adoption, Skip> {
    if let Some(owner) = stack.tags.get(TAG_OWNER) {
        return Err(match identity.owned_key(&stack.tags) {
            Some(key) => Skip::Ours(key),
            None => Skip::OtherInstall(owner.clone()),
        });
    }
    let user = stack.tags.get(TAG_PROJECT).map_or("", String::as_str);
    let key = ClusterKey::new(user, &stack.name).map_err(|e| Skip::Names(e.to_string()))?;
    check_owner_name(user).map_err(|e| Skip::Names(e.to_string()))?;
    if seed_key(stack).is_none() {
        return Err(Skip::Ambiguous {
            user: user.to_owned(),
            access: stack
                .parameters
                .get(ACCESS_USERNAME)
                .map_or_else(|| "missing".to_owned(), |a| format!("`{a}`")),
        });
    }
    if !matches!(
        stack.phase(),
        StackPhase::Stable | StackPhase::UpdateRolledBack
    ) {
        return Err(Skip::Status(stack.status.clone()));
    }
    if let Some(ours) = managed.get(&key) {
        return Err(Skip::Taken {
            key,
            stack: ours.clone(),
        });
    }
    let request_body = rebuilt_request(&stack.parameters, rules);
    let request =
        parse_request(request_body.as_bytes(), rules).map_err(|e| Skip::Request(e.to_string()))?;
    let mut tags = stack.tags.clone();
    tags.extend(identity.tags(&key, &request.hash));
    tags.insert(TAG_ADOPTED.to_owned(), now.to_string());
    if let Some(lifetime) = lifetime_of(policy, &key.user, &request) {
        let secs = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        tags.insert(TAG_EXPIRES.to_owned(), now.saturating_add(secs).to_string());
    }
    let spec = StackSpec {
        name: stack.name.clone(),
        parameters: BTreeMap::new(),
        tags,
        token: update_token(&stack.id, &request.hash, "adopt"),
        template: TemplateChoice::Previous {
            keep: stack.parameters.keys().cloned().collect::<BTreeSet<_>>(),
        },
    };
    Ok(Adoption {
        key,
        request,
        request_body,
        spec,
    })
}

/// The `.cf-create` a user would have written for a stack with these parameters: every
/// parameter users may set that the stack has a value for, as JSON strings (the older
/// design's format, `"other"` and its label included). Parameters flightdeck or the
/// administrators set, and empty values, are left out.
pub fn rebuilt_request(parameters: &BTreeMap<String, String>, rules: &RequestRules) -> String {
    let settable: BTreeSet<&str> = rules.settable().collect();
    let object: serde_json::Map<String, serde_json::Value> = parameters
        .iter()
        .filter(|(k, v)| settable.contains(k.as_str()) && !v.is_empty())
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let mut body = serde_json::to_string_pretty(&serde_json::Value::Object(object))
        .unwrap_or_else(|_| "{}".to_owned());
    body.push('\n');
    body
}

/// How long an adopted cluster may live from its adoption, for the dry run to show.
pub fn lifetime_from_adoption(adoption: &Adoption, now: i64) -> Option<Duration> {
    let end: i64 = adoption.spec.tags.get(TAG_EXPIRES)?.parse().ok()?;
    u64::try_from(end.saturating_sub(now))
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{TAG_CLUSTER, TAG_REQUEST, TAG_USER};
    use crate::request::tests::rules;

    const NOW: i64 = 1_700_000_000;

    fn id() -> Identity {
        Identity::new("fd", "site-a").unwrap()
    }

    fn policy(lifetime: &str) -> Policy {
        Policy::parse(&format!("version = 1\n[limits]\n{lifetime}\n")).unwrap()
    }

    /// A stack as the older design's Lambda made it for `user`'s cluster `name`, with its
    /// default parameters.
    fn seed_stack(name: &str, user: &str) -> StackView {
        StackView {
            name: name.into(),
            id: format!("arn:aws:cloudformation:eu-west-2:123456789012:stack/{name}/1"),
            status: "CREATE_COMPLETE".into(),
            created: 1_500_000_000,
            last_change: 1_500_000_000,
            tags: BTreeMap::from([(TAG_PROJECT.into(), user.into())]),
            parameters: [
                ("ComputeInstanceType", "other"),
                ("ComputeInstanceTypeOther", "c4.large-2C-3.75GB"),
                ("MasterInstanceType", "other"),
                ("MasterInstanceTypeOther", "c4.large-2C-3.75GB"),
                ("ComputeSpotPrice", "0.03"),
                ("AutoscalingPolicy", "enabled"),
                ("ComputeInitialNodes", "1"),
                ("ComputeMaxNodes", "4"),
                ("MasterSystemVolumeSize", "16"),
                ("AccessUsername", user),
                ("FlightProfiles", user),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..StackView::default()
        }
    }

    fn judged(stack: &StackView) -> Result<Adoption, Skip> {
        judge(stack, &id(), &rules(), &policy(""), &BTreeMap::new(), NOW)
    }

    #[test]
    fn the_older_designs_stack_is_known_by_name_tag_and_access_user() {
        let s = seed_stack("x", "alice");
        assert_eq!(seed_key(&s), ClusterKey::new("alice", "x").ok());
        assert_eq!(unmanaged_key(&s), ClusterKey::new("alice", "x").ok());

        let mut other_access = s.clone();
        other_access
            .parameters
            .insert(ACCESS_USERNAME.into(), "bob".into());
        assert_eq!(seed_key(&other_access), None, "the user must agree");

        let mut no_tag = s.clone();
        no_tag.tags.clear();
        assert_eq!(
            seed_key(&no_tag),
            None,
            "no project tag, not the older design's"
        );

        let mut deleted = s.clone();
        deleted.status = "DELETE_COMPLETE".into();
        assert_eq!(unmanaged_key(&deleted), None);

        let mut managed = s.clone();
        managed.tags.insert(TAG_OWNER.into(), "site-b".into());
        assert_eq!(
            unmanaged_key(&managed),
            None,
            "a stack some install manages is not unmanaged"
        );
        assert_eq!(seed_key(&managed), ClusterKey::new("alice", "x").ok());
    }

    #[test]
    fn a_running_seed_stack_is_adopted_with_flightdecks_tags_and_only_tags_change() {
        let s = seed_stack("x", "alice");
        let a = judged(&s).unwrap();
        let key = ClusterKey::new("alice", "x").unwrap();
        assert_eq!(a.key, key);
        assert_eq!(a.spec.name, "x", "the stack keeps its name");
        assert!(a.spec.parameters.is_empty(), "no parameter value is sent");
        assert_eq!(
            a.spec.template,
            TemplateChoice::Previous {
                keep: s.parameters.keys().cloned().collect()
            },
            "its own template, every parameter's previous value"
        );
        assert_eq!(id().owned_key(&a.spec.tags), Some(key));
        assert_eq!(a.spec.tags[TAG_USER], "alice");
        assert_eq!(a.spec.tags[TAG_CLUSTER], "x");
        assert_eq!(a.spec.tags[TAG_REQUEST], a.request.hash);
        assert_eq!(a.spec.tags[TAG_PROJECT], "alice", "its own tags are kept");
        assert_eq!(a.spec.tags[TAG_ADOPTED], NOW.to_string());
        assert!(
            !a.spec.tags.contains_key(TAG_EXPIRES),
            "the policy sets no lifetime"
        );
    }

    #[test]
    fn the_rebuilt_request_is_in_the_users_format_and_parses_to_the_tagged_hash() {
        let a = judged(&seed_stack("x", "alice")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&a.request_body).unwrap();
        assert_eq!(json["ComputeInstanceType"], "other");
        assert_eq!(json["ComputeInstanceTypeOther"], "c4.large-2C-3.75GB");
        assert_eq!(json["ComputeMaxNodes"], "4");
        assert!(
            json.get("AccessUsername").is_none(),
            "set by flightdeck, not the user"
        );
        assert!(json.get("FlightProfiles").is_none());
        let parsed = parse_request(a.request_body.as_bytes(), &rules()).unwrap();
        assert_eq!(parsed.hash, a.request.hash);
        assert_eq!(parsed.parameters["ComputeInstanceType"], "c4.large");
    }

    #[test]
    fn the_lifetime_of_an_adopted_cluster_counts_from_the_adoption() {
        let s = seed_stack("x", "alice");
        let a = judge(
            &s,
            &id(),
            &rules(),
            &policy("lifetime = \"3d\""),
            &BTreeMap::new(),
            NOW,
        )
        .unwrap();
        assert_eq!(a.spec.tags[TAG_EXPIRES], (NOW + 3 * 86_400).to_string());
        assert_eq!(
            lifetime_from_adoption(&a, NOW),
            Some(Duration::from_secs(3 * 86_400))
        );
    }

    #[test]
    fn stacks_that_must_not_be_adopted_are_skipped_with_the_reason() {
        let key = ClusterKey::new("alice", "x").unwrap();
        let seed = || seed_stack("x", "alice");
        let with = |f: &dyn Fn(&mut StackView)| {
            let mut s = seed();
            f(&mut s);
            s
        };
        let mut ours = seed();
        ours.tags.extend(id().tags(&key, "h"));
        assert_eq!(judged(&ours), Err(Skip::Ours(key.clone())));
        let theirs = with(&|s| {
            s.tags.insert(TAG_OWNER.into(), "site-b".into());
        });
        assert_eq!(judged(&theirs), Err(Skip::OtherInstall("site-b".into())));
        let bad_cluster = seed_stack("my_cluster", "alice");
        assert!(matches!(judged(&bad_cluster), Err(Skip::Names(m)) if m.contains("my_cluster")));
        let bad_user = seed_stack("x", "root");
        assert!(matches!(judged(&bad_user), Err(Skip::Names(m)) if m.contains("reserved")));
        let ambiguous = with(&|s| {
            s.parameters.insert(ACCESS_USERNAME.into(), "bob".into());
        });
        assert_eq!(
            judged(&ambiguous),
            Err(Skip::Ambiguous {
                user: "alice".into(),
                access: "`bob`".into()
            })
        );
        for status in ["ROLLBACK_COMPLETE", "UPDATE_IN_PROGRESS", "DELETE_FAILED"] {
            let s = with(&|s| s.status = status.into());
            assert_eq!(judged(&s), Err(Skip::Status(status.into())), "{status}");
        }
        let taken = judge(
            &seed(),
            &id(),
            &rules(),
            &policy(""),
            &BTreeMap::from([(key.clone(), "fd-alice-x".to_owned())]),
            NOW,
        );
        assert_eq!(
            taken,
            Err(Skip::Taken {
                key,
                stack: "fd-alice-x".into()
            })
        );
        let bad_value = with(&|s| {
            s.parameters
                .insert("AutoscalingPolicy".into(), "sometimes".into());
        });
        assert!(
            matches!(judged(&bad_value), Err(Skip::Request(m)) if m.contains("AutoscalingPolicy"))
        );
    }

    #[test]
    fn the_older_name_is_described_for_adopted_clusters_and_for_all_while_any_is_unadopted() {
        let ours = |name: &str, cluster: &str| {
            let key = ClusterKey::new("alice", cluster).unwrap();
            let stack = StackView {
                name: name.into(),
                ..StackView::default()
            };
            (key, stack)
        };
        let stacks = BTreeMap::from([ours("fd-alice-new", "new"), ours("old", "old")]);
        let (new, old) = (
            ClusterKey::new("alice", "new").unwrap(),
            ClusterKey::new("alice", "old").unwrap(),
        );
        let settled = OlderNames::of(&id(), &stacks, false);
        assert!(settled.includes(&old), "adopted: it keeps the name old");
        assert!(!settled.includes(&new));
        assert!(!settled.includes(&ClusterKey::new("bob", "x").unwrap()));
        let migrating = OlderNames::of(&id(), &stacks, true);
        assert!(migrating.includes(&new) && migrating.includes(&old));
        assert!(
            OlderNames::default().includes(&new),
            "before the first pass"
        );
    }

    #[test]
    fn only_live_stacks_with_a_project_tag_are_listed() {
        let s = seed_stack("x", "alice");
        assert!(is_candidate(&s));
        let mut other = s.clone();
        other.tags.clear();
        assert!(!is_candidate(&other));
        let mut gone = s;
        gone.status = "DELETE_COMPLETE".into();
        assert!(!is_candidate(&gone));
    }
}
