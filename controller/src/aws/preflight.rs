//! [`Preflight`] on STS, SSM, SESv2, S3 and IAM: the read-only calls of `flightdeck doctor`.

use std::collections::BTreeSet;

use aws_config::SdkConfig;
use aws_sdk_iam::types::{ContextEntry, ContextKeyTypeEnum, PolicyEvaluationDecisionType};
use aws_sdk_s3::types::{FilterRuleName, NotificationConfigurationFilter};

use super::error::{classify, local};
use crate::doctor::{Decision, IdentityStatus, NotificationRule, Preflight, Probe};
use crate::ports::{CallError, ErrorKind};

/// Most names GetParameters takes in one call.
const PARAMETERS_PER_CALL: usize = 10;

/// The clients doctor reads the install's surroundings with.
#[derive(Debug, Clone)]
pub struct AwsPreflight {
    sts: aws_sdk_sts::Client,
    ssm: aws_sdk_ssm::Client,
    ses: aws_sdk_sesv2::Client,
    s3: aws_sdk_s3::Client,
    iam: aws_sdk_iam::Client,
}

impl AwsPreflight {
    /// Clients on `conf`; `path_style` as for [`super::s3::S3Store::new`].
    pub fn new(conf: &SdkConfig, path_style: bool) -> AwsPreflight {
        let s3 = aws_sdk_s3::config::Builder::from(conf)
            .force_path_style(path_style)
            .build();
        AwsPreflight {
            sts: aws_sdk_sts::Client::new(conf),
            ssm: aws_sdk_ssm::Client::new(conf),
            ses: aws_sdk_sesv2::Client::new(conf),
            s3: aws_sdk_s3::Client::from_conf(s3),
            iam: aws_sdk_iam::Client::new(conf),
        }
    }
}

/// A rule of a bucket's notification configuration, reduced to what doctor judges.
fn rule(
    target: &str,
    events: Vec<String>,
    filter: Option<&NotificationConfigurationFilter>,
) -> NotificationRule {
    let mut rule = NotificationRule {
        target: target.to_owned(),
        events,
        prefix: String::new(),
        suffix: String::new(),
    };
    for f in filter
        .and_then(|f| f.key())
        .map(|k| k.filter_rules())
        .unwrap_or_default()
    {
        let value = f.value().unwrap_or_default().to_owned();
        match f.name() {
            Some(FilterRuleName::Prefix) => rule.prefix = value,
            Some(FilterRuleName::Suffix) => rule.suffix = value,
            _ => {}
        }
    }
    rule
}

fn event_names(events: &[aws_sdk_s3::types::Event]) -> Vec<String> {
    events.iter().map(|e| e.as_str().to_owned()).collect()
}

impl Preflight for AwsPreflight {
    async fn caller(&self) -> Result<String, CallError> {
        const OPERATION: &str = "GetCallerIdentity";
        let out = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| classify("sts", OPERATION, &e))?;
        out.arn().map(str::to_owned).ok_or_else(|| {
            local(
                "sts",
                OPERATION,
                ErrorKind::Other,
                "the answer names no identity",
            )
        })
    }

    async fn missing_parameters(&self, names: &[String]) -> Result<BTreeSet<String>, CallError> {
        let mut missing = BTreeSet::new();
        for chunk in names.chunks(PARAMETERS_PER_CALL) {
            let out = self
                .ssm
                .get_parameters()
                .set_names(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| classify("ssm", "GetParameters", &e))?;
            missing.extend(out.invalid_parameters().iter().cloned());
        }
        Ok(missing)
    }

    async fn email_identity(&self, identity: &str) -> Result<Option<IdentityStatus>, CallError> {
        match self
            .ses
            .get_email_identity()
            .email_identity(identity)
            .send()
            .await
        {
            Ok(out) => Ok(Some(IdentityStatus {
                verified_for_sending: out.verified_for_sending_status(),
                verification: out.verification_status().map(|s| s.as_str().to_owned()),
            })),
            Err(e) => {
                let err = classify("sesv2", "GetEmailIdentity", &e);
                if err.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn bucket_notifications(&self, bucket: &str) -> Result<Vec<NotificationRule>, CallError> {
        let out = self
            .s3
            .get_bucket_notification_configuration()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| classify("s3", "GetBucketNotificationConfiguration", &e))?;
        let lambdas = out
            .lambda_function_configurations()
            .iter()
            .map(|c| rule(c.lambda_function_arn(), event_names(c.events()), c.filter()));
        let queues = out
            .queue_configurations()
            .iter()
            .map(|c| rule(c.queue_arn(), event_names(c.events()), c.filter()));
        let topics = out
            .topic_configurations()
            .iter()
            .map(|c| rule(c.topic_arn(), event_names(c.events()), c.filter()));
        Ok(lambdas.chain(queues).chain(topics).collect())
    }

    async fn simulate(&self, principal: &str, probe: &Probe) -> Result<Vec<Decision>, CallError> {
        let context = probe
            .context
            .iter()
            .map(|(key, value)| {
                ContextEntry::builder()
                    .context_key_name(key)
                    .context_key_values(value)
                    .context_key_type(ContextKeyTypeEnum::String)
                    .build()
            })
            .collect::<Vec<_>>();
        let out = self
            .iam
            .simulate_principal_policy()
            .policy_source_arn(principal)
            .action_names(&probe.action)
            .resource_arns(&probe.resource)
            .set_context_entries((!context.is_empty()).then_some(context))
            .send()
            .await
            .map_err(|e| classify("iam", "SimulatePrincipalPolicy", &e))?;
        Ok(out
            .evaluation_results()
            .iter()
            .map(|r| Decision {
                action: r.eval_action_name().to_owned(),
                allowed: *r.eval_decision() == PolicyEvaluationDecisionType::Allowed,
                decision: r.eval_decision().as_str().to_owned(),
            })
            .collect())
    }
}
