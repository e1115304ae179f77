//! In-process stand-ins for S3 and CloudFormation at the sizes of a university: a bucket
//! of users' data files that is generated as it is listed (so the bench measures the
//! controller's memory, not a copy of the bucket), and a CloudFormation that holds tens of
//! thousands of stacks and answers by name or id at once.
//!
//! Layout of the bucket: users `u00000`, `u00001`, ...; each has `clusters` requests
//! `home/<user>/c0000.cf-create`, ... (the example request) and `data` files
//! `home/<user>/data/f0000000.dat`, .... These are never stored; what the controller
//! writes (markers, its own records) and requests added later are.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use flightdeck::ports::{
    CallError, ErrorKind, Fetched, ObjectStore, Page, Read, StackService, Template, UpdateOutcome,
};
use flightdeck_core::plan::StackSpec;
use flightdeck_core::request::ParameterRule;
use flightdeck_core::snapshot::ObjectMeta;
use flightdeck_core::stack::StackView;
use md5::{Digest, Md5};

pub use flightdeck::fake::{OBJECTS_PAGE, STACKS_PAGE};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn etag_of(body: &[u8]) -> String {
    let digest = Md5::digest(body);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The user name of user number `u`.
pub fn user(u: usize) -> String {
    format!("u{u:05}")
}

/// The cluster name of a user's cluster number `c`.
pub fn cluster(c: usize) -> String {
    format!("c{c:04}")
}

/// An object written into the bucket: its ETag, size, and body (kept only outside the
/// home prefix: the controller never reads back the markers it writes).
struct Written {
    etag: String,
    size: u64,
    body: Option<Vec<u8>>,
}

struct Bucket {
    users: usize,
    clusters: usize,
    data: usize,
    request: Vec<u8>,
    request_etag: String,
    written: Mutex<BTreeMap<String, Written>>,
    removed: Mutex<BTreeSet<String>>,
}

impl Bucket {
    fn per_user(&self) -> usize {
        self.clusters + self.data
    }

    fn len(&self) -> usize {
        self.users * self.per_user()
    }

    /// The generated object number `i`, in key order.
    fn key(&self, i: usize) -> String {
        let (u, r) = (i / self.per_user(), i % self.per_user());
        if r < self.clusters {
            format!("home/{}/{}.cf-create", user(u), cluster(r))
        } else {
            format!("home/{}/data/f{:07}.dat", user(u), r - self.clusters)
        }
    }

    fn meta(&self, i: usize) -> ObjectMeta {
        let r = i % self.per_user();
        let key = self.key(i);
        if r < self.clusters {
            ObjectMeta {
                key,
                etag: self.request_etag.clone(),
                modified: 1_000,
                size: self.request.len() as u64,
            }
        } else {
            ObjectMeta {
                key,
                etag: "\"0123456789abcdef0123456789abcdef\"".into(),
                modified: 1_000,
                size: 4_096,
            }
        }
    }

    /// The first generated object whose key is past `bound`.
    fn first_past(&self, bound: &Bound<String>) -> usize {
        let past = |i: usize| match bound {
            Bound::Included(k) => self.key(i).as_str() >= k.as_str(),
            Bound::Excluded(k) => self.key(i).as_str() > k.as_str(),
            Bound::Unbounded => true,
        };
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if past(mid) { hi = mid } else { lo = mid + 1 }
        }
        lo
    }

    fn generated(&self, key: &str) -> Option<usize> {
        let i = self.first_past(&Bound::Included(key.to_owned()));
        (i < self.len() && self.key(i) == key).then_some(i)
    }
}

/// The users' bucket. Cheap to clone: clones share the bucket.
#[derive(Clone)]
pub struct ScaleStore(Arc<Bucket>);

impl ScaleStore {
    /// `users` users with `clusters` requests and `data` data files each.
    pub fn new(users: usize, clusters: usize, data: usize, request: &str) -> Self {
        ScaleStore(Arc::new(Bucket {
            users,
            clusters,
            data,
            request: request.as_bytes().to_vec(),
            request_etag: etag_of(request.as_bytes()),
            written: Mutex::default(),
            removed: Mutex::default(),
        }))
    }

    /// Objects under `home/`, generated and written.
    pub fn home_keys(&self) -> usize {
        let written = lock(&self.0.written);
        self.0.len() - lock(&self.0.removed).len()
            + written
                .range("home/".to_owned()..)
                .take_while(|(k, _)| k.starts_with("home/"))
                .count()
    }

    /// Writes an object, as a user would.
    pub fn insert(&self, key: &str, body: &str) {
        self.write(key, body.as_bytes(), true);
    }

    /// Writes an object; its body is kept when `keep`, or when it is outside the home
    /// prefix or an explanation (`.cf-failed`).
    fn write(&self, key: &str, body: &[u8], keep: bool) -> String {
        let etag = etag_of(body);
        let keep = keep || !key.starts_with("home/") || key.ends_with(".cf-failed");
        let kept = keep.then(|| body.to_vec());
        lock(&self.0.written).insert(
            key.to_owned(),
            Written {
                etag: etag.clone(),
                size: body.len() as u64,
                body: kept,
            },
        );
        lock(&self.0.removed).remove(key);
        etag
    }

    fn current(&self, key: &str) -> Option<(String, Vec<u8>)> {
        if let Some(w) = lock(&self.0.written).get(key) {
            return Some((w.etag.clone(), w.body.clone().unwrap_or_default()));
        }
        if lock(&self.0.removed).contains(key) {
            return None;
        }
        let i = self.0.generated(key)?;
        let meta = self.0.meta(i);
        let body = if meta.key.ends_with(".cf-create") {
            self.0.request.clone()
        } else {
            Vec::new()
        };
        Some((meta.etag, body))
    }

    /// The object's body as text, when it exists (empty for a marker, whose body is not
    /// kept).
    pub fn text(&self, key: &str) -> Option<String> {
        self.current(key)
            .map(|(_, body)| String::from_utf8_lossy(&body).into_owned())
    }

    fn remove(&self, key: &str) {
        lock(&self.0.written).remove(key);
        if self.0.generated(key).is_some() {
            lock(&self.0.removed).insert(key.to_owned());
        }
    }
}

impl ObjectStore for ScaleStore {
    async fn list_page(
        &self,
        prefix: &str,
        next: Option<&str>,
    ) -> Result<Page<ObjectMeta>, CallError> {
        let from = match next {
            Some(after) if after >= prefix => Bound::Excluded(after.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let written = lock(&self.0.written);
        let removed = lock(&self.0.removed);
        let mut made = (self.0.first_past(&from)..self.0.len())
            .map(|i| self.0.meta(i))
            .take_while(|m| m.key.starts_with(prefix))
            .filter(|m| !removed.contains(&m.key) && !written.contains_key(&m.key))
            .peekable();
        let mut kept = written
            .range((from, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, w)| ObjectMeta {
                key: k.clone(),
                etag: w.etag.clone(),
                modified: 2_000,
                size: w.size,
            })
            .peekable();
        let mut items = Vec::with_capacity(OBJECTS_PAGE);
        while items.len() < OBJECTS_PAGE {
            let take_made = match (made.peek(), kept.peek()) {
                (Some(m), Some(k)) => m.key < k.key,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let item = if take_made { made.next() } else { kept.next() };
            items.extend(item);
        }
        let more = made.peek().is_some() || kept.peek().is_some();
        let next = more.then(|| items.last().map(|m| m.key.clone())).flatten();
        Ok(Page { items, next })
    }

    async fn any_under(&self, prefix: &str) -> Result<bool, CallError> {
        Ok(!self.list_page(prefix, None).await?.items.is_empty())
    }

    async fn get(&self, key: &str) -> Result<Option<Fetched>, CallError> {
        Ok(self.current(key).map(|(etag, body)| Fetched {
            body,
            etag,
            modified: 2_000,
        }))
    }

    async fn read(&self, key: &str, etag: &str, limit: usize) -> Result<Read, CallError> {
        Ok(match self.current(key) {
            None => Read::Missing,
            Some((now, _)) if now != etag => Read::Changed,
            Some((_, body)) if body.len() > limit => Read::TooLarge {
                size: Some(body.len() as u64),
            },
            Some((etag, body)) => Read::Body(Fetched {
                body,
                etag,
                modified: 1_000,
            }),
        })
    }

    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool, CallError> {
        match self.current(key) {
            Some((now, _)) if now == etag => {
                self.remove(key);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn put(&self, key: &str, body: &str) -> Result<String, CallError> {
        Ok(self.write(key, body.as_bytes(), false))
    }

    async fn delete(&self, key: &str) -> Result<(), CallError> {
        self.remove(key);
        Ok(())
    }

    fn clock_offset(&self) -> Option<i64> {
        Some(0)
    }

    async fn put_new(&self, key: &str, body: &str) -> Result<(), CallError> {
        if self.current(key).is_some() {
            return Err(CallError {
                service: "s3",
                operation: "PutObject",
                kind: ErrorKind::AlreadyExists,
                code: Some("PreconditionFailed".into()),
                message: format!("{key} exists"),
            });
        }
        self.write(key, body.as_bytes(), false);
        Ok(())
    }

    async fn put_if(
        &self,
        key: &str,
        body: &str,
        etag: Option<&str>,
    ) -> Result<Option<String>, CallError> {
        let now = self.current(key).map(|(e, _)| e);
        if now.as_deref() != etag {
            return Ok(None);
        }
        Ok(Some(self.write(key, body.as_bytes(), false)))
    }
}

struct Stacks {
    by_name: BTreeMap<String, StackView>,
    names: HashMap<String, String>,
}

/// CloudFormation with many stacks. New stacks take `create_status`. Cheap to clone.
#[derive(Clone)]
pub struct ScaleStacks {
    stacks: Arc<Mutex<Stacks>>,
    /// The status a created stack takes.
    pub create_status: Arc<Mutex<String>>,
    created: Arc<Mutex<HashMap<String, Instant>>>,
    count: Arc<AtomicU64>,
}

impl Default for ScaleStacks {
    fn default() -> Self {
        ScaleStacks {
            stacks: Arc::new(Mutex::new(Stacks {
                by_name: BTreeMap::new(),
                names: HashMap::new(),
            })),
            create_status: Arc::new(Mutex::new("CREATE_COMPLETE".into())),
            created: Arc::default(),
            count: Arc::default(),
        }
    }
}

impl ScaleStacks {
    /// How many stacks exist.
    pub fn len(&self) -> usize {
        lock(&self.stacks).by_name.len()
    }

    /// Whether there is no stack.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// CreateStack calls that made a stack.
    pub fn creates(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// When the stack `name` was created (its CreateStack call arrived), on this host.
    pub fn created_at(&self, name: &str) -> Option<Instant> {
        lock(&self.created).get(name).copied()
    }

    /// Ends every creation in progress with CREATE_COMPLETE; returns how many.
    pub fn complete_all(&self) -> usize {
        let mut stacks = lock(&self.stacks);
        let mut n = 0;
        for s in stacks.by_name.values_mut() {
            if s.status == "CREATE_IN_PROGRESS" {
                s.status = "CREATE_COMPLETE".into();
                n += 1;
            }
        }
        n
    }
}

impl StackService for ScaleStacks {
    async fn list_page(&self, next: Option<&str>) -> Result<Page<StackView>, CallError> {
        let stacks = lock(&self.stacks);
        let from = match next {
            Some(after) => Bound::Excluded(after.to_owned()),
            None => Bound::Unbounded,
        };
        let mut items: Vec<StackView> = stacks
            .by_name
            .range((from, Bound::Unbounded))
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
        let stacks = lock(&self.stacks);
        let name = stacks
            .names
            .get(name_or_id)
            .map_or(name_or_id, String::as_str);
        Ok(stacks.by_name.get(name).cloned())
    }

    async fn create(&self, spec: &StackSpec, _template: &Template) -> Result<String, CallError> {
        let mut stacks = lock(&self.stacks);
        if stacks.by_name.contains_key(&spec.name) {
            return Err(CallError {
                service: "cloudformation",
                operation: "CreateStack",
                kind: ErrorKind::AlreadyExists,
                code: Some("AlreadyExistsException".into()),
                message: format!("Stack [{}] already exists", spec.name),
            });
        }
        lock(&self.created).insert(spec.name.clone(), Instant::now());
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        let id = format!(
            "arn:aws:cloudformation:eu-west-2:123456789012:stack/{}/{n}",
            spec.name
        );
        let view = StackView {
            name: spec.name.clone(),
            id: id.clone(),
            status: lock(&self.create_status).clone(),
            status_reason: None,
            last_change: 1_000,
            created: 1_000,
            tags: spec.tags.clone(),
            parameters: spec.parameters.clone(),
            outputs: BTreeMap::from([(
                "LoginIp".into(),
                format!("198.51.{}.{}", n / 250 % 250, n % 250),
            )]),
            failure_reason: None,
            login_ip: None,
        };
        stacks.names.insert(id.clone(), spec.name.clone());
        stacks.by_name.insert(spec.name.clone(), view);
        Ok(id)
    }

    async fn update(
        &self,
        spec: &StackSpec,
        _template: &Template,
    ) -> Result<UpdateOutcome, CallError> {
        let mut stacks = lock(&self.stacks);
        if let Some(s) = stacks.by_name.get_mut(&spec.name) {
            s.parameters.clone_from(&spec.parameters);
            s.tags.clone_from(&spec.tags);
            s.status = "UPDATE_COMPLETE".into();
        }
        Ok(UpdateOutcome::Started)
    }

    async fn delete(&self, id: &str, _token: &str) -> Result<(), CallError> {
        let mut stacks = lock(&self.stacks);
        if let Some(name) = stacks.names.remove(id) {
            stacks.by_name.remove(&name);
        }
        Ok(())
    }

    async fn first_failure(&self, _id: &str) -> Result<Option<String>, CallError> {
        Ok(None)
    }

    async fn template_parameters(
        &self,
        _template: &Template,
    ) -> Result<BTreeMap<String, ParameterRule>, CallError> {
        Ok(BTreeMap::new())
    }
}
