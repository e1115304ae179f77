//! Counts every AWS call by service, operation and outcome, around any adapter: the real
//! ones and the fakes alike.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use flightdeck_core::nodes::Instance;
use flightdeck_core::plan::StackSpec;
use flightdeck_core::request::ParameterRule;
use flightdeck_core::snapshot::ObjectMeta;
use flightdeck_core::stack::StackView;

use crate::metrics::Metrics;
use crate::ports::{
    CallError, Fetched, Instances, Mailer, ObjectStore, Read, StackService, Template, UpdateOutcome,
};

/// An adapter whose calls are counted.
pub struct Instrumented<T> {
    inner: T,
    metrics: Arc<Metrics>,
}

impl<T> Instrumented<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, metrics: Arc<Metrics>) -> Self {
        Instrumented { inner, metrics }
    }

    /// The adapter inside.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    async fn call<R>(
        &self,
        service: &'static str,
        operation: &'static str,
        call: impl Future<Output = Result<R, CallError>>,
    ) -> Result<R, CallError> {
        let result = call.await;
        self.metrics
            .aws_call(service, operation, result.as_ref().map(|_| ()));
        result
    }
}

impl<T: ObjectStore> ObjectStore for Instrumented<T> {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, CallError> {
        self.call("s3", "ListObjectsV2", self.inner.list(prefix))
            .await
    }
    async fn any_under(&self, prefix: &str) -> Result<bool, CallError> {
        self.call("s3", "ListObjectsV2", self.inner.any_under(prefix))
            .await
    }
    async fn get(&self, key: &str) -> Result<Option<Fetched>, CallError> {
        self.call("s3", "GetObject", self.inner.get(key)).await
    }
    async fn read(&self, key: &str, etag: &str, limit: usize) -> Result<Read, CallError> {
        self.call("s3", "GetObject", self.inner.read(key, etag, limit))
            .await
    }
    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool, CallError> {
        self.call("s3", "DeleteObject", self.inner.delete_if(key, etag))
            .await
    }
    fn clock_offset(&self) -> Option<i64> {
        self.inner.clock_offset()
    }
    async fn put(&self, key: &str, body: &str) -> Result<String, CallError> {
        self.call("s3", "PutObject", self.inner.put(key, body))
            .await
    }
    async fn delete(&self, key: &str) -> Result<(), CallError> {
        self.call("s3", "DeleteObject", self.inner.delete(key))
            .await
    }
    async fn put_if(
        &self,
        key: &str,
        body: &str,
        etag: Option<&str>,
    ) -> Result<Option<String>, CallError> {
        self.call("s3", "PutObject", self.inner.put_if(key, body, etag))
            .await
    }
    async fn put_new(&self, key: &str, body: &str) -> Result<(), CallError> {
        self.call("s3", "PutObject", self.inner.put_new(key, body))
            .await
    }
}

impl<T: StackService> StackService for Instrumented<T> {
    async fn list(&self) -> Result<Vec<StackView>, CallError> {
        self.call("cloudformation", "DescribeStacks", self.inner.list())
            .await
    }
    async fn describe(&self, name_or_id: &str) -> Result<Option<StackView>, CallError> {
        self.call(
            "cloudformation",
            "DescribeStacks",
            self.inner.describe(name_or_id),
        )
        .await
    }
    async fn create(&self, spec: &StackSpec, template: &Template) -> Result<String, CallError> {
        self.call(
            "cloudformation",
            "CreateStack",
            self.inner.create(spec, template),
        )
        .await
    }
    async fn update(
        &self,
        spec: &StackSpec,
        template: &Template,
    ) -> Result<UpdateOutcome, CallError> {
        self.call(
            "cloudformation",
            "UpdateStack",
            self.inner.update(spec, template),
        )
        .await
    }
    async fn delete(&self, id: &str, token: &str) -> Result<(), CallError> {
        self.call(
            "cloudformation",
            "DeleteStack",
            self.inner.delete(id, token),
        )
        .await
    }
    async fn first_failure(&self, id: &str) -> Result<Option<String>, CallError> {
        self.call(
            "cloudformation",
            "DescribeStackEvents",
            self.inner.first_failure(id),
        )
        .await
    }
    async fn template_parameters(
        &self,
        template: &Template,
    ) -> Result<BTreeMap<String, ParameterRule>, CallError> {
        self.call(
            "cloudformation",
            "GetTemplateSummary",
            self.inner.template_parameters(template),
        )
        .await
    }
}

impl<T: Instances> Instances for Instrumented<T> {
    async fn login_ip(
        &self,
        stack_id: &str,
        logical_id: &str,
    ) -> Result<Option<String>, CallError> {
        self.call(
            "ec2",
            "DescribeInstances",
            self.inner.login_ip(stack_id, logical_id),
        )
        .await
    }
    async fn stack_instances(&self, stack_name: &str) -> Result<Vec<Instance>, CallError> {
        self.call(
            "ec2",
            "DescribeInstances",
            self.inner.stack_instances(stack_name),
        )
        .await
    }
    async fn terminate(&self, ids: &[String]) -> Result<(), CallError> {
        self.call("ec2", "TerminateInstances", self.inner.terminate(ids))
            .await
    }
}

impl<T: Mailer> Mailer for Instrumented<T> {
    async fn send(&self, to: &[String], subject: &str, body: &str) -> Result<(), CallError> {
        self.call("sesv2", "SendEmail", self.inner.send(to, subject, body))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeStore;
    use crate::ports::ErrorKind;

    #[tokio::test]
    async fn calls_are_counted_by_outcome() {
        let metrics = Arc::new(Metrics::new(false));
        let store = Instrumented::new(FakeStore::default(), metrics.clone());
        store.put("a", "x").await.unwrap();
        store.inner().fail("GetObject", ErrorKind::Throttled, 1);
        assert!(store.get("a").await.is_err());
        store.get("a").await.unwrap();
        let text = metrics.render();
        for line in [
            "flightdeck_aws_calls_total{operation=\"PutObject\",outcome=\"ok\",service=\"s3\"} 1",
            "flightdeck_aws_calls_total{operation=\"GetObject\",outcome=\"throttled\",service=\"s3\"} 1",
            "flightdeck_aws_calls_total{operation=\"GetObject\",outcome=\"ok\",service=\"s3\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
