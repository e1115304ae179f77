//! The AWS adapters against the local emulator, through the real SDK over HTTP.
//!
//! Every test makes its own bucket or stacks under unique names; none resets the shared
//! emulator.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_ec2::types::{ResourceType, Tag as Ec2Tag, TagSpecification};
use flightdeck::aws::cloudformation::CloudFormation;
use flightdeck::aws::ec2::Ec2;
use flightdeck::aws::s3::S3Store;
use flightdeck::aws::ses::Ses;
use flightdeck::ports::{
    ErrorKind, Instances, Mailer, ObjectStore, StackService, Template, UpdateOutcome,
};
use flightdeck_core::identity::hex_md5;
use flightdeck_core::nodes::{Instance, InstanceState, TAG_STACK};
use flightdeck_core::plan::{StackSpec, TemplateChoice};
use flightdeck_core::request::ParameterRule;
use flightdeck_tests::{Emulator, unique};
use tokio::task::JoinSet;

/// A stack that costs nothing and deletes cleanly: one queue, two parameters, an output
/// that echoes a parameter (so an update shows in the outputs). Both parameters are
/// strings: the emulator keeps a `Number` parameter as a number and compares it with the
/// string sent, so it never finds "no updates" in a template that has one.
const QUEUE_TEMPLATE: &str = r#"
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  Label:
    Type: String
  Nodes:
    Type: String
    Default: "2"
Resources:
  Queue:
    Type: AWS::SQS::Queue
Outputs:
  Label:
    Value: !Ref Label
  QueueName:
    Value: !GetAtt Queue.QueueName
"#;

/// A login instance with an Elastic IP (moto gives an instance a public address only
/// through one), and a second instance without, in a subnet made beforehand.
const INSTANCE_TEMPLATE: &str = r#"
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  SubnetId:
    Type: String
Resources:
  Login:
    Type: AWS::EC2::Instance
    Properties:
      ImageId: ami-12c6146b
      InstanceType: t3.micro
      SubnetId: !Ref SubnetId
  LoginAddress:
    Type: AWS::EC2::EIP
    Properties:
      Domain: vpc
      InstanceId: !Ref Login
  Compute:
    Type: AWS::EC2::Instance
    Properties:
      ImageId: ami-12c6146b
      InstanceType: t3.micro
      SubnetId: !Ref SubnetId
Outputs:
  LoginIp:
    Value: !Ref LoginAddress
"#;

fn template(body: &str) -> Template {
    Template {
        body: body.to_owned(),
        role_arn: None,
    }
}

fn pairs(items: &[(&str, &str)]) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn quoted_md5(body: &str) -> String {
    format!("\"{}\"", hex_md5(body.as_bytes()))
}

async fn store() -> S3Store {
    let emulator = Emulator::shared();
    let bucket = unique("fd-adapters");
    emulator.create_bucket(&bucket).await;
    S3Store::new(&emulator.sdk_config().await, bucket, true)
}

async fn cloudformation() -> CloudFormation {
    CloudFormation::new(&Emulator::shared().sdk_config().await)
}

/// A spec for [`QUEUE_TEMPLATE`]. It sets every parameter, defaulted ones included: the
/// emulator finds "no updates" only when the parameters sent equal all the stack's
/// parameters (otherwise it answers OK and marks the stack UPDATE_COMPLETE again).
fn queue_spec(name: &str, label: &str) -> StackSpec {
    StackSpec {
        name: name.to_owned(),
        parameters: pairs(&[("Label", label), ("Nodes", "2")]),
        tags: pairs(&[
            ("USER", "alice"),
            ("flightdeck:cluster", "x"),
            ("flightdeck:owner", "adapters"),
            ("flightdeck:request", label),
        ]),
        token: format!("{name}-{label}"),
        template: TemplateChoice::Install,
    }
}

#[tokio::test]
async fn s3_lists_every_page_with_md5_etags() {
    let store = Arc::new(store().await);
    let mut puts = JoinSet::new();
    let total = 1005;
    for batch in 0..15 {
        let store = Arc::clone(&store);
        puts.spawn(async move {
            let mut etags = Vec::new();
            for i in (batch..total).step_by(15) {
                let key = format!("home/u{:02}/c{i:04}.cf-create", i % 7);
                let body = format!("{{\"ComputeMaxNodes\": \"{i}\"}}");
                let etag = store.put(&key, &body).await.expect("put");
                etags.push((key, body, etag));
            }
            etags
        });
    }
    let mut written = BTreeMap::new();
    while let Some(batch) = puts.join_next().await {
        for (key, body, etag) in batch.expect("a put task") {
            assert_eq!(etag, quoted_md5(&body), "put returns the ETag of {key}");
            written.insert(key, etag);
        }
    }
    store.put("elsewhere/x.cf-create", "{}").await.expect("put");

    let listed = store.list("home/").await.expect("list");
    assert_eq!(
        listed.len(),
        total,
        "every page, nothing outside the prefix"
    );
    for object in &listed {
        assert_eq!(
            Some(&object.etag),
            written.get(&object.key),
            "{}",
            object.key
        );
        assert!(object.modified > 1_600_000_000, "{object:?}");
        assert!(object.size > 0, "{object:?}");
    }
}

#[tokio::test]
async fn s3_get_put_delete_and_any_under() {
    let store = store().await;
    let key = "home/alice/x.cf-created";

    assert_eq!(store.get(key).await.expect("get of a missing key"), None);
    store
        .delete(key)
        .await
        .expect("delete of a missing key is fine");
    assert!(!store.any_under("home/alice/").await.expect("any_under"));

    let body = "203.0.113.7\nssh alice@203.0.113.7\n";
    let etag = store.put(key, body).await.expect("put");
    assert_eq!(etag, quoted_md5(body));
    assert!(store.any_under("home/alice/").await.expect("any_under"));
    assert!(!store.any_under("home/bob/").await.expect("any_under"));

    let fetched = store.get(key).await.expect("get").expect("it exists");
    assert_eq!(fetched.body, body.as_bytes());
    assert_eq!(fetched.etag, etag);
    assert!(fetched.modified > 1_600_000_000);

    store.delete(key).await.expect("delete");
    assert_eq!(store.get(key).await.expect("get after delete"), None);
}

#[tokio::test]
async fn s3_conditional_writes_let_only_the_version_seen_be_replaced() {
    let store = store().await;
    let key = "flightdeck/leader.json";
    let first = store
        .put_if(key, "a1", None)
        .await
        .expect("create")
        .expect("no object yet, so written");
    assert_eq!(
        store.put_if(key, "b1", None).await.expect("second create"),
        None,
        "If-None-Match: * refuses an existing object"
    );
    let second = store
        .put_if(key, "a2", Some(&first))
        .await
        .expect("renew")
        .expect("the version seen, so written");
    assert_ne!(first, second);
    assert_eq!(
        store.put_if(key, "b2", Some(&first)).await.expect("stale"),
        None,
        "If-Match with a version replaced since is refused"
    );
    assert_eq!(store.get(key).await.unwrap().unwrap().body, b"a2");
    store.delete(key).await.unwrap();
    assert_eq!(
        store.put_if(key, "b3", Some(&second)).await.expect("gone"),
        None,
        "If-Match on a removed object is refused"
    );
}

#[tokio::test]
async fn s3_markers_carry_their_content_types() {
    let emulator = Emulator::shared();
    let store = store().await;
    let s3 = emulator.s3().await;
    for (key, expected) in [
        ("home/alice/x.cf-status", "application/json"),
        ("home/alice/x.cf-failed", "text/plain; charset=utf-8"),
    ] {
        store.put(key, "{}").await.expect("put");
        let head = s3
            .head_object()
            .bucket(store.bucket())
            .key(key)
            .send()
            .await
            .expect("head");
        assert_eq!(head.content_type(), Some(expected), "{key}");
    }
}

#[tokio::test]
async fn s3_get_from_a_missing_bucket_is_an_error_not_an_absence() {
    let emulator = Emulator::shared();
    let store = S3Store::new(&emulator.sdk_config().await, unique("fd-missing"), true);
    let err = store.get("home/alice/x.cf-create").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert_eq!(err.code.as_deref(), Some("NoSuchBucket"));
}

#[tokio::test]
async fn cloudformation_creates_describes_and_lists_a_stack() {
    let cfn = cloudformation().await;
    let name = unique("fd-alice");
    let spec = queue_spec(&name, "first");

    let id = cfn
        .create(&spec, &template(QUEUE_TEMPLATE))
        .await
        .expect("create");
    assert!(id.starts_with("arn:aws:cloudformation:eu-west-2:"), "{id}");

    let stack = cfn
        .describe(&name)
        .await
        .expect("describe")
        .expect("it exists");
    assert_eq!(stack.id, id);
    assert_eq!(stack.name, name);
    assert_eq!(stack.status, "CREATE_COMPLETE");
    assert_eq!(stack.tags, spec.tags);
    assert_eq!(
        stack.parameters,
        pairs(&[("Label", "first"), ("Nodes", "2")])
    );
    assert_eq!(stack.outputs["Label"], "first");
    assert!(stack.outputs.contains_key("QueueName"));
    assert!(stack.last_change > 1_600_000_000);
    assert_eq!((&stack.login_ip, &stack.failure_reason), (&None, &None));
    assert_eq!(
        cfn.describe(&id).await.expect("describe by id"),
        Some(stack.clone())
    );

    let listed = cfn.list().await.expect("list");
    let found = listed
        .iter()
        .find(|s| s.id == id)
        .expect("list finds the stack");
    assert_eq!(found, &stack);

    assert_eq!(cfn.first_failure(&id).await.expect("events"), None);
    cfn.delete(&id, &format!("{name}-delete"))
        .await
        .expect("delete");
}

#[tokio::test]
async fn cloudformation_updates_a_changed_stack_and_reports_an_unchanged_one() {
    let cfn = cloudformation().await;
    let name = unique("fd-alice");
    let body = template(QUEUE_TEMPLATE);
    let id = cfn
        .create(&queue_spec(&name, "first"), &body)
        .await
        .expect("create");

    let changed = queue_spec(&name, "second");
    assert_eq!(
        cfn.update(&changed, &body).await.expect("update"),
        UpdateOutcome::Started
    );
    let stack = cfn
        .describe(&id)
        .await
        .expect("describe")
        .expect("it exists");
    assert_eq!(stack.status, "UPDATE_COMPLETE");
    assert_eq!(stack.parameters["Label"], "second");
    assert_eq!(stack.outputs["Label"], "second");
    assert_eq!(stack.tags["flightdeck:request"], "second");

    assert_eq!(
        cfn.update(&changed, &body)
            .await
            .expect("update with no change"),
        UpdateOutcome::NoChanges
    );
    cfn.delete(&id, &format!("{name}-delete"))
        .await
        .expect("delete");
}

#[tokio::test]
async fn cloudformation_refuses_a_second_stack_of_the_same_name() {
    let cfn = cloudformation().await;
    let name = unique("fd-alice");
    let body = template(QUEUE_TEMPLATE);
    let id = cfn
        .create(&queue_spec(&name, "first"), &body)
        .await
        .expect("create");

    let err = cfn
        .create(&queue_spec(&name, "first"), &body)
        .await
        .expect_err("the emulator does not honour the token");
    assert_eq!(err.kind, ErrorKind::AlreadyExists, "{err}");
    assert_eq!(err.code.as_deref(), Some("AlreadyExistsException"));
    assert!(!err.retryable());
    cfn.delete(&id, &format!("{name}-delete"))
        .await
        .expect("delete");
}

#[tokio::test]
async fn cloudformation_deleted_and_missing_stacks_are_none() {
    let cfn = cloudformation().await;
    let name = unique("fd-alice");
    let id = cfn
        .create(&queue_spec(&name, "first"), &template(QUEUE_TEMPLATE))
        .await
        .expect("create");

    cfn.delete(&id, &format!("{name}-delete"))
        .await
        .expect("delete");
    assert_eq!(cfn.describe(&id).await.expect("describe by id"), None);
    assert_eq!(cfn.describe(&name).await.expect("describe by name"), None);
    assert!(
        !cfn.list().await.expect("list").iter().any(|s| s.id == id),
        "a deleted stack is not listed"
    );
    cfn.delete(&id, &format!("{name}-delete-again"))
        .await
        .expect("deleting a deleted stack succeeds");

    let missing = unique("fd-nobody");
    assert_eq!(cfn.describe(&missing).await.expect("describe"), None);
    assert_eq!(cfn.first_failure(&missing).await.expect("events"), None);
}

#[tokio::test]
async fn cloudformation_reads_a_templates_parameters() {
    let cfn = cloudformation().await;
    let body = template(
        r#"
Parameters:
  ComputeMaxNodes:
    Type: Number
    Default: 4
  MasterInstanceType:
    Type: String
    AllowedValues: [c5.large, r4.large]
  AccessUsername:
    Type: String
Resources:
  Queue:
    Type: AWS::SQS::Queue
"#,
    );
    let rules = cfn.template_parameters(&body).await.expect("summary");
    assert_eq!(
        rules,
        BTreeMap::from([
            (
                "ComputeMaxNodes".to_owned(),
                ParameterRule {
                    number: true,
                    allowed: vec![],
                    required: false,
                    default: Some("4".to_owned()),
                    ssm: false,
                },
            ),
            (
                "MasterInstanceType".to_owned(),
                ParameterRule {
                    number: false,
                    allowed: vec!["c5.large".to_owned(), "r4.large".to_owned()],
                    required: true,
                    default: None,
                    ssm: false,
                },
            ),
            (
                "AccessUsername".to_owned(),
                ParameterRule {
                    number: false,
                    allowed: vec![],
                    required: true,
                    default: None,
                    ssm: false,
                },
            ),
        ])
    );
}

#[tokio::test]
async fn ec2_finds_the_login_instance_of_a_stack_by_its_cloudformation_tags() {
    let emulator = Emulator::shared();
    let conf = emulator.sdk_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let name = unique("fd-alice");
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Vpc)
                .tags(Ec2Tag::builder().key("Name").value(&name).build())
                .build(),
        )
        .send()
        .await
        .expect("create vpc");
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc id");
    let subnet = ec2
        .create_subnet()
        .vpc_id(vpc_id)
        .cidr_block("10.0.1.0/24")
        .send()
        .await
        .expect("create subnet");
    let subnet_id = subnet
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("subnet id");

    let cfn = CloudFormation::new(&conf);
    let spec = StackSpec {
        name: name.clone(),
        parameters: pairs(&[("SubnetId", subnet_id)]),
        tags: pairs(&[("USER", "alice")]),
        token: format!("{name}-create"),
        template: TemplateChoice::Install,
    };
    let id = cfn
        .create(&spec, &template(INSTANCE_TEMPLATE))
        .await
        .expect("create");
    let stack = cfn
        .describe(&id)
        .await
        .expect("describe")
        .expect("it exists");
    let address = stack.outputs.get("LoginIp").expect("the EIP output");

    let lookup = Ec2::new(&conf);
    assert_eq!(
        lookup
            .login_ip(&id, "Login")
            .await
            .expect("lookup")
            .as_ref(),
        Some(address)
    );
    assert_eq!(
        lookup.login_ip(&id, "Compute").await.expect("lookup"),
        None,
        "an instance without an Elastic IP has no public address in the emulator"
    );
    assert_eq!(lookup.login_ip(&id, "Nothing").await.expect("lookup"), None);
    let other = id.replace(&name, "fd-someone-else");
    assert_eq!(
        lookup.login_ip(&other, "Login").await.expect("lookup"),
        None
    );

    cfn.delete(&id, &format!("{name}-delete"))
        .await
        .expect("delete");
    assert_eq!(
        lookup.login_ip(&id, "Login").await.expect("lookup"),
        None,
        "terminated instances are not logins"
    );
}

/// Launches `count` instances tagged `flightdeck:stack=<stack>`, as the cluster's scheduler
/// does; returns their ids, sorted.
async fn launch_nodes(ec2: &aws_sdk_ec2::Client, stack: &str, count: i32) -> Vec<String> {
    let launched = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(count)
        .max_count(count)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Ec2Tag::builder().key(TAG_STACK).value(stack).build())
                .build(),
        )
        .send()
        .await
        .expect("run instances");
    let mut ids: Vec<String> = launched
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn ec2_finds_a_stacks_nodes_by_tag_and_terminates_them_idempotently() {
    let emulator = Emulator::shared();
    let conf = emulator.sdk_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let stack = unique("fd-alice");
    let other = unique("fd-bob");
    let nodes = launch_nodes(&ec2, &stack, 2).await;
    let bystander = launch_nodes(&ec2, &other, 1).await;
    let instances = Ec2::new(&conf);

    let ids = |found: Vec<Instance>| {
        let mut ids: Vec<String> = found.into_iter().map(|i| i.id).collect();
        ids.sort();
        ids
    };
    let found = instances.stack_instances(&stack).await.expect("list");
    assert!(
        found
            .iter()
            .all(|i| matches!(i.state, InstanceState::Pending | InstanceState::Running)),
        "{found:?}"
    );
    assert_eq!(ids(found), nodes, "the stack's nodes, and only them");

    // An id EC2 does not know fails a whole TerminateInstances call; the known one still goes.
    instances
        .terminate(&[nodes[0].clone(), "i-0000000000000dead".to_owned()])
        .await
        .expect("an unknown id is not an error");
    assert_eq!(
        ids(instances.stack_instances(&stack).await.expect("list")),
        nodes[1..],
        "terminated instances are not listed"
    );
    instances.terminate(&nodes).await.expect("terminate");
    instances
        .terminate(&nodes)
        .await
        .expect("terminating terminated instances again is fine");
    instances
        .terminate(&[])
        .await
        .expect("nothing to terminate makes no call");
    assert_eq!(instances.stack_instances(&stack).await.expect("list"), []);
    assert_eq!(
        ids(instances.stack_instances(&other).await.expect("list")),
        bystander,
        "another stack's node is left alone"
    );
    instances.terminate(&bystander).await.expect("clean up");
}

#[tokio::test]
async fn ses_refuses_an_unverified_sender_and_sends_once_verified() {
    let emulator = Emulator::shared();
    let conf = emulator.sdk_config().await;
    let from = format!("{}@example.org", unique("flightdeck"));
    let mailer = Ses::new(&conf, from.clone());
    let to = ["operator@example.org".to_owned()];

    let err = mailer
        .send(&to, "fd-alice-x is ready", "Log in at 203.0.113.7.")
        .await
        .expect_err("an unverified sender is refused");
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert_eq!(err.code.as_deref(), Some("MessageRejected"));
    assert!(!err.retryable());

    aws_sdk_sesv2::Client::new(&conf)
        .create_email_identity()
        .email_identity(&from)
        .send()
        .await
        .expect("create identity");
    mailer
        .send(
            &to,
            "fd-alice-x is ready",
            "Log in at 203.0.113.7 — ünïcödé.",
        )
        .await
        .expect("send");
}
