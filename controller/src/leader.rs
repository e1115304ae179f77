//! Leader election on the users' bucket, and the fence every mutating call passes.
//!
//! Replicas elect a leader through one lease object (`<controller prefix>leader.json`),
//! written only conditionally; [`flightdeck_core::lease`] decides each step. [`elect`] runs
//! beside the controller: it renews the lease while this replica holds it and watches it
//! while another does. [`Fence`] is what the rest of the controller sees: whether this
//! replica leads, and in which term. [`Fenced`] wraps each AWS adapter so that no call that
//! changes anything is made without a permit from the fence, and none outlives it: an
//! election cannot be forgotten by code that mutates, because that code cannot reach AWS
//! any other way. Each mutating call is logged with its term (`flightdeck::mutation`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use flightdeck_core::lease::{self, Hold, LeaseRecord, Sighting, Step, Timing};
use flightdeck_core::nodes::Instance;
use flightdeck_core::plan::StackSpec;
use flightdeck_core::request::ParameterRule;
use flightdeck_core::snapshot::ObjectMeta;
use flightdeck_core::stack::StackView;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::http::Health;
use crate::metrics::Metrics;
use crate::ports::{
    CallError, ErrorKind, Fetched, Instances, Mailer, ObjectStore, Page, Read, StackService,
    Template, UpdateOutcome,
};

/// The lease object's name under the controller prefix.
pub const LEASE_OBJECT: &str = "leader.json";

/// Whether this replica may act, and in which term.
pub struct Fence {
    identity: String,
    /// `None` when there is no election: a single replica always acts, in term 0.
    timing: Option<Timing>,
    origin: Instant,
    hold: Mutex<Option<Hold>>,
    leading: watch::Sender<Option<u64>>,
    /// The holder another replica's lease names, while this one stands by.
    leader: Mutex<Option<String>>,
    /// Each mutating call is logged at info (a controller) or debug (an operator's command,
    /// which prints what it did itself).
    log_calls: bool,
    metrics: Arc<Metrics>,
}

impl Fence {
    /// A fence for a replica that takes part in elections as `identity`: it may not act
    /// until [`elect`] wins it the lease.
    pub fn elected(identity: &str, timing: Timing, metrics: Arc<Metrics>) -> Arc<Fence> {
        metrics.leading(None);
        Arc::new(Fence {
            identity: identity.to_owned(),
            timing: Some(timing),
            origin: Instant::now(),
            hold: Mutex::new(None),
            leading: watch::Sender::new(None),
            leader: Mutex::new(None),
            log_calls: true,
            metrics,
        })
    }

    /// A fence that always lets its replica act, in term 0: a controller with election
    /// off (run one only).
    pub fn unelected(identity: &str, metrics: Arc<Metrics>) -> Arc<Fence> {
        Fence::always(identity, true, metrics)
    }

    /// The fence of an operator's command (`enrol`, `adopt`, `plan`, `doctor`): it always
    /// acts, and logs its calls only at debug level.
    pub fn command(metrics: Arc<Metrics>) -> Arc<Fence> {
        Fence::always("flightdeck-command", false, metrics)
    }

    fn always(identity: &str, log_calls: bool, metrics: Arc<Metrics>) -> Arc<Fence> {
        metrics.leading(Some(0));
        Arc::new(Fence {
            identity: identity.to_owned(),
            timing: None,
            origin: Instant::now(),
            hold: Mutex::new(None),
            leading: watch::Sender::new(Some(0)),
            leader: Mutex::new(Some(identity.to_owned())),
            log_calls,
            metrics,
        })
    }

    /// This replica's name in the lease and the logs.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether this replica takes part in elections.
    pub fn elected_replica(&self) -> bool {
        self.timing.is_some()
    }

    /// The term this replica leads in, or `None` while it stands by.
    pub fn term(&self) -> Option<u64> {
        *self.leading.borrow()
    }

    /// Who leads, as far as this replica knows: itself, the holder the lease names, or
    /// `None` when unknown.
    pub fn leader(&self) -> Option<String> {
        if self.term().is_some() {
            return Some(self.identity.clone());
        }
        self.leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn follow(&self, holder: Option<String>) {
        self.set(None);
        *self.leader.lock().unwrap_or_else(PoisonError::into_inner) = holder;
    }

    /// Changes of [`Fence::term`].
    pub fn watch(&self) -> watch::Receiver<Option<u64>> {
        self.leading.subscribe()
    }

    /// This replica's clock for the election: time since the fence was made.
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn hold(&self) -> Option<Hold> {
        self.hold
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records the hold the elector has (or lost), and tells the controller when the term
    /// it may act in changes.
    fn set(&self, hold: Option<Hold>) {
        let term = hold.as_ref().map(|h| h.term);
        *self.hold.lock().unwrap_or_else(PoisonError::into_inner) = hold;
        let before = *self.leading.borrow();
        if before != term {
            self.leading.send_replace(term);
            self.metrics.leading(term);
            self.metrics.leader_changed(term.is_some());
            match term {
                Some(term) => {
                    info!(term, replica = %self.identity, "leading: this replica holds the lease")
                }
                None => {
                    warn!(replica = %self.identity, "standing by: this replica no longer holds the lease and makes no change")
                }
            }
        }
    }

    /// A permit for a mutating call starting now: its term, and when it must be abandoned.
    ///
    /// # Errors
    /// When this replica does not hold the lease with time to spare.
    fn permit(&self, service: &'static str, operation: &'static str) -> Result<Permit, CallError> {
        let Some(timing) = self.timing else {
            return Ok(Permit {
                term: 0,
                until: None,
            });
        };
        let now = self.now();
        match self.hold().and_then(|h| h.permit(now, &timing)) {
            Some(p) => Ok(Permit {
                term: p.term,
                until: Some(self.origin + p.until),
            }),
            None => {
                self.metrics.fenced("not_leader");
                Err(CallError {
                    service,
                    operation,
                    kind: ErrorKind::Transient,
                    code: Some("NotLeader".into()),
                    message: "this replica does not hold the leader lease with time to spare, so it makes no change".into(),
                })
            }
        }
    }
}

/// What a mutating call may do.
struct Permit {
    term: u64,
    /// Abandon the call at this instant; `None` without an election.
    until: Option<Instant>,
}

/// This host's clock in milliseconds since the epoch, for the mutation log.
fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn epoch_seconds() -> i64 {
    i64::try_from(epoch_ms() / 1000).unwrap_or(i64::MAX)
}

/// Runs the election for this replica until `stop` completes, then gives the lease up if
/// it holds it, so that another replica takes over at once instead of waiting it out.
/// Stop it only after the controller has finished the clusters in hand: they may still
/// need the lease.
pub async fn elect<S: ObjectStore>(
    store: &S,
    key: &str,
    fence: &Fence,
    health: &Health,
    stop: impl Future<Output = ()>,
) {
    let Some(timing) = fence.timing else {
        stop.await;
        return;
    };
    tokio::pin!(stop);
    let mut elector = Elector {
        store,
        key,
        fence,
        timing,
        seen: None,
        highest_term: 0,
    };
    loop {
        let reached = elector.step().await;
        if reached && fence.term().is_none() {
            // A standby that reaches the lease is ready: it answers probes and metrics, and
            // hints with 503, and can take over.
            health.resynced();
        }
        tokio::select! {
            () = tokio::time::sleep(timing.retry) => {}
            () = &mut stop => break,
        }
    }
    elector.release().await;
}

struct Elector<'a, S> {
    store: &'a S,
    key: &'a str,
    fence: &'a Fence,
    timing: Timing,
    seen: Option<Sighting>,
    highest_term: u64,
}

impl<S: ObjectStore> Elector<'_, S> {
    /// One round: renew the lease held, or read it and decide. Returns whether S3 answered.
    async fn step(&mut self) -> bool {
        let hold = self.fence.hold();
        let now = self.fence.now();
        if let Some(h) = &hold
            && !h.valid(now, &self.timing)
        {
            warn!(
                term = h.term,
                "the lease could not be renewed before its deadline"
            );
            self.fence.set(None);
        }
        let hold = hold.filter(|h| h.valid(now, &self.timing));
        if hold.is_none() && !self.read().await {
            return false;
        }
        let step = lease::decide(
            &self.fence.identity,
            self.fence.now(),
            self.seen.as_ref(),
            hold.as_ref(),
            self.highest_term,
            &self.timing,
            epoch_seconds(),
        );
        let (record, condition) = match step {
            Step::Follow { holder } => {
                debug!(holder = holder.as_deref().unwrap_or("unknown"), "following");
                self.fence.follow(holder);
                return true;
            }
            Step::Create(record) => (record, None),
            Step::TakeOver { etag, record } | Step::Renew { etag, record } => (record, Some(etag)),
        };
        let sent = self.fence.now();
        match self.write(&record, condition.as_deref()).await {
            Ok(Some(etag)) => {
                self.highest_term = self.highest_term.max(record.term);
                self.seen = Some(Sighting {
                    etag: etag.clone(),
                    record: Some(record.clone()),
                    since: sent,
                });
                self.fence.set(Some(Hold {
                    term: record.term,
                    etag,
                    renewed: sent,
                    renewals: record.renewals,
                }));
                true
            }
            Ok(None) => {
                // Another replica's version is there: whoever wrote it holds the lease.
                if hold.is_some() {
                    warn!(
                        term = record.term,
                        "another replica wrote the lease: standing down"
                    );
                }
                self.fence.set(None);
                self.seen = None;
                true
            }
            // A renewal that failed leaves the hold as it was: it lapses at its deadline.
            Err(e) => {
                warn!(error = %e, "could not write the lease; will try again");
                false
            }
        }
    }

    /// Reads the lease object into `seen`; `false` when it could not be read.
    async fn read(&mut self) -> bool {
        let got = tokio::time::timeout(self.timing.call_timeout(), self.store.get(self.key)).await;
        match got {
            Ok(Ok(Some(Fetched { body, etag, .. }))) => {
                let record = LeaseRecord::parse(&body);
                if let Some(r) = &record {
                    self.highest_term = self.highest_term.max(r.term);
                }
                self.seen = Some(Sighting::after(
                    self.seen.as_ref(),
                    etag,
                    record,
                    self.fence.now(),
                ));
                true
            }
            Ok(Ok(None)) => {
                self.seen = None;
                true
            }
            Ok(Err(e)) => {
                warn!(error = %e, "could not read the lease");
                false
            }
            Err(_) => {
                warn!("reading the lease took longer than election.retry_period");
                false
            }
        }
    }

    /// Writes the lease object on condition; `Ok(None)` when the condition did not hold.
    async fn write(
        &self,
        record: &LeaseRecord,
        etag: Option<&str>,
    ) -> Result<Option<String>, CallError> {
        let body = record.to_json();
        let write = self.store.put_if(self.key, &body, etag);
        let result = match tokio::time::timeout(self.timing.call_timeout(), write).await {
            Ok(result) => result,
            Err(_) => Err(CallError {
                service: "s3",
                operation: "PutObject",
                kind: ErrorKind::Transient,
                code: None,
                message: "writing the lease took longer than election.retry_period".into(),
            }),
        };
        let metrics = &self.fence.metrics;
        match &result {
            Ok(Some(_)) => metrics.lease_write("ok"),
            Ok(None) => metrics.lease_write("conflict"),
            Err(_) => metrics.lease_write("error"),
        }
        result
    }

    /// Gives the lease up: stop acting first, then mark it released.
    async fn release(&mut self) {
        let Some(hold) = self.fence.hold() else {
            return;
        };
        self.fence.set(None);
        if !hold.valid(self.fence.now(), &self.timing) {
            return;
        }
        let record = lease::released(&hold, &self.fence.identity, &self.timing, epoch_seconds());
        match self.write(&record, Some(&hold.etag)).await {
            Ok(Some(_)) => info!(term = hold.term, "gave the lease up"),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "could not give the lease up; it lapses on its own"),
        }
    }
}

/// An AWS adapter whose mutating calls need a permit from the fence.
pub struct Fenced<T> {
    inner: T,
    fence: Arc<Fence>,
}

impl<T> Fenced<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, fence: Arc<Fence>) -> Self {
        Fenced { inner, fence }
    }

    /// The adapter inside, for calls that need no permit (the election itself).
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// Makes `call` if the fence permits, abandoning it when the permit runs out, and logs
    /// it with its term.
    async fn mutate<R>(
        &self,
        service: &'static str,
        operation: &'static str,
        target: &str,
        call: impl Future<Output = Result<R, CallError>>,
    ) -> Result<R, CallError> {
        let permit = self.fence.permit(service, operation)?;
        let started_ms = epoch_ms();
        let replica = self.fence.identity();
        debug!(target: "flightdeck::mutation", term = permit.term, replica, service, operation, on = target, started_ms, "mutating");
        let result = match permit.until {
            None => call.await,
            Some(until) => match tokio::time::timeout_at(until, call).await {
                Ok(result) => result,
                Err(_) => {
                    self.fence.metrics.fenced("cut_off");
                    Err(CallError {
                        service,
                        operation,
                        kind: ErrorKind::Transient,
                        code: Some("LeaseRanOut".into()),
                        message: "abandoned: the leader lease would have run out during the call"
                            .into(),
                    })
                }
            },
        };
        let ended_ms = epoch_ms();
        let ok = result.is_ok();
        if self.fence.log_calls {
            info!(target: "flightdeck::mutation", term = permit.term, replica, service, operation, on = target, started_ms, ended_ms, ok, "mutation");
        } else {
            debug!(target: "flightdeck::mutation", term = permit.term, replica, service, operation, on = target, started_ms, ended_ms, ok, "mutation");
        }
        result
    }
}

impl<T: ObjectStore> ObjectStore for Fenced<T> {
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
    fn clock_offset(&self) -> Option<i64> {
        self.inner.clock_offset()
    }
    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool, CallError> {
        self.mutate("s3", "DeleteObject", key, self.inner.delete_if(key, etag))
            .await
    }
    async fn put(&self, key: &str, body: &str) -> Result<String, CallError> {
        self.mutate("s3", "PutObject", key, self.inner.put(key, body))
            .await
    }
    async fn delete(&self, key: &str) -> Result<(), CallError> {
        self.mutate("s3", "DeleteObject", key, self.inner.delete(key))
            .await
    }
    async fn put_new(&self, key: &str, body: &str) -> Result<(), CallError> {
        self.mutate("s3", "PutObject", key, self.inner.put_new(key, body))
            .await
    }
    async fn put_if(
        &self,
        key: &str,
        body: &str,
        etag: Option<&str>,
    ) -> Result<Option<String>, CallError> {
        self.mutate("s3", "PutObject", key, self.inner.put_if(key, body, etag))
            .await
    }
}

impl<T: StackService> StackService for Fenced<T> {
    async fn list_page(&self, next: Option<&str>) -> Result<Page<StackView>, CallError> {
        self.inner.list_page(next).await
    }
    async fn describe(&self, name_or_id: &str) -> Result<Option<StackView>, CallError> {
        self.inner.describe(name_or_id).await
    }
    async fn create(&self, spec: &StackSpec, template: &Template) -> Result<String, CallError> {
        self.mutate(
            "cloudformation",
            "CreateStack",
            &spec.name,
            self.inner.create(spec, template),
        )
        .await
    }
    async fn update(
        &self,
        spec: &StackSpec,
        template: &Template,
    ) -> Result<UpdateOutcome, CallError> {
        self.mutate(
            "cloudformation",
            "UpdateStack",
            &spec.name,
            self.inner.update(spec, template),
        )
        .await
    }
    async fn delete(&self, id: &str, token: &str) -> Result<(), CallError> {
        self.mutate(
            "cloudformation",
            "DeleteStack",
            id,
            self.inner.delete(id, token),
        )
        .await
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

impl<T: Instances> Instances for Fenced<T> {
    async fn login_ip(
        &self,
        stack_id: &str,
        logical_id: &str,
    ) -> Result<Option<String>, CallError> {
        self.inner.login_ip(stack_id, logical_id).await
    }
    async fn stack_instances(&self, stack_name: &str) -> Result<Vec<Instance>, CallError> {
        self.inner.stack_instances(stack_name).await
    }
    async fn terminate(&self, ids: &[String]) -> Result<(), CallError> {
        if ids.is_empty() {
            return self.inner.terminate(ids).await;
        }
        self.mutate(
            "ec2",
            "TerminateInstances",
            &ids.join(","),
            self.inner.terminate(ids),
        )
        .await
    }
}

impl<T: Mailer> Mailer for Fenced<T> {
    async fn send(&self, to: &[String], subject: &str, body: &str) -> Result<(), CallError> {
        self.mutate(
            "sesv2",
            "SendEmail",
            subject,
            self.inner.send(to, subject, body),
        )
        .await
    }
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
