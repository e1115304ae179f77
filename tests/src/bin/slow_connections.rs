//! Measures what 1,000 slow HTTP connections cost the controller's HTTP endpoint, and
//! whether `/healthz` still answers meanwhile.
//!
//! This process runs the real endpoint (`flightdeck::http::serve`) on loopback and
//! measures itself: resident memory (`VmRSS`, `VmHWM` from `/proc/self/status`) and open
//! sockets (`/proc/self/fd`), once a second. The slow clients run in a second process (this
//! binary again, with `--clients`), so their own memory is not counted. Each client opens
//! a connection, starts a request, and then never finishes its headers; when the server
//! closes it, it connects again, as an attacker would:
//!
//! - `dribble`: one header byte a second;
//! - `fill`: 256 KiB of header at once, then one byte a second (the server buffers what
//!   it has not parsed yet).
//!
//! Meanwhile a probe sends `GET /healthz` on a new connection twice a second.
//!
//! `make bench-http` runs both modes; each process needs `ulimit -n` of at least 1,100 (the
//! recipe raises it). It prints figures and asserts nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flightdeck::http::{Endpoint, Health, Limits, Listener, Serves, serve};
use flightdeck::metrics::Metrics;
use flightdeck::queue::WorkQueue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 1_000;
const FLOOD: Duration = Duration::from_secs(30);
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const FILL_BYTES: usize = 256 * 1024;
/// Open files each process needs: the server's ends of the connections live in this one,
/// the clients' in the other.
const MIN_OPEN_FILES: u64 = CONNECTIONS as u64 + 100;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Dribble,
    Fill,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "dribble" => Some(Mode::Dribble),
            "fill" => Some(Mode::Fill),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Dribble => "dribble",
            Mode::Fill => "fill",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Dribble => "each sends one header byte a second",
            Mode::Fill => "each sends 256 KiB of header, then one byte a second",
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: slow_connections dribble|fill");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, addr, mode] if flag == "--clients" => {
            let mode = Mode::parse(mode).unwrap_or_else(|| usage());
            clients(addr, mode).await;
        }
        [mode] => bench(Mode::parse(mode).unwrap_or_else(|| usage())).await,
        _ => usage(),
    }
}

/// A field of `/proc/self/status` in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// The soft limit on open files, from `/proc/self/limits`.
fn open_file_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(u64::MAX)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn endpoint() -> Arc<Endpoint> {
    let metrics = Arc::new(Metrics::new(false));
    Arc::new(Endpoint {
        queue: Arc::new(WorkQueue::new(metrics.clone())),
        metrics: metrics.clone(),
        health: Arc::new(Health::new(Duration::from_secs(60))),
        hint_token: Some("bench-token-0123456789".into()),
        max_hint_bytes: 256 * 1024,
        bucket: "users".into(),
        home_prefix: "home/".into(),
        fence: flightdeck::leader::Fence::unelected("bench", metrics.clone()),
    })
}

/// The endpoint as the controller runs it by default (`http.max_connections`), with
/// `/metrics` and the probes on a second listener (`http.metrics_listen`). Returns the
/// main address and the metrics address.
async fn start_server(endpoint: Arc<Endpoint>) -> (String, String) {
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (
        main.local_addr().unwrap().to_string(),
        metrics.local_addr().unwrap().to_string(),
    );
    let limits = Limits::new(256);
    let listeners = vec![
        Listener::new(main, Serves::HintsAndProbes, limits.clone()),
        Listener::new(metrics, Serves::MetricsAndProbes, limits),
    ];
    tokio::spawn(serve(listeners, endpoint, std::future::pending()));
    addrs
}

/// `GET /healthz` on a new connection: how long until `200 ok`, or why not.
async fn probe(addr: &str) -> Result<Duration, &'static str> {
    let start = Instant::now();
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.map_err(|_| "refused")?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|_| "closed")?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.map_err(|_| "reset")?;
        if answer.starts_with(b"HTTP/1.1 200") {
            Ok(start.elapsed())
        } else if answer.is_empty() {
            Err("closed")
        } else {
            Err("not 200")
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .unwrap_or(Err("timed out"))
}

#[derive(Default)]
struct Probes {
    answered: Vec<Duration>,
    failed: std::collections::BTreeMap<&'static str, usize>,
}

impl Probes {
    fn record(&mut self, r: Result<Duration, &'static str>) {
        match r {
            Ok(d) => self.answered.push(d),
            Err(why) => *self.failed.entry(why).or_default() += 1,
        }
    }

    fn summary(&mut self) -> String {
        self.answered.sort();
        let total = self.answered.len() + self.failed.values().sum::<usize>();
        let mut s = format!("{}/{total} answered", self.answered.len());
        if let (Some(median), Some(worst)) = (
            self.answered.get(self.answered.len() / 2),
            self.answered.last(),
        ) {
            s += &format!(
                ", median {:.1} ms, worst {:.1} ms",
                median.as_secs_f64() * 1e3,
                worst.as_secs_f64() * 1e3
            );
        }
        for (why, n) in &self.failed {
            s += &format!(", {n} {why}");
        }
        s
    }
}

async fn bench(mode: Mode) {
    let limit = open_file_limit();
    if limit < MIN_OPEN_FILES {
        eprintln!(
            "slow_connections: the open-file limit is {limit}; {MIN_OPEN_FILES} are needed (ulimit -n 4096)"
        );
        std::process::exit(2);
    }
    let endpoint = endpoint();
    let (main, metrics) = start_server(endpoint.clone()).await;
    for _ in 0..20 {
        probe(&main)
            .await
            .expect("/healthz answers before the flood");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = status_kib("VmRSS");
    let files_before = open_files();

    let exe = std::env::current_exe().expect("this program's path");
    let child = tokio::process::Command::new(exe)
        .args(["--clients", &main, mode.name()])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the clients");

    let mut main_probes = Probes::default();
    let mut metrics_probes = Probes::default();
    let (mut rss_peak, mut files_peak, mut gauge_peak) = (rss_before, files_before, 0);
    let start = Instant::now();
    while start.elapsed() < FLOOD {
        tokio::time::sleep(PROBE_EVERY).await;
        let (m, o) = tokio::join!(probe(&main), probe(&metrics));
        main_probes.record(m);
        metrics_probes.record(o);
        rss_peak = rss_peak.max(status_kib("VmRSS"));
        files_peak = files_peak.max(open_files());
        gauge_peak = gauge_peak.max(open_gauge(&endpoint));
    }
    let clients = child.wait_with_output().await.expect("the clients' exit");
    assert!(
        clients.status.success(),
        "the clients failed: {}",
        clients.status
    );

    let held = files_peak.saturating_sub(files_before);
    let growth = rss_peak.saturating_sub(rss_before);
    println!(
        "{} slow connections ({}), {} s",
        CONNECTIONS,
        mode.describe(),
        FLOOD.as_secs()
    );
    println!(
        "  server RSS: {} before, {} at peak (+{}); VmHWM {}",
        mib(rss_before),
        mib(rss_peak),
        mib(growth),
        mib(status_kib("VmHWM"))
    );
    println!(
        "  server sockets held open at once: at most {held}{}",
        if held > 0 {
            format!(" ({:.1} KiB each)", growth as f64 / held as f64)
        } else {
            String::new()
        }
    );
    println!("  flightdeck_http_connections_open{{listener=\"main\"}}: at most {gauge_peak}");
    print!("{}", String::from_utf8_lossy(&clients.stderr));
    println!(
        "  /healthz on the flooded listener: {}",
        main_probes.summary()
    );
    println!(
        "  /healthz on the metrics listener: {}",
        metrics_probes.summary()
    );
    let text = endpoint.metrics.render();
    for line in text
        .lines()
        .filter(|l| l.starts_with("flightdeck_http_connections_refused_total{listener=\"main\"}"))
    {
        println!("  {line}");
    }
}

/// The server's gauge of open connections on the main listener.
fn open_gauge(endpoint: &Endpoint) -> i64 {
    let series = "flightdeck_http_connections_open{listener=\"main\"} ";
    let text = endpoint.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.parse().ok())
        .unwrap_or(0)
}

/// The slow clients: `CONNECTIONS` of them against `addr` until the flood ends.
async fn clients(addr: &str, mode: Mode) {
    let stats = Arc::new(ClientStats::default());
    let deadline = Instant::now() + FLOOD;
    let mut tasks = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        tasks.push(tokio::spawn(slow_client(
            addr.to_owned(),
            mode,
            deadline,
            stats.clone(),
        )));
    }
    for t in tasks {
        t.await.expect("a slow client");
    }
    eprintln!(
        "  clients: {} connections made, {} closed by the server, {} connects failed; at most {} open at once",
        stats.connects.load(Ordering::Relaxed),
        stats.closed.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        stats.peak.load(Ordering::Relaxed),
    );
}

#[derive(Default)]
struct ClientStats {
    connects: AtomicU64,
    closed: AtomicU64,
    failed: AtomicU64,
    open: AtomicUsize,
    peak: AtomicUsize,
}

async fn slow_client(addr: String, mode: Mode, deadline: Instant, stats: Arc<ClientStats>) {
    let deadline = tokio::time::Instant::from_std(deadline);
    while tokio::time::Instant::now() < deadline {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        stats.connects.fetch_add(1, Ordering::Relaxed);
        let open = stats.open.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak.fetch_max(open, Ordering::Relaxed);
        if hold(&mut s, mode, deadline).await {
            stats.closed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps one slow request going until `deadline`; true when the server closed it first.
async fn hold(s: &mut TcpStream, mode: Mode, deadline: tokio::time::Instant) -> bool {
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: ".to_vec();
    if mode == Mode::Fill {
        head.resize(head.len() + FILL_BYTES, b'a');
    }
    if s.write_all(&head).await.is_err() {
        return true;
    }
    let (mut rx, mut tx) = s.split();
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = rx.read(&mut buf) => match read {
                Ok(0) | Err(_) => return true,
                // An answer (431, 408): the server is about to close.
                Ok(_) => continue,
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if tx.write_all(b"a").await.is_err() {
                    return true;
                }
            }
            () = tokio::time::sleep_until(deadline) => return false,
        }
    }
}
