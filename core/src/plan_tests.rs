//! The reconcile table, one row per case: what is observed, and the actions expected.

use super::*;
use crate::identity::hex_md5;
use crate::report::ClusterStatus;
use crate::request::parse_request;
use crate::request::tests::{SEED_EXAMPLE, rules};

const IP: &str = "203.0.113.7";

struct World {
    identity: Identity,
    rules: RequestRules,
    updatable: BTreeSet<String>,
}

impl World {
    fn new() -> Self {
        World {
            identity: Identity::new("fd", "site-a").unwrap(),
            rules: rules(),
            updatable: ["ComputeMaxNodes", "ComputeInitialNodes", "ComputeSpotPrice"]
                .map(String::from)
                .into(),
        }
    }

    fn ctx(&self) -> Context<'_> {
        Context {
            identity: &self.identity,
            rules: &self.rules,
            home_prefix: "home/",
            updatable: &self.updatable,
            lifetime_warning: std::time::Duration::from_secs(3600),
        }
    }
}

fn key() -> ClusterKey {
    ClusterKey::new("alice", "x").unwrap()
}

fn seed() -> Request {
    parse_request(SEED_EXAMPLE.as_bytes(), &rules()).unwrap()
}

fn changed(key: &str, value: &str) -> Request {
    let mut parameters = seed().parameters;
    parameters.insert(key.into(), value.into());
    Request::new(parameters, None)
}

fn valid(request: Request) -> RequestState {
    RequestState::Valid {
        request,
        etag: "\"e1\"".into(),
        modified: 100,
    }
}

fn invalid() -> RequestState {
    RequestState::Invalid {
        reason: "`Foo` is not a setting you can choose".into(),
        etag: "\"e2\"".into(),
    }
}

/// A stack of ours for alice/x created from `request`, last changed at 200.
fn stack(status: &str, request: &Request) -> StackView {
    let w = World::new();
    StackView {
        name: "fd-alice-x".into(),
        id: "arn:aws:cloudformation:eu-west-2:123456789012:stack/fd-alice-x/1".into(),
        status: status.into(),
        status_reason: None,
        last_change: 200,
        created: 100,
        tags: w.identity.tags(&key(), &request.hash),
        parameters: w.rules.stack_parameters(request, &key()),
        outputs: BTreeMap::from([("LoginIp".into(), IP.into())]),
        failure_reason: Some("Master: capacity not available".into()),
        login_ip: Some(IP.into()),
    }
}

/// A running stack's lifetime that ends at `end` and may be acted on.
fn ends(end: i64) -> Option<crate::plan::Expiry> {
    Some(crate::plan::Expiry {
        end,
        may_delete: true,
    })
}

fn base() -> Observed {
    Observed {
        key: key(),
        request: RequestState::Absent,
        delete_requested: false,
        markers: BTreeMap::new(),
        stack: None,
        unmanaged: None,
        enrolled: true,
        orphan: OrphanVerdict::NotJudged,
        admission: None,
        lifetime: None,
        expiry: None,
        vanished: None,
        now: 1_000,
    }
}

const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

fn refused(message: &str) -> Option<Result<crate::admission::Admitted, crate::admission::Refusal>> {
    Some(Err(crate::admission::Refusal {
        rule: "max_nodes",
        message: message.into(),
    }))
}

fn with_markers(mut o: Observed, markers: &[Suffix]) -> Observed {
    for m in markers {
        o.markers.insert(*m, "\"0\"".into());
    }
    o
}

/// One line per action: `create NAME`, `put FILE`, `status PHASE`, `remove FILE`, ...
fn summary(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::CreateStack(s) => format!("create {}", s.name),
            Action::UpdateStack(s) => format!("update {}", s.name),
            Action::DeleteStack { name, .. } => format!("delete {name}"),
            Action::Put { key, body } if key.ends_with(".cf-status") => {
                let st: ClusterStatus = serde_json::from_str(body).unwrap();
                format!("status {:?}", st.phase)
            }
            Action::Put { key, .. } => format!("put {}", key.trim_start_matches("home/alice/")),
            Action::Remove { key, .. } => {
                format!("remove {}", key.trim_start_matches("home/alice/"))
            }
            Action::Notify(n) => format!("notify {:?}", n.event),
            Action::LookAgainSoon => "soon".into(),
        })
        .collect()
}

fn body_of<'a>(actions: &'a [Action], suffix: &str) -> &'a str {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Put { key, body } if key.ends_with(suffix) => Some(body.as_str()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no put of {suffix} in {actions:?}"))
}

fn cases() -> Vec<(&'static str, Observed, Vec<&'static str>)> {
    let s = seed();
    let o = base;
    vec![
        (
            "valid request, admitted, no stack: create",
            Observed {
                request: valid(s.clone()),
                ..o()
            },
            vec!["create fd-alice-x", "status Creating", "soon"],
        ),
        (
            "valid request, user not enrolled: refused, nothing created",
            Observed {
                request: valid(s.clone()),
                enrolled: false,
                ..o()
            },
            vec!["put x.cf-failed", "status Failed"],
        ),
        (
            "valid request, new create clears markers of an earlier cluster",
            with_markers(
                Observed {
                    request: valid(s.clone()),
                    ..o()
                },
                &[Suffix::Deleted, Suffix::Failed],
            ),
            vec![
                "create fd-alice-x",
                "remove x.cf-failed",
                "remove x.cf-deleted",
                "status Creating",
                "soon",
            ],
        ),
        (
            "valid request over the user's limits, no stack: refused, nothing created",
            Observed {
                request: valid(s.clone()),
                admission: refused(
                    "`ComputeMaxNodes`=25 exceeds your limit of 16 (group students)",
                ),
                ..o()
            },
            vec!["put x.cf-failed", "status Failed"],
        ),
        (
            "valid request over the user's limits, running with the same request: left alone",
            Observed {
                request: valid(s.clone()),
                stack: Some(stack("CREATE_COMPLETE", &s)),
                admission: refused("over"),
                ..o()
            },
            vec!["notify Ready", "put x.cf-created", "status Ready"],
        ),
        (
            "valid request changed beyond the user's limits: update refused, cluster kept",
            Observed {
                request: valid(changed("ComputeMaxNodes", "30")),
                stack: Some(stack("CREATE_COMPLETE", &s)),
                admission: refused(
                    "`ComputeMaxNodes`=30 exceeds your limit of 16 (group students)",
                ),
                ..o()
            },
            vec!["put x.cf-failed", "status Ready"],
        ),
        (
            "lifetime ended: .cf-delete is written as if by the user",
            Observed {
                request: valid(s.clone()),
                stack: Some(stack("CREATE_COMPLETE", &s)),
                expiry: ends(100 + 86_400),
                now: 100 + 86_400,
                ..o()
            },
            vec!["status Deleting", "put x.cf-delete", "soon"],
        ),
        (
            "lifetime ends within the warning time: ready, and warned",
            Observed {
                request: valid(s.clone()),
                stack: Some(stack("CREATE_COMPLETE", &s)),
                expiry: ends(100 + 86_400),
                now: 100 + 86_400 - 1800,
                ..o()
            },
            vec![
                "notify LifetimeWarning",
                "notify Ready",
                "put x.cf-created",
                "status Ready",
            ],
        ),
        (
            "lifetime far from its end: ready, no warning",
            Observed {
                request: valid(s.clone()),
                stack: Some(stack("CREATE_COMPLETE", &s)),
                expiry: ends(100 + 86_400),
                now: 100 + 3600,
                ..o()
            },
            vec!["notify Ready", "put x.cf-created", "status Ready"],
        ),
        (
            "valid request, CREATE_IN_PROGRESS: creating, look again soon",
            Observed {
                request: valid(s.clone()),
                stack: Some(stack("CREATE_IN_PROGRESS", &s)),
                ..o()
            },
            vec!["status Creating", "soon"],
        ),
        (
            "valid request, CREATE_COMPLETE, hash equal: ready, notify once",
            Observed {
                request: valid(s.clone()),
                stack: Some(stack("CREATE_COMPLETE", &s)),
                ..o()
            },
            vec!["notify Ready", "put x.cf-created", "status Ready"],
        ),
        (
            "valid request, CREATE_COMPLETE without a login address yet: wait",
            Observed {
                request: valid(s.clone()),
                stack: Some(StackView {
                    login_ip: None,
                    ..stack("CREATE_COMPLETE", &s)
                }),
                ..o()
            },
            vec!["status Creating", "soon"],
        ),
        (
            "valid request, hash differs in an updatable key: update",
            Observed {
                request: valid(changed("ComputeMaxNodes", "30")),
                stack: Some(stack("CREATE_COMPLETE", &s)),
                ..o()
            },
            vec!["update fd-alice-x", "status Updating", "soon"],
        ),
        (
            "valid request, hash differs in a key that cannot change: refused, cluster kept",
            Observed {
                request: valid(changed("MasterInstanceType", "c5.large")),
                stack: Some(stack("UPDATE_COMPLETE", &s)),
                ..o()
            },
            vec!["put x.cf-failed", "status Ready"],
        ),
        (
            "valid request, UPDATE_IN_PROGRESS: updating, look again soon",
            Observed {
                request: valid(s.clone()),
                stack: Some(stack("UPDATE_IN_PROGRESS", &s)),
                ..o()
            },
            vec!["status Updating", "soon"],
        ),
        (
            "valid request, UPDATE_ROLLBACK_COMPLETE, change not written since: failed, still ready",
            Observed {
                request: valid(changed("ComputeMaxNodes", "30")),
                stack: Some(stack("UPDATE_ROLLBACK_COMPLETE", &s)),
                ..o()
            },
            vec![
                "notify Failed",
                "put x.cf-failed",
                "put x.cf-created",
                "status Ready",
            ],
        ),
        (
            "valid request, CREATE_FAILED, request unchanged: failed with reason, no retry",
            Observed {
                request: valid(s.clone()),
                stack: Some(stack("CREATE_FAILED", &s)),
                ..o()
            },
            vec!["notify Failed", "put x.cf-failed", "status Failed"],
        ),
        (
            "valid request, ROLLBACK_COMPLETE, request unchanged: failed with reason, no retry",
            Observed {
                request: valid(s.clone()),
                stack: Some(stack("ROLLBACK_COMPLETE", &s)),
                ..o()
            },
            vec!["notify Failed", "put x.cf-failed", "status Failed"],
        ),
        (
            "valid request changed after ROLLBACK_COMPLETE: delete, then recreate",
            Observed {
                request: valid(changed("ComputeMaxNodes", "3")),
                stack: Some(stack("ROLLBACK_COMPLETE", &s)),
                ..o()
            },
            vec!["delete fd-alice-x", "status Creating", "soon"],
        ),
        (
            "valid request written again after CREATE_FAILED: delete, then recreate",
            Observed {
                request: RequestState::Valid {
                    request: s.clone(),
                    etag: "\"e1\"".into(),
                    modified: 300,
                },
                stack: Some(stack("CREATE_FAILED", &s)),
                ..o()
            },
            vec!["delete fd-alice-x", "status Creating", "soon"],
        ),
        (
            "valid request, old stack still DELETE_IN_PROGRESS: wait",
            Observed {
                request: valid(s.clone()),
                stack: Some(stack("DELETE_IN_PROGRESS", &s)),
                ..o()
            },
            vec!["status Creating", "soon"],
        ),
        (
            "valid request, UPDATE_ROLLBACK_FAILED: failed, an operator must act",
            Observed {
                request: valid(s.clone()),
                stack: Some(stack("UPDATE_ROLLBACK_FAILED", &s)),
                ..o()
            },
            vec!["notify Failed", "put x.cf-failed", "status Failed"],
        ),
        (
            "invalid request, no stack: failed, nothing touched",
            Observed {
                request: invalid(),
                ..o()
            },
            vec!["put x.cf-failed", "status Failed"],
        ),
        (
            "invalid request, running stack: failed, the stack is left as it is and still ready",
            Observed {
                request: invalid(),
                stack: Some(stack("CREATE_COMPLETE", &s)),
                ..o()
            },
            vec![
                "notify Ready",
                "put x.cf-failed",
                "put x.cf-created",
                "status Ready",
            ],
        ),
        (
            ".cf-delete, stack exists: delete",
            Observed {
                delete_requested: true,
                stack: Some(stack("CREATE_COMPLETE", &s)),
                ..o()
            },
            vec!["delete fd-alice-x", "status Deleting", "soon"],
        ),
        (
            ".cf-delete and .cf-create both, stack exists: delete wins",
            Observed {
                request: valid(s.clone()),
                delete_requested: true,
                stack: Some(stack("CREATE_COMPLETE", &s)),
                ..o()
            },
            vec!["delete fd-alice-x", "status Deleting", "soon"],
        ),
        (
            ".cf-delete, invalid request: delete wins",
            Observed {
                request: invalid(),
                delete_requested: true,
                ..o()
            },
            vec![
                "put x.cf-deleted",
                "status Deleted",
                "remove x.cf-create",
                "remove x.cf-delete",
            ],
        ),
        (
            ".cf-delete, stack DELETE_IN_PROGRESS: deleting, look again soon",
            Observed {
                delete_requested: true,
                stack: Some(stack("DELETE_IN_PROGRESS", &s)),
                ..o()
            },
            vec!["status Deleting", "soon"],
        ),
        (
            ".cf-delete, stack CREATE_IN_PROGRESS: delete (CloudFormation cancels the create)",
            Observed {
                delete_requested: true,
                stack: Some(stack("CREATE_IN_PROGRESS", &s)),
                ..o()
            },
            vec!["delete fd-alice-x", "status Deleting", "soon"],
        ),
        (
            ".cf-delete, stack mid-update: wait for the update, then delete",
            Observed {
                delete_requested: true,
                stack: Some(stack("UPDATE_IN_PROGRESS", &s)),
                ..o()
            },
            vec!["status Deleting", "soon"],
        ),
        (
            ".cf-delete, stack gone: deleted, request files removed, notify",
            with_markers(
                Observed {
                    request: valid(s.clone()),
                    delete_requested: true,
                    vanished: Some("stack-1".into()),
                    ..o()
                },
                &[Suffix::Created, Suffix::Status],
            ),
            vec![
                "notify Deleted",
                "remove x.cf-created",
                "put x.cf-deleted",
                "status Deleted",
                "remove x.cf-create",
                "remove x.cf-delete",
            ],
        ),
        (
            ".cf-delete for a cluster that never existed: deleted, idempotent, no notice",
            Observed {
                delete_requested: true,
                ..o()
            },
            vec!["put x.cf-deleted", "status Deleted", "remove x.cf-delete"],
        ),
        (
            "DELETE_FAILED: retry the delete, status says why",
            Observed {
                delete_requested: true,
                stack: Some(stack("DELETE_FAILED", &s)),
                ..o()
            },
            vec!["delete fd-alice-x", "status Deleting", "soon"],
        ),
        (
            "no request, stack of ours, orphan past grace: delete",
            Observed {
                stack: Some(stack("CREATE_COMPLETE", &s)),
                orphan: OrphanVerdict::Delete,
                ..o()
            },
            vec!["delete fd-alice-x", "status Deleting", "soon"],
        ),
        (
            "no request, orphan within grace: keep, say so",
            Observed {
                stack: Some(stack("CREATE_COMPLETE", &s)),
                orphan: OrphanVerdict::Waiting,
                ..o()
            },
            vec!["status Ready"],
        ),
        (
            "no request, orphan held back by the cap: keep",
            Observed {
                stack: Some(stack("CREATE_COMPLETE", &s)),
                orphan: OrphanVerdict::HeldBack,
                ..o()
            },
            vec!["status Ready"],
        ),
        (
            "no request, orphan policy report: keep",
            Observed {
                stack: Some(stack("CREATE_COMPLETE", &s)),
                orphan: OrphanVerdict::ReportOnly,
                ..o()
            },
            vec!["status Ready"],
        ),
        (
            "no request, orphan not judged (single-key look): nothing",
            Observed {
                stack: Some(stack("CREATE_COMPLETE", &s)),
                ..o()
            },
            vec![],
        ),
        (
            "no request, orphan past grace but mid-update: wait",
            Observed {
                stack: Some(stack("UPDATE_IN_PROGRESS", &s)),
                orphan: OrphanVerdict::Delete,
                ..o()
            },
            vec!["status Updating", "soon"],
        ),
        (
            "no request, orphan being deleted: deleting, look again soon",
            Observed {
                stack: Some(stack("DELETE_IN_PROGRESS", &s)),
                orphan: OrphanVerdict::Delete,
                ..o()
            },
            vec!["status Deleting", "soon"],
        ),
        (
            "no request, no stack, cluster was ready: report it deleted",
            with_markers(
                Observed {
                    vanished: Some("stack-1".into()),
                    ..o()
                },
                &[Suffix::Created, Suffix::Status],
            ),
            vec![
                "notify Deleted",
                "remove x.cf-created",
                "put x.cf-deleted",
                "status Deleted",
            ],
        ),
        (
            "no request, no stack, a refused request was removed: reported deleted, failure tidied",
            with_markers(o(), &[Suffix::Failed, Suffix::Status]),
            vec!["remove x.cf-failed", "put x.cf-deleted", "status Deleted"],
        ),
        (
            "no request, no stack, an orphan deleted before it was ready: reported deleted, no notice",
            with_markers(o(), &[Suffix::Status]),
            vec!["put x.cf-deleted", "status Deleted"],
        ),
        ("nothing at all: nothing", o(), vec![]),
        (
            ".cf-delete, no stack of ours, the older design's stack runs: .cf-failed, never .cf-deleted; the .cf-delete stays",
            with_markers(
                Observed {
                    delete_requested: true,
                    unmanaged: Some(seed_stack()),
                    ..o()
                },
                &[Suffix::Created, Suffix::Deleted],
            ),
            vec!["put x.cf-failed", "remove x.cf-deleted", "status Failed"],
        ),
        (
            "valid request, no stack of ours, the older design's stack runs: refused, no second cluster",
            Observed {
                request: valid(s.clone()),
                unmanaged: Some(seed_stack()),
                enrolled: false,
                ..o()
            },
            vec!["put x.cf-failed", "status Failed"],
        ),
        (
            "no request, no stack of ours, the older design's stack runs: its own markers stay",
            with_markers(
                Observed {
                    unmanaged: Some(seed_stack()),
                    ..o()
                },
                &[Suffix::Created],
            ),
            vec![],
        ),
        (
            "valid request, adopted stack (the older design's name) with the same request: ready",
            Observed {
                request: valid(s.clone()),
                stack: Some(adopted(&s)),
                ..o()
            },
            vec!["notify Ready", "put x.cf-created", "status Ready"],
        ),
        (
            "valid request changing an updatable key, adopted stack: updated under its own name",
            Observed {
                request: valid(changed("ComputeMaxNodes", "8")),
                stack: Some(adopted(&s)),
                ..o()
            },
            vec!["update x", "status Updating", "soon"],
        ),
        (
            "valid request setting a key the adopted stack's template lacks: refused, left as it was",
            Observed {
                request: valid(changed("ComputeSpotPrice", "0.05")),
                stack: Some({
                    let mut a = adopted(&s);
                    a.parameters.remove("ComputeSpotPrice");
                    a
                }),
                ..o()
            },
            vec!["put x.cf-failed", "status Ready"],
        ),
        (
            ".cf-delete, adopted stack: deleted like any stack of ours",
            Observed {
                delete_requested: true,
                stack: Some(adopted(&s)),
                unmanaged: None,
                ..o()
            },
            vec!["delete x", "status Deleting", "soon"],
        ),
    ]
}

/// A stack of the older design for alice/x that flightdeck does not manage.
fn seed_stack() -> StackView {
    StackView {
        name: "x".into(),
        id: "arn:aws:cloudformation:eu-west-2:123456789012:stack/x/1".into(),
        status: "CREATE_COMPLETE".into(),
        tags: BTreeMap::from([("project".into(), "alice".into())]),
        parameters: BTreeMap::from([("AccessUsername".into(), "alice".into())]),
        ..StackView::default()
    }
}

/// The older design's stack for alice/x, adopted: its name, the older design's
/// parameters (`"other"` and a label), flightdeck's tags for `request`.
fn adopted(request: &Request) -> StackView {
    let w = World::new();
    let mut tags = w.identity.tags(&key(), &request.hash);
    tags.insert("project".into(), "alice".into());
    tags.insert(TAG_ADOPTED.into(), "150".into());
    let mut parameters: BTreeMap<String, String> = SEED_EXAMPLE_PARAMETERS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    parameters.insert("AccessUsername".into(), "alice".into());
    parameters.insert("FlightProfiles".into(), "alice".into());
    StackView {
        name: "x".into(),
        id: "arn:aws:cloudformation:eu-west-2:123456789012:stack/x/1".into(),
        tags,
        parameters,
        ..stack("CREATE_COMPLETE", request)
    }
}

/// The seed example's parameters as the older design sent them: not normalised.
const SEED_EXAMPLE_PARAMETERS: [(&str, &str); 9] = [
    ("ComputeInstanceType", "other"),
    ("ComputeSpotPrice", "0.03"),
    ("ComputeInstanceTypeOther", "r4.large-2C-15.25GB"),
    ("MasterSystemVolumeSize", "16"),
    ("MasterInstanceType", "other"),
    ("ComputeMaxNodes", "25"),
    ("MasterInstanceTypeOther", "r4.large-2C-15.25GB"),
    ("ComputeInitialNodes", "0"),
    ("AutoscalingPolicy", "enabled"),
];

#[test]
fn an_unmanaged_stack_is_named_and_the_user_told_to_ask_for_adoption() {
    let w = World::new();
    for (delete_requested, request) in [(true, RequestState::Absent), (false, valid(seed()))] {
        let got = plan(
            &Observed {
                delete_requested,
                request,
                unmanaged: Some(seed_stack()),
                ..base()
            },
            &w.ctx(),
        );
        assert!(
            got.iter().all(|a| matches!(a, Action::Put { .. })),
            "no stack call, nothing removed: {got:?}"
        );
        let failed = body_of(&got, ".cf-failed");
        assert!(failed.contains("stack `x`"), "{failed}");
        assert!(failed.contains("`flightdeck adopt`"), "{failed}");
        assert!(
            !got.iter()
                .any(|a| matches!(a, Action::Put { key, .. } if key.ends_with(".cf-deleted")))
        );
    }
}

#[test]
fn an_adopted_stack_is_updated_on_its_own_template_with_only_the_change() {
    let w = World::new();
    let s = seed();
    let got = plan(
        &Observed {
            request: valid(changed("ComputeMaxNodes", "8")),
            stack: Some(adopted(&s)),
            ..base()
        },
        &w.ctx(),
    );
    let Action::UpdateStack(spec) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(spec.name, "x");
    assert_eq!(
        spec.parameters,
        BTreeMap::from([("ComputeMaxNodes".into(), "8".into())]),
        "the older design's `other` equals the resolved type: not a change"
    );
    let TemplateChoice::Previous { keep } = &spec.template else {
        panic!("an adopted stack keeps its template: {spec:?}")
    };
    assert!(keep.contains("ComputeInstanceType") && keep.contains("AccessUsername"));
    assert!(!keep.contains("ComputeMaxNodes"));
    assert_eq!(spec.tags["project"], "alice", "its own tags are kept");
    assert_eq!(spec.tags[TAG_ADOPTED], "150");
    assert_eq!(
        spec.tags["flightdeck:request"],
        changed("ComputeMaxNodes", "8").hash
    );
}

#[test]
fn a_setting_the_adopted_stacks_template_lacks_is_refused_by_name() {
    let w = World::new();
    let mut stack = adopted(&seed());
    stack.parameters.remove("ComputeSpotPrice");
    let got = plan(
        &Observed {
            request: valid(changed("ComputeSpotPrice", "0.05")),
            stack: Some(stack),
            ..base()
        },
        &w.ctx(),
    );
    let failed = body_of(&got, ".cf-failed");
    assert!(
        failed.starts_with("`ComputeSpotPrice` is not a setting of this cluster"),
        "{failed}"
    );
}

#[test]
fn a_stack_flightdeck_made_is_updated_on_the_install_template() {
    let w = World::new();
    let s = seed();
    let got = plan(
        &Observed {
            request: valid(changed("ComputeMaxNodes", "8")),
            stack: Some(stack("CREATE_COMPLETE", &s)),
            ..base()
        },
        &w.ctx(),
    );
    let Action::UpdateStack(spec) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(spec.template, TemplateChoice::Install);
    assert_eq!(spec.parameters["AccessUsername"], "alice");
}

#[test]
fn every_row_of_the_reconcile_table() {
    let w = World::new();
    for (name, observed, want) in cases() {
        let got = plan(&observed, &w.ctx());
        assert_eq!(summary(&got), want, "row: {name}");
    }
}

#[test]
fn a_second_pass_after_the_writes_writes_nothing() {
    let w = World::new();
    for (name, observed, _) in cases() {
        let first = plan(&observed, &w.ctx());
        if first
            .iter()
            .any(|a| matches!(a, Action::Put { key, .. } if key.ends_with(".cf-delete")))
        {
            // The lifetime ended: the next pass is a delete, as after a user's .cf-delete.
            continue;
        }
        let mut after = observed.clone();
        for a in &first {
            match a {
                Action::Put { key, .. } if key.ends_with(".cf-delete") => {
                    after.delete_requested = true
                }
                Action::Put { key, body } => {
                    let suffix = Suffix::ALL
                        .into_iter()
                        .find(|s| key.ends_with(&format!(".{}", s.as_str())))
                        .unwrap();
                    after
                        .markers
                        .insert(suffix, format!("\"{}\"", hex_md5(body.as_bytes())));
                }
                Action::Remove { key, .. } if key.ends_with(".cf-create") => {
                    after.request = RequestState::Absent;
                }
                Action::Remove { key, .. } if key.ends_with(".cf-delete") => {
                    after.delete_requested = false
                }
                Action::Remove { key, .. } => {
                    after
                        .markers
                        .retain(|s, _| !key.ends_with(&format!(".{}", s.as_str())));
                }
                _ => {}
            }
        }
        let again = plan(&after, &w.ctx());
        let writes: Vec<_> = again
            .iter()
            // A lifetime warning has no marker: it is repeated, and delivered once by its id.
            .filter(|a| match a {
                Action::Notify(n) => n.event != NoticeEvent::LifetimeWarning,
                other => matches!(other, Action::Put { .. } | Action::Remove { .. }),
            })
            .collect();
        assert!(
            writes.is_empty(),
            "row: {name}: second pass wrote {writes:?}"
        );
    }
}

#[test]
fn create_sends_fixed_parameters_and_our_tags() {
    let w = World::new();
    let got = plan(
        &Observed {
            request: valid(seed()),
            ..base()
        },
        &w.ctx(),
    );
    let Action::CreateStack(spec) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(spec.parameters["AccessUsername"], "alice");
    assert_eq!(spec.parameters["ComputeInstanceType"], "r4.large");
    assert_eq!(spec.tags["USER"], "alice");
    assert_eq!(spec.tags["flightdeck:owner"], "site-a");
    assert_eq!(spec.tags["flightdeck:cluster"], "x");
    assert_eq!(spec.tags["flightdeck:request"], seed().hash);
    assert!(spec.token.starts_with("fd-create-"));
}

#[test]
fn failure_reports_say_what_to_do() {
    let w = World::new();
    let s = seed();
    let failed = plan(
        &Observed {
            request: valid(s.clone()),
            stack: Some(stack("ROLLBACK_COMPLETE", &s)),
            ..base()
        },
        &w.ctx(),
    );
    let body = body_of(&failed, ".cf-failed");
    assert!(body.contains("Master: capacity not available"), "{body}");
    assert!(body.contains("write it again unchanged to retry"), "{body}");

    let refused = plan(
        &Observed {
            request: valid(changed("MasterInstanceType", "c5.large")),
            stack: Some(stack("CREATE_COMPLETE", &s)),
            ..base()
        },
        &w.ctx(),
    );
    let body = body_of(&refused, ".cf-failed");
    assert!(body.contains("`MasterInstanceType` cannot change on a running cluster (it is `r4.large`, the request asks for `c5.large`)"), "{body}");
    assert!(body.contains("x.cf-delete"), "{body}");

    let carol = plan(
        &Observed {
            request: valid(s),
            enrolled: false,
            ..base()
        },
        &w.ctx(),
    );
    assert!(body_of(&carol, ".cf-failed").contains("not enrolled"));
}

#[test]
fn dropping_master_system_volume_size_is_refused_not_applied() {
    let w = World::new();
    let s = changed("MasterSystemVolumeSize", "100");
    let mut dropped = s.parameters.clone();
    dropped.remove("MasterSystemVolumeSize");
    let got = plan(
        &Observed {
            request: valid(Request::new(dropped, None)),
            stack: Some(stack("CREATE_COMPLETE", &s)),
            ..base()
        },
        &w.ctx(),
    );
    assert!(
        !got.iter().any(|a| matches!(a, Action::UpdateStack(_))),
        "the master (and its disk) would be replaced: {got:?}"
    );
    let body = body_of(&got, ".cf-failed");
    assert!(
        body.contains("`MasterSystemVolumeSize` cannot change on a running cluster (it is `100`, the request leaves it out, which means the default `16`)"),
        "{body}"
    );
}

#[test]
fn dropping_a_setting_that_is_already_the_default_changes_nothing() {
    let w = World::new();
    let s = changed("MasterSystemVolumeSize", "16");
    let mut dropped = s.parameters.clone();
    dropped.remove("MasterSystemVolumeSize");
    let mut running = stack("CREATE_COMPLETE", &s);
    running.parameters.remove("MasterSystemVolumeSize");
    let got = plan(
        &Observed {
            request: valid(Request::new(dropped, None)),
            stack: Some(running),
            ..base()
        },
        &w.ctx(),
    );
    assert!(
        got.iter().any(|a| matches!(a, Action::UpdateStack(_))),
        "only the request's hash changed: {got:?}"
    );
    assert!(
        !summary(&got).iter().any(|a| a.contains(".cf-failed")),
        "{got:?}"
    );
}

#[test]
fn ready_marker_and_status_carry_the_login_address() {
    let w = World::new();
    let s = seed();
    let got = plan(
        &Observed {
            request: valid(s.clone()),
            stack: Some(stack("CREATE_COMPLETE", &s)),
            ..base()
        },
        &w.ctx(),
    );
    assert_eq!(body_of(&got, ".cf-created").lines().next(), Some(IP));
    let st: ClusterStatus = serde_json::from_str(body_of(&got, ".cf-status")).unwrap();
    assert_eq!(st.login_ip.as_deref(), Some(IP));
    assert_eq!(st.request_etag.as_deref(), Some("e1"));
    assert_eq!(st.stack.as_deref(), Some("fd-alice-x"));
    assert_eq!(st.outputs["LoginIp"], IP);
    assert_eq!(st.since.as_deref(), Some("1970-01-01T00:03:20Z"));
    assert_eq!(st.lifetime_end, None);
    let with_lifetime = plan(
        &Observed {
            request: valid(s.clone()),
            stack: Some(stack("CREATE_COMPLETE", &s)),
            expiry: ends(100 + 86_400),
            ..base()
        },
        &w.ctx(),
    );
    let st: ClusterStatus = serde_json::from_str(body_of(&with_lifetime, ".cf-status")).unwrap();
    assert_eq!(st.lifetime_end.as_deref(), Some("1970-01-02T00:01:40Z"));
}

#[test]
fn a_delete_retry_after_delete_failed_uses_a_new_token() {
    let w = World::new();
    let s = seed();
    let token = |status: &str| {
        let got = plan(
            &Observed {
                delete_requested: true,
                stack: Some(stack(status, &s)),
                ..base()
            },
            &w.ctx(),
        );
        match &got[0] {
            Action::DeleteStack { token, key, .. } => {
                assert_eq!(key, &self::key());
                token.clone()
            }
            other => panic!("{other:?}"),
        }
    };
    assert_ne!(token("CREATE_COMPLETE"), token("DELETE_FAILED"));
}

#[test]
fn mistaken_requests_are_explained_once_and_tidied_when_gone() {
    let source = "home/alice/my_cluster.cf-create".to_owned();
    let mistake = match crate::key::classify("home/", &source) {
        crate::key::KeyKind::Mistaken { mistake, .. } => mistake,
        other => panic!("{other:?}"),
    };
    let mistaken = BTreeMap::from([(source.clone(), mistake)]);
    let first = plan_mistakes(&mistaken, &BTreeMap::new(), "home/", 10);
    let [Action::Put { key, body }] = first.as_slice() else {
        panic!("{first:?}")
    };
    assert_eq!(key, "home/alice/my_cluster.cf-create.cf-failed");
    assert!(body.contains("`my-cluster`"), "{body}");
    let reports = BTreeMap::from([(key.clone(), hex_md5(body.as_bytes()))]);
    assert_eq!(plan_mistakes(&mistaken, &reports, "home/", 10), vec![]);
    assert_eq!(
        plan_mistakes(&BTreeMap::new(), &reports, "home/", 10),
        vec![Action::Remove {
            key: key.clone(),
            if_etag: None
        }]
    );
}

#[test]
fn notice_ids_come_from_the_stack_and_the_event_not_the_users_files() {
    let w = World::new();
    let s = seed();
    let id = |etag: &str, status: &str| {
        let obs = Observed {
            request: RequestState::Valid {
                request: s.clone(),
                etag: etag.into(),
                modified: 100,
            },
            stack: Some(stack(status, &s)),
            ..base()
        };
        plan(&obs, &w.ctx())
            .into_iter()
            .find_map(|a| match a {
                Action::Notify(n) => Some(n.id),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(
        id("\"e1\"", "CREATE_COMPLETE"),
        id("\"e1\"", "UPDATE_COMPLETE")
    );
    assert_eq!(
        id("\"e1\"", "CREATE_COMPLETE"),
        id("\"e2\"", "CREATE_COMPLETE"),
        "a file written again is no new event"
    );
    assert_ne!(
        id("\"e1\"", "CREATE_COMPLETE"),
        id("\"e1\"", "CREATE_FAILED")
    );
}

#[test]
fn the_phase_is_reported_beside_the_actions() {
    let w = World::new();
    let s = seed();
    let ready = plan_with_phase(
        &Observed {
            request: valid(s.clone()),
            stack: Some(stack("CREATE_COMPLETE", &s)),
            ..base()
        },
        &w.ctx(),
    );
    assert_eq!(ready.phase, Some(Phase::Ready));
    let nothing = plan_with_phase(&base(), &w.ctx());
    assert_eq!(nothing.phase, None);
}

#[test]
fn a_running_cluster_made_invalid_or_refused_still_expires() {
    let w = World::new();
    let s = seed();
    for (name, request) in [
        ("invalid", invalid()),
        (
            "refused change",
            valid(changed("MasterInstanceType", "c5.large")),
        ),
        ("absent", RequestState::Absent),
    ] {
        let got = plan(
            &Observed {
                request,
                stack: Some(stack("CREATE_COMPLETE", &s)),
                expiry: ends(5_000),
                now: 5_000,
                ..base()
            },
            &w.ctx(),
        );
        assert!(
            summary(&got).contains(&"put x.cf-delete".to_owned()),
            "{name}: {:?}",
            summary(&got)
        );
    }
}

#[test]
fn an_expiry_held_back_deletes_nothing() {
    let w = World::new();
    let s = seed();
    let got = plan(
        &Observed {
            request: valid(s.clone()),
            stack: Some(stack("CREATE_COMPLETE", &s)),
            expiry: Some(crate::plan::Expiry {
                end: 5_000,
                may_delete: false,
            }),
            now: 6_000,
            ..base()
        },
        &w.ctx(),
    );
    assert!(
        !summary(&got).iter().any(|a| a.contains("cf-delete")),
        "{got:?}"
    );
}

#[test]
fn the_end_is_fixed_in_a_tag_at_create_and_kept_by_updates() {
    let w = World::new();
    let s = seed();
    let created = plan(
        &Observed {
            request: valid(s.clone()),
            lifetime: Some(DAY),
            now: 1_000,
            ..base()
        },
        &w.ctx(),
    );
    let Some(Action::CreateStack(spec)) = created.first() else {
        panic!("{created:?}")
    };
    assert_eq!(spec.tags[crate::identity::TAG_EXPIRES], "87400");
    let mut running = stack("CREATE_COMPLETE", &s);
    running
        .tags
        .insert(crate::identity::TAG_EXPIRES.into(), "87400".into());
    let updated = plan(
        &Observed {
            request: valid(changed("ComputeMaxNodes", "3")),
            stack: Some(running),
            lifetime: Some(DAY * 30),
            now: 5_000,
            ..base()
        },
        &w.ctx(),
    );
    let Some(Action::UpdateStack(spec)) = updated.first() else {
        panic!("{updated:?}")
    };
    assert_eq!(spec.tags[crate::identity::TAG_EXPIRES], "87400");
}

#[test]
fn forged_markers_with_no_stack_send_no_notice() {
    let w = World::new();
    for request in [RequestState::Absent, valid(seed())] {
        let delete_requested = matches!(request, RequestState::Valid { .. });
        let got = plan(
            &with_markers(
                Observed {
                    request,
                    delete_requested,
                    ..base()
                },
                &[Suffix::Created, Suffix::Status],
            ),
            &w.ctx(),
        );
        assert!(
            !got.iter().any(|a| matches!(a, Action::Notify(_))),
            "{got:?}"
        );
    }
}

#[test]
fn thousands_of_misnamed_files_get_their_explanations_a_few_per_pass() {
    let mut mistaken = BTreeMap::new();
    for i in 0..2000 {
        let source = format!("home/mallory/c{i}.cf_create");
        let crate::key::KeyKind::Mistaken { mistake, .. } = crate::key::classify("home/", &source)
        else {
            panic!("{source}")
        };
        mistaken.insert(source, mistake);
    }
    let bob = "home/bob/my_x.cf-create".to_owned();
    let crate::key::KeyKind::Mistaken { mistake, .. } = crate::key::classify("home/", &bob) else {
        panic!()
    };
    mistaken.insert(bob.clone(), mistake);
    let actions = plan_mistakes(&mistaken, &BTreeMap::new(), "home/", 50);
    assert_eq!(actions.len(), 51);
    assert!(actions.iter().any(
        |a| matches!(a, Action::Put { key, .. } if key == "home/bob/my_x.cf-create.cf-failed")
    ));
}

#[test]
fn a_user_name_that_cannot_log_in_is_refused_before_createstack() {
    let w = World::new();
    for user in ["jean+luc", "root", "default"] {
        let got = plan(
            &Observed {
                key: ClusterKey::new(user, "x").unwrap(),
                request: valid(seed()),
                ..base()
            },
            &w.ctx(),
        );
        assert!(
            !got.iter().any(|a| matches!(a, Action::CreateStack(_))),
            "{user}: {got:?}"
        );
        let body = body_of(&got, ".cf-failed");
        assert!(body.contains("ask your HPC administrators"), "{body}");
    }
}
