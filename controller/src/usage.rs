//! What each user's clusters take up, for admission: kept by the reconciler, read before
//! every create and update.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use flightdeck_core::admission::{Usage, cost_of};
use flightdeck_core::key::ClusterKey;
use flightdeck_core::money::Dollars;
use flightdeck_core::stack::{StackPhase, StackView};

/// What each user's clusters take up, by cluster: rebuilt from the stacks at every full
/// resync, and kept up to date as this controller creates, updates and deletes. Admission
/// of a user's clusters happens one at a time (a lock per user), so two requests of one
/// user can never both take the last of a limit.
#[derive(Default)]
pub(crate) struct UsageBook {
    /// Per user, per cluster.
    by_user: HashMap<String, BTreeMap<String, Share>>,
}

/// What one cluster takes up: ComputeMaxNodes, cost, and when this was recorded.
type Share = (u64, Option<Dollars>, Instant);

impl UsageBook {
    /// What `user`'s clusters other than `cluster` take up.
    pub(crate) fn usage_of(&self, user: &str, cluster: &str) -> Usage {
        let mut usage = Usage::default();
        for (c, (nodes, cost, _)) in self.by_user.get(user).into_iter().flatten() {
            if c != cluster {
                usage.add(*nodes, *cost);
            }
        }
        usage
    }

    /// Records what a cluster takes up, from its stack parameters.
    pub(crate) fn set(
        &mut self,
        key: &ClusterKey,
        parameters: &BTreeMap<String, String>,
        prices: &BTreeMap<String, Dollars>,
    ) {
        let nodes = parameters
            .get("ComputeMaxNodes")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        self.by_user.entry(key.user.clone()).or_default().insert(
            key.cluster.clone(),
            (nodes, cost_of(parameters, prices), Instant::now()),
        );
    }

    /// Forgets a cluster.
    pub(crate) fn remove(&mut self, key: &ClusterKey) {
        if let Some(m) = self.by_user.get_mut(&key.user) {
            m.remove(&key.cluster);
        }
    }

    /// Starts again from the stacks of a full listing that began at `listed_at`, keeping
    /// what was recorded since (a create the listing could not have seen yet).
    pub(crate) fn rebuild(
        &mut self,
        stacks: &BTreeMap<ClusterKey, StackView>,
        prices: &BTreeMap<String, Dollars>,
        listed_at: Instant,
    ) {
        let newer: Vec<(String, String, Share)> = self
            .by_user
            .iter()
            .flat_map(|(u, m)| m.iter().map(move |(c, e)| (u.clone(), c.clone(), *e)))
            .filter(|(_, _, e)| e.2 > listed_at)
            .collect();
        self.by_user.clear();
        for (key, stack) in stacks {
            if takes_up_resources(stack) {
                self.set(key, &stack.parameters, prices);
            }
        }
        for (user, cluster, entry) in newer {
            self.by_user.entry(user).or_default().insert(cluster, entry);
        }
    }
}

/// Whether a stack may still hold instances, and so counts against its user's limits:
/// every stack but a deleted one and a create that rolled back completely. A stack stuck
/// after a failed update, deleting, or whose delete failed still runs its instances.
fn takes_up_resources(stack: &StackView) -> bool {
    stack.phase() != StackPhase::Deleted && stack.status != "ROLLBACK_COMPLETE"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_keeps_what_was_recorded_after_its_listing_began() {
        let prices = BTreeMap::new();
        let params = |n: &str| BTreeMap::from([("ComputeMaxNodes".to_string(), n.to_string())]);
        let a = ClusterKey::new("alice", "a").unwrap();
        let b = ClusterKey::new("alice", "b").unwrap();
        let mut book = UsageBook::default();
        book.set(&a, &params("8"), &prices);
        let listed_at = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        book.set(&b, &params("4"), &prices); // created after the listing began
        book.rebuild(&BTreeMap::new(), &prices, listed_at);
        let usage = book.usage_of("alice", "other");
        assert_eq!(
            (usage.clusters, usage.max_nodes),
            (1, 4),
            "a is gone, b is kept"
        );
    }

    #[test]
    fn stuck_and_undeletable_stacks_still_count_against_their_user() {
        let prices = BTreeMap::new();
        let mut stacks = BTreeMap::new();
        for (cluster, status) in [
            ("a", "UPDATE_ROLLBACK_FAILED"),
            ("b", "DELETE_FAILED"),
            ("c", "DELETE_IN_PROGRESS"),
            ("d", "ROLLBACK_FAILED"),
            ("e", "ROLLBACK_COMPLETE"),
        ] {
            stacks.insert(
                ClusterKey::new("alice", cluster).unwrap(),
                StackView {
                    status: status.into(),
                    parameters: BTreeMap::from([("ComputeMaxNodes".into(), "2".into())]),
                    ..StackView::default()
                },
            );
        }
        let mut book = UsageBook::default();
        book.rebuild(&stacks, &prices, Instant::now());
        let usage = book.usage_of("alice", "new");
        assert_eq!(
            (usage.clusters, usage.max_nodes),
            (4, 8),
            "all but the create that rolled back completely"
        );
    }
}
