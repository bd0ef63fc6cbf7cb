//! The part of leasehold that every backend, the library driver and the CLI agree on.
//!
//! Leader election on a shared record is easy to get subtly wrong: a leader that keeps acting
//! after others may take over, a standby that trusts another host's wall clock, a release that
//! is lost to a conflict. This crate holds the rules, with no I/O, so they can be tested
//! exactly:
//!
//! - [`record`]: the leader record, field for field as client-go's `LeaderElectionRecord`, and
//!   the [`FencingToken`] derived from it;
//! - [`lock`]: the [`LockBackend`] trait every backend implements, with its written contract;
//! - [`config`]: the timing ([`Timing`]) and its validation;
//! - [`machine`]: the sans-IO state machine, `(state, Event, now) -> Vec<Action>`.
//! - [`queue`]: the same for etcd's election, a queue of keys ordered by create revision, as
//!   `concurrency.Election` and `etcdctl elect` take part in it.
//!
//! The tokio driver that runs the machine against a backend is the `leasehold` crate.

pub mod config;
pub mod lock;
pub mod machine;
pub mod queue;
pub mod record;
pub mod session;

pub use config::{ConfigError, Timing};
pub use lock::{
    FailureKind, LastError, LockBackend, LockError, LockEvent, LockEventKind, Version, Versioned,
};
pub use machine::{Action, Event, Machine, Role, Status, StepDown};
pub use record::{FencingToken, LeaderRecord, RecordError};
