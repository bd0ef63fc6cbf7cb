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
//! (`spec.strategy`, labels, annotations, owner references, fields newer than this code) go back
//! byte for byte. `spec.preferredHolder` is read into the record and written from it: only a
//! release names one, so every other write removes it, as client-go's writes do. `managedFields` is left out: an update that omits it
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
    /// The next update's body up to the record's fields (see the module docs), with no
    /// handover mark.
    template: String,
    /// Where in `template` a handover mark goes: just inside the end of `metadata.annotations`,
    /// or, with no annotations, just inside the end of `metadata`.
    mark_at: MarkAt,
}

/// Where [`LeaseObject::update_body`] inserts the handover annotation.
#[derive(Clone, Copy, Debug)]
enum MarkAt {
    /// Before the `}` that closes `metadata.annotations` (which has other members if `true`).
    Annotations(usize, bool),
    /// Before the `}` that closes `metadata` (which has members if `true`).
    Metadata(usize, bool),
}

impl LeaseObject {
    /// The body of a replace that writes `record` over this object (same `resourceVersion`,
    /// so the API server rejects it with 409 if the Lease changed since).
    pub(crate) fn update_body(&self, record: &LeaderRecord) -> Vec<u8> {
        let mut body = String::with_capacity(self.template.len() + 192);
        match &record.handover_from {
            // Every write but a transfer: the template has no mark.
            None => body.push_str(&self.template),
            Some(from) => {
                let (at, comma, open) = match self.mark_at {
                    MarkAt::Annotations(at, others) => (at, others, false),
                    MarkAt::Metadata(at, members) => (at, members, true),
                };
                body.push_str(&self.template[..at]);
                if comma {
                    body.push(',');
                }
                if open {
                    body.push_str(r#""annotations":{"#);
                }
                push_mark(&mut body, from);
                if open {
                    body.push('}');
                }
                body.push_str(&self.template[at..]);
            }
        }
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
    if let Some(from) = &record.handover_from {
        body.push_str(r#","annotations":{"#);
        push_mark(&mut body, from);
        body.push('}');
    }
    body.push_str(r#"},"spec":{"#);
    push_record(&mut body, record);
    body.push_str("}}");
    body.into_bytes()
}

/// Writes the handover annotation as an object member.
fn push_mark(out: &mut String, from: &str) {
    push_json_str(out, super::HANDOVER_ANNOTATION);
    out.push(':');
    push_json_str(out, from);
}

/// Writes the record's members (no braces) as client-go's `LeaderElectionRecordToLeaseSpec`
/// does: times as MicroTime (RFC 3339, microseconds, UTC), an absent time left out.
///
/// Digits are written by hand: through `core::fmt` this was 7 % of a renewal's instructions
/// (callgrind), for two numbers and two timestamps.
fn push_record(out: &mut String, r: &LeaderRecord) {
    out.push_str(r#""holderIdentity":"#);
    push_json_str(out, &r.holder_identity);
    out.push_str(r#","leaseDurationSeconds":"#);
    push_int(out, r.lease_duration_seconds);
    for (key, time) in [
        (r#","acquireTime":""#, r.acquire_time),
        (r#","renewTime":""#, r.renew_time),
    ] {
        if let Some(t) = time {
            out.push_str(key);
            push_micro_time(out, t);
            out.push('"');
        }
    }
    out.push_str(r#","leaseTransitions":"#);
    push_int(out, r.leader_transitions);
    // Only a release writes it, naming the holder the lock is released to; every other
    // write leaves it out, which removes it, as client-go's writes do.
    if let Some(p) = &r.preferred_holder {
        out.push_str(r#","preferredHolder":"#);
        push_json_str(out, p);
    }
}

/// Appends `n` in decimal.
fn push_int(out: &mut String, n: i32) {
    if n < 0 {
        out.push('-');
    }
    let n = n.unsigned_abs();
    push_fixed(out, n, n.checked_ilog10().map_or(1, |l| l as usize + 1));
}

/// Appends `t` as a MicroTime, `2006-01-02T15:04:05.000000Z`.
fn push_micro_time(out: &mut String, t: jiff::Timestamp) {
    let d = jiff::tz::Offset::UTC.to_datetime(t);
    if d.year() < 0 {
        // Not a time a lock holds; written as before, through `core::fmt`.
        let _ = write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            d.year(),
            d.month(),
            d.day(),
            d.hour(),
            d.minute(),
            d.second(),
            d.subsec_nanosecond() / 1000
        );
        return;
    }
    push_fixed(out, u32::from(d.year().unsigned_abs()), 4);
    out.push('-');
    push_fixed(out, d.month().unsigned_abs().into(), 2);
    out.push('-');
    push_fixed(out, d.day().unsigned_abs().into(), 2);
    out.push('T');
    push_fixed(out, d.hour().unsigned_abs().into(), 2);
    out.push(':');
    push_fixed(out, d.minute().unsigned_abs().into(), 2);
    out.push(':');
    push_fixed(out, d.second().unsigned_abs().into(), 2);
    out.push('.');
    push_fixed(out, d.subsec_nanosecond().unsigned_abs() / 1000, 6);
    out.push('Z');
}

/// Appends the low `width` decimal digits of `n`, zero-padded.
fn push_fixed(out: &mut String, mut n: u32, width: usize) {
    let mut digits = [b'0'; 10];
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    for &d in &digits[..width] {
        out.push(char::from(d));
    }
}

/// Appends `s` as a JSON string.
///
/// Escapes as `serde_json` does, straight into `out`: every key of every answer passes through
/// here, and a `String` per key was 15 % of a renewal's allocations (heaptrack).
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'\n' => 'n',
            b'\r' => 'r',
            b'\t' => 't',
            0x08 => 'b',
            0x0c => 'f',
            0..=0x1f => '\0',
            _ => continue,
        };
        // `i` is at an ASCII byte, so both slices end on character boundaries.
        out.push_str(&s[plain..i]);
        plain = i + 1;
        if short == '\0' {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push('\\');
            out.push(short);
        }
    }
    out.push_str(&s[plain..]);
    out.push('"');
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
        let mut annotations = None;
        let mut handover = None;
        let mut spec: Option<&'de RawValue> = None;
        let mut version = String::new();
        let mut uid = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match &*key {
                "metadata" => {
                    let m = map.next_value::<Metadata>()?;
                    metadata = m.members;
                    annotations = m.annotations;
                    handover = m.handover;
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
        // The other annotations go last in `metadata`, so that a transfer's mark is inserted
        // at one place in the template.
        let mark_at = match annotations {
            Some(others) => {
                if !metadata.is_empty() {
                    head.push(',');
                }
                head.push_str(r#""annotations":{"#);
                head.push_str(&others);
                let at = MarkAt::Annotations(head.len(), !others.is_empty());
                head.push('}');
                at
            }
            None => MarkAt::Metadata(head.len(), !metadata.is_empty()),
        };
        head.push_str(r#"},"spec":{"#);
        let record = match spec {
            None => Ok(LeaderRecord::default()),
            Some(raw) => read_spec(raw, &mut head),
        };
        Ok(LeaseObject {
            version,
            uid,
            record: record.map(|r| r.with_handover_from(handover)),
            template: head,
            mark_at,
        })
    }
}

/// `metadata`, less `managedFields` and `annotations`, as the members of an object (no
/// braces); the annotations apart, less the handover mark.
struct Metadata {
    members: String,
    /// The members of `annotations` but the mark, if the object has annotations.
    annotations: Option<String>,
    /// The handover mark ([`super::HANDOVER_ANNOTATION`]), if set and not empty.
    handover: Option<String>,
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
                    annotations: None,
                    handover: None,
                    version: String::new(),
                    uid: None,
                };
                let mut first = true;
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if key == "managedFields" {
                        map.next_value::<de::IgnoredAny>()?;
                        continue;
                    }
                    if key == "annotations" {
                        let a = map.next_value::<Annotations>()?;
                        m.annotations = a.others;
                        m.handover = a.handover;
                        continue;
                    }
                    let raw = map.next_value::<&'de RawValue>()?;
                    match &*key {
                        "resourceVersion" => {
                            m.version = json_str(raw)
                                .map_err(de::Error::custom)?
                                .ok_or_else(|| de::Error::custom("resourceVersion is null"))?
                                .into_owned();
                        }
                        "uid" => {
                            m.uid = json_str(raw)
                                .map_err(de::Error::custom)?
                                .map(Cow::into_owned)
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

/// `metadata.annotations`: the handover mark apart, the other members as text (no braces).
struct Annotations {
    /// `None` for `"annotations": null`.
    others: Option<String>,
    handover: Option<String>,
}

impl<'de> de::Deserialize<'de> for Annotations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Annotations;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("annotations (a map of strings)")
            }
            fn visit_none<E: de::Error>(self) -> Result<Annotations, E> {
                self.visit_unit()
            }
            fn visit_unit<E: de::Error>(self) -> Result<Annotations, E> {
                Ok(Annotations {
                    others: None,
                    handover: None,
                })
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Annotations, D::Error> {
                d.deserialize_map(self)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Annotations, A::Error> {
                let mut others = String::new();
                let mut handover = None;
                let mut first = true;
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let raw = map.next_value::<&'de RawValue>()?;
                    if key == super::HANDOVER_ANNOTATION {
                        // Not a string: no mark (and the write that follows drops it).
                        handover = json_str(raw)
                            .ok()
                            .flatten()
                            .filter(|h| !h.is_empty())
                            .map(Cow::into_owned);
                        continue;
                    }
                    push_member(&mut others, &mut first, &key, raw);
                }
                Ok(Annotations {
                    others: Some(others),
                    handover,
                })
            }
        }
        d.deserialize_option(V)
    }
}

/// Reads the record out of `spec` and copies its other members into `out`, each followed by a
/// comma (the record's fields come after them). Missing and `null` fields are zero values, as
/// Go's decoder reads them; a wrong type is an error naming the field.
///
/// One pass over the members, in place: every answer of every renewal comes through here, and
/// collecting the members and decoding each field again made this 29 % of decoding an answer.
fn read_spec(raw: &RawValue, out: &mut String) -> Result<LeaderRecord, FieldError> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let read = de::Deserializer::deserialize_option(&mut de, SpecReader { out })
        .and_then(|record| de.end().map(|()| record));
    match read {
        Ok(record) => record,
        Err(_) => Err(FieldError {
            field: "spec",
            reason: format!("expected an object, got {}", raw.get()),
        }),
    }
}

/// Reads `spec` (see [`read_spec`]): `null` is a zero record.
struct SpecReader<'a> {
    out: &'a mut String,
}

impl<'de> Visitor<'de> for SpecReader<'_> {
    type Value = Result<LeaderRecord, FieldError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(LeaderRecord::default()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(LeaderRecord::default()))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut record = LeaderRecord::default();
        // Every member is looked at, even after a bad one: the others must still reach the
        // template, since a record that stays unreadable for a lease is replaced through it.
        let mut first_error = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let value = map.next_value::<&'de RawValue>()?;
            let v = value.get();
            let read = match &*key {
                "holderIdentity" => string(value, "holderIdentity", "a string")
                    .map(|h| record.holder_identity = h.map(Cow::into_owned).unwrap_or_default()),
                "leaseDurationSeconds" => {
                    int(v, "leaseDurationSeconds").map(|n| record.lease_duration_seconds = n)
                }
                "leaseTransitions" => {
                    int(v, "leaseTransitions").map(|n| record.leader_transitions = n)
                }
                "acquireTime" => time(value, "acquireTime").map(|t| record.acquire_time = t),
                "renewTime" => time(value, "renewTime").map(|t| record.renew_time = t),
                "preferredHolder" => string(value, "preferredHolder", "a string")
                    .map(|p| record.preferred_holder = p.map(Cow::into_owned)),
                _ => {
                    push_json_str(self.out, &key);
                    self.out.push(':');
                    self.out.push_str(v);
                    self.out.push(',');
                    Ok(())
                }
            };
            if let Err(e) = read {
                first_error.get_or_insert(e);
            }
        }
        Ok(match first_error {
            None => Ok(record),
            Some(e) => Err(e),
        })
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

/// A string member from its raw JSON text (`null` is `None`). A string without escapes, which
/// is every identity, time and version the API server writes, is borrowed as it stands.
fn json_str(raw: &RawValue) -> Result<Option<Cow<'_, str>>, serde_json::Error> {
    let v = raw.get();
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(plain) if !plain.bytes().any(|b| b == b'\\' || b == b'"') => {
            Ok(Some(Cow::Borrowed(plain)))
        }
        _ => serde_json::from_str(v),
    }
}

fn string<'a>(
    raw: &'a RawValue,
    field: &'static str,
    what: &str,
) -> Result<Option<Cow<'a, str>>, FieldError> {
    json_str(raw).map_err(|_| FieldError {
        field,
        reason: format!("expected {what}, got {}", raw.get()),
    })
}

fn int(v: &str, field: &'static str) -> Result<i32, FieldError> {
    // Plain digits, as the API server writes them; anything else goes through the decoder.
    let plain = v.bytes().all(|b| b.is_ascii_digit()) && (v.len() == 1 || !v.starts_with('0'));
    if let (true, Ok(n)) = (plain, v.parse::<i32>()) {
        return Ok(n);
    }
    Ok(typed::<Option<i32>>(v, field, "a 32-bit integer")?.unwrap_or_default())
}

fn time(raw: &RawValue, field: &'static str) -> Result<Option<jiff::Timestamp>, FieldError> {
    match string(raw, field, "a time string")? {
        None => Ok(None),
        Some(t) if t.is_empty() => Ok(None),
        Some(t) => match micro_time(&t) {
            Some(t) => Ok(Some(t)),
            None => t.parse().map(Some).map_err(|e| FieldError {
                field,
                reason: format!("not an RFC 3339 time: {e}"),
            }),
        },
    }
}

/// A MicroTime as the API server writes it, `2006-01-02T15:04:05.000000Z`, read without the
/// general RFC 3339 parser (which was a third of reading the spec); `None` for any other form.
fn micro_time(t: &str) -> Option<jiff::Timestamp> {
    let b = t.as_bytes();
    let layout = b.len() == 27
        && [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (26, b'Z'),
        ]
        .iter()
        .all(|&(i, c)| b[i] == c);
    if !layout {
        return None;
    }
    let num = |from: usize, to: usize| {
        b[from..to].iter().try_fold(0i32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i32::from(d - b'0'))
        })
    };
    let dt = jiff::civil::DateTime::new(
        i16::try_from(num(0, 4)?).ok()?,
        i8::try_from(num(5, 7)?).ok()?,
        i8::try_from(num(8, 10)?).ok()?,
        i8::try_from(num(11, 13)?).ok()?,
        i8::try_from(num(14, 16)?).ok()?,
        i8::try_from(num(17, 19)?).ok()?,
        num(20, 26)? * 1000,
    )
    .ok()?;
    jiff::tz::Offset::UTC.to_timestamp(dt).ok()
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

        let mut r2 = r.clone();
        r2.holder_identity = "c\"quoted".into();
        r2.leader_transitions = 3;
        r2.acquire_time = None;
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
    fn a_transfer_writes_the_handover_mark_and_every_other_write_removes_it() {
        let spec =
            json!({"holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 2});
        let mark = crate::backend::kubernetes::HANDOVER_ANNOTATION;
        let to_b = LeaderRecord::new("b", 15)
            .with_leader_transitions(3)
            .with_handover_from(Some("a".into()));
        let body = |obj: &LeaseObject, r: &LeaderRecord| -> Value {
            serde_json::from_slice(&obj.update_body(r)).unwrap()
        };

        // Beside other annotations, which stay.
        let with_others = parse(&lease(spec.clone()));
        assert_eq!(with_others.record.clone().unwrap().handover_from, None);
        let written = body(&with_others, &to_b);
        assert_eq!(
            written["metadata"]["annotations"],
            json!({"k": "v", (mark): "a"})
        );
        let back = parse(&written);
        assert_eq!(back.record.clone().unwrap(), to_b);
        // The next write (the target's renewal) removes it, and only it.
        let renewal = to_b.clone().with_handover_from(None);
        assert_eq!(
            body(&back, &renewal)["metadata"]["annotations"],
            json!({"k": "v"})
        );

        // With no annotations, and with `null` ones: the mark alone.
        let mut bare = lease(spec.clone());
        bare["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        let mut null = lease(spec);
        null["metadata"]["annotations"] = Value::Null;
        for obj in [parse(&bare), parse(&null)] {
            let written = body(&obj, &to_b);
            assert_eq!(written["metadata"]["annotations"], json!({(mark): "a"}));
            assert_eq!(written["metadata"]["name"], "a");
            let back = parse(&written);
            assert_eq!(back.record.unwrap(), to_b);
            assert_eq!(body(&obj, &renewal)["metadata"].get("annotations"), None);
        }

        // A create that hands over (a transfer to a Lease deleted meanwhile).
        let created: Value = serde_json::from_slice(&create_body("ns", "n", &to_b)).unwrap();
        assert_eq!(created["metadata"]["annotations"], json!({(mark): "a"}));

        // A mark that is empty or not a string is no mark.
        for v in [json!(""), json!(7)] {
            let mut odd = lease(json!({"holderIdentity": "b"}));
            odd["metadata"]["annotations"][mark] = v;
            assert_eq!(parse(&odd).record.unwrap().handover_from, None);
        }
    }

    #[test]
    fn create_body_is_a_lease_with_the_record() {
        let r = LeaderRecord::new("me", 15)
            .with_renew_time(Some("2024-01-02T03:04:06Z".parse().unwrap()));
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
        /// writing a record back keeps every key that is not one of the record's (the five,
        /// and `preferredHolder`, which a record without one removes).
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
            let mine = LeaderRecord::new("me", 0);
            let body: Value = serde_json::from_slice(&obj.update_body(&mine)).unwrap();
            for (k, v) in &spec {
                if !RECORD_FIELDS.contains(&k.as_str()) && k != "preferredHolder" {
                    proptest::prop_assert_eq!(body["spec"].get(k), Some(v));
                }
            }
            // A write without a preferred holder removes it, as client-go's writes do.
            proptest::prop_assert_eq!(body["spec"].get("preferredHolder"), None);
            let again: LeaseObject = serde_json::from_str(&body.to_string()).unwrap();
            proptest::prop_assert_eq!(again.record.unwrap(), mine);
        }

        /// The record's fields read from raw text exactly as a full decode reads them: the
        /// shortcuts for plain strings and digits change no value and no verdict.
        #[test]
        fn fields_read_as_a_full_decode_reads_them(
            v in proptest::prop_oneof![
                proptest::prelude::any::<i64>().prop_map(|n| n.to_string()),
                "-?0[0-9]{0,3}|[0-9]{1,11}|\\+[0-9]{1,3}|-?[0-9]\\.[0-9]|[0-9]e[0-9]".prop_map(String::from),
                "(?s).{0,30}".prop_map(|s| serde_json::to_string(&s).unwrap()),
                "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9](\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})"
                    .prop_map(|s| serde_json::to_string(&s).unwrap()),
                proptest::sample::select(vec!["null", "true", "[]", "{}", "\"\\u0041\"", "\"\\\"\""]).prop_map(String::from),
            ]
        ) {
            let raw: Box<RawValue> = match serde_json::from_str(&v) {
                Ok(raw) => raw,
                Err(_) => return Ok(()),
            };
            let full_holder = typed::<Option<String>>(&v, "h", "a string").map(Option::unwrap_or_default);
            let holder = string(&raw, "h", "a string").map(|h| h.map(Cow::into_owned).unwrap_or_default());
            proptest::prop_assert_eq!(holder.ok(), full_holder.ok());
            let full_int = typed::<Option<i32>>(&v, "n", "a 32-bit integer").map(Option::unwrap_or_default);
            proptest::prop_assert_eq!(int(&v, "n").ok(), full_int.ok());
            let full_time = typed::<Option<String>>(&v, "t", "a time string").ok().map(|t| match t {
                None => Some(None),
                Some(t) if t.is_empty() => Some(None),
                Some(t) => t.parse::<jiff::Timestamp>().ok().map(Some),
            });
            proptest::prop_assert_eq!(time(&raw, "t").ok(), full_time.flatten());
        }

        /// Numbers and MicroTimes are written as `core::fmt` writes them, over jiff's whole
        /// range of times.
        #[test]
        fn numbers_and_times_are_written_as_fmt_writes_them(
            n in proptest::prelude::any::<i32>(),
            secs in jiff::Timestamp::MIN.as_second()..=jiff::Timestamp::MAX.as_second(),
            nanos in 0..1_000_000_000i32,
        ) {
            let mut out = String::new();
            push_int(&mut out, n);
            proptest::prop_assert_eq!(&out, &n.to_string());
            let t = jiff::Timestamp::new(secs, nanos).unwrap_or(jiff::Timestamp::MAX);
            let d = jiff::tz::Offset::UTC.to_datetime(t);
            let want = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                d.year(), d.month(), d.day(), d.hour(), d.minute(), d.second(),
                d.subsec_nanosecond() / 1000
            );
            out.clear();
            push_micro_time(&mut out, t);
            proptest::prop_assert_eq!(&out, &want);
            // And read back, by the shortcut where it applies, as jiff reads it.
            if let Ok(parsed) = out.parse::<jiff::Timestamp>() {
                let raw = RawValue::from_string(format!("\"{out}\"")).unwrap();
                proptest::prop_assert_eq!(time(&raw, "t").unwrap(), Some(parsed));
            }
        }

        /// Strings are escaped exactly as `serde_json` escapes them, control characters,
        /// quotes, backslashes and non-ASCII included.
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(s in "(?s).{0,40}|[\\x00-\\x1f\"\\\\a-z\u{e9}\u{1f600}]{0,40}") {
            let mut out = String::from("x");
            push_json_str(&mut out, &s);
            proptest::prop_assert_eq!(&out[1..], serde_json::to_string(&s).unwrap());
        }
    }
}
