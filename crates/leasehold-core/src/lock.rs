//! The lock-backend contract: what a store must offer for leasehold to elect on it.
//!
//! A backend is deliberately small (get, create, compare-and-swap update, watch), the way tower's
//! `Service` is: the election rules live in [`crate::machine`], and every backend runs the same
//! conformance suite (`leasehold_testing::conformance`).

use crate::record::{LeaderRecord, RecordError};
use futures_core::Stream;
use std::{fmt, future::Future, pin::Pin, sync::Arc};

/// A token naming one stored state of the lock object (a Kubernetes `resourceVersion`, an etcd
/// mod revision, a file generation). As a name only equality is meaningful; a backend whose
/// versions are also revisions of its whole store says so with
/// [`with_revision`](Self::with_revision).
#[derive(Clone, Debug)]
pub struct Version {
    id: Arc<str>,
    revision: Option<u64>,
}

// === impl Version ===

/// Versions are equal when they name the same state: the revision is read from the name.
impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Version {}

impl std::hash::Hash for Version {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl Version {
    /// Wraps a backend's version string.
    pub fn new(v: impl Into<Arc<str>>) -> Self {
        Self {
            id: v.into(),
            revision: None,
        }
    }

    /// Marks this version as the store's revision `revision`: every later write to the store,
    /// to any object, even to this lock deleted and created again, has a larger one. A
    /// Kubernetes `resourceVersion` is one (the etcd revision of the write; comparable by
    /// contract since Kubernetes 1.35).
    ///
    /// The fencing token of a term is then the revision of the write that began it, which no
    /// other writer of the lock can make repeat; without revisions it is the record's
    /// `leaderTransitions` ([`FencingToken`](crate::FencingToken)).
    #[must_use]
    pub fn with_revision(mut self, revision: u64) -> Self {
        self.revision = Some(revision);
        self
    }

    /// The backend's version string, as given to [`new`](Self::new).
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The store revision, if the backend marked one ([`with_revision`](Self::with_revision)).
    pub fn revision(&self) -> Option<u64> {
        self.revision
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// A record together with the version it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Versioned {
    /// The leader record.
    pub record: LeaderRecord,
    /// The version of the object that holds it.
    pub version: Version,
    /// What else a standby compares, beside [`record`](Self::record), to tell whether the
    /// holder renewed: `None` for a backend whose record is the stored record itself.
    ///
    /// A backend whose record is a summary of several stored records (the two sides of a
    /// `MultiLock`) sets it to something that changes whenever any of them changes, as
    /// client-go compares the raw bytes of both records. Without it a renewal that touches one
    /// side only, or that the summary hides, would look like no change at all, and a standby
    /// would take over while the holder still renews.
    pub change_key: Option<Arc<str>>,
}

// === impl Versioned ===

impl Versioned {
    /// A record read at `version`, with no [`change_key`](Self::change_key).
    pub fn new(record: LeaderRecord, version: Version) -> Self {
        Self {
            record,
            version,
            change_key: None,
        }
    }

    /// Sets the [`change_key`](Self::change_key).
    #[must_use]
    pub fn with_change_key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.change_key = Some(key.into());
        self
    }
}

/// Why a backend operation failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The object changed since the version given (or, for create, already exists). Retryable
    /// after a fresh read: the caller must re-read and decide again.
    #[error("{op} `{object}`: conflict (the lock changed since it was read)")]
    Conflict {
        /// The operation (`create`, `update`).
        op: &'static str,
        /// The lock object's description.
        object: String,
    },
    /// The store could not be reached or answered with a transient failure (timeout, 5xx, 429,
    /// connection refused). Retryable.
    #[error("{op} `{object}`: store unavailable")]
    Unavailable {
        /// The operation.
        op: &'static str,
        /// The lock object's description.
        object: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The caller lacks a permission. Not retryable until someone grants it.
    #[error("cannot {verb} {object}: forbidden (needs `{verb}` on `{resource}`)")]
    Forbidden {
        /// The verb that was denied (`get`, `create`, `update`, `watch`).
        verb: &'static str,
        /// The resource, e.g. `leases.coordination.k8s.io`.
        resource: String,
        /// The lock object's description.
        object: String,
    },
    /// The stored record cannot be read. Not retryable; leasehold never overwrites it.
    #[error("{object}: stored record is corrupt")]
    Corrupt {
        /// The lock object's description (a path for the file backend).
        object: String,
        /// The version of the object holding the unreadable record, when the store can tell.
        /// With it, an elector that has seen this version unchanged for a full lease duration
        /// may replace the record; without it the record is never overwritten.
        version: Option<Version>,
        /// What is wrong.
        #[source]
        source: RecordError,
    },
    /// The write may have been applied in whole or in part: a backend that writes more than
    /// one object (a `MultiLock`) wrote the first and was refused the second. Retryable after a
    /// fresh read; unlike [`Conflict`](Self::Conflict) it does not say that nothing landed, so
    /// the caller must still recognise the written record as its own.
    #[error("{op} `{object}`: partly applied")]
    Ambiguous {
        /// The operation.
        op: &'static str,
        /// The lock object's description.
        object: String,
        /// What landed and what did not.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Any other failure (bad configuration of the backend, an unexpected answer).
    #[error("{op} `{object}`: {message}")]
    Other {
        /// The operation.
        op: &'static str,
        /// The lock object's description.
        object: String,
        /// What happened.
        message: String,
        /// The cause, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// What kind of failure a [`LastError`] reports: enough to decide without reading the message
/// (an operator that cannot get `update` on its Lease should exit, not wait).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// [`LockError::Conflict`]: someone else wrote first. Normal between candidates.
    Conflict,
    /// [`LockError::Unavailable`]: the store could not be reached or answered with a transient
    /// failure.
    Unavailable,
    /// The request did not complete before its deadline.
    Timeout,
    /// [`LockError::Forbidden`]: a permission is missing; retrying will not help until someone
    /// grants it.
    Forbidden,
    /// [`LockError::Corrupt`]: the stored record cannot be read.
    Corrupt,
    /// [`LockError::Ambiguous`]: a write landed in part.
    Partial,
    /// Another process renews the lock under this candidate's identity.
    DuplicateIdentity,
    /// [`LockError::Other`].
    Other,
}

/// The last failure talking to the lock, as [`Status::last_error`](crate::Status::last_error)
/// keeps it until a request succeeds again.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastError {
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// The lock object's description (`lease ns/name`, a path).
    pub object: String,
    /// The whole message, with its causes.
    pub message: String,
}

// === impl LastError ===

impl LastError {
    /// A failure of `kind` on `object`.
    pub fn new(kind: FailureKind, object: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            object: object.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for LastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The coarse kind of a [`LockError`], as the state machine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`LockError::Conflict`].
    Conflict,
    /// The request did not complete before its deadline: it may or may not have been applied.
    Timeout,
    /// Part of the write landed and part was refused as a conflict ([`LockError::Ambiguous`]):
    /// the machine keeps the write as its own, and reads again at once.
    Partial,
    /// Any other failure; the machine retries after the retry period.
    Failed,
}

// === impl LockError ===

impl LockError {
    /// Whether trying again (after a fresh read) can succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Conflict { .. } | Self::Unavailable { .. } | Self::Ambiguous { .. }
        )
    }

    /// The kind a [`LastError`] reports.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            Self::Conflict { .. } => FailureKind::Conflict,
            Self::Unavailable { .. } => FailureKind::Unavailable,
            Self::Forbidden { .. } => FailureKind::Forbidden,
            Self::Corrupt { .. } => FailureKind::Corrupt,
            Self::Ambiguous { .. } => FailureKind::Partial,
            Self::Other { .. } => FailureKind::Other,
        }
    }

    /// The description of the lock object the failure is about.
    pub fn object(&self) -> &str {
        match self {
            Self::Conflict { object, .. }
            | Self::Unavailable { object, .. }
            | Self::Forbidden { object, .. }
            | Self::Corrupt { object, .. }
            | Self::Ambiguous { object, .. }
            | Self::Other { object, .. } => object,
        }
    }

    /// The kind the state machine reacts to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Conflict { .. } => ErrorKind::Conflict,
            Self::Ambiguous { .. } => ErrorKind::Partial,
            _ => ErrorKind::Failed,
        }
    }
}

/// A boxed, sendable future, as backends return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// The stream a [`LockBackend::watch`] returns.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Option<Versioned>, LockError>> + Send>>;

/// A store that holds one leader record and can compare-and-swap it.
///
/// Replaces client-go's `resourcelock.Interface` (`Get`, `Create`, `Update`, `Describe`; its
/// `RecordEvent` is [`record_event`](Self::record_event), and `Identity` lives in the elector),
/// with a `watch` added so standbys need not poll.
///
/// # Correctness
/// Every implementation must guarantee, and the conformance suite checks:
/// - [`get`](Self::get) returns the record as last durably written, or `None` if the object does
///   not exist.
/// - [`create`](Self::create) fails with [`LockError::Conflict`] if the object exists, and never
///   replaces it.
/// - [`update`](Self::update) succeeds only if the stored version equals the one given, and then
///   returns the new version; with a stale version it fails with [`LockError::Conflict`] and
///   leaves the store unchanged. It returns only after the write is durable.
/// - An update replaces only the record's five fields: everything else the object holds (labels,
///   annotations, other spec fields, fields this code does not know) is kept as it was.
/// - [`watch`](Self::watch) yields the object's state (`None` after a delete) after every change
///   later than the version given, in order; it may skip intermediate states and may yield the
///   same state twice, but never an older state after a newer one. When it cannot continue (e.g.
///   the version is too old, HTTP 410) it yields an error or ends, and the caller reads again and
///   starts a new watch.
/// - A stored record that cannot be decoded is reported as [`LockError::Corrupt`], never treated
///   as absent or empty.
/// - No method may hang forever; the caller also puts its own deadline on every call.
pub trait LockBackend: Send + Sync + 'static {
    /// A human-readable name of the lock object, for logs and errors (`lease ns/name`, a path).
    #[doc(alias = "Describe")]
    fn describe(&self) -> String;

    /// Reads the record.
    ///
    /// # Errors
    /// See [`LockError`]; a missing object is `Ok(None)`, not an error.
    fn get(&self) -> BoxFuture<'_, Result<Option<Versioned>, LockError>>;

    /// Creates the object holding `record`.
    ///
    /// # Errors
    /// [`LockError::Conflict`] if it exists.
    fn create(&self, record: &LeaderRecord) -> BoxFuture<'_, Result<Version, LockError>>;

    /// Replaces the record if the object is still at `version`.
    ///
    /// # Errors
    /// [`LockError::Conflict`] if the version is stale (or the object was deleted).
    fn update(
        &self,
        record: &LeaderRecord,
        version: &Version,
    ) -> BoxFuture<'_, Result<Version, LockError>>;

    /// Watches the object for changes after `version` (`None`: from now).
    fn watch(&self, version: Option<&Version>) -> WatchStream;

    /// Whether the backend stores [`LeaderRecord::handover_from`], which a directed transfer
    /// needs: without it the target never sees the mark, and a transfer falls back to expiry.
    /// The default is `false`; the elector refuses a transfer on such a backend.
    fn carries_handover(&self) -> bool {
        false
    }

    /// Records a leadership change for humans (a Kubernetes Event on the lock object). Best
    /// effort: the elector logs a failure and carries on. The default records nothing.
    ///
    /// Replaces client-go's `resourcelock.Interface.RecordEvent`.
    #[doc(alias = "RecordEvent")]
    fn record_event(&self, event: &LockEvent) -> BoxFuture<'_, Result<(), LockError>> {
        let _ = event;
        Box::pin(async { Ok(()) })
    }
}

/// A boxed backend is a backend, so a program can pick one at run time
/// (`Box<dyn LockBackend>`).
impl<T: LockBackend + ?Sized> LockBackend for Box<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn get(&self) -> BoxFuture<'_, Result<Option<Versioned>, LockError>> {
        (**self).get()
    }
    fn create(&self, record: &LeaderRecord) -> BoxFuture<'_, Result<Version, LockError>> {
        (**self).create(record)
    }
    fn update(
        &self,
        record: &LeaderRecord,
        version: &Version,
    ) -> BoxFuture<'_, Result<Version, LockError>> {
        (**self).update(record, version)
    }
    fn watch(&self, version: Option<&Version>) -> WatchStream {
        (**self).watch(version)
    }
    fn record_event(&self, event: &LockEvent) -> BoxFuture<'_, Result<(), LockError>> {
        (**self).record_event(event)
    }
    fn carries_handover(&self) -> bool {
        (**self).carries_handover()
    }
}

/// A leadership change, as recorded by [`LockBackend::record_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockEvent {
    /// The candidate whose leadership changed.
    pub identity: String,
    /// What happened.
    pub kind: LockEventKind,
    /// The term's fencing token.
    pub fencing_token: crate::FencingToken,
}

/// What a [`LockEvent`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockEventKind {
    /// The candidate acquired the lock.
    BecameLeader,
    /// The candidate stopped leading.
    StoppedLeading,
}

// === impl LockEvent ===

impl LockEvent {
    /// `identity`'s leadership changed as `kind` says, in the term of `fencing_token`.
    pub fn new(
        identity: impl Into<String>,
        kind: LockEventKind,
        fencing_token: crate::FencingToken,
    ) -> Self {
        Self {
            identity: identity.into(),
            kind,
            fencing_token,
        }
    }

    /// The human-readable message, as client-go writes it (`<identity> became leader`), with
    /// the fencing token appended.
    pub fn message(&self) -> String {
        let what = match self.kind {
            LockEventKind::BecameLeader => "became leader",
            LockEventKind::StoppedLeading => "stopped leading",
        };
        format!(
            "{} {what} (fencing token {})",
            self.identity, self.fencing_token
        )
    }
}
