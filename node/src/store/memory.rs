//! An in-memory [`Store`] for the deterministic simulator. It models a disk
//! with a volatile cache: [`MemoryStore::crash`] throws away every write made
//! with [`Durability::Buffered`] since the last [`Durability::Sync`] write,
//! the worst that a real machine may lose, and [`MemoryStore::wipe`] gives an
//! empty disk. Maps are `BTreeMap`s so that iteration order is deterministic.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{validate_ops, Durability, Op, Pair, Store, StoreError, Tree};

/// A handle on one simulated disk; clones share it, so the simulator can keep
/// one clone to crash or wipe the disk while the node uses another.
#[derive(Clone, Default)]
pub struct MemoryStore {
    /// The disk, behind one lock so that every write is atomic.
    state: Arc<Mutex<Disk>>,
}

#[derive(Default)]
struct Disk {
    /// What readers see: every accepted write, durable or not.
    current: Image,
    /// What survives a crash: the contents as of the last `Sync` write.
    durable: Image,
    /// Buffered writes in `current` but not yet in `durable`, oldest first;
    /// a `Sync` write replays them onto `durable`, a crash drops them.
    unsynced: Vec<Vec<Op>>,
}

/// A copy of a disk's durable contents ([`MemoryStore::copy`]).
#[derive(Clone)]
pub struct DiskCopy(Image);

/// The contents of every tree.
#[derive(Clone, Default, PartialEq, Eq)]
struct Image {
    /// [`Tree::Log`]'s pairs.
    log: BTreeMap<Vec<u8>, Vec<u8>>,
    /// [`Tree::Meta`]'s pairs.
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
    /// [`Tree::Sealed`]'s pairs.
    sealed: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Image {
    fn tree(&self, tree: Tree) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        match tree {
            Tree::Log => &self.log,
            Tree::Meta => &self.meta,
            Tree::Sealed => &self.sealed,
        }
    }

    fn tree_mut(&mut self, tree: Tree) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        match tree {
            Tree::Log => &mut self.log,
            Tree::Meta => &mut self.meta,
            Tree::Sealed => &mut self.sealed,
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Put { tree, key, value } => {
                self.tree_mut(*tree).insert(key.clone(), value.clone());
            }
            Op::Remove { tree, key } => {
                self.tree_mut(*tree).remove(key);
            }
            Op::RemoveRange { tree, from, to_exclusive } => {
                let map = self.tree_mut(*tree);
                let mut doomed = map.split_off(from.as_slice());
                if let Some(to) = to_exclusive {
                    // Everything from `to` on is kept; for an empty range that is all of `doomed`.
                    let mut kept = doomed.split_off(to.as_slice());
                    map.append(&mut kept);
                }
            }
        }
    }
}

impl MemoryStore {
    /// An empty disk.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Simulates a crash: every write made with [`Durability::Buffered`] since
    /// the last [`Durability::Sync`] write is lost. The handle stays usable,
    /// as the disk of a restarted node.
    pub fn crash(&self) {
        let mut disk = self.lock();
        disk.current = disk.durable.clone();
        disk.unsynced.clear();
    }

    /// Simulates replacing the disk with an empty one.
    pub fn wipe(&self) {
        *self.lock() = Disk::default();
    }

    /// A copy of what is on stable storage now (a backup, a VM snapshot, a
    /// copied directory), for [`MemoryStore::roll_back`].
    pub fn copy(&self) -> DiskCopy {
        DiskCopy(self.lock().durable.clone())
    }

    /// Whether `copy` lacks a sealed record that the disk holds now: restoring
    /// it would lose a secret (a key share sealed since the copy was taken).
    pub fn copy_lacks_secrets(&self, copy: &DiskCopy) -> bool {
        self.lock().durable.sealed.keys().any(|key| !copy.0.sealed.contains_key(key))
    }

    /// Simulates restoring the disk from an earlier copy: everything written
    /// since is gone, the vote and acknowledged entries included.
    pub fn roll_back(&self, copy: &DiskCopy) {
        *self.lock() = Disk { current: copy.0.clone(), durable: copy.0.clone(), unsynced: Vec::new() };
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // A poisoned lock means a panic inside one of the short critical
        // sections below, which cannot happen short of running out of memory.
        self.state.lock().expect("MemoryStore lock poisoned by a panic in another thread")
    }
}

/// The pairs of `map` in `[from, to_exclusive)`, or no pairs if the range is empty.
fn range<'m>(
    map: &'m BTreeMap<Vec<u8>, Vec<u8>>,
    from: &[u8],
    to_exclusive: Option<&[u8]>,
) -> impl DoubleEndedIterator<Item = (&'m Vec<u8>, &'m Vec<u8>)> {
    let empty = to_exclusive.is_some_and(|to| to <= from);
    let upper = match to_exclusive {
        Some(to) if !empty => Bound::Excluded(to),
        // An empty range becomes [from, from), which BTreeMap accepts.
        Some(_) => Bound::Excluded(from),
        None => Bound::Unbounded,
    };
    map.range::<[u8], _>((Bound::Included(from), upper))
}

fn owned((key, value): (&Vec<u8>, &Vec<u8>)) -> Pair {
    (key.clone(), value.clone())
}

impl Store for MemoryStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().current.tree(tree).get(key).cloned())
    }

    fn scan(
        &self,
        tree: Tree,
        from: &[u8],
        to_exclusive: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError> {
        let disk = self.lock();
        Ok(range(disk.current.tree(tree), from, to_exclusive).take(limit).map(owned).collect())
    }

    fn first(&self, tree: Tree) -> Result<Option<Pair>, StoreError> {
        Ok(self.lock().current.tree(tree).first_key_value().map(owned))
    }

    fn last(&self, tree: Tree) -> Result<Option<Pair>, StoreError> {
        Ok(self.lock().current.tree(tree).last_key_value().map(owned))
    }

    fn write(&self, ops: Vec<Op>, durability: Durability) -> Result<(), StoreError> {
        validate_ops(&ops)?;
        let mut disk = self.lock();
        let disk = &mut *disk;
        for op in &ops {
            disk.current.apply(op);
        }
        match durability {
            Durability::Buffered => disk.unsynced.push(ops),
            Durability::Sync => {
                for op in disk.unsynced.drain(..).flatten().chain(ops) {
                    disk.durable.apply(&op);
                }
                debug_assert!(
                    disk.durable == disk.current,
                    "a Sync write leaves the durable image equal to the current one"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &MemoryStore, key: &[u8], value: &[u8], durability: Durability) {
        let op = Op::Put { tree: Tree::Meta, key: key.to_vec(), value: value.to_vec() };
        store.write(vec![op], durability).expect("write");
    }

    fn get(store: &MemoryStore, key: &[u8]) -> Option<Vec<u8>> {
        store.get(Tree::Meta, key).expect("get")
    }

    #[test]
    fn memory_crash_drops_exactly_the_unsynced_writes() {
        // Proves that a crash loses the buffered writes after the last Sync and keeps everything before it.
        let store = MemoryStore::new();
        put(&store, b"a", b"1", Durability::Buffered);
        put(&store, b"b", b"1", Durability::Sync);
        put(&store, b"a", b"2", Durability::Buffered);
        put(&store, b"c", b"1", Durability::Buffered);
        store.write(vec![Op::Remove { tree: Tree::Meta, key: b"b".to_vec() }], Durability::Buffered).unwrap();
        assert_eq!(
            (get(&store, b"a"), get(&store, b"b"), get(&store, b"c")),
            (Some(b"2".to_vec()), None, Some(b"1".to_vec()))
        );
        store.crash();
        // "a"=1 was buffered before the Sync, so that Sync made it durable too.
        assert_eq!(get(&store, b"a"), Some(b"1".to_vec()));
        assert_eq!(get(&store, b"b"), Some(b"1".to_vec()));
        assert_eq!(get(&store, b"c"), None);
        store.crash();
        assert_eq!(get(&store, b"a"), Some(b"1".to_vec()), "a second crash loses nothing more");
    }

    #[test]
    fn memory_crash_after_sync_loses_nothing() {
        // Proves that an empty Sync write is a barrier that makes every earlier buffered write survive a crash.
        let store = MemoryStore::new();
        let ops = vec![
            Op::Put { tree: Tree::Log, key: vec![1], value: b"x".to_vec() },
            Op::Put { tree: Tree::Log, key: vec![2], value: b"y".to_vec() },
            Op::RemoveRange { tree: Tree::Log, from: vec![2], to_exclusive: None },
        ];
        store.write(ops, Durability::Buffered).unwrap();
        store.write(vec![], Durability::Sync).unwrap();
        store.crash();
        assert_eq!(store.scan(Tree::Log, &[], None, 10).unwrap(), vec![(vec![1], b"x".to_vec())]);
    }

    #[test]
    fn memory_wipe_empties_the_disk_for_every_clone() {
        // Proves that clones share one disk and that wipe leaves it empty, synced data included.
        let store = MemoryStore::new();
        let node_handle = store.clone();
        put(&node_handle, b"k", b"v", Durability::Sync);
        assert_eq!(get(&store, b"k"), Some(b"v".to_vec()));
        store.wipe();
        assert_eq!(get(&node_handle, b"k"), None);
        store.crash();
        assert_eq!(node_handle.first(Tree::Meta).unwrap(), None);
    }

    #[test]
    fn memory_refused_write_is_not_buffered() {
        // Proves that a refused write leaves no trace, not even in the unsynced writes a later Sync would replay.
        let store = MemoryStore::new();
        let big = Op::Put { tree: Tree::Meta, key: b"big".to_vec(), value: vec![0; super::super::VALUE_BYTES_MAX + 1] };
        assert!(store.write(vec![big], Durability::Buffered).is_err());
        store.write(vec![], Durability::Sync).unwrap();
        store.crash();
        assert_eq!(get(&store, b"big"), None);
        assert!(store.lock().unsynced.is_empty());
    }
}
