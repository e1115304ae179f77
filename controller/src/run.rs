//! The control loop: a full resync every interval, and workers that take clusters from the
//! work queue (hinted, in progress, or backing off after an error) and look at each alone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flightdeck_core::key::ClusterKey;
use tracing::info;

use crate::http::Health;
use crate::ports::{CallError, Instances, Mailer, ObjectStore, StackService};
use crate::queue::WorkQueue;
use crate::reconcile::{KeyOutcome, PassReport, Reconciler};

/// Puts a cluster back in the queue as its outcome asks: after an error with backoff (at
/// most `cap`); while something is in progress after `soon`; otherwise not at all.
pub fn requeue(
    queue: &WorkQueue,
    key: &ClusterKey,
    outcome: &KeyOutcome,
    soon: Duration,
    cap: Duration,
) {
    if outcome.error.is_some() {
        queue.add_rate_limited(key, cap);
    } else {
        queue.forget(key);
        if outcome.soon {
            queue.add_after(key, soon);
        }
    }
}

/// Runs until `shutdown` completes (or after one full pass with `once`). Workers finish the
/// cluster they hold before the loop returns; a full pass in progress stops at its next
/// call.
///
/// # Errors
/// With `once`, the listing error of the pass, if any.
pub async fn run<S, C, E, M>(
    rec: Arc<Reconciler<S, C, E, M>>,
    queue: Arc<WorkQueue>,
    health: Arc<Health>,
    once: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CallError>
where
    S: ObjectStore + 'static,
    C: StackService + 'static,
    E: Instances + 'static,
    M: Mailer + 'static,
{
    let settings = rec.settings();
    let (soon, cap) = (settings.busy_interval, settings.resync_interval);
    if once {
        let report = pass(&rec, None).await?;
        log_pass(&report);
        health.resynced();
        return Ok(());
    }
    let workers: Vec<_> = (0..settings.concurrency)
        .map(|_| {
            let (rec, queue) = (rec.clone(), queue.clone());
            tokio::spawn(async move {
                while let Some(key) = queue.get().await {
                    let outcome = rec.reconcile_key(&key).await;
                    queue.done(&key);
                    requeue(&queue, &key, &outcome, soon, cap);
                }
            })
        })
        .collect();
    tokio::pin!(shutdown);
    loop {
        // A shutdown cuts a long pass short between calls: every action is idempotent, each
        // write to S3 is whole or absent, and the next start looks at everything again.
        let pass = tokio::select! {
            result = pass(&rec, Some(&queue)) => result,
            () = &mut shutdown => break,
        };
        if let Ok(report) = pass {
            log_pass(&report);
            health.resynced();
            for (key, outcome) in &report.outcomes {
                requeue(&queue, key, outcome, soon, cap);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(settings.resync_interval) => {}
            () = &mut shutdown => break,
        }
    }
    info!("shutting down: finishing the clusters in hand");
    queue.shutdown();
    for w in workers {
        let _ = w.await;
    }
    Ok(())
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
