//! The HTTP endpoint (hyper): `/metrics`, `/healthz`, `/readyz`, and `POST /hints`, on one
//! listener or two ([`Serves`]); [`listener`] accepts and bounds the connections.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

// Tokio's clock, so that tests on a paused clock see readiness age.
use tokio::time::Instant;

use bytes::Bytes;
use flightdeck_core::hint::parse_hint;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tracing::debug;

use crate::leader::Fence;
use crate::metrics::Metrics;
use crate::queue::WorkQueue;

pub mod listener;

pub use listener::{Limits, Listener, serve};

/// Whether the controller is alive and keeping up.
pub struct Health {
    last_resync: Mutex<Option<Instant>>,
    stale_after: Duration,
}

impl Health {
    /// Ready while a complete resync happened within `stale_after`.
    pub fn new(stale_after: Duration) -> Self {
        Health {
            last_resync: Mutex::new(None),
            stale_after,
        }
    }

    /// A full resync completed.
    pub fn resynced(&self) {
        *self
            .last_resync
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// `Ok` when ready, else why not.
    pub fn ready(&self) -> Result<(), String> {
        match *self
            .last_resync
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            None => Err("no complete resync yet".into()),
            Some(t) if t.elapsed() > self.stale_after => Err(format!(
                "the last complete resync was {}s ago",
                t.elapsed().as_secs()
            )),
            Some(_) => Ok(()),
        }
    }
}

/// What one listener answers. The probes are answered everywhere: the kubelet may probe
/// whichever port is out of reach of hint traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    /// `/metrics`, the probes and `POST /hints`: the only listener (`http.listen` without
    /// `http.metrics_listen`).
    Everything,
    /// The probes and `POST /hints` (`http.listen` beside `http.metrics_listen`).
    HintsAndProbes,
    /// `/metrics` and the probes (`http.metrics_listen`).
    MetricsAndProbes,
}

impl Serves {
    /// The `listener` label of this listener's series.
    pub fn label(self) -> &'static str {
        match self {
            Serves::Everything | Serves::HintsAndProbes => "main",
            Serves::MetricsAndProbes => "metrics",
        }
    }

    fn metrics(self) -> bool {
        self != Serves::HintsAndProbes
    }

    fn hints(self) -> bool {
        self != Serves::MetricsAndProbes
    }

    fn not_found(self) -> &'static str {
        match self {
            Serves::Everything => "not found: try /metrics, /healthz, /readyz or POST /hints",
            Serves::HintsAndProbes => {
                "not found: try /healthz, /readyz or POST /hints; /metrics is on the metrics listener (http.metrics_listen)"
            }
            Serves::MetricsAndProbes => {
                "not found: try /metrics, /healthz or /readyz; POST /hints is on the main listener (http.listen)"
            }
        }
    }
}

/// What the endpoint serves from.
pub struct Endpoint {
    /// Metrics to render and count into.
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Arc<Health>,
    /// Where hinted clusters go.
    pub queue: Arc<WorkQueue>,
    /// Bearer token for hints; `None` turns hints off.
    pub hint_token: Option<String>,
    /// Largest hint body.
    pub max_hint_bytes: usize,
    /// The users' bucket (hints for others are ignored).
    pub bucket: String,
    /// The home prefix (hints outside it are ignored).
    pub home_prefix: String,
    /// Whether this replica leads: a standby answers hints with 503 so that the sender
    /// tries another replica.
    pub fence: Arc<Fence>,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut body = body.into();
    body.push('\n');
    reply(status, "text/plain; charset=utf-8", body)
}

/// Answers one request on a listener that `serves` these paths.
pub async fn handle<B>(endpoint: &Endpoint, serves: Serves, req: Request<B>) -> Reply
where
    B: Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path();
    if (path == "/metrics" && !serves.metrics()) || (path == "/hints" && !serves.hints()) {
        return text(StatusCode::NOT_FOUND, serves.not_found());
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => match endpoint.health.ready() {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
        },
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            endpoint.metrics.render(),
        ),
        (&Method::POST, "/hints") => hints(endpoint, req).await,
        (_, "/healthz" | "/readyz" | "/metrics" | "/hints") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, serves.not_found()),
    }
}

async fn hints<B>(endpoint: &Endpoint, req: Request<B>) -> Reply
where
    B: Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let m = &endpoint.metrics;
    let Some(token) = &endpoint.hint_token else {
        return text(
            StatusCode::NOT_FOUND,
            "hints are off: no hint token is configured",
        );
    };
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same_secret(presented.as_bytes(), token.as_bytes()) {
        m.hint("unauthorized");
        let mut r = text(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        r.headers_mut().insert(
            "www-authenticate",
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    if endpoint.fence.term().is_none() {
        // A standby would only drop the hint: 503 tells the forwarder to try the next
        // replica (deploy/lambda/forward.py does), and the resync catches anything lost.
        m.hint("standby");
        let body = serde_json::json!({
            "error": "this replica is a standby; send hints to the leader",
            "leader": endpoint.fence.leader(),
        });
        let mut r = reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            format!("{body}\n"),
        );
        r.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
        return r;
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        m.hint("too_large");
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a hint is at most {} bytes", endpoint.max_hint_bytes),
        )
    };
    if declared.is_some_and(|n| n > endpoint.max_hint_bytes) {
        return too_large();
    }
    let body = match Limited::new(req.into_body(), endpoint.max_hint_bytes)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            m.hint("malformed");
            return text(
                StatusCode::BAD_REQUEST,
                format!("could not read the body: {e}"),
            );
        }
    };
    match parse_hint(&body, &endpoint.bucket, &endpoint.home_prefix) {
        Ok(hint) => {
            for outcome in &hint.outcomes {
                m.hint(outcome.label());
            }
            for key in &hint.keys {
                debug!(user = %key.user, cluster = %key.cluster, "hinted");
                endpoint.queue.add(key);
            }
            let accepted = hint.keys.len();
            let body = serde_json::json!({ "accepted": accepted, "ignored": hint.outcomes.len() - accepted });
            reply(
                StatusCode::ACCEPTED,
                "application/json",
                format!("{body}\n"),
            )
        }
        Err(e) => {
            m.hint("malformed");
            text(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

/// Compares secrets in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use flightdeck_core::key::ClusterKey;

    const TOKEN: &str = "0123456789abcdef0123";

    fn endpoint() -> Endpoint {
        let metrics = Arc::new(Metrics::new(false));
        Endpoint {
            queue: Arc::new(WorkQueue::new(metrics.clone())),
            metrics: metrics.clone(),
            health: Arc::new(Health::new(Duration::from_secs(60))),
            hint_token: Some(TOKEN.into()),
            max_hint_bytes: 2048,
            bucket: "users".into(),
            home_prefix: "home/".into(),
            fence: crate::leader::Fence::unelected("test", metrics.clone()),
        }
    }

    fn request(
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Request<Full<Bytes>> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
    }

    async fn body(r: Reply) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    /// Answers a request on the only listener (no `http.metrics_listen`).
    async fn everything(
        e: &Endpoint,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Reply {
        handle(e, Serves::Everything, request(method, path, token, body)).await
    }

    /// POSTs a hint naming one object, with `token`.
    async fn hint(e: &Endpoint, token: Option<&str>, key: &str) -> Reply {
        everything(e, Method::POST, "/hints", token, &s3_event(key)).await
    }

    fn s3_event(key: &str) -> String {
        serde_json::json!({"Records": [{"s3": {"bucket": {"name": "users"}, "object": {"key": key}}}]}).to_string()
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let e = endpoint();
        assert_eq!(
            everything(&e, Method::GET, "/healthz", None, "")
                .await
                .status(),
            StatusCode::OK
        );
        let not_ready = everything(&e, Method::GET, "/readyz", None, "").await;
        assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(not_ready).await.contains("no complete resync yet"));
        e.health.resynced();
        assert_eq!(
            everything(&e, Method::GET, "/readyz", None, "")
                .await
                .status(),
            StatusCode::OK
        );
        let metrics = body(everything(&e, Method::GET, "/metrics", None, "").await).await;
        assert!(
            metrics.contains("flightdeck_clusters{phase=\"Ready\"}"),
            "{metrics}"
        );
        assert_eq!(
            everything(&e, Method::GET, "/nope", None, "")
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            everything(&e, Method::GET, "/hints", None, "")
                .await
                .status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn a_hint_queues_the_cluster_it_names() {
        let e = endpoint();
        let r = hint(&e, Some(TOKEN), "home/alice/x.cf-create").await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(body(r).await.trim(), r#"{"accepted":1,"ignored":0}"#);
        let key = tokio::time::timeout(Duration::from_secs(1), e.queue.get())
            .await
            .unwrap();
        assert_eq!(key, Some(ClusterKey::new("alice", "x").unwrap()));
        assert!(
            e.metrics
                .render()
                .contains("flightdeck_hints_total{outcome=\"accepted\"} 1")
        );
    }

    #[tokio::test]
    async fn hints_without_the_token_are_refused() {
        let e = endpoint();
        for token in [
            None,
            Some("wrong"),
            Some("0123456789abcdef012"),
            Some("0123456789abcdef01234"),
        ] {
            let r = hint(&e, token, "home/alice/x.cf-create").await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        }
        assert_eq!(e.queue.depth(), 0);
        assert!(
            e.metrics
                .render()
                .contains("flightdeck_hints_total{outcome=\"unauthorized\"} 4")
        );
    }

    #[tokio::test]
    async fn a_standby_answers_hints_with_503_so_the_sender_tries_the_leader() {
        let metrics = Arc::new(Metrics::new(false));
        let e = Endpoint {
            fence: Fence::elected(
                "replica-b",
                flightdeck_core::lease::Timing::default(),
                metrics.clone(),
            ),
            metrics,
            ..endpoint()
        };
        let r = hint(&e, Some(TOKEN), "home/alice/x.cf-create").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[hyper::header::RETRY_AFTER], "1");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("standby"), "{v}");
        assert_eq!(e.queue.depth(), 0, "a standby queues nothing");
        assert!(
            e.metrics
                .render()
                .contains("flightdeck_hints_total{outcome=\"standby\"} 1")
        );
        // Without the token it learns nothing about who leads.
        let r = hint(&e, None, "home/alice/x.cf-create").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn oversized_and_malformed_hints_get_their_status() {
        let e = endpoint();
        let big = format!("{{\"Records\": [], \"pad\": \"{}\"}}", "x".repeat(4096));
        let r = everything(&e, Method::POST, "/hints", Some(TOKEN), &big).await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let r = everything(&e, Method::POST, "/hints", Some(TOKEN), "{not json").await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(body(r).await.contains("not JSON"));
        let r = everything(&e, Method::POST, "/hints", Some(TOKEN), "{}").await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(body(r).await.contains("no `Records`"));
    }

    #[tokio::test]
    async fn hints_are_off_without_a_token() {
        let e = Endpoint {
            hint_token: None,
            ..endpoint()
        };
        let r = hint(&e, Some(TOKEN), "home/alice/x.cf-create").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn with_a_metrics_listener_each_listener_answers_only_its_paths() {
        let e = endpoint();
        let get = |serves, path| handle(&e, serves, request(Method::GET, path, None, ""));
        for serves in [Serves::HintsAndProbes, Serves::MetricsAndProbes] {
            assert_eq!(get(serves, "/healthz").await.status(), StatusCode::OK);
            assert_eq!(
                get(serves, "/readyz").await.status(),
                StatusCode::SERVICE_UNAVAILABLE
            );
        }
        assert_eq!(
            get(Serves::MetricsAndProbes, "/metrics").await.status(),
            StatusCode::OK
        );
        let r = get(Serves::HintsAndProbes, "/metrics").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(body(r).await.contains("http.metrics_listen"));
        let r = handle(
            &e,
            Serves::MetricsAndProbes,
            request(
                Method::POST,
                "/hints",
                Some(TOKEN),
                &s3_event("home/a/x.cf-create"),
            ),
        )
        .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(body(r).await.contains("http.listen"));
        assert_eq!(e.queue.depth(), 0);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
