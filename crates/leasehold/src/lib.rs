//! Leader election for Kubernetes workloads: exactly one active replica, with a fencing token.
//!
//! Several replicas of a controller or service run; one must act and the others stand by,
//! ready to take over. leasehold elects that one on a shared lock (a Kubernetes Lease, or a local
//! file), with client-go's semantics and record format so Go and Rust candidates can share a
//! lock, and with these guarantees on top:
//!
//! - **Stops before others can start.** A leader cancels its [`Leadership`] token when no renewal
//!   has succeeded for the renew deadline, counted from the send time, and every request has its
//!   own deadline, so a hung API server cannot keep it acting past the point where others may take
//!   over.
//! - **Watch, not polling.** Standbys watch the lock and take over within milliseconds of a
//!   release; an expiry fires exactly a lease duration after the last change they observed.
//! - **Fenced.** Every term carries a [`FencingToken`] larger than every earlier term's.
//!
//! # Quick start
//! ```no_run
//! use leasehold::{Elector, Timing, backend::file::FileLock};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let lock = FileLock::new("/tmp/my-app.leader.json");
//! let cancel = CancellationToken::new();
//! let elector = Elector::new(lock, "replica-1", Timing::default())?
//!     .on_started_leading(|leadership| {
//!         tokio::spawn(async move {
//!             println!("leading with fencing token {}", leadership.fencing_token());
//!             leadership.lost().await; // stop acting here
//!         });
//!     })
//!     .on_new_leader(|who| println!("leader is now {who:?}"));
//! let status = elector.handle();
//! tokio::spawn(elector.run(cancel.clone()));
//! // ... status.is_leader(), status.leader() ...
//! cancel.cancel(); // steps down and releases
//! # Ok(()) }
//! ```
//! For Kubernetes (feature `kube`, on by default), build a `backend::kubernetes::LeaseLock` from
//! your own `kube::Client`: every request goes through it.

pub mod backend;
#[cfg(feature = "kube")]
pub mod compat;
mod config;
mod elector;
#[cfg(feature = "kube")]
pub mod fence;
pub mod metrics;
#[cfg(feature = "runtime")]
pub mod runtime;

/// The README's examples, compiled as doctests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The examples of `docs/migrating-from-go.md`, compiled as doctests for the same reason. They
/// use the Kubernetes locks, so they need the `kube` feature (on by default).
#[cfg(all(doctest, feature = "kube"))]
#[doc = include_str!("../../../docs/migrating-from-go.md")]
pub struct MigratingFromGoDoctests;

pub use config::{Config, default_identity};
pub use elector::{
    Deadline, Election, Elector, ElectorHandle, Error, Leadership, Result, TransferError,
    display_chain,
};
pub use leasehold_core::{
    ConfigError, FailureKind, FencingToken, LastError, LeaderRecord, LockBackend, LockError,
    LockEvent, LockEventKind, Role, Status, StepDown, Timing, Version, Versioned, record,
};
