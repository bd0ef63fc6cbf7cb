//! An in-memory [`LockBackend`] with fault injection, for driver tests on tokio's paused clock.
//!
//! It never replaces the real servers: it adds what they won't do on demand (hang every
//! request, fail the next ones) and counts requests by kind.

use futures_util::stream;
use leasehold_core::{
    LeaderRecord, LockBackend, LockError, Version, Versioned,
    lock::{BoxFuture, WatchStream},
};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Default)]
struct State {
    current: Option<Versioned>,
    /// The stored record cannot be decoded (set by [`MemLock::put_corrupt`]) at this version.
    corrupt: Option<Version>,
    next_version: u64,
    hang: bool,
    delay: std::time::Duration,
    fail_next: u32,
    requests: Vec<(&'static str, tokio::time::Instant)>,
}

/// A lock held in memory, shared by clones.
#[derive(Clone)]
pub struct MemLock {
    state: Arc<Mutex<State>>,
    tx: Arc<watch::Sender<Option<Versioned>>>,
}

impl Default for MemLock {
    fn default() -> Self {
        Self::new()
    }
}

// === impl MemLock ===

impl MemLock {
    /// An empty lock.
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            tx: Arc::new(watch::channel(None).0),
        }
    }

    /// Every request from now on hangs (never answers) until set back to false.
    pub fn set_hang(&self, hang: bool) {
        self.state.lock().expect("poisoned").hang = hang;
    }

    /// Every request from now on takes `delay` (on tokio's clock) before it is carried out.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.state.lock().expect("poisoned").delay = delay;
    }

    /// The next `n` requests fail with `Unavailable`.
    pub fn fail_next(&self, n: u32) {
        self.state.lock().expect("poisoned").fail_next = n;
    }

    /// Requests received so far, by kind (`get`, `create`, `update`, `watch`), with their
    /// arrival times. A watch is counted when it is opened.
    pub fn requests(&self) -> Vec<(&'static str, tokio::time::Instant)> {
        self.state.lock().expect("poisoned").requests.clone()
    }

    /// The stored record.
    pub fn current(&self) -> Option<Versioned> {
        self.state.lock().expect("poisoned").current.clone()
    }

    /// Writes a record as another writer would (bypassing compare-and-swap).
    pub fn put(&self, record: LeaderRecord) -> Version {
        let mut st = self.state.lock().expect("poisoned");
        st.next_version += 1;
        let v = Version::new(st.next_version.to_string());
        st.current = Some(Versioned::new(record, v.clone()));
        st.corrupt = None;
        self.tx.send_replace(st.current.clone());
        v
    }

    /// Replaces the stored record with one that cannot be decoded, as a hand edit might: reads
    /// fail with [`LockError::Corrupt`] naming the new version until the next write, and
    /// updates at that version succeed (as on a Kubernetes object with a broken annotation).
    pub fn put_corrupt(&self) -> Version {
        let mut st = self.state.lock().expect("poisoned");
        st.next_version += 1;
        let v = Version::new(st.next_version.to_string());
        st.corrupt = Some(v.clone());
        st.current = None;
        v
    }

    fn corrupt(&self) -> Option<LockError> {
        let v = self.state.lock().expect("poisoned").corrupt.clone()?;
        Some(LockError::Corrupt {
            object: "mem".into(),
            version: Some(v),
            source: leasehold_core::RecordError::NotAnObject,
        })
    }

    async fn enter(&self, op: &'static str) -> Result<(), LockError> {
        let delay = {
            let mut st = self.state.lock().expect("poisoned");
            st.requests.push((op, tokio::time::Instant::now()));
            st.delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let hang = {
            let mut st = self.state.lock().expect("poisoned");
            if st.fail_next > 0 {
                st.fail_next -= 1;
                return Err(LockError::Unavailable {
                    op,
                    object: "mem".into(),
                    source: "injected failure".into(),
                });
            }
            st.hang
        };
        if hang {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

impl LockBackend for MemLock {
    fn carries_handover(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        "mem".into()
    }

    fn get(&self) -> BoxFuture<'_, Result<Option<Versioned>, LockError>> {
        Box::pin(async move {
            self.enter("get").await?;
            if let Some(e) = self.corrupt() {
                return Err(e);
            }
            Ok(self.current())
        })
    }

    fn create(&self, record: &LeaderRecord) -> BoxFuture<'_, Result<Version, LockError>> {
        let record = record.clone();
        Box::pin(async move {
            self.enter("create").await?;
            if self.current().is_some() || self.corrupt().is_some() {
                return Err(LockError::Conflict {
                    op: "create",
                    object: "mem".into(),
                });
            }
            Ok(self.put(record))
        })
    }

    fn update(
        &self,
        record: &LeaderRecord,
        version: &Version,
    ) -> BoxFuture<'_, Result<Version, LockError>> {
        let record = record.clone();
        let version = version.clone();
        Box::pin(async move {
            self.enter("update").await?;
            let at = self
                .current()
                .map(|c| c.version)
                .or_else(|| self.state.lock().expect("poisoned").corrupt.clone());
            match at {
                Some(at) if at == version => Ok(self.put(record)),
                _ => Err(LockError::Conflict {
                    op: "update",
                    object: "mem".into(),
                }),
            }
        })
    }

    fn watch(&self, version: Option<&Version>) -> WatchStream {
        self.state
            .lock()
            .expect("poisoned")
            .requests
            .push(("watch", tokio::time::Instant::now()));
        let mut rx = self.tx.subscribe();
        let from = version.cloned();
        let first = {
            let cur = rx.borrow_and_update().clone();
            (cur.as_ref().map(|c| &c.version) != from.as_ref()).then_some(cur)
        };
        Box::pin(stream::unfold((rx, first), |(mut rx, first)| async move {
            if let Some(cur) = first {
                return Some((Ok(cur), (rx, None)));
            }
            rx.changed().await.ok()?;
            let cur = rx.borrow_and_update().clone();
            Some((Ok(cur), (rx, None)))
        }))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        crate::conformance::run_all(|_| super::MemLock::new()).await;
    }
}
