//! [`Instances`] on EC2: the login address of a stack's login instance, for templates
//! that do not output it, and the cluster's instances to terminate before its stack is
//! deleted.

use aws_config::SdkConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::Filter;
use flightdeck_core::nodes::{Instance, InstanceState, TAG_STACK};

use super::error::classify;
use crate::ports::{CallError, ErrorKind, Instances};

const SERVICE: &str = "ec2";

/// Every state but `terminated`: what may still be alive, or still shutting down.
const NOT_TERMINATED: &[&str] = &["pending", "running", "shutting-down", "stopping", "stopped"];

/// Ids per TerminateInstances call (EC2 takes up to 1,000 and recommends smaller batches).
const TERMINATE_BATCH: usize = 100;

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

    /// One TerminateInstances call.
    async fn terminate_batch(&self, ids: &[String]) -> Result<(), CallError> {
        self.client
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(SERVICE, "TerminateInstances", &e))
    }
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| (*v).to_owned()).collect()))
        .build()
}

impl Instances for Ec2 {
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

    async fn stack_instances(&self, stack_name: &str) -> Result<Vec<Instance>, CallError> {
        let mut reservations = self
            .client
            .describe_instances()
            .filters(filter(&format!("tag:{TAG_STACK}"), &[stack_name]))
            .filters(filter("instance-state-name", NOT_TERMINATED))
            .into_paginator()
            .items()
            .send();
        let mut found = Vec::new();
        while let Some(reservation) = reservations.next().await {
            let reservation =
                reservation.map_err(|e| classify(SERVICE, "DescribeInstances", &e))?;
            for instance in reservation.instances() {
                let Some(id) = instance.instance_id() else {
                    continue;
                };
                let state = instance
                    .state()
                    .and_then(|s| s.name())
                    .map_or(InstanceState::Other, |n| {
                        InstanceState::from_name(n.as_str())
                    });
                found.push(Instance {
                    id: id.to_owned(),
                    state,
                });
            }
        }
        Ok(found)
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), CallError> {
        for batch in ids.chunks(TERMINATE_BATCH) {
            match self.terminate_batch(batch).await {
                // One id EC2 does not know fails the whole call and terminates none of the
                // others: try them one by one, so the known ones still go.
                Err(e) if e.kind == ErrorKind::NotFound && batch.len() > 1 => {
                    for id in batch {
                        match self.terminate_batch(std::slice::from_ref(id)).await {
                            Err(e) if e.kind == ErrorKind::NotFound => {}
                            other => other?,
                        }
                    }
                }
                // Gone already, or not visible yet: the next look lists again.
                Err(e) if e.kind == ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    }
}
