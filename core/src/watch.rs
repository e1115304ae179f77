//! Clusters whose stack is changing, watched with one listing of every stack per busy
//! interval, however many they are.
//!
//! A cluster whose stack is in progress (creating, updating, deleting) is not looked at
//! alone every busy interval, which would cost one DescribeStacks per cluster: it is put on
//! the watch with the status it was seen in. Every busy interval one listing of the stacks
//! (ceil(S/100) pages) is compared with the watch, and only the clusters whose stack
//! changed status, or is gone, are looked at again, with the stack the listing showed.
//! A full pass lists the stacks too, and counts as a poll.
//!
//! Time is the caller's monotonic clock, as a [`Duration`] since any fixed start.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::key::ClusterKey;
use crate::stack::{StackPhase, StackView};

/// Whether a stack in `status` is changing by itself, so that only a change of status
/// is news: creating, deleting, or busy (updating, rolling back, an unknown status).
pub fn in_progress(status: &str) -> bool {
    matches!(
        StackPhase::of(status),
        StackPhase::Creating | StackPhase::Busy | StackPhase::Deleting
    )
}

/// The watched clusters and what the latest listing showed of those that changed.
#[derive(Debug, Default)]
pub struct Watch {
    /// Clusters waiting for their stack to change, with the status it was seen in.
    busy: HashMap<ClusterKey, String>,
    /// Clusters whose stack changed, with what the listing showed (`None`: gone) and when,
    /// until a look takes it.
    seen: HashMap<ClusterKey, (Option<StackView>, Duration)>,
    /// When the stacks were last listed whole.
    listed: Option<Duration>,
}

impl Watch {
    /// Watches `key`, whose stack was seen in `status`.
    pub fn watch(&mut self, key: &ClusterKey, status: &str) {
        self.busy.insert(key.clone(), status.to_owned());
    }

    /// Stops watching `key`: it was looked at and is not waiting for its stack.
    pub fn unwatch(&mut self, key: &ClusterKey) {
        self.busy.remove(key);
    }

    /// How many clusters are watched.
    pub fn len(&self) -> usize {
        self.busy.len()
    }

    /// Whether no cluster is watched.
    pub fn is_empty(&self) -> bool {
        self.busy.is_empty()
    }

    /// How long until the next poll is due, `interval` after the last listing; `None` when
    /// nothing is watched.
    pub fn due_in(&self, interval: Duration, now: Duration) -> Option<Duration> {
        if self.busy.is_empty() {
            return None;
        }
        Some(match self.listed {
            Some(at) => (at + interval).saturating_sub(now),
            None => Duration::ZERO,
        })
    }

    /// How long a full pass should wait before it lists the stacks, so that while clusters
    /// are watched the stacks are listed at most once per `interval` in all: the rest of
    /// the interval since the last listing. Zero while nothing is watched.
    pub fn pass_waits(&self, interval: Duration, now: Duration) -> Duration {
        match (self.busy.is_empty(), self.listed) {
            (false, Some(at)) => (at + interval).saturating_sub(now),
            _ => Duration::ZERO,
        }
    }

    /// Records a complete listing of the stacks at `now`, grouped by cluster (the stacks of
    /// [`crate::snapshot::Snapshot`]), and returns the watched clusters whose stack is gone
    /// or no longer in the status it was seen in. These leave the watch; what the listing
    /// showed of each is kept for [`Watch::take_seen`].
    pub fn listed(
        &mut self,
        stacks: &BTreeMap<ClusterKey, StackView>,
        now: Duration,
    ) -> Vec<ClusterKey> {
        self.listed = Some(now);
        let changed: Vec<ClusterKey> = self
            .busy
            .iter()
            .filter(|(key, status)| stacks.get(*key).is_none_or(|s| s.status != **status))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &changed {
            self.busy.remove(key);
            self.seen
                .insert(key.clone(), (stacks.get(key).cloned(), now));
        }
        changed
    }

    /// Notes a complete listing made for a full pass: it postpones the next poll, and the
    /// pass looks at every cluster itself.
    pub fn listed_for_pass(&mut self, now: Duration) {
        self.listed = Some(now);
    }

    /// What the latest listing showed of `key`'s stack (`Some(None)`: no stack), if it
    /// changed and was listed at most `max_age` before `now`; taken once.
    pub fn take_seen(
        &mut self,
        key: &ClusterKey,
        max_age: Duration,
        now: Duration,
    ) -> Option<Option<StackView>> {
        let (stack, at) = self.seen.remove(key)?;
        (now.saturating_sub(at) <= max_age).then_some(stack)
    }

    /// Forgets everything (a new leader starts from a full pass).
    pub fn clear(&mut self) {
        *self = Watch::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(cluster: &str) -> ClusterKey {
        ClusterKey::new("alice", cluster).unwrap()
    }

    fn stacks(of: &[(&str, &str)]) -> BTreeMap<ClusterKey, StackView> {
        of.iter()
            .map(|(cluster, status)| {
                let view = StackView {
                    name: format!("fd-alice-{cluster}"),
                    status: (*status).into(),
                    ..StackView::default()
                };
                (k(cluster), view)
            })
            .collect()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn only_clusters_whose_stack_changed_or_went_are_looked_at_again() {
        let mut watch = Watch::default();
        for c in ["a", "b", "c", "d"] {
            watch.watch(&k(c), "CREATE_IN_PROGRESS");
        }
        let listing = stacks(&[
            ("a", "CREATE_IN_PROGRESS"),
            ("b", "CREATE_COMPLETE"),
            ("d", "ROLLBACK_IN_PROGRESS"),
            ("e", "CREATE_COMPLETE"),
        ]);
        let mut changed = watch.listed(&listing, 15 * S);
        changed.sort();
        assert_eq!(changed, vec![k("b"), k("c"), k("d")]);
        assert_eq!(watch.len(), 1, "a is still creating and still watched");
        let seen = watch.take_seen(&k("b"), 15 * S, 16 * S).unwrap().unwrap();
        assert_eq!(seen.status, "CREATE_COMPLETE");
        assert_eq!(
            watch.take_seen(&k("c"), 15 * S, 16 * S),
            Some(None),
            "c is gone"
        );
        assert_eq!(watch.take_seen(&k("b"), 15 * S, 16 * S), None, "taken once");
        assert_eq!(
            watch.take_seen(&k("a"), 15 * S, 16 * S),
            None,
            "a did not change"
        );
    }

    #[test]
    fn a_poll_is_due_one_interval_after_the_last_listing_and_never_while_nothing_is_watched() {
        let mut watch = Watch::default();
        assert_eq!(watch.due_in(15 * S, Duration::ZERO), None);
        watch.watch(&k("a"), "DELETE_IN_PROGRESS");
        assert_eq!(watch.due_in(15 * S, 3 * S), Some(Duration::ZERO));
        watch.listed_for_pass(10 * S);
        assert_eq!(watch.due_in(15 * S, 12 * S), Some(13 * S));
        assert_eq!(watch.due_in(15 * S, 40 * S), Some(Duration::ZERO));
        watch.unwatch(&k("a"));
        assert_eq!(watch.due_in(15 * S, 40 * S), None);
    }

    #[test]
    fn a_full_pass_waits_for_the_interval_since_a_poll_only_while_clusters_are_watched() {
        let mut watch = Watch::default();
        watch.listed_for_pass(10 * S);
        assert_eq!(
            watch.pass_waits(15 * S, 12 * S),
            Duration::ZERO,
            "nothing watched"
        );
        watch.watch(&k("a"), "CREATE_IN_PROGRESS");
        watch.listed(&stacks(&[("a", "CREATE_IN_PROGRESS")]), 20 * S);
        assert_eq!(watch.pass_waits(15 * S, 24 * S), 11 * S);
        assert_eq!(watch.pass_waits(15 * S, 36 * S), Duration::ZERO);
    }

    #[test]
    fn what_a_listing_showed_is_not_used_once_it_is_older_than_allowed() {
        let mut watch = Watch::default();
        watch.watch(&k("a"), "UPDATE_IN_PROGRESS");
        watch.listed(&stacks(&[("a", "UPDATE_COMPLETE")]), 10 * S);
        assert_eq!(watch.take_seen(&k("a"), 15 * S, 26 * S), None);
    }

    #[test]
    fn creating_deleting_and_busy_stacks_are_in_progress_and_finished_ones_are_not() {
        for status in [
            "CREATE_IN_PROGRESS",
            "DELETE_IN_PROGRESS",
            "UPDATE_IN_PROGRESS",
            "ROLLBACK_IN_PROGRESS",
            "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS",
        ] {
            assert!(in_progress(status), "{status}");
        }
        for status in [
            "CREATE_COMPLETE",
            "CREATE_FAILED",
            "ROLLBACK_COMPLETE",
            "DELETE_FAILED",
            "UPDATE_ROLLBACK_COMPLETE",
        ] {
            assert!(!in_progress(status), "{status}");
        }
    }
}
