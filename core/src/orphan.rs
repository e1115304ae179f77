//! Orphan safety: when a stack of ours whose request is gone may be deleted.
//!
//! An orphan is deleted only when all hold: the listing that found no request completed;
//! the orphan was seen in consecutive complete passes for at least the grace period; and
//! the pass would not delete more than the cap. An empty or unreadable bucket must never
//! wipe every cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::key::ClusterKey;

/// What to do with orphans at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrphanPolicy {
    /// Delete them, within the safety rules.
    Delete,
    /// Only report them (status, logs, metrics).
    Report,
}

/// The operator's orphan settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrphanSettings {
    /// How long an orphan must be seen before it is deleted.
    pub grace: Duration,
    /// Most orphans one pass may delete; past that it deletes none.
    pub max_deletes: usize,
    /// Delete or only report.
    pub policy: OrphanPolicy,
}

/// The verdict on one cluster key for this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanVerdict {
    /// Not judged: a single-key look (hint, requeue) never deletes an orphan.
    NotJudged,
    /// Seen, but the grace period has not passed.
    Waiting,
    /// Delete it now.
    Delete,
    /// The policy is `report`.
    ReportOnly,
    /// The pass would delete more than the cap, so it deletes none.
    HeldBack,
}

/// The outcome of judging one pass's orphans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanJudgement {
    /// One verdict per orphan of the pass.
    pub verdicts: BTreeMap<ClusterKey, OrphanVerdict>,
    /// Orphans past their grace that the cap held back (0 when none were).
    pub held_back: usize,
}

/// Remembers when each orphan was first seen, across passes. Held in memory: a restarted
/// controller starts the grace period again, which errs on the side of keeping clusters.
#[derive(Debug, Clone, Default)]
pub struct OrphanTracker {
    first_seen: BTreeMap<ClusterKey, Duration>,
}

impl OrphanTracker {
    /// Judges one pass. `now` is any monotonic clock reading; `listing_complete` is false
    /// when any listing of the pass failed or was cut short; `orphans` are the keys with a
    /// stack of ours and neither a request nor a delete request.
    ///
    /// An incomplete pass judges nobody and starts every grace period again.
    pub fn judge(
        &mut self,
        now: Duration,
        listing_complete: bool,
        orphans: &[ClusterKey],
        settings: &OrphanSettings,
    ) -> OrphanJudgement {
        if !listing_complete {
            self.first_seen.clear();
            return OrphanJudgement {
                verdicts: orphans
                    .iter()
                    .map(|k| (k.clone(), OrphanVerdict::NotJudged))
                    .collect(),
                held_back: 0,
            };
        }
        self.first_seen.retain(|k, _| orphans.contains(k));
        let mut due = Vec::new();
        let mut verdicts = BTreeMap::new();
        for key in orphans {
            let since = *self.first_seen.entry(key.clone()).or_insert(now);
            if now.saturating_sub(since) >= settings.grace {
                due.push(key.clone());
            } else {
                verdicts.insert(key.clone(), OrphanVerdict::Waiting);
            }
        }
        let (verdict, held_back) = match settings.policy {
            OrphanPolicy::Report => (OrphanVerdict::ReportOnly, 0),
            OrphanPolicy::Delete if due.len() > settings.max_deletes => {
                (OrphanVerdict::HeldBack, due.len())
            }
            OrphanPolicy::Delete => (OrphanVerdict::Delete, 0),
        };
        verdicts.extend(due.into_iter().map(|k| (k, verdict)));
        OrphanJudgement {
            verdicts,
            held_back,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn settings(max_deletes: usize, policy: OrphanPolicy) -> OrphanSettings {
        OrphanSettings {
            grace: 10 * MIN,
            max_deletes,
            policy,
        }
    }

    fn keys(n: usize) -> Vec<ClusterKey> {
        (0..n)
            .map(|i| ClusterKey::new("alice", &format!("c{i}")).unwrap())
            .collect()
    }

    fn verdicts(j: &OrphanJudgement) -> Vec<OrphanVerdict> {
        j.verdicts.values().copied().collect()
    }

    #[test]
    fn orphan_is_deleted_only_after_the_grace_period() {
        let mut t = OrphanTracker::default();
        let s = settings(5, OrphanPolicy::Delete);
        let k = keys(1);
        assert_eq!(
            verdicts(&t.judge(MIN, true, &k, &s)),
            [OrphanVerdict::Waiting]
        );
        assert_eq!(
            verdicts(&t.judge(10 * MIN, true, &k, &s)),
            [OrphanVerdict::Waiting]
        );
        assert_eq!(
            verdicts(&t.judge(11 * MIN, true, &k, &s)),
            [OrphanVerdict::Delete]
        );
    }

    #[test]
    fn a_pass_without_the_orphan_restarts_its_grace() {
        let mut t = OrphanTracker::default();
        let s = settings(5, OrphanPolicy::Delete);
        let k = keys(1);
        t.judge(Duration::ZERO, true, &k, &s);
        t.judge(5 * MIN, true, &[], &s);
        assert_eq!(
            verdicts(&t.judge(11 * MIN, true, &k, &s)),
            [OrphanVerdict::Waiting]
        );
    }

    #[test]
    fn incomplete_listing_deletes_nothing_and_restarts_grace() {
        let mut t = OrphanTracker::default();
        let s = settings(5, OrphanPolicy::Delete);
        let k = keys(2);
        t.judge(Duration::ZERO, true, &k, &s);
        let j = t.judge(20 * MIN, false, &k, &s);
        assert_eq!(verdicts(&j), [OrphanVerdict::NotJudged; 2]);
        assert_eq!(
            verdicts(&t.judge(21 * MIN, true, &k, &s)),
            [OrphanVerdict::Waiting; 2]
        );
    }

    #[test]
    fn more_orphans_than_the_cap_deletes_none() {
        let mut t = OrphanTracker::default();
        let s = settings(5, OrphanPolicy::Delete);
        let k = keys(6);
        t.judge(Duration::ZERO, true, &k, &s);
        let j = t.judge(11 * MIN, true, &k, &s);
        assert_eq!(verdicts(&j), [OrphanVerdict::HeldBack; 6]);
        assert_eq!(j.held_back, 6);
    }

    #[test]
    fn exactly_the_cap_is_deleted() {
        let mut t = OrphanTracker::default();
        let s = settings(5, OrphanPolicy::Delete);
        let k = keys(5);
        t.judge(Duration::ZERO, true, &k, &s);
        let j = t.judge(11 * MIN, true, &k, &s);
        assert_eq!(verdicts(&j), [OrphanVerdict::Delete; 5]);
        assert_eq!(j.held_back, 0);
    }

    #[test]
    fn report_policy_never_deletes() {
        let mut t = OrphanTracker::default();
        let s = settings(5, OrphanPolicy::Report);
        let k = keys(1);
        t.judge(Duration::ZERO, true, &k, &s);
        assert_eq!(
            verdicts(&t.judge(11 * MIN, true, &k, &s)),
            [OrphanVerdict::ReportOnly]
        );
    }
}
