//! Every metric flightdeck exports, registered in one place, and the events that move them:
//! each method logs its line and counts its counter together.
//!
//! Names are `flightdeck_<noun>_<unit>`; labels are low-cardinality, except the per-user
//! series, which exist only when the operator turns them on (`[metrics] per_user`).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use flightdeck_core::key::ClusterKey;
use flightdeck_core::report::Phase;
use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracing::{error, info, warn};

use crate::ports::{CallError, ErrorKind};

/// Every phase a `.cf-status` can show, exported even when zero.
pub const PHASES: [Phase; 7] = [
    Phase::Pending,
    Phase::Creating,
    Phase::Ready,
    Phase::Updating,
    Phase::Deleting,
    Phase::Deleted,
    Phase::Failed,
];

/// Outcomes of hint records and hint requests.
const HINT_OUTCOMES: [&str; 9] = [
    "accepted",
    "standby",
    "duplicate",
    "other_bucket",
    "outside_home",
    "not_a_request",
    "unauthorized",
    "malformed",
    "too_large",
];

/// Every rule a request can break.
const REFUSAL_REASONS: [&str; 15] = [
    "too_large",
    "not_utf8",
    "malformed",
    "not_an_object",
    "reserved_key",
    "unknown_key",
    "value_type",
    "value",
    "missing_key",
    "not_enrolled",
    "cloudformation",
    "name_taken",
    "subfolder",
    "cluster_name",
    "suffix",
];

/// How often a full listener's refusals are logged (each one is counted).
const REFUSAL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The label of a phase.
pub fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "Pending",
        Phase::Creating => "Creating",
        Phase::Ready => "Ready",
        Phase::Updating => "Updating",
        Phase::Deleting => "Deleting",
        Phase::Deleted => "Deleted",
        Phase::Failed => "Failed",
    }
}

/// The label of a call's outcome.
pub fn outcome_label(result: Result<(), &CallError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(e) => match e.kind {
            ErrorKind::Throttled => "throttled",
            ErrorKind::Transient => "transient",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Denied => "denied",
            ErrorKind::Other => "other",
        },
    }
}

/// What one full resync saw, for the gauges.
#[derive(Debug, Default)]
pub struct PassSummary {
    /// Clusters by phase.
    pub phases: BTreeMap<&'static str, i64>,
    /// Estimated dollars per hour at full scale, by phase.
    pub cost: BTreeMap<&'static str, f64>,
    /// Per user: clusters by phase, and the sum of ComputeMaxNodes.
    pub users: BTreeMap<String, (BTreeMap<&'static str, i64>, i64)>,
    /// Orphans not deleted this pass.
    pub orphans_pending: i64,
    /// Orphans the guard held back.
    pub held_back: i64,
}

/// The registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    per_user: bool,
    clusters: IntGaugeVec,
    user_clusters: IntGaugeVec,
    user_max_nodes: IntGaugeVec,
    resync_duration: Histogram,
    resyncs: IntCounterVec,
    last_resync: Gauge,
    actions: IntCounterVec,
    aws_calls: IntCounterVec,
    hints: IntCounterVec,
    refused: IntCounterVec,
    orphans_pending: IntGauge,
    held_back: IntGauge,
    expiries_held: IntGaugeVec,
    foreign_objects: IntGauge,
    guard_trips: IntCounter,
    queue_depth: IntGauge,
    queue_retries: IntCounter,
    cost: GaugeVec,
    notifications: IntCounterVec,
    http_open: IntGaugeVec,
    http_refused: IntCounterVec,
    /// Per listener: when a refusal was last logged, and how many since.
    http_refusals_warned: Mutex<BTreeMap<&'static str, (Option<Instant>, u64)>>,
    leader: IntGauge,
    leader_term: IntGauge,
    leader_changes: IntCounterVec,
    lease_writes: IntCounterVec,
    fenced: IntCounterVec,
    watched: IntGauge,
    stack_polls: IntCounterVec,
    rate_waits: IntCounterVec,
    rate_wait_seconds: CounterVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    /// Registers every metric. `per_user` turns on the per-user series.
    pub fn new(per_user: bool) -> Metrics {
        let r = Registry::new();
        let resync_duration = Histogram::with_opts(
            HistogramOpts::new(
                "flightdeck_resync_duration_seconds",
                "Duration of a full resync pass.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(resync_duration.clone()))
            .expect("unique metric");
        let last_resync = Gauge::new(
            "flightdeck_last_resync_timestamp_seconds",
            "Unix time of the last complete resync.",
        )
        .expect("valid metric");
        r.register(Box::new(last_resync.clone()))
            .expect("unique metric");
        let cost = GaugeVec::new(
            Opts::new(
                "flightdeck_estimated_cost_dollars_per_hour",
                "Estimated dollars per hour at full scale of the clusters in each phase.",
            ),
            &["phase"],
        )
        .expect("valid metric");
        r.register(Box::new(cost.clone())).expect("unique metric");
        let guard_trips = IntCounter::new(
            "flightdeck_orphan_guard_trips_total",
            "Passes in which the mass-deletion guard held orphan deletions back.",
        )
        .expect("valid metric");
        r.register(Box::new(guard_trips.clone()))
            .expect("unique metric");
        let queue_retries = IntCounter::new(
            "flightdeck_queue_retries_total",
            "Clusters requeued with backoff after an error.",
        )
        .expect("valid metric");
        r.register(Box::new(queue_retries.clone()))
            .expect("unique metric");
        let build = gauge_vec(
            &r,
            "flightdeck_build_info",
            "Build information.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let m = Metrics {
            per_user,
            clusters: gauge_vec(
                &r,
                "flightdeck_clusters",
                "Clusters by the phase of their status after the last full resync.",
                &["phase"],
            ),
            user_clusters: gauge_vec(
                &r,
                "flightdeck_user_clusters",
                "Clusters by user and phase (only with per_user).",
                &["user", "phase"],
            ),
            user_max_nodes: gauge_vec(
                &r,
                "flightdeck_user_max_nodes",
                "Sum of ComputeMaxNodes of a user's clusters (only with per_user).",
                &["user"],
            ),
            resync_duration,
            resyncs: counter_vec(
                &r,
                "flightdeck_resyncs_total",
                "Full resync passes by outcome.",
                &["outcome"],
            ),
            last_resync,
            actions: counter_vec(
                &r,
                "flightdeck_actions_total",
                "Actions carried out, by kind and outcome.",
                &["action", "outcome"],
            ),
            aws_calls: counter_vec(
                &r,
                "flightdeck_aws_calls_total",
                "AWS calls by service, operation and outcome.",
                &["service", "operation", "outcome"],
            ),
            hints: counter_vec(
                &r,
                "flightdeck_hints_total",
                "Hint records (and refused hint requests) by outcome.",
                &["outcome"],
            ),
            refused: counter_vec(
                &r,
                "flightdeck_requests_refused_total",
                "Requests refused, by the rule they broke.",
                &["reason"],
            ),
            orphans_pending: gauge(
                &r,
                "flightdeck_orphans_pending",
                "Orphaned stacks seen and not (yet) deleted.",
            ),
            held_back: gauge(
                &r,
                "flightdeck_orphan_deletions_held_back",
                "Orphans past grace the mass-deletion guard held back in the last pass.",
            ),
            expiries_held: gauge_vec(
                &r,
                "flightdeck_expiry_deletions_held_back",
                "Clusters past the end of their lifetime that the last pass did not delete, by why (clock_skew, cap).",
                &["reason"],
            ),
            foreign_objects: gauge(
                &r,
                "flightdeck_foreign_folder_objects",
                "Objects in folders under the home prefix that are not named after a user, and so not read.",
            ),
            guard_trips,
            queue_depth: gauge(
                &r,
                "flightdeck_queue_depth",
                "Clusters waiting in the work queue.",
            ),
            queue_retries,
            cost,
            notifications: counter_vec(
                &r,
                "flightdeck_notifications_total",
                "Notifications by event and outcome.",
                &["event", "outcome"],
            ),
            http_open: gauge_vec(
                &r,
                "flightdeck_http_connections_open",
                "HTTP connections open, by listener.",
                &["listener"],
            ),
            http_refused: counter_vec(
                &r,
                "flightdeck_http_connections_refused_total",
                "HTTP connections closed unread because the listener had http.max_connections open, by listener.",
                &["listener"],
            ),
            http_refusals_warned: Mutex::new(BTreeMap::new()),
            leader: gauge(
                &r,
                "flightdeck_leader",
                "1 while this replica holds the leader lease and may act; 0 while it stands by.",
            ),
            leader_term: gauge(
                &r,
                "flightdeck_leader_term",
                "The lease term this replica acts in; 0 while it stands by.",
            ),
            leader_changes: counter_vec(
                &r,
                "flightdeck_leader_changes_total",
                "Times this replica became the leader or stood down, by what it became.",
                &["to"],
            ),
            lease_writes: counter_vec(
                &r,
                "flightdeck_lease_writes_total",
                "Writes of the leader lease (create, take over, renew, release), by outcome (ok, conflict: another replica's version was there, error).",
                &["outcome"],
            ),
            fenced: counter_vec(
                &r,
                "flightdeck_fenced_calls_total",
                "Mutating calls not made (not_leader) or abandoned (cut_off) because this replica did not hold the lease with time to spare.",
                &["reason"],
            ),
            watched: gauge(
                &r,
                "flightdeck_clusters_watched",
                "Clusters waiting for their stack to change, polled every busy interval.",
            ),
            stack_polls: counter_vec(
                &r,
                "flightdeck_stack_polls_total",
                "Polls of the watched clusters' stacks (one DescribeStacks each, or one listing of every stack, whichever is fewer calls), by outcome (changed: some were queued, unchanged, error).",
                &["outcome"],
            ),
            rate_waits: counter_vec(
                &r,
                "flightdeck_aws_rate_limited_total",
                "AWS calls that waited for their service's token bucket (rate.<service>_qps and rate.<service>_burst), by service.",
                &["service"],
            ),
            rate_wait_seconds: {
                let c = CounterVec::new(
                    Opts::new(
                        "flightdeck_aws_rate_wait_seconds_total",
                        "Seconds AWS calls waited for their service's token bucket, by service.",
                    ),
                    &["service"],
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            registry: r,
        };
        for phase in PHASES {
            m.clusters.with_label_values(&[phase_label(phase)]).set(0);
            m.cost.with_label_values(&[phase_label(phase)]).set(0.0);
        }
        // Small label sets start at zero, so rate() and increase() see their first event and
        // dashboards show 0 rather than nothing.
        for outcome in ["ok", "error", "overdue"] {
            m.resyncs.with_label_values(&[outcome]);
        }
        for action in [
            "create_stack",
            "update_stack",
            "delete_stack",
            "put",
            "remove",
        ] {
            for outcome in ["ok", "error", "refused"] {
                m.actions.with_label_values(&[action, outcome]);
            }
        }
        for outcome in ["ok", "error"] {
            m.actions
                .with_label_values(&[crate::execute::TERMINATE_NODES, outcome]);
        }
        for outcome in HINT_OUTCOMES {
            m.hints.with_label_values(&[outcome]);
        }
        for reason in REFUSAL_REASONS {
            m.refused.with_label_values(&[reason]);
        }
        for event in ["ready", "failed", "deleted", "lifetime_warning"] {
            for outcome in ["sent", "error", "rate_limited", "unconfirmed"] {
                m.notifications.with_label_values(&[event, outcome]);
            }
        }
        m.expiries_held_back(0, None);
        for to in ["leader", "standby"] {
            m.leader_changes.with_label_values(&[to]);
        }
        for outcome in ["ok", "conflict", "error"] {
            m.lease_writes.with_label_values(&[outcome]);
        }
        for reason in ["not_leader", "cut_off"] {
            m.fenced.with_label_values(&[reason]);
        }
        for outcome in ["changed", "unchanged", "error"] {
            m.stack_polls.with_label_values(&[outcome]);
        }
        for service in ["s3", "cloudformation", "ec2", "sesv2"] {
            m.rate_waits.with_label_values(&[service]);
            m.rate_wait_seconds.with_label_values(&[service]);
        }
        // The main listener always exists; the metrics listener only when configured.
        m.http_open.with_label_values(&["main"]).set(0);
        m.http_refused.with_label_values(&["main"]);
        m
    }

    /// This replica now leads in `term`, or (`None`) stands by. Logged by the elector.
    pub fn leading(&self, term: Option<u64>) {
        self.leader.set(i64::from(term.is_some()));
        self.leader_term
            .set(term.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)));
    }

    /// This replica became the leader (`true`) or stood down.
    pub fn leader_changed(&self, leader: bool) {
        self.leader_changes
            .with_label_values(&[if leader { "leader" } else { "standby" }])
            .inc();
    }

    /// A write of the lease object: `ok`, `conflict` or `error`.
    pub fn lease_write(&self, outcome: &'static str) {
        self.lease_writes.with_label_values(&[outcome]).inc();
    }

    /// A mutating call not made (`not_leader`) or abandoned (`cut_off`).
    pub fn fenced(&self, reason: &'static str) {
        self.fenced.with_label_values(&[reason]).inc();
    }

    /// The exposition text for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            warn!(error = %e, "could not encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// A full resync completed.
    pub fn resync_done(&self, seconds: f64, summary: &PassSummary) {
        self.resync_duration.observe(seconds);
        self.resyncs.with_label_values(&["ok"]).inc();
        self.last_resync.set(now_seconds());
        for phase in PHASES {
            let label = phase_label(phase);
            self.clusters
                .with_label_values(&[label])
                .set(summary.phases.get(label).copied().unwrap_or(0));
            self.cost
                .with_label_values(&[label])
                .set(summary.cost.get(label).copied().unwrap_or(0.0));
        }
        if self.per_user {
            self.user_clusters.reset();
            self.user_max_nodes.reset();
            for (user, (phases, nodes)) in &summary.users {
                for (phase, n) in phases {
                    self.user_clusters
                        .with_label_values(&[user.as_str(), phase])
                        .set(*n);
                }
                self.user_max_nodes.with_label_values(&[user]).set(*nodes);
            }
        }
        self.orphans_pending.set(summary.orphans_pending);
        self.held_back.set(summary.held_back);
        if summary.held_back > 0 {
            self.guard_trips.inc();
        }
    }

    /// This replica stood down: what its last pass saw is the new leader's to say, so the
    /// gauges of the pass go back to zero (dashboards sum them over replicas).
    pub fn stood_down(&self) {
        for phase in PHASES {
            self.clusters
                .with_label_values(&[phase_label(phase)])
                .set(0);
            self.cost.with_label_values(&[phase_label(phase)]).set(0.0);
        }
        self.user_clusters.reset();
        self.user_max_nodes.reset();
        self.orphans_pending.set(0);
        self.held_back.set(0);
        self.expiries_held_back(0, None);
        self.foreign_objects.set(0);
        self.queue_depth.set(0);
        self.watched.set(0);
    }

    /// A full resync could not list.
    pub fn resync_failed(&self, error: &CallError) {
        error!(%error, "resync failed: nothing was planned; trying again next interval");
        self.resyncs.with_label_values(&["error"]).inc();
    }

    /// Whether the per-user series are on.
    /// Objects in home folders that are no user's.
    pub fn foreign_objects(&self, count: i64) {
        self.foreign_objects.set(count);
    }

    /// How many clusters past their end the last pass held back, and why (`None`: none).
    pub fn expiries_held_back(&self, count: i64, reason: Option<&'static str>) {
        for r in ["clock_skew", "cap"] {
            self.expiries_held
                .with_label_values(&[r])
                .set(if Some(r) == reason { count } else { 0 });
        }
    }

    /// A full resync ran past its deadline and was stopped.
    pub fn resync_overdue(&self, deadline: std::time::Duration) {
        error!(
            deadline_s = deadline.as_secs(),
            "resync overdue: stopped at its deadline; the clusters it had not reached are looked at next pass (look for slow or failing AWS calls)"
        );
        self.resyncs.with_label_values(&["overdue"]).inc();
    }

    pub fn per_user(&self) -> bool {
        self.per_user
    }

    /// An action was carried out (or failed, or was refused by a call).
    pub fn action(&self, action: &'static str, outcome: &'static str) {
        self.actions.with_label_values(&[action, outcome]).inc();
    }

    /// An AWS call ended.
    pub fn aws_call(
        &self,
        service: &'static str,
        operation: &'static str,
        result: Result<(), &CallError>,
    ) {
        let outcome = outcome_label(result);
        if outcome == "throttled" {
            warn!(
                service,
                operation, "AWS throttled a call after the SDK's retries"
            );
        }
        self.aws_calls
            .with_label_values(&[service, operation, outcome])
            .inc();
    }

    /// A hint record (or a whole hint request) had this outcome.
    pub fn hint(&self, outcome: &'static str) {
        self.hints.with_label_values(&[outcome]).inc();
    }

    /// A request was refused, for the first time for its content.
    pub fn refused(&self, key: &ClusterKey, reason: &'static str, message: &str) {
        info!(user = %key.user, cluster = %key.cluster, reason, message, "request refused");
        self.refused.with_label_values(&[reason]).inc();
    }

    /// A mistaken request file was explained to its user.
    pub fn mistake(&self, object: &str, reason: &'static str) {
        info!(
            object,
            reason, "request file not read: explained next to it"
        );
        self.refused.with_label_values(&[reason]).inc();
    }

    /// The watched clusters' stacks were polled: `watched` are left waiting, and
    /// `changed` were queued to be looked at.
    pub fn stacks_polled(&self, watched: usize, changed: usize) {
        self.watched.set(i64::try_from(watched).unwrap_or(i64::MAX));
        let outcome = if changed > 0 { "changed" } else { "unchanged" };
        self.stack_polls.with_label_values(&[outcome]).inc();
    }

    /// Listing the stacks for the watched clusters failed.
    pub fn stack_poll_failed(&self) {
        self.stack_polls.with_label_values(&["error"]).inc();
    }

    /// How many clusters are watched.
    pub fn watched(&self, watched: usize) {
        self.watched.set(i64::try_from(watched).unwrap_or(i64::MAX));
    }

    /// A call to `service` waited `wait` for a token.
    pub fn rate_limited(&self, service: &str, wait: Duration) {
        self.rate_waits.with_label_values(&[service]).inc();
        self.rate_wait_seconds
            .with_label_values(&[service])
            .inc_by(wait.as_secs_f64());
    }

    /// The work queue's depth.
    pub fn queue_depth(&self, depth: usize) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// A cluster was requeued with backoff.
    pub fn queue_retry(&self) {
        self.queue_retries.inc();
    }

    /// A listener started: its series start at zero.
    pub fn http_listening(&self, listener: &'static str) {
        self.http_open.with_label_values(&[listener]).set(0);
        self.http_refused.with_label_values(&[listener]);
    }

    /// A listener took a connection in.
    pub fn http_connection_opened(&self, listener: &'static str) {
        self.http_open.with_label_values(&[listener]).inc();
    }

    /// A connection a listener took in is closed.
    pub fn http_connection_closed(&self, listener: &'static str) {
        self.http_open.with_label_values(&[listener]).dec();
    }

    /// A listener was full and closed a new connection unread. The warning is logged at
    /// most once a minute per listener, with the number refused since the last one.
    pub fn http_connection_refused(&self, listener: &'static str, max_connections: usize) {
        self.http_refused.with_label_values(&[listener]).inc();
        let mut warned = self
            .http_refusals_warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (last, refused) = warned.entry(listener).or_insert((None, 0));
        *refused += 1;
        if last.is_none_or(|t: Instant| t.elapsed() >= REFUSAL_WARNING_EVERY) {
            warn!(
                listener,
                max_connections,
                refused = *refused,
                "HTTP listener full: new connections are closed unread (http.max_connections)"
            );
            *last = Some(Instant::now());
            *refused = 0;
        }
    }

    /// A notification was sent, or could not be.
    pub fn notification(&self, event: &'static str, outcome: &'static str) {
        self.notifications
            .with_label_values(&[event, outcome])
            .inc();
    }
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_is_exported_from_the_start() {
        let text = Metrics::new(false).render();
        for phase in PHASES {
            assert!(
                text.contains(&format!(
                    "flightdeck_clusters{{phase=\"{}\"}} 0",
                    phase_label(phase)
                )),
                "{text}"
            );
        }
        assert!(text.contains("flightdeck_build_info{version="));
        assert!(text.contains("flightdeck_requests_refused_total{reason=\"not_enrolled\"} 0"));
        assert!(
            text.contains("flightdeck_actions_total{action=\"create_stack\",outcome=\"error\"} 0")
        );
        assert!(text.contains("flightdeck_last_resync_timestamp_seconds 0"));
    }

    #[test]
    fn per_user_series_appear_only_when_turned_on() {
        let summary = PassSummary {
            users: BTreeMap::from([("alice".to_string(), (BTreeMap::from([("Ready", 2)]), 50))]),
            ..PassSummary::default()
        };
        let off = Metrics::new(false);
        off.resync_done(0.1, &summary);
        assert!(!off.render().contains("flightdeck_user_clusters{"));
        let on = Metrics::new(true);
        on.resync_done(0.1, &summary);
        let text = on.render();
        assert!(
            text.contains("flightdeck_user_clusters{phase=\"Ready\",user=\"alice\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("flightdeck_user_max_nodes{user=\"alice\"} 50"),
            "{text}"
        );
    }

    #[test]
    fn a_tripped_guard_is_counted_once_per_pass() {
        let m = Metrics::new(false);
        let tripped = PassSummary {
            held_back: 6,
            orphans_pending: 6,
            ..PassSummary::default()
        };
        m.resync_done(0.1, &tripped);
        m.resync_done(0.1, &tripped);
        let text = m.render();
        assert!(
            text.contains("flightdeck_orphan_guard_trips_total 2"),
            "{text}"
        );
        assert!(
            text.contains("flightdeck_orphan_deletions_held_back 6"),
            "{text}"
        );
    }

    #[test]
    fn a_replica_that_stands_down_stops_reporting_its_last_pass() {
        let m = Metrics::new(true);
        let summary = PassSummary {
            phases: BTreeMap::from([("Ready", 3)]),
            users: BTreeMap::from([("alice".to_string(), (BTreeMap::from([("Ready", 3)]), 75))]),
            orphans_pending: 2,
            ..PassSummary::default()
        };
        m.resync_done(0.1, &summary);
        m.leading(Some(4));
        assert!(
            m.render()
                .contains("flightdeck_clusters{phase=\"Ready\"} 3")
        );
        m.leading(None);
        m.stood_down();
        let text = m.render();
        for gone in [
            "flightdeck_clusters{phase=\"Ready\"} 0",
            "flightdeck_orphans_pending 0",
            "flightdeck_leader 0",
            "flightdeck_leader_term 0",
        ] {
            assert!(text.contains(gone), "{gone} in {text}");
        }
        assert!(!text.contains("flightdeck_user_clusters{"), "{text}");
    }
}
