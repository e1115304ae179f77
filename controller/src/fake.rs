//! Hand-written in-memory fakes of [`crate::ports`], for tests of the reconciler's
//! decisions and of failure paths the emulator cannot produce (in-progress and failed
//! stacks, throttling, failed listings). Every call is recorded, so a test can assert that
//! no mutating call was made.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use flightdeck_core::identity::hex_md5;
use flightdeck_core::nodes::{Instance, InstanceState};
use flightdeck_core::plan::{StackSpec, TemplateChoice};
use flightdeck_core::request::ParameterRule;
use flightdeck_core::snapshot::ObjectMeta;
use flightdeck_core::stack::StackView;

use crate::ports::{
    CallError, ErrorKind, Fetched, Instances, Mailer, ObjectStore, Page, Read, StackService,
    Template, UpdateOutcome,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn fail(service: &'static str, operation: &'static str, kind: ErrorKind) -> CallError {
    CallError {
        service,
        operation,
        kind,
        code: None,
        message: format!("injected {kind:?}"),
    }
}

/// A failure to inject: its kind, how many times more (`u32::MAX` for always), and the
/// service's words (`injected <kind>` when not given).
type Fault = (ErrorKind, u32, Option<String>);

/// Failures to inject, by operation name.
#[derive(Default)]
struct Faults(Mutex<BTreeMap<&'static str, Fault>>);

impl Faults {
    fn check(&self, service: &'static str, operation: &'static str) -> Result<(), CallError> {
        let mut faults = lock(&self.0);
        if let Some((kind, left, message)) = faults.get_mut(operation) {
            let mut err = fail(service, operation, *kind);
            if let Some(m) = message {
                err.message.clone_from(m);
            }
            if *left != u32::MAX {
                *left -= 1;
            }
            if *left == 0 {
                faults.remove(operation);
            }
            return Err(err);
        }
        Ok(())
    }

    fn insert(&self, operation: &'static str, kind: ErrorKind, times: u32, message: Option<&str>) {
        lock(&self.0).insert(operation, (kind, times, message.map(str::to_owned)));
    }
}

/// A user's write that lands just before a call: the operation, the key (or prefix) it is
/// called on, and the object written with its body.
type Race = (&'static str, String, String, Vec<u8>);

/// An in-memory bucket. ETags are the MD5 of the content, as S3 gives for single-part puts.
#[derive(Default)]
pub struct FakeStore {
    objects: Mutex<BTreeMap<String, (Vec<u8>, i64)>>,
    calls: Mutex<Vec<String>>,
    faults: Faults,
    clock: AtomicI64,
    /// Writes a user makes just before the next call of an operation on a key.
    races: Mutex<Vec<Race>>,
    /// Listings under these prefixes hang (a service that stopped answering).
    hung: Mutex<BTreeSet<String>>,
    /// What `clock_offset` answers: the service's clock minus ours.
    pub offset: AtomicI64,
    /// `clock_offset` answers `None` (no answer seen yet).
    pub clock_unknown: std::sync::atomic::AtomicBool,
    /// ETags are not the MD5 of the content (as with SSE-KMS).
    pub opaque_etags: std::sync::atomic::AtomicBool,
}

impl FakeStore {
    /// Writes an object as a user would.
    pub fn insert(&self, key: &str, body: impl AsRef<[u8]>) {
        let t = self.clock.fetch_add(1, Ordering::SeqCst) + 1_000;
        lock(&self.objects).insert(key.to_owned(), (body.as_ref().to_vec(), t));
    }

    /// Removes an object as a user would.
    pub fn remove(&self, key: &str) {
        lock(&self.objects).remove(key);
    }

    /// An object's content as text.
    pub fn text(&self, key: &str) -> Option<String> {
        lock(&self.objects)
            .get(key)
            .map(|(b, _)| String::from_utf8_lossy(b).into_owned())
    }

    /// Every key.
    pub fn keys(&self) -> BTreeSet<String> {
        lock(&self.objects).keys().cloned().collect()
    }

    /// Every call made, as `Operation key`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// The writes made (`PutObject …`, `DeleteObject …`).
    pub fn writes(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with("PutObject") || c.starts_with("DeleteObject"))
            .collect()
    }

    /// Forgets the calls made so far.
    pub fn clear_calls(&self) {
        lock(&self.calls).clear();
    }

    /// Makes the next `times` calls of `operation` fail with `kind`.
    pub fn fail(&self, operation: &'static str, kind: ErrorKind, times: u32) {
        self.faults.insert(operation, kind, times, None);
    }

    /// The ETag S3 would give `body`: its MD5, or with [`Self::opaque_etags`] something
    /// else of the same shape.
    fn etag_of(&self, body: &[u8]) -> String {
        if self.opaque_etags.load(Ordering::SeqCst) {
            flightdeck_core::identity::hex_sha256(body)[..32].to_owned()
        } else {
            hex_md5(body)
        }
    }

    /// Makes every listing of `prefix` hang until the test's (paused) clock runs out.
    pub fn hang(&self, prefix: &str) {
        lock(&self.hung).insert(prefix.to_owned());
    }

    /// Has a user write `body` to `key` just before the next `operation` call on `key`:
    /// a race between what flightdeck listed and what it does next.
    pub fn race(&self, operation: &'static str, key: &str, body: impl AsRef<[u8]>) {
        self.race_on(operation, key, key, body);
    }

    /// Has a user write `body` to `key` just before the next `operation` call on `on` (a
    /// key, or the prefix a listing is for).
    pub fn race_on(&self, operation: &'static str, on: &str, key: &str, body: impl AsRef<[u8]>) {
        lock(&self.races).push((
            operation,
            on.to_owned(),
            key.to_owned(),
            body.as_ref().to_vec(),
        ));
    }

    fn record(&self, operation: &'static str, key: &str) -> Result<(), CallError> {
        lock(&self.calls).push(format!("{operation} {key}"));
        let raced = {
            let mut races = lock(&self.races);
            races
                .iter()
                .position(|(op, on, _, _)| *op == operation && on == key)
                .map(|i| races.remove(i))
        };
        if let Some((_, _, key, body)) = raced {
            self.insert(&key, body);
        }
        self.faults.check("s3", operation)
    }
}

impl ObjectStore for FakeStore {
    async fn list_page(
        &self,
        prefix: &str,
        next: Option<&str>,
    ) -> Result<Page<ObjectMeta>, CallError> {
        self.record("ListObjectsV2", prefix)?;
        if lock(&self.hung).contains(prefix) {
            tokio::time::sleep(std::time::Duration::from_secs(24 * 3600)).await;
        }
        let objects = lock(&self.objects);
        let from = match next {
            Some(after) => std::ops::Bound::Excluded(after.to_owned()),
            None => std::ops::Bound::Included(prefix.to_owned()),
        };
        let mut items: Vec<ObjectMeta> = objects
            .range((from, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(OBJECTS_PAGE + 1)
            .map(|(k, (body, t))| ObjectMeta {
                key: k.clone(),
                etag: format!("\"{}\"", self.etag_of(body)),
                modified: *t,
                size: body.len() as u64,
            })
            .collect();
        let next = (items.len() > OBJECTS_PAGE).then(|| {
            items.truncate(OBJECTS_PAGE);
            items[OBJECTS_PAGE - 1].key.clone()
        });
        Ok(Page { items, next })
    }

    async fn any_under(&self, prefix: &str) -> Result<bool, CallError> {
        self.record("ListObjectsV2", prefix)?;
        Ok(lock(&self.objects).keys().any(|k| k.starts_with(prefix)))
    }

    async fn get(&self, key: &str) -> Result<Option<Fetched>, CallError> {
        self.record("GetObject", key)?;
        Ok(lock(&self.objects).get(key).map(|(body, t)| Fetched {
            etag: format!("\"{}\"", self.etag_of(body)),
            body: body.clone(),
            modified: *t,
        }))
    }

    async fn read(&self, key: &str, etag: &str, limit: usize) -> Result<Read, CallError> {
        self.record("GetObject", key)?;
        let objects = lock(&self.objects);
        let Some((body, t)) = objects.get(key) else {
            return Ok(Read::Missing);
        };
        let current = self.etag_of(body);
        if current != etag.trim_matches('"') {
            return Ok(Read::Changed);
        }
        if body.len() > limit {
            return Ok(Read::TooLarge {
                size: Some(body.len() as u64),
            });
        }
        Ok(Read::Body(Fetched {
            etag: format!("\"{current}\""),
            body: body.clone(),
            modified: *t,
        }))
    }

    fn clock_offset(&self) -> Option<i64> {
        (!self.clock_unknown.load(Ordering::SeqCst)).then(|| self.offset.load(Ordering::SeqCst))
    }

    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool, CallError> {
        self.record("DeleteObject", key)?;
        let mut objects = lock(&self.objects);
        if objects
            .get(key)
            .is_some_and(|(body, _)| self.etag_of(body) == etag.trim_matches('"'))
        {
            objects.remove(key);
            return Ok(true);
        }
        Ok(false)
    }

    async fn put(&self, key: &str, body: &str) -> Result<String, CallError> {
        self.record("PutObject", key)?;
        self.insert(key, body);
        Ok(format!("\"{}\"", self.etag_of(body.as_bytes())))
    }

    async fn delete(&self, key: &str) -> Result<(), CallError> {
        self.record("DeleteObject", key)?;
        self.remove(key);
        Ok(())
    }

    async fn put_new(&self, key: &str, body: &str) -> Result<(), CallError> {
        self.record("PutObject", key)?;
        if lock(&self.objects).contains_key(key) {
            return Err(fail("s3", "PutObject", ErrorKind::AlreadyExists));
        }
        self.insert(key, body);
        Ok(())
    }

    async fn put_if(
        &self,
        key: &str,
        body: &str,
        etag: Option<&str>,
    ) -> Result<Option<String>, CallError> {
        self.record("PutObject", key)?;
        // One lock for the check and the write: the condition is atomic, as in S3.
        let mut objects = lock(&self.objects);
        let current = objects
            .get(key)
            .map(|(b, _)| format!("\"{}\"", self.etag_of(b)));
        if current.as_deref() != etag {
            return Ok(None);
        }
        let t = self.clock.fetch_add(1, Ordering::SeqCst) + 1_000;
        objects.insert(key.to_owned(), (body.as_bytes().to_vec(), t));
        Ok(Some(format!("\"{}\"", self.etag_of(body.as_bytes()))))
    }
}

/// Objects a page of the fake bucket's listing holds, as on S3.
pub const OBJECTS_PAGE: usize = 1000;

/// Stacks a page of the fake CloudFormation's listing holds.
pub const STACKS_PAGE: usize = 100;

/// In-memory CloudFormation. New stacks take `create_status` (CREATE_COMPLETE unless set)
/// and get a `LoginIp` output; deletes take `delete_status` (gone unless set).
pub struct FakeStacks {
    stacks: Mutex<BTreeMap<String, StackView>>,
    calls: Mutex<Vec<String>>,
    faults: Faults,
    /// Status a created stack takes.
    pub create_status: Mutex<String>,
    /// Status a deleted stack takes; `None` removes it at once.
    pub delete_status: Mutex<Option<String>>,
    /// The failure reason the stack events give.
    pub failure: Mutex<Option<String>>,
    /// Parameters the template declares.
    pub parameters: Mutex<BTreeMap<String, ParameterRule>>,
    clock: AtomicI64,
}

impl Default for FakeStacks {
    fn default() -> Self {
        FakeStacks {
            stacks: Mutex::default(),
            calls: Mutex::default(),
            faults: Faults::default(),
            create_status: Mutex::new("CREATE_COMPLETE".into()),
            delete_status: Mutex::new(None),
            failure: Mutex::new(None),
            parameters: Mutex::default(),
            clock: AtomicI64::new(1_000),
        }
    }
}

impl FakeStacks {
    /// Adds a stack as another actor would (another install, an administrator).
    pub fn insert(&self, stack: StackView) {
        lock(&self.stacks).insert(stack.name.clone(), stack);
    }

    /// A stack by name.
    pub fn get(&self, name: &str) -> Option<StackView> {
        lock(&self.stacks).get(name).cloned()
    }

    /// Ends a stack's creation with `status`: as on AWS, its last change stays its
    /// creation time (a create that completes sets no LastUpdatedTime).
    pub fn finish_create(&self, name: &str, status: &str) {
        if let Some(s) = lock(&self.stacks).get_mut(name) {
            s.status = status.into();
        }
    }

    /// Every stack name.
    pub fn names(&self) -> Vec<String> {
        lock(&self.stacks).keys().cloned().collect()
    }

    /// Every call made, as `Operation name`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// Forgets the calls made so far.
    pub fn clear_calls(&self) {
        lock(&self.calls).clear();
    }

    /// The mutating calls made (create, update, delete).
    pub fn mutations(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| {
                ["CreateStack", "UpdateStack", "DeleteStack"]
                    .iter()
                    .any(|m| c.starts_with(m))
            })
            .collect()
    }

    /// Makes the next `times` calls of `operation` fail with `kind`.
    pub fn fail(&self, operation: &'static str, kind: ErrorKind, times: u32) {
        self.faults.insert(operation, kind, times, None);
    }

    /// Makes the next `times` calls of `operation` fail as CloudFormation refusing the
    /// input (`ValidationError`) with `message`.
    pub fn refuse(&self, operation: &'static str, message: &str, times: u32) {
        self.faults
            .insert(operation, ErrorKind::Invalid, times, Some(message));
    }

    fn record(&self, operation: &'static str, name: &str) -> Result<(), CallError> {
        lock(&self.calls).push(format!("{operation} {name}"));
        self.faults.check("cloudformation", operation)
    }

    fn find(&self, name_or_id: &str) -> Option<StackView> {
        lock(&self.stacks)
            .values()
            .find(|s| s.name == name_or_id || s.id == name_or_id)
            .cloned()
    }
}

impl StackService for FakeStacks {
    async fn list_page(&self, next: Option<&str>) -> Result<Page<StackView>, CallError> {
        self.record("DescribeStacks", "*")?;
        let stacks = lock(&self.stacks);
        let from = match next {
            Some(after) => std::ops::Bound::Excluded(after.to_owned()),
            None => std::ops::Bound::Unbounded,
        };
        let mut items: Vec<StackView> = stacks
            .range((from, std::ops::Bound::Unbounded))
            .take(STACKS_PAGE + 1)
            .map(|(_, s)| s.clone())
            .collect();
        let next = (items.len() > STACKS_PAGE).then(|| {
            items.truncate(STACKS_PAGE);
            items[STACKS_PAGE - 1].name.clone()
        });
        Ok(Page { items, next })
    }

    async fn describe(&self, name_or_id: &str) -> Result<Option<StackView>, CallError> {
        self.record("DescribeStacks", name_or_id)?;
        Ok(self.find(name_or_id))
    }

    async fn create(&self, spec: &StackSpec, _template: &Template) -> Result<String, CallError> {
        self.record("CreateStack", &spec.name)?;
        if self.find(&spec.name).is_some() {
            return Err(fail(
                "cloudformation",
                "CreateStack",
                ErrorKind::AlreadyExists,
            ));
        }
        let n = self.clock.fetch_add(1, Ordering::SeqCst);
        let id = format!(
            "arn:aws:cloudformation:eu-west-2:123456789012:stack/{}/{n}",
            spec.name
        );
        self.insert(StackView {
            name: spec.name.clone(),
            id: id.clone(),
            status: lock(&self.create_status).clone(),
            status_reason: None,
            last_change: n,
            created: n,
            tags: spec.tags.clone(),
            parameters: spec.parameters.clone(),
            // The address depends on the name only, so two runs that create the same
            // stacks in another order agree.
            outputs: BTreeMap::from([(
                "LoginIp".into(),
                format!(
                    "198.51.100.{}",
                    hex_md5(spec.name.as_bytes())
                        .bytes()
                        .map(u32::from)
                        .sum::<u32>()
                        % 250
                ),
            )]),
            failure_reason: None,
            login_ip: None,
        });
        Ok(id)
    }

    async fn update(
        &self,
        spec: &StackSpec,
        _template: &Template,
    ) -> Result<UpdateOutcome, CallError> {
        self.record("UpdateStack", &spec.name)?;
        let mut stacks = lock(&self.stacks);
        let Some(s) = stacks.get_mut(&spec.name) else {
            return Err(fail("cloudformation", "UpdateStack", ErrorKind::NotFound));
        };
        // As CloudFormation: a parameter neither set nor kept takes the template's default
        // (here: is gone).
        let mut parameters = match &spec.template {
            TemplateChoice::Install => BTreeMap::new(),
            TemplateChoice::Previous { keep } => s
                .parameters
                .iter()
                .filter(|(k, _)| keep.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        parameters.extend(spec.parameters.clone());
        if s.parameters == parameters && s.tags == spec.tags {
            return Ok(UpdateOutcome::NoChanges);
        }
        s.parameters = parameters;
        s.tags = spec.tags.clone();
        s.status = "UPDATE_COMPLETE".into();
        s.last_change = self.clock.fetch_add(1, Ordering::SeqCst);
        Ok(UpdateOutcome::Started)
    }

    async fn delete(&self, id: &str, _token: &str) -> Result<(), CallError> {
        self.record("DeleteStack", id)?;
        let mut stacks = lock(&self.stacks);
        let Some(name) = stacks.values().find(|s| s.id == id).map(|s| s.name.clone()) else {
            return Ok(());
        };
        match lock(&self.delete_status).clone() {
            None => {
                stacks.remove(&name);
            }
            Some(status) => {
                if let Some(s) = stacks.get_mut(&name) {
                    s.status = status;
                }
            }
        }
        Ok(())
    }

    async fn first_failure(&self, id: &str) -> Result<Option<String>, CallError> {
        self.record("DescribeStackEvents", id)?;
        Ok(lock(&self.failure).clone())
    }

    async fn template_parameters(
        &self,
        _template: &Template,
    ) -> Result<BTreeMap<String, ParameterRule>, CallError> {
        self.record("GetTemplateSummary", "-")?;
        Ok(lock(&self.parameters).clone())
    }
}

/// EC2 with no instances unless some are set: the address every login lookup answers, and
/// each stack's instances (by the stack name in their tag). Terminating an instance leaves
/// it shutting down until [`FakeInstances::settle`], as EC2 does for a while.
#[derive(Default)]
pub struct FakeInstances {
    /// The address every lookup answers.
    pub ip: Mutex<Option<String>>,
    /// Instances by the stack name they are tagged with.
    nodes: Mutex<BTreeMap<String, Vec<Instance>>>,
    calls: Mutex<Vec<String>>,
    faults: Faults,
}

impl FakeInstances {
    /// Launches running instances tagged with `stack`, as the cluster's scheduler would.
    pub fn launch(&self, stack: &str, ids: &[&str]) {
        lock(&self.nodes)
            .entry(stack.to_owned())
            .or_default()
            .extend(ids.iter().map(|id| Instance {
                id: (*id).to_owned(),
                state: InstanceState::Running,
            }));
    }

    /// Ends every instance that is shutting down.
    pub fn settle(&self) {
        for instance in lock(&self.nodes).values_mut().flatten() {
            if instance.state == InstanceState::ShuttingDown {
                instance.state = InstanceState::Terminated;
            }
        }
    }

    /// An instance's state, if it was ever launched.
    pub fn state(&self, id: &str) -> Option<InstanceState> {
        lock(&self.nodes)
            .values()
            .flatten()
            .find(|i| i.id == id)
            .map(|i| i.state)
    }

    /// Every call made, as `Operation argument`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// The TerminateInstances calls made, as `TerminateInstances id id …`.
    pub fn terminations(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with("TerminateInstances"))
            .collect()
    }

    /// Makes the next `times` calls of `operation` fail with `kind`.
    pub fn fail(&self, operation: &'static str, kind: ErrorKind, times: u32) {
        self.faults.insert(operation, kind, times, None);
    }

    fn record(&self, operation: &'static str, argument: &str) -> Result<(), CallError> {
        lock(&self.calls).push(format!("{operation} {argument}"));
        self.faults.check("ec2", operation)
    }
}

impl Instances for FakeInstances {
    async fn login_ip(
        &self,
        stack_id: &str,
        _logical_id: &str,
    ) -> Result<Option<String>, CallError> {
        self.record("DescribeInstances", stack_id)?;
        Ok(lock(&self.ip).clone())
    }

    async fn stack_instances(&self, stack_name: &str) -> Result<Vec<Instance>, CallError> {
        self.record("DescribeInstances", stack_name)?;
        Ok(lock(&self.nodes)
            .get(stack_name)
            .into_iter()
            .flatten()
            .filter(|i| i.state != InstanceState::Terminated)
            .cloned()
            .collect())
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), CallError> {
        self.record("TerminateInstances", &ids.join(" "))?;
        for instance in lock(&self.nodes).values_mut().flatten() {
            if ids.contains(&instance.id) && instance.state != InstanceState::Terminated {
                instance.state = InstanceState::ShuttingDown;
            }
        }
        Ok(())
    }
}

/// A mailer that keeps what it sends, or fails when told to.
#[derive(Default)]
pub struct FakeMailer {
    /// Sent mail: (recipients, subject, body).
    pub sent: Mutex<Vec<(Vec<String>, String, String)>>,
    faults: Faults,
}

impl FakeMailer {
    /// Makes the next `times` sends fail.
    pub fn fail(&self, times: u32) {
        self.faults
            .insert("SendEmail", ErrorKind::Invalid, times, None);
    }

    /// Subjects sent so far.
    pub fn subjects(&self) -> Vec<String> {
        lock(&self.sent).iter().map(|(_, s, _)| s.clone()).collect()
    }
}

impl Mailer for FakeMailer {
    async fn send(&self, to: &[String], subject: &str, body: &str) -> Result<(), CallError> {
        self.faults.check("sesv2", "SendEmail")?;
        lock(&self.sent).push((to.to_vec(), subject.to_owned(), body.to_owned()));
        Ok(())
    }
}

/// An in-memory cloud: every service faked, mail kept.
pub fn cloud() -> crate::reconcile::Cloud<FakeStore, FakeStacks, FakeInstances, FakeMailer> {
    crate::reconcile::Cloud {
        store: FakeStore::default(),
        customizer: FakeStore::default(),
        stacks: FakeStacks::default(),
        instances: FakeInstances::default(),
        mailer: Some(FakeMailer::default()),
    }
}
