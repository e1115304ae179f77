//! The controller's view of AWS: one trait per service it uses, returning our own types.
//!
//! The real implementations are in [`crate::aws`]; in-memory fakes for tests are in
//! [`crate::fake`]. No SDK type crosses these traits.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use flightdeck_core::nodes::Instance;
use flightdeck_core::plan::StackSpec;
use flightdeck_core::request::ParameterRule;
use flightdeck_core::snapshot::ObjectMeta;
use flightdeck_core::stack::StackView;

/// How a call failed, reduced to what the controller decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Throttled even after the SDK's own retries.
    Throttled,
    /// A 5xx, a timeout or a connection failure.
    Transient,
    /// The object or stack does not exist.
    NotFound,
    /// CreateStack: a stack with that name exists.
    AlreadyExists,
    /// The service refused the input (CloudFormation `ValidationError`, S3 4xx on input).
    Invalid,
    /// Credentials or permissions.
    Denied,
    /// Anything else.
    Other,
}

/// A failed AWS call: where, what kind, and the service's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{service} {operation} failed ({kind:?}{code}): {message}", code = self.code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
pub struct CallError {
    /// `s3`, `cloudformation`, `ec2`, `sesv2`.
    pub service: &'static str,
    /// The operation, e.g. `CreateStack`.
    pub operation: &'static str,
    /// The kind, decided once in [`crate::aws::error`].
    pub kind: ErrorKind,
    /// The service's error code, when it gave one.
    pub code: Option<String>,
    /// The service's message.
    pub message: String,
}

impl CallError {
    /// Whether trying the same call again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Throttled | ErrorKind::Transient)
    }
}

/// An object's body, as fetched.
#[derive(Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The bytes.
    pub body: Vec<u8>,
    /// Its ETag (quoted, as S3 gives it).
    pub etag: String,
    /// Last-modified time, seconds since the epoch.
    pub modified: i64,
}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched")
            .field("bytes", &self.body.len())
            .field("etag", &self.etag)
            .field("modified", &self.modified)
            .finish()
    }
}

/// An object read by [`ObjectStore::read`]: at most a bounded number of bytes of the
/// version a listing saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The object is gone.
    Missing,
    /// The object is no longer the version listed (its ETag differs): look again.
    Changed,
    /// The object is larger than the limit; nothing past the limit was read.
    TooLarge {
        /// Its size, when the answer told it.
        size: Option<u64>,
    },
    /// The object, whole.
    Body(Fetched),
}

/// One page of a listing, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// What this page holds.
    pub items: Vec<T>,
    /// The token that asks for the next page; `None` on the last.
    pub next: Option<String>,
}

/// One S3 bucket.
///
/// Contract: `list_page` returns one page of the objects under the prefix (ListObjectsV2:
/// at most 1,000), and `list` every page, or an error (never a partial listing presented as
/// complete). `put` overwrites; `delete` of a
/// missing key succeeds. All calls may be repeated safely.
pub trait ObjectStore: Send + Sync {
    /// One page of the objects under `prefix` (one ListObjectsV2 call), from the start or
    /// from the `next` token of the page before.
    fn list_page(
        &self,
        prefix: &str,
        next: Option<&str>,
    ) -> impl Future<Output = Result<Page<ObjectMeta>, CallError>> + Send;
    /// Every object under `prefix`, all pages: for the small prefixes of one cluster or of
    /// flightdeck's own records. The home prefix is read page by page instead.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<ObjectMeta>, CallError>> + Send {
        async move {
            let mut objects = Vec::new();
            let mut next = None;
            loop {
                let page = self.list_page(prefix, next.as_deref()).await?;
                objects.extend(page.items);
                match page.next {
                    Some(token) => next = Some(token),
                    None => return Ok(objects),
                }
            }
        }
    }
    /// Whether at least one object exists under `prefix` (one call, at most one key).
    fn any_under(&self, prefix: &str) -> impl Future<Output = Result<bool, CallError>> + Send;
    /// The object, or `None` when it does not exist. For flightdeck's own objects only:
    /// what users write is read with [`ObjectStore::read`].
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Fetched>, CallError>> + Send;
    /// The object `key` as it was when listed with `etag` (`If-Match`), reading at most
    /// `limit` bytes of it (a `Range`, and a cap on what is taken from the answer): an
    /// object replaced since the listing, however large, costs no more than `limit`.
    fn read(
        &self,
        key: &str,
        etag: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Read, CallError>> + Send;
    /// Removes the object only while its ETag is still `etag` (`If-Match`); returns whether
    /// it was removed (`false`: it was written again since, or is gone).
    fn delete_if(
        &self,
        key: &str,
        etag: &str,
    ) -> impl Future<Output = Result<bool, CallError>> + Send;
    /// Writes `body` (as `text/plain; charset=utf-8`, or JSON for `.cf-status`); returns the
    /// new ETag.
    fn put(&self, key: &str, body: &str) -> impl Future<Output = Result<String, CallError>> + Send;
    /// Removes the object; a missing object is not an error.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), CallError>> + Send;
    /// AWS's clock minus this host's, in seconds, from the `Date` of the latest answer;
    /// `None` before the first answer.
    fn clock_offset(&self) -> Option<i64>;
    /// Writes `body` only if no object `key` exists yet (S3's `If-None-Match: *`), so what
    /// is written is never overwritten; an existing object is [`ErrorKind::AlreadyExists`].
    fn put_new(&self, key: &str, body: &str) -> impl Future<Output = Result<(), CallError>> + Send;
    /// Writes `body` only if the object is still the version `etag` (`If-Match`), or with
    /// `None` only if no object `key` exists (`If-None-Match: *`). Returns the new ETag, or
    /// `None` when the condition did not hold (written by someone else since, or gone).
    fn put_if(
        &self,
        key: &str,
        body: &str,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Option<String>, CallError>> + Send;
}

/// What CreateStack and UpdateStack send besides the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The template body (at most 51,200 bytes, checked at start-up).
    pub body: String,
    /// Service role CloudFormation acts as, if configured.
    pub role_arn: Option<String>,
}

/// Result of UpdateStack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The update started.
    Started,
    /// Nothing differed (AWS says "No updates are to be performed"; the emulator says OK).
    NoChanges,
}

/// CloudFormation.
///
/// Contract: `create` carries `spec.token` as ClientRequestToken, so repeating it never
/// makes a second stack; a stack with that name existing already is
/// [`ErrorKind::AlreadyExists`] (the caller looks again and confirms by tags). `delete`
/// takes the stack id (never the name, which a new stack could reuse) and a token; deleting
/// a deleted stack succeeds. Stacks are returned without `login_ip` and `failure_reason`,
/// which the reconciler fills in.
pub trait StackService: Send + Sync {
    /// One page of the stacks that are not deleted (one DescribeStacks call), from the
    /// start or from the `next` token of the page before.
    fn list_page(
        &self,
        next: Option<&str>,
    ) -> impl Future<Output = Result<Page<StackView>, CallError>> + Send;
    /// Every stack that is not deleted, all pages.
    fn list(&self) -> impl Future<Output = Result<Vec<StackView>, CallError>> + Send {
        async move {
            let mut stacks = Vec::new();
            let mut next = None;
            loop {
                let page = self.list_page(next.as_deref()).await?;
                stacks.extend(page.items);
                match page.next {
                    Some(token) => next = Some(token),
                    None => return Ok(stacks),
                }
            }
        }
    }
    /// One stack by name or id; `None` when it does not exist or is deleted.
    fn describe(
        &self,
        name_or_id: &str,
    ) -> impl Future<Output = Result<Option<StackView>, CallError>> + Send;
    /// CreateStack with CAPABILITY_IAM; returns the stack id.
    fn create(
        &self,
        spec: &StackSpec,
        template: &Template,
    ) -> impl Future<Output = Result<String, CallError>> + Send;
    /// UpdateStack with the same template.
    fn update(
        &self,
        spec: &StackSpec,
        template: &Template,
    ) -> impl Future<Output = Result<UpdateOutcome, CallError>> + Send;
    /// DeleteStack by id.
    fn delete(&self, id: &str, token: &str) -> impl Future<Output = Result<(), CallError>> + Send;
    /// The oldest failure reason among the stack's events (`*_FAILED` with a reason that
    /// is not a cascade like "Resource creation cancelled"), if any.
    fn first_failure(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<String>, CallError>> + Send;
    /// The template's parameters (GetTemplateSummary): type, AllowedValues, default.
    fn template_parameters(
        &self,
        template: &Template,
    ) -> impl Future<Output = Result<BTreeMap<String, ParameterRule>, CallError>> + Send;
}

/// EC2: a cluster's instances. The login address when the template has no login output,
/// and the instances to terminate before a stack is deleted: the master and the compute
/// nodes its scheduler launched itself, which are not stack resources.
///
/// Contract: `stack_instances` returns every instance tagged
/// [`TAG_STACK`](flightdeck_core::nodes::TAG_STACK)` = <stack name>` that is not terminated,
/// across all pages, or an error (never a partial list presented as complete). `terminate`
/// may be repeated safely: an instance already shutting down or terminated is not an error,
/// and neither is an id EC2 does not know (any more): the caller lists again before it
/// deletes the stack, so an instance that was missed is found on the next look. An empty
/// list makes no call. Only ids listed by `stack_instances` of a stack the caller owns are
/// passed; the IAM policy allows terminating only instances that carry the tag.
pub trait Instances: Send + Sync {
    /// The public address of the running (or pending) instance that CloudFormation tagged
    /// with this stack id and logical id; `None` when there is none.
    fn login_ip(
        &self,
        stack_id: &str,
        logical_id: &str,
    ) -> impl Future<Output = Result<Option<String>, CallError>> + Send;
    /// Every instance of the stack named `stack_name` that is not terminated
    /// (DescribeInstances by tag and state, all pages).
    fn stack_instances(
        &self,
        stack_name: &str,
    ) -> impl Future<Output = Result<Vec<Instance>, CallError>> + Send;
    /// Asks EC2 to terminate these instances (TerminateInstances); returns without waiting.
    fn terminate(&self, ids: &[String]) -> impl Future<Output = Result<(), CallError>> + Send;
}

/// Email (SESv2).
pub trait Mailer: Send + Sync {
    /// Sends a plain-text email.
    fn send(
        &self,
        to: &[String],
        subject: &str,
        body: &str,
    ) -> impl Future<Output = Result<(), CallError>> + Send;
}
