//! The `coordination.k8s.io/v1` Lease lock, client-go's default (`resourcelock.LeaseLock`).

use super::object::{Kind, ObjectLock, delegate_lock_backend};
use k8s_openapi::api::coordination::v1::LeaseSpec;
use leasehold_core::{LeaderRecord, RecordError};
use serde_json::{Map, Value};

/// A lock on a Kubernetes Lease.
///
/// Replaces client-go's `resourcelock.LeaseLock` and seed 004's `LeaseLock`. The record maps to
/// `spec.holderIdentity`, `spec.leaseDurationSeconds`, `spec.acquireTime`, `spec.renewTime`
/// (MicroTime) and `spec.leaseTransitions`, exactly as client-go writes them. The object is kept
/// as raw JSON, so an update changes those five fields and nothing else: labels, annotations,
/// `spec.strategy`, `spec.preferredHolder` and fields newer than this code survive it.
///
/// Needs `get`, `create`, `update` and `watch` on `leases.coordination.k8s.io` (and `create` on
/// `events` with [`with_events`](Self::with_events)).
#[derive(Clone)]
pub struct LeaseLock(ObjectLock);

delegate_lock_backend!(LeaseLock);

// === impl LeaseLock ===

impl LeaseLock {
    /// A lock on the Lease `namespace/name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self(ObjectLock::new(client, Kind::Lease, namespace, name))
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

/// Converts a record to a Lease spec, as client-go's `LeaderElectionRecordToLeaseSpec` (seed
/// 004's `LeaseLockRecordToLeaseSpec`) does. `strategy` and `preferredHolder` are left unset.
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

/// Converts a Lease spec to a record, as client-go's `LeaseSpecToLeaderElectionRecord` (seed
/// 004's `LeaseSpecToLeaseLockRecord`) does: absent fields read as zero values.
#[doc(alias = "LeaseSpecToLeaseLockRecord")]
#[doc(alias = "LeaseSpecToLeaderElectionRecord")]
pub fn lease_spec_to_record(spec: &LeaseSpec) -> LeaderRecord {
    LeaderRecord {
        holder_identity: spec.holder_identity.clone().unwrap_or_default(),
        lease_duration_seconds: spec.lease_duration_seconds.unwrap_or_default(),
        acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
        renew_time: spec.renew_time.as_ref().map(|t| t.0),
        leader_transitions: spec.lease_transitions.unwrap_or_default(),
    }
}

/// Reads the record out of a Lease's `spec` (absent `spec` reads as an empty record).
pub(crate) fn spec_to_record(spec: Option<&Value>) -> Result<LeaderRecord, RecordError> {
    // Read straight from the parsed object (this runs on every renewal): missing and `null`
    // fields are zero values, as Go's decoder reads them; a wrong type is an error naming it.
    let spec = match spec {
        None | Some(Value::Null) => return Ok(LeaderRecord::default()),
        Some(Value::Object(spec)) => spec,
        Some(other) => {
            return Err(RecordError::Field {
                field: "spec",
                reason: format!("expected an object, got {other}"),
            });
        }
    };
    let field = |name: &'static str| spec.get(name).filter(|v| !v.is_null());
    let int = |name: &'static str| -> Result<i32, RecordError> {
        match field(name) {
            None => Ok(0),
            Some(v) => v
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| RecordError::Field {
                    field: name,
                    reason: format!("expected a 32-bit integer, got {v}"),
                }),
        }
    };
    let time = |name: &'static str| -> Result<Option<jiff::Timestamp>, RecordError> {
        match field(name) {
            None => Ok(None),
            Some(Value::String(t)) if t.is_empty() => Ok(None),
            Some(Value::String(t)) => t.parse().map(Some).map_err(|e| RecordError::Field {
                field: name,
                reason: format!("not an RFC 3339 time: {e}"),
            }),
            Some(v) => Err(RecordError::Field {
                field: name,
                reason: format!("expected a time string, got {v}"),
            }),
        }
    };
    let holder_identity = match field("holderIdentity") {
        None => String::new(),
        Some(Value::String(h)) => h.clone(),
        Some(v) => {
            return Err(RecordError::Field {
                field: "holderIdentity",
                reason: format!("expected a string, got {v}"),
            });
        }
    };
    Ok(LeaderRecord {
        holder_identity,
        lease_duration_seconds: int("leaseDurationSeconds")?,
        acquire_time: time("acquireTime")?,
        renew_time: time("renewTime")?,
        leader_transitions: int("leaseTransitions")?,
    })
}

/// Writes the record into a Lease's `spec` as client-go's `LeaderElectionRecordToLeaseSpec` does,
/// leaving every other key alone.
pub(crate) fn record_into_spec(r: &LeaderRecord, spec: &mut Map<String, Value>) {
    let micro = |t: &Option<jiff::Timestamp>| match t {
        Some(t) => Value::String(t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
        None => Value::Null,
    };
    spec.insert(
        "holderIdentity".into(),
        Value::String(r.holder_identity.clone()),
    );
    spec.insert(
        "leaseDurationSeconds".into(),
        Value::from(r.lease_duration_seconds),
    );
    spec.insert("acquireTime".into(), micro(&r.acquire_time));
    spec.insert("renewTime".into(), micro(&r.renew_time));
    spec.insert("leaseTransitions".into(), Value::from(r.leader_transitions));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    #[test]
    fn spec_round_trip_keeps_other_keys() {
        let mut spec: Map<String, Value> = serde_json::from_str(
            r#"{"holderIdentity":"a","leaseDurationSeconds":15,"acquireTime":"2024-01-02T03:04:05.123456Z","renewTime":"2024-01-02T03:04:06.000001Z","leaseTransitions":2,"strategy":"OldestEmulationVersion","preferredHolder":"b","futureField":{"x":1}}"#,
        )
        .unwrap();
        let r = spec_to_record(Some(&Value::Object(spec.clone()))).unwrap();
        assert_eq!(r.holder_identity, "a");
        assert_eq!(r.leader_transitions, 2);
        let r2 = LeaderRecord {
            holder_identity: "c".into(),
            leader_transitions: 3,
            ..r.clone()
        };
        record_into_spec(&r2, &mut spec);
        assert_eq!(spec["strategy"], "OldestEmulationVersion");
        assert_eq!(spec["preferredHolder"], "b");
        assert_eq!(spec["futureField"]["x"], 1);
        assert_eq!(spec["renewTime"], "2024-01-02T03:04:06.000001Z");
        assert_eq!(spec_to_record(Some(&Value::Object(spec))).unwrap(), r2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Whatever a Lease's spec holds, reading it gives a record or a typed error, and
        /// writing a record back keeps every key that is not one of the record's five.
        #[test]
        fn any_spec_reads_cleanly_and_an_update_keeps_other_keys(
            spec in proptest::collection::btree_map(
                proptest::sample::select(vec!["holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions", "strategy", "preferredHolder", "x-future"]),
                proptest::prop_oneof![
                    proptest::prelude::Just(Value::Null),
                    proptest::prelude::any::<i64>().prop_map(Value::from),
                    ".{0,30}".prop_map(Value::String),
                    proptest::prelude::any::<bool>().prop_map(Value::Bool),
                ],
                0..8,
            )
        ) {
            let mut map: Map<String, Value> = spec.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
            let before = map.clone();
            let _ = spec_to_record(Some(&Value::Object(map.clone())));
            record_into_spec(&LeaderRecord { holder_identity: "me".into(), ..Default::default() }, &mut map);
            for (k, v) in &before {
                if !["holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions"].contains(&k.as_str()) {
                    proptest::prop_assert_eq!(map.get(k), Some(v));
                }
            }
            proptest::prop_assert!(spec_to_record(Some(&Value::Object(map))).is_ok());
        }
    }

    #[test]
    fn a_bad_spec_is_a_typed_error() {
        assert!(spec_to_record(Some(&Value::String("x".into()))).is_err());
        let bad = serde_json::json!({"leaseTransitions": "many"});
        assert!(spec_to_record(Some(&bad)).is_err());
        assert_eq!(spec_to_record(None).unwrap(), LeaderRecord::default());
    }
}
