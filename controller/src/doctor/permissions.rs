//! The permission check: the calls the controller makes, as IAM policy simulation probes,
//! and what IAM's decisions mean.

use flightdeck_core::identity::TAG_OWNER;
use flightdeck_core::key::ClusterKey;
use flightdeck_core::nodes::TAG_STACK;

use super::{Check, Decision, Finding, Probe, SsmName};
use crate::config::Settings;
use crate::enrol::DEFAULT_FOLDER;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user or role ARN.
    pub arn: String,
    /// `aws`, `aws-cn`, `aws-us-gov`.
    pub partition: String,
    /// The account id.
    pub account: String,
}

/// The user or role behind the caller's ARN: an assumed role's session becomes its role
/// (without its path, which the session ARN does not show); the root user and federated
/// users cannot be simulated.
pub fn principal_of(caller: &str) -> Option<Principal> {
    let mut parts = caller.splitn(6, ':');
    let (arn, partition, service, _region, account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if arn != "arn" || !matches!(service, "iam" | "sts") {
        return None;
    }
    let resource = if let Some(session) = resource.strip_prefix("assumed-role/") {
        format!("role/{}", session.split('/').next()?)
    } else if resource.starts_with("role/") || resource.starts_with("user/") {
        resource.to_owned()
    } else {
        return None;
    };
    Some(Principal {
        arn: format!("arn:{partition}:iam::{account}:{resource}"),
        partition: partition.to_owned(),
        account: account.to_owned(),
    })
}

/// The calls the controller makes, as `policies/controller.json` grants them, each on a
/// resource of this install and with the condition keys the real call carries. `sender` is
/// the SES identity notifications are sent through.
pub fn probes(
    settings: &Settings,
    region: &str,
    principal: &Principal,
    ssm: &[SsmName],
    sender: Option<&str>,
) -> Vec<Probe> {
    let (p, account) = (&principal.partition, &principal.account);
    let arn =
        |service: &str, resource: &str| format!("arn:{p}:{service}:{region}:{account}:{resource}");
    let probe = |action: &str, resource: String, context: &[(&str, &str)]| Probe {
        action: action.to_owned(),
        resource,
        context: context
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    let key = ClusterKey::new("doctor", "probe").expect("a valid key");
    let stack_name = settings.identity.stack_name(&key);
    let owner = settings.identity.owner();
    let (bucket, home, own) = (
        &settings.bucket,
        &settings.home_prefix,
        &settings.controller_prefix,
    );
    let customizer = &settings.enrolment;
    let mut probes = vec![
        probe(
            "s3:ListBucket",
            format!("arn:{p}:s3:::{bucket}"),
            &[("s3:prefix", home)],
        ),
        probe(
            "s3:ListBucket",
            format!("arn:{p}:s3:::{bucket}"),
            &[("s3:prefix", own)],
        ),
    ];
    for action in ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"] {
        probes.push(probe(
            action,
            format!("arn:{p}:s3:::{bucket}/{home}doctor/probe.cf-status"),
            &[],
        ));
        probes.push(probe(
            action,
            format!("arn:{p}:s3:::{bucket}/{own}doctor-probe"),
            &[],
        ));
    }
    probes.push(probe(
        "s3:ListBucket",
        format!("arn:{p}:s3:::{}", customizer.bucket),
        &[("s3:prefix", &customizer.prefix)],
    ));
    probes.push(probe(
        "s3:GetObject",
        format!(
            "arn:{p}:s3:::{}/{}",
            customizer.bucket,
            customizer.folder(DEFAULT_FOLDER)
        ),
        &[],
    ));
    let stack = arn(
        "cloudformation",
        &format!("stack/{stack_name}/00000000-0000-0000-0000-000000000000"),
    );
    let request_tag = format!("aws:RequestTag/{TAG_OWNER}");
    let resource_tag = format!("aws:ResourceTag/{TAG_OWNER}");
    let role = settings.template.role_arn.as_deref();
    // DeleteStack sends no role: CloudFormation uses the stack's.
    for (action, tag, sends_role) in [
        ("cloudformation:CreateStack", &request_tag, true),
        ("cloudformation:UpdateStack", &resource_tag, true),
        ("cloudformation:DeleteStack", &resource_tag, false),
    ] {
        let mut context = vec![(tag.as_str(), owner)];
        if let Some(role) = role.filter(|_| sends_role) {
            context.push(("cloudformation:RoleArn", role));
        }
        probes.push(probe(action, stack.clone(), &context));
    }
    probes.push(probe("cloudformation:DescribeStackEvents", stack, &[]));
    probes.push(probe("cloudformation:DescribeStacks", "*".into(), &[]));
    probes.push(probe("cloudformation:GetTemplateSummary", "*".into(), &[]));
    if let Some(role) = role {
        probes.push(probe(
            "iam:PassRole",
            role.to_owned(),
            &[("iam:PassedToService", "cloudformation.amazonaws.com")],
        ));
    }
    for n in ssm {
        let name = n.name.trim_start_matches('/');
        // Public parameters (/aws/service/...) belong to no account.
        let resource = if name.starts_with("aws/") {
            format!("arn:{p}:ssm:{region}::parameter/{name}")
        } else {
            arn("ssm", &format!("parameter/{name}"))
        };
        probes.push(probe("ssm:GetParameters", resource, &[]));
    }
    probes.push(probe("ec2:DescribeInstances", "*".into(), &[]));
    probes.push(probe(
        "ec2:TerminateInstances",
        arn("ec2", "instance/i-0123456789abcdef0"),
        &[(&format!("aws:ResourceTag/{TAG_STACK}"), &stack_name)],
    ));
    if let (Some(notify), Some(sender)) = (&settings.notify, sender) {
        probes.push(probe(
            "ses:SendEmail",
            arn("ses", &format!("identity/{sender}")),
            &[("ses:FromAddress", &notify.from)],
        ));
    }
    probes
}

/// The permission check, from IAM's decisions on every probe.
pub fn permissions_finding(principal: &str, decisions: &[(Probe, Vec<Decision>)]) -> Finding {
    let denied: Vec<String> = decisions
        .iter()
        .flat_map(|(probe, ds)| {
            let missing = ds
                .is_empty()
                .then(|| format!("{} on {} (no answer)", probe.action, probe.resource));
            ds.iter()
                .filter(|d| !d.allowed)
                .map(|d| format!("{} on {} ({})", d.action, probe.resource, d.decision))
                .chain(missing)
                .collect::<Vec<_>>()
        })
        .collect();
    if denied.is_empty() {
        return Finding::ok(
            Check::Permissions,
            format!(
                "{principal} may make the {} calls the controller makes",
                decisions.len()
            ),
        );
    }
    Finding::failed(
        Check::Permissions,
        format!("{principal} may not call {}", denied.join("; ")),
        "attach policies/controller.json to it, its placeholders replaced (policies/README.md)",
    )
}
