//! [`InstanceLookup`] on EC2: the login address of a stack's login instance, for templates
//! that do not output it.

use aws_config::SdkConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::Filter;

use super::error::classify;
use crate::ports::{CallError, InstanceLookup};

const SERVICE: &str = "ec2";

/// The tags CloudFormation puts on every instance it launches.
const TAG_STACK_ID: &str = "aws:cloudformation:stack-id";
const TAG_LOGICAL_ID: &str = "aws:cloudformation:logical-id";

/// EC2, in the region of the SDK configuration.
#[derive(Debug, Clone)]
pub struct Ec2 {
    client: Client,
}

impl Ec2 {
    /// A client on `conf`.
    pub fn new(conf: &SdkConfig) -> Ec2 {
        Ec2 {
            client: Client::new(conf),
        }
    }
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| (*v).to_owned()).collect()))
        .build()
}

impl InstanceLookup for Ec2 {
    async fn login_ip(
        &self,
        stack_id: &str,
        logical_id: &str,
    ) -> Result<Option<String>, CallError> {
        let mut reservations = self
            .client
            .describe_instances()
            .filters(filter(&format!("tag:{TAG_STACK_ID}"), &[stack_id]))
            .filters(filter(&format!("tag:{TAG_LOGICAL_ID}"), &[logical_id]))
            .filters(filter("instance-state-name", &["pending", "running"]))
            .into_paginator()
            .items()
            .send();
        while let Some(reservation) = reservations.next().await {
            let reservation =
                reservation.map_err(|e| classify(SERVICE, "DescribeInstances", &e))?;
            if let Some(ip) = reservation
                .instances()
                .iter()
                .find_map(|i| i.public_ip_address())
            {
                return Ok(Some(ip.to_owned()));
            }
        }
        Ok(None)
    }
}
