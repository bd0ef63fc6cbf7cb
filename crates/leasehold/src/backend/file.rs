//! The file backend: the embedded one, needing no server (the README's run command uses it).
//!
//! The record is a JSON file holding client-go's `LeaderElectionRecord` fields (times with
//! microseconds) plus a `generation` that serves as the version. Compare-and-swap runs under
//! exclusive OS locks (`flock`), and the new content replaces the old by an atomic rename after
//! `fsync`, so it is correct across processes on one host and a crash never leaves a
//! half-written record. Standbys notice changes by polling the file's metadata every
//! [`FileLock::DEFAULT_POLL`] (a `stat`, no read unless it changed).
//!
//! # Correctness
//!
//! A lock on a file protects nothing once its name points elsewhere, and names change: a tmp
//! cleaner or a human may remove the sibling `PATH.lock` while a candidate holds it or waits
//! for it, and each write replaces the record file by another. So a compare-and-swap locks
//! twice, and after each `flock` checks that the path still names the file it locked (same
//! device and inode), else it locks what the path names now:
//! - first `PATH.lock`, so that a candidate waiting on a removed lock file never gets in beside
//!   the one that created its successor;
//! - then the record file about to be replaced, so that a candidate that locked a new
//!   `PATH.lock` while the old one was removed from under its holder still waits for that
//!   holder, whose rename is what ends its hold.
//!
//! A record that does not exist yet is created with a hard link, which fails if another
//! candidate created it first, so two creations never both succeed. The one case left: both
//! `PATH.lock` and the record removed while a candidate is inside its compare-and-swap can let
//! a creation succeed just before that candidate's rename replaces it. Waiting is bounded: an
//! operation that cannot take both locks within half a second fails as
//! [`LockError::Unavailable`] and is retried.
//!
//! The path may be a symbolic link, also one whose target does not exist yet: every operation
//! follows it (a relative target from the link's directory, up to 40 links; more, as in a loop,
//! is an error naming the path), and works on the target, whose lock is `TARGET.lock`. So a
//! link and its target are one record under one lock, and writes leave the link in place.
//!
//! A file that cannot be decoded is reported as [`LockError::Corrupt`] naming the path and is
//! never overwritten: fix or delete it by hand.

use futures_util::stream;
use leasehold_core::{
    LeaderRecord, LockBackend, LockError, Version, Versioned,
    lock::{BoxFuture, WatchStream},
};
use serde_json::{Map, Value};
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

/// A lock kept in a local JSON file.
#[derive(Clone, Debug)]
pub struct FileLock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The path as given: it may be a symbolic link, followed at every operation.
    path: PathBuf,
    poll: Duration,
}

/// The longest an operation waits for other processes' `flock`s (both of them, in all).
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// Symbolic links followed from the record path before giving up on a loop (Linux's own limit).
const MAX_LINKS: usize = 40;

/// The record's fields in the file; everything else in it is kept as it is.
const RECORD_KEYS: [&str; 6] = [
    "holderIdentity",
    "leaseDurationSeconds",
    "acquireTime",
    "renewTime",
    "leaderTransitions",
    "leaseholdHandoverFrom",
];

// === impl FileLock ===

impl FileLock {
    /// How often a watch checks the file for changes.
    pub const DEFAULT_POLL: Duration = Duration::from_millis(20);

    /// A lock in the file at `path` (created on first acquisition; its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner {
                path: path.into(),
                poll: Self::DEFAULT_POLL,
            }),
        }
    }

    /// Sets how often a watch polls the file.
    #[must_use]
    pub fn with_poll_interval(self, poll: Duration) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                path: inner.path.clone(),
                poll,
            }),
        }
    }

    /// The record file's path, as given (a symbolic link is followed at every operation).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The record file's path with symbolic links followed, as the next operation will use it;
    /// its lock file is this path with `.lock` appended.
    ///
    /// # Errors
    /// [`LockError::Other`] if the path cannot be looked up or its links form a loop.
    pub fn resolved_path(&self) -> Result<PathBuf, LockError> {
        self.inner.resolve("resolve")
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, LockError> + Send + 'static,
    ) -> Result<T, LockError> {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(r) => r,
            Err(e) => Err(LockError::Other {
                op: "file",
                object: self.describe(),
                message: "blocking task failed".into(),
                source: Some(Box::new(e)),
            }),
        }
    }
}

impl LockBackend for FileLock {
    fn describe(&self) -> String {
        format!("file {}", self.inner.path.display())
    }

    fn carries_handover(&self) -> bool {
        true
    }

    fn get(&self) -> BoxFuture<'_, Result<Option<Versioned>, LockError>> {
        Box::pin(self.blocking(|inner| Ok(inner.read("get")?.map(|s| s.versioned()))))
    }

    fn create(&self, record: &LeaderRecord) -> BoxFuture<'_, Result<Version, LockError>> {
        let record = record.clone();
        Box::pin(self.blocking(move |inner| {
            let mut guard = inner.lock("create")?;
            if guard.read(inner, "create")?.is_some() {
                return Err(LockError::Conflict {
                    op: "create",
                    object: inner.describe(),
                });
            }
            // Start generations from the clock so a deleted and re-created file never reuses a
            // version an old reader still holds.
            let generation = u64::try_from(jiff::Timestamp::now().as_microsecond()).unwrap_or(1);
            inner.write(
                &guard.path,
                Map::new(),
                &record,
                generation,
                Commit::Create,
                "create",
            )
        }))
    }

    fn update(
        &self,
        record: &LeaderRecord,
        version: &Version,
    ) -> BoxFuture<'_, Result<Version, LockError>> {
        let record = record.clone();
        let version = version.clone();
        Box::pin(self.blocking(move |inner| {
            let mut guard = inner.lock("update")?;
            let conflict = || LockError::Conflict {
                op: "update",
                object: inner.describe(),
            };
            let Some(stored) = guard.read(inner, "update")? else {
                return Err(conflict());
            };
            if stored.generation.to_string() != version.as_str() {
                return Err(conflict());
            }
            inner.write(
                &guard.path,
                stored.object,
                &record,
                stored.generation.wrapping_add(1),
                Commit::Replace,
                "update",
            )
        }))
    }

    fn watch(&self, version: Option<&Version>) -> WatchStream {
        struct State {
            lock: FileLock,
            last_meta: Option<Meta>,
            last_version: Option<Version>,
            first: bool,
        }
        let state = State {
            lock: self.clone(),
            last_meta: None,
            last_version: version.cloned(),
            first: true,
        };
        Box::pin(stream::unfold(state, |mut st| async move {
            loop {
                if !st.first {
                    tokio::time::sleep(st.lock.inner.poll).await;
                }
                st.first = false;
                let meta = Meta::of(&st.lock.inner.path);
                if st.last_meta.is_some() && meta == st.last_meta {
                    continue;
                }
                st.last_meta = meta;
                let read = match st.lock.get().await {
                    Ok(r) => r,
                    Err(e) => return Some((Err(e), st)),
                };
                let version = read.as_ref().map(|v| v.version.clone());
                if version != st.last_version {
                    st.last_version = version;
                    return Some((Ok(read), st));
                }
            }
        }))
    }
}

/// What `stat` says of the file: any write (a rename replaces the inode) changes it.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Meta {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Meta {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let m = fs::metadata(path).ok()?;
        Some(Self {
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

struct Stored {
    object: Map<String, Value>,
    record: LeaderRecord,
    generation: u64,
}

impl Stored {
    fn versioned(self) -> Versioned {
        Versioned::new(self.record, Version::new(self.generation.to_string()))
    }
}

/// Holds the `flock`s until dropped (closing a file releases its lock).
struct Guard {
    /// The record path with symbolic links followed: the one to read and replace.
    path: PathBuf,
    /// `PATH.lock`, locked and still named so.
    _lock: File,
    /// The record file, locked and still named `path`; `None` when there is none.
    record: Option<File>,
}

// === impl Guard ===

impl Guard {
    /// The record as it is under the lock (from the locked file itself).
    fn read(&mut self, inner: &Inner, op: &'static str) -> Result<Option<Stored>, LockError> {
        let Some(f) = self.record.as_mut() else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .map_err(|e| inner.io_error(op, "read the record file", e))?;
        inner.decode(&bytes).map(Some)
    }
}

/// How [`Inner::write`] puts the new record file in place.
#[derive(Clone, Copy)]
enum Commit {
    /// Only if no record exists (a hard link, which fails if the name is taken).
    Create,
    /// Over the record locked by the guard (a rename).
    Replace,
}

// === impl Inner ===

impl Inner {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn io_error(&self, op: &'static str, what: &str, e: io::Error) -> LockError {
        LockError::Other {
            op,
            object: self.describe(),
            message: format!("cannot {what}"),
            source: Some(Box::new(e)),
        }
    }

    fn unavailable(&self, op: &'static str, why: String) -> LockError {
        LockError::Unavailable {
            op,
            object: self.describe(),
            source: why.into(),
        }
    }

    /// The record path with symbolic links followed, the final component included: a write
    /// replaces the name it is given, so through a link it would replace the link, and the link
    /// and its target would be two records under two locks. A link whose target does not exist
    /// yet resolves to that target.
    fn resolve(&self, op: &'static str) -> Result<PathBuf, LockError> {
        let mut path = self.path.clone();
        for _ in 0..=MAX_LINKS {
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {}
                Ok(_) => return Ok(path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(path),
                Err(e) => {
                    return Err(self.io_error(op, &format!("look up {}", path.display()), e));
                }
            }
            let target = fs::read_link(&path).map_err(|e| {
                self.io_error(op, &format!("read the symbolic link {}", path.display()), e)
            })?;
            // A relative target is read from the link's directory, as the kernel reads it.
            path = match path.parent() {
                Some(dir) => dir.join(target),
                None => target,
            };
        }
        Err(LockError::Other {
            op,
            object: self.describe(),
            message: format!(
                "cannot follow the record path: more than {MAX_LINKS} symbolic links (a loop?)"
            ),
            source: Some(Box::new(io::Error::from(rustix::io::Errno::LOOP))),
        })
    }

    /// Takes the locks of a compare-and-swap: `PATH.lock`, then the record file (when there is
    /// one), each checked to be still the file its path names (the module's "Correctness" says
    /// why). Never blocks indefinitely: a holder frozen inside its few-millisecond critical
    /// section (or another user holding the file) must not hang every candidate, so after
    /// [`LOCK_WAIT`] in all the operation fails as `Unavailable` and is retried.
    fn lock(&self, op: &'static str) -> Result<Guard, LockError> {
        let path = self.resolve(op)?;
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let mut waited = Duration::ZERO;
        let lock = self
            .flock_named(op, &lock_path, true, &mut waited)?
            .ok_or_else(|| {
                let gone = io::Error::from(io::ErrorKind::NotFound);
                self.io_error(op, &format!("create {}", lock_path.display()), gone)
            })?;
        let record = self.flock_named(op, &path, false, &mut waited)?;
        Ok(Guard {
            path,
            _lock: lock,
            record,
        })
    }

    /// Locks the file named `path` (created if `create`, else `None` if there is none) and
    /// returns it once `path` still names it after the `flock`: a file removed or replaced
    /// meanwhile (the record by its previous holder's rename, the lock file by a cleaner) is no
    /// lock anyone else will take, so it is dropped and the new one locked instead.
    fn flock_named(
        &self,
        op: &'static str,
        path: &Path,
        create: bool,
        waited: &mut Duration,
    ) -> Result<Option<File>, LockError> {
        // Counted in 1 ms steps: this runs on a blocking thread, outside tokio's clock.
        const STEP: Duration = Duration::from_millis(1);
        loop {
            let opened = if create {
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)
            } else {
                // For writing where allowed: on NFS an exclusive `flock` is a POSIX lock, which
                // needs a descriptor open for writing. Reading suffices elsewhere, and a
                // candidate may replace a record it cannot write (the directory is writable).
                match OpenOptions::new().read(true).write(true).open(path) {
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => File::open(path),
                    opened => opened,
                }
            };
            let f = match opened {
                Ok(f) => f,
                Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(self.io_error(op, &format!("open {}", path.display()), e)),
            };
            loop {
                match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                    Ok(()) => break,
                    Err(rustix::io::Errno::WOULDBLOCK) if *waited < LOCK_WAIT => {
                        std::thread::sleep(STEP);
                        *waited += STEP;
                    }
                    Err(rustix::io::Errno::WOULDBLOCK) => {
                        return Err(self.unavailable(
                            op,
                            format!(
                                "{} is held by another process for more than {LOCK_WAIT:?}",
                                path.display()
                            ),
                        ));
                    }
                    Err(e) => {
                        return Err(self.io_error(
                            op,
                            &format!("lock {}", path.display()),
                            e.into(),
                        ));
                    }
                }
            }
            let held = f
                .metadata()
                .map_err(|e| self.io_error(op, &format!("stat {}", path.display()), e))?;
            match fs::metadata(path) {
                Ok(named) if same_file(&named, &held) => return Ok(Some(f)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_error(op, &format!("stat {}", path.display()), e)),
            }
            drop(f);
            if *waited >= LOCK_WAIT {
                return Err(self.unavailable(
                    op,
                    format!(
                        "{} kept being removed or replaced for {LOCK_WAIT:?}",
                        path.display()
                    ),
                ));
            }
            *waited += STEP;
        }
    }

    /// The record as it is now, without locking (for `get`).
    fn read(&self, op: &'static str) -> Result<Option<Stored>, LockError> {
        let path = self.resolve(op)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error(op, "read the record file", e)),
        };
        self.decode(&bytes).map(Some)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Stored, LockError> {
        // No version: the generation lives inside the unreadable JSON, so the file is never
        // replaced automatically; a human removes or fixes it.
        let corrupt = |source| LockError::Corrupt {
            object: self.describe(),
            version: None,
            source,
        };
        let record = LeaderRecord::from_json(bytes).map_err(corrupt)?;
        let object: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(leasehold_core::RecordError::Json(e)))?;
        let generation = match object.get("generation") {
            None => 0,
            Some(v) => v.as_u64().ok_or_else(|| {
                corrupt(leasehold_core::RecordError::Field {
                    field: "generation",
                    reason: format!("expected a non-negative integer, got {v}"),
                })
            })?,
        };
        Ok(Stored {
            object,
            record,
            generation,
        })
    }

    /// Writes the record to a temporary file, makes it durable, and puts it at `path` (the
    /// guard's resolved path) as `commit` says.
    fn write(
        &self,
        path: &Path,
        mut object: Map<String, Value>,
        record: &LeaderRecord,
        generation: u64,
        commit: Commit,
        op: &'static str,
    ) -> Result<Version, LockError> {
        let fields: Map<String, Value> =
            serde_json::from_slice(&record.to_json(true)).unwrap_or_default();
        for key in RECORD_KEYS {
            object.remove(key);
        }
        object.extend(fields);
        object.insert("generation".into(), Value::from(generation));
        let mut bytes = serde_json::to_vec_pretty(&object).unwrap_or_default();
        bytes.push(b'\n');

        let mut tmp = path.to_path_buf().into_os_string();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        // Ok(false): a create found the name taken.
        let result = (|| {
            // Under the lock no other leasehold writes this name; a leftover from a crash is
            // removed, and create_new (O_EXCL) never follows a planted symlink.
            let _ = fs::remove_file(&tmp);
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            match commit {
                Commit::Replace => fs::rename(&tmp, path)?,
                Commit::Create => {
                    if !link_new(&tmp, path)? {
                        return Ok(false);
                    }
                }
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(true)
        })();
        match result {
            Ok(true) => Ok(Version::new(generation.to_string())),
            Ok(false) => {
                let _ = fs::remove_file(&tmp);
                Err(LockError::Conflict {
                    op,
                    object: self.describe(),
                })
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(self.io_error(op, "write the record file", e))
            }
        }
    }
}

/// Whether two `stat`s are of one file.
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Puts `tmp` at `path` unless something is there already (then `false`): a hard link fails
/// atomically if the name exists, where a rename would replace it. This is what keeps two
/// creations from both succeeding when the lock file was removed from under a holder.
fn link_new(tmp: &Path, path: &Path) -> io::Result<bool> {
    match fs::hard_link(tmp, path) {
        Ok(()) => {
            fs::remove_file(tmp)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        // A file system without hard links (vfat, some FUSE ones): rename, under `PATH.lock`
        // alone.
        Err(e)
            if e.kind() == io::ErrorKind::Unsupported
                || rustix::io::Errno::from_io_error(&e) == Some(rustix::io::Errno::PERM) =>
        {
            fs::rename(tmp, path).map(|()| true)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of this process's descriptors are open on `path`.
    fn fds_on(path: &Path) -> usize {
        let want = fs::canonicalize(path).unwrap();
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .filter(|p| *p == want)
            .count()
    }

    fn wait_until(mut f: impl FnMut() -> bool) {
        for _ in 0..5_000 {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("timed out");
    }

    /// A tmp cleaner (or a human) removes `PATH.lock` while a candidate is inside its
    /// compare-and-swap: the next candidate must not get in beside it.
    #[test]
    fn a_lock_file_removed_while_held_lets_no_second_holder_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        fs::write(&path, LeaderRecord::default().to_json(true)).unwrap();
        let lock = FileLock::new(&path);
        let a = lock.inner.lock("update").unwrap();
        fs::remove_file(dir.path().join("x.json.lock")).unwrap();
        let b = std::thread::scope(|s| s.spawn(|| lock.inner.lock("update")).join().unwrap());
        assert!(
            matches!(b, Err(LockError::Unavailable { .. })),
            "B got in while A held the lock: {:?}",
            b.as_ref().map(|_| "a guard")
        );
        drop(a);
        lock.inner.lock("update").expect("free once A is done");
    }

    /// With no record yet there is no record file to lock: a candidate let in by a removed
    /// lock file may create the record beside the one creating it, but only one creation lands.
    #[test]
    fn two_creations_let_in_by_a_removed_lock_file_do_not_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let lock = FileLock::new(dir.path().join("x.json"));
        let inner = &lock.inner;
        let a = inner.lock("create").unwrap();
        fs::remove_file(dir.path().join("x.json.lock")).unwrap();
        let b = inner.lock("create").unwrap();
        let create = |g: &Guard, id: &str| {
            let record = LeaderRecord::new(id, 0);
            inner.write(&g.path, Map::new(), &record, 1, Commit::Create, "create")
        };
        create(&b, "b").unwrap();
        let err = create(&a, "a").unwrap_err();
        assert!(matches!(err, LockError::Conflict { .. }), "{err:?}");
        let stored = inner.read("get").unwrap().unwrap();
        assert_eq!(stored.record.holder_identity, "b");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    /// A candidate waiting on `PATH.lock` when it is removed and re-created by a third one must
    /// not get in beside that third one once the first holder leaves.
    #[test]
    fn a_waiter_on_a_removed_lock_file_does_not_join_the_new_holder() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join("x.json.lock");
        let lock = FileLock::new(dir.path().join("x.json"));
        let a = lock.inner.lock("create").unwrap();
        std::thread::scope(|s| {
            let b = s.spawn(|| lock.inner.lock("create"));
            // B has the old lock file open and is waiting for A.
            wait_until(|| fds_on(&lock_path) == 2);
            fs::remove_file(&lock_path).unwrap();
            let c = lock
                .inner
                .lock("create")
                .expect("C locks the new lock file");
            assert!(
                !b.is_finished(),
                "B gave up before A left; too slow to tell"
            );
            drop(a);
            let b = b.join().unwrap();
            assert!(
                matches!(b, Err(LockError::Unavailable { .. })),
                "B got in beside C: {:?}",
                b.as_ref().map(|_| "a guard")
            );
            drop(c);
        });
    }
}
