//! End to end on the local AWS emulator: users act with the real `aws` CLI, flightdeck runs
//! on the real adapters (as a process, or as the library driven pass by pass), and the
//! results are read back from S3 and CloudFormation.
//!
//! Each test has its own users' bucket, stack prefix and owner tag, so tests run in
//! parallel on one emulator and never see each other's clusters. The shared customizer
//! bucket, network and SES identity come from `deploy/local/bootstrap.py`, run once.

use std::net::Ipv4Addr;
use std::time::Duration;

use flightdeck_core::identity::{TAG_CLUSTER, TAG_USER};
use flightdeck_tests::counted::reconciler;
use flightdeck_tests::site::{Controller, Site, emulator, flightdeck_command, root, seed};

#[tokio::test]
async fn the_seed_example_becomes_one_tagged_stack_and_a_delete_removes_it() {
    let site = Site::new().await;
    let controller = Controller::start(&site, &["run", "--config", "deploy/local/flightdeck.toml"]);
    site.aws(
        &[
            "s3",
            "cp",
            &root()
                .join("examples/cluster.cf-create")
                .display()
                .to_string(),
            &format!("s3://{}/home/alice/x.cf-create", site.bucket),
        ],
        None,
    );

    let created = site.wait_for("alice/x.cf-created", &controller.log).await;
    let ip: Ipv4Addr = created
        .lines()
        .next()
        .unwrap()
        .parse()
        .expect("first line is an IPv4 address");
    assert!(created.contains(&format!("ssh alice@{ip}")), "{created}");
    assert_eq!(site.phase("alice/x.cf-status").await, "Ready");
    let stacks = site.stacks().await;
    assert_eq!(stacks.len(), 1, "exactly one stack: {stacks:?}");
    let stack = &stacks[0];
    assert_eq!(stack.name, site.stack_name("alice", "x"));
    assert_eq!(stack.tags[TAG_USER], "alice");
    assert_eq!(stack.tags[TAG_CLUSTER], "x");
    assert_eq!(stack.parameters["AccessUsername"], "alice");
    assert_eq!(stack.parameters["ComputeInstanceType"], "r4.large");

    site.user_writes("alice/x.cf-delete", "");
    site.wait_for("alice/x.cf-deleted", &controller.log).await;
    assert!(site.stacks().await.is_empty(), "the stack is deleted");
    assert_eq!(site.phase("alice/x.cf-status").await, "Deleted");
    for gone in [
        "alice/x.cf-create",
        "alice/x.cf-delete",
        "alice/x.cf-created",
    ] {
        assert!(site.read(gone).await.is_none(), "{gone} should be removed");
    }
    assert!(controller.stop(), "SIGTERM ends the controller cleanly");

    let out = flightdeck_command(&site, &["plan", "--config", "deploy/local/flightdeck.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nothing to do");
}

#[tokio::test]
async fn a_quiet_pass_writes_nothing() {
    let site = Site::new().await;
    let rec = reconciler(&site).await;
    site.user_writes("alice/x.cf-create", &seed());
    site.user_writes("alice/bad.cf-create", "{ not json");
    site.user_writes("alice/sub/y.cf-create", &seed());
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    assert_eq!(site.phase("alice/x.cf-status").await, "Ready");
    let (s3, cfn) = (rec.cloud().store.writes(), rec.cloud().stacks.writes());
    for _ in 0..2 {
        let report = rec.resync(false, None).await.unwrap();
        assert!(report.outcomes.values().all(|o| o.error.is_none()));
    }
    assert_eq!(
        rec.cloud().store.writes(),
        s3,
        "no S3 write in a quiet pass"
    );
    assert_eq!(
        rec.cloud().stacks.writes(),
        cfn,
        "no stack call in a quiet pass"
    );
}

#[tokio::test]
async fn users_never_reach_each_others_clusters() {
    let site = Site::new().await;
    let rec = reconciler(&site).await;
    site.user_writes("alice/x.cf-create", &seed());
    rec.resync(false, None).await.unwrap();
    let alice = site.stacks().await;
    assert_eq!(alice.len(), 1);

    // bob names alice's cluster in his own folder: he deletes nothing of hers.
    site.user_writes("bob/x.cf-delete", "");
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    assert!(
        site.read("bob/x.cf-deleted").await.is_some(),
        "bob is told his (non-existent) x is deleted"
    );
    assert_eq!(site.stacks().await, alice, "alice's stack is untouched");

    // Same cluster name, two users: two stacks.
    site.user_writes("bob/x.cf-create", &seed().replace("\"25\"", "\"4\""));
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    let mut names: Vec<String> = site.stacks().await.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [site.stack_name("alice", "x"), site.stack_name("bob", "x")]
    );
    let alice_now = site
        .stacks()
        .await
        .into_iter()
        .find(|s| s.tags[TAG_USER] == "alice")
        .unwrap();
    assert_eq!(
        alice_now.parameters, alice[0].parameters,
        "bob's request did not alter alice's cluster"
    );
    assert_eq!(site.phase("alice/x.cf-status").await, "Ready");
    assert_eq!(site.phase("bob/x.cf-status").await, "Ready");
}

#[tokio::test]
async fn mistakes_are_explained_and_everyone_else_is_served() {
    let site = Site::new().await;
    let rec = reconciler(&site).await;
    let seed = seed();
    site.user_writes("alice/good.cf-create", &seed);
    site.user_writes(
        "alice/claim.cf-create",
        &seed.replace('{', "{\"AccessUsername\": \"bob\",\n"),
    );
    site.user_writes("alice/broken.cf-create", "{\"ComputeMaxNodes\": \"4\",,}");
    site.user_writes(
        "alice/typo.cf-create",
        &seed.replace("ComputeMaxNodes", "ComputeMaxNode"),
    );
    site.user_writes("alice/my_cluster.cf-create", &seed);
    site.user_writes("alice/sub/deep.cf-create", &seed);
    site.user_writes("alice/suffix.cf_create", &seed);
    site.user_writes("carol/x.cf-create", &seed);
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();

    for (file, says) in [
        (
            "alice/claim.cf-failed",
            "`AccessUsername` is set by flightdeck to your user name",
        ),
        (
            "alice/broken.cf-failed",
            "the request is not valid JSON (line 1",
        ),
        (
            "alice/typo.cf-failed",
            "`ComputeMaxNode` is not a setting you can choose (did you mean `ComputeMaxNodes`?)",
        ),
        (
            "alice/my_cluster.cf-create.cf-failed",
            "`my_cluster` is not a valid cluster name",
        ),
        (
            "alice/sub/deep.cf-create.cf-failed",
            "move this file to `home/alice/deep.cf-create`",
        ),
        (
            "alice/suffix.cf_create.cf-failed",
            "name the file exactly `suffix.cf-create`",
        ),
        ("carol/x.cf-failed", "you are not enrolled"),
    ] {
        let body = site
            .read(file)
            .await
            .unwrap_or_else(|| panic!("{file} missing"));
        assert!(body.contains(says), "{file}: {body}");
    }
    let stacks = site.stacks().await;
    assert_eq!(
        stacks.len(),
        1,
        "only the good request made a stack: {stacks:?}"
    );
    assert_eq!(site.phase("alice/good.cf-status").await, "Ready");
    assert_eq!(site.phase("carol/x.cf-status").await, "Failed");
}

#[tokio::test]
async fn a_removed_request_deletes_its_stack_only_after_the_grace_period() {
    let site = Site::new().await;
    let rec = reconciler(&site).await;
    site.user_writes("alice/x.cf-create", &seed());
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    site.user_removes("alice/x.cf-create");
    rec.resync(false, None).await.unwrap();
    assert_eq!(site.stacks().await.len(), 1, "kept within the grace period");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    rec.resync(false, None).await.unwrap();
    assert_eq!(
        site.stacks().await.len(),
        1,
        "the cluster's instances are terminated before its stack is deleted"
    );
    rec.resync(false, None).await.unwrap();
    assert!(
        site.stacks().await.is_empty(),
        "deleted after the grace period, once no instance is alive"
    );
    rec.resync(false, None).await.unwrap();
    assert!(site.read("alice/x.cf-deleted").await.is_some());
    assert!(site.read("alice/x.cf-created").await.is_none());
}

#[tokio::test]
async fn when_more_requests_vanish_than_the_cap_no_stack_is_deleted() {
    let site = Site::new().await;
    let rec = reconciler(&site).await;
    // Three clusters of 8 nodes fit the shipped policy (3 clusters, 64 nodes).
    let small = seed().replace("\"25\"", "\"8\"");
    for c in ["a", "b", "c"] {
        site.user_writes(&format!("alice/{c}.cf-create"), &small);
    }
    rec.resync(false, None).await.unwrap();
    assert_eq!(site.stacks().await.len(), 3);
    for c in ["a", "b", "c"] {
        site.user_removes(&format!("alice/{c}.cf-create"));
    }
    rec.resync(false, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let report = rec.resync(false, None).await.unwrap();
    assert_eq!(
        report.held_back, 3,
        "three orphans past grace, cap two: none deleted"
    );
    assert_eq!(site.stacks().await.len(), 3);
    let status = site.read("alice/a.cf-status").await.unwrap();
    assert!(status.contains("held back"), "{status}");
}

/// What `flightdeck run --once` prints when start-up fails with one more setting.
fn start_up_error(site: &Site, name: &str, value: &str) -> String {
    let mut env = site.env.clone();
    env.push((name.into(), value.into()));
    let changed = Site {
        bucket: site.bucket.clone(),
        env,
    };
    let out = flightdeck_command(
        &changed,
        &["run", "--once", "--config", "deploy/local/flightdeck.toml"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "start-up should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_bad_configuration_stops_start_up_naming_the_setting() {
    let site = Site::new().await;
    let err = start_up_error(&site, "FLIGHTDECK_RECONCILE_RESYNC_INTERVAL", "often");
    assert!(
        err.contains("setting `reconcile.resync_interval`: `often` is not a duration"),
        "{err}"
    );
    let err = start_up_error(&site, "FLIGHTDECK_BUCKET_NAME", "no-such-bucket-here");
    assert!(
        err.contains("setting `bucket.name`: cannot list s3://no-such-bucket-here/home/"),
        "{err}"
    );
}

#[tokio::test]
async fn a_hint_creates_the_cluster_without_waiting_for_the_resync() {
    let mut site = Site::new().await;
    let addr = format!("127.0.0.1:{}", flightdeck_tests::site::free_port());
    let token = "a-hint-token-of-some-length";
    site.env.extend(
        [
            ("FLIGHTDECK_HTTP_LISTEN", addr.clone()),
            ("FLIGHTDECK_HINT_TOKEN", token.to_owned()),
            ("FLIGHTDECK_RECONCILE_RESYNC_INTERVAL", "1h".to_owned()),
            ("FLIGHTDECK_RECONCILE_BUSY_INTERVAL", "1s".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let controller = Controller::start(&site, &["run", "--config", "deploy/local/flightdeck.toml"]);
    flightdeck_tests::site::wait_ready(&addr, &controller.log);
    assert_eq!(
        flightdeck_tests::site::http(&addr, "GET", "/healthz", None, "").0,
        200
    );

    site.user_writes("alice/x.cf-create", &seed());
    let event = flightdeck_tests::site::s3_event(&site.bucket, "home/alice/x.cf-create");
    let (status, _) = flightdeck_tests::site::http(&addr, "POST", "/hints", None, &event);
    assert_eq!(status, 401, "no token, no hint");
    let (status, _) = flightdeck_tests::site::http(
        &addr,
        "POST",
        "/hints",
        Some("wrong-token-wrong-token"),
        &event,
    );
    assert_eq!(status, 401);
    let (status, body) = flightdeck_tests::site::http(&addr, "POST", "/hints", Some(token), &event);
    assert_eq!(
        (status, body.trim()),
        (202, r#"{"accepted":1,"ignored":0}"#)
    );

    // The next resync is an hour away: only the hint can have done this.
    let created = site.wait_for("alice/x.cf-created", &controller.log).await;
    assert!(
        created
            .lines()
            .next()
            .unwrap()
            .parse::<std::net::Ipv4Addr>()
            .is_ok(),
        "{created}"
    );

    let (_, metrics) = flightdeck_tests::site::http(&addr, "GET", "/metrics", None, "");
    assert!(
        metrics.contains("flightdeck_hints_total{outcome=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flightdeck_hints_total{outcome=\"unauthorized\"} 2"),
        "{metrics}"
    );
    assert!(controller.stop(), "SIGTERM ends the controller cleanly");
}

#[tokio::test]
async fn a_changed_request_updates_in_place_and_a_change_that_cannot_is_refused() {
    let site = Site::new().await;
    let rec = reconciler(&site).await;
    site.user_writes("alice/x.cf-create", &seed());
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    let before = site.stacks().await.remove(0);

    // ComputeMaxNodes may change in place: UpdateStack, same stack, new parameters.
    site.user_writes("alice/x.cf-create", &seed().replace("\"25\"", "\"30\""));
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    let updated = site.stacks().await.remove(0);
    assert_eq!(updated.id, before.id, "the same stack");
    assert_eq!(updated.parameters["ComputeMaxNodes"], "30");
    assert_ne!(
        updated.tags["flightdeck:request"],
        before.tags["flightdeck:request"]
    );
    assert_eq!(site.phase("alice/x.cf-status").await, "Ready");
    assert!(site.read("alice/x.cf-failed").await.is_none());

    // MasterSystemVolumeSize may not: refused by name, the stack is left as it is.
    site.user_writes(
        "alice/x.cf-create",
        &seed()
            .replace("\"25\"", "\"30\"")
            .replace("\"16\"", "\"32\""),
    );
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    let failed = site.read("alice/x.cf-failed").await.unwrap();
    assert!(
        failed.contains("`MasterSystemVolumeSize` cannot change on a running cluster (it is `16`, the request asks for `32`)"),
        "{failed}"
    );
    let kept = site.stacks().await.remove(0);
    assert_eq!(
        kept.parameters, updated.parameters,
        "the refused change touched nothing"
    );
    assert_eq!(site.phase("alice/x.cf-status").await, "Ready");
}

#[tokio::test]
async fn a_quota_reached_is_freed_by_a_delete_and_the_waiting_request_is_admitted() {
    let mut site = Site::new().await;
    let policy = std::env::temp_dir().join(format!("{}.toml", flightdeck_tests::unique("policy")));
    let shipped = std::fs::read_to_string(root().join("policies/limits.toml")).unwrap();
    std::fs::write(
        &policy,
        format!("{shipped}\n[users.alice]\nclusters = 1\nmax_nodes = 30\n"),
    )
    .unwrap();
    site.env
        .push(("FLIGHTDECK_POLICY".into(), policy.display().to_string()));
    let rec = reconciler(&site).await;

    site.user_writes("alice/x.cf-create", &seed());
    rec.resync(false, None).await.unwrap();
    site.user_writes("alice/y.cf-create", &seed().replace("\"25\"", "\"4\""));
    rec.resync(false, None).await.unwrap();
    let refused = site.read("alice/y.cf-failed").await.unwrap();
    assert!(
        refused.contains("you have 1 cluster already; your limit is 1 (your own limit)"),
        "{refused}"
    );
    assert_eq!(site.stacks().await.len(), 1);

    site.user_writes("alice/x.cf-delete", "");
    for _ in 0..3 {
        rec.resync(false, None).await.unwrap();
    }
    let names: Vec<String> = site.stacks().await.into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [site.stack_name("alice", "y")],
        "y is admitted once x is gone"
    );
    assert!(site.read("alice/y.cf-failed").await.is_none());
    assert_eq!(site.phase("alice/y.cf-status").await, "Ready");

    // The limit holds again for the next request.
    site.user_writes("alice/z.cf-create", &seed().replace("\"25\"", "\"4\""));
    rec.resync(false, None).await.unwrap();
    let z = site.read("alice/z.cf-failed").await.unwrap();
    assert!(
        z.contains("you have 1 cluster already; your limit is 1 (your own limit)"),
        "{z}"
    );
    assert_eq!(site.stacks().await.len(), 1);

    // The ledger, under the controller's prefix, has a line for each of these.
    let s3 = emulator().s3().await;
    let listed = s3
        .list_objects_v2()
        .bucket(&site.bucket)
        .prefix("flightdeck/ledger/")
        .send()
        .await
        .unwrap();
    let mut lines = Vec::new();
    for object in listed.contents() {
        let body = s3
            .get_object()
            .bucket(&site.bucket)
            .key(object.key().unwrap())
            .send()
            .await
            .unwrap();
        let text =
            String::from_utf8(body.body.collect().await.unwrap().into_bytes().to_vec()).unwrap();
        lines.extend(
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
    }
    for (action, cluster, outcome) in [
        ("create_stack", "x", "ok"),
        ("refuse", "y", "clusters"),
        ("delete_stack", "x", "ok"),
        ("create_stack", "y", "ok"),
        ("refuse", "z", "clusters"),
    ] {
        assert!(
            lines.iter().any(|l| l["action"] == action
                && l["cluster"] == cluster
                && l["outcome"] == outcome),
            "no ledger line {action} {cluster} {outcome} in {lines:#?}"
        );
    }
    let _ = std::fs::remove_file(policy);
}

#[tokio::test]
async fn a_cluster_whose_lifetime_ends_is_warned_about_then_deleted() {
    let site = Site::new().await;
    let rec = reconciler(&site).await;
    site.user_writes(
        "bob/short.cf-create",
        &seed().replace('{', "{\"Lifetime\": \"8s\","),
    );
    rec.resync(false, None).await.unwrap();
    rec.resync(false, None).await.unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&site.read("bob/short.cf-status").await.unwrap()).unwrap();
    assert_eq!(status["phase"], "Ready");
    assert!(
        status["lifetime_end"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{status}"
    );
    let mailer = rec.cloud().mailer.as_ref().unwrap();
    let subjects = mailer.subjects.lock().unwrap().clone();
    assert!(
        subjects
            .iter()
            .any(|s| s == "[flightdeck] cluster short of bob will be deleted soon"),
        "warned within the hour before the end: {subjects:?}"
    );

    tokio::time::sleep(Duration::from_secs(9)).await;
    rec.resync(false, None).await.unwrap(); // the lifetime ended: .cf-delete is written
    assert!(site.read("bob/short.cf-delete").await.is_some());
    for _ in 0..3 {
        rec.resync(false, None).await.unwrap();
    }
    assert!(
        site.stacks().await.is_empty(),
        "deleted as if bob had written .cf-delete"
    );
    assert!(site.read("bob/short.cf-deleted").await.is_some());
    assert!(site.read("bob/short.cf-create").await.is_none());
    let subjects = mailer.subjects.lock().unwrap().clone();
    let warned = subjects
        .iter()
        .position(|s| s.ends_with("will be deleted soon"))
        .unwrap();
    let deleted = subjects
        .iter()
        .position(|s| s.ends_with("is deleted"))
        .unwrap();
    assert!(warned < deleted, "{subjects:?}");
    assert_eq!(
        subjects
            .iter()
            .filter(|s| s.ends_with("will be deleted soon"))
            .count(),
        1,
        "warned once"
    );
}
