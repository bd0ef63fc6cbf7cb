//! The `coordination.k8s.io/v1` Lease lock, client-go's default (`resourcelock.LeaseLock`).

use super::map_error;
use futures_util::{StreamExt as _, stream};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, PostParams, WatchEvent, WatchParams},
};
use leasehold_core::{
    LeaderRecord, LockBackend, LockError, RecordError, Version, Versioned,
    lock::{BoxFuture, WatchStream},
};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};

const RESOURCE: &str = "leases.coordination.k8s.io";

/// A lock on a Kubernetes Lease.
///
/// Replaces client-go's `resourcelock.LeaseLock` and seed 004's `LeaseLock`. The record maps to
/// `spec.holderIdentity`, `spec.leaseDurationSeconds`, `spec.acquireTime`, `spec.renewTime`
/// (MicroTime) and `spec.leaseTransitions`, exactly as client-go writes them. The object is kept
/// as raw JSON, so an update changes those five fields and nothing else: labels, annotations,
/// `spec.strategy`, `spec.preferredHolder` and fields newer than this code survive it.
///
/// Needs `get`, `create`, `update` and `watch` on `leases.coordination.k8s.io`.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<DynamicObject>,
    name: String,
    namespace: String,
    /// The last object seen, to build updates from (keeps every other field).
    last: Arc<Mutex<Option<DynamicObject>>>,
}

// === impl LeaseLock ===

impl LeaseLock {
    /// A lock on the Lease `namespace/name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        let ar = ApiResource::erase::<Lease>(&());
        Self {
            api: Api::namespaced_with(client, namespace, &ar),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            last: Arc::default(),
        }
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Lease's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn err(&self, e: kube::Error, op: &'static str, verb: &'static str) -> LockError {
        map_error(e, op, verb, RESOURCE, self.describe())
    }

    fn decode(&self, obj: &DynamicObject) -> Result<Versioned, LockError> {
        let version = obj.metadata.resource_version.clone().unwrap_or_default();
        let record = spec_to_record(obj.data.get("spec")).map_err(|source| LockError::Corrupt {
            object: self.describe(),
            version: Some(Version::new(version.clone())),
            source,
        })?;
        Ok(Versioned {
            record,
            version: Version::new(version),
        })
    }

    fn remember(&self, obj: &DynamicObject) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(obj.clone());
        }
    }

    async fn base_object(&self, version: &Version) -> Result<DynamicObject, LockError> {
        let cached = self.last.lock().ok().and_then(|l| l.clone());
        if let Some(obj) =
            cached.filter(|o| o.metadata.resource_version.as_deref() == Some(&*version.0))
        {
            return Ok(obj);
        }
        let obj = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e, "update", "get"))?;
        match obj {
            Some(o) if o.metadata.resource_version.as_deref() == Some(&*version.0) => Ok(o),
            _ => Err(LockError::Conflict {
                op: "update",
                object: self.describe(),
            }),
        }
    }
}

impl LockBackend for LeaseLock {
    fn describe(&self) -> String {
        format!("lease {}/{}", self.namespace, self.name)
    }

    fn get(&self) -> BoxFuture<'_, Result<Option<Versioned>, LockError>> {
        Box::pin(async move {
            let obj = self
                .api
                .get_opt(&self.name)
                .await
                .map_err(|e| self.err(e, "get", "get"))?;
            match obj {
                None => Ok(None),
                Some(o) => {
                    self.remember(&o);
                    self.decode(&o).map(Some)
                }
            }
        })
    }

    fn create(&self, record: &LeaderRecord) -> BoxFuture<'_, Result<Version, LockError>> {
        let record = record.clone();
        Box::pin(async move {
            let mut obj = DynamicObject::new(&self.name, &ApiResource::erase::<Lease>(&()))
                .within(&self.namespace);
            let mut spec = Map::new();
            record_into_spec(&record, &mut spec);
            obj.data = serde_json::json!({ "spec": spec });
            let created = self
                .api
                .create(&PostParams::default(), &obj)
                .await
                .map_err(|e| self.err(e, "create", "create"))?;
            self.remember(&created);
            Ok(Version::new(
                created
                    .metadata
                    .resource_version
                    .clone()
                    .unwrap_or_default(),
            ))
        })
    }

    fn update(
        &self,
        record: &LeaderRecord,
        version: &Version,
    ) -> BoxFuture<'_, Result<Version, LockError>> {
        let record = record.clone();
        let version = version.clone();
        Box::pin(async move {
            let mut obj = self.base_object(&version).await?;
            let data = obj.data.as_object_mut();
            let Some(data) = data else {
                return Err(LockError::Other {
                    op: "update",
                    object: self.describe(),
                    message: "object is not a JSON object".into(),
                    source: None,
                });
            };
            let spec = data
                .entry("spec")
                .or_insert_with(|| Value::Object(Map::new()));
            if !spec.is_object() {
                *spec = Value::Object(Map::new());
            }
            if let Some(spec) = spec.as_object_mut() {
                record_into_spec(&record, spec);
            }
            obj.metadata.resource_version = Some(version.0.to_string());
            let stored = self
                .api
                .replace(&self.name, &PostParams::default(), &obj)
                .await
                .map_err(|e| self.err(e, "update", "update"))?;
            self.remember(&stored);
            Ok(Version::new(
                stored.metadata.resource_version.clone().unwrap_or_default(),
            ))
        })
    }

    fn watch(&self, version: Option<&Version>) -> WatchStream {
        enum St {
            Start(LeaseLock, String),
            Running(
                LeaseLock,
                std::pin::Pin<
                    Box<
                        dyn futures_util::Stream<Item = kube::Result<WatchEvent<DynamicObject>>>
                            + Send,
                    >,
                >,
            ),
            Done,
        }
        let start = St::Start(
            self.clone(),
            version.map(|v| v.0.to_string()).unwrap_or_default(),
        );
        Box::pin(stream::unfold(start, |st| async move {
            let (lock, mut events) = match st {
                St::Done => return None,
                St::Running(lock, events) => (lock, events),
                St::Start(lock, version) => {
                    // Server-side timeout below the 5-minute default of proxies; the caller
                    // re-reads and re-watches when it ends.
                    let wp = WatchParams::default()
                        .fields(&format!("metadata.name={}", lock.name))
                        .timeout(290);
                    match lock.api.watch(&wp, &version).await {
                        Ok(s) => (lock, s.boxed()),
                        Err(e) => {
                            let err = lock.err(e, "watch", "watch");
                            return Some((Err(err), St::Done));
                        }
                    }
                }
            };
            loop {
                match events.next().await {
                    None => return None,
                    Some(Err(e)) => {
                        let err = lock.err(e, "watch", "watch");
                        return Some((Err(err), St::Done));
                    }
                    Some(Ok(WatchEvent::Bookmark(_))) => continue,
                    Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                        lock.remember(&o);
                        let item = lock.decode(&o).map(Some);
                        return Some((item, St::Running(lock, events)));
                    }
                    Some(Ok(WatchEvent::Deleted(_))) => {
                        return Some((Ok(None), St::Running(lock, events)));
                    }
                    Some(Ok(WatchEvent::Error(status))) => {
                        // 410 Gone: the version is too old; the caller reads and watches again.
                        let err = lock.err(kube::Error::Api(status), "watch", "watch");
                        return Some((Err(err), St::Done));
                    }
                }
            }
        }))
    }
}

/// Reads the record out of a Lease's `spec` (absent `spec` reads as an empty record).
fn spec_to_record(spec: Option<&Value>) -> Result<LeaderRecord, RecordError> {
    let mut m = Map::new();
    match spec {
        None | Some(Value::Null) => {}
        Some(Value::Object(spec)) => {
            for (from, to) in [
                ("holderIdentity", "holderIdentity"),
                ("leaseDurationSeconds", "leaseDurationSeconds"),
                ("acquireTime", "acquireTime"),
                ("renewTime", "renewTime"),
                ("leaseTransitions", "leaderTransitions"),
            ] {
                if let Some(v) = spec.get(from) {
                    m.insert(to.to_owned(), v.clone());
                }
            }
        }
        Some(other) => {
            return Err(RecordError::Field {
                field: "spec",
                reason: format!("expected an object, got {other}"),
            });
        }
    }
    let bytes = serde_json::to_vec(&m).map_err(RecordError::Json)?;
    LeaderRecord::from_json(&bytes)
}

/// Writes the record into a Lease's `spec` as client-go's `LeaderElectionRecordToLeaseSpec` does,
/// leaving every other key alone.
fn record_into_spec(r: &LeaderRecord, spec: &mut Map<String, Value>) {
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
