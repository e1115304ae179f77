//! The audit ledger: every stack action and every refusal, one JSON line each, under the
//! controller's own prefix (`<controller_prefix>ledger/<date>/…jsonl`), which the user IAM
//! policy does not grant. Each line is written as a new object that may not overwrite
//! another (`If-None-Match: *`), so the ledger is never rewritten. A stack action is written
//! ahead (`started`) and is not made unless that line is in S3; its outcome is written
//! right after it: a crash loses no action from the ledger.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use flightdeck_core::key::{ClusterKey, Suffix};
use flightdeck_core::report::rfc3339;
use serde_json::json;
use tracing::warn;

use crate::ports::{Instances, Mailer, ObjectStore, StackService};
use crate::reconcile::Reconciler;

impl<S, C, E, M> Reconciler<S, C, E, M>
where
    S: ObjectStore,
    C: StackService,
    E: Instances,
    M: Mailer,
{
    /// Adds a line: what was done (or refused) to which cluster, and how it went.
    pub(crate) fn audit(&self, key: &ClusterKey, action: &str, outcome: &str, message: &str) {
        let object = key.object_key(&self.settings.home_prefix, Suffix::Create);
        let etag = self.request_etag(&object);
        let line = json!({
            "time": rfc3339(now().0),
            "user": key.user,
            "cluster": key.cluster,
            "action": action,
            "request_etag": etag,
            "outcome": outcome,
            "message": message,
        });
        self.lock_ledger().push(line.to_string());
    }

    /// Writes the lines gathered so far as a new ledger object; returns whether every line
    /// is written. On failure they are kept for the next flush.
    pub(crate) async fn flush_ledger(&self) -> bool {
        let lines = std::mem::take(&mut *self.lock_ledger());
        if lines.is_empty() {
            return true;
        }
        let (secs, millis) = now();
        let seq = self.ledger_seq.fetch_add(1, Ordering::SeqCst);
        let key = format!(
            "{}ledger/{}/{millis}-{}-{seq}.jsonl",
            self.settings.controller_prefix,
            &rfc3339(secs)[..10],
            self.settings.identity.owner().replace('/', "_"),
        );
        let body = lines.iter().fold(String::new(), |mut b, l| {
            b.push_str(l);
            b.push('\n');
            b
        });
        if let Err(e) = self.cloud.store.put_new(&key, &body).await {
            warn!(error = %e, lines = lines.len(), "could not write the audit ledger; keeping its lines for the next try");
            let mut pending = self.lock_ledger();
            let later = std::mem::take(&mut *pending);
            *pending = lines;
            pending.extend(later);
            return false;
        }
        true
    }

    fn lock_ledger(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Now: seconds and milliseconds since the epoch.
fn now() -> (i64, u128) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        d.as_millis(),
    )
}
