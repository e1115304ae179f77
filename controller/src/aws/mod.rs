//! The real implementations of [`crate::ports`] on the AWS SDK for Rust.
//!
//! Each adapter turns SDK types into our own at its edge; every SDK error goes through
//! [`error`], the one place that decides what kind of failure it is.

pub mod cloudformation;
pub mod ec2;
pub mod error;
pub mod preflight;
pub mod s3;
pub mod ses;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Where to reach AWS, beyond what the standard chain finds (environment, profile, IMDS, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    /// Region override; when `None`, the standard chain decides.
    pub region: Option<String>,
    /// Endpoint override for an S3-compatible store or a local emulator; applies to every
    /// service.
    pub endpoint_url: Option<String>,
}

impl AwsSettings {
    /// Whether S3 must use path-style addressing (`endpoint/bucket/key`): with an endpoint
    /// override, bucket names cannot be resolved as host names.
    pub fn s3_path_style(&self) -> bool {
        self.endpoint_url.is_some()
    }
}

/// Every call has an end: a connection within 5 s, an attempt within 30 s, and the whole
/// call, retries included, within 2 minutes. A hung endpoint then fails the call (a
/// transient error, retried later) instead of stalling a pass.
fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(30))
        .operation_timeout(Duration::from_secs(120))
        .build()
}

/// The shared SDK configuration: the standard credential and region chain, the overrides
/// in `settings`, and the standard retry mode (which retries throttling, timeouts and 5xx
/// with backoff and jitter, up to the SDK's default number of attempts).
pub async fn load(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard())
        .timeout_config(timeouts());
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &settings.endpoint_url {
        loader = loader.endpoint_url(endpoint.clone());
    }
    loader.load().await
}
