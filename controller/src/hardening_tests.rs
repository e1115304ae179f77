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
