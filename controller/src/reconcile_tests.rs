//! The reconciler over in-memory fakes: what the emulator cannot show (stacks in progress or
//! failed, failed calls, other installs' stacks) and what must never happen.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flightdeck_core::identity::{Identity, TAG_OWNER};
use flightdeck_core::key::ClusterKey;
use flightdeck_core::orphan::{OrphanPolicy, OrphanSettings};
use flightdeck_core::stack::StackView;

use crate::config::{Enrolment, Notify, Settings};
use crate::fake::{FakeInstances, FakeMailer, FakeStacks, FakeStore};
use crate::ports::{ErrorKind, ObjectStore, Template};
use crate::reconcile::Reconciler;

pub(crate) type Rec = Reconciler<FakeStore, FakeStacks, FakeInstances, FakeMailer>;

pub(crate) const SEED: &str = include_str!("../../examples/cluster.cf-create");
const USER_KEYS: [&str; 9] = [
    "ComputeInstanceType",
    "ComputeInstanceTypeOther",
    "ComputeSpotPrice",
    "ComputeMaxNodes",
    "ComputeInitialNodes",
    "MasterInstanceType",
    "MasterInstanceTypeOther",
    "MasterSystemVolumeSize",
    "AutoscalingPolicy",
];

pub(crate) fn settings(grace: Duration, max_deletes: usize) -> Settings {
    Settings {
        identity: Identity::new("fd", "site-a").unwrap(),
        region: None,
        endpoint_url: None,
        log_format: crate::config::LogFormat::Text,
        bucket: "users".into(),
        home_prefix: "home/".into(),
        controller_prefix: "flightdeck/".into(),
        template: Template {
            body: "Resources: {}".into(),
            role_arn: None,
        },
        fixed_parameters: BTreeMap::new(),
        user_parameters: USER_KEYS.map(String::from).into(),
        updatable: BTreeSet::from(["ComputeMaxNodes".to_string()]),
        policy: test_policy(),
        login_output: "LoginIp".into(),
        login_resource: "Master".into(),
        enrolment: Enrolment {
            bucket: "cust".into(),
            prefix: "customizer/".into(),
        },
        resync_interval: Duration::from_secs(60),
        busy_interval: Duration::from_secs(5),
        orphans: OrphanSettings {
            grace,
            max_deletes,
            policy: OrphanPolicy::Delete,
        },
        concurrency: 4,
        notify: Some(Notify {
            from: "fd@example.org".into(),
            operator: vec!["ops@example.org".into()],
            users: BTreeMap::new(),
            user_domain: None,
        }),
        http: crate::config::Http {
            listen: "127.0.0.1:0".parse().unwrap(),
            hint_token: None,
            max_hint_bytes: 4096,
            metrics_listen: None,
            max_connections: 256,
        },
        per_user_metrics: false,
        lifetime_warning: Duration::from_secs(3600),
        guards: crate::config::Guards::default(),
        election: crate::config::Election {
            enabled: false,
            timing: flightdeck_core::lease::Timing::default(),
            identity: "test".into(),
        },
        rates: crate::config::Rates::default(),
    }
}

/// The nine keys of the example, any value, no limits but enrolment.
pub(crate) fn test_policy() -> flightdeck_core::policy::Policy {
    flightdeck_core::policy::Policy::parse(&policy_text()).unwrap()
}

/// The text of [`test_policy`], to add limits to.
pub(crate) fn policy_text() -> String {
    let mut text = String::from("version = 1\n[prices]\n\"r4.large\" = \"0.133\"\n");
    for key in USER_KEYS {
        text.push_str(&format!("[parameters.{key}]\n"));
        if key == "ComputeMaxNodes" {
            text.push_str("updatable = true\n");
        }
    }
    text
}

/// A new reconciler (a restarted process) on the same cloud as `rec`.
pub(crate) fn restarted(rec: Rec, settings: Settings) -> Rec {
    let rules = crate::offline::rules(&settings).unwrap();
    Reconciler::new(
        rec.cloud,
        settings,
        rules,
        std::sync::Arc::new(crate::metrics::Metrics::new(false)),
    )
}

pub(crate) fn rec_with(settings: Settings) -> Rec {
    let rules = crate::offline::rules(&settings).unwrap();
    let cloud = crate::fake::cloud();
    for user in ["alice", "bob"] {
        cloud.customizer.insert(
            &format!("customizer/{user}/configure.d/authorized_keys"),
            "ssh-ed25519 AAAA",
        );
    }
    Reconciler::new(
        cloud,
        settings,
        rules,
        std::sync::Arc::new(crate::metrics::Metrics::new(false)),
    )
}

pub(crate) fn rec() -> Rec {
    rec_with(settings(Duration::from_secs(600), 5))
}

/// How many emails went out whose subject ends with `ending` (`"is ready"`, `"is deleted"`).
pub(crate) fn emails_ending(rec: &Rec, ending: &str) -> usize {
    rec.cloud()
        .mailer
        .as_ref()
        .unwrap()
        .subjects()
        .iter()
        .filter(|s| s.ends_with(ending))
        .count()
}

pub(crate) fn text(rec: &Rec, key: &str) -> String {
    rec.cloud()
        .store
        .text(key)
        .unwrap_or_else(|| panic!("{key} missing; have {:?}", rec.cloud().store.keys()))
}

pub(crate) fn phase(rec: &Rec, key: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&text(rec, key)).unwrap();
    v["phase"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn request_becomes_a_ready_cluster_and_a_quiet_pass_writes_and_fetches_nothing() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    assert_eq!(rec.cloud().stacks.names(), ["fd-alice-x"]);
    rec.resync(false, None).await.unwrap();
    let created = text(&rec, "home/alice/x.cf-created");
    assert!(created.starts_with("198.51.100."), "{created}");
    assert_eq!(phase(&rec, "home/alice/x.cf-status"), "Ready");
    assert_eq!(
        rec.cloud().mailer.as_ref().unwrap().subjects(),
        ["[flightdeck] cluster x of alice is ready"]
    );

    rec.cloud().store.clear_calls();
    let before = rec.cloud().stacks.mutations().len();
    rec.resync(false, None).await.unwrap();
    assert_eq!(
        rec.cloud().store.calls(),
        ["ListObjectsV2 home/"],
        "a quiet pass lists once and nothing else"
    );
    assert_eq!(rec.cloud().stacks.mutations().len(), before);
    assert_eq!(
        rec.cloud().mailer.as_ref().unwrap().subjects().len(),
        1,
        "notified once"
    );
}

#[tokio::test]
async fn a_stack_in_progress_is_looked_at_again_by_key_until_ready() {
    // A create that completes keeps its creation time as its last change (AWS sets no
    // LastUpdatedTime): details looked up while it was in progress (no address yet) must
    // not be taken for the completed stack's.
    let rec = rec();
    *rec.cloud().stacks.create_status.lock().unwrap() = "CREATE_IN_PROGRESS".into();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    let report = rec.resync(false, None).await.unwrap();
    let key = ClusterKey::new("alice", "x").unwrap();
    assert!(report.outcomes[&key].soon);
    let outcome = rec.reconcile_key(&key).await;
    assert!(outcome.soon);
    assert_eq!(phase(&rec, "home/alice/x.cf-status"), "Creating");

    rec.cloud()
        .stacks
        .finish_create("fd-alice-x", "CREATE_COMPLETE");
    let outcome = rec.reconcile_key(&key).await;
    assert!(!outcome.soon && outcome.error.is_none(), "{outcome:?}");
    assert_eq!(phase(&rec, "home/alice/x.cf-status"), "Ready");
    assert!(
        text(&rec, "home/alice/x.cf-created").starts_with("198.51.100."),
        "{}",
        text(&rec, "home/alice/x.cf-created")
    );
    assert_eq!(
        rec.cloud().stacks.mutations(),
        ["CreateStack fd-alice-x"],
        "exactly one create"
    );
}

#[tokio::test]
async fn a_failed_create_is_reported_with_the_event_reason_and_not_retried() {
    let rec = rec();
    *rec.cloud().stacks.create_status.lock().unwrap() = "ROLLBACK_COMPLETE".into();
    *rec.cloud().stacks.failure.lock().unwrap() =
        Some("Master: We currently do not have sufficient r4.large capacity".into());
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    let failed = text(&rec, "home/alice/x.cf-failed");
    assert!(failed.contains("sufficient r4.large capacity"), "{failed}");
    assert_eq!(phase(&rec, "home/alice/x.cf-status"), "Failed");
    assert_eq!(rec.cloud().stacks.mutations(), ["CreateStack fd-alice-x"]);
    assert_eq!(
        rec.cloud().mailer.as_ref().unwrap().subjects(),
        ["[flightdeck] cluster x of alice failed"]
    );

    // A changed request replaces the failed stack.
    *rec.cloud().stacks.create_status.lock().unwrap() = "CREATE_COMPLETE".into();
    rec.cloud()
        .store
        .insert("home/alice/x.cf-create", SEED.replace("\"25\"", "\"20\""));
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    assert_eq!(phase(&rec, "home/alice/x.cf-status"), "Ready");
    assert!(rec.cloud().store.text("home/alice/x.cf-failed").is_none());
}

#[tokio::test]
async fn one_keys_failure_never_stops_the_others() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.cloud().store.insert("home/bob/y.cf-create", SEED);
    rec.cloud()
        .stacks
        .fail("CreateStack", ErrorKind::Throttled, 1);
    let report = rec.resync(false, None).await.unwrap();
    let errors: Vec<_> = report
        .outcomes
        .iter()
        .filter(|(_, o)| o.error.is_some())
        .collect();
    assert_eq!(errors.len(), 1, "{report:?}");
    assert_eq!(
        rec.cloud().stacks.names().len(),
        1,
        "the other key went ahead"
    );
    rec.resync(false, None).await.unwrap();
    assert_eq!(rec.cloud().stacks.names(), ["fd-alice-x", "fd-bob-y"]);
}

#[tokio::test]
async fn a_failed_listing_plans_nothing_and_restarts_orphan_grace() {
    let rec = rec_with(settings(Duration::from_secs(1), 5));
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.cloud().store.remove("home/alice/x.cf-create");
    rec.resync(false, None).await.unwrap(); // orphan first seen
    tokio::time::sleep(Duration::from_millis(1100)).await;
    rec.cloud()
        .store
        .fail("ListObjectsV2", ErrorKind::Transient, 1);
    assert!(rec.resync(false, None).await.is_err());
    rec.resync(false, None).await.unwrap(); // seen again: grace starts over
    assert_eq!(
        rec.cloud().stacks.names(),
        ["fd-alice-x"],
        "no delete right after a failed listing"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    rec.resync(false, None).await.unwrap();
    assert!(
        rec.cloud().stacks.names().is_empty(),
        "deleted after a full grace of complete listings"
    );
}

#[tokio::test]
async fn when_every_request_vanishes_no_orphan_is_deleted() {
    let rec = rec_with(settings(Duration::from_secs(1), 2));
    for c in ["a", "b", "c"] {
        rec.cloud()
            .store
            .insert(&format!("home/alice/{c}.cf-create"), SEED);
    }
    rec.resync(false, None).await.unwrap();
    for c in ["a", "b", "c"] {
        rec.cloud()
            .store
            .remove(&format!("home/alice/{c}.cf-create"));
    }
    rec.resync(false, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = rec.resync(false, None).await.unwrap();
    assert_eq!(report.held_back, 3);
    assert_eq!(rec.cloud().stacks.names().len(), 3);
    assert!(
        rec.cloud()
            .stacks
            .mutations()
            .iter()
            .all(|m| !m.starts_with("DeleteStack"))
    );
    assert!(text(&rec, "home/alice/a.cf-status").contains("held back"));
}

#[tokio::test]
async fn a_hint_or_requeue_never_deletes_an_orphan() {
    let rec = rec_with(settings(Duration::from_secs(1), 5));
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.cloud().store.remove("home/alice/x.cf-create");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    rec.reconcile_key(&ClusterKey::new("alice", "x").unwrap())
        .await;
    assert_eq!(rec.cloud().stacks.names(), ["fd-alice-x"]);
}

#[tokio::test]
async fn stacks_of_another_install_are_never_touched() {
    let rec = rec_with(settings(Duration::from_secs(1), 5));
    let key = ClusterKey::new("alice", "x").unwrap();
    let mut tags = Identity::new("fd", "site-b").unwrap().tags(&key, "h");
    tags.insert(TAG_OWNER.into(), "site-b".into());
    rec.cloud().stacks.insert(StackView {
        name: "fd-alice-x".into(),
        id: "arn:other".into(),
        status: "CREATE_COMPLETE".into(),
        tags,
        ..StackView::default()
    });
    rec.cloud().store.insert("home/alice/x.cf-delete", "");
    rec.resync(false, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    rec.resync(false, None).await.unwrap();
    assert!(
        rec.cloud().stacks.mutations().is_empty(),
        "{:?}",
        rec.cloud().stacks.mutations()
    );

    // Asking to create under the taken name reports it instead.
    rec.cloud().store.remove("home/alice/x.cf-delete");
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    let failed = text(&rec, "home/alice/x.cf-failed");
    assert!(
        failed.contains("already exists and is not managed by flightdeck"),
        "{failed}"
    );
    assert_eq!(
        rec.cloud().stacks.get("fd-alice-x").unwrap().id,
        "arn:other"
    );
}

#[tokio::test]
async fn the_executor_rechecks_tags_before_deleting() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    let stack = rec.cloud().stacks.get("fd-alice-x").unwrap();
    let action = flightdeck_core::plan::Action::DeleteStack {
        key: ClusterKey::new("bob", "x").unwrap(),
        name: stack.name.clone(),
        id: stack.id.clone(),
        token: "t".into(),
        orphan: false,
    };
    let outcome = rec
        .execute(&ClusterKey::new("bob", "x").unwrap(), vec![action], None)
        .await;
    assert!(outcome.error.is_none());
    assert!(
        rec.cloud().stacks.get("fd-alice-x").is_some(),
        "bob's plan cannot delete alice's stack"
    );
}

#[tokio::test]
async fn cloudformation_refusing_a_request_is_reported_and_not_sent_again() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.cloud().stacks.refuse(
        "CreateStack",
        "Parameter 'ComputeMaxNodes' must be a number.",
        u32::MAX,
    );
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    assert!(text(&rec, "home/alice/x.cf-failed").contains("CloudFormation refused the request"));
    assert_eq!(phase(&rec, "home/alice/x.cf-status"), "Failed");
    let creates = rec
        .cloud()
        .stacks
        .calls()
        .iter()
        .filter(|c| c.starts_with("CreateStack"))
        .count();
    assert_eq!(creates, 1);
}

#[tokio::test]
async fn a_failed_email_never_blocks_reconciliation() {
    let rec = rec();
    rec.cloud().mailer.as_ref().unwrap().fail(10);
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    let report = rec.resync(false, None).await.unwrap();
    assert!(report.outcomes.values().all(|o| o.error.is_none()));
    assert_eq!(phase(&rec, "home/alice/x.cf-status"), "Ready");
}

#[tokio::test]
async fn unenrolled_user_is_told_and_nothing_is_created() {
    let rec = rec();
    rec.cloud().store.insert("home/carol/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    assert!(text(&rec, "home/carol/x.cf-failed").contains("not enrolled"));
    assert!(rec.cloud().stacks.mutations().is_empty());
}

#[tokio::test]
async fn dry_run_plans_without_writing() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.cloud().store.insert("home/alice/sub/y.cf-create", SEED);
    rec.cloud().store.clear_calls();
    let report = rec.resync(true, None).await.unwrap();
    assert!(!report.outcomes.is_empty() && !report.mistake_actions.is_empty());
    assert!(rec.cloud().store.writes().is_empty());
    assert!(rec.cloud().stacks.mutations().is_empty());
}

#[tokio::test]
async fn mistaken_requests_get_an_explanation_next_to_them() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/sub/y.cf-create", SEED);
    rec.cloud()
        .store
        .insert("home/alice/my_cluster.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    assert!(text(&rec, "home/alice/sub/y.cf-create.cf-failed").contains("home/alice/y.cf-create"));
    assert!(text(&rec, "home/alice/my_cluster.cf-create.cf-failed").contains("my-cluster"));
    rec.cloud().store.remove("home/alice/sub/y.cf-create");
    rec.resync(false, None).await.unwrap();
    assert!(
        rec.cloud()
            .store
            .text("home/alice/sub/y.cf-create.cf-failed")
            .is_none()
    );
    assert!(rec.cloud().stacks.mutations().is_empty());
}

#[tokio::test]
async fn without_a_login_output_the_address_comes_from_the_login_instance() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    let mut stack = rec.cloud().stacks.get("fd-alice-x").unwrap();
    stack.outputs.clear();
    rec.cloud().stacks.insert(stack);

    let report = rec.resync(false, None).await.unwrap();
    assert!(
        report.outcomes.values().all(|o| o.soon),
        "no address yet: look again soon"
    );
    assert!(text(&rec, "home/alice/x.cf-status").contains("waiting for the login address"));
    assert!(rec.cloud().store.text("home/alice/x.cf-created").is_none());

    *rec.cloud().instances.ip.lock().unwrap() = Some("192.0.2.10".into());
    rec.resync(false, None).await.unwrap();
    assert!(text(&rec, "home/alice/x.cf-created").starts_with("192.0.2.10\n"));
    assert_eq!(phase(&rec, "home/alice/x.cf-status"), "Ready");
}

#[tokio::test]
async fn a_failed_notification_is_retried_from_the_outbox_and_sent_once_across_restarts() {
    let rec = rec();
    rec.load_delivered().await.unwrap();
    rec.cloud().mailer.as_ref().unwrap().fail(2);
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap(); // ready: the send and its retry fail; the notice stays in the outbox
    assert!(rec.cloud().mailer.as_ref().unwrap().subjects().is_empty());
    assert!(
        rec.cloud()
            .store
            .keys()
            .iter()
            .any(|k| k.starts_with("flightdeck/outbox/"))
    );
    rec.resync(false, None).await.unwrap(); // retried from the outbox
    assert_eq!(
        rec.cloud().mailer.as_ref().unwrap().subjects(),
        ["[flightdeck] cluster x of alice is ready"]
    );
    assert!(
        !rec.cloud()
            .store
            .keys()
            .iter()
            .any(|k| k.starts_with("flightdeck/outbox/"))
    );
    assert!(
        rec.cloud()
            .store
            .keys()
            .iter()
            .any(|k| k.starts_with("flightdeck/notified/"))
    );

    // A restarted controller, seeing the same cluster with its markers gone, does not resend.
    let again = rec_with(settings(Duration::from_secs(600), 5));
    for key in rec.cloud().store.keys() {
        if !key.ends_with(".cf-created") && !key.ends_with(".cf-status") {
            again
                .cloud()
                .store
                .insert(&key, rec.cloud().store.text(&key).unwrap());
        }
    }
    for name in rec.cloud().stacks.names() {
        again
            .cloud()
            .stacks
            .insert(rec.cloud().stacks.get(&name).unwrap());
    }
    again.load_delivered().await.unwrap();
    again.resync(false, None).await.unwrap();
    assert!(
        again
            .cloud()
            .store
            .text("home/alice/x.cf-created")
            .is_some(),
        "the marker is written again"
    );
    assert!(
        again.cloud().mailer.as_ref().unwrap().subjects().is_empty(),
        "but the notice is not sent twice"
    );
}

#[tokio::test]
async fn every_stack_action_and_refusal_lands_in_the_ledger_which_is_never_rewritten() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.cloud().store.insert("home/carol/y.cf-create", SEED);
    rec.cloud().store.insert("home/bob/z.cf-create", "{ broken");
    rec.resync(false, None).await.unwrap();
    rec.cloud().store.insert("home/alice/x.cf-delete", "");
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    let objects: Vec<String> = rec
        .cloud()
        .store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("flightdeck/ledger/"))
        .collect();
    assert!(!objects.is_empty());
    let lines: Vec<serde_json::Value> = objects
        .iter()
        .flat_map(|k| {
            text(&rec, k)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let seen = |action: &str, user: &str, outcome: &str| {
        lines
            .iter()
            .any(|l| l["action"] == action && l["user"] == user && l["outcome"] == outcome)
    };
    assert!(seen("create_stack", "alice", "ok"), "{lines:?}");
    assert!(seen("delete_stack", "alice", "ok"), "{lines:?}");
    assert!(seen("remove_request", "alice", "ok"), "{lines:?}");
    assert!(seen("refuse", "carol", "not_enrolled"), "{lines:?}");
    assert!(seen("refuse", "bob", "malformed"), "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["time"].as_str().is_some_and(|t| t.ends_with('Z')))
    );
    let created = lines
        .iter()
        .find(|l| l["action"] == "create_stack")
        .unwrap();
    assert!(
        created["request_etag"]
            .as_str()
            .is_some_and(|e| e.len() == 32),
        "{created}"
    );
    // Written with put_new: a second write to the same name is refused, never overwritten.
    let first = &objects[0];
    let before = text(&rec, first);
    assert!(rec.cloud().store.put_new(first, "x").await.is_err());
    assert_eq!(text(&rec, first), before);
}

fn deletes(rec: &Rec) -> Vec<String> {
    rec.cloud()
        .stacks
        .mutations()
        .into_iter()
        .filter(|m| m.starts_with("DeleteStack"))
        .collect()
}

#[tokio::test]
async fn a_delete_terminates_the_clusters_nodes_first_and_deletes_the_stack_only_once_none_is_alive()
 {
    let rec = rec();
    let key = ClusterKey::new("alice", "x").unwrap();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.cloud()
        .instances
        .launch("fd-alice-x", &["i-node2", "i-node1"]);
    rec.cloud().instances.launch("fd-bob-y", &["i-bob"]);
    rec.cloud().store.insert("home/alice/x.cf-delete", "");

    let report = rec.resync(false, None).await.unwrap();
    assert_eq!(
        rec.cloud().instances.terminations(),
        ["TerminateInstances i-node1 i-node2"]
    );
    assert!(
        deletes(&rec).is_empty(),
        "no DeleteStack while a node is alive"
    );
    let outcome = &report.outcomes[&key];
    assert!(outcome.soon && outcome.error.is_none(), "{outcome:?}");
    assert_eq!(phase(&rec, "home/alice/x.cf-status"), "Deleting");
    assert!(text(&rec, "home/alice/x.cf-status").contains("deleting the cluster"));

    // Still shutting down: nothing more to ask, and still no DeleteStack.
    let outcome = rec.reconcile_key(&key).await;
    assert!(outcome.soon && outcome.error.is_none(), "{outcome:?}");
    assert_eq!(rec.cloud().instances.terminations().len(), 1);
    assert!(
        deletes(&rec).is_empty(),
        "no DeleteStack while a node is alive"
    );

    rec.cloud().instances.settle();
    rec.reconcile_key(&key).await;
    assert_eq!(deletes(&rec).len(), 1, "{:?}", rec.cloud().stacks.calls());
    rec.resync(false, None).await.unwrap();
    assert!(rec.cloud().stacks.names().is_empty());
    assert!(text(&rec, "home/alice/x.cf-deleted").contains("deleted"));
    assert_eq!(
        rec.cloud().instances.state("i-bob"),
        Some(flightdeck_core::nodes::InstanceState::Running),
        "another cluster's node is left alone"
    );

    let metrics = rec.metrics().render();
    assert!(
        metrics.contains("flightdeck_actions_total{action=\"terminate_nodes\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    let ledger: String = rec
        .cloud()
        .store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("flightdeck/ledger/"))
        .map(|k| text(&rec, &k))
        .collect();
    assert_eq!(
        ledger.matches("\"action\":\"terminate_nodes\"").count(),
        2,
        "written ahead, then its outcome: {ledger}"
    );
    assert_eq!(
        ledger.matches("\"action\":\"delete_stack\"").count(),
        2,
        "the delete is audited once, when it is made (ahead, then its outcome): {ledger}"
    );
}

#[tokio::test]
async fn an_orphans_nodes_are_terminated_before_its_stack_is_deleted() {
    let rec = rec_with(settings(Duration::from_secs(1), 5));
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.cloud().instances.launch("fd-alice-x", &["i-1"]);
    rec.cloud().store.remove("home/alice/x.cf-create");
    rec.resync(false, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    rec.resync(false, None).await.unwrap();
    assert_eq!(
        rec.cloud().instances.terminations(),
        ["TerminateInstances i-1"]
    );
    assert!(deletes(&rec).is_empty());
    rec.cloud().instances.settle();
    rec.resync(false, None).await.unwrap();
    assert_eq!(deletes(&rec).len(), 1);
}

#[tokio::test]
async fn a_failed_terminate_stops_the_delete_and_is_tried_again() {
    let rec = rec();
    let key = ClusterKey::new("alice", "x").unwrap();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.cloud().instances.launch("fd-alice-x", &["i-1"]);
    rec.cloud()
        .instances
        .fail("TerminateInstances", ErrorKind::Throttled, 1);
    rec.cloud().store.insert("home/alice/x.cf-delete", "");
    let report = rec.resync(false, None).await.unwrap();
    assert!(report.outcomes[&key].error.is_some());
    assert!(deletes(&rec).is_empty());

    rec.reconcile_key(&key).await;
    assert_eq!(rec.cloud().instances.terminations().len(), 2);
    assert!(deletes(&rec).is_empty(), "i-1 is still shutting down");
    assert!(
        rec.metrics()
            .render()
            .contains("flightdeck_actions_total{action=\"terminate_nodes\",outcome=\"error\"} 1")
    );
}

#[tokio::test]
async fn no_instance_of_a_stack_that_is_not_ours_is_looked_up_or_terminated() {
    // Another user's stack, named in this user's plan.
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.cloud().instances.launch("fd-alice-x", &["i-alice"]);
    let stack = rec.cloud().stacks.get("fd-alice-x").unwrap();
    let bob = ClusterKey::new("bob", "x").unwrap();
    let action = flightdeck_core::plan::Action::DeleteStack {
        key: bob.clone(),
        name: stack.name.clone(),
        id: stack.id.clone(),
        token: "t".into(),
        orphan: false,
    };
    let outcome = rec.execute(&bob, vec![action], None).await;
    assert!(outcome.error.is_none());

    // Another install's stack, with a .cf-delete.
    let other = ClusterKey::new("alice", "y").unwrap();
    let mut tags = Identity::new("fd", "site-b").unwrap().tags(&other, "h");
    tags.insert(TAG_OWNER.into(), "site-b".into());
    rec.cloud().stacks.insert(StackView {
        name: "fd-alice-y".into(),
        id: "arn:other".into(),
        status: "CREATE_COMPLETE".into(),
        tags,
        ..StackView::default()
    });
    rec.cloud().instances.launch("fd-alice-y", &["i-other"]);
    rec.cloud().store.insert("home/alice/y.cf-delete", "");
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();

    let calls = rec.cloud().instances.calls();
    assert!(
        !calls.iter().any(|c| c.starts_with("TerminateInstances")
            || c == "DescribeInstances fd-alice-x"
            || c == "DescribeInstances fd-alice-y"),
        "{calls:?}"
    );
    assert!(deletes(&rec).is_empty());
}
