//! Moving from the older design (af-user) on the local AWS emulator: stacks made the way its
//! Lambda made them (named after the cluster, tagged `project=<user>`, its parameters) are
//! left alone until `flightdeck adopt --apply` (the real binary) takes them over; then their
//! users update and delete them through the bucket like any cluster.
//!
//! `adopt` looks at every stack of the account, so this binary holds one scenario, run in
//! order, and no other test that makes stacks.

use std::collections::BTreeMap;

use flightdeck::aws::cloudformation::CloudFormation;
use flightdeck::ports::{StackService, Template};
use flightdeck_core::adopt::TAG_PROJECT;
use flightdeck_core::identity::{TAG_ADOPTED, TAG_OWNER};
use flightdeck_core::plan::{StackSpec, TemplateChoice};
use flightdeck_core::stack::StackView;
use flightdeck_tests::counted::{Rec, reconciler};
use flightdeck_tests::site::{Site, emulator, flightdeck_command, root};
use flightdeck_tests::unique;

/// Makes a stack as the older design's Lambda did: the cluster's name, `project=<user>`,
/// its default parameters with `AccessUsername` and `FlightProfiles` set to the user.
/// The install's fixed parameters are added, as the site's template needs them.
async fn seed_stack(site: &Site, cluster: &str, user: &str, access: &str) -> StackView {
    let settings = site.settings();
    let mut parameters: BTreeMap<String, String> = [
        ("ComputeInstanceType", "other"),
        ("ComputeInstanceTypeOther", "c5.large-2C-4GB"),
        ("MasterInstanceType", "other"),
        ("MasterInstanceTypeOther", "c5.large-2C-4GB"),
        ("ComputeSpotPrice", "0.03"),
        ("AutoscalingPolicy", "enabled"),
        ("ComputeInitialNodes", "0"),
        ("ComputeMaxNodes", "4"),
        ("MasterSystemVolumeSize", "16"),
        ("AccessUsername", access),
        ("FlightProfiles", access),
        ("CustomizerPrefix", "customizer"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    parameters.extend(settings.fixed_parameters.clone());
    let cfn = CloudFormation::new(&emulator().sdk_config().await);
    let spec = StackSpec {
        name: cluster.to_owned(),
        parameters,
        tags: BTreeMap::from([(TAG_PROJECT.to_owned(), user.to_owned())]),
        token: format!("{cluster}start"),
        template: TemplateChoice::Install,
    };
    let id = cfn
        .create(&spec, &settings.template)
        .await
        .expect("the older design's stack");
    stack(&id).await.expect("it exists")
}

async fn stack(name_or_id: &str) -> Option<StackView> {
    CloudFormation::new(&emulator().sdk_config().await)
        .describe(name_or_id)
        .await
        .expect("describe")
}

/// Runs `flightdeck adopt` with `args`; returns its standard output.
fn adopt(site: &Site, args: &[&str]) -> String {
    let mut all = vec!["adopt", "--config", "deploy/local/flightdeck.toml"];
    all.extend(args);
    let out = flightdeck_command(site, &all).output().unwrap();
    assert!(
        out.status.success(),
        "flightdeck {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Full passes until `key` appears (at most ten).
async fn passes_until(rec: &Rec, site: &Site, key: &str) -> String {
    for _ in 0..10 {
        rec.resync(false, None).await.unwrap();
        if let Some(body) = site.read(key).await {
            return body;
        }
    }
    panic!("{key} did not appear in ten passes");
}

#[tokio::test]
async fn the_older_designs_stacks_are_left_alone_until_adopted_then_managed_through_the_bucket() {
    let site = Site::new().await;
    let a = unique("old");
    let b = unique("old");
    let c = unique("old");
    let alices = seed_stack(&site, &a, "alice", "alice").await;
    let bobs = seed_stack(&site, &b, "bob", "bob").await;
    let unrelated = seed_stack(&site, &c, "carol", "dave").await;
    // What the older design left in the folders: the login address, no request.
    site.user_writes(&format!("alice/{a}.cf-created"), "198.18.0.1\n");

    // Before adoption: bob's .cf-delete is refused, his stack untouched, and alice's
    // cluster is not reported deleted.
    let rec = reconciler(&site).await;
    site.user_writes(&format!("bob/{b}.cf-delete"), "");
    let failed = passes_until(&rec, &site, &format!("bob/{b}.cf-failed")).await;
    assert!(
        failed.contains(&format!("does not manage the stack `{b}`"))
            && failed.contains("flightdeck adopt"),
        "{failed}"
    );
    rec.resync(false, None).await.unwrap();
    assert!(site.read(&format!("bob/{b}.cf-deleted")).await.is_none());
    assert_eq!(
        stack(&bobs.id).await.as_ref(),
        Some(&bobs),
        "bob's stack untouched"
    );
    assert!(site.read(&format!("alice/{a}.cf-deleted")).await.is_none());
    assert_eq!(
        site.read(&format!("alice/{a}.cf-created")).await.as_deref(),
        Some("198.18.0.1\n")
    );
    assert!(
        site.stacks().await.is_empty(),
        "no stack of flightdeck's made"
    );

    // The dry run says what it would do and does nothing.
    let plan = adopt(&site, &[]);
    assert!(
        plan.contains(&format!(
            "adopt {a} as alice/{a}: writes {a}.cf-create from its parameters"
        )),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("adopt {b} as bob/{b}")) && plan.contains("waits"),
        "{plan}"
    );
    assert!(plan.contains(&format!("skip {c}: ambiguous")), "{plan}");
    assert_eq!(stack(&alices.id).await.as_ref(), Some(&alices));
    assert!(site.read(&format!("alice/{a}.cf-create")).await.is_none());

    // --apply: the requests are written back, the stacks carry this site's tags, and
    // nothing else about them changed.
    let applied = adopt(&site, &["--apply"]);
    assert!(
        applied.contains(&format!("adopted {a} as alice/{a}")),
        "{applied}"
    );
    let adopted = stack(&alices.id).await.unwrap();
    assert_eq!(adopted.tags[TAG_OWNER], site.owner());
    assert_eq!(adopted.tags[TAG_PROJECT], "alice");
    assert!(adopted.tags.contains_key(TAG_ADOPTED));
    assert_eq!(
        adopted.parameters, alices.parameters,
        "only the tags changed"
    );
    let request = site.read(&format!("alice/{a}.cf-create")).await.unwrap();
    assert!(request.contains("\"ComputeMaxNodes\": \"4\""), "{request}");
    assert!(!request.contains("AccessUsername"), "{request}");

    // The next passes: alice's cluster is ready; bob's waiting delete is carried out.
    let deleted = passes_until(&rec, &site, &format!("bob/{b}.cf-deleted")).await;
    assert!(!deleted.is_empty());
    assert_eq!(stack(&bobs.id).await, None, "bob's stack is deleted");
    assert_eq!(site.phase(&format!("alice/{a}.cf-status")).await, "Ready");

    // Alice changes her cluster through the bucket: the adopted stack is updated, on its
    // own template, under its own name; a single-key look finds it too.
    site.user_writes(
        &format!("alice/{a}.cf-create"),
        &request.replace("\"ComputeMaxNodes\": \"4\"", "\"ComputeMaxNodes\": \"6\""),
    );
    rec.resync(false, None).await.unwrap();
    let key = flightdeck_core::key::ClusterKey::new("alice", &a).unwrap();
    let outcome = rec.reconcile_key(&key).await;
    assert!(outcome.error.is_none(), "{outcome:?}");
    let updated = stack(&alices.id).await.unwrap();
    assert_eq!(updated.status, "UPDATE_COMPLETE");
    assert_eq!(updated.parameters["ComputeMaxNodes"], "6");
    assert_eq!(updated.parameters["ComputeInstanceType"], "other", "kept");
    assert_eq!(updated.parameters["AccessUsername"], "alice");
    let names: Vec<String> = site.stacks().await.into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec![a.clone()], "one stack, the adopted one");

    // And deletes it through the bucket.
    site.user_writes(&format!("alice/{a}.cf-delete"), "");
    passes_until(&rec, &site, &format!("alice/{a}.cf-deleted")).await;
    assert_eq!(stack(&alices.id).await, None, "alice's stack is deleted");
    assert!(site.read(&format!("alice/{a}.cf-create")).await.is_none());

    // The stack adopt skipped was never touched.
    assert_eq!(stack(&unrelated.id).await.as_ref(), Some(&unrelated));
    CloudFormation::new(&emulator().sdk_config().await)
        .delete(&unrelated.id, "cleanup")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_user_is_enrolled_from_the_older_designs_user_script() {
    let site = Site::new().await;
    let user = format!("u{}", std::process::id());
    let script = std::env::temp_dir().join(format!("{}-user.sh", unique("seed")));
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPZbhMULNk97Q3/A7xwdpKy/4Nz20D7FpLeGUaRa1vrX";
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n\nuser=\"{user}\"\n\npubkey=\"{key}\"\n\nfile=/home/${{user}}/.ssh/authorized_keys\n"
        ),
    )
    .unwrap();
    let out = flightdeck_command(
        &site,
        &[
            "enrol",
            &user,
            "--from-seed-script",
            &script.display().to_string(),
            "--config",
            "deploy/local/flightdeck.toml",
            "--defaults",
            &root()
                .join("customizer/default/configure.d")
                .display()
                .to_string(),
        ],
    )
    .output()
    .unwrap();
    std::fs::remove_file(&script).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s3 = emulator().s3().await;
    let got = s3
        .get_object()
        .bucket("flightdeck-customizer")
        .key(format!("customizer/{user}/configure.d/authorized_keys"))
        .send()
        .await
        .expect("authorized_keys written");
    let body = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(String::from_utf8_lossy(&body), format!("{key}\n"));
    // Another user's script is refused.
    let out = flightdeck_command(
        &site,
        &[
            "enrol",
            "someoneelse",
            "--from-seed-script",
            &root()
                .join("examples/cluster.cf-create")
                .display()
                .to_string(),
            "--config",
            "deploy/local/flightdeck.toml",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pubkey"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_update_on_the_stacks_own_template_keeps_every_value_not_set() {
    let cfn = CloudFormation::new(&emulator().sdk_config().await);
    let name = unique("queue");
    let body = "Parameters:\n  Label: {Type: String}\n  Nodes: {Type: String, Default: \"2\"}\nResources:\n  Queue: {Type: \"AWS::SQS::Queue\"}\n";
    let template = Template {
        body: body.into(),
        role_arn: None,
    };
    let pairs = |p: &[(&str, &str)]| -> BTreeMap<String, String> {
        p.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    };
    let id = cfn
        .create(
            &StackSpec {
                name: name.clone(),
                parameters: pairs(&[("Label", "a"), ("Nodes", "5")]),
                tags: pairs(&[("site", "a")]),
                token: format!("{name}-create"),
                template: TemplateChoice::Install,
            },
            &template,
        )
        .await
        .unwrap();
    // The install's template is another one: an update on the stack's own must not use it.
    let other = Template {
        body: "Resources:\n  Other: {Type: \"AWS::SQS::Queue\"}\n".into(),
        role_arn: None,
    };
    cfn.update(
        &StackSpec {
            name: name.clone(),
            parameters: pairs(&[("Label", "b")]),
            tags: pairs(&[("site", "a"), ("x", "y")]),
            token: format!("{name}-update"),
            template: TemplateChoice::Previous {
                keep: ["Label", "Nodes"].map(String::from).into(),
            },
        },
        &other,
    )
    .await
    .unwrap();
    let s = cfn.describe(&id).await.unwrap().unwrap();
    assert_eq!(s.status, "UPDATE_COMPLETE");
    assert_eq!(s.parameters, pairs(&[("Label", "b"), ("Nodes", "5")]));
    assert_eq!(s.tags, pairs(&[("site", "a"), ("x", "y")]));
    cfn.delete(&id, "cleanup").await.unwrap();
}
