//! One look at the world: the objects under the home prefix and our stacks, grouped by
//! cluster. Built from plain listings, so it is the same for a full resync and a
//! single-key look.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, btree_map};
use std::iter::Peekable;

use crate::adopt::unmanaged_key;
use crate::identity::Identity;
use crate::key::{
    Classified, ClusterKey, KeyKind, Mistake, Suffix, check_user_name, classify_borrowed,
};
use crate::stack::{StackPhase, StackView};

/// An object as a listing reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectMeta {
    /// Object key.
    pub key: String,
    /// ETag as S3 reports it (quoted).
    pub etag: String,
    /// Last-modified time, seconds since the epoch.
    pub modified: i64,
    /// Size in bytes.
    pub size: u64,
}

/// The files of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterFiles {
    /// The `.cf-create`, if any.
    pub create: Option<ObjectMeta>,
    /// Whether a `.cf-delete` exists.
    pub delete: bool,
    /// flightdeck's markers, with their ETags.
    pub markers: BTreeMap<Suffix, String>,
}

/// The world as seen by one look.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Files by cluster.
    pub files: BTreeMap<ClusterKey, ClusterFiles>,
    /// Our stacks by cluster (from their tags). Deleted stacks are left out.
    pub stacks: BTreeMap<ClusterKey, StackView>,
    /// Stacks of ours that claim a cluster another stack of ours already has; reported,
    /// never touched.
    pub duplicates: Vec<StackView>,
    /// Live stacks of the older design that no install manages, by the cluster they look
    /// like ([`crate::adopt::unmanaged_key`]); never touched.
    pub unmanaged: BTreeMap<ClusterKey, StackView>,
    /// Files that look like requests but break a rule, with what is wrong.
    pub mistaken: BTreeMap<String, Mistake>,
    /// flightdeck's explanations of mistaken files, with their ETags.
    pub reports: BTreeMap<String, String>,
    /// Folders under the home prefix whose name is not a user name (so no user's), with
    /// how many objects each holds: nothing in them is read, and the operator is told.
    pub foreign_folders: BTreeMap<String, usize>,
}

impl Snapshot {
    /// Groups a listing of objects and a listing of stacks: [`Snapshot::add_objects`] then
    /// [`Snapshot::add_stacks`] on an empty snapshot.
    pub fn build(
        home_prefix: &str,
        identity: &Identity,
        objects: impl IntoIterator<Item = ObjectMeta>,
        stacks: impl IntoIterator<Item = StackView>,
    ) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.add_objects(home_prefix, objects);
        snap.add_stacks(identity, stacks);
        snap
    }

    /// Adds one page of a listing of the home prefix. Only what the reconciler acts on is
    /// kept (contract files, markers, mistaken keys and their reports, a count per foreign
    /// folder): users' own files are dropped as they pass, so memory grows with the
    /// clusters, not with the bucket.
    pub fn add_objects(
        &mut self,
        home_prefix: &str,
        objects: impl IntoIterator<Item = ObjectMeta>,
    ) {
        // The cluster of the last file seen: a listing comes in key order, so a cluster's
        // files come one after another, and are grouped without looking the cluster up
        // again.
        let mut current: Option<btree_map::OccupiedEntry<'_, ClusterKey, ClusterFiles>> = None;
        for object in objects {
            match classify_borrowed(home_prefix, &object.key) {
                Classified::Cluster {
                    user,
                    cluster,
                    suffix,
                } => {
                    let held = current
                        .take()
                        .filter(|entry| entry.key().user == user && entry.key().cluster == cluster);
                    let mut entry = match held {
                        Some(entry) => entry,
                        None => match self.files.entry(ClusterKey {
                            user: user.to_owned(),
                            cluster: cluster.to_owned(),
                        }) {
                            btree_map::Entry::Occupied(entry) => entry,
                            btree_map::Entry::Vacant(entry) => {
                                entry.insert_entry(ClusterFiles::default())
                            }
                        },
                    };
                    let files = entry.get_mut();
                    match suffix {
                        Suffix::Create => files.create = Some(object),
                        Suffix::Delete => files.delete = true,
                        marker => {
                            files.markers.insert(marker, object.etag);
                        }
                    }
                    current = Some(entry);
                }
                Classified::Other(KeyKind::Mistaken { mistake, .. }) => {
                    self.mistaken.insert(object.key, mistake);
                }
                Classified::Other(KeyKind::MistakeReport { .. }) => {
                    self.reports.insert(object.key, object.etag);
                }
                // Not returned by `classify_borrowed`.
                Classified::Other(KeyKind::Cluster { .. }) => {}
                Classified::Other(KeyKind::Other) => {
                    if let Some((folder, _)) = object
                        .key
                        .strip_prefix(home_prefix)
                        .and_then(|rest| rest.split_once('/'))
                        && check_user_name(folder).is_err()
                    {
                        match self.foreign_folders.get_mut(folder) {
                            Some(n) => *n += 1,
                            None => {
                                self.foreign_folders.insert(folder.to_owned(), 1);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds one page of a listing of stacks. A stack is ours by its tags alone, whatever
    /// its name (an adopted stack keeps the older design's). Stacks without our owner tag,
    /// or whose `USER`/`flightdeck:cluster` tags are not valid names, are left out, but for
    /// the older design's, noted as unmanaged. Deleted stacks are left out.
    pub fn add_stacks(&mut self, identity: &Identity, stacks: impl IntoIterator<Item = StackView>) {
        for stack in stacks {
            if stack.phase() == StackPhase::Deleted {
                continue;
            }
            let Some(key) = identity.owned_key(&stack.tags) else {
                if let Some(key) = unmanaged_key(&stack) {
                    self.unmanaged.insert(key, stack);
                }
                continue;
            };
            match self.stacks.entry(key) {
                btree_map::Entry::Vacant(entry) => {
                    entry.insert(stack);
                }
                btree_map::Entry::Occupied(mut entry) => {
                    let expected = identity.stack_name(entry.key());
                    let other = if stack.name == expected && entry.get().name != expected {
                        entry.insert(stack)
                    } else {
                        stack
                    };
                    self.duplicates.push(other);
                }
            }
        }
    }

    /// Every cluster with a file or a stack.
    pub fn keys(&self) -> BTreeSet<ClusterKey> {
        self.files
            .keys()
            .chain(self.stacks.keys())
            .cloned()
            .collect()
    }

    /// Takes every cluster of [`Snapshot::keys`] out of the snapshot, in key order, with
    /// what `files`, `stacks` and `unmanaged` hold for it: moved, not copied, so planning
    /// a whole look copies no cluster's files or stacks. Those three are left empty (read
    /// what else is needed of them, such as [`Snapshot::orphans`], first); the rest of the
    /// snapshot stays as it is.
    pub fn take_clusters(&mut self) -> Clusters {
        Clusters {
            files: std::mem::take(&mut self.files).into_iter().peekable(),
            stacks: std::mem::take(&mut self.stacks).into_iter().peekable(),
            unmanaged: std::mem::take(&mut self.unmanaged),
        }
    }

    /// Clusters with a stack of ours and neither a request nor a delete request.
    pub fn orphans(&self) -> Vec<ClusterKey> {
        // Both maps are in key order: walk them side by side.
        let mut files = self.files.iter().peekable();
        self.stacks
            .keys()
            .filter(|k| {
                while files.next_if(|(f, _)| f < k).is_some() {}
                files
                    .next_if(|(f, _)| f == k)
                    .is_none_or(|(_, f)| f.create.is_none() && !f.delete)
            })
            .cloned()
            .collect()
    }
}

/// One cluster of a snapshot, as [`Snapshot::take_clusters`] takes it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterParts {
    /// Which cluster.
    pub key: ClusterKey,
    /// Its files (none when it has only a stack).
    pub files: ClusterFiles,
    /// Its stack of ours, if any.
    pub stack: Option<StackView>,
    /// A stack of the older design for it, if any.
    pub unmanaged: Option<StackView>,
}

/// The clusters taken out of a snapshot ([`Snapshot::take_clusters`]), in key order.
#[derive(Debug)]
pub struct Clusters {
    files: Peekable<btree_map::IntoIter<ClusterKey, ClusterFiles>>,
    stacks: Peekable<btree_map::IntoIter<ClusterKey, StackView>>,
    unmanaged: BTreeMap<ClusterKey, StackView>,
}

impl Iterator for Clusters {
    type Item = ClusterParts;

    fn next(&mut self) -> Option<ClusterParts> {
        // Both maps are in key order: merge them.
        let order = match (self.files.peek(), self.stacks.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((with_files, _)), Some((with_stack, _))) => with_files.cmp(with_stack),
        };
        let (key, files, stack) = match order {
            Ordering::Less => {
                let (key, files) = self.files.next()?;
                (key, files, None)
            }
            Ordering::Greater => {
                let (key, stack) = self.stacks.next()?;
                (key, ClusterFiles::default(), Some(stack))
            }
            Ordering::Equal => {
                let (key, files) = self.files.next()?;
                (key, files, self.stacks.next().map(|(_, stack)| stack))
            }
        };
        let unmanaged = self.unmanaged.remove(&key);
        Some(ClusterParts {
            key,
            files,
            stack,
            unmanaged,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TAG_OWNER;

    fn obj(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            etag: format!("\"{key}\""),
            ..ObjectMeta::default()
        }
    }

    fn id() -> Identity {
        Identity::new("fd", "site-a").unwrap()
    }

    fn stack(name: &str, user: &str, cluster: &str, owner: &str) -> StackView {
        let key = ClusterKey::new(user, cluster).unwrap();
        let mut tags = id().tags(&key, "h");
        tags.insert(TAG_OWNER.into(), owner.into());
        StackView {
            name: name.into(),
            status: "CREATE_COMPLETE".into(),
            tags,
            ..StackView::default()
        }
    }

    fn k(user: &str, cluster: &str) -> ClusterKey {
        ClusterKey::new(user, cluster).unwrap()
    }

    #[test]
    fn files_group_by_cluster_and_stacks_by_their_tags() {
        let snap = Snapshot::build(
            "home/",
            &id(),
            [
                obj("home/alice/x.cf-create"),
                obj("home/alice/x.cf-status"),
                obj("home/bob/x.cf-delete"),
                obj("home/alice/notes.txt"),
                obj("home/alice/my_c.cf-create"),
                obj("home/alice/my_c.cf-create.cf-failed"),
            ],
            [
                stack("fd-alice-x", "alice", "x", "site-a"),
                stack("fd-alice-y", "alice", "y", "site-a"),
                stack("fd-carol-z", "carol", "z", "site-b"),
            ],
        );
        assert_eq!(
            snap.keys(),
            [k("alice", "x"), k("alice", "y"), k("bob", "x")].into()
        );
        assert!(snap.files[&k("alice", "x")].create.is_some());
        assert!(
            snap.files[&k("alice", "x")]
                .markers
                .contains_key(&Suffix::Status)
        );
        assert!(snap.files[&k("bob", "x")].delete);
        assert_eq!(snap.stacks[&k("alice", "x")].name, "fd-alice-x");
        assert!(
            !snap.stacks.contains_key(&k("carol", "z")),
            "another owner's stack is not ours"
        );
        assert_eq!(snap.orphans(), vec![k("alice", "y")]);
        assert_eq!(
            snap.mistaken.keys().collect::<Vec<_>>(),
            ["home/alice/my_c.cf-create"]
        );
        assert_eq!(snap.reports.len(), 1);
    }

    #[test]
    fn a_clusters_files_group_together_in_any_order_and_over_pages() {
        let mut snap = Snapshot::default();
        snap.add_objects(
            "home/",
            [
                obj("home/alice/x.cf-status"),
                obj("home/alice/y.cf-create"),
                obj("home/alice/x.cf-create"),
            ],
        );
        snap.add_objects(
            "home/",
            [obj("home/alice/x.cf-delete"), obj("home/alice/y.cf-failed")],
        );
        let x = &snap.files[&k("alice", "x")];
        assert!(x.create.is_some() && x.delete);
        assert_eq!(x.markers.keys().collect::<Vec<_>>(), [&Suffix::Status]);
        let y = &snap.files[&k("alice", "y")];
        assert!(y.create.is_some() && !y.delete);
        assert_eq!(y.markers.keys().collect::<Vec<_>>(), [&Suffix::Failed]);
        assert_eq!(snap.files.len(), 2);
    }

    #[test]
    fn folders_that_are_no_user_name_are_counted_not_silently_ignored() {
        let snap = Snapshot::build(
            "home/",
            &id(),
            [
                obj("home/jean luc/x.cf-create"),
                obj("home/jean luc/notes"),
                obj("home/alice/x.cf-create"),
                obj("home/top-level-file"),
            ],
            [],
        );
        assert_eq!(
            snap.foreign_folders,
            BTreeMap::from([("jean luc".to_owned(), 2)])
        );
    }

    #[test]
    fn bobs_delete_never_reaches_alices_stack() {
        let snap = Snapshot::build(
            "home/",
            &id(),
            [obj("home/bob/x.cf-delete")],
            [stack("fd-alice-x", "alice", "x", "site-a")],
        );
        assert!(!snap.stacks.contains_key(&k("bob", "x")));
        assert!(snap.stacks.contains_key(&k("alice", "x")));
    }

    #[test]
    fn a_second_stack_claiming_a_cluster_is_set_aside_not_used() {
        let snap = Snapshot::build(
            "home/",
            &id(),
            [],
            [
                stack("old-alice-x", "alice", "x", "site-a"),
                stack("fd-alice-x", "alice", "x", "site-a"),
            ],
        );
        assert_eq!(snap.stacks[&k("alice", "x")].name, "fd-alice-x");
        assert_eq!(snap.duplicates.len(), 1);
        assert_eq!(snap.duplicates[0].name, "old-alice-x");
    }

    #[test]
    fn a_stack_is_ours_by_its_tags_whatever_its_name() {
        let adopted = stack("x", "alice", "x", "site-a");
        let snap = Snapshot::build("home/", &id(), [], [adopted]);
        assert_eq!(snap.stacks[&k("alice", "x")].name, "x");
        assert!(snap.unmanaged.is_empty());
    }

    #[test]
    fn the_older_designs_stacks_are_noted_as_unmanaged_never_as_ours() {
        let seed = |name: &str, user: &str, access: &str| StackView {
            name: name.into(),
            status: "CREATE_COMPLETE".into(),
            tags: BTreeMap::from([("project".into(), user.into())]),
            parameters: BTreeMap::from([("AccessUsername".into(), access.into())]),
            ..StackView::default()
        };
        let snap = Snapshot::build(
            "home/",
            &id(),
            [obj("home/alice/x.cf-delete")],
            [
                seed("x", "alice", "alice"),
                seed("y", "bob", "carol"),
                stack("z", "alice", "z", "site-b"),
            ],
        );
        assert!(snap.stacks.is_empty());
        assert_eq!(
            snap.unmanaged.keys().collect::<Vec<_>>(),
            [&k("alice", "x")],
            "only a stack named after the cluster, tagged and set up for its user"
        );
        assert_eq!(snap.keys(), [k("alice", "x")].into());
        assert!(
            snap.orphans().is_empty(),
            "an unmanaged stack is never an orphan"
        );
    }

    #[test]
    fn taking_the_clusters_gives_each_key_once_with_what_the_maps_held_for_it() {
        let mut snap = Snapshot::build(
            "home/",
            &id(),
            [
                obj("home/alice/x.cf-create"),
                obj("home/alice/x.cf-status"),
                obj("home/bob/w.cf-delete"),
                obj("home/carol/v.cf-create"),
                obj("home/dan/z.cf-status"),
            ],
            [
                stack("fd-alice-x", "alice", "x", "site-a"),
                stack("fd-alice-y", "alice", "y", "site-a"),
                stack("fd-dan-z", "dan", "z", "site-a"),
            ],
        );
        snap.unmanaged
            .insert(k("carol", "v"), stack("v", "carol", "v", "site-b"));
        snap.unmanaged
            .insert(k("erin", "u"), stack("u", "erin", "u", "site-b"));
        assert_eq!(
            snap.orphans(),
            [k("alice", "y"), k("dan", "z")],
            "a stack with markers but neither request is an orphan"
        );
        let before = snap.clone();
        let parts: Vec<ClusterParts> = snap.take_clusters().collect();
        assert_eq!(
            parts.iter().map(|p| p.key.clone()).collect::<Vec<_>>(),
            before.keys().into_iter().collect::<Vec<_>>()
        );
        for p in &parts {
            assert_eq!(
                p.files,
                before.files.get(&p.key).cloned().unwrap_or_default(),
                "{}",
                p.key
            );
            assert_eq!(p.stack.as_ref(), before.stacks.get(&p.key), "{}", p.key);
            assert_eq!(
                p.unmanaged.as_ref(),
                before.unmanaged.get(&p.key),
                "{}",
                p.key
            );
        }
        assert!(snap.files.is_empty() && snap.stacks.is_empty() && snap.unmanaged.is_empty());
        assert_eq!(snap.mistaken, before.mistaken);
    }

    #[test]
    fn deleted_stacks_are_no_stacks() {
        let mut s = stack("fd-alice-x", "alice", "x", "site-a");
        s.status = "DELETE_COMPLETE".into();
        let snap = Snapshot::build("home/", &id(), [], [s]);
        assert!(snap.stacks.is_empty());
    }
}
