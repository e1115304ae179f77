//! Doctor's decisions, and its run on hand-written fakes.

use std::collections::BTreeMap;
use std::sync::Mutex;

use flightdeck_core::request::{ParameterRule, RulesError};

use super::*;
use crate::app::RulesMismatch;
use crate::config::ConfigError;
use crate::fake::{FakeStacks, FakeStore};

fn settings(env: &[(&str, &str)]) -> Settings {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut vars = vec![
        (
            "FLIGHTDECK_POLICY".to_owned(),
            root.join("policies/limits.toml").display().to_string(),
        ),
        (
            "FLIGHTDECK_STACKS_TEMPLATE".to_owned(),
            root.join("templates/cluster.yaml").display().to_string(),
        ),
    ];
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Settings::load(&root.join("deploy/local/flightdeck.toml"), vars).unwrap()
}

fn call_error(service: &'static str, operation: &'static str, kind: ErrorKind) -> CallError {
    CallError {
        service,
        operation,
        kind,
        code: Some("500".into()),
        message: "service error: unhandled error (ServiceError { raw: … })".into(),
    }
}

fn verified(yes: bool) -> IdentityStatus {
    IdentityStatus {
        verified_for_sending: yes,
        verification: Some(if yes { "SUCCESS" } else { "PENDING" }.into()),
    }
}

fn ssm(parameter: &str, name: &str, fixed: bool) -> SsmName {
    SsmName {
        parameter: parameter.into(),
        name: name.into(),
        fixed,
    }
}

// --- lines and exit codes --------------------------------------------------------------

#[test]
fn each_line_names_its_check_and_a_failure_its_fix() {
    let ok = Finding::ok(Check::SesIdentity, "ops@example.org is verified");
    assert_eq!(
        ok.to_string(),
        "ok    ses identity: ops@example.org is verified"
    );
    let failed = Finding::failed(Check::BucketNotification, "none", "put one");
    assert_eq!(
        failed.to_string(),
        "FAIL  bucket notification: none — fix: put one"
    );
    let unchecked = Finding::unchecked(Check::Permissions, "IAM cannot simulate", None);
    assert_eq!(
        unchecked.to_string(),
        "--    permissions: not checked: IAM cannot simulate"
    );
}

#[test]
fn a_check_not_made_fails_doctor_unless_allowed_and_never_counts_as_ok() {
    let report = |findings: Vec<Finding>, halted| Report { findings, halted };
    let ok = Finding::ok(Check::Template, "fits");
    let unchecked = Finding::unchecked(Check::Permissions, "no simulation", None);
    let failed = Finding::failed(Check::SsmParameters, "missing", "create it");

    let all_ok = report(vec![ok.clone()], None);
    assert_eq!((all_ok.exit_code(false), all_ok.exit_code(true)), (0, 0));
    let partly = report(vec![ok.clone(), unchecked.clone()], None);
    assert_eq!((partly.exit_code(false), partly.exit_code(true)), (1, 0));
    assert!(
        partly
            .to_string()
            .ends_with("doctor: 1 ok, 0 failed, 1 not checked (a check not made fails doctor unless --allow-unchecked)\n"),
        "{partly}"
    );
    let broken = report(vec![ok, unchecked, failed.clone()], None);
    assert_eq!((broken.exit_code(false), broken.exit_code(true)), (1, 1));
    let configuration = report(vec![failed], Some(Halt::Configuration));
    assert_eq!(configuration.exit_code(true), 1);
    let no_aws = report(
        vec![caller_unknown(&call_error(
            "sts",
            "GetCallerIdentity",
            ErrorKind::Transient,
        ))],
        Some(Halt::Aws),
    );
    assert_eq!(no_aws.exit_code(true), 2);
}

#[test]
fn a_failed_call_is_told_briefly() {
    let e = call_error("iam", "SimulatePrincipalPolicy", ErrorKind::Transient);
    assert_eq!(
        brief(&e),
        "iam SimulatePrincipalPolicy answered 500: service error: unhandled error"
    );
    let e = CallError {
        code: None,
        message: "no providers in chain (a list (of words))".into(),
        ..e
    };
    assert_eq!(
        brief(&e),
        "iam SimulatePrincipalPolicy failed: no providers in chain (a list (of words))"
    );
}

// --- the decisions ---------------------------------------------------------------------

#[test]
fn a_bad_setting_is_fixed_by_its_name_or_its_variable() {
    let e = ConfigError::Invalid {
        setting: "reconcile.resync_interval".into(),
        reason: "`soon` is not a duration".into(),
    };
    let f = configuration_failed(&e);
    assert_eq!(f.outcome, Outcome::Failed);
    assert_eq!(
        f.message,
        "setting `reconcile.resync_interval`: `soon` is not a duration"
    );
    assert_eq!(
        f.fix.as_deref(),
        Some(
            "correct `reconcile.resync_interval` in the file, or its variable FLIGHTDECK_RECONCILE_RESYNC_INTERVAL"
        )
    );
}

#[test]
fn a_template_that_does_not_fit_the_settings_names_the_parameter_and_the_fix() {
    let mismatch = |setting, error| RulesMismatch { setting, error };
    for (m, message, fix) in [
        (
            mismatch("policy", RulesError::UnknownSettable("Nodes".into())),
            "setting `policy`: user parameter `Nodes` is not a parameter of the template",
            "add `Nodes` to the template's Parameters, or remove [parameters.Nodes] from the policy",
        ),
        (
            mismatch(
                "stacks.parameters",
                RulesError::UnknownFixed("Extra".into()),
            ),
            "setting `stacks.parameters`: fixed parameter `Extra` is not a parameter of the template",
            "add `Extra` to the template's Parameters, or remove it from stacks.parameters (and FLIGHTDECK_PARAMETER_Extra)",
        ),
        (
            mismatch("policy", RulesError::UnknownFixed("SshCidr".into())),
            "setting `policy`: fixed parameter `SshCidr` is not a parameter of the template",
            "add `SshCidr` to the template's Parameters, or remove it from the policy's [fixed]",
        ),
        (
            mismatch(
                "stacks.template",
                RulesError::MissingReserved("AccessUsername".into()),
            ),
            "setting `stacks.template`: the template has no parameter `AccessUsername`, which flightdeck sets to the user's name",
            "add the parameter `AccessUsername` to the template: flightdeck sets it to the user's name",
        ),
    ] {
        let f = template_finding(3, Err(&m));
        assert_eq!(f.outcome, Outcome::Failed);
        assert_eq!((f.message.as_str(), f.fix.as_deref()), (message, Some(fix)));
    }
    let f = template_finding(20, Ok(()));
    assert_eq!(f.outcome, Outcome::Ok);
    assert_eq!(
        f.message,
        "its 20 parameters fit the policy and stacks.parameters"
    );
}

#[test]
fn the_ssm_names_read_are_the_fixed_values_else_the_defaults() {
    let rule = |ssm: bool, default: Option<&str>| ParameterRule {
        ssm,
        default: default.map(str::to_owned),
        ..ParameterRule::default()
    };
    let parameters = BTreeMap::from([
        ("VpcId".to_owned(), rule(true, Some("/net/vpc"))),
        (
            "ImageId".to_owned(),
            rule(true, Some("/aws/service/debian")),
        ),
        ("PerUser".to_owned(), rule(true, Some("/x"))),
        ("NoDefault".to_owned(), rule(true, None)),
        ("Plain".to_owned(), rule(false, Some("/not/ssm"))),
    ]);
    let fixed = BTreeMap::from([
        ("ImageId".to_owned(), "/site/image".to_owned()),
        ("PerUser".to_owned(), "/users/${user}".to_owned()),
    ]);
    assert_eq!(
        ssm_names(&parameters, &fixed),
        [
            ssm("ImageId", "/site/image", true),
            ssm("VpcId", "/net/vpc", false)
        ]
    );
}

#[test]
fn a_missing_ssm_parameter_fails_naming_where_its_name_comes_from() {
    let names = [
        ssm("ImageId", "/site/image", true),
        ssm("VpcId", "/net/vpc", false),
        ssm("SubnetId", "/net/subnet", false),
    ];
    let ok = ssm_finding(&names, &BTreeSet::new());
    assert_eq!(ok.outcome, Outcome::Ok);
    assert_eq!(
        ok.message,
        "/site/image (ImageId), /net/vpc (VpcId), /net/subnet (SubnetId) exist"
    );
    let missing = BTreeSet::from(["/site/image".to_owned(), "/net/subnet".to_owned()]);
    let f = ssm_finding(&names, &missing);
    assert_eq!(f.outcome, Outcome::Failed);
    assert!(
        f.message
            .starts_with("/site/image (ImageId), /net/subnet (SubnetId) not in SSM"),
        "{}",
        f.message
    );
    let fix = f.fix.unwrap();
    assert!(
        fix.ends_with("in stacks.parameters.ImageId, the template's default of SubnetId"),
        "{fix}"
    );
    assert_eq!(ssm_finding(&[], &missing).outcome, Outcome::Ok);
}

#[test]
fn the_sender_is_verified_by_its_address_or_its_domain() {
    let from = "flightdeck@example.org";
    let yes = verified(true);
    let no = verified(false);
    let f = ses_finding(from, Some(&yes), None);
    assert_eq!(
        (f.outcome, f.message.as_str()),
        (
            Outcome::Ok,
            "notify.from flightdeck@example.org is verified for sending"
        )
    );
    let f = ses_finding(from, Some(&no), Some(&yes));
    assert_eq!(
        (f.outcome, f.message.as_str()),
        (
            Outcome::Ok,
            "notify.from flightdeck@example.org may send: its domain example.org is verified"
        )
    );
    let f = ses_finding(from, None, Some(&no));
    assert_eq!(f.outcome, Outcome::Failed);
    assert_eq!(
        f.message,
        "the SES identity example.org (of notify.from flightdeck@example.org) is not verified for sending (verification PENDING)"
    );
    assert!(
        f.fix
            .unwrap()
            .contains("get-email-identity --email-identity example.org")
    );
    let f = ses_finding(from, Some(&no), None);
    assert_eq!(f.outcome, Outcome::Failed);
    assert!(
        f.fix
            .unwrap()
            .contains("link SES mailed to flightdeck@example.org")
    );
    let f = ses_finding(from, None, None);
    assert_eq!(f.outcome, Outcome::Failed);
    assert_eq!(
        f.message,
        "SES has no identity flightdeck@example.org nor example.org in this region (notify.from)"
    );
    assert!(
        f.fix
            .unwrap()
            .starts_with("aws sesv2 create-email-identity --email-identity example.org")
    );
}

/// The rules of `deploy/lambda/notification.json`, the configuration operators are told
/// to put.
fn shipped_rules() -> Vec<NotificationRule> {
    let text = include_str!("../../../deploy/lambda/notification.json");
    let json: serde_json::Value = serde_json::from_str(text).unwrap();
    json["LambdaFunctionConfigurations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let filter = |name: &str| {
                c["Filter"]["Key"]["FilterRules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["Name"] == name)
                    .map(|r| r["Value"].as_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            NotificationRule {
                target: c["LambdaFunctionArn"].as_str().unwrap().to_owned(),
                events: c["Events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e.as_str().unwrap().to_owned())
                    .collect(),
                prefix: filter("prefix"),
                suffix: filter("suffix"),
            }
        })
        .collect()
}

#[test]
fn the_shipped_notification_configuration_sends_every_request_event() {
    let rules = shipped_rules();
    assert_eq!(rules.len(), 2);
    let f = notification_finding("users", "home/", &rules);
    assert_eq!(f.outcome, Outcome::Ok, "{f}");
    assert_eq!(
        f.message,
        "s3://users sends every request event under home/ to arn:aws:lambda:REGION:ACCOUNT_ID:function:FUNCTION_NAME"
    );
    let queue = NotificationRule {
        target: "arn:aws:sqs:eu-west-2:1:hints".into(),
        events: vec!["s3:ObjectCreated:*".into(), "s3:ObjectRemoved:*".into()],
        prefix: String::new(),
        suffix: String::new(),
    };
    let f = notification_finding("users", "home/", &[queue]);
    assert_eq!(
        f.outcome,
        Outcome::Ok,
        "one rule for every key under the prefix"
    );
}

#[test]
fn a_notification_that_misses_request_events_fails_naming_them() {
    let shipped = shipped_rules();
    let f = notification_finding("users", "home/", &[]);
    assert_eq!(f.outcome, Outcome::Failed);
    assert_eq!(
        f.message,
        "s3://users sends no ObjectCreated of home/*.cf-create, nor ObjectRemoved of home/*.cf-create, nor ObjectCreated of home/*.cf-delete to a Lambda function, SQS queue or SNS topic: hints wait for the next resync"
    );
    assert!(
        f.fix
            .unwrap()
            .contains("put-bucket-notification-configuration --bucket users")
    );
    // Only the create rule; only single uploads; another prefix; a narrower prefix.
    let create_only = vec![shipped[0].clone()];
    let puts_only = shipped
        .iter()
        .map(|r| NotificationRule {
            events: vec!["s3:ObjectCreated:Put".into(), "s3:ObjectRemoved:*".into()],
            ..r.clone()
        })
        .collect::<Vec<_>>();
    let narrower = shipped
        .iter()
        .map(|r| NotificationRule {
            prefix: "home/alice/".into(),
            ..r.clone()
        })
        .collect::<Vec<_>>();
    for (rules, home, unsent) in [
        (create_only, "home/", "ObjectCreated of home/*.cf-delete"),
        (puts_only, "home/", "ObjectCreated of home/*.cf-create"),
        (
            shipped.clone(),
            "users/",
            "ObjectCreated of users/*.cf-create",
        ),
        (narrower, "home/", "ObjectCreated of home/*.cf-create"),
    ] {
        let f = notification_finding("users", home, &rules);
        assert_eq!(f.outcome, Outcome::Failed, "{rules:?}");
        assert!(f.message.contains(unsent), "{}", f.message);
    }
}

#[test]
fn an_empty_or_missing_customizer_default_folder_fails() {
    let folder = "customizer/default/configure.d/";
    assert_eq!(defaults_finding("c", folder, Ok(true)).outcome, Outcome::Ok);
    let f = defaults_finding("c", folder, Ok(false));
    assert_eq!(f.outcome, Outcome::Failed);
    assert_eq!(
        f.fix.as_deref(),
        Some(
            "copy the repository's: aws s3 cp --recursive customizer/default/configure.d/ s3://c/customizer/default/configure.d/"
        )
    );
    let gone = call_error("s3", "ListObjectsV2", ErrorKind::NotFound);
    assert_eq!(
        defaults_finding("c", folder, Err(&gone)).outcome,
        Outcome::Failed
    );
    let denied = call_error("s3", "ListObjectsV2", ErrorKind::Denied);
    let f = defaults_finding("c", folder, Err(&denied));
    assert_eq!(f.outcome, Outcome::NotChecked);
    assert!(f.fix.unwrap().starts_with("grant s3:ListBucket"));
}

#[test]
fn the_principal_is_the_callers_user_or_the_role_behind_its_session() {
    let p = principal_of("arn:aws:sts::123456789012:assumed-role/flightdeck/i-0abc").unwrap();
    assert_eq!(p.arn, "arn:aws:iam::123456789012:role/flightdeck");
    assert_eq!(
        (p.partition.as_str(), p.account.as_str()),
        ("aws", "123456789012")
    );
    assert_eq!(
        principal_of("arn:aws-cn:iam::1:user/ops/alice")
            .unwrap()
            .arn,
        "arn:aws-cn:iam::1:user/ops/alice"
    );
    for cannot in [
        "arn:aws:iam::1:root",
        "arn:aws:sts::1:federated-user/bob",
        "arn:aws:s3:::bucket",
        "not an arn",
    ] {
        assert_eq!(principal_of(cannot), None, "{cannot}");
    }
}

#[test]
fn the_probes_are_the_controllers_calls_with_their_conditions() {
    let role = "arn:aws:iam::123456789012:role/flightdeck-stack-role";
    let s = settings(&[("FLIGHTDECK_STACKS_SERVICE_ROLE_ARN", role)]);
    let principal = principal_of("arn:aws:sts::123456789012:assumed-role/fd/x").unwrap();
    let names = [
        ssm("VpcId", "/flightdeck/network/vpc-id", false),
        ssm(
            "ImageId",
            "/aws/service/debian/release/12/latest/amd64",
            false,
        ),
    ];
    let probes = probes(&s, "eu-west-2", &principal, &names, Some("example.org"));
    let find = |action: &str| {
        probes
            .iter()
            .find(|p| p.action == action)
            .unwrap_or_else(|| panic!("no probe of {action}"))
    };
    let create = find("cloudformation:CreateStack");
    assert_eq!(
        create.resource,
        "arn:aws:cloudformation:eu-west-2:123456789012:stack/fd-doctor-probe/00000000-0000-0000-0000-000000000000"
    );
    assert_eq!(
        create.context,
        [
            (
                "aws:RequestTag/flightdeck:owner".to_owned(),
                "local".to_owned()
            ),
            ("cloudformation:RoleArn".to_owned(), role.to_owned())
        ]
    );
    assert_eq!(find("cloudformation:DeleteStack").context.len(), 1);
    assert_eq!(find("iam:PassRole").resource, role);
    assert_eq!(
        find("ses:SendEmail").context,
        [(
            "ses:FromAddress".to_owned(),
            "flightdeck@example.org".to_owned()
        )]
    );
    assert_eq!(
        find("ec2:TerminateInstances").context,
        [(
            "aws:ResourceTag/flightdeck:stack".to_owned(),
            "fd-doctor-probe".to_owned()
        )]
    );
    let parameters: Vec<&str> = probes
        .iter()
        .filter(|p| p.action == "ssm:GetParameters")
        .map(|p| p.resource.as_str())
        .collect();
    assert_eq!(
        parameters,
        [
            "arn:aws:ssm:eu-west-2:123456789012:parameter/flightdeck/network/vpc-id",
            "arn:aws:ssm:eu-west-2::parameter/aws/service/debian/release/12/latest/amd64"
        ]
    );
    let listings: Vec<&str> = probes
        .iter()
        .filter(|p| p.action == "s3:ListBucket")
        .map(|p| p.context[0].1.as_str())
        .collect();
    assert_eq!(listings, ["home/", "flightdeck/", "customizer/"]);

    let plain = settings(&[("FLIGHTDECK_NOTIFY_ENABLED", "false")]);
    let probes = super::probes(&plain, "eu-west-2", &principal, &[], None);
    assert!(
        probes
            .iter()
            .all(|p| p.action != "iam:PassRole" && p.action != "ses:SendEmail"),
        "no role and no mail: {probes:?}"
    );
}

#[test]
fn a_call_the_policies_deny_fails_naming_it() {
    let probe = |action: &str| Probe {
        action: action.into(),
        resource: "*".into(),
        context: vec![],
    };
    let decision = |action: &str, allowed: bool| Decision {
        action: action.into(),
        allowed,
        decision: if allowed { "allowed" } else { "implicitDeny" }.into(),
    };
    let all = [
        (
            probe("ec2:DescribeInstances"),
            vec![decision("ec2:DescribeInstances", true)],
        ),
        (probe("s3:GetObject"), vec![decision("s3:GetObject", true)]),
    ];
    let f = permissions_finding("arn:aws:iam::1:role/fd", &all);
    assert_eq!(
        (f.outcome, f.message.as_str()),
        (
            Outcome::Ok,
            "arn:aws:iam::1:role/fd may make the 2 calls the controller makes"
        )
    );
    let denied = [
        all[0].clone(),
        (
            probe("ec2:TerminateInstances"),
            vec![decision("ec2:TerminateInstances", false)],
        ),
        (probe("ses:SendEmail"), vec![]),
    ];
    let f = permissions_finding("arn:aws:iam::1:role/fd", &denied);
    assert_eq!(f.outcome, Outcome::Failed);
    assert_eq!(
        f.message,
        "arn:aws:iam::1:role/fd may not call ec2:TerminateInstances on * (implicitDeny); ses:SendEmail on * (no answer)"
    );
}

// --- the run, on fakes -----------------------------------------------------------------

/// A hand-written [`Preflight`]: fixed answers, every call recorded.
struct FakePreflight {
    caller: Result<String, CallError>,
    missing: BTreeSet<String>,
    identities: BTreeMap<String, IdentityStatus>,
    rules: Vec<NotificationRule>,
    simulation: Result<bool, CallError>,
    calls: Mutex<Vec<String>>,
}

impl FakePreflight {
    fn healthy() -> FakePreflight {
        FakePreflight {
            caller: Ok("arn:aws:sts::123456789012:assumed-role/fd/x".into()),
            missing: BTreeSet::new(),
            identities: BTreeMap::from([("example.org".to_owned(), verified(true))]),
            rules: shipped_rules(),
            simulation: Ok(true),
            calls: Mutex::default(),
        }
    }

    fn record(&self, call: &str) {
        self.calls.lock().unwrap().push(call.to_owned());
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Preflight for FakePreflight {
    async fn caller(&self) -> Result<String, CallError> {
        self.record("GetCallerIdentity");
        self.caller.clone()
    }

    async fn missing_parameters(&self, names: &[String]) -> Result<BTreeSet<String>, CallError> {
        self.record(&format!("GetParameters {}", names.join(" ")));
        Ok(names
            .iter()
            .filter(|n| self.missing.contains(*n))
            .cloned()
            .collect())
    }

    async fn email_identity(&self, identity: &str) -> Result<Option<IdentityStatus>, CallError> {
        self.record(&format!("GetEmailIdentity {identity}"));
        Ok(self.identities.get(identity).cloned())
    }

    async fn bucket_notifications(&self, bucket: &str) -> Result<Vec<NotificationRule>, CallError> {
        self.record(&format!("GetBucketNotificationConfiguration {bucket}"));
        Ok(self.rules.clone())
    }

    async fn simulate(&self, _principal: &str, probe: &Probe) -> Result<Vec<Decision>, CallError> {
        self.record(&format!("SimulatePrincipalPolicy {}", probe.action));
        let allowed = self.simulation.clone()?;
        Ok(vec![Decision {
            action: probe.action.clone(),
            allowed,
            decision: if allowed { "allowed" } else { "implicitDeny" }.into(),
        }])
    }
}

/// The shipped template's parameters as CloudFormation would summarise them.
fn stacks(s: &Settings) -> FakeStacks {
    let stacks = FakeStacks::default();
    let mut parameters: BTreeMap<String, ParameterRule> = s
        .user_parameters
        .iter()
        .chain(s.fixed_parameters.keys())
        .chain(["AccessUsername".to_owned(), "FlightProfiles".to_owned()].iter())
        .map(|k| (k.clone(), ParameterRule::default()))
        .collect();
    for (name, default) in [
        ("ImageId", "/aws/service/debian"),
        ("VpcId", "/flightdeck/network/vpc-id"),
    ] {
        parameters.insert(
            name.to_owned(),
            ParameterRule {
                ssm: true,
                default: Some(default.to_owned()),
                ..ParameterRule::default()
            },
        );
    }
    *stacks.parameters.lock().unwrap() = parameters;
    stacks
}

fn customizer() -> FakeStore {
    let store = FakeStore::default();
    store.insert(
        "customizer/default/configure.d/10-access-user.sh",
        "#!/bin/sh",
    );
    store
}

const TOKEN: (&str, &str) = ("FLIGHTDECK_HINT_TOKEN", "0123456789abcdef0123");

#[tokio::test]
async fn a_healthy_install_passes_every_check() {
    let s = settings(&[TOKEN]);
    let preflight = FakePreflight::healthy();
    let report = examine(&s, "eu-west-2", &stacks(&s), &customizer(), &preflight).await;
    assert_eq!(report.exit_code(false), 0, "{report}");
    let checks: Vec<Check> = report.findings.iter().map(|f| f.check).collect();
    assert_eq!(
        checks,
        [
            Check::AwsIdentity,
            Check::Template,
            Check::SsmParameters,
            Check::SesIdentity,
            Check::BucketNotification,
            Check::CustomizerDefaults,
            Check::Permissions
        ]
    );
    let calls = preflight.calls();
    assert!(
        calls.contains(
            &"GetParameters /flightdeck/local/image-id /flightdeck/network/vpc-id".to_owned()
        ),
        "the fixed ImageId is read, not the template's default: {calls:?}"
    );
    assert!(calls.contains(&"GetEmailIdentity example.org".to_owned()));
}

#[tokio::test]
async fn each_broken_piece_is_its_own_failed_line() {
    let s = settings(&[TOKEN, ("FLIGHTDECK_NOTIFY_FROM", "fd@nowhere.example")]);
    let preflight = FakePreflight {
        missing: BTreeSet::from(["/flightdeck/network/vpc-id".to_owned()]),
        rules: vec![],
        simulation: Ok(false),
        ..FakePreflight::healthy()
    };
    let report = examine(
        &s,
        "eu-west-2",
        &stacks(&s),
        &FakeStore::default(),
        &preflight,
    )
    .await;
    let failed: Vec<Check> = report
        .findings
        .iter()
        .filter(|f| f.outcome == Outcome::Failed)
        .map(|f| f.check)
        .collect();
    assert_eq!(
        failed,
        [
            Check::SsmParameters,
            Check::SesIdentity,
            Check::BucketNotification,
            Check::CustomizerDefaults,
            Check::Permissions
        ],
        "{report}"
    );
    assert_eq!(report.exit_code(true), 1);
}

#[tokio::test]
async fn without_an_answer_from_aws_nothing_else_is_asked() {
    let s = settings(&[]);
    let preflight = FakePreflight {
        caller: Err(call_error("sts", "GetCallerIdentity", ErrorKind::Transient)),
        ..FakePreflight::healthy()
    };
    let stacks = stacks(&s);
    let report = examine(&s, "eu-west-2", &stacks, &customizer(), &preflight).await;
    assert_eq!(report.halted, Some(Halt::Aws));
    assert_eq!(report.exit_code(true), 2);
    assert_eq!(preflight.calls(), ["GetCallerIdentity"]);
    assert!(stacks.calls().is_empty());
}

#[tokio::test]
async fn a_simulation_that_fails_leaves_permissions_not_checked_after_one_call() {
    let s = settings(&[]);
    let preflight = FakePreflight {
        simulation: Err(call_error(
            "iam",
            "SimulatePrincipalPolicy",
            ErrorKind::Transient,
        )),
        ..FakePreflight::healthy()
    };
    let report = examine(&s, "eu-west-2", &stacks(&s), &customizer(), &preflight).await;
    let last = report.findings.last().unwrap();
    assert_eq!(last.check, Check::Permissions);
    assert_eq!(last.outcome, Outcome::NotChecked);
    assert_eq!(
        last.message,
        "IAM did not simulate the policies of arn:aws:iam::123456789012:role/fd: iam SimulatePrincipalPolicy answered 500: service error: unhandled error"
    );
    let simulations = preflight
        .calls()
        .iter()
        .filter(|c| c.starts_with("SimulatePrincipalPolicy"))
        .count();
    assert_eq!(simulations, 1);
    assert_eq!((report.exit_code(false), report.exit_code(true)), (1, 0));
}

#[tokio::test]
async fn a_configuration_that_does_not_load_is_a_failed_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let env = [
        ("FLIGHTDECK_POLICY", root.join("policies/limits.toml")),
        (
            "FLIGHTDECK_STACKS_TEMPLATE",
            root.join("templates/cluster.yaml"),
        ),
        ("FLIGHTDECK_RECONCILE_RESYNC_INTERVAL", "soon".into()),
    ]
    .map(|(k, v)| (k.to_owned(), v.display().to_string()));
    let report = run(&root.join("deploy/local/flightdeck.toml"), env).await;
    assert_eq!(report.halted, Some(Halt::Configuration));
    assert_eq!(report.findings.len(), 1);
    let f = &report.findings[0];
    assert_eq!(
        (f.check, f.outcome),
        (Check::Configuration, Outcome::Failed)
    );
    assert!(
        f.to_string().starts_with(
            "FAIL  configuration: setting `reconcile.resync_interval`: `soon` is not a duration"
        ),
        "{f}"
    );
    assert_eq!(report.exit_code(true), 1);
}
