//! A replica that starts leading: what it must forget, and what it must not do twice.

use super::tests::{SEED, emails_ending, policy_text, rec, rec_with, settings, text};
use flightdeck_core::key::ClusterKey;

#[tokio::test]
async fn a_new_leader_forgets_the_usage_it_kept_and_admits_nothing_before_a_full_listing() {
    let mut settings = settings(std::time::Duration::from_secs(600), 5);
    settings.policy = flightdeck_core::policy::Policy::parse(&format!(
        "{}[users.alice]\nclusters = 1\n",
        policy_text()
    ))
    .unwrap();
    let rec = rec_with(settings);
    rec.resync(false, None).await.unwrap();
    // Alice's one cluster.
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    let key_x = ClusterKey::new("alice", "x").unwrap();
    rec.reconcile_key(&key_x).await;
    assert_eq!(rec.cloud().stacks.names(), ["fd-alice-x"]);

    // Leading again: its usage book is forgotten, so a hinted request waits for the pass.
    rec.forget();
    rec.cloud().store.insert("home/alice/y.cf-create", SEED);
    let key_y = ClusterKey::new("alice", "y").unwrap();
    let hinted = rec.reconcile_key(&key_y).await;
    assert!(
        hinted.soon,
        "looked at again once usage is known: {hinted:?}"
    );
    assert_eq!(rec.cloud().stacks.names(), ["fd-alice-x"]);
    rec.resync(false, None).await.unwrap();
    assert_eq!(rec.cloud().stacks.names(), ["fd-alice-x"]);
    assert!(text(&rec, "home/alice/y.cf-failed").contains("your limit is 1"));
}

#[tokio::test]
async fn a_notice_another_replica_claimed_is_not_sent_again() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    assert_eq!(emails_ending(&rec, "is ready"), 1);

    // Leading again, it reads the records, deletes the cluster and notifies once.
    rec.cloud().store.insert("home/alice/x.cf-delete", "");
    let claims_before = notice_claims(&rec);
    rec.forget();
    rec.load_delivered().await.unwrap();
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    let deleted_claim: Vec<String> = notice_claims(&rec)
        .into_iter()
        .filter(|k| !claims_before.contains(k))
        .collect();
    assert_eq!(
        deleted_claim.len(),
        1,
        "the deletion notice was claimed once"
    );
    assert_eq!(emails_ending(&rec, "is deleted"), 1);

    // A second replica that has not read the records yet meets the same notice: the claim
    // written before the send stops it.
    rec.forget();
    rec.cloud()
        .mailer
        .as_ref()
        .unwrap()
        .sent
        .lock()
        .unwrap()
        .clear();
    let outbox = format!(
        "flightdeck/outbox/{}.json",
        &deleted_claim[0]["flightdeck/notified/".len()..]
    );
    rec.cloud().store.insert(
        &outbox,
        serde_json::json!({"id": &deleted_claim[0]["flightdeck/notified/".len()..], "event": "deleted", "user": "alice", "cluster": "x", "stack": "fd-alice-x", "detail": ""}).to_string(),
    );
    rec.resync(false, None).await.unwrap();
    assert_eq!(
        emails_ending(&rec, "is deleted"),
        0,
        "sent once, by whoever claimed it first"
    );
    assert!(
        rec.cloud().store.text(&outbox).is_none(),
        "the outbox is tidied"
    );
}

fn notice_claims(rec: &super::tests::Rec) -> Vec<String> {
    rec.cloud()
        .store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("flightdeck/notified/"))
        .collect()
}

#[tokio::test]
async fn a_deletion_its_leader_did_not_live_to_see_finish_is_notified_by_the_next() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.resync(false, None).await.unwrap();
    rec.cloud().store.insert("home/alice/x.cf-delete", "");
    rec.resync(false, None).await.unwrap();
    assert!(
        rec.cloud().stacks.names().is_empty(),
        "the stack is deleted"
    );

    // The leader that deleted it is gone; the next one never saw the stack.
    rec.forget();
    rec.load_delivered().await.unwrap();
    for _ in 0..3 {
        rec.resync(false, None).await.unwrap();
    }
    assert_eq!(emails_ending(&rec, "is deleted"), 1);
    assert!(
        !rec.cloud()
            .store
            .keys()
            .iter()
            .any(|k| k.starts_with("flightdeck/deleting/")),
        "the record of the deletion is removed once it is done"
    );
}

#[tokio::test]
async fn a_notice_claimed_by_a_replica_that_died_before_sending_is_counted_not_sent() {
    // Met while sending (the claim is refused), and met by a new leader that read the
    // claims at takeover (the notice counts as delivered before any send is tried).
    for read_claims_first in [false, true] {
        let rec = rec();
        let id = "0123456789abcdef01234567";
        // Claimed (empty: not marked sent), still in the outbox: its sender died in between.
        rec.cloud()
            .store
            .insert(&format!("flightdeck/notified/{id}"), "");
        let outbox = format!("flightdeck/outbox/{id}.json");
        rec.cloud().store.insert(
            &outbox,
            serde_json::json!({"id": id, "event": "ready", "user": "alice", "cluster": "x", "stack": "fd-alice-x", "detail": "198.51.100.7"}).to_string(),
        );
        if read_claims_first {
            rec.load_delivered().await.unwrap();
        }
        rec.resync(false, None).await.unwrap();
        assert!(rec.cloud().mailer.as_ref().unwrap().subjects().is_empty());
        assert!(
            rec.metrics().render().contains(
                "flightdeck_notifications_total{event=\"ready\",outcome=\"unconfirmed\"} 1"
            ),
            "read_claims_first={read_claims_first}: {}",
            rec.metrics().render()
        );
        assert!(rec.cloud().store.text(&outbox).is_none());
    }
}
