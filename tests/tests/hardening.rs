//! Issue 8, hardening, end to end on the local AWS emulator: attacks on the controller by a
//! hostile or careless user, a restart or a refusing API, each test named after the attack.
//! Users act with the real `aws` CLI (or the SDK, for bulk writes); flightdeck runs on the
//! real adapters, driven pass by pass, and the results are read back from S3 and
//! CloudFormation.
//!
//! The 64 MiB read is in `bounded_read.rs`: it measures this process's memory, so nothing
//! else may run beside it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use flightdeck_core::identity::TAG_EXPIRES;
use flightdeck_core::key::ClusterKey;
use flightdeck_tests::counted::{Rec, reconciler};
use flightdeck_tests::site::{Site, emulator, root, seed};

/// A site whose policy is the shipped one with `extra` appended.
async fn site_with_policy(extra: &str) -> (Site, std::path::PathBuf) {
    let mut site = Site::new().await;
    let policy = std::env::temp_dir().join(format!("{}.toml", flightdeck_tests::unique("policy")));
    let shipped = std::fs::read_to_string(root().join("policies/limits.toml")).unwrap();
    std::fs::write(&policy, format!("{shipped}\n{extra}")).unwrap();
    site.env
        .push(("FLIGHTDECK_POLICY".into(), policy.display().to_string()));
    (site, policy)
}

/// The seed request with `key` set to `value`, or left out when `value` is `None`.
fn seed_with(key: &str, value: Option<&str>) -> String {
    let mut request: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&seed()).unwrap();
    match value {
        Some(v) => request.insert(key.to_owned(), v.into()),
        None => request.remove(key),
    };
    serde_json::to_string_pretty(&request).unwrap()
}

/// Every key under `prefix` in the site's bucket (all pages).
async fn keys_under(site: &Site, prefix: &str) -> Vec<String> {
    let mut pages = emulator()
        .s3()
        .await
        .list_objects_v2()
        .bucket(&site.bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut keys = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.expect("listing the bucket");
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    keys
}

async fn pass(rec: &Rec) {
    rec.resync(false, None).await.expect("a full pass");
}

#[tokio::test]
async fn rewriting_an_unchanged_failed_request_retries_it() {
    let site = Site::new().await;
    let rec = reconciler(&site).await;
    rec.cloud()
        .stacks
        .creates_to_refuse
        .store(1, Ordering::SeqCst);
    site.user_writes("alice/x.cf-create", &seed());
    pass(&rec).await;
    pass(&rec).await;
    let failed = site.read("alice/x.cf-failed").await;
    assert!(
        failed
            .as_deref()
            .is_some_and(|f| f.contains("CloudFormation refused")),
        "{failed:?}"
    );
    assert!(site.stacks().await.is_empty(), "refused: no stack");
    pass(&rec).await;
    assert!(
        site.stacks().await.is_empty(),
        "a refusal sticks until the file is written again"
    );

    // The documented retry: write the same file again, unchanged. Its ETag (the MD5 of the
    // content) stays; only its last-modified time moves, and S3 counts that in seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    site.user_writes("alice/x.cf-create", &seed());
    pass(&rec).await;
    pass(&rec).await;
    let stacks = site.stacks().await;
    assert_eq!(
        stacks.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        [site.stack_name("alice", "x")],
        "the rewritten request is tried again"
    );
    assert_eq!(site.phase("alice/x.cf-status").await, "Ready");
}

#[tokio::test]
async fn dropping_master_system_volume_size_is_refused_with_a_cf_failed_naming_it() {
    let site = Site::new().await;
    let rec = reconciler(&site).await;
    site.user_writes(
        "alice/x.cf-create",
        &seed_with("MasterSystemVolumeSize", Some("40")),
    );
    pass(&rec).await;
    pass(&rec).await;
    assert_eq!(site.phase("alice/x.cf-status").await, "Ready");
    let before = site.stacks().await.remove(0);
    assert_eq!(before.parameters["MasterSystemVolumeSize"], "40");

    // Leaving the key out means the template's default (16): a change that cannot be made
    // in place, however it is spelled.
    site.user_writes(
        "alice/x.cf-create",
        &seed_with("MasterSystemVolumeSize", None),
    );
    pass(&rec).await;
    let failed = site
        .read("alice/x.cf-failed")
        .await
        .expect("alice/x.cf-failed written");
    assert!(
        failed.contains("`MasterSystemVolumeSize` cannot change on a running cluster"),
        "{failed}"
    );
    assert!(failed.contains("leaves it out"), "{failed}");
    let after = site.stacks().await.remove(0);
    assert_eq!(after.id, before.id, "the same stack");
    assert_eq!(after.parameters["MasterSystemVolumeSize"], "40");
    assert_eq!(
        after.last_change, before.last_change,
        "the stack is untouched"
    );
    assert_eq!(rec.cloud().stacks.updates(), 0, "no UpdateStack");
    assert_eq!(site.phase("alice/x.cf-status").await, "Ready");
}

#[tokio::test]
async fn a_request_hinted_right_after_a_restart_cannot_exceed_the_quota() {
    let (site, policy) = site_with_policy("[users.alice]\nclusters = 1\n").await;
    let first = reconciler(&site).await;
    site.user_writes("alice/x.cf-create", &seed());
    pass(&first).await;
    assert_eq!(site.stacks().await.len(), 1, "alice has her one cluster");
    drop(first);

    // A restarted controller: nothing in memory, no full listing of the stacks yet.
    let rec = reconciler(&site).await;
    site.user_writes("alice/y.cf-create", &seed().replace("\"25\"", "\"4\""));
    let y = ClusterKey::new("alice", "y").unwrap();
    let hinted = rec.reconcile_key(&y).await;
    assert!(
        hinted.soon,
        "looked at again once the usage is known: {hinted:?}"
    );
    let stacks = site.stacks().await;
    assert_eq!(
        stacks.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        [site.stack_name("alice", "x")],
        "no second stack before the usage is known ({hinted:?})"
    );

    pass(&rec).await;
    let refused = site.read("alice/y.cf-failed").await;
    assert!(
        refused
            .as_deref()
            .is_some_and(|r| r.contains("your limit is 1")),
        "{refused:?}"
    );
    assert_eq!(site.stacks().await.len(), 1, "still one stack");
    let _ = std::fs::remove_file(policy);
}

#[tokio::test]
async fn a_running_cluster_made_invalid_still_expires_on_time() {
    let site = Site::new().await;
    let rec = reconciler(&site).await;
    site.user_writes("alice/short.cf-create", &seed_with("Lifetime", Some("8s")));
    pass(&rec).await;
    pass(&rec).await;
    assert_eq!(site.phase("alice/short.cf-status").await, "Ready");
    let stacks = site.stacks().await;
    assert!(
        stacks[0].tags.contains_key(TAG_EXPIRES),
        "the end is fixed at create time: {:?}",
        stacks[0].tags
    );

    // alice breaks the request of her running cluster: its lifetime still ends.
    site.user_writes("alice/short.cf-create", "{not json");
    pass(&rec).await;
    assert_eq!(site.stacks().await.len(), 1, "not before its end");
    tokio::time::sleep(Duration::from_secs(9)).await;
    pass(&rec).await;
    assert!(
        site.read("alice/short.cf-delete").await.is_some(),
        "its lifetime ended: deleted as if alice had written short.cf-delete"
    );
    for _ in 0..3 {
        pass(&rec).await;
    }
    let left = site.stacks().await;
    assert!(
        left.is_empty(),
        "deleted at the end of its lifetime: {left:?}"
    );
    assert!(
        site.read("alice/short.cf-deleted").await.is_some(),
        "alice/short.cf-deleted written"
    );
}

#[tokio::test]
async fn misnamed_files_of_one_user_do_not_delay_another_users_create() {
    let site = Site::new().await;
    let rec = reconciler(&site).await;
    let per_user_work = rec.settings().guards.per_user_work;
    let s3 = emulator().s3().await;
    let seed = seed();
    let names: Vec<String> = (0..2000)
        .map(|i| format!("home/mallory/c{i}.cf_create"))
        .collect();
    for batch in names.chunks(50) {
        let mut puts = tokio::task::JoinSet::new();
        for key in batch {
            let put = s3
                .put_object()
                .bucket(&site.bucket)
                .key(key)
                .body(seed.clone().into_bytes().into());
            puts.spawn(put.send());
        }
        while let Some(done) = puts.join_next().await {
            done.unwrap().expect("putting mallory's file");
        }
    }
    site.user_writes("bob/b.cf-create", &seed);

    pass(&rec).await;
    let stacks = site.stacks().await;
    assert_eq!(
        stacks.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        [site.stack_name("bob", "b")],
        "bob's cluster is created in the same pass"
    );
    let explained = keys_under(&site, "home/mallory/")
        .await
        .iter()
        .filter(|k| k.ends_with(".cf-failed"))
        .count();
    assert!(
        (1..=per_user_work).contains(&explained),
        "{explained} explanations for mallory in one pass; at most {per_user_work} (reconcile.per_user_work)"
    );
}

#[tokio::test]
async fn a_forged_cf_created_with_no_stack_sends_no_email() {
    let site = Site::new().await;
    let rec = reconciler(&site).await;
    assert!(
        rec.settings().notify.is_some(),
        "notifications are on for this site"
    );
    // A real cluster beside the forgery: its notice shows the mailer works here.
    site.user_writes("bob/real.cf-create", &seed());
    for round in 0..4 {
        site.user_writes(
            "alice/ghost.cf-created",
            &format!("10.0.0.{round}\nssh alice@10.0.0.{round}\n"),
        );
        let phase = ["Ready", "Failed", "Deleted", "Ready"][round];
        site.user_writes(
            "alice/ghost.cf-status",
            &serde_json::json!({ "phase": phase, "round": round }).to_string(),
        );
        pass(&rec).await;
        pass(&rec).await;
    }
    let stacks = site.stacks().await;
    assert_eq!(
        stacks.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        [site.stack_name("bob", "real")],
        "no stack for the forgery"
    );
    let subjects = rec.cloud().mailer.as_ref().unwrap().subjects();
    assert!(
        subjects
            .iter()
            .any(|s| s == "[flightdeck] cluster real of bob is ready"),
        "the real cluster's notice went out: {subjects:?}"
    );
    assert!(
        subjects.iter().all(|s| !s.contains("ghost")),
        "no email about a cluster that does not exist: {subjects:?}"
    );
}
