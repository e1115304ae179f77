//! `make bench-scale`: flightdeck at a university's size, in one process. The controller
//! (the real reconciler, work queue, watch, token buckets and hint handler, with the
//! shipped configuration) runs on in-process stand-ins for S3 and CloudFormation
//! (`flightdeck_tests::scale`): the emulator holds neither a million objects nor ten
//! thousand stacks in reasonable time.
//!
//! Usage: `scale [USERS] [CLUSTERS] [DATA] [CREATING]` (defaults 5,000 users, 10,000
//! clusters, 1,000,000 data files, 1,000 clusters created at once).
//!
//! 1. Loads the bucket and lets the controller converge (stacks, markers), then measures
//!    one quiet pass: AWS calls by operation, CPU, wall time, and the process's peak RSS.
//!    The whole process counts: controller and stand-ins (which generate the data files
//!    as they are listed, and keep only what the controller wrote).
//! 2. Writes CREATING new requests at once, with stacks that stay CREATE_IN_PROGRESS, and
//!    runs the control loop: stack calls per second while they are all in progress, then
//!    completes them and checks every one got its `.cf-created`.
//!    Steps 1 and 2 run on tokio's paused clock: the token buckets' waits and the
//!    intervals pass at once, and rates are per second of that clock. CPU and memory are
//!    real.
//! 3. On the real clock: hint to CreateStack, from `POST /hints` handed to the controller's
//!    HTTP handler to the CreateStack call, for 150 new requests with every stack present.
//!
//! It exits non-zero when a count differs from what docs/performance.md promises.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flightdeck::config::{Rates, Settings};
use flightdeck::fake::{FakeInstances, FakeMailer};
use flightdeck::http::{Endpoint, Health, Serves, handle};
use flightdeck::instrument::{Instrumented, Limiter};
use flightdeck::leader::Fence;
use flightdeck::metrics::Metrics;
use flightdeck::queue::WorkQueue;
use flightdeck::reconcile::{Cloud, Reconciler};
use flightdeck::run::run;
use flightdeck_core::key::ClusterKey;
use flightdeck_core::rate::Rate;
use flightdeck_tests::scale::{OBJECTS_PAGE, STACKS_PAGE, ScaleStacks, ScaleStore, user};
use http_body_util::Full;

/// Counts the heap's bytes, so the controller's share can be told from the stand-ins'.
#[global_allocator]
static HEAP: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// Bytes live on the heap now, in MiB.
fn heap() -> f64 {
    let stats = HEAP.stats();
    stats
        .bytes_allocated
        .saturating_sub(stats.bytes_deallocated) as f64
        / (1024.0 * 1024.0)
}

/// The most bytes live on the heap while `work` runs, in MiB, sampled every 200 µs by
/// another thread.
async fn heap_peak_of<T>(work: impl std::future::Future<Output = T>) -> (T, f64) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut most = heap();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                most = most.max(heap());
                std::thread::sleep(Duration::from_micros(200));
            }
            most.max(heap())
        })
    };
    let out = work.await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    (out, sampler.join().unwrap())
}

type Rec =
    Reconciler<Instrumented<ScaleStore>, Instrumented<ScaleStacks>, FakeInstances, FakeMailer>;

const REQUEST: &str = include_str!("../../../examples/cluster.cf-create");
const HINTS: usize = 150;
const HINT_TOKEN: &str = "bench-token-0123456789";

/// The shipped configuration with the default intervals (the local one looks more often),
/// and a policy whose per-user limits let each user have
/// their share of the clusters, and no email.
fn settings(scratch: &std::path::Path) -> Settings {
    let policy = std::fs::read_to_string("policies/limits.toml")
        .expect("run from the repository")
        .replace("clusters = 3\n", "clusters = 1000\n")
        .replace("max_nodes = 64\n", "max_nodes = 100000\n")
        .replace(
            "dollars_per_hour = \"10.00\"\n",
            "dollars_per_hour = \"100000.00\"\n",
        )
        .replace("require_enrolment = true", "require_enrolment = false");
    let path = scratch.join("limits.toml");
    std::fs::write(&path, policy).unwrap();
    let env = [
        ("FLIGHTDECK_POLICY", path.display().to_string()),
        ("FLIGHTDECK_RECONCILE_RESYNC_INTERVAL", "60s".into()),
        ("FLIGHTDECK_RECONCILE_BUSY_INTERVAL", "15s".into()),
        ("FLIGHTDECK_NOTIFY_ENABLED", "false".into()),
        ("FLIGHTDECK_HINT_TOKEN", HINT_TOKEN.into()),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    Settings::load(std::path::Path::new("deploy/local/flightdeck.toml"), env)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn reconciler(settings: Settings, store: &ScaleStore, stacks: &ScaleStacks) -> Arc<Rec> {
    let metrics = Arc::new(Metrics::new(false));
    let rules = flightdeck::offline::rules(&settings).unwrap();
    let rates = settings.rates;
    let s3 = Limiter::new("s3", rates.s3, metrics.clone());
    let cloudformation = Limiter::new("cloudformation", rates.cloudformation, metrics.clone());
    let cloud = Cloud {
        store: Instrumented::new(store.clone(), metrics.clone()).limited(s3.clone()),
        customizer: Instrumented::new(ScaleStore::new(0, 0, 0, ""), metrics.clone()).limited(s3),
        stacks: Instrumented::new(stacks.clone(), metrics.clone()).limited(cloudformation),
        instances: FakeInstances::default(),
        mailer: None,
    };
    Arc::new(Reconciler::new(cloud, settings, rules, metrics))
}

/// AWS calls so far by `service operation`, from the controller's own metrics.
fn calls(rec: &Rec) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in rec.metrics().render().lines() {
        let Some(rest) = line.strip_prefix("flightdeck_aws_calls_total{") else {
            continue;
        };
        let label = |name: &str| {
            rest.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or_default()
                .to_owned()
        };
        let n: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        *out.entry(format!("{} {}", label("service"), label("operation")))
            .or_default() += n;
    }
    out
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// This process's CPU time (user and system), from /proc.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// This process's peak and current resident memory in MiB, from /proc.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kib("VmHWM:"), kib("VmRSS:"))
}

struct Failed(Vec<String>);

impl Failed {
    fn check(&mut self, ok: bool, what: String) {
        println!("  {} {what}", if ok { "ok:" } else { "MISMATCH:" });
        if !ok {
            self.0.push(what);
        }
    }
}

async fn settle(rec: &Rec) -> usize {
    for pass in 1..=10 {
        let report = rec.resync(false, None).await.unwrap();
        let acted = report.outcomes.values().filter(|o| {
            o.error.is_some()
                || o.actions
                    .iter()
                    .any(|a| !matches!(a, flightdeck_core::plan::Action::LookAgainSoon))
        });
        if acted.count() == 0 {
            return pass;
        }
    }
    panic!("the controller did not settle in 10 passes");
}

async fn quiet_pass(rec: &Rec, store: &ScaleStore, stacks: &ScaleStacks, failed: &mut Failed) {
    let passes = settle(rec).await;
    let home = store.home_keys();
    let (settled_peak, _) = memory();
    // From here the peak is the quiet pass's own (Linux: 5 resets VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = calls(rec);
    let (cpu0, wall0, virt0) = (cpu(), Instant::now(), tokio::time::Instant::now());
    let (pass, heap_peak) = heap_peak_of(rec.resync(false, None)).await;
    pass.unwrap();
    let (cpu1, wall1, virt1) = (cpu(), Instant::now(), tokio::time::Instant::now());
    let used = delta(&calls(rec), &before);
    let (peak, now) = memory();
    println!("  heap at its peak during the pass {heap_peak:.1} MiB (stand-ins included)");
    println!(
        "quiet pass ({passes} passes to settle) over {home} home keys and {} stacks:",
        stacks.len()
    );
    for (op, n) in &used {
        println!("  calls: {op} {n}");
    }
    println!(
        "  controller CPU {:.2} s, wall {:.2} s, on the paused clock {:.1} s (token buckets); peak RSS during the pass {peak:.1} MiB, now {now:.1} MiB (peak while settling {settled_peak:.1} MiB)",
        (cpu1 - cpu0).as_secs_f64(),
        (wall1 - wall0).as_secs_f64(),
        (virt1 - virt0).as_secs_f64(),
    );
    failed.check(
        peak <= 64.0,
        format!(
            "peak RSS during the quiet pass {peak:.1} MiB <= 64 MiB (controller and stand-ins)"
        ),
    );
    let lists = home.div_ceil(OBJECTS_PAGE) as u64;
    let pages = stacks.len().div_ceil(STACKS_PAGE) as u64;
    failed.check(
        used.get("s3 ListObjectsV2") == Some(&lists),
        format!("ListObjectsV2 = ceil({home}/1000) = {lists}"),
    );
    failed.check(
        used.get("cloudformation DescribeStacks") == Some(&pages),
        format!("DescribeStacks = ceil({}/100) = {pages}", stacks.len()),
    );
    failed.check(
        used.len() == 2,
        "nothing else: 0 GetObject, PutObject, DeleteObject".into(),
    );
}

async fn creating_at_once(
    rec: Arc<Rec>,
    store: &ScaleStore,
    stacks: &ScaleStacks,
    users: usize,
    creating: usize,
    failed: &mut Failed,
) {
    *stacks.create_status.lock().unwrap() = "CREATE_IN_PROGRESS".into();
    let before_creates = stacks.creates();
    let new: Vec<ClusterKey> = (0..creating)
        .map(|i| ClusterKey::new(&user(i % users), &format!("n{i:05}")).unwrap())
        .collect();
    for key in &new {
        store.insert(
            &format!("home/{}/{}.cf-create", key.user, key.cluster),
            REQUEST,
        );
    }
    let busy = rec.settings().busy_interval;
    let queue = Arc::new(WorkQueue::new(rec.metrics().clone()));
    let health = Arc::new(Health::new(Duration::from_secs(3600)));
    let fence = Fence::unelected("bench", rec.metrics().clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let looping = tokio::spawn(run(rec.clone(), queue, health, fence, false, async {
        let _ = stopped.await;
    }));
    // Every second of the paused clock: calls so far, and stacks created.
    let start = tokio::time::Instant::now();
    let mut samples = Vec::new();
    let mut all_created = None;
    let mut completed_at = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = start.elapsed();
        samples.push((t, calls(&rec)));
        if all_created.is_none() && stacks.creates() - before_creates == creating as u64 {
            all_created = Some(samples.len() - 1);
        }
        if let Some(i) = all_created
            && completed_at.is_none()
            && t >= samples[i].0 + 20 * busy
        {
            completed_at = Some(samples.len() - 1);
            stacks.complete_all();
        }
        if let Some(c) = completed_at
            && t >= samples[c].0 + 4 * busy
        {
            break;
        }
        if t >= Duration::from_secs(7200) {
            let status = format!("home/{}/{}.cf-status", new[0].user, new[0].cluster);
            let failed = format!("home/{}/{}.cf-failed", new[0].user, new[0].cluster);
            panic!(
                "only {} of {creating} creates arrived; {status}: {:?}, .cf-failed: {:?}",
                stacks.creates() - before_creates,
                store.text(&status),
                store.text(&failed)
            );
        }
    }
    let _ = stop.send(());
    looping.await.unwrap().unwrap();
    let (a, c) = (all_created.unwrap(), completed_at.unwrap());
    let window = (samples[c].0 - samples[a].0).as_secs_f64();
    let used = delta(&samples[c].1, &samples[a].1);
    let stack_calls: u64 = used
        .iter()
        .filter(|(k, _)| k.starts_with("cloudformation"))
        .map(|(_, v)| v)
        .sum();
    let s = stacks.len();
    let bound = s.div_ceil(STACKS_PAGE) as f64 / busy.as_secs_f64();
    let rate = stack_calls as f64 / window;
    println!(
        "{creating} clusters creating at once among {s} stacks: every CreateStack made {:.0} s after the requests (paused clock);",
        samples[a].0.as_secs_f64()
    );
    println!("  then for {window:.0} s, all in progress:");
    for (op, n) in &used {
        println!("  calls: {op} {n} ({:.2}/s)", *n as f64 / window);
    }
    let (peak, now) = memory();
    println!("  peak RSS {peak:.1} MiB, now {now:.1} MiB");
    // At most one listing per busy interval: over a window of n intervals, n + 1 listings
    // at most (one at each end), so the rate tends to the bound.
    let pages = s.div_ceil(STACKS_PAGE) as u64;
    let most = pages * ((window / busy.as_secs_f64()).floor() as u64 + 1);
    failed.check(
        stack_calls <= most,
        format!(
            "stack calls {rate:.3}/s, bound ceil({s}/100)/{}s = {bound:.3}/s: {stack_calls} calls in {window:.0} s, at most {pages} pages x (intervals + 1) = {most}",
            busy.as_secs()
        ),
    );
    let created = new
        .iter()
        .filter(|k| {
            let key = format!("home/{}/{}.cf-created", k.user, k.cluster);
            store.text(&key).is_some()
        })
        .count();
    let after = delta(&samples.last().unwrap().1, &samples[c].1);
    println!(
        "  after they completed: {} calls: {after:?}",
        after.values().sum::<u64>()
    );
    failed.check(
        created == creating,
        format!(
            "{created} of {creating} have their .cf-created {} s after completing",
            (4 * busy).as_secs()
        ),
    );
}

async fn hints(
    rec: Arc<Rec>,
    stacks: &ScaleStacks,
    store: &ScaleStore,
    users: usize,
    failed: &mut Failed,
) {
    let queue = Arc::new(WorkQueue::new(rec.metrics().clone()));
    let health = Arc::new(Health::new(Duration::from_secs(3 * 3600)));
    let fence = Fence::unelected("bench", rec.metrics().clone());
    let endpoint = Endpoint {
        metrics: rec.metrics().clone(),
        health: health.clone(),
        queue: queue.clone(),
        hint_token: Some(HINT_TOKEN.into()),
        max_hint_bytes: 262_144,
        bucket: rec.settings().bucket.clone(),
        home_prefix: rec.settings().home_prefix.clone(),
        fence: fence.clone(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let looping = tokio::spawn(run(
        rec.clone(),
        queue,
        health.clone(),
        fence,
        false,
        async {
            let _ = stopped.await;
        },
    ));
    let warm = Instant::now();
    while health.ready().is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warmed = warm.elapsed();
    // The first pass listed every stack, spending CloudFormation's burst: hints come once
    // the bucket is full again, as in a steady state.
    tokio::time::sleep(Duration::from_secs(10)).await;
    println!(
        "hints with {} stacks present (real clock; first pass after the restart {:.1} s):",
        stacks.len(),
        warmed.as_secs_f64()
    );
    let mut samples = Vec::new();
    for i in 0..HINTS {
        let key = ClusterKey::new(&user(i * 7 % users), &format!("h{i:03}")).unwrap();
        let object = format!("home/{}/{}.cf-create", key.user, key.cluster);
        store.insert(&object, REQUEST);
        let name = rec.settings().identity.stack_name(&key);
        let event = serde_json::json!({"Records": [{"s3": {"bucket": {"name": rec.settings().bucket}, "object": {"key": object}}}]});
        let req = hyper::Request::post("/hints")
            .header("authorization", format!("Bearer {HINT_TOKEN}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(event.to_string())))
            .unwrap();
        let sent = Instant::now();
        let reply = handle(&endpoint, Serves::Everything, req).await;
        assert_eq!(reply.status(), 202, "the hint was not accepted");
        let created = loop {
            if let Some(at) = stacks.created_at(&name) {
                break at;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(10),
                "no CreateStack for {name}"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        samples.push((created - sent).as_secs_f64() * 1000.0);
        // One at a time, as users write them. Each new cluster costs three CloudFormation
        // calls (the look's describe and create, and a poll's describe of it), whose tokens
        // come back at 10 a second: hints any closer would, after the burst, wait for the
        // bucket, as they should.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = stop.send(());
    looping.await.unwrap().unwrap();
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).min(samples.len()) - 1];
    println!(
        "  hint to CreateStack over {} hints: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    );
    failed.check(at(0.99) <= 50.0, format!("p99 {:.2} ms <= 50 ms", at(0.99)));
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.replace(['_', ','], "")
                .parse()
                .expect("numbers: USERS CLUSTERS DATA CREATING")
        })
        .collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (users, clusters, data, creating) = (
        arg(0, 5_000),
        arg(1, 10_000),
        arg(2, 1_000_000),
        arg(3, 1_000),
    );
    assert!(
        clusters % users == 0 && data % users == 0,
        "CLUSTERS and DATA must be multiples of USERS"
    );
    let scratch =
        std::env::temp_dir().join(format!("flightdeck-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let settings = settings(&scratch);
    println!(
        "bench-scale: {users} users, {clusters} clusters, {data} data files; rates s3 {}/{} cloudformation {}/{} (qps/burst); busy interval {} s, resync {} s",
        settings.rates.s3.qps,
        settings.rates.s3.burst,
        settings.rates.cloudformation.qps,
        settings.rates.cloudformation.burst,
        settings.busy_interval.as_secs(),
        settings.resync_interval.as_secs()
    );
    let store = ScaleStore::new(users, clusters / users, data / users, REQUEST);
    let stacks = ScaleStacks::default();
    let mut failed = Failed(Vec::new());
    let paused = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let empty = heap();
    paused.block_on(async {
        let rec = reconciler(settings.clone(), &store, &stacks);
        quiet_pass(&rec, &store, &stacks, &mut failed).await;
        let with = heap();
        drop(rec);
        let without = heap();
        println!(
            "  heap live after the pass: {with:.1} MiB; the controller's share {:.1} MiB (freed when it is dropped), the stand-ins' {:.1} MiB (their stacks, markers and records)",
            with - without,
            without - empty
        );
        // A restarted controller from here on: it reads every request once, then goes on.
        let rec = reconciler(settings.clone(), &store, &stacks);
        creating_at_once(rec, &store, &stacks, users, creating, &mut failed).await;
    });
    drop(paused);
    let real = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    real.block_on(async {
        // A restarted controller reads every request once; S3's bucket is raised for that
        // first pass only so it takes seconds, not minutes: no hint waits for a token.
        let mut restarted = settings.clone();
        restarted.rates = Rates {
            s3: Rate::new(100_000.0, 100_000).unwrap(),
            ..settings.rates
        };
        // The hinted clusters' stacks complete at once here: few are ever in progress, so
        // a poll describes them one by one instead of listing 11,000 stacks.
        *stacks.create_status.lock().unwrap() = "CREATE_COMPLETE".into();
        restarted.resync_interval = Duration::from_secs(3600);
        let rec = reconciler(restarted, &store, &stacks);
        hints(rec, &stacks, &store, users, &mut failed).await;
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let (peak, _) = memory();
    println!("peak RSS of the whole run: {peak:.1} MiB");
    if !failed.0.is_empty() {
        eprintln!(
            "bench-scale: {} figure(s) off: {:?}",
            failed.0.len(),
            failed.0
        );
        std::process::exit(1);
    }
}
