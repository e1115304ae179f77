//! [`StackService`] on CloudFormation: the clusters' stacks.

use std::collections::{BTreeMap, BTreeSet};

use aws_config::SdkConfig;
use aws_sdk_cloudformation::Client;
use aws_sdk_cloudformation::primitives::DateTime;
use aws_sdk_cloudformation::types::{Capability, OnFailure, Parameter, Stack, StackEvent, Tag};
use flightdeck_core::plan::{StackSpec, TemplateChoice};
use flightdeck_core::request::ParameterRule;
use flightdeck_core::stack::StackView;

use super::error::{classify, local};
use crate::ports::{CallError, ErrorKind, Page, StackService, Template, UpdateOutcome};

const SERVICE: &str = "cloudformation";

/// CloudFormation's status of a stack that is gone.
const DELETE_COMPLETE: &str = "DELETE_COMPLETE";

/// What CloudFormation answers an UpdateStack that would change nothing.
const NO_UPDATES: &str = "No updates are to be performed";

/// How the type of a parameter whose value names an SSM parameter begins.
const SSM_PARAMETER_TYPE: &str = "AWS::SSM::Parameter::Value<";

/// Reasons that report another resource's failure rather than a failure of their own.
const CASCADES: &[&str] = &[
    "Resource creation cancelled",
    "Resource update cancelled",
    "Resource deletion cancelled",
    "The following resource(s) failed to",
];

/// CloudFormation, in the region of the SDK configuration.
#[derive(Debug, Clone)]
pub struct CloudFormation {
    client: Client,
}

impl CloudFormation {
    /// A client on `conf`.
    pub fn new(conf: &SdkConfig) -> CloudFormation {
        CloudFormation {
            client: Client::new(conf),
        }
    }
}

fn epoch_seconds(time: Option<&DateTime>) -> i64 {
    time.map(DateTime::secs).unwrap_or_default()
}

/// Our view of a described stack; `login_ip` and `failure_reason` are left for the
/// reconciler.
fn view(stack: &Stack) -> StackView {
    StackView {
        name: stack.stack_name().unwrap_or_default().to_owned(),
        id: stack.stack_id().unwrap_or_default().to_owned(),
        status: stack
            .stack_status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        status_reason: stack.stack_status_reason().map(str::to_owned),
        last_change: epoch_seconds(stack.last_updated_time().or(stack.creation_time())),
        created: epoch_seconds(stack.creation_time()),
        tags: stack
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect(),
        parameters: pairs(stack.parameters(), |p| {
            (p.parameter_key(), p.parameter_value())
        }),
        outputs: pairs(stack.outputs(), |o| (o.output_key(), o.output_value())),
        failure_reason: None,
        login_ip: None,
    }
}

/// Key-value pairs of an SDK list; items without a key are left out, a missing value is
/// empty.
fn pairs<T>(
    items: &[T],
    kv: impl Fn(&T) -> (Option<&str>, Option<&str>),
) -> BTreeMap<String, String> {
    items
        .iter()
        .filter_map(|item| match kv(item) {
            (Some(k), v) => Some((k.to_owned(), v.unwrap_or_default().to_owned())),
            (None, _) => None,
        })
        .collect()
}

fn parameters(spec: &StackSpec) -> Option<Vec<Parameter>> {
    let parameters: Vec<Parameter> = spec
        .parameters
        .iter()
        .map(|(k, v)| {
            Parameter::builder()
                .parameter_key(k)
                .parameter_value(v)
                .build()
        })
        .collect();
    (!parameters.is_empty()).then_some(parameters)
}

/// The spec's parameters, and `UsePreviousValue` for each of `keep` it does not set: on
/// an update, a parameter that is not sent takes the template's default.
fn kept_parameters(spec: &StackSpec, keep: &BTreeSet<String>) -> Option<Vec<Parameter>> {
    let mut all = parameters(spec).unwrap_or_default();
    all.extend(
        keep.iter()
            .filter(|k| !spec.parameters.contains_key(*k))
            .map(|k| {
                Parameter::builder()
                    .parameter_key(k)
                    .use_previous_value(true)
                    .build()
            }),
    );
    (!all.is_empty()).then_some(all)
}

/// The spec's tags; `None` when there are none, because UpdateStack with an empty list
/// would strip the stack of every tag, our ownership tags included.
fn tags(spec: &StackSpec) -> Option<Vec<Tag>> {
    let tags: Vec<Tag> = spec
        .tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    (!tags.is_empty()).then_some(tags)
}

/// One stack event, reduced to what explains a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    logical_id: String,
    status: String,
    reason: Option<String>,
}

impl Event {
    fn of(event: &StackEvent) -> Event {
        Event {
            logical_id: event.logical_resource_id().unwrap_or_default().to_owned(),
            status: event
                .resource_status()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            reason: event
                .resource_status_reason()
                .filter(|r| !r.is_empty())
                .map(str::to_owned),
        }
    }
}

/// The first failure among `events`, given oldest first: the oldest failed event whose
/// reason is its own (`<logical id>: <reason>`), else the reason of the oldest failed
/// event that has one.
fn first_failure_of(events: &[Event]) -> Option<String> {
    let failed = || {
        events
            .iter()
            .filter(|e| e.status.ends_with("_FAILED"))
            .filter_map(|e| Some((e, e.reason.as_deref()?)))
    };
    failed()
        .find(|(_, reason)| !CASCADES.iter().any(|c| reason.starts_with(c)))
        .map(|(e, reason)| format!("{}: {reason}", e.logical_id))
        .or_else(|| failed().next().map(|(_, reason)| reason.to_owned()))
}

impl StackService for CloudFormation {
    async fn list_page(&self, next: Option<&str>) -> Result<Page<StackView>, CallError> {
        let page = self
            .client
            .describe_stacks()
            .set_next_token(next.map(str::to_owned))
            .send()
            .await
            .map_err(|e| classify(SERVICE, "DescribeStacks", &e))?;
        let items = page
            .stacks()
            .iter()
            .map(view)
            .filter(|v| v.status != DELETE_COMPLETE)
            .collect();
        Ok(Page {
            items,
            next: page.next_token().map(str::to_owned),
        })
    }

    async fn describe(&self, name_or_id: &str) -> Result<Option<StackView>, CallError> {
        match self
            .client
            .describe_stacks()
            .stack_name(name_or_id)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .stacks()
                .iter()
                .map(view)
                .find(|v| v.status != DELETE_COMPLETE)),
            Err(e) => {
                let err = classify(SERVICE, "DescribeStacks", &e);
                if err.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn create(&self, spec: &StackSpec, template: &Template) -> Result<String, CallError> {
        const OPERATION: &str = "CreateStack";
        let out = self
            .client
            .create_stack()
            .stack_name(&spec.name)
            .template_body(&template.body)
            .set_parameters(parameters(spec))
            .set_tags(tags(spec))
            .client_request_token(&spec.token)
            .capabilities(Capability::CapabilityIam)
            .set_role_arn(template.role_arn.clone())
            .on_failure(OnFailure::Rollback)
            .send()
            .await
            .map_err(|e| classify(SERVICE, OPERATION, &e))?;
        out.stack_id().map(str::to_owned).ok_or_else(|| {
            local(
                SERVICE,
                OPERATION,
                ErrorKind::Other,
                format!("the answer to creating {} has no stack id", spec.name),
            )
        })
    }

    async fn update(
        &self,
        spec: &StackSpec,
        template: &Template,
    ) -> Result<UpdateOutcome, CallError> {
        let call = self
            .client
            .update_stack()
            .stack_name(&spec.name)
            .set_tags(tags(spec))
            .client_request_token(&spec.token)
            .capabilities(Capability::CapabilityIam)
            .set_role_arn(template.role_arn.clone());
        let call = match &spec.template {
            TemplateChoice::Install => call
                .use_previous_template(false)
                .template_body(&template.body)
                .set_parameters(parameters(spec)),
            TemplateChoice::Previous { keep } => call
                .use_previous_template(true)
                .set_parameters(kept_parameters(spec, keep)),
        };
        let result = call.send().await;
        match result {
            Ok(_) => Ok(UpdateOutcome::Started),
            Err(e) => {
                let err = classify(SERVICE, "UpdateStack", &e);
                if err.kind == ErrorKind::Invalid && err.message.contains(NO_UPDATES) {
                    Ok(UpdateOutcome::NoChanges)
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn delete(&self, id: &str, token: &str) -> Result<(), CallError> {
        match self
            .client
            .delete_stack()
            .stack_name(id)
            .client_request_token(token)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = classify(SERVICE, "DeleteStack", &e);
                if err.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn first_failure(&self, id: &str) -> Result<Option<String>, CallError> {
        let mut pages = self
            .client
            .describe_stack_events()
            .stack_name(id)
            .into_paginator()
            .items()
            .send();
        let mut events = Vec::new();
        while let Some(event) = pages.next().await {
            match event {
                Ok(event) => events.push(Event::of(&event)),
                Err(e) => {
                    let err = classify(SERVICE, "DescribeStackEvents", &e);
                    if err.kind == ErrorKind::NotFound {
                        return Ok(None);
                    }
                    return Err(err);
                }
            }
        }
        // CloudFormation lists events newest first.
        events.reverse();
        Ok(first_failure_of(&events))
    }

    async fn template_parameters(
        &self,
        template: &Template,
    ) -> Result<BTreeMap<String, ParameterRule>, CallError> {
        let summary = self
            .client
            .get_template_summary()
            .template_body(&template.body)
            .send()
            .await
            .map_err(|e| classify(SERVICE, "GetTemplateSummary", &e))?;
        Ok(summary
            .parameters()
            .iter()
            .filter_map(|p| {
                let rule = ParameterRule {
                    number: p.parameter_type() == Some("Number"),
                    allowed: p
                        .parameter_constraints()
                        .map(|c| c.allowed_values().to_vec())
                        .unwrap_or_default(),
                    required: p.default_value().is_none(),
                    default: p.default_value().map(str::to_owned),
                    ssm: p
                        .parameter_type()
                        .is_some_and(|t| t.starts_with(SSM_PARAMETER_TYPE)),
                };
                Some((p.parameter_key()?.to_owned(), rule))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(logical_id: &str, status: &str, reason: Option<&str>) -> Event {
        Event {
            logical_id: logical_id.into(),
            status: status.into(),
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn the_first_failure_is_the_oldest_one_that_is_not_a_cascade() {
        let events = [
            event("fd-alice-x", "CREATE_IN_PROGRESS", Some("User Initiated")),
            event(
                "Queue",
                "CREATE_FAILED",
                Some("Resource creation cancelled"),
            ),
            event(
                "Master",
                "CREATE_FAILED",
                Some("We currently do not have sufficient r4.large capacity"),
            ),
            event(
                "Compute",
                "CREATE_FAILED",
                Some("Launch template not found"),
            ),
            event(
                "fd-alice-x",
                "ROLLBACK_IN_PROGRESS",
                Some("The following resource(s) failed to create: [Master, Compute]."),
            ),
            event("fd-alice-x", "ROLLBACK_COMPLETE", None),
        ];
        assert_eq!(
            first_failure_of(&events).as_deref(),
            Some("Master: We currently do not have sufficient r4.large capacity")
        );
    }

    #[test]
    fn cascades_alone_still_give_a_reason() {
        let events = [
            event(
                "Queue",
                "CREATE_FAILED",
                Some("Resource creation cancelled"),
            ),
            event(
                "fd-alice-x",
                "CREATE_FAILED",
                Some("The following resource(s) failed to create: [Queue]."),
            ),
        ];
        assert_eq!(
            first_failure_of(&events).as_deref(),
            Some("Resource creation cancelled")
        );
    }

    #[test]
    fn no_failed_event_means_no_failure() {
        let events = [
            event("fd-alice-x", "CREATE_IN_PROGRESS", Some("User Initiated")),
            event("Master", "CREATE_FAILED", None),
            event("fd-alice-x", "CREATE_COMPLETE", None),
        ];
        assert_eq!(first_failure_of(&events), None);
    }

    #[test]
    fn a_stack_view_takes_the_last_update_time_and_every_pair() {
        let stack = Stack::builder()
            .stack_name("fd-alice-x")
            .stack_id("arn:aws:cloudformation:eu-west-2:1:stack/fd-alice-x/1")
            .stack_status("UPDATE_COMPLETE".into())
            .creation_time(DateTime::from_secs(100))
            .last_updated_time(DateTime::from_secs(200))
            .tags(Tag::builder().key("USER").value("alice").build())
            .parameters(
                Parameter::builder()
                    .parameter_key("ComputeMaxNodes")
                    .parameter_value("25")
                    .build(),
            )
            .outputs(
                aws_sdk_cloudformation::types::Output::builder()
                    .output_key("LoginIp")
                    .output_value("192.0.2.10")
                    .build(),
            )
            .build();
        let v = view(&stack);
        assert_eq!(v.name, "fd-alice-x");
        assert_eq!(v.status, "UPDATE_COMPLETE");
        assert_eq!(v.last_change, 200);
        assert_eq!(v.tags["USER"], "alice");
        assert_eq!(v.parameters["ComputeMaxNodes"], "25");
        assert_eq!(v.outputs["LoginIp"], "192.0.2.10");
        assert_eq!((v.login_ip, v.failure_reason), (None, None));
    }
}
