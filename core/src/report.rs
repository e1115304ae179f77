//! What flightdeck writes back to users: the markers' contents and the `.cf-status` JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

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
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
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
            outputs: BTreeMap::new(),
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
    Rfc3339(epoch).to_string()
}

/// Seconds since the epoch, shown as RFC 3339 in UTC: [`rfc3339`] without the string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rfc3339(pub(crate) i64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(86_400);
        let secs = self.0.rem_euclid(86_400);
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
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        )
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The one line for a person in a status, kept as its parts until it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    /// Text as it is.
    Text(std::borrow::Cow<'a, str>),
    /// `ready: ssh <user>@<ip>`.
    Ready {
        /// Who logs in.
        user: &'a str,
        /// Where.
        ip: &'a str,
    },
}

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Text(text) => f.write_str(text),
            Message::Ready { user, ip } => write!(f, "ready: ssh {user}@{ip}"),
        }
    }
}

impl Serialize for Message<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'a> From<&'a str> for Message<'a> {
    fn from(text: &'a str) -> Self {
        Message::Text(text.into())
    }
}

impl From<String> for Message<'_> {
    fn from(text: String) -> Self {
        Message::Text(text.into())
    }
}

/// A [`ClusterStatus`] that borrows what it shows from the observation: the plan of a
/// settled cluster renders it only to hash it and find the status already written, so it
/// copies nothing. Same fields, same order, same bytes as [`ClusterStatus::to_json`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct StatusDoc<'a> {
    /// [`STATUS_VERSION`].
    pub(crate) version: u32,
    /// Whose cluster.
    pub(crate) user: &'a str,
    /// Which cluster.
    pub(crate) cluster: &'a str,
    /// Where it stands.
    pub(crate) phase: Phase,
    /// One line for a person.
    pub(crate) message: Message<'a>,
    /// The stack's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stack: Option<std::borrow::Cow<'a, str>>,
    /// The stack's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stack_id: Option<&'a str>,
    /// The login address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) login_ip: Option<&'a str>,
    /// The request's ETag, unquoted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_etag: Option<&'a str>,
    /// The stack's outputs.
    #[serde(skip_serializing_if = "no_outputs")]
    pub(crate) outputs: Option<&'a BTreeMap<String, String>>,
    /// When the cluster's lifetime ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) lifetime_end: Option<Rfc3339>,
    /// When the stack last changed state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) since: Option<Rfc3339>,
}

/// Whether a status has no outputs to show (serde's `skip_serializing_if` passes the field
/// by reference).
fn no_outputs(outputs: &Option<&BTreeMap<String, String>>) -> bool {
    outputs.is_none_or(|o| o.is_empty())
}

impl<'a> StatusDoc<'a> {
    /// A status for `key` in `phase`, with nothing else known.
    pub(crate) fn new(key: &'a ClusterKey, phase: Phase, message: impl Into<Message<'a>>) -> Self {
        StatusDoc {
            version: STATUS_VERSION,
            user: &key.user,
            cluster: &key.cluster,
            phase,
            message: message.into(),
            stack: None,
            stack_id: None,
            login_ip: None,
            request_etag: None,
            outputs: None,
            lifetime_end: None,
            since: None,
        }
    }

    /// Writes the document as [`ClusterStatus::to_json`] does.
    pub(crate) fn write_json(&self, out: impl std::io::Write) -> std::io::Result<()> {
        let mut out = out;
        serde_json::to_writer_pretty(&mut out, self)?;
        out.write_all(b"\n")
    }

    /// The document as [`ClusterStatus::to_json`] gives it.
    pub(crate) fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(512);
        // Writing to memory fails only on a map with keys that are no strings: none here.
        let _ = self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `.cf-created`: the first line is the login address (what scripts of the older design
/// read); then how to log in.
pub fn created_body(key: &ClusterKey, ip: &str, stack: &str) -> String {
    let mut body = String::new();
    // Writing to a string cannot fail.
    let _ = write_created_body(&mut body, key, ip, stack);
    body
}

/// Writes [`created_body`] to `out`.
pub(crate) fn write_created_body(
    out: &mut impl fmt::Write,
    key: &ClusterKey,
    ip: &str,
    stack: &str,
) -> fmt::Result {
    write!(
        out,
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
    fn a_borrowed_status_writes_the_same_bytes_as_the_status_it_stands_for() {
        let key = ClusterKey::new("jean.luc@uni", "x-1").unwrap();
        let outputs = BTreeMap::from([
            ("LoginIp".to_owned(), "203.0.113.7".to_owned()),
            ("Note".to_owned(), "a \"quoted\"\tline\n".to_owned()),
        ]);
        let mut doc = StatusDoc::new(
            &key,
            Phase::Ready,
            Message::Ready {
                user: &key.user,
                ip: "203.0.113.7",
            },
        );
        doc.stack = Some("fd-jeanluc--0123456789-x-1".into());
        doc.stack_id = Some("arn:aws:cloudformation:eu-west-2:1:stack/fd/1");
        doc.login_ip = Some("203.0.113.7");
        doc.request_etag = Some("e1");
        doc.outputs = Some(&outputs);
        doc.lifetime_end = Some(Rfc3339(1_796_000_000));
        doc.since = Some(Rfc3339(951_782_400));
        let mut status =
            ClusterStatus::new(&key, Phase::Ready, "ready: ssh jean.luc@uni@203.0.113.7");
        status.stack = doc.stack.as_deref().map(str::to_owned);
        status.stack_id = doc.stack_id.map(str::to_owned);
        status.login_ip = Some("203.0.113.7".into());
        status.request_etag = Some("e1".into());
        status.outputs = outputs.clone();
        status.lifetime_end = Some(rfc3339(1_796_000_000));
        status.since = Some(rfc3339(951_782_400));
        assert_eq!(doc.to_json(), status.to_json());

        let empty = BTreeMap::new();
        let mut bare = StatusDoc::new(&key, Phase::Failed, String::from("`a\\b` is \"wrong\""));
        let bare_status = ClusterStatus::new(&key, Phase::Failed, "`a\\b` is \"wrong\"");
        assert_eq!(bare.to_json(), bare_status.to_json());
        bare.outputs = Some(&empty);
        assert_eq!(
            bare.to_json(),
            bare_status.to_json(),
            "no outputs are left out, as in the owned status"
        );
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
