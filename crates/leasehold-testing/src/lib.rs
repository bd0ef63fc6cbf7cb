//! Test support for leasehold (not published).
//!
//! - [`client_config`]: kubeconfigs for `proxy-url` (through a real CONNECT proxy),
//!   `tls-server-name`, exec credential plugins and YAML anchors, on a real kube-apiserver;
//! - [`conformance`]: the suite every [`leasehold_core::LockBackend`] runs from its own tests;
//! - [`harness`]: real servers on 127.0.0.1 (etcd, kube-apiserver) and the client-go peers, built
//!   from their Go modules by `scripts/build-servers.sh` and cached;
//! - [`mem`]: an in-memory backend with fault injection for paused-time driver tests;
//! - [`history`]: a recorder of leadership intervals and the checker of their invariants;
//! - [`proxy`]: a TCP proxy that adds latency, stalls or cuts one client's connections.

pub mod client_config;
pub mod conformance;
pub mod fake_api;
pub mod harness;
pub mod history;
pub mod mem;
pub mod proxy;
