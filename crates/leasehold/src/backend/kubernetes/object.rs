//! What every Kubernetes lock shares: one named object read and written as raw JSON, with
//! compare-and-swap on `resourceVersion`, a watch on its name, and Events about it. Where the
//! record lives in the object (a Lease's `spec`, an annotation) is the [`Kind`]'s business.

#[cfg(feature = "lean-client")]
use super::wire;
use super::{ApiClient, annotation, map_error};
use futures_util::{StreamExt as _, stream};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Endpoints, Event, EventSource, ObjectReference},
};
use kube::{
    Api, Resource as _,
    api::{ApiResource, DynamicObject, GetParams, PostParams, WatchEvent, WatchParams},
    core::Request,
};
use leasehold_core::{
    LeaderRecord, LockError, LockEvent, RecordError, Version, Versioned,
    lock::{BoxFuture, WatchStream},
};
use std::sync::{Arc, Mutex};

/// How long a watch may take to start (the API server answers a watch's headers at once).
const WATCH_START: std::time::Duration = std::time::Duration::from_secs(30);

/// The kind of object a lock keeps its record in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `coordination.k8s.io/v1` Lease: the record is the spec.
    Lease,
    /// `v1` ConfigMap: the record is JSON in an annotation.
    ConfigMap,
    /// `v1` Endpoints: the record is JSON in an annotation.
    Endpoints,
}

// === impl Kind ===

impl Kind {
    /// The resource RBAC names.
    pub(crate) fn resource(self) -> &'static str {
        match self {
            Self::Lease => "leases.coordination.k8s.io",
            Self::ConfigMap => "configmaps",
            Self::Endpoints => "endpoints",
        }
    }

    fn api_resource(self) -> ApiResource {
        match self {
            Self::Lease => ApiResource::erase::<Lease>(&()),
            Self::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
            Self::Endpoints => ApiResource::erase::<Endpoints>(&()),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Lease => "lease",
            Self::ConfigMap => "configmap",
            Self::Endpoints => "endpoints",
        }
    }
}

/// How a lock's object is decoded and where its record lives in it.
pub(crate) trait Codec: Send + Sync + 'static {
    /// The object as read from the API server: a GET, a write's answer, a watch event.
    type Object: serde::de::DeserializeOwned + Clone + Send + Sync + 'static;
    /// `metadata.resourceVersion`.
    fn version(obj: &Self::Object) -> &str;
    /// `metadata.uid`.
    fn uid(obj: &Self::Object) -> Option<String>;
    /// The record in the object.
    fn record(obj: &Self::Object) -> Result<LeaderRecord, RecordError>;
    /// Drops what an update does not need before the object is cached.
    fn trim(_obj: &mut Self::Object) {}
    /// The body of a create of the `kind` object `namespace/name` holding `record`.
    fn create_body(
        kind: Kind,
        namespace: &str,
        name: &str,
        record: &LeaderRecord,
    ) -> Result<Vec<u8>, serde_json::Error>;
    /// The body of a replace of `obj` (same `resourceVersion`) holding `record`.
    fn update_body(obj: Self::Object, record: &LeaderRecord) -> Result<Vec<u8>, serde_json::Error>;
}

/// Leases, through serde: the object as JSON (`DynamicObject`), the record in its `spec` read
/// and written through k8s-openapi's `LeaseSpec`. An update changes the five record fields,
/// `spec.preferredHolder` (kept by a release, removed by any other write, as client-go's writes
/// do) and the annotation [`HANDOVER_ANNOTATION`](super::HANDOVER_ANNOTATION) (written by a
/// transfer only), and keeps every other field of the object (`spec.strategy`, fields newer
/// than this code, labels, other annotations). With the opt-in feature `lean-client`, Leases
/// use [`WireLeaseCodec`] instead.
#[cfg(not(feature = "lean-client"))]
pub(crate) struct LeaseCodec;

/// The Lease codec in use: leasehold's own with the opt-in feature `lean-client`.
#[cfg(feature = "lean-client")]
pub(crate) type LeaseCodec = WireLeaseCodec;

#[cfg(not(feature = "lean-client"))]
use k8s_openapi::api::coordination::v1::LeaseSpec;

/// The five `spec` fields that hold the record.
#[cfg(not(feature = "lean-client"))]
const LEASE_RECORD_FIELDS: [&str; 5] = [
    "holderIdentity",
    "leaseDurationSeconds",
    "acquireTime",
    "renewTime",
    "leaseTransitions",
];

#[cfg(not(feature = "lean-client"))]
impl Codec for LeaseCodec {
    type Object = DynamicObject;
    fn version(obj: &Self::Object) -> &str {
        obj.metadata.resource_version.as_deref().unwrap_or_default()
    }
    fn uid(obj: &Self::Object) -> Option<String> {
        obj.metadata.uid.clone()
    }
    fn record(obj: &Self::Object) -> Result<LeaderRecord, RecordError> {
        let spec = match obj.data.get("spec") {
            None | Some(serde_json::Value::Null) => Default::default(),
            // Read in place: a renewal's answer is not copied to be decoded.
            Some(spec) => <LeaseSpec as serde::Deserialize>::deserialize(spec).map_err(|e| {
                RecordError::Field {
                    field: "spec",
                    reason: e.to_string(),
                }
            })?,
        };
        // Read from the JSON, not through `LeaseSpec`: the field is in k8s-openapi's Lease
        // only for the API versions that have it, and the application picks the version.
        let preferred = obj
            .data
            .get("spec")
            .and_then(|s| s.get("preferredHolder"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let handover = obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(super::HANDOVER_ANNOTATION))
            .filter(|h| !h.is_empty())
            .cloned();
        Ok(super::lease_spec_to_record(&spec)
            .with_preferred_holder(preferred)
            .with_handover_from(handover))
    }
    fn trim(obj: &mut Self::Object) {
        obj.metadata.managed_fields = None;
    }
    fn create_body(
        _kind: Kind,
        namespace: &str,
        name: &str,
        record: &LeaderRecord,
    ) -> Result<Vec<u8>, serde_json::Error> {
        let lease = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                annotations: record
                    .handover_from
                    .as_ref()
                    .map(|from| [(super::HANDOVER_ANNOTATION.to_owned(), from.clone())].into()),
                ..Default::default()
            },
            spec: Some(super::record_to_lease_spec(record)),
        };
        let mut lease = serde_json::to_value(&lease)?;
        if let (Some(p), Some(spec)) = (&record.preferred_holder, lease.get_mut("spec")) {
            spec["preferredHolder"] = serde_json::Value::String(p.clone());
        }
        serde_json::to_vec(&lease)
    }
    fn update_body(
        mut obj: Self::Object,
        record: &LeaderRecord,
    ) -> Result<Vec<u8>, serde_json::Error> {
        // Only a transfer writes the mark; every other write removes it.
        match &record.handover_from {
            Some(from) => {
                obj.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert(super::HANDOVER_ANNOTATION.to_owned(), from.clone());
            }
            None => {
                if let Some(a) = obj.metadata.annotations.as_mut() {
                    a.remove(super::HANDOVER_ANNOTATION);
                }
            }
        }
        let fields = serde_json::to_value(super::record_to_lease_spec(record))?;
        let spec = obj
            .data
            .as_object_mut()
            .map(|data| data.entry("spec").or_insert_with(|| serde_json::json!({})));
        if let (Some(serde_json::Value::Object(spec)), serde_json::Value::Object(fields)) =
            (spec, fields)
        {
            for key in LEASE_RECORD_FIELDS {
                spec.remove(key);
            }
            spec.extend(fields);
            // Only a release names one (the holder it releases to); every other write removes
            // it, as client-go's writes do.
            match &record.preferred_holder {
                Some(p) => {
                    spec.insert("preferredHolder".into(), p.clone().into());
                }
                None => {
                    spec.remove("preferredHolder");
                }
            }
        }
        serde_json::to_vec(&obj)
    }
}

/// Leases, through the flat codec of [`wire`] (feature `lean-client`: what a renewal costs
/// at thousands of elections per process; docs/design.md).
#[cfg(feature = "lean-client")]
pub(crate) struct WireLeaseCodec;

#[cfg(feature = "lean-client")]
impl Codec for WireLeaseCodec {
    type Object = wire::LeaseObject;
    fn version(obj: &Self::Object) -> &str {
        &obj.version
    }
    fn uid(obj: &Self::Object) -> Option<String> {
        obj.uid.clone()
    }
    fn record(obj: &Self::Object) -> Result<LeaderRecord, RecordError> {
        obj.record.clone().map_err(RecordError::from)
    }
    fn create_body(
        _kind: Kind,
        namespace: &str,
        name: &str,
        record: &LeaderRecord,
    ) -> Result<Vec<u8>, serde_json::Error> {
        Ok(wire::create_body(namespace, name, record))
    }
    fn update_body(obj: Self::Object, record: &LeaderRecord) -> Result<Vec<u8>, serde_json::Error> {
        Ok(obj.update_body(record))
    }
}

/// ConfigMaps and Endpoints: the record in an annotation, the rest of the object as JSON
/// (`data`, `binaryData`, `subsets` and any other field survive an update).
pub(crate) struct AnnotationCodec;

impl Codec for AnnotationCodec {
    type Object = DynamicObject;
    fn version(obj: &Self::Object) -> &str {
        obj.metadata.resource_version.as_deref().unwrap_or_default()
    }
    fn uid(obj: &Self::Object) -> Option<String> {
        obj.metadata.uid.clone()
    }
    fn record(obj: &Self::Object) -> Result<LeaderRecord, RecordError> {
        annotation::read(obj.metadata.annotations.as_ref())
    }
    fn trim(obj: &mut Self::Object) {
        // Not needed to build an update (an update that omits them keeps them on the server),
        // and most of the object's size.
        obj.metadata.managed_fields = None;
    }
    fn create_body(
        kind: Kind,
        namespace: &str,
        name: &str,
        record: &LeaderRecord,
    ) -> Result<Vec<u8>, serde_json::Error> {
        let mut obj = DynamicObject::new(name, &kind.api_resource()).within(namespace);
        annotation::write(record, obj.metadata.annotations.get_or_insert_default());
        serde_json::to_vec(&obj)
    }
    fn update_body(
        mut obj: Self::Object,
        record: &LeaderRecord,
    ) -> Result<Vec<u8>, serde_json::Error> {
        annotation::write(record, obj.metadata.annotations.get_or_insert_default());
        serde_json::to_vec(&obj)
    }
}

/// A lock on one named object, its record read and written by the [`Codec`] `C`.
pub(crate) struct ObjectLock<C: Codec> {
    client: ApiClient,
    /// Builds the object's requests (its collection's URL path).
    request: Arc<Request>,
    /// The object's own URL path, parsed once: a leader reads and replaces the same object
    /// every renewal. `None` if the name makes no valid path (the request builder says why).
    item: Option<http::Uri>,
    events: Option<Api<Event>>,
    kind: Kind,
    name: String,
    namespace: String,
    /// The last object seen, to build updates from (keeps every other field).
    last: Arc<Mutex<Option<C::Object>>>,
}

impl<C: Codec> Clone for ObjectLock<C> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            request: self.request.clone(),
            item: self.item.clone(),
            events: self.events.clone(),
            kind: self.kind,
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            last: self.last.clone(),
        }
    }
}

// === impl ObjectLock ===

impl<C: Codec> ObjectLock<C> {
    pub(crate) fn new(client: ApiClient, kind: Kind, namespace: &str, name: &str) -> Self {
        let url = DynamicObject::url_path(&kind.api_resource(), Some(namespace));
        // An empty name would make the collection's path; kube-core's builder refuses it.
        let item = (!name.is_empty())
            .then(|| format!("{url}/{name}").parse().ok())
            .flatten();
        Self {
            client,
            request: Arc::new(Request::new(url)),
            item,
            events: None,
            kind,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            last: Arc::default(),
        }
    }

    pub(crate) fn with_events(mut self, on: bool) -> Self {
        self.events = on.then(|| Api::namespaced(self.client.kube().clone(), &self.namespace));
        self
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    fn err(&self, e: kube::Error, op: &'static str, verb: &'static str) -> LockError {
        map_error(e, op, verb, self.kind.resource(), self.describe())
    }

    fn decode(&self, obj: &C::Object) -> Result<Versioned, LockError> {
        let version = version_of::<C>(obj);
        match C::record(obj) {
            Ok(record) => Ok(Versioned::new(record, version)),
            Err(source) => Err(LockError::Corrupt {
                object: self.describe(),
                version: Some(version),
                source,
            }),
        }
    }

    /// Keeps `obj` to build the next update from (moved, not copied: a renewal allocates as
    /// little as it can, which is most of its cost at thousands of elections per process).
    fn remember(&self, mut obj: C::Object) {
        C::trim(&mut obj);
        if let Ok(mut last) = self.last.lock() {
            *last = Some(obj);
        }
    }

    /// GET, with 404 as `None`.
    async fn fetch(&self, op: &'static str) -> Result<Option<C::Object>, LockError> {
        let req = match &self.item {
            Some(uri) => Ok(item_request(http::Method::GET, uri, Vec::new())),
            None => self.request.get(&self.name, &GetParams::default()),
        }
        .map_err(|e| self.err(kube::Error::BuildRequest(e), op, "get"))?;
        match self.client.request::<C::Object>(req).await {
            Ok(o) => Ok(Some(o)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(self.err(e, op, "get")),
        }
    }

    async fn base_object(&self, version: &Version) -> Result<C::Object, LockError> {
        // Taken out of the cache: the update's answer replaces it (a failed update reads again).
        let cached = self.last.lock().ok().and_then(|mut l| l.take());
        if let Some(obj) = cached.filter(|o| C::version(o) == version.as_str()) {
            return Ok(obj);
        }
        match self.fetch("update").await? {
            Some(o) if C::version(&o) == version.as_str() => Ok(o),
            _ => Err(LockError::Conflict {
                op: "update",
                object: self.describe(),
            }),
        }
    }

    /// Sends a create or replace and caches the stored object.
    async fn write(
        &self,
        op: &'static str,
        req: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<Version, LockError> {
        let req = req.map_err(|e| self.err(kube::Error::BuildRequest(e), op, op))?;
        let stored = self
            .client
            .request::<C::Object>(req)
            .await
            .map_err(|e| self.err(e, op, op))?;
        let version = version_of::<C>(&stored);
        self.remember(stored);
        Ok(version)
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} {}/{}", self.kind.noun(), self.namespace, self.name)
    }

    pub(crate) fn get(&self) -> BoxFuture<'_, Result<Option<Versioned>, LockError>> {
        Box::pin(async move {
            match self.fetch("get").await? {
                None => Ok(None),
                Some(o) => {
                    let v = self.decode(&o);
                    self.remember(o);
                    v.map(Some)
                }
            }
        })
    }

    pub(crate) fn create(
        &self,
        record: &LeaderRecord,
    ) -> BoxFuture<'_, Result<Version, LockError>> {
        let body = C::create_body(self.kind, &self.namespace, &self.name, record);
        Box::pin(async move {
            let body =
                body.map_err(|e| self.err(kube::Error::SerdeError(e), "create", "create"))?;
            self.write("create", self.request.create(&PostParams::default(), body))
                .await
        })
    }

    pub(crate) fn update(
        &self,
        record: &LeaderRecord,
        version: &Version,
    ) -> BoxFuture<'_, Result<Version, LockError>> {
        let record = record.clone();
        let version = version.clone();
        Box::pin(async move {
            let obj = self.base_object(&version).await?;
            let body = C::update_body(obj, &record)
                .map_err(|e| self.err(kube::Error::SerdeError(e), "update", "update"))?;
            let req = match &self.item {
                Some(uri) => Ok(item_request(http::Method::PUT, uri, body)),
                None => self
                    .request
                    .replace(&self.name, &PostParams::default(), body),
            };
            self.write("update", req).await
        })
    }

    pub(crate) fn watch(&self, version: Option<&Version>) -> WatchStream {
        type Events<O> =
            std::pin::Pin<Box<dyn futures_util::Stream<Item = kube::Result<WatchEvent<O>>> + Send>>;
        enum St<C: Codec> {
            Start(ObjectLock<C>, String),
            Running(ObjectLock<C>, Events<C::Object>),
            Done,
        }
        let start = St::Start(
            self.clone(),
            version.map(|v| v.as_str().to_owned()).unwrap_or_default(),
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
                    // Bounded: a server that accepts the request but never answers it would
                    // otherwise leave a standby without a watch, and without knowing it.
                    let events = match lock.request.watch(&wp, &version) {
                        Ok(req) => {
                            tokio::time::timeout(WATCH_START, lock.client.events::<C::Object>(req))
                                .await
                                .unwrap_or_else(|_| {
                                    Err(kube::Error::Service(
                                        format!("no answer within {WATCH_START:?}").into(),
                                    ))
                                })
                        }
                        Err(e) => Err(kube::Error::BuildRequest(e)),
                    };
                    match events {
                        Ok(s) => (lock, s),
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
                        let item = lock.decode(&o).map(Some);
                        lock.remember(o);
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

    /// Posts a `v1` Event on the lock object, as client-go's `RecordEvent` does (reason
    /// `LeaderElection`, type `Normal`, message `<identity> became leader`), with the fencing
    /// token in the message.
    pub(crate) fn record_event(&self, event: &LockEvent) -> BoxFuture<'_, Result<(), LockError>> {
        let event = event.clone();
        Box::pin(async move {
            let Some(api) = &self.events else {
                return Ok(());
            };
            let now = jiff::Timestamp::now();
            let uid = self
                .last
                .lock()
                .ok()
                .and_then(|l| l.as_ref().and_then(C::uid));
            let ar = self.kind.api_resource();
            // Names must be unique per namespace: the object's name and the time, like
            // client-go's recorder (`<name>.<hex nanos>`).
            let suffix = format!("{:x}", now.as_nanosecond());
            let mut base: String = self.name.chars().take(253 - suffix.len() - 1).collect();
            base.push('.');
            base.push_str(&suffix);
            let instance: String = event.identity.chars().take(128).collect();
            let ev = Event {
                metadata: kube::api::ObjectMeta {
                    name: Some(base),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                involved_object: ObjectReference {
                    api_version: Some(ar.api_version.clone()),
                    kind: Some(ar.kind.clone()),
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    uid,
                    ..Default::default()
                },
                reason: Some("LeaderElection".into()),
                message: Some(event.message()),
                type_: Some("Normal".into()),
                count: Some(1),
                first_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
                last_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
                source: Some(EventSource {
                    component: Some("leasehold".into()),
                    host: None,
                }),
                reporting_component: Some("leasehold".into()),
                reporting_instance: Some(instance),
                ..Default::default()
            };
            api.create(&PostParams::default(), &ev).await.map_err(|e| {
                map_error(
                    e,
                    "create",
                    "create",
                    "events",
                    format!("event on {}", self.describe()),
                )
            })?;
            Ok(())
        })
    }
}

/// A GET or PUT of the object itself, as kube-core's builder makes it (minus its empty query),
/// without formatting and parsing the path again.
fn item_request(method: http::Method, uri: &http::Uri, body: Vec<u8>) -> http::Request<Vec<u8>> {
    let mut req = http::Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri.clone();
    if req.method() == http::Method::PUT {
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
    req
}

/// The object's `resourceVersion`, marked as a revision when it is one: the API server's are
/// the etcd revision of the object's last write, a decimal integer, comparable across objects
/// (a documented contract since Kubernetes 1.35, KEP-5504, and how every etcd-backed API server
/// has made them). Terms' fencing tokens are then revisions. A version that is not a decimal
/// integer is left a plain name, and tokens fall back to `leaderTransitions`.
fn version_of<C: Codec>(obj: &C::Object) -> Version {
    let rv = C::version(obj);
    let version = Version::new(rv.to_owned());
    match rv.parse::<u64>() {
        Ok(n) if !rv.starts_with('0') || rv == "0" => version.with_revision(n),
        _ => version,
    }
}

/// Implements [`leasehold_core::LockBackend`] for a newtype over [`ObjectLock`].
macro_rules! delegate_lock_backend {
    ($ty:ty) => {
        impl leasehold_core::LockBackend for $ty {
            fn describe(&self) -> String {
                self.0.describe()
            }
            fn get(
                &self,
            ) -> leasehold_core::lock::BoxFuture<
                '_,
                Result<Option<leasehold_core::Versioned>, leasehold_core::LockError>,
            > {
                self.0.get()
            }
            fn create(
                &self,
                record: &leasehold_core::LeaderRecord,
            ) -> leasehold_core::lock::BoxFuture<
                '_,
                Result<leasehold_core::Version, leasehold_core::LockError>,
            > {
                self.0.create(record)
            }
            fn update(
                &self,
                record: &leasehold_core::LeaderRecord,
                version: &leasehold_core::Version,
            ) -> leasehold_core::lock::BoxFuture<
                '_,
                Result<leasehold_core::Version, leasehold_core::LockError>,
            > {
                self.0.update(record, version)
            }
            fn watch(
                &self,
                version: Option<&leasehold_core::Version>,
            ) -> leasehold_core::lock::WatchStream {
                self.0.watch(version)
            }
            fn record_event(
                &self,
                event: &leasehold_core::LockEvent,
            ) -> leasehold_core::lock::BoxFuture<'_, Result<(), leasehold_core::LockError>> {
                self.0.record_event(event)
            }
            fn carries_handover(&self) -> bool {
                // The Lease codecs keep the mark in an annotation, the annotation codec in the
                // record's JSON.
                true
            }
        }
    };
}
pub(crate) use delegate_lock_backend;
