//! A Lease as it crosses the wire, read and written without a generic object tree.
//!
//! A leader renews every retry period, so a process holding thousands of elections decodes and
//! encodes a Lease hundreds of times a second. Through kube's `DynamicObject` each renewal built
//! a `serde_json::Value` tree of the whole object, `managedFields` included, and serialized it
//! back; allocation was about a third of the process's CPU (docs/benchmarks.md). Here one pass
//! over the answer reads the five record fields and the version, and copies every other member
//! as raw text into a template that already is the next update's body up to the record:
//!
//! ```text
//! {"apiVersion":…,"kind":"Lease","metadata":{…, no managedFields},"spec":{<other spec members>,
//! ```
//!
//! An update appends the record's fields and `}}`. Members this code does not know
//! (`spec.strategy`, `spec.preferredHolder`, labels, annotations, owner references, fields newer
//! than this code) go back byte for byte. `managedFields` is left out: an update that omits it
//! keeps the server's.

use leasehold_core::{LeaderRecord, RecordError};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::{borrow::Cow, fmt, fmt::Write as _};

/// A record field of the wrong type ([`RecordError::Field`], kept `Clone` for watch events).
#[derive(Clone, Debug)]
pub(crate) struct FieldError {
    field: &'static str,
    reason: String,
}

impl From<FieldError> for RecordError {
    fn from(e: FieldError) -> Self {
        RecordError::Field {
            field: e.field,
            reason: e.reason,
        }
    }
}

/// A Lease read from the API server (a GET, a write's answer or a watch event).
///
/// Decodes only from a deserializer that can lend raw text (`serde_json::from_str` and
/// `from_slice`, which kube's `request` and `request_events` use). In a watch event the API
/// server writes `type` before `object` (Go's field order), so serde's adjacently tagged
/// `WatchEvent` hands the object straight to this decoder without buffering it.
#[derive(Clone, Debug)]
pub(crate) struct LeaseObject {
    /// `metadata.resourceVersion` ("" if absent).
    pub(crate) version: String,
    /// `metadata.uid`, for Events about the Lease.
    pub(crate) uid: Option<String>,
    /// The record, or why `spec` could not be read: kept rather than failing the decode, so the
    /// caller can report a corrupt record together with its version.
    pub(crate) record: Result<LeaderRecord, FieldError>,
    /// The next update's body up to the record's fields (see the module docs).
    template: String,
}

impl LeaseObject {
    /// The body of a replace that writes `record` over this object (same `resourceVersion`,
    /// so the API server rejects it with 409 if the Lease changed since).
    pub(crate) fn update_body(&self, record: &LeaderRecord) -> Vec<u8> {
        let mut body = String::with_capacity(self.template.len() + 192);
        body.push_str(&self.template);
        push_record(&mut body, record);
        body.push_str("}}");
        body.into_bytes()
    }
}

/// The body of a create of Lease `namespace/name` holding `record`.
pub(crate) fn create_body(namespace: &str, name: &str, record: &LeaderRecord) -> Vec<u8> {
    let mut body = String::with_capacity(256);
    body.push_str(r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"#);
    push_json_str(&mut body, name);
    body.push_str(r#","namespace":"#);
    push_json_str(&mut body, namespace);
    body.push_str(r#"},"spec":{"#);
    push_record(&mut body, record);
    body.push_str("}}");
    body.into_bytes()
}

/// Writes the record's members (no braces) as client-go's `LeaderElectionRecordToLeaseSpec`
/// does: times as MicroTime (RFC 3339, microseconds, UTC), an absent time left out.
fn push_record(out: &mut String, r: &LeaderRecord) {
    out.push_str(r#""holderIdentity":"#);
    push_json_str(out, &r.holder_identity);
    let _ = write!(
        out,
        r#","leaseDurationSeconds":{}"#,
        r.lease_duration_seconds
    );
    for (key, time) in [("acquireTime", r.acquire_time), ("renewTime", r.renew_time)] {
        if let Some(t) = time {
            // `strftime` would parse its format string on every renewal.
            let d = jiff::tz::Offset::UTC.to_datetime(t);
            let _ = write!(
                out,
                r#","{key}":"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z""#,
                d.year(),
                d.month(),
                d.day(),
                d.hour(),
                d.minute(),
                d.second(),
                d.subsec_nanosecond() / 1000
            );
        }
    }
    let _ = write!(out, r#","leaseTransitions":{}"#, r.leader_transitions);
}

fn push_json_str(out: &mut String, s: &str) {
    // Serializing a `&str` into a `String` cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Appends `"key":raw` to an object being written, with a comma unless it is the first.
fn push_member(out: &mut String, first: &mut bool, key: &str, raw: &RawValue) {
    if !std::mem::take(first) {
        out.push(',');
    }
    push_json_str(out, key);
    out.push(':');
    out.push_str(raw.get());
}

/// A map key, borrowed from the input unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> de::Deserialize<'de> for LeaseObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ObjectVisitor)
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = LeaseObject;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Lease object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LeaseObject, A::Error> {
        let mut head = String::with_capacity(512);
        let mut first = true;
        head.push('{');
        let mut metadata = String::new();
        let mut spec: Option<&'de RawValue> = None;
        let mut version = String::new();
        let mut uid = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match &*key {
                "metadata" => {
                    let m = map.next_value::<Metadata>()?;
                    metadata = m.members;
                    version = m.version;
                    uid = m.uid;
                }
                "spec" => spec = Some(map.next_value::<&'de RawValue>()?),
                _ => {
                    let raw = map.next_value::<&'de RawValue>()?;
                    push_member(&mut head, &mut first, &key, raw);
                }
            }
        }
        if !std::mem::take(&mut first) {
            head.push(',');
        }
        head.push_str(r#""metadata":{"#);
        head.push_str(&metadata);
        head.push_str(r#"},"spec":{"#);
        let record = match spec {
            None => Ok(LeaderRecord::default()),
            Some(raw) => read_spec(raw, &mut head),
        };
        Ok(LeaseObject {
            version,
            uid,
            record,
            template: head,
        })
    }
}

/// `metadata`, less `managedFields`, as the members of an object (no braces).
struct Metadata {
    members: String,
    version: String,
    uid: Option<String>,
}

impl<'de> de::Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Metadata;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("object metadata")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                let mut m = Metadata {
                    members: String::with_capacity(256),
                    version: String::new(),
                    uid: None,
                };
                let mut first = true;
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if key == "managedFields" {
                        map.next_value::<de::IgnoredAny>()?;
                        continue;
                    }
                    let raw = map.next_value::<&'de RawValue>()?;
                    match &*key {
                        "resourceVersion" => {
                            m.version =
                                serde_json::from_str(raw.get()).map_err(de::Error::custom)?;
                        }
                        "uid" => {
                            m.uid = serde_json::from_str(raw.get()).map_err(de::Error::custom)?
                        }
                        _ => {}
                    }
                    push_member(&mut m.members, &mut first, &key, raw);
                }
                Ok(m)
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads the record out of `spec` and copies its other members into `out`, each followed by a
/// comma (the record's fields come after them). Missing and `null` fields are zero values, as
/// Go's decoder reads them; a wrong type is an error naming the field.
fn read_spec(raw: &RawValue, out: &mut String) -> Result<LeaderRecord, FieldError> {
    let members: Vec<(Key<'_>, &RawValue)> =
        match serde_json::from_str::<Option<SpecMembers<'_>>>(raw.get()) {
            Ok(Some(SpecMembers(m))) => m,
            Ok(None) => return Ok(LeaderRecord::default()),
            Err(_) => {
                return Err(FieldError {
                    field: "spec",
                    reason: format!("expected an object, got {}", raw.get()),
                });
            }
        };
    let mut record = LeaderRecord::default();
    // Every member is looked at, even after a bad one: the others must still reach the template,
    // since a record that stays unreadable for a lease is replaced through it.
    let mut first_error = None;
    for (Key(key), value) in members {
        let v = value.get();
        let read = match &*key {
            "holderIdentity" => typed::<Option<String>>(v, "holderIdentity", "a string")
                .map(|h| record.holder_identity = h.unwrap_or_default()),
            "leaseDurationSeconds" => {
                int(v, "leaseDurationSeconds").map(|n| record.lease_duration_seconds = n)
            }
            "leaseTransitions" => int(v, "leaseTransitions").map(|n| record.leader_transitions = n),
            "acquireTime" => time(v, "acquireTime").map(|t| record.acquire_time = t),
            "renewTime" => time(v, "renewTime").map(|t| record.renew_time = t),
            _ => {
                push_json_str(out, &key);
                out.push(':');
                out.push_str(v);
                out.push(',');
                Ok(())
            }
        };
        if let Err(e) = read {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        None => Ok(record),
        Some(e) => Err(e),
    }
}

/// The members of `spec`, in order, values raw.
struct SpecMembers<'de>(Vec<(Key<'de>, &'de RawValue)>);

impl<'de> de::Deserialize<'de> for SpecMembers<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SpecMembers<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SpecMembers<'de>, A::Error> {
                let mut v = Vec::with_capacity(8);
                while let Some(entry) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    v.push(entry);
                }
                Ok(SpecMembers(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn typed<T: de::DeserializeOwned>(
    v: &str,
    field: &'static str,
    what: &str,
) -> Result<T, FieldError> {
    serde_json::from_str(v).map_err(|_| FieldError {
        field,
        reason: format!("expected {what}, got {v}"),
    })
}

fn int(v: &str, field: &'static str) -> Result<i32, FieldError> {
    Ok(typed::<Option<i32>>(v, field, "a 32-bit integer")?.unwrap_or_default())
}

fn time(v: &str, field: &'static str) -> Result<Option<jiff::Timestamp>, FieldError> {
    match typed::<Option<Cow<'_, str>>>(v, field, "a time string")? {
        None => Ok(None),
        Some(t) if t.is_empty() => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|e| FieldError {
            field,
            reason: format!("not an RFC 3339 time: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;
    use serde_json::{Value, json};

    /// The five spec members that hold the record, in the order client-go writes them.
    const RECORD_FIELDS: [&str; 5] = [
        "holderIdentity",
        "leaseDurationSeconds",
        "acquireTime",
        "renewTime",
        "leaseTransitions",
    ];

    fn parse(v: &Value) -> LeaseObject {
        serde_json::from_str(&v.to_string()).unwrap()
    }

    fn lease(spec: Value) -> Value {
        json!({
            "kind": "Lease",
            "apiVersion": "coordination.k8s.io/v1",
            "metadata": {
                "name": "a", "namespace": "default", "uid": "u-1", "resourceVersion": "42",
                "labels": {"team": "x\"y"}, "annotations": {"k": "v"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}],
                "managedFields": [{"manager": "m", "operation": "Update", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": spec
        })
    }

    #[test]
    fn reads_the_record_and_an_update_keeps_everything_else() {
        let obj = parse(&lease(json!({
            "holderIdentity": "a", "leaseDurationSeconds": 15,
            "acquireTime": "2024-01-02T03:04:05.123456Z", "renewTime": "2024-01-02T03:04:06.000001Z",
            "leaseTransitions": 2, "strategy": "OldestEmulationVersion", "preferredHolder": "b",
            "futureField": {"x": [1, "\u{e9}"]}
        })));
        assert_eq!(obj.version, "42");
        assert_eq!(obj.uid.as_deref(), Some("u-1"));
        let r = obj.record.clone().unwrap();
        assert_eq!(r.holder_identity, "a");
        assert_eq!(r.lease_duration_seconds, 15);
        assert_eq!(r.leader_transitions, 2);
        assert_eq!(
            r.acquire_time.unwrap().to_string(),
            "2024-01-02T03:04:05.123456Z"
        );

        let r2 = LeaderRecord {
            holder_identity: "c\"quoted".into(),
            leader_transitions: 3,
            acquire_time: None,
            ..r
        };
        let body: Value = serde_json::from_slice(&obj.update_body(&r2)).unwrap();
        let mut want = lease(json!({
            "holderIdentity": "c\"quoted", "leaseDurationSeconds": 15,
            "renewTime": "2024-01-02T03:04:06.000001Z",
            "leaseTransitions": 3, "strategy": "OldestEmulationVersion", "preferredHolder": "b",
            "futureField": {"x": [1, "\u{e9}"]}
        }));
        want["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("managedFields");
        assert_eq!(body, want);
        // What it wrote reads back as the record it wrote.
        let again: LeaseObject = serde_json::from_slice(&obj.update_body(&r2)).unwrap();
        assert_eq!(again.record.unwrap(), r2);
    }

    #[test]
    fn create_body_is_a_lease_with_the_record() {
        let r = LeaderRecord {
            holder_identity: "me".into(),
            lease_duration_seconds: 15,
            renew_time: Some("2024-01-02T03:04:06Z".parse().unwrap()),
            ..Default::default()
        };
        let body: Value = serde_json::from_slice(&create_body("ns", "n", &r)).unwrap();
        assert_eq!(
            body,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "n", "namespace": "ns"},
                   "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15,
                            "renewTime": "2024-01-02T03:04:06.000000Z", "leaseTransitions": 0}})
        );
    }

    #[test]
    fn a_bad_spec_is_a_typed_error_and_absent_fields_are_zero() {
        let bad =
            |spec: Value| RecordError::from(parse(&lease(spec)).record.unwrap_err()).to_string();
        assert!(bad(json!("x")).contains("spec"));
        assert!(bad(json!({"leaseTransitions": "many"})).contains("leaseTransitions"));
        assert!(bad(json!({"leaseDurationSeconds": 1_u64 << 40})).contains("leaseDurationSeconds"));
        assert!(bad(json!({"renewTime": "yesterday"})).contains("renewTime"));
        assert!(bad(json!({"holderIdentity": 7})).contains("holderIdentity"));
        assert_eq!(
            parse(&lease(Value::Null)).record.unwrap(),
            LeaderRecord::default()
        );
        assert_eq!(
            parse(&lease(json!({}))).record.unwrap(),
            LeaderRecord::default()
        );
        let mut no_spec = lease(Value::Null);
        no_spec.as_object_mut().unwrap().remove("spec");
        assert_eq!(parse(&no_spec).record.unwrap(), LeaderRecord::default());
    }

    #[test]
    fn decodes_inside_a_watch_event_line() {
        let line = format!(
            r#"{{"type":"MODIFIED","object":{}}}"#,
            lease(json!({"holderIdentity": "w"}))
        );
        match serde_json::from_str::<kube::api::WatchEvent<LeaseObject>>(&line).unwrap() {
            kube::api::WatchEvent::Modified(o) => {
                assert_eq!(o.record.unwrap().holder_identity, "w");
                assert_eq!(o.version, "42");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_an_object_is_a_decode_error() {
        assert!(serde_json::from_str::<LeaseObject>("[1]").is_err());
        assert!(
            serde_json::from_str::<LeaseObject>(r#"{"metadata":{"resourceVersion":7}}"#).is_err()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Whatever a Lease's spec holds, reading it gives a record or a typed error, and
        /// writing a record back keeps every key that is not one of the record's five.
        #[test]
        fn any_spec_reads_cleanly_and_an_update_keeps_other_keys(
            spec in proptest::collection::btree_map(
                proptest::sample::select(vec!["holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions", "strategy", "preferredHolder", "x-future", "we\"ird"]),
                proptest::prop_oneof![
                    proptest::prelude::Just(Value::Null),
                    proptest::prelude::any::<i64>().prop_map(Value::from),
                    ".{0,30}".prop_map(Value::String),
                    proptest::prelude::any::<bool>().prop_map(Value::Bool),
                ],
                0..9,
            )
        ) {
            let spec: serde_json::Map<String, Value> = spec.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
            let obj = parse(&lease(Value::Object(spec.clone())));
            let mine = LeaderRecord { holder_identity: "me".into(), ..Default::default() };
            let body: Value = serde_json::from_slice(&obj.update_body(&mine)).unwrap();
            for (k, v) in &spec {
                if !RECORD_FIELDS.contains(&k.as_str()) {
                    proptest::prop_assert_eq!(body["spec"].get(k), Some(v));
                }
            }
            let again: LeaseObject = serde_json::from_str(&body.to_string()).unwrap();
            proptest::prop_assert_eq!(again.record.unwrap(), mine);
        }
    }
}
