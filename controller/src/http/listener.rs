//! Accepting connections within limits, so that slow or idle clients cannot use up the
//! controller's memory, and so the probes stay answered.
//!
//! Each listener has a budget of `http.max_connections` open connections (a semaphore).
//! When it is spent, a new connection is accepted and closed at once, unread, and counted:
//! the client learns straight away, instead of waiting in the kernel's accept queue for a
//! slot until its own timeout; and the queue stays short, so a connection that does get a
//! slot is a fresh one. Every connection is bounded in memory (`max_buf_size`: the request
//! headers must fit; a hint body is read only with the token, and at most
//! `http.max_hint_bytes` of it) and in time: its headers must arrive within
//! `header_read_timeout` (also the idle time between requests), and after `lifetime` it
//! finishes the request in flight within `grace` and is closed, so even a client that
//! sends a byte now and then cannot keep a slot.
//!
//! Connections on one listener do not use up another's budget: with `http.metrics_listen`,
//! Prometheus and the kubelet have their own.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, info, warn};

use super::{Endpoint, Serves, handle};
use crate::metrics::Metrics;

/// Limits on the connections of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more are closed unread (`http.max_connections`).
    pub max_connections: usize,
    /// How long a client has to send a request's headers, also the next request's on a
    /// kept-alive connection.
    pub header_read_timeout: Duration,
    /// How long a connection stays open; then it finishes its request in flight and closes.
    pub lifetime: Duration,
    /// How long a request in flight then has, and at shutdown.
    pub grace: Duration,
    /// The largest read buffer of a connection: request headers must fit in it.
    pub max_buf_size: usize,
}

impl Limits {
    /// The controller's limits, with `max_connections` open at once.
    ///
    /// The headers of the kubelet's probes, Prometheus' scrapes and the hint forwarder's
    /// requests take one packet and well under 8 KiB; a hint body of 256 KiB takes 60 s
    /// only below 35 kbit/s. `max_headers` keeps hyper's default (100, on the stack): the
    /// buffer already bounds the headers' bytes.
    pub fn new(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_read_timeout: Duration::from_secs(5),
            lifetime: Duration::from_secs(60),
            grace: Duration::from_secs(5),
            max_buf_size: 16 * 1024,
        }
    }
}

/// A bound socket, what it serves, and its limits.
pub struct Listener {
    tcp: TcpListener,
    serves: Serves,
    limits: Limits,
}

impl Listener {
    /// A listener on `tcp`.
    pub fn new(tcp: TcpListener, serves: Serves, limits: Limits) -> Listener {
        Listener {
            tcp,
            serves,
            limits,
        }
    }
}

/// Serves every listener until `shutdown` completes; then stops accepting, lets each
/// connection finish its request in flight (at most `grace`), and closes the rest.
pub async fn serve(
    listeners: Vec<Listener>,
    endpoint: Arc<Endpoint>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopping) = watch::channel(false);
    let serving = futures::future::join_all(
        listeners
            .into_iter()
            .map(|l| accept(l, endpoint.clone(), stopping.clone())),
    );
    tokio::pin!(serving);
    tokio::select! {
        _ = &mut serving => return,
        () = shutdown => {}
    }
    info!("HTTP server stopping");
    let _ = stop.send(true);
    serving.await;
}

/// One listener's accept loop, until `stopping`; then waits for its connections.
async fn accept(listener: Listener, endpoint: Arc<Endpoint>, mut stopping: watch::Receiver<bool>) {
    let Listener {
        tcp,
        serves,
        limits,
    } = listener;
    let name = serves.label();
    let metrics = endpoint.metrics.clone();
    metrics.http_listening(name);
    let budget = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = tcp.accept() => accepted,
            () = stopped(&mut stopping) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if gone_before_accepted(&e) => {
                debug!(listener = name, error = %e, "a connection went before it was accepted");
                continue;
            }
            Err(e) => {
                // Out of file descriptors or memory: pause rather than spin.
                warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = budget.clone().try_acquire_owned() else {
            drop(stream);
            metrics.http_connection_refused(name, limits.max_connections);
            continue;
        };
        let open = Open::new(metrics.clone(), name, permit);
        tokio::spawn(connection(
            stream,
            endpoint.clone(),
            serves,
            limits.clone(),
            stopping.clone(),
            open,
        ));
    }
    drop(tcp);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let closed = tokio::time::timeout(
        limits.grace + Duration::from_secs(1),
        budget.acquire_many(all),
    );
    if closed.await.is_err() {
        warn!(
            listener = name,
            "some HTTP connections did not close in time"
        );
    }
}

/// Whether an accept failed only because its client gave up: the next accept is fine.
fn gone_before_accepted(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// Completes once the server is stopping.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // An error means the server is gone: stopping too.
    let _ = stopping.wait_for(|s| *s).await;
}

/// A connection counted open, from accept to close: its slot of the budget and the gauge.
struct Open {
    metrics: Arc<Metrics>,
    listener: &'static str,
    _slot: OwnedSemaphorePermit,
}

impl Open {
    fn new(metrics: Arc<Metrics>, listener: &'static str, slot: OwnedSemaphorePermit) -> Open {
        metrics.http_connection_opened(listener);
        Open {
            metrics,
            listener,
            _slot: slot,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.http_connection_closed(self.listener);
    }
}

/// Serves one connection within `limits`; closes it at the end of its lifetime, or when
/// the server stops, after the request in flight (at most `grace`).
async fn connection(
    stream: TcpStream,
    endpoint: Arc<Endpoint>,
    serves: Serves,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
    _open: Open,
) {
    let service = hyper::service::service_fn(move |req| {
        let endpoint = endpoint.clone();
        async move { Ok::<_, Infallible>(handle(&endpoint, serves, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_buf_size)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => Some(ended),
        () = tokio::time::sleep(limits.lifetime) => None,
        () = stopped(&mut stopping) => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.grace, conn).await {
                Ok(ended) => ended,
                Err(_) => {
                    debug!("connection closed with a request unfinished");
                    return;
                }
            }
        }
    };
    if let Err(e) = ended {
        debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
