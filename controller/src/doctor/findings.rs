//! What each answer means, and its fix: pure functions from what was observed to a
//! [`Finding`].

use std::collections::{BTreeMap, BTreeSet};

use flightdeck_core::request::ParameterRule;

use super::{Check, Finding, IdentityStatus, NotificationRule};
use crate::app::RulesMismatch;
use crate::config::{ConfigError, HINT_TOKEN_ENV};
use crate::ports::{CallError, ErrorKind};

/// Where the IAM statements doctor itself needs are documented.
pub(crate) const DOCTOR_STATEMENT: &str = "policies/controller.json, the `Doctor…` statements";

/// A configuration that does not load, and how to correct it.
pub fn configuration_failed(error: &ConfigError) -> Finding {
    let fix = match error {
        ConfigError::Read { .. } => {
            "give the configuration file with --config or FLIGHTDECK_CONFIG".to_owned()
        }
        ConfigError::Parse { .. } => {
            "correct the file where shown (a key flightdeck does not know is a mistake too)"
                .to_owned()
        }
        ConfigError::Policy { .. } => "correct the policy file at the line shown".to_owned(),
        ConfigError::Invalid { setting, .. } => format!(
            "correct `{setting}` in the file, or its variable FLIGHTDECK_{}",
            setting.replace('.', "_").to_ascii_uppercase()
        ),
    };
    Finding::failed(Check::Configuration, error.to_string(), fix)
}

/// AWS could not say who doctor is: nothing else can be asked.
pub fn caller_unknown(error: &CallError) -> Finding {
    let fix = match error.kind {
        ErrorKind::Denied => {
            "give doctor the controller's credentials (the standard chain: AWS_* variables, profile, web identity, container or instance role)"
        }
        _ => "check the network, `region` (or AWS_REGION) and `endpoint_url`",
    };
    Finding::failed(
        Check::AwsIdentity,
        format!("AWS cannot be asked who doctor runs as: {}", brief(error)),
        fix,
    )
}

/// A failed call in a few words: the service, the operation, the code and the service's
/// message, without the SDK's debugging detail.
pub fn brief(error: &CallError) -> String {
    let message = error.message.as_str();
    let message = message
        .match_indices(" (")
        .find(|(at, _)| message[at + 2..].starts_with(|c: char| c.is_ascii_uppercase()))
        .map_or(message, |(at, _)| &message[..at]);
    match &error.code {
        Some(code) => format!(
            "{} {} answered {code}: {message}",
            error.service, error.operation
        ),
        None => format!("{} {} failed: {message}", error.service, error.operation),
    }
}

/// A call that did not answer: the check is not made.
pub(crate) fn unanswered(check: Check, error: &CallError, permission: &str) -> Finding {
    match error.kind {
        ErrorKind::Denied => Finding::unchecked(
            check,
            format!("doctor may not ask: {}", brief(error)),
            Some(format!("grant {permission} ({DOCTOR_STATEMENT})")),
        ),
        _ => Finding::unchecked(
            check,
            format!("AWS did not answer: {}", brief(error)),
            Some("run doctor again".to_owned()),
        ),
    }
}

/// The template's parameters against the settings (`rules` is [`request_rules`]'s answer).
pub fn template_finding(count: usize, rules: Result<(), &RulesMismatch>) -> Finding {
    use flightdeck_core::request::RulesError as E;
    let Err(mismatch) = rules else {
        return Finding::ok(
            Check::Template,
            format!("its {count} parameters fit the policy and stacks.parameters"),
        );
    };
    let fix = match (&mismatch.error, mismatch.setting) {
        (E::UnknownSettable(name), _) => format!(
            "add `{name}` to the template's Parameters, or remove [parameters.{name}] from the policy"
        ),
        (E::SettableFixed(name), _) => format!(
            "remove `{name}` from the policy's [parameters] or from the fixed parameters (the policy's [fixed], stacks.parameters)"
        ),
        (E::UnknownFixed(name), "policy") => format!(
            "add `{name}` to the template's Parameters, or remove it from the policy's [fixed]"
        ),
        (E::UnknownFixed(name), _) => format!(
            "add `{name}` to the template's Parameters, or remove it from stacks.parameters (and FLIGHTDECK_PARAMETER_{name})"
        ),
        (E::MissingReserved(name), _) => format!(
            "add the parameter `{name}` to the template: flightdeck sets it to the user's name"
        ),
    };
    Finding::failed(Check::Template, mismatch.to_string(), fix)
}

/// An SSM parameter the template reads, and where its name comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsmName {
    /// The template parameter, e.g. `VpcId`.
    pub parameter: String,
    /// The SSM parameter's name, e.g. `/flightdeck/network/vpc-id`.
    pub name: String,
    /// Named in `stacks.parameters` (or the policy's `[fixed]`), not by the template's default.
    pub fixed: bool,
}

/// The SSM parameters CloudFormation will read for every stack: of each
/// `AWS::SSM::Parameter::Value<…>` parameter, its fixed value, else its default. Values
/// that depend on the user or cluster (`${user}`) are left out.
pub fn ssm_names(
    parameters: &BTreeMap<String, ParameterRule>,
    fixed: &BTreeMap<String, String>,
) -> Vec<SsmName> {
    parameters
        .iter()
        .filter(|(_, rule)| rule.ssm)
        .filter_map(|(parameter, rule)| {
            let (name, fixed) = match fixed.get(parameter) {
                Some(value) => (value.clone(), true),
                None => (rule.default.clone()?, false),
            };
            (!name.contains("${")).then(|| SsmName {
                parameter: parameter.clone(),
                name,
                fixed,
            })
        })
        .collect()
}

fn listed<'a>(names: impl Iterator<Item = &'a SsmName>) -> String {
    names
        .map(|n| format!("{} ({})", n.name, n.parameter))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SSM check, from the names read and those SSM does not know.
pub fn ssm_finding(names: &[SsmName], missing: &BTreeSet<String>) -> Finding {
    if names.is_empty() {
        return Finding::ok(Check::SsmParameters, "the template reads none");
    }
    let absent: Vec<&SsmName> = names.iter().filter(|n| missing.contains(&n.name)).collect();
    if absent.is_empty() {
        return Finding::ok(
            Check::SsmParameters,
            format!("{} exist", listed(names.iter())),
        );
    }
    let places = absent
        .iter()
        .map(|n| {
            if n.fixed {
                format!("stacks.parameters.{}", n.parameter)
            } else {
                format!("the template's default of {}", n.parameter)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    Finding::failed(
        Check::SsmParameters,
        format!(
            "{} not in SSM in this region: CloudFormation refuses every create and update",
            listed(absent.into_iter())
        ),
        format!(
            "create it (aws ssm put-parameter --type String --name NAME --value VALUE), or name one that exists in {places}"
        ),
    )
}

/// The sender check: `from`'s own identity and its domain's (`None`: SES has none).
pub fn ses_finding(
    from: &str,
    address: Option<&IdentityStatus>,
    domain: Option<&IdentityStatus>,
) -> Finding {
    let domain_name = from.rsplit_once('@').map_or(from, |(_, d)| d);
    let verified = |s: Option<&IdentityStatus>| s.is_some_and(|s| s.verified_for_sending);
    if verified(address) {
        return Finding::ok(
            Check::SesIdentity,
            format!("notify.from {from} is verified for sending"),
        );
    }
    if verified(domain) {
        return Finding::ok(
            Check::SesIdentity,
            format!("notify.from {from} may send: its domain {domain_name} is verified"),
        );
    }
    let status = |s: &IdentityStatus| s.verification.clone().unwrap_or_else(|| "unknown".into());
    match (address, domain) {
        (_, Some(d)) => Finding::failed(
            Check::SesIdentity,
            format!(
                "the SES identity {domain_name} (of notify.from {from}) is not verified for sending (verification {})",
                status(d)
            ),
            format!(
                "publish the DNS records that `aws sesv2 get-email-identity --email-identity {domain_name}` lists, and wait for SES to see them"
            ),
        ),
        (Some(a), None) => Finding::failed(
            Check::SesIdentity,
            format!(
                "the SES identity {from} (notify.from) is not verified for sending (verification {})",
                status(a)
            ),
            format!("follow the link SES mailed to {from}, or verify its domain {domain_name}"),
        ),
        (None, None) => Finding::failed(
            Check::SesIdentity,
            format!("SES has no identity {from} nor {domain_name} in this region (notify.from)"),
            format!(
                "aws sesv2 create-email-identity --email-identity {domain_name}, then publish its DNS records; or set notify.from to a verified address"
            ),
        ),
    }
}

/// Whether `events` holds every event of a kind (`ObjectCreated`, `ObjectRemoved`): its
/// wildcard, or each of its events (a multipart upload, a copy and a delete marker count).
fn every_event(events: &[String], kind: &str) -> bool {
    let each: &[&str] = match kind {
        "ObjectCreated" => &["Put", "Post", "Copy", "CompleteMultipartUpload"],
        _ => &["Delete", "DeleteMarkerCreated"],
    };
    let has = |name: &str| events.iter().any(|e| e == &format!("s3:{kind}:{name}"));
    has("*") || each.iter().all(|e| has(e))
}

/// The events the controller wants hints for: the kind and the file suffix.
const HINTED: [(&str, &str); 3] = [
    ("ObjectCreated", ".cf-create"),
    ("ObjectRemoved", ".cf-create"),
    ("ObjectCreated", ".cf-delete"),
];

/// The notification check: whether every request event under the home prefix reaches a
/// Lambda function, SQS queue or SNS topic (the forwarder or its queue).
pub fn notification_finding(
    bucket: &str,
    home_prefix: &str,
    rules: &[NotificationRule],
) -> Finding {
    let mut targets = BTreeSet::new();
    let mut unsent = Vec::new();
    for (kind, suffix) in HINTED {
        let covering: Vec<&NotificationRule> = rules
            .iter()
            .filter(|r| {
                every_event(&r.events, kind)
                    && home_prefix.starts_with(&r.prefix)
                    && suffix.ends_with(&r.suffix)
            })
            .collect();
        if covering.is_empty() {
            unsent.push(format!("{kind} of {home_prefix}*{suffix}"));
        }
        targets.extend(covering.into_iter().map(|r| r.target.as_str()));
    }
    if unsent.is_empty() {
        let targets = targets.into_iter().collect::<Vec<_>>().join(", ");
        return Finding::ok(
            Check::BucketNotification,
            format!("s3://{bucket} sends every request event under {home_prefix} to {targets}"),
        );
    }
    Finding::failed(
        Check::BucketNotification,
        format!(
            "s3://{bucket} sends no {} to a Lambda function, SQS queue or SNS topic: hints wait for the next resync",
            unsent.join(", nor ")
        ),
        format!(
            "put the rules of deploy/lambda/notification.json, with the forwarder's ARN and prefix {home_prefix}, with aws s3api put-bucket-notification-configuration --bucket {bucket} (merge what get-bucket-notification-configuration shows first)"
        ),
    )
}

/// No notification is needed when hints are off.
pub(crate) fn hints_off() -> Finding {
    Finding::ok(
        Check::BucketNotification,
        format!(
            "not needed: hints are off (no http.hint_token_file nor {HINT_TOKEN_ENV}), requests are found by the resync"
        ),
    )
}

/// The customizer check: whether the default folder holds anything.
pub fn defaults_finding(bucket: &str, folder: &str, listed: Result<bool, &CallError>) -> Finding {
    match listed {
        Ok(true) => Finding::ok(
            Check::CustomizerDefaults,
            format!("s3://{bucket}/{folder} holds the default scripts"),
        ),
        Ok(false) => Finding::failed(
            Check::CustomizerDefaults,
            format!("s3://{bucket}/{folder} is empty: every node runs the scripts there"),
            format!(
                "copy the repository's: aws s3 cp --recursive customizer/default/configure.d/ s3://{bucket}/{folder}"
            ),
        ),
        Err(e) if e.kind == ErrorKind::NotFound => Finding::failed(
            Check::CustomizerDefaults,
            format!(
                "the customizer bucket {bucket} does not exist ({})",
                brief(e)
            ),
            "create it, or correct `customizer.bucket`",
        ),
        Err(e) => unanswered(
            Check::CustomizerDefaults,
            e,
            "s3:ListBucket on the customizer bucket",
        ),
    }
}
