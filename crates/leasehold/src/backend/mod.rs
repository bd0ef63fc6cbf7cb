//! Lock backends: one module per store. Each implements [`leasehold_core::LockBackend`] and
//! runs the conformance suite from its tests.

pub mod file;
#[cfg(feature = "kube")]
pub mod kube;
