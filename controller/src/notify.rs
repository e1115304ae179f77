//! Notifications, delivered at most once per notice id (the same event of the same request)
//! and retried until they go out, across restarts and changes of leader.
//!
//! Under the controller's own prefix: `outbox/<id>.json` holds a notice not yet sent (written
//! before the send, removed after), `notified/<id>` claims it. The claim is written with
//! `If-None-Match: *` before the email is sent, so of two replicas (or a leader and its
//! successor) only one can send it; a send that fails gives the claim back for a retry, and
//! one that succeeds marks its claim `sent`. A replica killed between its claim and its
//! send leaves a notice that is never sent: at most once, not at least once; the next
//! leader that meets it logs it and counts it (`outcome="unconfirmed"`). The records are read when a replica starts leading; the
//! outbox is looked at on the first full resync and after a send failed, so a quiet pass
//! costs no extra call.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use flightdeck_core::key::ClusterKey;
use flightdeck_core::plan::{Notice, NoticeEvent};
use flightdeck_core::report::notice_email;
use serde_json::json;
use tracing::{info, warn};

use crate::ports::{CallError, ErrorKind, Instances, Mailer, ObjectStore, StackService};
use crate::reconcile::Reconciler;

/// What a claim holds once its notice went out (empty until then).
const SENT: &[u8] = b"sent";

/// How long a record of a sent notice is kept (90 days).
const RECORDS_KEPT_SECS: i64 = 90 * 24 * 3600;

fn event_label(event: NoticeEvent) -> &'static str {
    match event {
        NoticeEvent::Ready => "ready",
        NoticeEvent::Failed => "failed",
        NoticeEvent::Deleted => "deleted",
        NoticeEvent::LifetimeWarning => "lifetime_warning",
    }
}

fn event_of(label: &str) -> Option<NoticeEvent> {
    match label {
        "ready" => Some(NoticeEvent::Ready),
        "failed" => Some(NoticeEvent::Failed),
        "deleted" => Some(NoticeEvent::Deleted),
        "lifetime_warning" => Some(NoticeEvent::LifetimeWarning),
        _ => None,
    }
}

impl<S, C, E, M> Reconciler<S, C, E, M>
where
    S: ObjectStore,
    C: StackService,
    E: Instances,
    M: Mailer,
{
    fn outbox_prefix(&self) -> String {
        format!("{}outbox/", self.settings.controller_prefix)
    }

    fn notified_prefix(&self) -> String {
        format!("{}notified/", self.settings.controller_prefix)
    }

    /// Reads which notices went out before this process started (or this replica started
    /// leading), and which stacks were being deleted ([`Reconciler::recall_deletions`]).
    ///
    /// # Errors
    /// The listing that failed.
    pub async fn load_delivered(&self) -> Result<usize, CallError> {
        if self.settings.notify.is_none() {
            return Ok(0);
        }
        let prefix = self.notified_prefix();
        let records = self.cloud.store.list(&prefix).await?;
        // Measured against the newest record, in S3's own time: no local clock involved.
        let oldest = records.iter().map(|r| r.modified).max().unwrap_or(0) - RECORDS_KEPT_SECS;
        let mut ids = BTreeSet::new();
        for record in records {
            if record.modified < oldest {
                // Ids come from stacks and their events: a record this old can no longer
                // meet its notice again. Dropping it keeps the records from growing.
                if let Err(e) = self.cloud.store.delete(&record.key).await {
                    warn!(error = %e, object = %record.key, "could not remove an old notice record");
                }
                continue;
            }
            if let Some(id) = record.key.strip_prefix(&prefix) {
                ids.insert(id.to_owned());
            }
        }
        let n = ids.len();
        self.lock_delivered().extend(ids);
        self.recall_deletions().await?;
        Ok(n)
    }

    /// Delivers a notice unless it went out already; a failure is counted, logged and left
    /// in the outbox for the next resync. Never blocks reconciliation.
    pub(crate) async fn deliver(&self, notice: &Notice) {
        if self.settings.notify.is_none() || self.lock_delivered().contains(&notice.id) {
            return;
        }
        let record = json!({
            "id": notice.id,
            "event": event_label(notice.event),
            "user": notice.key.user,
            "cluster": notice.key.cluster,
            "stack": notice.stack,
            "detail": notice.detail,
        });
        let outbox = format!("{}{}.json", self.outbox_prefix(), notice.id);
        if let Err(e) = self.cloud.store.put(&outbox, &format!("{record}\n")).await {
            warn!(error = %e, "could not record a notice in the outbox; sending it anyway");
        }
        self.send(notice, &outbox).await;
    }

    async fn send(&self, notice: &Notice, outbox: &str) {
        let (Some(mailer), Some(notify)) = (&self.cloud.mailer, &self.settings.notify) else {
            return;
        };
        let event = event_label(notice.event);
        if !self.take_notice_token(&notice.key.user) {
            // Left in the outbox: it goes out once the user's budget allows.
            self.metrics.notification(event, "rate_limited");
            self.outbox_pending.store(true, Ordering::SeqCst);
            return;
        }
        let record = format!("{}{}", self.notified_prefix(), notice.id);
        match self.cloud.store.put_new(&record, "").await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::AlreadyExists => {
                // Claimed before: sent, or its sender stopped between claim and send.
                self.lock_delivered().insert(notice.id.clone());
                self.settle_claimed(notice, outbox).await;
                return;
            }
            Err(e) => {
                warn!(user = %notice.key.user, cluster = %notice.key.cluster, event, error = %e, "notification not claimed, so not sent; will retry");
                self.metrics.notification(event, "error");
                self.outbox_pending.store(true, Ordering::SeqCst);
                return;
            }
        }
        let (subject, body) = notice_email(notice);
        let to = notify.recipients(&notice.key.user);
        match mailer.send(&to, &subject, &body).await {
            Ok(()) => {
                info!(user = %notice.key.user, cluster = %notice.key.cluster, event, recipients = to.len(), "notified");
                self.metrics.notification(event, "sent");
                self.lock_delivered().insert(notice.id.clone());
                if let Err(e) = self.cloud.store.put(&record, "sent").await {
                    warn!(error = %e, "notice sent, but its claim could not be marked sent");
                }
                self.tidy(notice, outbox).await;
            }
            Err(e) => {
                warn!(user = %notice.key.user, cluster = %notice.key.cluster, event, error = %e, "notification not sent; will retry");
                self.metrics.notification(event, "error");
                if let Err(e) = self.cloud.store.delete(&record).await {
                    warn!(error = %e, id = %notice.id, "could not give back the claim of an unsent notice: it will not be sent");
                }
                self.outbox_pending.store(true, Ordering::SeqCst);
            }
        }
    }

    /// A notice claimed before, met again: says so when its claim was never marked sent
    /// (it is not sent again: at most once), then tidies it away.
    async fn settle_claimed(&self, notice: &Notice, outbox: &str) {
        let record = format!("{}{}", self.notified_prefix(), notice.id);
        if let Ok(Some(claim)) = self.cloud.store.get(&record).await
            && claim.body != SENT
        {
            let event = event_label(notice.event);
            warn!(user = %notice.key.user, cluster = %notice.key.cluster, event, id = %notice.id, "a notice may not have gone out: the replica that claimed it stopped before it was sent; it is not sent again (at most once)");
            self.metrics.notification(event, "unconfirmed");
        }
        self.tidy(notice, outbox).await;
    }

    /// Removes a delivered notice from the outbox, and for a deletion, the record that kept
    /// it for the next leader ([`Reconciler::record_deletion`]).
    async fn tidy(&self, notice: &Notice, outbox: &str) {
        if let Err(e) = self.cloud.store.delete(outbox).await {
            warn!(error = %e, "notice sent, but it could not be removed from the outbox");
        }
        if notice.event == NoticeEvent::Deleted
            && let Err(e) = self
                .cloud
                .store
                .delete(&self.deletion_record(&notice.key))
                .await
        {
            warn!(error = %e, "notice sent, but the record of its deletion could not be removed");
        }
    }

    /// Sends what the outbox still holds.
    pub(crate) async fn retry_outbox(&self) {
        if self.settings.notify.is_none() || !self.outbox_pending.swap(false, Ordering::SeqCst) {
            return;
        }
        let waiting = match self.cloud.store.list(&self.outbox_prefix()).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "could not list the notification outbox");
                self.outbox_pending.store(true, Ordering::SeqCst);
                return;
            }
        };
        for object in waiting {
            let notice = match self.cloud.store.get(&object.key).await {
                Ok(Some(f)) => parse_record(&f.body),
                Ok(None) => continue,
                Err(e) => {
                    warn!(error = %e, "could not read the notification outbox");
                    self.outbox_pending.store(true, Ordering::SeqCst);
                    return;
                }
            };
            match notice {
                // Still in the outbox though claimed: its sender may have stopped between
                // claim and send (the records read at start hold every claim).
                Some(n) if self.lock_delivered().contains(&n.id) => {
                    self.settle_claimed(&n, &object.key).await;
                }
                Some(n) => self.send(&n, &object.key).await,
                None => {
                    warn!(object = %object.key, "unreadable outbox record removed");
                    let _ = self.cloud.store.delete(&object.key).await;
                }
            }
        }
    }

    /// Takes one notice from `user`'s budget (`notify.per_user_hour`, refilled evenly over
    /// the hour); `false` when it is spent.
    fn take_notice_token(&self, user: &str) -> bool {
        let per_hour = f64::from(self.settings.guards.notices_per_user_hour);
        let mut budgets = self
            .notice_budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, since) = budgets
            .entry(user.to_owned())
            .or_insert((per_hour, Instant::now()));
        *tokens = (*tokens + since.elapsed().as_secs_f64() * per_hour / 3600.0).min(per_hour);
        *since = Instant::now();
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn lock_delivered(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.delivered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn parse_record(body: &[u8]) -> Option<Notice> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
    Some(Notice {
        id: field("id")?.to_owned(),
        event: event_of(field("event")?)?,
        key: ClusterKey::new(field("user")?, field("cluster")?).ok()?,
        stack: field("stack")?.to_owned(),
        detail: field("detail")?.to_owned(),
    })
}
