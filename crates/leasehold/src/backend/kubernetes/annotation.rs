//! The ConfigMap and Endpoints locks of client-go ≤ 1.23 and the Go electors built on them: the record is JSON in
//! the annotation `control-plane.alpha.kubernetes.io/leader`.

use super::object::{AnnotationCodec, Kind, ObjectLock, delegate_lock_backend};
use leasehold_core::{LeaderRecord, RecordError};
use std::collections::BTreeMap;

/// The annotation client-go keeps the record in (`resourcelock.LeaderElectionRecordAnnotationKey`).
pub const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// The largest annotation value read as a record. A record is under 1 KiB; anything near the API
/// server's 256 KiB annotation limit is not one.
const MAX_RECORD_BYTES: usize = 64 * 1024;

/// A lock whose record lives in an annotation of a ConfigMap or an Endpoints object.
///
/// Replaces client-go's `resourcelock.ConfigMapLock` and `resourcelock.EndpointsLock` (removed
/// from client-go in 1.24, still used by Endpoints-annotation electors and the k8s-elector sidecar). The record
/// is encoded byte for byte as those wrote it: `{"holderIdentity":..,"leaseDurationSeconds":..,
/// "acquireTime":..,"renewTime":..,"leaderTransitions":..}` with RFC 3339 times in whole seconds.
/// Other annotations, labels and the object's data (`data`, `binaryData`, `subsets`) are kept.
///
/// Use it to keep electing with Go candidates that still use these locks, and to migrate them to
/// Leases through [`MultiLock`](super::MultiLock). Needs `get`, `create`, `update` and `watch` on
/// `configmaps` or `endpoints`.
///
/// A value that is not a record (bad JSON, a holder without `leaseDurationSeconds` or
/// `renewTime`, a negative duration, more than 64 KiB) is [`leasehold_core::LockError::Corrupt`]
/// naming the object; the elector replaces it only after seeing it unchanged for a full lease.
#[derive(Clone)]
#[doc(alias = "ConfigMapLock")]
#[doc(alias = "EndpointsLock")]
pub struct AnnotationLock(ObjectLock<AnnotationCodec>);

delegate_lock_backend!(AnnotationLock);

// === impl AnnotationLock ===

impl AnnotationLock {
    /// A lock on the annotation of the ConfigMap `namespace/name`.
    pub fn config_map(client: impl Into<super::ApiClient>, namespace: &str, name: &str) -> Self {
        Self(ObjectLock::new(
            client.into(),
            Kind::ConfigMap,
            namespace,
            name,
        ))
    }

    /// A lock on the annotation of the Endpoints object `namespace/name`.
    pub fn endpoints(client: impl Into<super::ApiClient>, namespace: &str, name: &str) -> Self {
        Self(ObjectLock::new(
            client.into(),
            Kind::Endpoints,
            namespace,
            name,
        ))
    }

    /// Records an Event on the object at every acquisition and loss. Best effort.
    #[must_use]
    pub fn with_events(self, on: bool) -> Self {
        Self(self.0.with_events(on))
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// The object's namespace.
    pub fn namespace(&self) -> &str {
        self.0.namespace()
    }
}

/// Reads the record from an object's annotations. No annotation reads as an empty (released)
/// record, as client-go reads it.
pub(crate) fn read(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<LeaderRecord, RecordError> {
    let Some(value) = annotations.and_then(|a| a.get(LEADER_ANNOTATION)) else {
        return Ok(LeaderRecord::default());
    };
    parse(value)
}

/// Parses an annotation value, stricter than Go's decoder where a lenient reading would be
/// unsafe: a holder with no duration or renew time would read as "expired at once".
pub(crate) fn parse(value: &str) -> Result<LeaderRecord, RecordError> {
    if value.len() > MAX_RECORD_BYTES {
        return Err(RecordError::Field {
            field: LEADER_ANNOTATION,
            reason: format!(
                "value is {} bytes; a leader record is under 1 KiB",
                value.len()
            ),
        });
    }
    let record = LeaderRecord::from_json(value.as_bytes())?;
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(value).map_err(RecordError::Json)?;
    if record.lease_duration_seconds < 0 {
        return Err(RecordError::Field {
            field: "leaseDurationSeconds",
            reason: format!(
                "must not be negative, got {}",
                record.lease_duration_seconds
            ),
        });
    }
    if !record.holder_identity.is_empty() {
        for field in ["leaseDurationSeconds", "renewTime"] {
            if object.get(field).is_none_or(serde_json::Value::is_null) {
                return Err(RecordError::Field {
                    field,
                    reason: format!(
                        "missing, but the record names holder `{}`",
                        record.holder_identity
                    ),
                });
            }
        }
    }
    Ok(record)
}

/// Writes the record into the annotations, leaving every other annotation alone.
pub(crate) fn write(record: &LeaderRecord, annotations: &mut BTreeMap<String, String>) {
    annotations.insert(
        LEADER_ANNOTATION.to_owned(),
        String::from_utf8(record.to_json(false)).unwrap_or_default(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_client_go_annotations_byte_for_byte() {
        let json = r#"{"holderIdentity":"a","leaseDurationSeconds":15,"acquireTime":"2024-01-02T03:04:05Z","renewTime":"2024-01-02T03:04:07Z","leaderTransitions":3}"#;
        let mut ann = BTreeMap::from([
            (LEADER_ANNOTATION.to_owned(), json.to_owned()),
            ("other".to_owned(), "kept".to_owned()),
        ]);
        let r = read(Some(&ann)).unwrap();
        assert_eq!(r.holder_identity, "a");
        write(&r, &mut ann);
        assert_eq!(ann[LEADER_ANNOTATION], json);
        assert_eq!(ann["other"], "kept");
        assert_eq!(read(None).unwrap(), LeaderRecord::default());
    }

    #[test]
    fn malformed_values_are_typed_errors_naming_the_problem() {
        let cases = [
            ("{not json", "not a leader election record"),
            (
                r#"{"holderIdentity":"a","renewTime":"2024-01-02T03:04:07Z"}"#,
                "leaseDurationSeconds",
            ),
            (
                r#"{"holderIdentity":"a","leaseDurationSeconds":15}"#,
                "renewTime",
            ),
            (
                r#"{"holderIdentity":"a","leaseDurationSeconds":-5,"renewTime":"2024-01-02T03:04:07Z"}"#,
                "negative",
            ),
            (r#"["a"]"#, "object"),
        ];
        for (value, needle) in cases {
            let e = parse(value).unwrap_err();
            let text = leasehold_core_chain(&e);
            assert!(
                text.to_lowercase().contains(&needle.to_lowercase()),
                "{value}: {text}"
            );
        }
        let huge = format!(r#"{{"holderIdentity":"{}"}}"#, "x".repeat(10 << 20));
        let e = parse(&huge).unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");
        // A released record needs nothing but its holder.
        assert!(parse(r#"{"holderIdentity":""}"#).unwrap().is_released());
    }

    fn leasehold_core_chain(e: &RecordError) -> String {
        crate::display_chain(e)
    }
}
