//! The production [`Store`]: sled 0.34 on a data directory, made durable.
//!
//! sled's `flush()` only calls `sync_file_range`, which does not survive a
//! power loss, and sled never fsyncs `conf`, blob files or directories (see
//! `shared/research/spike-sled-durability.md`). This wrapper follows the
//! spike's recommendation:
//! - the database is created with a fixed 8 MiB segment size, and values are
//!   capped ([`VALUE_BYTES_MAX`]) so that sled never writes a blob file;
//! - after open, `conf`, `db`, `blobs/`, the data directory and its parent
//!   are fsynced, and open fails if `blobs/` holds any file;
//! - one handle on `db` is opened right after sled opens it and kept for the
//!   life of the store, and a [`Durability::Sync`] write is `flush()` then
//!   `sync_all()` on that handle;
//! - any failure of that sequence aborts the process and is never retried.
//!
//! All trees live in sled's default tree behind a one-byte prefix, so one
//! `apply_batch` makes a write atomic across trees and one fsync covers it.
//! A format marker under its own prefix (0) tells an existing store from the
//! empty database sled silently starts when its `db` file is unreadable.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::{validate_ops, Durability, Op, Pair, Store, StoreError, Tree, KEY_BYTES_MAX, VALUE_BYTES_MAX};

/// sled's segment size. It is written to `conf` when the database is created
/// and can never change afterwards (sled refuses to open it otherwise).
const SEGMENT_BYTES: usize = 8 << 20;

/// No background flusher: buffered writes reach the disk at the next `Sync`
/// write or on a clean close. The store then fsyncs exactly when a caller asks
/// for it, commit latency has no background fsync to queue behind, and the
/// crash model is the one [`super::MemoryStore::crash`] simulates.
const FLUSH_EVERY_MS: Option<u64> = None;

/// sled's page cache in memory (its default is 1 GiB). Raft logs are purged
/// after snapshots, so the working set is small.
const CACHE_BYTES_MAX: u64 = 64 << 20;

/// The most items a sled leaf holds when written: it splits above 16 (sled
/// 0.34.7 node.rs:599) and a merge adds at most 3 more; 24 leaves margin.
const LEAF_ITEMS_MAX: usize = 24;

/// Per-item bytes in a serialized leaf beyond key and value (length prefixes).
const ITEM_OVERHEAD_BYTES: usize = 64;

/// sled writes a log record bigger than this to a blob file (logger.rs:168:
/// `segment_size / MINIMUM_ITEMS_PER_SEGMENT - SEG_HEADER_LEN`, minus the
/// 32-byte message header).
const RECORD_BYTES_MAX: usize = SEGMENT_BYTES / 4 - 20 - 32;

const _: () = assert!(
    LEAF_ITEMS_MAX * (KEY_BYTES_MAX + 1 + VALUE_BYTES_MAX + ITEM_OVERHEAD_BYTES) < RECORD_BYTES_MAX,
    "a full leaf of maximal values would be written as a blob file, which sled never fsyncs"
);

/// Key prefix of store-internal records.
const PREFIX_INTERNAL: u8 = 0;

/// Marks a directory as a Synod store; see [`SledStore::check_marker`].
const MARKER_KEY: &[u8] = &[PREFIX_INTERNAL, b'f', b'o', b'r', b'm', b'a', b't'];
const MARKER_V1: &[u8] = b"synod-store-v1";

fn prefix(tree: Tree) -> u8 {
    match tree {
        Tree::Log => 1,
        Tree::Meta => 2,
        Tree::Sealed => 3,
    }
}

fn prefixed(tree: Tree, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(prefix(tree));
    out.extend_from_slice(key);
    out
}

/// The sled key range `[start, end)` of `[from, to_exclusive)` in `tree`.
fn bounds(tree: Tree, from: &[u8], to_exclusive: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let end = match to_exclusive {
        Some(to) => prefixed(tree, to),
        None => vec![prefix(tree) + 1],
    };
    (prefixed(tree, from), end)
}

/// The final value of each key a write touches, `None` for removed, in key order.
type Staged = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

fn unprefixed((key, value): (sled::IVec, sled::IVec)) -> Pair {
    (key[1..].to_vec(), value.to_vec())
}

/// A [`Store`] on a sled database in one data directory.
pub struct SledStore {
    /// The database; every tree is a prefix of keys in its default tree.
    db: sled::Db,
    /// A handle on `db` opened right after sled opened it and kept for the
    /// life of the store. Its `sync_all` is what makes a `Sync` write durable,
    /// and a handle this old is told of every writeback error since open.
    db_file: File,
    /// Serialises writes, so that a `RemoveRange` expands against a stable
    /// database and a `Sync` write's fsync covers every earlier write.
    write_lock: Mutex<()>,
    /// The data directory (canonical), named in errors and logs.
    path: PathBuf,
}

impl SledStore {
    /// Opens the store in `dir`, creating it if `dir` holds no database yet.
    /// A directory that holds a database sled cannot read gives
    /// [`StoreError::Corrupt`]; it is never silently reinitialised.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let existed = existing_database(dir)?;
        let db = open_sled(dir)?;
        let path = std::fs::canonicalize(dir).map_err(io_error("resolve the path of", dir))?;
        let db_path = path.join("db");
        let db_file = File::open(&db_path).map_err(io_error("open", &db_path))?;
        sync_after_open(&path, &db_file)?;
        let blobs = blob_count(&path).map_err(io_error("list", &path.join("blobs")))?;
        if blobs > 0 {
            return Err(StoreError::BlobFilesPresent { path, count: blobs });
        }
        let store = SledStore { db, db_file, write_lock: Mutex::new(()), path };
        store.check_marker(existed)?;
        tracing::info!(path = %store.path.display(), created = !existed, "opened the sled store");
        Ok(store)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts a database carrying our marker, writes the marker into a new
    /// one, and refuses a database that existed on disk but has no marker:
    /// that is what sled shows after it silently started over on an unreadable file.
    fn check_marker(&self, existed: bool) -> Result<(), StoreError> {
        let marker = self.db.get(MARKER_KEY).map_err(|e| self.engine_error("read", e))?;
        match marker {
            Some(marker) if marker == MARKER_V1 => Ok(()),
            Some(marker) => Err(self.corrupt(format!(
                "its format marker is {:?}, and this build reads only {:?}",
                String::from_utf8_lossy(&marker),
                String::from_utf8_lossy(MARKER_V1)
            ))),
            None if existed => Err(self.corrupt(
                "sled opened its db file but found none of Synod's data in it; sled does this when \
                 the file is unreadable, starting an empty database in its place"
                    .to_string(),
            )),
            None => {
                let staged = Staged::from([(MARKER_KEY.to_vec(), Some(MARKER_V1.to_vec()))]);
                self.apply(staged, Durability::Sync)
            }
        }
    }

    /// Turns `ops` into the final value (`None`: removed) of each key they
    /// touch. Later ops override earlier ones on the same key, and a
    /// `RemoveRange` also removes keys put earlier in the same write.
    fn stage(&self, ops: Vec<Op>) -> Result<Staged, StoreError> {
        let mut staged = Staged::new();
        for op in ops {
            match op {
                Op::Put { tree, key, value } => {
                    staged.insert(prefixed(tree, &key), Some(value));
                }
                Op::Remove { tree, key } => {
                    staged.insert(prefixed(tree, &key), None);
                }
                Op::RemoveRange { tree, from, to_exclusive } => {
                    let (start, end) = bounds(tree, &from, to_exclusive.as_deref());
                    if start >= end {
                        continue;
                    }
                    for key in self.db.range(start.clone()..end.clone()).keys() {
                        let key = key.map_err(|e| self.engine_error("read", e))?;
                        staged.insert(key.to_vec(), None);
                    }
                    for (_, value) in staged.range_mut(start..end) {
                        *value = None;
                    }
                }
            }
        }
        Ok(staged)
    }

    /// Applies `staged` atomically and, for `Sync`, makes it durable.
    /// The caller holds `write_lock` (or is `open`, before anyone else can write).
    fn apply(&self, staged: Staged, durability: Durability) -> Result<(), StoreError> {
        let written = if staged.len() <= 1 {
            // One key is atomic by itself, and skipping the batch machinery
            // (a batch manifest record and a second sync_file_range per
            // flush) makes a one-entry Sync write markedly faster.
            match staged.into_iter().next() {
                None => Ok(()),
                Some((key, Some(value))) => self.db.insert(key, value).map(drop),
                Some((key, None)) => self.db.remove(key).map(drop),
            }
        } else {
            let mut batch = sled::Batch::default();
            for (key, value) in staged {
                match value {
                    Some(value) => batch.insert(key, value),
                    None => batch.remove(key),
                }
            }
            self.db.apply_batch(batch)
        };
        written.map_err(|e| self.engine_error("write to", e))?;
        if durability == Durability::Sync {
            self.sync();
        }
        Ok(())
    }

    /// Makes every write so far durable, or aborts the process.
    fn sync(&self) {
        if let Err(error) = self.db.flush() {
            abort_on_sync_failure(&self.path, "flushing sled's write buffers", &error);
        }
        match blob_count(&self.path) {
            Ok(0) => {}
            Ok(count) => abort_on_sync_failure(
                &self.path,
                "checking that blobs/ is empty",
                &format!("sled wrote {count} blob file(s), which it never fsyncs"),
            ),
            Err(error) => abort_on_sync_failure(&self.path, "listing blobs/", &error),
        }
        if let Err(error) = self.db_file.sync_all() {
            abort_on_sync_failure(&self.path, "fsync of the db file", &error);
        }
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt { path: self.path.clone(), detail }
    }

    fn engine_error(&self, action: &'static str, error: sled::Error) -> StoreError {
        match error {
            sled::Error::Io(source) => StoreError::Io { action, path: self.path.clone(), source },
            sled::Error::Corruption { .. } => self.corrupt(format!("sled: {error}")),
            other => {
                StoreError::Engine { path: self.path.clone(), detail: format!("sled could not {action} it: {other}") }
            }
        }
    }
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.db.get(prefixed(tree, key)).map_err(|e| self.engine_error("read", e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        tree: Tree,
        from: &[u8],
        to_exclusive: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError> {
        let (start, end) = bounds(tree, from, to_exclusive);
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        self.db
            .range(start..end)
            .take(limit)
            .map(|item| item.map(unprefixed).map_err(|e| self.engine_error("read", e)))
            .collect()
    }

    fn first(&self, tree: Tree) -> Result<Option<Pair>, StoreError> {
        let (start, end) = bounds(tree, &[], None);
        let item = self.db.range(start..end).next().transpose();
        Ok(item.map_err(|e| self.engine_error("read", e))?.map(unprefixed))
    }

    fn last(&self, tree: Tree) -> Result<Option<Pair>, StoreError> {
        let (start, end) = bounds(tree, &[], None);
        let item = self.db.range(start..end).next_back().transpose();
        Ok(item.map_err(|e| self.engine_error("read", e))?.map(unprefixed))
    }

    fn write(&self, ops: Vec<Op>, durability: Durability) -> Result<(), StoreError> {
        validate_ops(&ops)?;
        {
            // The lock orders staging and applying between writers; it guards no data, so a
            // panic elsewhere leaves nothing inconsistent.
            let _writer = self.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
            let batch = self.stage(ops)?;
            self.apply(batch, Durability::Buffered)?;
        }
        // Outside the lock: the sync covers this write (applied above) and perhaps later ones,
        // and a buffered writer does not wait for someone else's fsync.
        if durability == Durability::Sync {
            self.sync();
        }
        Ok(())
    }
}

/// Whether `dir` already holds a database. A `conf` without a `db` is a
/// damaged directory, not a new one.
fn existing_database(dir: &Path) -> Result<bool, StoreError> {
    let exists = |name: &str| {
        let path = dir.join(name);
        path.try_exists().map_err(io_error("inspect", &path))
    };
    let (db, conf) = (exists("db")?, exists("conf")?);
    if conf && !db {
        let detail = "it has sled's conf file but no db file".to_string();
        return Err(StoreError::Corrupt { path: dir.to_path_buf(), detail });
    }
    Ok(db)
}

fn open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(dir)
        .segment_size(SEGMENT_BYTES)
        .flush_every_ms(FLUSH_EVERY_MS)
        .cache_capacity(CACHE_BYTES_MAX);
    let path = dir.to_path_buf();
    // sled may panic on some damaged files; that is bad input from disk, not a bug of ours.
    let error = match catch_unwind(AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => return Ok(db),
        Ok(Err(error)) => error,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            return Err(StoreError::Corrupt { path, detail: format!("sled panicked while opening it: {message}") });
        }
    };
    Err(match error {
        sled::Error::Corruption { .. } => StoreError::Corrupt { path, detail: format!("sled: {error}") },
        sled::Error::Unsupported(reason) => StoreError::Corrupt { path, detail: format!("sled refused it: {reason}") },
        // sled reports a held lock only as an io::Error of kind Other with this text.
        sled::Error::Io(source) if source.to_string().contains("could not acquire lock") => {
            StoreError::Locked { path, detail: source.to_string() }
        }
        sled::Error::Io(source) => StoreError::Io { action: "open the sled database in", path, source },
        other => StoreError::Engine { path, detail: format!("sled could not open it: {other}") },
    })
}

/// fsyncs what sled itself never does: `conf`, `blobs/`, the data directory
/// (new files, and the snapshot sled renames into place on recovery) and its
/// parent (a newly created data directory), plus the `db` file.
fn sync_after_open(path: &Path, db_file: &File) -> Result<(), StoreError> {
    let mut targets = vec![path.join("conf"), path.join("blobs"), path.to_path_buf()];
    targets.extend(path.parent().map(Path::to_path_buf));
    for target in &targets {
        let file = File::open(target).map_err(io_error("open for fsync", target))?;
        if let Err(error) = file.sync_all() {
            abort_on_sync_failure(target, "fsync after open", &error);
        }
    }
    if let Err(error) = db_file.sync_all() {
        abort_on_sync_failure(&path.join("db"), "fsync after open", &error);
    }
    Ok(())
}

fn blob_count(path: &Path) -> std::io::Result<usize> {
    std::fs::read_dir(path.join("blobs"))?.try_fold(0, |count, entry| entry.map(|_| count + 1))
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { action, path, source }
}

/// A failed fsync may have dropped the dirty pages while a retry would
/// report success, so the only safe reaction is to stop and let the node
/// recover from what is on disk when it restarts.
fn abort_on_sync_failure(path: &Path, step: &str, error: &dyn Display) -> ! {
    tracing::error!(path = %path.display(), step, %error, "making a write durable failed; aborting the process");
    // Also straight to stderr, in case the tracing writer buffers and dies with us.
    eprintln!("synod: {step} failed for {}: {error}; aborting the process", path.display());
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Output};

    use super::*;

    /// Opens the store, waiting briefly when a just-dropped store in this process
    /// still holds the directory lock: sled releases it from a background thread
    /// after the last handle is gone, so an immediate reopen can race it. (A new
    /// process, as in a node restart, never sees this.)
    fn open(path: &Path) -> SledStore {
        reopen(path).expect("open the sled store")
    }

    /// [`SledStore::open`] once a just-dropped store in this process has let go
    /// of the directory lock (see [`open`]): what a fresh process would get.
    fn reopen(path: &Path) -> Result<SledStore, StoreError> {
        for _ in 0..100 {
            match SledStore::open(path) {
                Err(StoreError::Locked { .. }) => std::thread::sleep(std::time::Duration::from_millis(20)),
                other => return other,
            }
        }
        SledStore::open(path)
    }

    fn put_log(store: &SledStore, index: u64, value: &[u8], durability: Durability) {
        let op = Op::Put { tree: Tree::Log, key: index.to_be_bytes().to_vec(), value: value.to_vec() };
        store.write(vec![op], durability).expect("write");
    }

    fn log_len(store: &SledStore) -> usize {
        store.scan(Tree::Log, &[], None, usize::MAX).expect("scan").len()
    }

    /// A store with a few synced entries, closed again; returns its directory.
    fn closed_store_with_data(root: &Path) -> PathBuf {
        let path = root.join("data");
        let store = open(&path);
        for index in 0..50 {
            put_log(&store, index, b"entry", Durability::Sync);
        }
        path
    }

    /// Re-runs one test of this test binary in a child process with `env` set,
    /// under `wrapper` (a command and its arguments) if one is given.
    fn run_child_test(test: &str, env: (&str, &str), wrapper: &[&str]) -> Output {
        let exe = std::env::current_exe().expect("path of the test binary");
        let module = module_path!().split_once("::").expect("crate::module").1;
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&exe);
                command
            }
            None => Command::new(&exe),
        };
        command.args(["--exact", &format!("{module}::{test}"), "--nocapture", "--test-threads=1"]);
        command.env(env.0, env.1).output().expect("run the child test")
    }

    fn find_on_path(program: &str) -> Option<PathBuf> {
        let paths = std::env::var_os("PATH")?;
        std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
    }

    #[test]
    fn sled_store_reopen_keeps_synced_data() {
        // Proves that synced writes in both trees are there after closing and reopening the directory.
        let root = tempfile::tempdir().unwrap();
        let path = closed_store_with_data(root.path());
        let store = open(&path);
        store
            .write(vec![Op::Put { tree: Tree::Meta, key: b"vote".to_vec(), value: b"v".to_vec() }], Durability::Sync)
            .unwrap();
        drop(store);
        let store = open(&path);
        assert_eq!(log_len(&store), 50);
        assert_eq!(store.last(Tree::Log).unwrap().map(|(k, _)| k), Some(49u64.to_be_bytes().to_vec()));
        assert_eq!(store.get(Tree::Meta, b"vote").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn sled_store_synced_writes_survive_process_abort() {
        // Proves that Sync writes survive the process dying without sled's Drop (a kill -9, not a power loss).
        const CHILD: &str = "SYNOD_ABORT_CHILD_DIR";
        if let Ok(dir) = std::env::var(CHILD) {
            let store = open(Path::new(&dir));
            for index in 0..100 {
                put_log(&store, index, b"synced", Durability::Sync);
            }
            put_log(&store, 100, b"buffered", Durability::Buffered);
            std::process::abort();
        }
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("data");
        let output =
            run_child_test("sled_store_synced_writes_survive_process_abort", (CHILD, path.to_str().unwrap()), &[]);
        assert!(!output.status.success(), "the child aborts");
        let store = open(&path);
        let synced = store.scan(Tree::Log, &[], Some(&100u64.to_be_bytes()), usize::MAX).unwrap();
        assert_eq!(synced.len(), 100, "every synced entry is back");
    }

    #[test]
    fn sled_store_garbage_db_file_is_corrupt() {
        // Proves that a db file overwritten with garbage gives Corrupt naming the directory, not an empty store or a panic.
        let root = tempfile::tempdir().unwrap();
        let path = closed_store_with_data(root.path());
        let len = std::fs::metadata(path.join("db")).unwrap().len() as usize;
        std::fs::write(path.join("db"), vec![0xA5; len]).unwrap();
        let error = reopen(&path).err().expect("open must fail");
        let StoreError::Corrupt { path: reported, .. } = &error else { panic!("{error}") };
        assert_eq!(reported.canonicalize().unwrap(), path.canonicalize().unwrap());
        let message = error.to_string();
        assert!(message.contains(path.to_str().unwrap()) && message.contains("restore it from a backup"), "{message}");
    }

    #[test]
    fn sled_store_empty_db_file_is_corrupt() {
        // Proves that a db file truncated to nothing is reported, not taken for a new store.
        let root = tempfile::tempdir().unwrap();
        let path = closed_store_with_data(root.path());
        std::fs::write(path.join("db"), b"").unwrap();
        let error = reopen(&path).err().expect("open must fail");
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn sled_store_garbage_conf_file_is_corrupt() {
        // Proves that a garbage conf file gives Corrupt with sled's reason, not a panic.
        let root = tempfile::tempdir().unwrap();
        let path = closed_store_with_data(root.path());
        std::fs::write(path.join("conf"), vec![0xA5; 64]).unwrap();
        let error = reopen(&path).err().expect("open must fail");
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn sled_store_conf_without_db_is_corrupt() {
        // Proves that a directory that lost its db file is reported rather than recreated.
        let root = tempfile::tempdir().unwrap();
        let path = closed_store_with_data(root.path());
        std::fs::remove_file(path.join("db")).unwrap();
        let error = reopen(&path).err().expect("open must fail");
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
        assert!(!path.join("db").exists(), "nothing was recreated");
    }

    #[test]
    fn sled_store_blob_file_refuses_open() {
        // Proves the guard: any file in blobs/ makes open fail loudly with its count.
        let root = tempfile::tempdir().unwrap();
        let path = closed_store_with_data(root.path());
        std::fs::write(path.join("blobs").join("123"), b"blob").unwrap();
        let error = reopen(&path).err().expect("open must fail");
        assert!(matches!(error, StoreError::BlobFilesPresent { count: 1, .. }), "{error}");
    }

    #[test]
    fn sled_store_second_open_is_locked() {
        // Proves that a directory already open is refused with Locked instead of being shared.
        let root = tempfile::tempdir().unwrap();
        let store = open(&root.path().join("data"));
        let error = SledStore::open(store.path()).err().expect("second open must fail");
        assert!(matches!(error, StoreError::Locked { .. }), "{error}");
    }

    #[test]
    fn sled_store_full_values_never_create_blobs() {
        // Proves that churning values of VALUE_BYTES_MAX (the worst case for leaf size) creates no blob file.
        let root = tempfile::tempdir().unwrap();
        let store = open(&root.path().join("data"));
        let value = vec![0x5A; VALUE_BYTES_MAX];
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        for step in 0..600 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let key = (state % 120).to_be_bytes().to_vec();
            let op = match state % 4 {
                0 => Op::Remove { tree: Tree::Meta, key },
                _ => Op::Put { tree: Tree::Meta, key, value: value.clone() },
            };
            let durability = if step % 8 == 0 { Durability::Sync } else { Durability::Buffered };
            store.write(vec![op], durability).unwrap();
        }
        store.write(vec![], Durability::Sync).unwrap();
        assert_eq!(blob_count(store.path()).unwrap(), 0);
    }

    #[test]
    fn sled_store_sync_write_calls_fsync() {
        // With SYNOD_STRACE_CHILD set (by the strace test below), proves that 100 Sync writes succeed while strace
        // counts their fsyncs; without it, it does nothing.
        if std::env::var_os("SYNOD_STRACE_CHILD").is_none() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let store = open(&root.path().join("data"));
        for index in 0..100 {
            put_log(&store, index, b"entry", Durability::Sync);
        }
    }

    #[test]
    fn sled_store_sync_writes_reach_fsync_under_strace() {
        // Proves that each Sync write issues a real fsync on the db file, by counting syscalls with strace.
        let Some(strace) = find_on_path("strace") else {
            println!("sled_store_sync_writes_reach_fsync_under_strace: skipped, strace is not on PATH");
            return;
        };
        let root = tempfile::tempdir().unwrap();
        let trace = root.path().join("trace");
        let wrapper = [
            strace.to_str().unwrap(),
            "-f",
            "-y",
            "-e",
            "trace=fsync,fdatasync,sync_file_range",
            "-o",
            trace.to_str().unwrap(),
        ];
        let output = run_child_test("sled_store_sync_write_calls_fsync", ("SYNOD_STRACE_CHILD", "1"), &wrapper);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() && stderr.contains("ptrace") {
            println!("sled_store_sync_writes_reach_fsync_under_strace: skipped, strace may not trace here: {stderr}");
            return;
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && stdout.contains("1 passed"), "child failed:\n{stdout}\n{stderr}");
        let trace = std::fs::read_to_string(&trace).unwrap();
        let count = |needle: &str| trace.lines().filter(|line| line.contains(needle)).count();
        let fsync_db = trace.lines().filter(|line| line.contains("fsync(") && line.contains("/db>")).count();
        println!(
            "strace: fsync {} (on db {fsync_db}), fdatasync {}, sync_file_range {}",
            count("fsync("),
            count("fdatasync("),
            count("sync_file_range(")
        );
        assert!(fsync_db >= 100, "expected at least 100 fsyncs of the db file, saw {fsync_db}:\n{trace}");
    }
}
