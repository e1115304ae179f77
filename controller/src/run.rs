//! The control loop: a full resync every interval, and workers that take clusters from the
//! work queue (hinted, in progress, or backing off after an error) and look at each alone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flightdeck_core::key::ClusterKey;
use tracing::{info, warn};

use crate::http::Health;
use crate::leader::Fence;
use crate::ports::{CallError, Instances, Mailer, ObjectStore, StackService};
use crate::queue::WorkQueue;
use crate::reconcile::{KeyOutcome, PassReport, Reconciler};

/// Puts a cluster back in the queue as its outcome asks: after an error with backoff (at
/// most the resync interval); while its stack is changing, on the watch, which is polled
/// every busy interval; while it waits on something else, after the busy interval; otherwise
/// not at all.
pub fn requeue<S, C, E, M>(
    rec: &Reconciler<S, C, E, M>,
    queue: &WorkQueue,
    key: &ClusterKey,
    outcome: &KeyOutcome,
) where
    S: ObjectStore,
    C: StackService,
    E: Instances,
    M: Mailer,
{
    let settings = rec.settings();
    rec.watch_or_forget(key, outcome);
    if outcome.error.is_some() {
        queue.add_rate_limited(key, settings.resync_interval);
    } else {
        queue.forget(key);
        if outcome.soon && outcome.waits_on.is_none() {
            queue.add_after(key, settings.busy_interval);
        }
    }
}

/// Every busy interval while clusters wait for their stack to change: a poll of their
/// stacks in min(K, pages) calls ([`Reconciler::poll_stacks`]), and the clusters whose stack
/// changed queued to be looked at. A full pass lists the stacks too, and puts the next poll
/// off.
async fn poll<S, C, E, M>(rec: &Reconciler<S, C, E, M>, queue: &WorkQueue)
where
    S: ObjectStore,
    C: StackService,
    E: Instances,
    M: Mailer,
{
    let idle = rec.settings().busy_interval;
    loop {
        match rec.poll_due_in() {
            None => tokio::time::sleep(idle.min(Duration::from_secs(1))).await,
            Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
            Some(_) => match rec.poll_stacks().await {
                Ok(changed) => {
                    for key in &changed {
                        queue.add(key);
                    }
                    rec.metrics().stacks_polled(rec.watching(), changed.len());
                }
                Err(e) => {
                    rec.metrics().stack_poll_failed();
                    warn!(error = %e, "could not poll the stacks of the clusters in progress; trying again");
                    tokio::time::sleep(idle).await;
                }
            },
        }
    }
}

/// Runs until `shutdown` completes (or after one full pass with `once`), acting only while
/// `fence` says this replica leads. Each time it starts leading it forgets what it kept in
/// memory and reads the notice records again; when it stops, its workers are stopped, its
/// queue emptied, and it waits to lead again. Workers finish the cluster they hold before
/// the loop returns on shutdown; a full pass in progress stops at its next call.
///
/// # Errors
/// With `once`, the listing error of the pass, if any.
pub async fn run<S, C, E, M>(
    rec: Arc<Reconciler<S, C, E, M>>,
    queue: Arc<WorkQueue>,
    health: Arc<Health>,
    fence: Arc<Fence>,
    once: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CallError>
where
    S: ObjectStore + 'static,
    C: StackService + 'static,
    E: Instances + 'static,
    M: Mailer + 'static,
{
    let mut leading = fence.watch();
    tokio::pin!(shutdown);
    loop {
        let term = tokio::select! {
            term = leading.wait_for(Option::is_some) => match term {
                Ok(term) => term.unwrap_or_default(),
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        if fence.elected_replica() {
            rec.forget();
            if let Err(e) = rec.load_delivered().await {
                warn!(term, error = %e, "could not read which notices went out; waiting to try again");
                tokio::time::sleep(rec.settings().busy_interval.min(Duration::from_secs(5))).await;
                continue;
            }
        }
        if once {
            let report = pass(&rec, None).await?;
            log_pass(&report);
            health.resynced();
            return Ok(());
        }
        let lost = async {
            let _ = leading.wait_for(Option::is_none).await;
        };
        match lead(&rec, &queue, &health, lost, &mut shutdown).await {
            Stop::Shutdown => break,
            Stop::Lost => {
                info!(
                    term,
                    "stopped acting: the clusters in hand are left to the next leader"
                );
                queue.clear();
                rec.metrics().stood_down();
            }
        }
    }
    Ok(())
}

/// Why [`lead`] returned.
enum Stop {
    /// The process is stopping; the workers finished what they held.
    Shutdown,
    /// This replica no longer leads; its workers were stopped where they were.
    Lost,
}

/// Leads until `lost` or `shutdown` completes: workers take clusters from the queue, and a
/// full resync runs every interval.
async fn lead<S, C, E, M>(
    rec: &Arc<Reconciler<S, C, E, M>>,
    queue: &Arc<WorkQueue>,
    health: &Health,
    lost: impl Future<Output = ()>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Stop
where
    S: ObjectStore + 'static,
    C: StackService + 'static,
    E: Instances + 'static,
    M: Mailer + 'static,
{
    let settings = rec.settings();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..settings.concurrency {
        let (rec, queue) = (rec.clone(), queue.clone());
        workers.spawn(async move {
            while let Some(key) = queue.get().await {
                let outcome = rec.reconcile_key(&key).await;
                queue.done(&key);
                requeue(&rec, &queue, &key, &outcome);
            }
        });
    }
    let poller = {
        let (rec, queue) = (rec.clone(), queue.clone());
        tokio::spawn(async move { poll(&rec, &queue).await })
    };
    tokio::pin!(lost);
    let stop = loop {
        // A shutdown or a lost lease cuts a long pass short between calls: every action is
        // idempotent, each write to S3 is whole or absent, and the next leader looks at
        // everything again.
        let pass = tokio::select! {
            result = pass(rec, Some(queue)) => result,
            () = &mut *shutdown => break Stop::Shutdown,
            () = &mut lost => break Stop::Lost,
        };
        if let Ok(report) = pass {
            log_pass(&report);
            health.resynced();
            for (key, outcome) in &report.outcomes {
                requeue(rec, queue, key, outcome);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(settings.resync_interval) => {}
            () = &mut *shutdown => break Stop::Shutdown,
            () = &mut lost => break Stop::Lost,
        }
        // While clusters are watched, a poll may have listed the stacks a moment ago: the
        // pass waits, so that the stacks are listed at most once per busy interval.
        tokio::select! {
            () = tokio::time::sleep(rec.pass_waits()) => {}
            () = &mut *shutdown => break Stop::Shutdown,
            () = &mut lost => break Stop::Lost,
        }
    };
    poller.abort();
    match stop {
        Stop::Shutdown => {
            info!("shutting down: finishing the clusters in hand");
            queue.shutdown();
        }
        Stop::Lost => workers.abort_all(),
    }
    while workers.join_next().await.is_some() {}
    stop
}

/// One full resync within the pass deadline. A failed pass (a listing failed) and an
/// overdue one (stopped at the deadline, between calls: every action is idempotent) are
/// logged and counted, and so alerted.
///
/// # Errors
/// The listing that failed, or a timeout error for an overdue pass.
pub async fn pass<S, C, E, M>(
    rec: &Reconciler<S, C, E, M>,
    queue: Option<&WorkQueue>,
) -> Result<PassReport, CallError>
where
    S: ObjectStore,
    C: StackService,
    E: Instances,
    M: Mailer,
{
    let deadline = rec.settings().guards.pass_deadline;
    match tokio::time::timeout(deadline, rec.resync(false, queue)).await {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(e)) => {
            rec.metrics().resync_failed(&e);
            Err(e)
        }
        Err(_) => {
            rec.metrics().resync_overdue(deadline);
            Err(CallError {
                service: "flightdeck",
                operation: "resync",
                kind: crate::ports::ErrorKind::Transient,
                code: None,
                message: format!(
                    "the pass was stopped at its deadline of {}s (reconcile.pass_deadline)",
                    deadline.as_secs()
                ),
            })
        }
    }
}

fn log_pass(report: &PassReport) {
    let actions: usize = report
        .outcomes
        .values()
        .map(|o| {
            o.actions
                .iter()
                .filter(|a| !matches!(a, flightdeck_core::plan::Action::LookAgainSoon))
                .count()
        })
        .sum();
    let errors = report
        .outcomes
        .values()
        .filter(|o| o.error.is_some())
        .count();
    info!(
        clusters = report.outcomes.len(),
        actions,
        errors,
        held_back = report.held_back,
        elapsed_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
        "resync complete"
    );
}
