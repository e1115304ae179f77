//! Counts every AWS call by service, operation and outcome, around any adapter: the real
//! ones and the fakes alike; and, with a [`Limiter`], holds each call until its service's
//! token bucket has a token for it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flightdeck_core::nodes::Instance;
use flightdeck_core::plan::StackSpec;
use flightdeck_core::rate::{Rate, TokenBucket};
use flightdeck_core::request::ParameterRule;
use flightdeck_core::snapshot::ObjectMeta;
use flightdeck_core::stack::StackView;

use crate::metrics::Metrics;
use crate::ports::{
    CallError, Fetched, Instances, Mailer, ObjectStore, Page, Read, StackService, Template,
    UpdateOutcome,
};

/// One service's token bucket ([`flightdeck_core::rate`]), shared by every adapter of
/// that service: each call (each page of a listing) takes a token, and waits for one when
/// none is left, so however many clusters fail at once the service sees at most `burst`
/// calls and then `qps` a second.
pub struct Limiter {
    service: &'static str,
    bucket: Mutex<TokenBucket>,
    epoch: tokio::time::Instant,
    metrics: Arc<Metrics>,
}

impl Limiter {
    /// A full bucket for `service`.
    pub fn new(service: &'static str, rate: Rate, metrics: Arc<Metrics>) -> Arc<Limiter> {
        Arc::new(Limiter {
            service,
            bucket: Mutex::new(TokenBucket::new(rate, Duration::ZERO)),
            epoch: tokio::time::Instant::now(),
            metrics,
        })
    }

    /// Takes a token, waiting for it when there is none.
    pub async fn acquire(&self) {
        let wait = self
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserve(self.epoch.elapsed());
        if !wait.is_zero() {
            self.metrics.rate_limited(self.service, wait);
            tokio::time::sleep(wait).await;
        }
    }
}

/// An adapter whose calls are counted, and with a limiter, kept to its service's rate.
pub struct Instrumented<T> {
    inner: T,
    metrics: Arc<Metrics>,
    limiter: Option<Arc<Limiter>>,
}

impl<T> Instrumented<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, metrics: Arc<Metrics>) -> Self {
        Instrumented {
            inner,
            metrics,
            limiter: None,
        }
    }

    /// Every call waits for a token of `limiter` first.
    #[must_use]
    pub fn limited(self, limiter: Arc<Limiter>) -> Self {
        Instrumented {
            limiter: Some(limiter),
            ..self
        }
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
        if let Some(limiter) = &self.limiter {
            limiter.acquire().await;
        }
        let result = call.await;
        self.metrics
            .aws_call(service, operation, result.as_ref().map(|_| ()));
        result
    }
}

impl<T: ObjectStore> ObjectStore for Instrumented<T> {
    async fn list_page(
        &self,
        prefix: &str,
        next: Option<&str>,
    ) -> Result<Page<ObjectMeta>, CallError> {
        self.call("s3", "ListObjectsV2", self.inner.list_page(prefix, next))
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
    async fn list_page(&self, next: Option<&str>) -> Result<Page<StackView>, CallError> {
        self.call(
            "cloudformation",
            "DescribeStacks",
            self.inner.list_page(next),
        )
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

    #[tokio::test(start_paused = true)]
    async fn a_storm_of_calls_goes_out_as_a_burst_then_at_the_rate_and_the_wait_is_counted() {
        let metrics = Arc::new(Metrics::new(false));
        let limiter = Limiter::new("s3", Rate::new(10.0, 100).unwrap(), metrics.clone());
        let store = Arc::new(
            Instrumented::new(FakeStore::default(), metrics.clone()).limited(limiter.clone()),
        );
        let start = tokio::time::Instant::now();
        let calls: Vec<_> = (0..150)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.get(&format!("k{i}")).await.unwrap();
                    start.elapsed()
                })
            })
            .collect();
        let mut done = Vec::new();
        for call in calls {
            done.push(call.await.unwrap());
        }
        done.sort();
        let at_once = done.iter().filter(|t| t.is_zero()).count();
        assert_eq!(at_once, 100, "the burst");
        assert_eq!(done[149], Duration::from_secs(5), "50 more at 10 a second");
        for (i, t) in done[100..].iter().enumerate() {
            let expected = Duration::from_millis(100 * (i as u64 + 1));
            assert!(
                t.abs_diff(expected) < Duration::from_millis(2),
                "call {i}: {t:?}"
            );
        }
        assert_eq!(store.inner().calls().len(), 150);
        let text = metrics.render();
        assert!(
            text.contains("flightdeck_aws_rate_limited_total{service=\"s3\"} 50"),
            "{text}"
        );
        // 0.1 + 0.2 + ... + 5.0 seconds waited.
        let waited = text
            .lines()
            .find_map(|l| l.strip_prefix("flightdeck_aws_rate_wait_seconds_total{service=\"s3\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!((waited - 127.5).abs() < 0.1, "{waited}");
    }
}
