//! What flightdeck writes back to users: the markers' contents and the `.cf-status` JSON.

use serde::{Deserialize, Serialize};

use crate::key::ClusterKey;

/// Version of the `.cf-status` schema. Bumped on any incompatible change.
pub const STATUS_VERSION: u32 = 1;

/// The phase a user sees in `.cf-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Accepted, nothing done yet.
    Pending,
    /// The stack is being created.
    Creating,
    /// The cluster is running; `.cf-created` has its login address.
    Ready,
    /// The stack is being updated.
    Updating,
    /// The stack is being deleted.
    Deleting,
    /// Nothing is running any more.
    Deleted,
    /// The request was refused or the stack failed; `.cf-failed` says why.
    Failed,
}

/// The `.cf-status` document: the machine-readable view of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Schema version, [`STATUS_VERSION`].
    pub version: u32,
    /// Whose cluster.
    pub user: String,
    /// Which cluster.
    pub cluster: String,
    /// Where it stands.
    pub phase: Phase,
    /// One line for a person.
    pub message: String,
    /// The stack's name, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// The stack's id, once CloudFormation has given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<String>,
    /// The login address, when ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_ip: Option<String>,
    /// The ETag of the `.cf-create` this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_etag: Option<String>,
    /// The stack's outputs.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub outputs: std::collections::BTreeMap<String, String>,
    /// When the cluster's lifetime ends (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_end: Option<String>,
    /// When the stack last changed state (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

impl ClusterStatus {
    /// A status for `key` in `phase`.
    pub fn new(key: &ClusterKey, phase: Phase, message: impl Into<String>) -> Self {
        ClusterStatus {
            version: STATUS_VERSION,
            user: key.user.clone(),
            cluster: key.cluster.clone(),
            phase,
            message: message.into(),
            stack: None,
            stack_id: None,
            login_ip: None,
            request_etag: None,
            outputs: std::collections::BTreeMap::new(),
            lifetime_end: None,
            since: None,
        }
    }

    /// The document as written to `.cf-status`: pretty JSON with a final newline; the same
    /// status always gives the same bytes, so an unchanged status is never rewritten.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Seconds since the epoch as RFC 3339 in UTC, e.g. `2026-12-01T11:07:22Z`.
pub fn rfc3339(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `.cf-created`: the first line is the login address (what scripts of the older design
/// read); then how to log in.
pub fn created_body(key: &ClusterKey, ip: &str, stack: &str) -> String {
    format!(
        "{ip}\nssh {user}@{ip}\ncluster {cluster} is ready (stack {stack})\n",
        user = key.user,
        cluster = key.cluster
    )
}

/// `.cf-deleted`.
pub fn deleted_body(key: &ClusterKey) -> String {
    format!(
        "cluster {} is deleted; write {}.cf-create again to start a new one\n",
        key.cluster, key.cluster
    )
}

/// `.cf-failed`: the reason, then what the user can do.
pub fn failed_body(reason: &str, advice: &str) -> String {
    if advice.is_empty() {
        format!("{reason}\n")
    } else {
        format!("{reason}\n{advice}\n")
    }
}

/// The email for a notice: subject and plain-text body.
pub fn notice_email(notice: &crate::plan::Notice) -> (String, String) {
    use crate::plan::NoticeEvent;
    let key = &notice.key;
    let (what, body) = match notice.event {
        NoticeEvent::Ready => (
            "is ready",
            format!(
                "The cluster {cluster} of {user} is ready.\n\nLog in with:\n    ssh {user}@{ip}\n",
                cluster = key.cluster,
                user = key.user,
                ip = notice.detail
            ),
        ),
        NoticeEvent::Failed => (
            "failed",
            format!(
                "The cluster {} of {} failed:\n    {}\n",
                key.cluster, key.user, notice.detail
            ),
        ),
        NoticeEvent::Deleted => (
            "is deleted",
            format!("The cluster {} of {} is deleted.\n", key.cluster, key.user),
        ),
        NoticeEvent::LifetimeWarning => (
            "will be deleted soon",
            format!(
                "The lifetime of cluster {cluster} of {user} ends at {end}; it will then be deleted.\nTo keep it longer, raise \"Lifetime\" in {cluster}.cf-create (within your limit).\n",
                cluster = key.cluster,
                user = key.user,
                end = notice.detail
            ),
        ),
    };
    let subject = format!(
        "[flightdeck] cluster {} of {} {what}",
        key.cluster, key.user
    );
    let body = format!("{body}\nStack: {}\n", notice.stack);
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_email_gives_the_ssh_line() {
        let notice = crate::plan::Notice {
            id: "n1".into(),
            event: crate::plan::NoticeEvent::Ready,
            key: ClusterKey::new("alice", "x").unwrap(),
            stack: "fd-alice-x".into(),
            detail: "203.0.113.7".into(),
        };
        let (subject, body) = notice_email(&notice);
        assert_eq!(subject, "[flightdeck] cluster x of alice is ready");
        assert!(body.contains("ssh alice@203.0.113.7"), "{body}");
        assert!(body.contains("fd-alice-x"), "{body}");
    }

    #[test]
    fn status_json_is_stable_and_omits_unknowns() {
        let key = ClusterKey::new("alice", "x").unwrap();
        let s = ClusterStatus::new(&key, Phase::Creating, "creating");
        let json = s.to_json();
        assert_eq!(json, s.clone().to_json());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["phase"], "Creating");
        assert!(v.get("login_ip").is_none());
        let back: ClusterStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn created_marker_starts_with_the_login_address() {
        let key = ClusterKey::new("alice", "x").unwrap();
        let body = created_body(&key, "203.0.113.7", "fd-alice-x");
        assert_eq!(body.lines().next(), Some("203.0.113.7"));
        assert!(body.contains("ssh alice@203.0.113.7"));
    }
}
