//! Clusters whose stack is changing, polled every busy interval in min(K, pages) calls,
//! however many they are.
//!
//! A cluster whose stack is in progress (creating, updating, deleting) is not looked at
//! alone every busy interval: it is put on the watch with its stack's name and the status
//! it was seen in. Every busy interval the watched stacks are polled in whichever way costs
//! fewer calls: one DescribeStacks each while they are fewer than the pages of a listing,
//! else one listing of every stack (ceil(S/100) pages). So a poll costs min(K, pages)
//! calls however many clusters K are changing. Only the clusters whose stack changed status,
//! or is gone, are looked at again, with what the poll showed. A full pass lists the stacks
//! too, and counts as a poll.
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

/// A stack a cluster waits on: its name and the status it was seen in (or that the call
/// that started the change puts it in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The stack's name.
    pub stack: String,
    /// Its status, e.g. `CREATE_IN_PROGRESS`.
    pub status: String,
}

/// How the next poll looks at the watched stacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// One DescribeStacks for each of these stacks, by name: fewer calls than a listing.
    Describe(Vec<String>),
    /// One listing of every stack.
    List,
}

/// The watched clusters and what the latest poll showed of those that changed.
#[derive(Debug, Default)]
pub struct Watch {
    /// Clusters waiting for their stack to change.
    busy: HashMap<ClusterKey, Waiting>,
    /// Clusters whose stack changed, with what the poll showed (`None`: gone) and when,
    /// until a look takes it.
    seen: HashMap<ClusterKey, (Option<StackView>, Duration)>,
    /// When the stacks were last listed whole.
    listed: Option<Duration>,
    /// When the watched stacks were last polled, by listing or describing.
    polled: Option<Duration>,
    /// How many pages the last complete listing took.
    pages: Option<usize>,
}

impl Watch {
    /// Watches `key`, which waits on its stack.
    pub fn watch(&mut self, key: &ClusterKey, waiting: Waiting) {
        self.busy.insert(key.clone(), waiting);
    }

    /// How the next poll looks: describing each watched stack while they are fewer than
    /// the pages of the last listing, else listing them all (also before any listing).
    pub fn poll(&self) -> Poll {
        match self.pages {
            Some(pages) if self.busy.len() < pages => {
                let mut stacks: Vec<String> = self.busy.values().map(|w| w.stack.clone()).collect();
                stacks.sort();
                Poll::Describe(stacks)
            }
            _ => Poll::List,
        }
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

    /// How long until the next poll is due, `interval` after the last poll or listing;
    /// `None` when nothing is watched.
    pub fn due_in(&self, interval: Duration, now: Duration) -> Option<Duration> {
        if self.busy.is_empty() {
            return None;
        }
        Some(match self.listed.max(self.polled) {
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

    /// Records a complete listing of the stacks at `now`, `pages` pages, grouped by cluster
    /// (the stacks of [`crate::snapshot::Snapshot`]), and returns the watched clusters whose
    /// stack is gone or no longer in the status it was seen in. These leave the watch; what
    /// the listing showed of each is kept for [`Watch::take_seen`].
    pub fn listed(
        &mut self,
        stacks: &BTreeMap<ClusterKey, StackView>,
        pages: usize,
        now: Duration,
    ) -> Vec<ClusterKey> {
        self.listed = Some(now);
        self.pages = Some(pages);
        self.polled(stacks, now)
    }

    /// Records what describing every watched stack (those of [`Poll::Describe`]) showed at
    /// `now`, grouped by cluster, and returns the clusters whose stack changed, as
    /// [`Watch::listed`] does.
    pub fn described(
        &mut self,
        stacks: &BTreeMap<ClusterKey, StackView>,
        now: Duration,
    ) -> Vec<ClusterKey> {
        self.polled(stacks, now)
    }

    fn polled(
        &mut self,
        stacks: &BTreeMap<ClusterKey, StackView>,
        now: Duration,
    ) -> Vec<ClusterKey> {
        self.polled = Some(now);
        let changed: Vec<ClusterKey> = self
            .busy
            .iter()
            .filter(|(key, waiting)| stacks.get(*key).is_none_or(|s| s.status != waiting.status))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &changed {
            self.busy.remove(key);
            self.seen
                .insert(key.clone(), (stacks.get(key).cloned(), now));
        }
        changed
    }

    /// Notes a complete listing of `pages` pages made for a full pass: it postpones the
    /// next poll, and the pass looks at every cluster itself.
    pub fn listed_for_pass(&mut self, pages: usize, now: Duration) {
        self.listed = Some(now);
        self.pages = Some(pages);
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

    fn waiting(cluster: &str, status: &str) -> Waiting {
        Waiting {
            stack: format!("fd-alice-{cluster}"),
            status: status.into(),
        }
    }

    #[test]
    fn a_poll_describes_each_stack_while_they_are_fewer_than_the_pages_of_a_listing() {
        let mut watch = Watch::default();
        watch.watch(&k("b"), waiting("b", "CREATE_IN_PROGRESS"));
        watch.watch(&k("a"), waiting("a", "DELETE_IN_PROGRESS"));
        assert_eq!(
            watch.poll(),
            Poll::List,
            "no listing yet: how many pages is unknown"
        );
        watch.listed_for_pass(3, Duration::ZERO);
        assert_eq!(
            watch.poll(),
            Poll::Describe(vec!["fd-alice-a".into(), "fd-alice-b".into()])
        );
        watch.watch(&k("c"), waiting("c", "CREATE_IN_PROGRESS"));
        assert_eq!(
            watch.poll(),
            Poll::List,
            "3 describes cost as much as 3 pages"
        );
        watch.unwatch(&k("c"));
        let changed = watch.described(&stacks(&[("a", "DELETE_IN_PROGRESS")]), 15 * S);
        assert_eq!(changed, vec![k("b")], "b was not found");
        assert_eq!(
            watch.due_in(15 * S, 20 * S),
            Some(10 * S),
            "a describe is a poll"
        );
        assert_eq!(
            watch.pass_waits(15 * S, 20 * S),
            Duration::ZERO,
            "but not a listing: the pass need not wait"
        );
    }

    #[test]
    fn only_clusters_whose_stack_changed_or_went_are_looked_at_again() {
        let mut watch = Watch::default();
        for c in ["a", "b", "c", "d"] {
            watch.watch(&k(c), waiting(c, "CREATE_IN_PROGRESS"));
        }
        let listing = stacks(&[
            ("a", "CREATE_IN_PROGRESS"),
            ("b", "CREATE_COMPLETE"),
            ("d", "ROLLBACK_IN_PROGRESS"),
            ("e", "CREATE_COMPLETE"),
        ]);
        let mut changed = watch.listed(&listing, 1, 15 * S);
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
        watch.watch(&k("a"), waiting("a", "DELETE_IN_PROGRESS"));
        assert_eq!(watch.due_in(15 * S, 3 * S), Some(Duration::ZERO));
        watch.listed_for_pass(1, 10 * S);
        assert_eq!(watch.due_in(15 * S, 12 * S), Some(13 * S));
        assert_eq!(watch.due_in(15 * S, 40 * S), Some(Duration::ZERO));
        watch.unwatch(&k("a"));
        assert_eq!(watch.due_in(15 * S, 40 * S), None);
    }

    #[test]
    fn a_full_pass_waits_for_the_interval_since_a_poll_only_while_clusters_are_watched() {
        let mut watch = Watch::default();
        watch.listed_for_pass(1, 10 * S);
        assert_eq!(
            watch.pass_waits(15 * S, 12 * S),
            Duration::ZERO,
            "nothing watched"
        );
        watch.watch(&k("a"), waiting("a", "CREATE_IN_PROGRESS"));
        watch.listed(&stacks(&[("a", "CREATE_IN_PROGRESS")]), 1, 20 * S);
        assert_eq!(watch.pass_waits(15 * S, 24 * S), 11 * S);
        assert_eq!(watch.pass_waits(15 * S, 36 * S), Duration::ZERO);
    }

    #[test]
    fn what_a_listing_showed_is_not_used_once_it_is_older_than_allowed() {
        let mut watch = Watch::default();
        watch.watch(&k("a"), waiting("a", "UPDATE_IN_PROGRESS"));
        watch.listed(&stacks(&[("a", "UPDATE_COMPLETE")]), 1, 10 * S);
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
