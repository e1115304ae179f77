//! What a pass costs as the bucket and the clusters grow: listings read page by page, one
//! listing of the stacks per busy interval however many clusters are in progress, and a
//! look at one cluster that describes only the names it must.

use flightdeck_core::key::ClusterKey;

use std::time::Duration;

use super::tests::{Rec, SEED, rec_with, settings, text};
use crate::fake::{OBJECTS_PAGE, STACKS_PAGE};
use crate::queue::WorkQueue;
use crate::run::requeue;

/// A reconciler that reads every request of a user in one pass, and sends no email (a
/// notice held back by a user's email budget waits in the outbox, which each pass reads).
fn rec() -> Rec {
    let mut settings = settings(Duration::from_secs(600), 5);
    settings.guards.per_user_work = 1_000;
    settings.notify = None;
    rec_with(settings)
}

/// `per_user` requests each for alice and bob, and `data` files of theirs besides.
fn load(rec: &Rec, per_user: usize, data: usize) -> Vec<ClusterKey> {
    let mut keys = Vec::new();
    for user in ["alice", "bob"] {
        for i in 0..per_user {
            let cluster = format!("c{i:03}");
            rec.cloud()
                .store
                .insert(&format!("home/{user}/{cluster}.cf-create"), SEED);
            keys.push(ClusterKey::new(user, &cluster).unwrap());
        }
    }
    for i in 0..data {
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        rec.cloud().store.insert(
            &format!("home/{user}/data/run-{:04}/out-{i}.h5", i / 7),
            "results",
        );
    }
    keys
}

fn calls_of(calls: &[String], operation: &str) -> usize {
    calls.iter().filter(|c| c.starts_with(operation)).count()
}

#[tokio::test]
async fn a_quiet_pass_costs_one_list_call_per_thousand_keys_and_one_per_page_of_stacks() {
    let rec = rec();
    let keys = load(&rec, 75, 2_600);
    for _ in 0..3 {
        rec.resync(false, None).await.unwrap();
    }
    assert!(text(&rec, "home/bob/c074.cf-created").starts_with("198.51.100."));
    let home_keys = rec
        .cloud()
        .store
        .keys()
        .iter()
        .filter(|k| k.starts_with("home/"))
        .count();
    assert_eq!(
        home_keys,
        2 * 75 * 3 + 2_600,
        "request, .cf-created, .cf-status"
    );
    rec.cloud().store.clear_calls();
    rec.cloud().stacks.clear_calls();

    let report = rec.resync(false, None).await.unwrap();

    assert_eq!(report.outcomes.len(), keys.len());
    let store = rec.cloud().store.calls();
    assert_eq!(
        store,
        vec!["ListObjectsV2 home/".to_owned(); home_keys.div_ceil(OBJECTS_PAGE)],
        "no GetObject, PutObject or DeleteObject"
    );
    let stacks = rec.cloud().stacks.calls();
    assert_eq!(
        stacks,
        vec!["DescribeStacks *".to_owned(); keys.len().div_ceil(STACKS_PAGE)]
    );
}

#[tokio::test]
async fn clusters_creating_are_watched_with_one_stack_listing_and_only_changed_ones_are_looked_at()
{
    let rec = rec();
    *rec.cloud().stacks.create_status.lock().unwrap() = "CREATE_IN_PROGRESS".into();
    let keys = load(&rec, 120, 0);
    let queue = WorkQueue::new(rec.metrics().clone());
    let report = rec.resync(false, None).await.unwrap();
    for (key, outcome) in &report.outcomes {
        let waiting = outcome.waits_on.as_ref().map(|w| w.status.as_str());
        assert_eq!(waiting, Some("CREATE_IN_PROGRESS"), "{key}");
        requeue(&rec, &queue, key, outcome);
    }
    assert_eq!(rec.watching(), keys.len());
    assert_eq!(queue.depth(), 0, "no cluster waits on a timer of its own");
    rec.cloud().stacks.clear_calls();

    let changed = rec.poll_stacks().await.unwrap();

    assert!(changed.is_empty(), "{changed:?}");
    assert_eq!(
        rec.cloud().stacks.calls(),
        vec!["DescribeStacks *".to_owned(); keys.len().div_ceil(STACKS_PAGE)],
        "one listing for 240 clusters creating"
    );

    for cluster in ["c007", "c100"] {
        rec.cloud()
            .stacks
            .finish_create(&format!("fd-bob-{cluster}"), "CREATE_COMPLETE");
    }
    let mut changed = rec.poll_stacks().await.unwrap();
    changed.sort();
    assert_eq!(
        changed,
        [
            ClusterKey::new("bob", "c007").unwrap(),
            ClusterKey::new("bob", "c100").unwrap()
        ]
    );
    rec.cloud().stacks.clear_calls();
    for key in &changed {
        let outcome = rec.reconcile_key(key).await;
        assert!(outcome.error.is_none(), "{outcome:?}");
        requeue(&rec, &queue, key, &outcome);
    }
    assert!(text(&rec, "home/bob/c007.cf-created").starts_with("198.51.100."));
    assert_eq!(
        calls_of(&rec.cloud().stacks.calls(), "DescribeStacks"),
        0,
        "the listing's view of each stack was used"
    );
    assert_eq!(rec.watching(), keys.len() - 2);
}

#[tokio::test]
async fn a_few_clusters_in_progress_among_many_stacks_are_described_each_instead_of_listed() {
    let rec = rec();
    load(&rec, 150, 0);
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap(); // lists the 300 stacks: 3 pages
    *rec.cloud().stacks.create_status.lock().unwrap() = "CREATE_IN_PROGRESS".into();
    let new = ClusterKey::new("alice", "new").unwrap();
    rec.cloud().store.insert("home/alice/new.cf-create", SEED);
    let queue = WorkQueue::new(rec.metrics().clone());
    let outcome = rec.reconcile_key(&new).await;
    requeue(&rec, &queue, &new, &outcome);
    assert_eq!(rec.watching(), 1);
    rec.cloud().stacks.clear_calls();

    assert!(rec.poll_stacks().await.unwrap().is_empty());
    assert_eq!(
        rec.cloud().stacks.calls(),
        ["DescribeStacks fd-alice-new"],
        "one call, not the 3 pages of 301 stacks"
    );
    rec.cloud()
        .stacks
        .finish_create("fd-alice-new", "CREATE_COMPLETE");
    assert_eq!(rec.poll_stacks().await.unwrap(), [new]);
}

#[tokio::test]
async fn a_look_at_one_cluster_describes_the_older_name_only_where_the_last_pass_saw_one() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    let alice_y = ClusterKey::new("alice", "y").unwrap();
    // Before any full pass, nothing is known: both names are described.
    rec.cloud().stacks.clear_calls();
    rec.reconcile_key(&alice_y).await;
    assert_eq!(
        rec.cloud().stacks.calls(),
        ["DescribeStacks fd-alice-y", "DescribeStacks y"]
    );
    rec.resync(false, None).await.unwrap();
    rec.cloud().stacks.clear_calls();
    rec.reconcile_key(&alice_y).await;
    assert_eq!(rec.cloud().stacks.calls(), ["DescribeStacks fd-alice-y"]);
}

#[tokio::test]
async fn a_failed_look_is_not_watched_and_a_poll_that_fails_keeps_the_watch() {
    let rec = rec();
    *rec.cloud().stacks.create_status.lock().unwrap() = "CREATE_IN_PROGRESS".into();
    load(&rec, 3, 0);
    let queue = WorkQueue::new(rec.metrics().clone());
    let report = rec.resync(false, None).await.unwrap();
    for (key, outcome) in &report.outcomes {
        requeue(&rec, &queue, key, outcome);
    }
    assert_eq!(rec.watching(), 6);
    rec.cloud()
        .stacks
        .fail("DescribeStacks", crate::ports::ErrorKind::Transient, 1);
    assert!(rec.poll_stacks().await.is_err());
    assert_eq!(rec.watching(), 6);
    let alice = ClusterKey::new("alice", "c000").unwrap();
    rec.cloud()
        .store
        .fail("ListObjectsV2", crate::ports::ErrorKind::Transient, 1);
    let outcome = rec.reconcile_key(&alice).await;
    assert!(outcome.error.is_some());
    requeue(&rec, &queue, &alice, &outcome);
    assert_eq!(rec.watching(), 5, "an error backs off on a timer instead");
    assert_eq!(queue.depth(), 1);
}
