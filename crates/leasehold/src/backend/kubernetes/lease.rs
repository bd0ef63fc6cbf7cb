//! The `coordination.k8s.io/v1` Lease lock, client-go's default (`resourcelock.LeaseLock`).

use super::object::{Kind, LeaseCodec, ObjectLock, delegate_lock_backend};
use k8s_openapi::api::coordination::v1::LeaseSpec;
use leasehold_core::LeaderRecord;

/// A lock on a Kubernetes Lease.
///
/// Replaces client-go's `resourcelock.LeaseLock` and Go's `LeaseLock`. The record maps to
/// `spec.holderIdentity`, `spec.leaseDurationSeconds`, `spec.acquireTime`, `spec.renewTime`
/// (MicroTime) and `spec.leaseTransitions`, exactly as client-go writes them. The object is kept
/// as raw JSON text, so an update changes those five fields and nothing else: labels, annotations,
/// `spec.strategy` and fields newer than this code survive it. `spec.preferredHolder`
/// (Coordinated Leader Election) is read into [`LeaderRecord::preferred_holder`]: a leader that
/// sees it name another candidate releases the Lease to it, and every write but that release
/// removes it, as client-go's writes do.
///
/// A directed transfer ([`LeaderRecord::handover_from`]) is kept in the annotation
/// [`HANDOVER_ANNOTATION`], which client-go neither reads nor removes: its candidates see only a
/// Lease held by the target.
///
/// Needs `get`, `create`, `update` and `watch` on `leases.coordination.k8s.io` (and `create` on
/// `events` with [`with_events`](Self::with_events)).
#[derive(Clone)]
pub struct LeaseLock(ObjectLock<LeaseCodec>);

delegate_lock_backend!(LeaseLock);

/// The Lease annotation that marks a directed transfer: the identity of the leader that wrote
/// the Lease over to the holder it names ([`LeaderRecord::handover_from`]).
///
/// Only the transfer's own write sets it, and every later write by leasehold removes it. A
/// client-go candidate's writes keep it, but they also name that candidate as the holder, and
/// only the named holder acts on the mark, so a mark left behind is never taken for a new
/// transfer.
pub const HANDOVER_ANNOTATION: &str = "leasehold.dev/handover-from";

// === impl LeaseLock ===

impl LeaseLock {
    /// A lock on the Lease `namespace/name`.
    pub fn new(client: impl Into<super::ApiClient>, namespace: &str, name: &str) -> Self {
        Self(ObjectLock::new(client.into(), Kind::Lease, namespace, name))
    }

    /// Records an Event on the Lease at every acquisition and loss (client-go's
    /// `ResourceLockConfig.EventRecorder`). Best effort: a failure is logged, never fatal.
    #[must_use]
    pub fn with_events(self, on: bool) -> Self {
        Self(self.0.with_events(on))
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// The Lease's namespace.
    pub fn namespace(&self) -> &str {
        self.0.namespace()
    }
}

/// Converts a record to a Lease spec, as client-go's `LeaderElectionRecordToLeaseSpec` (and Go's
/// `LeaseLockRecordToLeaseSpec`) does. `strategy` and `preferredHolder` are left unset.
#[doc(alias = "LeaseLockRecordToLeaseSpec")]
#[doc(alias = "LeaderElectionRecordToLeaseSpec")]
pub fn record_to_lease_spec(record: &LeaderRecord) -> LeaseSpec {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    LeaseSpec {
        holder_identity: Some(record.holder_identity.clone()),
        lease_duration_seconds: Some(record.lease_duration_seconds),
        acquire_time: record.acquire_time.map(MicroTime),
        renew_time: record.renew_time.map(MicroTime),
        lease_transitions: Some(record.leader_transitions),
        ..LeaseSpec::default()
    }
}

/// Converts a Lease spec to a record, as client-go's `LeaseSpecToLeaderElectionRecord` (and Go's
/// `LeaseSpecToLeaseLockRecord`) does: absent fields read as zero values.
#[doc(alias = "LeaseSpecToLeaseLockRecord")]
#[doc(alias = "LeaseSpecToLeaderElectionRecord")]
pub fn lease_spec_to_record(spec: &LeaseSpec) -> LeaderRecord {
    LeaderRecord::new(
        spec.holder_identity.clone().unwrap_or_default(),
        spec.lease_duration_seconds.unwrap_or_default(),
    )
    .with_acquire_time(spec.acquire_time.as_ref().map(|t| t.0))
    .with_renew_time(spec.renew_time.as_ref().map(|t| t.0))
    .with_leader_transitions(spec.lease_transitions.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_conversions_round_trip() {
        let r = LeaderRecord::new("a", 15)
            .with_acquire_time(Some("2024-01-02T03:04:05.123456Z".parse().unwrap()))
            .with_renew_time(Some("2024-01-02T03:04:06Z".parse().unwrap()))
            .with_leader_transitions(2);
        assert_eq!(lease_spec_to_record(&record_to_lease_spec(&r)), r);
        assert_eq!(
            lease_spec_to_record(&LeaseSpec::default()),
            LeaderRecord::default()
        );
    }
}
