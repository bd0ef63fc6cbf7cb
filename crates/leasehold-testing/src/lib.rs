//! Test support for leasehold (not published).
//!
//! - [`conformance`]: the suite every [`leasehold_core::LockBackend`] runs from its own tests;
//! - [`harness`]: real servers on 127.0.0.1 (etcd, kube-apiserver) and the client-go peers, built
//!   from their Go modules by `scripts/build-servers.sh` and cached;
//! - [`mem`]: an in-memory backend with fault injection for paused-time driver tests;
//! - [`history`]: a recorder of leadership intervals and the checker of their invariants.

pub mod conformance;
pub mod fake_api;
pub mod harness;
pub mod history;
pub mod mem;
