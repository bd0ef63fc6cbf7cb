//! The file backend: the embedded one, needing no server (the README's run command uses it).
//!
//! The record is a JSON file holding client-go's `LeaderElectionRecord` fields (times with
//! microseconds) plus a `generation` that serves as the version. Compare-and-swap runs under an
//! exclusive OS lock (`flock`) on a sibling `PATH.lock` file, and the new content replaces the old
//! by an atomic rename after `fsync`, so it is correct across processes on one host and a crash
//! never leaves a half-written record. Standbys notice changes by polling the file's metadata
//! every [`FileLock::DEFAULT_POLL`] (a `stat`, no read unless it changed).
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
    io::{self, Write as _},
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
    path: PathBuf,
    lock_path: PathBuf,
    poll: Duration,
}

/// The longest an operation waits for another process's `flock`.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// The record's fields in the file; everything else in it is kept as it is.
const RECORD_KEYS: [&str; 5] = [
    "holderIdentity",
    "leaseDurationSeconds",
    "acquireTime",
    "renewTime",
    "leaderTransitions",
];

// === impl FileLock ===

impl FileLock {
    /// How often a watch checks the file for changes.
    pub const DEFAULT_POLL: Duration = Duration::from_millis(20);

    /// A lock in the file at `path` (created on first acquisition; its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        Self {
            inner: Arc::new(Inner {
                path,
                lock_path: lock_path.into(),
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
                lock_path: inner.lock_path.clone(),
                poll,
            }),
        }
    }

    /// The record file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
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

    fn get(&self) -> BoxFuture<'_, Result<Option<Versioned>, LockError>> {
        Box::pin(self.blocking(|inner| Ok(inner.read("get")?.map(|s| s.versioned()))))
    }

    fn create(&self, record: &LeaderRecord) -> BoxFuture<'_, Result<Version, LockError>> {
        let record = record.clone();
        Box::pin(self.blocking(move |inner| {
            let _guard = inner.lock("create")?;
            if inner.read("create")?.is_some() {
                return Err(LockError::Conflict {
                    op: "create",
                    object: inner.describe(),
                });
            }
            // Start generations from the clock so a deleted and re-created file never reuses a
            // version an old reader still holds.
            let generation = u64::try_from(jiff::Timestamp::now().as_microsecond()).unwrap_or(1);
            inner.write(Map::new(), &record, generation, "create")
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
            let _guard = inner.lock("update")?;
            let conflict = || LockError::Conflict {
                op: "update",
                object: inner.describe(),
            };
            let Some(stored) = inner.read("update")? else {
                return Err(conflict());
            };
            if stored.generation.to_string() != *version.0 {
                return Err(conflict());
            }
            inner.write(
                stored.object,
                &record,
                stored.generation.wrapping_add(1),
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
        Versioned {
            record: self.record,
            version: Version::new(self.generation.to_string()),
        }
    }
}

/// Holds the `flock` until dropped (closing the file releases it).
struct Guard(#[allow(dead_code)] File);

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

    /// Takes the exclusive lock without ever blocking indefinitely: a holder frozen inside its
    /// few-millisecond critical section (or another user holding the file) must not hang every
    /// candidate, so after [`LOCK_WAIT`] the operation fails as `Unavailable` and is retried.
    fn lock(&self, op: &'static str) -> Result<Guard, LockError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| {
                self.io_error(
                    op,
                    &format!("open lock file {}", self.lock_path.display()),
                    e,
                )
            })?;
        // Counted in 1 ms sleeps: this runs on a blocking thread, outside tokio's clock.
        let mut waited = Duration::ZERO;
        loop {
            match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Guard(f)),
                Err(rustix::io::Errno::WOULDBLOCK) if waited < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(1));
                    waited += Duration::from_millis(1);
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(LockError::Unavailable {
                        op,
                        object: self.describe(),
                        source: format!(
                            "{} is held by another process for more than {LOCK_WAIT:?}",
                            self.lock_path.display()
                        )
                        .into(),
                    });
                }
                Err(e) => return Err(self.io_error(op, "lock the lock file", e.into())),
            }
        }
    }

    fn read(&self, op: &'static str) -> Result<Option<Stored>, LockError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error(op, "read the record file", e)),
        };
        // No version: the generation lives inside the unreadable JSON, so the file is never
        // replaced automatically; a human removes or fixes it.
        let corrupt = |source| LockError::Corrupt {
            object: self.describe(),
            version: None,
            source,
        };
        let record = LeaderRecord::from_json(&bytes).map_err(corrupt)?;
        let object: Map<String, Value> = serde_json::from_slice(&bytes)
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
        Ok(Some(Stored {
            object,
            record,
            generation,
        }))
    }

    fn write(
        &self,
        mut object: Map<String, Value>,
        record: &LeaderRecord,
        generation: u64,
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

        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let result = (|| {
            // Under the lock no other leasehold writes this name; a leftover from a crash is
            // removed, and create_new (O_EXCL) never follows a planted symlink.
            let _ = fs::remove_file(&tmp);
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io_error(op, "write the record file", e)
        })?;
        Ok(Version::new(generation.to_string()))
    }
}
