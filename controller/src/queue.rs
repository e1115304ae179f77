//! The work queue, with the guarantees of client-go's: a key queued twice is processed
//! once; a key is never processed by two workers at once; a key that is queued again while
//! it is processed is processed again afterwards; a key can wait (look again soon) or back
//! off (after an error), exponentially and with jitter.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flightdeck_core::key::ClusterKey;
use flightdeck_core::requeue::backoff;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Shortest backoff step after an error.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// Longest a worker waits before looking at the queue again, whatever happens.
const IDLE_CHECK: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    /// Keys ready to be taken, in order.
    ready: VecDeque<ClusterKey>,
    /// Keys queued: in `ready`, or to be put there when their processing ends.
    dirty: HashSet<ClusterKey>,
    /// Keys being processed.
    processing: HashSet<ClusterKey>,
    /// Keys waiting until a time.
    waiting: HashMap<ClusterKey, Instant>,
    /// Errors in a row, per key.
    failures: HashMap<ClusterKey, u32>,
    shut: bool,
}

impl State {
    fn enqueue(&mut self, key: ClusterKey) -> bool {
        self.waiting.remove(&key);
        if !self.dirty.insert(key.clone()) {
            return false;
        }
        if self.processing.contains(&key) {
            return false;
        }
        self.ready.push_back(key);
        true
    }

    fn promote_due(&mut self, now: Instant) -> bool {
        let due: Vec<ClusterKey> = self
            .waiting
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut any = false;
        for key in due {
            any |= self.enqueue(key);
        }
        any
    }

    fn depth(&self) -> usize {
        self.ready.len() + self.waiting.len()
    }
}

/// The queue. Shared by the workers, the resync and the hint endpoint.
pub struct WorkQueue {
    state: Mutex<State>,
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl WorkQueue {
    /// An empty queue reporting its depth to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        WorkQueue {
            state: Mutex::default(),
            wake: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self, state: &State, wake: bool) {
        self.metrics.queue_depth(state.depth());
        if wake {
            self.wake.notify_one();
        }
    }

    /// Queues `key` now. Queued already: nothing changes. Being processed: it is processed
    /// again when that ends.
    pub fn add(&self, key: &ClusterKey) {
        let mut s = self.lock();
        let wake = s.enqueue(key.clone());
        self.changed(&s, wake);
    }

    /// Queues `key` after `delay`, unless it is queued sooner already.
    pub fn add_after(&self, key: &ClusterKey, delay: Duration) {
        let mut s = self.lock();
        if s.dirty.contains(key) {
            return;
        }
        let at = Instant::now() + delay;
        let entry = s.waiting.entry(key.clone()).or_insert(at);
        if at < *entry {
            *entry = at;
        }
        self.changed(&s, true);
    }

    /// Queues `key` after its next backoff (exponential in its errors in a row, with full
    /// jitter, at most `cap`); returns the delay.
    pub fn add_rate_limited(&self, key: &ClusterKey, cap: Duration) -> Duration {
        let failures = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay =
            backoff(failures, BACKOFF_BASE, cap, fastrand::f64()).max(Duration::from_millis(100));
        self.metrics.queue_retry();
        self.add_after(key, delay);
        delay
    }

    /// Forgets `key`'s errors in a row.
    pub fn forget(&self, key: &ClusterKey) {
        self.lock().failures.remove(key);
    }

    /// Takes the next key to process, waiting for one; `None` once shut down.
    pub async fn get(&self) -> Option<ClusterKey> {
        loop {
            let notified = self.wake.notified();
            let next = {
                let mut s = self.lock();
                if s.shut {
                    return None;
                }
                s.promote_due(Instant::now());
                if let Some(key) = s.ready.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    self.changed(&s, false);
                    return Some(key);
                }
                s.waiting.values().min().copied()
            };
            let until = next.map_or(Instant::now() + IDLE_CHECK, |t| {
                t.min(Instant::now() + IDLE_CHECK)
            });
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Processing of `key` ended; if it was queued meanwhile, it is ready again.
    pub fn done(&self, key: &ClusterKey) {
        let mut s = self.lock();
        s.processing.remove(key);
        let wake = s.dirty.contains(key);
        if wake {
            s.ready.push_back(key.clone());
        }
        self.changed(&s, wake);
    }

    /// For the resync: takes `key` to process now unless a worker has it or it is queued (a
    /// queued look reads afresh, which beats the resync's snapshot). Call [`Self::done`]
    /// after processing a claimed key.
    fn try_claim(&self, key: &ClusterKey) -> bool {
        let mut s = self.lock();
        if s.processing.contains(key) || s.dirty.contains(key) {
            return false;
        }
        s.waiting.remove(key);
        s.processing.insert(key.clone());
        self.changed(&s, false);
        true
    }

    /// [`Self::try_claim`], released by dropping what it returns: a pass cut short (its
    /// deadline, a shutdown) never leaves a key claimed.
    pub fn claim<'q>(&'q self, key: &ClusterKey) -> Option<Claimed<'q>> {
        self.try_claim(key).then(|| Claimed {
            queue: self,
            key: key.clone(),
        })
    }

    /// Stops handing out keys; workers' `get` returns `None`.
    pub fn shutdown(&self) {
        self.lock().shut = true;
        self.wake.notify_waiters();
    }

    /// Drops every key, queued, delayed or in hand, and every backoff: a replica that stops
    /// leading leaves its work to the next leader, which looks at everything in its first
    /// full pass. Call it once no worker holds a key.
    pub fn clear(&self) {
        let mut s = self.lock();
        let shut = s.shut;
        *s = State {
            shut,
            ..State::default()
        };
        self.changed(&s, false);
    }

    /// Keys waiting (ready or delayed), not counting those being processed.
    pub fn depth(&self) -> usize {
        self.lock().depth()
    }
}

/// A key the resync claimed; [`WorkQueue::done`] when dropped.
pub struct Claimed<'q> {
    queue: &'q WorkQueue,
    key: ClusterKey,
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        self.queue.done(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> WorkQueue {
        WorkQueue::new(Arc::new(Metrics::new(false)))
    }

    fn key(c: &str) -> ClusterKey {
        ClusterKey::new("alice", c).unwrap()
    }

    async fn next(q: &WorkQueue) -> ClusterKey {
        tokio::time::timeout(Duration::from_secs(60), q.get())
            .await
            .expect("a key in time")
            .expect("not shut")
    }

    fn nothing_ready(q: &WorkQueue) -> bool {
        q.lock().ready.is_empty()
    }

    #[tokio::test]
    async fn a_key_queued_twice_is_processed_once() {
        let q = queue();
        q.add(&key("a"));
        q.add(&key("a"));
        q.add(&key("b"));
        assert_eq!(next(&q).await, key("a"));
        assert_eq!(next(&q).await, key("b"));
        assert!(nothing_ready(&q));
    }

    #[tokio::test]
    async fn a_key_in_process_is_not_handed_out_again_until_done() {
        let q = queue();
        q.add(&key("a"));
        let a = next(&q).await;
        q.add(&key("a"));
        assert!(nothing_ready(&q), "not ready while processed");
        q.done(&a);
        assert_eq!(
            next(&q).await,
            key("a"),
            "processed again after it changed meanwhile"
        );
        q.done(&a);
        assert!(nothing_ready(&q));
    }

    #[tokio::test]
    async fn the_resync_skips_keys_a_worker_has_or_that_are_queued() {
        let q = queue();
        q.add(&key("a"));
        assert!(
            !q.try_claim(&key("a")),
            "queued: the worker's fresh look wins"
        );
        let a = next(&q).await;
        assert!(!q.try_claim(&a), "being processed");
        q.done(&a);
        assert!(q.try_claim(&key("b")));
        q.add(&key("b"));
        assert!(
            nothing_ready(&q),
            "claimed by the resync: queued for afterwards"
        );
        q.done(&key("b"));
        assert_eq!(next(&q).await, key("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_keys_come_back_when_due() {
        let q = queue();
        q.add_after(&key("a"), Duration::from_secs(15));
        assert_eq!(q.depth(), 1);
        let started = Instant::now();
        assert_eq!(next(&q).await, key("a"));
        assert!(started.elapsed() >= Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_and_success_forgets_them() {
        let q = queue();
        let cap = Duration::from_secs(60);
        let delays: Vec<Duration> = (0..8).map(|_| q.add_rate_limited(&key("a"), cap)).collect();
        assert!(delays.iter().all(|d| *d <= cap));
        assert_eq!(q.lock().failures[&key("a")], 8);
        q.forget(&key("a"));
        assert!(!q.lock().failures.contains_key(&key("a")));
    }

    #[tokio::test]
    async fn shutdown_releases_waiting_workers() {
        let q = Arc::new(queue());
        let worker = tokio::spawn({
            let q = q.clone();
            async move { q.get().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        q.shutdown();
        let got = tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, None);
    }

    #[tokio::test]
    async fn a_key_is_never_processed_by_two_workers_at_once() {
        let q = Arc::new(queue());
        let busy = Arc::new(Mutex::new(HashSet::new()));
        let overlaps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (q, busy, overlaps) = (q.clone(), busy.clone(), overlaps.clone());
            workers.push(tokio::spawn(async move {
                while let Some(k) = q.get().await {
                    if !busy.lock().unwrap().insert(k.clone()) {
                        overlaps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                    busy.lock().unwrap().remove(&k);
                    q.done(&k);
                }
            }));
        }
        for round in 0..200 {
            q.add(&key(["a", "b", "c"][round % 3]));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        q.shutdown();
        for w in workers {
            w.await.unwrap();
        }
        assert_eq!(overlaps.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
