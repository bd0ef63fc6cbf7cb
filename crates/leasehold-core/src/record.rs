//! The leader record, exactly as client-go reads and writes it.
//!
//! client-go's `resourcelock.LeaderElectionRecord` is what every Go candidate on a lock
//! understands. leasehold keeps the same five fields so that a Go candidate and a leasehold
//! candidate can share one lock during a migration:
//!
//! | field                  | Lease (`coordination.k8s.io/v1`) | annotation / file JSON  |
//! |------------------------|-----------------------------------|-------------------------|
//! | `holder_identity`      | `spec.holderIdentity`             | `holderIdentity`        |
//! | `lease_duration_seconds` | `spec.leaseDurationSeconds`     | `leaseDurationSeconds`  |
//! | `acquire_time`         | `spec.acquireTime` (MicroTime)    | `acquireTime` (RFC 3339)|
//! | `renew_time`           | `spec.renewTime` (MicroTime)      | `renewTime` (RFC 3339)  |
//! | `leader_transitions`   | `spec.leaseTransitions`           | `leaderTransitions`     |
//!
//! An empty `holder_identity` means the lock is released.

use jiff::Timestamp;
use std::fmt;

/// Errors decoding a record from its stored bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes are not a JSON object of the record's shape.
    #[error("not a leader election record")]
    Json(#[source] serde_json::Error),
    /// The bytes are JSON (or not), but not a JSON object.
    #[error("not a leader election record: expected a JSON object")]
    NotAnObject,
    /// A field is present but its value cannot be a record's.
    #[error("field `{field}` is invalid: {reason}")]
    Field {
        /// The JSON name of the field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The leader record, field for field as client-go's `LeaderElectionRecord`.
///
/// Replaces client-go's `resourcelock.LeaderElectionRecord` (and Go's `LockRecord`).
/// Timestamps are informational: leasehold never decides expiry from them (see
/// [`crate::machine`]), so a candidate whose clock is off cannot cut a lease short.
#[doc(alias = "LeaderElectionRecord")]
#[doc(alias = "LockRecord")]
///
/// It is `#[non_exhaustive]`, because client-go's record grows (Lease `strategy` and
/// `preferredHolder` came in Kubernetes 1.31): build one with [`new`](Self::new) and the `with_`
/// methods, or from [`Default`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaderRecord {
    /// Who holds the lock; empty when released.
    pub holder_identity: String,
    /// How long, from when a candidate *observes* this record, it must wait before taking over.
    pub lease_duration_seconds: i32,
    /// When the current holder acquired the lock (wall clock of the holder).
    pub acquire_time: Option<Timestamp>,
    /// When the current holder last renewed (wall clock of the holder).
    pub renew_time: Option<Timestamp>,
    /// How many times the lock changed hands; leasehold increments it on every acquisition,
    /// which makes it the [`FencingToken`].
    pub leader_transitions: i32,
    /// A Lease's `spec.preferredHolder` (Coordinated Leader Election, Kubernetes 1.31+): the
    /// candidate that should hold the lock next. A leader that sees it name another candidate
    /// ends its term and releases the lock, as client-go's coordinated candidates stop renewing;
    /// standbys leave a released lock to the preferred candidate for a lease duration. Read
    /// from Leases only; `None` elsewhere.
    pub preferred_holder: Option<String>,
    /// Set only in the record a leader writes to hand the lock to a named candidate (a
    /// directed transfer): the identity of the leader that handed it over. The candidate the
    /// record names takes the term only on seeing this mark, so a record another process wrote
    /// under its name is never adopted. Kept beside client-go's fields (`leaseholdHandoverFrom`
    /// in the JSON form), which client-go ignores; backends that cannot store it read `None`,
    /// and a transfer then falls back to expiry.
    pub handover_from: Option<String>,
}

/// A number that strictly increases with every leadership term of one lock.
///
/// Where the backend's versions are revisions of its store ([`Version::with_revision`]: every
/// Kubernetes lock), it is the revision of the write that began the term: the acquisition, or
/// the adopting write of a directed transfer. That write is a compare-and-swap, and every later
/// write to the store has a larger revision, so a later term always has a larger token, whatever
/// else wrote the lock meanwhile: a holder changed without a new count, a Lease deleted and
/// created again while no candidate was running.
///
/// Elsewhere (the file backend) it is the record's `leaderTransitions` as written by that write.
/// Every acquisition writes one more than the highest count the candidate has seen, so no two
/// terms share a token while a candidate has seen every term; a lock deleted and re-created
/// while no candidate ran starts counting again.
///
/// [`Version::with_revision`]: crate::Version::with_revision
///
/// # What it guarantees
/// A downstream store that remembers the highest token it has accepted and rejects any write
/// carrying a smaller one never accepts a write from a deposed leader once the new leader has
/// written: a leader frozen past its lease (a long GC pause, a stopped VM) wakes up with a stale
/// token and its writes bounce.
///
/// # What it does not
/// - It is per lock: tokens of two different locks are unrelated.
/// - Tokens are not consecutive (revisions count every write to the store) and are unrelated to
///   client-go's `leaderTransitions`, which leasehold still writes as client-go does.
/// - It cannot stop a write that reaches the store before the new leader's first write; stores
///   should be fenced with `>=` and the new leader should write (or bump the store's token)
///   before acting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

// === impl FencingToken ===

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// === impl LeaderRecord ===

impl LeaderRecord {
    /// A record held by `holder_identity` (empty: released) for `lease_duration_seconds`, with
    /// no times and no transitions yet.
    pub fn new(holder_identity: impl Into<String>, lease_duration_seconds: i32) -> Self {
        Self {
            holder_identity: holder_identity.into(),
            lease_duration_seconds,
            ..Self::default()
        }
    }

    /// Sets [`acquire_time`](Self::acquire_time).
    #[must_use]
    pub fn with_acquire_time(mut self, at: Option<Timestamp>) -> Self {
        self.acquire_time = at;
        self
    }

    /// Sets [`renew_time`](Self::renew_time).
    #[must_use]
    pub fn with_renew_time(mut self, at: Option<Timestamp>) -> Self {
        self.renew_time = at;
        self
    }

    /// Sets [`leader_transitions`](Self::leader_transitions).
    #[must_use]
    pub fn with_leader_transitions(mut self, transitions: i32) -> Self {
        self.leader_transitions = transitions;
        self
    }

    /// Sets [`preferred_holder`](Self::preferred_holder).
    #[must_use]
    pub fn with_preferred_holder(mut self, holder: Option<String>) -> Self {
        self.preferred_holder = holder;
        self
    }

    /// The candidate [`preferred_holder`](Self::preferred_holder) names, if it names one other
    /// than `identity` (an empty value names nobody).
    pub fn prefers_other_than(&self, identity: &str) -> Option<&str> {
        self.preferred_holder
            .as_deref()
            .filter(|p| !p.is_empty() && *p != identity)
    }

    /// Sets [`handover_from`](Self::handover_from).
    #[must_use]
    pub fn with_handover_from(mut self, from: Option<String>) -> Self {
        self.handover_from = from;
        self
    }

    /// True when no one holds the lock (empty `holder_identity`).
    pub fn is_released(&self) -> bool {
        self.holder_identity.is_empty()
    }

    /// The fencing token of the term this record belongs to.
    ///
    /// A negative `leaderTransitions` (which no well-behaved writer produces) reads as 0.
    pub fn fencing_token(&self) -> FencingToken {
        FencingToken(u64::try_from(self.leader_transitions).unwrap_or(0))
    }

    /// The lease duration others must wait after observing this record.
    ///
    /// A non-positive `leaseDurationSeconds` reads as 1 s: client-go would treat it as already
    /// expired, but a takeover must never be *faster* than a second after a change is seen.
    pub fn lease_duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            u64::try_from(self.lease_duration_seconds.max(1)).unwrap_or(1),
        )
    }

    /// Decodes the JSON form client-go writes into annotations (and leasehold into files).
    ///
    /// Missing and `null` fields read as their zero values, as Go's `encoding/json` does.
    /// Unknown fields are ignored (and so preserved by backends, which keep the raw object).
    ///
    /// # Errors
    /// [`RecordError::Json`] when the bytes are not a JSON object of this shape,
    /// [`RecordError::Field`] when a time does not parse as RFC 3339.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RecordError> {
        // serde would also accept a JSON array as the struct's tuple form: only an object is a
        // record.
        if !bytes.trim_ascii_start().starts_with(b"{") {
            return Err(RecordError::NotAnObject);
        }
        let raw: wire::Record = serde_json::from_slice(bytes).map_err(RecordError::Json)?;
        let time =
            |field: &'static str, v: Option<String>| -> Result<Option<Timestamp>, RecordError> {
                match v.as_deref() {
                    None | Some("") => Ok(None),
                    Some(s) => s
                        .parse::<Timestamp>()
                        .map(Some)
                        .map_err(|e| RecordError::Field {
                            field,
                            reason: format!("not an RFC 3339 time: {e}"),
                        }),
                }
            };
        Ok(Self {
            holder_identity: raw.holder_identity.unwrap_or_default(),
            lease_duration_seconds: raw.lease_duration_seconds.unwrap_or_default(),
            acquire_time: time("acquireTime", raw.acquire_time)?,
            renew_time: time("renewTime", raw.renew_time)?,
            leader_transitions: raw.leader_transitions.unwrap_or_default(),
            preferred_holder: None,
            handover_from: raw.leasehold_handover_from.filter(|h| !h.is_empty()),
        })
    }

    /// Encodes the record as client-go does for annotations: camelCase fields, times in RFC 3339
    /// UTC with whole seconds (`metav1.Time`), or with microseconds when `micros` is set (the
    /// file backend keeps the precision a Lease's MicroTime has).
    pub fn to_json(&self, micros: bool) -> Vec<u8> {
        let fmt = |t: &Option<Timestamp>| {
            t.map(|t| {
                if micros {
                    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
                } else {
                    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
                }
            })
        };
        let raw = wire::Record {
            holder_identity: Some(self.holder_identity.clone()),
            lease_duration_seconds: Some(self.lease_duration_seconds),
            acquire_time: fmt(&self.acquire_time),
            renew_time: fmt(&self.renew_time),
            leader_transitions: Some(self.leader_transitions),
            leasehold_handover_from: self.handover_from.clone(),
        };
        serde_json::to_vec(&raw).unwrap_or_default()
    }
}

mod wire {
    //! The JSON shape of client-go's `LeaderElectionRecord`.
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Record {
        #[serde(default)]
        pub holder_identity: Option<String>,
        #[serde(default)]
        pub lease_duration_seconds: Option<i32>,
        #[serde(default)]
        pub acquire_time: Option<String>,
        #[serde(default)]
        pub renew_time: Option<String>,
        #[serde(default)]
        pub leader_transitions: Option<i32>,
        /// leasehold's own: see `LeaderRecord::handover_from`. Left out when unset, so the
        /// bytes are client-go's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub leasehold_handover_from: Option<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_client_go_annotation() {
        let json = br#"{"holderIdentity":"a","leaseDurationSeconds":15,"acquireTime":"2024-01-02T03:04:05Z","renewTime":"2024-01-02T03:04:07Z","leaderTransitions":3}"#;
        let r = LeaderRecord::from_json(json).unwrap();
        assert_eq!(r.holder_identity, "a");
        assert_eq!(r.lease_duration_seconds, 15);
        assert_eq!(r.leader_transitions, 3);
        assert_eq!(r.fencing_token(), FencingToken(3));
        assert_eq!(
            r.to_json(false),
            json.to_vec(),
            "byte-compatible round trip"
        );
    }

    #[test]
    fn missing_and_null_fields_read_as_zero() {
        let r = LeaderRecord::from_json(br#"{"holderIdentity":null,"extra":1}"#).unwrap();
        assert_eq!(r, LeaderRecord::default());
        assert!(r.is_released());
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert!(matches!(
            LeaderRecord::from_json(b"\xff\x00"),
            Err(RecordError::NotAnObject)
        ));
        assert!(matches!(
            LeaderRecord::from_json(b"[1]"),
            Err(RecordError::NotAnObject)
        ));
        assert!(matches!(
            LeaderRecord::from_json(br#"{"leaseDurationSeconds":1e99}"#),
            Err(RecordError::Json(_))
        ));
        let err = LeaderRecord::from_json(br#"{"renewTime":"yesterday"}"#).unwrap_err();
        assert!(err.to_string().contains("renewTime"), "{err}");
    }

    #[test]
    fn hostile_values_have_defined_meaning() {
        let r = LeaderRecord {
            lease_duration_seconds: -5,
            leader_transitions: -1,
            ..Default::default()
        };
        assert_eq!(r.lease_duration(), std::time::Duration::from_secs(1));
        assert_eq!(r.fencing_token(), FencingToken(0));
    }

    #[test]
    fn micros_round_trip() {
        let t: Timestamp = "2024-01-02T03:04:05.123456Z".parse().unwrap();
        let r = LeaderRecord {
            holder_identity: "x".into(),
            renew_time: Some(t),
            ..Default::default()
        };
        let back = LeaderRecord::from_json(&r.to_json(true)).unwrap();
        assert_eq!(back, r);
    }
}
