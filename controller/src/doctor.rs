//! `flightdeck doctor`: a preflight of a configured install, one line per check, each
//! failure with its fix.
//!
//! The checks: the configuration and the admission policy load; the template's parameters
//! fit the policy (the start-up check, [`crate::app::request_rules`]); the SSM parameters
//! the template reads exist; the sender of notifications is verified in SES; the users'
//! bucket sends request events towards `POST /hints`; the customizer bucket holds the
//! default scripts; and the identity doctor runs as may make every call the controller
//! makes (IAM policy simulation). Run it with the controller's own credentials.
//!
//! What each answer means, and the fix, is decided by the pure functions here; the calls
//! are behind [`Preflight`] and the controller's own ports.
//!
//! A check that could not be made (IAM cannot simulate, doctor may not ask, AWS did not
//! answer) is "not checked", never "ok": it fails doctor unless the operator accepts it
//! with `--allow-unchecked`.

mod findings;
mod permissions;
mod report;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

pub use findings::{
    SsmName, brief, caller_unknown, configuration_failed, defaults_finding, notification_finding,
    ses_finding, ssm_finding, ssm_names, template_finding,
};
pub use permissions::{Principal, permissions_finding, principal_of, probes};
pub use report::{Check, Finding, Halt, Outcome, Report};

use findings::{DOCTOR_STATEMENT, hints_off, unanswered};

use crate::app::{aws_cloud, request_rules};
use crate::aws::preflight::AwsPreflight;
use crate::aws::{AwsSettings, load};
use crate::config::Settings;
use crate::enrol::DEFAULT_FOLDER;
use crate::leader::Fence;
use crate::metrics::Metrics;
use crate::ports::{CallError, ErrorKind, ObjectStore, StackService};

/// An SES identity's state (GetEmailIdentity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityStatus {
    /// `VerifiedForSendingStatus`.
    pub verified_for_sending: bool,
    /// `VerificationStatus` (`PENDING`, `SUCCESS`, `FAILED`, …), when given.
    pub verification: Option<String>,
}

/// One rule of a bucket's event notifications (Lambda, SQS or SNS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRule {
    /// The function, queue or topic ARN.
    pub target: String,
    /// Event names, e.g. `s3:ObjectCreated:*`.
    pub events: Vec<String>,
    /// The key prefix filter; empty: none.
    pub prefix: String,
    /// The key suffix filter; empty: none.
    pub suffix: String,
}

/// One call to simulate: an action on a resource, with the condition keys the real call
/// carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// E.g. `cloudformation:CreateStack`.
    pub action: String,
    /// The resource ARN, or `*`.
    pub resource: String,
    /// Condition keys and their values.
    pub context: Vec<(String, String)>,
}

/// IAM's decision on one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The action.
    pub action: String,
    /// Whether it is allowed.
    pub allowed: bool,
    /// IAM's word: `allowed`, `implicitDeny`, `explicitDeny`.
    pub decision: String,
}

/// The read-only calls doctor makes beyond the controller's ports.
///
/// Contract: nothing is written. A missing SES identity is `Ok(None)`; every other failed
/// call is an error, classified as everywhere else ([`crate::aws::error`]).
pub trait Preflight: Send + Sync {
    /// The ARN doctor's credentials stand for (STS GetCallerIdentity).
    fn caller(&self) -> impl Future<Output = Result<String, CallError>> + Send;
    /// Which of `names` do not exist (SSM GetParameters).
    fn missing_parameters(
        &self,
        names: &[String],
    ) -> impl Future<Output = Result<BTreeSet<String>, CallError>> + Send;
    /// An SES identity (an address or a domain), or `None` when SES has none by that name.
    fn email_identity(
        &self,
        identity: &str,
    ) -> impl Future<Output = Result<Option<IdentityStatus>, CallError>> + Send;
    /// The bucket's Lambda, SQS and SNS notification rules.
    fn bucket_notifications(
        &self,
        bucket: &str,
    ) -> impl Future<Output = Result<Vec<NotificationRule>, CallError>> + Send;
    /// IAM's decisions for `principal` making the probed call (SimulatePrincipalPolicy).
    fn simulate(
        &self,
        principal: &str,
        probe: &Probe,
    ) -> impl Future<Output = Result<Vec<Decision>, CallError>> + Send;
}

/// Loads the configuration at `config` (with `env`'s overrides) and runs every check on
/// the real AWS clients.
pub async fn run(config: &Path, env: impl IntoIterator<Item = (String, String)>) -> Report {
    let settings = match Settings::load(config, env) {
        Ok(settings) => settings,
        Err(e) => {
            return Report {
                findings: vec![configuration_failed(&e)],
                halted: Some(Halt::Configuration),
            };
        }
    };
    let loaded = Finding::ok(
        Check::Configuration,
        format!("{} and its admission policy load", config.display()),
    );
    let aws = AwsSettings {
        region: settings.region.clone(),
        endpoint_url: settings.endpoint_url.clone(),
    };
    let conf = load(&aws).await;
    let region = conf.region().map(ToString::to_string).unwrap_or_default();
    let metrics = Arc::new(Metrics::new(false));
    // Doctor only reads: the fence of a one-off command is never asked.
    let cloud = aws_cloud(&settings, &metrics, &Fence::command(metrics.clone())).await;
    let preflight = AwsPreflight::new(&conf, aws.s3_path_style());
    let mut report = examine(
        &settings,
        &region,
        &cloud.stacks,
        &cloud.customizer,
        &preflight,
    )
    .await;
    report.findings.insert(0, loaded);
    report
}

/// Every check after the configuration's, in order.
pub async fn examine(
    settings: &Settings,
    region: &str,
    stacks: &impl StackService,
    customizer: &impl ObjectStore,
    preflight: &impl Preflight,
) -> Report {
    let caller = match preflight.caller().await {
        Ok(arn) => arn,
        Err(e) => {
            return Report {
                findings: vec![caller_unknown(&e)],
                halted: Some(Halt::Aws),
            };
        }
    };
    let mut findings = vec![Finding::ok(
        Check::AwsIdentity,
        format!("doctor runs as {caller} in {region}"),
    )];
    let ssm = match stacks.template_parameters(&settings.template).await {
        Ok(parameters) => {
            let rules = request_rules(&parameters, settings);
            findings.push(template_finding(
                parameters.len(),
                rules.as_ref().map(|_| ()),
            ));
            let ssm = ssm_names(&parameters, &settings.fixed_parameters);
            findings.push(check_ssm(&ssm, preflight).await);
            Some(ssm)
        }
        Err(e) => {
            findings.push(if e.kind == ErrorKind::Invalid {
                Finding::failed(
                    Check::Template,
                    format!("CloudFormation cannot read stacks.template: {}", brief(&e)),
                    "correct the template (cfn-lint shows most mistakes)",
                )
            } else {
                unanswered(Check::Template, &e, "cloudformation:GetTemplateSummary")
            });
            findings.push(Finding::unchecked(
                Check::SsmParameters,
                "the template's parameters could not be read",
                None,
            ));
            None
        }
    };
    let (finding, sender) = check_ses(settings, preflight).await;
    findings.push(finding);
    findings.push(match settings.http.hint_token {
        None => hints_off(),
        Some(_) => match preflight.bucket_notifications(&settings.bucket).await {
            Ok(rules) => notification_finding(&settings.bucket, &settings.home_prefix, &rules),
            Err(e) if e.kind == ErrorKind::NotFound => Finding::failed(
                Check::BucketNotification,
                format!(
                    "the users' bucket {} does not exist ({})",
                    settings.bucket,
                    brief(&e)
                ),
                "create it, or correct `bucket.name`",
            ),
            Err(e) => unanswered(Check::BucketNotification, &e, "s3:GetBucketNotification"),
        },
    });
    let folder = settings.enrolment.folder(DEFAULT_FOLDER);
    let listed = customizer.any_under(&folder).await;
    findings.push(defaults_finding(
        &settings.enrolment.bucket,
        &folder,
        listed.as_ref().map(|b| *b),
    ));
    findings.push(
        check_permissions(
            settings,
            region,
            &caller,
            ssm.as_deref(),
            sender.as_deref(),
            preflight,
        )
        .await,
    );
    Report {
        findings,
        halted: None,
    }
}

async fn check_ssm(names: &[SsmName], preflight: &impl Preflight) -> Finding {
    if names.is_empty() {
        return ssm_finding(names, &BTreeSet::new());
    }
    let unique: Vec<String> = names
        .iter()
        .map(|n| n.name.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    match preflight.missing_parameters(&unique).await {
        Ok(missing) => ssm_finding(names, &missing),
        Err(e) => unanswered(Check::SsmParameters, &e, "ssm:GetParameters"),
    }
}

/// The sender check, and the identity mail goes out through when there is one.
async fn check_ses(settings: &Settings, preflight: &impl Preflight) -> (Finding, Option<String>) {
    let Some(notify) = &settings.notify else {
        return (
            Finding::ok(
                Check::SesIdentity,
                "notifications are off (notify.enabled = false): nothing is sent",
            ),
            None,
        );
    };
    let from = notify.from.as_str();
    let domain = from.rsplit_once('@').map_or(from, |(_, d)| d);
    let address = match preflight.email_identity(from).await {
        Ok(found) => found,
        Err(e) => {
            return (
                unanswered(Check::SesIdentity, &e, "ses:GetEmailIdentity"),
                None,
            );
        }
    };
    if address.as_ref().is_some_and(|a| a.verified_for_sending) {
        return (
            ses_finding(from, address.as_ref(), None),
            Some(from.to_owned()),
        );
    }
    match preflight.email_identity(domain).await {
        Ok(found) => {
            let finding = ses_finding(from, address.as_ref(), found.as_ref());
            let sender = (finding.outcome == Outcome::Ok).then(|| domain.to_owned());
            (finding, sender)
        }
        Err(e) => (
            unanswered(Check::SesIdentity, &e, "ses:GetEmailIdentity"),
            None,
        ),
    }
}

async fn check_permissions(
    settings: &Settings,
    region: &str,
    caller: &str,
    ssm: Option<&[SsmName]>,
    sender: Option<&str>,
    preflight: &impl Preflight,
) -> Finding {
    let Some(principal) = principal_of(caller) else {
        return Finding::unchecked(
            Check::Permissions,
            format!("{caller} is not an IAM user or role, so IAM cannot simulate its policies"),
            Some("run doctor with the controller's own credentials".to_owned()),
        );
    };
    let mut decisions = Vec::new();
    for probe in probes(
        settings,
        region,
        &principal,
        ssm.unwrap_or_default(),
        sender,
    ) {
        match preflight.simulate(&principal.arn, &probe).await {
            Ok(ds) => decisions.push((probe, ds)),
            Err(e) => {
                let fix = (e.kind == ErrorKind::Denied).then(|| {
                    format!(
                        "grant iam:SimulatePrincipalPolicy on {} ({DOCTOR_STATEMENT})",
                        principal.arn
                    )
                });
                return Finding::unchecked(
                    Check::Permissions,
                    format!(
                        "IAM did not simulate the policies of {}: {}",
                        principal.arn,
                        brief(&e)
                    ),
                    fix,
                );
            }
        }
    }
    permissions_finding(&principal.arn, &decisions)
}

#[cfg(test)]
mod tests;
