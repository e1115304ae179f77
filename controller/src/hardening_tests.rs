//! Attacks on the reconciler by a hostile or careless user, a crash, a clock or a flaky
//! API, each named after the attack, over the in-memory fakes.

use crate::ports::ErrorKind;

use super::tests::{SEED, phase, rec, text};

#[tokio::test]
async fn rewriting_a_refused_request_unchanged_retries_it() {
    let rec = rec();
    rec.cloud().store.insert("home/alice/x.cf-create", SEED);
    rec.cloud().stacks.fail("CreateStack", ErrorKind::Invalid, 1);
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
