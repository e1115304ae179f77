//! Start-up: from validated settings to a reconciler on the real AWS adapters. Every check
//! that can catch an operator's mistake runs here, before the first resync, and names the
//! setting at fault.

use anyhow::{Context as _, bail};
use flightdeck_core::request::RequestRules;

use crate::aws::cloudformation::CloudFormation;
use crate::aws::ec2::Ec2;
use crate::aws::s3::S3Store;
use crate::aws::ses::Ses;
use crate::aws::{AwsSettings, load};
use crate::config::Settings;
use crate::ports::{ErrorKind, ObjectStore, StackService};
use crate::reconcile::{Cloud, Reconciler};

/// The reconciler on the real AWS adapters.
pub type AwsReconciler = Reconciler<S3Store, CloudFormation, Ec2, Ses>;

/// Builds the AWS clients, checks the buckets and the template, and derives the request
/// rules from the template's parameters.
///
/// # Errors
/// A message naming the setting at fault (bucket, customizer bucket, template, fixed
/// parameters, updatable parameters), or the AWS call that failed.
pub async fn connect(settings: Settings) -> anyhow::Result<AwsReconciler> {
    let aws = AwsSettings {
        region: settings.region.clone(),
        endpoint_url: settings.endpoint_url.clone(),
    };
    let conf = load(&aws).await;
    let path_style = aws.s3_path_style();
    let store = S3Store::new(&conf, settings.bucket.clone(), path_style);
    let customizer_bucket = settings
        .enrolment
        .as_ref()
        .map_or(settings.bucket.clone(), |e| e.bucket.clone());
    let customizer = S3Store::new(&conf, customizer_bucket.clone(), path_style);
    let stacks = CloudFormation::new(&conf);
    let mailer = settings
        .notify
        .as_ref()
        .map(|n| Ses::new(&conf, n.from.clone()));
    let cloud = Cloud {
        store,
        customizer,
        stacks,
        instances: Ec2::new(&conf),
        mailer,
    };

    if let Err(e) = cloud.store.any_under(&settings.home_prefix).await {
        let hint = match e.kind {
            ErrorKind::NotFound => "the bucket does not exist",
            ErrorKind::Denied => "the controller's credentials may not list it",
            _ => "AWS did not answer as expected",
        };
        bail!(
            "setting `bucket.name`: cannot list s3://{}/{}: {hint} ({e})",
            settings.bucket,
            settings.home_prefix
        );
    }
    if let Some(enrolment) = &settings.enrolment
        && let Err(e) = cloud.customizer.any_under(&enrolment.prefix).await
    {
        bail!(
            "setting `customizer.bucket`: cannot list s3://{customizer_bucket}/{}: {e}",
            enrolment.prefix
        );
    }
    let parameters = cloud
        .stacks
        .template_parameters(&settings.template)
        .await
        .context("setting `stacks.template`: CloudFormation could not read the template")?;
    let rules = RequestRules::new(
        &parameters,
        &settings.fixed_parameters,
        &settings.user_parameters,
    )
    .map_err(|e| anyhow::anyhow!("setting `stacks.parameters`: {e}"))?;
    let settable: Vec<&str> = rules.settable().collect();
    if let Some(key) = settings
        .updatable
        .iter()
        .find(|k| !settable.contains(&k.as_str()))
    {
        bail!(
            "setting `stacks.updatable`: `{key}` is not a parameter users can set (they can set: {})",
            settable.join(", ")
        );
    }
    Ok(Reconciler::new(cloud, settings, rules))
}
