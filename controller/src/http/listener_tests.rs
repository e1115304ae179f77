//! The listeners against slow, silent and many clients, on loopback. Waits are generous
//! (machines are noisy): these tests check what happens, not how fast.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::*;
use crate::http::Health;
use crate::queue::WorkQueue;

/// The longest any wait in these tests may take.
const PATIENCE: Duration = Duration::from_secs(5);
const TOKEN: &str = "0123456789abcdef0123";

fn endpoint() -> Arc<Endpoint> {
    let metrics = Arc::new(Metrics::new(false));
    Arc::new(Endpoint {
        queue: Arc::new(WorkQueue::new(metrics.clone())),
        metrics: metrics.clone(),
        health: Arc::new(Health::new(Duration::from_secs(60))),
        hint_token: Some(TOKEN.into()),
        max_hint_bytes: 4096,
        bucket: "users".into(),
        home_prefix: "home/".into(),
        fence: crate::leader::Fence::unelected("test", metrics.clone()),
    })
}

/// `max_connections`, and timeouts so long that only the budget closes connections.
fn patient(max_connections: usize) -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(120),
        lifetime: Duration::from_secs(120),
        ..Limits::new(max_connections)
    }
}

/// The endpoint on two loopback listeners: hints and probes, metrics and probes.
struct Server {
    main: SocketAddr,
    metrics: SocketAddr,
    endpoint: Arc<Endpoint>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn start(main: Limits) -> Server {
    let endpoint = endpoint();
    let main_tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server {
        main: main_tcp.local_addr().unwrap(),
        metrics: metrics_tcp.local_addr().unwrap(),
        endpoint: endpoint.clone(),
        stop,
        task: tokio::spawn(serve(
            vec![
                Listener::new(main_tcp, Serves::HintsAndProbes, main),
                Listener::new(metrics_tcp, Serves::MetricsAndProbes, Limits::new(8)),
            ],
            endpoint,
            async {
                let _ = stopped.await;
            },
        )),
    };
    // Both accept loops are running once a probe is answered.
    get(server.metrics, "/healthz").await;
    server
}

impl Server {
    /// The gauge of open connections of a listener.
    fn open(&self, listener: &str) -> usize {
        self.sample(&format!(
            "flightdeck_http_connections_open{{listener=\"{listener}\"}} "
        ))
    }

    fn refused(&self, listener: &str) -> usize {
        self.sample(&format!(
            "flightdeck_http_connections_refused_total{{listener=\"{listener}\"}} "
        ))
    }

    fn sample(&self, series: &str) -> usize {
        let text = self.endpoint.metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE * 2, self.task)
            .await
            .expect("the server stops")
            .unwrap();
    }
}

/// One request on a new connection; the whole answer.
async fn get(addr: SocketAddr, path: &str) -> String {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} on {addr} did not answer within {PATIENCE:?}"))
}

/// Waits until `done` holds; false when it did not within `PATIENCE`.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let start = tokio::time::Instant::now();
    while !done() {
        if start.elapsed() > PATIENCE {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Reads until the server closes the connection; false when it is still open after `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 512];
    tokio::time::timeout(wait, async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .is_ok()
}

/// Slow clients that hold, or are about to hold, a connection.
#[derive(Default)]
struct Crowd(AtomicUsize);

impl Crowd {
    fn alive(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A client that starts a request and never finishes it: silent, or one header byte every
/// 100 ms. It holds its connection until the server closes it or `stop` is set; it counts
/// in `crowd` from before it connects until it lets go.
async fn slow_client(
    addr: SocketAddr,
    dribble: bool,
    crowd: Arc<Crowd>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        crowd.0.fetch_sub(1, Ordering::SeqCst);
        return;
    };
    let (mut rx, mut tx) = s.split();
    let mut buf = [0u8; 512];
    let mut holding = !dribble
        || tx
            .write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            .await
            .is_ok();
    while holding {
        tokio::select! {
            read = rx.read(&mut buf) => holding = matches!(read, Ok(n) if n > 0),
            () = tokio::time::sleep(Duration::from_millis(100)), if dribble => {
                holding = tx.write_all(b"a").await.is_ok();
            }
            () = stopped(&mut stop) => break,
        }
    }
    crowd.0.fetch_sub(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_connections_do_not_stop_healthz() {
    const CAP: usize = 64;
    const CLIENTS: usize = 1_000;
    let server = Arc::new(start(patient(CAP)).await);
    let (stop, stopping) = watch::channel(false);

    // The gauge, watched while the clients come.
    let most_open = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (server, most_open, mut stopping) =
            (server.clone(), most_open.clone(), stopping.clone());
        tokio::spawn(async move {
            while !*stopping.borrow_and_update() {
                most_open.fetch_max(server.open("main"), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Half silent, half dribbling. A client the server refused lets go of its socket, and
    // the next starts only while fewer than CAP + QUEUED are alive. That keeps the kernel's
    // accept queue (128 connections) from overflowing: past it, with SYN cookies, a silent
    // client would believe itself connected to a server that holds nothing for it.
    const QUEUED: usize = 32;
    let crowd = Arc::new(Crowd::default());
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        if crowd.alive() >= CAP + QUEUED {
            let settled = eventually(|| crowd.alive() < CAP + QUEUED).await;
            let n = crowd.alive();
            assert!(
                settled,
                "after {i} slow connections, {n} are still open after {PATIENCE:?}; the cap is {CAP}"
            );
        }
        crowd.0.fetch_add(1, Ordering::SeqCst);
        clients.push(tokio::spawn(slow_client(
            server.main,
            i % 2 == 1,
            crowd.clone(),
            stopping.clone(),
        )));
    }
    let settled = eventually(|| crowd.alive() <= CAP).await;
    let n = crowd.alive();
    assert!(
        settled,
        "{n} of {CLIENTS} slow connections still open after {PATIENCE:?}; the cap is {CAP}"
    );

    // The probe and the scrape are answered meanwhile, on their own listener.
    let health = get(server.metrics, "/healthz").await;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    let metrics = get(server.metrics, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "flightdeck_http_connections_open{{listener=\"main\"}} {CAP}\n"
        )),
        "{metrics}"
    );
    assert!(server.refused("main") >= CLIENTS - CAP, "{metrics}");

    let _ = stop.send(true);
    for c in clients {
        c.await.unwrap();
    }
    watcher.await.unwrap();
    let most = most_open.load(Ordering::SeqCst);
    assert!(
        most <= CAP,
        "the gauge showed {most} open; the cap is {CAP}"
    );
    assert!(
        eventually(|| server.open("main") == 0).await,
        "the gauge stays at {}",
        server.open("main")
    );
    Arc::into_inner(server)
        .expect("the only server")
        .stop()
        .await;
}

#[tokio::test]
async fn silent_and_slow_clients_are_closed_after_the_header_timeout() {
    let server = start(Limits {
        header_read_timeout: Duration::from_secs(1),
        ..patient(8)
    })
    .await;
    let mut silent = TcpStream::connect(server.main).await.unwrap();
    let mut slow = TcpStream::connect(server.main).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let dribbling = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"X-Slow: a\r\n").await.is_err() {
                break;
            }
        }
        closed_within(&mut slow, Duration::ZERO).await
    };
    let (silent_closed, slow_closed) = tokio::join!(
        closed_within(&mut silent, PATIENCE * 2),
        tokio::time::timeout(PATIENCE * 2, dribbling)
    );
    assert!(silent_closed, "a silent client kept its connection");
    assert!(
        matches!(slow_closed, Ok(true)),
        "a client sending a header line every 100 ms kept its connection"
    );
    assert!(eventually(|| server.open("main") == 0).await);
    server.stop().await;
}

#[tokio::test]
async fn a_hint_body_sent_slowly_is_cut_off_at_the_connection_lifetime() {
    let server = start(Limits {
        lifetime: Duration::from_secs(1),
        grace: Duration::from_secs(1),
        ..patient(8)
    })
    .await;
    let mut s = TcpStream::connect(server.main).await.unwrap();
    let head = format!(
        "POST /hints HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 4000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let dribbling = async {
        for _ in 0..4000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b" ").await.is_err() {
                return true;
            }
            if closed_within(&mut s, Duration::ZERO).await {
                return true;
            }
        }
        false
    };
    let cut = tokio::time::timeout(PATIENCE * 2, dribbling).await;
    assert!(matches!(cut, Ok(true)), "the slow hint kept its connection");
    assert!(eventually(|| server.open("main") == 0).await);
    server.stop().await;
}

#[tokio::test]
async fn a_kept_alive_connection_serves_requests_in_turn() {
    let server = start(Limits::new(8)).await;
    let mut s = TcpStream::connect(server.metrics).await.unwrap();
    for _ in 0..3 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        while !answer.ends_with(b"\r\n\r\nok\n") {
            let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            assert!(n > 0, "closed after {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"));
    }
    server.stop().await;
}

#[tokio::test]
async fn stopping_closes_idle_connections_and_stops_listening() {
    let server = start(patient(8)).await;
    let main = server.main;
    let mut idle = TcpStream::connect(main).await.unwrap();
    assert!(eventually(|| server.open("main") == 1).await);
    server.stop().await;
    assert!(
        closed_within(&mut idle, PATIENCE).await,
        "an idle connection outlived the server"
    );
    assert!(TcpStream::connect(main).await.is_err(), "still listening");
}
