//! Lock backends: one module per store. Each implements [`leasehold_core::LockBackend`] and
//! runs the conformance suite from its tests.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod file;
#[cfg(feature = "kube")]
pub mod kubernetes;

/// The holder a lock reports when it cannot tell who holds it (client-go's
/// `resourcelock.UnknownLeader`): a Kubernetes `MultiLock` (feature `kube`) whose two records
/// name different holders. Nobody may take over until that state has been seen unchanged for a
/// full lease.
pub const UNKNOWN_LEADER: &str = "leaderelection.k8s.io/unknown";
