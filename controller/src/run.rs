//! The control loop: a full resync every interval, and in between, single-key looks at the
//! clusters that asked to be looked at again (in progress soon, failed with backoff).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use flightdeck_core::key::ClusterKey;
use flightdeck_core::requeue::backoff;
use futures::StreamExt;
use tracing::{info, warn};

use crate::ports::{CallError, InstanceLookup, Mailer, ObjectStore, StackService};
use crate::reconcile::{KeyOutcome, PassReport, Reconciler};

/// Shortest backoff step after an error.
const BACKOFF_BASE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Due {
    at: Instant,
    attempts: u32,
}

/// Which clusters to look at again, and when.
#[derive(Debug, Default)]
pub struct Requeue {
    due: BTreeMap<ClusterKey, Due>,
}

impl Requeue {
    /// Records a cluster's outcome: an error backs off (exponentially, with jitter, capped at
    /// `cap`); work in progress comes back after `soon`; anything else leaves the queue.
    pub fn record(
        &mut self,
        key: &ClusterKey,
        outcome: &KeyOutcome,
        now: Instant,
        soon: Duration,
        cap: Duration,
    ) {
        if outcome.error.is_some() {
            let attempts = self.due.get(key).map_or(0, |d| d.attempts) + 1;
            let delay = backoff(attempts, BACKOFF_BASE, cap, fastrand::f64())
                .max(Duration::from_millis(200));
            self.due.insert(
                key.clone(),
                Due {
                    at: now + delay,
                    attempts,
                },
            );
        } else if outcome.soon {
            self.due.insert(
                key.clone(),
                Due {
                    at: now + soon,
                    attempts: 0,
                },
            );
        } else {
            self.due.remove(key);
        }
    }

    /// Takes the clusters due at `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<ClusterKey> {
        let keys: Vec<ClusterKey> = self
            .due
            .iter()
            .filter(|(_, d)| d.at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            if let Some(d) = self.due.get_mut(k) {
                // Stays queued (with its attempts) until its outcome is recorded.
                d.at = now + Duration::from_secs(3600);
            }
        }
        keys
    }

    /// When the next cluster is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().map(|d| d.at).min()
    }

    /// How many clusters are queued.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    /// Whether none is queued.
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

/// Runs until `shutdown` completes (or after one full pass with `once`). A shutdown waits
/// for the cluster looks in flight, so no write is left half-done.
///
/// # Errors
/// With `once`, the listing error of the pass, if any.
pub async fn run<S, C, E, M>(
    rec: &Reconciler<S, C, E, M>,
    once: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CallError>
where
    S: ObjectStore,
    C: StackService,
    E: InstanceLookup,
    M: Mailer,
{
    let settings = rec.settings();
    let (soon, cap) = (settings.busy_interval, settings.resync_interval);
    let mut queue = Requeue::default();
    let mut next_resync = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let now = Instant::now();
        if now >= next_resync {
            match rec.resync(false).await {
                Ok(report) => {
                    log_pass(&report);
                    let done = Instant::now();
                    for (key, outcome) in &report.outcomes {
                        queue.record(key, outcome, done, soon, cap);
                    }
                }
                Err(e) if once => return Err(e),
                Err(e) => {
                    warn!(error = %e, "resync failed: nothing was planned; trying again next interval")
                }
            }
            if once {
                return Ok(());
            }
            next_resync = Instant::now() + settings.resync_interval;
        } else {
            let keys = queue.take_due(now);
            let outcomes: Vec<(ClusterKey, KeyOutcome)> = futures::stream::iter(keys)
                .map(|key| async move {
                    let outcome = rec.reconcile_key(&key).await;
                    (key, outcome)
                })
                .buffer_unordered(settings.concurrency)
                .collect()
                .await;
            let done = Instant::now();
            for (key, outcome) in &outcomes {
                queue.record(key, outcome, done, soon, cap);
            }
        }
        let wake = queue.next_due().map_or(next_resync, |d| d.min(next_resync));
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            () = &mut shutdown => {
                info!("shutting down");
                return Ok(());
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::ErrorKind;

    fn key() -> ClusterKey {
        ClusterKey::new("alice", "x").unwrap()
    }

    fn failed() -> KeyOutcome {
        KeyOutcome {
            error: Some(CallError {
                service: "s3",
                operation: "GetObject",
                kind: ErrorKind::Transient,
                code: None,
                message: "timeout".into(),
            }),
            ..KeyOutcome::default()
        }
    }

    const SOON: Duration = Duration::from_secs(15);
    const CAP: Duration = Duration::from_secs(60);

    #[test]
    fn in_progress_comes_back_soon_and_done_leaves_the_queue() {
        let mut q = Requeue::default();
        let t0 = Instant::now();
        q.record(
            &key(),
            &KeyOutcome {
                soon: true,
                ..KeyOutcome::default()
            },
            t0,
            SOON,
            CAP,
        );
        assert_eq!(q.next_due(), Some(t0 + SOON));
        assert!(q.take_due(t0).is_empty());
        assert_eq!(q.take_due(t0 + SOON), vec![key()]);
        q.record(&key(), &KeyOutcome::default(), t0 + SOON, SOON, CAP);
        assert!(q.is_empty());
    }

    #[test]
    fn errors_back_off_within_the_cap_and_count_attempts() {
        let mut q = Requeue::default();
        let t0 = Instant::now();
        for attempt in 1..=10 {
            q.record(&key(), &failed(), t0, SOON, CAP);
            let due = q.due[&key()];
            assert_eq!(due.attempts, attempt);
            assert!(due.at <= t0 + CAP, "attempt {attempt} waits past the cap");
        }
        q.record(&key(), &KeyOutcome::default(), t0, SOON, CAP);
        assert!(q.is_empty(), "success clears the backoff");
    }

    #[test]
    fn a_taken_key_is_not_taken_twice_before_its_outcome() {
        let mut q = Requeue::default();
        let t0 = Instant::now();
        q.record(
            &key(),
            &KeyOutcome {
                soon: true,
                ..KeyOutcome::default()
            },
            t0,
            SOON,
            CAP,
        );
        assert_eq!(q.take_due(t0 + SOON).len(), 1);
        assert!(q.take_due(t0 + SOON).is_empty());
        assert_eq!(q.len(), 1);
    }
}
