//! Attacks on the reconciler by a hostile or careless user, a crash, a clock or a flaky
//! API, each named after the attack, over the in-memory fakes.

use super::tests::{SEED, phase, rec, text};

#[tokio::test]
async fn rewriting_a_refused_request_unchanged_retries_it() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.cloud().stacks.refuse(
        "CreateStack",
        "Parameter 'ComputeMaxNodes' must be a number.",
        1,
    );
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    assert!(text(&rec, "home/alice/x.cf-failed").contains("CloudFormation refused"));
    assert!(rec.cloud().stacks.names().is_empty());

    // The documented retry: write the same file again.
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    assert_eq!(rec.cloud().stacks.names(), ["fd-alice-x"]);
    assert_eq!(phase(&rec, "home/alice/x.cf-status"), "Ready");
}

#[tokio::test]
async fn a_template_error_or_a_busy_stack_never_becomes_a_sticky_refusal() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.cloud().stacks.refuse(
        "CreateStack",
        "Template format error: Unresolved resource dependencies [Master] in the Resources block of the template",
        2,
    );
    for _ in 0..2 {
        let report = rec.resync(false, None).await.unwrap();
        let outcome = report.outcomes.values().next().unwrap();
        assert!(outcome.error.is_some(), "retried with backoff: {outcome:?}");
        assert!(
            rec.cloud().store.text("home/alice/x.cf-failed").is_none(),
            "the install's fault is not the user's to read"
        );
    }
    // Fixed by the administrators: the same request goes through, unwritten by the user.
    rec.resync(false, None).await.unwrap();
    assert_eq!(rec.cloud().stacks.names(), ["fd-alice-x"]);
    assert!(
        rec.metrics()
            .render()
            .contains("flightdeck_actions_total{action=\"create_stack\",outcome=\"error\"} 2"),
        "{}",
        rec.metrics().render()
    );
}

#[tokio::test]
async fn a_request_hinted_right_after_a_restart_cannot_exceed_the_quota() {
    let mut settings = super::tests::settings(std::time::Duration::from_secs(600), 5);
    settings.policy = flightdeck_core::policy::Policy::parse(&format!(
        "{}[users.alice]\nclusters = 1\n",
        super::tests::policy_text()
    ))
    .unwrap();
    let rec = super::tests::rec_with(settings.clone());
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    assert_eq!(rec.cloud().stacks.names(), ["fd-alice-x"]);

    // A new controller process: same cloud, nothing in memory.
    let restarted = super::tests::restarted(rec, settings);
    restarted
        .cloud()
        .store
        .insert("home/alice/y.cf-create", SEED);
    let key = flightdeck_core::key::ClusterKey::new("alice", "y").unwrap();
    let hinted = restarted.reconcile_key(&key).await;
    assert!(
        hinted.soon,
        "looked at again once usage is known: {hinted:?}"
    );
    assert_eq!(restarted.cloud().stacks.names(), ["fd-alice-x"]);

    restarted.resync(false, None).await.unwrap();
    restarted.reconcile_key(&key).await;
    assert_eq!(restarted.cloud().stacks.names(), ["fd-alice-x"]);
    assert!(text(&restarted, "home/alice/y.cf-failed").contains("your limit is 1"));
}

#[tokio::test]
async fn a_huge_object_swapped_in_after_the_listing_is_never_read() {
    let rec = rec();
    let key = "home/alice/x.cf-create";
    rec.cloud().store.insert(key, SEED);
    let huge = vec![b' '; 64 * 1024 * 1024];
    rec.cloud().store.race("GetObject", key, &huge);
    let report = rec.resync(false, None).await.unwrap();
    let outcome = report.outcomes.values().next().unwrap();
    assert!(
        outcome
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("changed after it was listed")),
        "the version listed is gone: look again ({outcome:?})"
    );
    assert!(rec.cloud().stacks.names().is_empty());
    rec.resync(false, None).await.unwrap();
    assert!(
        text(&rec, "home/alice/x.cf-failed")
            .contains("the request is 67108864 bytes; the limit is 16384 bytes"),
        "{}",
        text(&rec, "home/alice/x.cf-failed")
    );
    assert!(rec.cloud().stacks.names().is_empty());
}

#[tokio::test]
async fn a_request_written_again_during_its_delete_is_not_removed() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.cloud().store.insert("home/alice/x.cf-delete", "");
    rec.resync(false, None).await.unwrap(); // the stack is deleted
    assert!(rec.cloud().stacks.names().is_empty());
    // While flightdeck tidies up, alice asks for the cluster again with new settings.
    let again = SEED.replace("\"25\"", "\"4\"");
    rec.cloud()
        .store
        .race("DeleteObject", "home/alice/x.cf-create", &again);
    rec.resync(false, None).await.unwrap();
    assert_eq!(
        rec.cloud().store.text("home/alice/x.cf-create").as_deref(),
        Some(again.as_str()),
        "the new request survives"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pass_stuck_on_a_call_that_never_answers_is_stopped_logged_and_counted() {
    let rec = rec();
    let queue = crate::queue::WorkQueue::new(rec.metrics().clone());
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    // alice's next look lists her cluster's files: that call never answers.
    rec.cloud().store.hang("home/");
    let stopped = crate::run::pass(&rec, Some(&queue)).await;
    let error = stopped.expect_err("stopped at the deadline");
    assert!(error.message.contains("reconcile.pass_deadline"), "{error}");
    assert!(
        rec.metrics()
            .render()
            .contains("flightdeck_resyncs_total{outcome=\"overdue\"} 1"),
        "{}",
        rec.metrics().render()
    );
}

#[tokio::test]
async fn a_failed_pass_is_counted() {
    let rec = rec();
    rec.cloud()
        .store
        .fail("ListObjectsV2", crate::ports::ErrorKind::Transient, 1);
    assert!(crate::run::pass(&rec, None).await.is_err());
    assert!(
        rec.metrics()
            .render()
            .contains("flightdeck_resyncs_total{outcome=\"error\"} 1")
    );
}

/// Gives alice's running cluster `cluster` a lifetime that ends `in_secs` from now.
fn ends_in(rec: &super::tests::Rec, cluster: &str, in_secs: i64) {
    let mut stack = rec
        .cloud()
        .stacks
        .get(&format!("fd-alice-{cluster}"))
        .unwrap();
    stack.tags.insert(
        flightdeck_core::identity::TAG_EXPIRES.into(),
        (crate::reconcile::unix_now() + in_secs).to_string(),
    );
    rec.cloud().stacks.insert(stack);
}

async fn running(rec: &super::tests::Rec, clusters: &[&str], in_secs: i64) {
    for c in clusters {
        rec.cloud()
            .store
            .insert(&format!("home/alice/{c}.cf-create"), SEED);
    }
    rec.resync(false, None).await.unwrap();
    for c in clusters {
        ends_in(rec, c, in_secs);
    }
    rec.resync(false, None).await.unwrap(); // seen before its end
}

#[tokio::test]
async fn a_running_cluster_whose_request_is_made_invalid_still_expires() {
    let rec = rec();
    running(&rec, &["x"], 1).await;
    rec.cloud()
        .store
        .insert("home/alice/x.cf-create", "{not json");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    rec.resync(false, None).await.unwrap();
    assert!(
        rec.cloud().store.text("home/alice/x.cf-delete").is_some(),
        "{:?}",
        rec.cloud().store.keys()
    );
    rec.resync(false, None).await.unwrap();
    assert!(rec.cloud().stacks.names().is_empty());
}

#[tokio::test]
async fn a_cluster_first_seen_past_its_end_is_warned_and_given_a_grace() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    ends_in(&rec, "x", -100);
    // A new controller process sees it for the first time, past its end.
    let restarted = super::tests::restarted(
        rec,
        super::tests::settings(std::time::Duration::from_secs(600), 5),
    );
    restarted.resync(false, None).await.unwrap();
    restarted.resync(false, None).await.unwrap();
    assert!(
        restarted
            .cloud()
            .store
            .text("home/alice/x.cf-delete")
            .is_none()
    );
    assert_eq!(restarted.cloud().stacks.names(), ["fd-alice-x"]);
    assert!(
        restarted
            .cloud()
            .mailer
            .as_ref()
            .unwrap()
            .subjects()
            .iter()
            .any(|s| s.ends_with("will be deleted soon")),
        "{:?}",
        restarted.cloud().mailer.as_ref().unwrap().subjects()
    );
}

#[tokio::test]
async fn no_cluster_expires_while_the_clock_disagrees_with_aws() {
    let rec = rec();
    running(&rec, &["x"], 1).await;
    rec.cloud()
        .store
        .offset
        .store(600, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    rec.resync(false, None).await.unwrap();
    assert!(rec.cloud().store.text("home/alice/x.cf-delete").is_none());
    assert!(
        rec.metrics()
            .render()
            .contains("flightdeck_expiry_deletions_held_back{reason=\"clock_skew\"} 1")
    );
    rec.cloud()
        .store
        .offset
        .store(3, std::sync::atomic::Ordering::SeqCst);
    rec.resync(false, None).await.unwrap();
    assert!(rec.cloud().store.text("home/alice/x.cf-delete").is_some());
}

#[tokio::test]
async fn more_lifetimes_ending_at_once_than_the_cap_expire_none() {
    let mut settings = super::tests::settings(std::time::Duration::from_secs(600), 5);
    settings.guards.max_expiry_deletes = 1;
    let rec = super::tests::rec_with(settings);
    running(&rec, &["x", "y"], 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    rec.resync(false, None).await.unwrap();
    assert!(rec.cloud().store.text("home/alice/x.cf-delete").is_none());
    assert!(rec.cloud().store.text("home/alice/y.cf-delete").is_none());
    assert!(
        rec.metrics()
            .render()
            .contains("flightdeck_expiry_deletions_held_back{reason=\"cap\"} 2")
    );
}

#[tokio::test]
async fn forged_cf_created_files_with_no_stack_send_no_email() {
    let rec = rec();
    for round in 0..5 {
        for c in ["ghost", "phantom"] {
            rec.cloud().store.insert(
                &format!("home/alice/{c}.cf-created"),
                format!("198.51.100.{round}\n"),
            );
            rec.cloud().store.insert(
                &format!("home/alice/{c}.cf-status"),
                format!("{{\"n\": {round}}}"),
            );
        }
        rec.resync(false, None).await.unwrap();
    }
    assert_eq!(
        rec.cloud().mailer.as_ref().unwrap().subjects(),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_deletion_flightdeck_saw_is_notified_once() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    rec.cloud().store.insert("home/alice/x.cf-delete", "");
    for _ in 0..3 {
        rec.resync(false, None).await.unwrap();
    }
    assert_eq!(super::tests::emails_ending(&rec, "is deleted"), 1);
}

#[tokio::test]
async fn one_user_cannot_flood_the_operators_with_notices() {
    let mut settings = super::tests::settings(std::time::Duration::from_secs(600), 5);
    settings.guards.notices_per_user_hour = 2;
    let rec = super::tests::rec_with(settings);
    for c in ["a", "b", "c", "d"] {
        rec.cloud()
            .store
            .insert(&format!("home/alice/{c}.cf-create"), SEED);
    }
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    assert_eq!(rec.cloud().mailer.as_ref().unwrap().subjects().len(), 2);
    assert!(
        rec.metrics()
            .render()
            .contains("flightdeck_notifications_total{event=\"ready\",outcome=\"rate_limited\"}")
    );
    assert!(
        rec.cloud()
            .store
            .keys()
            .iter()
            .any(|k| k.starts_with("flightdeck/outbox/")),
        "the rest wait in the outbox"
    );
}

#[tokio::test]
async fn thousands_of_one_users_files_do_not_delay_another_users_create() {
    let rec = rec();
    for i in 0..2000 {
        rec.cloud()
            .store
            .insert(&format!("home/mallory/c{i}.cf_create"), SEED);
    }
    for i in 0..300 {
        rec.cloud().store.insert(
            &format!("home/mallory/r{i}.cf-create"),
            format!("{{\"n\": {i}"),
        );
    }
    rec.cloud().store.insert("home/bob/b.cf-create", SEED);
    rec.cloud().store.insert(
        "cust/customizer/bob/configure.d/authorized_keys",
        "ssh-ed25519 AAAA",
    );
    let report = rec.resync(false, None).await.unwrap();
    assert_eq!(rec.cloud().stacks.names(), ["fd-bob-b"], "in one pass");
    let calls = rec.cloud().store.calls();
    let reads = calls
        .iter()
        .filter(|c| c.starts_with("GetObject home/mallory/"))
        .count();
    assert_eq!(reads, 50, "reconcile.per_user_work requests read");
    let explained = calls
        .iter()
        .filter(|c| {
            c.starts_with("PutObject home/mallory/c") && c.ends_with(".cf_create.cf-failed")
        })
        .count();
    assert_eq!(explained, 50, "and as many explanations written");
    assert_eq!(report.outcomes.values().filter(|o| o.deferred).count(), 250);

    // The next passes go on where this one stopped.
    for _ in 0..5 {
        rec.resync(false, None).await.unwrap();
    }
    assert!(
        rec.cloud()
            .store
            .text("home/mallory/r299.cf-failed")
            .is_some()
    );
    let explained = rec
        .cloud()
        .store
        .keys()
        .iter()
        .filter(|k| k.ends_with(".cf_create.cf-failed"))
        .count();
    assert_eq!(explained, 6 * 50);
}

#[tokio::test]
async fn enrolment_is_asked_once_a_pass_not_once_a_request() {
    let rec = rec();
    for i in 0..20 {
        rec.cloud()
            .store
            .insert(&format!("home/carol/c{i}.cf-create"), SEED);
    }
    rec.resync(false, None).await.unwrap();
    let asked = rec
        .cloud()
        .customizer
        .calls()
        .iter()
        .filter(|c| c.contains("carol"))
        .count();
    assert_eq!(asked, 1);
    assert!(text(&rec, "home/carol/c7.cf-failed").contains("not enrolled"));
}

#[tokio::test]
async fn an_orphan_whose_request_comes_back_during_the_pass_is_not_deleted() {
    let rec = super::tests::rec_with(super::tests::settings(std::time::Duration::from_secs(1), 5));
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.cloud().store.remove("home/alice/x.cf-create");
    rec.resync(false, None).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Judged an orphan from the pass's listing; alice writes the request again just before
    // the delete.
    rec.cloud().store.race_on(
        "ListObjectsV2",
        "home/alice/x.",
        "home/alice/x.cf-create",
        SEED,
    );
    rec.resync(false, None).await.unwrap();
    assert_eq!(rec.cloud().stacks.names(), ["fd-alice-x"]);
    assert!(
        !rec.cloud()
            .stacks
            .mutations()
            .iter()
            .any(|m| m.starts_with("DeleteStack"))
    );
}

#[tokio::test]
async fn a_user_name_cloudformation_would_refuse_gets_a_clear_cf_failed_and_no_stack() {
    let rec = rec();
    rec.cloud()
        .store
        .insert("home/jean+luc@example.org/x.cf-create", SEED);
    rec.cloud().store.insert("home/root/x.cf-create", SEED);
    rec.cloud().store.insert("home/jean luc/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    assert!(rec.cloud().stacks.mutations().is_empty());
    assert!(
        text(&rec, "home/jean+luc@example.org/x.cf-failed")
            .contains("cannot be a login name on a cluster")
    );
    assert!(text(&rec, "home/root/x.cf-failed").contains("is reserved"));
    assert!(
        rec.metrics()
            .render()
            .contains("flightdeck_foreign_folder_objects 1"),
        "the folder that is no user name is counted"
    );
}

#[tokio::test]
async fn a_crash_after_a_stack_action_cannot_lose_its_ledger_line() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    // The ledger cannot be written: the stack is not created either.
    rec.cloud()
        .store
        .fail("PutObject", crate::ports::ErrorKind::Transient, 1);
    let report = rec.resync(false, None).await.unwrap();
    assert!(report.outcomes.values().next().unwrap().error.is_some());
    assert!(rec.cloud().stacks.names().is_empty());

    rec.resync(false, None).await.unwrap();
    assert_eq!(rec.cloud().stacks.names(), ["fd-alice-x"]);
    // The line written ahead of CreateStack, then its outcome.
    let calls = rec.cloud().store.calls();
    let ledger: Vec<String> = rec
        .cloud()
        .store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("flightdeck/ledger/"))
        .map(|k| text(&rec, &k))
        .collect();
    let started = ledger
        .iter()
        .any(|l| l.contains("\"create_stack\"") && l.contains("\"started\""));
    let done = ledger
        .iter()
        .any(|l| l.contains("\"create_stack\"") && l.contains("\"ok\""));
    assert!(started && done, "{ledger:?} {calls:?}");
}

#[tokio::test]
async fn a_bucket_whose_etags_are_not_md5s_does_not_make_every_pass_rewrite_every_marker() {
    let rec = rec();
    rec.cloud()
        .store
        .opaque_etags
        .store(true, std::sync::atomic::Ordering::SeqCst);
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.cloud().store.insert("home/alice/sub/y.cf-create", SEED);
    for _ in 0..3 {
        rec.resync(false, None).await.unwrap();
    }
    assert_eq!(phase(&rec, "home/alice/x.cf-status"), "Ready");
    rec.cloud().store.clear_calls();
    rec.resync(false, None).await.unwrap();
    assert_eq!(
        rec.cloud().store.writes(),
        Vec::<String>::new(),
        "a quiet pass writes nothing"
    );
}
