//! Leader election among replicas sharing one (fake) bucket, on tokio's paused clock: who
//! leads, when another takes over, and that no two replicas ever act at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flightdeck_core::lease::Timing;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;
use crate::fake::FakeStore;

const TIMING: Timing = Timing {
    lease: Duration::from_secs(15),
    renew_deadline: Duration::from_secs(10),
    retry: Duration::from_secs(2),
};
const KEY: &str = "flightdeck/leader.json";

/// One replica's connection to the shared bucket, which a test can cut.
struct Link {
    store: Arc<FakeStore>,
    cut: AtomicBool,
}

impl Link {
    fn check(&self) -> Result<(), CallError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(CallError {
                service: "s3",
                operation: "PutObject",
                kind: ErrorKind::Transient,
                code: None,
                message: "connection timed out".into(),
            });
        }
        Ok(())
    }
}

impl ObjectStore for Link {
    async fn list_page(
        &self,
        prefix: &str,
        next: Option<&str>,
    ) -> Result<Page<ObjectMeta>, CallError> {
        self.check()?;
        self.store.list_page(prefix, next).await
    }
    async fn any_under(&self, prefix: &str) -> Result<bool, CallError> {
        self.check()?;
        self.store.any_under(prefix).await
    }
    async fn get(&self, key: &str) -> Result<Option<Fetched>, CallError> {
        self.check()?;
        self.store.get(key).await
    }
    async fn read(&self, key: &str, etag: &str, limit: usize) -> Result<Read, CallError> {
        self.check()?;
        self.store.read(key, etag, limit).await
    }
    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool, CallError> {
        self.check()?;
        self.store.delete_if(key, etag).await
    }
    fn clock_offset(&self) -> Option<i64> {
        self.store.clock_offset()
    }
    async fn put(&self, key: &str, body: &str) -> Result<String, CallError> {
        self.check()?;
        self.store.put(key, body).await
    }
    async fn delete(&self, key: &str) -> Result<(), CallError> {
        self.check()?;
        self.store.delete(key).await
    }
    async fn put_new(&self, key: &str, body: &str) -> Result<(), CallError> {
        self.check()?;
        self.store.put_new(key, body).await
    }
    async fn put_if(
        &self,
        key: &str,
        body: &str,
        etag: Option<&str>,
    ) -> Result<Option<String>, CallError> {
        self.check()?;
        self.store.put_if(key, body, etag).await
    }
}

/// A mutating service that records when each call ran, and can take its time.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(Instant, Instant)>>,
    slow: Mutex<Option<Duration>>,
}

impl Mailer for Recorder {
    async fn send(&self, _to: &[String], _subject: &str, _body: &str) -> Result<(), CallError> {
        let start = Instant::now();
        let slow = *self.slow.lock().unwrap();
        if let Some(d) = slow {
            tokio::time::sleep(d).await;
        }
        self.calls.lock().unwrap().push((start, Instant::now()));
        Ok(())
    }
}

/// A replica: its link to the bucket, its fence, its elector, and a service it mutates
/// through the fence.
struct Replica {
    link: Arc<Link>,
    fence: Arc<Fence>,
    elector: JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    service: Arc<Fenced<Recorder>>,
    health: Arc<Health>,
}

impl Replica {
    fn start(name: &str, store: &Arc<FakeStore>) -> Replica {
        let metrics = Arc::new(Metrics::new(false));
        let fence = Fence::elected(name, TIMING, metrics);
        let link = Arc::new(Link {
            store: store.clone(),
            cut: AtomicBool::new(false),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let health = Arc::new(Health::new(Duration::from_secs(10)));
        let elector = {
            let (link, fence, health) = (link.clone(), fence.clone(), health.clone());
            tokio::spawn(async move {
                elect(&*link, KEY, &fence, &health, async {
                    let _ = stopped.await;
                })
                .await;
            })
        };
        let service = Arc::new(Fenced::new(Recorder::default(), fence.clone()));
        Replica {
            link,
            fence,
            elector,
            stop: Some(stop),
            service,
            health,
        }
    }

    /// Keeps trying to mutate every 250 ms, as a busy leader would.
    fn keep_mutating(&self) -> JoinHandle<()> {
        let service = self.service.clone();
        tokio::spawn(async move {
            loop {
                let _ = service.send(&[], "x", "y").await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    }

    fn calls(&self) -> Vec<(Instant, Instant)> {
        self.service.inner().calls.lock().unwrap().clone()
    }

    /// Killed: no release, no more renewals.
    fn kill(&self) {
        self.elector.abort();
    }
}

async fn until_leading(fence: &Fence, within: Duration) -> u64 {
    let mut w = fence.watch();
    tokio::time::timeout(within, w.wait_for(Option::is_some))
        .await
        .expect("this replica should lead by now")
        .expect("watching the fence")
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn one_replica_leads_and_another_takes_over_only_after_the_lease_of_a_stalled_one() {
    let store = Arc::new(FakeStore::default());
    let a = Replica::start("a", &store);
    assert_eq!(until_leading(&a.fence, Duration::from_secs(1)).await, 1);
    let b = Replica::start("b", &store);
    let (busy_a, busy_b) = (a.keep_mutating(), b.keep_mutating());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(a.fence.term(), Some(1), "a renews and keeps leading");
    assert_eq!(b.fence.term(), None, "b stands by while a renews");
    assert_eq!(b.fence.leader().as_deref(), Some("a"));
    assert!(b.calls().is_empty(), "a standby makes no change");

    // a's elector stops (killed, or starved) while the rest of a goes on working: its
    // fence alone must stop it, at the renew deadline, before b may start.
    a.kill();
    let stalled = Instant::now();
    assert_eq!(until_leading(&b.fence, Duration::from_secs(30)).await, 2);
    let waited = stalled.elapsed();
    assert!(
        waited >= TIMING.lease - TIMING.retry && waited <= TIMING.lease + TIMING.retry,
        "b took over {waited:?} after a's elector stopped; the lease is {:?}",
        TIMING.lease
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    busy_a.abort();
    busy_b.abort();
    let last_a = a.calls().iter().map(|(_, end)| *end).max().unwrap();
    let first_b = b.calls().iter().map(|(start, _)| *start).min().unwrap();
    assert!(
        last_a < stalled + TIMING.renew_deadline,
        "a's last call ended {:?} after its elector stopped; its renew deadline is {:?}",
        last_a - stalled,
        TIMING.renew_deadline
    );
    assert!(last_a < first_b, "terms overlapped");
}

#[tokio::test(start_paused = true)]
async fn a_replica_cut_off_from_s3_stops_mutating_before_its_lease_ends_and_terms_never_overlap() {
    let store = Arc::new(FakeStore::default());
    let a = Replica::start("a", &store);
    until_leading(&a.fence, Duration::from_secs(1)).await;
    let b = Replica::start("b", &store);
    let (busy_a, busy_b) = (a.keep_mutating(), b.keep_mutating());
    tokio::time::sleep(Duration::from_secs(20)).await;

    a.link.cut.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    until_leading(&b.fence, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    busy_a.abort();
    busy_b.abort();

    let (calls_a, calls_b) = (a.calls(), b.calls());
    assert!(
        calls_a.len() > 50,
        "a acted while it led: {}",
        calls_a.len()
    );
    assert!(
        calls_b.len() > 50,
        "b acts once it leads: {}",
        calls_b.len()
    );
    let last_a = calls_a.iter().map(|(_, end)| *end).max().unwrap();
    let first_b = calls_b.iter().map(|(start, _)| *start).min().unwrap();
    assert!(
        last_a + Duration::from_secs(2) <= first_b,
        "a's last call ended {:?} after the cut, b's first began {:?} after it",
        last_a - cut,
        first_b - cut
    );
    assert!(
        last_a < cut + TIMING.renew_deadline,
        "a stopped by its renew deadline: its last call ended {:?} after the cut",
        last_a - cut
    );
    assert_eq!(a.fence.term(), None, "a knows it no longer leads");
    assert!(
        a.fence
            .metrics
            .render()
            .contains("flightdeck_fenced_calls_total{reason=\"not_leader\"}"),
        "refused calls are counted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_still_running_when_its_permit_runs_out_is_abandoned() {
    let store = Arc::new(FakeStore::default());
    let a = Replica::start("a", &store);
    until_leading(&a.fence, Duration::from_secs(1)).await;
    *a.service.inner().slow.lock().unwrap() = Some(Duration::from_secs(600));
    let start = Instant::now();
    let err = a.service.send(&[], "x", "y").await.unwrap_err();
    assert_eq!(err.code.as_deref(), Some("LeaseRanOut"));
    assert!(
        start.elapsed() <= TIMING.renew_deadline + (TIMING.lease - TIMING.renew_deadline) / 2,
        "abandoned after {:?}",
        start.elapsed()
    );
    assert!(a.calls().is_empty(), "the call never completed");
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_stops_gives_the_lease_up_and_another_takes_over_at_once() {
    let store = Arc::new(FakeStore::default());
    let mut a = Replica::start("a", &store);
    until_leading(&a.fence, Duration::from_secs(1)).await;
    let b = Replica::start("b", &store);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = a.stop.take().unwrap().send(());
    let stopped = Instant::now();
    (&mut a.elector).await.unwrap();
    assert_eq!(
        a.fence.term(),
        None,
        "a stops acting before it gives the lease up"
    );
    assert_eq!(until_leading(&b.fence, Duration::from_secs(30)).await, 2);
    assert!(
        stopped.elapsed() <= TIMING.retry + Duration::from_millis(100),
        "b took over {:?} after a gave the lease up, not a lease later",
        stopped.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_written_by_another_replica_meanwhile_makes_the_holder_stand_down() {
    let store = Arc::new(FakeStore::default());
    let a = Replica::start("a", &store);
    until_leading(&a.fence, Duration::from_secs(1)).await;
    // Someone else's version replaces a's (an operator, or a replica with a wrong clock).
    store.insert(
        KEY,
        flightdeck_core::lease::LeaseRecord {
            holder: "z".into(),
            term: 9,
            lease_ms: 15_000,
            renewals: 0,
            written_at: 0,
            released: false,
        }
        .to_json(),
    );
    tokio::time::sleep(TIMING.retry * 2).await;
    assert_eq!(
        a.fence.term(),
        None,
        "a's conditional renewal failed, so it stood down"
    );
    // z never renews: a takes over once z's version has stood for a lease, in a new term.
    assert_eq!(until_leading(&a.fence, Duration::from_secs(30)).await, 10);
}

#[tokio::test(start_paused = true)]
async fn a_standby_is_ready_while_it_reaches_the_lease_and_not_once_cut_off() {
    let store = Arc::new(FakeStore::default());
    let a = Replica::start("a", &store);
    until_leading(&a.fence, Duration::from_secs(1)).await;
    let b = Replica::start("b", &store);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        b.health.ready(),
        Ok(()),
        "a standby that reads the lease is ready"
    );
    b.link.cut.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        b.health.ready().is_err(),
        "a standby that cannot reach the lease could not take over, so it is not ready"
    );
    assert_eq!(b.fence.term(), None);
}
