//! Hints: S3 event notifications, reduced to the clusters they name.
//!
//! A hint only makes flightdeck look sooner. Its content is never trusted beyond the object
//! key: the bucket must be ours, the key must be a request file under the home prefix, and
//! the cluster is then read afresh from S3 and CloudFormation.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::key::{ClusterKey, KeyKind, classify};

/// What became of one record of a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordOutcome {
    /// Names a cluster: it is looked at now.
    Accepted,
    /// Names a cluster another record of the same hint named already.
    Duplicate,
    /// For another bucket.
    OtherBucket,
    /// Outside the home prefix.
    OutsideHome,
    /// Under the home prefix, but not a request or delete file.
    NotARequest,
}

impl RecordOutcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RecordOutcome::Accepted => "accepted",
            RecordOutcome::Duplicate => "duplicate",
            RecordOutcome::OtherBucket => "other_bucket",
            RecordOutcome::OutsideHome => "outside_home",
            RecordOutcome::NotARequest => "not_a_request",
        }
    }
}

/// A hint's body that is not an S3 event notification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HintError {
    /// Not JSON.
    #[error("the body is not JSON: {0}")]
    Json(String),
    /// JSON without `Records`, or records of the wrong shape.
    #[error("not an S3 event notification: {0}")]
    Shape(&'static str),
}

/// The clusters a hint names, and what became of each record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hint {
    /// Clusters to look at, each once.
    pub keys: BTreeSet<ClusterKey>,
    /// One outcome per record.
    pub outcomes: Vec<RecordOutcome>,
}

/// Reads an S3 event notification as S3 delivers it to Lambda or SQS, or wrapped in SNS
/// (`Records[].Sns.Message`) or SQS (`Records[].body`). An `s3:TestEvent` (no records) names
/// nothing.
///
/// # Errors
/// [`HintError`] when the body is not such a notification.
pub fn parse_hint(body: &[u8], bucket: &str, home_prefix: &str) -> Result<Hint, HintError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| HintError::Json(e.to_string()))?;
    let mut hint = Hint::default();
    collect(&value, bucket, home_prefix, &mut hint, 0)?;
    Ok(hint)
}

fn collect(
    value: &Value,
    bucket: &str,
    home: &str,
    hint: &mut Hint,
    depth: u8,
) -> Result<(), HintError> {
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(());
    }
    let records = match value.get("Records") {
        Some(Value::Array(r)) => r,
        Some(_) => return Err(HintError::Shape("`Records` is not a list")),
        None => return Err(HintError::Shape("no `Records`")),
    };
    for record in records {
        let wrapped = record
            .get("Sns")
            .and_then(|s| s.get("Message"))
            .or_else(|| record.get("body"))
            .and_then(Value::as_str);
        if let Some(inner) = wrapped {
            if depth >= 2 {
                return Err(HintError::Shape("wrapped too deeply"));
            }
            let inner: Value =
                serde_json::from_str(inner).map_err(|e| HintError::Json(e.to_string()))?;
            collect(&inner, bucket, home, hint, depth + 1)?;
            continue;
        }
        let s3 = record
            .get("s3")
            .ok_or(HintError::Shape("a record has no `s3`"))?;
        let record_bucket = s3
            .get("bucket")
            .and_then(|b| b.get("name"))
            .and_then(Value::as_str)
            .ok_or(HintError::Shape("a record has no `s3.bucket.name`"))?;
        let raw_key = s3
            .get("object")
            .and_then(|o| o.get("key"))
            .and_then(Value::as_str)
            .ok_or(HintError::Shape("a record has no `s3.object.key`"))?;
        let outcome = if record_bucket != bucket {
            RecordOutcome::OtherBucket
        } else {
            match decode_key(raw_key) {
                Some(key) if key.starts_with(home) => match classify(home, &key) {
                    KeyKind::Cluster { key, suffix } if suffix.is_user_written() => {
                        if hint.keys.insert(key) {
                            RecordOutcome::Accepted
                        } else {
                            RecordOutcome::Duplicate
                        }
                    }
                    _ => RecordOutcome::NotARequest,
                },
                Some(_) => RecordOutcome::OutsideHome,
                None => RecordOutcome::NotARequest,
            }
        };
        hint.outcomes.push(outcome);
    }
    Ok(())
}

/// S3 event keys are URL-encoded with `+` for a space. `None` when the result is not UTF-8
/// or an escape is malformed.
pub fn decode_key(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(records: &[(&str, &str)]) -> String {
        let records: Vec<Value> = records
            .iter()
            .map(|(bucket, key)| {
                serde_json::json!({
                    "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                    "s3": { "bucket": { "name": bucket }, "object": { "key": key, "size": 12 } }
                })
            })
            .collect();
        serde_json::json!({ "Records": records }).to_string()
    }

    fn key(user: &str, cluster: &str) -> ClusterKey {
        ClusterKey::new(user, cluster).unwrap()
    }

    #[test]
    fn records_name_clusters_and_only_ours_count() {
        let body = event(&[
            ("users", "home/alice/x.cf-create"),
            ("users", "home/alice/x.cf-create"),
            ("users", "home/bob/y.cf-delete"),
            ("other", "home/alice/z.cf-create"),
            ("users", "flightdeck/state"),
            ("users", "home/alice/notes.txt"),
            ("users", "home/alice/x.cf-status"),
            ("users", "home/alice/x.cf-created"),
        ]);
        let hint = parse_hint(body.as_bytes(), "users", "home/").unwrap();
        assert_eq!(hint.keys, [key("alice", "x"), key("bob", "y")].into());
        assert_eq!(
            hint.outcomes,
            [
                RecordOutcome::Accepted,
                RecordOutcome::Duplicate,
                RecordOutcome::Accepted,
                RecordOutcome::OtherBucket,
                RecordOutcome::OutsideHome,
                RecordOutcome::NotARequest,
                RecordOutcome::NotARequest,
                RecordOutcome::NotARequest,
            ]
        );
    }

    #[test]
    fn keys_are_url_decoded_with_plus_for_space() {
        assert_eq!(
            decode_key("home/jean%40uni/x.cf-create").unwrap(),
            "home/jean@uni/x.cf-create"
        );
        assert_eq!(decode_key("a+b%2Bc").unwrap(), "a b+c");
        assert_eq!(decode_key("bad%zz"), None);
        assert_eq!(decode_key("cut%4"), None);
        assert_eq!(decode_key("%ff"), None);
        let hint = parse_hint(
            event(&[("users", "home/jean%40uni/x.cf-create")]).as_bytes(),
            "users",
            "home/",
        )
        .unwrap();
        assert_eq!(hint.keys, [key("jean@uni", "x")].into());
    }

    #[test]
    fn sns_and_sqs_wrapped_events_are_unwrapped() {
        let inner = event(&[("users", "home/alice/x.cf-create")]);
        let sns = serde_json::json!({ "Records": [ { "EventSource": "aws:sns", "Sns": { "Message": inner } } ] });
        let sqs = serde_json::json!({ "Records": [ { "eventSource": "aws:sqs", "body": inner } ] });
        for body in [sns, sqs] {
            let hint = parse_hint(body.to_string().as_bytes(), "users", "home/").unwrap();
            assert_eq!(hint.keys, [key("alice", "x")].into());
        }
    }

    #[test]
    fn test_events_name_nothing_and_garbage_is_refused() {
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"users"}"#;
        assert_eq!(
            parse_hint(test.as_bytes(), "users", "home/").unwrap(),
            Hint::default()
        );
        assert!(matches!(
            parse_hint(b"{not json", "users", "home/"),
            Err(HintError::Json(_))
        ));
        assert_eq!(
            parse_hint(b"{}", "users", "home/"),
            Err(HintError::Shape("no `Records`"))
        );
        assert_eq!(
            parse_hint(br#"{"Records":[{"s3":{}}]}"#, "users", "home/"),
            Err(HintError::Shape("a record has no `s3.bucket.name`"))
        );
    }
}
