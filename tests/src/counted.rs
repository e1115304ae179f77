//! The reconciler on the real adapters, with its calls counted: what the end-to-end tests
//! drive pass by pass.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use flightdeck::app::checked;
use flightdeck::aws::cloudformation::CloudFormation;
use flightdeck::aws::ec2::Ec2;
use flightdeck::aws::s3::S3Store;
use flightdeck::aws::ses::Ses;
use flightdeck::ports::{
    CallError, ErrorKind, Fetched, Mailer, ObjectStore, Page, Read, StackService, Template,
    UpdateOutcome,
};
use flightdeck::reconcile::{Cloud, Reconciler};
use flightdeck_core::plan::StackSpec;
use flightdeck_core::request::ParameterRule;
use flightdeck_core::snapshot::ObjectMeta;
use flightdeck_core::stack::StackView;

use crate::site::{Site, emulator};

/// An adapter that counts its mutating calls (and UpdateStack on its own), records the
/// subjects a mailer sent, and can make the next CreateStack calls fail as CloudFormation
/// does when it refuses a parameter.
pub struct Counted<T> {
    inner: T,
    writes: AtomicUsize,
    updates: AtomicUsize,
    /// How many of the next CreateStack calls are refused.
    pub creates_to_refuse: AtomicUsize,
    /// For a mailer: the subjects sent.
    pub subjects: Mutex<Vec<String>>,
}

impl<T> Counted<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Counted {
            inner,
            writes: AtomicUsize::new(0),
            updates: AtomicUsize::new(0),
            creates_to_refuse: AtomicUsize::new(0),
            subjects: Mutex::default(),
        }
    }
    /// Mutating calls made.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
    fn count(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
    }
    /// UpdateStack calls made.
    pub fn updates(&self) -> usize {
        self.updates.load(Ordering::SeqCst)
    }
    /// The subjects a mailer sent.
    pub fn subjects(&self) -> Vec<String> {
        self.subjects.lock().unwrap().clone()
    }
}

impl<T: ObjectStore> ObjectStore for Counted<T> {
    async fn list_page(
        &self,
        prefix: &str,
        next: Option<&str>,
    ) -> Result<Page<ObjectMeta>, CallError> {
        self.inner.list_page(prefix, next).await
    }
    async fn any_under(&self, prefix: &str) -> Result<bool, CallError> {
        self.inner.any_under(prefix).await
    }
    async fn get(&self, key: &str) -> Result<Option<Fetched>, CallError> {
        self.inner.get(key).await
    }
    async fn read(&self, key: &str, etag: &str, limit: usize) -> Result<Read, CallError> {
        self.inner.read(key, etag, limit).await
    }
    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool, CallError> {
        self.count();
        self.inner.delete_if(key, etag).await
    }
    fn clock_offset(&self) -> Option<i64> {
        self.inner.clock_offset()
    }
    async fn put(&self, key: &str, body: &str) -> Result<String, CallError> {
        self.count();
        self.inner.put(key, body).await
    }
    async fn delete(&self, key: &str) -> Result<(), CallError> {
        self.count();
        self.inner.delete(key).await
    }
    async fn put_new(&self, key: &str, body: &str) -> Result<(), CallError> {
        self.count();
        self.inner.put_new(key, body).await
    }
    async fn put_if(
        &self,
        key: &str,
        body: &str,
        etag: Option<&str>,
    ) -> Result<Option<String>, CallError> {
        self.count();
        self.inner.put_if(key, body, etag).await
    }
}

impl<T: Mailer> Mailer for Counted<T> {
    async fn send(&self, to: &[String], subject: &str, body: &str) -> Result<(), CallError> {
        self.inner.send(to, subject, body).await?;
        self.subjects.lock().unwrap().push(subject.to_owned());
        Ok(())
    }
}

impl<T: StackService> StackService for Counted<T> {
    async fn list_page(&self, next: Option<&str>) -> Result<Page<StackView>, CallError> {
        self.inner.list_page(next).await
    }
    async fn describe(&self, name_or_id: &str) -> Result<Option<StackView>, CallError> {
        self.inner.describe(name_or_id).await
    }
    async fn create(&self, spec: &StackSpec, template: &Template) -> Result<String, CallError> {
        self.count();
        let refuse = self
            .creates_to_refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            return Err(CallError {
                service: "cloudformation",
                operation: "CreateStack",
                kind: ErrorKind::Invalid,
                code: Some("ValidationError".into()),
                message: "Parameter 'ComputeMaxNodes' must be a number.".into(),
            });
        }
        self.inner.create(spec, template).await
    }
    async fn update(
        &self,
        spec: &StackSpec,
        template: &Template,
    ) -> Result<UpdateOutcome, CallError> {
        self.count();
        self.updates.fetch_add(1, Ordering::SeqCst);
        self.inner.update(spec, template).await
    }
    async fn delete(&self, id: &str, token: &str) -> Result<(), CallError> {
        self.count();
        self.inner.delete(id, token).await
    }
    async fn first_failure(&self, id: &str) -> Result<Option<String>, CallError> {
        self.inner.first_failure(id).await
    }
    async fn template_parameters(
        &self,
        template: &Template,
    ) -> Result<BTreeMap<String, ParameterRule>, CallError> {
        self.inner.template_parameters(template).await
    }
}

/// The reconciler the end-to-end tests drive.
pub type Rec = Reconciler<Counted<S3Store>, Counted<CloudFormation>, Ec2, Counted<Ses>>;

/// The reconciler on the real adapters, counted. A second call on the same site is a
/// restarted controller: same cloud, nothing in memory.
///
/// # Panics
/// When the start-up checks fail.
pub async fn reconciler(site: &Site) -> Rec {
    let settings = site.settings();
    let conf = emulator().sdk_config().await;
    let cloud = Cloud {
        store: Counted::new(S3Store::new(&conf, site.bucket.clone(), true)),
        customizer: Counted::new(S3Store::new(&conf, "flightdeck-customizer", true)),
        stacks: Counted::new(CloudFormation::new(&conf)),
        instances: Ec2::new(&conf),
        mailer: Some(Counted::new(Ses::new(&conf, "flightdeck@example.org"))),
    };
    checked(
        cloud,
        settings,
        Arc::new(flightdeck::metrics::Metrics::new(false)),
    )
    .await
    .expect("start-up checks")
}
