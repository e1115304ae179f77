//! The reconciler: observe, plan (in core), execute. A full resync looks at everything; a
//! single-key look (a requeue, later a hint) reads only that cluster's objects and stack.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flightdeck_core::admission::{
    ExpiryHold, admit, cost_of, hold_expiries, lifetime_end, lifetime_of, policy_lifetime,
};
use flightdeck_core::adopt::OlderNames;
use flightdeck_core::identity::TAG_USER;
use flightdeck_core::key::{ClusterKey, Suffix};
use flightdeck_core::money::Dollars;
use flightdeck_core::orphan::{OrphanTracker, OrphanVerdict};
use flightdeck_core::plan::{
    Action, Context, Expiry, Observed, RequestState, plan_mistakes, plan_with_phase,
};
use flightdeck_core::report::Phase;
use flightdeck_core::request::{MAX_REQUEST_BYTES, RequestError, RequestRules, parse_request};
use flightdeck_core::snapshot::{ClusterFiles, ClusterParts, Snapshot};
use flightdeck_core::stack::{StackPhase, StackView};
use flightdeck_core::watch::{Poll, Waiting, Watch, in_progress};
use futures::StreamExt;
use tracing::warn;

use crate::config::Settings;
use crate::metrics::{Metrics, PassSummary, phase_label};
use crate::ports::{CallError, ErrorKind, Instances, Mailer, ObjectStore, Read, StackService};
use crate::queue::WorkQueue;
use crate::usage::UsageBook;

/// The services the reconciler talks to.
pub struct Cloud<S, C, E, M> {
    /// The users' bucket.
    pub store: S,
    /// The customizer bucket (enrolment checks).
    pub customizer: S,
    /// CloudFormation.
    pub stacks: C,
    /// EC2 (login address fallback; the cluster's instances, terminated before a delete).
    pub instances: E,
    /// Email, when notifications are enabled.
    pub mailer: Option<M>,
}

/// What one cluster's reconcile came to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeyOutcome {
    /// Actions planned.
    pub actions: Vec<Action>,
    /// Look again soon (something is in progress).
    pub soon: bool,
    /// The error that stopped it, if any (the key is requeued with backoff).
    pub error: Option<CallError>,
    /// The phase its status shows, when it has one.
    pub phase: Option<Phase>,
    /// Estimated dollars per hour at full scale, when the prices are known.
    pub cost: Option<f64>,
    /// Its ComputeMaxNodes, when known.
    pub max_nodes: Option<i64>,
    /// Not looked at: its user's work for this pass was spent (the next pass goes on).
    pub deferred: bool,
    /// The stack it waits on and the status that stack was seen in, when it waits for the
    /// stack to change by itself: it is put on the watch, which polls it every busy
    /// interval, rather than looked at alone.
    pub waits_on: Option<Waiting>,
}

/// How one cluster is looked at: what the full pass decided for it, if anything.
#[derive(Clone, Copy)]
struct Look<'a> {
    /// The orphan guard's verdict.
    orphan: OrphanVerdict,
    /// Whether it may be deleted for its lifetime now.
    may_expire: bool,
    /// What is left of its user's request reads for this pass; `None`: no bound.
    reads: Option<&'a AtomicUsize>,
}

impl Look<'_> {
    /// A look at one cluster alone (a hint, a requeue): never deletes an orphan or
    /// expires, and reads its request whatever other clusters cost.
    fn single() -> Self {
        Look {
            orphan: OrphanVerdict::NotJudged,
            may_expire: false,
            reads: None,
        }
    }
}

/// What one full resync came to.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Each cluster's outcome.
    pub outcomes: BTreeMap<ClusterKey, KeyOutcome>,
    /// Actions for mistaken requests.
    pub mistake_actions: Vec<Action>,
    /// Orphans past grace that the cap held back.
    pub held_back: usize,
    /// How long the pass took.
    pub elapsed: Duration,
}

/// A request as last read, by object key: re-read when its ETag or its last-modified time
/// changes. Writing a file again unchanged keeps its ETag (the MD5 of the content) but not
/// its time: that is how users retry a refused or failed request.
#[derive(Clone)]
struct CachedRequest {
    etag: String,
    modified: i64,
    state: RequestState,
    /// A refusal of this content (enrolment, admission) was counted already.
    counted_refusal: bool,
}

/// Details of a stack that cost extra calls, by stack id, last change and status. The
/// status is part of the key because a stack's last change stays its creation time from
/// CREATE_IN_PROGRESS to CREATE_COMPLETE: without it, "no address yet" would stick.
type DetailsKey = (String, i64, String);

/// Details of a stack that cost extra calls.
#[derive(Clone, Default)]
struct StackDetails {
    login_ip: Option<String>,
    failure_reason: Option<String>,
}

/// Observes, plans and executes. Holds no state that matters across restarts: the request
/// cache and stack details only save calls, and the orphan tracker errs towards keeping.
pub struct Reconciler<S, C, E, M> {
    pub(crate) cloud: Cloud<S, C, E, M>,
    pub(crate) settings: Settings,
    pub(crate) rules: RequestRules,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) delivered: Mutex<BTreeSet<String>>,
    pub(crate) usage: Mutex<UsageBook>,
    pub(crate) ledger: Mutex<Vec<String>>,
    pub(crate) ledger_seq: std::sync::atomic::AtomicU64,
    user_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The outbox may hold notices to send (true at start-up: unknown).
    pub(crate) outbox_pending: std::sync::atomic::AtomicBool,
    /// The usage book was built from a complete listing of the stacks: until then nothing
    /// is admitted (a request hinted right after a start would be admitted against zero).
    usage_known: std::sync::atomic::AtomicBool,
    requests: Mutex<HashMap<String, CachedRequest>>,
    /// When this process first saw each stack (by id): a stack first seen past the end of
    /// its lifetime gets a grace.
    first_seen: Mutex<HashMap<String, i64>>,
    /// The id of each cluster's stack as last seen: when it is gone and CloudFormation
    /// confirms it deleted, that is a deletion flightdeck observed.
    seen_stacks: Mutex<HashMap<ClusterKey, String>>,
    /// What this process last wrote to each object: the ETag S3 gave back and the MD5 of
    /// the body. With ETags that are not MD5s (SSE-KMS), this is how a marker is known to
    /// hold what it should, instead of being written again every pass.
    written: Mutex<HashMap<String, (String, String)>>,
    /// Home folders that are no user name, already logged.
    foreign_told: Mutex<BTreeSet<String>>,
    /// Whether each user is enrolled, and when that was asked.
    enrolment: Mutex<HashMap<String, (bool, Instant)>>,
    /// Each user's notice budget: tokens left, and when last counted.
    pub(crate) notice_budgets: Mutex<HashMap<String, (f64, Instant)>>,
    details: Mutex<HashMap<DetailsKey, StackDetails>>,
    orphans: Mutex<OrphanTracker>,
    /// Clusters waiting for their stack to change, polled every busy interval.
    watch: Mutex<Watch>,
    /// Which clusters a single-key look also describes by the older design's name.
    older_names: Mutex<OlderNames>,
    started: Instant,
    /// The start of the watch's clock (tokio's, so tests can pause it).
    epoch: tokio::time::Instant,
}

impl<S, C, E, M> Reconciler<S, C, E, M>
where
    S: ObjectStore,
    C: StackService,
    E: Instances,
    M: Mailer,
{
    /// A reconciler over `cloud` with validated settings and the template's rules.
    pub fn new(
        cloud: Cloud<S, C, E, M>,
        settings: Settings,
        rules: RequestRules,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reconciler {
            cloud,
            settings,
            rules,
            metrics,
            delivered: Mutex::default(),
            usage: Mutex::default(),
            ledger: Mutex::default(),
            ledger_seq: std::sync::atomic::AtomicU64::new(0),
            user_locks: Mutex::default(),
            outbox_pending: std::sync::atomic::AtomicBool::new(true),
            usage_known: std::sync::atomic::AtomicBool::new(false),
            requests: Mutex::default(),
            first_seen: Mutex::default(),
            seen_stacks: Mutex::default(),
            notice_budgets: Mutex::default(),
            enrolment: Mutex::default(),
            foreign_told: Mutex::default(),
            written: Mutex::default(),
            details: Mutex::default(),
            orphans: Mutex::default(),
            watch: Mutex::default(),
            older_names: Mutex::default(),
            started: Instant::now(),
            epoch: tokio::time::Instant::now(),
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The services it talks to.
    pub fn cloud(&self) -> &Cloud<S, C, E, M> {
        &self.cloud
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Forgets what it keeps in memory, as a restart would. A replica that starts leading
    /// calls it, then [`Reconciler::load_delivered`]: another replica may have acted since
    /// this one last led. The usage book waits for a full listing again, orphan and expiry
    /// grace start again (erring towards keeping), and cached requests, markers and stack
    /// details are read afresh. The audit ledger keeps what it has not written yet: those
    /// lines are true whoever leads.
    pub fn forget(&self) {
        // Every field is named, so a field added later must be placed on one side or the
        // other here.
        let Reconciler {
            cloud: _,
            settings: _,
            rules: _,
            metrics: _,
            ledger: _,
            ledger_seq: _,
            user_locks: _,
            started: _,
            epoch: _,
            delivered,
            usage,
            outbox_pending,
            usage_known,
            requests,
            first_seen,
            seen_stacks,
            written,
            foreign_told,
            enrolment,
            notice_budgets,
            details,
            orphans,
            watch,
            older_names,
        } = self;
        fn reset<T: Default>(m: &Mutex<T>) {
            *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = T::default();
        }
        reset(delivered);
        reset(usage);
        reset(requests);
        reset(first_seen);
        reset(seen_stacks);
        reset(written);
        reset(foreign_told);
        reset(enrolment);
        reset(notice_budgets);
        reset(details);
        reset(orphans);
        reset(watch);
        reset(older_names);
        outbox_pending.store(true, std::sync::atomic::Ordering::SeqCst);
        usage_known.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn context(&self) -> Context<'_> {
        Context {
            identity: &self.settings.identity,
            rules: &self.rules,
            home_prefix: &self.settings.home_prefix,
            updatable: &self.settings.updatable,
            lifetime_warning: self.settings.lifetime_warning,
        }
    }

    /// One full pass: list the home prefix and the stacks, judge orphans, then plan and
    /// (unless `dry_run`) execute every cluster, `concurrency` at a time. A failed listing
    /// ends the pass before anything is planned, and restarts every orphan's grace.
    ///
    /// With a `queue`, a cluster a worker is processing, or that is queued for a fresh
    /// look, is left to the worker: a cluster is never processed twice at once.
    ///
    /// # Errors
    /// The listing call that failed.
    pub async fn resync(
        &self,
        dry_run: bool,
        queue: Option<&WorkQueue>,
    ) -> Result<PassReport, CallError> {
        let start = Instant::now();
        let mut snap = match self.list_everything().await {
            Ok(snap) => snap,
            Err(e) => {
                self.lock_orphans().judge(
                    self.started.elapsed(),
                    false,
                    &[],
                    &self.settings.orphans,
                );
                return Err(e);
            }
        };
        self.report_foreign_folders(&snap);
        for d in &snap.duplicates {
            warn!(stack = %d.name, "a second stack of ours claims the same cluster; it is left alone");
        }
        let judgement = self.lock_orphans().judge(
            self.started.elapsed(),
            true,
            &snap.orphans(),
            &self.settings.orphans,
        );
        if judgement.held_back > 0 {
            warn!(
                orphans = judgement.held_back,
                cap = self.settings.orphans.max_deletes,
                "deleting none of the orphaned stacks: more requests vanished at once than reconcile.max_orphan_deletes allows; check the bucket, then delete by hand or raise the cap"
            );
        }
        self.forget_unseen(&snap);
        let may_expire = self.judge_expiries(&snap);
        self.lock_usage()
            .rebuild(&snap.stacks, &self.settings.policy.prices, start);
        self.usage_known
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // One user's clusters are looked at one after another, in one slot of the
        // `concurrency`: a user with thousands of files cannot hold every slot, and reads at
        // most `reconcile.per_user_work` requests a pass.
        // Each cluster's files and stacks are moved out of the snapshot, not copied: the
        // snapshot keeps what the rest of the pass reads (mistakes, reports).
        let mut by_user: BTreeMap<String, Vec<ClusterParts>> = BTreeMap::new();
        for parts in snap.take_clusters() {
            by_user
                .entry(parts.key.user.clone())
                .or_default()
                .push(parts);
        }
        let (snap, judgement) = (&snap, &judgement);
        let outcomes: BTreeMap<ClusterKey, KeyOutcome> = futures::stream::iter(by_user)
            .map(|(_, clusters)| async move {
                let reads = AtomicUsize::new(self.settings.guards.per_user_work);
                let mut outcomes = Vec::new();
                for ClusterParts {
                    key,
                    files,
                    stack,
                    unmanaged,
                } in clusters
                {
                    let claimed = match queue {
                        Some(q) => match q.claim(&key) {
                            Some(c) => Some(c),
                            None => continue,
                        },
                        None => None,
                    };
                    let verdict = judgement
                        .verdicts
                        .get(&key)
                        .copied()
                        .unwrap_or(OrphanVerdict::NotJudged);
                    let look = Look {
                        orphan: verdict,
                        may_expire,
                        reads: Some(&reads),
                    };
                    let outcome = self
                        .reconcile(&key, files, stack, unmanaged, look, dry_run)
                        .await;
                    drop(claimed);
                    outcomes.push((key, outcome));
                }
                outcomes
            })
            .buffer_unordered(self.settings.concurrency)
            .flat_map(futures::stream::iter)
            .collect()
            .await;
        let deferred = outcomes.values().filter(|o| o.deferred).count();
        if deferred > 0 {
            warn!(
                clusters = deferred,
                per_user = self.settings.guards.per_user_work,
                "some users' requests were left for the next pass: they changed more than reconcile.per_user_work requests at once"
            );
        }
        let reports = snap
            .reports
            .iter()
            .map(|(k, etag)| (k.clone(), self.content_tag(k, etag.clone())))
            .collect();
        let mistake_actions = plan_mistakes(
            &snap.mistaken,
            &reports,
            &self.settings.home_prefix,
            self.settings.guards.per_user_work,
        );
        if !dry_run {
            futures::stream::iter(&mistake_actions)
                .for_each_concurrent(self.settings.concurrency, |action| async move {
                    if let Action::Put { key, .. } = action
                        && let Some(source) = key.strip_suffix(".cf-failed")
                        && let Some(mistake) = snap.mistaken.get(source)
                    {
                        self.metrics.mistake(source, mistake.kind());
                    }
                    if let Err(e) = self.execute_write(action).await {
                        warn!(error = %e, "could not write the explanation of a mistaken request");
                    }
                })
                .await;
            self.retry_outbox().await;
            self.flush_ledger().await;
        }
        let orphans_pending = judgement
            .verdicts
            .values()
            .filter(|v| !matches!(v, OrphanVerdict::Delete | OrphanVerdict::NotJudged))
            .count();
        let report = PassReport {
            outcomes,
            mistake_actions,
            held_back: judgement.held_back,
            elapsed: start.elapsed(),
        };
        if !dry_run {
            let summary = summarize(&report, orphans_pending, self.metrics.per_user());
            self.metrics
                .resync_done(report.elapsed.as_secs_f64(), &summary);
        }
        Ok(report)
    }

    /// The home prefix and the stacks, listed page by page into one snapshot: each page is
    /// sorted as it comes and users' own files are dropped with it, so a bucket of a
    /// million data files costs its list calls, not its size in memory.
    async fn list_everything(&self) -> Result<Snapshot, CallError> {
        let mut snap = Snapshot::default();
        let home = &self.settings.home_prefix;
        let mut next = None;
        loop {
            let page = self.cloud.store.list_page(home, next.as_deref()).await?;
            snap.add_objects(home, page.items);
            match page.next {
                Some(token) => next = Some(token),
                None => break,
            }
        }
        let pages = self.list_stacks_into(&mut snap).await?;
        let now = self.epoch.elapsed();
        lock(&self.watch).listed_for_pass(pages, now);
        *lock(&self.older_names) = OlderNames::of(
            &self.settings.identity,
            &snap.stacks,
            !snap.unmanaged.is_empty(),
        );
        Ok(snap)
    }

    /// How many clusters wait for their stack to change.
    pub fn watching(&self) -> usize {
        lock(&self.watch).len()
    }

    /// How long until the watched stacks are due to be polled again; `None` while nothing
    /// is watched.
    pub fn poll_due_in(&self) -> Option<Duration> {
        lock(&self.watch).due_in(self.settings.busy_interval, self.epoch.elapsed())
    }

    /// How long the next full pass waits, so that while clusters are watched the stacks
    /// are listed at most once per busy interval ([`Watch::pass_waits`]).
    pub fn pass_waits(&self) -> Duration {
        lock(&self.watch).pass_waits(self.settings.busy_interval, self.epoch.elapsed())
    }

    /// Polls the watched stacks, in min(K, pages) calls ([`Watch::poll`]): one
    /// DescribeStacks each while they are fewer than the pages of a listing, else one
    /// listing of every stack. Returns the watched clusters whose stack changed or is gone:
    /// each is to be looked at again, with what the poll showed.
    ///
    /// # Errors
    /// The call that failed; the watch is kept, to be polled again.
    pub async fn poll_stacks(&self) -> Result<Vec<ClusterKey>, CallError> {
        let mut snap = Snapshot::default();
        let poll = lock(&self.watch).poll();
        match poll {
            Poll::List => {
                let pages = self.list_stacks_into(&mut snap).await?;
                Ok(lock(&self.watch).listed(&snap.stacks, pages, self.epoch.elapsed()))
            }
            Poll::Describe(names) => {
                for name in names {
                    let stack = self.cloud.stacks.describe(&name).await?;
                    snap.add_stacks(&self.settings.identity, stack);
                }
                Ok(lock(&self.watch).described(&snap.stacks, self.epoch.elapsed()))
            }
        }
    }

    /// Every stack, page by page, into `snap`; returns how many pages it took.
    async fn list_stacks_into(&self, snap: &mut Snapshot) -> Result<usize, CallError> {
        let mut next = None;
        let mut pages = 0;
        loop {
            let page = self.cloud.stacks.list_page(next.as_deref()).await?;
            pages += 1;
            snap.add_stacks(&self.settings.identity, page.items);
            match page.next {
                Some(token) => next = Some(token),
                None => return Ok(pages),
            }
        }
    }

    /// After a look at `key`: watches it while it waits on its stack, else stops watching.
    pub fn watch_or_forget(&self, key: &ClusterKey, outcome: &KeyOutcome) {
        let mut watch = lock(&self.watch);
        match &outcome.waits_on {
            Some(waiting) if outcome.error.is_none() => watch.watch(key, waiting.clone()),
            _ => watch.unwatch(key),
        }
        self.metrics.watched(watch.len());
    }

    /// Looks at one cluster only: its objects (one listing of its prefix) and its stack
    /// (one describe by name). Never deletes an orphan: only a full resync may.
    ///
    /// A stack is the cluster's by its tags, not its name, and an adopted stack keeps the
    /// older design's name, `<cluster>`: when there is no stack of flightdeck's name, that
    /// name is described too. Otherwise a look at an adopted cluster would see no stack and
    /// create a second one; and a look at one not yet adopted would not see it.
    pub async fn reconcile_key(&self, key: &ClusterKey) -> KeyOutcome {
        let prefix = key.object_prefix(&self.settings.home_prefix);
        let name = self.settings.identity.stack_name(key);
        let seen =
            lock(&self.watch).take_seen(key, self.settings.busy_interval, self.epoch.elapsed());
        let observed = async {
            let objects = self.cloud.store.list(&prefix).await?;
            // A stack the poll no longer showed is described: gone, or not listed yet.
            let stack = match seen.flatten() {
                Some(listed) => Some(listed),
                None => match self.cloud.stacks.describe(&name).await? {
                    Some(s) => Some(s),
                    None if lock(&self.older_names).includes(key) => {
                        self.cloud.stacks.describe(&key.cluster).await?
                    }
                    None => None,
                },
            };
            Ok::<_, CallError>((objects, stack))
        };
        match observed.await {
            Ok((objects, stack)) => {
                let snap = Snapshot::build(
                    &self.settings.home_prefix,
                    &self.settings.identity,
                    objects,
                    stack,
                );
                let files = snap.files.get(key).cloned().unwrap_or_default();
                let stack = snap.stacks.get(key).cloned();
                let unmanaged = snap.unmanaged.get(key).cloned();
                self.reconcile(key, files, stack, unmanaged, Look::single(), false)
                    .await
            }
            Err(e) => KeyOutcome {
                error: Some(e),
                ..KeyOutcome::default()
            },
        }
    }

    async fn reconcile(
        &self,
        key: &ClusterKey,
        files: ClusterFiles,
        stack: Option<StackView>,
        unmanaged: Option<StackView>,
        look: Look<'_>,
        dry_run: bool,
    ) -> KeyOutcome {
        let user_lock = self.user_lock(&key.user);
        let _one_at_a_time = user_lock.lock().await;
        if files.create.is_some()
            && !files.delete
            && !self.usage_known.load(std::sync::atomic::Ordering::SeqCst)
        {
            // Admission needs what the user's other clusters take up, which only a complete
            // listing of the stacks tells: the first full resync looks at this one.
            return KeyOutcome {
                soon: true,
                ..KeyOutcome::default()
            };
        }
        let observed = match self.observe(key, files, stack, unmanaged, look).await {
            Ok(Some(o)) => o,
            Ok(None) => {
                return KeyOutcome {
                    deferred: true,
                    ..KeyOutcome::default()
                };
            }
            Err(e) => {
                return KeyOutcome {
                    error: Some(e),
                    ..KeyOutcome::default()
                };
            }
        };
        let planned = plan_with_phase(&observed, &self.context());
        let parameters = match (&observed.request, &observed.stack) {
            (RequestState::Valid { request, .. }, _) => Some(&request.parameters),
            (_, Some(s)) => Some(&s.parameters),
            _ => None,
        };
        let costs = |outcome: KeyOutcome| KeyOutcome {
            phase: planned.phase,
            cost: parameters
                .and_then(|p| cost_of(p, &self.settings.policy.prices))
                .map(Dollars::as_f64),
            max_nodes: parameters
                .and_then(|p| p.get("ComputeMaxNodes"))
                .and_then(|n| n.parse().ok()),
            ..outcome
        };
        if dry_run {
            let soon = planned.actions.contains(&Action::LookAgainSoon);
            return costs(KeyOutcome {
                actions: planned.actions.clone(),
                soon,
                ..KeyOutcome::default()
            });
        }
        let changing = observed
            .stack
            .as_ref()
            .filter(|s| in_progress(&s.status))
            .map(|s| Waiting {
                stack: s.name.clone(),
                status: s.status.clone(),
            });
        let outcome = self.execute(key, planned.actions.clone(), changing).await;
        self.flush_ledger().await;
        costs(outcome)
    }

    async fn observe(
        &self,
        key: &ClusterKey,
        files: ClusterFiles,
        stack: Option<StackView>,
        unmanaged: Option<StackView>,
        look: Look<'_>,
    ) -> Result<Option<Observed>, CallError> {
        let request = match &files.create {
            None => RequestState::Absent,
            Some(meta) => match self.request(key, meta, look.reads).await? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        let creating = matches!(request, RequestState::Valid { .. })
            && stack.is_none()
            && unmanaged.is_none()
            && !files.delete;
        let enrolled = if creating && self.settings.policy.limits_of(&key.user).require_enrolment {
            self.enrolled(&key.user).await?
        } else {
            true
        };
        let request_for_lifetime = match &request {
            RequestState::Valid { request, .. } => Some(request.clone()),
            _ => None,
        };
        let admission = match &request {
            // Nothing is created beside the older design's stack: no admission to count.
            RequestState::Valid { .. } if stack.is_none() && unmanaged.is_some() => None,
            RequestState::Valid { request, .. } => {
                let usage = self.lock_usage().usage_of(&key.user, &key.cluster);
                Some(admit(&self.settings.policy, &key.user, request, &usage))
            }
            _ => None,
        };
        let refusal = match (&admission, enrolled) {
            (_, false) => Some(("not_enrolled", "the user is not enrolled".to_owned())),
            (Some(Err(r)), true) => Some((r.rule, r.message.clone())),
            _ => None,
        };
        if let (Some((rule, message)), Some(meta)) = (refusal, &files.create) {
            let first = self
                .lock_requests()
                .get_mut(&meta.key)
                .is_some_and(|c| !std::mem::replace(&mut c.counted_refusal, true));
            if first {
                self.metrics.refused(key, rule, &message);
                self.audit(key, "refuse", rule, &message);
            }
        }
        let stack = match stack {
            Some(s) => Some(self.with_details(s).await?),
            None => None,
        };
        let vanished = self.vanished(key, stack.as_ref()).await?;
        let now = unix_now();
        let expiry = stack.as_ref().and_then(|s| {
            Some(Expiry {
                end: self.lifetime_end(s, now)?,
                may_delete: look.may_expire,
            })
        });
        let markers = files
            .markers
            .into_iter()
            .map(|(suffix, etag)| {
                let object = key.object_key(&self.settings.home_prefix, suffix);
                (suffix, self.content_tag(&object, etag))
            })
            .collect();
        Ok(Some(Observed {
            key: key.clone(),
            request,
            delete_requested: files.delete,
            markers,
            stack,
            unmanaged,
            enrolled,
            orphan: look.orphan,
            lifetime: match &request_for_lifetime {
                Some(r) => lifetime_of(&self.settings.policy, &key.user, r),
                None => None,
            },
            admission,
            expiry,
            vanished,
            now,
        }))
    }

    /// The tag the planner compares a marker's content by: the MD5 of what this process
    /// wrote there when S3 still has that version (its ETag unchanged), else the ETag
    /// (the MD5 itself, unless the bucket encrypts with KMS).
    pub(crate) fn content_tag(&self, object: &str, etag: String) -> String {
        match self.lock_written().get(object) {
            Some((written, md5)) if *written == etag => format!("\"{md5}\""),
            _ => etag,
        }
    }

    /// Notes what was written to `object`, and the ETag S3 gave back.
    pub(crate) fn wrote(&self, object: &str, body: &str, etag: String) {
        self.lock_written().insert(
            object.to_owned(),
            (etag, flightdeck_core::identity::hex_md5(body.as_bytes())),
        );
    }

    fn lock_written(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, String)>> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts the objects in home folders that are not user names, and logs each such
    /// folder the first time this process sees it.
    fn report_foreign_folders(&self, snap: &Snapshot) {
        let total: usize = snap.foreign_folders.values().sum();
        self.metrics
            .foreign_objects(i64::try_from(total).unwrap_or(i64::MAX));
        let mut told = self
            .foreign_told
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (folder, objects) in &snap.foreign_folders {
            if told.insert(folder.clone()) {
                warn!(
                    folder = %format!("{}{folder}/", self.settings.home_prefix),
                    objects,
                    "a folder under the home prefix is not named after an IAM user: nothing in it is read; move its files to the user's own folder"
                );
            }
        }
    }

    /// Whether `user` is enrolled (their customizer folder has something in it), asked of
    /// S3 at most once per resync interval per user.
    async fn enrolled(&self, user: &str) -> Result<bool, CallError> {
        let fresh = self.settings.resync_interval;
        if let Some((yes, at)) = self.lock_enrolment().get(user)
            && at.elapsed() < fresh
        {
            return Ok(*yes);
        }
        let yes = self
            .cloud
            .customizer
            .any_under(&self.settings.enrolment.folder(user))
            .await?;
        self.lock_enrolment()
            .insert(user.to_owned(), (yes, Instant::now()));
        Ok(yes)
    }

    fn lock_enrolment(&self) -> std::sync::MutexGuard<'_, HashMap<String, (bool, Instant)>> {
        self.enrolment
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The id of `key`'s stack when flightdeck saw it before, sees none now, and
    /// CloudFormation confirms it deleted (a look from a stale listing is not a deletion).
    async fn vanished(
        &self,
        key: &ClusterKey,
        stack: Option<&StackView>,
    ) -> Result<Option<String>, CallError> {
        if let Some(s) = stack {
            self.lock_seen().insert(key.clone(), s.id.clone());
            return Ok(None);
        }
        let Some(id) = self.lock_seen().get(key).cloned() else {
            return Ok(None);
        };
        if self.cloud.stacks.describe(&id).await?.is_some() {
            return Ok(None);
        }
        // The record of the deletion stays until its notice is delivered: a replica that
        // starts leading before then notices it again (the notice's claim keeps it once).
        self.lock_seen().remove(key);
        Ok(Some(id))
    }

    /// Where the stack being deleted for `key` is recorded: a replica that starts leading
    /// while the delete is under way has not seen the stack, and learns it here.
    pub(crate) fn deletion_record(&self, key: &ClusterKey) -> String {
        format!(
            "{}deleting/{}/{}",
            self.settings.controller_prefix, key.user, key.cluster
        )
    }

    /// Records, before DeleteStack, that `key`'s stack `id` is being deleted, so that
    /// whichever replica leads when it is gone sends the "deleted" notice (only when
    /// notices are on: nothing else needs it).
    pub(crate) async fn record_deletion(
        &self,
        key: &ClusterKey,
        id: &str,
    ) -> Result<(), CallError> {
        if self.settings.notify.is_none() {
            return Ok(());
        }
        self.cloud
            .store
            .put(&self.deletion_record(key), id)
            .await
            .map(|_| ())
    }

    /// Reads the deletions under way into what this replica has seen; returns how many.
    ///
    /// # Errors
    /// The listing or read that failed.
    pub async fn recall_deletions(&self) -> Result<usize, CallError> {
        if self.settings.notify.is_none() {
            return Ok(0);
        }
        let prefix = format!("{}deleting/", self.settings.controller_prefix);
        let mut recalled = 0;
        for record in self.cloud.store.list(&prefix).await? {
            let Some((user, cluster)) = record.key[prefix.len()..].split_once('/') else {
                continue;
            };
            let (Ok(key), Some(found)) = (
                ClusterKey::new(user, cluster),
                self.cloud.store.get(&record.key).await?,
            ) else {
                continue;
            };
            let id = String::from_utf8_lossy(&found.body).trim().to_owned();
            if !id.is_empty() {
                self.lock_seen().entry(key).or_insert(id);
                recalled += 1;
            }
        }
        Ok(recalled)
    }

    fn lock_seen(&self) -> std::sync::MutexGuard<'_, HashMap<ClusterKey, String>> {
        self.seen_stacks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When `stack`'s lifetime ends ([`lifetime_end`]), noting when this process first saw
    /// it.
    fn lifetime_end(&self, stack: &StackView, now: i64) -> Option<i64> {
        let first_seen = *self
            .first_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(stack.id.clone())
            .or_insert(now);
        let user = stack.tags.get(TAG_USER).map_or("", String::as_str);
        lifetime_end(
            stack,
            policy_lifetime(&self.settings.policy, user),
            first_seen,
            self.settings.guards.expiry_grace,
        )
    }

    /// Whether this pass may delete clusters whose lifetime ended: not while this clock
    /// and AWS's disagree by more than `reconcile.max_clock_skew` (or AWS's is unknown),
    /// and not when more are due at once than `reconcile.max_expiry_deletes`. Either way
    /// is logged and counted.
    fn judge_expiries(&self, snap: &Snapshot) -> bool {
        let now = unix_now();
        let due = snap
            .stacks
            .values()
            .filter(|s| !matches!(s.phase(), StackPhase::Deleting | StackPhase::Deleted))
            .filter(|s| self.lifetime_end(s, now).is_some_and(|end| now >= end))
            .count();
        let guards = &self.settings.guards;
        let skew = self.cloud.store.clock_offset();
        let held = hold_expiries(due, skew, guards.max_clock_skew, guards.max_expiry_deletes);
        match held {
            Some(ExpiryHold::ClockSkew) => warn!(
                due,
                offset_s = skew,
                bound_s = guards.max_clock_skew.as_secs(),
                "expiring no cluster: this clock and AWS's disagree by more than reconcile.max_clock_skew (or AWS's time is not known yet); check the host's time synchronisation"
            ),
            Some(ExpiryHold::Cap) => warn!(
                due,
                cap = guards.max_expiry_deletes,
                "expiring no cluster: more lifetimes ended at once than reconcile.max_expiry_deletes allows; check the policy's lifetimes and the clock, then raise the cap for one pass"
            ),
            None => {}
        }
        self.metrics.expiries_held_back(
            held.map_or(0, |_| i64::try_from(due).unwrap_or(i64::MAX)),
            held.map(ExpiryHold::label),
        );
        held.is_none()
    }

    /// The request behind `meta`, from the cache when its ETag is unchanged.
    /// `None` when it must be read and `reads` (what is left of its user's budget for this
    /// pass) is spent: it waits for the next pass.
    async fn request(
        &self,
        key: &ClusterKey,
        meta: &flightdeck_core::snapshot::ObjectMeta,
        reads: Option<&AtomicUsize>,
    ) -> Result<Option<RequestState>, CallError> {
        if let Some(hit) = self
            .lock_requests()
            .get(&meta.key)
            .filter(|c| c.etag == meta.etag && c.modified == meta.modified)
        {
            return Ok(Some(hit.state.clone()));
        }
        if let Some(left) = reads
            && left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            return Ok(None);
        }
        let mut refused_rule = None;
        let (etag, state) = if meta.size > MAX_REQUEST_BYTES as u64 {
            let reason = RequestError::TooLarge {
                size: usize::try_from(meta.size).unwrap_or(usize::MAX),
            };
            refused_rule = Some(reason.kind());
            (
                meta.etag.clone(),
                RequestState::Invalid {
                    reason: reason.to_string(),
                    etag: meta.etag.clone(),
                },
            )
        } else {
            match self
                .cloud
                .store
                .read(&meta.key, &meta.etag, MAX_REQUEST_BYTES)
                .await?
            {
                Read::Missing => return Ok(Some(RequestState::Absent)),
                Read::Changed => {
                    return Err(CallError {
                        service: "s3",
                        operation: "GetObject",
                        kind: ErrorKind::Transient,
                        code: Some("PreconditionFailed".into()),
                        message: format!("{} changed after it was listed; looking again", meta.key),
                    });
                }
                Read::TooLarge { size } => {
                    let reason = RequestError::TooLarge {
                        size: size.map_or(MAX_REQUEST_BYTES + 1, |n| {
                            usize::try_from(n).unwrap_or(usize::MAX)
                        }),
                    };
                    refused_rule = Some(reason.kind());
                    (
                        meta.etag.clone(),
                        RequestState::Invalid {
                            reason: reason.to_string(),
                            etag: meta.etag.clone(),
                        },
                    )
                }
                Read::Body(fetched) => {
                    let state = match parse_request(&fetched.body, &self.rules) {
                        Ok(request) => RequestState::Valid {
                            request,
                            etag: fetched.etag.clone(),
                            modified: fetched.modified,
                        },
                        Err(e) => {
                            refused_rule = Some(e.kind());
                            RequestState::Invalid {
                                reason: e.to_string(),
                                etag: fetched.etag.clone(),
                            }
                        }
                    };
                    (fetched.etag, state)
                }
            }
        };
        self.lock_requests().insert(
            meta.key.clone(),
            CachedRequest {
                etag,
                modified: meta.modified,
                state: state.clone(),
                counted_refusal: false,
            },
        );
        if let (Some(rule), RequestState::Invalid { reason, .. }) = (refused_rule, &state) {
            self.metrics.refused(key, rule, reason);
            self.audit(key, "refuse", rule, reason);
        }
        Ok(Some(state))
    }

    /// The ETag of the request object last read, if any.
    pub(crate) fn request_etag(&self, object: &str) -> Option<String> {
        self.lock_requests()
            .get(object)
            .map(|c| c.etag.trim_matches('"').to_owned())
    }

    /// Records that CloudFormation refused a request, so that it is reported like any
    /// other refusal and not sent again until the file changes.
    pub(crate) fn refuse_request(&self, key: &ClusterKey, reason: String) {
        let object = key.object_key(&self.settings.home_prefix, Suffix::Create);
        if let Some(cached) = self.lock_requests().get_mut(&object) {
            cached.state = RequestState::Invalid {
                reason,
                etag: cached.etag.clone(),
            };
        }
    }

    /// Fills in the login address and the failure reason, calling EC2 and
    /// DescribeStackEvents only when needed and once per stack change.
    async fn with_details(&self, mut stack: StackView) -> Result<StackView, CallError> {
        let phase = stack.phase();
        let cache_key = (stack.id.clone(), stack.last_change, stack.status.clone());
        let cached = self.lock_details().get(&cache_key).cloned();
        let mut details = cached.clone().unwrap_or_default();
        if cached.is_none() {
            if matches!(phase, StackPhase::Stable | StackPhase::UpdateRolledBack) {
                details.login_ip = match stack.outputs.get(&self.settings.login_output) {
                    Some(ip) => Some(ip.clone()),
                    None => {
                        self.cloud
                            .instances
                            .login_ip(&stack.id, &self.settings.login_resource)
                            .await?
                    }
                };
            }
            if matches!(
                phase,
                StackPhase::CreateFailed
                    | StackPhase::Stuck
                    | StackPhase::DeleteFailed
                    | StackPhase::UpdateRolledBack
            ) {
                details.failure_reason = self.cloud.stacks.first_failure(&stack.id).await?;
            }
            // A stack without its address yet is asked again next time.
            if details.login_ip.is_some()
                || !matches!(phase, StackPhase::Stable | StackPhase::UpdateRolledBack)
            {
                self.lock_details().insert(cache_key, details.clone());
            }
        }
        stack.login_ip = details.login_ip;
        stack.failure_reason = details.failure_reason;
        Ok(stack)
    }

    /// Drops cached requests, stack details and first sightings that the last full listing
    /// no longer has.
    fn forget_unseen(&self, snap: &Snapshot) {
        let live: BTreeSet<&str> = snap
            .files
            .values()
            .filter_map(|f| f.create.as_ref().map(|m| m.key.as_str()))
            .collect();
        self.lock_requests()
            .retain(|k, _| live.contains(k.as_str()));
        let stacks: BTreeSet<&str> = snap.stacks.values().map(|s| s.id.as_str()).collect();
        self.lock_details()
            .retain(|(id, _, _), _| stacks.contains(id.as_str()));
        self.first_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|id, _| stacks.contains(id.as_str()));
        let keys = snap.keys();
        self.lock_seen().retain(|k, _| keys.contains(k));
        self.lock_written().retain(|object, _| {
            snap.reports.contains_key(object)
                || matches!(
                    flightdeck_core::key::classify(&self.settings.home_prefix, object),
                    flightdeck_core::key::KeyKind::Cluster { key, suffix }
                        if snap.files.get(&key).is_some_and(|f| f.markers.contains_key(&suffix))
                )
        });
    }

    fn lock_requests(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedRequest>> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_details(&self) -> std::sync::MutexGuard<'_, HashMap<DetailsKey, StackDetails>> {
        self.details
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn lock_usage(&self) -> std::sync::MutexGuard<'_, UsageBook> {
        self.usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lock under which one user's clusters are looked at, one at a time.
    fn user_lock(&self, user: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.user_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(user.to_owned())
            .or_default()
            .clone()
    }

    fn lock_orphans(&self) -> std::sync::MutexGuard<'_, OrphanTracker> {
        self.orphans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Now, in seconds since the epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The gauges' view of a pass: clusters and cost by phase, and per user.
fn summarize(report: &PassReport, orphans_pending: usize, per_user: bool) -> PassSummary {
    let mut summary = PassSummary {
        orphans_pending: i64::try_from(orphans_pending).unwrap_or(i64::MAX),
        held_back: i64::try_from(report.held_back).unwrap_or(i64::MAX),
        ..PassSummary::default()
    };
    for (key, outcome) in &report.outcomes {
        let Some(phase) = outcome.phase else { continue };
        let label = phase_label(phase);
        *summary.phases.entry(label).or_default() += 1;
        let running = !matches!(phase, Phase::Deleted | Phase::Failed);
        if running && let Some(cost) = outcome.cost {
            *summary.cost.entry(label).or_default() += cost;
        }
        if per_user {
            let (phases, nodes) = summary.users.entry(key.user.clone()).or_default();
            *phases.entry(label).or_default() += 1;
            if running {
                *nodes += outcome.max_nodes.unwrap_or(0);
            }
        }
    }
    summary
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "hardening_tests.rs"]
mod hardening_tests;

#[cfg(test)]
#[path = "takeover_tests.rs"]
mod takeover_tests;

#[cfg(test)]
#[path = "scale_tests.rs"]
mod scale_tests;
